"""torch.amp.GradScaler with fastmoments.torch: the fused unscale.

The optimizers set ``_step_supports_amp_scaling``: ``GradScaler.step`` checks the
gradients for inf/NaN without unscaling them, hands the optimizer ``grad_scale`` and
``found_inf``, and the kernels divide the gradients by the scale as they read them.
Checked against the unfused protocol (the same optimizer with the flag off: torch's
``unscale_`` in place, then a plain step) bit for bit, with steps whose gradients are
inf/NaN, with ``scaler.unscale_`` called by the user to clip, and against
torch.optim in float64; and with float16 parameters, which torch's unfused path
refuses to unscale, against the core optimizer's ``step(grads, grad_scale=...)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fastmoments as fm  # noqa: E402
import fastmoments.torch as fmt  # noqa: E402

STEPS = 12
BAD = (2, 7)  # steps whose loss is multiplied by inf: their gradients are inf/NaN


def make_model(dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def batches(steps: int = STEPS, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g))
            for _ in range(steps)]


def loss_of(model, X, y):
    dtype = next(model.parameters()).dtype
    return nn.functional.mse_loss(model(X.to(dtype)).float(), y)


def bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()


def unfused(opt):
    """The same optimizer on GradScaler's default protocol (unscale_ in place, then
    a plain step, skipped by the scaler on inf/NaN)."""
    opt._step_supports_amp_scaling = False
    return opt


def run(model, opt, data, *, bad=BAD, clip=None, init_scale=2.0**12, record=None):
    """A mixed-precision loop; ``clip``: ``scaler.unscale_`` then norm clipping."""
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=3)
    scales = []
    for t, (X, y) in enumerate(data):
        opt.zero_grad()
        loss = loss_of(model, X, y) * (math.inf if t in bad else 1.0)
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scale = scaler.get_scale()
        scaler.step(opt)
        if record is not None:  # the gradients as the step saw them, and the scale
            record.append(([p.grad.clone() for p in model.parameters()], scale))
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


def steps_of(opt):
    return {int(e["step"]) for e in opt.state_dict()["state"].values()}


# ---------------------------------------------------------------- the protocol
def test_scaler_step_leaves_the_gradients_scaled_and_the_kernel_unscales():
    model, plain_model = make_model(torch.float32), make_model(torch.float32)
    opt = fmt.Adam(model.parameters(), lr=0.01)
    plain = fmt.Adam(plain_model.parameters(), lr=0.01)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    X, y = batches(1)[0]
    scaler.scale(loss_of(model, X, y)).backward()
    loss_of(plain_model, X, y).backward()
    scaler.step(opt)
    for p, q in zip(model.parameters(), plain_model.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad * 2.0**10)  # never unscaled in place
    plain.step()
    for p, q in zip(model.parameters(), plain_model.parameters(), strict=True):
        assert np.array_equal(bits(p), bits(q))
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")  # the scaler's


@pytest.mark.parametrize("clip", [None, 1.0], ids=["scaler-unscales", "user-unscale_-clip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_fused_unscaling_is_the_unfused_path_bit_for_bit(dtype, clip):
    """Power-of-two scales: dividing in the kernel and multiplying in place by the
    reciprocal give the same bits. Steps with inf/NaN gradients are skipped (parameters,
    state and step counts stay) and the scale backs off the same way; after a user's
    ``scaler.unscale_`` (to clip) the step divides by nothing more."""
    if dtype is torch.bfloat16:
        pytest.importorskip("ml_dtypes")  # bfloat16 parameters need it (float16 do not)
    data = batches()
    results = []
    for fused in (True, False):
        model = make_model(dtype)
        opt = fmt.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        if not fused:
            unfused(opt)
        results.append((model, opt, run(model, opt, data, clip=clip)))
    (model, opt, scales), (model_u, opt_u, scales_u) = results
    assert scales == scales_u and min(scales) < 2.0**12  # backed off at the inf steps
    for p, q in zip(model.parameters(), model_u.parameters(), strict=True):
        assert np.array_equal(bits(p), bits(q))
        for name, value in opt.state[p].items():
            assert np.array_equal(bits(value), bits(opt_u.state[q][name])), name
    assert steps_of(opt) == steps_of(opt_u) == {STEPS - len(BAD)}


def test_fused_path_follows_torch_optim_in_float64():
    data = batches()
    results, counts = [], []
    for module in (torch.optim, fmt):
        model = make_model(torch.float64)
        opt = module.Adam(model.parameters(), lr=0.01, amsgrad=True)
        scales = run(model, opt, data)
        results.append(([p.detach().clone() for p in model.parameters()], scales))
        counts.append(steps_of(opt))
    (theirs, their_scales), (mine, my_scales) = results
    assert their_scales == my_scales
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-15)
    assert counts[0] == counts[1] == {STEPS - len(BAD)}


def test_float16_parameters_with_master_weights_and_a_scaler():
    """torch's unfused path refuses float16 gradients ("Attempting to unscale FP16
    gradients"); the fused one divides them in float32 inside the kernel. With the
    default initial scale, 2**16, the first float16 gradients overflow: those steps are
    skipped and the scale backs off, as in any fp16 AMP loop. Each step is the core
    optimizer's on the same float16 arrays with ``grad_scale``, bit for bit."""
    data = batches()
    model = make_model(torch.float16)
    with pytest.raises(ValueError, match="FP16"):
        run(model, unfused(fmt.Adam(model.parameters(), lr=0.01, eps=1e-6)), data[:1])
    model = make_model(torch.float16)
    start = [p.detach().clone().numpy() for p in model.parameters()]
    opt = fmt.Adam(model.parameters(), lr=0.01, eps=1e-6)
    record = []
    run(model, opt, data, bad=(), init_scale=2.0**16, record=record)
    core = fm.Adam(start, lr=0.01, eps=1e-6)
    skipped = 0
    for grads, scale in record:
        arrays = [g.numpy() for g in grads]
        if all(np.isfinite(a).all() for a in arrays):
            core.step(arrays, grad_scale=scale)
        else:
            skipped += 1
    assert 0 < skipped < STEPS - 3
    assert steps_of(opt) == {core.step_count}
    for p, a in zip(model.parameters(), start, strict=True):
        assert np.array_equal(bits(p), a.view(np.int16))
    for p, theirs in zip(model.parameters(), core.state, strict=True):
        for name, value in theirs.items():
            assert np.array_equal(opt.state[p][name].numpy(), value), name


