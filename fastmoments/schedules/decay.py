"""Decaying schedules: steps, milestones, exponential, inverse square root, polynomial."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from ._base import _is_int, _nonneg, _nonneg_int, _pos_int, _positive, _set

__all__ = ["StepDecay", "MultiStep", "Exponential", "InverseSqrt", "Polynomial"]


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
