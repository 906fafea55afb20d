"""Backend selection: host arrays, CUDA arrays, and a clear error without CUDA."""

from __future__ import annotations

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
