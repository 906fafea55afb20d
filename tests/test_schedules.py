"""Learning-rate schedules: hand-computed values, validation, and torch parity.

Convention under test: ``schedule(k)`` is the learning rate of the ``k``-th update
(counting from 0), i.e. torch's ``optimizer.param_groups[0]["lr"]`` after ``k``
calls to ``scheduler.step()``.
"""

from __future__ import annotations

import dataclasses
import doctest
import math
import re

import pytest

from fastmoments import schedules
from fastmoments.schedules import (
    Constant,
    Cosine,
    CosineWarmRestarts,
    as_schedule,
    constant,
    cosine,
    cosine_warm_restarts,
    exponential,
    inverse_sqrt,
    linear_warmup,
    multi_step,
    normalized_weight_decay,
    one_cycle,
    polynomial,
    step_decay,
)

N_STEPS = 200
RTOL = 1e-12


def assert_close(ours, ref, rtol=RTOL, atol=0.0):
    """Element-wise ``|a - b| <= atol + rtol * |b|``, reporting the first bad step."""
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert abs(a - b) <= atol + rtol * abs(b), f"step {k}: ours {a!r}, reference {b!r}"


def values(schedule, n=N_STEPS):
    return [schedule(k) for k in range(n)]


EXAMPLES = [
    constant(0.1),
    step_decay(0.1, 30),
    multi_step(0.1, [80, 30]),
    exponential(0.1, 0.99),
    inverse_sqrt(0.1, timescale=100),
    polynomial(0.1, 0.001, 2.0, 100, transition_begin=10),
    cosine(0.1, 100, eta_min=1e-4),
    cosine_warm_restarts(0.1, 10, T_mult=2, eta_min=1e-4),
    linear_warmup(cosine(0.1, 100), 10, init_value=1e-3),
    one_cycle(0.1, 100),
    one_cycle(0.1, 100, anneal_strategy="linear", three_phase=True),
]


# ---------------------------------------------------------------- generic API
@pytest.mark.parametrize("schedule", EXAMPLES, ids=repr)
def test_returns_python_float(schedule):
    for k in (0, 1, 5, 99, 100, 101, 10_000):
        assert type(schedule(k)) is float


def test_int_arguments_give_floats():
    for schedule in (
        constant(1),
        step_decay(1, 2, gamma=1),
        multi_step(1, [3], gamma=1),
        exponential(1, 1),
        inverse_sqrt(1),
        polynomial(1, 0, 1, 4),
        cosine(1, 4),
        cosine_warm_restarts(1, 4),
        linear_warmup(1, 4),
        one_cycle(1, 10),
    ):
        for k in range(12):
            assert type(schedule(k)) is float


@pytest.mark.parametrize("schedule", EXAMPLES, ids=repr)
def test_repr_round_trips(schedule):
    text = repr(schedule)
    assert text.startswith(type(schedule).__name__ + "(")
    assert "_phases" not in text and "_peak" not in text
    rebuilt = eval(text, vars(schedules))  # noqa: S307 - our own repr
    assert rebuilt == schedule
    assert hash(rebuilt) == hash(schedule)
    assert values(rebuilt, 50) == values(schedule, 50)


def test_repr_shows_settings():
    assert repr(cosine(0.1, 100)) == "Cosine(init_value=0.1, decay_steps=100, eta_min=0.0)"
    assert repr(multi_step(1.0, [80, 30, 30])) == (
        "MultiStep(init_value=1.0, milestones=(30, 30, 80), gamma=0.1)"
    )
    assert repr(linear_warmup(0.1, 5)) == (
        "LinearWarmup(schedule=Constant(value=0.1), warmup_steps=5, init_value=0.0)"
    )


@pytest.mark.parametrize("schedule", EXAMPLES, ids=repr)
def test_frozen(schedule):
    with pytest.raises((AttributeError, TypeError)):  # TypeError: CPython 3.11 slots bug
        schedule.foo = 1
    name = dataclasses.fields(schedule)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(schedule, name, 0.5)


def test_lowercase_aliases_are_the_classes():
    assert cosine is Cosine
    assert cosine_warm_restarts is CosineWarmRestarts
    assert isinstance(constant(0.1), Constant)
    for name in schedules.__all__:
        assert hasattr(schedules, name)


