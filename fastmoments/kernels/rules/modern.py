"""ADOPT, AdEMAMix, Schedule-Free AdamW / SGD and Adan, with their cautious passes."""

from __future__ import annotations

import math

from ..compile import rule
from .cautious import agreement, cautious
from .common import effective_grad, lerp, scaled_grad


# ====================================================================
# Rules of fastmoments.optim.modern (ADOPT, AdEMAMix, Adan) and .schedulefree (AdamW / SGD)
# and the two segmented passes of their cautious variants (Liang et al., 2024): the
# first updates the state and returns, per element, 1 where the update agrees in sign
# with the gradient (summed per tensor); the second recomputes the update from the new
# state, bit for bit, and applies it where it agrees, times the tensor's
# ``scale = numel / (agreeing + 1)``. ``one`` is 1 in the buffer dtype.
# --------------------------------------------------------------------
# ------------------------------------------------------------------- ADOPT
@rule
def adopt_momentum(exp_avg, g, exp_avg_sq, one_minus_beta1, eps, clip):
    # m <- m + (1 - beta1) (clip(g / max(sqrt(v_prev), eps), -clip, clip) - m)
    denom = math.sqrt(exp_avg_sq)
    if denom < eps:
        denom = eps
    n = g / denom
    if n > clip:
        n = clip
    elif n < -clip:
        n = -clip
    return lerp(exp_avg, n, one_minus_beta1)


@rule
def adopt(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay, decay_factor,
          first_step, one_minus_beta1, beta2, one_minus_beta2, lr, eps, clip):
    # first step: v = g^2 and nothing else moves; then the normalized, clipped momentum
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    if first_step:
        return param, exp_avg, g * g
    m = adopt_momentum(exp_avg, g, exp_avg_sq, one_minus_beta1, eps, clip)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    return param * decay_factor - lr * m, m, v


@rule
def adopt_cautious_moments(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                           weight_decay, first_step, one_minus_beta1, beta2, one_minus_beta2, eps,
                           clip, one):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    if first_step:
        return param, exp_avg, g * g, one - one
    m = adopt_momentum(exp_avg, g, exp_avg_sq, one_minus_beta1, eps, clip)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    return param, m, v, agreement(m, g, one)


@rule
def adopt_cautious_apply(param, grad, exp_avg, scale, grad_mult, clip_value, weight_decay,
                         decay_factor, first_step, lr):
    if first_step:
        return param, exp_avg
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    return param * decay_factor - lr * cautious(exp_avg, g, scale), exp_avg


# ---------------------------------------------------------------- AdEMAMix
@rule
def ademamix_update(exp_avg, exp_avg_sq, exp_avg_slow, inv_bias_correction1,
                    inv_bias_correction2, alpha, eps):
    # (m1 / (1 - beta1^t) + alpha_t m2) / (sqrt(v / (1 - beta2^t)) + eps)
    denom = math.sqrt(exp_avg_sq * inv_bias_correction2) + eps
    return (exp_avg * inv_bias_correction1 + alpha * exp_avg_slow) / denom


@rule
def ademamix_moments(g, exp_avg, exp_avg_sq, exp_avg_slow, one_minus_beta1, beta2,
                     one_minus_beta2, one_minus_beta3):
    m1 = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    m2 = lerp(exp_avg_slow, g, one_minus_beta3)
    return m1, v, m2


@rule
def ademamix(param, grad, exp_avg, exp_avg_sq, exp_avg_slow, grad_mult, clip_value,
             decay_factor, one_minus_beta1, beta2, one_minus_beta2, one_minus_beta3,
             inv_bias_correction1, inv_bias_correction2, alpha, lr, eps):
    g = scaled_grad(grad, grad_mult, clip_value)
    m1, v, m2 = ademamix_moments(g, exp_avg, exp_avg_sq, exp_avg_slow, one_minus_beta1, beta2,
                                 one_minus_beta2, one_minus_beta3)
    u = ademamix_update(m1, v, m2, inv_bias_correction1, inv_bias_correction2, alpha, eps)
    return param * decay_factor - lr * u, m1, v, m2


@rule
def ademamix_cautious_moments(param, grad, exp_avg, exp_avg_sq, exp_avg_slow, grad_mult,
                              clip_value, one_minus_beta1, beta2, one_minus_beta2,
                              one_minus_beta3, inv_bias_correction1, inv_bias_correction2,
                              alpha, eps, one):
    g = scaled_grad(grad, grad_mult, clip_value)
    m1, v, m2 = ademamix_moments(g, exp_avg, exp_avg_sq, exp_avg_slow, one_minus_beta1, beta2,
                                 one_minus_beta2, one_minus_beta3)
    u = ademamix_update(m1, v, m2, inv_bias_correction1, inv_bias_correction2, alpha, eps)
    return param, m1, v, m2, agreement(u, g, one)


