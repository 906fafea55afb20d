r"""8-bit blockwise state: the dynamic maps, the block table, the fused block loops.

A state stored as ``int8`` keeps, per block of :data:`BLOCK` consecutive elements of one
tensor, one float32 scale (the block's largest magnitude, ``absmax``) and one byte per
element: the index of the nearest value of a 256-entry *dynamic map* :math:`q` to the
element divided by the scale,

.. math::

    c_i = \operatorname*{arg\,min}_k \left| q_k - v_i / a_b \right|, \qquad
    \hat v_i = q_{c_i}\, a_b, \qquad a_b = \max_{i \in b} |v_i|.

The maps follow the dynamic (tree) quantization of Dettmers (2016) as bitsandbytes
uses it for its 8-bit optimizers: seven decades :math:`10^{-6} \ldots 1`, the
:math:`k`-th holding :math:`2^k` (signed map, with both signs) or :math:`2^{k+1}`
(unsigned map) values evenly spread over :math:`[0.1, 1]` of the decade, plus 0 and 1:
most codes near the scale, some down to :math:`10^{-7}` of it. Signed states (first
moments) use the signed map, non-negative ones (second moments, maxima) the unsigned
map (:data:`~.precision.SECOND_MOMENTS`). Tensors below :data:`THRESHOLD` elements
keep float32 state (as bitsandbytes does): a block of theirs reads and writes a float32
buffer instead.

A state rounded stochastically (``state_rounding``: by default the second moments,
codecs ``"q8u_sr"`` / ``"q8s_sr"`` of :meth:`~.precision.Precision.layout`) stores
instead, for :math:`y = v_i / a_b` between the entries :math:`q_f \le y < q_{f+1}`
(:func:`floor_table`), the code :math:`f + 1` with probability
:math:`(y - q_f) / (q_{f+1} - q_f)`, else :math:`f` (:func:`stochastic_code`), so that
the stored value is right on average: a second moment that decays by
:math:`1 - \beta_2 = 0.1\%` a step, far below the map's spacing, would otherwise keep
its code (it *freezes*, as bfloat16's does rounded to nearest). The random bits are
:func:`~.precision.element_bits` of the step's key, the element's index in its group
and stream :math:`k + 1` for state :math:`k` (the bfloat16 state's numbering): the same
for any thread count, either loop and the CUDA kernel. A positive second moment is never
stored as code 0 either way (:func:`nonzero_code`); the host conversions
(:func:`quantize`, for state dicts) round to nearest.

Each step dequantizes a block, runs the rule on every element (the parameter update
uses the values before requantization), takes the new scales and requantizes the block:
one pass, a block-sized scratch, never a full-size float32 copy (:func:`loop_source` on
the CPU, :func:`cuda_source` on the GPU: one thread block per quantization block).
16-bit parameters (float16, bfloat16) are widened and narrowed in the same pass as the
element-wise loops do it: the rule reads the float32 master copy, which stays float32,
and the parameters are written from it to nearest; or, without a master copy, it reads
the widened parameters and they are rounded stochastically, with the random bits the
element-wise loops draw for the same element (:func:`~.precision.element_bits` of the
step's key, the element's index in its group, stream 0). The
scale is the largest magnitude that is not NaN; the code search runs in float32 (for
float64 parameters too: the values are divided by the stored float32 scale, the one
that dequantizes them).

Where the time goes on the CPU (Adam, two states, one core of the AVX-512 machine this
was measured on): about 31 instructions per element against float32 Adam's 3, in
passes over each block that LLVM vectorizes but for the table reads, which it does not
gather on this target: of about 3.3 ns per element (block in cache), the map reads of
the dequantization take 0.8 ns, the code table reads 0.6 ns, the divisions by the
scales with the code slots 0.6 ns (each measured by removing it); the rest is Adam's
arithmetic, the scratch and the scales' maxima.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from . import precision as _precision
from .compile import rule

__all__ = ["BLOCK", "THRESHOLD", "CHUNK", "dynamic_map", "maps", "lookup_tables", "limits",
           "code_table", "floor_table", "code_slot", "code_of", "nonzero_code", "nearest_code",
           "stochastic_code", "magnitude", "block_table", "rounded_states", "takes_floors",
           "takes_key",
           "quantize", "dequantize", "loop_source", "cuda_source", "aux_names", "LOOP_GLOBALS",
           "CUDA_GLOBALS"]

#: elements per quantization block
BLOCK = 256
#: tensors with fewer elements keep float32 state
THRESHOLD = 4096
#: blocks per chunk of the CPU loops (a chunk allocates its scratch once; the parallel
#: loops share the chunks out)
CHUNK = 16


def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 values of the signed or unsigned dynamic map, ascending (float32)."""
    values = [0.0, 1.0]
    for level in range(7):
        count = 2**level if signed else 2 ** (level + 1)
        edges = np.linspace(0.1, 1.0, count + 1)
        middles = (edges[:-1] + edges[1:]) / 2.0 * 10.0 ** (level - 6)
        values.extend(middles)
        if signed:
            values.extend(-middles)
    out = np.sort(np.array(values, dtype=np.float32))
    assert out.size == 256
    return out


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@cache
def maps() -> np.ndarray:
    """The two maps as the loops take them: row 0 unsigned, row 1 signed (read-only)."""
    return _frozen(np.stack([dynamic_map(False), dynamic_map(True)]))


