"""ADOPT, AdEMAMix, Adan (fastmoments.optim.modern) and Schedule-Free AdamW / SGD
(fastmoments.optim.schedulefree), with and without ``cautious=True``, and Adam, AdamW and
Lion with ``cautious=True`` (C-AdamW, C-Lion): against the plain-NumPy references of
tests/reference_modern.py, pytorch-optimizer 4.1 and the ``schedulefree`` package (float64),
across the list / FlatParams / param-group paths, and CPU against CUDA under numba's
simulator."""

from __future__ import annotations

import os

import numpy as np
import pytest
import reference_modern as rm
from cases import problem
from test_reference_modern import _ScheduleFreePkg, _Torch

import fastmoments as fm
from fastmoments.optim import modern

STEPS = 40

#: (class name, keyword arguments): the table that drives these tests
MODERN_CASES: list[tuple[str, dict]] = [
    ("ADOPT", dict(lr=0.01)),
    ("ADOPT", dict(lr=0.01, weight_decay=0.1, clip_exponent=None, maximize=True)),
    ("ADOPT", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.8, 0.99))),
    ("ADOPT", dict(lr=0.01, weight_decay=0.1, cautious=True)),
    ("AdEMAMix", dict(lr=0.01)),
    ("AdEMAMix", dict(lr=0.01, t_alpha=20, t_beta3=30, weight_decay=0.1, maximize=True)),
    ("AdEMAMix", dict(lr=0.01, alpha=8.0, t_alpha=10, t_beta3=10, betas=(0.8, 0.99, 0.999),
                      cautious=True)),
    ("ScheduleFreeAdamW", dict(lr=0.01)),
    ("ScheduleFreeAdamW", dict(lr=0.01, weight_decay=0.1, warmup_steps=10, r=1.0,
                               maximize=True)),
    ("ScheduleFreeSGD", dict(lr=0.05)),
    ("ScheduleFreeSGD", dict(lr=0.05, momentum=0.8, weight_decay=0.1, warmup_steps=10,
                             weight_lr_power=1.0)),
    ("Adan", dict(lr=0.01)),
    ("Adan", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adan", dict(lr=0.01, weight_decay=0.1, no_prox=True, betas=(0.9, 0.8, 0.999),
                  cautious=True)),
    # cautious=True on the earlier element-wise rules (fastmoments.optim._cautious)
    ("Adam", dict(lr=0.01, weight_decay=0.1, cautious=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, maximize=True, cautious=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, eps_root=1e-8, cautious=True)),
    ("Lion", dict(lr=1e-3, weight_decay=0.1, cautious=True)),
    ("Lion", dict(lr=1e-3, betas=(0.8, 0.95), maximize=True, cautious=True)),
]

#: float32 against the float32 reference, in units of float32's eps (as cases.py's
#: FLOAT32_EPS_TOL): about 3 times the largest ``|mine - ref| / (1 + |ref|)`` measured over
#: this table (40 steps of cases.problem, with and without a zero first gradient): ADOPT
#: 2.9, AdEMAMix 4.5 (the reference decays as the authors write it, p - lr (u + wd p);
#: the kernel as p (1 - lr wd) - lr u), ScheduleFreeAdamW 1.9, ScheduleFreeSGD 1.7, Adan 0.6;
#: cautious Adam 0.55, AdamW 0.56, Lion 0 (its steps are +-lr * scale, the same bits)
FLOAT32_EPS_TOL = {"ADOPT": 9, "AdEMAMix": 14, "ScheduleFreeAdamW": 6, "ScheduleFreeSGD": 5,
                   "Adan": 2, "Adam": 2, "AdamW": 2, "Lion": 1}


def case_id(case: tuple[str, dict]) -> str:
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in sorted(kwargs.items()))


