"""fastmoments.extra (AdaBelief, Lion, LAMB, NDAdam, SWATS, Yogi's v0) and the Adam options
amsgrad_bias_correction / eps_root against the NumPy reference, across every path."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import reference
from cases import SHAPES, float32_tol, problem

import fastmoments as fm
from fastmoments import extra
from fastmoments.kernels.segmented import SegmentedKernel
from fastmoments.optim import lamb, multipass, ndadam, swats

STEPS = 60

#: (class name, keyword arguments): the table that drives these tests and test_cuda_extra
EXTRA_CASES: list[tuple[str, dict]] = [
    ("AdaBelief", dict(lr=0.01)),
    ("AdaBelief", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("AdaBelief", dict(lr=0.01, decoupled_weight_decay=False, weight_decay=0.1,
                       betas=(0.8, 0.99), eps=1e-8)),
    ("Lion", dict(lr=0.01)),
    ("Lion", dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.95), maximize=True)),
    ("LAMB", dict(lr=0.01)),
    ("LAMB", dict(lr=0.01, weight_decay=0.1, eps=1e-4, maximize=True)),
    ("NDAdam", dict(lr=0.01)),
    ("NDAdam", dict(lr=0.01, axis=0, betas=(0.8, 0.99), maximize=True)),  # strided vectors
    ("NDAdam", dict(lr=0.05, axis=(-2, -1), eps=1e-4)),
    ("SWATS", dict(lr=0.01)),  # stays in the Adam phase
    ("SWATS", dict(lr=0.01, switch_tol=1e-3)),  # switches at step 3
    ("SWATS", dict(lr=0.01, weight_decay=0.1, nesterov=True, switch_tol=1e-3, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, amsgrad_bias_correction=False)),
    ("AdamW", dict(lr=0.01, amsgrad=True, amsgrad_bias_correction=False, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, eps_root=1e-3, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, eps_root=1e-3, amsgrad=True, maximize=True)),
]


def make(name: str):
    return getattr(extra, name, None) or getattr(fm, name)


def case_id(case: tuple[str, dict]) -> str:
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in sorted(kwargs.items()))


def run_fm(name, kwargs, params, grad, steps=STEPS, wrap=lambda ps: ps):
    opt = make(name)(wrap(params), **kwargs)
    for t in range(steps):
        opt.step(grad(params, t))
    return opt


def run_reference(name, kwargs, params, grad, steps=STEPS):
    opt = reference.REFERENCES[name](params, **kwargs)
    for t in range(steps):
        opt.step(grad(params, t))
    return opt


def run_flat(name, kwargs, params, grad, steps=STEPS):
    flat = fm.FlatParams([p.copy() for p in params])
    opt = make(name)(flat, **kwargs)
    for t in range(steps):
        for view, g in zip(flat.grads, grad(flat.params, t), strict=True):
            view[...] = g
        opt.step()
    return flat.params, opt


def run_groups(name, kwargs, params, grad, steps=STEPS):
    groups = [p.copy() for p in params]
    opt = make(name)([{"params": groups[:2]}, {"params": groups[2:]}], **kwargs)
    for t in range(steps):
        opt.step(grad(groups, t))
    return groups, opt


# ------------------------------------------------------------ the reference
@pytest.mark.parametrize("case", EXTRA_CASES, ids=case_id)
def test_matches_reference_every_path(case):
    name, kwargs = case
    params, grad = problem()
    ref = [p.copy() for p in params]
    ref_opt = run_reference(name, kwargs, ref, grad)
    mine = [p.copy() for p in params]
    opt = run_fm(name, kwargs, mine, grad)
    flat, opt_flat = run_flat(name, kwargs, params, grad)
    groups, opt_groups = run_groups(name, kwargs, params, grad)
    for a, b, c, r in zip(mine, flat, groups, ref, strict=True):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(b, a)  # one chunk table: the same sums
        # groups: SWATS's global sums are added in another order (round-off only)
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-15)
    assert any(not np.array_equal(a, p) for a, p in zip(mine, params, strict=True) if a.size)
    if name == "SWATS":
        for o in (opt, opt_flat, opt_groups):
            assert o.switched == ref_opt.switched
            assert o.switch_step == ref_opt.switch_step
            if ref_opt.switched:
                assert o.sgd_lr == pytest.approx(ref_opt.sgd_lr, rel=1e-12)


@pytest.mark.parametrize("case", EXTRA_CASES, ids=case_id)
def test_float32_matches_reference(case):
    name, kwargs = case
    params, grad = problem(dtype=np.float32)
    mine = [p.copy() for p in params]
    ref = [p.copy() for p in params]
    opt = run_fm(name, kwargs, mine, grad)
    run_reference(name, kwargs, ref, grad)
    for a, b in zip(mine, ref, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, **float32_tol(name))
    for buffers in opt.state_dict()["state"]:
        assert all(v.dtype == np.float32 for v in buffers.values())


@pytest.mark.parametrize("case", EXTRA_CASES, ids=case_id)
def test_parallel_loops_identical(case, monkeypatch):
    name, kwargs = case
    params, grad = problem(steps=10)
    serial = [p.copy() for p in params]
    run_fm(name, kwargs, serial, grad, steps=10)
    monkeypatch.setattr(fm.config, "parallel_threshold", 1)
    parallel = [p.copy() for p in params]
    run_fm(name, kwargs, parallel, grad, steps=10)
    flat, _ = run_flat(name, kwargs, params, grad, steps=10)
    for a, b, c in zip(serial, parallel, flat, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("case", EXTRA_CASES, ids=case_id)
def test_state_dict_round_trip_continues_identically(case):
    name, kwargs = case
    params, grad = problem(steps=30)
    a = [p.copy() for p in params]
    opt_a = run_fm(name, kwargs, a, grad, steps=15)
    saved = opt_a.state_dict()
    b = [p.copy() for p in params]
    opt_b = make(name)(b, **kwargs)
    for x, y in zip(b, a, strict=True):  # the model's weights restored after building the optimizer
        x[...] = y
    opt_b.load_state_dict(saved)
    assert opt_b.step_count == 15
    for t in range(15, 30):
        opt_a.step(grad(a, t))
        opt_b.step(grad(b, t))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert all(isinstance(v, float) for h in saved["host_state"] for v in h.values())


# ------------------------------------------------------------------ details
def test_swats_switch_is_observable_and_saved():
    params, grad = problem(steps=40)
    a = [p.copy() for p in params]
    opt = extra.SWATS(a, lr=0.01, switch_tol=1e-3)
    assert not opt.switched and opt.switch_step is None and opt.sgd_lr is None
    for t in range(2):
        opt.step(grad(a, t))
    assert not opt.switched
    opt.step(grad(a, 2))
    assert opt.switched and opt.switch_step == 3 and opt.sgd_lr > 0
    sd = opt.state_dict()
    assert sd["host_state"][0]["switched"] == 1.0 and sd["host_state"][0]["switch_step"] == 3.0
    # the SGD phase: momentum SGD at (1 - beta1) * sgd_lr, no Adam moments touched
    m_before = opt.state[0]["exp_avg"].copy()
    b = [p.copy() for p in a]
    buf = [np.zeros_like(p) for p in a]
    for t in range(3, 8):
        g = grad(a, t)
        opt.step(g)
        for p, gi, v in zip(b, g, buf, strict=True):
            v[...] = 0.9 * v + gi
            p -= 0.1 * opt.sgd_lr * v
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], m_before)
    # a fresh optimizer loading the state is in the SGD phase
    c = [p.copy() for p in a]
    opt_c = extra.SWATS(c, lr=0.01, switch_tol=1e-3)
    opt_c.load_state_dict(opt.state_dict())
    assert opt_c.switched and opt_c.switch_step == 3 and opt_c.sgd_lr == opt.sgd_lr


def test_swats_sgd_rate_follows_the_schedule_after_the_switch():
    params, grad = problem(steps=10)
    a = [p.copy() for p in params]
    opt = extra.SWATS(a, lr=lambda k: 0.01 if k < 5 else 0.005, switch_tol=1e-3)
    for t in range(5):
        opt.step(grad(a, t))
    assert opt.switched and opt.switch_step == 3
    before = [p.copy() for p in a]
    buf = [v.copy() for v in (s["momentum_buffer"] for s in opt.state)]
    g = grad(a, 5)
    opt.step(g)  # lr halved: the SGD rate halves too
    for p, x, gi, v in zip(a, before, g, buf, strict=True):
        np.testing.assert_allclose(p, x - 0.1 * (opt.sgd_lr * 0.5) * (0.9 * v + gi),
                                   rtol=1e-12, atol=1e-15)


def test_ndadam_vectors_unit_norm_and_state_layout():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 6))
    conv = rng.standard_normal((3, 2, 2, 2))
    b = rng.standard_normal(4)
    opt = extra.NDAdam([{"params": [w, b]}, {"params": [conv], "axis": (1, 2, 3)}], lr=0.05)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(conv.reshape(3, -1), axis=1), 1.0, rtol=1e-14)
    w0 = w.copy()
    for k in range(5):
        opt.step([rng.standard_normal(w.shape), rng.standard_normal(b.shape),
                  rng.standard_normal(conv.shape)])
        if k == 0:  # m_1 = (1 - beta1) g_bar_1: the radial part of g_1 was removed
            m = opt.state[0]["exp_avg"]
            np.testing.assert_allclose(np.sum(m * w0, axis=1), 0.0, atol=1e-15)
            assert np.all(np.linalg.norm(m, axis=1) > 0.01)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(conv.reshape(3, -1), axis=1), 1.0, rtol=1e-14)
    # v is one scalar per vector, repeated along the vector
    v = opt.state[0]["exp_avg_sq"]
    np.testing.assert_array_equal(v, np.repeat(v[:, :1], 6, axis=1))
    assert np.all(v > 0) and len(np.unique(v[:, 0])) == 4
    # the bias is updated by Adam: one v per element
    assert len(np.unique(opt.state[1]["exp_avg_sq"])) == 4


def test_ndadam_rejects_bad_axis():
    with pytest.raises(ValueError, match="adjacent"):
        extra.NDAdam([np.ones((2, 3, 4))], axis=(0, 2))
    with pytest.raises(ValueError, match="out of range"):
        extra.NDAdam([np.ones((2, 3))], axis=2)
    with pytest.raises(ValueError, match="axis"):
        extra.NDAdam([np.ones((2, 3))], axis="rows")
    p = np.ones((2, 3))
    with pytest.raises(ValueError):
        extra.NDAdam([p, np.ones((2, 3, 4))], axis=(1, 2))  # fails for the 2-D one
    np.testing.assert_array_equal(p, 1.0)  # nothing normalized when it refuses


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_stand_ins_match_the_jitted_helpers(dtype):
    """While LAMB's trust-ratio loop and SWATS's column sums compile in the background,
    a step runs NumPy versions of them: the same bits, zeros, NaN and inf included, and
    no warning (the loops give none)."""
    import warnings

    warnings.simplefilter("error")  # (pytest restores the filters after the test)
    rng = np.random.default_rng(3)
    squares = np.abs(rng.standard_normal((40, 2))) * 10.0 ** rng.integers(-30, 30, (40, 2))
    squares[:4] = [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]]
    squares[4:8] = [[1.0, np.nan], [np.inf, 1.0], [1.0, np.inf], [np.inf, np.inf]]
    squares[8:10] = [[1e300, 1e-320], [1e300, 1e222]]  # trust overflows; lr * 1e39 in f32
    for lr in (1e-3, 0.1, 3.0):
        trust_a, trust_b = np.full(40, 7.0), np.full(40, 7.0)
        steps_a, steps_b = np.full((40, 1), 7, dtype), np.full((40, 1), 7, dtype)
        lamb._lamb_trust(squares, lr, trust_a, steps_a)
        lamb._lamb_trust_numpy(squares, lr, trust_b, steps_b, {})
        np.testing.assert_array_equal(trust_a, trust_b)  # NaN where both are NaN
        np.testing.assert_array_equal(steps_a, steps_b)
        assert trust_a[0] == trust_a[1] == trust_a[2] == trust_a[3] == 1.0
    assert np.isinf(trust_a[8]) and np.isinf(steps_a[8, 0])
    assert np.isinf(steps_a[9, 0]) == (dtype == np.float32)  # (the last lr: 3)
    scratch: dict = {}
    for rows in (0, 1, 2, 7, 1000):
        totals = rng.standard_normal((rows, 2)) * 10.0 ** rng.integers(-12, 12, (rows, 2))
        if rows == 7:  # inf + -inf is NaN; 1e308 + 1e308 overflows
            totals[:, 0], totals[:, 1] = [1, np.inf, -np.inf, 2, 0, -0.0, 1], 1e308
        out_a, out_b = np.array([0.5, -2.0]), np.array([0.5, -2.0])
        swats._add_column_sums(totals, out_a)
        swats._add_column_sums_numpy(totals, out_b, scratch)
        assert out_a.tobytes() == out_b.tobytes(), rows


def test_per_segment_totals_stand_in_matches_its_loop():
    """While the loop that adds the per-chunk sums of long segments compiles in the
    background, NumPy adds them: the same bits (signed zeros, NaN and inf included), and
    no warning where the loop gives none (inf + -inf)."""
    import warnings

    from fastmoments.kernels import segments as _segments

    rng = np.random.default_rng(4)
    for chunks, segments in ((1, 1), (62, 1), (9, 4), (1000, 37)):
        segment_of_chunk = np.sort(rng.integers(0, segments, chunks)).astype(np.int64)
        sums = rng.standard_normal((chunks, 2)) * 10.0 ** rng.integers(-12, 12, (chunks, 2))
        sums[0] = [-0.0, -0.0]
        if chunks > 8:
            sums[3:6, 1] = [np.nan, np.inf, -np.inf]
            sums[6:8, 0] = [np.inf, -0.0]
        out_a, out_b = np.full((segments, 2), 7.0), np.full((segments, 2), 7.0)
        _segments._add_per_segment(segment_of_chunk, sums, out_a)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _segments._add_per_segment_numpy(segment_of_chunk, sums, out_b)
        assert out_a.tobytes() == out_b.tobytes(), (chunks, segments)
        # a mutation that sums the same numbers in another order fails where they round
        if chunks == 1000:
            shuffled = np.full((segments, 2), 7.0)
            order = rng.permutation(chunks)
            _segments._add_per_segment_numpy(segment_of_chunk[order], sums[order], shuffled)
            assert shuffled.tobytes() != out_a.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["flat", "list"])
def test_lamb_second_pass_stand_in_matches_its_loop(path, dtype):
    """On a cold start NumPy stands in for LAMB's second CPU pass while its loop compiles
    in the background: the same parameters, bit for bit, inf and NaN included, and no
    warning (the loop gives none)."""
    import warnings

    from fastmoments.kernels.segmented_run import run, workspace
    from fastmoments.kernels.segments import Segments, whole_tensors

    rng = np.random.default_rng(5)
    shapes = [(7, 5), (1,), (300,), (2, 3, 4)]
    originals = [rng.standard_normal(s).astype(dtype) for s in shapes]
    results = []
    for use_stand_in in (False, True):
        params = [p.copy() for p in originals]
        target = fm.FlatParams(params) if path == "flat" else params
        opt = extra.LAMB(target)
        group = opt._groups[0]
        segments = Segments(group.offsets, whole_tensors(group.params))
        update = np.random.default_rng(6).standard_normal(group.numel).astype(dtype)
        steps = workspace(lamb._LAMB_APPLY, group, segments).values
        steps[:, 0] = np.random.default_rng(7).uniform(1e-4, 1.0, len(shapes))
        # inf - inf and inf * 0 are NaN; a product that overflows (silent, as the loop)
        group.params[0].reshape(-1)[0] = np.inf
        update[:3] = [np.inf, -np.inf, np.nan]
        update[35], steps[1, 0] = np.inf, 0.0
        update[36], steps[2, 0] = np.finfo(dtype).max, 4.0
        if use_stand_in:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                lamb._lamb_apply_numpy(steps, group, update)
        else:
            run(lamb._LAMB_APPLY, group, "params", segments, steps, (), (update,))
        results.append([np.array(p, copy=True) for p in group.params])
    for a, b in zip(*results, strict=True):
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(results[0][0], originals[0])
    first, _, third, _ = (r.reshape(-1) for r in results[0])
    assert np.isnan(first[0]) and np.isinf(first[1]) and np.isnan(first[2])
    assert np.isnan(results[0][1][0]) and np.isneginf(third[0])


def test_lamb_trust_ratios_and_long_tensors(monkeypatch):
    import fastmoments.kernels.segments as seg

    monkeypatch.setattr(seg, "CHUNK", 7)  # tensors split into many chunks
    params, grad = problem(shapes=[(40,), (3, 11), (0,), (2,)], steps=20)
    a = [p.copy() for p in params]
    ref = [p.copy() for p in params]
    opt = run_fm("LAMB", dict(lr=0.01, weight_decay=0.1), a, grad, steps=20)
    run_reference("LAMB", dict(lr=0.01, weight_decay=0.1), ref, grad, steps=20)
    for x, y in zip(a, ref, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
    assert opt.trust_ratios[0].shape == (4,) and opt.trust_ratios[0][2] == 1.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, kwargs", [("LAMB", dict(lr=0.01, weight_decay=0.1)),
                                          ("SWATS", dict(lr=0.01, switch_tol=0.0)),
                                          ("NDAdam", dict(lr=0.01))])
def test_segmented_sums_over_many_blocks(name, kwargs, dtype, monkeypatch):
    """Tensors of several summation blocks (vectorized partial sums in the buffer
    dtype, a partial last block) and chunks split across blocks match the reference."""
    import fastmoments.kernels.segmented as seg
    import fastmoments.kernels.segments as segments_module

    monkeypatch.setattr(segments_module, "CHUNK", 1300)  # a chunk ends inside a block
    shapes = [(3 * seg.BLOCK + 37,), (3, seg.BLOCK + 5), (2 * seg.BLOCK,)]
    params, grad = problem(shapes=shapes, steps=8, dtype=dtype)
    mine = [p.copy() for p in params]
    ref = [p.copy() for p in params]
    run_fm(name, kwargs, mine, grad, steps=8)
    run_reference(name, kwargs, ref, grad, steps=8)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else float32_tol(name)
    for a, b, p in zip(mine, ref, params, strict=True):
        np.testing.assert_allclose(a, b, **tol)
        assert not np.array_equal(a, p)


# ------------------------------------------------------ allocations per step
#: the multi-pass rules in each of their modes: (class name, keyword arguments, switched)
MULTI_PASS_MODES = [
    ("LAMB", dict(lr=0.01, weight_decay=0.1), None),
    ("NDAdam", dict(lr=0.01), None),  # rows: contiguous vectors (and Adam for the 1-D one)
    ("NDAdam", dict(lr=0.01, axis=0), None),  # columns: strided vectors
    ("NDAdam", dict(lr=0.01, axis=(-2, -1)), None),  # whole matrices as vectors
    ("SWATS", dict(lr=0.01, switch_tol=0.0), False),  # the Adam phase (never switches)
    ("SWATS", dict(lr=0.01, switch_tol=1e9), True),  # SGD from step 3 on
]
#: traced bytes a step may hold at once: numba's boxing of one loop call's arguments
#: (~48 bytes per array) and Python's tuples; per-chunk NumPy arrays (before the
#: workspaces, several KiB with the tables below) do not fit
STEP_BYTES = 2048


def _step_peak(step) -> int:
    """The most bytes (traced by tracemalloc, NumPy's data included) held at once
    during ``step()`` beyond those held before it."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        step()  # once more under tracing
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        gc.enable()


@pytest.mark.parametrize("threshold", [None, 1], ids=["serial", "parallel"])
@pytest.mark.parametrize("path", ["flat", "list"])
@pytest.mark.parametrize("mode", MULTI_PASS_MODES,
                         ids=[case_id(m[:2]) for m in MULTI_PASS_MODES])
def test_multi_pass_step_allocates_nothing(mode, path, threshold, monkeypatch):
    import fastmoments.kernels.segments as seg

    name, kwargs, switched = mode
    monkeypatch.setattr(seg, "CHUNK", 8)  # hundreds of chunks, several per segment
    if threshold is not None:
        monkeypatch.setattr(fm.config, "parallel_threshold", threshold)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(40, 36), (50,), (5, 4, 3)]]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    if path == "flat":
        flat = fm.FlatParams(params)
        for view, g in zip(flat.grads, grads, strict=True):
            view[...] = g
        opt = make(name)(flat, **kwargs)
        step = opt.step
    else:
        opt = make(name)(params, **kwargs)

        def step():
            opt.step(grads)

    for _ in range(4):
        step()
    if switched is not None:
        assert opt.switched == switched
    before = opt.state_dict()["state"]
    peak = _step_peak(step)
    assert peak <= STEP_BYTES, f"{name} step held {peak} bytes"
    after = opt.state_dict()["state"]
    assert any(not np.array_equal(after[0][k], v) for k, v in before[0].items())
    # a param_groups edit rebuilds the group's kernel and state (allocating once)
    opt.param_groups[0]["eps"] = 1e-5
    step()
    assert _step_peak(step) <= STEP_BYTES


