"""Slow, plain-NumPy reference optimizers for testing ``fastmoments``.

Every optimizer here is written directly from the equations of its paper, one
NumPy operation per line, with no fusion or cleverness, so that it can serve as
an "obviously correct" oracle.  Where ``torch.optim`` (2.13) implements the
rule, the *conventions and defaults* of torch are used (keyword names, default
values, where ``eps`` sits, how ``maximize`` and ``weight_decay`` act, what
the first momentum step does) so that trajectories can be compared with torch
to ~1e-9 relative in float64.  Rules torch does not have follow the reference
implementation named in each class docstring.

Common interface (all classes)::

    opt = Adam([p0, p1, ...], lr=..., ...)
    opt.step([g0, g1, ...])     # updates each params[i] in place

* ``params`` is a list of ``np.ndarray``; ``step`` writes the new values with
  ``params[i][...] = new`` so callers' arrays are updated in place.
* All arithmetic happens in each parameter's dtype (gradients are cast to it;
  optimizer state is allocated in it; scalar hyper-parameters and bias
  corrections are Python floats, which NumPy does not let up-cast arrays).
* Per-parameter state lives in plain list attributes (``self.m[i]``,
  ``self.v[i]``, ...); the step counter ``self.t`` is shared by all
  parameters (it is incremented once per ``step`` call, exactly like torch's
  per-parameter ``step`` when every parameter receives a gradient each step).
* ``maximize=True`` means the gradient is negated before anything else
  (torch convention), i.e. the rule ascends the objective.
* "L2" weight decay means ``g <- g + weight_decay * p`` (coupled, added to the
  gradient before any moment is formed).  "Decoupled" weight decay means
  ``p <- p * (1 - lr * weight_decay)`` applied before the rest of the update
  (Loshchilov & Hutter as implemented by torch).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adadelta",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "Yogi",
    "AdaBelief",
    "Lion",
    "LAMB",
    "NDAdam",
    "SWATS",
    "REFERENCES",
]


# --------------------------------------------------------------------------- #
# small shared helpers (deliberately trivial)
# --------------------------------------------------------------------------- #
class _Base:
    """Holds the parameter list and the shared step counter."""

    def __init__(self, params):
        self.params = list(params)
        for p in self.params:
            if not isinstance(p, np.ndarray):
                raise TypeError("params must be numpy arrays")
        self.t = 0

    def _zeros(self):
        return [np.zeros_like(p) for p in self.params]

    def _full(self, value):
        return [np.full_like(p, value) for p in self.params]

    def _grad(self, i, grads):
        """Gradient i cast to the parameter's dtype, negated if maximizing."""
        p = self.params[i]
        g = np.array(grads[i], dtype=p.dtype, copy=True)
        if g.shape != p.shape:
            raise ValueError(f"grad {i} has shape {g.shape}, param has {p.shape}")
        if self.maximize:
            g = -g
        return g

    def _check(self, grads):
        if len(grads) != len(self.params):
            raise ValueError(
                f"got {len(grads)} gradients for {len(self.params)} parameters"
            )


