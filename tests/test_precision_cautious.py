"""Reduced precision for ``cautious=True`` (two segmented passes: count, then apply).

C-Lion's count pass stores nothing (its apply pass recomputes the state); ADOPT's stores
the state, so a group stored in fewer bits runs it without its stores and an apply pass
that recomputes the state first. Either way the stored state is "rule in float32, then
narrow", and the parameter moves by the new state before it is narrowed:

- bfloat16 state, steps against a float64 NumPy reference of widen -> cautious rule ->
  narrow: the states bit for bit (nearest, and the documented stochastic rounding of
  (seed, step, index)), the parameters to round-off, where the state narrowed before
  the update would be off by far more;
- gradients whose every element agrees: the states are the element-wise rule's bit for
  bit (the same random bits) and each tensor's steps are its element-wise steps times
  ``numel / (numel + 1)``;
- int8 state (CPU, rounded to nearest) likewise against the element-wise int8 rule;
- 16-bit parameters (CPU), with a float32 master copy and without (stochastically
  rounded, bit for bit against a float32 NumPy mirror of the rule);
- the simulated GPU stores the CPU's states and parameters bit for bit;
- what stays refused names its reason and changes nothing.

numba's compilations dominate the time: two rules, the smallest arrays, and the CPU
loops shared between tests wherever the layout is the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda
from reference_bits import element_bits
from reference_modern import ADOPT as ReferenceADOPT
from reference_modern import CautiousLion as ReferenceLion

import fastmoments as fm
from fastmoments.kernels import precision as P

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPES = [(40,), (4, 6)]
LION = dict(lr=1e-2, betas=(0.875, 0.75), weight_decay=0.1)
ADOPT = dict(lr=0.1, betas=(0.875, 0.75))


# -------------------------------------------------------- reference codecs
_bits = element_bits  # the documented bits (tests/reference_bits.py)


def _widen(bits: np.ndarray) -> np.ndarray:
    return bits.view(BF16).astype(np.float64)


def _nearest(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 -> bfloat16 pattern, each to nearest even."""
    return x.astype(np.float32).astype(BF16).view(np.uint16)


