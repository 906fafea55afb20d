"""Plain-NumPy references for the rules that came after Adam's critics.

ADOPT, AdEMAMix, Schedule-Free AdamW / SGD, Adan and the cautious mask (also on
Adam, AdamW and Lion: C-AdamW and C-Lion), written
from the papers' algorithm boxes, one NumPy operation per line, with the
conventions and defaults of each rule's *authors' reference code* (named in each
docstring).  Where another implementation (pytorch-optimizer 4.1, optax 0.2.8)
chooses differently, the docstring says so; ``tests/test_reference_modern.py``
checks the trajectories against those packages wherever the math is the same.

Same interface as :mod:`reference`::

    opt = ADOPT([p0, p1, ...], lr=..., ...)
    opt.step([g0, g1, ...])     # updates each params[i] in place

``params`` is a list of ``np.ndarray`` (float64 in the tests); state is kept in
list attributes (``self.m[i]``...), ``self.t`` counts the ``step`` calls, and
``maximize=True`` negates the gradient before anything else.
"""

from __future__ import annotations

import math

import numpy as np

try:  # tests/ is on sys.path (conftest.py)
    from reference import _Base
except ImportError:  # tests/ imported as a package
    from tests.reference import _Base

__all__ = [
    "cautious_mask",
    "ademamix_alpha",
    "ademamix_beta3",
    "ADOPT",
    "AdEMAMix",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "Adan",
    "CautiousAdam",
    "CautiousAdamW",
    "CautiousLion",
    "REFERENCES_MODERN",
]


# --------------------------------------------------------------------------- #
# Cautious mask (Liang et al. 2024)
# --------------------------------------------------------------------------- #
def cautious_mask(update, grad):
    """The cautious mask of Liang et al. (2024), rescaled, for one parameter array.

    "Cautious Optimizers: Improving Training with One Line of Code",
    https://arxiv.org/abs/2411.16085, reference code github.com/kyleliang919/C-Optim::

        phi  = 1[update * grad > 0]                  (elementwise; 0 where either is 0)
        mask = phi * numel(phi) / (sum(phi) + 1)     (one scale per parameter array)

    and the optimizer applies ``update * mask`` in place of ``update``.  The
    scale is the paper's and its code's at publication (``c_adamw.py`` of
    Nov 2024, ``c_lion.py`` to this day) and pytorch-optimizer 4.1's
    ``BaseOptimizer.apply_cautious``: it is computed per parameter array
    (``mask.numel()`` of one tensor), not over all parameters.  The C-Optim
    ``c_adamw.py`` was later (Jan 2025) switched to timm's
    ``phi / max(mean(phi), 1e-3)``, which differs from this by the ``+ 1`` and
    the floor; it is not what is implemented here.
    """
    phi = (update * grad > 0).astype(update.dtype)
    return phi * (phi.size / (phi.sum() + 1.0))


