"""int8 state with 16-bit (float16, bfloat16) parameters.

- one step against float64 dequantize -> rule -> quantize (float32 master copy);
- the master copy evolves exactly as float32 parameters under int8 state do, and the
  16-bit parameters are its nearest values;
- without a master copy the parameters are rounded stochastically with the random bits
  of the element-wise (non-int8) loops: where int8 stores the states exactly, the two
  trajectories are the same bit for bit;
- the serial, parallel and list loops agree bit for bit;
- state dicts (codes, scales, master copy) round-trip and convert;
- the CUDA kernel (numba's simulator) is the CPU loop bit for bit.

numba's compilations dominate the time: the tests share a few loops (Adam's list-path
serial loop for bfloat16 parameters with and without a master copy, its flat parallel
loop), each compiled once per session.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import fastmoments as fm
from fastmoments.kernels import quantized as Q

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HYPER = dict(lr=0.01, betas=(0.9, 0.99))


def _start(dtype):
    """A quantized tensor with a partial last block, a small one (float32 state)."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal(4096 + 300).astype(dtype),
            np.linspace(-1, 1, 60).reshape(6, 10).astype(dtype)]


def _grads(params, t, dtype):
    return [(np.sin(np.arange(p.size) * 0.7 + t) * (1 + t) - 0.3).reshape(p.shape).astype(dtype)
            for p in params]


def _steps(opt, params, dtype, steps, start=0):
    """Step ``opt`` on ``_grads``; ``params``: a list (list path) or a FlatParams."""
    flat = isinstance(params, fm.FlatParams)
    views = params.params if flat else params
    for t in range(start, start + steps):
        grads = _grads(views, t, dtype)
        if flat:
            for view, g in zip(params.grads, grads):
                view[...] = g
            opt.step()
        else:
            opt.step(grads)


def _bits(arrays):
    return np.concatenate([np.asarray(a).reshape(-1).view(np.uint16) for a in arrays])


def _state(opt):
    return {k: np.asarray(v).copy() for k, v in opt._groups[0].state.items()}


def _dequantized(state, blocks, small, name, signed):
    return Q.dequantize(state[name], state[f"{name}__absmax"], state[f"{name}__float32"],
                        blocks, small, signed)


def test_one_step_is_dequantize_rule_quantize_in_float64():
    params = _start(BF16)
    opt = fm.Adam(params, **HYPER, state_dtype="int8")  # master_weights: True by default
    _steps(opt, params, BF16, 3)
    state = _state(opt)
    assert state["exp_avg"].dtype == np.uint8 and state["master_param"].dtype == np.float32
    blocks, small, _, _ = opt._groups[0].precision.blocks
    m = _dequantized(state, blocks, small, "exp_avg", True).astype(np.float64)
    v = _dequantized(state, blocks, small, "exp_avg_sq", False).astype(np.float64)
    master = state["master_param"].astype(np.float64)
    grads = _grads(params, 3, BF16)
    g = np.concatenate([a.reshape(-1) for a in grads]).astype(np.float64)
    opt.step(grads)
    m = 0.9 * m + 0.1 * g
    v = 0.99 * v + 0.01 * g**2
    expected = master - 0.01 / (1 - 0.9**4) * m / (np.sqrt(v / (1 - 0.99**4)) + 1e-8)
    new_master = opt._groups[0].state["master_param"]
    np.testing.assert_allclose(new_master, expected, rtol=2e-6, atol=2e-7)
    # the parameters: the master copy rounded to nearest
    assert np.array_equal(_bits(params), new_master.astype(BF16).view(np.uint16))
    n = 4096 + 300  # the quantized tensor: blocks 0 .. nb - 1; the small one after it
    nb = len(small) - 1
    assert blocks[nb] == n and small[nb] == 0
    for name, values, signed in (("exp_avg", m, True), ("exp_avg_sq", v, False)):
        codes = opt._groups[0].state[name][:n].astype(np.int64)
        peaks = np.array([np.abs(values[blocks[b]:blocks[b + 1]]).max() for b in range(nb)])
        np.testing.assert_allclose(opt._groups[0].state[f"{name}__absmax"][:nb], peaks,
                                   rtol=1e-5)
        qmap = Q.dynamic_map(signed).astype(np.float64)
        normalized = values[:n] / np.repeat(peaks, np.diff(blocks[:nb + 1]))
        reference = np.argmin(np.abs(normalized[:, None] - qmap), axis=1)
        if signed:  # to nearest
            assert (codes != reference).mean() < 1e-3  # ties and float32 rounding only
            assert np.all(np.abs(codes - reference) <= 1)
        else:  # stochastically (the default for second moments): an entry around it
            floor = np.clip(np.searchsorted(qmap, normalized, side="right") - 1, 0, 254)
            up = codes == floor + 1
            assert np.mean(~up & (codes != floor)) < 1e-3  # float32 rounding only
            p = (normalized - qmap[floor]) / (qmap[floor + 1] - qmap[floor])
            assert abs(up.sum() - p.sum()) < 5 * np.sqrt((p * (1 - p)).sum())  # unbiased
        np.testing.assert_allclose(opt._groups[0].state[f"{name}__float32"], values[n:],
                                   rtol=2e-6, atol=1e-7 * np.abs(values[n:]).max())