def test_segmented_cpu_loops_allocate_nothing():
    kernels = [k for module in (multipass, lamb, ndadam, swats)
               for k in vars(module).values() if isinstance(k, SegmentedKernel)]
    assert len(kernels) >= 10
    for kernel in kernels:
        for parallel in (False, True):
            for strided in (False, True):
                name, source = kernel.cpu_source(parallel, strided)
                assert name in source
                assert "np." not in source  # no np.empty / np.zeros inside the loops
                assert "scratch" not in source
                if parallel:  # a prange over the serial loop
                    assert "chunk_loop(" in source
                elif kernel.num_terms:  # partial sums in registers
                    assert "part0 = add_term(part0, term0)" in source


def test_segmented_sums_do_not_depend_on_the_thread_count(monkeypatch):
    import numba

    import fastmoments.kernels.segments as seg

    monkeypatch.setattr(seg, "CHUNK", 8)
    params, grad = problem(shapes=[(40, 36), (50,), (5, 4, 3)], steps=6)
    serial = [p.copy() for p in params]
    run_fm("LAMB", dict(lr=0.01), serial, grad, steps=6)
    monkeypatch.setattr(fm.config, "parallel_threshold", 1)
    mine = [p.copy() for p in params]
    opt = extra.LAMB(mine, lr=0.01)
    threads = numba.get_num_threads()
    try:
        for t in range(6):  # one thread, then all of them
            numba.set_num_threads(1 if t < 3 else threads)
            opt.step(grad(mine, t))
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(mine, serial, strict=True):
        np.testing.assert_array_equal(a, b)  # the thread count changes no sum