@cache
def lookup_tables() -> np.ndarray:
    """For each map (rows as :func:`maps`), the nearest code to the lower end of every
    bfloat16 bucket: entry ``k`` is for the float32 values whose top 16 bits are ``k``
    (NaN buckets: 0). The map's entries are further apart than a bucket is wide (its
    finest spacing, 0.9/128 of the scale, against at most 2**-8 of it below 1), so the
    nearest code of any value in a bucket is that entry or the next one (read-only)."""
    keys = np.arange(1 << 16, dtype=np.uint32)
    # the lower end: the bucket's start for positive values, its end for negative ones
    low_bits = np.where(keys & 0x8000, (keys << 16) | 0xFFFF, keys << 16).astype(np.uint32)
    low = low_bits.view(np.float32)
    finite = np.isfinite(low)
    out = np.zeros((2, 1 << 16), dtype=np.uint8)
    for row, qmap in enumerate(maps()):
        out[row, finite] = _nearest_codes_host(qmap, low[finite])
    return _frozen(out)


def _order_key(x: np.ndarray) -> np.ndarray:
    """Integers in the order of the float32 values ``x`` (-0.0 just below +0.0)."""
    bits = x.view(np.uint32).astype(np.int64)
    return np.where(bits & 0x80000000, -(bits & 0x7FFFFFFF) - 1, bits)


def _from_order_key(key: np.ndarray) -> np.ndarray:
    bits = np.where(key < 0, (-(key + 1)) | 0x80000000, key)
    return bits.astype(np.uint32).view(np.float32)


@cache
def limits() -> np.ndarray:
    """For each map (rows as :func:`maps`) and code ``c``, the smallest float32 ``x`` for
    which the next code is nearer, in float32 arithmetic: ``q[c+1] - x < x - q[c]``
    (strictly: a tie keeps the lower code, as ``argmin``). That comparison only turns
    from false to true as ``x`` grows, so ``x >= limits[row, c]`` decides it exactly with
    one read instead of two; the last code's limit is NaN (never reached). Read-only."""
    out = np.full((2, 256), np.nan, dtype=np.float32)
    for row, qmap in enumerate(maps()):
        q0, q1 = qmap[:-1], qmap[1:]
        lo, hi = _order_key(q0.copy()), _order_key(q1.copy())  # false at lo, true at hi
        while np.any(hi - lo > 1):
            mid = (lo + hi) // 2
            x = _from_order_key(mid)
            with np.errstate(all="ignore"):
                nearer = (q1 - x) < (x - q0)
            hi = np.where(nearer, mid, hi)
            lo = np.where(nearer, lo, mid)
        out[row, :-1] = _from_order_key(hi)
    return _frozen(out)


# The code table: the buckets of the bfloat16 keys (top 16 bits) of 2**-23 <= |x| <= 1,
# for each sign, then one entry for NaN. Below 2**-23 every value has the code of 0 (the
# smallest nonzero entry of either map is above twice that), above 1 the code of +-1.
_KEY_LOW = 0x3400  # the key of 2**-23
_KEY_HIGH = 0x3F80  # the key of 1.0
_SPAN = _KEY_HIGH - _KEY_LOW + 1
_NAN_SLOT = 2 * _SPAN
_NEVER = 0x10000  # a limit that no 16-bit remainder reaches
_S16 = np.uint32(16)
_S17 = np.uint32(17)
_S31 = np.uint32(31)
_ABS32 = np.uint32(0x7FFFFFFF)
_INF32 = np.uint32(0x7F800000)
_LOW16 = np.uint32(0xFFFF)
_LOW17 = np.uint32(0x1FFFF)
_KEY_LOW32 = np.uint32(_KEY_LOW)
_KEY_HIGH32 = np.uint32(_KEY_HIGH)
_SPAN32 = np.uint32(_SPAN)
_NAN_SLOT32 = np.uint32(_NAN_SLOT)
_S8 = np.uint32(8)
_UNIT24 = np.float32(2.0**-24)


@cache
def code_table() -> np.ndarray:
    """The table the loops find codes in (rows as :func:`maps`; read-only): entry
    ``(c << 17) | r`` for each bucket of :func:`code_slot`, where ``c`` is the code of the
    bucket's lower end (:func:`lookup_tables`) and ``r`` the 16-bit remainder, within the
    bucket and increasing with the value, from which the next code is nearer (from
    :func:`limits`; 2**16: nowhere in the bucket). One read per value."""
    out = np.zeros((2, _NAN_SLOT + 1), dtype=np.uint32)
    luts, bounds = lookup_tables(), limits()
    for row in range(2):
        for negative in (0, 1):
            keys = np.arange(_KEY_LOW, _KEY_HIGH + 1, dtype=np.uint32) | (negative << 15)
            codes = luts[row, keys].astype(np.uint32)
            limit = bounds[row, codes].view(np.uint32)
            # a negative value grows as its low bits fall: they are flipped
            inside = (limit >> 16) == keys
            remainder = np.where(inside, (limit & 0xFFFF) ^ (0xFFFF * negative), _NEVER)
            out[row, negative * _SPAN:(negative + 1) * _SPAN] = (codes << 17) | remainder
        out[row, _NAN_SLOT] = _NEVER  # code 0
    return _frozen(out)


