"""The core family against the NumPy reference and torch.optim, across every path."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from cases import CASES, TORCH_HAS, case_id, float32_tol, problem
from test_extra import EXTRA_CASES

import fastmoments as fm

STEPS = 60


def run_fm(name, kwargs, params, grad, steps=STEPS, wrap=lambda ps: ps):
    opt = getattr(fm, name)(wrap(params), **kwargs)
    for t in range(steps):
        opt.step(grad(params, t))
    return opt


def run_reference(name, kwargs, params, grad, steps=STEPS):
    opt = reference.REFERENCES[name](params, **kwargs)
    for t in range(steps):
        opt.step(grad(params, t))
    return opt


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference(case, dtype):
    name, kwargs = case
    params, grad = problem(dtype=dtype)
    mine = [p.copy() for p in params]
    ref = [p.copy() for p in params]
    run_fm(name, kwargs, mine, grad)
    run_reference(name, kwargs, ref, grad)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else float32_tol(name)
    for a, b in zip(mine, ref):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **tol)
    # the run moved the parameters (a rule that did nothing would pass the comparison
    # only if the reference did nothing too)
    assert any(not np.array_equal(a, p) for a, p in zip(mine, params) if a.size)



def assert_matches_torch(torch, name, kwargs, params, grad, steps=STEPS):
    """fastmoments and torch.optim (float64) from ``params``: the same parameters and
    the same state after ``steps`` steps."""
    mine = [p.copy() for p in params]
    opt = getattr(fm, name)(mine, **kwargs)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, name)(tensors, foreach=False, **kwargs)
    for t in range(steps):
        opt.step(grad(mine, t))
        current = [x.detach().numpy() for x in tensors]
        for x, g in zip(tensors, grad(current, t)):
            x.grad = torch.from_numpy(g)
        topt.step()
    for a, x in zip(mine, tensors):
        np.testing.assert_allclose(a, x.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert_same_state_as_torch(opt, topt, tensors)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in TORCH_HAS], ids=case_id)
def test_matches_torch(case, torch64):
    name, kwargs = case
    params, grad = problem()
    assert_matches_torch(torch64, name, kwargs, params, grad)


#: torch's per-parameter state keys that fastmoments keeps elsewhere, and where: every
#: other key of torch's state is a buffer of the same name in ``opt.state[j]``
TORCH_KEYS_ELSEWHERE = {
    # torch counts the steps per parameter; fastmoments once per optimizer (every
    # parameter got a gradient at every step here, so they agree)
    "step": lambda opt: opt.step_count,
    # NAdam's running product of the momentum schedule: one scalar of the group's host state
    "mu_product": lambda opt: opt.state_dict()["host_state"][0]["mu_product"],
}


def assert_same_state_as_torch(opt, topt, tensors):
    """Every key of torch's state for every parameter agrees with fastmoments' value
    (through TORCH_KEYS_ELSEWHERE where the names differ), and fastmoments keeps no
    buffer torch does not."""
    for j, x in enumerate(tensors):
        theirs = topt.state[x]
        mine = opt.state[j]
        buffers = set(theirs) - set(TORCH_KEYS_ELSEWHERE)
        assert set(mine) == buffers, (j, sorted(mine), sorted(theirs))
        for key, value in theirs.items():
            ours = TORCH_KEYS_ELSEWHERE[key](opt) if key in TORCH_KEYS_ELSEWHERE else mine[key]
            np.testing.assert_allclose(ours, value.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"state[{j}][{key!r}]")


def zero_at_step_one(grad, whole: bool):
    """``grad`` with step 1's gradients exactly zero: every element (``whole``), else the
    first tensor and the first column of the others; later steps unchanged."""

    def zeroed(current, t):
        out = grad(current, t)
        if t == 0:
            for i, g in enumerate(out):
                if whole or i == 0:
                    g[...] = 0
                else:
                    g[..., :1] = 0
        return out

    return zeroed


@pytest.mark.parametrize("case", CASES + EXTRA_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_zero_gradient_at_step_one(case, dtype):
    """Every rule (both tables) given a zero gradient on its first step, before any
    moment holds anything (Adamax's u, Adam's v, LAMB's and NDAdam's norms are 0 there):
    the reference's trajectory, finite all along."""
    name, kwargs = case
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else float32_tol(name)
    for whole in (True, False):
        params, grad = problem(dtype=dtype, steps=10)
        grad = zero_at_step_one(grad, whole)
        mine = [p.copy() for p in params]
        ref = [p.copy() for p in params]
        opt = getattr(fm, name)(mine, **kwargs)
        ref_opt = reference.REFERENCES[name](ref, **kwargs)
        for t in range(10):
            opt.step(grad(mine, t))
            ref_opt.step(grad(ref, t))
            if t in (0, 9):
                for a, b in zip(mine, ref):
                    np.testing.assert_allclose(a, b, **tol, err_msg=f"step {t + 1}")
                for buffers in opt.state_dict()["state"]:
                    assert all(np.isfinite(v).all() for v in buffers.values()), (t, buffers)
        assert all(np.isfinite(a).all() for a in mine)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in TORCH_HAS], ids=case_id)