def test_grad_scale_and_found_inf_set_by_hand():
    """The attributes torch's fused optimizers read, honoured outside GradScaler too;
    an invalid scale is refused before anything changes."""
    model, plain_model = make_model(torch.float32), make_model(torch.float32)
    opt = fmt.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plain = fmt.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    X, y = batches(1)[0]
    (loss_of(model, X, y) * 8.0).backward()
    loss_of(plain_model, X, y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert opt.state_dict()["state"] == {}
    opt.found_inf = torch.tensor(0.0)
    for bad in (torch.tensor(0.0), math.inf, -2.0):
        opt.grad_scale = bad
        with pytest.raises(ValueError, match="grad_scale"):
            opt.step()
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    opt.grad_scale = torch.tensor(8.0)
    opt.step()
    plain.step()
    for p, q in zip(model.parameters(), plain_model.parameters(), strict=True):
        assert np.array_equal(bits(p), bits(q))


@pytest.mark.parametrize("rule", fmt.RULES)
def test_every_rule_unscales_in_its_step_as_the_unfused_path(rule):
    """The protocol is the class's, so every rule (multi-pass ones included) must take
    ``grad_scale`` in its step: the same bits as the unfused path, an inf step skipped."""
    data = batches(5)
    results = []
    for fused in (True, False):
        model = make_model(torch.float32)
        opt = getattr(fmt, rule)(model.parameters(), lr=0.01)
        if not fused:
            unfused(opt)
        results.append((model, run(model, opt, data, bad=(1,))))
    (model, scales), (model_u, scales_u) = results
    assert scales == scales_u
    for p, q in zip(model.parameters(), model_u.parameters(), strict=True):
        assert np.array_equal(bits(p), bits(q))
