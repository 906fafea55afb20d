"""Learning-rate schedules: small, pure-Python callables ``step -> lr``.

Every schedule is a frozen, slotted dataclass whose ``__call__(step)`` returns the
learning rate (a Python :class:`float`) for one optimizer update. Each class has a
lowercase alias (``cosine is Cosine``) so that schedules read like optax's
constructors: ``schedules.cosine(1e-3, decay_steps=10_000)``.

Step convention
---------------
``step`` is the number of optimizer updates **already applied**: ``0`` for the
first update, ``1`` for the second, ... This is optax's ``count`` and torch's
``scheduler.last_epoch`` when ``scheduler.step()`` is called once after every
``optimizer.step()`` (the learning rate used by the ``k``-th update, counting from
0, is the one torch's scheduler holds after ``k`` calls to ``scheduler.step()``).
Every schedule is written in closed form; where torch has an equivalent
scheduler, ``schedule(k)`` equals its ``_get_closed_form_lr()`` at
``last_epoch = k`` (or its rates exactly, when it has no closed form), and torch's
default, chainable (recursive) form agrees up to rounding. The class docstrings
say where torch and optax differ and which is followed.

Calls are cheap (a few float operations, no numpy, under a microsecond): an
optimizer may call its schedule on every step. Schedules are pure functions of
``step`` and are immutable, hashable and comparable, and their ``repr`` shows
their settings.

Any callable ``f(step: int) -> float`` can be used where a schedule is expected;
:func:`as_schedule` turns a number into :class:`Constant`.
"""

from __future__ import annotations

from ._base import Constant, Schedule, ScheduleLike, as_schedule
from .cosine import Cosine, CosineWarmRestarts
from .decay import Exponential, InverseSqrt, MultiStep, Polynomial, StepDecay
from .warmup import LinearWarmup, OneCycle
from .weight_decay import normalized_weight_decay

__all__ = [
    "Schedule",
    "ScheduleLike",
    "Constant",
    "StepDecay",
    "MultiStep",
    "Exponential",
    "InverseSqrt",
    "Polynomial",
    "Cosine",
    "CosineWarmRestarts",
    "LinearWarmup",
    "OneCycle",
    "constant",
    "step_decay",
    "multi_step",
    "exponential",
    "inverse_sqrt",
    "polynomial",
    "cosine",
    "cosine_warm_restarts",
    "linear_warmup",
    "one_cycle",
    "as_schedule",
    "normalized_weight_decay",
]


# ---------------------------------------------------------- lowercase aliases
constant = Constant
step_decay = StepDecay
multi_step = MultiStep
exponential = Exponential
inverse_sqrt = InverseSqrt
polynomial = Polynomial
cosine = Cosine
cosine_warm_restarts = CosineWarmRestarts
linear_warmup = LinearWarmup
one_cycle = OneCycle
