"""Reduced precision for the multi-pass rules (LAMB, ND-Adam, SWATS) on the CPU.

- each step against a float64 NumPy reference of "widen -> rule -> narrow": the states
  bit for bit (the same round-to-nearest-even and the same stochastic rounding from
  the documented hash of (seed, step, index)), the parameters to round-off (the
  per-tensor sums are added in another order);
- the same bits for any thread count, the serial and parallel loops, lists and
  FlatParams; ND-Adam's per-vector ``v`` stays equal in every element of its vector;
- state dicts and checkpoints resume bit for bit; the sharded optimizer is the plain one;
- 16-bit parameters with a float32 master copy follow the float32 trajectory;
- int8 for ND-Adam and 16-bit CUDA parameters are refused by name (the GPU and int8
  for LAMB and SWATS: test_precision_multipass_more.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_bits import element_bits

import fastmoments as fm
from fastmoments.distributed import SelfCommunicator, ShardedOptimizer
from fastmoments.kernels import precision as P

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


# -------------------------------------------------------- reference codecs
_bits = element_bits  # the documented bits (tests/reference_bits.py)


def _widen(bits: np.ndarray) -> np.ndarray:
    return bits.view(BF16).astype(np.float64)


def _nearest(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 -> bfloat16 pattern, each to nearest even (ml_dtypes)."""
    return x.astype(np.float32).astype(BF16).view(np.uint16)


def _stochastic(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """float64 -> float32 (nearest), then add the high 16 random bits below the kept
    ones and truncate (finite values)."""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    magnitude = (b & np.uint64(0x7FFFFFFF)) + (bits >> np.uint64(16))
    return (((magnitude | (b & np.uint64(0x80000000))) >> np.uint64(16))
            .astype(np.uint16))


def _key(opt, step: int) -> int:
    return P.step_key_host(opt.seed, step)


# ---------------------------------------------------------- reference rules
def _lamb_reference(opt, params, grads, state, step):
    """One LAMB step in float64 from the stored state: new params, stored m and v."""
    hyper = opt.param_groups[0]
    (b1, b2), eps, wd, lr = hyper["betas"], hyper["eps"], hyper["weight_decay"], hyper["lr"]
    key = _key(opt, step)
    offsets = np.cumsum([0] + [p.size for p in params])
    new_p, new_m, new_v = [], [], []
    for j, (p, g) in enumerate(zip(params, grads)):
        p, g = p.ravel().astype(np.float64), g.ravel().astype(np.float64)
        index = np.arange(offsets[j], offsets[j + 1])
        m = _widen(state["exp_avg"][index])
        v = _widen(state["exp_avg_sq"][index])
        m = m + (1 - b1) * (g - m)
        v = b2 * v + (1 - b2) * (g * g)
        r = (m * (1 / (1 - b1**step))) / (np.sqrt(v * (1 / (1 - b2**step))) + eps) + wd * p
        p_norm, r_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(r * r))
        trust = p_norm / r_norm if p_norm > 0 and r_norm > 0 else 1.0
        new_p.append(p - (lr * trust) * r)
        new_m.append(_nearest(m))
        new_v.append(_stochastic(v, _bits(key, index, 2)))
    cat = np.concatenate
    return cat(new_p), {"exp_avg": cat(new_m), "exp_avg_sq": cat(new_v)}


def _swats_reference(opt, params, grads, state, step):
    """One SWATS step (Adam phase, or SGD phase once switched) in float64."""
    group = opt._groups[0]
    hyper, host = opt.param_groups[0], group.host_state
    (b1, b2), eps, wd, lr = hyper["betas"], hyper["eps"], hyper["weight_decay"], hyper["lr"]
    key = _key(opt, step)
    p = np.concatenate([x.ravel() for x in params]).astype(np.float64)
    g = np.concatenate([x.ravel() for x in grads]).astype(np.float64)
    index = np.arange(p.size)
    g = g + wd * p if wd else g
    out = dict(state)
    if host["switched"]:
        buf = b1 * _widen(state["momentum_buffer"]) + g
        direction = g + b1 * buf if hyper["nesterov"] else buf
        step_size = (1 - b1) * host["sgd_lr"] * (lr / host["lr_at_switch"])
        out["momentum_buffer"] = _nearest(buf)
        return p - step_size * direction, out
    m, v = _widen(state["exp_avg"]), _widen(state["exp_avg_sq"])
    m = m + (1 - b1) * (g - m)
    v = b2 * v + (1 - b2) * (g * g)
    p_k = -((lr / (1 - b1**step)) * (m / (np.sqrt(v * (1 / (1 - b2**step))) + eps)))
    out["exp_avg"], out["exp_avg_sq"] = _nearest(m), _stochastic(v, _bits(key, index, 2))
    return p + p_k, out