def tolerance(name: str, dtype) -> dict:
    if dtype == np.float64:
        return dict(rtol=1e-9, atol=1e-12)
    tol = FLOAT32_EPS_TOL[name] * float(np.finfo(np.float32).eps)
    return dict(rtol=tol, atol=tol)


def run_fm(name, kwargs, params, grad, steps=STEPS, wrap=lambda ps: ps):
    opt = getattr(fm, name)(wrap(params), **kwargs)
    for t in range(steps):
        opt.step(grad(params, t))
    return opt


def run_reference(name, kwargs, params, grad, steps=STEPS):
    opt = rm.REFERENCES_MODERN[name](params, **kwargs)
    for t in range(steps):
        opt.step(grad(params, t))
    return opt


def zero_first(grad):
    """``grad`` with an all-zero gradient at step 1."""

    def zeroed(current, t):
        out = grad(current, t)
        if t == 0:
            for g in out:
                g[...] = 0
        return out

    return zeroed


# ------------------------------------------------------------ the reference
@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference(case, dtype):
    name, kwargs = case
    params, grad = problem(dtype=dtype, steps=STEPS)
    for g in (grad, zero_first(grad)):
        mine = [p.copy() for p in params]
        ref = [p.copy() for p in params]
        opt = run_fm(name, kwargs, mine, g)
        ref_opt = run_reference(name, kwargs, ref, g)
        for a, b in zip(mine, ref, strict=True):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, **tolerance(name, dtype))
        assert any(not np.array_equal(a, p) for a, p in zip(mine, params) if a.size)
        for buffers in opt.state_dict()["state"]:
            assert all(v.dtype == dtype and np.isfinite(v).all() for v in buffers.values())
        if name.startswith("ScheduleFree"):  # and the average x, through eval()
            opt.eval()
            for a, x in zip(mine, ref_opt.x, strict=True):
                np.testing.assert_allclose(a, x, **tolerance(name, dtype))


@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
def test_list_flat_and_groups_identical(case):
    name, kwargs = case
    params, grad = problem(steps=15)
    as_list = [p.copy() for p in params]
    run_fm(name, kwargs, as_list, grad, steps=15)

    flat = fm.FlatParams([p.copy() for p in params])
    opt = getattr(fm, name)(flat, **kwargs)
    for t in range(15):
        for view, g in zip(flat.grads, grad(flat.params, t), strict=True):
            view[...] = g
        opt.step()

    groups = [p.copy() for p in params]
    opt = getattr(fm, name)([{"params": groups[:2]}, {"params": groups[2:]}], **kwargs)
    for t in range(15):
        opt.step(grad(groups, t))

    for a, b, c in zip(as_list, flat.params, groups, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
def test_parallel_loops_identical(case, monkeypatch):
    name, kwargs = case
    params, grad = problem(steps=8)
    serial = [p.copy() for p in params]
    run_fm(name, kwargs, serial, grad, steps=8)
    monkeypatch.setattr(fm.config, "parallel_threshold", 1)
    parallel = [p.copy() for p in params]
    run_fm(name, kwargs, parallel, grad, steps=8)
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", [c for c in MODERN_CASES if not c[1].get("cautious")],
                         ids=case_id)
