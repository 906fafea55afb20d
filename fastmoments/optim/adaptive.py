"""The per-coordinate step sizes before Adam: Adagrad, RMSprop and Adadelta (torch.optim's)."""

from __future__ import annotations

from typing import Any

from ..kernels import rules as _rules
from ..kernels.elementwise import Kernel
from ._checks import check_number
from .base import Optimizer

__all__ = ["Adagrad", "RMSprop", "Adadelta"]

_ADAGRAD = Kernel(_rules.adagrad, ("sum",))
_RMSPROP = {
    (False, False): Kernel(_rules.rmsprop, ("square_avg",)),
    (True, False): Kernel(_rules.rmsprop_centered, ("square_avg", "grad_avg")),
    (False, True): Kernel(_rules.rmsprop_momentum, ("square_avg", "momentum_buffer")),
    (True, True): Kernel(
        _rules.rmsprop_centered_momentum, ("square_avg", "grad_avg", "momentum_buffer")
    ),
}
_ADADELTA = Kernel(_rules.adadelta, ("square_avg", "acc_delta"))


# ---------------------------------------------------------------- Adagrad
class Adagrad(Optimizer):
    r"""Adagrad (torch.optim.Adagrad semantics).

    .. math::

        g_t &= \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        \tilde\gamma = \gamma / (1 + (t - 1)\,\eta) \\
        s_t &= s_{t-1} + g_t^2 \quad (s_0 = \text{initial\_accumulator\_value}) \\
        \theta_t &= \theta_{t-1} - \tilde\gamma\, g_t / (\sqrt{s_t} + \epsilon)

    Defaults: lr=1e-2, lr_decay :math:`\eta` = 0, weight_decay=0,
    initial_accumulator_value=0, eps=1e-10.

    References
    ----------
    Duchi, Hazan & Singer (2011), Adaptive Subgradient Methods. JMLR 12.
    """

    _nonneg = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, params: Any, lr: Any = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _ADAGRAD

    def _initial(self, hyper: dict[str, Any]) -> dict[str, float]:
        return {"sum": hyper["initial_accumulator_value"]}

    _scalars_repeat = True  # no bias correction (see Optimizer._scalars_repeat)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        clr = lr / (1.0 + (step - 1) * hyper["lr_decay"])
        return named(weight_decay=hyper["weight_decay"], clr=clr, eps=hyper["eps"])


# ---------------------------------------------------------------- RMSprop
class RMSprop(Optimizer):
    r"""RMSprop (torch.optim.RMSprop semantics).

    .. math::

        v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2, \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \ \text{(centered)} \\
        d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \ \text{(centered) or } \sqrt{v_t} + \epsilon \\
        b_t &= \mu b_{t-1} + g_t / d_t, \qquad \theta_t = \theta_{t-1} - \gamma b_t
        \quad (\mu > 0;\ \text{else } \theta_t = \theta_{t-1} - \gamma g_t / d_t)

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False.

    References
    ----------
    Hinton, Lecture 6e of "Neural Networks for Machine Learning" (2012);
    Graves (2013), Generating Sequences With Recurrent Neural Networks (centered form).
    """

    _nonneg = ("alpha", "eps", "weight_decay", "momentum")
    _bools = ("centered", "maximize")

    def __init__(self, params: Any, lr: Any = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize),
                         **options)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        check_number(hyper, "alpha", "RMSprop", 0.0, 1.0, high_open=False)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _RMSPROP[(hyper["centered"], hyper["momentum"] > 0)]

    _scalars_repeat = True  # no bias correction (see Optimizer._scalars_repeat)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        alpha = hyper["alpha"]
        if hyper["momentum"] > 0:
            return named(weight_decay=hyper["weight_decay"], lr=lr, alpha=alpha,
                         one_minus_alpha=1.0 - alpha, eps=hyper["eps"],
                         momentum=hyper["momentum"])
        return named(weight_decay=hyper["weight_decay"], lr=lr, alpha=alpha,
                     one_minus_alpha=1.0 - alpha, eps=hyper["eps"])


# --------------------------------------------------------------- Adadelta
class Adadelta(Optimizer):
    r"""Adadelta (torch.optim.Adadelta semantics).

    .. math::

        v_t &= \rho v_{t-1} + (1 - \rho) g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t, \qquad
        u_t = \rho u_{t-1} + (1 - \rho) \Delta_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma \Delta_t

    Defaults: lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.

    References
    ----------
    Zeiler (2012), ADADELTA: An Adaptive Learning Rate Method. arXiv:1212.5701.
    """

    _nonneg = ("rho", "eps", "weight_decay")

    def __init__(self, params: Any, lr: Any = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **options)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        check_number(hyper, "rho", "Adadelta", 0.0, 1.0, high_open=False)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _ADADELTA

    _scalars_repeat = True  # no bias correction (see Optimizer._scalars_repeat)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        rho = hyper["rho"]
        return named(weight_decay=hyper["weight_decay"], lr=lr, rho=rho, one_minus_rho=1.0 - rho,
                     eps=hyper["eps"])