def _ndadam_reference(opt, params, grads, state, step):
    """One ND-Adam step in float64 (vectors along the last axis of 2-D params; Adam
    for 1-D ones): m stored by the second pass and read by the third; v per vector,
    its bits keyed by the vector's number (stream 33)."""
    hyper = opt.param_groups[0]
    (b1, b2), eps, lr = hyper["betas"], hyper["eps"], hyper["lr"]
    step_size, inv_bc2 = lr / (1 - b1**step), 1 / (1 - b2**step)
    key = _key(opt, step)
    offsets = np.cumsum([0] + [p.size for p in params])
    new_p, new_m, new_v = [], [], []
    segment = 0
    for j, (p, g) in enumerate(zip(params, grads)):
        index = np.arange(offsets[j], offsets[j + 1])
        m = _widen(state["exp_avg"][index]).reshape(p.shape)
        v = _widen(state["exp_avg_sq"][index]).reshape(p.shape)
        w, g = p.astype(np.float64), g.astype(np.float64)
        if p.ndim < 2:
            m = m + (1 - b1) * (g - m)
            v = b2 * v + (1 - b2) * (g * g)
            new_p.append(w - step_size * (m / (np.sqrt(v * inv_bc2) + eps)))
            new_m.append(_nearest(m))
            new_v.append(_stochastic(v, _bits(key, index, 2)))
            continue
        radial = np.sum(g * w, axis=1, keepdims=True)
        g_bar = g - radial * w
        m = m + (1 - b1) * (g_bar - m)
        v = b2 * v + (1 - b2) * np.sum(g_bar * g_bar, axis=1, keepdims=True)
        # m is stored between the passes: the step reads it back, narrowed
        m = _nearest(m)
        w_bar = w - step_size * (_widen(m) / (np.sqrt(v * inv_bc2) + eps))
        new_p.append(w_bar / np.sqrt(np.sum(w_bar * w_bar, axis=1, keepdims=True)))
        new_m.append(m.ravel())
        rows = segment + np.arange(p.shape[0])
        new_v.append(_stochastic(v, _bits(key, rows, 33)[:, None]).ravel())
        segment += p.shape[0]
    cat = np.concatenate
    return (cat([x.ravel() for x in new_p]),
            {"exp_avg": cat(new_m), "exp_avg_sq": cat(new_v)})


def _params(dtype=np.float64):
    rng = np.random.default_rng(7)
    # 700 columns: the block loop (512) with a partial block; a zero-size parameter
    return [rng.standard_normal((3, 700)).astype(dtype), rng.standard_normal(33).astype(dtype),
            np.zeros(0, dtype), rng.standard_normal((4, 5)).astype(dtype)]


def _grads(params, t):
    return [(np.sin(np.arange(p.size) * 0.37 + t).reshape(p.shape) + 0.1 * p).astype(p.dtype)
            for p in params]