@pytest.mark.parametrize("whole", [True, False], ids=["all-zero", "some-zero"])
def test_zero_gradient_at_step_one_matches_torch(case, whole, torch64):
    name, kwargs = case
    params, grad = problem(steps=10)
    assert_matches_torch(torch64, name, kwargs, params, zero_at_step_one(grad, whole), steps=10)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_list_flat_and_groups_identical(case, dtype):
    name, kwargs = case
    params, grad = problem(dtype=dtype, steps=20)
    as_list = [p.copy() for p in params]
    run_fm(name, kwargs, as_list, grad, steps=20)

    flat = fm.FlatParams([p.copy() for p in params])
    opt = getattr(fm, name)(flat, **kwargs)
    for t in range(20):
        for view, g in zip(flat.grads, grad(flat.params, t)):
            view[...] = g
        opt.step()

    groups = [p.copy() for p in params]
    opt = getattr(fm, name)([{"params": groups[:2]}, {"params": groups[2:]}], **kwargs)
    for t in range(20):
        opt.step(grad(groups, t))

    for a, b, c in zip(as_list, flat.params, groups):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parallel_kernels_identical(case, monkeypatch):
    name, kwargs = case
    params, grad = problem(steps=10)
    serial = [p.copy() for p in params]
    run_fm(name, kwargs, serial, grad, steps=10)
    monkeypatch.setattr(fm.config, "parallel_threshold", 1)
    parallel = [p.copy() for p in params]
    run_fm(name, kwargs, parallel, grad, steps=10)
    flat = fm.FlatParams([p.copy() for p in params])
    opt = getattr(fm, name)(flat, **kwargs)
    for t in range(10):
        opt.step(np.concatenate([g.ravel() for g in grad(flat.params, t)]))
    for a, b, c in zip(serial, parallel, flat.params):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_plain_kernels_identical(case, monkeypatch):
    """The plain variant (neutral scalars compiled in) gives the general kernel's bits."""
    from fastmoments.optim import _dispatch

    name, kwargs = case
    params, grad = problem(steps=10)
    chosen = []
    real_plain_variant = _dispatch._plain_variant

    def recording(kernel, scalars):
        plain = real_plain_variant(kernel, scalars)
        chosen.append(plain is not None)
        return plain

    monkeypatch.setattr(_dispatch, "_plain_variant", recording)
    plain = [p.copy() for p in params]
    run_fm(name, kwargs, plain, grad, steps=10)
    monkeypatch.setattr(_dispatch, "_plain_variant", lambda kernel, scalars: None)
    general = [p.copy() for p in params]
    run_fm(name, kwargs, general, grad, steps=10)
    for a, b in zip(plain, general):
        np.testing.assert_array_equal(a, b)
    # the rows without weight decay, clipping or maximize did use the plain kernel
    if not any(kwargs.get(k) for k in ("weight_decay", "clip_value", "max_grad_norm", "maximize")):
        assert chosen and all(chosen), chosen


