"""CUDA kernels agree with the CPU kernels (run under NUMBA_ENABLE_CUDASIM=1).

The simulator must be enabled before numba.cuda is imported, so this module runs in
its own pytest process (see .ci/run); without the variable (and without a GPU) it
is skipped. Few threads per block and a capped grid make several blocks and
grid-stride iterations run even on small arrays.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cases import CASES, case_id, problem

import fastmoments as fm

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"  # set by conftest.py

if not SIMULATED:
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)
else:
    from numba import cuda

STEPS = 8
SHAPES = [(5, 7), (3,), (0,), (2, 2, 3)]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 4)
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 3)


def tolerance(dtype):
    # the simulator evaluates math.sqrt in float64 then rounds: float32 differs by ulps
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_matches_cpu(case, dtype):
    name, kwargs = case
    params, grad = problem(shapes=SHAPES, steps=STEPS, dtype=dtype)
    cpu = [p.copy() for p in params]
    opt_cpu = getattr(fm, name)(cpu, **kwargs)

    device = [cuda.to_device(p) for p in params]
    opt_list = getattr(fm, name)(device, **kwargs)

    flat = fm.FlatParams([cuda.to_device(p) for p in params])
    opt_flat = getattr(fm, name)(flat, **kwargs)
    assert flat.device == "cuda"

    for t in range(STEPS):
        opt_cpu.step(grad(cpu, t))
        host = [d.copy_to_host() for d in device]
        opt_list.step([cuda.to_device(g) for g in grad(host, t)])
        host = [v.copy_to_host() for v in flat.params]
        for view, g in zip(flat.grads, grad(host, t)):
            if g.size:
                view.copy_to_device(g)
        opt_flat.step()

    for a, b, c in zip(cpu, device, flat.params):
        np.testing.assert_allclose(b.copy_to_host(), a, **tolerance(dtype))
        np.testing.assert_allclose(c.copy_to_host(), a, **tolerance(dtype))
    # state lives on the device and round-trips through state_dict as NumPy arrays
    sd = opt_flat.state_dict()
    for buffers in sd["state"]:
        assert all(isinstance(v, np.ndarray) for v in buffers.values())


def test_cuda_state_dict_round_trip():
    params, grad = problem(shapes=SHAPES, steps=10)
    a = [cuda.to_device(p) for p in params]
    opt_a = fm.Adam(a, lr=0.05, amsgrad=True)
    for t in range(5):
        opt_a.step([cuda.to_device(g) for g in grad([x.copy_to_host() for x in a], t)])
    b = [cuda.to_device(x.copy_to_host()) for x in a]
    opt_b = fm.Adam(b, lr=0.05, amsgrad=True)
    opt_b.load_state_dict(opt_a.state_dict())
    for t in range(5, 10):
        for opt, ps in ((opt_a, a), (opt_b, b)):
            opt.step([cuda.to_device(g) for g in grad([x.copy_to_host() for x in ps], t)])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.copy_to_host(), y.copy_to_host())


def test_cuda_nonfinite_skip_and_clipping():
    p = [cuda.to_device(np.ones(6))]
    opt = fm.SGD(p, lr=1.0, nonfinite="skip", max_grad_norm=1.0)
    bad = np.ones(6)
    bad[2] = np.nan
    opt.step([cuda.to_device(bad)])
    assert opt.last_step_skipped and opt.step_count == 0
    np.testing.assert_array_equal(p[0].copy_to_host(), np.ones(6))
    norm = opt.step([cuda.to_device(np.full(6, 2.0))])
    assert norm == pytest.approx(np.sqrt(24.0))
    np.testing.assert_allclose(p[0].copy_to_host(), 1.0 - 2.0 / (np.sqrt(24.0) + 1e-6))


def test_host_grad_for_device_param_is_refused():
    p = [cuda.to_device(np.ones(3))]
    opt = fm.SGD(p, lr=1.0)
    with pytest.raises(TypeError, match=r"grads\[0\].*CUDA"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(p[0].copy_to_host(), np.ones(3))
