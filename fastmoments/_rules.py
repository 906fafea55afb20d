"""The per-element math of every update rule: the single source of truth.

Each rule takes ``(param, grad, <state values>, grad_mult, clip_value, <scalars>)`` for
one element and returns the new ``(param, <state values>)``. The CPU loops and the
CUDA kernels are generated from these signatures (see ``_jit``). Every scalar is
computed on the host in float64 and cast to the buffer dtype before the call, and no
rule contains a numeric literal, so a float32 buffer is processed in float32.

The shared gradient preamble (:func:`effective_grad`) applies, in torch's order,
the loss-scale / maximize / clip-by-norm factor ``grad_mult`` (one multiplication:
``sign / loss_scale * clip_coef``), clipping by value (``clip_value`` = inf when
off) and L2 weight decay.
"""

from __future__ import annotations

import math

from ._jit import rule


@rule
def effective_grad(param, grad, grad_mult, clip_value, weight_decay):
    g = grad * grad_mult
    if g > clip_value:
        g = clip_value
    elif g < -clip_value:
        g = -clip_value
    return g + weight_decay * param


@rule
def lerp(start, end, weight):
    return start + weight * (end - start)


# --------------------------------------------------------------------- SGD
@rule
def sgd(param, grad, grad_mult, clip_value, weight_decay, lr):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    return (param - lr * g,)


@rule
def sgd_momentum(param, grad, momentum_buffer, grad_mult, clip_value, weight_decay, lr,
                 buffer_decay, grad_coef, nesterov, momentum):
    # buffer_decay = momentum and grad_coef = 1 - dampening, except on the first step
    # (0 and 1: the buffer starts as the gradient itself, as in torch).
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    buf = buffer_decay * momentum_buffer + grad_coef * g
    if nesterov:
        direction = g + momentum * buf
    else:
        direction = buf
    return param - lr * direction, buf


# ----------------------------------------------------------------- Adagrad
@rule
def adagrad(param, grad, sum, grad_mult, clip_value, weight_decay, clr, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    s = sum + g * g
    return param - clr * (g / (math.sqrt(s) + eps)), s


# ----------------------------------------------------------------- RMSprop
@rule
def rmsprop(param, grad, square_avg, grad_mult, clip_value, weight_decay, lr, alpha,
            one_minus_alpha, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    sq = alpha * square_avg + one_minus_alpha * (g * g)
    return param - lr * (g / (math.sqrt(sq) + eps)), sq


@rule
def rmsprop_centered(param, grad, square_avg, grad_avg, grad_mult, clip_value, weight_decay,
                     lr, alpha, one_minus_alpha, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    sq = alpha * square_avg + one_minus_alpha * (g * g)
    ga = lerp(grad_avg, g, one_minus_alpha)
    return param - lr * (g / (math.sqrt(sq - ga * ga) + eps)), sq, ga


@rule
def rmsprop_momentum(param, grad, square_avg, momentum_buffer, grad_mult, clip_value,
                     weight_decay, lr, alpha, one_minus_alpha, eps, momentum):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    sq = alpha * square_avg + one_minus_alpha * (g * g)
    buf = momentum * momentum_buffer + g / (math.sqrt(sq) + eps)
    return param - lr * buf, sq, buf


@rule
def rmsprop_centered_momentum(param, grad, square_avg, grad_avg, momentum_buffer, grad_mult,
                              clip_value, weight_decay, lr, alpha, one_minus_alpha, eps,
                              momentum):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    sq = alpha * square_avg + one_minus_alpha * (g * g)
    ga = lerp(grad_avg, g, one_minus_alpha)
    buf = momentum * momentum_buffer + g / (math.sqrt(sq - ga * ga) + eps)
    return param - lr * buf, sq, ga, buf


# ---------------------------------------------------------------- Adadelta
@rule
def adadelta(param, grad, square_avg, acc_delta, grad_mult, clip_value, weight_decay, lr, rho,
             one_minus_rho, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    sq = rho * square_avg + one_minus_rho * (g * g)
    delta = math.sqrt(acc_delta + eps) / math.sqrt(sq + eps) * g
    acc = rho * acc_delta + one_minus_rho * (delta * delta)
    return param - lr * delta, sq, acc


# ------------------------------------------------------- Adam, AdamW, AMSGrad
@rule
def adam(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay, decay_factor,
         one_minus_beta1, beta2, one_minus_beta2, step_size, inv_bias_correction2, eps_root, eps):
    # decay_factor = 1 - lr * weight_decay for AdamW (decoupled), 1 for Adam (L2 in the grad).
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    denom = math.sqrt(v * inv_bias_correction2 + eps_root) + eps
    return param * decay_factor - step_size * (m / denom), m, v


@rule
def adam_amsgrad(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_mult, clip_value,
                 weight_decay, decay_factor, one_minus_beta1, beta2, one_minus_beta2, step_size,
                 inv_bias_correction2, eps_root, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    vmax = max_exp_avg_sq if max_exp_avg_sq > v else v
    denom = math.sqrt(vmax * inv_bias_correction2 + eps_root) + eps
    return param * decay_factor - step_size * (m / denom), m, v, vmax


# ------------------------------------------------------------------ Adamax
@rule
def adamax(param, grad, exp_avg, exp_inf, grad_mult, clip_value, weight_decay, one_minus_beta1,
           beta2, eps, clr):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    decayed = beta2 * exp_inf
    abs_g = abs(g) + eps
    u = decayed if decayed > abs_g else abs_g
    return param - clr * (m / u), m, u


# ------------------------------------------------------------------- NAdam
@rule
def nadam(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay, decay_factor,
          one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction2, eps, grad_coef,
          exp_avg_coef):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    denom = math.sqrt(v * inv_bias_correction2) + eps
    p = param * decay_factor
    return p - grad_coef * (g / denom) - exp_avg_coef * (m / denom), m, v


# ------------------------------------------------------------------- RAdam
@rule
def radam(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay, decay_factor,
          one_minus_beta1, beta2, one_minus_beta2, eps, rectified, step_size):
    # rectified: step_size = lr * r_t * sqrt(1 - beta2^t) / (1 - beta1^t), adaptive step;
    # otherwise step_size = lr / (1 - beta1^t), a momentum-SGD step.
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    p = param * decay_factor
    if rectified:
        p = p - step_size * (m / (math.sqrt(v) + eps))
    else:
        p = p - step_size * m
    return p, m, v


# -------------------------------------------------------------------- Yogi
@rule
def yogi(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay,
         one_minus_beta1, one_minus_beta2, step_size, inv_bias_correction2, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    g2 = g * g
    # v <- v - (1 - beta2) sign(v - g^2) g^2
    v = exp_avg_sq
    if v > g2:
        v = v - one_minus_beta2 * g2
    elif v < g2:
        v = v + one_minus_beta2 * g2
    return param - step_size * (m / (math.sqrt(v * inv_bias_correction2) + eps)), m, v
