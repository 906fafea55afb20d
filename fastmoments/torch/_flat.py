"""One flat buffer per dtype and device for a module's parameters and their gradients.

:func:`flatten_` copies the parameters into a :class:`~fastmoments.FlatParams` (one per
dtype and device) and points every parameter's ``.data`` and ``.grad`` at views of its
two flat buffers. Each parameter keeps a :class:`FlatSlot` in an attribute, so that
an optimizer can tell that a group's parameters tile one buffer (and step it with one
kernel call) and ``zero_grad`` can zero the whole gradient buffer with one fill. A slot
is trusted only while the parameter's storage is still the view it was given
(:func:`live_slot`): ``module.to(...)`` or ``p.data = ...`` silently undo the flattening.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, TypeVar

import torch

from ..flat import FlatParams
from ._views import STEPPED_DTYPES, bf16_unavailable, is_half, numpy_view, tensor_view

__all__ = ["flatten_", "FlatBuffer", "FlatSlot", "live_slot", "whole_buffer", "flatten_params",
           "buckets"]

#: the attribute a flattened parameter keeps its slot in
SLOT_ATTRIBUTE = "_fastmoments_flat"
ModuleOrParams = TypeVar("ModuleOrParams", torch.nn.Module, Iterable[torch.Tensor])


class FlatBuffer:
    """The two flat buffers of one dtype/device bucket, as a FlatParams and as tensors.

    ``flat`` owns the memory (NumPy arrays on the CPU, numba device arrays on a GPU);
    ``data`` and ``grad`` are torch tensors over the same memory (no copy).
    """

    __slots__ = ("flat", "data", "grad")

    def __init__(self, flat: FlatParams, data: torch.Tensor, grad: torch.Tensor) -> None:
        self.flat = flat
        self.data = data
        self.grad = grad

    def __len__(self) -> int:
        return len(self.flat.params)

    def __repr__(self) -> str:
        return (f"FlatBuffer({len(self)} parameters, {self.flat.numel} elements, "
                f"{self.data.dtype}, {self.data.device})")


class FlatSlot(NamedTuple):
    """Where a flattened parameter lives: its buffer, its position, and its two views."""

    buffer: FlatBuffer
    index: int
    data: torch.Tensor  # the view the parameter's .data was set to
    grad: torch.Tensor  # the view the parameter's .grad was set to
    address: int  # data.data_ptr(): the parameter is still flat while equal
    grad_address: int  # grad.data_ptr()


def live_slot(p: torch.Tensor) -> FlatSlot | None:
    """The parameter's slot, if it was flattened and its storage is still that view."""
    slot = getattr(p, SLOT_ATTRIBUTE, None)
    if slot is None or p.data_ptr() != slot.address or p.dtype is not slot.data.dtype:
        return None
    if p.shape != slot.data.shape:
        return None
    return slot


def whole_buffer(params: list[torch.Tensor]) -> FlatBuffer | None:
    """The buffer that ``params`` tile exactly, in order (a param group the flat path
    can step with one kernel call), or None."""
    slots = [live_slot(p) for p in params]
    if not slots or any(s is None for s in slots):
        return None
    buffer = slots[0].buffer
    if len(buffer) != len(slots) or any(
        s.buffer is not buffer or s.index != i for i, s in enumerate(slots)
    ):
        return None
    return buffer


def _new_buffer(params: list[torch.Tensor]) -> FlatBuffer:
    device = params[0].device
    if device.type == "cpu":
        flat = FlatParams([numpy_view(p) for p in params])  # copies the values
        return FlatBuffer(flat, tensor_view(flat.data), tensor_view(flat.grad))
    if device.type == "cuda":  # pragma: no cover - needs a GPU and a CUDA build of torch
        torch.cuda.synchronize(device)  # numba copies on its own (default) stream
        flat = FlatParams([p.detach().contiguous() for p in params])
        return FlatBuffer(flat, torch.as_tensor(flat.data, device=device),
                          torch.as_tensor(flat.grad, device=device))
    raise ValueError(f"flatten_: parameters on {device} are not supported (cpu or cuda)")


