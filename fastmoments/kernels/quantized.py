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

Each step dequantizes a block, runs the rule on every element (the parameter update
uses the values before requantization), takes the new scales and requantizes the block:
one pass, a block-sized scratch, never a full-size float32 copy (:func:`loop_source`).
"""

from __future__ import annotations

import numpy as np

from .compile import rule

__all__ = ["BLOCK", "THRESHOLD", "dynamic_map", "maps", "lookup_tables", "nearest_code",
           "block_table", "quantize", "dequantize", "loop_source", "aux_names"]

#: elements per quantization block
BLOCK = 256
#: tensors with fewer elements keep float32 state
THRESHOLD = 4096


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


def maps() -> np.ndarray:
    """The two maps as the loops take them: row 0 unsigned, row 1 signed."""
    return np.stack([dynamic_map(False), dynamic_map(True)])


def lookup_tables() -> np.ndarray:
    """For each map (rows as :func:`maps`), the nearest code to the lower end of every
    bfloat16 bucket: entry ``k`` is for the float32 values whose top 16 bits are ``k``
    (NaN buckets: 0). The map's entries are further apart than a bucket is wide (its
    finest spacing, 0.9/128 of the scale, against at most 2**-8 of it below 1), so the
    nearest code of any value in a bucket is that entry or the next one."""
    keys = np.arange(1 << 16, dtype=np.uint32)
    # the lower end: the bucket's start for positive values, its end for negative ones
    low_bits = np.where(keys & 0x8000, (keys << 16) | 0xFFFF, keys << 16).astype(np.uint32)
    low = low_bits.view(np.float32)
    finite = np.isfinite(low)
    out = np.zeros((2, 1 << 16), dtype=np.uint8)
    for row, qmap in enumerate(maps()):
        out[row, finite] = _nearest_codes_host(qmap, low[finite])
    return out


_B16 = np.uint32(16)


@rule
def nearest_code(qmap, lut, x):
    """The index of the entry of the ascending 256-entry ``qmap`` nearest to ``x`` (the
    lower one on a tie, as ``argmin``): the entry of ``lut`` (see
    :func:`lookup_tables`) for x's bfloat16 bucket, or the next code. Three loads and
    no search (a vectorized binary search gathers 8 times: 100x slower here)."""
    c = lut[np.float32(x).view(np.uint32) >> _B16]
    n = c + 1 if c < 255 else c
    if qmap[n] - x < x - qmap[c]:
        return np.uint8(n)
    return np.uint8(c)


def _nearest_codes_host(qmap: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`nearest_code` over an array (NumPy)."""
    lo = np.clip(np.searchsorted(qmap, x, side="right") - 1, 0, 255)
    hi = np.minimum(lo + 1, 255)
    up = (qmap[hi] - x) < (x - qmap[lo])
    return np.where(up, hi, lo).astype(np.uint8)


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
        peak = np.float32(np.max(np.abs(part))) if hi > lo else np.float32(0)
        absmax[b] = peak
        normalized = part / peak if peak > 0 else np.zeros_like(part)
        codes[lo:hi] = _nearest_codes_host(qmap, normalized)
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
def _block_body(state_names: tuple[str, ...], signed: tuple[bool, ...], scalars: str,
                index: str, indent: str) -> list[str]:
    """The statements that step block ``b`` (``lo:hi`` of the flat layout; the
    parameter and gradient of element ``i`` at ``[{index}]``)."""
    n = len(state_names)
    floats = [aux_names(s)[1] for s in state_names]
    lines = ["off = small[b]", "if off >= 0:",
             "    for i in range(lo, hi):", "        k = off + i - lo"]
    outs = "".join(f", {f}[k]" for f in floats)
    lines.append(f"        param[{index}]{outs}, = rule(param[{index}], grad[{index}]{outs}"
                 f"{scalars})")
    lines.append("else:")
    body = []
    for s_, (name, sign) in enumerate(zip(state_names, signed)):
        body += [f"q{s_} = qmaps[{1 if sign else 0}]", f"l{s_} = luts[{1 if sign else 0}]",
                 f"scale{s_} = {aux_names(name)[0]}[b]",
                 f"peak{s_} = scale{s_} - scale{s_}"]
    if n:
        body.append(f"work = np.empty(({n}, hi - lo), scalars.dtype)")
    body.append("for i in range(lo, hi):")
    for s_, name in enumerate(state_names):
        body.append(f"    v{s_} = q{s_}[{name}[i]] * scale{s_}")
    vs = "".join(f", v{s_}" for s_ in range(n))
    body.append(f"    param[{index}]{vs}, = rule(param[{index}], grad[{index}]{vs}{scalars})")
    for s_ in range(n):
        body += [f"    work[{s_}, i - lo] = v{s_}",
                 f"    if abs(v{s_}) > peak{s_}:", f"        peak{s_} = abs(v{s_})"]
    for s_, name in enumerate(state_names):
        body += [f"{aux_names(name)[0]}[b] = peak{s_}",
                 "for i in range(lo, hi):",
                 f"    x = work[{s_}, i - lo] / peak{s_} if peak{s_} > 0 else "
                 f"work[{s_}, i - lo] - work[{s_}, i - lo]",
                 f"    {name}[i] = nearest_code(q{s_}, l{s_}, x)"]
    lines += ["    " + line for line in body]
    return [indent + line for line in lines]


def loop_source(name: str, flat: bool, parallel: bool, state_names: tuple[str, ...],
                signed: tuple[bool, ...], scalar_names: tuple[str, ...], unpack: str) -> str:
    """The source of a CPU loop over the blocks of a group with int8 states.

    Arguments: ``param, grad`` (flat) or ``table`` (the list path, as the element-wise
    loops), then per state its codes, scales and float32 buffer, then ``blocks, small,
    tensor_blocks, qmaps, luts`` (see :func:`block_table`, :func:`maps`,
    :func:`lookup_tables`), then ``scalars``.
    """
    states = "".join(f", {s}, {aux_names(s)[0]}, {aux_names(s)[1]}" for s in state_names)
    scalars = "".join(f", {s}" for s in scalar_names)
    loop = "prange" if parallel else "range"
    head = "param, grad" if flat else "table"
    lines = [f"def {name}({head}{states}, blocks, small, tensor_blocks, qmaps, luts, "
             "scalars):",
             f"    {unpack}"]
    if flat:
        lines += [f"    for b in {loop}(blocks.shape[0] - 1):",
                  "        lo = blocks[b]", "        hi = blocks[b + 1]"]
        lines += _block_body(state_names, signed, scalars, "i", "        ")
    else:
        lines += [f"    for j in {loop}(table.shape[1] - 1):",
                  "        start = table[2, j]", "        n = table[2, j + 1] - start",
                  "        param = carray(void_pointer(table[0, j]), n, scalars.dtype)",
                  "        grad = carray(void_pointer(table[1, j]), n, scalars.dtype)",
                  "        for b in range(tensor_blocks[j], tensor_blocks[j + 1]):",
                  "            lo = blocks[b]", "            hi = blocks[b + 1]"]
        lines += _block_body(state_names, signed, scalars, "i - start", "            ")
    return "\n".join(lines) + "\n"
