"""int8 state on the GPU: the CUDA kernel against the CPU loops (numba's simulator).

The kernel (``kernels.quantized.cuda_source``) steps one quantization block per thread
block: the same rule function, dequantization, largest-magnitude scale (a shared-memory
reduction here, an integer maximum there) and code search as the CPU loops. Under the
simulator the float32 arithmetic of the states is the CPU's, so codes, scales and the
float32 state of small tensors must be equal bit for bit. The parameters are compared
with a tolerance as in tests/test_cuda.py: the simulator takes ``math.sqrt`` in float64.
Few threads per block (and a power of two below it: the reduction halves them) and a
capped grid make every thread step several elements and every thread block several
quantization blocks.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastmoments as fm

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"  # set by conftest.py

from numba import cuda  # noqa: E402  (after the simulator choice)

if not SIMULATED and not cuda.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

STEPS = 3


def _shapes():
    # a quantized tensor with a partial last block, a small one (float32 state), an empty one
    return [np.linspace(-1, 1, 4099).astype(np.float32), np.linspace(0, 2, 100).astype(np.float32),
            np.zeros(0, np.float32)]


def _grad(p: np.ndarray, t: int) -> np.ndarray:  # the same on every run: not of p's values
    return (np.sin(np.arange(p.size) * 0.7 + t) * (1 + t) - 0.3).astype(np.float32)


def _run(cls, kwargs, where):
    """``cls`` stepped STEPS times on the CPU ("cpu"), on device arrays ("list") or on a
    device FlatParams ("flat"); returns (parameters, state) on the host."""
    arrays = _shapes()
    cpu = [a.copy() for a in arrays]
    if where == "cpu":
        params = cpu
    elif where == "list":
        params = [cuda.to_device(a) for a in arrays]
    else:
        params = fm.FlatParams([cuda.to_device(a) for a in arrays])
    opt = cls(params, state_dtype="int8", **kwargs)
    for t in range(STEPS):
        grads = [_grad(p, t) for p in cpu]
        if where == "cpu":
            opt.step(grads)
        elif where == "list":
            opt.step([cuda.to_device(g) for g in grads])
        else:
            for view, g in zip(params.grads, grads):
                if g.size:
                    view.copy_to_device(g)
            opt.step()
    views = params.params if where == "flat" else params
    values = [v if isinstance(v, np.ndarray) else v.copy_to_host() for v in views]
    state = {k: np.asarray(v if isinstance(v, np.ndarray) else v.copy_to_host())
             for k, v in opt._groups[0].state.items()}
    return values, state


CASES = [(fm.Adam, dict(lr=0.01, betas=(0.9, 0.99))),  # signed and unsigned maps
         (fm.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01))]


@pytest.mark.parametrize("threads", [4, 6])  # 6: the kernel runs with 4
@pytest.mark.parametrize("cls, kwargs", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_int8_on_the_gpu_is_the_cpu_loop(monkeypatch, cls, kwargs, threads):
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", threads)
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 3)
    cpu_params, cpu_state = _run(cls, kwargs, "cpu")
    assert any(name.endswith("__absmax") for name in cpu_state)
    for where in ("list", "flat"):
        params, state = _run(cls, kwargs, where)
        assert state.keys() == cpu_state.keys()
        for name, buf in state.items():
            assert buf.dtype == cpu_state[name].dtype
            assert np.array_equal(buf, cpu_state[name]), (where, name)
        for a, b in zip(params, cpu_params):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_int8_gpu_state_dict_is_the_stored_form_and_loads_on_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 8)
    device = [cuda.to_device(a) for a in _shapes()]
    opt = fm.Adam(device, lr=0.01, state_dtype="int8")
    opt.step([cuda.to_device(_grad(a, 0)) for a in _shapes()])
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == np.uint8
    assert sd["state"][0]["exp_avg_sq__absmax"].dtype == np.float32
    opt.save(tmp_path / "gpu.npz")
    host = fm.Adam([a.copy_to_host() for a in device], lr=0.01, state_dtype="int8")
    host.load(tmp_path / "gpu.npz")
    for name, buf in opt._groups[0].state.items():
        assert np.array_equal(host._groups[0].state[name], buf.copy_to_host()), name


def test_a_rule_without_state_runs_its_plain_kernel_on_the_gpu(monkeypatch):
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 4)
    cpu_params, cpu_state = _run(fm.SGD, dict(lr=0.1), "cpu")
    params, state = _run(fm.SGD, dict(lr=0.1), "list")
    assert state == cpu_state == {}
    for a, b in zip(params, cpu_params):
        np.testing.assert_array_equal(a, b)
