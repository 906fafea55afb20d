"""What every schedule shares: the types, argument validation, :class:`Constant` and
:func:`as_schedule`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Schedule", "ScheduleLike", "Constant", "as_schedule"]

#: A learning-rate schedule: maps the number of updates already taken to a rate.
Schedule = Callable[[int], float]
#: A schedule or a constant learning rate.
ScheduleLike = Schedule | float

_set = object.__setattr__  # assignment inside __post_init__ of the frozen dataclasses


# ------------------------------------------------------------------ validation
def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _nonneg(name: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def _positive(name: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _pos_int(name: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _nonneg_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class Constant:
    r"""A constant learning rate.

    .. math::

        \eta_t = \eta_0

    Parameters
    ----------
    value : float
        The learning rate :math:`\eta_0`, non-negative.

    References
    ----------
    ``optax.constant_schedule``; ``torch.optim.lr_scheduler.ConstantLR`` with
    ``factor=1``.

    Examples
    --------
    >>> constant(0.1)(1000)
    0.1
    """

    value: float

    def __post_init__(self) -> None:
        _set(self, "value", _nonneg("value", self.value))

    def __call__(self, step: int) -> float:
        return self.value


def as_schedule(lr: ScheduleLike, name: str = "lr") -> Schedule:
    """Turn a learning rate into a schedule.

    Parameters
    ----------
    lr : float or Schedule
        A non-negative number (returned as :class:`Constant`) or any callable
        ``step -> lr`` (returned unchanged).
    name : str, default "lr"
        Argument name used in error messages.

    Returns
    -------
    Schedule
        A callable mapping the number of steps already taken to a learning rate.

    Raises
    ------
    TypeError
        If ``lr`` is neither a real number nor callable.
    ValueError
        If ``lr`` is a negative or non-finite number.

    Examples
    --------
    >>> as_schedule(0.01)
    Constant(value=0.01)
    >>> s = cosine(0.1, 10)
    >>> as_schedule(s) is s
    True
    """
    if _is_real(lr):
        return Constant(_nonneg(name, lr))
    if callable(lr):
        return lr
    raise TypeError(
        f"{name} must be a float or a callable schedule step -> float, "
        f"got {type(lr).__name__}: {lr!r}"
    )