def _stochastic(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """float32 value plus the high 16 random bits below the kept ones, truncated."""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    magnitude = (b & np.uint64(0x7FFFFFFF)) + (bits >> np.uint64(16))
    return (((magnitude | (b & np.uint64(0x80000000))) >> np.uint64(16))
            .astype(np.uint16))


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _split(flat: np.ndarray) -> list[np.ndarray]:
    sizes = np.cumsum([int(np.prod(s)) for s in SHAPES])[:-1]
    return [part.reshape(s) for part, s in zip(np.split(flat, sizes), SHAPES)]


def _params(dtype=np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.uniform(-1, 1, s).astype(dtype) for s in SHAPES]


def _grads(t: int, signs: np.ndarray | None = None, dtype=np.float32) -> list[np.ndarray]:
    """Gradients of 6 significant bits in [0.5, 2): squares and the betas' products are
    exact in float32, so a float64 reference rounds as the kernels do. ``signs``: fixed
    signs (else random ones, a new draw every step)."""
    rng = np.random.default_rng(100 + t)
    n = sum(int(np.prod(s)) for s in SHAPES)
    sign = rng.choice([-1.0, 1.0], n) if signs is None else signs
    return [g.astype(dtype) for g in _split(sign * rng.integers(16, 64, n) / 32.0)]


# ---------------------------------------- bfloat16 state: the float64 reference
def _reference_step(name: str, params, grads, state: dict, step: int):
    """One cautious step in float64 from the stored state: new params, the new state
    (float64, before narrowing)."""
    p = [np.asarray(x, np.float64).copy() for x in params]
    g = [np.asarray(x, np.float64) for x in grads]
    if name == "Lion":
        ref = ReferenceLion(p, cautious=True, **LION)
        ref.m = _split(_widen(state["exp_avg"]))
    else:
        ref = ReferenceADOPT(p, cautious=True, **ADOPT)
        ref.m = _split(_widen(state["exp_avg"]))
        ref.v = _split(_widen(state["exp_avg_sq"]))
    ref.t = step - 1
    ref.step(g)
    new = {"exp_avg": _flat(ref.m)}
    if name == "ADOPT":
        new["exp_avg_sq"] = _flat(ref.v)
    return _flat(ref.params), new


def _adopt_narrowed_update(params, grads, m_new: np.ndarray) -> np.ndarray:
    """ADOPT's cautious parameters moved by ``m_new`` narrowed to bfloat16 first (what
    an apply pass reading the stored state back would do): must not be what we get."""
    m = _split(_widen(_nearest(m_new)))
    out = []
    for p, g, u in zip(params, grads, m):
        phi = (u * g > 0).astype(np.float64)
        scale = phi.size / (phi.sum() + 1)
        out.append(np.asarray(p, np.float64) - ADOPT["lr"] * u * phi * scale)
    return _flat(out)


@pytest.mark.parametrize("name", ["Lion", "ADOPT"])
def test_steps_are_widen_cautious_rule_narrow_in_float64(name):
    """Each step from the stored state: exp_avg rounded to nearest, ADOPT's exp_avg_sq
    stochastically (stream 2, keyed by seed and step), bit for bit; the parameters to
    float32 round-off, with a mask that keeps some elements still."""
    params = _params()
    cls, hyper = (fm.Lion, LION) if name == "Lion" else (fm.ADOPT, ADOPT)
    opt = cls(params, cautious=True, state_dtype="bfloat16", seed=11, **hyper)
    index = np.arange(sum(p.size for p in params))
    disagreeing = 0
    for step in range(1, 5):
        grads = _grads(step)
        state, before = opt.state_dict()["state"][0], [p.copy() for p in params]
        expected, new = _reference_step(name, before, grads, state, step)
        opt.step(grads)
        got = opt.state_dict()["state"][0]
        np.testing.assert_array_equal(got["exp_avg"], _nearest(new["exp_avg"]))  # nearest
        if name == "ADOPT":  # stochastic, stream 2: exp_avg_sq is the rule's second state
            key = P.step_key_host(11, step)
            np.testing.assert_array_equal(got["exp_avg_sq"],
                                          _stochastic(new["exp_avg_sq"], _bits(key, index, 2)))
        np.testing.assert_allclose(_flat(params), expected, rtol=0, atol=1e-6)
        if name == "ADOPT" and step > 1:  # the update from the state before narrowing
            narrowed = _adopt_narrowed_update(before, grads, new["exp_avg"])
            assert np.abs(_flat(params) - narrowed).max() > 1e-5  # 10 x the tolerance
        if name == "Lion":  # the sign of c, from the old state
            b1 = LION["betas"][0]
            update = b1 * _widen(state["exp_avg"]) + (1 - b1) * _flat(grads)
        else:  # the new first moment (nothing moves at ADOPT's first step)
            update = new["exp_avg"] if step > 1 else _flat(grads)
        disagreeing += int((update * _flat(grads) <= 0).sum())
    assert disagreeing > 10  # the mask had work to do


def _all_agreeing(t: int) -> list[np.ndarray]:
    signs = np.where(np.arange(sum(int(np.prod(s)) for s in SHAPES)) % 3 == 0, -1.0, 1.0)
    return _grads(t, signs)


def test_all_agreeing_steps_are_the_elementwise_steps_times_the_scale():
    """ADOPT (its count pass stores the state): with every element agreeing, the
    cautious bfloat16 run stores the element-wise bfloat16 run's states bit for bit (the
    same random bits), and moves each tensor by numel / (numel + 1) times its steps."""
    runs = []
    for cautious in (True, False):
        params = [np.zeros(s, np.float32) for s in SHAPES]
        opt = fm.ADOPT(params, cautious=cautious, state_dtype="bfloat16", seed=3, **ADOPT)
        for t in range(1, 5):
            opt.step(_all_agreeing(t))
        runs.append((params, opt.state_dict()["state"][0]))
    (cautious_p, cautious_s), (plain_p, plain_s) = runs
    for name in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(cautious_s[name], plain_s[name])
    for c, e in zip(cautious_p, plain_p):
        assert np.abs(e).min() > 0
        # the state narrowed before the update would be off by about 1e-3 of it
        np.testing.assert_allclose(c, e * (e.size / (e.size + 1)), rtol=2e-6)


# ------------------------------------------------------------ int8 (CPU)
def test_int8_state_is_the_elementwise_int8_rule_where_every_element_agrees():
    """ADOPT with int8 state (its default rounding: exp_avg_sq stochastically, the
    element-wise loops' random bits): the cautious run stores the element-wise int8
    run's codes, scales and small tensor's float32 values bit for bit, and its
    parameters move by the new state before requantization (numel / (numel + 1) times
    the element-wise steps)."""
    shapes = [(4096 + 300,), (33,)]  # 17 quantized blocks and a partial one; one small
    signs = np.where(np.arange(4429) % 3 == 0, -1.0, 1.0)
    runs = []
    for cautious in (True, False):
        params = [np.zeros(s, np.float32) for s in shapes]
        opt = fm.ADOPT(params, cautious=cautious, state_dtype="int8", **ADOPT)
        assert opt._groups[0].precision.layout(("exp_avg", "exp_avg_sq"))[2] == ("q8s",
                                                                                 "q8u_sr")
        for t in range(1, 4):
            rng = np.random.default_rng(t)
            g = signs * rng.uniform(0.1, 2.0, 4429)
            opt.step([g[:4396].astype(np.float32), g[4396:].astype(np.float32)])
        runs.append((params, opt.state_dict()["state"][0]))
    (cautious_p, cautious_s), (plain_p, plain_s) = runs
    # a scale per block: 18 of the large tensor's, one of the small one's (unused)
    assert cautious_s["exp_avg"].dtype == np.uint8 and cautious_s["exp_avg__absmax"].size == 19
    for name in plain_s:
        np.testing.assert_array_equal(cautious_s[name], plain_s[name], err_msg=name)
    for c, e in zip(cautious_p, plain_p):
        np.testing.assert_allclose(c, e * (e.size / (e.size + 1)), rtol=2e-6)


# ------------------------------------------------------- 16-bit parameters
def _lion_float32_mirror(p32, g32, m32):
    """One cautious Lion step in float32 NumPy arithmetic, the kernels' operations in
    their order (the parameter's stochastic rounding needs its float32 value exactly):
    new parameters (float32), new exp_avg (float32)."""
    f = np.float32
    b1, b2 = LION["betas"]
    c = f(b1) * m32 + f(1 - b1) * g32
    agree = ((c > 0) & (g32 > 0)) | ((c < 0) & (g32 < 0))
    out = p32 * f(1 - LION["lr"] * LION["weight_decay"])
    start = 0
    for s in SHAPES:
        t = slice(start, start + int(np.prod(s)))
        scale = f(np.prod(s) / (agree[t].sum() + 1.0))
        move = f(LION["lr"]) * scale
        out[t] = np.where(agree[t], np.where(c[t] > 0, out[t] - move, out[t] + move), out[t])
        start = t.stop
    return out, f(b2) * m32 + f(1 - b2) * g32


@pytest.mark.parametrize("master", [True, False])
def test_16_bit_parameters_with_and_without_a_master_copy(master):
    """bfloat16 parameters: with a master copy (float32 state) the copy is the float32
    rule's result and the parameters its nearest bfloat16; without one (bfloat16
    state) the parameters are rounded stochastically with stream 0's bits."""
    params = [p.astype(BF16) for p in _params()]
    opt = fm.Lion(params, cautious=True, master_weights=master, seed=9,
                  state_dtype=None if master else "bfloat16", **LION)
    index = np.arange(sum(p.size for p in params))
    for step in range(1, 4):
        grads = [g.astype(BF16) for g in _grads(step)]
        state = opt.state_dict()["state"][0]
        m32 = (state["exp_avg"] if master else _widen(state["exp_avg"])).astype(np.float32)
        p32 = (state["master_param"] if master else _flat(params)).astype(np.float32)
        p_new, m_new = _lion_float32_mirror(p32, _flat(grads).astype(np.float32), m32)
        opt.step(grads)
        got = opt.state_dict()["state"][0]
        if master:
            np.testing.assert_array_equal(got["master_param"], p_new)
            np.testing.assert_array_equal(got["exp_avg"], m_new)
            np.testing.assert_array_equal(_flat(params), p_new.astype(BF16).astype(np.float64))
        else:
            np.testing.assert_array_equal(got["exp_avg"], _nearest(m_new))
            bits = _bits(P.step_key_host(9, step), index, 0)
            np.testing.assert_array_equal(
                np.concatenate([p.view(np.uint16).ravel() for p in params]),
                _stochastic(p_new, bits))
    assert np.abs(_flat(params) - _flat(_params())).max() > 0.02


# --------------------------------------------------------- the simulated GPU
def test_the_simulated_gpu_stores_the_cpu_states_bit_for_bit(monkeypatch):
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 3)  # several blocks per tensor
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 2)
    runs = []
    for device in (False, True):
        host = _params()
        params = [cuda.to_device(p) for p in host] if device else host
        opt = fm.ADOPT(params, cautious=True, state_dtype="bfloat16", seed=4, **ADOPT)
        for step in range(1, 4):
            grads = _grads(step)
            opt.step([cuda.to_device(g) for g in grads] if device else grads)
        runs.append((_flat([p.copy_to_host() if device else p for p in params]),
                     opt.state_dict()["state"][0]))
    (cpu_p, cpu_s), (gpu_p, gpu_s) = runs
    for name in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(gpu_s[name], cpu_s[name])
    np.testing.assert_array_equal(gpu_p, cpu_p)  # the counts are exact sums of 0 and 1


