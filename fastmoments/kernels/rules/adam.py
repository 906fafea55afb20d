"""Adam and its element-wise family: AdamW, AMSGrad, Adamax, NAdam, RAdam, Yogi and
AdaBelief.
"""

from __future__ import annotations

import math

from ..compile import rule
from .common import effective_grad, lerp


# ------------------------------------------------------- Adam, AdamW, AMSGrad
@rule
def adam_moments(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay,
                 one_minus_beta1, beta2, one_minus_beta2):
    # the gradient and Adam's new moments (shared with the cautious and AMSGrad variants)
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    return g, m, v


@rule
def adam_denominator(v, inv_bias_correction2, eps_root, eps):
    return math.sqrt(v * inv_bias_correction2 + eps_root) + eps


@rule
def adam(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value, weight_decay, decay_factor,
         one_minus_beta1, beta2, one_minus_beta2, step_size, inv_bias_correction2, eps_root, eps):
    # decay_factor = 1 - lr * weight_decay for AdamW (decoupled), 1 for Adam (L2 in the grad).
    g, m, v = adam_moments(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                           weight_decay, one_minus_beta1, beta2, one_minus_beta2)
    denom = adam_denominator(v, inv_bias_correction2, eps_root, eps)
    return param * decay_factor - step_size * (m / denom), m, v


@rule
def adam_amsgrad(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_mult, clip_value,
                 weight_decay, decay_factor, one_minus_beta1, beta2, one_minus_beta2, step_size,
                 inv_bias_correction2, eps_root, eps):
    g, m, v = adam_moments(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                           weight_decay, one_minus_beta1, beta2, one_minus_beta2)
    vmax = max_exp_avg_sq if max_exp_avg_sq > v else v
    denom = adam_denominator(vmax, inv_bias_correction2, eps_root, eps)
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
    # torch: p - grad_coef * g / denom - exp_avg_coef * m / denom; one division instead
    # of two (the same value to round-off, and the loop is bound by the divisions in cache)
    return p - (grad_coef * g + exp_avg_coef * m) / denom, m, v


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


# --------------------------------------------------------------- AdaBelief
@rule
def adabelief(param, grad, exp_avg, exp_avg_var, grad_mult, clip_value, weight_decay,
              decay_factor, one_minus_beta1, beta2, one_minus_beta2, step_size,
              inv_bias_correction2, eps):
    # s <- beta2 s + (1 - beta2) (g - m)^2 + eps: eps enters the stored state (as in
    # adabelief-pytorch) and again outside the square root.
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    r = g - m
    s = beta2 * exp_avg_var + one_minus_beta2 * (r * r) + eps
    denom = math.sqrt(s * inv_bias_correction2) + eps
    return param * decay_factor - step_size * (m / denom), m, s


@rule
def adabelief_amsgrad(param, grad, exp_avg, exp_avg_var, max_exp_avg_var, grad_mult,
                      clip_value, weight_decay, decay_factor, one_minus_beta1, beta2,
                      one_minus_beta2, step_size, inv_bias_correction2, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    r = g - m
    s = beta2 * exp_avg_var + one_minus_beta2 * (r * r) + eps
    smax = max_exp_avg_var if max_exp_avg_var > s else s
    denom = math.sqrt(smax * inv_bias_correction2) + eps
    return param * decay_factor - step_size * (m / denom), m, s, smax