def test_docstring_examples():
    """Every module of the package, with the package's names (the lowercase aliases)."""
    import importlib
    import pkgutil

    attempted = 0
    for info in pkgutil.iter_modules(schedules.__path__):
        module = importlib.import_module(f"{schedules.__name__}.{info.name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS,
                                 extraglobs=vars(schedules))
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted >= 10


# ----------------------------------------------------------------- validation
ERRORS = [
    (constant, dict(value=-0.1), "value must be a non-negative finite number, got -0.1"),
    (constant, dict(value=math.nan), "value must be a non-negative finite number, got nan"),
    (constant, dict(value="0.1"), "value must be a non-negative finite number, got '0.1'"),
    (step_decay, dict(init_value=0.1, step_size=0), "step_size must be a positive integer, got 0"),
    (step_decay, dict(init_value=0.1, step_size=2.0), "step_size must be a positive integer"),
    (step_decay, dict(init_value=0.1, step_size=True), "step_size must be a positive integer"),
    (step_decay, dict(init_value=0.1, step_size=3, gamma=0.0), "gamma must be a positive"),
    (step_decay, dict(init_value=-1.0, step_size=3), "init_value must be a non-negative"),
    (multi_step, dict(init_value=0.1, milestones=[10, 0]), "milestones must be a sequence of"),
    (multi_step, dict(init_value=0.1, milestones=[10, 2.5]), "milestones must be a sequence of"),
    (multi_step, dict(init_value=0.1, milestones=10), "milestones must be a sequence of"),
    (multi_step, dict(init_value=0.1, milestones=[10], gamma=-0.1), "gamma must be a positive"),
    (exponential, dict(init_value=0.1, gamma=0), "gamma must be a positive finite number, got 0"),
    (exponential, dict(init_value=0.1, gamma=math.inf), "gamma must be a positive finite"),
    (inverse_sqrt, dict(init_value=0.1, timescale=0), "timescale must be a positive finite"),
    (polynomial, dict(init_value=0.1, end_value=-1, power=1, transition_steps=5), "end_value"),
    (polynomial, dict(init_value=0.1, end_value=0, power=0, transition_steps=5), "power must"),
    (
        polynomial,
        dict(init_value=0.1, end_value=0, power=1, transition_steps=0),
        "transition_steps must be a positive integer, got 0",
    ),
    (
        polynomial,
        dict(init_value=0.1, end_value=0, power=1, transition_steps=5, transition_begin=-1),
        "transition_begin must be a non-negative integer, got -1",
    ),
    (cosine, dict(init_value=0.1, decay_steps=0), "decay_steps must be a positive integer, got 0"),
    (cosine, dict(init_value=0.1, decay_steps=10, eta_min=-1e-3), "eta_min must be a non-neg"),
    (cosine_warm_restarts, dict(init_value=0.1, T_0=0), "T_0 must be a positive integer, got 0"),
    (cosine_warm_restarts, dict(init_value=0.1, T_0=2.5), "T_0 must be a positive integer"),
    (
        cosine_warm_restarts,
        dict(init_value=0.1, T_0=10, T_mult=0),
        "T_mult must be an integer >= 1, got 0",
    ),
    (cosine_warm_restarts, dict(init_value=0.1, T_0=10, T_mult=1.5), "T_mult must be an int"),
    (
        linear_warmup,
        dict(schedule=0.1, warmup_steps=-1),
        "warmup_steps must be a non-negative integer, got -1",
    ),
    (linear_warmup, dict(schedule=-0.1, warmup_steps=5), "schedule must be a non-negative"),
    (linear_warmup, dict(schedule=0.1, warmup_steps=5, init_value=-1), "init_value must be"),
    (one_cycle, dict(max_lr=-0.1, total_steps=10), "max_lr must be a non-negative"),
    (one_cycle, dict(max_lr=0.1, total_steps=0), "total_steps must be a positive integer, got 0"),
    (
        one_cycle,
        dict(max_lr=0.1, total_steps=10, pct_start=1.5),
        "pct_start must be a number in [0, 1], got 1.5",
    ),
    (one_cycle, dict(max_lr=0.1, total_steps=10, div_factor=0), "div_factor must be a positive"),
    (one_cycle, dict(max_lr=0.1, total_steps=10, final_div_factor=-1), "final_div_factor must"),
    (
        one_cycle,
        dict(max_lr=0.1, total_steps=10, anneal_strategy="cosine"),
        "anneal_strategy must be 'cos' or 'linear', got 'cosine'",
    ),
    (one_cycle, dict(max_lr=0.1, total_steps=10, three_phase=1), "three_phase must be a bool"),
    (
        normalized_weight_decay,
        dict(lambda_norm=0.05, batch_size=0, num_train_points=100, num_epochs=10),
        "batch_size must be a positive integer, got 0",
    ),
    (
        normalized_weight_decay,
        dict(lambda_norm=0.05, batch_size=10, num_train_points=0, num_epochs=10),
        "num_train_points must be a positive integer, got 0",
    ),
    (
        normalized_weight_decay,
        dict(lambda_norm=0.05, batch_size=10, num_train_points=100, num_epochs=0),
        "num_epochs must be a positive finite number, got 0",
    ),
    (
        normalized_weight_decay,
        dict(lambda_norm=-0.05, batch_size=10, num_train_points=100, num_epochs=1),
        "lambda_norm must be a non-negative finite number, got -0.05",
    ),
]