# --------------------------------------------------------------------------- #
# ADOPT
# --------------------------------------------------------------------------- #
class ADOPT(_Base):
    """ADOPT (Taniguchi et al., NeurIPS 2024), with the authors' clipping.

    "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate",
    https://arxiv.org/abs/2411.02853; reference code github.com/iShohei220/adopt
    (``src/adopt/adopt.py``, the clipped version of Nov 2024).  With ``k`` the
    number of earlier steps (0 at the first call)::

        g = g + wd * p                                   (L2, unless decoupled)
        k == 0:  v = g^2                                 (nothing else moves)
        k >= 1:  p = p * (1 - lr * wd)                   (decoupled only)
                 n = clip(g / max(sqrt(v), eps), -c_k, c_k),  c_k = k ** clip_exponent
                 m = b1 * m + (1 - b1) * n
                 p = p - lr * m                          (m * cautious_mask(m, g) if cautious)
                 v = b2 * v + (1 - b2) * g^2

    The normalisation uses the second moment *before* this step's gradient
    enters it, and ``eps`` is a floor on ``sqrt(v)``, not an addend.
    ``clip_exponent=None`` is the unclipped ADOPT of the first arXiv version.
    The authors' code takes the bound as a callable, ``clip_lambda=lambda
    step: step ** 0.25``; a number is kept here (it can be saved in a checkpoint).

    Conventions: the authors (and optax 0.2.8 ``contrib.adopt``) evaluate
    ``clip_lambda`` at ``k`` (1 at the second call); pytorch-optimizer 4.1
    evaluates it at ``k + 1``.  The authors apply decoupled decay only from the
    second call on; pytorch-optimizer also decays at the first.  Both follow the
    authors here.  ``cautious`` masks the update ``m`` against the gradient as
    pytorch-optimizer does (its ``normed_grad`` has the gradient's signs).
    Defaults: ``lr=1e-3, betas=(0.9, 0.9999), eps=1e-6``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6,
                 clip_exponent=0.25, weight_decay=0.0,
                 decoupled_weight_decay=False, cautious=False, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.clip_exponent = clip_exponent
        self.weight_decay = weight_decay
        self.decoupled_weight_decay = decoupled_weight_decay
        self.cautious = cautious
        self.maximize = maximize
        self.m = self._zeros()
        self.v = self._zeros()

    def step(self, grads):
        self._check(grads)
        k = self.t  # earlier steps: the authors' ``step``
        self.t += 1
        b1, b2, lr, wd = self.beta1, self.beta2, self.lr, self.weight_decay
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if wd != 0 and not self.decoupled_weight_decay:
                g = g + wd * p
            if k == 0:
                self.v[i] = g * g
                continue
            w = p
            if wd != 0 and self.decoupled_weight_decay:
                w = p * (1 - lr * wd)
            denom = np.maximum(np.sqrt(self.v[i]), self.eps)
            n = g / denom
            if self.clip_exponent is not None:
                c = k ** self.clip_exponent
                n = np.clip(n, -c, c)
            self.m[i] = b1 * self.m[i] + (1 - b1) * n
            u = self.m[i]
            if self.cautious:
                u = u * cautious_mask(u, g)
            new = w - lr * u
            self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
            p[...] = new


# --------------------------------------------------------------------------- #
# AdEMAMix
# --------------------------------------------------------------------------- #
def ademamix_alpha(t, alpha, t_alpha):
    """AdEMAMix's alpha warm-up: ``alpha * min(1, t / T_alpha)`` (``t`` from 1)."""
    if not t_alpha:
        return alpha
    return min(t * alpha / t_alpha, alpha)


def ademamix_beta3(t, beta1, beta3, t_beta3):
    """AdEMAMix's beta3 warm-up (the paper's ``beta3(t)``, ``t`` from 1).

    Linear in the half-life ``ln(1/2) / ln(beta)`` from ``beta1`` at ``t = 0``
    to ``beta3`` at ``t = T_beta3``, constant after::

        beta3(t) = exp( ln(b1) ln(b3) / ((1 - t/T) ln(b3) + (t/T) ln(b1)) )

    The authors' two implementations disagree here.  Their PyTorch code
    computes this through the half-life but adds ``1e-8`` to beta inside the
    logarithm; since ``ln(0.9999)`` is only ``-1e-4``, that moves the half-life
    by ~1e-4 relative (``beta3(t)`` by ~2e-7, the trajectory by ~1e-4 relative
    over 50 warm-up steps; checked against ``pytorch/ademamix.py`` run with and
    without it).  Their optax code uses no ``1e-8`` but evaluates the schedule
    at ``t - 1``.  Followed here: the paper's formula at the 1-based ``t``
    (also pytorch-optimizer's), with its limit ``b3 ** (T/t)`` for ``beta1 = 0``.
    """
    if not t_beta3 or t >= t_beta3:
        return beta3
    a = t / t_beta3
    if beta1 == 0.0:
        return beta3 ** (1.0 / a)
    lb1, lb3 = math.log(beta1), math.log(beta3)
    return math.exp(lb1 * lb3 / ((1.0 - a) * lb3 + a * lb1))