# --------------------------------------------------------------------------- #
# SGD
# --------------------------------------------------------------------------- #
class SGD(_Base):
    """Stochastic gradient descent with (heavy-ball / Nesterov) momentum.

    Polyak heavy-ball momentum in torch's form (Sutskever et al. 2013 for the
    Nesterov variant)::

        d   = g + wd * p                         (L2 weight decay)
        buf = d                                  (first step: no dampening)
        buf = momentum * buf + (1 - dampening) * d   (later steps)
        d   = d + momentum * buf   if nesterov else   buf
        p   = p - lr * d

    With ``momentum == 0`` the update is plain ``p -= lr * d``.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, maximize=False):
        super().__init__(params)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.lr = lr
        self.momentum = momentum
        self.dampening = dampening
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.maximize = maximize
        self.buf = [None for _ in self.params]

    def step(self, grads):
        self._check(grads)
        self.t += 1
        for i, p in enumerate(self.params):
            d = self._grad(i, grads)
            if self.weight_decay != 0:
                d = d + self.weight_decay * p
            if self.momentum != 0:
                if self.buf[i] is None:
                    self.buf[i] = d.copy()
                else:
                    self.buf[i] = self.momentum * self.buf[i] + (1 - self.dampening) * d
                if self.nesterov:
                    d = d + self.momentum * self.buf[i]
                else:
                    d = self.buf[i]
            new = p - self.lr * d
            p[...] = new


# --------------------------------------------------------------------------- #
# Adagrad
# --------------------------------------------------------------------------- #
class Adagrad(_Base):
    """Adagrad (Duchi, Hazan & Singer 2011), diagonal version.

    Paper: ``G_t = G_{t-1} + g_t^2``;  ``p -= lr * g_t / sqrt(G_t)``.
    torch form (eps outside the sqrt, optional lr decay)::

        g    = g + wd * p
        clr  = lr / (1 + (t - 1) * lr_decay)
        G    = G + g^2                 (G starts at initial_accumulator_value)
        p    = p - clr * g / (sqrt(G) + eps)
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.lr_decay = lr_decay
        self.weight_decay = weight_decay
        self.initial_accumulator_value = initial_accumulator_value
        self.eps = eps
        self.maximize = maximize
        self.sum = self._full(initial_accumulator_value)

    def step(self, grads):
        self._check(grads)
        self.t += 1
        clr = self.lr / (1 + (self.t - 1) * self.lr_decay)
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            self.sum[i] = self.sum[i] + g * g
            denom = np.sqrt(self.sum[i]) + self.eps
            new = p - clr * (g / denom)
            p[...] = new


# --------------------------------------------------------------------------- #
# RMSprop
# --------------------------------------------------------------------------- #
class RMSprop(_Base):
    """RMSprop (Hinton, Coursera lecture 6e 2012; centered form: Graves 2013).

    torch form::

        g   = g + wd * p
        v   = alpha * v + (1 - alpha) * g^2
        if centered:
            gbar = alpha * gbar + (1 - alpha) * g
            den  = sqrt(v - gbar^2) + eps
        else:
            den  = sqrt(v) + eps
        if momentum > 0:
            buf = momentum * buf + g / den      (buf starts at 0)
            p   = p - lr * buf
        else:
            p   = p - lr * g / den
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
                 momentum=0, centered=False, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.alpha = alpha
        self.eps = eps
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.centered = centered
        self.maximize = maximize
        self.square_avg = self._zeros()
        self.grad_avg = self._zeros()
        self.buf = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        a = self.alpha
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            self.square_avg[i] = a * self.square_avg[i] + (1 - a) * (g * g)
            if self.centered:
                self.grad_avg[i] = a * self.grad_avg[i] + (1 - a) * g
                var = self.square_avg[i] - self.grad_avg[i] * self.grad_avg[i]
                denom = np.sqrt(var) + self.eps
            else:
                denom = np.sqrt(self.square_avg[i]) + self.eps
            if self.momentum > 0:
                self.buf[i] = self.momentum * self.buf[i] + g / denom
                new = p - self.lr * self.buf[i]
            else:
                new = p - self.lr * (g / denom)
            p[...] = new


# --------------------------------------------------------------------------- #
# Adadelta
# --------------------------------------------------------------------------- #
class Adadelta(_Base):
    """Adadelta (Zeiler 2012, Algorithm 1), with torch's extra ``lr`` factor.

    ::

        g      = g + wd * p
        E[g2]  = rho * E[g2] + (1 - rho) * g^2
        dx     = sqrt(E[dx2] + eps) / sqrt(E[g2] + eps) * g
        E[dx2] = rho * E[dx2] + (1 - rho) * dx^2
        p      = p - lr * dx          (paper: lr = 1)
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0,
                 maximize=False):
        super().__init__(params)
        self.lr = lr
        self.rho = rho
        self.eps = eps
        self.weight_decay = weight_decay
        self.maximize = maximize
        self.square_avg = self._zeros()
        self.acc_delta = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        rho = self.rho
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            self.square_avg[i] = rho * self.square_avg[i] + (1 - rho) * (g * g)
            rms_g = np.sqrt(self.square_avg[i] + self.eps)
            rms_dx = np.sqrt(self.acc_delta[i] + self.eps)
            delta = (rms_dx / rms_g) * g
            self.acc_delta[i] = rho * self.acc_delta[i] + (1 - rho) * (delta * delta)
            new = p - self.lr * delta
            p[...] = new


