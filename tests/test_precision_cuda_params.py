"""16-bit parameters on the GPU: the CUDA kernel against the CPU loops (numba's simulator).

float16 and bfloat16 CUDA parameters (device lists and a device FlatParams) are stepped
by the same generated element function as on the CPU, through uint16 views, with the
random bits of stochastic rounding drawn from (seed, step, index in the group): after
a few steps the parameters' patterns, the float32 master copy and the states must be
the CPU loop's bit for bit. bfloat16 CUDA arrays are numba device arrays whose dtype is
``ml_dtypes.bfloat16``; 16-bit patterns of any other dtype (uint16, the ``'<V2'`` of a
``__cuda_array_interface__``) are refused, never guessed. Under the simulator a kernel
could take an array numba cannot type on a real device (bfloat16): every array handed
to a kernel launch is checked for that.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda
from numba.np.numpy_support import from_dtype
from test_precision_cuda import STEPS, _grad  # skips this module where that one skips

import fastmoments as fm
from fastmoments.kernels import cuda as gpu

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


def _start(dtype) -> list[np.ndarray]:
    # several arrays (offsets in the group for the random bits) and an empty one
    return [np.linspace(-1, 1, 40).reshape(5, 8).astype(dtype),
            np.linspace(0.5, 2, 33).astype(dtype), np.zeros(0, dtype)]


def _grads(arrays, t) -> list[np.ndarray]:
    return [_grad(a, t).reshape(a.shape).astype(a.dtype) for a in arrays]


def _device_ready(args) -> None:
    """What a real device needs of a kernel's arguments (the simulator takes anything):
    every array on the device (a host array would be copied there and back at each
    launch) and of a dtype numba types (``from_dtype`` raises for ml_dtypes.bfloat16)."""
    for a in args:
        if hasattr(a, "dtype") and hasattr(a, "shape"):
            assert not isinstance(a, np.ndarray), "a host array given to a kernel"
            from_dtype(np.dtype(a.dtype))


@pytest.fixture
def small_grid(monkeypatch):
    """Few threads and a capped grid (each thread steps several elements), and every
    launch's arrays checked by :func:`_device_ready`."""
    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 4)
    monkeypatch.setattr(fm.config, "cuda_max_blocks", 3)
    launch = gpu.launch

    def checked(kernel, n, *args):
        _device_ready(args)
        launch(kernel, n, *args)

    monkeypatch.setattr(gpu, "launch", checked)


def _run(cls, kwargs, dtype, where, steps=STEPS):
    """``cls`` stepped ``steps`` times on host arrays ("cpu"), device arrays ("list")
    or a device FlatParams ("flat", its own gradient buffer and a flat array of the
    caller's in turn); returns (the optimizer, the parameters on the host, the state
    on the host)."""
    arrays = _start(dtype)
    if where == "cpu":
        params = views = arrays
    elif where == "list":
        params = views = [cuda.to_device(a) for a in arrays]
    else:
        params = fm.FlatParams([cuda.to_device(a) for a in arrays])
        views = params.params
    opt = cls(params, **kwargs)
    for t in range(steps):
        grads = _grads(arrays, t)
        if where == "cpu":
            opt.step(grads)
        elif where == "list":
            opt.step([cuda.to_device(g) for g in grads])
        elif t % 2:  # a flat gradient array of the caller's
            opt.step(cuda.to_device(np.concatenate([g.ravel() for g in grads])))
        else:  # the FlatParams' own buffer
            params.zero_grad()
            for view, g in zip(params.grads, grads):
                if g.size:
                    view.copy_to_device(g)
            opt.step()
    host = [v if isinstance(v, np.ndarray) else v.copy_to_host() for v in views]
    state = {k: v if isinstance(v, np.ndarray) else v.copy_to_host()
             for k, v in opt._groups[0].state.items()}
    return opt, host, state


def _assert_same(got, want, where) -> None:
    (_, params, state), (_, ref_params, ref_state) = got, want
    assert state.keys() == ref_state.keys()
    for name, buf in state.items():
        assert buf.dtype == ref_state[name].dtype, (where, name)
        assert np.array_equal(buf, ref_state[name]), (where, name)
    for p, r in zip(params, ref_params):
        assert p.dtype == r.dtype
        assert np.array_equal(p.view(np.uint16), r.view(np.uint16)), where


# (rule, dtype, options): for each rule both 16-bit dtypes, with a master copy
# (parameters rounded to nearest) and without (rounded stochastically), state float32
# and bfloat16; Adam's plain kernel (no weight decay), SGD's full one
SGD = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
CASES = [
    pytest.param(fm.Adam, F16, dict(lr=0.01), id="Adam-f16-master"),
    pytest.param(fm.Adam, BF16, dict(lr=0.01, master_weights=False, state_dtype="bfloat16"),
                 id="Adam-bf16-stochastic-bf16state"),
    pytest.param(fm.SGD, F16, dict(SGD, master_weights=False), id="SGD-f16-stochastic"),
    pytest.param(fm.SGD, BF16, dict(SGD, state_dtype="bfloat16"),
                 id="SGD-bf16-master-bf16state"),
]