@pytest.mark.parametrize("case", CASES + [("AdaBelief", dict(lr=0.01, weight_decay=0.1)),
                                          ("Lion", dict(lr=0.01, weight_decay=0.1))],
                         ids=case_id)
def test_neutral_rule_scalars_are_hyperparameters(case, monkeypatch):
    """The rule's own neutral scalars (weight_decay, eps_root) do not change with the
    step or the learning rate: _run decides the plain variant once per (re)build."""
    from fastmoments.kernels.elementwise import NEUTRAL

    name, kwargs = case
    params, grad = problem(steps=6)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    opt = getattr(fm, name)(params, lr=lambda t: 0.1 / (1 + t), **kwargs)
    seen = []
    for group in opt._groups:
        kernel = group.kernel
        assert kernel.plain is not None  # every element-wise rule scales and clips
        index = [kernel.scalar_names.index(s) - 2 for s in kernel.plain.fixed[2:]]
        real = type(opt)._scalars

        # on the class: step()'s short path calls the class's _scalars (specialized)
        def recording(self, values, lr, step, host, named, index=index, real=real):
            scalars = real(self, values, lr, step, host, named)
            seen.append(tuple(scalars[k] for k in index))
            return scalars

        monkeypatch.setattr(type(opt), "_scalars", recording)
    for t in range(6):
        opt.step(grad(params, t))
    assert len(seen) == 6 * len(opt._groups)
    assert len(set(seen)) == 1, seen
    fixed = opt._groups[0].kernel.plain.fixed[2:]
    assert set(fixed) <= set(NEUTRAL)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_state_dict_round_trip_continues_identically(case):
    name, kwargs = case
    params, grad = problem(steps=30)
    a = [p.copy() for p in params]
    opt_a = run_fm(name, kwargs, a, grad, steps=15)
    saved = opt_a.state_dict()
    b = [p.copy() for p in a]
    opt_b = getattr(fm, name)(b, **kwargs)
    opt_b.load_state_dict(saved)
    assert opt_b.step_count == 15
    for t in range(15, 30):
        opt_a.step(grad(a, t))
        opt_b.step(grad(b, t))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # the saved dict is a copy: stepping did not change it
    again = opt_a.state_dict()
    assert again["step_count"] == 30 and saved["step_count"] == 15


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_stays_float32(dtype):
    p = [np.ones((4, 3), dtype=dtype)]
    opt = fm.Adam(p, lr=0.1, amsgrad=True)
    opt.step([np.full((4, 3), 0.5, dtype=dtype)])
    assert p[0].dtype == dtype
    assert all(buf.dtype == dtype for buf in opt.state[0].values())
    assert opt._groups[0].scalars.dtype == dtype


def test_zero_size_parameter_only():
    p = [np.zeros((0, 3))]
    opt = fm.Adam(p)
    opt.step([np.zeros((0, 3))])
    assert opt.step_count == 1


def test_lr_settable_and_schedule():
    params, grad = problem(steps=6)
    a = [p.copy() for p in params]
    opt = fm.SGD(a, lr=0.1)
    assert opt.lr == 0.1
    opt.step(grad(a, 0))
    opt.lr = 0.01
    assert opt.lr == 0.01 and opt.param_groups[0]["lr"] == 0.01
    opt.step(grad(a, 1))

    b = [p.copy() for p in params]
    ref = reference.SGD(b, lr=0.1)
    ref.step(grad(b, 0))
    ref = reference.SGD(b, lr=0.01)
    ref.step(grad(b, 1))
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12)

    c = [p.copy() for p in params]
    opt = fm.SGD(c, lr=lambda step: 0.1 * 0.5**step)
    assert opt.lr == 0.1
    for t in range(3):
        opt.step(grad(c, t))
    assert opt.lr == pytest.approx(0.1 * 0.5**3)
    d = [p.copy() for p in params]
    for t in range(3):
        for p, g in zip(d, grad(d, t)):
            p -= 0.1 * 0.5**t * g
    for x, y in zip(c, d):
        np.testing.assert_allclose(x, y, rtol=1e-12)


