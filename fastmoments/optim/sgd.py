"""SGD: stochastic gradient descent, with momentum and Nesterov momentum (torch.optim.SGD)."""

from __future__ import annotations

from typing import Any

from ..kernels import rules as _rules
from ..kernels.elementwise import Kernel
from .base import Optimizer

__all__ = ["SGD"]

_SGD = Kernel(_rules.sgd, ())
_SGD_MOMENTUM = Kernel(_rules.sgd_momentum, ("momentum_buffer",))


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum (torch.optim.SGD semantics).

    .. math::

        g_t &= \nabla f(\theta_{t-1}) + \lambda \theta_{t-1} \\
        b_t &= \mu b_{t-1} + (1 - \tau) g_t \quad (b_1 = g_1) \\
        \theta_t &= \theta_{t-1} - \gamma\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float, default 1e-3
        Learning rate :math:`\gamma` (or a schedule).
    momentum : float, default 0
        :math:`\mu`; 0 keeps no state.
    dampening : float, default 0
        :math:`\tau`.
    weight_decay : float, default 0
        L2 penalty :math:`\lambda`.
    nesterov : bool, default False
        Nesterov momentum (Sutskever et al., 2013); needs momentum > 0 and dampening 0.
    maximize : bool, default False
        Maximize the objective.

    References
    ----------
    Robbins & Monro (1951); Polyak (1964); Sutskever et al. (2013).
    """

    _nonneg = ("momentum", "dampening", "weight_decay")
    _bools = ("nesterov", "maximize")

    def __init__(self, params: Any, lr: Any = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), **options)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum > 0 and zero dampening")

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _SGD_MOMENTUM if hyper["momentum"] != 0 else _SGD

    _scalars_repeat = True  # no bias correction (see Optimizer._scalars_repeat)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        momentum = hyper["momentum"]
        if momentum == 0:
            return named(weight_decay=hyper["weight_decay"], lr=lr)
        first = step == 1  # the buffer starts as the gradient itself, as in torch
        return named(
            weight_decay=hyper["weight_decay"], lr=lr,
            buffer_decay=0.0 if first else momentum,
            grad_coef=1.0 if first else 1.0 - hyper["dampening"],
            nesterov=1.0 if hyper["nesterov"] else 0.0,
            momentum=momentum,
        )

