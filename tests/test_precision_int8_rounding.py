"""Stochastic rounding of int8 state codes (``state_rounding`` with ``state_dtype="int8"``).

- the floor table brackets every value it is asked about (``q[f] <= x < q[f + 1]``, the
  documented exceptions rounding right);
- one step from zero state with values exact in float32: the codes are the documented
  decision bit for bit (floor code, top 24 random bits of stream k + 1 at the element's
  flat index, float32 comparison), unbiased (fraction rounded up and mean of the
  dequantized values within a few standard errors), and ``state_rounding="nearest"``
  gives the host quantizer's nearest codes (the loops as they were);
- the frozen second moment: nearest keeps a decaying small v at its block's growing
  scale, stochastic rounding tracks float32;
- the serial flat loop and the parallel list loop agree bit for bit, and the CUDA kernel
  (numba's simulator) is the CPU loop bit for bit.

numba's compilations dominate the time: the tests share Adam's loops for two layouts
(``state_rounding="stochastic"``: both states stochastic; ``"nearest"``).
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda, njit
from reference_bits import element_bits

import fastmoments as fm
from fastmoments.kernels import precision as P
from fastmoments.kernels import quantized as Q

# betas whose (1 - beta) are powers of two: from zero state, m = g / 2 and v = g**2 / 4
# are exact in float32 for gradients of 11 significant bits
EXACT = dict(lr=1e-3, betas=(0.5, 0.75))


_bits = element_bits  # the documented bits (tests/reference_bits.py)


def _floor(qmap: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The lower bracketing code, capped at 254 (float32 comparisons)."""
    return np.clip(np.searchsorted(qmap, y, side="right") - 1, 0, 254)