def test_param_group_hyperparameters_apply_per_group():
    params, grad = problem(steps=5)
    a = [p.copy() for p in params]
    opt = fm.Adam([{"params": a[:2], "lr": 0.1}, {"params": a[2:]}], lr=0.01)
    b1, b2 = [p.copy() for p in params[:2]], [p.copy() for p in params[2:]]
    r1, r2 = reference.Adam(b1, lr=0.1), reference.Adam(b2, lr=0.01)
    for t in range(5):
        opt.step(grad(a, t))
        g = grad(b1 + b2, t)
        r1.step(g[:2])
        r2.step(g[2:])
    for x, y in zip(a, b1 + b2):
        np.testing.assert_allclose(x, y, rtol=1e-12)


def test_editing_param_groups_is_used_and_validated():
    p = [np.ones(3)]
    opt = fm.Adam(p, lr=0.1)
    opt.param_groups[0]["amsgrad"] = True
    opt.step([np.ones(3)])
    assert "max_exp_avg_sq" in opt.state[0]
    opt.param_groups[0]["betas"] = (1.5, 0.9)
    before = p[0].copy()
    with pytest.raises(ValueError, match="betas"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(p[0], before)
    assert opt.step_count == 1


def test_torch_cpu_tensor_views_are_updated_in_place():
    torch = pytest.importorskip("torch")
    w = torch.ones(4, dtype=torch.float64)
    opt = fm.SGD([w.numpy()], lr=0.5)
    opt.step([np.ones(4)])
    assert torch.equal(w, torch.full((4,), 0.5, dtype=torch.float64))


def test_float32_scalar_beyond_float32_range_becomes_inf():
    # the host scalars are float64; cast to float32 they overflow to inf, as in NumPy
    p = [np.ones(2, dtype=np.float32)]
    with np.errstate(over="ignore"):
        fm.SGD(p, lr=1e39).step([np.ones(2, dtype=np.float32)])
    np.testing.assert_array_equal(p[0], np.full(2, -np.inf, dtype=np.float32))


@pytest.mark.parametrize("path", ["flat", "list"])
def test_cached_kernel_calls_follow_every_change(path, monkeypatch):
    """step() reuses the compiled loop's entry point for the same arrays; a change of
    gradient array, kernel variant, threshold, hyperparameter or state is followed."""
    from fastmoments.optim import _dispatch

    rng = np.random.default_rng(3)
    shapes = [(4, 5), (7,)]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]

    def run(use_cache: bool) -> list[np.ndarray]:
        if not use_cache:
            monkeypatch.setattr(_dispatch, "_callee", lambda kernel, group, loop, src, args: (
                loop, None))
        params = [np.ones(s, np.float32) for s in shapes]
        target = fm.FlatParams(params) if path == "flat" else params
        opt = fm.Adam(target, lr=0.01)
        other = fm.Adam([np.ones(s, np.float32) for s in shapes], lr=0.01)
        for t in range(12):
            g = grads[t % 4] if t % 3 else grads[0]  # same arrays again, then others
            if path == "flat":
                if t % 2:
                    target.grad[:] = np.concatenate([x.ravel() for x in g])
                    opt.step(grad_scale=2.0 if t % 4 == 1 else 1.0)
                else:
                    opt.step(np.concatenate([x.ravel() for x in g]))
            else:
                opt.step(g, grad_scale=2.0 if t % 4 == 1 else 1.0)
            if t == 5:
                opt.param_groups[0]["lr"] = 0.05
                other.load_state_dict(opt.state_dict())
                opt.load_state_dict(other.state_dict())
            if t == 8:
                monkeypatch.setattr(fm.config, "parallel_threshold", 1)
        monkeypatch.setattr(fm.config, "parallel_threshold", 1 << 15)
        opt.step(grads[1] if path == "list" else None)  # serial again: an entry point
        direct = [c[2] is not None for c in opt._groups[0].calls.values()]
        assert any(direct) == use_cache, direct
        return [p.copy() for p in (target.params if path == "flat" else target)] + [
            s.copy() for s in opt._groups[0].states]

    cached = run(True)
    plain = run(False)
    for a, b in zip(cached, plain):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(cached[0], np.ones_like(cached[0]))