@cache
def floor_table() -> np.ndarray:
    """The table stochastic rounding finds the lower bracketing entry in, laid out as
    :func:`code_table` (same slots, read with :func:`code_of`; read-only): entry
    ``(f << 17) | r`` for each bucket, where ``f`` is the largest code ``<= 254`` whose
    entry is at most the bucket's lower end (0 where none is) and ``r`` the remainder
    from which the entry of ``f + 1`` is at most the value (2**16: nowhere in the
    bucket). So ``q[f] <= x < q[f + 1]`` for every float32 ``x`` in ``[-1, 1]``, with
    two exceptions that :func:`stochastic_code` still rounds right: ``x = 1`` takes
    ``f = 254`` (``x = q[f + 1]``: always up), and so does -0.0 in the signed map
    (it shares the lowest negative bucket with the values just below 0, whose ``f`` is
    the code below 0). Values below the map's lowest entry (negative ``x`` in the
    unsigned map, ``x < q[0] = -0.993`` in the signed one, which has no -1) get
    ``f = 0``: never up, the nearest entry. The map's entries are further apart than a
    bucket is wide (see :func:`lookup_tables`), so the floor is the bucket's code or the
    next one. Checked for every float32 in ``[-1, 1]`` when this was written."""
    out = np.zeros((2, _NAN_SLOT + 1), dtype=np.uint32)
    for row, qmap in enumerate(maps()):
        for negative in (0, 1):
            keys = np.arange(_KEY_LOW, _KEY_HIGH + 1, dtype=np.uint32) | (negative << 15)
            # the lower end: the bucket's start for positive values, its end for negative
            low = np.where(negative, (keys << 16) | 0xFFFF, keys << 16).astype(np.uint32)
            codes = np.clip(np.searchsorted(qmap, low.view(np.float32), side="right") - 1,
                            0, 254).astype(np.uint32)
            upper = qmap[codes + 1].view(np.uint32)
            # a negative value grows as its low bits fall: they are flipped
            inside = ((upper >> 16) == keys) & (codes + 1 <= 254)
            remainder = np.where(inside, (upper & 0xFFFF) ^ (0xFFFF * negative), _NEVER)
            out[row, negative * _SPAN:(negative + 1) * _SPAN] = (codes << 17) | remainder
        out[row, _NAN_SLOT] = _NEVER  # code 0
    return _frozen(out)


@rule
def code_slot(x):
    """Where ``x`` (rounded to float32) is in :func:`code_table`: its bucket's entry
    index in the high 16 bits, its remainder in the low 16 (vectorizes: integer work)."""
    b = np.float32(x).view(np.uint32)
    a = np.uint32(b & _ABS32)
    key = np.uint32(a >> _S16)
    index = np.uint32(min(max(key, _KEY_LOW32), _KEY_HIGH32) - _KEY_LOW32)
    negative = np.uint32(b >> _S31)
    index = np.uint32(index + negative * _SPAN32)
    if a > _INF32:
        index = _NAN_SLOT32
    remainder = np.uint32((b & _LOW16) ^ (negative * _LOW16))
    return np.uint32((index << _S16) | remainder)


@rule
def code_of(entry, slot):
    """The code of the value at ``slot`` (:func:`code_slot`) from its table ``entry``."""
    step = np.uint32(np.uint32(slot & _LOW16) >= np.uint32(entry & _LOW17))
    return np.uint8(np.uint32(entry >> _S17) + step)


@rule
def nonzero_code(code, x):
    """``code``, or 1 (the unsigned map's smallest positive entry, 3.25e-7 of the block's
    scale) where it is 0 for a positive ``x``. A second moment below half that entry
    would round to 0 while its first moment need not: the next step would divide by eps
    alone (a step of ``lr * m / eps``). bitsandbytes' CPU grid never stores 0 either."""
    return np.uint8(code + np.uint8((code == np.uint8(0)) & (x > 0)))


@rule
def nearest_code(table, row, x):
    """The index of the entry of map ``row`` nearest to ``x`` (float32 arithmetic; the
    lower one on a tie, as ``argmin``; NaN: 0): one read of :func:`code_table`, no search
    (a vectorized binary search gathers 8 times: 100x slower here)."""
    slot = code_slot(x)
    return code_of(table[row, slot >> _S16], slot)