def test_lion_moves_every_coordinate_by_lr():
    p = [np.array([1.0, -2.0, 3.0, 0.5])]
    opt = extra.Lion(p, lr=0.1)
    opt.step([np.array([0.3, -1e-9, 0.0, -7.0])])
    np.testing.assert_allclose(p[0], [0.9, -1.9, 3.0, 0.6], rtol=1e-15)


def test_validation_messages():
    with pytest.raises(ValueError, match="betas"):
        extra.Lion([np.ones(2)], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="eps"):
        extra.LAMB([np.ones(2)], eps=-1.0)
    with pytest.raises(ValueError, match="switch_tol"):
        extra.SWATS([np.ones(2)], switch_tol=-1.0)
    with pytest.raises(TypeError, match="amsgrad"):
        extra.AdaBelief([np.ones(2)], amsgrad=1)
    with pytest.raises(ValueError, match="lr"):
        extra.NDAdam([np.ones(2)], lr=-1.0)


# ---------------------------------------------------------- Yogi's v0
def _yogi_with_v0(params, grads0, grad, steps, lr, betas, eps, weight_decay):
    """Yogi (Zaheer et al.) with v0 = mean of squared gradients, v not bias-corrected."""
    b1, b2 = betas
    wd = weight_decay
    m = [np.full_like(p, 1e-6) for p in params]
    v = [np.mean([(g[i] + wd * p) ** 2 for g in grads0], axis=0) for i, p in enumerate(params)]
    for t in range(steps):
        for i, (p, g) in enumerate(zip(params, grad(params, t), strict=True)):
            g = g + wd * p
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = v[i] - (1 - b2) * np.sign(v[i] - g * g) * (g * g)
            p[...] = p - lr * (m[i] / (1 - b1 ** (t + 1))) / (np.sqrt(v[i]) + eps)


