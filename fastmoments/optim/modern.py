r"""The rules since Adam's critics: ADOPT, AdEMAMix and Adan (Schedule-Free AdamW / SGD,
also of that family, are in :mod:`.schedulefree`).

Each follows its authors' reference code (keywords, defaults, what the first step
does); the pages ``docs/rules/*.md`` say where pytorch-optimizer, optax and the
papers differ. ``cautious=True`` (Liang et al., 2024) on ADOPT, AdEMAMix and Adan
masks the update where its sign disagrees with the gradient's and rescales each
tensor by ``numel / (agreeing + 1)``: two segmented passes (the state and the count of
agreeing elements per tensor, then the masked update) instead of one (see
:mod:`._cautious`, shared with Adam, AdamW and Lion).

Every class takes the options shared by all optimizers (``nonfinite``,
``max_grad_norm``, ``clip_value``, see :class:`fastmoments.optim.base.Optimizer`).
"""

from __future__ import annotations

import math
from typing import Any

from ..kernels import rules as _rules
from ..kernels.elementwise import Kernel
from ..kernels.segmented import SegmentedKernel
from ._cautious import Cautious, CautiousOption
from ._checks import check_number, is_number
from ._scalars import bias_corrections, weight_decay_terms

__all__ = ["ADOPT", "AdEMAMix", "Adan", "ademamix_alpha", "ademamix_beta3"]

_ADOPT_STATES = ("exp_avg", "exp_avg_sq")
_ADEMAMIX_STATES = ("exp_avg", "exp_avg_sq", "exp_avg_slow")
_ADAN_MOMENTS = ("exp_avg", "exp_avg_diff", "exp_avg_sq")
_ADAN_STATES = (*_ADAN_MOMENTS, "prev_grad")

_ADOPT = Kernel(_rules.adopt, _ADOPT_STATES)
_ADEMAMIX = Kernel(_rules.ademamix, _ADEMAMIX_STATES)
_ADAN = Kernel(_rules.adan, _ADAN_STATES)


# ---------------------------------------------------------------- cautious
_ADOPT_CAUTIOUS = Cautious(
    _ADOPT,
    SegmentedKernel(_rules.adopt_cautious_moments, _ADOPT_STATES, (), 1, _ADOPT_STATES),
    SegmentedKernel(_rules.adopt_cautious_apply, ("exp_avg",), ("scale",), 0, ("param",)),
)
_ADEMAMIX_CAUTIOUS = Cautious(
    _ADEMAMIX,
    SegmentedKernel(_rules.ademamix_cautious_moments, _ADEMAMIX_STATES, (), 1,
                    _ADEMAMIX_STATES),
    SegmentedKernel(_rules.ademamix_cautious_apply, _ADEMAMIX_STATES, ("scale",), 0,
                    ("param",)),
)
_ADAN_CAUTIOUS = Cautious(
    _ADAN,
    SegmentedKernel(_rules.adan_cautious_moments, _ADAN_STATES, (), 1, _ADAN_STATES),
    SegmentedKernel(_rules.adan_cautious_apply, _ADAN_MOMENTS, ("scale",), 0, ("param",)),
)


class _MaybeCautious(CautiousOption):
    """A rule with an element-wise kernel and a cautious variant (``_select`` picks)."""

    _bools = ("cautious", "maximize")
    _elementwise: Kernel
    _cautious: Cautious

    def _select(self, hyper: dict[str, Any]) -> Any:
        return self._cautious if hyper["cautious"] else self._elementwise


def _check_betas3(hyper: dict[str, Any], owner: str) -> None:
    betas = hyper["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise ValueError(f"{owner}: invalid betas: expected three (beta1, beta2, beta3), got "
                         f"{betas!r}")
    for i, b in enumerate(betas):
        if not is_number(b) or not 0.0 <= b < 1.0:
            raise ValueError(f"{owner}: invalid betas[{i}]: expected 0.0 <= betas[{i}] < 1.0, "
                             f"got {b!r}")


def _check_optional(hyper: dict[str, Any], key: str, owner: str) -> None:
    """``hyper[key]`` is None or a finite number >= 0."""
    if hyper[key] is not None:
        check_number(hyper, key, owner)