@pytest.mark.usefixtures("small_grid")
@pytest.mark.parametrize("cls, dtype, kwargs", CASES)
def test_16bit_gpu_parameters_are_the_cpu_loop_bit_for_bit(cls, dtype, kwargs):
    want = _run(cls, kwargs, dtype, "cpu")
    master = kwargs.get("master_weights", True)
    assert ("master_param" in want[2]) == master
    stored = np.uint16 if kwargs.get("state_dtype") == "bfloat16" else np.float32
    assert all(want[2][n].dtype == stored for n in want[2] if n != "master_param")
    for where in ("list", "flat"):
        _assert_same(_run(cls, kwargs, dtype, where), want, where)


@pytest.mark.usefixtures("small_grid")
def test_a_cpu_state_dict_resumes_on_the_gpu_bit_for_bit():
    """The master copy and bfloat16 state of a CPU run, loaded into a GPU optimizer
    over the same parameters, step as the uninterrupted CPU run."""
    cls, dtype, kwargs = CASES[3].values
    opt, params, _ = _run(cls, kwargs, dtype, "cpu", steps=STEPS - 1)
    sd = opt.state_dict()
    assert "master_param" in sd["state"][0]
    want = _run(cls, kwargs, dtype, "cpu")
    device = [cuda.to_device(p) for p in params]
    resumed = cls(device, **kwargs)
    resumed.load_state_dict(sd)
    resumed.step([cuda.to_device(g) for g in _grads(params, STEPS - 1)])
    got = (resumed, [p.copy_to_host() for p in device],
           {k: v.copy_to_host() for k, v in resumed._groups[0].state.items()})
    _assert_same(got, want, "resumed")


@pytest.mark.usefixtures("small_grid")
@pytest.mark.parametrize("cls, dtype, kwargs", CASES[2:])
def test_16bit_gpu_gradients_give_the_cpu_norm_and_skip_nonfinite(monkeypatch, cls, dtype,
                                                                   kwargs):
    """The global norm (``max_grad_norm``) of 16-bit device gradients, widened from
    their patterns in the kernel; a step with a NaN gradient is skipped
    (``nonfinite='skip'``)."""
    kernel = gpu._sum_squares_16_kernel

    class Checked:  # what a real device needs of the norm kernel's arguments too
        calls = 0

        def __getitem__(self, grid):
            def launch(*args):
                _device_ready(args)
                Checked.calls += 1
                kernel[grid](*args)
            return launch

    monkeypatch.setattr(gpu, "_sum_squares_16_kernel", Checked())
    options = dict(kwargs, max_grad_norm=1e9, nonfinite="skip")
    arrays = _start(dtype)
    grads = _grads(arrays, 1)
    want = cls([a.copy() for a in arrays], **options).step(grads)
    assert want == pytest.approx(np.sqrt(sum(np.square(g.astype(np.float64)).sum()
                                             for g in grads)), rel=1e-12)
    flat = fm.FlatParams([cuda.to_device(a) for a in arrays])
    for view, g in zip(flat.grads, grads):
        if g.size:
            view.copy_to_device(g)
    opt = cls(flat, **options)
    start = flat.data.copy_to_host()
    assert opt.step() == pytest.approx(want, rel=1e-12)
    assert opt.step([cuda.to_device(g) for g in grads]) == pytest.approx(want, rel=1e-12)
    assert Checked.calls == 3  # the flat buffer once, the two nonempty arrays
    before = flat.data.copy_to_host()
    assert not np.array_equal(before.view(np.uint16), start.view(np.uint16))
    bad = grads[1].copy()
    bad[3] = np.nan
    flat.grads[1].copy_to_device(bad)
    opt.step()
    assert opt.skipped_steps == 1
    assert np.array_equal(flat.data.copy_to_host().view(np.uint16), before.view(np.uint16))


def test_16bit_patterns_of_another_dtype_are_refused_not_guessed():
    bits = np.zeros(4, np.uint16)
    for array, what in ((bits, "uint16"), (bits.view("V2"), r"\|V2")):
        with pytest.raises(TypeError, match=rf"params\[0\]: .*got dtype {what}.*not taken "
                                            "for a float by guess"):
            fm.Adam([cuda.to_device(array)])
        with pytest.raises(TypeError, match=rf"dtype: .*got {what}.*not taken for a float"):
            fm.FlatParams([cuda.to_device(array)])
    with pytest.raises(TypeError, match="two bytes of no stated type"):
        fm.Adam([cuda.to_device(bits.view("V2"))])
    device = [cuda.to_device(np.zeros(4, F16))]
    opt = fm.Adam(device)
    with pytest.raises(TypeError, match=r"grads\[0\]: expected dtype float16, got bfloat16"):
        opt.step([cuda.to_device(np.zeros(4, BF16))])
