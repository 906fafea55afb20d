"""int8 state (``state_dtype="int8"``) per parameter: its stored form, cut by tensor.

The core optimizers keep an int8 state of a param group as three flat buffers (see
:mod:`fastmoments.kernels.quantized`): one ``uint8`` code per element, one float32
scale per block of 256 (``<name>__absmax``), and the float32 values of the tensors
below 4096 elements (``<name>__float32``; their codes and scales are unused). Blocks
never cross tensors and start at each tensor's first element, so each parameter owns
a contiguous piece of each buffer, the same whatever else is in its group: its
:class:`Int8Parts`. torch's state is per parameter, so these pieces are what
``opt.state[p]`` and ``state_dict()`` show (live views), what travels between inner
optimizers (exact copies), and what a state dict loads; values of other state dtypes
are quantized per tensor, with the core's arithmetic, and int8 parts are dequantized
for optimizers of other state dtypes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..kernels import quantized as _quantized
from ..kernels.precision import SECOND_MOMENTS

__all__ = ["Int8Parts", "AUX_SUFFIXES", "is_int8", "state_names", "sizes", "signed",
           "tensor_part", "tensor_parts", "quantize", "dequantize", "write"]

#: the suffixes of a quantized state's scales and float32 values (state-dict keys)
AUX_SUFFIXES: tuple[str, str] = _quantized.aux_names("")


class Int8Parts(NamedTuple):
    """One parameter's piece of an int8 state (flat arrays)."""

    codes: np.ndarray  # uint8, one per element
    absmax: np.ndarray  # float32, one per block of 256 (started)
    kept: np.ndarray  # float32 values: one per element below 4096 elements, else none


def is_int8(group: Any) -> bool:
    """Whether a core param group keeps its state as int8."""
    precision = group.precision
    return precision is not None and precision.state_dtype == "int8"


def state_names(group: Any) -> list[str]:
    """The names of a core group's states, without the int8 auxiliary buffers."""
    return [name for name in group.state if not name.endswith(AUX_SUFFIXES)]


def sizes(numel: int) -> tuple[int, int]:
    """``(scales, float32 values)`` of a tensor of ``numel`` elements."""
    blocks = -(-numel // _quantized.BLOCK)
    return blocks, (numel if numel < _quantized.THRESHOLD else 0)


def signed(name: str) -> bool:
    """Whether state ``name`` uses the signed map (as the core decides)."""
    return name not in SECOND_MOMENTS


def _spans(group: Any, j: int) -> tuple[int, int, int, int, int, int]:
    """Where tensor ``j`` of ``group`` is in the three buffers: (codes, scales, values)
    as start/stop pairs."""
    _, small, tensor_blocks, _ = group.precision.blocks
    start, stop = int(group.offsets[j]), int(group.offsets[j + 1])
    first, last = int(tensor_blocks[j]), int(tensor_blocks[j + 1])
    kept = int(small[first]) if last > first and small[first] >= 0 else 0
    n_kept = sizes(stop - start)[1]
    return start, stop, first, last, kept, kept + n_kept


def tensor_part(group: Any, name: str, j: int, state: dict[str, np.ndarray] | None = None
                ) -> Int8Parts:
    """Tensor ``j``'s piece of int8 state ``name`` of ``group``: views of ``state``
    (default: the group's live buffers; host arrays)."""
    state = group.state if state is None else state
    absmax_name, kept_name = _quantized.aux_names(name)
    start, stop, first, last, lo, hi = _spans(group, j)
    return Int8Parts(state[name][start:stop], state[absmax_name][first:last],
                     state[kept_name][lo:hi])


def tensor_parts(group: Any, name: str) -> list[Int8Parts]:
    """Every tensor's piece of the live int8 state ``name`` of ``group`` (views)."""
    return [tensor_part(group, name, j) for j in range(len(group.params))]


def quantize(values: np.ndarray, name: str) -> Int8Parts:
    """State ``name`` of one tensor (its flat values) in int8 stored form, as the core
    quantizes it (float32 arithmetic, nearest map entry)."""
    blocks, small, _, n_small = _quantized.block_table(np.array([0, values.size]))
    return Int8Parts(*_quantized.quantize(values, blocks, small, n_small, signed(name)))


def dequantize(parts: Int8Parts, name: str) -> np.ndarray:
    """The float32 values of one tensor's int8 state ``name``."""
    blocks, small, _, _ = _quantized.block_table(np.array([0, parts.codes.size]))
    return _quantized.dequantize(parts.codes, parts.absmax, parts.kept, blocks, small,
                                 signed(name))


def write(state: dict[str, np.ndarray], group: Any, j: int, name: str, parts: Int8Parts
          ) -> None:
    """Copy one tensor's parts into its pieces of ``state`` (the group's stored arrays)."""
    for target, source in zip(tensor_part(group, name, j, state), parts):
        target[...] = source
