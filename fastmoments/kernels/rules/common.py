"""The shared gradient preamble of the rules, and :func:`lerp`.

The shared gradient preamble (:func:`effective_grad`) applies, in torch's order,
the loss-scale / maximize / clip-by-norm factor ``grad_mult`` (one multiplication:
``sign / loss_scale * clip_coef``), clipping by value (``clip_value`` = inf when
off) and L2 weight decay.
"""

from __future__ import annotations

from ..compile import rule


@rule
def scaled_grad(grad, grad_mult, clip_value):
    # the gradient as the step sees it: unscaled / sign-flipped / clipped by norm
    # (one multiplication by grad_mult), then clipped by value; rules whose decay is
    # not L2 start here
    g = grad * grad_mult
    if g > clip_value:
        g = clip_value
    elif g < -clip_value:
        g = -clip_value
    return g


@rule
def effective_grad(param, grad, grad_mult, clip_value, weight_decay):
    g = scaled_grad(grad, grad_mult, clip_value)
    if weight_decay:  # skipped when 0, as torch does (0 * inf would be nan)
        g = g + weight_decay * param
    return g


@rule
def lerp(start, end, weight):
    return start + weight * (end - start)