def test_the_master_copy_is_the_float32_trajectory_under_int8():
    """From values exact in 16 bits, with 16-bit gradients: the master copy and the
    states are those of float32 parameters under int8 state, bit for bit."""
    start = _start(BF16)
    reference = [a.astype(np.float32) for a in start]
    params = [a.copy() for a in start]
    opt = fm.Adam(params, **HYPER, state_dtype="int8", master_weights=True)
    ref = fm.Adam(reference, **HYPER, state_dtype="int8")
    for t in range(4):
        grads = _grads(start, t, BF16)
        opt.step(grads)
        ref.step([g.astype(np.float32) for g in grads])
    state, expected = _state(opt), _state(ref)
    assert np.array_equal(state.pop("master_param"),
                          np.concatenate([r.reshape(-1) for r in reference]))
    assert state.keys() == expected.keys()
    for name in state:
        assert np.array_equal(state[name], expected[name]), name
    assert np.array_equal(_bits(params), _bits([r.astype(BF16) for r in reference]))
    assert not np.array_equal(_bits(params), _bits(start))  # they moved


def _block_constant_grads(params, t, dtype):
    """Positive gradients, equal within each block of the quantized tensor: Adam's
    states are then stored exactly in int8 (every value its block's scale, code 255);
    any gradients for the small tensor (float32 state)."""
    big, small = params
    per_block = 1e-3 * (1 + (np.arange(big.size) // Q.BLOCK) % 5 + t)
    return [per_block.astype(dtype), _grads([small], t, dtype)[0]]


def test_stochastic_rounding_draws_the_bits_of_the_elementwise_loops():
    """Without a master copy the int8 loops round the parameters with the bits of the
    element-wise loops (same step key, flat index, stream): where int8 holds the states
    exactly, int8 and float32 state give the same 16-bit parameters bit for bit.
    Steps of a fraction of an ulp: round-to-nearest would not move the parameters."""
    lr = 2e-4
    runs = []
    for state_dtype in ("int8", None):
        params = [a.copy() for a in _start(BF16)]
        opt = fm.Adam(params, lr=lr, state_dtype=state_dtype, master_weights=False, seed=3)
        for t in range(3):
            opt.step(_block_constant_grads(params, t, BF16))
        runs.append((_bits(params), opt))
    (int8_bits, int8_opt), (f32_bits, f32_opt) = runs
    assert "master_param" not in int8_opt._groups[0].state
    assert np.array_equal(int8_opt._groups[0].state["exp_avg"][:4396], np.full(4396, 255))
    for name in ("exp_avg", "exp_avg_sq"):  # the states are exact: the premise
        for j in range(2):
            np.testing.assert_array_equal(int8_opt.state[j][name], f32_opt.state[j][name])
    moved = int8_bits != _bits(_start(BF16))
    assert 0.05 < moved[:4396].mean() < 0.95  # rounded stochastically, not to nearest
    assert np.array_equal(int8_bits, f32_bits)
    other = [a.copy() for a in _start(BF16)]
    opt = fm.Adam(other, lr=lr, state_dtype="int8", master_weights=False, seed=4)
    for t in range(3):
        opt.step(_block_constant_grads(other, t, BF16))
    assert not np.array_equal(_bits(other), int8_bits)  # another seed, other bits


def test_the_serial_list_loop_and_the_parallel_flat_loop_agree(monkeypatch):
    """Stochastic rounding (whose bits depend on the flat index) and the int8 blocks:
    the list path's serial loop and the flat parallel loop give the same bits."""
    runs = []
    for threshold, flat in ((1 << 30, False), (1, True)):
        monkeypatch.setattr(fm.config, "parallel_threshold", threshold)
        arrays = _start(BF16)
        params = fm.FlatParams(arrays) if flat else arrays
        opt = fm.Adam(params, **HYPER, state_dtype="int8", master_weights=False)
        _steps(opt, params, BF16, 3)
        group = opt._groups[0]
        used = group.plain if group.plain is not None else group.kernel
        assert (used.parallel if flat else used.multi_serial) in group.calls
        runs.append((_bits(params.params if flat else arrays), _state(opt)))
    assert not np.array_equal(runs[0][0], _bits(_start(BF16)))
    (bits, state), (parallel_bits, parallel_state) = runs
    assert np.array_equal(parallel_bits, bits)
    assert parallel_state.keys() == state.keys()
    for name in state:
        assert np.array_equal(parallel_state[name], state[name]), name


def test_state_dicts_round_trip_and_convert(tmp_path):
    start = _start(BF16)
    params = [a.copy() for a in start]
    opt = fm.Adam(params, **HYPER, state_dtype="int8")
    _steps(opt, params, BF16, 3)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["state_dtype"] == "int8"
    assert set(sd["state"][0]) == {"exp_avg", "exp_avg__absmax", "exp_avg__float32",
                                   "exp_avg_sq", "exp_avg_sq__absmax", "exp_avg_sq__float32",
                                   "master_param"}
    assert opt.state[0]["master_param"].dtype == np.float32  # listed per parameter
    opt.save(tmp_path / "int8.npz")
    copies = [a.copy() for a in start]
    resumed = fm.Adam(copies, **HYPER, state_dtype="int8")
    resumed.load(tmp_path / "int8.npz")
    assert np.array_equal(_bits(copies), _bits(params))  # bfloat16 parameters restored
    for name, buf in _state(opt).items():
        assert np.array_equal(resumed._groups[0].state[name], buf), name
    _steps(opt, params, BF16, 1, start=3)
    _steps(resumed, copies, BF16, 1, start=3)
    assert np.array_equal(_bits(copies), _bits(params))
    for name, buf in _state(opt).items():
        assert np.array_equal(resumed._groups[0].state[name], buf), name
    # to float32 state (dequantized) and bfloat16 state (nearest), the master kept
    blocks, small, _, _ = opt._groups[0].precision.blocks
    s = _state(opt)
    widened = fm.Adam([a.copy() for a in start], **HYPER)
    widened.load_state_dict(opt.state_dict())
    w = widened._groups[0].state
    assert np.array_equal(w["master_param"], s["master_param"])
    assert np.array_equal(w["exp_avg_sq"], _dequantized(s, blocks, small, "exp_avg_sq", False))
    halved = fm.Adam([a.copy() for a in start], **HYPER, state_dtype="bfloat16")
    halved.load_state_dict(opt.state_dict())
    h = halved._groups[0].state
    assert np.array_equal(h["exp_avg"], _dequantized(s, blocks, small, "exp_avg", True)
                          .astype(BF16).view(np.uint16))
    # float32 -> int8 again: the same codes where the values are the map's
    back = fm.Adam([a.copy() for a in start], **HYPER, state_dtype="int8")
    back.load_state_dict(widened.state_dict())
    for name in ("exp_avg_sq", "exp_avg_sq__absmax", "exp_avg_sq__float32", "exp_avg__float32",
                 "master_param"):
        assert np.array_equal(back._groups[0].state[name], s[name]), name
    # without a master copy: dropped; an optimizer that keeps one never invents it
    pure = fm.Adam([a.copy() for a in start], **HYPER, state_dtype="int8", master_weights=False)
    pure.load_state_dict(opt.state_dict())
    assert "master_param" not in pure._groups[0].state
    with pytest.raises(ValueError, match="master_param"):
        resumed.load_state_dict(pure.state_dict())
    assert np.array_equal(resumed._groups[0].state["master_param"], s["master_param"])


def test_a_rule_without_state_takes_the_16bit_elementwise_loop():
    start = [np.linspace(-1, 1, 5000).astype(BF16)]
    params = [a.copy() for a in start]
    opt = fm.SGD(params, lr=0.1, state_dtype="int8")  # nothing to quantize
    g = np.linspace(0, 1, 5000).astype(BF16)
    opt.step([g])
    expected = start[0].astype(np.float32) - np.float32(0.1) * g.astype(np.float32)
    assert np.array_equal(opt._groups[0].state["master_param"], expected)
    assert np.array_equal(params[0].view(np.uint16), expected.astype(BF16).view(np.uint16))


# -------------------------------------------------------------- CUDA (simulator)
@pytest.mark.parametrize("dtype, master, flat", [(BF16, True, True), (F16, False, False)],
                         ids=["bfloat16-master-flat", "float16-stochastic-list"])
def test_the_cuda_kernel_is_the_cpu_loop_bit_for_bit(monkeypatch, dtype, master, flat):
    """A step of the simulated kernel on 16-bit CUDA parameters, from the state of two
    CPU steps (loaded from a state dict: the twin compiles no CPU loop of its own),
    against the CPU loop's step."""
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 8)
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 3)
    cpu_params = _start(dtype)
    cpu = fm.Adam(cpu_params, **HYPER, state_dtype="int8", master_weights=master)
    _steps(cpu, cpu_params, dtype, 2)
    before = [p.copy() for p in cpu_params]
    arrays = [cuda.to_device(p) for p in cpu_params]
    params = fm.FlatParams(arrays) if flat else arrays
    gpu = fm.Adam(params, **HYPER, state_dtype="int8", master_weights=master)
    gpu.load_state_dict(cpu.state_dict())  # the state, and the step of the random bits
    grads = _grads(cpu_params, 2, dtype)
    cpu.step(grads)
    if flat:
        gpu.step(cuda.to_device(np.concatenate([g.reshape(-1) for g in grads])))
    else:
        gpu.step([cuda.to_device(g) for g in grads])
    group = gpu._groups[0]
    expected = _state(cpu)
    assert group.state.keys() == expected.keys()
    for name, buf in group.state.items():
        assert np.array_equal(buf.copy_to_host(), expected[name]), name
    views = params.params if flat else params
    device = [v.copy_to_host() for v in views]
    assert np.array_equal(_bits(device), _bits(cpu_params))
    assert not np.array_equal(_bits(cpu_params), _bits(before))  # the step moved them