CASES = {
    "LAMB": (fm.LAMB, dict(lr=1e-2, weight_decay=0.1), _lamb_reference),
    "NDAdam": (fm.NDAdam, dict(lr=1e-2), _ndadam_reference),
    "SWATS": (fm.SWATS, dict(lr=1e-2, weight_decay=0.01), _swats_reference),
    # switch_tol this large switches at step 2: the SGD phase's bfloat16 momentum
    "SWATS-sgd": (fm.SWATS, dict(lr=1e-2, switch_tol=1e9, nesterov=True), _swats_reference),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_step_is_widen_rule_narrow_in_float64(case):
    cls, hyper, reference = CASES[case]
    params = _params()
    opt = cls(params, state_dtype="bfloat16", seed=3, **hyper)
    names = [n for n in opt._groups[0].state]
    assert all(opt._groups[0].state[n].dtype == np.uint16 for n in names)
    for t in range(1, 6):
        grads = _grads(params, t)
        state = {n: opt._groups[0].state[n].copy() for n in names}
        before = [p.copy() for p in params]
        expected_p, expected_state = reference(opt, before, grads, state, t)
        opt.step(grads)
        got = np.concatenate([p.ravel() for p in params])
        np.testing.assert_allclose(got, expected_p, rtol=1e-12, atol=1e-14)
        for n in names:
            assert np.array_equal(opt._groups[0].state[n], expected_state[n]), (case, t, n)
    if case == "SWATS-sgd":
        assert opt.switched and opt._groups[0].state["momentum_buffer"].any()
    if cls is fm.NDAdam:  # each vector's v is one value, in all its elements
        v = opt._groups[0].state["exp_avg_sq"][:2100].reshape(3, 700)
        assert (v == v[:, :1]).all()


@pytest.mark.parametrize("case", ["LAMB", "NDAdam", "SWATS"])
def test_float32_parameters_with_bfloat16_state_track_float32_state(case):
    cls, hyper, _ = CASES[case]
    runs = {}
    for state_dtype in (None, "bfloat16"):
        params = _params(np.float32)
        opt = cls(params, state_dtype=state_dtype, **hyper)
        start = [p.copy() for p in params]
        for t in range(15):
            opt.step(_grads(params, t))
        runs[state_dtype] = np.concatenate([p.ravel() for p in params])
    moved = np.abs(runs[None] - np.concatenate([p.ravel() for p in start])).max()
    assert moved > 0
    assert np.abs(runs["bfloat16"] - runs[None]).max() <= 0.1 * moved


# ---------------------------------------------------- loops and thread counts
def _run(case, flat, steps=4, dtype=np.float32, **options):
    cls, hyper, _ = CASES[case]
    arrays = _params(dtype)
    params = fm.FlatParams(arrays) if flat else arrays
    opt = cls(params, state_dtype="bfloat16", state_rounding="stochastic", **hyper,
              **options)
    views = params.params if flat else params
    for t in range(steps):
        grads = _grads(views, t)
        if flat:
            for view, g in zip(params.grads, grads):
                view[...] = g
            opt.step()
        else:
            opt.step(grads)
    data = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in views])
    return data, {n: np.asarray(b).copy() for n, b in opt._groups[0].state.items()}


@pytest.mark.parametrize("case", ["LAMB", "NDAdam", "SWATS"])
def test_the_same_bits_for_any_thread_count_loop_and_layout(case, monkeypatch):
    import numba

    monkeypatch.setattr(fm.config, "background_compile", False)  # the parallel loop itself
    results = []
    for threshold, threads, flat in ((1 << 30, 2, False), (1, 1, False), (1, 2, False),
                                     (1, 2, True), (1 << 30, 2, True)):
        monkeypatch.setattr(fm.config, "parallel_threshold", threshold)
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            results.append(_run(case, flat))
        finally:
            numba.set_num_threads(previous)
    for data, state in results[1:]:
        assert np.array_equal(data, results[0][0])
        for name in state:
            assert np.array_equal(state[name], results[0][1][name]), name
    other = _run(case, False, seed=1)[1]  # another seed draws other bits
    assert not np.array_equal(other["exp_avg_sq"], results[0][1]["exp_avg_sq"])


def test_ndadam_strided_vectors_keep_one_v_each():
    params = [np.random.default_rng(1).standard_normal((6, 4))]  # columns: stride 4
    opt = fm.NDAdam(params, axis=0, state_dtype="bfloat16")
    for t in range(4):
        opt.step(_grads(params, t))
    v = opt._groups[0].state["exp_avg_sq"].reshape(6, 4)
    assert (v == v[:1, :]).all() and len(np.unique(v)) == 4
    np.testing.assert_allclose(np.linalg.norm(params[0], axis=0), 1.0, rtol=1e-12)


