"""Lion (sign of the interpolated momentum)."""

from __future__ import annotations

from ..compile import rule
from .common import scaled_grad


# -------------------------------------------------------------------- Lion
@rule
def lion(param, grad, exp_avg, grad_mult, clip_value, decay_factor, lr, beta1,
         one_minus_beta1, beta2, one_minus_beta2):
    # c = beta1 m + (1 - beta1) g written out (not as a lerp): its sign is the step,
    # so it is rounded exactly as the paper's and lion-pytorch's formula.
    g = scaled_grad(grad, grad_mult, clip_value)
    c = beta1 * exp_avg + one_minus_beta1 * g
    p = param * decay_factor
    if c > -c:
        p = p - lr
    elif c < -c:
        p = p + lr
    elif c != c:
        p = c  # a NaN gradient propagates (sign(NaN) is NaN), as in torch
    return p, beta2 * exp_avg + one_minus_beta2 * g
