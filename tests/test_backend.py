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
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "FASTMOMENTS_CACHE_DIR")}
    for cache in ("cold", "cached"):  # compile, then load from the on-disk cache
        env["FASTMOMENTS_CACHE_DIR"] = str(tmp_path)
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


_BACKGROUND_CHECK = """
import multiprocessing, sys
import numpy as np
import numba
import fastmoments as fm
from fastmoments.kernels import compile as _jit

assert fm.config.background_compile  # the default
fm.config.parallel_threshold = 1000
rng = np.random.default_rng(0)
shapes = [(40, 30), (900,)]
grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]


def parallel_ran(opt):
    call = opt._groups[0].last_call
    return call is not None and bool(call[1].targetoptions.get("parallel"))


def run(name, path, steps, check=None):
    params = [np.ones(s, np.float32) for s in shapes]
    target = fm.FlatParams(params) if path == "flat" else params
    opt = getattr(fm, name)(target, lr=0.01)
    for t in range(steps):
        g = grads[t % 3]
        if path == "flat":
            target.grad[:] = np.concatenate([x.ravel() for x in g])
            opt.step()
        else:
            opt.step(g)
        if check:
            check(opt, t)
    return [p.copy() for p in (target.params if path == "flat" else params)]


def jobs(word):
    return [key for key in _jit._BACKGROUND if word in key[0].py_func.__name__]


def element_wise(opt, t):
    if t == 0:  # the serial loop ran; the parallel one compiles in the background
        assert not parallel_ran(opt) and opt._short_path is None
        assert jobs("multi_parallel"), list(_jit._BACKGROUND)
        assert fm.wait_compiled(300)
    else:
        assert parallel_ran(opt), t


def segmented(opt, t):
    if t == 0:  # both passes' parallel loops, and the trust ratios' loop (NumPy meanwhile)
        # (the second pass's serial loop too: NumPy stood in for it)
        names = sorted(key[0].py_func.__name__.split("_segmented")[0] for key in jobs("lamb"))
        assert names == ["_lamb_trust", "lamb_apply", "lamb_apply", "lamb_moments"], names
        assert fm.wait_compiled(300)
    for loop, signature in jobs("lamb"):
        assert signature in loop.overloads


def swats(opt, t):
    if t == 0:  # the sum of the dot products over the tensors: NumPy while it compiles
        assert jobs("_add_column_sums"), list(_jit._BACKGROUND)
        assert fm.wait_compiled(300)
    for loop, signature in jobs("_add_column_sums"):
        assert signature in loop.overloads


for name, path, check in (("Adam", "list", element_wise), ("LAMB", "flat", segmented),
                          ("LAMB", "list", None), ("SWATS", "flat", swats)):
    background = run(name, path, 5, check)
    fm.config.background_compile = False
    in_the_step = run(name, path, 5)
    fm.config.parallel_threshold = 10**9
    serial = run(name, path, 5)
    fm.config.background_compile, fm.config.parallel_threshold = True, 1000
    for a, b, c in zip(background, in_the_step, serial):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert not np.array_equal(background[0], np.ones_like(background[0]))


def child():
    # numba's compiler lock must be free in a forked child: it compiles here
    assert numba.njit(lambda x: x + 1)(1) == 2


# a fork while a loop compiles in the background waits for it (the child could not
# compile anything if the fork happened while the compiler lock was held)
run("Adagrad", "list", 1)
assert jobs("multi_parallel") and any(job.is_alive() for job in _jit._BACKGROUND.values())
process = multiprocessing.get_context("fork").Process(target=child, daemon=True)
process.start()
process.join(60)
if process.exitcode is None:  # stuck on the lock
    process.kill()
assert process.exitcode == 0, process.exitcode
run("RMSprop", "list", 1)  # compiling at exit: the interpreter waits for it
print("OK")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork check needs os.fork")
def test_background_compile_of_parallel_loops(tmp_path):
    """A fresh process: the first step over a large group runs the serial loop while the
    parallel one compiles in the background, later steps the parallel one, with the
    same results as compiling it in the step or staying serial; a fork and the exit
    wait for the compilation, so numba's lock is free in the child and the cache has it."""
    # fastmoments' cache folder (FASTMOMENTS_CACHE_DIR wins over NUMBA_CACHE_DIR)
    env = {**os.environ, "FASTMOMENTS_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _BACKGROUND_CHECK], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("OK")
    index = [p.name for p in tmp_path.rglob("*.nbi")]
    assert any("rmsprop" in n and "multi_parallel" in n for n in index), index


def test_when_ready_stands_in_until_compiled_then_remembers_the_key(monkeypatch):
    """``_jit.WhenReady``: NumPy stands in while the loop compiles in the background;
    once the loop ran for a key, the key is remembered (the caller then calls the loop
    itself); another key is remembered once its loop ran."""
    from numba import njit

    from fastmoments.kernels import compile as _jit

    @njit
    def add_one(x):
        x += 1.0

    def add_one_numpy(x, calls):
        calls.append("stand-in")
        x += 1.0

    monkeypatch.setattr(fm.config, "background_compile", True)
    when_ready, calls = _jit.WhenReady(), []
    first, second = np.zeros(3), np.zeros(3)
    when_ready.call(first, add_one, (first,), add_one_numpy, first, calls)
    assert calls == ["stand-in"] and not add_one.overloads and id(first) not in when_ready
    assert fm.wait_compiled(120) and add_one.overloads
    when_ready.call(first, add_one, (first,), add_one_numpy, first, calls)  # the loop
    assert calls == ["stand-in"] and np.array_equal(first, [2.0, 2.0, 2.0])
    assert when_ready.get(id(first)) is first  # remembered: the caller calls the loop

    when_ready.call(second, add_one, (second,), add_one_numpy, second, calls)  # a new key
    assert calls == ["stand-in"] and np.array_equal(second, [1.0, 1.0, 1.0])
    assert when_ready.get(id(second)) is second and len(when_ready) == 2