@rule
def ademamix_cautious_apply(param, grad, exp_avg, exp_avg_sq, exp_avg_slow, scale, grad_mult,
                            clip_value, decay_factor, inv_bias_correction1,
                            inv_bias_correction2, alpha, lr, eps):
    g = scaled_grad(grad, grad_mult, clip_value)
    u = ademamix_update(exp_avg, exp_avg_sq, exp_avg_slow, inv_bias_correction1,
                        inv_bias_correction2, alpha, eps)
    return (param * decay_factor - lr * cautious(u, g, scale), exp_avg, exp_avg_sq,
            exp_avg_slow)


# ----------------------------------------------------------- Schedule-Free
# The parameter holds y; z is the base iterate (the parameter itself at the first step).
# y <- (1 - c) y + c z + lr_t (beta1 (1 - c) - 1) u and z <- z - lr_t u, with
# y_coef = lr_t (beta1 (1 - c) - 1): the average x is never formed.
@rule
def schedule_free_adamw(param, grad, z, exp_avg_sq, grad_mult, clip_value, weight_decay,
                        first_step, ckp1, y_coef, lr, beta2, one_minus_beta2,
                        inv_bias_correction2, eps):
    g = scaled_grad(grad, grad_mult, clip_value)
    base = z
    if first_step:
        base = param
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    u = g / (math.sqrt(v * inv_bias_correction2) + eps)
    if weight_decay:  # at y, after the normalization
        u = u + weight_decay * param
    return lerp(param, base, ckp1) + y_coef * u, base - lr * u, v


@rule
def schedule_free_sgd(param, grad, z, grad_mult, clip_value, weight_decay, first_step, ckp1,
                      y_coef, lr):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    base = z
    if first_step:
        base = param
    return lerp(param, base, ckp1) + y_coef * g, base - lr * g


# -------------------------------------------------------------------- Adan
@rule
def adan_moments(g, exp_avg, exp_avg_diff, exp_avg_sq, prev_grad, first_step, one_minus_beta1,
                 beta2, one_minus_beta2, beta3, one_minus_beta3):
    d = g - prev_grad
    if first_step:  # g_0 = g_1: no difference at the first step
        d = g - g
    m = lerp(exp_avg, g, one_minus_beta1)
    dm = lerp(exp_avg_diff, d, one_minus_beta2)
    c = g + beta2 * d
    n = beta3 * exp_avg_sq + one_minus_beta3 * (c * c)
    return m, dm, n


@rule
def adan_update(exp_avg, exp_avg_diff, exp_avg_sq, inv_bias_correction1, diff_coef,
                inv_bias_correction3, eps):
    # (m / (1 - beta1^t) + beta2 dm / (1 - beta2^t)) / (sqrt(n / (1 - beta3^t)) + eps)
    denom = math.sqrt(exp_avg_sq * inv_bias_correction3) + eps
    return (exp_avg * inv_bias_correction1 + diff_coef * exp_avg_diff) / denom


@rule
def adan(param, grad, exp_avg, exp_avg_diff, exp_avg_sq, prev_grad, grad_mult, clip_value,
         first_step, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3,
         inv_bias_correction1, diff_coef, inv_bias_correction3, eps, lr, decay_factor,
         prox_divisor):
    # decay_factor = 1 - lr wd (no_prox) or 1; prox_divisor = 1 + lr wd (proximal) or 1
    g = scaled_grad(grad, grad_mult, clip_value)
    m, dm, n = adan_moments(g, exp_avg, exp_avg_diff, exp_avg_sq, prev_grad, first_step,
                            one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3)
    u = adan_update(m, dm, n, inv_bias_correction1, diff_coef, inv_bias_correction3, eps)
    return (param * decay_factor - lr * u) / prox_divisor, m, dm, n, g


@rule
def adan_cautious_moments(param, grad, exp_avg, exp_avg_diff, exp_avg_sq, prev_grad, grad_mult,
                          clip_value, first_step, one_minus_beta1, beta2, one_minus_beta2, beta3,
                          one_minus_beta3, inv_bias_correction1, diff_coef,
                          inv_bias_correction3, eps, one):
    g = scaled_grad(grad, grad_mult, clip_value)
    m, dm, n = adan_moments(g, exp_avg, exp_avg_diff, exp_avg_sq, prev_grad, first_step,
                            one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3)
    u = adan_update(m, dm, n, inv_bias_correction1, diff_coef, inv_bias_correction3, eps)
    return param, m, dm, n, g, agreement(u, g, one)


@rule
def adan_cautious_apply(param, grad, exp_avg, exp_avg_diff, exp_avg_sq, scale, grad_mult,
                        clip_value, inv_bias_correction1, diff_coef, inv_bias_correction3, eps,
                        lr, decay_factor, prox_divisor):
    g = scaled_grad(grad, grad_mult, clip_value)
    u = adan_update(exp_avg, exp_avg_diff, exp_avg_sq, inv_bias_correction1, diff_coef,
                    inv_bias_correction3, eps)
    return ((param * decay_factor - lr * cautious(u, g, scale)) / prox_divisor, exp_avg,
            exp_avg_diff, exp_avg_sq)