# ------------------------------------------------------------------- ADOPT
class ADOPT(_MaybeCautious):
    r"""ADOPT: Adam that converges for any :math:`\beta_2` (Taniguchi et al., 2024).

    With :math:`k = t - 1` the number of earlier steps:

    .. math::

        k = 0:&\quad v_1 = g_1^2 \quad \text{(nothing else moves)} \\
        k \ge 1:&\quad n_t = \operatorname{clip}\!\Big(\frac{g_t}
                  {\max(\sqrt{v_{t-1}}, \epsilon)}, -k^{c}, k^{c}\Big), \qquad
                  m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, n_t \\
        &\quad \theta_t = \theta_{t-1} - \gamma\, m_t, \qquad
                  v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2

    The gradient is normalized by the second moment of the *earlier* steps, before
    the momentum average; :math:`c` is ``clip_exponent``.

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-3
        :math:`\gamma`.
    betas : (float, float), default (0.9, 0.9999)
        :math:`(\beta_1, \beta_2)`.
    eps : float, default 1e-6
        :math:`\epsilon`, a floor on :math:`\sqrt{v}`.
    clip_exponent : float or None, default 0.25
        The clipping bound :math:`k^{c}` (the authors' ``clip_lambda = lambda step:
        step ** 0.25``); ``None`` does not clip (the paper's first version).
    weight_decay : float, default 0
        :math:`\lambda`: L2 (added to the gradient, at every step), or decoupled.
    decoupled_weight_decay : bool, default False
        :math:`\theta \leftarrow (1 - \gamma\lambda)\theta` before the update, from the
        second step on (the authors' ``decouple=True``).
    cautious : bool, default False
        Mask :math:`m_t` where its sign disagrees with :math:`g_t` (Liang et al., 2024).
    maximize : bool, default False

    Notes
    -----
    Follows the authors' code (``torch-adopt``): the clip bound is evaluated at
    :math:`k` (1 at the second step), as optax's ``contrib.adopt`` does;
    pytorch-optimizer 4.1 evaluates it at :math:`k + 1` and also decays decoupled
    weights at the first step. See ``docs/rules/adopt.md``.

    References
    ----------
    Taniguchi et al. (2024), ADOPT: Modified Adam Can Converge with Any :math:`\beta_2`
    with the Optimal Rate. NeurIPS. arXiv:2411.02853.
    """

    _nonneg = ("eps", "weight_decay")
    _bools = ("decoupled_weight_decay", "cautious", "maximize")
    _elementwise = _ADOPT
    _cautious = _ADOPT_CAUTIOUS

    def _count_reads_param(self, hyper: dict[str, Any]) -> bool:
        return hyper["weight_decay"] != 0 and not hyper["decoupled_weight_decay"]  # L2

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.9999),
                 eps: float = 1e-6, clip_exponent: float | None = 0.25,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                 cautious: bool = False, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, clip_exponent=clip_exponent,
                                      weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      cautious=cautious, maximize=maximize), **options)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        _check_optional(hyper, "clip_exponent", type(self).__name__)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        weight_decay, decay_factor = weight_decay_terms(hyper["weight_decay"], lr,
                                                        hyper["decoupled_weight_decay"])
        exponent = hyper["clip_exponent"]
        first = step == 1
        clip = math.inf if exponent is None or first else float(step - 1) ** exponent
        return named(weight_decay=weight_decay, decay_factor=decay_factor,
                     first_step=1.0 if first else 0.0, one_minus_beta1=1.0 - beta1, beta2=beta2,
                     one_minus_beta2=1.0 - beta2, lr=lr, eps=hyper["eps"], clip=clip)


# ---------------------------------------------------------------- AdEMAMix
def ademamix_alpha(step: int, alpha: float, t_alpha: float | None) -> float:
    r"""AdEMAMix's :math:`\alpha_t = \alpha \min(1, t / T_\alpha)` (``t`` from 1; no
    warm-up when ``t_alpha`` is None or 0)."""
    if not t_alpha:
        return alpha
    return min(step * alpha / t_alpha, alpha)


