"""Which device an array lives on, views without copies, and the lazily imported CUDA side."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "is_cuda_array", "is_array_like", "device_address", "cuda_module", "as_cuda_array",
    "as_host_array",
]


def _is_simulated(x: Any) -> bool:
    # numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) arrays expose no interface
    return type(x).__module__.startswith("numba.cuda.simulator")


def is_cuda_array(x: Any) -> bool:
    """True for anything that exposes ``__cuda_array_interface__`` (and is no NumPy array)."""
    if isinstance(x, np.ndarray):
        return False
    return hasattr(x, "__cuda_array_interface__") or _is_simulated(x)


def is_array_like(x: Any) -> bool:
    """An array of either kind (NumPy, ``__array_interface__`` or CUDA), not a list of them."""
    return isinstance(x, np.ndarray) or is_cuda_array(x) or hasattr(x, "__array_interface__")


def device_address(x: Any) -> int:
    """The device pointer of a CUDA array (its host buffer under the simulator)."""
    if _is_simulated(x):
        return x._ary.__array_interface__["data"][0]
    return x.__cuda_array_interface__["data"][0]


def cuda_module():
    """``numba.cuda``, imported on first use, with a clear error when CUDA is unusable."""
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - numba always ships a cuda shim
        raise RuntimeError(
            "a CUDA array was given but numba's CUDA support is not installed; "
            "install it with `pip install fastmoments[cuda]`"
        ) from exc
    if not cuda.is_available():
        raise RuntimeError(
            "a CUDA array was given but no usable CUDA device/driver was found "
            "(numba.cuda.is_available() is False); install an NVIDIA driver and "
            "`pip install fastmoments[cuda]`, or pass NumPy arrays for the CPU path"
        )
    return cuda


def as_cuda_array(x: Any):
    """A numba device-array view of any ``__cuda_array_interface__`` object (no copy)."""
    cuda = cuda_module()
    if type(x).__module__.startswith("numba.cuda"):
        return x
    return cuda.as_cuda_array(x)


def as_host_array(x: Any, name: str) -> np.ndarray:
    """A NumPy view of ``x`` without copying (NumPy arrays, torch CPU tensors, buffers)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__array_interface__") or hasattr(x, "__array__") or hasattr(x, "numpy"):
        try:
            arr = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"{name}: cannot view {type(x).__name__} as an array ({exc})") from exc
        data = getattr(x, "__array_interface__", None)
        if data is not None and data["data"][0] != arr.__array_interface__["data"][0]:
            raise TypeError(f"{name}: {type(x).__name__} could only be copied, not viewed")
        return arr
    raise TypeError(
        f"{name}: expected a NumPy array (or an object with __array_interface__ / "
        f"__cuda_array_interface__), got {type(x).__name__}"
    )
