"""Agreement between ranks: every rank raises the same error, or none does.

A rank that raises while the others enter a collective leaves them waiting forever.
So whatever can fail on one rank and not on another (a check of the arguments, a
file read on rank 0, a write) runs inside :func:`together`: each rank's outcome is
gathered on every rank, and if any rank failed, every rank raises the error of the
first one that did, with the same type and message.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Sequence
from typing import Any

from .comm import Communicator

__all__ = ["together", "check_same", "describe"]


def together(comm: Communicator, owner: str, work: Callable[[], tuple[Any, Any]]
             ) -> tuple[Any, list[Any]]:
    """Run ``work()`` on every rank; raise the same error everywhere if it failed anywhere.

    ``work`` returns ``(value, public)``: ``value`` stays on this rank, ``public`` (small,
    picklable) is gathered. Returns ``(value, [public of each rank])``.
    """
    error: BaseException | None = None
    try:
        value, public = work()
        report: tuple = ("ok", public)
    except Exception as exc:  # every error, reported to the other ranks
        value, error = None, exc
        report = ("error", type(exc).__module__, type(exc).__qualname__, str(exc))
    reports = comm.allgather_object(report)
    for rank, rep in enumerate(reports):
        if rep[0] == "error":
            _, module, name, message = rep
            raise _rebuilt(module, name, f"{owner}: rank {rank}: {message}") from error
    return value, [rep[1] for rep in reports]


def _rebuilt(module: str, name: str, message: str) -> Exception:
    """An exception of the type a rank raised, where it can be rebuilt from a message
    (builtins and fastmoments' own), else a RuntimeError naming it."""
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module == "fastmoments.checkpoint" and name == "CheckpointError":
        from ..checkpoint import CheckpointError

        cls = CheckpointError
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # an exception type with another constructor
            pass
    return RuntimeError(f"{message} ({module}.{name})")


def check_same(owner: str, fingerprints: Sequence[Sequence[tuple[str, Any]]]) -> None:
    """Raise ValueError (the same on every rank) unless every rank's fingerprint, a
    sequence of ``(what, value)`` pairs, equals rank 0's."""
    first = list(fingerprints[0])
    for rank, fingerprint in enumerate(fingerprints[1:], start=1):
        fingerprint = list(fingerprint)
        for (what, mine), (what_0, theirs) in zip(fingerprint, first):
            if (what, mine) != (what_0, theirs):
                found = (f"{what} is {mine!r} on rank {rank} and {theirs!r} on rank 0"
                         if what == what_0 else f"rank {rank} has {what} = {mine!r} where "
                         f"rank 0 has {what_0} = {theirs!r}")
                raise ValueError(
                    f"{owner}: the ranks disagree: {found}; every rank must build it with "
                    "the same parameters (shapes, dtype), optimizer, hyperparameters and "
                    "options"
                )
        if len(fingerprint) != len(first):
            raise ValueError(f"{owner}: the ranks disagree on the number of param groups "
                             f"(rank {rank} and rank 0)")


def describe(value: Any) -> Any:
    """A picklable description of a hyperparameter that is equal on two ranks exactly
    when the values are: numbers and strings as they are (NaN as a string), tuples
    element by element, a schedule by its ``repr`` (fastmoments' schedules are
    dataclasses), a function by its qualified name (not its address)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value) if math.isnan(value) else value
    if isinstance(value, (tuple, list)):
        return tuple(describe(v) for v in value)
    if callable(value) and type(value).__repr__ is object.__repr__ or hasattr(
        value, "__qualname__"
    ):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    text = repr(value)
    return f"{type(value).__qualname__}" if " at 0x" in text else text
