"""Param groups: the user's dicts, and the internal view of each group's arrays and state."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import as_cuda_array, device_address, is_array_like, is_cuda_array
from ..flat import FlatParams, dtype_hint
from ..kernels import host
from ..kernels.elementwise import Kernel
from ..kernels.precision import bfloat16_dtype

__all__ = ["ParamGroup", "ParamList", "Group", "as_group_dicts", "check_no_aliasing", "full",
           "UNDECIDED", "state_buffers"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: 16-bit parameter dtypes (computed in float32, see optim._precision; on the GPU,
#: bfloat16 only as numba device arrays that carry the ml_dtypes dtype)
HALF_DTYPES = tuple(d for d in (np.dtype(np.float16), bfloat16_dtype()) if d is not None)

#: ``Group.plain`` before the first step after a (re)build decides it (see _dispatch.run)
UNDECIDED = object()


class ParamGroup(dict):
    """A param group: a plain dict of hyperparameters (and ``"params"``), as in torch.

    Edits (``opt.param_groups[0]["lr"] = 0.1``) mark it dirty, so the next step
    validates the new values before using them, at no cost to steps without edits.
    """

    dirty = False

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.dirty = True

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self.dirty = True


class ParamList(list):
    """The ``"params"`` entry of a param group built from a list of arrays: a list that
    refuses changes (the optimizer's state buffers and address tables are laid out for
    exactly these arrays; build a new optimizer to train other ones)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "param_groups[...]['params'] cannot be changed after the optimizer is built "
            "(its state is laid out for these arrays); build a new optimizer instead"
        )

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse


