"""The optimizers: thin classes that validate, keep state and compute host scalars.

Every class takes torch.optim's name, keywords and defaults. The math of each rule
lives in ``_rules`` (one function for the CPU loop and the CUDA kernel); here the
per-step scalars (bias corrections, step sizes) are computed on the host in float64.

Options shared by every optimizer (keyword-only):

- ``nonfinite``: ``"apply"`` (default, as torch), ``"skip"`` (skip the whole step when
  a gradient has NaN/Inf; ``skipped_steps`` counts them) or ``"raise"``
  (``FloatingPointError``, nothing changed);
- ``max_grad_norm``: clip the global gradient norm (as ``clip_grad_norm_``), fused;
- ``clip_value``: clip each gradient element to ``[-clip_value, clip_value]``;
- ``state_dtype``: ``None`` (the parameters' dtype; float32 for 16-bit parameters),
  ``"bfloat16"``, ``"int8"`` (blockwise) or ``"float32"`` (under float64 parameters);
  ``state_rounding``: ``"auto"`` (second moments stochastic, others nearest),
  ``"nearest"``, ``"stochastic"`` or a dict per state; ``seed`` of the stochastic
  rounding; ``master_weights``: a float32 copy of float16 / bfloat16 parameters (default
  True for them; False rounds the parameters stochastically). See docs/precision.md.

``cautious=True`` on Adam, AdamW and Lion (Liang et al., 2024) runs the rule as two
segmented passes (see :mod:`._cautious`); the default keeps the single fused pass.
"""

from __future__ import annotations

import math
from typing import Any

from ..kernels import rules as _rules
from ..kernels.elementwise import Kernel
from ..kernels.segmented import SegmentedKernel
from ._cautious import Cautious, CautiousOption
from ._checks import check_number
from ._scalars import bias_corrections, weight_decay_terms
from .base import Optimizer
from .multipass import init_second_moment

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam",
    "Yogi",
]