def ademamix_beta3(step: int, beta1: float, beta3: float, t_beta3: float | None) -> float:
    r"""AdEMAMix's :math:`\beta_3(t)` (``t`` from 1): the half-life
    :math:`\ln(1/2)/\ln\beta` moves linearly from :math:`\beta_1`'s at :math:`t = 0` to
    :math:`\beta_3`'s at :math:`t = T_{\beta_3}`, then stays (the paper's formula,
    :math:`\exp(\ln\beta_1 \ln\beta_3 / ((1 - a)\ln\beta_3 + a\ln\beta_1))`,
    :math:`a = t / T_{\beta_3}`; :math:`\beta_3^{1/a}` when :math:`\beta_1 = 0`)."""
    if not t_beta3 or step >= t_beta3:
        return beta3
    a = step / t_beta3
    if beta3 == 0.0:
        return 0.0
    if beta1 == 0.0:
        return beta3 ** (1.0 / a)
    log1, log3 = math.log(beta1), math.log(beta3)
    return math.exp(log1 * log3 / ((1.0 - a) * log3 + a * log1))


class AdEMAMix(_MaybeCautious):
    r"""AdEMAMix: Adam with a fast and a slow momentum mixed (Pagliardini et al., 2024).

    .. math::

        m_{1,t} &= \beta_1 m_{1,t-1} + (1 - \beta_1) g_t, \qquad
        m_{2,t} = \beta_3(t)\, m_{2,t-1} + (1 - \beta_3(t))\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma \left( \frac{m_{1,t} / (1 - \beta_1^t)
                    + \alpha_t\, m_{2,t}}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
                    + \lambda \theta_{t-1} \right)

    with :math:`\alpha_t = \alpha \min(1, t/T_\alpha)` and :math:`\beta_3(t)` warmed up
    from :math:`\beta_1` to :math:`\beta_3` linearly in half-life over :math:`T_{\beta_3}`
    steps (:func:`ademamix_alpha`, :func:`ademamix_beta3`).

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-3
    betas : (float, float, float), default (0.9, 0.999, 0.9999)
        :math:`(\beta_1, \beta_2, \beta_3)`.
    alpha : float, default 5.0
        :math:`\alpha`, the weight of the slow EMA.
    t_alpha, t_beta3 : float or None, default None
        The warm-up lengths :math:`T_\alpha`, :math:`T_{\beta_3}` (None: constant); the
        paper sets both to the length of training.
    eps : float, default 1e-8
    weight_decay : float, default 0
        :math:`\lambda`, decoupled (AdamW's), scaled by :math:`\gamma`.
    cautious : bool, default False
        Mask the mixed update where its sign disagrees with :math:`g_t`.
    maximize : bool, default False

    Notes
    -----
    Follows the paper and the authors' code (``apple/ml-ademamix``) at step :math:`t`,
    without the ``1e-8`` their PyTorch code adds inside the logarithm of the
    :math:`\beta_3` warm-up (which moves :math:`\beta_3(t)` by about 2e-7); optax
    evaluates the schedules at :math:`t - 1`, pytorch-optimizer couples the weight decay
    by default and masks only :math:`m_1` when cautious. See ``docs/rules/ademamix.md``.

    References
    ----------
    Pagliardini, Ablin & Grangier (2024), The AdEMAMix Optimizer: Better, Faster, Older.
    arXiv:2409.03137.
    """

    _nonneg = ("alpha", "eps", "weight_decay")
    _elementwise = _ADEMAMIX
    _cautious = _ADEMAMIX_CAUTIOUS

    def _count_reads_param(self, hyper: dict[str, Any]) -> bool:
        return False  # decoupled decay only

    def __init__(self, params: Any, lr: Any = 1e-3,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.9999), alpha: float = 5.0,
                 t_alpha: float | None = None, t_beta3: float | None = None, eps: float = 1e-8,
                 weight_decay: float = 0.0, *, cautious: bool = False, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha,
                                      t_beta3=t_beta3, eps=eps, weight_decay=weight_decay,
                                      cautious=cautious, maximize=maximize), **options)

    def _check(self, hyper: dict[str, Any]) -> None:
        owner = type(self).__name__
        super()._check({k: v for k, v in hyper.items() if k != "betas"})
        _check_betas3(hyper, owner)
        _check_optional(hyper, "t_alpha", owner)
        _check_optional(hyper, "t_beta3", owner)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2, beta3 = hyper["betas"]
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        beta3_t = ademamix_beta3(step, beta1, beta3, hyper["t_beta3"])
        return named(decay_factor=1.0 - lr * hyper["weight_decay"],
                     one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                     one_minus_beta3=1.0 - beta3_t,
                     inv_bias_correction1=1.0 / bias_correction1,
                     inv_bias_correction2=1.0 / bias_correction2,
                     alpha=ademamix_alpha(step, hyper["alpha"], hyper["t_alpha"]), lr=lr,
                     eps=hyper["eps"])