# --------------------------------------------------------------------------- #
# Adam / AdamW (+ AMSGrad, + optax eps_root)
# --------------------------------------------------------------------------- #
class Adam(_Base):
    """Adam (Kingma & Ba 2014, Algorithm 1) with torch conventions.

    ::

        g     = g + wd * p                    (L2; AdamW: p *= 1 - lr*wd instead)
        m     = b1 * m + (1 - b1) * g
        v     = b2 * v + (1 - b2) * g^2
        m_hat = m / (1 - b1^t)
        v_hat = v / (1 - b2^t)
        p     = p - lr * m_hat / (sqrt(v_hat + eps_root) + eps)

    ``eps`` is added *after* the sqrt of the bias-corrected second moment
    (torch's and the paper's placement).  ``eps_root`` is optax's extra
    epsilon inside the sqrt (default 0 = torch/paper).

    AMSGrad (Reddi, Kale & Kumar 2018), ``amsgrad=True``:

    * ``amsgrad_bias_correction=True`` (torch): ``vmax = max(vmax, v)`` on the
      *raw* second moment, and ``v_hat = vmax / (1 - b2^t)``; ``m`` is
      bias-corrected as in Adam.
    * ``amsgrad_bias_correction=False`` (the paper's Algorithm 2 with constant
      beta1): ``vmax = max(vmax, v)`` and ``p -= lr * m / (sqrt(vmax +
      eps_root) + eps)`` with *no* bias correction of either moment.

    ``amsgrad_bias_correction`` has no effect when ``amsgrad=False``.
    """

    _decoupled_default = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False, maximize=False,
                 amsgrad_bias_correction=True, eps_root=0.0,
                 decoupled_weight_decay=None):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.amsgrad = amsgrad
        self.maximize = maximize
        self.amsgrad_bias_correction = amsgrad_bias_correction
        self.eps_root = eps_root
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled_default
        self.decoupled_weight_decay = decoupled_weight_decay
        self.m = self._zeros()
        self.v = self._zeros()
        self.vmax = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            w = p
            if self.weight_decay != 0:
                if self.decoupled_weight_decay:
                    w = p * (1 - self.lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
            if self.amsgrad:
                self.vmax[i] = np.maximum(self.vmax[i], self.v[i])
                if self.amsgrad_bias_correction:
                    m_hat = self.m[i] / bc1
                    v_hat = self.vmax[i] / bc2
                else:
                    m_hat = self.m[i]
                    v_hat = self.vmax[i]
            else:
                m_hat = self.m[i] / bc1
                v_hat = self.v[i] / bc2
            denom = np.sqrt(v_hat + self.eps_root) + self.eps
            new = w - self.lr * (m_hat / denom)
            p[...] = new


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.

    Same as :class:`Adam` except that, instead of adding ``wd * p`` to the
    gradient, the parameter is first shrunk: ``p = p * (1 - lr * wd)`` (torch
    scales the decay by ``lr``; the paper uses a separate schedule multiplier
    ``eta_t`` with ``p -= eta_t * (alpha * adam_step + wd * p)``).  Default
    ``weight_decay=1e-2``.
    """

    _decoupled_default = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False, maximize=False,
                 amsgrad_bias_correction=True, eps_root=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize,
                         amsgrad_bias_correction=amsgrad_bias_correction,
                         eps_root=eps_root, decoupled_weight_decay=True)


# --------------------------------------------------------------------------- #
# Adamax
# --------------------------------------------------------------------------- #
class Adamax(_Base):
    """Adamax (Kingma & Ba 2014, Algorithm 2, infinity norm).

    Paper: ``u = max(b2 * u, |g|)``; ``p -= (lr / (1 - b1^t)) * m / u``.
    torch puts eps inside the max instead of guarding the division::

        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        u = max(b2 * u, |g| + eps)
        p = p - lr / (1 - b1^t) * m / u
    """

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.maximize = maximize
        self.m = self._zeros()
        self.u = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bc1 = 1 - b1 ** self.t
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.u[i] = np.maximum(b2 * self.u[i], np.abs(g) + self.eps)
            new = p - (self.lr / bc1) * (self.m[i] / self.u[i])
            p[...] = new


# --------------------------------------------------------------------------- #
# NAdam
# --------------------------------------------------------------------------- #
class NAdam(_Base):
    """NAdam (Dozat 2016, "Incorporating Nesterov Momentum into Adam").

    Paper (Algorithm 2) with the momentum schedule
    ``mu_t = b1 * (1 - 0.5 * 0.96^(t * psi))`` (``psi = momentum_decay``)::

        m     = b1 * m + (1 - b1) * g
        v     = b2 * v + (1 - b2) * g^2
        m_hat = mu_{t+1} * m / (1 - prod_{i<=t+1} mu_i)
                + (1 - mu_t) * g / (1 - prod_{i<=t} mu_i)
        v_hat = v / (1 - b2^t)
        p     = p - lr * m_hat / (sqrt(v_hat) + eps)

    torch conventions: ``m`` itself uses the constant ``b1`` (not ``mu_t``),
    ``v_hat`` is bias-corrected with ``b2^t``, eps outside the sqrt; weight
    decay is L2 unless ``decoupled_weight_decay`` (then ``p *= 1 - lr*wd``).
    """

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.momentum_decay = momentum_decay
        self.decoupled_weight_decay = decoupled_weight_decay
        self.maximize = maximize
        self.mu_product = 1.0
        self.m = self._zeros()
        self.v = self._zeros()

    def _mu(self, t):
        return self.beta1 * (1.0 - 0.5 * 0.96 ** (t * self.momentum_decay))

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        mu_t = self._mu(t)
        mu_next = self._mu(t + 1)
        self.mu_product = self.mu_product * mu_t
        prod_t = self.mu_product
        prod_next = prod_t * mu_next
        bc2 = 1 - b2 ** t
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            w = p
            if self.weight_decay != 0:
                if self.decoupled_weight_decay:
                    w = p * (1 - self.lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
            m_hat = (mu_next / (1 - prod_next)) * self.m[i] + ((1 - mu_t) / (1 - prod_t)) * g
            v_hat = self.v[i] / bc2
            denom = np.sqrt(v_hat) + self.eps
            new = w - self.lr * (m_hat / denom)
            p[...] = new


# --------------------------------------------------------------------------- #
# RAdam
# --------------------------------------------------------------------------- #
class RAdam(_Base):
    """RAdam (Liu et al. 2019, "On the Variance of the Adaptive LR", Alg. 2).

    ::

        m       = b1 * m + (1 - b1) * g
        v       = b2 * v + (1 - b2) * g^2
        m_hat   = m / (1 - b1^t)
        rho_inf = 2 / (1 - b2) - 1
        rho_t   = rho_inf - 2 t b2^t / (1 - b2^t)
        if rho_t > 5:
            l = sqrt(1 - b2^t) / (sqrt(v) + eps)       (paper: sqrt((1-b2^t)/v))
            r = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
            p = p - lr * m_hat * r * l
        else:
            p = p - lr * m_hat                          (un-adapted momentum SGD)

    torch conventions: eps is added to ``sqrt(v)`` *before* bias correction
    (unlike Adam where it is added after), threshold ``rho_t > 5``; L2 weight
    decay unless ``decoupled_weight_decay`` (then ``p *= 1 - lr*wd``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, decoupled_weight_decay=False, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled_weight_decay = decoupled_weight_decay
        self.maximize = maximize
        self.m = self._zeros()
        self.v = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * (b2 ** t) / bc2
        if rho_t > 5:
            r = math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            w = p
            if self.weight_decay != 0:
                if self.decoupled_weight_decay:
                    w = p * (1 - self.lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
            m_hat = self.m[i] / bc1
            if rho_t > 5:
                adaptive = math.sqrt(bc2) / (np.sqrt(self.v[i]) + self.eps)
                new = w - self.lr * (m_hat * r * adaptive)
            else:
                new = w - self.lr * m_hat
            p[...] = new


# --------------------------------------------------------------------------- #
# Yogi
# --------------------------------------------------------------------------- #
class Yogi(_Base):
    """Yogi (Zaheer et al. 2018, "Adaptive Methods for Nonconvex Optimization").

    Paper (Algorithm 2)::

        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * sign(v - g^2) * g^2
        p = p - lr * m / (sqrt(v) + eps)

    This reference follows optax's ``scale_by_yogi`` for the moments (both
    ``m`` and ``v`` start at ``initial_accumulator_value``) plus Adam-style bias
    correction as in torch-optimizer's ``Yogi`` (which also initialises both
    moments to ``initial_accumulator_value``)::

        g = g + wd * p                                      (L2)
        p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Defaults are torch-optimizer's (lr=1e-2, eps=1e-3, init=1e-6).
    """

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.999), eps=1e-3,
                 initial_accumulator_value=1e-6, weight_decay=0, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.initial_accumulator_value = initial_accumulator_value
        self.weight_decay = weight_decay
        self.maximize = maximize
        self.m = self._full(initial_accumulator_value)
        self.v = self._full(initial_accumulator_value)

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            g2 = g * g
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = self.v[i] - (1 - b2) * np.sign(self.v[i] - g2) * g2
            m_hat = self.m[i] / bc1
            v_hat = self.v[i] / bc2
            denom = np.sqrt(v_hat) + self.eps
            new = p - self.lr * (m_hat / denom)
            p[...] = new


# --------------------------------------------------------------------------- #
# AdaBelief
# --------------------------------------------------------------------------- #
class AdaBelief(_Base):
    """AdaBelief (Zhuang et al. 2020), without the optional rectification.

    Paper (Algorithm 2)::

        m     = b1 * m + (1 - b1) * g
        s     = b2 * s + (1 - b2) * (g - m)^2 + eps
        p     = p - lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)

    Convention: adabelief-pytorch v0.2 / pytorch-optimizer — ``eps`` is added
    *into the stored state* ``s`` every step (so it accumulates) and again
    outside the sqrt.  ``(g - m)`` uses the *updated* ``m``.  AMSGrad variant:
    ``smax = max(smax, s)`` (``s`` already including eps), used in place of
    ``s``.  Weight decay is decoupled ``p *= 1 - lr*wd`` by default
    (``decoupled_weight_decay=True``, v0.2's ``weight_decouple=True,
    fixed_decay=False``), else L2.  adabelief-pytorch v0.2 defaults to
    ``rectify=True`` (RAdam-style); this reference implements
    ``rectify=False`` only.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16,
                 weight_decay=0, decoupled_weight_decay=True, amsgrad=False,
                 maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled_weight_decay = decoupled_weight_decay
        self.amsgrad = amsgrad
        self.maximize = maximize
        self.m = self._zeros()
        self.s = self._zeros()
        self.smax = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            w = p
            if self.weight_decay != 0:
                if self.decoupled_weight_decay:
                    w = p * (1 - self.lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            resid = g - self.m[i]
            self.s[i] = b2 * self.s[i] + (1 - b2) * (resid * resid) + self.eps
            if self.amsgrad:
                self.smax[i] = np.maximum(self.smax[i], self.s[i])
                s_used = self.smax[i]
            else:
                s_used = self.s[i]
            m_hat = self.m[i] / bc1
            s_hat = s_used / bc2
            denom = np.sqrt(s_hat) + self.eps
            new = w - self.lr * (m_hat / denom)
            p[...] = new


# --------------------------------------------------------------------------- #
# Lion
# --------------------------------------------------------------------------- #
class Lion(_Base):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    Paper (Algorithm 2), decoupled weight decay scaled by lr::

        c = b1 * m + (1 - b1) * g
        p = p * (1 - lr * wd) - lr * sign(c)
        m = b2 * m + (1 - b2) * g
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0,
                 maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.weight_decay = weight_decay
        self.maximize = maximize
        self.m = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            c = b1 * self.m[i] + (1 - b1) * g
            decayed = p * (1 - self.lr * self.weight_decay)
            new = decayed - self.lr * np.sign(c)
            self.m[i] = b2 * self.m[i] + (1 - b2) * g
            p[...] = new


# --------------------------------------------------------------------------- #
# LAMB
# --------------------------------------------------------------------------- #
class LAMB(_Base):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning").

    Paper (Algorithm 2) with identity scaling ``phi`` and Adam bias correction,
    trust ratio per parameter tensor::

        m     = b1 * m + (1 - b1) * g
        v     = b2 * v + (1 - b2) * g^2
        r     = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * p
        trust = ||p|| / ||r||   if ||p|| > 0 and ||r|| > 0   else 1
        p     = p - lr * trust * r
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
                 weight_decay=0, maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.maximize = maximize
        self.m = self._zeros()
        self.v = self._zeros()

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
            m_hat = self.m[i] / bc1
            v_hat = self.v[i] / bc2
            r = m_hat / (np.sqrt(v_hat) + self.eps)
            if self.weight_decay != 0:
                r = r + self.weight_decay * p
            p_norm = np.sqrt(np.sum(p * p))
            r_norm = np.sqrt(np.sum(r * r))
            if p_norm > 0 and r_norm > 0:
                trust = p_norm / r_norm
            else:
                trust = 1.0
            new = p - (self.lr * trust) * r
            p[...] = new


# --------------------------------------------------------------------------- #
# ND-Adam
# --------------------------------------------------------------------------- #
class NDAdam(_Base):
    """ND-Adam (Zhang et al. 2017, "Normalized Direction-preserving Adam").

    For every parameter with ``ndim >= 2`` the *vectors* are the 1-D slices
    along ``axis`` (for an ``(out, in)`` matrix and ``axis=-1``: the rows).
    Each vector ``w`` is normalised to unit norm at construction (in place, as
    the paper constrains ``||w|| = 1``) and then, per step (paper Alg. 1)::

        g_bar = g - (g . w) w                         (remove radial component)
        m     = b1 * m + (1 - b1) * g_bar             (vector)
        v     = b2 * v + (1 - b2) * ||g_bar||^2        (one scalar per vector)
        w     = w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        w     = w / ||w||

    ``self.v[i]`` has the parameter's shape with ``axis`` kept at length 1.
    Parameters with ``ndim < 2`` use plain Adam (no weight decay).  A vector
    whose norm is exactly 0 is left unnormalised (no division by zero).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, axis=-1,
                 maximize=False):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.axis = axis
        self.maximize = maximize
        self.m = self._zeros()
        self.v = []
        for p in self.params:
            if p.ndim >= 2:
                self.v.append(np.zeros_like(np.sum(p, axis=axis, keepdims=True)))
                p[...] = self._normalize(p)
            else:
                self.v.append(np.zeros_like(p))

    def _normalize(self, w):
        norm = np.sqrt(np.sum(w * w, axis=self.axis, keepdims=True))
        safe = np.where(norm > 0, norm, np.ones_like(norm))
        return w / safe

    def step(self, grads):
        self._check(grads)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        ax = self.axis
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if p.ndim >= 2:
                w = p
                radial = np.sum(g * w, axis=ax, keepdims=True)
                g_bar = g - radial * w
                self.m[i] = b1 * self.m[i] + (1 - b1) * g_bar
                sq_norm = np.sum(g_bar * g_bar, axis=ax, keepdims=True)
                self.v[i] = b2 * self.v[i] + (1 - b2) * sq_norm
                m_hat = self.m[i] / bc1
                v_hat = self.v[i] / bc2
                w_bar = w - self.lr * (m_hat / (np.sqrt(v_hat) + self.eps))
                new = self._normalize(w_bar)
            else:
                self.m[i] = b1 * self.m[i] + (1 - b1) * g
                self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
                m_hat = self.m[i] / bc1
                v_hat = self.v[i] / bc2
                new = p - self.lr * (m_hat / (np.sqrt(v_hat) + self.eps))
            p[...] = new


# --------------------------------------------------------------------------- #
# SWATS
# --------------------------------------------------------------------------- #
class SWATS(_Base):
    """SWATS (Keskar & Socher 2017, "Switching from Adam to SGD", Alg. 1).

    The whole parameter list is treated as one concatenated vector (all dot
    products below sum over every parameter).  Adam phase, step ``k``::

        g      = g + wd * p                                   (L2, both phases)
        m      = b1 * m + (1 - b1) * g
        a      = b2 * a + (1 - b2) * g^2
        p_k    = -lr * (m / (1 - b1^k)) / (sqrt(a / (1 - b2^k)) + eps)
        w      = w + p_k
        if p_k . g != 0:
            gamma  = (p_k . p_k) / (-p_k . g)
            lam    = b2 * lam + (1 - b2) * gamma
            if k > 1 and |lam / (1 - b2^k) - gamma| < switch_tol:
                switch to SGD with sgd_lr = lam / (1 - b2^k), v_sgd = 0

    (The paper writes ``p_k = -lr sqrt(1-b2^k)/(1-b1^k) m/(sqrt(a)+eps)``; here
    eps is placed as in torch's Adam, after bias correction.)  SGD phase::

        v_sgd = b1 * v_sgd + g
        d     = g + b1 * v_sgd   if nesterov else   v_sgd
        w     = w - (1 - b1) * sgd_lr * d

    (``nesterov`` only affects the SGD phase.)  Attributes: ``switched``,
    ``switch_step`` (the ``k`` at which the switch was decided; that step's
    update was still an Adam step), ``sgd_lr``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, nesterov=False, maximize=False, switch_tol=1e-9):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.maximize = maximize
        self.switch_tol = switch_tol
        self.m = self._zeros()
        self.a = self._zeros()
        self.v_sgd = self._zeros()
        self.lam = 0.0
        self.switched = False
        self.switch_step = None
        self.sgd_lr = None

    def step(self, grads):
        self._check(grads)
        self.t += 1
        k = self.t
        b1, b2 = self.beta1, self.beta2
        gs = []
        for i, p in enumerate(self.params):
            g = self._grad(i, grads)
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            gs.append(g)

        if self.switched:
            for i, p in enumerate(self.params):
                g = gs[i]
                self.v_sgd[i] = b1 * self.v_sgd[i] + g
                if self.nesterov:
                    d = g + b1 * self.v_sgd[i]
                else:
                    d = self.v_sgd[i]
                new = p - (1 - b1) * self.sgd_lr * d
                p[...] = new
            return

        bc1 = 1 - b1 ** k
        bc2 = 1 - b2 ** k
        pg = 0.0
        pp = 0.0
        for i, p in enumerate(self.params):
            g = gs[i]
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.a[i] = b2 * self.a[i] + (1 - b2) * (g * g)
            m_hat = self.m[i] / bc1
            a_hat = self.a[i] / bc2
            p_k = -self.lr * (m_hat / (np.sqrt(a_hat) + self.eps))
            pg = pg + float(np.sum(p_k * g))
            pp = pp + float(np.sum(p_k * p_k))
            new = p + p_k
            p[...] = new

        if pg != 0:
            gamma = pp / (-pg)
            self.lam = b2 * self.lam + (1 - b2) * gamma
            lam_hat = self.lam / bc2
            if k > 1 and abs(lam_hat - gamma) < self.switch_tol:
                self.switched = True
                self.switch_step = k
                self.sgd_lr = lam_hat
                self.v_sgd = self._zeros()


REFERENCES = {
    "SGD": SGD,
    "Adagrad": Adagrad,
    "RMSprop": RMSprop,
    "Adadelta": Adadelta,
    "Adam": Adam,
    "AdamW": AdamW,
    "Adamax": Adamax,
    "NAdam": NAdam,
    "RAdam": RAdam,
    "Yogi": Yogi,
    "AdaBelief": AdaBelief,
    "Lion": Lion,
    "LAMB": LAMB,
    "NDAdam": NDAdam,
    "SWATS": SWATS,
}
