"""Properties of the update rules that hold for any input (hypothesis), and a long run.

- Adam's step per coordinate is bounded (by lr at the first step, and by the
  Cauchy-Schwarz bound of m_t / sqrt(v_t) afterwards);
- scaling every gradient by c > 0 leaves Adam's update unchanged up to eps (exactly:
  Adam with eps on c*g is Adam with eps/c on g; bit-for-bit for powers of two);
- float32 and float64 trajectories agree to float32 precision;
- ``maximize=True`` on g is bit-for-bit the minimisation on -g, for every rule;
- a 10^6-step run keeps the step counter and the bias corrections exact.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from cases import CASES, case_id, problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmoments as fm

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

SIZE = 5
magnitudes = st.floats(min_value=1e-3, max_value=1e3)
signed = st.builds(lambda m, s: m * s, magnitudes, st.sampled_from([-1.0, 1.0]))
grad_vector = st.lists(st.one_of(signed, st.just(0.0)), min_size=SIZE, max_size=SIZE)
nonzero_vector = st.lists(signed, min_size=SIZE, max_size=SIZE)
betas = st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999))


def adam_bound(t: int, beta1: float, beta2: float) -> float:
    """sup |m_hat_t / sqrt(v_hat_t)| over all gradient sequences (Cauchy-Schwarz)."""
    ratio = beta1 * beta1 / beta2
    series = sum(ratio**k for k in range(t))
    return ((1 - beta1) / (1 - beta1**t)) * math.sqrt((1 - beta2**t) / (1 - beta2) * series)


@SETTINGS
@given(grads=st.lists(grad_vector, min_size=1, max_size=8), betas=betas,
       lr=st.floats(1e-4, 1.0), eps=st.sampled_from([1e-12, 1e-8, 1e-3]),
       amsgrad=st.booleans())
def test_adam_step_is_bounded(grads, betas, lr, eps, amsgrad):
    p = np.zeros(SIZE)
    opt = fm.Adam([p], lr=lr, betas=betas, eps=eps, amsgrad=amsgrad)
    for t, g in enumerate(grads, start=1):
        before = p.copy()
        opt.step([np.array(g)])
        step = np.abs(p - before)
        limit = lr if t == 1 else lr * adam_bound(t, *betas)
        # amsgrad divides by a larger v: its bound is Adam's
        assert np.all(step <= limit * (1 + 1e-12) + 1e-300), (t, step.max(), limit)


@SETTINGS
@given(grads=st.lists(nonzero_vector, min_size=1, max_size=6), betas=betas,
       lr=st.floats(1e-4, 1.0), eps=st.sampled_from([1e-8, 1e-3, 0.5]),
       log2c=st.integers(-20, 20), amsgrad=st.booleans())
def test_adam_is_scale_invariant_up_to_eps_power_of_two(grads, betas, lr, eps, log2c, amsgrad):
    c = 2.0**log2c
    p, q = np.ones(SIZE), np.ones(SIZE)
    a = fm.Adam([p], lr=lr, betas=betas, eps=eps, amsgrad=amsgrad)
    b = fm.Adam([q], lr=lr, betas=betas, eps=eps / c, amsgrad=amsgrad)
    for g in grads:
        a.step([np.array(g) * c])
        b.step([np.array(g)])
    np.testing.assert_array_equal(p, q)


@SETTINGS
@given(grads=st.lists(nonzero_vector, min_size=1, max_size=6), betas=betas,
       lr=st.floats(1e-4, 1.0), c=st.floats(1e-3, 1e3))
def test_adam_without_eps_ignores_any_gradient_scale(grads, betas, lr, c):
    p, q = np.ones(SIZE), np.ones(SIZE)
    a = fm.Adam([p], lr=lr, betas=betas, eps=0.0)
    b = fm.Adam([q], lr=lr, betas=betas, eps=0.0)
    for g in grads:
        a.step([np.array(g) * c])
        b.step([np.array(g)])
    # rounding only: a few ulps of each update, accumulated over the steps
    np.testing.assert_allclose(p - 1.0, q - 1.0, rtol=1e-10, atol=1e-13 * lr * len(grads))


FLOAT32_RULES = [
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("Adamax", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01)),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9))),
    ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.01)),
    ("Yogi", dict(lr=0.01)),
]


@pytest.mark.parametrize("case", FLOAT32_RULES, ids=case_id)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(init=st.lists(st.floats(-10, 10), min_size=SIZE, max_size=SIZE),
       grads=st.lists(st.lists(st.one_of(st.floats(-10, 10), st.just(0.0)), min_size=SIZE,
                               max_size=SIZE), min_size=1, max_size=10))
def test_float32_agrees_with_float64_to_float32_precision(case, init, grads):
    name, kwargs = case
    init32 = np.array(init, dtype=np.float32)
    p32, p64 = init32.copy(), init32.astype(np.float64)
    a = getattr(fm, name)([p32], **kwargs)
    b = getattr(fm, name)([p64], **kwargs)
    for g in grads:
        g32 = np.array(g, dtype=np.float32)
        a.step([g32])
        b.step([g32.astype(np.float64)])
    assert p32.dtype == np.float32
    # float32 rounding of the parameter (|p| up to ~10), plus float32 rounding of every
    # update (each at most a few lr in size)
    tol = 4 * np.finfo(np.float32).eps * (np.abs(p64) + 10 * kwargs["lr"] * len(grads))
    assert np.all(np.abs(p32 - p64) <= tol), np.abs(p32 - p64) / tol


@pytest.mark.parametrize("case", CASES, ids=case_id)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_maximize_is_minimizing_the_negated_gradient(case, seed, dtype):
    name, kwargs = case
    kwargs = {k: v for k, v in kwargs.items() if k != "maximize"}
    params, grad = problem(steps=5, dtype=dtype, seed=seed)
    other = [p.copy() for p in params]
    up = getattr(fm, name)(params, maximize=True, **kwargs)
    down = getattr(fm, name)(other, **kwargs)
    for t in range(5):
        g = grad(params, t)
        up.step(g)
        down.step([-x for x in g])
    for x, y in zip(params, other, strict=True):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ long run
def test_million_steps_keep_counter_and_bias_corrections_exact():
    """10^6 Adam steps on 10 float64 coordinates with a constant gradient.

    With g constant, m_t = g (1 - beta1^t) and v_t = g^2 (1 - beta2^t) exactly, so the
    bias-corrected update is lr * g / (|g| + eps) at every step; beta2 = 1 - 1e-6 keeps
    the second bias correction far from 1 at t = 10^6 (beta2^t = e^-1), where a
    drifting or overflowing counter, or a correction accumulated as a running
    product, would show.
    """
    n_steps = 10**6
    beta1, beta2, lr, eps = 0.9, 1.0 - 1e-6, 1e-6, 1e-8
    g = np.linspace(-1.0, 1.0, 10) + 0.05  # no zero
    p = np.zeros(10)
    opt = fm.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps)
    grads = [g]
    start = time.perf_counter()
    for _ in range(n_steps):
        opt.step(grads)
    elapsed = time.perf_counter() - start
    assert type(opt.step_count) is int and opt.step_count == n_steps
    # the host scalars of the last step: lr / (1 - beta1^t) and 1 / (1 - beta2^t)
    names = opt._groups[0].kernel.scalar_names
    scalars = dict(zip(names, opt._groups[0].scalars.tolist(), strict=True))
    bias2 = -math.expm1(n_steps * math.log1p(beta2 - 1.0))  # 1 - beta2^t, closed form
    assert scalars["step_size"] == lr / (1.0 - beta1**n_steps) == lr
    assert scalars["inv_bias_correction2"] == pytest.approx(1.0 / bias2, rel=1e-13)
    assert 1.0 / scalars["inv_bias_correction2"] == pytest.approx(1 - math.exp(-1), rel=1e-6)
    state = opt.state[0]
    np.testing.assert_allclose(state["exp_avg"], g, rtol=1e-12)
    np.testing.assert_allclose(state["exp_avg_sq"], g * g * bias2, rtol=1e-9)
    # every step moved each coordinate by lr * |g| / (|g| + eps): no drift in 10^6 steps
    expected = -n_steps * lr * g / (np.abs(g) + eps)
    np.testing.assert_allclose(p, expected, rtol=1e-9)
    print(f"10^6 steps in {elapsed:.1f} s ({elapsed:.2f} us/step)")