_SGD = Kernel(_rules.sgd, ())
_SGD_MOMENTUM = Kernel(_rules.sgd_momentum, ("momentum_buffer",))
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
_ADAM = Kernel(_rules.adam, ("exp_avg", "exp_avg_sq"))
_ADAM_AMSGRAD = Kernel(_rules.adam_amsgrad, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
_ADAMAX = Kernel(_rules.adamax, ("exp_avg", "exp_inf"))
_NADAM = Kernel(_rules.nadam, ("exp_avg", "exp_avg_sq"))
_RADAM = Kernel(_rules.radam, ("exp_avg", "exp_avg_sq"))
_YOGI = Kernel(_rules.yogi, ("exp_avg", "exp_avg_sq"))
_ADABELIEF = Kernel(_rules.adabelief, ("exp_avg", "exp_avg_var"))
_ADABELIEF_AMSGRAD = Kernel(_rules.adabelief_amsgrad,
                            ("exp_avg", "exp_avg_var", "max_exp_avg_var"))
_LION = Kernel(_rules.lion, ("exp_avg",))

# cautious=True (C-AdamW, C-Lion): a pass that counts the agreeing elements of each tensor
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
_LION_CAUTIOUS = Cautious(
    _LION,
    SegmentedKernel(_rules.lion_cautious_count, ("exp_avg",), (), 1, ()),
    SegmentedKernel(_rules.lion_cautious_apply, ("exp_avg",), ("scale",), 0,
                    ("param", "exp_avg")))


# -------------------------------------------------------------------- SGD
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


# ------------------------------------------------------------ Adam family
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


class Yogi(Optimizer):
    r"""Yogi (optax / torch-optimizer semantics, bias-corrected).

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= v_{t-1} - (1 - \beta_2)\,\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2 \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}
                    \frac{m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    Both moments start at ``initial_accumulator_value``. Unlike Adam, :math:`v_t`
    changes additively and by at most :math:`(1-\beta_2) g_t^2`, so it cannot forget
    large past gradients within a few steps.

    Defaults: lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6,
    weight_decay=0 (L2).

    Zaheer et al. recommend initializing the second moment from the squared
    gradients of a batch larger than the training batch instead of from a constant:
    :meth:`init_second_moment` does that before the first step,

    .. math::

        v_0 = \frac{1}{K} \sum_{k=1}^{K} (g^{(k)} + \lambda\theta_0)^2

    for K gradients :math:`g^{(k)}` at the initial point. As :math:`v_0` is then an
    estimate, not a near-zero start, :math:`v_t` is no longer divided by
    :math:`1 - \beta_2^t`; :math:`m_t` still is bias-corrected.

    References
    ----------
    Zaheer, Reddi, Sachan, Kale & Kumar (2018), Adaptive Methods for Nonconvex
    Optimization. NeurIPS.
    """

    _nonneg = ("eps", "weight_decay", "initial_accumulator_value")

    def __init__(self, params: Any, lr: Any = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-3, initial_accumulator_value: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      initial_accumulator_value=initial_accumulator_value,
                                      weight_decay=weight_decay, maximize=maximize), **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _YOGI

    def _initial(self, hyper: dict[str, Any]) -> dict[str, float]:
        value = hyper["initial_accumulator_value"]
        return {"exp_avg": value, "exp_avg_sq": value}

    def _initial_host_state(self, hyper: dict[str, Any]) -> dict[str, float]:
        return {"second_moment_initialized": 0.0}

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        inv_bias_correction2 = (
            1.0 if host["second_moment_initialized"] else 1.0 / (1.0 - beta2**step)
        )
        return named(weight_decay=hyper["weight_decay"], one_minus_beta1=1.0 - beta1,
                     one_minus_beta2=1.0 - beta2, step_size=lr / (1.0 - beta1**step),
                     inv_bias_correction2=inv_bias_correction2, eps=hyper["eps"])

    def init_second_moment(self, *grads: Any) -> None:
        """Set :math:`v_0` to the mean of the squared gradients, before the first step.

        Parameters
        ----------
        *grads
            One or more gradients at the initial parameters, each in the form
            :meth:`step` accepts (one per parameter, or a flat array / None for a
            FlatParams). They are not unscaled, clipped or negated (squares).

        Raises
        ------
        RuntimeError
            After the first step.
        ValueError
            With reduced-precision storage (``state_dtype``, 16-bit parameters).
        """
        if any(group.precision is not None for group in self._groups):
            raise ValueError("Yogi.init_second_moment: not supported with state_dtype="
                             f"{self.state_dtype!r} or 16-bit parameters yet")
        init_second_moment(self, grads)


# --------------------------------------------------------------- AdaBelief
class AdaBelief(Optimizer):
    r"""AdaBelief: Adam with the "belief" in the gradient as second moment.

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2) (g_t - m_t)^2 + \epsilon, \qquad
        \hat s_t = \max(\hat s_{t-1}, s_t) \ \text{(amsgrad) or } s_t \\
        \theta_t &= (1 - \gamma\lambda)\,\theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
                    \frac{m_t}{\sqrt{\hat s_t / (1 - \beta_2^t)} + \epsilon}

    (with ``decoupled_weight_decay=False``: :math:`g_t \leftarrow g_t + \lambda
    \theta_{t-1}` instead of the factor :math:`1 - \gamma\lambda`).

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-16
        Added to :math:`s_t` in the state on every step *and* outside the square
        root, as in adabelief-pytorch 0.2 and pytorch-optimizer.
    weight_decay : float, default 0
    amsgrad : bool, default False
        Use the running maximum of :math:`s_t` (which includes eps).
    decoupled_weight_decay : bool, default True
        Decoupled decay (adabelief-pytorch's ``weight_decouple=True,
        fixed_decay=False``); False adds an L2 term to the gradient.
    maximize : bool, default False

    Notes
    -----
    The trajectory of adabelief-pytorch 0.2 with ``rectify=False`` (its default,
    ``rectify=True``, adds RAdam's rectification, not implemented here), of
    pytorch-optimizer's ``AdaBelief`` and of optax's ``adabelief`` with
    ``eps_root=eps`` (optax's name for the eps accumulated in the state; both
    default to 1e-16 there, so the defaults agree).

    References
    ----------
    Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan (2020), AdaBelief
    Optimizer: Adapting Stepsizes by the Belief in Observed Gradients. NeurIPS.
    """

    _bools = ("amsgrad", "decoupled_weight_decay", "maximize")

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0, amsgrad: bool = False,
                 decoupled_weight_decay: bool = True, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        return _ADABELIEF_AMSGRAD if hyper["amsgrad"] else _ADABELIEF

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        weight_decay, decay_factor = weight_decay_terms(hyper["weight_decay"], lr,
                                                        hyper["decoupled_weight_decay"])
        return named(weight_decay=weight_decay, decay_factor=decay_factor,
                     one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                     step_size=lr / bias_correction1,
                     inv_bias_correction2=1.0 / bias_correction2, eps=hyper["eps"])


# -------------------------------------------------------------------- Lion
class Lion(CautiousOption):
    r"""Lion: the sign of an interpolated momentum (Chen et al., 2023).

    .. math::

        c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        \theta_t &= (1 - \gamma\lambda)\,\theta_{t-1} - \gamma\, \operatorname{sign}(c_t) \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Every coordinate moves by exactly :math:`\gamma` (or not at all where
    :math:`c_t = 0`), so Lion wants a learning rate 3-10x smaller than AdamW's
    and a weight decay 3-10x larger for the same effective decay.

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-4
    betas : (float, float), default (0.9, 0.99)
    weight_decay : float, default 0
        Decoupled, scaled by the learning rate.
    cautious : bool, default False
        C-Lion (Liang et al., 2024): no step where :math:`\operatorname{sign}(c_t)`
        disagrees with :math:`g_t`, and each tensor's other steps scaled by
        ``numel / (agreeing + 1)``; the decay is not masked. Two passes over the
        buffers instead of one; see ``docs/rules/cautious.md``.
    maximize : bool, default False

    Notes
    -----
    The trajectory of lion-pytorch (same defaults) and of optax's ``lion`` (whose
    default ``weight_decay`` is 1e-3). One state buffer, ``exp_avg``. With
    ``cautious=True``, the trajectory of pytorch-optimizer 4.1's ``Lion(cautious=True)``.

    References
    ----------
    Chen et al. (2023), Symbolic Discovery of Optimization Algorithms. NeurIPS.
    Liang, Chen, Liu & Liu (2024), Cautious Optimizers: Improving Training with One Line
    of Code. arXiv:2411.16085.
    """

    _nonneg = ("weight_decay",)
    _bools = ("cautious", "maximize")

    def __init__(self, params: Any, lr: Any = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, cautious: bool = False, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      cautious=cautious, maximize=maximize), **options)

    def _select(self, hyper: dict[str, Any]) -> Kernel | Cautious:
        return _LION_CAUTIOUS if hyper["cautious"] else _LION

    def _count_reads_param(self, hyper: dict[str, Any]) -> bool:
        return False  # the sign of c: the gradient and the momentum

    _scalars_repeat = True  # no bias correction (see Optimizer._scalars_repeat)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        _, decay_factor = weight_decay_terms(hyper["weight_decay"], lr, True)
        return named(decay_factor=decay_factor, lr=lr, beta1=beta1, one_minus_beta1=1.0 - beta1,
                     beta2=beta2, one_minus_beta2=1.0 - beta2)
