"""Adam's variants outside torch.optim: Yogi, AdaBelief and Lion.

Yogi and AdaBelief change Adam's second moment; Lion keeps one momentum and steps by its
sign. ``cautious=True`` on Lion (C-Lion, Liang et al., 2024) runs the rule as two
segmented passes (see :mod:`._cautious`); the default keeps the single fused pass.
"""

from __future__ import annotations

from typing import Any

from ..kernels import rules as _rules
from ..kernels.elementwise import Kernel
from ..kernels.segmented import SegmentedKernel
from ._cautious import Cautious, CautiousOption
from ._scalars import bias_corrections, weight_decay_terms
from .base import Optimizer
from .multipass import init_second_moment

__all__ = ["Yogi", "AdaBelief", "Lion"]

_YOGI = Kernel(_rules.yogi, ("exp_avg", "exp_avg_sq"))
_ADABELIEF = Kernel(_rules.adabelief, ("exp_avg", "exp_avg_var"))
_ADABELIEF_AMSGRAD = Kernel(_rules.adabelief_amsgrad,
                            ("exp_avg", "exp_avg_var", "max_exp_avg_var"))
_LION = Kernel(_rules.lion, ("exp_avg",))

# cautious=True (C-Lion): a pass that counts the agreeing elements of each tensor (reads g
# and exp_avg; stores nothing), then the rule with the masked update
_LION_CAUTIOUS = Cautious(
    _LION,
    SegmentedKernel(_rules.lion_cautious_count, ("exp_avg",), (), 1, ()),
    SegmentedKernel(_rules.lion_cautious_apply, ("exp_avg",), ("scale",), 0,
                    ("param", "exp_avg")))


# -------------------------------------------------------------------- Yogi
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

        Notes
        -----
        With reduced-precision storage (``state_dtype``, 16-bit parameters) the mean is
        taken in float64 on the host and stored rounded to nearest, as loading a state
        dict stores values.
        """
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
