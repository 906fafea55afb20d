"""CPU helpers besides the generated rule loops: gradient reductions for the pre-pass."""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange

from ._jit import _void_pointer

__all__ = ["sum_squares", "sum_squares_multi", "address_of"]


@njit(cache=True, error_model="numpy", parallel=True)
def _sum_squares_parallel(x):
    total = 0.0
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        total += v * v
    return total


@njit(cache=True, error_model="numpy")
def _sum_squares_serial(x):
    total = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        total += v * v
    return total


@njit(cache=True, error_model="numpy")
def _sum_squares_multi(addresses, offsets, like):
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
    return (_sum_squares_parallel if parallel else _sum_squares_serial)(x)


def sum_squares_multi(addresses: np.ndarray, offsets: np.ndarray, like: np.ndarray) -> float:
    """Sum of squares over many arrays given by address (see ``_jit``'s multi loops)."""
    return _sum_squares_multi(addresses, offsets, like)


def address_of(a: np.ndarray) -> int:
    """The data address of a NumPy array."""
    return a.__array_interface__["data"][0]
