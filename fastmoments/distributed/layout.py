"""How a ShardedOptimizer's buffers are laid out over the ranks, and what the ranks
compare before they start.

- :func:`shard_sizes`, :func:`shard_ranges`: each rank's contiguous shard of a buffer
  (DeepSpeed's split);
- ``_Shard``: one param group's FlatParams and this rank's part of it; ``_cut``: the
  params a rank's optimizer steps (its shard as one array, or cut at the tensors' edges
  for a multi-pass rule);
- ``_arguments``: a rank's arguments, checked, and their fingerprint (compared across
  ranks by :func:`._agree.check_same`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..flat import FlatParams
from ..kernels.segments import Parts
from ..optim._checks import check_optional_positive
from ..optim.base import Optimizer
from ._agree import describe

__all__ = ["shard_sizes", "shard_ranges"]

_OWNER = "ShardedOptimizer"
_NONFINITE_POLICIES = ("apply", "skip", "raise")


def shard_sizes(numel: int, world_size: int) -> list[int]:
    """The number of elements of each rank's shard of a buffer of ``numel`` elements.

    DeepSpeed's split: ``numel // world_size`` each, and one more for each of the first
    ``numel % world_size`` ranks; a rank gets an empty shard when there are more ranks
    than elements.

    Examples
    --------
    >>> shard_sizes(10, 3), shard_sizes(2, 3)
    ([4, 3, 3], [1, 1, 0])
    """
    if world_size < 1 or numel < 0:
        raise ValueError(f"shard_sizes: expected numel >= 0 and world_size >= 1, got "
                         f"{numel} and {world_size}")
    base, extra = divmod(int(numel), int(world_size))
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard_ranges(numel: int, world_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each rank's shard (see :func:`shard_sizes`), in rank order."""
    stops = np.cumsum(shard_sizes(numel, world_size))
    return [(int(stop - size), int(stop))
            for stop, size in zip(stops, shard_sizes(numel, world_size))]


class _Shard:
    """One param group's FlatParams and this rank's part of it."""

    __slots__ = ("flat", "extra", "counts", "start", "stop", "grad", "pieces", "grads",
                 "parts")

    def __init__(self, flat: FlatParams, extra: dict[str, Any], rank: int, size: int) -> None:
        self.flat, self.extra = flat, extra
        self.counts = shard_sizes(flat.numel, size)
        self.start, self.stop = shard_ranges(flat.numel, size)[rank]
        self.grad: Any = None  # the shard's summed gradient
        self.pieces: list[Any] = []  # the params the local optimizer steps
        self.grads: list[Any] = []  # their gradients (views of ``grad``)
        self.parts: tuple | None = None  # (shapes, Parts) for a multi-pass rule


def _flat_groups(params: Any) -> list[tuple[FlatParams, dict[str, Any]]]:
    """``params`` as (FlatParams, the group's other keys) pairs."""
    hint = ("a FlatParams or a list of param-group dicts whose 'params' is a FlatParams "
            "(pack the arrays with fm.FlatParams: a shard is a contiguous run of one buffer)")
    if isinstance(params, FlatParams):
        return [(params, {})]
    if isinstance(params, dict):
        params = [params]
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError(f"params: expected {hint}, got {type(params).__name__}")
    groups = []
    for k, group in enumerate(params):
        if not isinstance(group, dict) or not isinstance(group.get("params"), FlatParams):
            raise TypeError(f"params[{k}]: expected {hint}, got "
                            f"{type(group).__name__}"
                            + (f" with {type(group.get('params')).__name__} params"
                               if isinstance(group, dict) else ""))
        groups.append((group["params"], {key: v for key, v in group.items() if key != "params"}))
    if len({id(flat) for flat, _ in groups}) != len(groups):
        raise ValueError("params: a FlatParams appears in two param groups")
    return groups


def _cut(s: _Shard, world_size: int, pieces: bool) -> None:
    """The params a rank's optimizer steps: its shard of the buffer, one array (an
    element-wise rule), or cut at the tensors' edges (a multi-pass rule, with the
    ``Parts`` that say which part of which tensor each piece is)."""
    flat, start, stop = s.flat, s.start, s.stop
    if world_size == 1:
        s.grad = flat.grad  # nothing to sum: step on the gradient buffer itself
    elif flat.device == "cuda":
        from ..kernels import cuda as _gpu

        s.grad = _gpu.full(stop - start, 0.0, flat.dtype)
    else:
        s.grad = np.zeros(stop - start, dtype=flat.dtype)
    if not pieces:
        s.pieces, s.grads = [flat.data[start:stop]], [s.grad[: stop - start]]
        return
    offsets = flat.offsets
    tensors, starts = [], []
    for j in range(len(flat.shapes)):
        lo, hi = max(start, int(offsets[j])), min(stop, int(offsets[j + 1]))
        if hi > lo:
            s.pieces.append(flat.data[lo:hi])
            s.grads.append(s.grad[lo - start: hi - start])
            tensors.append(j)
            starts.append(lo - int(offsets[j]))
    if not s.pieces:  # an empty shard: one empty piece, in no tensor's window
        s.pieces, s.grads = [flat.data[start:start]], [s.grad[0:0]]
        tensors, starts = [0], [0]
    s.parts = (list(flat.shapes), Parts(np.array(tensors, dtype=np.int64),
                                        np.array(starts, dtype=np.int64)))


def _arguments(world_size: int, optimizer: Any, params: Any, shard: Any, options: dict,
               hyper: dict) -> tuple[list[tuple[FlatParams, dict]], list]:
    """This rank's arguments, checked, and their fingerprint (compared across ranks)."""
    if not (isinstance(optimizer, type) and issubclass(optimizer, Optimizer)):
        raise TypeError(f"optimizer: expected a fastmoments optimizer class (e.g. "
                        f"fm.AdamW), got {optimizer!r}")
    if not isinstance(shard, bool):
        raise TypeError(f"shard: expected True or False, got {shard!r}")
    if options["nonfinite"] not in _NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {_NONFINITE_POLICIES}, got "
                         f"{options['nonfinite']!r}")
    for name in ("max_grad_norm", "clip_value"):
        check_optional_positive(options[name], name, _OWNER)
    groups = _flat_groups(params)
    from .. import __version__

    fingerprint: list[tuple[str, Any]] = [
        ("the fastmoments version", __version__),
        ("the optimizer", f"{optimizer.__module__}.{optimizer.__qualname__}"),
        ("shard", shard), ("the number of ranks", world_size),
        *((name, describe(value)) for name, value in options.items()),
        *((f"hyperparameter {name!r}", describe(value))
          for name, value in sorted(hyper.items())),
    ]
    for k, (flat, extra) in enumerate(groups):
        where = f"param group {k}"
        fingerprint += [
            (f"{where}: the shapes", tuple(flat.shapes)),
            (f"{where}: the dtype", str(flat.dtype)),
            (f"{where}: the device", flat.device),
            *((f"{where}: {name!r}", describe(value))
              for name, value in sorted(extra.items())),
        ]
    return groups, fingerprint
