"""Reduced precision for LAMB, ND-Adam and SWATS: the GPU, and int8 state on the CPU.

- bfloat16 state (float32 under float64 parameters) on the simulated GPU is the CPU's:
  the same stored states bit for bit (the same rules, codecs and random bits of
  (seed, step, index), on the flat and the list path), the same parameters where
  they do not depend on a per-segment sum (SWATS's Adam steps), and within 2 ulps
  where they do (LAMB's trust ratio, ND-Adam's dot products and norms, SWATS's SGD
  rate: the CPU adds each chunk's terms in blocks of the parameters' dtype, the GPU in
  a float64 tree; see ``test_the_simulated_gpu_stores_the_cpu_states_bit_for_bit``);
- 16-bit CUDA parameters and int8 on the GPU are refused by name;
- int8 state for LAMB and SWATS on the CPU: one step against a float64 NumPy reference
  of dequantize -> rule -> quantize (the parameter update from the values before
  requantization), a trajectory close to float32 state's, the same bits for the serial
  and parallel loops and chunkings, checkpoints; ND-Adam refuses int8 with its reason;
- int8 second moments rounded stochastically by default in those passes: one step is
  the documented decision with the element-wise loops' random bits, unbiased, the same
  in the parallel loop; ``state_rounding="nearest"`` stores the nearest codes.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda
from reference_bits import element_bits

import fastmoments as fm
import fastmoments.kernels.segments as segments
from fastmoments.kernels import precision as P
from fastmoments.kernels import quantized as Q


def _grads(params, t):
    return [(np.sin(np.arange(p.size) * 0.37 + t).reshape(p.shape) + 0.1 * p).astype(p.dtype)
            for p in params]


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _ulps(a: np.ndarray, b: np.ndarray) -> float:
    """The largest difference of ``a`` and ``b`` in units in the last place of the larger."""
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    return float((np.abs(a.astype(np.float64) - b) / spacing).max())


# --------------------------------------------------------------- Part 1: the GPU
GPU_CASES = {
    # (class, hyperparameters, params dtype, state_dtype, the steps after which the
    # params are still equal bit for bit, the paths run: device arrays, a FlatParams)
    "LAMB": (fm.LAMB, dict(lr=1e-2, weight_decay=0.1, maximize=True), np.float32,
             "bfloat16", 0, ("list",)),
    # rows of 5, each cut into two chunks (the 1-D parameter's Adam pass is left out:
    # one compilation less, and LAMB and SWATS cover such passes)
    "NDAdam": (fm.NDAdam, dict(lr=1e-2), np.float32, "bfloat16", 0, ("list",)),
    # switch_tol this large switches at step 2 (its Adam steps need no sum): step 3 runs
    # the SGD phase's pass, at the rate estimated from the dot products
    "SWATS": (fm.SWATS, dict(lr=1e-2, weight_decay=0.01, nesterov=True, switch_tol=1e9),
              np.float32, "bfloat16", 2, ("flat",)),
    # (no switch: one kernel less to compile)
    "SWATS-float64": (fm.SWATS, dict(lr=1e-2), np.float64, "float32", 3, ("list",)),
}


def _gpu_params(dtype, case):
    rng = np.random.default_rng(7)
    out = [rng.standard_normal((3, 5)).astype(dtype), rng.standard_normal(4).astype(dtype),
           np.zeros(0, dtype)]
    return out[::2] if case == "NDAdam" else out


@pytest.mark.parametrize("case", list(GPU_CASES))
def test_the_simulated_gpu_stores_the_cpu_states_bit_for_bit(case, monkeypatch):
    """Three steps on the CPU, and on device arrays (the list path: the random bits of
    ``offset + i``) or a device FlatParams, with blocks of 3 threads that each step
    several chunks, and several chunks per segment. Stored states: equal bit for bit.
    Parameters: equal for SWATS's Adam steps; LAMB's, ND-Adam's and SWATS's SGD steps
    are scaled by per-segment sums (trust ratios; dot products and norms; the SGD rate
    from the dot products), which the CPU adds in blocks of the parameters' dtype and
    the GPU in a float64 tree: they may differ by an ulp or two there (measured here:
    LAMB 0, ND-Adam 2, SWATS 1 ulp)."""
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 3)  # not a power of two
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 2)
    monkeypatch.setattr(segments, "CHUNK", 4)
    cls, hyper, dtype, state_dtype, exact_steps, paths = GPU_CASES[case]
    options = dict(state_dtype=state_dtype, state_rounding="stochastic", seed=5, **hyper)
    cpu = _gpu_params(dtype, case)
    on_cpu = cls(cpu, **options)
    runs = []
    if "list" in paths:  # the random bits of element ``offset + i`` of each parameter
        device = [cuda.to_device(p) for p in _gpu_params(dtype, case)]
        runs.append((cls(device, **options), device, None))
    if "flat" in paths:
        flat = fm.FlatParams([cuda.to_device(p) for p in _gpu_params(dtype, case)])
        runs.append((cls(flat, **options), flat.params, flat))
    for t in range(3):
        on_cpu.step(_grads(cpu, t))
        for opt, arrays, flat_params in runs:
            grads = _grads([a.copy_to_host() for a in arrays], t)
            if flat_params is None:
                opt.step([cuda.to_device(g) for g in grads])
                continue
            for view, g in zip(flat_params.grads, grads):
                if g.size:
                    view.copy_to_device(g)
            opt.step()
        for _, arrays, _ in runs:
            got = _flat([a.copy_to_host() for a in arrays])
            if t < exact_steps:
                assert np.array_equal(got, _flat(cpu)), t
            else:  # scaled by a per-segment sum
                assert _ulps(got.astype(dtype), _flat(cpu).astype(dtype)) <= 2, t
    stored = {"bfloat16": np.uint16, "float32": np.float32}[state_dtype]
    expected = _flat(cpu)
    for opt, _, _ in runs:
        for name, buf in on_cpu._groups[0].state.items():
            assert buf.dtype == stored
            assert np.array_equal(opt._groups[0].state[name].copy_to_host(), buf), name
        if cls is fm.SWATS:
            assert opt.switched == on_cpu.switched
        if cls is fm.LAMB:
            np.testing.assert_allclose(opt.trust_ratios[0], on_cpu.trust_ratios[0], rtol=1e-6)
            # the GPU keeps no buffer for r, and reads the moments in both passes
            assert opt._updates == [None]
            assert opt._passes(opt._groups[0]) == [(4, 0, 19), (4, 3, 19)]
    assert np.abs(expected - _flat(_gpu_params(dtype, case))).max() > 1e-3  # the steps moved
    if case == "SWATS":
        assert on_cpu.switched and on_cpu._groups[0].state["momentum_buffer"].any()


def test_16_bit_cuda_parameters_and_int8_on_the_gpu_are_refused_by_name():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dtype in (np.float16, ml_dtypes.bfloat16):
        with pytest.raises(ValueError, match=f"{np.dtype(dtype)} CUDA parameters are not "
                                             "supported for LAMB"):
            fm.LAMB([cuda.to_device(np.ones(3, dtype))], state_dtype="bfloat16")
    with pytest.raises(ValueError, match="state_dtype='int8' is not supported on the GPU "
                                         "for SWATS"):
        fm.SWATS([cuda.to_device(np.ones(3, np.float32))], state_dtype="int8")


# ------------------------------------------------------ Part 2: int8 on the CPU
def _int8_params(dtype=np.float32):
    rng = np.random.default_rng(3)
    # 4396 elements: 17 quantized blocks and a partial one; 33: float32 state (small)
    return [rng.standard_normal((2, 2198)).astype(dtype), rng.standard_normal(33).astype(dtype)]


INT8_CASES = {
    "LAMB": (fm.LAMB, dict(lr=1e-2, weight_decay=0.1)),
    "SWATS": (fm.SWATS, dict(lr=1e-2, weight_decay=0.01)),
}


def _dequantized(opt, name: str) -> np.ndarray:
    state = opt._groups[0].state
    blocks, small, _, _ = opt._groups[0].precision.blocks
    absmax, kept = Q.aux_names(name)
    return Q.dequantize(state[name], state[absmax], state[kept], blocks, small,
                        name != "exp_avg_sq").astype(np.float64)


def _lamb_reference(opt, params, grads, m, v, step):
    """One LAMB step in float64 from the moments ``m``, ``v``: new params, new m, v."""
    hyper = opt.param_groups[0]
    (b1, b2), eps, wd, lr = hyper["betas"], hyper["eps"], hyper["weight_decay"], hyper["lr"]
    m = b1 * m + (1 - b1) * grads
    v = b2 * v + (1 - b2) * grads * grads
    r = (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + eps) + wd * params
    out, start = params.copy(), 0
    for p in opt._groups[0].params:  # the trust ratio per tensor
        t = slice(start, start + p.size)
        trust = np.linalg.norm(params[t]) / np.linalg.norm(r[t])
        out[t] = params[t] - lr * trust * r[t]
        start += p.size
    return out, m, v


def _swats_reference(opt, params, grads, m, v, step):
    hyper = opt.param_groups[0]
    (b1, b2), eps, wd, lr = hyper["betas"], hyper["eps"], hyper["weight_decay"], hyper["lr"]
    g = grads + wd * params
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return params - lr / (1 - b1**step) * m / (np.sqrt(v / (1 - b2**step)) + eps), m, v


@pytest.mark.parametrize("case", list(INT8_CASES))
def test_one_int8_step_is_dequantize_rule_quantize_in_float64(case):
    cls, hyper = INT8_CASES[case]
    reference = {"LAMB": _lamb_reference, "SWATS": _swats_reference}[case]
    params = _int8_params()
    opt = cls(params, state_dtype="int8", **hyper)
    for t in range(3):
        opt.step(_grads(params, t))
    group = opt._groups[0]
    assert group.state["exp_avg"].dtype == np.uint8 and group.state["exp_avg_sq"].size == 4429
    m, v = _dequantized(opt, "exp_avg"), _dequantized(opt, "exp_avg_sq")
    before, grads = _flat(params), _grads(params, 3)
    opt.step(grads)
    expected, m, v = reference(opt, before, _flat(grads), m, v, 4)
    # the update uses the new moments before requantization: against the moments
    # requantized, the parameters would be off by far more than float32's round-off
    got = _flat(params)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-7)
    requantized, _, _ = reference(opt, before, _flat(grads), _dequantized(opt, "exp_avg"),
                                  _dequantized(opt, "exp_avg_sq"), 4)
    assert np.abs(got - requantized).max() > 30 * np.abs(got - expected).max()
    blocks, small, _, n_small = group.precision.blocks
    for name, values, signed in (("exp_avg", m, True), ("exp_avg_sq", v, False)):
        absmax, kept = Q.aux_names(name)
        quantized = small < 0
        peaks = np.array([np.abs(values[blocks[b]:blocks[b + 1]]).max()
                          for b in np.flatnonzero(quantized)])
        np.testing.assert_allclose(group.state[absmax][quantized], peaks, rtol=1e-6)
        qmap = Q.dynamic_map(signed).astype(np.float64)
        end = blocks[np.flatnonzero(quantized)[-1] + 1]
        normalized = values[:end] / np.repeat(peaks, np.diff(blocks)[quantized])
        nearest = np.argmin(np.abs(normalized[:, None] - qmap), axis=1)
        codes = group.state[name][:end].astype(np.int64)
        assert np.all(np.abs(codes - nearest) <= 1)  # a tie at float32's round-off
        if signed:  # to nearest
            assert (codes != nearest).mean() < 1e-3
        else:  # stochastically (the default): the entry below or above, both taken
            floor = np.clip(np.searchsorted(qmap, normalized, side="right") - 1, 0, 254)
            assert ((codes != floor) & (codes != floor + 1)).mean() < 1e-3
            assert 0.1 < (codes != nearest).mean() < 0.5
        # the small tensor's float32 state: float32 arithmetic's round-off
        np.testing.assert_allclose(group.state[kept], values[end:], rtol=1e-5,
                                   atol=1e-6 * np.abs(values[end:]).max())
        assert group.state[kept].size == n_small == 33


@pytest.mark.parametrize("case", list(INT8_CASES))
def test_an_int8_trajectory_stays_close_to_float32_state(case):
    cls, hyper = INT8_CASES[case]
    runs = {}
    for state_dtype in (None, "int8"):
        params = _int8_params()
        opt = cls(params, state_dtype=state_dtype, **hyper)
        for t in range(30):
            opt.step(_grads(params, t))
        runs[state_dtype] = _flat(params)
    moved = np.abs(runs[None] - _flat(_int8_params())).max()
    assert moved > 0.1
    # measured: 1.3 % of the largest move for LAMB, 2.7 % for SWATS
    assert np.abs(runs["int8"] - runs[None]).max() <= 0.05 * moved


def test_int8_the_same_bits_for_any_loop_and_chunking_and_checkpoints(monkeypatch, tmp_path):
    """SWATS (one pass, with sums): serial and parallel loops, lists and FlatParams,
    chunks of 1, 2 or 64 blocks; then a checkpoint resumes bit for bit."""
    results = []
    for threshold, chunk, flat in ((1 << 30, 1 << 14, False), (1, 512, False),
                                   (1 << 30, 256, True)):
        monkeypatch.setattr(fm.config, "parallel_threshold", threshold)
        monkeypatch.setattr(segments, "CHUNK", chunk)  # 512: 9 chunks of whole blocks
        arrays = _int8_params()
        params = fm.FlatParams(arrays) if flat else arrays
        opt = fm.SWATS(params, state_dtype="int8", weight_decay=0.1)
        views = params.params if flat else params
        # (by default exp_avg_sq is rounded stochastically: the same bits in every loop)
        for t in range(3):
            opt.step(_grads(views, t))
        results.append((_flat(views), {k: v.copy() for k, v in opt._groups[0].state.items()}))
    for data, state in results[1:]:
        assert np.array_equal(data, results[0][0])
        for name in state:
            assert np.array_equal(state[name], results[0][1][name]), name
    opt.save(tmp_path / "int8.npz")
    copies = [np.zeros_like(v) for v in views]
    resumed = fm.SWATS(copies, state_dtype="int8", weight_decay=0.1)
    resumed.load(tmp_path / "int8.npz")
    for t in range(3, 5):
        opt.step(_grads(views, t))
        resumed.step(_grads(copies, t))
    assert np.array_equal(_flat(views), _flat(copies))
    for name, buf in opt._groups[0].state.items():
        assert np.array_equal(resumed._groups[0].state[name], buf), name
    # into float32 state: the stored values dequantized
    opt.save(tmp_path / "int8.npz")
    widened = fm.SWATS([np.zeros_like(v) for v in views], weight_decay=0.1)
    widened.load(tmp_path / "int8.npz")
    for name in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        np.testing.assert_array_equal(widened._groups[0].state[name], _dequantized(opt, name))
    # chunks that are not whole blocks: refused when the optimizer is built
    monkeypatch.setattr(segments, "CHUNK", 100)
    with pytest.raises(ValueError, match="CHUNK \\(100\\) must be a multiple of 256"):
        fm.SWATS(_int8_params(), state_dtype="int8")


def test_int8_refusals_name_the_reason_and_change_nothing():
    p = [np.ones((2, 3), np.float32)]
    with pytest.raises(ValueError, match="not supported for NDAdam: its second moment is "
                                         "one value per weight vector"):
        fm.NDAdam(p, state_dtype="int8")
    assert (p[0] == 1).all()
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with pytest.raises(ValueError, match="int8' needs float32 or float64 parameters for SWATS"):
        fm.SWATS([np.ones(3, ml_dtypes.bfloat16)], state_dtype="int8")


# ------------------------------------------ int8 second moments rounded stochastically


_bits = element_bits  # the documented bits (tests/reference_bits.py)


# one tensor of 64 blocks; element 0 of each has gradient 1 (the block's scale), the
# others one of these values of 11 bits, 16 blocks each: with beta2 = 0.75, v = g**2 / 4
# is exact in float32 and v / scale = g**2 lies between entries of the unsigned map
_VALUES = np.array([9, -53, 261, 2], np.float64) / 1024


@pytest.mark.parametrize("case", list(INT8_CASES))
def test_int8_second_moments_round_stochastically_with_the_element_wise_bits(case,
                                                                            monkeypatch):
    """One step from zero state: by default every pass that stores ``exp_avg_sq`` has
    its codec ``"q8u_sr"`` (``exp_avg``: ``"q8s"``, nearest); its codes are the
    documented decision bit for bit (floor code, the top 24 bits of
    ``element_bits(key, index, 2)``: the element-wise Adam's stream for its second
    state), so the element-wise loops' bits; each is the entry below or above, up as
    often as the value's place between them says (5 standard errors). SWATS (whose
    parallel loop the test above compiles; one nearest variant to compile): the
    parallel loop stores the same codes, ``state_rounding="nearest"`` the nearest
    ones (the host quantizer's)."""
    cls, _ = INT8_CASES[case]
    grad = np.repeat(_VALUES, 16 * Q.BLOCK).astype(np.float32)
    grad[::Q.BLOCK] = 1.0
    y = grad * grad  # v over its block's scale (1/4), exact
    codes = {}
    runs = [("serial", 1 << 30, "auto")]
    if cls is fm.SWATS:
        runs += [("parallel", 1, "auto"), ("nearest", 1 << 30, "nearest")]
    for label, threshold, rounding in runs:
        monkeypatch.setattr(fm.config, "parallel_threshold", threshold)
        params = [np.zeros(grad.size, np.float32)]
        opt = cls(params, lr=1e-3, betas=(0.5, 0.75), weight_decay=0.0, state_dtype="int8",
                  state_rounding=rounding, seed=7)
        opt.step([grad])
        state = opt._groups[0].state
        assert np.all(state["exp_avg_sq__absmax"] == 0.25)
        stores = [k for k in opt._variants.values() if "exp_avg_sq" in k.writes]
        assert stores
        for kernel in stores:
            codec = dict(zip(kernel.state_names, kernel.layout[2]))
            assert codec["exp_avg"] == "q8s"
            assert codec["exp_avg_sq"] == ("q8u" if rounding == "nearest" else "q8u_sr")
        codes[label] = state["exp_avg_sq"].copy()
    qmap = Q.dynamic_map(False)
    blocks, small, _, n_small = opt._groups[0].precision.blocks
    nearest = Q.quantize(y / 4, blocks, small, n_small, False)[0]
    if cls is fm.SWATS:
        assert np.array_equal(codes["parallel"], codes["serial"])
        assert np.array_equal(codes["nearest"], nearest)
    got, index = codes["serial"], np.arange(grad.size)
    f = np.clip(np.searchsorted(qmap, y, side="right") - 1, 0, 254)
    u = (_bits(P.step_key_host(7, 1), index, 2) >> np.uint64(8)).astype(np.float32)
    up = (y - qmap[f]) > u * np.float32(2.0**-24) * (qmap[f + 1] - qmap[f])
    assert np.array_equal(got, f + up)
    rest = index % Q.BLOCK != 0
    assert np.all(got[~rest] == 255)
    p = (y.astype(np.float64) - qmap[f]) / (qmap[f + 1].astype(np.float64) - qmap[f])
    for c in _VALUES:  # 4080 elements of each value
        mine = rest & (grad == np.float32(c))
        chance = p[mine][0]
        assert 0.05 < chance < 0.95
        assert np.all((got[mine] == f[mine]) | (got[mine] == f[mine] + 1))
        se = np.sqrt(chance * (1 - chance) / mine.sum())
        assert abs((got[mine] == f[mine] + 1).mean() - chance) < 5 * se, c
    assert not np.array_equal(got, nearest)
