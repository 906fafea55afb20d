"""Non-finite gradients: the "apply", "skip" and "raise" policies, and the loss scale.

- "apply" (default, as torch): the step runs and NaN/Inf flow into the parameters.
- "skip": the whole step is skipped (every group), the step counter does not advance,
  ``last_step_skipped`` is set and ``skipped_steps`` counts it.
- "raise": ``FloatingPointError`` and nothing changed.

The check is a jitted pre-pass (a float64 sum of squares, shared with
``max_grad_norm``), never a NumPy scan; huge but finite float64 gradients, whose
squares overflow, are neither skipped nor allowed to escape clipping.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cases import CASES, case_id, problem

import fastmoments as fm

SHAPES = [(3, 4), (5,), (0,), (2, 3)]
BAD_VALUES = [np.nan, np.inf, -np.inf]


def snapshot(opt, params):
    return {
        "params": [np.asarray(p).tobytes() for p in params],
        "state": [{n: np.asarray(b).tobytes() for n, b in g.state.items()} for g in opt._groups],
        "host": [dict(g.host_state) for g in opt._groups],
        "step_count": opt.step_count,
    }


def poisoned(grads, where, value):
    """A copy of ``grads`` with ``value`` at the first or last element of array ``where``."""
    out = [g.copy() for g in grads]
    i, position = where
    out[i].reshape(-1)[position] = value
    return out


WHERE = [(0, 0), (0, -1), (3, -1)]  # first / last element of the first array, last array


def build(name, kwargs, path, params, **options):
    cls = getattr(fm, name)
    if path == "list":
        return cls(params, **kwargs, **options), params
    if path == "flat":
        flat = fm.FlatParams(params)
        return cls(flat, **kwargs, **options), flat.params
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
    return cls(groups, **kwargs, **options), params


def feed(opt, path, grads):
    if path == "flat":  # gradients go into the FlatParams' own buffer
        for view, g in zip(opt._groups[0].flat.grads, grads, strict=True):
            view[...] = g
        opt.step()
    else:
        opt.step(grads)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("path", ["list", "flat", "groups"])
def test_skip_skips_the_whole_step(case, path):
    name, kwargs = case
    params, grad = problem(shapes=SHAPES, steps=6)
    ref_params = [p.copy() for p in params]
    opt, views = build(name, kwargs, path, params, nonfinite="skip")
    ref, ref_views = build(name, kwargs, path, ref_params)
    for t in range(2):
        g = grad([np.asarray(v) for v in views], t)
        feed(opt, path, g)
        feed(ref, path, g)
    for k, (where, value) in enumerate(zip(WHERE, BAD_VALUES, strict=True)):
        before = snapshot(opt, views)
        g = poisoned(grad([np.asarray(v) for v in views], 2), where, value)
        feed(opt, path, g)
        assert opt.last_step_skipped and opt.skipped_steps == k + 1
        assert not math.isfinite(opt.last_grad_norm)
        assert snapshot(opt, views) == before  # params, state, host state, step counter
    # a finite step afterwards is exactly the one of an optimizer that never saw the bad ones
    for t in range(2, 5):
        g = grad([np.asarray(v) for v in views], t)
        feed(opt, path, g)
        feed(ref, path, g)
        assert not opt.last_step_skipped
    assert opt.skipped_steps == 3 and opt.step_count == ref.step_count == 5
    assert snapshot(opt, views) == snapshot(ref, ref_views)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("value", BAD_VALUES, ids=["nan", "inf", "-inf"])
def test_raise_changes_nothing(case, value):
    name, kwargs = case
    params, grad = problem(shapes=SHAPES, steps=3)
    opt = getattr(fm, name)(params, **kwargs, nonfinite="raise")
    opt.step(grad(params, 0))
    before = snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        opt.step(poisoned(grad(params, 1), (1, 2), value))
    assert snapshot(opt, params) == before
    assert opt.skipped_steps == 0 and not opt.last_step_skipped


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_apply_propagates_like_torch(name):
    torch = pytest.importorskip("torch")
    p = [np.ones(4)]
    opt = getattr(fm, name)(p, lr=0.1)
    tp = torch.ones(4, dtype=torch.float64, requires_grad=True)
    topt = getattr(torch.optim, name)([tp], lr=0.1)
    g = np.array([1.0, np.nan, np.inf, -2.0])
    opt.step([g])
    tp.grad = torch.tensor(g)
    topt.step()
    assert opt.step_count == 1 and not opt.last_step_skipped
    np.testing.assert_allclose(p[0], tp.detach().numpy(), rtol=1e-12, atol=1e-15)  # NaN too


def test_skip_counts_and_reports_across_a_loss_scaler_loop():
    """The dynamic loss-scaling loop of mixed-precision training, in float32."""
    rng = np.random.default_rng(0)
    w = [rng.standard_normal(50).astype(np.float32)]
    opt = fm.Adam(w, lr=1e-2, nonfinite="skip")
    scale, skipped = 2.0**120, 0
    for _ in range(12):
        grads = [(rng.standard_normal(50) * 1e4).astype(np.float32)]
        with np.errstate(over="ignore"):
            scaled = [g * np.float32(scale) for g in grads]  # overflows while scale is huge
        norm = opt.step(scaled, grad_scale=scale)
        if opt.last_step_skipped:
            skipped += 1
            assert math.isinf(norm)
            scale /= 2.0**8
        else:
            assert norm == pytest.approx(np.linalg.norm(grads[0].astype(np.float64)), rel=1e-6)
    assert skipped > 0 and opt.skipped_steps == skipped
    assert opt.step_count == 12 - skipped


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_scale_is_divided_out_in_the_kernel(case, dtype):
    """With a power-of-two scale the unscaling is exact: bit-identical trajectories."""
    name, kwargs = case
    params, grad = problem(shapes=SHAPES, steps=4, dtype=dtype)
    scaled_params = [p.copy() for p in params]
    opt = getattr(fm, name)(params, **kwargs)
    scaled = getattr(fm, name)(scaled_params, **kwargs)
    scale = 2.0**14
    for t in range(4):
        g = grad(params, t)
        opt.step(g)
        scaled.step([x * dtype(scale) for x in g], grad_scale=scale)
    assert snapshot(scaled, scaled_params) == snapshot(opt, params)


def test_grad_scale_not_a_power_of_two_agrees_to_rounding():
    params, grad = problem(shapes=SHAPES, steps=5)
    other = [p.copy() for p in params]
    a, b = fm.Adam(params, lr=0.01), fm.Adam(other, lr=0.01)
    for t in range(5):
        g = grad(params, t)
        a.step(g)
        b.step([x * 3.0 for x in g], grad_scale=3.0)
    for x, y in zip(params, other, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-14, atol=1e-15)


def test_returned_norm_is_of_the_unscaled_gradients():
    p = [np.zeros(4)]
    opt = fm.SGD(p, lr=1.0, max_grad_norm=1.0)
    norm = opt.step([np.full(4, 3.0 * 1024)], grad_scale=1024.0)
    assert norm == pytest.approx(6.0)
    np.testing.assert_allclose(p[0], -0.5 * 6.0 / (6.0 + 1e-6))  # clipped to norm 1


@pytest.mark.parametrize("policy", ["skip", "raise", "apply"])
def test_huge_finite_float64_gradients_are_not_mistaken_for_inf(policy):
    """Squares of |g| > 1.3e154 overflow float64; the step must still run."""
    p = [np.ones(3), np.ones(2)]
    opt = fm.SGD(p, lr=1e-200, nonfinite=policy)
    norm = opt.step([np.full(3, 1e200), np.array([-1e200, 0.0])])
    assert opt.step_count == 1 and not opt.last_step_skipped
    assert norm is None or norm == pytest.approx(2e200)
    np.testing.assert_allclose(p[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(p[1], [2.0, 1.0])


@pytest.mark.parametrize("path", ["list", "flat"])
def test_max_grad_norm_clips_huge_finite_gradients(path):
    params = [np.zeros(3), np.zeros(2)]
    if path == "flat":
        flat = fm.FlatParams(params)
        opt = fm.SGD(flat, lr=1.0, max_grad_norm=1.0, nonfinite="skip")
        flat.grad[:] = [1e200, 1e200, 1e200, 1e200, 0.0]
        norm = opt.step()
        params = flat.params
    else:
        opt = fm.SGD(params, lr=1.0, max_grad_norm=1.0, nonfinite="skip")
        norm = opt.step([np.full(3, 1e200), np.array([1e200, 0.0])])
    assert norm == pytest.approx(2e200)
    moved = np.concatenate([p.reshape(-1) for p in params])
    np.testing.assert_allclose(np.linalg.norm(moved), 1.0, rtol=1e-6)


def test_nan_next_to_a_huge_gradient_is_still_caught():
    p = [np.ones(3)]
    opt = fm.SGD(p, lr=0.1, nonfinite="skip")
    opt.step([np.array([1e200, np.nan, 1.0])])
    assert opt.last_step_skipped and opt.step_count == 0
    np.testing.assert_array_equal(p[0], 1.0)


def test_the_check_is_no_numpy_scan(monkeypatch):
    """The finite test runs in the jitted pre-pass: NumPy's scans are never called."""
    params, grad = problem(shapes=SHAPES, steps=3)
    opt = fm.Adam(params, lr=0.01, nonfinite="skip")
    opt.step(grad(params, 0))  # compile first

    def forbidden(*args, **kwargs):
        raise AssertionError("a NumPy scan over the gradients")

    for fn in ("isfinite", "isnan", "isinf", "all", "any", "sum", "dot", "max", "abs"):
        monkeypatch.setattr(np, fn, forbidden)
    opt.step(poisoned(grad(params, 1), (0, 0), np.nan))
    assert opt.last_step_skipped
    opt.step(grad(params, 1))
    assert not opt.last_step_skipped and opt.step_count == 2


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the simulator
def test_cuda_path_skip_raise_and_huge_gradients():
    """The same policies on device arrays (the simulator in CI)."""
    from numba import cuda

    if not cuda.is_available():  # pragma: no cover - the simulator is always available
        pytest.skip("no CUDA and no simulator")
    p = [cuda.to_device(np.ones(5)), cuda.to_device(np.ones(3))]
    opt = fm.Adam(p, lr=0.1, nonfinite="skip")
    bad = np.ones(3)
    bad[1] = np.inf
    opt.step([cuda.to_device(np.ones(5)), cuda.to_device(bad)])
    assert opt.last_step_skipped and opt.step_count == 0
    assert all(np.array_equal(x.copy_to_host(), np.ones(x.shape)) for x in p)
    opt.step([cuda.to_device(np.full(5, 1e200)), cuda.to_device(np.ones(3))])
    assert not opt.last_step_skipped and opt.step_count == 1
    q = [cuda.to_device(np.ones(4))]
    opt = fm.SGD(q, lr=0.1, nonfinite="raise")
    with pytest.raises(FloatingPointError):
        opt.step([cuda.to_device(np.array([1.0, np.nan, 0.0, 0.0]))])
    np.testing.assert_array_equal(q[0].copy_to_host(), np.ones(4))