@pytest.mark.parametrize(("factory", "kwargs", "message"), ERRORS)
def test_validation_errors(factory, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        factory(**kwargs)


def test_as_schedule():
    s = as_schedule(0.01)
    assert s == Constant(0.01)
    assert as_schedule(3) == Constant(3.0)
    c = cosine(0.1, 10)
    assert as_schedule(c) is c

    def f(step):
        return 1.0 / (step + 1)

    assert as_schedule(f) is f
    for bad in ("0.1", None, [0.1], True):
        with pytest.raises(TypeError, match=r"^lr must be a float or a callable"):
            as_schedule(bad)
    with pytest.raises(ValueError, match=r"^lr must be a non-negative finite number"):
        as_schedule(-0.1)
    with pytest.raises(TypeError, match=r"^beta must be"):
        as_schedule("x", name="beta")


# ----------------------------------------------------- hand-computed values
def test_constant_step_exponential_values():
    assert values(constant(0.25), 5) == [0.25] * 5
    assert values(step_decay(1.0, 3, gamma=0.5), 10) == [1, 1, 1, 0.5, 0.5, 0.5] + [0.25] * 3 + [
        0.125
    ]
    s = multi_step(1.0, [4, 2, 4], gamma=0.5)  # unsorted, 4 listed twice
    assert values(s, 6) == [1.0, 1.0, 0.5, 0.5, 0.125, 0.125]
    assert values(multi_step(1.0, []), 3) == [1.0, 1.0, 1.0]
    assert values(exponential(2.0, 0.5), 4) == [2.0, 1.0, 0.5, 0.25]


def test_inverse_sqrt_values():
    s = inverse_sqrt(0.3)
    for k in range(100):
        assert s(k) == pytest.approx(0.3 / math.sqrt(k + 1), rel=1e-15)
    s = inverse_sqrt(0.3, timescale=50)
    for k in range(300):
        assert s(k) == pytest.approx(0.3 * math.sqrt(50 / (k + 50)), rel=1e-14)
    # Transformer / fairseq inverse-sqrt: ramp to the peak, then peak * sqrt(W / t).
    w, peak = 40, 1e-3
    noam = linear_warmup(inverse_sqrt(peak, timescale=w), w)
    for t in range(1, 400):
        expected = peak * t / w if t < w else peak * math.sqrt(w / t)
        assert noam(t) == pytest.approx(expected, rel=1e-14)


def _optax_polynomial(init_value, end_value, power, transition_steps, transition_begin, count):
    """optax.polynomial_schedule, transcribed."""
    count = min(max(count - transition_begin, 0), transition_steps)
    frac = 1 - count / transition_steps
    return (init_value - end_value) * (frac**power) + end_value


def test_polynomial_values():
    s = polynomial(1.0, 0.0, power=1.0, transition_steps=4)
    assert values(s, 7) == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]
    s = polynomial(0.5, 0.1, power=2.0, transition_steps=4, transition_begin=2)
    # frac = 1, 1, 1, 3/4, 1/2, 1/4, 0, 0: 0.1 + 0.4 * frac**2
    expected = [0.5, 0.5, 0.5, 0.1 + 0.4 * 9 / 16, 0.2, 0.1 + 0.4 / 16, 0.1, 0.1]
    assert_close(values(s, 8), expected, rtol=1e-15)
    s = polynomial(0.0, 1.0, power=0.5, transition_steps=10)  # increasing
    assert s(0) == 0.0 and s(10) == 1.0 and s(5) == pytest.approx(1 - math.sqrt(0.5))
    for args in [(0.1, 1e-4, 0.9, 100, 0), (1e-3, 0.0, 3.0, 37, 25), (2.0, 0.5, 1.0, 1, 5)]:
        s = polynomial(*args)
        assert values(s, 300) == [_optax_polynomial(*args, k) for k in range(300)]


