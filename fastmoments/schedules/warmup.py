"""Schedules with a warm-up: a linear warm-up before any schedule, and the one-cycle policy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ._base import (
    ScheduleLike,
    _is_real,
    _nonneg,
    _nonneg_int,
    _pos_int,
    _positive,
    _set,
    as_schedule,
)

__all__ = ["LinearWarmup", "OneCycle"]


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
