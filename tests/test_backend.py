"""Backend selection: host arrays, CUDA arrays, and a clear error without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmoments as fm


def test_gpu_array_without_cuda_gives_clear_error():
    # a fresh process without the simulator, on a machine with no usable GPU
    code = textwrap.dedent(
        """
        import numpy as np, fastmoments as fm
        from numba import cuda
        if cuda.is_available():
            print("HAS-CUDA")
            raise SystemExit(0)

        class FakeDeviceArray:
            shape, dtype = (3,), np.dtype("float32")
            __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (1, False),
                                        "version": 3}

        try:
            fm.Adam([FakeDeviceArray()])
        except RuntimeError as exc:
            print("ERROR:", exc)
        """
    )
    env = {"NUMBA_ENABLE_CUDASIM": "0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    if "HAS-CUDA" in out.stdout:
        pytest.skip("this machine has a usable CUDA device")
    assert "ERROR:" in out.stdout
    assert "no usable CUDA" in out.stdout and "fastmoments[cuda]" in out.stdout


def test_host_arrays_take_the_cpu_path():
    p = [np.ones(3, dtype=np.float32)]
    opt = fm.SGD(p, lr=0.5)
    assert opt._groups[0].device == "cpu"
    opt.step([np.ones(3, dtype=np.float32)])
    np.testing.assert_array_equal(p[0], np.full(3, 0.5, dtype=np.float32))


def test_mixed_devices_in_a_group_are_refused():
    from numba import cuda  # the simulator in this test session (see conftest.py)

    with pytest.raises(TypeError, match="same device|one device"):
        fm.FlatParams([np.ones(2), cuda.to_device(np.ones(2))])


_SCIPY_CHECK = """
import sys
{before}
import numpy as np
import fastmoments as fm
p = np.zeros(64, dtype=np.float32)
opt = fm.Adam([p], lr=0.1, max_grad_norm=1.0)  # the norm's loop is the first dispatch
opt.step([np.ones(64, dtype=np.float32)])
fm.SGD([p], lr=0.1).step([np.ones(64, dtype=np.float32)])
print("LINALG", "scipy.linalg" in sys.modules, "numba.np.arraymath" in sys.modules)
import numba
a = np.random.default_rng(0).random((6, 6)) + 6 * np.eye(6)
dot = numba.njit(lambda x, y: np.dot(x, y))
solve = numba.njit(lambda x, y: np.linalg.solve(x, y))
assert np.allclose(dot(a, a), a @ a)
assert np.allclose(solve(a, a[:, 0]), np.linalg.solve(a, a[:, 0]))
import scipy.linalg.cython_blas
import scipy.linalg
assert len(scipy.linalg.cython_blas.__pyx_capi__) > 100
assert np.allclose(scipy.linalg.blas.dgemm(1.0, a, a), a @ a)
print("OK")
"""


@pytest.mark.parametrize("before", ["", "import scipy.linalg"])
def test_first_step_leaves_scipy_linalg_alone_and_blas_usable(tmp_path, before):
    # numba's CPU target checks for a BLAS by importing scipy.linalg.cython_blas (the
    # whole scipy.linalg package, ~0.2 s); _jit.prepare_cpu_target lets it find the
    # extension module alone, then BLAS must work as usual, in numba and in SciPy
    pytest.importorskip("scipy.linalg")
    code = _SCIPY_CHECK.format(before=before)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    for cache in ("cold", "cached"):  # compile, then load from the on-disk cache
        env["NUMBA_CACHE_DIR"] = str(tmp_path)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, (cache, out.stderr)
        linalg_loaded = "True" if before else "False"
        assert f"LINALG {linalg_loaded} True" in out.stdout, (cache, out.stdout)
        assert out.stdout.rstrip().endswith("OK")


def test_first_step_without_scipy():
    code = "import sys; sys.modules['scipy'] = None\n" + _SCIPY_CHECK.split("import numba")[0]
    out = subprocess.run([sys.executable, "-c", code.format(before="")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "LINALG False True" in out.stdout