def test_flatparams_buffers_cannot_be_replaced():
    """Optimizers point into a FlatParams' buffers: replacing one is refused, writing
    into it is the way (and is what the next step reads)."""
    flat = fm.FlatParams([np.ones(3), np.ones(2)])
    opt = fm.SGD(flat, lr=0.5)
    for name in ("data", "grad"):
        with pytest.raises(AttributeError):
            setattr(flat, name, np.zeros(5))
    flat.grad[:] = 2.0
    opt.step()
    np.testing.assert_array_equal(flat.data, np.zeros(5))



@pytest.mark.parametrize("path", ["flat", "list"])
@pytest.mark.parametrize("name, kwargs", [
    ("Adam", {"lr": 0.01}),
    ("NAdam", {"lr": 0.01}),  # a rule with host state updated by each step's scalars
    ("SGD", {"lr": 0.05, "momentum": 0.9, "maximize": True}),
])
def test_short_path_follows_every_change(path, name, kwargs, monkeypatch):
    """step()'s short path (the last step's loop and arguments, new scalars) gives the
    same trajectory as the full path through every change it must notice: options,
    hyperparameters, lr and schedules, loss scale, threshold, state loads, new gradient
    arrays, refused gradients."""
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (6,)]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]

    def run(short: bool) -> tuple[list[np.ndarray], int]:
        params = [np.ones(s, np.float32) for s in shapes]
        target = fm.FlatParams(params) if path == "flat" else params
        opt = getattr(fm, name)(target, **kwargs)
        params = target.params if path == "flat" else params  # the arrays updated
        if not short:
            opt._short_path_capable = False
        snapshot = None
        taken = 0
        for t in range(24):
            g = grads[t % 3] if t % 5 else [x.copy() for x in grads[t % 3]]
            scale = 1.0
            if t == 2:
                opt.lr = 0.02
            elif t == 4:
                key = "betas" if "betas" in opt.param_groups[0] else "momentum"
                opt.param_groups[0][key] = (0.8, 0.99) if key == "betas" else 0.5
            elif t == 5:
                opt.max_grad_norm = 0.5
            elif t == 6:
                opt.max_grad_norm = None
            elif t == 7:
                opt.clip_value = 0.1
            elif t == 8:
                opt.clip_value = None
            elif t == 9:
                scale = 4.0
            elif t == 10:
                monkeypatch.setattr(fm.config, "parallel_threshold", 1)
            elif t == 12:
                monkeypatch.setattr(fm.config, "parallel_threshold", 1 << 15)
            elif t == 13:
                snapshot = opt.state_dict()
            elif t == 15:
                opt.load_state_dict(snapshot)
            elif t == 16:
                before = [p.copy() for p in params] + [s.copy() for s in opt._groups[0].states]
                with pytest.raises(ValueError, match=r"grads\[1\]"):
                    opt.step([g[0], np.ones(5, np.float32)])
                after = [p.copy() for p in params] + [s.copy() for s in opt._groups[0].states]
                for a, b in zip(before, after):
                    np.testing.assert_array_equal(a, b)
            elif t == 18:
                opt.lr = lambda step: 0.03 / (1 + step)
            elif t == 20:
                opt.nonfinite = "skip"
            elif t == 22:
                opt.nonfinite = "apply"
            taken += opt._short_path is not None and scale == 1.0
            if path == "flat":
                target.grad[:] = np.concatenate([x.ravel() for x in g])
                opt.step(grad_scale=scale)
            else:
                opt.step(g, grad_scale=scale)
            # the loop the step ran: parallel while the threshold says so
            callee = opt._groups[0].last_call[1]
            assert bool(getattr(callee, "targetoptions", {}).get("parallel")) == (10 <= t < 12)
        state = [s.copy() for s in opt._groups[0].states]
        return [p.copy() for p in params] + state, taken

    short, taken = run(True)
    full, none = run(False)
    assert none == 0 and taken >= 8, (taken, none)
    for a, b in zip(short, full):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(short[0], np.ones_like(short[0]))