# --------------------------------------------------------------- refusals
def test_what_stays_refused_names_its_reason_and_changes_nothing():
    p16 = [np.ones(3, BF16)]
    with pytest.raises(ValueError, match="int8' needs float32 or float64 parameters, got "
                                         "bfloat16"):
        fm.Lion([np.ones(3, BF16)], cautious=True, state_dtype="int8")
    with pytest.raises(ValueError, match="int8' on the GPU"):
        fm.Lion([cuda.to_device(np.ones(3, np.float32))], cautious=True, state_dtype="int8")
    with pytest.raises(ValueError, match="float16 CUDA parameters"):
        fm.Lion([cuda.to_device(np.ones(3, np.float16))], cautious=True)
    # switched on by an edit, or by a state dict: refused before anything changes
    opt = fm.ADOPT(p16, state_dtype="int8")
    sd = opt.state_dict()
    opt.param_groups[0]["cautious"] = True
    with pytest.raises(ValueError, match=r"needs float32 or float64.*\(param_groups\[0\]\)"):
        opt.step([np.ones(3, BF16)])
    assert opt.step_count == 0
    opt.param_groups[0]["cautious"] = False
    sd["param_groups"][0]["cautious"] = True
    with pytest.raises(ValueError, match=r"state_dict: param_groups\[0\]: ADOPT: cautious=True "
                                         "with state_dtype='int8' needs float32"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["cautious"] is False
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"],
                                  sd["state"][0]["exp_avg"])