class AdEMAMix(_Base):
    """AdEMAMix (Pagliardini, Ablin & Grangier 2024): a fast and a slow EMA mixed.

    "The AdEMAMix Optimizer: Better, Faster, Older",
    https://arxiv.org/abs/2409.03137 (Algorithm 1); reference code
    github.com/apple/ml-ademamix (``pytorch/ademamix.py``)::

        a_t  = ademamix_alpha(t, alpha, T_alpha)       b3_t = ademamix_beta3(t, b1, b3, T_beta3)
        m1   = b1 * m1 + (1 - b1) * g                  (fast EMA)
        m2   = b3_t * m2 + (1 - b3_t) * g              (slow EMA, no bias correction)
        v    = b2 * v + (1 - b2) * g^2
        u    = (m1 / (1 - b1^t) + a_t * m2) / (sqrt(v) / sqrt(1 - b2^t) + eps)
        u    = u * cautious_mask(u, g)                 (cautious only)
        p    = p - lr * (u + wd * p)                   (decoupled, as in AdamW)

    Conventions: the schedules are evaluated at the 1-based step ``t`` (the
    authors' PyTorch code and pytorch-optimizer; the authors' optax code and
    optax 0.2.8 evaluate the schedule callables at ``t - 1``).  Weight decay is
    decoupled, as in the authors' code and the paper; pytorch-optimizer
    defaults to coupled (``weight_decouple=False``).  ``alpha=5.0`` is the
    default of the authors' optax code, optax and pytorch-optimizer (the
    authors' PyTorch class says 2.0, their README uses 8.0).  ``T_alpha`` and
    ``T_beta3`` are separate as in the paper and the authors' code
    (pytorch-optimizer has one ``t_alpha_beta3``).  ``cautious`` masks the whole
    update ``u``, the paper's rule; pytorch-optimizer masks only the fast
    term ``m1`` (the two agree when ``alpha = 0``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0,
                 t_alpha=None, t_beta3=None, eps=1e-8, weight_decay=0.0,
                 cautious=False, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2, self.beta3 = betas
        self.alpha = alpha
        self.t_alpha = t_alpha
        self.t_beta3 = t_beta3
        self.eps = eps
        self.weight_decay = weight_decay
        self.cautious = cautious
        self.maximize = maximize
        self.m1 = self._zeros()
        self.m2 = self._zeros()
        self.v = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        t, b1, b2 = self.t, self.beta1, self.beta2
        alpha_t = ademamix_alpha(t, self.alpha, self.t_alpha)
        beta3_t = ademamix_beta3(t, b1, self.beta3, self.t_beta3)
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            self.m1[i] = b1 * self.m1[i] + (1 - b1) * g
            self.m2[i] = beta3_t * self.m2[i] + (1 - beta3_t) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
            denom = np.sqrt(self.v[i]) / math.sqrt(bc2) + self.eps
            u = (self.m1[i] / bc1 + alpha_t * self.m2[i]) / denom
            if self.cautious:
                u = u * cautious_mask(u, g)
            new = p - self.lr * (u + self.weight_decay * p)
            p[...] = new


# --------------------------------------------------------------------------- #
# Schedule-Free
# --------------------------------------------------------------------------- #
class _ScheduleFree(_Base):
    """The averaging and the train/eval switch shared by the two Schedule-Free rules.

    "The Road Less Scheduled" (Defazio et al. 2024), https://arxiv.org/abs/2405.15682;
    reference code: the ``schedulefree`` package (github.com/facebookresearch/
    schedule_free), ``AdamWScheduleFree`` / ``SGDScheduleFree``.  Three
    sequences: ``z`` (the base optimizer's iterate), ``x`` (the weighted
    average of the ``z``, the point to evaluate) and ``y = b1 x + (1 - b1) z``
    (where the gradient is taken).  At step ``t`` (from 1)::

        lr_t       = lr * min(1, t / warmup_steps)      (lr if warmup_steps == 0)
        lr_max     = max(lr_max, lr_t)                   (lr_max starts below any lr)
        w_t        = t^r * lr_max^weight_lr_power
        c_t        = w_t / sum_{s<=t} w_s                (0 if the sum is 0)
        z          = z - lr_t * u(g(y), y)               (the rule's direction u)
        x          = (1 - c_t) x + c_t z
        y          = b1 x + (1 - b1) z

    Here ``x`` and ``z`` are stored and ``y`` computed; the package stores
    ``y`` (in the parameter) and ``z`` and never forms ``x``.  In train mode
    the parameters hold ``y``; ``eval()`` writes ``x`` into them and
    ``train()`` writes ``y`` back.  ``step`` refuses to run in eval mode, as
    the package's does.  The package creates the optimizer in eval mode and
    asks for ``train()`` before the first step; with no step taken ``x = y =
    z`` and the switch moves nothing, so this reference starts in train mode
    (as pytorch-optimizer's does).
    """

    def __init__(self, params, lr, b1, weight_decay, warmup_steps, r,
                 weight_lr_power, maximize):
        super().__init__(params)
        self.lr = lr
        self._b1 = b1
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.r = r
        self.weight_lr_power = weight_lr_power
        self.maximize = maximize
        self.z = [p.copy() for p in self.params]
        self.x = [p.copy() for p in self.params]
        self.lr_max = -1.0
        self.weight_sum = 0.0
        self.train_mode = True

    def _schedule(self):
        """Advance the step; return this step's ``lr_t`` and ``c_t``."""
        self.t += 1
        t = self.t
        if t < self.warmup_steps:
            lr_t = self.lr * t / self.warmup_steps
        else:
            lr_t = self.lr
        self.lr_max = max(self.lr_max, lr_t)
        weight = t ** self.r * self.lr_max ** self.weight_lr_power
        self.weight_sum = self.weight_sum + weight
        c = weight / self.weight_sum if self.weight_sum != 0 else 0.0
        return lr_t, c

    def _direction(self, i, g, y):
        raise NotImplementedError

    def step(self, grads):
        if not self.train_mode:
            raise RuntimeError("call train() before step(): the parameters hold x")
        self._check(grads)
        lr_t, c = self._schedule()
        b1 = self._b1
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            y = p.copy()
            u = self._direction(i, g, y)
            self.z[i] = self.z[i] - lr_t * u
            self.x[i] = (1 - c) * self.x[i] + c * self.z[i]
            p[...] = b1 * self.x[i] + (1 - b1) * self.z[i]

    def eval(self):
        """Write ``x`` (the averaged point) into the parameters."""
        if self.train_mode:
            for i, p in enumerate(self.params):
                p[...] = self.x[i]
            self.train_mode = False

    def train(self):
        """Write ``y`` (the gradient point) back into the parameters."""
        if not self.train_mode:
            b1 = self._b1
            for i, p in enumerate(self.params):
                p[...] = b1 * self.x[i] + (1 - b1) * self.z[i]
            self.train_mode = True


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW (Defazio et al. 2024), as ``schedulefree.AdamWScheduleFree``.

    The averaging of :class:`_ScheduleFree` with the direction (at step ``t``)::

        v = b2 * v + (1 - b2) * g^2
        u = g / (sqrt(v / (1 - b2^t)) + eps) + wd * y

    ``betas[0]`` is the interpolation ``b1`` of ``y``; there is no first
    moment.  Weight decay is taken at ``y`` and enters both ``z`` and ``y``.
    The paper's Algorithm 1 instead multiplies ``lr_t`` by ``sqrt(1 - b2^t)``
    (moving ``eps`` inside the correction and into the averaging weights); the
    package's default class, followed here, corrects ``v`` and leaves
    ``lr_max`` uncorrected.  Defaults: ``lr=0.0025, betas=(0.9, 0.999),
    eps=1e-8, weight_decay=0, warmup_steps=0, r=0, weight_lr_power=2``.
    """

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0,
                 maximize=False):
        super().__init__(params, lr, betas[0], weight_decay, warmup_steps, r,
                         weight_lr_power, maximize)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.v = self._zeros()

    def _direction(self, i, g, y):
        b2 = self.beta2
        self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
        denom = np.sqrt(self.v[i] / (1 - b2 ** self.t)) + self.eps
        return g / denom + self.weight_decay * y


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD (Defazio et al. 2024), as ``schedulefree.SGDScheduleFree``.

    The averaging of :class:`_ScheduleFree` (``b1 = momentum``) with the
    direction ``u = g + wd * y`` (L2 at ``y``).  Defaults: ``lr=1.0,
    momentum=0.9, weight_decay=0, warmup_steps=0, r=0, weight_lr_power=2``.
    """

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0.0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, maximize=False):
        super().__init__(params, lr, momentum, weight_decay, warmup_steps, r,
                         weight_lr_power, maximize)
        self.momentum = momentum

    def _direction(self, i, g, y):
        return g + self.weight_decay * y


# --------------------------------------------------------------------------- #
# Adan
# --------------------------------------------------------------------------- #
class Adan(_Base):
    """Adan (Xie et al. 2022): adaptive Nesterov momentum through gradient differences.

    "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
    Models", https://arxiv.org/abs/2208.06677 (Algorithm 1); reference code
    github.com/sail-sg/Adan (``adan.py``).  In the code's betas (the paper's
    ``beta_i`` are ``1 - b_i``), with ``g_0 = g_1`` (no difference at step 1)::

        d  = g - g_prev
        m  = b1 * m + (1 - b1) * g
        dm = b2 * dm + (1 - b2) * d
        n  = b3 * n + (1 - b3) * (g + b2 * d)^2
        u  = (m / (1 - b1^t) + b2 * dm / (1 - b2^t)) / (sqrt(n) / sqrt(1 - b3^t) + eps)
        u  = u * cautious_mask(u, g)                  (cautious only)
        p  = (p - lr * u) / (1 + lr * wd)             (proximal, default)
        p  = p * (1 - lr * wd) - lr * u               (no_prox=True)
        g_prev = g

    The bias corrections are the code's (the paper's box has none).
    pytorch-optimizer 4.1 is the same rule (``weight_decouple`` is ``no_prox``).
    optax 0.2.8 ``adan`` weights the difference by ``1 - b2`` where the code
    weights it by ``b2`` (0.08 against 0.92 at the defaults), puts
    ``eps_root=1e-8`` inside the root and decays weights AdamW-style: a different
    trajectory.  Cautious Adan is not in the authors' code nor in
    pytorch-optimizer; here it masks the whole update ``u`` (the paper's rule),
    before the weight decay.  Defaults: ``lr=1e-3, betas=(0.98, 0.92, 0.99),
    eps=1e-8, weight_decay=0, no_prox=False``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8,
                 weight_decay=0.0, no_prox=False, cautious=False, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2, self.beta3 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.no_prox = no_prox
        self.cautious = cautious
        self.maximize = maximize
        self.m = self._zeros()
        self.dm = self._zeros()
        self.n = self._zeros()
        self.g_prev = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        t, b1, b2, b3 = self.t, self.beta1, self.beta2, self.beta3
        lr, wd = self.lr, self.weight_decay
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if t == 1:
                self.g_prev[i] = g.copy()
            d = g - self.g_prev[i]
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.dm[i] = b2 * self.dm[i] + (1 - b2) * d
            gn = g + b2 * d
            self.n[i] = b3 * self.n[i] + (1 - b3) * (gn * gn)
            denom = np.sqrt(self.n[i]) / math.sqrt(1 - b3 ** t) + self.eps
            u = (self.m[i] / (1 - b1 ** t) + b2 * self.dm[i] / (1 - b2 ** t)) / denom
            if self.cautious:
                u = u * cautious_mask(u, g)
            if self.no_prox:
                new = p * (1 - lr * wd) - lr * u
            else:
                new = (p - lr * u) / (1 + lr * wd)
            self.g_prev[i] = g
            p[...] = new


# --------------------------------------------------------------------------- #
# C-AdamW and C-Lion (Liang et al. 2024): Adam, AdamW and Lion with the mask
# --------------------------------------------------------------------------- #
class CautiousAdam(_Base):
    """Adam with ``cautious=True`` (C-Adam; C-AdamW with decoupled decay).

    Liang et al. 2024, Algorithm 1 with Adam's update (torch's conventions, as
    ``reference.Adam``)::

        g     = g + wd * p                    (L2; AdamW: p *= 1 - lr*wd instead)
        m     = b1 * m + (1 - b1) * g
        v     = b2 * v + (1 - b2) * g^2
        vmax  = max(vmax, v)                  (amsgrad)
        u     = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t) + eps_root) + eps)
        u     = u * cautious_mask(u, g)       (cautious only)
        p     = p - lr * u

    The mask is on the whole update, after the bias corrections (its sign is
    ``m``'s), and the decoupled decay of AdamW is not masked, as in the paper's
    Algorithm 1 and its ``c_adamw.py``.  That code follows Hugging Face's AdamW
    (``eps`` added to ``sqrt(v)`` before the bias correction, the decay applied
    after the update); torch.optim's conventions are kept here, as fastmoments'
    AdamW does.  pytorch-optimizer 4.1 has no cautious Adam or AdamW.
    """

    _decoupled_default = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False, maximize=False, eps_root=0.0,
                 cautious=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.amsgrad = amsgrad
        self.maximize = maximize
        self.eps_root = eps_root
        self.cautious = cautious
        self.m = self._zeros()
        self.v = self._zeros()
        self.vmax = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t, lr, wd = self.beta1, self.beta2, self.t, self.lr, self.weight_decay
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            w = p
            if wd != 0:
                if self._decoupled_default:
                    w = p * (1 - lr * wd)
                else:
                    g = g + wd * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
            v = self.v[i]
            if self.amsgrad:
                self.vmax[i] = np.maximum(self.vmax[i], v)
                v = self.vmax[i]
            u = (self.m[i] / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t) + self.eps_root)
                                              + self.eps)
            if self.cautious:
                u = u * cautious_mask(u, g)
            p[...] = w - lr * u


class CautiousAdamW(CautiousAdam):
    """:class:`CautiousAdam` with decoupled decay (C-AdamW); ``weight_decay=1e-2``."""

    _decoupled_default = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False, maximize=False, eps_root=0.0,
                 cautious=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, eps_root=eps_root,
                         cautious=cautious)


class CautiousLion(_Base):
    """Lion with ``cautious=True`` (C-Lion; Liang et al. 2024, Algorithm 2's
    mask on Lion, their ``c_lion.py``)::

        c = b1 * m + (1 - b1) * g
        u = sign(c)
        u = u * cautious_mask(u, g)           (cautious only)
        p = p * (1 - lr * wd) - lr * u
        m = b2 * m + (1 - b2) * g

    The decay is not masked.  pytorch-optimizer 4.1's ``Lion(cautious=True)``
    is this rule.  lion-pytorch 0.2's ``cautious_factor=0`` scales by
    ``numel / sum(phi)`` (no ``+ 1``), and is not followed here.
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                 cautious=False, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.weight_decay = weight_decay
        self.cautious = cautious
        self.maximize = maximize
        self.m = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, lr = self.beta1, self.beta2, self.lr
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            u = np.sign(b1 * self.m[i] + (1 - b1) * g)
            if self.cautious:
                u = u * cautious_mask(u, g)
            new = p * (1 - lr * self.weight_decay) - lr * u
            self.m[i] = b2 * self.m[i] + (1 - b2) * g
            p[...] = new


REFERENCES_MODERN = {
    "ADOPT": ADOPT,
    "AdEMAMix": AdEMAMix,
    "ScheduleFreeAdamW": ScheduleFreeAdamW,
    "ScheduleFreeSGD": ScheduleFreeSGD,
    "Adan": Adan,
    # cautious=True on the earlier rules (cautious=False: the rule itself)
    "Adam": CautiousAdam,
    "AdamW": CautiousAdamW,
    "Lion": CautiousLion,
}