@pytest.mark.parametrize("path", ["list", "flat"])
def test_yogi_init_second_moment(path):
    params, grad = problem(steps=30)
    rng = np.random.default_rng(3)
    grads0 = [[rng.standard_normal(p.shape) for p in params] for _ in range(3)]
    kw = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.1)
    ref = [p.copy() for p in params]
    _yogi_with_v0(ref, grads0, grad, 30, **kw)
    if path == "list":
        mine = [p.copy() for p in params]
        opt = fm.Yogi(mine, **kw)
        opt.init_second_moment(*grads0)
        for t in range(30):
            opt.step(grad(mine, t))
    else:
        flat = fm.FlatParams([p.copy() for p in params])
        opt = fm.Yogi(flat, **kw)
        opt.init_second_moment(*[np.concatenate([g.ravel() for g in gs]) for gs in grads0])
        for t in range(30):
            opt.step(np.concatenate([g.ravel() for g in grad(flat.params, t)]))
        mine = flat.params
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert opt.state_dict()["host_state"][0]["second_moment_initialized"] == 1.0
    with pytest.raises(RuntimeError, match="before the first step"):
        opt.init_second_moment(*grads0)


def test_yogi_without_init_is_the_core_yogi():
    """Without init_second_moment, both moments start at initial_accumulator_value and
    both are bias-corrected: the NumPy reference's Yogi (written from the paper, optax
    and torch-optimizer), parameters and state (pytorch_optimizer's Yogi is compared
    over 200 steps below)."""
    params, grad = problem(steps=20)
    kw = dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1)
    mine, ref = [p.copy() for p in params], [p.copy() for p in params]
    opt = fm.Yogi(mine, **kw)
    for j in range(len(mine)):
        np.testing.assert_array_equal(opt.state[j]["exp_avg"], 1e-6)
        np.testing.assert_array_equal(opt.state[j]["exp_avg_sq"], 1e-6)
    ref_opt = run_reference("Yogi", kw, ref, grad, steps=20)
    for t in range(20):
        opt.step(grad(mine, t))
    for j, (a, b) in enumerate(zip(mine, ref, strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(opt.state[j]["exp_avg"], ref_opt.m[j], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(opt.state[j]["exp_avg_sq"], ref_opt.v[j], rtol=1e-9,
                                   atol=1e-12)
    assert opt.state_dict()["host_state"][0]["second_moment_initialized"] == 0.0
    assert any(not np.array_equal(a, p) for a, p in zip(mine, params, strict=True) if a.size)


def test_yogi_init_validates_before_changing_anything():
    p = [np.ones(3), np.ones(2)]
    opt = fm.Yogi(p)
    with pytest.raises(ValueError, match="shape"):
        opt.init_second_moment([np.ones(3), np.ones(2)], [np.ones(3), np.ones(5)])
    np.testing.assert_array_equal(opt.state[0]["exp_avg_sq"], 1e-6)
    with pytest.raises(TypeError, match="at least one"):
        opt.init_second_moment()


# ------------------------------------------------- outside implementations


def _against_torch_optimizer(torch, make_theirs, name, kwargs, steps=STEPS, problem_=None,
                             tol=None):
    """Ours and ``make_theirs(tensors)`` (float64) on ``problem_`` (default
    :func:`problem`) for ``steps`` steps: the same parameters (to round-off unless ``tol``
    says otherwise). Returns our optimizer, theirs and their tensors."""
    params, grad = problem_ or problem(steps=max(steps, STEPS))
    mine = [p.copy() for p in params]
    opt = make(name)(mine, **kwargs)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    theirs = make_theirs(tensors)
    for t in range(steps):
        opt.step(grad(mine, t))
        current = [x.detach().numpy() for x in tensors]
        for x, g in zip(tensors, grad(current, t), strict=True):
            x.grad = torch.from_numpy(g)
        theirs.step()
    for a, x in zip(mine, tensors, strict=True):
        np.testing.assert_allclose(a, x.detach().numpy(), **(tol or dict(rtol=1e-9, atol=1e-12)))
    assert any(not np.array_equal(a, p) for a, p in zip(mine, params, strict=True) if a.size)
    return opt, theirs, tensors


def _assert_state_matches(opt, theirs, tensors, keys):
    for j, x in enumerate(tensors):
        for key in keys:
            np.testing.assert_allclose(opt.state[j][key], theirs.state[x][key].numpy(),
                                       rtol=1e-9, atol=1e-12, err_msg=f"state[{j}][{key!r}]")


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_matches_lion_pytorch(torch64, wd):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    kw = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=wd)
    _against_torch_optimizer(torch64, lambda ts: lion_pytorch.Lion(ts, **kw), "Lion", kw)


@pytest.mark.parametrize("kw", [dict(weight_decay=0.1), dict(amsgrad=True),
                                dict(decoupled_weight_decay=False, weight_decay=0.1)],
                         ids=["decoupled", "amsgrad", "l2"])
def test_adabelief_matches_adabelief_pytorch(torch64, kw):
    adabelief_pytorch = pytest.importorskip("adabelief_pytorch")
    kw = dict(lr=0.01, eps=1e-10, **kw)
    decouple = kw.get("decoupled_weight_decay", True)
    theirs = {k: v for k, v in kw.items() if k != "decoupled_weight_decay"}
    _against_torch_optimizer(
        torch64,
        lambda ts: adabelief_pytorch.AdaBelief(ts, rectify=False, weight_decouple=decouple,
                                               fixed_decay=False, print_change_log=False,
                                               **theirs),
        "AdaBelief", kw)


def test_adabelief_matches_pytorch_optimizer(torch64):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=0.01, eps=1e-10, weight_decay=0.1)
    _against_torch_optimizer(
        torch64, lambda ts: pytorch_optimizer.AdaBelief(ts, foreach=False, **kw), "AdaBelief",
        kw)


# --------------------- long runs against pytorch_optimizer: Yogi, LAMB, SWATS
LONG = 200  # steps, float64


@pytest.mark.parametrize("kw, theirs", [
    (dict(), dict()),
    (dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, initial_accumulator_value=0.1),
     dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, initial_accumulator=0.1,
          weight_decouple=False)),
    (dict(lr=0.05, maximize=True), dict(lr=0.05, maximize=True)),
], ids=["defaults", "l2-init-betas", "maximize"])
def test_yogi_matches_pytorch_optimizer_long_run(torch64, kw, theirs):
    """pytorch_optimizer's Yogi has our conventions and defaults (lr 1e-2, eps 1e-3
    outside the root, both moments from 1e-6, both bias-corrected); it names
    initial_accumulator_value ``initial_accumulator`` and decouples weight decay by
    default: ``weight_decouple=False`` is ours (L2). The same to round-off over 200
    steps, parameters and moments."""
    po = pytest.importorskip("pytorch_optimizer")
    opt, th, tensors = _against_torch_optimizer(
        torch64, lambda ts: po.Yogi(ts, foreach=False, **theirs), "Yogi", kw, steps=LONG)
    _assert_state_matches(opt, th, tensors, ("exp_avg", "exp_avg_sq"))


