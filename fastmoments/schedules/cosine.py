"""Cosine annealing, with and without warm restarts (SGDR)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._base import _is_int, _nonneg, _pos_int, _set

__all__ = ["Cosine", "CosineWarmRestarts"]


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
