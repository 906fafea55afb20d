r"""SWATS (Keskar & Socher, 2017): Adam, then SGD at the rate Adam's steps imply.

One segmented pass per step (see :mod:`.multipass`): in the Adam phase it also sums
the two dot products over every parameter that the switching test needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import rules as _rules
from ..kernels.compile import WhenReady, cached_njit
from ..kernels.segmented import SegmentedKernel
from ..kernels.segmented_run import run
from ._groups import Group
from ._scalars import bias_corrections
from .multipass import _MOMENTS, _advance_key, _kept, _MultiPass, _reduced, _variant, _whole

__all__ = ["SWATS"]

_SWATS_ADAM = SegmentedKernel(_rules.swats_adam, _MOMENTS, (), 2, ("param", *_MOMENTS))
_SWATS_SGD = SegmentedKernel(_rules.swats_sgd, ("momentum_buffer",), (), 0,
                             ("param", "momentum_buffer"))


class SWATS(_MultiPass):
    r"""SWATS: Adam, then SGD at the rate Adam's steps imply (Keskar & Socher, 2017).

    Adam phase, with all parameters as one vector (every group included):

    .. math::

        p_t &= -\frac{\gamma}{1 - \beta_1^t}\, \frac{m_t}{\sqrt{a_t / (1 - \beta_2^t)}
               + \epsilon}, \qquad \theta_t = \theta_{t-1} + p_t \\
        \gamma^{sgd}_t &= \frac{p_t \cdot p_t}{-p_t \cdot g_t}, \qquad
        \lambda_t = \beta_2 \lambda_{t-1} + (1 - \beta_2)\, \gamma^{sgd}_t

    (:math:`m_t, a_t`: Adam's moments; :math:`\gamma^{sgd}_t` is the SGD step
    size whose step has the same projection on :math:`p_t`; skipped when
    :math:`p_t \cdot g_t = 0`). When :math:`t > 1` and
    :math:`|\lambda_t / (1 - \beta_2^t) - \gamma^{sgd}_t| <` ``switch_tol``, it
    switches for good to SGD with momentum at :math:`\Lambda = \lambda_t / (1 -
    \beta_2^t)`:

    .. math::

        v_t = \beta_1 v_{t-1} + g_t, \qquad
        \theta_t = \theta_{t-1} - (1 - \beta_1)\,\Lambda\,
                   (g_t + \beta_1 v_t \text{ if nesterov else } v_t)

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-3
        Adam's learning rate. After the switch a group's rate is
        :math:`\Lambda\,\gamma_t / \gamma_s` (:math:`\gamma_s`: its rate at the
        switch), so a schedule keeps decaying the SGD rate.
    betas : (float, float), default (0.9, 0.999)
        :math:`\beta_1` is also the SGD momentum.
    eps : float, default 1e-8
        Outside the square root, after bias correction (torch's Adam).
    weight_decay : float, default 0
        L2, in both phases.
    nesterov : bool, default False
        Nesterov momentum in the SGD phase.
    maximize : bool, default False
    switch_tol : float, default 1e-9
        The paper's :math:`\epsilon` of the switching test (absolute).

    Attributes
    ----------
    switched : bool
        Whether the switch happened (the step that decided it was an Adam step).
    switch_step : int or None
        The step (1-based) that decided it.
    sgd_lr : float or None
        :math:`\Lambda`, the SGD rate.

    Notes
    -----
    Algorithm 1 of the paper, with eps placed as in torch's Adam (the paper
    multiplies :math:`\sqrt{1-\beta_2^t}` into the step and adds eps to
    :math:`\sqrt{a_t}`). The switch is global; the estimate and the test use the
    first group's betas and switch_tol. torch-optimizer's ``SWATS`` differs: it
    switches per parameter tensor (setting its whole group's lr), with eps=1e-3 and
    a relative test. The switch and :math:`\lambda` are saved in ``host_state``.

    References
    ----------
    Keskar & Socher (2017), Improving Generalization Performance by Switching from
    Adam to SGD. arXiv:1712.07628.
    """

    _nonneg = ("eps", "weight_decay", "switch_tol")
    _bools = ("nesterov", "maximize")
    _state_names = ("exp_avg", "exp_avg_sq", "momentum_buffer")

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, switch_tol: float = 1e-9, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize,
                                      switch_tol=switch_tol), **options)
        self._dots = np.zeros(2)  # p.g and p.p of this step, over every group
        # the totals arrays for which _add_column_sums was found compiled
        self._sums_ready = WhenReady()
        self._stand_in_buffers: dict[int, tuple] = {}  # see _kept

    def _initial_host_state(self, hyper: dict[str, Any]) -> dict[str, float]:
        return {"switched": 0.0, "switch_step": 0.0, "lambda": 0.0, "sgd_lr": 0.0,
                "lr_at_switch": 0.0}

    @property
    def switched(self) -> bool:
        return bool(self._groups[0].host_state["switched"])

    @property
    def switch_step(self) -> int | None:
        return int(self._groups[0].host_state["switch_step"]) if self.switched else None

    @property
    def sgd_lr(self) -> float | None:
        return float(self._groups[0].host_state["sgd_lr"]) if self.switched else None

    def step(self, grads: Any = None, *, grad_scale: float = 1.0) -> float | None:
        """One step of the current phase; in the Adam phase, then test the switch.

        Parameters and return value as :meth:`fastmoments.Adam.step`.
        """
        self._dots.fill(0.0)
        was_switched = self.switched
        norm = super().step(grads, grad_scale=grad_scale)
        if not was_switched and not self.last_step_skipped:
            self._test_switch()
        return norm

    def _test_switch(self) -> None:
        p_dot_g, p_dot_p = (float(x) for x in self._dots)
        if p_dot_g == 0:
            return
        k = self.step_count
        first = self._groups[0]
        beta2 = first.hyper["betas"][1]
        gamma = p_dot_p / -p_dot_g
        lam = beta2 * first.host_state["lambda"] + (1.0 - beta2) * gamma
        estimate = lam / (1.0 - beta2**k)
        switch = k > 1 and abs(estimate - gamma) < first.hyper["switch_tol"]
        for group in self._groups:
            host = group.host_state
            host["lambda"] = lam
            if switch:
                host.update(switched=1.0, switch_step=float(k), sgd_lr=estimate)

    # the Adam phase's pass (swats_adam), then lr; the SGD phase gives swats_sgd's own
    _scalar_names = (*_SWATS_ADAM.scalar_names[2:], "lr")

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        weight_decay = hyper["weight_decay"]
        if host["switched"]:
            ratio = lr / host["lr_at_switch"] if host["lr_at_switch"] > 0 else 1.0
            return _SWATS_SGD.named(weight_decay=weight_decay, beta1=beta1,
                                    nesterov=1.0 if hyper["nesterov"] else 0.0,
                                    step_size=(1.0 - beta1) * host["sgd_lr"] * ratio)
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        return named(weight_decay=weight_decay, one_minus_beta1=1.0 - beta1, beta2=beta2,
                     one_minus_beta2=1.0 - beta2, step_size=lr / bias_correction1,
                     inv_bias_correction2=1.0 / bias_correction2, eps=hyper["eps"], lr=lr)

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        # one pass: Adam phase read p, g, m, v, write p, m, v; SGD phase p, g, buffer
        if group.host_state["switched"]:
            return [(3, 2, group.numel)]
        return [(4, 3, group.numel)]

    def _run(self, group: Group, source: Any, scalars: tuple) -> None:
        _advance_key(group)
        segments = _whole(self, group)
        if group.host_state["switched"]:
            run(_variant(self, group, _SWATS_SGD), group, source, segments, None, scalars)
            return
        *args, lr = scalars
        group.host_state["lr_at_switch"] = lr  # the rate of the latest Adam step
        totals = _reduced(self, run(_variant(self, group, _SWATS_ADAM), group, source,
                                    segments, None, args))
        if self._sums_ready.get(id(totals)) is totals:
            _add_column_sums(totals, self._dots)
        else:  # (a cold start: NumPy while it compiles)
            self._sums_ready.call(totals, _add_column_sums, (totals, self._dots),
                                  _add_column_sums_numpy, totals, self._dots,
                                  self._stand_in_buffers)


@cached_njit(error_model="numpy")
def _add_column_sums(totals, out):
    """``out += totals.sum(axis=0)``: the rows added in order."""
    for k in range(totals.shape[1]):
        column = totals[0, k] if totals.shape[0] else 0.0
        for i in range(1, totals.shape[0]):
            column += totals[i, k]
        out[k] += column


def _add_column_sums_numpy(totals: np.ndarray, out: np.ndarray, buffers: dict) -> None:
    """:func:`_add_column_sums` in NumPy, the stand-in while it compiles in the
    background (its compilation would delay SWATS's cold first step): the rows
    added in order (``np.add.accumulate`` is sequential), so the same bits, into a
    buffer kept in ``buffers`` (:func:`_kept`) per ``totals`` array. Silent on inf and
    NaN, as the loop."""
    if len(totals):
        running = _kept(buffers, totals, lambda: np.empty_like(totals))
        with np.errstate(over="ignore", invalid="ignore"):
            np.add.accumulate(totals, axis=0, out=running)
            np.add(out, running[-1], out=out)
