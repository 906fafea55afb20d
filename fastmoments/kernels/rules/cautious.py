"""The cautious mask (Liang et al., 2024) and the cautious Adam, AdamW and Lion."""

from __future__ import annotations

from ..compile import rule
from .adam import adam_denominator, adam_moments
from .common import effective_grad, lerp, scaled_grad


# ---------------------------------------------------------------- the mask
# (also used by the cautious passes of ADOPT, AdEMAMix and Adan, in :mod:`.modern`)
@rule
def agreement(update, g, one):
    # 1 where update * g > 0, else 0 (the cautious mask before its scale)
    s = update * g
    if s > -s:
        return one
    return one - one


@rule
def cautious(update, g, scale):
    # the update where it agrees in sign with g, times the tensor's scale; 0 elsewhere
    s = update * g
    if s > -s:
        return update * scale
    return update - update


# ====================================================================
# The cautious variants of Adam, AdamW (C-AdamW) and Lion (C-Lion), Liang et al. (2024).
# Their first pass only counts: the sign of Adam's update m / denom is the sign of its new
# first moment m (denom > 0), and Lion's update is sign(c); both come from the gradient and
# the stored first moment alone, so the count reads p (L2 decay), g and exp_avg and stores
# nothing. The second pass is the element-wise rule with the masked update, which
# recomputes m (or c) bit for bit: the elements it moves are those the first pass counted.
# --------------------------------------------------------------------
@rule
def adam_cautious_count(param, grad, exp_avg, grad_mult, clip_value, weight_decay,
                        one_minus_beta1, one):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    return param, exp_avg, agreement(lerp(exp_avg, g, one_minus_beta1), g, one)


@rule
def adam_cautious_apply(param, grad, exp_avg, exp_avg_sq, scale, grad_mult, clip_value,
                        weight_decay, decay_factor, one_minus_beta1, beta2, one_minus_beta2,
                        step_size, inv_bias_correction2, eps_root, eps):
    g, m, v = adam_moments(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                           weight_decay, one_minus_beta1, beta2, one_minus_beta2)
    denom = adam_denominator(v, inv_bias_correction2, eps_root, eps)
    return param * decay_factor - step_size * (cautious(m, g, scale) / denom), m, v


@rule
def adam_amsgrad_cautious_apply(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scale,
                                grad_mult, clip_value, weight_decay, decay_factor,
                                one_minus_beta1, beta2, one_minus_beta2, step_size,
                                inv_bias_correction2, eps_root, eps):
    g, m, v = adam_moments(param, grad, exp_avg, exp_avg_sq, grad_mult, clip_value,
                           weight_decay, one_minus_beta1, beta2, one_minus_beta2)
    vmax = max_exp_avg_sq if max_exp_avg_sq > v else v
    denom = adam_denominator(vmax, inv_bias_correction2, eps_root, eps)
    return param * decay_factor - step_size * (cautious(m, g, scale) / denom), m, v, vmax


@rule
def same_sign(a, b):
    # both > 0 or both < 0: sign(a) * b > 0 without the product (which could underflow)
    return (a > -a and b > -b) or (a < -a and b < -b)


@rule
def lion_cautious_count(param, grad, exp_avg, grad_mult, clip_value, beta1, one_minus_beta1,
                        one):
    g = scaled_grad(grad, grad_mult, clip_value)
    if same_sign(beta1 * exp_avg + one_minus_beta1 * g, g):
        return param, exp_avg, one
    return param, exp_avg, one - one


@rule
def lion_cautious_apply(param, grad, exp_avg, scale, grad_mult, clip_value, decay_factor, lr,
                        beta1, one_minus_beta1, beta2, one_minus_beta2):
    # Lion's step where sign(c) agrees with g, times the tensor's scale; no step elsewhere
    g = scaled_grad(grad, grad_mult, clip_value)
    c = beta1 * exp_avg + one_minus_beta1 * g
    p = param * decay_factor
    if same_sign(c, g):
        if c > -c:
            p = p - lr * scale
        else:
            p = p + lr * scale
    elif c != c:
        p = c  # a NaN gradient propagates (NaN times the mask's 0 is NaN), as in torch
    return p, beta2 * exp_avg + one_minus_beta2 * g