#: pytorch_optimizer's Lamb options that make its rule ours (see the test below)
LAMB_AS_OURS = dict(adam_debias=True, grad_averaging=True, pre_norm=False, adam=False,
                    rectify=False, weight_decay=0.0, foreach=False)


def test_lamb_matches_pytorch_optimizer_long_run(torch64):
    """pytorch_optimizer's Lamb (4.1) and ours (You et al.'s Algorithm 2 with bias
    correction, as optax's lamb) differ in four ways, three made neutral here:

    - its step is lr / (1 - beta1^t) times the trust ratio times the direction (its
      default ``adam_debias=False``), though the trust ratio already normalizes the
      direction: its first steps are up to 1 / (1 - beta1) = 10 times ours.
      ``adam_debias=True`` drops the factor.
    - its direction m / (sqrt(v) + eps) is not bias-corrected and its trust ratio is
      ||p|| / (||r|| + eps): with eps=0 (both sides) its direction is ours times a positive
      factor per step, which the trust ratio cancels. (eps=1e-6: compared loosely below.)
    - it clamps ||p|| at 10 in the trust ratio: the parameters here stay below 4.
    - weight decay cannot match: decoupled (its default) it shrinks p before the trust
      ratio; with ``weight_decouple=False`` it adds wd * p to its un-corrected direction,
      ours to the bias-corrected one. Weight decay is compared with the NumPy reference
      over as many steps (test_long_runs_match_reference).

    Its other options as ours: ``grad_averaging`` (1 - beta1 on the gradient),
    ``pre_norm=False`` (``max_grad_norm`` is then unused), no ``adanorm``, ``rectify`` or
    ``adam`` (a trust ratio of 1)."""
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=0.01, eps=0.0)
    opt, th, tensors = _against_torch_optimizer(
        torch64, lambda ts: po.Lamb(ts, **kw, **LAMB_AS_OURS), "LAMB", kw, steps=LONG)
    _assert_state_matches(opt, th, tensors, ("exp_avg", "exp_avg_sq"))
    # their direction is ours times (1 - beta1^t) / sqrt(1 - beta2^t), so their trust
    # ratio (kept in the state, of the last step) is ours divided by that (1 for size 0)
    beta1, beta2 = 0.9, 0.999
    factor = (1 - beta1**LONG) / np.sqrt(1 - beta2**LONG)
    ratios = [float(th.state[x]["trust_ratio"]) * (factor if x.numel() else 1.0)
              for x in tensors]
    np.testing.assert_allclose(opt.trust_ratios[0], ratios, rtol=1e-9)
    assert max(float(th.state[x]["weight_norm"]) for x in tensors) < 10  # below the clamp