def flatten_params(params: list[torch.Tensor]) -> FlatBuffer:
    """Flatten ``params`` (one dtype, one device) into one new buffer, or return the
    buffer they already tile. Gradients present are copied into the gradient views."""
    buffer = whole_buffer(params)
    if buffer is not None:
        return buffer
    for p in params:
        if p.grad is not None and p.grad.layout is not torch.strided:
            raise RuntimeError("flatten_: a parameter has a sparse gradient; flat "
                               "gradient buffers are dense")
    buffer = _new_buffer(params)
    offsets = buffer.flat.offsets
    with torch.no_grad():
        for j, p in enumerate(params):
            start, stop = int(offsets[j]), int(offsets[j + 1])
            data = buffer.data[start:stop].view(p.shape)
            grad = buffer.grad[start:stop].view(p.shape)
            if p.grad is not None:
                grad.copy_(p.grad)
            p.data = data
            p.grad = grad
            setattr(p, SLOT_ATTRIBUTE, FlatSlot(buffer, j, data, grad, data.data_ptr(),
                                               grad.data_ptr()))
    return buffer


def buckets(params: Iterable[torch.Tensor], owner: str) -> list[list[torch.Tensor]]:
    """The parameters that require grad, split by (dtype, device) in order of first
    appearance (each parameter once); refused for dtypes other than float32/64 (and
    float16/bfloat16 on the CPU)."""
    seen: set[int] = set()
    out: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{owner}: expected parameters (tensors), got {type(p).__name__}")
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if p.dtype not in STEPPED_DTYPES or (is_half(p.dtype) and p.device.type != "cpu"):
            raise TypeError(f"{owner}: a parameter has dtype {p.dtype} on {p.device}; "
                            "fastmoments keeps float32 and float64 parameters (and float16 "
                            "and bfloat16 ones on the CPU) in flat buffers")
        if p.dtype is torch.bfloat16 and bf16_unavailable():
            raise TypeError(f"{owner}: a parameter is bfloat16, which needs ml_dtypes "
                            "(pip install ml_dtypes)")
        if p.layout is not torch.strided:
            raise TypeError(f"{owner}: a parameter has layout {p.layout}; expected dense "
                            "(strided) parameters")
        out.setdefault((p.dtype, p.device), []).append(p)
    return list(out.values())


def flatten_(module: ModuleOrParams) -> ModuleOrParams:
    """Put every parameter of ``module`` and its gradient in one flat buffer per dtype and device.

    Each parameter's values are copied into a new contiguous buffer and ``p.data``
    becomes a view of it; ``p.grad`` becomes a view of a second buffer of the same
    size (holding the gradient ``p`` had, or zeros). Autograd accumulates into
    existing ``.grad`` tensors in place, so gradients keep landing in the flat
    buffer, and an optimizer of :mod:`fastmoments.torch` whose param group holds
    exactly the parameters of one buffer, in order, steps the whole group with one
    kernel call over it (as it does for a :class:`~fastmoments.FlatParams`).

    Parameters
    ----------
    module
        A ``torch.nn.Module``, or an iterable of parameters. Parameters with
        ``requires_grad=False`` are left as they are; the others must be float32 or
        float64, on the CPU or a CUDA device, or float16 or bfloat16 on the CPU.

    Returns
    -------
    module
        The same object, flattened in place.

    Notes
    -----
    - Call the optimizer's ``zero_grad()``: for flattened parameters it zeroes the
      gradient buffer in place (one fill) whatever ``set_to_none`` says, so the
      ``.grad`` views survive. ``module.zero_grad()`` (torch's, ``set_to_none=True``)
      drops them: the next backward pass then allocates fresh gradients, which the
      next step copies back into the buffer (correct, one copy slower).
    - A flattened parameter always has a gradient (zeros until a backward pass
      writes one), so it is stepped even when it took no part in the loss, as torch
      does with ``zero_grad(set_to_none=False)``.
    - Moving or casting the module afterwards (``module.to(...)``, ``.double()``)
      replaces ``p.data`` and ends the flattening; optimizers notice and carry on
      over the new tensors. Call ``flatten_`` again after moving a module.
    - Parameters become contiguous (a channels-last parameter loses that layout).

    Examples
    --------
    >>> import torch, fastmoments.torch as fmt
    >>> model = fmt.flatten_(torch.nn.Linear(3, 2))
    >>> w, b = model.parameters()
    >>> b.data_ptr() - w.data_ptr() == 6 * w.element_size()    # b follows w in one buffer
    True
    """
    params = list(module.parameters() if isinstance(module, torch.nn.Module) else module)
    for bucket in buckets(params, "flatten_"):
        flatten_params(bucket)
    return module