# ---------------------------------------------------------- checkpoints
@pytest.mark.parametrize("case", ["LAMB", "NDAdam", "SWATS-sgd"])
def test_a_checkpoint_resumes_bit_for_bit(case, tmp_path):
    cls, hyper, _ = CASES[case]
    params = _params(np.float32)
    opt = cls(params, state_dtype="bfloat16", **hyper)
    for t in range(3):
        opt.step(_grads(params, t))
    opt.save(tmp_path / "ckpt.npz")
    sd = opt.state_dict()
    assert sd["param_groups"][0]["state_dtype"] == "bfloat16"
    assert all(a.dtype == np.uint16 for a in sd["state"][0].values())
    copies = [np.zeros_like(p) for p in params]
    resumed = cls(copies, state_dtype="bfloat16", **hyper)
    resumed.load(tmp_path / "ckpt.npz")
    for name, buf in opt._groups[0].state.items():
        assert np.array_equal(resumed._groups[0].state[name], buf)
    for t in range(3, 6):  # the same random bits: the step count was restored
        opt.step(_grads(params, t))
        resumed.step(_grads(copies, t))
    for a, b in zip(params, copies):
        assert np.array_equal(a, b)
    for name, buf in opt._groups[0].state.items():
        assert np.array_equal(resumed._groups[0].state[name], buf), name
    # into float32 state: the stored values widened exactly
    widened = cls([p.copy() for p in params], **hyper)
    widened.load_state_dict(opt.state_dict())
    for name, buf in opt._groups[0].state.items():
        assert np.array_equal(widened._groups[0].state[name], P.bf16_bits_to_float32(buf))


def test_the_sharded_optimizer_is_the_plain_one():
    arrays = _params(np.float32)
    flat = fm.FlatParams([a.copy() for a in arrays])
    plain_flat = fm.FlatParams([a.copy() for a in arrays])
    opt = ShardedOptimizer(fm.LAMB, flat, SelfCommunicator(), weight_decay=0.1,
                           state_dtype="bfloat16")
    plain = fm.LAMB(plain_flat, weight_decay=0.1, state_dtype="bfloat16")
    for t in range(3):
        flat.grad[:] = plain_flat.grad[:] = np.sin(np.arange(flat.grad.size) + t)
        opt.step()
        plain.step()
    assert np.array_equal(flat.data, plain_flat.data)
    sharded, single = opt.state_dict(), plain.state_dict()
    for name, buf in single["state"][0].items():
        assert np.array_equal(sharded["state"][0][name], buf), name


# ----------------------------------------------------- 16-bit parameters
@pytest.mark.parametrize("case", ["LAMB", "NDAdam", "SWATS"])
@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["f16", "bf16"])
def test_master_weights_follow_the_float32_trajectory(case, dtype):
    cls, hyper, _ = CASES[case]
    reference = _params(np.float32)
    halves = [p.astype(dtype) for p in reference]
    reference = [p.astype(dtype).astype(np.float32) for p in reference]  # the same start
    ref_opt = cls(reference, **hyper)
    opt = cls(halves, master_weights=True, **hyper)
    for t in range(5):
        grads = _grads(reference, t)
        ref_opt.step(grads)
        opt.step([g.astype(dtype) for g in grads])
    master = opt._groups[0].state["master_param"]
    flat_ref = np.concatenate([p.ravel() for p in reference])
    # the gradients are rounded to 16 bits; the rest is the float32 arithmetic
    moved = np.abs(flat_ref - np.concatenate([p.astype(np.float32).ravel()
                                              for p in _params(np.float32)])).max()
    assert np.abs(master - flat_ref).max() <= 0.05 * moved + 1e-3
    for p, start in zip(halves, np.split(master, np.cumsum([p.size for p in halves])[:-1])):
        assert p.dtype == dtype
        assert np.array_equal(p.ravel().view(np.uint16),
                              start.astype(dtype).view(np.uint16))  # nearest of the master


# -------------------------------------------------------------- refusals
@pytest.mark.parametrize("cls", [fm.NDAdam])
def test_int8_is_refused_by_name_and_changes_nothing(cls):
    p = [np.ones((2, 3), np.float32)]
    with pytest.raises(ValueError, match=f"state_dtype='int8' is not supported for {cls.__name__}"):
        cls(p, state_dtype="int8")
    assert (p[0] == 1).all()


def test_the_gpu_is_refused_by_name():
    from numba import cuda

    with pytest.raises(ValueError, match="float16 CUDA parameters are not supported for LAMB"):
        fm.LAMB([cuda.to_device(np.ones(3, np.float16))], state_dtype="bfloat16")
