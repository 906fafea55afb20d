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

import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


# ------------------------------------------------------------------- schedules
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


@dataclass(frozen=True, slots=True)
class StepDecay:
    r"""Decay by ``gamma`` every ``step_size`` steps.

    .. math::

        \eta_t = \eta_0 \, \gamma^{\lfloor t / s \rfloor}

    with :math:`s` = ``step_size``.

    Parameters
    ----------
    init_value : float
        Initial learning rate :math:`\eta_0`, non-negative.
    step_size : int
        Period :math:`s` of the decay, a positive integer.
    gamma : float, default 0.1
        Multiplicative factor :math:`\gamma`, positive.

    References
    ----------
    ``torch.optim.lr_scheduler.StepLR(step_size, gamma)``;
    ``optax.exponential_decay(init_value, transition_steps=step_size,
    decay_rate=gamma, staircase=True)``.

    Examples
    --------
    >>> s = step_decay(1.0, step_size=10, gamma=0.5)
    >>> s(9), s(10), s(25)
    (1.0, 0.5, 0.25)
    """

    init_value: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        _set(self, "step_size", _pos_int("step_size", self.step_size))
        _set(self, "gamma", _positive("gamma", self.gamma))

    def __call__(self, step: int) -> float:
        return self.init_value * self.gamma ** (step // self.step_size)


@dataclass(frozen=True, slots=True)
class MultiStep:
    r"""Decay by ``gamma`` at each milestone.

    .. math::

        \eta_t = \eta_0 \, \gamma^{\#\{i \,:\, m_i \le t\}}

    Parameters
    ----------
    init_value : float
        Initial learning rate :math:`\eta_0`, non-negative.
    milestones : sequence of int
        Steps :math:`m_i` (positive integers, any order) at which the rate is
        multiplied by ``gamma``. A milestone listed twice applies ``gamma`` twice,
        as in torch. Stored as a sorted tuple.
    gamma : float, default 0.1
        Multiplicative factor :math:`\gamma`, positive.

    References
    ----------
    ``torch.optim.lr_scheduler.MultiStepLR(milestones, gamma)``;
    ``optax.piecewise_constant_schedule`` with every scale equal to ``gamma``.

    Examples
    --------
    >>> s = multi_step(1.0, milestones=[30, 80], gamma=0.5)
    >>> s(29), s(30), s(80)
    (1.0, 0.5, 0.25)
    """

    init_value: float
    milestones: Sequence[int]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        try:
            items = list(self.milestones)
        except TypeError:
            raise ValueError(
                f"milestones must be a sequence of positive integers, got {self.milestones!r}"
            ) from None
        for m in items:
            if not _is_int(m) or m <= 0:
                raise ValueError(
                    f"milestones must be a sequence of positive integers, got {self.milestones!r}"
                )
        _set(self, "milestones", tuple(sorted(int(m) for m in items)))
        _set(self, "gamma", _positive("gamma", self.gamma))

    def __call__(self, step: int) -> float:
        return self.init_value * self.gamma ** bisect_right(self.milestones, step)


@dataclass(frozen=True, slots=True)
class Exponential:
    r"""Decay by ``gamma`` every step.

    .. math::

        \eta_t = \eta_0 \, \gamma^{t}

    Parameters
    ----------
    init_value : float
        Initial learning rate :math:`\eta_0`, non-negative.
    gamma : float
        Multiplicative factor per step :math:`\gamma`, positive (values above 1
        give the growing rate of a learning-rate range test).

    References
    ----------
    ``torch.optim.lr_scheduler.ExponentialLR(gamma)``;
    ``optax.exponential_decay(init_value, transition_steps=1, decay_rate=gamma)``.

    Examples
    --------
    >>> exponential(1.0, gamma=0.5)(3)
    0.125
    """

    init_value: float
    gamma: float

    def __post_init__(self) -> None:
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        _set(self, "gamma", _positive("gamma", self.gamma))

    def __call__(self, step: int) -> float:
        return self.init_value * self.gamma**step


@dataclass(frozen=True, slots=True)
class InverseSqrt:
    r"""Inverse-square-root decay.

    .. math::

        \eta_t = \frac{\eta_0}{\sqrt{1 + t / \tau}}

    With the default :math:`\tau = 1` this is :math:`\eta_0 / \sqrt{k}` for the
    ``k``-th update counted from 1 (:math:`k = t + 1`): the
    :math:`\alpha_t = \alpha / \sqrt{t}` of Adam's convergence analysis (Kingma &
    Ba, 2015, Sec. 4). The rate starts at :math:`\eta_0` and has halved after
    :math:`3\tau` steps.

    Combined with a warm-up, ``linear_warmup(inverse_sqrt(peak, timescale=W), W)``
    is the Transformer ("Noam") / fairseq ``inverse_sqrt`` schedule: a linear ramp
    to ``peak`` over ``W`` steps, then :math:`\eta_t = \mathrm{peak}\sqrt{W / t}`.

    Parameters
    ----------
    init_value : float
        Initial learning rate :math:`\eta_0`, non-negative.
    timescale : float, default 1.0
        Time scale :math:`\tau` of the decay, positive.

    References
    ----------
    D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (Eq. 3).

    Examples
    --------
    >>> s = inverse_sqrt(1.0)
    >>> s(0), s(3), s(15)
    (1.0, 0.5, 0.25)
    """

    init_value: float
    timescale: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        _set(self, "timescale", _positive("timescale", self.timescale))

    def __call__(self, step: int) -> float:
        return self.init_value / math.sqrt(1.0 + step / self.timescale)


@dataclass(frozen=True, slots=True)
class Polynomial:
    r"""Polynomial decay from ``init_value`` to ``end_value``.

    .. math::

        c &= \min(\max(t - t_b, 0), T) \\
        \eta_t &= (\eta_0 - \eta_{\mathrm{end}})\,(1 - c / T)^{p} + \eta_{\mathrm{end}}

    with :math:`T` = ``transition_steps``, :math:`t_b` = ``transition_begin`` and
    :math:`p` = ``power``: constant at :math:`\eta_0` for the first :math:`t_b`
    steps, then a polynomial decay reaching :math:`\eta_{\mathrm{end}}` at step
    :math:`t_b + T` and staying there.

    Parameters
    ----------
    init_value : float
        Initial learning rate :math:`\eta_0`, non-negative.
    end_value : float
        Final learning rate :math:`\eta_{\mathrm{end}}`, non-negative (it may
        exceed ``init_value``, giving a polynomial increase).
    power : float
        Exponent :math:`p`, positive (1 gives a linear schedule).
    transition_steps : int
        Length :math:`T` of the decay, a positive integer.
    transition_begin : int, default 0
        Number of steps :math:`t_b` at ``init_value`` before the decay starts.

    References
    ----------
    ``optax.polynomial_schedule`` (same arguments, same formula; optax returns a
    constant schedule, with a warning, for ``transition_steps <= 0``, which is
    rejected here). ``torch.optim.lr_scheduler.PolynomialLR(total_iters, power)``
    is ``polynomial(lr, 0.0, power, total_iters)``.

    Examples
    --------
    >>> s = polynomial(1.0, 0.0, power=2, transition_steps=10, transition_begin=5)
    >>> s(5), s(10), s(15), s(100)
    (1.0, 0.25, 0.0, 0.0)
    """

    init_value: float
    end_value: float
    power: float
    transition_steps: int
    transition_begin: int = 0

    def __post_init__(self) -> None:
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        _set(self, "end_value", _nonneg("end_value", self.end_value))
        _set(self, "power", _positive("power", self.power))
        _set(self, "transition_steps", _pos_int("transition_steps", self.transition_steps))
        _set(self, "transition_begin", _nonneg_int("transition_begin", self.transition_begin))

    def __call__(self, step: int) -> float:
        count = step - self.transition_begin
        if count < 0:
            count = 0
        elif count > self.transition_steps:
            count = self.transition_steps
        frac = 1.0 - count / self.transition_steps
        return (self.init_value - self.end_value) * frac**self.power + self.end_value


@dataclass(frozen=True, slots=True)
class Cosine:
    r"""Cosine annealing from ``init_value`` to ``eta_min`` over ``decay_steps``.

    .. math::

        \eta_t = \eta_{\min} + \frac{\eta_0 - \eta_{\min}}{2}
            \left(1 + \cos\left(\pi \frac{\min(t, T)}{T}\right)\right)

    with :math:`T` = ``decay_steps``. The rate stays at :math:`\eta_{\min}` after
    step :math:`T`.

    Parameters
    ----------
    init_value : float
        Initial learning rate :math:`\eta_0`, non-negative.
    decay_steps : int
        Length :math:`T` of the decay, a positive integer.
    eta_min : float, default 0.0
        Final learning rate :math:`\eta_{\min}`, non-negative.

    Notes
    -----
    For :math:`t \le T` this is torch's ``CosineAnnealingLR(T_max=decay_steps,
    eta_min=eta_min)`` (its closed form) and
    ``optax.cosine_decay_schedule(init_value, decay_steps, alpha=eta_min / init_value)``.
    After :math:`T` it follows optax and stays at :math:`\eta_{\min}`; torch's
    scheduler instead keeps following the cosine and climbs back towards
    :math:`\eta_0` (period :math:`2T`). Use :class:`CosineWarmRestarts` for a
    periodic schedule.

    References
    ----------
    I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017 (Eq. 5, a single cycle).

    Examples
    --------
    >>> s = cosine(1.0, decay_steps=100, eta_min=0.1)
    >>> s(0), s(50), s(100), s(1000)
    (1.0, 0.55, 0.1, 0.1)
    """

    init_value: float
    decay_steps: int
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        _set(self, "decay_steps", _pos_int("decay_steps", self.decay_steps))
        _set(self, "eta_min", _nonneg("eta_min", self.eta_min))

    def __call__(self, step: int) -> float:
        if step > self.decay_steps:
            step = self.decay_steps
        return (
            self.eta_min
            + (self.init_value - self.eta_min)
            * (1 + math.cos(math.pi * step / self.decay_steps))
            / 2
        )


@dataclass(frozen=True, slots=True)
class CosineWarmRestarts:
    r"""Cosine annealing with warm restarts (SGDR).

    .. math::

        \eta_t = \eta_{\min} + \frac{\eta_0 - \eta_{\min}}{2}
            \left(1 + \cos\left(\pi \frac{T_{\mathrm{cur}}}{T_i}\right)\right)

    where cycle :math:`i = 0, 1, \ldots` lasts :math:`T_i = T_0 \, T_{\mathrm{mult}}^i`
    steps, starts at step :math:`T_0 (T_{\mathrm{mult}}^i - 1) / (T_{\mathrm{mult}} - 1)`
    (:math:`i T_0` when :math:`T_{\mathrm{mult}} = 1`), and :math:`T_{\mathrm{cur}}`
    is the number of steps since the start of the current cycle. The rate restarts
    at :math:`\eta_0` at the first step of every cycle.

    Parameters
    ----------
    init_value : float
        Learning rate :math:`\eta_0` at the start of each cycle, non-negative.
    T_0 : int
        Length of the first cycle, a positive integer.
    T_mult : int, default 1
        Factor by which each cycle is longer than the previous one, an integer >= 1.
    eta_min : float, default 0.0
        Minimum learning rate :math:`\eta_{\min}`, non-negative.

    Notes
    -----
    The cycle is found with exact integer arithmetic (torch's ``step(epoch)``
    path uses a floating-point logarithm, which can misplace a restart by one
    step for large epochs).

    References
    ----------
    I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017 (Eq. 5).
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)``;
    ``optax.sgdr_schedule`` with ``warmup_steps=0``.

    Examples
    --------
    >>> s = cosine_warm_restarts(1.0, T_0=10, T_mult=2)
    >>> s(0), s(5), s(10), s(20), s(30)
    (1.0, 0.5, 1.0, 0.5, 1.0)
    """

    init_value: float
    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        _set(self, "T_0", _pos_int("T_0", self.T_0))
        if not _is_int(self.T_mult) or self.T_mult < 1:
            raise ValueError(f"T_mult must be an integer >= 1, got {self.T_mult!r}")
        _set(self, "T_mult", int(self.T_mult))
        _set(self, "eta_min", _nonneg("eta_min", self.eta_min))

    def __call__(self, step: int) -> float:
        t_0 = self.T_0
        if step < t_0:
            t_cur, t_i = step, t_0
        elif self.T_mult == 1:
            t_cur, t_i = step % t_0, t_0
        else:
            m = self.T_mult
            # Estimate the cycle index n with a logarithm, then correct it exactly:
            # cycle n starts at t_0 * (m**n - 1) / (m - 1) and lasts t_0 * m**n.
            n = int(math.log(step / t_0 * (m - 1) + 1, m))
            t_i = t_0 * m**n
            start = (t_i - t_0) // (m - 1)
            while start > step:
                t_i //= m
                start -= t_i
            while step >= start + t_i:
                start += t_i
                t_i *= m
            t_cur = step - start
        return (
            self.eta_min
            + (self.init_value - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
        )


@dataclass(frozen=True, slots=True)
class LinearWarmup:
    r"""Linear warm-up prepended to a schedule.

    .. math::

        \eta_t = \begin{cases}
            \eta_{\mathrm{init}} + (s(0) - \eta_{\mathrm{init}})\, t / W & t < W \\
            s(t - W) & t \ge W
        \end{cases}

    with :math:`s` the wrapped schedule and :math:`W` = ``warmup_steps``: the rate
    ramps linearly from ``init_value`` (at step 0) to the wrapped schedule's
    first value (reached at step :math:`W`), then follows the wrapped schedule
    **shifted** by :math:`W`, i.e. called with ``step - warmup_steps``. This is
    the convention of ``optax.join_schedules([optax.linear_schedule(init_value,
    s(0), W), s], [W])`` and of torch's ``SequentialLR([LinearLR(...), ...],
    milestones=[W])``; so ``linear_warmup(cosine(lr, T), W)`` lasts ``W + T``
    steps.

    Parameters
    ----------
    schedule : Schedule or float
        The schedule to follow after the warm-up (any callable ``step -> lr``), or
        a constant learning rate.
    warmup_steps : int
        Length :math:`W` of the ramp, a non-negative integer (0: no warm-up).
    init_value : float, default 0.0
        Learning rate at step 0, non-negative.

    Notes
    -----
    ``s(0)`` is evaluated once, at construction. The ramp is written so that its
    first value is exactly ``init_value``; ``optax.linear_schedule`` writes it as
    :math:`(\eta_{\mathrm{init}} - s(0))(1 - t/W) + s(0)`, which agrees up to
    rounding. With a constant ``schedule`` this is torch's
    ``LinearLR(start_factor=init_value / lr, end_factor=1, total_iters=W)``.

    References
    ----------
    P. Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
    2017 (gradual warm-up).

    Examples
    --------
    >>> s = linear_warmup(1.0, warmup_steps=4)
    >>> [s(t) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    >>> s = linear_warmup(cosine(1.0, decay_steps=10), warmup_steps=4, init_value=0.5)
    >>> s(0), s(2), s(4), s(9), s(14)
    (0.5, 0.75, 1.0, 0.5, 0.0)
    """

    schedule: ScheduleLike
    warmup_steps: int
    init_value: float = 0.0
    _peak: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set(self, "schedule", as_schedule(self.schedule, "schedule"))
        _set(self, "warmup_steps", _nonneg_int("warmup_steps", self.warmup_steps))
        _set(self, "init_value", _nonneg("init_value", self.init_value))
        _set(self, "_peak", float(self.schedule(0)))

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.schedule(step - self.warmup_steps)
        return self.init_value + (self._peak - self.init_value) * step / self.warmup_steps


@dataclass(frozen=True, slots=True)
class OneCycle:
    r"""The 1cycle learning-rate policy (learning rates of torch's ``OneCycleLR``).

    With :math:`N` = ``total_steps``, :math:`p` = ``pct_start``,
    :math:`\eta_{\mathrm{init}} = \eta_{\max} / \mathrm{div\_factor}` and
    :math:`\eta_{\mathrm{final}} = \eta_{\mathrm{init}} / \mathrm{final\_div\_factor}`,
    the phases are, as in torch:

    - two-phase: :math:`\eta_{\mathrm{init}} \to \eta_{\max}` over steps
      :math:`[0, pN - 1]`, then :math:`\eta_{\max} \to \eta_{\mathrm{final}}` up to
      step :math:`N - 1`;
    - three-phase: :math:`\eta_{\mathrm{init}} \to \eta_{\max}` over
      :math:`[0, pN - 1]`, :math:`\eta_{\max} \to \eta_{\mathrm{init}}` up to
      :math:`2pN - 2`, then :math:`\eta_{\mathrm{init}} \to \eta_{\mathrm{final}}`
      up to :math:`N - 1`.

    Within a phase running from step :math:`a` to step :math:`b`, from rate
    :math:`u` to rate :math:`v`, with :math:`x = (t - a) / (b - a)`:

    .. math::

        \eta_t = v + \frac{u - v}{2}\left(1 + \cos \pi x\right)
        \quad \text{(cos)}, \qquad
        \eta_t = u + (v - u)\, x \quad \text{(linear)}.

    Parameters
    ----------
    max_lr : float
        Peak learning rate :math:`\eta_{\max}`, non-negative.
    total_steps : int
        Total number of steps :math:`N`, a positive integer.
    pct_start : float, default 0.3
        Fraction :math:`p` of the steps spent increasing the rate, in [0, 1].
    div_factor : float, default 25.0
        :math:`\eta_{\mathrm{init}} = \eta_{\max} / \mathrm{div\_factor}`, positive.
    final_div_factor : float, default 1e4
        :math:`\eta_{\mathrm{final}} = \eta_{\mathrm{init}} / \mathrm{final\_div\_factor}`,
        positive.
    anneal_strategy : {"cos", "linear"}, default "cos"
        Shape of each phase.
    three_phase : bool, default False
        Use the three-phase variant (fast.ai-style annealing back to
        :math:`\eta_{\mathrm{init}}` before the final decay).

    Notes
    -----
    Steps beyond :math:`N - 1` return the value at step :math:`N - 1`, which is
    :math:`\eta_{\mathrm{final}}` up to rounding (torch raises an error after
    :math:`N` scheduler steps). A degenerate phase of zero
    length (:math:`pN = 1`) returns its end rate, where torch divides by zero.
    Momentum cycling (torch's ``cycle_momentum``) is not part of this schedule.

    References
    ----------
    L. N. Smith and N. Topin, "Super-Convergence: Very Fast Training of Neural
    Networks Using Large Learning Rates", 2018 (arXiv:1708.07120).
    ``torch.optim.lr_scheduler.OneCycleLR``; ``optax.cosine_onecycle_schedule`` /
    ``optax.linear_onecycle_schedule`` use different phase boundaries.

    Examples
    --------
    >>> s = one_cycle(1.0, total_steps=100, pct_start=0.5, div_factor=10.0,
    ...               final_div_factor=2.0, anneal_strategy="linear")
    >>> [round(s(t), 12) for t in (0, 49, 74, 99, 1000)]
    [0.1, 1.0, 0.525, 0.05, 0.05]
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal_strategy: str = "cos"
    three_phase: bool = False
    _phases: tuple[tuple[float, float, float, float], ...] = field(
        init=False, repr=False, compare=False
    )
    _cos: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        max_lr = _nonneg("max_lr", self.max_lr)
        total = _pos_int("total_steps", self.total_steps)
        pct = self.pct_start
        if not _is_real(pct) or not 0.0 <= pct <= 1.0:
            raise ValueError(f"pct_start must be a number in [0, 1], got {pct!r}")
        pct = float(pct)
        div = _positive("div_factor", self.div_factor)
        final_div = _positive("final_div_factor", self.final_div_factor)
        if self.anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be 'cos' or 'linear', got {self.anneal_strategy!r}"
            )
        if not isinstance(self.three_phase, bool):
            raise ValueError(f"three_phase must be a bool, got {self.three_phase!r}")
        for name, value in (
            ("max_lr", max_lr),
            ("total_steps", total),
            ("pct_start", pct),
            ("div_factor", div),
            ("final_div_factor", final_div),
        ):
            _set(self, name, value)

        initial_lr = max_lr / div
        min_lr = initial_lr / final_div
        # (end_step used in the phase test, end_step, start_lr, end_lr), as in torch;
        # the last phase catches every later step.
        if self.three_phase:
            phases = [
                (float(pct * total) - 1, initial_lr, max_lr),
                (float(2 * pct * total) - 2, max_lr, initial_lr),
                (float(total - 1), initial_lr, min_lr),
            ]
        else:
            phases = [
                (float(pct * total) - 1, initial_lr, max_lr),
                (float(total - 1), max_lr, min_lr),
            ]
        rows = [(end, end, lo, hi) for end, lo, hi in phases]
        end, _, lo, hi = rows[-1]
        rows[-1] = (math.inf, end, lo, hi)
        _set(self, "_phases", tuple(rows))
        _set(self, "_cos", self.anneal_strategy == "cos")

    def __call__(self, step: int) -> float:
        last = self.total_steps - 1
        if step > last:
            step = last
        start = 0.0
        for test_end, end, lo, hi in self._phases:
            if step <= test_end:
                span = end - start
                x = (step - start) / span if span != 0 else 1.0
                if self._cos:
                    return hi + (lo - hi) / 2.0 * (math.cos(math.pi * x) + 1)
                return (hi - lo) * x + lo
            start = end
        raise AssertionError("unreachable: the last phase has no end")  # pragma: no cover


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


# --------------------------------------------------------------------- helpers
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


def normalized_weight_decay(
    lambda_norm: float, batch_size: int, num_train_points: int, num_epochs: float
) -> float:
    r"""Weight decay from its normalized value (Loshchilov & Hutter).

    .. math::

        \lambda = \lambda_{\mathrm{norm}} \sqrt{\frac{b}{B\,T}}

    with :math:`b` the batch size, :math:`B` the number of training points and
    :math:`T` the number of epochs, so that the total decay applied over training
    (about :math:`\lambda B T / b` steps) does not depend on the training budget.

    Parameters
    ----------
    lambda_norm : float
        Normalized weight decay :math:`\lambda_{\mathrm{norm}}`, non-negative
        (the paper finds 0.025 to 0.05 good for AdamW on CIFAR-10).
    batch_size : int
        Batch size :math:`b`, a positive integer.
    num_train_points : int
        Number of training points :math:`B`, a positive integer.
    num_epochs : float
        Number of epochs :math:`T` (per restart cycle with SGDR), positive.

    Returns
    -------
    float
        The weight decay :math:`\lambda` to pass to the optimizer.

    References
    ----------
    I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization",
    ICLR 2019 (Appendix B.1).

    Examples
    --------
    >>> normalized_weight_decay(0.05, batch_size=100, num_train_points=50_000,
    ...                         num_epochs=20)
    0.0005
    """
    lam = _nonneg("lambda_norm", lambda_norm)
    b = _pos_int("batch_size", batch_size)
    n = _pos_int("num_train_points", num_train_points)
    t = _positive("num_epochs", num_epochs)
    return lam * math.sqrt(b / (n * t))
