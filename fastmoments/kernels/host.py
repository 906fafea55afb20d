"""CPU helpers besides the generated rule loops: gradient reductions for the pre-pass."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

import numpy as np
from numba import carray, prange

from .cache import cached_njit
from .compile import _void_pointer, prepare_cpu_target

__all__ = ["sum_squares", "sum_squares_multi", "address_of", "scalar_packer"]


@cached_njit(error_model="numpy", parallel=True)
def _sum_squares_parallel(x):
    total = 0.0
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        total += v * v
    return total


@cached_njit(error_model="numpy")
def _sum_squares_serial(x):
    total = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        total += v * v
    return total


@cached_njit(error_model="numpy")
def _sum_squares_multi(addresses, offsets, like):  # like: an array of the buffers' dtype
    total = 0.0
    for j in range(addresses.shape[0]):
        n = offsets[j + 1] - offsets[j]
        x = carray(_void_pointer(addresses[j]), n, like.dtype)
        for i in range(n):
            v = np.float64(x[i])
            total += v * v
    return total


def sum_squares(x: np.ndarray, parallel: bool) -> float:
    """Sum of squares of a flat buffer in float64 (inf/nan when any element is)."""
    prepare_cpu_target()  # may be the process's first dispatch (max_grad_norm)
    return (_sum_squares_parallel if parallel else _sum_squares_serial)(x)


def sum_squares_multi(addresses: np.ndarray, offsets: np.ndarray, like: np.ndarray) -> float:
    """Sum of squares over many arrays given by address (as the list-path loops read them)."""
    prepare_cpu_target()
    return _sum_squares_multi(addresses, offsets, like)


def _interface_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _probe_data_offset() -> int | None:
    """Offset of ``PyArrayObject.data`` (right after ``PyObject_HEAD``), if it checks out.

    Reading the pointer straight from the array object is several times cheaper than
    building ``__array_interface__``, which adds up with many gradients per step. The
    layout is verified here on a few arrays; if it ever differs
    (another interpreter build), the documented interface is used instead.
    """
    offset = object.__basicsize__
    try:
        probes = [np.empty(n, dtype=d)[k:] for n, d, k in ((4, np.float32, 1), (3, np.float64, 0))]
        for a in probes:
            if ctypes.c_void_p.from_address(id(a) + offset).value != _interface_address(a):
                return None
    except Exception:  # pragma: no cover - defensive
        return None
    return offset


_DATA_OFFSET = _probe_data_offset()
_void_p_at = ctypes.c_void_p.from_address


def address_of(a: np.ndarray) -> int:
    """The data address of a NumPy array (fast path verified at import)."""
    if _DATA_OFFSET is None:  # pragma: no cover
        return _interface_address(a)
    return _void_p_at(id(a) + _DATA_OFFSET).value or 0


def scalar_packer(count: int, dtype: np.dtype) -> tuple[np.ndarray, Callable[..., None],
                                                         memoryview]:
    """The array that passes ``count`` per-step scalars to a CPU loop, in ``dtype``, with
    ``pack(data, 0, *values)`` (a ``struct`` ``pack_into``) and ``data`` (its bytes).

    Packing float64 values with struct costs about half of ``array[:] = values`` and
    rounds to nearest as NumPy's cast does; it raises OverflowError for a value beyond
    float32's range, where NumPy gives inf (callers fall back to the NumPy assignment).
    """
    scalars = np.empty(count, dtype=dtype)
    code = "f" if np.dtype(dtype) == np.float32 else "d"
    return scalars, struct.Struct(f"{count}{code}").pack_into, memoryview(scalars).cast("B")
