"""Adagrad, RMSprop (centered, with momentum) and Adadelta."""

from __future__ import annotations

import math

from ..compile import rule
from .common import effective_grad, lerp


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
    # torch: sqrt(acc_delta + eps) / sqrt(sq + eps) * g; one square root instead of two
    # (the same value to round-off, and the loop is bound by these operations in cache)
    delta = math.sqrt((acc_delta + eps) / (sq + eps)) * g
    acc = rho * acc_delta + one_minus_rho * (delta * delta)
    return param - lr * delta, sq, acc
