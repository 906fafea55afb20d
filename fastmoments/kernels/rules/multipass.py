"""The multi-pass rules (LAMB, ND-Adam, SWATS) and Yogi's initial v."""

from __future__ import annotations

import math

from ..compile import rule
from .common import effective_grad, lerp, scaled_grad


# ====================================================================
# Rules of fastmoments.extra (LAMB, ND-Adam, SWATS, Yogi's v0; AdaBelief is in
# :mod:`.adam`, Lion in :mod:`.lion`).
# The multi-pass rules (LAMB, ND-Adam, SWATS) are run by the segmented loops of
# :mod:`..segmented`: after the state values they take one value per segment (a
# tensor or a weight vector: a trust-ratio step, a dot product, a norm), and after
# the new state values they return per-element terms that the loops sum per
# segment in float64.
# --------------------------------------------------------------------
# -------------------------------------------------------------------- LAMB
@rule
def lamb_direction(param, exp_avg, exp_avg_sq, inv_bias_correction1, inv_bias_correction2,
                   eps, weight_decay):
    # r = m_hat / (sqrt(v_hat) + eps) + wd * p
    denom = math.sqrt(exp_avg_sq * inv_bias_correction2) + eps
    return (exp_avg * inv_bias_correction1) / denom + weight_decay * param


@rule
def lamb_first_pass(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, one_minus_beta1,
                    beta2, one_minus_beta2, inv_bias_correction1, inv_bias_correction2, eps,
                    weight_decay):
    # the moments and the direction r
    g = scaled_grad(grad, grad_mult, clip_value)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    r = lamb_direction(param, m, v, inv_bias_correction1, inv_bias_correction2, eps,
                       weight_decay)
    return m, v, r


@rule
def lamb_moments(param, grad, exp_avg, exp_avg_sq, update, grad_mult, clip_value,
                 one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction1,
                 inv_bias_correction2, eps, weight_decay):
    # pass 1 (CPU): the moments, r (stored in update for pass 2), and the terms of
    # ||p||^2 and ||r||^2 per tensor
    m, v, r = lamb_first_pass(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                              one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction1,
                              inv_bias_correction2, eps, weight_decay)
    return param, m, v, r, param * param, r * r


@rule
def lamb_apply(param, grad, update, trust_step):
    # pass 2 (CPU): p <- p - lr * trust * r, with the r of pass 1
    return param - trust_step * update, update


@rule
def lamb_norms(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, one_minus_beta1, beta2,
               one_minus_beta2, inv_bias_correction1, inv_bias_correction2, eps, weight_decay):
    # pass 1 (GPU): as lamb_moments, r not stored
    m, v, r = lamb_first_pass(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                              one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction1,
                              inv_bias_correction2, eps, weight_decay)
    return param, m, v, param * param, r * r


@rule
def lamb_apply_recomputed(param, grad, exp_avg, exp_avg_sq, trust_step, inv_bias_correction1,
                          inv_bias_correction2, eps, weight_decay):
    # pass 2 (GPU): p <- p - lr * trust * r, r recomputed bit-for-bit from pass 1's results
    r = lamb_direction(param, exp_avg, exp_avg_sq, inv_bias_correction1,
                       inv_bias_correction2, eps, weight_decay)
    return param - trust_step * r, exp_avg, exp_avg_sq


@rule
def lamb_moments_apply(param, grad, exp_avg, exp_avg_sq, trust_step, grad_mult, clip_value,
                       one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction1,
                       inv_bias_correction2, eps, weight_decay):
    # pass 2 with states stored in fewer bits (GPU, and int8 on the CPU): the moments and
    # r of pass 1 again, from the same stored values (bit for bit), p <- p - lr * trust * r,
    # the moments stored once
    m, v, r = lamb_first_pass(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                              one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction1,
                              inv_bias_correction2, eps, weight_decay)
    return param - trust_step * r, m, v


# ----------------------------------------------------------------- ND-Adam
@rule
def ndadam_radial(param, grad, grad_mult, clip_value):
    # pass 1: the terms of g . w per weight vector
    g = scaled_grad(grad, grad_mult, clip_value)
    return param, g * param


@rule
def ndadam_moments(param, grad, exp_avg, radial, grad_mult, clip_value, one_minus_beta1):
    # pass 2: g_bar = g - (g . w) w; m <- beta1 m + (1 - beta1) g_bar; terms of ||g_bar||^2
    g = scaled_grad(grad, grad_mult, clip_value)
    g_bar = g - radial * param
    m = lerp(exp_avg, g_bar, one_minus_beta1)
    return param, m, g_bar * g_bar


@rule
def ndadam_step(param, grad, exp_avg, exp_avg_sq, grad_bar_sq_norm, beta2, one_minus_beta2,
                step_size, inv_bias_correction2, eps):
    # pass 3: the vector's scalar v (kept in each element of the vector, all equal);
    # the Adam step; terms of ||w_bar||^2 for the renormalization of pass 4
    v = beta2 * exp_avg_sq + one_minus_beta2 * grad_bar_sq_norm
    w_bar = param - step_size * (exp_avg / (math.sqrt(v * inv_bias_correction2) + eps))
    return w_bar, exp_avg, v, w_bar * w_bar


@rule
def segment_square(param, grad):
    # terms of ||w||^2 per segment
    return param, param * param


@rule
def segment_divide(param, grad, divisor):
    return (param / divisor,)


# ------------------------------------------------------------------- SWATS
@rule
def swats_adam(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay,
               one_minus_beta1, beta2, one_minus_beta2, step_size, inv_bias_correction2, eps):
    # the Adam phase: p_k = -lr m_hat / (sqrt(a_hat) + eps); terms of p_k . g and p_k . p_k
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    a = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    p_k = -(step_size * (m / (math.sqrt(a * inv_bias_correction2) + eps)))
    return param + p_k, m, a, p_k * g, p_k * p_k


@rule
def swats_sgd(param, grad, momentum_buffer, grad_mult, clip_value, weight_decay, beta1,
              nesterov, step_size):
    # the SGD phase: v <- beta1 v + g; p <- p - (1 - beta1) lambda (g + beta1 v | v)
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    buf = beta1 * momentum_buffer + g
    if nesterov:
        direction = g + beta1 * buf
    else:
        direction = buf
    return param - step_size * direction, buf


# ------------------------------------------------------- Yogi's initial v
@rule
def accumulate_square(param, grad, exp_avg_sq, keep, weight, weight_decay):
    # v <- keep * v + weight * (g + wd p)^2 (keep = 0 on the first batch)
    g = grad + weight_decay * param
    return param, keep * exp_avg_sq + weight * (g * g)