@rule
def stochastic_code(floor, y, low, high, bits):
    """The code of ``y`` (float32, the value over its block's scale) rounded
    stochastically between the entries ``low = q[floor]`` and ``high = q[floor + 1]``
    that bracket it (:func:`floor_table`): ``floor + 1`` with probability
    ``(y - low) / (high - low)``, else ``floor``. With ``u`` the top 24 of the 32
    random ``bits`` over 2**24 (uniform on ``[0, 1)``, exact in float32), up when
    ``y - low > u (high - low)`` in float32: never at ``y = low``, always at
    ``y = high`` (``u (high - low)`` rounds below ``high - low``), so the expected
    entry is ``y`` up to float32 rounding (vectorizes: no table read)."""
    u = np.float32(np.int32(np.uint32(bits) >> _S8)) * _UNIT24
    up = np.float32(y) - np.float32(low) > u * (np.float32(high) - np.float32(low))
    return np.uint8(np.uint32(floor) + np.uint32(up))


@rule
def magnitude(v):
    """The float32 bits of ``|v|``, or 0 for NaN: a block's scale is the largest of
    these, taken as an integer maximum (which LLVM vectorizes; a float one it does not
    without fast-math). For numbers, the bits order as the magnitudes do."""
    a = np.uint32(np.float32(v).view(np.uint32) & _ABS32)
    if a > _INF32:
        return np.uint32(0)
    return a


