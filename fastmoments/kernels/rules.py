"""The per-element math of every update rule: the single source of truth.

Each rule takes ``(param, grad, <state values>, grad_mult, clip_value, <scalars>)`` for
one element and returns the new ``(param, <state values>)``. The CPU loops and the
CUDA kernels are generated from these signatures (see :mod:`.elementwise`). Every scalar is
computed on the host in float64 and cast to the buffer dtype before the call, and no
rule contains a numeric literal, so a float32 buffer is processed in float32.

The shared gradient preamble (:func:`effective_grad`) applies, in torch's order,
the loss-scale / maximize / clip-by-norm factor ``grad_mult`` (one multiplication:
``sign / loss_scale * clip_coef``), clipping by value (``clip_value`` = inf when
off) and L2 weight decay.
"""

from __future__ import annotations

import math

from .compile import rule


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
    # torch: sqrt(acc_delta + eps) / sqrt(sq + eps) * g; one square root instead of two
    # (the same value to round-off, and the loop is bound by these operations in cache)
    delta = math.sqrt((acc_delta + eps) / (sq + eps)) * g
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


# ====================================================================
# Rules of fastmoments.extra (AdaBelief, Lion, LAMB, ND-Adam, SWATS, Yogi's v0).
# The multi-pass rules (LAMB, ND-Adam, SWATS) are run by the segmented loops of
# :mod:`.segmented`: after the state values they take one value per segment (a
# tensor or a weight vector: a trust-ratio step, a dot product, a norm), and after
# the new state values they return per-element terms that the loops sum per
# segment in float64.
# --------------------------------------------------------------------
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


# ====================================================================
# Rules of fastmoments.optim.modern (ADOPT, AdEMAMix, Schedule-Free AdamW / SGD, Adan)
# and the two segmented passes of their cautious variants (Liang et al., 2024): the
# first updates the state and returns, per element, 1 where the update agrees in sign
# with the gradient (summed per tensor); the second recomputes the update from the new
# state, bit for bit, and applies it where it agrees, times the tensor's
# ``scale = numel / (agreeing + 1)``. ``one`` is 1 in the buffer dtype.
# --------------------------------------------------------------------
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
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    denom = math.sqrt(v * inv_bias_correction2 + eps_root) + eps
    return param * decay_factor - step_size * (cautious(m, g, scale) / denom), m, v


@rule
def adam_amsgrad_cautious_apply(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scale,
                                grad_mult, clip_value, weight_decay, decay_factor,
                                one_minus_beta1, beta2, one_minus_beta2, step_size,
                                inv_bias_correction2, eps_root, eps):
    g = effective_grad(param, grad, grad_mult, clip_value, weight_decay)
    m = lerp(exp_avg, g, one_minus_beta1)
    v = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)
    vmax = max_exp_avg_sq if max_exp_avg_sq > v else v
    denom = math.sqrt(vmax * inv_bias_correction2 + eps_root) + eps
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