def test_plain_kernels_and_options_identical(case, monkeypatch):
    """The plain variant (neutral scalars compiled in) gives the general kernel's bits; a
    gradient clipped by a bound it never reaches gives the same trajectory too."""
    from fastmoments.optim import _dispatch

    name, kwargs = case
    params, grad = problem(steps=8)
    plain = [p.copy() for p in params]
    run_fm(name, kwargs, plain, grad, steps=8)
    monkeypatch.setattr(_dispatch, "_plain_variant", lambda kernel, scalars: None)
    general = [p.copy() for p in params]
    run_fm(name, kwargs, general, grad, steps=8)
    clipped = [p.copy() for p in params]
    run_fm(name, dict(kwargs, clip_value=1e30), clipped, grad, steps=8)
    for a, b, c in zip(plain, general, clipped, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
def test_state_dict_round_trip_continues_identically(case):
    name, kwargs = case
    params, grad = problem(steps=10)
    a = [p.copy() for p in params]
    opt_a = run_fm(name, kwargs, a, grad, steps=5)
    b = [p.copy() for p in a]
    opt_b = getattr(fm, name)(b, **kwargs)
    opt_b.load_state_dict(opt_a.state_dict())
    for t in range(5, 10):
        opt_a.step(grad(a, t))
        opt_b.step(grad(b, t))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_checkpoint_of_every_class(tmp_path):
    """The hyperparameters are numbers, booleans and None: a checkpoint can hold them
    (ADOPT's clip bound is an exponent, not a callable, for that)."""
    for name, kwargs in MODERN_CASES:
        params, grad = problem(steps=6)
        a = [p.copy() for p in params]
        opt_a = run_fm(name, kwargs, a, grad, steps=3)
        path = tmp_path / f"{name}.npz"
        opt_a.save(path)
        b = [np.zeros_like(p) for p in params]
        opt_b = getattr(fm, name)(b, **kwargs)
        opt_b.load(path)
        for t in range(3, 6):
            opt_a.step(grad(a, t))
            opt_b.step(grad(b, t))
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


# ------------------------------------------------- the packages (float64)
FM_VS_PO = [
    ("ADOPT", dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    ("ADOPT", dict(lr=0.01, cautious=True), dict(lr=0.01, cautious=True)),
    ("AdEMAMix", dict(lr=0.01, t_alpha=15, t_beta3=15, weight_decay=0.1),
     dict(lr=0.01, t_alpha_beta3=15, weight_decay=0.1, weight_decouple=True)),
    ("AdEMAMix", dict(lr=0.01, alpha=0.0, cautious=True),
     dict(lr=0.01, alpha=0.0, cautious=True)),
    ("Adan", dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    # not maximize: pytorch-optimizer's Adan stores -g before negating g for maximize, so
    # its first difference is -2 g instead of 0 (tests/test_reference_modern.py shows it)
    ("Adan", dict(lr=0.01, weight_decay=0.1, no_prox=True),
     dict(lr=0.01, weight_decay=0.1, weight_decouple=True)),
    # C-Lion; pytorch-optimizer 4.1 has no cautious Adam or AdamW
    ("Lion", dict(lr=1e-3, weight_decay=0.1, cautious=True),
     dict(lr=1e-3, weight_decay=0.1, cautious=True)),
    ("Lion", dict(lr=1e-3, betas=(0.8, 0.95), maximize=True, cautious=True),
     dict(lr=1e-3, betas=(0.8, 0.95), maximize=True, cautious=True)),
]


@pytest.mark.parametrize("case", FM_VS_PO, ids=[case_id(c[:2]) for c in FM_VS_PO])
def test_matches_pytorch_optimizer(case, torch64):
    """pytorch-optimizer with the authors' conventions where it differs (ADOPT's clip at
    step - 1, AdEMAMix's decoupled decay; see test_reference_modern)."""
    po = pytest.importorskip("pytorch_optimizer")
    name, kwargs, po_kwargs = case
    if name == "ADOPT":
        po_kwargs = dict(po_kwargs, clip_lambda=lambda s: (s - 1) ** 0.25)
    params, grad = problem(steps=STEPS)
    mine = [p.copy() for p in params]
    opt = getattr(fm, name)(mine, **kwargs)
    theirs = _Torch(getattr(po, name), params, foreach=False, **po_kwargs)
    for t in range(STEPS):
        g = grad(mine, t)
        opt.step(g)
        theirs.step([x.copy() for x in g])
        for a, b in zip(mine, theirs.values(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"step {t + 1}")


@pytest.mark.parametrize("name, kwargs", [
    ("ScheduleFreeAdamW", dict(lr=0.01, weight_decay=0.1, warmup_steps=10)),
    ("ScheduleFreeSGD", dict(lr=0.05, momentum=0.8, weight_decay=0.1, warmup_steps=10, r=1.0)),
])
def test_schedule_free_matches_the_package(name, kwargs, torch64):
    """y at every step, and x through eval() / back to y through train() now and then,
    over the FlatParams path (one buffer) and the list path."""
    sf = pytest.importorskip("schedulefree")
    cls = {"ScheduleFreeAdamW": sf.AdamWScheduleFree, "ScheduleFreeSGD": sf.SGDScheduleFree}
    params, grad = problem(steps=STEPS)
    flat = fm.FlatParams([p.copy() for p in params])
    mine = [p.copy() for p in params]
    opts = [getattr(fm, name)(flat, **kwargs), getattr(fm, name)(mine, **kwargs)]
    theirs = _ScheduleFreePkg(cls[name], params, foreach=False, **kwargs)
    for t in range(STEPS):
        g = grad(mine, t)
        for view, x in zip(flat.grads, g, strict=True):
            view[...] = x
        opts[0].step()
        opts[1].step(g)
        theirs.step([x.copy() for x in g])
        if t % 9 == 4:
            for opt in opts:
                opt.eval()
                assert not opt.train_mode
            theirs.eval()
            for ps in (flat.params, mine):
                for a, b in zip(ps, theirs.values(), strict=True):
                    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
            for opt in opts:
                opt.train()
            theirs.train()
        for ps in (flat.params, mine):
            for a, b in zip(ps, theirs.values(), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12,
                                           err_msg=f"step {t + 1}")


# ------------------------------------------------------------ Schedule-Free
@pytest.mark.parametrize("name", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_schedule_free_modes(name, tmp_path):
    params, grad = problem(steps=6)
    p = [x.copy() for x in params]
    opt = getattr(fm, name)(p, lr=0.01)
    assert opt.train_mode
    opt.eval()  # before the first step: nothing moves, the mode changes
    assert not opt.train_mode
    for a, b in zip(p, params, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="train"):
        opt.step(grad(p, 0))
    assert opt.step_count == 0
    opt.train()
    opt.train()  # twice: nothing more
    # the parameters changed after the optimizer was built: z starts from them
    for x in p:
        x += 1.0
    moved = [x.copy() for x in p]
    ref = rm.REFERENCES_MODERN[name](moved, lr=0.01)
    for t in range(3):
        opt.step(grad(p, t))
        ref.step(grad(moved, t))
    np.testing.assert_allclose(np.concatenate([x.ravel() for x in p]),
                               np.concatenate([x.ravel() for x in moved]), rtol=1e-12)
    y = [x.copy() for x in p]
    opt.eval()
    opt.eval()  # twice: nothing more
    for a, x in zip(p, ref.x, strict=True):
        np.testing.assert_allclose(a, x, rtol=1e-12, atol=1e-14)
    opt.save(tmp_path / "sf.npz")  # the package's advice: save in eval mode
    opt.train()
    for a, b in zip(p, y, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    q = [np.zeros_like(x) for x in params]
    other = getattr(fm, name)(q, lr=0.01)
    other.load(tmp_path / "sf.npz")
    assert not other.train_mode
    other.train()
    for t in range(3, 6):
        opt.step(grad(p, t))
        other.step(grad(q, t))
    for a, b in zip(p, q, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------ cautious
@pytest.mark.parametrize("name", ["ADOPT", "AdEMAMix", "Adan"])
def test_cautious_runs_two_passes_and_no_short_path(name):
    params, grad = problem(steps=4)
    p = [x.copy() for x in params]
    opt = getattr(fm, name)(p, lr=0.01, cautious=True)
    numel = sum(x.size for x in p)
    n_states = len(opt._groups[0].state)
    # the count pass reads g and the states (p too with ADOPT's L2 decay, not used here)
    assert opt.traffic()[0][0] == (1 + n_states, n_states, numel)
    assert opt.traffic()[0][1][1:] == (1, numel)
    for t in range(3):
        opt.step(grad(p, t))
        assert opt._short_path is None
    plain = getattr(fm, name)([x.copy() for x in params], lr=0.01)
    assert plain.traffic() == [[(2 + n_states, 1 + n_states, numel)]]
    for t in range(2):
        plain.step(grad(params, t))
    assert plain._short_path is not None  # the element-wise variant keeps step()'s short path
    # cautious can be switched through param_groups (validated, state kept)
    plain.param_groups[0]["cautious"] = True
    plain.step(grad(params, 2))
    assert plain._groups[0].kernel is type(plain)._cautious
    plain.param_groups[0]["cautious"] = "yes"
    with pytest.raises(TypeError, match="cautious"):
        plain.step(grad(params, 3))


@pytest.mark.parametrize("name, kwargs, passes", [
    ("Adam", {}, [(2, 0), (4, 3)]),  # count: g, m; then Adam's pass
    ("Adam", {"weight_decay": 0.1}, [(3, 0), (4, 3)]),  # L2: the count reads p too
    ("AdamW", {"amsgrad": True, "weight_decay": 0.1}, [(2, 0), (5, 4)]),
    ("Lion", {"weight_decay": 0.1}, [(2, 0), (3, 2)]),
])
def test_cautious_adam_adamw_lion_keep_the_default_as_it_was(name, kwargs, passes):
    """cautious=False leaves the class as it was: its element-wise _run, step()'s short
    path, no reference cycle; cautious=True runs two passes (the first reads g and
    exp_avg, and p for L2 decay, and stores nothing), and can be switched through
    param_groups both ways."""
    import gc
    import weakref

    from fastmoments.optim.base import Optimizer

    cls = getattr(fm, name)
    assert cls._run is Optimizer._run
    params, grad = problem(steps=8)
    numel = sum(x.size for x in params)
    plain = cls([x.copy() for x in params], lr=0.01, **kwargs)
    assert "_run" not in vars(plain)
    assert len(plain.traffic()[0]) == 1
    cautious = cls([x.copy() for x in params], lr=0.01, cautious=True, **kwargs)
    assert cautious.traffic() == [[(r, w, numel) for r, w in passes]]
    for t in range(3):
        plain.step(grad(plain._groups[0].params, t))
        cautious.step(grad(cautious._groups[0].params, t))
        assert cautious._short_path is None
    assert plain._short_path is not None
    assert "_run" not in vars(plain)
    # the cautious optimizer is freed without the cyclic GC (its _run holds a weak reference)
    ref = weakref.ref(cautious)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del cautious
        assert ref() is None
    finally:
        if enabled:
            gc.enable()
    # switched on, then off again: the short path comes back
    plain.param_groups[0]["cautious"] = True
    plain.step(grad(plain._groups[0].params, 3))
    assert plain._short_path is None and len(plain.traffic()[0]) == 2
    plain.param_groups[0]["cautious"] = False
    for t in (4, 5):
        plain.step(grad(plain._groups[0].params, t))
    assert plain._short_path is not None and len(plain.traffic()[0]) == 1


def test_cautious_is_refused_with_int8_state_over_16bit_parameters():
    # (bfloat16 state, 16-bit parameters and int8 state over float32 ones work:
    # tests/test_precision_cautious.py)
    half = pytest.importorskip("ml_dtypes").bfloat16
    with pytest.raises(ValueError, match="needs float32 or float64 parameters"):
        fm.AdamW([np.zeros(3, half)], state_dtype="int8", cautious=True)
    opt = fm.Lion([np.zeros(3, half)], state_dtype="int8", state_rounding="stochastic")
    opt.step([np.ones(3, half)])
    before = opt.state_dict()
    opt.param_groups[0]["cautious"] = True
    with pytest.raises(ValueError, match="param_groups\\[0\\]"):
        opt.step([np.ones(3, half)])
    assert opt.step_count == 1
    after = opt.state_dict()["state"][0]
    assert set(after) == set(before["state"][0])  # codes, scales, small tensors' values
    for name, array in after.items():
        np.testing.assert_array_equal(array, before["state"][0][name])


def test_cautious_lion_by_hand():
    """Lion's steps where sign(c) agrees with g, times numel / (agreeing + 1): at the
    first step the second element's c points against its gradient and the third's c is
    0 (one agrees: 3 / 2), at the second every one agrees (3 / 4)."""
    p = np.zeros(3)
    opt = fm.Lion([p], lr=0.1, betas=(0.5, 0.5), cautious=True)
    opt.state[0]["exp_avg"][...] = [1.0, 4.0, -1.0]
    opt.step([np.array([2.0, -1.0, 1.0])])  # c = [1.5, 1.5, 0]
    np.testing.assert_allclose(p, [-0.15, 0.0, 0.0], rtol=1e-15)
    opt.step([np.array([1.0, 1.0, 1.0])])  # m = [1.5, 1.5, 0], c = [1.25, 1.25, 0.5]
    np.testing.assert_allclose(p, [-0.225, -0.075, -0.075], rtol=1e-15)


def test_cautious_scale_is_per_tensor():
    """Two tensors whose updates all agree with the gradient: the first (3 elements) is
    scaled by 3 / (3 + 1), the second (2 elements) by 2 / (2 + 1)."""
    a, b = np.zeros(3), np.zeros(2)
    opt = fm.ADOPT([a, b], lr=0.1, betas=(0.0, 0.9), cautious=True, clip_exponent=None)
    g1 = [np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0])]
    opt.step(g1)  # v = g^2
    g2 = [np.array([2.0, -3.0, 4.0]), np.array([-1.0, 5.0])]
    opt.step(g2)  # beta1 = 0: m = g / |g_1| = g, every sign agrees
    np.testing.assert_allclose(a, -0.1 * np.array([2.0, -3.0, 4.0]) * 3 / 4)
    np.testing.assert_allclose(b, -0.1 * np.array([-1.0, 5.0]) * 2 / 3)


# ------------------------------------------------------------ validation
@pytest.mark.parametrize("name, kwargs, match", [
    ("ADOPT", dict(clip_exponent=-1.0), "clip_exponent"),
    ("ADOPT", dict(clip_exponent="0.25"), "clip_exponent"),
    ("ADOPT", dict(betas=(0.9, 1.0)), "betas"),
    ("ADOPT", dict(cautious=1), "cautious"),
    ("AdEMAMix", dict(betas=(0.9, 0.999)), "betas"),
    ("AdEMAMix", dict(betas=(0.9, 0.999, 1.0)), "betas"),
    ("AdEMAMix", dict(alpha=-1.0), "alpha"),
    ("AdEMAMix", dict(t_alpha=-5), "t_alpha"),
    ("AdEMAMix", dict(t_beta3=float("inf")), "t_beta3"),
    ("Adan", dict(betas=(0.98, 0.92)), "betas"),
    ("Adan", dict(no_prox=None), "no_prox"),
    ("Adan", dict(eps=-1e-8), "eps"),
    ("ScheduleFreeAdamW", dict(betas=(0.0, 0.999)), "betas"),
    ("ScheduleFreeAdamW", dict(warmup_steps=-1), "warmup_steps"),
    ("ScheduleFreeAdamW", dict(weight_lr_power=float("nan")), "weight_lr_power"),
    ("ScheduleFreeSGD", dict(momentum=0.0), "momentum"),
    ("ScheduleFreeSGD", dict(momentum=1.0), "momentum"),
    ("ScheduleFreeSGD", dict(r=-1.0), "r"),
])
def test_invalid_hyperparameters(name, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(fm, name)([np.ones(3)], **kwargs)


def test_ademamix_schedules_are_the_references():
    for t in (1, 7, 29, 30, 31, 500):
        assert modern.ademamix_alpha(t, 8.0, 30) == rm.ademamix_alpha(t, 8.0, 30)
        assert modern.ademamix_beta3(t, 0.9, 0.9999, 30) == rm.ademamix_beta3(t, 0.9, 0.9999,
                                                                                30)
        assert modern.ademamix_beta3(t, 0.0, 0.999, 30) == rm.ademamix_beta3(t, 0.0, 0.999, 30)
    assert modern.ademamix_beta3(3, 0.9, 0.0, 30) == 0.0


# ------------------------------------------------------------ CUDA (simulator)
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"  # set by conftest.py
CUDA_STEPS = 4
CUDA_SHAPES = [(3, 5), (3,), (0,), (2, 2, 3)]


def _cuda():
    from numba import cuda

    if not SIMULATED and not cuda.is_available():
        pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set")
    return cuda


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 3)  # not a power of two
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 2)


def _cuda_tolerance(dtype):
    # the simulator evaluates math.sqrt in float64 then rounds: float32 differs by ulps
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


# the simulator is slow: every row in float64, one row of each class in float32
CUDA_CASES = [(c, np.float64) for c in MODERN_CASES] + [
    (c, np.float32) for c in MODERN_CASES if c[1].get("weight_decay") and c[0] != "ADOPT"
] + [(MODERN_CASES[3], np.float32)]


@pytest.mark.parametrize(("case", "dtype"), CUDA_CASES,
                         ids=[f"{case_id(c)}-{np.dtype(d)}" for c, d in CUDA_CASES])
def test_cuda_matches_cpu(case, dtype, small_blocks):
    cuda = _cuda()
    name, kwargs = case
    params, grad = problem(shapes=CUDA_SHAPES, steps=CUDA_STEPS, dtype=dtype)
    cpu = [p.copy() for p in params]
    opt_cpu = getattr(fm, name)(cpu, **kwargs)
    device = [cuda.to_device(p) for p in params]
    opt_list = getattr(fm, name)(device, **kwargs)
    flat = fm.FlatParams([cuda.to_device(p) for p in params])
    opt_flat = getattr(fm, name)(flat, **kwargs)
    for t in range(CUDA_STEPS):
        opt_cpu.step(grad(cpu, t))
        host = [d.copy_to_host() for d in device]
        opt_list.step([cuda.to_device(g) for g in grad(host, t)])
        host = [v.copy_to_host() for v in flat.params]
        for view, g in zip(flat.grads, grad(host, t), strict=True):
            if g.size:
                view.copy_to_device(g)
        opt_flat.step()
    tol = _cuda_tolerance(dtype)
    for a, b, c in zip(cpu, device, flat.params, strict=True):
        np.testing.assert_allclose(b.copy_to_host(), a, **tol)
        np.testing.assert_allclose(c.copy_to_host(), a, **tol)
    if name.startswith("ScheduleFree"):  # eval() and train() in place on the device
        for opt in (opt_cpu, opt_list, opt_flat):
            opt.eval()
        for a, b, c in zip(cpu, device, flat.params, strict=True):
            np.testing.assert_allclose(b.copy_to_host(), a, **tol)
            np.testing.assert_allclose(c.copy_to_host(), a, **tol)
        for opt in (opt_cpu, opt_list, opt_flat):
            opt.train()
        for a, b, c in zip(cpu, device, flat.params, strict=True):
            np.testing.assert_allclose(b.copy_to_host(), a, **tol)
            np.testing.assert_allclose(c.copy_to_host(), a, **tol)
    for buffers in opt_flat.state_dict()["state"]:
        assert all(isinstance(v, np.ndarray) for v in buffers.values())