def test_cosine_values_and_clamp():
    s = cosine(1.0, decay_steps=4)
    assert_close(values(s, 4), [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2])
    assert s(4) == 0.0
    # Stays at eta_min after decay_steps (optax), where torch climbs back up.
    s = cosine(0.1, 50, eta_min=0.01)
    assert all(s(k) == 0.01 for k in range(50, 500, 7))
    # optax.cosine_decay_schedule(init, T, alpha) = init * ((1 - alpha) * c + alpha)
    init, t, alpha = 0.1, 50, 0.1
    for k in range(60):
        c = 0.5 * (1 + math.cos(math.pi * min(k, t) / t))
        assert s(k) == pytest.approx(init * ((1 - alpha) * c + alpha), rel=1e-14)


def _brute_force_sgdr(init, t_0, t_mult, eta_min, n):
    out, t_cur, t_i = [], 0, t_0
    for _ in range(n):
        out.append(eta_min + (init - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur == t_i:
            t_cur, t_i = 0, t_i * t_mult
    return out


@pytest.mark.parametrize(("t_0", "t_mult"), [(1, 1), (1, 2), (10, 1), (10, 2), (3, 3), (7, 5)])
def test_warm_restarts_matches_brute_force(t_0, t_mult):
    s = cosine_warm_restarts(0.1, t_0, T_mult=t_mult, eta_min=1e-3)
    assert values(s, 5000) == _brute_force_sgdr(0.1, t_0, t_mult, 1e-3, 5000)


def test_warm_restarts_exact_restarts_at_large_steps():
    for t_0, m in [(1, 2), (10, 2), (3, 3), (7, 10)]:
        s = cosine_warm_restarts(1.0, t_0, T_mult=m)
        for n in range(1, 60):
            start = t_0 * (m**n - 1) // (m - 1)  # first step of cycle n
            assert s(start) == 1.0, (t_0, m, n)
            assert s(start - 1) == pytest.approx(
                (1 + math.cos(math.pi * (t_0 * m ** (n - 1) - 1) / (t_0 * m ** (n - 1)))) / 2
            )


def test_linear_warmup_values():
    s = linear_warmup(cosine(1.0, 4), warmup_steps=4, init_value=0.2)
    ramp = [0.2, 0.4, 0.6, 0.8]
    inner = [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0, 0.0]
    expected = ramp + inner
    assert_close(values(s, 10), expected, rtol=1e-15, atol=1e-17)
    assert s(0) == 0.2  # the ramp starts exactly at init_value
    # The inner schedule is called with step - warmup_steps (optax.join_schedules).
    calls = []

    def inner(step):
        calls.append(step)
        return 0.5

    s = linear_warmup(inner, 3)
    assert calls == [0]  # s(0), evaluated once at construction
    assert values(s, 5) == [0.0, 0.5 / 3, 1.0 / 3, 0.5, 0.5]
    assert calls == [0, 0, 1]
    # Ramping down works too; zero warm-up is the inner schedule itself.
    assert values(linear_warmup(0.1, 2, init_value=0.3), 3) == [0.3, 0.2, 0.1]
    c = cosine(0.1, 20)
    assert values(linear_warmup(c, 0), 30) == values(c, 30)


def test_one_cycle_values():
    s = one_cycle(1.0, total_steps=11, pct_start=0.5, div_factor=4.0, final_div_factor=2.5)
    # Phase 1: steps 0..4.5 from 0.25 to 1; phase 2: 4.5..10 from 1 to 0.1.
    assert s(0) == 0.25
    assert s(4) == pytest.approx(1.0 + (0.25 - 1.0) / 2 * (1 + math.cos(math.pi * 4 / 4.5)))
    assert s(10) == pytest.approx(0.1, rel=1e-15)
    assert s(11) == s(10) == s(10**9)  # clamped past the end (torch raises)
    lin = one_cycle(1.0, 11, pct_start=0.5, div_factor=4.0, anneal_strategy="linear")
    assert lin(2) == pytest.approx(0.25 + 0.75 * 2 / 4.5)
    # Degenerate phases where torch would divide by zero: return the phase's end.
    s = one_cycle(1.0, total_steps=10, pct_start=0.1)  # pct_start * total_steps == 1
    assert s(0) == 1.0 and s(9) == pytest.approx(1.0 / 25 / 1e4)
    s = one_cycle(1.0, total_steps=10, pct_start=0.1, three_phase=True)
    assert s(0) == 1.0 and s(9) == pytest.approx(1.0 / 25 / 1e4)
    assert one_cycle(1.0, 1)(0) == pytest.approx(1.0 / 25 / 1e4)
    for pct in (0.0, 1.0):
        s = one_cycle(1.0, 20, pct_start=pct)
        assert all(math.isfinite(s(k)) for k in range(25))


def test_normalized_weight_decay():
    assert normalized_weight_decay(0.05, 100, 50_000, 20) == pytest.approx(5e-4, rel=1e-15)
    lam = normalized_weight_decay(0.025, 128, 50_000, 200)
    assert type(lam) is float
    assert lam == pytest.approx(0.025 * math.sqrt(128 / (50_000 * 200)))
    assert normalized_weight_decay(0, 1, 1, 0.5) == 0.0


# ------------------------------------------------------------- torch parity
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def torch_lrs(torch, make_scheduler, lr, n=N_STEPS):
    """``param_groups[0]["lr"]`` before each of ``n`` optimizer steps."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler(optimizer)
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def torch_closed_form(torch, make_scheduler, lr, n=N_STEPS):
    """torch's closed-form rate at ``last_epoch = k`` (no recursive rounding drift)."""
    param = torch.zeros(1, requires_grad=True)
    scheduler = make_scheduler(torch.optim.SGD([param], lr=lr))
    if not hasattr(scheduler, "_get_closed_form_lr"):
        pytest.skip("this torch version has no _get_closed_form_lr")
    out = []
    for k in range(n):
        scheduler.last_epoch = k
        out.append(scheduler._get_closed_form_lr()[0])
    return out


@pytest.mark.parametrize(
    ("lr", "step_size", "gamma"), [(0.1, 30, 0.1), (1.0, 1, 0.9), (0.3, 7, 0.5), (0.1, 500, 0.1)]
)
def test_step_decay_vs_torch(torch, lr, step_size, gamma):
    make = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size, gamma=gamma)  # noqa: E731
    ours = values(step_decay(lr, step_size, gamma=gamma))
    assert_close(ours, torch_lrs(torch, make, lr))
    assert ours == torch_closed_form(torch, make, lr)


@pytest.mark.parametrize(
    ("milestones", "gamma"),
    [([30, 80, 81, 150], 0.1), ([80, 30], 0.5), ([50, 50, 120], 0.3), ([1], 0.1), ([], 0.1)],
)
def test_multi_step_vs_torch(torch, milestones, gamma):
    make = lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma)  # noqa: E731
    ours = values(multi_step(0.1, milestones, gamma=gamma))
    assert_close(ours, torch_lrs(torch, make, 0.1))
    assert ours == torch_closed_form(torch, make, 0.1)


