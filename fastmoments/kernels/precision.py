r"""Reduced-precision storage: 16-bit conversions and the counter-based random bits.

Everything the loops of :mod:`.elementwise` need to keep a buffer in fewer bits than
the arithmetic, as ``@rule`` functions (inlined, so the CPU loops and the CUDA kernels
both use them, and LLVM vectorizes them with the loop):

- **bfloat16** stored as its 16-bit pattern (``uint16``): :func:`bf16_to_f32` is the
  exact widening ``bits << 16``; :func:`f32_to_bf16_nearest` rounds to nearest, ties to
  even (bit-exact against ``ml_dtypes``, NaN becomes the quiet NaN of its sign);
  :func:`f32_to_bf16_stochastic` rounds stochastically: with the 16 bits :math:`d`
  that bfloat16 drops and 16 random bits :math:`r`,

  .. math::

      \operatorname{SR}(x) = \operatorname{trunc}_{16}(x + r\,2^{-16}\operatorname{ulp}(x)),
      \qquad P(\operatorname{SR}(x) = \lceil x \rceil) = d / 2^{16},

  so :math:`E[\operatorname{SR}(x)] = x` (unbiased: a small update to a large value
  is not lost, it lands with the right probability).
- **float16** (IEEE binary16) as its pattern: :func:`f16_to_f32`,
  :func:`f32_to_f16_nearest` (bit-exact against NumPy's ``astype``, subnormals, NaN
  payloads and overflow included) and :func:`f32_to_f16_stochastic`. numba cannot
  compile ``float16`` arithmetic on the CPU, hence the integer versions.
- **random bits** from a counter-based hash: :func:`step_key` mixes the seed and
  the step on the host; :func:`element_bits` mixes that key with the element's index
  in its group's flat layout and a stream number (one per buffer). The bits depend
  on nothing else: the same for any thread count, either loop, and the CUDA kernel.
  The mixer is the 32-bit "lowbias32" integer hash (C. Wellons' search of
  xorshift-multiply hashes): bits = mix(index mod 2**32 ^ (key + stream * golden)),
  one round per element. Elements 2**32 apart in one group (16 GiB of float32) get
  the same bits: their rounding errors are correlated, each is still unbiased.

All integer work is 32-bit and never overflows (a ``uint32`` product is taken in
``uint64`` and masked): numba types ``uint32`` arithmetic as 64-bit, LLVM narrows it
back when nothing wider is live, and the CUDA simulator runs the same lines on NumPy
scalars, which would warn on a wrapping ``uint32`` operation. Nothing in the loops'
hash or bfloat16 conversions is 64-bit: a single 64-bit vector operation (the index's
high half, a 64-bit multiply) made LLVM use 512-bit registers for it, and the whole
Adam loop ran 1.5x slower on the AVX-512 machine where this was measured. The loops
must hold the key in a ``uint32`` (it is loaded, not computed, so LLVM cannot widen
the index's 32-bit chain through it).

The host side (NumPy) has the same conversions for whole arrays
(:func:`bf16_bits_to_float32`, :func:`float32_to_bf16_bits`), used by state dicts and
checkpoints, and the option parsing of the optimizers (:func:`resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .compile import rule

__all__ = [
    "bf16_to_f32", "f32_to_bf16_nearest", "f32_to_bf16_stochastic", "f16_to_f32",
    "f32_to_f16_nearest", "f32_to_f16_stochastic", "mix32", "element_bits", "step_key",
    "step_key_host", "mix32_host", "bf16_bits_to_float32", "float32_to_bf16_bits",
    "bfloat16_dtype", "SECOND_MOMENTS", "PARAMETER_LIKE", "STATE_DTYPES", "ROUNDINGS",
    "Precision", "resolve", "storage_of", "decode", "encode",
]

_U16 = np.uint64(16)
_U13 = np.uint64(13)
_U32 = np.uint64(32)
_M32 = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0x7FEB352D)
_C2 = np.uint64(0x846CA68B)
_GOLDEN = np.uint64(0x9E3779B9)
_ABS = np.uint64(0x7FFFFFFF)
_F32_INF = np.uint64(0x7F800000)
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
# bfloat16
_BF16_SIGN = np.uint64(0x8000)
# float16
_F16_INF = np.uint64(0x7C00)
_F16_MAX_EXP = np.uint64(143)  # float32 biased exponent of 2^16: float16 overflows there
_F16_MIN_EXP = np.uint64(113)  # float32 biased exponent of 2^-14, float16's smallest normal
_F16_REBIAS = np.uint64(112 << 10)  # (127 - 15) << 10
_F16_LOW = np.uint64(0x1FFF)  # the 13 mantissa bits float16 drops
_F16_HALF = np.uint64(0xFFF)
_F32_MANT = np.uint64(0x7FFFFF)
_F32_HIDDEN = np.uint64(0x800000)
_F16_MANT = np.uint64(0x3FF)
_F16_SUB_SCALE = np.float32(2.0**-24)
_F16_TO_F32_BIAS = np.uint64(112)  # 127 - 15
_U23 = np.uint64(23)


# ----------------------------------------------------------------- the hash
# 32-bit constants: an operation of two uint32 values stays 32-bit in LLVM
_S15 = np.uint32(15)
_S16 = np.uint32(16)
_ONE32 = np.uint32(1)
_ABS32 = np.uint32(0x7FFFFFFF)
_SIGN32 = np.uint32(0x80000000)
_INF32 = np.uint32(0x7F800000)
_QNAN32 = np.uint32(0x7FC00000)
_HALF32 = np.uint32(0x7FFF)


@rule
def mix32(x):
    """lowbias32: a bijection of 32-bit integers with strong avalanche (the low 32 bits
    of ``x`` in, a ``uint32`` out)."""
    x = np.uint32(np.uint64(x) & _M32)
    x = np.uint32(x ^ (x >> _S16))
    x = np.uint32((np.uint64(x) * _C1) & _M32)
    x = np.uint32(x ^ (x >> _S15))
    x = np.uint32((np.uint64(x) * _C2) & _M32)
    return np.uint32(x ^ (x >> _S16))


@rule
def element_bits(key, index, stream):
    """32 random bits (a ``uint32``) for element ``index`` of buffer ``stream`` at the
    step whose :func:`step_key` is ``key`` (a ``uint32`` in the loops; the index counts
    modulo 2**32)."""
    stream_key = np.uint32((np.uint64(key) + np.uint64(stream) * _GOLDEN) & _M32)
    return mix32(np.uint32(np.uint64(index) & _M32) ^ stream_key)


def mix32_host(x: int) -> int:
    """:func:`mix32` in Python integers (the host computes each step's key with it)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def step_key_host(seed: int, step: int) -> int:
    """The key of step ``step`` (1-based) for ``seed``: two rounds of :func:`mix32`."""
    return mix32_host(mix32_host(seed ^ (seed >> 32)) ^ mix32_host(step ^ (step >> 32)))


@rule
def step_key(seed, step):
    """:func:`step_key_host` in jitted code (``uint64`` in and out)."""
    s = np.uint64(seed)
    t = np.uint64(step)
    return mix32(mix32((s ^ (s >> _U32)) & _M32) ^ mix32((t ^ (t >> _U32)) & _M32))


# -------------------------------------------------------------- bfloat16
@rule
def bf16_to_f32(bits):
    """The float32 value of a bfloat16 pattern (exact)."""
    return np.uint32(np.uint64(bits) << _U16).view(np.float32)


@rule
def _f32_bits(x):
    return np.uint64(np.float32(x).view(np.uint32))


@rule
def f32_to_bf16_nearest(x):
    """The bfloat16 pattern nearest to ``x`` (ties to even; NaN: quiet NaN, sign kept)."""
    # the magnitude is rounded and the sign put back: a NaN's pattern plus the half
    # never wraps (the simulator's uint32 would warn), and the select of the NaN
    # comes before one narrowing to 16 bits
    b = np.float32(x).view(np.uint32)
    a = np.uint32(b & _ABS32)
    r = np.uint32(a + _HALF32 + np.uint32((a >> _S16) & _ONE32))
    if a > _INF32:
        r = _QNAN32
    return np.uint16(np.uint32(r | np.uint32(b & _SIGN32)) >> _S16)


@rule
def f32_to_bf16_stochastic(x, bits):
    """``x`` rounded to a neighbouring bfloat16 pattern with probability proportional
    to its distance from the other one (``bits``: random, the high 16 of the low 32
    used)."""
    b = np.float32(x).view(np.uint32)
    a = np.uint32(b & _ABS32)
    # the high half of the hash: lowbias32's last step only mixes it into the low half
    r = np.uint32(a + np.uint32(np.uint32(np.uint64(bits) & _M32) >> _S16))
    if a > _INF32:
        r = _QNAN32
    return np.uint16(np.uint32(r | np.uint32(b & _SIGN32)) >> _S16)


# --------------------------------------------------------------- float16
@rule
def f16_to_f32(bits):
    """The float32 value of an IEEE float16 pattern (exact)."""
    h = np.uint64(bits)
    sign = (h & _BF16_SIGN) << _U16
    exponent = (h >> np.uint64(10)) & np.uint64(0x1F)
    mantissa = h & _F16_MANT
    if exponent == _ZERO:  # zero or subnormal: mantissa * 2^-24, exact in float32
        value = np.float32(mantissa) * _F16_SUB_SCALE
        return np.uint32(_f32_bits(value) | sign).view(np.float32)
    if exponent == np.uint64(0x1F):  # inf, nan (payload kept)
        return np.uint32(sign | _F32_INF | (mantissa << _U13)).view(np.float32)
    return np.uint32(sign | ((exponent + _F16_TO_F32_BIAS) << _U23)
                     | (mantissa << _U13)).view(np.float32)


@rule
def _f16_round(b, add_normal, bits, stochastic):
    # float16 pattern of the float32 pattern b (NaN handled by the callers): normal
    # range: add to the 13 dropped bits (nearest: 0xFFF + the kept lowest bit;
    # stochastic: 13 random bits) then truncate; subnormal range: the same on the
    # integer count of 2^-24 units, whose dropped bits depend on the exponent
    sign = (b >> _U16) & _BF16_SIGN
    a = b & _ABS
    exponent = a >> _U23
    if exponent >= _F16_MAX_EXP:  # |x| >= 2^16 (inf included): overflows
        return np.uint16(sign | _F16_INF)
    if exponent >= _F16_MIN_EXP:
        r = a + add_normal
        h = (r >> _U13) - _F16_REBIAS
        if h >= _F16_INF:
            h = _F16_INF
        return np.uint16(sign | h)
    # subnormal: value = (mantissa | 2^23) * 2^(exponent - 150) = count * 2^-24
    shift = _F16_MIN_EXP - exponent + _U13  # >= 14
    if exponent == _ZERO or shift > _U32 + _U13:
        return np.uint16(sign)  # below 2^-38: zero (a stochastic round-up has p < 2^-14)
    m = (a & _F32_MANT) | _F32_HIDDEN
    low = (_ONE << shift) - _ONE
    if stochastic:
        add = bits & low
    else:
        add = (low >> _ONE) + ((m >> shift) & _ONE)
    return np.uint16(sign | ((m + add) >> shift))


@rule
def f32_to_f16_nearest(x):
    """The float16 pattern nearest to ``x`` (ties to even), as NumPy's ``astype``."""
    b = _f32_bits(x)
    if (b & _ABS) > _F32_INF:
        payload = (b & _F32_MANT) >> _U13
        if payload == _ZERO:
            payload = _ONE
        return np.uint16(((b >> _U16) & _BF16_SIGN) | _F16_INF | payload)
    return _f16_round(b, _F16_HALF + ((b >> _U13) & _ONE), _ZERO, False)


@rule
def f32_to_f16_stochastic(x, bits):
    """``x`` rounded stochastically to a neighbouring float16 pattern (``bits``: random,
    low 32 used; NaN as :func:`f32_to_f16_nearest`)."""
    b = _f32_bits(x)
    if (b & _ABS) > _F32_INF:
        return f32_to_f16_nearest(x)
    return _f16_round(b, bits & _F16_LOW, bits, True)


# ------------------------------------------------------ host (NumPy) side
def bfloat16_dtype() -> np.dtype | None:
    """``ml_dtypes.bfloat16`` as a NumPy dtype, or None when ml_dtypes is absent."""
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return np.dtype(ml_dtypes.bfloat16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of an array of bfloat16 patterns (exact; a new array)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 patterns nearest to ``x`` (ties to even; NaN: quiet NaN of its sign)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    out = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    out[nan] = (((b[nan] >> 16) & 0x8000) | 0x7FC0).astype(np.uint16)
    return out


# --------------------------------------------------------------- options
#: the ``state_dtype`` values an optimizer accepts (None: the parameters' dtype, or
#: float32 for 16-bit parameters)
STATE_DTYPES = ("float32", "float64", "bfloat16", "int8")
#: ``state_rounding`` values: ``"auto"`` rounds the states of :data:`SECOND_MOMENTS`
#: and :data:`PARAMETER_LIKE` stochastically and the others to nearest
ROUNDINGS = ("auto", "nearest", "stochastic")
#: state buffers that accumulate squares (or maxima of them): where round-to-nearest
#: freezes a slowly decaying value, so ``"auto"`` rounds them stochastically
SECOND_MOMENTS = frozenset((
    "exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta", "exp_inf",
    "exp_avg_var", "max_exp_avg_var",
))
#: state buffers that are iterates of the parameters (schedule-free's ``z``): small
#: steps on a large value, lost to round-to-nearest as a second moment's decay is
PARAMETER_LIKE = frozenset(("z",))


@dataclass
class Precision:
    """How one param group stores its buffers (set up by :func:`resolve`).

    Attributes
    ----------
    param
        Storage of parameters and gradients: ``"same"`` (float32/float64, as given),
        ``"bf16"`` or ``"f16"`` (16-bit patterns, computed in float32).
    state
        Storage of the state buffers: ``"same"`` (the compute dtype), ``"f32"``
        (float32 under float64 arithmetic) or ``"bf16"``.
    state_dtype
        The user-facing name of the state's dtype (``"bfloat16"``, ...).
    compute
        The dtype of the arithmetic (and of the packed scalars).
    master
        Keep a float32 master copy of 16-bit parameters.
    rounding
        ``"auto"``, ``"nearest"``, ``"stochastic"`` or a dict from state name to one of
        the last two.
    seed
        Seed of the stochastic rounding.
    counter
        Steps taken (the step of the random bits; synchronized on load).
    blocks
        For int8 state: the group's block table (see
        :func:`~.quantized.block_table`), set when the group is attached.
    """

    param: str
    state: str
    state_dtype: str
    compute: np.dtype
    master: bool
    rounding: Any
    seed: int
    counter: int = 0
    blocks: Any = None

    def stochastic(self, name: str) -> bool:
        """Whether state ``name`` is rounded stochastically (bfloat16 and int8 state)."""
        if self.state not in ("bf16", "int8"):
            return False
        choice = self.rounding
        if isinstance(choice, dict):
            choice = choice.get(name, "auto")
        if choice == "auto":
            return name in SECOND_MOMENTS or name in PARAMETER_LIKE
        return choice == "stochastic"

    def layout(self, state_names: tuple[str, ...]) -> tuple:
        """The storage of each buffer, as :class:`~.elementwise.Kernel` takes it:
        ``(param, grad, states, master)`` codecs. An int8 state is ``"q8u"`` (the
        unsigned map, :data:`SECOND_MOMENTS`) or ``"q8s"`` (the signed one), rounded to
        the nearest map entry, with ``"_sr"`` appended where it is rounded
        stochastically (:meth:`stochastic`)."""
        if self.param == "same":
            param = "same"
        elif self.master:
            param = self.param
        else:
            param = self.param + "_sr"
        if self.state == "int8":  # the unsigned map for non-negative states
            states = tuple(("q8u" if n in SECOND_MOMENTS else "q8s")
                           + ("_sr" if self.stochastic(n) else "") for n in state_names)
        else:
            states = tuple(
                self.state + ("_sr" if self.stochastic(n) else "") if self.state != "same"
                else "same" for n in state_names
            )
        return (param, "same" if self.param == "same" else self.param, states, self.master)

    @property
    def state_storage(self) -> np.dtype:
        """The dtype of the state arrays."""
        return storage_of(self.state, self.compute)


def storage_of(kind: str, compute: np.dtype) -> np.dtype:
    """The NumPy dtype that stores buffers of codec ``kind``."""
    if kind == "same":
        return np.dtype(compute)
    if kind == "f32":
        return np.dtype(np.float32)
    if kind == "int8":
        return np.dtype(np.uint8)
    return np.dtype(np.uint16)


def decode(array: np.ndarray, state_dtype: str) -> np.ndarray:
    """The values of a stored state array (``state_dtype``: how it is stored) in float32
    or float64 (a new array)."""
    if state_dtype == "bfloat16":
        return bf16_bits_to_float32(array)
    return np.array(array, copy=True)


def encode(values: np.ndarray, state_dtype: str) -> np.ndarray:
    """``values`` in the stored form of ``state_dtype`` (bfloat16: nearest patterns)."""
    if state_dtype == "bfloat16":
        return float32_to_bf16_bits(values)
    return np.asarray(values, dtype=state_dtype)


def _param_kind(dtype: np.dtype) -> str:
    if dtype == np.float16:
        return "f16"
    bfloat16 = bfloat16_dtype()
    # not ``dtype == bfloat16_dtype()``: without ml_dtypes that is ``dtype == None``,
    # which NumPy answers True for float64 (None means the default dtype)
    if bfloat16 is not None and dtype == bfloat16:
        return "bf16"
    return "same"


def resolve(param_dtype: Any, state_dtype: Any, state_rounding: Any, master_weights: Any,
            seed: Any, owner: str) -> Precision | None:
    """Validate the precision options for parameters of ``param_dtype``.

    Returns None for the default storage (state in the parameters' float32 or float64
    dtype, no conversion in the loops), else a :class:`Precision`. Raises ValueError
    or TypeError naming the offending argument.
    """
    param_dtype = np.dtype(param_dtype)
    kind = _param_kind(param_dtype)
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        name = getattr(state_dtype, "__name__", None) or str(state_dtype)
        raise ValueError(f"{owner}: state_dtype must be one of {STATE_DTYPES} or None, got "
                         f"{state_dtype!r}" + (f" ({name})" if name != str(state_dtype) else ""))
    if isinstance(state_rounding, dict):
        for key, value in state_rounding.items():
            if value not in ("nearest", "stochastic", "auto"):
                raise ValueError(f"{owner}: state_rounding[{key!r}] must be 'nearest', "
                                 f"'stochastic' or 'auto', got {value!r}")
    elif state_rounding not in ROUNDINGS:
        raise ValueError(f"{owner}: state_rounding must be one of {ROUNDINGS} or a dict "
                         f"from state name to 'nearest' / 'stochastic', got {state_rounding!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{owner}: seed must be an integer >= 0, got {seed!r}")
    if master_weights not in (None, True, False):
        raise TypeError(f"{owner}: master_weights must be True, False or None, got "
                        f"{master_weights!r}")
    if kind == "same":
        if master_weights:
            raise ValueError(f"{owner}: master_weights=True needs 16-bit parameters "
                             f"(float16 or bfloat16), got {param_dtype}")
        compute = param_dtype
        if state_dtype is None or np.dtype(state_dtype) == param_dtype:
            return None
        if state_dtype == "float64":
            raise ValueError(f"{owner}: state_dtype='float64' needs float64 parameters, "
                             f"got {param_dtype}")
        state = {"bfloat16": "bf16", "int8": "int8"}.get(state_dtype, "f32")
        return Precision("same", state, state_dtype, compute, False, state_rounding,
                         int(seed))
    compute = np.dtype(np.float32)
    if state_dtype == "float64":
        raise ValueError(f"{owner}: state_dtype='float64' needs float64 parameters, "
                         f"got {param_dtype}")
    name = state_dtype or "float32"
    # int8: blockwise codes (kernels.quantized); a master copy stays float32
    state = {"bfloat16": "bf16", "int8": "int8"}.get(name, "same")
    master = True if master_weights is None else bool(master_weights)
    return Precision(kind, state, name, compute, master, state_rounding, int(seed))