def _nearest_codes_host(qmap: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`nearest_code` over an array (NumPy; NaN: code 0, as the loops)."""
    lo = np.clip(np.searchsorted(qmap, x, side="right") - 1, 0, 255)
    hi = np.minimum(lo + 1, 255)
    with np.errstate(invalid="ignore"):
        up = (qmap[hi] - x) < (x - qmap[lo])
    return np.where(np.isnan(x), 0, np.where(up, hi, lo)).astype(np.uint8)


def block_table(offsets: np.ndarray, block: int = BLOCK, threshold: int = THRESHOLD
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The blocks of a group whose tensors span ``offsets`` (blocks never cross tensors).

    Returns ``(blocks, small, tensor_blocks, n_small)``: block ``b`` covers elements
    ``blocks[b]:blocks[b + 1]`` of the flat layout; ``small[b]`` is the offset of its
    values in the float32 buffer for small tensors, or -1 for a quantized block;
    tensor ``j`` owns blocks ``tensor_blocks[j]:tensor_blocks[j + 1]``; ``n_small`` is
    the size of the float32 buffer.
    """
    starts, small, tensor_blocks = [], [], [0]
    n_small = 0
    for j in range(len(offsets) - 1):
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        for s in range(lo, hi, block):
            starts.append(s)
            small.append(n_small + s - lo if hi - lo < threshold else -1)
        if hi - lo < threshold:
            n_small += hi - lo
        tensor_blocks.append(len(starts))
    starts.append(int(offsets[-1]))
    return (np.array(starts, dtype=np.int64), np.array(small, dtype=np.int64),
            np.array(tensor_blocks, dtype=np.int64), n_small)


def quantize(values: np.ndarray, blocks: np.ndarray, small: np.ndarray, n_small: int,
             signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``values`` (float32, the flat layout) in stored form: ``(codes, absmax, float32
    values of the small tensors)``, with the loops' arithmetic (float32)."""
    values = np.asarray(values, dtype=np.float32)
    qmap = dynamic_map(signed)
    codes = np.zeros(values.size, dtype=np.uint8)
    absmax = np.zeros(len(small), dtype=np.float32)
    kept = np.zeros(n_small, dtype=np.float32)
    for b in range(len(small)):
        lo, hi = int(blocks[b]), int(blocks[b + 1])
        part = values[lo:hi]
        if small[b] >= 0:
            kept[small[b]:small[b] + hi - lo] = part
            continue
        # the largest magnitude that is not NaN, as the loops
        peak = np.float32(np.max(np.abs(part), initial=0, where=~np.isnan(part)))
        absmax[b] = peak
        with np.errstate(invalid="ignore"):
            normalized = part / peak if peak > 0 else part - part
        codes[lo:hi] = _nearest_codes_host(qmap, normalized)
        if not signed:  # as the loops (nonzero_code)
            codes[lo:hi] += (codes[lo:hi] == 0) & (part > 0)
    return codes, absmax, kept


def dequantize(codes: np.ndarray, absmax: np.ndarray, kept: np.ndarray, blocks: np.ndarray,
               small: np.ndarray, signed: bool) -> np.ndarray:
    """float32 values of a stored state (the inverse of :func:`quantize` up to the map)."""
    qmap = dynamic_map(signed)
    out = np.empty(codes.size, dtype=np.float32)
    for b in range(len(small)):
        lo, hi = int(blocks[b]), int(blocks[b + 1])
        if small[b] >= 0:
            out[lo:hi] = kept[small[b]:small[b] + hi - lo]
        else:
            out[lo:hi] = qmap[codes[lo:hi]] * absmax[b]
    return out


def aux_names(name: str) -> tuple[str, str]:
    """The names of a quantized state's scales and float32 buffer (state-dict keys)."""
    return f"{name}__absmax", f"{name}__float32"


# ------------------------------------------------------------ loop sources
#: the names the generated loops use besides numba's (see :func:`loop_source`)
LOOP_GLOBALS = {"np": np, "code_slot": code_slot, "code_of": code_of, "magnitude": magnitude,
                "nonzero_code": nonzero_code, "stochastic_code": stochastic_code,
                "uint16": np.uint16,
                "bf16_to_f32": _precision.bf16_to_f32, "f16_to_f32": _precision.f16_to_f32,
                "f32_to_bf16_nearest": _precision.f32_to_bf16_nearest,
                "f32_to_f16_nearest": _precision.f32_to_f16_nearest,
                "f32_to_bf16_stochastic": _precision.f32_to_bf16_stochastic,
                "f32_to_f16_stochastic": _precision.f32_to_f16_stochastic,
                "element_bits": _precision.element_bits}

# how the loops widen a 16-bit parameter or gradient (codecs of Precision.layout) and
# narrow a new parameter: to nearest (from a float32 master copy) or stochastically
_WIDEN = {"bf16": "bf16_to_f32", "f16": "f16_to_f32"}
_NEAREST = {"bf16": "f32_to_bf16_nearest", "f16": "f32_to_f16_nearest"}
_STOCHASTIC = {"bf16": "f32_to_bf16_stochastic", "f16": "f32_to_f16_stochastic"}


def _half(layout: tuple | None) -> str | None:
    """The 16-bit codec of a layout's parameters (``"bf16"``, ``"f16"``), or None."""
    if layout is None or layout[0] == "same":
        return None
    return layout[0].removesuffix("_sr")


def _stochastic(layout: tuple | None) -> bool:
    """Whether a layout rounds its 16-bit parameters stochastically (no master copy)."""
    return _half(layout) is not None and not layout[3]


def _rounded(codec: str) -> bool:
    return codec.startswith("q8") and codec.endswith("_sr")


def rounded_states(layout: tuple | None, count: int) -> tuple[bool, ...]:
    """For each of the ``count`` states of ``layout``, whether its int8 codes are rounded
    stochastically (codecs ``"q8s_sr"``, ``"q8u_sr"`` of
    :meth:`~.precision.Precision.layout`; ``"q8s"``, ``"q8u"``: to nearest)."""
    codecs = () if layout is None else tuple(layout[2])
    return tuple(k < len(codecs) and _rounded(codecs[k]) for k in range(count))


def takes_floors(layout: tuple | None) -> bool:
    """Whether the loops of ``layout`` take :func:`floor_table` (after the code table):
    some int8 state is rounded stochastically."""
    return layout is not None and any(_rounded(c) for c in layout[2])


def takes_key(layout: tuple | None) -> bool:
    """Whether the loops of ``layout`` take the step's key (the CPU loops in their
    ``rounding`` array, the CUDA kernel as ``key``): 16-bit parameters or some int8
    state rounded stochastically."""
    return _stochastic(layout) or takes_floors(layout)


def _index(layout: tuple | None) -> tuple[list[str], list[str], list[str], str]:
    """How a CPU loop over ``k`` names element ``k``'s flat index (``lo + k``) for
    :func:`_update`: ``(before the loop, first in its body, last in its body, the
    name)``. The master copy is indexed by ``i``; the random bits take a counter of its
    own, ``ix``: from ``base + k`` LLVM built the index's 64-bit vectors in 512-bit
    registers for the hash (as in the element-wise loops, see kernels.precision)."""
    if _half(layout) is None:
        return [], [], [], "i"
    if layout[3]:
        return [], ["i = np.uint64(lo) + np.uint64(k)"], [], "i"
    return ["ix = lo"], [], ["ix += 1"], "ix"


def _update(layout: tuple | None, ip: str, i: str, outs: str, scalars: str) -> list[str]:
    """The statements that step one element: the parameter at ``ip`` of ``param`` and
    ``grad``, flat index ``i`` in the group, the state values ``outs`` (", v0, ...", read
    and written). For 16-bit parameters (see :meth:`~.precision.Precision.layout`) the
    element-wise loops' widening and narrowing: the rule reads the float32 master copy
    (``master[i]``) or the widened parameter, and the parameter is written from its
    result to nearest, or stochastically with the bits of the element-wise loops
    (:func:`~.precision.element_bits` of the step's key, ``i``, stream 0)."""
    half = _half(layout)
    if half is None:
        return [f"param[{ip}]{outs}, = rule(param[{ip}], grad[{ip}]{outs}{scalars})"]
    # np.float32 of a float32, np.uint32 of a uint32: nothing on the CPU and the GPU; in
    # numba's simulator the conversions and the hash return Python floats and ints,
    # which would make the rule run in float64 and float16's rounding mix int64 with
    # uint64 (into float64)
    grad = f"np.float32({_WIDEN[layout[1]]}(grad[{ip}]))"
    if layout[3]:
        return [f"p_{outs}, = rule(master[{i}], {grad}{outs}{scalars})",
                f"master[{i}] = p_", f"param[{ip}] = {_NEAREST[half]}(p_)"]
    return [f"p_{outs}, = rule(np.float32({_WIDEN[half]}(param[{ip}])), {grad}{outs}{scalars})",
            f"param[{ip}] = {_STOCHASTIC[half]}(p_, np.uint32(element_bits(key, {i}, 0)))"]


def _block_body(state_names: tuple[str, ...], signed: tuple[bool, ...], scalars: str,
                tensor_start: str, layout: tuple | None) -> list[str]:
    """The statements that step block ``b`` (``lo:hi`` of the flat layout; the tensor's
    arrays ``param``, ``grad`` start at flat index ``tensor_start``; ``work``, ``slots``
    and ``entries``: the scratch, and ``ys``, ``lows``, ``highs`` where a state is
    rounded stochastically).

    Element ``k`` of the block is ``i`` in the flat layout and ``ip`` in the tensor:
    unsigned, so that numba emits no negative-index wraparound, which would keep LLVM
    from vectorizing (it cannot tell that ``lo + k`` is not negative). With 16-bit
    parameters (``layout``, see :func:`_update`) ``param`` and ``grad`` hold their
    patterns and ``master`` the group's float32 copy (flat index ``i``). The table reads
    have passes of their own, scalar, between vectorized ones: in a vectorized loop
    each read became a scalar load inserted into a vector (this CPU target does not
    gather), slower than the separate pass (2x for the dequantizing reads), and a loop
    with reads and the code arithmetic stays scalar (15% slower than two passes).

    A state rounded stochastically (``layout``, see :func:`rounded_states`) keeps its
    values over the scale (``ys``), finds its floor code in :func:`floor_table` and the
    map entries around each value in the pass of table reads (``lows``, ``highs``), and
    draws its code in the last, vectorized pass (:func:`stochastic_code`).
    """
    n = len(state_names)
    rounded = rounded_states(layout, n)
    floats = [aux_names(s)[1] for s in state_names]
    lines = ["count = hi - lo",
             f"first = np.uint64(lo - {tensor_start})" if tensor_start != "0"
             else "first = np.uint64(lo)",
             "off = small[b]", "if off >= 0:",
             "    kept = np.uint64(off)"]
    setup, head, tail, index = _index(layout)
    lines += ["    " + line for line in setup]
    lines += ["    for k in range(count):",
              "        ip = first + np.uint64(k)",
              "        fk = kept + np.uint64(k)"]
    outs = "".join(f", {x}[fk]" for x in floats)
    step = [*head, *_update(layout, "ip", index, outs, scalars), *tail]
    lines += ["        " + line for line in step]
    lines += ["else:", "    base = np.uint64(lo)"]
    # (no comments in the generated text: its words would be names the rules may not use)
    body = ["for k in range(count):", "    i = base + np.uint64(k)"]  # the codes' map values
    for s_, (name, sign) in enumerate(zip(state_names, signed)):
        body.append(f"    work[{s_}, k] = qmaps[{int(sign)}, {name}[i]]")
    for s_, name in enumerate(state_names):
        body += [f"scale{s_} = {aux_names(name)[0]}[b]", f"peak{s_} = np.uint32(0)"]
    # dequantize, the rule, the parameter, the new values into the scratch and their
    # largest magnitudes (vectorized)
    body += [*setup, "for k in range(count):", "    ip = first + np.uint64(k)"]
    body += ["    " + line for line in head]
    for s_ in range(n):
        body.append(f"    v{s_} = work[{s_}, k] * scale{s_}")
    vs = "".join(f", v{s_}" for s_ in range(n))
    body += ["    " + line for line in (*_update(layout, "ip", index, vs, scalars), *tail)]
    for s_ in range(n):
        body += [f"    work[{s_}, k] = v{s_}",
                 f"    peak{s_} = max(peak{s_}, magnitude(v{s_}))"]
    for s_, name in enumerate(state_names):  # the scales; the values' slots (vectorized)
        w = f"work[{s_}, k]"
        body += [f"top = np.uint32(peak{s_}).view(np.float32)",
                 f"{aux_names(name)[0]}[b] = top"]
        # zeros (and NaN: code 0) where top is 0; a stochastic state keeps its y
        for test, y in (("if top > 0:", f"{w} / top"), ("else:", f"{w} - {w}")):
            body += [test, "    for k in range(count):"]
            if rounded[s_]:
                body += [f"        y = np.float32({y})", f"        ys[{s_}, k] = y",
                         f"        slots[{s_}, k] = code_slot(y)"]
            else:
                body.append(f"        slots[{s_}, k] = code_slot({y})")
    # the table entries (scalar reads); for a stochastic state its floor code (in
    # place of its slot) and the two map entries around the value
    body.append("for k in range(count):")
    for s_, sign in enumerate(signed):
        row = int(sign)
        if rounded[s_]:
            body += [f"    f = code_of(flooring[{row}, slots[{s_}, k] >> 16], slots[{s_}, k])",
                     f"    slots[{s_}, k] = f", f"    lows[{s_}, k] = qmaps[{row}, f]",
                     f"    highs[{s_}, k] = qmaps[{row}, f + 1]"]
        else:
            body.append(f"    entries[{s_}, k] = coding[{row}, slots[{s_}, k] >> 16]")
    # the codes (vectorized); the random bits of state s_ are stream s_ + 1 of the
    # element's flat index, counted in ix (see _index)
    body += [*(["ix = lo"] if any(rounded) else []),
             "for k in range(count):", "    i = base + np.uint64(k)"]
    for s_, (name, sign) in enumerate(zip(state_names, signed)):
        if rounded[s_]:
            code = (f"stochastic_code(slots[{s_}, k], ys[{s_}, k], lows[{s_}, k], "
                    f"highs[{s_}, k], element_bits(key, ix, {s_ + 1}))")
        else:
            code = f"code_of(entries[{s_}, k], slots[{s_}, k])"
        if not sign:  # a positive value never stored as 0 (see nonzero_code)
            code = f"nonzero_code({code}, work[{s_}, k])"
        body.append(f"    {name}[i] = {code}")
    if any(rounded):
        body.append("    ix += 1")
    lines += ["    " + line for line in body]
    return lines


def loop_source(name: str, flat: bool, parallel: bool, state_names: tuple[str, ...],
                signed: tuple[bool, ...], scalar_names: tuple[str, ...], unpack: str,
                layout: tuple | None = None) -> str:
    """The source of a CPU loop over the blocks of a group with int8 states.

    Arguments: ``param, grad`` (flat) or ``table`` (the list path, as the element-wise
    loops), then per state its codes, scales and float32 buffer, then ``master`` (the
    float32 master copy, where ``layout`` keeps one), then ``blocks, small,
    tensor_blocks, qmaps, coding`` (see :func:`block_table`, :func:`maps`,
    :func:`code_table`), then ``flooring`` (:func:`floor_table`, where ``layout``
    rounds an int8 state stochastically), then ``rounding`` (a ``uint32`` array holding
    the step's key, where ``layout`` rounds 16-bit parameters or an int8 state
    stochastically: :func:`takes_key`), then ``scalars``. The
    blocks go in chunks of :data:`CHUNK` (the parallel loops share those out), each
    allocating its block-sized scratch once; the list path finds each block's tensor in
    ``tensor_blocks``. ``layout`` is the group's
    :meth:`~.precision.Precision.layout` (None, or float32/float64 parameters: the
    parameters and gradients in the arithmetic's dtype).
    """
    states = "".join(f", {s}, {aux_names(s)[0]}, {aux_names(s)[1]}" for s in state_names)
    scalars = "".join(f", {s}" for s in scalar_names)
    head = "param, grad" if flat else "table"
    loop = "prange" if parallel else "range"
    shape = f"({max(len(state_names), 1)}, {BLOCK})"
    scratch = (f"work = np.empty({shape}, scalars.dtype); "
               f"slots = np.empty({shape}, np.uint32); "
               f"entries = np.empty({shape}, np.uint32)")
    flooring = ", flooring" if takes_floors(layout) else ""
    if flooring:
        scratch += "".join(f"; {a} = np.empty({shape}, np.float32)"
                           for a in ("ys", "lows", "highs"))
    master = ", master" if _half(layout) is not None and layout[3] else ""
    rounding = ", rounding" if takes_key(layout) else ""
    lines = [f"def {name}({head}{states}{master}, blocks, small, tensor_blocks, qmaps, "
             f"coding{flooring}{rounding}, scalars):",
             f"    {unpack}"]
    if rounding:  # a uint32 loaded, not computed (see kernels.precision)
        lines.append("    key = rounding[0]")
    dtype = "scalars.dtype" if _half(layout) is None else "uint16"
    lines += ["    nb = blocks.shape[0] - 1",
             f"    for chunk in {loop}((nb + {CHUNK - 1}) // {CHUNK}):",
             f"        {scratch}",
             f"        for b in range(chunk * {CHUNK}, min(nb, (chunk + 1) * {CHUNK})):"]
    lines += ["            lo = blocks[b]", "            hi = blocks[b + 1]"]
    if not flat:  # the block's tensor, its parameter and gradient
        lines += ["            j = np.searchsorted(tensor_blocks, b, side='right') - 1",
                  "            start = table[2, j]", "            n = table[2, j + 1] - start",
                  f"            param = carray(void_pointer(table[0, j]), n, {dtype})",
                  f"            grad = carray(void_pointer(table[1, j]), n, {dtype})"]
    lines += ["            " + line for line in _block_body(state_names, signed, scalars,
                                                             "0" if flat else "start", layout)]
    return "\n".join(lines) + "\n"


#: the names the generated CUDA kernels use besides ``cuda`` and the rule
CUDA_GLOBALS = {**LOOP_GLOBALS}


def cuda_source(name: str, state_names: tuple[str, ...], signed: tuple[bool, ...],
                scalar_names: tuple[str, ...], fixed: str, layout: tuple | None = None) -> str:
    """The source of the CUDA kernel over the blocks of a group with int8 states.

    One thread block steps one quantization block at a time (grid-stride over
    ``first_block .. first_block + n_blocks``): each thread dequantizes, steps and
    writes its elements (``t, t + threads, ...`` of the block), keeping the new values
    in shared memory and their largest magnitude; a tree reduction in shared memory
    gives the block's scale; each thread then requantizes its elements. The threads per
    block must be a power of two, at most :data:`BLOCK`. The arithmetic is the CPU
    loops' (float32: the kernel is for float32 parameters, or 16-bit ones as ``layout``
    says, see :func:`loop_source`), so the codes and scales are the same bit for bit
    where the rule's float32 results are, and so are 16-bit parameters and int8 states
    rounded stochastically (the same bits of the same flat index and stream, the same
    float32 decision: :func:`stochastic_code`).

    Arguments: ``param, grad`` (of the tensor, or the flat buffers; 16-bit ones as their
    ``uint16`` patterns), per state its codes, scales and float32 buffer (the group's),
    then ``master`` (the group's float32 master copy, where ``layout`` keeps one), then
    ``blocks, small, qmaps, coding``, then ``flooring`` (:func:`floor_table`, where
    ``layout`` rounds an int8 state stochastically), then ``first_block, n_blocks,
    tensor_start`` (the flat index of ``param[0]``), then ``key`` (a ``uint32``, the
    step's key, where :func:`takes_key`), then the rule's scalars.
    """
    n = len(state_names)
    states = "".join(f", {s}, {aux_names(s)[0]}, {aux_names(s)[1]}" for s in state_names)
    scalars = "".join(f", {s}" for s in scalar_names)
    floats = "".join(f", {aux_names(s)[1]}[fk]" for s in state_names)
    vs = "".join(f", v{s_}" for s_ in range(n))
    rows = max(n, 1)
    master = ", master" if _half(layout) is not None and layout[3] else ""
    key = ", key" if takes_key(layout) else ""
    flooring = ", flooring" if takes_floors(layout) else ""
    rounded = rounded_states(layout, n)
    lines = [f"def {name}(param, grad{states}{master}, blocks, small, qmaps, coding"
             f"{flooring}, first_block, n_blocks, tensor_start{key}{scalars}):",
             f"    {fixed or 'pass'}",
             f"    work = cuda.shared.array(({rows}, {BLOCK}), np.float32)",
             f"    peaks = cuda.shared.array(({rows}, {BLOCK}), np.uint32)",
             "    lane = cuda.threadIdx.x",
             "    threads = cuda.blockDim.x",
             "    for nth in range(cuda.blockIdx.x, n_blocks, cuda.gridDim.x):",
             "        b = first_block + nth",
             "        lo = blocks[b]",
             "        hi = blocks[b + 1]",
             "        off = small[b]",
             "        if off >= 0:",
             "            for i in range(lo + lane, hi, threads):",
             "                ip = i - tensor_start",
             "                fk = off + i - lo"]
    lines += ["                " + line for line in _update(layout, "ip", "i", floats, scalars)]
    lines += ["        else:"]
    body = [f"scale{s_} = {aux_names(s)[0]}[b]" for s_, s in enumerate(state_names)]
    body += [f"peak{s_} = np.uint32(0)" for s_ in range(n)]
    body += ["for i in range(lo + lane, hi, threads):", "    ip = i - tensor_start"]
    for s_, (s, sign) in enumerate(zip(state_names, signed)):
        body.append(f"    v{s_} = qmaps[{int(sign)}, {s}[i]] * scale{s_}")
    body += ["    " + line for line in _update(layout, "ip", "i", vs, scalars)]
    for s_ in range(n):
        body += [f"    work[{s_}, i - lo] = v{s_}",
                 f"    peak{s_} = max(peak{s_}, magnitude(v{s_}))"]
    body += [f"peaks[{s_}, lane] = peak{s_}" for s_ in range(n)]
    body += ["cuda.syncthreads()", "width = threads // 2", "while width > 0:",
             "    if lane < width:"]
    body += [f"        peaks[{s_}, lane] = max(peaks[{s_}, lane], peaks[{s_}, lane + width])"
             for s_ in range(n)]
    body += ["    cuda.syncthreads()", "    width //= 2"]
    for s_, (s, sign) in enumerate(zip(state_names, signed)):
        w = f"work[{s_}, i - lo]"
        row = int(sign)
        body += [f"top = np.uint32(peaks[{s_}, 0]).view(np.float32)",
                 "if lane == 0:",
                 f"    {aux_names(s)[0]}[b] = top",
                 "for i in range(lo + lane, hi, threads):"]
        # the table reads here, not in a rule: the simulator runs rules as CPU
        # functions, which cannot take its device arrays
        if rounded[s_]:
            body += [f"    y = np.float32({w} / top if top > 0 else {w} - {w})",
                     "    slot = code_slot(y)",
                     f"    f = code_of(flooring[{row}, slot >> 16], slot)",
                     f"    code = stochastic_code(f, y, qmaps[{row}, f], qmaps[{row}, f + 1], "
                     f"element_bits(key, i, {s_ + 1}))"]
        else:
            body += [f"    slot = code_slot({w} / top if top > 0 else {w} - {w})",
                     f"    code = code_of(coding[{row}, slot >> 16], slot)"]
        body.append(f"    {s}[i] = " + ("code" if sign else f"nonzero_code(code, {w})"))
    body.append("cuda.syncthreads()")  # the next block reuses the shared arrays
    lines += ["            " + line for line in body]
    return "\n".join(lines) + "\n"
