"""The random bits of stochastic rounding, written in NumPy from their documentation
(fastmoments.kernels.precision): the tests that check a kernel's stochastic choices bit for
bit compute the bits they expect here, independently of the kernels."""

from __future__ import annotations

import numpy as np

__all__ = ["element_bits"]

_M32 = np.uint64(0xFFFFFFFF)


def _mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on arrays (uint64 holding 32-bit values)."""
    x = x & _M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & _M32
    return x ^ (x >> np.uint64(16))


def element_bits(key: int, index: np.ndarray, stream: int) -> np.ndarray:
    """The 32 random bits of elements ``index`` (their index in the group, modulo 2**32)
    of buffer ``stream`` at the step whose key is ``key``: mix32(index ^ (key + stream *
    0x9E3779B9)), as uint64 arrays."""
    stream_key = np.uint64((key + stream * 0x9E3779B9) & 0xFFFFFFFF)
    return _mix32((np.asarray(index, dtype=np.uint64) & _M32) ^ stream_key)