class Group:
    """Internal view of one param group: its arrays, flat state buffers and addresses."""

    __slots__ = (
        "hyper", "params", "flat", "device", "dtype", "offsets", "numel", "state",
        "host_state", "param_addresses", "grad_addresses", "like", "kernel", "index_base",
        "scalars", "states", "pack", "scalar_bytes", "grad_objects", "calls", "plain",
        "values", "params_entry", "layouts", "last_call", "table",
        # reduced precision (see optim._precision): None, the dtype of the arithmetic,
        # the flat buffers as the loops take them, the step's key for the random bits
        "precision", "compute_dtype", "data", "grad_data", "rounding",
    )

    def __init__(self, hyper: dict, index_base: int, owner: str) -> None:
        self.hyper = hyper
        self.index_base = index_base
        raw = hyper["params"]
        self.flat: FlatParams | None = raw if isinstance(raw, FlatParams) else None
        if self.flat is not None:
            params = list(self.flat.params)
            self.device = self.flat.device
        else:
            if is_array_like(raw):
                raise TypeError(
                    f"{owner}: params should be a list of arrays, a FlatParams or a list of "
                    f"param-group dicts, got a single {type(raw).__name__}; wrap it in a list"
                )
            try:
                params = list(raw)
            except TypeError:
                raise TypeError(
                    f"{owner}: params should be a list of arrays, a FlatParams or a list of "
                    f"param-group dicts, got {type(raw).__name__}"
                ) from None
            params = [_check_param(p, index_base + i, owner) for i, p in enumerate(params)]
            self.device = "cuda" if params and is_cuda_array(params[0]) else "cpu"
        if not params:
            raise ValueError(f"{owner}: a param group has an empty list of params")
        devices = {("cuda" if is_cuda_array(p) else "cpu") for p in params}
        if len(devices) != 1:
            raise TypeError(f"{owner}: params of one group must all be on one device")
        dtypes = {np.dtype(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise TypeError(
                f"{owner}: params of one group must share one dtype, got "
                f"{sorted(str(d) for d in dtypes)}; put each dtype in its own param group"
            )
        self.dtype = dtypes.pop()
        self.params = params
        # the group's "params" entry (the FlatParams, or the arrays in a list that
        # refuses changes); replacing it is refused on the next step
        self.params_entry = self.flat if self.flat is not None else ParamList(params)
        hyper["params"] = self.params_entry
        sizes = [int(p.size) for p in params]
        # the list path's table (one argument of its loop): rows of the parameters'
        # addresses, the gradients' addresses (written by each step) and the offsets;
        # ``param_addresses``, ``grad_addresses`` and ``offsets`` are views of its rows
        self.table = np.zeros((3, len(params) + 1), dtype=np.int64)
        self.offsets = self.table[2]
        np.cumsum(sizes, out=self.offsets[1:])
        self.numel = int(self.offsets[-1])
        self.like = np.empty(0, dtype=self.dtype)
        if self.device == "cpu":
            self.param_addresses = self.table[0, :-1]
            self.param_addresses[:] = [host.address_of(p) for p in params]
        else:
            self.param_addresses = None
        self.grad_addresses = self.table[1, :-1]
        # the list path: the gradient arrays whose addresses ``grad_addresses`` holds.
        # A gradient that is the same object as last step keeps its address, so its
        # lookup and table write are skipped. Holding the reference also keeps that
        # address valid: NumPy refuses to resize (reallocate) an array referenced here.
        self.grad_objects: list[Any] = [None] * len(params)
        # (shape, strides) of each parameter, what a gradient on the list path must
        # have (read once here: ``p.shape`` builds a new tuple on every access)
        self.layouts = [(p.shape, p.strides) for p in params]
        # per CPU loop: (source, callee, overload, arguments) of its last call;
        # see _run and _callee
        self.calls: dict[Any, tuple] = {}
        self.last_call: tuple | None = None  # the entry of ``calls`` the last step used
        self.state: dict[str, Any] = {}
        self.states: tuple = ()
        self.host_state: dict[str, float] = {}
        self.kernel: Kernel | None = None
        # the kernel's plain variant when this group's rule scalars allow it, None when
        # they don't, UNDECIDED until the first step after (re)building (see _run)
        self.plain: Any = UNDECIDED
        self.scalars = np.empty(0, dtype=self.dtype)
        self.values: dict[str, Any] = {}
        self.precision: Any = None
        self.compute_dtype = self.dtype
        self.data = self.flat.data if self.flat is not None else None
        self.grad_data = self.flat.grad if self.flat is not None else None
        self.rounding: np.ndarray | None = None

    def forget_plans(self) -> None:
        """Drop what the last steps decided for this group (the cached loop calls and
        the plain-variant choice): the next step decides again."""
        self.calls = {}
        self.last_call = None
        self.plain = UNDECIDED

    def views(self, name: str) -> list[Any]:
        """Per-parameter views of the flat state buffer ``name``."""
        buf = self.state[name]
        return [
            buf[int(self.offsets[j]) : int(self.offsets[j + 1])].reshape(p.shape)
            for j, p in enumerate(self.params)
        ]


def _check_param(p: Any, index: int, owner: str) -> Any:
    where = f"{owner}: params[{index}]"
    if is_cuda_array(p):
        p = as_cuda_array(p)
        dtype = np.dtype(p.dtype)
        if dtype not in FLOAT_DTYPES and dtype not in HALF_DTYPES:
            raise TypeError(f"{where}: expected a float32, float64, float16 or bfloat16 CUDA "
                            f"array, got dtype {dtype}{dtype_hint(dtype)}")
        if not p.is_c_contiguous():
            raise ValueError(f"{where}: expected a C-contiguous array")
        return p
    if not isinstance(p, np.ndarray):
        if hasattr(p, "numpy") and hasattr(p, "requires_grad"):
            raise TypeError(
                f"{where}: got a {type(p).__name__}; pass tensor.detach().numpy() (a view that "
                f"is updated in place) for CPU tensors, or a CUDA tensor for the GPU path"
            )
        raise TypeError(f"{where}: expected a NumPy or CUDA array, got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES and p.dtype not in HALF_DTYPES:
        raise TypeError(f"{where}: expected a float32, float64, float16 or bfloat16 array, "
                        f"got dtype {p.dtype}")
    if not p.flags.writeable:
        raise ValueError(f"{where}: expected a writeable array (it is updated in place)")
    if not p.flags.c_contiguous:
        raise ValueError(f"{where}: expected a C-contiguous array, got strides {p.strides}")
    return p


def check_no_aliasing(params: list[Any], owner: str) -> None:
    spans = []
    for i, p in enumerate(params):
        if isinstance(p, np.ndarray):
            start = host.address_of(p)
        else:
            start = device_address(p)
        nbytes = int(p.size) * p.dtype.itemsize
        if nbytes:
            spans.append((start, start + nbytes, i))
    spans.sort()
    # sorted by start, any overlap shows up between neighbours
    for (_s0, e0, i0), (s1, _e1, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            first, second = sorted((i0, i1))
            raise ValueError(
                f"{owner}: params[{second}] overlaps params[{first}] (an array given twice or "
                f"two views of one buffer); each parameter must be a distinct array"
            )


def as_group_dicts(params: Any, owner: str) -> list[dict[str, Any]]:
    if isinstance(params, FlatParams):
        return [{"params": params}]
    if is_array_like(params):
        raise TypeError(
            f"{owner}: params should be a list of arrays, a FlatParams or a list of param-group "
            f"dicts, got a single {type(params).__name__}; wrap it in a list"
        )
    if isinstance(params, dict):
        return [dict(params)]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(
            f"{owner}: params should be a list of arrays, a FlatParams or a list of param-group "
            f"dicts, got {type(params).__name__}"
        ) from None
    if not items:
        raise ValueError(f"{owner}: got an empty list of params")
    if all(isinstance(x, dict) for x in items):
        for i, x in enumerate(items):
            if "params" not in x:
                raise ValueError(f"{owner}: param group {i} has no 'params' key")
        return [dict(x) for x in items]
    if any(isinstance(x, dict) for x in items):
        raise TypeError(f"{owner}: params mixes param-group dicts and arrays")
    return [{"params": items}]


def full(group: Group, value: float) -> Any:
    """A flat state buffer of the group's size, dtype and device, filled with ``value``."""
    if group.device == "cuda":
        from ..kernels import cuda as _gpu

        return _gpu.full(group.numel, value, group.dtype)
    return np.full(group.numel, value, dtype=group.dtype)


def state_buffers(group: Group, names: tuple[str, ...], init: dict[str, float], fresh: bool,
                  allocate: Any = None) -> dict[str, Any]:
    """The group's state buffers for ``names``: the ones it has (unless ``fresh``), new ones
    filled with their initial value (``init``, default 0) by ``allocate(group, value)``
    (default :func:`full`)."""
    allocate = full if allocate is None else allocate
    old = group.state
    return {name: old[name] if not fresh and name in old else allocate(group, init.get(name, 0.0))
            for name in names}