def test_lamb_near_pytorch_optimizer_with_eps(torch64):
    """With LAMB's default eps=1e-6, where eps sits (ours: after bias correction; theirs:
    before, and again in the trust ratio) moves the trajectories apart by up to 3e-6 over
    200 steps (parameters of order 1): a loose check that nothing else differs."""
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=0.01, eps=1e-6)
    _against_torch_optimizer(torch64, lambda ts: po.Lamb(ts, **kw, **LAMB_AS_OURS), "LAMB", kw,
                             steps=LONG, tol=dict(rtol=1e-4, atol=1e-5))


def _swats_problem(switch: bool, shapes=((4, 5),)):
    """:func:`problem` with the gradients scaled by 1000; with ``switch``, one parameter
    tensor and the same gradient for steps 1 and 2 (then gamma_2 = gamma_1, so the
    estimate equals gamma at step 2 and both implementations switch there)."""
    params, grad = problem(shapes=list(shapes), steps=LONG)
    first = [1000 * np.random.default_rng(7).standard_normal(p.shape) for p in params]

    def scaled(current, t):
        if switch and t < 2:
            return [g.copy() for g in first]
        return [1000 * g for g in grad(current, t)]

    return params, scaled


@pytest.mark.parametrize("variant", ["switches", "switches-l2-maximize", "adam-phase-l2"])
def test_swats_matches_pytorch_optimizer_long_run(torch64, variant):
    """pytorch_optimizer's SWATS (4.1) against ours, 200 steps. Its conventions:

    - eps on sqrt(v) before bias correction (the paper's; ours: after, as torch's Adam)
      and 1e-15 added to v inside the root;
    - the switching test per parameter tensor (ours: all parameters as one vector),
      relative: ``allclose(estimate, gamma, rtol=eps)``, i.e.
      |estimate - gamma| <= 1e-8 + eps |gamma|, and estimate > 0;
    - nesterov's SGD step is (1 - beta1) buf + beta1 buf = buf, not g + beta1 buf.

    Made equal: eps=0 on both sides (the same Adam steps, and their test becomes
    |estimate - gamma| <= 1e-8: ``switch_tol=1e-8``), gradients scaled by 1000 (v is then
    far above 1e-15; neither Adam's steps nor gamma's test depend on the scale), one
    parameter tensor in the runs that switch, no nesterov (compared with the NumPy
    reference, test_long_runs_match_reference). The Adam-phase run keeps the usual
    tensors (one of size 0): neither side switches there."""
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=0.01, eps=0.0)
    if variant != "switches":
        kw.update(weight_decay=0.1, maximize=variant == "switches-l2-maximize")
    switch = variant.startswith("switches")
    problem_ = _swats_problem(switch) if switch else _swats_problem(False, SHAPES)
    opt, th, tensors = _against_torch_optimizer(
        torch64, lambda ts: po.SWATS(ts, foreach=False, **kw), "SWATS",
        dict(kw, switch_tol=1e-8), steps=LONG, problem_=problem_)
    group = th.param_groups[0]
    assert opt.switched == switch and group["phase"] == ("sgd" if switch else "adam")
    _assert_state_matches(opt, th, tensors, ("exp_avg", "exp_avg_sq"))
    if switch:
        assert opt.switch_step == 2
        assert opt.sgd_lr == pytest.approx(group["lr"], rel=1e-9)
        _assert_state_matches(opt, th, tensors, ("momentum_buffer",))


