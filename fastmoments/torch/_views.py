"""Zero-copy views between CPU tensors and NumPy arrays, 16-bit dtypes included.

``Tensor.numpy()`` refuses ``torch.bfloat16`` (NumPy has no such dtype), and
``torch.from_numpy`` refuses ``ml_dtypes.bfloat16`` arrays. Both sides agree on the
bits, so a bfloat16 tensor is viewed as ``int16`` on the torch side and reinterpreted
as ``ml_dtypes.bfloat16`` on the NumPy side (the dtype the core optimizers recognise
as bfloat16; see :func:`fastmoments.kernels.precision.bfloat16_dtype`), and back.
float16 is native on both sides. State buffers that the core stores as bfloat16
patterns (``uint16``) are shown to torch as ``torch.bfloat16`` tensors the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..kernels.precision import bfloat16_dtype

__all__ = ["HALF_DTYPES", "FLOAT_DTYPES", "STEPPED_DTYPES", "is_half", "numpy_view",
           "tensor_view", "bf16_unavailable"]

#: 16-bit parameter dtypes (host tensors; computed in float32 by the kernels)
HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float32, torch.float64)
#: every dtype a parameter may have
STEPPED_DTYPES = FLOAT_DTYPES + HALF_DTYPES


def is_half(dtype: torch.dtype) -> bool:
    """Whether parameters of ``dtype`` are 16-bit (and take the master-weight options)."""
    return dtype is torch.float16 or dtype is torch.bfloat16


def bf16_unavailable() -> bool:
    """True when bfloat16 parameters cannot be stepped (ml_dtypes is not installed)."""
    return bfloat16_dtype() is None


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A NumPy array over the memory of CPU tensor ``t`` (no copy; bfloat16 as
    ``ml_dtypes.bfloat16``)."""
    t = t.detach()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(bfloat16_dtype())
    return t.numpy()


def tensor_view(a: Any) -> torch.Tensor:
    """A CPU tensor over the memory of NumPy array ``a`` (no copy): ``ml_dtypes.bfloat16``
    arrays and ``uint16`` bfloat16 patterns (the core's stored form) as
    ``torch.bfloat16``."""
    bfloat16 = bfloat16_dtype()
    # (not ``a.dtype == bfloat16_dtype()``: without ml_dtypes that compares with None,
    # which NumPy answers True for float64)
    if a.dtype == np.uint16 or (bfloat16 is not None and a.dtype == bfloat16):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
