"""Gradient tools: clipping by global norm and by value (fused into the step), the
returned global norm, and weight-decay masks, against torch.nn.utils + torch.optim."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from cases import problem

import fastmoments as fm
from fastmoments import extra

STEPS = 30



TORCH_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, amsgrad=True)),
]


def _scaled(grad, factor):
    return lambda ps, t: [g * factor for g in grad(ps, t)]


def _torch_run(torch, name, kwargs, params, grad, clip, steps=STEPS, groups=None):
    """torch.optim with torch.nn.utils clipping; returns (params, norms)."""
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    spec = tensors if groups is None else [{"params": tensors[a:b], **h} for a, b, h in groups]
    opt = getattr(torch.optim, name)(spec, foreach=False, **kwargs)
    norms = []
    for t in range(steps):
        current = [x.detach().numpy() for x in tensors]
        for x, g in zip(tensors, grad(current, t), strict=True):
            x.grad = torch.from_numpy(g.copy())
        norms.append(clip(tensors))
        opt.step()
    return [x.detach().numpy() for x in tensors], norms


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipping, and a bound never reached
def test_max_grad_norm_matches_clip_grad_norm(torch64, case, max_norm):
    torch = torch64
    name, kwargs = case
    params, grad = problem(steps=STEPS)
    grad = _scaled(grad, 3.0)  # norms of ~10: 0.5 clips every step
    theirs, norms = _torch_run(
        torch, name, kwargs, params, grad,
        lambda ts: float(torch.nn.utils.clip_grad_norm_(ts, max_norm)))
    mine = [p.copy() for p in params]
    opt = getattr(fm, name)(mine, max_grad_norm=max_norm, **kwargs)
    for t in range(STEPS):
        norm = opt.step(grad(mine, t))
        assert norm == pytest.approx(norms[t], rel=1e-12)
        assert opt.last_grad_norm == norm
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    if max_norm == 0.5:
        assert min(norms) > 0.5  # it did clip


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c[0])
def test_clip_value_matches_clip_grad_value(torch64, case):
    torch = torch64
    name, kwargs = case
    params, grad = problem(steps=STEPS)

    def clip(ts):
        torch.nn.utils.clip_grad_value_(ts, 0.3)

    theirs, _ = _torch_run(torch, name, kwargs, params, grad, clip)
    mine = [p.copy() for p in params]
    opt = getattr(fm, name)(mine, clip_value=0.3, **kwargs)
    for t in range(STEPS):
        assert opt.step(grad(mine, t)) is None  # no norm computed without max_grad_norm
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_norm_then_value_with_groups_flat_and_loss_scale(torch64):
    """Both clippings (torch: clip_grad_norm_ then clip_grad_value_), the norm global
    across param groups, and a loss scale divided out before either."""
    torch = torch64
    params, grad = problem(steps=STEPS)
    scale = 1024.0

    def clip(ts):
        norm = float(torch.nn.utils.clip_grad_norm_(ts, 1.0))
        torch.nn.utils.clip_grad_value_(ts, 0.1)
        return norm

    groups = [(0, 2, {"lr": 0.02}), (2, 4, {})]
    theirs, norms = _torch_run(torch, "Adam", dict(lr=0.01), params, grad, clip, groups=groups)

    mine = [p.copy() for p in params]
    opt = fm.Adam([{"params": mine[:2], "lr": 0.02}, {"params": mine[2:]}], lr=0.01,
                  max_grad_norm=1.0, clip_value=0.1)
    flat = fm.FlatParams([p.copy() for p in params])
    opt_flat = fm.Adam([{"params": flat, "lr": 0.01}], max_grad_norm=1.0, clip_value=0.1)
    for t in range(STEPS):
        norm = opt.step([g * scale for g in grad(mine, t)], grad_scale=scale)
        assert norm == pytest.approx(norms[t], rel=1e-12)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # one FlatParams group: the norm is the same function of the flat buffer
    for t in range(3):
        for view, g in zip(flat.grads, grad(flat.params, t), strict=True):
            view[...] = g
        ref = np.sqrt(sum(float(np.sum(g * g)) for g in flat.grads))
        assert opt_flat.step() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("name", ["LAMB", "NDAdam", "SWATS", "AdaBelief", "Lion"])
def test_clipping_reaches_the_multi_pass_rules(name):
    """The fused clip factor and value bound apply in every pass of the extra rules."""
    params, grad = problem(steps=STEPS)
    kwargs = dict(lr=0.01, switch_tol=1e-3) if name == "SWATS" else dict(lr=0.01)
    mine = [p.copy() for p in params]
    opt = getattr(extra, name)(mine, max_grad_norm=1.0, clip_value=0.05, **kwargs)
    ref = [p.copy() for p in params]
    ref_opt = reference.REFERENCES[name](ref, **kwargs)
    for t in range(STEPS):
        norm = opt.step(grad(mine, t))
        g = grad(ref, t)
        total = np.sqrt(sum(float(np.sum(x * x)) for x in g))
        assert norm == pytest.approx(total, rel=1e-12)
        coef = min(1.0, 1.0 / (total + 1e-6))
        ref_opt.step([np.clip(x * coef, -0.05, 0.05) for x in g])
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_step_options_are_settable_validated_and_followed():
    """nonfinite, max_grad_norm and clip_value can change between steps; a bad value is
    refused and leaves the old one."""
    params, grad = problem(steps=STEPS)
    mine, ref = [p.copy() for p in params], [p.copy() for p in params]
    opt = fm.Adam(mine, lr=0.01)
    ref_opt = fm.Adam(ref, lr=0.01)
    for name, bad in (("max_grad_norm", -1.0), ("clip_value", 0.0), ("nonfinite", "ignore")):
        with pytest.raises(ValueError, match=name):
            setattr(opt, name, bad)
    assert (opt.nonfinite, opt.max_grad_norm, opt.clip_value) == ("apply", None, None)
    for t in range(STEPS):
        if t == 10:  # switched on half way: the same as clipping by hand from here
            opt.max_grad_norm, opt.clip_value = 1.0, 0.05
        if t == 20:
            opt.max_grad_norm = opt.clip_value = None
        g = grad(mine, t)
        norm = opt.step(g)
        r = grad(ref, t)
        if 10 <= t < 20:
            total = np.sqrt(sum(float(np.sum(x * x)) for x in r))
            assert norm == pytest.approx(total, rel=1e-12)
            coef = min(1.0, 1.0 / (total + 1e-6))
            r = [np.clip(x * coef, -0.05, 0.05) for x in r]
        else:
            assert norm is None
        ref_opt.step(r)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    opt.nonfinite = "skip"
    before = [p.copy() for p in mine]
    opt.step([np.full_like(p, np.nan) for p in mine])
    assert opt.last_step_skipped
    for a, b in zip(mine, before, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ decay masks
def test_decay_mask_default_decays_matrices_only():
    w1, b1, w2, gain = np.ones((3, 2)), np.ones(3), np.ones((2, 2, 2)), np.ones(2)
    groups = extra.decay_mask_groups([w1, b1, w2, gain], 0.1, lr=0.5)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(g["lr"] == 0.5 for g in groups)
    assert groups[0]["params"][0] is w1 and groups[0]["params"][1] is w2
    assert groups[1]["params"][0] is b1 and groups[1]["params"][1] is gain
    # with zero gradients AdamW only decays the matrices: p <- (1 - lr wd) p
    opt = fm.AdamW(groups)
    opt.step([np.zeros_like(p) for g in groups for p in g["params"]])
    np.testing.assert_allclose(w1, 0.95)
    np.testing.assert_allclose(w2, 0.95)
    np.testing.assert_array_equal(b1, 1.0)
    np.testing.assert_array_equal(gain, 1.0)


def test_decay_mask_forms():
    named = {"fc.weight": np.ones((2, 2)), "fc.bias": np.ones(2), "norm.weight": np.ones(2),
             "emb": np.ones((4, 2))}
    groups = extra.decay_mask_groups(named, 0.01,
                                     mask=lambda n, p: p.ndim >= 2 and not n.startswith("emb"))
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["params"][0] is named["fc.weight"]
    by_name = {"fc.weight": True, "fc.bias": False, "norm.weight": False, "emb": True}
    groups = extra.decay_mask_groups(named, 0.01, mask=by_name)
    assert [len(g["params"]) for g in groups] == [2, 2]
    arrays = list(named.values())
    groups = extra.decay_mask_groups(arrays, 0.01, mask=[False, False, False, False])
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    groups = extra.decay_mask_groups(arrays, 0.01, mask=lambda p: p.shape[0] == 2)
    assert [len(g["params"]) for g in groups] == [3, 1]


def test_decay_mask_errors():
    a = [np.ones((2, 2)), np.ones(2)]
    with pytest.raises(ValueError, match="2 parameters"):
        extra.decay_mask_groups(a, 0.1, mask=[True])
    with pytest.raises(TypeError, match="bools"):
        extra.decay_mask_groups(a, 0.1, mask=[1, 0])
    with pytest.raises(ValueError, match="weight_decay"):
        extra.decay_mask_groups(a, -0.1)
    with pytest.raises(TypeError, match="FlatParams"):
        extra.decay_mask_groups(fm.FlatParams(a), 0.1)
    with pytest.raises(TypeError, match="mapping"):
        extra.decay_mask_groups(a, 0.1, mask={"w": True})
    with pytest.raises(ValueError, match="no entry"):
        extra.decay_mask_groups({"w": a[0], "b": a[1]}, 0.1, mask={"w": True})


def test_decay_mask_groups_match_torch_param_groups(torch64):
    torch = torch64
    params, grad = problem(steps=STEPS)
    order = [0, 3, 1, 2]  # the decayed (ndim >= 2) params first, as the groups list them
    mine = [p.copy() for p in params]
    groups = extra.decay_mask_groups(mine, 0.1)
    assert [id(p) for g in groups for p in g["params"]] == [id(mine[i]) for i in order]
    opt = fm.AdamW(groups, lr=0.01)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = torch.optim.AdamW(
        [{"params": [tensors[0], tensors[3]], "weight_decay": 0.1},
         {"params": [tensors[1], tensors[2]], "weight_decay": 0.0}], lr=0.01, foreach=False)
    for t in range(STEPS):
        g = grad(mine, t)
        opt.step([g[i] for i in order])
        current = [x.detach().numpy() for x in tensors]
        for x, gi in zip(tensors, grad(current, t), strict=True):
            x.grad = torch.from_numpy(gi)
        topt.step()
    for a, x in zip(mine, tensors, strict=True):
        np.testing.assert_allclose(a, x.detach().numpy(), rtol=1e-9, atol=1e-12)