# -------------------------------------------------------------------- Adan
class Adan(_MaybeCautious):
    r"""Adan: adaptive Nesterov momentum through gradient differences (Xie et al., 2022).

    In the betas of the authors' code (the paper's are :math:`1 - \beta_i`), with
    :math:`d_t = g_t - g_{t-1}` and :math:`d_1 = 0`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        \delta_t = \beta_2 \delta_{t-1} + (1 - \beta_2) d_t \\
        n_t &= \beta_3 n_{t-1} + (1 - \beta_3) (g_t + \beta_2 d_t)^2 \\
        u_t &= \frac{m_t / (1 - \beta_1^t) + \beta_2\, \delta_t / (1 - \beta_2^t)}
                    {\sqrt{n_t / (1 - \beta_3^t)} + \epsilon}, \qquad
        \theta_t = \frac{\theta_{t-1} - \gamma u_t}{1 + \gamma\lambda}

    or, with ``no_prox=True``, :math:`\theta_t = (1 - \gamma\lambda)\theta_{t-1} -
    \gamma u_t`.

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-3
    betas : (float, float, float), default (0.98, 0.92, 0.99)
        :math:`(\beta_1, \beta_2, \beta_3)`.
    eps : float, default 1e-8
    weight_decay : float, default 0
        :math:`\lambda` (the paper uses 0.02).
    no_prox : bool, default False
        Decay before the update (AdamW's) instead of the proximal division after it.
    cautious : bool, default False
        Mask :math:`u_t` where its sign disagrees with :math:`g_t`.
    maximize : bool, default False

    Notes
    -----
    Follows the authors' code (``sail-sg/Adan``), as pytorch-optimizer 4.1 does
    (``weight_decouple`` = ``no_prox``); optax's ``adan`` weights the difference by
    :math:`1 - \beta_2`. State: ``exp_avg``, ``exp_avg_diff``, ``exp_avg_sq`` and
    ``prev_grad`` (the last gradient, after clipping). See ``docs/rules/adan.md``.

    References
    ----------
    Xie, Zhou, Li, Lin & Yan (2024), Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models. IEEE TPAMI. arXiv:2208.06677.
    """

    _bools = ("no_prox", "cautious", "maximize")
    _elementwise = _ADAN
    _cautious = _ADAN_CAUTIOUS

    def _count_reads_param(self, hyper: dict[str, Any]) -> bool:
        return False  # decoupled or proximal decay only

    def __init__(self, params: Any, lr: Any = 1e-3,
                 betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, no_prox: bool = False, *, cautious: bool = False,
                 maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      no_prox=no_prox, cautious=cautious, maximize=maximize),
                         **options)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check({k: v for k, v in hyper.items() if k != "betas"})
        _check_betas3(hyper, type(self).__name__)

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2, beta3 = hyper["betas"]
        decay = lr * hyper["weight_decay"]
        no_prox = hyper["no_prox"]
        return named(first_step=1.0 if step == 1 else 0.0, one_minus_beta1=1.0 - beta1, beta2=beta2,
                     one_minus_beta2=1.0 - beta2, beta3=beta3, one_minus_beta3=1.0 - beta3,
                     inv_bias_correction1=1.0 / (1.0 - beta1**step),
                     diff_coef=beta2 / (1.0 - beta2**step),
                     inv_bias_correction3=1.0 / (1.0 - beta3**step), eps=hyper["eps"], lr=lr,
                     decay_factor=1.0 - decay if no_prox else 1.0,
                     prox_divisor=1.0 if no_prox else 1.0 + decay)
