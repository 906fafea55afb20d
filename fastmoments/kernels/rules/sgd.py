"""SGD, with and without (Nesterov) momentum."""

from __future__ import annotations

from ..compile import rule
from .common import effective_grad


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
