"""Adam and its torch.optim relatives: Adam, AdamW, Adamax, NAdam and RAdam.

``cautious=True`` on Adam and AdamW (C-Adam, Liang et al., 2024) runs the rule as two
segmented passes (see :mod:`._cautious`); the default keeps the single fused pass.
"""

from __future__ import annotations

import math
from typing import Any

from ..kernels import rules as _rules
from ..kernels.elementwise import Kernel
from ..kernels.segmented import SegmentedKernel
from ._cautious import Cautious, CautiousOption
from ._scalars import bias_corrections, weight_decay_terms
from .base import Optimizer

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam"]

_ADAM = Kernel(_rules.adam, ("exp_avg", "exp_avg_sq"))
_ADAM_AMSGRAD = Kernel(_rules.adam_amsgrad, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
_ADAMAX = Kernel(_rules.adamax, ("exp_avg", "exp_inf"))
_NADAM = Kernel(_rules.nadam, ("exp_avg", "exp_avg_sq"))
_RADAM = Kernel(_rules.radam, ("exp_avg", "exp_avg_sq"))

# cautious=True (C-AdamW): a pass that counts the agreeing elements of each tensor
# (reads g and exp_avg, and p for Adam's L2 decay; stores nothing), then the rule with the
# masked update
_ADAM_CAUTIOUS_COUNT = SegmentedKernel(_rules.adam_cautious_count, ("exp_avg",), (), 1, ())
_ADAM_CAUTIOUS = Cautious(
    _ADAM, _ADAM_CAUTIOUS_COUNT,
    SegmentedKernel(_rules.adam_cautious_apply, _ADAM.state_names, ("scale",), 0,
                    ("param", *_ADAM.state_names)))
_ADAM_AMSGRAD_CAUTIOUS = Cautious(
    _ADAM_AMSGRAD, _ADAM_CAUTIOUS_COUNT,
    SegmentedKernel(_rules.adam_amsgrad_cautious_apply, _ADAM_AMSGRAD.state_names, ("scale",),
                    0, ("param", *_ADAM_AMSGRAD.state_names)))


class Adam(CautiousOption):
    r"""Adam (torch.optim.Adam semantics), with AMSGrad, optax's ``eps_root`` and C-Adam.

    .. math::

        g_t &= \nabla f(\theta_{t-1}) + \lambda \theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{(amsgrad) or } v_t \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
                    \frac{m_t}{\sqrt{\hat v_t / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon}

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
        Added outside the square root (torch); see ``eps_root`` for inside.
    weight_decay : float, default 0
        L2 penalty added to the gradient (use :class:`AdamW` for decoupled decay).
    amsgrad : bool, default False
        Use the running maximum of :math:`v_t` (Reddi et al., 2018).
    maximize : bool, default False
    eps_root : float, default 0
        optax's epsilon inside the square root.
    amsgrad_bias_correction : bool, default True
        False gives AMSGrad in Reddi et al.'s original form: no bias correction of
        either moment (torch and optax bias-correct).
    cautious : bool, default False
        C-Adam (Liang et al., 2024): the update is masked where its sign (that of
        :math:`m_t`) disagrees with :math:`g_t` and each tensor's rest scaled by
        ``numel / (agreeing + 1)``; the decay of :class:`AdamW` is not masked. Two
        passes over the buffers instead of one; see ``docs/rules/cautious.md``.

    References
    ----------
    Kingma & Ba (2015), Adam: A Method for Stochastic Optimization. ICLR.
    Reddi, Kale & Kumar (2018), On the Convergence of Adam and Beyond. ICLR.
    Liang, Chen, Liu & Liu (2024), Cautious Optimizers: Improving Training with One Line
    of Code. arXiv:2411.16085.
    """

    _nonneg = ("eps", "weight_decay", "eps_root")
    _bools = ("amsgrad", "maximize", "amsgrad_bias_correction", "cautious")
    _decoupled = False

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, eps_root: float = 0.0,
                 amsgrad_bias_correction: bool = True, cautious: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, eps_root=eps_root,
                                      amsgrad_bias_correction=amsgrad_bias_correction,
                                      cautious=cautious),
                         **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel | Cautious:
        if hyper["cautious"]:
            return _ADAM_AMSGRAD_CAUTIOUS if hyper["amsgrad"] else _ADAM_CAUTIOUS
        return _ADAM_AMSGRAD if hyper["amsgrad"] else _ADAM

    def _count_reads_param(self, hyper: dict[str, Any]) -> bool:
        return not self._decoupled and hyper["weight_decay"] != 0  # L2 in the gradient

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        if hyper["amsgrad"] and not hyper["amsgrad_bias_correction"]:
            bias_correction1 = bias_correction2 = 1.0
        else:
            bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        weight_decay, decay_factor = weight_decay_terms(hyper["weight_decay"], lr,
                                                        self._decoupled)
        return named(weight_decay=weight_decay, decay_factor=decay_factor,
                     one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                     step_size=lr / bias_correction1,
                     inv_bias_correction2=1.0 / bias_correction2, eps_root=hyper["eps_root"],
                     eps=hyper["eps"])


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (torch.optim.AdamW semantics).

    .. math::

        \theta_t = (1 - \gamma\lambda)\,\theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
                   \frac{m_t}{\sqrt{\hat v_t / (1 - \beta_2^t)} + \epsilon}

    with :math:`m_t, \hat v_t` as in :class:`Adam` (no decay in the gradient).
    Defaults as Adam except weight_decay=1e-2; ``cautious=True`` is C-AdamW (the
    update masked, not the decay).

    References
    ----------
    Loshchilov & Hutter (2019), Decoupled Weight Decay Regularization. ICLR.
    """

    _decoupled = True

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, eps_root: float = 0.0,
                 amsgrad_bias_correction: bool = True, cautious: bool = False,
                 **options: Any) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         eps_root=eps_root, amsgrad_bias_correction=amsgrad_bias_correction,
                         cautious=cautious, **options)


class Adamax(Optimizer):
    r"""Adamax, Adam with the infinity norm (torch.optim.Adamax semantics).

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \frac{m_t}{u_t}

    Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2).

    References
    ----------
    Kingma & Ba (2015), Adam, section 7.1.
    """

    def __init__(self, params: Any, lr: Any = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _ADAMAX

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        return named(weight_decay=hyper["weight_decay"], one_minus_beta1=1.0 - beta1,
                     beta2=beta2, eps=hyper["eps"], clr=lr / (1.0 - beta1**step))


class NAdam(Optimizer):
    r"""NAdam, Adam with Nesterov momentum (torch.optim.NAdam semantics).

    .. math::

        \mu_t &= \beta_1 \left(1 - \tfrac12\, 0.96^{t \psi}\right), \qquad
        \Pi_t = \textstyle\prod_{i \le t} \mu_i \\
        \theta_t &= \theta_{t-1}
            - \gamma \frac{1 - \mu_t}{1 - \Pi_t} \frac{g_t}{\sqrt{\hat v_t} + \epsilon}
            - \gamma \frac{\mu_{t+1}}{1 - \Pi_{t+1}} \frac{m_t}{\sqrt{\hat v_t} + \epsilon}

    with :math:`\hat v_t = v_t / (1 - \beta_2^t)` and :math:`\psi` = momentum_decay.
    Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    momentum_decay=4e-3, decoupled_weight_decay=False.

    References
    ----------
    Dozat (2016), Incorporating Nesterov Momentum into Adam. ICLR workshop.
    """

    _nonneg = ("eps", "weight_decay", "momentum_decay")
    _bools = ("decoupled_weight_decay", "maximize")

    def __init__(self, params: Any, lr: Any = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _NADAM

    def _initial_host_state(self, hyper: dict[str, Any]) -> dict[str, float]:
        return {"mu_product": 1.0}

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        psi = hyper["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
        mu_product = host["mu_product"] * mu
        host["mu_product"] = mu_product
        weight_decay, decay_factor = weight_decay_terms(hyper["weight_decay"], lr,
                                                        hyper["decoupled_weight_decay"])
        return named(weight_decay=weight_decay, decay_factor=decay_factor,
                     one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                     inv_bias_correction2=1.0 / (1.0 - beta2**step), eps=hyper["eps"],
                     grad_coef=lr * (1.0 - mu) / (1.0 - mu_product),
                     exp_avg_coef=lr * mu_next / (1.0 - mu_product * mu_next))


class RAdam(Optimizer):
    r"""RAdam, rectified Adam (torch.optim.RAdam semantics).

    .. math::

        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t} m_t \cdot
        \begin{cases}
            r_t \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon} & \rho_t > 5 \\
            1 & \text{otherwise}
        \end{cases}, \qquad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
                          {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    decoupled_weight_decay=False.

    References
    ----------
    Liu et al. (2020), On the Variance of the Adaptive Learning Rate and Beyond. ICLR.
    """

    _bools = ("decoupled_weight_decay", "maximize")

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _RADAM

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * step * beta2**step / bias_correction2
        weight_decay, decay_factor = weight_decay_terms(hyper["weight_decay"], lr,
                                                        hyper["decoupled_weight_decay"])
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                             / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            rectified, step_size = 1.0, lr * rect * math.sqrt(bias_correction2) / bias_correction1
        else:
            rectified, step_size = 0.0, lr / bias_correction1
        return named(weight_decay=weight_decay, decay_factor=decay_factor,
                     one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                     eps=hyper["eps"], rectified=rectified, step_size=step_size)

