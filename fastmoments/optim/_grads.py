"""Gradients: where each group reads them from, their validation, the global norm.

``collect`` turns what ``step()`` was given into one *source* per group: a flat array
(one kernel call over the buffer), a list of CUDA arrays, or ``None`` for the list
path (the host arrays' addresses are written into the group's table). Nothing is
changed when it raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._arrays import as_cuda_array, is_array_like, is_cuda_array
from ..config import config
from ..kernels import host
from ._groups import Group

__all__ = ["collect", "record_host_grads", "check_grad", "global_norm"]


def collect(groups: list[Group], grads: Any, num_params: int,
            flat_grads: list[Any] | None) -> list[Any]:
    """Validate the gradients and say where each group reads them from.

    Returns one entry per group: a flat array (one kernel over the buffer), or
    ``None`` for the list path (addresses already written into the group).
    Nothing is changed when this raises.
    """
    if type(grads) is not list and type(grads) is not tuple:
        return _collect_other(groups, grads, flat_grads)
    if len(grads) != num_params:
        raise ValueError(
            f"grads: expected {num_params} gradients (one per parameter), "
            f"got {len(grads)}"
        )
    sources: list[Any] = []
    single = len(groups) == 1
    for group in groups:
        base = group.index_base
        mine = grads if single else grads[base : base + len(group.params)]
        if group.flat is not None and all(a is b for a, b in zip(mine, group.flat.grads)):
            sources.append(group.flat.grad)
            continue
        if group.device == "cuda":
            sources.append(
                [check_grad(g, group, j, p.shape, f"grads[{base + j}]")
                 for j, (g, p) in enumerate(zip(mine, group.params))]
            )
            continue
        record_host_grads(group, mine, base)
        sources.append(None)
    return sources


def record_host_grads(group: Group, grads: Sequence[Any], base: int) -> None:
    """The list path: validate each gradient of ``group`` (a fast identity/shape/
    stride test, the full check only when it fails) and write its address into the
    group's table, which the multi-array loop reads."""
    dtype = group.dtype
    layouts = group.layouts
    addresses = group.grad_addresses
    objects = group.grad_objects
    j = 0
    for g in grads:
        shape, strides = layouts[j]
        if (
            type(g) is not np.ndarray
            or g.dtype is not dtype
            or g.shape != shape
            or g.strides != strides
        ):
            g = check_grad(g, group, j, shape, f"grads[{base + j}]")
        if g is not objects[j]:  # a new array: record its address
            addresses[j] = host.address_of(g)
            objects[j] = g
        j += 1


def _collect_other(groups: list[Group], grads: Any, flat_grads: list[Any] | None) -> list[Any]:
    """``grads`` given as None (FlatParams' own buffers) or as one flat array."""
    if grads is None:
        if flat_grads is None:
            raise TypeError(
                "grads: expected one gradient per parameter; grads=None is only "
                "allowed when every param group is a FlatParams"
            )
        return flat_grads
    if is_array_like(grads):
        if len(groups) != 1 or groups[0].flat is None:
            raise TypeError(
                "grads: a single flat array is only accepted for one FlatParams group; "
                "pass a list with one gradient per parameter"
            )
        group = groups[0]
        return [check_grad(grads, group, None, (group.numel,), "grads")]
    raise TypeError(
        f"grads: expected a list of arrays (one per parameter), got {type(grads).__name__}"
    )


def check_grad(g: Any, group: Group, j: int | None, shape: tuple, name: str) -> Any:
    if group.device == "cuda":
        if not is_cuda_array(g):
            raise TypeError(
                f"{name}: expected a CUDA array (the parameter is on the GPU), got "
                f"{type(g).__name__}"
            )
        g = as_cuda_array(g)
        contiguous = g.is_c_contiguous()
    else:
        if is_cuda_array(g):
            raise TypeError(f"{name}: expected a host array (the parameter is on the CPU), "
                            f"got a CUDA array")
        if not isinstance(g, np.ndarray):
            if hasattr(g, "__array__") and hasattr(g, "numpy"):
                try:
                    g = np.asarray(g)
                except Exception as exc:  # e.g. a torch tensor that requires grad
                    raise TypeError(f"{name}: cannot view this {type(g).__name__} as a "
                                    f"NumPy array ({exc})") from None
            else:
                raise TypeError(f"{name}: expected a NumPy array, got {type(g).__name__}")
        contiguous = g.flags.c_contiguous
    if tuple(g.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(g.shape)}")
    if np.dtype(g.dtype) != group.dtype:
        raise TypeError(f"{name}: expected dtype {group.dtype}, got {g.dtype}")
    if not contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    return g


def global_norm(groups: list[Group], grads: Any, sources: list[Any], grad_scale: float) -> float:
    """The norm of all gradients together, after unscaling (NaN or Inf when a gradient
    holds one; finite float64 gradients whose squares overflow are measured exactly)."""
    total = _sum_squares(groups, sources)
    if math.isfinite(total):
        return math.sqrt(total) / grad_scale
    if math.isnan(total):  # a sum of squares is NaN only when a gradient is
        return total
    # an Inf gradient, or finite float64 ones whose squares overflow
    return _exact_norm(groups, grads, sources) / grad_scale


def _sum_squares(groups: list[Group], sources: list[Any]) -> float:
    total = 0.0
    for group, source in zip(groups, sources):
        if group.device == "cuda":
            from ..kernels import cuda as _gpu

            flats = [source] if not isinstance(source, list) else [
                g.reshape(g.size) for g in source
            ]
            total += _gpu.sum_squares(flats)
        elif group.dtype.itemsize == 2:  # 16-bit gradients (rare path: NumPy, float64)
            arrays = group.grad_objects if source is None else [source]
            total += sum(float(np.square(np.asarray(g, dtype=np.float64)).sum())
                         for g in arrays)
        elif source is None:
            total += host.sum_squares_multi(group.grad_addresses, group.offsets, group.like)
        else:
            total += host.sum_squares(source, source.shape[0] >= config.parallel_threshold)
    return total


def _exact_norm(groups: list[Group], grads: Any, sources: list[Any]) -> float:
    """The global gradient norm without overflow; NaN/Inf when a gradient holds one.

    The rare path, taken only when the fast float64 sum of squares is +Inf: for
    an Inf gradient, and for finite float64 gradients beyond ~1e154 whose squares
    overflow (which must neither be skipped nor escape ``max_grad_norm``).
    """
    arrays = []
    for group, source in zip(groups, sources, strict=True):
        if source is None:  # the list path: the host arrays given to step
            base = group.index_base
            arrays += [np.asarray(g) for g in grads[base : base + len(group.params)]]
        elif isinstance(source, list):
            arrays += [g.copy_to_host() for g in source]
        else:
            arrays.append(source if isinstance(source, np.ndarray) else source.copy_to_host())
    peak = 0.0
    for a in arrays:
        if a.size:
            m = float(np.max(np.abs(a)))
            if not math.isfinite(m):
                return m
            peak = max(peak, m)
    if peak == 0.0:
        return 0.0
    total = 0.0
    for a in arrays:
        scaled = a.reshape(-1).astype(np.float64) / peak
        total += float(np.dot(scaled, scaled))
    return peak * math.sqrt(total)