def _stochastic_codes(qmap: np.ndarray, y: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The documented decision in NumPy float32: up when y - q[f] > u (q[f+1] - q[f])."""
    f = _floor(qmap, y)
    u = (bits >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24)
    up = (y - qmap[f]) > u * (qmap[f + 1] - qmap[f])
    return (f + up).astype(np.uint8)


@njit
def _floors(table, row, x):
    out = np.empty(x.size, np.int64)
    for i in range(x.size):
        slot = Q.code_slot(x[i])
        out[i] = Q.code_of(table[row, slot >> np.uint32(16)], slot)
    return out


@pytest.mark.parametrize("signed", [False, True])
def test_the_floor_table_brackets_every_value(signed):
    """Around every map entry and bucket edge, the floor code from one read of the
    table is the float32 floor (capped at 254); 1 takes 254, -0.0 the code below 0."""
    qmap = Q.dynamic_map(signed)
    near = qmap.view(np.int32)[:, None] + np.arange(-3, 4)
    buckets = (np.arange(1 << 16, dtype=np.uint32) << 16)[:, None] | np.array([0, 1, 0xFFFF])
    x = np.concatenate([near.astype(np.uint32).ravel().view(np.float32),
                        buckets.astype(np.uint32).ravel().view(np.float32),
                        np.array([1.0, 0.0, 1e-30, 1e-8, -1e-30, -1e-8], np.float32)])
    low = -1.0 if signed else 0.0
    x = x[(x >= low) & (x <= 1) & ~((x == 0) & np.signbit(x))]  # -0.0: below
    f = _floors(Q.floor_table(), int(signed), x)
    assert np.array_equal(f, _floor(qmap, x))
    # below the lowest entry (the signed map has no -1): code 0, as to nearest
    assert np.all(((qmap[f] <= x) | (f == 0)) & ((x < qmap[f + 1]) | (x == 1)))
    # the exceptions: 1 and (signed) -0.0 sit on their upper entry, always taken; NaN 0
    f = _floors(Q.floor_table(), int(signed), np.array([1.0, -0.0, np.nan], np.float32))
    assert f[0] == 254 and f[2] == 0
    assert (qmap[f[1]] < 0 and qmap[f[1] + 1] == 0) if signed else f[1] == 0
    for y, floor, code in ((1.0, f[0], 255), (-0.0, f[1], np.flatnonzero(qmap == 0)[0])):
        for bits in (0, 0xFFFFFFFF):
            assert Q.stochastic_code(np.uint32(floor), np.float32(y), qmap[floor],
                                     qmap[floor + 1], np.uint32(bits)) == code


# one tensor of 64 blocks: element 0 of each block has gradient 1 (the block's scale),
# the others a value of 11 bits (exact squares), 16 blocks per value; the values lie
# between map entries in both maps (the signed one on both sides of 0) and in several
# decades (y = c for m, c**2 for v: down to 4e-6)
VALUES = np.array([9, -53, 261, 2], np.float64) / 1024
N_BLOCKS = 16 * len(VALUES)


def _one_step(rounding: str, seed: int = 0) -> tuple[fm.Adam, np.ndarray]:
    flat = fm.FlatParams([np.zeros(N_BLOCKS * Q.BLOCK, np.float32)])
    opt = fm.Adam(flat, **EXACT, state_dtype="int8", state_rounding=rounding, seed=seed)
    grad = np.repeat(VALUES, 16 * Q.BLOCK).astype(np.float32)
    grad[::Q.BLOCK] = 1.0
    flat.grad[:] = grad
    opt.step()
    return opt, grad


def test_one_step_is_the_documented_unbiased_decision_and_nearest_is_unchanged():
    opt, g = _one_step("stochastic", seed=7)
    assert opt._groups[0].kernel.layout[2] == ("q8s_sr", "q8u_sr")
    state = opt._groups[0].state
    key = P.step_key_host(7, 1)
    nearest, _ = _one_step("nearest")
    assert nearest._groups[0].kernel.layout[2] == ("q8s", "q8u")
    blocks, small_blocks, _, n_small = opt._groups[0].precision.blocks
    index = np.arange(g.size)
    rest = index % Q.BLOCK != 0  # all but each block's scale
    for k, (name, signed, y) in enumerate((("exp_avg", True, g), ("exp_avg_sq", False, g * g))):
        qmap = Q.dynamic_map(signed)
        assert np.all(state[f"{name}__absmax"] == (0.5 if signed else 0.25))
        codes = state[name]
        # bit for bit: the stream of state k is k + 1, the index the flat one
        assert np.array_equal(codes, _stochastic_codes(qmap, y, _bits(key, index, k + 1)))
        assert not np.array_equal(codes, _stochastic_codes(qmap, y, _bits(key, index, k + 2)))
        assert np.all(codes[~rest] == 255)
        f = _floor(qmap, y)
        p = (y.astype(np.float64) - qmap[f]) / (qmap[f + 1].astype(np.float64) - qmap[f])
        scale = 0.5 if signed else 0.25
        for c in VALUES:  # unbiased: 4080 elements of one value
            mine = rest & (g == np.float32(c))
            value, chance = (c if signed else c * c), p[mine][0]
            assert 0.05 < chance < 0.95
            up = codes[mine] == f[mine] + 1
            assert np.all(up | (codes[mine] == f[mine]))
            se = np.sqrt(chance * (1 - chance) / mine.sum())
            assert abs(up.mean() - chance) < 5 * se, (name, c)
            mean = (qmap[codes[mine]].astype(np.float64)).mean()
            span = float(qmap[f[mine][0] + 1]) - float(qmap[f[mine][0]])
            assert abs(mean - value) < 5 * se * span, (name, c)
        # nearest: the host quantizer's codes (the loops' nearest codes, unchanged)
        expected = Q.quantize(y * np.float32(scale), blocks, small_blocks, n_small, signed)[0]
        assert np.array_equal(nearest._groups[0].state[name], expected)
        assert not np.array_equal(codes, expected)


def test_the_default_rounds_second_moments_stochastically():
    params = [np.zeros(4096, np.float32)]
    for rounding in ({}, {"state_rounding": "auto"}):
        opt = fm.Adam(params, state_dtype="int8", **rounding)
        assert opt._groups[0].kernel.layout[2] == ("q8s", "q8u_sr")
    opt = fm.AdamW(params, state_dtype="int8",
                   state_rounding={"exp_avg": "stochastic", "exp_avg_sq": "nearest"})
    assert opt._groups[0].kernel.layout[2] == ("q8s_sr", "q8u")
    assert Q.takes_key(("same", "same", ("q8s", "q8u_sr"), False))
    assert not Q.takes_key(("same", "same", ("q8s", "q8u"), False))
    assert not Q.takes_key(("bf16", "bf16", ("q8s", "q8u"), True))


def test_nearest_freezes_a_decaying_second_moment_and_stochastic_rounding_tracks_float32():
    """Per block of 256, one element with g = 1 throughout (the growing scale), the
    others g = 1 for 100 steps then 0 (beta2 = 0.999). After 3,100 steps float32 holds
    v = 0.0047 in those; rounded to the nearest map entry their code never moves (each
    step changes v / scale by about 0.2 %, the map's entries near 1 are 0.7 % apart),
    so they follow the scale up to 0.51; rounded stochastically their mean is
    float32's (0.75 % standard error over 4080 elements)."""
    n = 4096
    big = np.arange(n) % Q.BLOCK == 0
    v = {}
    for label, kwargs in [("f32", {}), ("nearest", dict(state_rounding="nearest")),
                          ("sr", dict(state_rounding="stochastic"))]:
        flat = fm.FlatParams([np.zeros(n, np.float32)])
        opt = fm.Adam(flat, lr=1e-6, betas=(0.9, 0.999),
                      **(dict(state_dtype="int8", **kwargs) if kwargs else {}))
        flat.grad[:] = 1.0
        for t in range(3100):
            if t == 100:
                flat.grad[~big] = 0.0
            opt.step()
        v[label] = opt.state[0]["exp_avg_sq"][~big].astype(np.float64)
    expected = 0.999**3000 * (1 - 0.999**100)
    assert v["f32"].mean() == pytest.approx(expected, rel=1e-3)  # 0.0047
    assert v["nearest"].min() > 100 * expected  # frozen at the scale's 0.51
    assert v["sr"].mean() == pytest.approx(v["f32"].mean(), rel=0.04)  # about 5 SE


def _shapes():
    """A quantized tensor with a partial last block, a small one (float32 state), a
    second quantized one (its blocks start at a flat index other than 0)."""
    rng = np.random.default_rng(4)
    return [rng.standard_normal(4096 + 300).astype(np.float32),
            np.linspace(-1, 1, 60).astype(np.float32),
            rng.standard_normal((32, 130)).astype(np.float32)]


def _grads(arrays, t):
    return [(np.sin(np.arange(a.size) * 0.37 + t) * (1 + t) * np.exp(-np.arange(a.size)
            % 7)).reshape(a.shape).astype(np.float32) for a in arrays]


def _run(params, steps, start=0, opt=None):
    flat = isinstance(params, fm.FlatParams)
    views = params.params if flat else params
    if opt is None:
        opt = fm.Adam(params, lr=0.01, betas=(0.9, 0.99), state_dtype="int8",
                      state_rounding="stochastic")
    for t in range(start, start + steps):
        grads = _grads(views, t)
        if flat:
            for view, g in zip(params.grads, grads):
                view[...] = g
            opt.step()
        else:
            opt.step(grads)
    return opt


def _state(opt):
    return {k: np.asarray(v).copy() for k, v in opt._groups[0].state.items()}


def test_the_serial_flat_and_parallel_list_loops_agree(monkeypatch):
    runs = []
    for threshold, flat in ((1 << 30, True), (1, False)):
        monkeypatch.setattr(fm.config, "parallel_threshold", threshold)
        arrays = _shapes()
        params = fm.FlatParams(arrays) if flat else arrays
        opt = _run(params, 3)
        group = opt._groups[0]
        used = group.plain if group.plain is not None else group.kernel
        assert (used.serial if flat else used.multi_parallel) in group.calls
        views = params.params if flat else arrays
        runs.append((np.concatenate([v.ravel() for v in views]), _state(opt)))
    (data, state), *others = runs
    for other_data, other_state in others:
        assert np.array_equal(other_data, data)
        assert other_state.keys() == state.keys()
        for name in state:
            assert np.array_equal(other_state[name], state[name]), name
    # another seed draws other codes
    monkeypatch.setattr(fm.config, "parallel_threshold", 1 << 30)
    params = fm.FlatParams(_shapes())
    seeded = _run(params, 3, opt=fm.Adam(params, lr=0.01, betas=(0.9, 0.99),
                                         state_dtype="int8", state_rounding="stochastic",
                                         seed=1))
    assert not np.array_equal(_state(seeded)["exp_avg_sq"], state["exp_avg_sq"])


def test_the_cuda_kernel_is_the_cpu_loop_bit_for_bit(monkeypatch):
    """A step of the simulated kernel (flat and list launches) from the state of two CPU
    steps (loaded from a state dict, with the step of the random bits), against the CPU
    loop's step."""
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 8)
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 3)
    monkeypatch.setattr(fm.config, "parallel_threshold", 1 << 30)
    cpu_flat = fm.FlatParams(_shapes())
    cpu = _run(cpu_flat, 2)
    sd = cpu.state_dict()
    start = [v.copy() for v in cpu_flat.params]
    _run(cpu_flat, 1, start=2, opt=cpu)
    expected = _state(cpu)
    for flat in (True, False):
        arrays = [cuda.to_device(a) for a in start]
        params = fm.FlatParams(arrays) if flat else arrays
        gpu = fm.Adam(params, lr=0.01, betas=(0.9, 0.99), state_dtype="int8",
                      state_rounding="stochastic")
        gpu.load_state_dict(sd)
        grads = _grads(start, 2)
        if flat:
            gpu.step(cuda.to_device(np.concatenate([g.ravel() for g in grads])))
        else:
            gpu.step([cuda.to_device(g) for g in grads])
        group = gpu._groups[0]
        assert group.state.keys() == expected.keys()
        for name, buf in group.state.items():
            assert np.array_equal(buf.copy_to_host(), expected[name]), (flat, name)
        views = params.params if flat else params
        assert np.array_equal(np.concatenate([v.copy_to_host().ravel() for v in views]),
                              np.concatenate([v.ravel() for v in cpu_flat.params]))