@pytest.mark.parametrize("gamma", [0.99, 0.95, 0.5, 1.01])
def test_exponential_vs_torch(torch, gamma):
    make = lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma)  # noqa: E731
    ours = values(exponential(0.1, gamma))
    assert_close(ours, torch_lrs(torch, make, 0.1))
    assert ours == torch_closed_form(torch, make, 0.1)


@pytest.mark.parametrize(
    ("total_iters", "power"), [(5, 1.0), (50, 1.0), (100, 0.9), (150, 2.0), (199, 0.5)]
)
def test_polynomial_vs_torch(torch, total_iters, power):
    """torch's PolynomialLR is polynomial(lr, end_value=0, power, total_iters)."""
    make = lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters, power)  # noqa: E731
    ours = values(polynomial(0.1, 0.0, power, total_iters))
    assert ours == torch_closed_form(torch, make, 0.1)
    # The chainable form multiplies ratios of (1 - t/T)^p: a few ulps of drift.
    assert_close(ours, torch_lrs(torch, make, 0.1))


@pytest.mark.parametrize(("t_max", "eta_min"), [(200, 0.0), (250, 1e-3), (57, 0.0), (57, 1e-4)])
def test_cosine_vs_torch(torch, t_max, eta_min):
    """Equal to CosineAnnealingLR up to T_max (torch then climbs back, we stay)."""
    make = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, t_max, eta_min)  # noqa: E731
    n = min(N_STEPS, t_max + 1)
    ours = values(cosine(0.1, t_max, eta_min=eta_min), n)
    assert ours == torch_closed_form(torch, make, 0.1, n)
    # The chainable form drifts by a few ulps (measured: below 2e-15 relative).
    assert_close(ours, torch_lrs(torch, make, 0.1, n))