@pytest.mark.parametrize("case", [
    ("LAMB", dict(lr=0.01, weight_decay=0.1)),
    ("LAMB", dict(lr=0.01, weight_decay=0.1, eps=1e-4, maximize=True)),
    ("SWATS", dict(lr=0.01, weight_decay=0.1, nesterov=True, switch_tol=1e-3)),
    ("SWATS", dict(lr=0.01, weight_decay=0.1, nesterov=True, switch_tol=1e-3, maximize=True)),
], ids=case_id)
def test_long_runs_match_reference(case):
    """What pytorch_optimizer cannot be made to do (LAMB's weight decay, SWATS's
    nesterov, SWATS over several tensors), against the NumPy reference over as many
    steps."""
    name, kwargs = case
    params, grad = problem(steps=LONG)
    mine, ref = [p.copy() for p in params], [p.copy() for p in params]
    opt = run_fm(name, kwargs, mine, grad, steps=LONG)
    ref_opt = run_reference(name, kwargs, ref, grad, steps=LONG)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    if name == "SWATS":
        assert opt.switched and ref_opt.switched and opt.switch_step == ref_opt.switch_step
        assert opt.switch_step < LONG // 2  # most of the run in the SGD phase


@pytest.mark.parametrize("layouts, threads", [
    ([(1, 1_000_000, 1)], 2),  # one tensor: 62 chunks, the last one short
    ([(1, 1_000_000, 1)], 3),
    ([(1, 300_000, 1), (1, 7, 1), (1, 2_000_000, 1), (40, 50, 1)], 2),  # uneven tensors
    ([(1, 5, 1), (1, 6, 1)], 4),  # fewer chunks than threads
])
def test_parallel_groups_share_the_elements_evenly(layouts, threads, monkeypatch):
    import fastmoments.kernels.segments as seg

    monkeypatch.setattr(seg, "get_num_threads", lambda: threads)
    sizes = [outer * length * inner for outer, length, inner in layouts]
    segments = seg.Segments(np.concatenate(([0], np.cumsum(sizes))), layouts)
    bounds = segments.group_bounds()
    assert bounds[0] == 0 and bounds[-1] == segments.num_chunks
    assert (np.diff(bounds) >= 0).all()
    assert segments.group_bounds() is bounds  # computed once per thread count
    groups = len(bounds) - 1
    assert groups == min(segments.num_chunks, 8 * threads)
    ends = np.concatenate(([0], np.cumsum(segments.chunks[:, seg._COUNT])))
    largest = segments.chunks[:, seg._COUNT].max()
    # prange gives each thread an equal number of consecutive groups (static schedule)
    per_thread = np.array_split(np.arange(groups), threads)
    for mine in per_thread:
        if len(mine):
            work = ends[bounds[mine[-1] + 1]] - ends[bounds[mine[0]]]
            assert abs(work - ends[-1] * len(mine) / groups) <= largest
