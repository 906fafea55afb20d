"""FlatParams: many parameter arrays packed into one contiguous buffer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._arrays import as_cuda_array, as_host_array, cuda_module, is_cuda_array

__all__ = ["FlatParams"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _half_dtypes() -> tuple[np.dtype, ...]:
    # float16 and ml_dtypes.bfloat16 (when installed)
    from .kernels.precision import bfloat16_dtype

    return tuple(d for d in (np.dtype(np.float16), bfloat16_dtype()) if d is not None)


def dtype_hint(dtype: np.dtype) -> str:
    """What to add to the refusal of an array of ``dtype`` that may hold 16-bit
    patterns: how to say which 16-bit float they are (never guessed from the bits)."""
    if dtype.itemsize != 2 or dtype.kind not in "uiV":
        return ""
    hint = ("; 16-bit patterns are not taken for a float by guess: give float16 or "
            "ml_dtypes.bfloat16 arrays (on the GPU, a numba device array of that dtype, "
            "e.g. numba.cuda.to_device(a) of a host bfloat16 array, or "
            "numba.cuda.as_cuda_array(x).view(ml_dtypes.bfloat16))")
    if dtype.kind == "V":  # how __cuda_array_interface__ writes bfloat16 (torch does)
        hint = (" (two bytes of no stated type, as a bfloat16 CUDA tensor exports "
                "itself)" + hint)
    return hint


def _zero_device(buf: Any) -> None:
    # 16-bit buffers through their uint16 view: numba's assignment kernel cannot type
    # ml_dtypes.bfloat16, and the zero pattern is +0.0 in both 16-bit formats
    (buf.view(np.uint16) if np.dtype(buf.dtype).itemsize == 2 else buf)[:] = 0


class FlatParams:
    """Parameters packed into one flat buffer, so that an optimizer step is one kernel call.

    The arrays are *copied* into ``data``; from then on use ``params`` (views into
    ``data``) in the model, and write gradients into ``grads`` (views into the flat
    ``grad`` buffer, zero-initialised). An optimizer given a ``FlatParams`` and no
    gradients steps with ``grad``.

    Parameters
    ----------
    arrays
        The parameter arrays (NumPy, or CUDA arrays exposing
        ``__cuda_array_interface__``; all on the same side).
    dtype
        The buffer dtype: float32, float64, float16 or ``ml_dtypes.bfloat16`` (see the
        optimizers' ``master_weights``). Default: the arrays' common dtype. bfloat16
        CUDA arrays are numba device arrays of dtype ``ml_dtypes.bfloat16``, e.g.
        ``numba.cuda.to_device(a)`` of a host bfloat16 array (16-bit patterns of
        another dtype are refused, never guessed).

    Examples
    --------
    >>> import numpy as np, fastmoments as fm
    >>> flat = fm.FlatParams([np.zeros((3, 2)), np.ones(4)])
    >>> w, b = flat.params          # views into flat.data
    >>> flat.grads[1][:] = 1.0      # gradients go into flat.grad
    >>> opt = fm.SGD(flat, lr=0.5)
    >>> opt.step()
    >>> b
    array([0.5, 0.5, 0.5, 0.5])
    """

    def __init__(self, arrays: Sequence[Any], dtype: Any = None) -> None:
        arrays = list(arrays)
        if not arrays:
            raise ValueError("arrays: expected at least one array, got an empty sequence")
        on_gpu = [is_cuda_array(a) for a in arrays]
        if any(on_gpu) and not all(on_gpu):
            raise TypeError("arrays: all arrays must be on the same device (all CUDA or all host)")
        self.device = "cuda" if on_gpu[0] else "cpu"
        if self.device == "cuda":
            arrays = [as_cuda_array(a) for a in arrays]
        else:
            arrays = [as_host_array(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
        if dtype is None:
            dtypes = {np.dtype(a.dtype) for a in arrays}
            if len(dtypes) != 1:
                raise TypeError(
                    f"arrays: mixed dtypes {sorted(str(d) for d in dtypes)}; "
                    "pass dtype= to choose one"
                )
            dtype = dtypes.pop()
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES and dtype not in _half_dtypes():
            raise TypeError(f"dtype: expected float32, float64, float16 or bfloat16, got "
                            f"{dtype}{dtype_hint(dtype)}")
        self.shapes: list[tuple[int, ...]] = [tuple(a.shape) for a in arrays]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        n = int(self.offsets[-1])
        if self.device == "cuda":
            cuda = cuda_module()
            self._data = cuda.device_array(n, dtype=dtype)
            self._grad = cuda.device_array(n, dtype=dtype)
            _zero_device(self._grad)
            views = self._views(self.data)
            for view, a in zip(views, arrays):
                if view.size:
                    if a.dtype != dtype:
                        a = a.copy_to_host().astype(dtype)
                    if dtype.itemsize == 2:  # as patterns (numba's simulator would go
                        # through '<V2', which NumPy cannot cast to bfloat16)
                        view, a = view.view(np.uint16), a.view(np.uint16)
                    view.copy_to_device(a)
        else:
            self._data = np.empty(n, dtype=dtype)
            self._grad = np.zeros(n, dtype=dtype)
            views = self._views(self.data)
            for view, a in zip(views, arrays):
                view[...] = a
        self.params: list[Any] = views
        self.grads: list[Any] = self._views(self.grad)

    # The two buffers are fixed for the life of the FlatParams: the views above, and
    # the optimizers built on it (their address tables and cached kernel calls),
    # point into them. Write into them (``flat.grad[:] = g``); they cannot be replaced.
    @property
    def data(self) -> Any:
        """The flat parameter buffer (read-only attribute; write into it)."""
        return self._data

    @property
    def grad(self) -> Any:
        """The flat gradient buffer (read-only attribute; write into it)."""
        return self._grad

    def _views(self, flat: Any) -> list[Any]:
        out = []
        for j, shape in enumerate(self.shapes):
            start, stop = int(self.offsets[j]), int(self.offsets[j + 1])
            out.append(flat[start:stop].reshape(shape))
        return out

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def numel(self) -> int:
        """Total number of elements."""
        return int(self.offsets[-1])

    def zero_grad(self) -> None:
        """Set every gradient to zero (one fill of the flat buffer)."""
        if self.device == "cuda":
            _zero_device(self.grad)
        else:
            self.grad[:] = 0

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.params)

    def __getitem__(self, index: int) -> Any:
        return self.params[index]

    def __repr__(self) -> str:
        return (
            f"FlatParams({len(self)} arrays, {self.numel} elements, dtype={self.dtype}, "
            f"device={self.device!r})"
        )