@pytest.mark.parametrize(
    ("t_0", "t_mult", "eta_min"),
    [(10, 1, 0.0), (10, 2, 1e-3), (7, 3, 0.0), (1, 1, 0.0), (1, 2, 1e-4), (50, 1, 1e-4)],
)
def test_cosine_warm_restarts_vs_torch(torch, t_0, t_mult, eta_min):
    make = lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(  # noqa: E731
        opt, t_0, T_mult=t_mult, eta_min=eta_min
    )
    ours = values(cosine_warm_restarts(0.1, t_0, T_mult=t_mult, eta_min=eta_min), 1000)
    assert ours == torch_lrs(torch, make, 0.1, 1000)


ONE_CYCLE_CASES = [
    dict(total_steps=200),
    dict(total_steps=100, pct_start=0.25, anneal_strategy="linear"),
    dict(total_steps=37, pct_start=0.5, div_factor=10.0, final_div_factor=100.0),
    dict(total_steps=200, three_phase=True),
    dict(total_steps=150, pct_start=0.4, three_phase=True, anneal_strategy="linear"),
    dict(total_steps=33, pct_start=0.33, div_factor=3.0, three_phase=True),
    dict(total_steps=10, pct_start=0.0),
    dict(total_steps=10, pct_start=1.0),
]


@pytest.mark.parametrize("kwargs", ONE_CYCLE_CASES, ids=str)
def test_one_cycle_vs_torch(torch, kwargs):
    make = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, **kwargs)  # noqa: E731
    n = kwargs["total_steps"]
    if kwargs.get("pct_start") == 1.0:
        n -= 1  # torch divides by zero in its (empty) last phase at step n - 1
    ours = values(one_cycle(0.1, **kwargs), n)
    assert ours == torch_lrs(torch, make, 0.1, n)


@pytest.mark.parametrize(("start_factor", "warmup"), [(1e-3, 10), (0.25, 1), (0.5, 150)])
def test_linear_warmup_vs_torch_linear_lr(torch, start_factor, warmup):
    """With a constant target, linear_warmup is LinearLR(start_factor, 1.0, total_iters)."""
    make = lambda opt: torch.optim.lr_scheduler.LinearLR(  # noqa: E731
        opt, start_factor=start_factor, end_factor=1.0, total_iters=warmup
    )
    ours = values(linear_warmup(0.1, warmup, init_value=0.1 * start_factor))
    assert_close(ours, torch_closed_form(torch, make, 0.1))
    # LinearLR's chainable form drifts by a few ulps.
    assert_close(ours, torch_lrs(torch, make, 0.1))


def test_linear_warmup_then_cosine_vs_torch_sequential_lr(torch):
    """The shift convention: SequentialLR restarts the second scheduler at 0."""
    lr, warmup, t_max, start_factor = 0.1, 20, 150, 0.01
    lrs = torch.optim.lr_scheduler

    def make(opt):
        return lrs.SequentialLR(
            opt,
            [
                lrs.LinearLR(opt, start_factor=start_factor, total_iters=warmup),
                lrs.CosineAnnealingLR(opt, t_max),
            ],
            milestones=[warmup],
        )

    ours = values(linear_warmup(cosine(lr, t_max), warmup, init_value=lr * start_factor), 171)
    assert_close(ours, torch_lrs(torch, make, lr, 171))