def _count_short_path_packs(opt, packs: list) -> None:
    """Make the short path step() built (if any, and not done already) append the
    arguments of each scalar packing it makes to ``packs``."""
    hot = opt._short_path
    if hot is None or getattr(hot[3], "counted", False):
        return
    pack = hot[3]

    def counting(*args):
        packs.append(args)
        pack(*args)

    counting.counted = True
    opt._short_path = (*hot[:3], counting, *hot[4:])


@pytest.mark.parametrize("path", ["flat", "list"])
def test_short_path_packs_scalars_only_when_they_change(path):
    """The short path leaves the scalars array as it is when a step's scalars equal the
    last ones it packed (SGD, Adagrad, ... with a constant lr), and packs them when they
    change, and whenever lr is zero (0.0 and -0.0 are equal, not the same bits; the lr
    setter does not take the full path): the same parameters, bit for bit, as the full
    path after every step."""

    def run(short: bool) -> tuple[list[bytes], int]:
        params = [np.zeros(4, np.float32), np.zeros(3, np.float32)]
        target = fm.FlatParams(params) if path == "flat" else params
        opt = fm.SGD(target, lr=0.5, momentum=0.5)
        if not short:
            opt._short_path_capable = False
        grads = [np.ones(4, np.float32), np.ones(3, np.float32)]
        packs: list = []
        after = []  # the parameters after each step
        for t in range(16):
            if t == 4:
                opt.lr = 0.0
            elif t == 6:
                opt.lr = -0.0
            elif t == 8:
                opt.lr = lambda step: -0.0 if step % 2 else 0.0
            elif t == 12:
                opt.lr = 0.25
            _count_short_path_packs(opt, packs)
            data = target.data if path == "flat" else params
            for p in ([data] if path == "flat" else data):
                p[:] = -0.0  # p - lr * buf is -0.0 for lr = 0.0, 0.0 for lr = -0.0
            if path == "flat":
                target.grad[:] = 1.0
                opt.step()
            else:
                opt.step(grads)
            after.append(target.data.tobytes() if path == "flat"
                         else b"".join(p.tobytes() for p in params))
        return after, len(packs)

    (short, packs), (full, none) = run(True), run(False)
    assert none == 0
    assert short == full
    assert short[5] != short[7]  # -0.0 - 0.0 * buf and -0.0 - (-0.0) * buf
    # after the first (full) step every step takes the short path: those that repeat
    # the last scalars with lr 0.5 or 0.25 (t = 2, 3, 13, 14, 15) do not pack
    assert packs == 10, packs


def test_short_path_compares_scalars_only_for_rules_that_repeat_them():
    """Rules whose scalars change every step (bias corrections) pack them on every step
    of the short path, without comparing; those without bias correction declare that
    theirs repeat, and pack them once."""
    repeat = {name for name in ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW",
                                "Adamax", "NAdam", "RAdam", "Yogi")
              if getattr(fm, name)._scalars_repeat}
    assert repeat == {"SGD", "Adagrad", "RMSprop", "Adadelta"}
    assert fm.extra.Lion._scalars_repeat and not fm.extra.AdaBelief._scalars_repeat
    g = [np.ones(5, np.float32)]
    for cls, expected in ((fm.Adagrad, 1), (fm.Adam, 6)):
        opt = cls([np.zeros(5, np.float32)], lr=0.1)
        opt.step(g)  # the full path, which builds the short one
        packs: list = []
        _count_short_path_packs(opt, packs)
        for _ in range(6):
            opt.step(g)
        assert len(packs) == expected, cls


def test_short_path_keeps_no_reference_cycle():
    """What step() keeps for its short path does not reference the optimizer: dropping
    the last reference frees it (and its state buffers) without the cyclic GC."""
    import gc
    import weakref

    p = [np.zeros(10, np.float32)]
    opt = fm.Adam(p, lr=0.1)
    g = [np.ones(10, np.float32)]
    opt.step(g)
    opt.step(g)
    assert opt._short_path is not None
    ref = weakref.ref(opt)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del opt
        assert ref() is None
    finally:
        if enabled:
            gc.enable()
