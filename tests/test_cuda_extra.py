"""CUDA kernels of fastmoments.extra agree with their CPU twins.

Runs under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set by conftest.py unless
FASTMOMENTS_REAL_GPU=1 asks for a real device); skipped when neither is there. Few
threads per block and a capped grid make several blocks, grid-stride iterations and
the shared-memory sums of the segmented kernels run on small arrays.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cases import problem
from test_extra import case_id, make

import fastmoments as fm
import fastmoments.kernels.segments as segments
from fastmoments import extra

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

from numba import cuda  # noqa: E402  (after the simulator choice)

if not SIMULATED and not cuda.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

STEPS = 4
SHAPES = [(3, 5), (3,), (0,), (2, 2, 3)]
# The simulator runs __syncthreads with polling Python threads, so the segmented rules
# (a shared-memory sum per chunk) are slow there: one case of each rule runs here (the
# one with the most options); test_extra covers the rest on the CPU.
SIM_CASES = [
    *((c, dtype) for c in [
        ("AdaBelief", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
        ("AdaBelief", dict(lr=0.01, decoupled_weight_decay=False, weight_decay=0.1)),
        ("Lion", dict(lr=0.01, weight_decay=0.1, maximize=True)),
        ("Adam", dict(lr=0.01, amsgrad=True, amsgrad_bias_correction=False)),
        ("AdamW", dict(lr=0.01, eps_root=1e-3, amsgrad=True)),
    ] for dtype in (np.float64, np.float32)),
    (("LAMB", dict(lr=0.01, weight_decay=0.1, maximize=True)), np.float32),
    (("NDAdam", dict(lr=0.01, axis=0, maximize=True)), np.float64),  # strided vectors
    (("SWATS", dict(lr=0.01, weight_decay=0.1, nesterov=True, switch_tol=1e-2)), np.float64),
]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 3)  # not a power of two
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 2)


def tolerance(dtype):
    # the simulator evaluates math.sqrt in float64 then rounds: float32 differs by ulps
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def _device_grads(grad, arrays, t):
    return [cuda.to_device(g) for g in grad([a.copy_to_host() for a in arrays], t)]


@pytest.mark.parametrize(("case", "dtype"), SIM_CASES,
                         ids=[f"{case_id(c)}-{np.dtype(d)}" for c, d in SIM_CASES])
def test_cuda_matches_cpu(case, dtype):
    name, kwargs = case
    # ND-Adam runs five passes a step, three with sums: smaller arrays keep it quick
    shapes, steps = ([(2, 3), (3,), (0,), (2, 1, 2)], 2) if name == "NDAdam" else (SHAPES, STEPS)
    params, grad = problem(shapes=shapes, steps=steps, dtype=dtype)
    cpu = [p.copy() for p in params]
    opt_cpu = make(name)(cpu, **kwargs)

    device = [cuda.to_device(p) for p in params]
    opt_list = make(name)(device, **kwargs)

    flat = fm.FlatParams([cuda.to_device(p) for p in params])
    opt_flat = make(name)(flat, **kwargs)

    for t in range(steps):
        opt_cpu.step(grad(cpu, t))
        opt_list.step(_device_grads(grad, device, t))
        host = [v.copy_to_host() for v in flat.params]
        for view, g in zip(flat.grads, grad(host, t), strict=True):
            if g.size:
                view.copy_to_device(g)
        opt_flat.step()

    for a, b, c in zip(cpu, device, flat.params, strict=True):
        np.testing.assert_allclose(b.copy_to_host(), a, **tolerance(dtype))
        np.testing.assert_allclose(c.copy_to_host(), a, **tolerance(dtype))
    if name == "SWATS":  # switched at step 2: the SGD phase ran too
        assert opt_list.switch_step == opt_cpu.switch_step == opt_flat.switch_step == 2
    sd = opt_flat.state_dict()
    for buffers, host in zip(sd["state"], opt_cpu.state_dict()["state"], strict=True):
        for key, value in buffers.items():
            assert isinstance(value, np.ndarray)
            np.testing.assert_allclose(value, host[key], **tolerance(dtype))


def test_cuda_lamb_long_tensors_split_in_chunks(monkeypatch):
    monkeypatch.setattr(segments, "CHUNK", 4)
    params, grad = problem(shapes=[(3, 5), (2,)], steps=2)
    cpu = [p.copy() for p in params]
    opt_cpu = extra.LAMB(cpu, lr=0.01, weight_decay=0.1)
    flat = fm.FlatParams([cuda.to_device(p) for p in params])
    opt_gpu = extra.LAMB(flat, lr=0.01, weight_decay=0.1)
    for t in range(2):
        opt_cpu.step(grad(cpu, t))
        opt_gpu.step(cuda.to_device(np.concatenate([g.ravel() for g in grad(
            [v.copy_to_host() for v in flat.params], t)])))
    for a, b in zip(cpu, flat.params, strict=True):
        np.testing.assert_allclose(b.copy_to_host(), a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(opt_gpu.trust_ratios[0], opt_cpu.trust_ratios[0], rtol=1e-12)
    # the CPU keeps r between the passes; the GPU recomputes it (no buffer on the device)
    assert opt_cpu._updates[0].shape == (17,) and opt_gpu._updates == [None]
    assert opt_gpu._passes(opt_gpu._groups[0]) == [(4, 2, 17), (3, 1, 17)]
    assert opt_cpu._passes(opt_cpu._groups[0]) == [(4, 3, 17, 1), (2, 1, 17)]


def test_cuda_ndadam_normalizes_on_the_device():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 5))
    d = cuda.to_device(w)
    extra.NDAdam([d], axis=0)
    np.testing.assert_allclose(d.copy_to_host(), w / np.linalg.norm(w, axis=0), rtol=1e-14)


def test_cuda_yogi_init_second_moment():
    params, grad = problem(shapes=SHAPES, steps=4)
    rng = np.random.default_rng(3)
    grads0 = [[rng.standard_normal(p.shape) for p in params] for _ in range(2)]
    cpu = [p.copy() for p in params]
    opt_cpu = fm.Yogi(cpu, lr=0.05, weight_decay=0.1)
    opt_cpu.init_second_moment(*grads0)
    device = [cuda.to_device(p) for p in params]
    opt_gpu = fm.Yogi(device, lr=0.05, weight_decay=0.1)
    opt_gpu.init_second_moment(*[[cuda.to_device(g) for g in gs] for gs in grads0])
    for t in range(4):
        opt_cpu.step(grad(cpu, t))
        opt_gpu.step(_device_grads(grad, device, t))
    for a, b in zip(cpu, device, strict=True):
        np.testing.assert_allclose(b.copy_to_host(), a, rtol=1e-12, atol=1e-14)
