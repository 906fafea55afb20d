"""Every bad input is refused with a clear error, and a refused call changes nothing.

One table of bad constructor arguments and one of bad ``step`` calls: each row names
the exception type and a fragment of its message (the argument, the index of the
offending parameter, what was expected). Every step row also checks that the
parameters, the state, the step counter and the counters of the non-finite policy
are bit-for-bit what they were, and that the next good step gives exactly what an
optimizer that never saw the bad call gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmoments as fm

torch = pytest.importorskip("torch")

SHAPES = [(2, 3), (4,)]


def make_params(dtype=np.float64):
    return [np.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3), np.arange(4, dtype=dtype)]


def good_grads(t=0, dtype=np.float64):
    return [np.full((2, 3), 0.5 + t, dtype=dtype), np.linspace(-0.3, 0.2, 4).astype(dtype)]


def snapshot(opt, params):
    """Everything a refused call must leave alone, as bytes (bit-exact, NaN-safe)."""
    return {
        "params": [np.asarray(p).tobytes() for p in params],
        "state": [{n: np.asarray(b).tobytes() for n, b in g.state.items()} for g in opt._groups],
        "host": [dict(g.host_state) for g in opt._groups],
        "step_count": opt.step_count,
        "skipped": (opt.skipped_steps, opt.last_step_skipped, opt.last_grad_norm),
    }


def readonly(a):
    a.setflags(write=False)
    return a


class FakeCudaArray:
    """Something that claims to live on a GPU (for the device-mismatch check)."""

    __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f8", "data": (0, False),
                                "version": 3}
    shape = (2, 3)
    dtype = np.dtype(np.float64)


# --------------------------------------------------------------- constructor
def aliased():
    a = np.ones(3)
    return [a, np.ones(2), a]


def overlapping():
    a = np.ones(6)
    return [a[:4], a[3:]]


CONSTRUCTOR = [
    # (id, factory, exception type, message fragment)
    ("lr<0", lambda p: fm.Adam(p, lr=-1e-3), ValueError, "invalid lr"),
    ("lr=nan", lambda p: fm.Adam(p, lr=math.nan), ValueError, "invalid lr"),
    ("lr=inf", lambda p: fm.SGD(p, lr=math.inf), ValueError, "invalid lr"),
    ("lr=str", lambda p: fm.Adam(p, lr="0.1"), ValueError, "invalid lr"),
    ("lr=None", lambda p: fm.Adam(p, lr=None), ValueError, "invalid lr"),
    ("lr=True", lambda p: fm.Adam(p, lr=True), ValueError, "invalid lr"),
    ("beta1=1", lambda p: fm.Adam(p, betas=(1.0, 0.999)), ValueError, "betas[0]"),
    ("beta2=1", lambda p: fm.AdamW(p, betas=(0.9, 1.0)), ValueError, "betas[1]"),
    ("beta1<0", lambda p: fm.NAdam(p, betas=(-0.1, 0.9)), ValueError, "betas[0]"),
    ("beta2=nan", lambda p: fm.RAdam(p, betas=(0.9, math.nan)), ValueError, "betas[1]"),
    ("betas single", lambda p: fm.Adamax(p, betas=(0.9,)), ValueError, "pair (beta1, beta2)"),
    ("betas str", lambda p: fm.Yogi(p, betas=("a", 0.9)), ValueError, "betas[0]"),
    ("eps<0", lambda p: fm.Adam(p, eps=-1e-8), ValueError, "invalid eps"),
    ("eps=inf", lambda p: fm.Adam(p, eps=math.inf), ValueError, "invalid eps"),
    ("eps=nan", lambda p: fm.Adagrad(p, eps=math.nan), ValueError, "invalid eps"),
    ("weight_decay<0", lambda p: fm.Adam(p, weight_decay=-0.1), ValueError, "weight_decay"),
    ("eps_root<0", lambda p: fm.Adam(p, eps_root=-1.0), ValueError, "eps_root"),
    ("amsgrad=1", lambda p: fm.Adam(p, amsgrad=1), TypeError, "amsgrad: expected True or False"),
    ("maximize=str", lambda p: fm.SGD(p, maximize="no"), TypeError, "maximize"),
    ("nesterov, no momentum", lambda p: fm.SGD(p, nesterov=True), ValueError, "nesterov"),
    ("nesterov, dampening",
     lambda p: fm.SGD(p, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening"),
    ("momentum<0", lambda p: fm.SGD(p, momentum=-0.5), ValueError, "momentum"),
    ("dampening<0", lambda p: fm.SGD(p, momentum=0.5, dampening=-1), ValueError, "dampening"),
    ("alpha>1", lambda p: fm.RMSprop(p, alpha=1.5), ValueError, "alpha"),
    ("rmsprop momentum<0", lambda p: fm.RMSprop(p, momentum=-0.1), ValueError, "momentum"),
    ("rho>1", lambda p: fm.Adadelta(p, rho=1.1), ValueError, "rho"),
    ("lr_decay<0", lambda p: fm.Adagrad(p, lr_decay=-1.0), ValueError, "lr_decay"),
    ("initial_accumulator_value<0", lambda p: fm.Adagrad(p, initial_accumulator_value=-1.0),
     ValueError, "initial_accumulator_value"),
    ("momentum_decay<0", lambda p: fm.NAdam(p, momentum_decay=-1.0), ValueError,
     "momentum_decay"),
    ("unknown keyword", lambda p: fm.Adam(p, bets=(0.9, 0.99)), TypeError, "bets"),
    ("nonfinite policy", lambda p: fm.Adam(p, nonfinite="ignore"), ValueError, "nonfinite"),
    ("max_grad_norm=0", lambda p: fm.Adam(p, max_grad_norm=0.0), ValueError, "max_grad_norm"),
    ("max_grad_norm=nan", lambda p: fm.SGD(p, max_grad_norm=math.nan), ValueError,
     "max_grad_norm"),
    ("clip_value<0", lambda p: fm.Adam(p, clip_value=-1.0), ValueError, "clip_value"),
    # params
    ("params empty list", lambda p: fm.Adam([]), ValueError, "empty list of params"),
    ("params single array", lambda p: fm.Adam(p[0]), TypeError, "wrap it in a list"),
    ("params None", lambda p: fm.Adam(None), TypeError, "got NoneType"),
    ("params int dtype", lambda p: fm.Adam([p[0], np.arange(3)]), TypeError,
     "params[1]: expected a float32, float64, float16 or bfloat16 array, got dtype int64"),
    ("params float16 beside float64", lambda p: fm.Adam([p[0], p[1].astype(np.float16)]),
     TypeError, "must share one dtype"),
    ("params complex", lambda p: fm.Adam([p[0].astype(complex)]), TypeError, "complex128"),
    ("params byte-swapped", lambda p: fm.Adam([p[0].astype(">f8")]), TypeError, ">f8"),
    ("params read-only", lambda p: fm.Adam([p[0], readonly(np.ones(3))]), ValueError,
     "params[1]: expected a writeable array"),
    ("params strided", lambda p: fm.Adam([np.ones((3, 4))[:, ::2]]), ValueError,
     "params[0]: expected a C-contiguous array"),
    ("params Fortran order", lambda p: fm.Adam([p[1], np.ones((3, 4), order="F")]),
     ValueError, "params[1]: expected a C-contiguous"),
    ("params given twice", lambda p: fm.Adam(aliased()), ValueError,
     "params[2] overlaps params[0]"),
    ("params overlapping views", lambda p: fm.Adam(overlapping()), ValueError,
     "params[1] overlaps params[0]"),
    ("params twice across groups",
     lambda p: fm.Adam([{"params": [p[0]]}, {"params": [p[1], p[0]]}]), ValueError,
     "params[2] overlaps params[0]"),
    ("params list of lists", lambda p: fm.Adam([[1.0, 2.0]]), TypeError,
     "params[0]: expected a NumPy or CUDA array, got list"),
    ("params python float", lambda p: fm.Adam([p[0], 1.0]), TypeError, "params[1]"),
    ("params torch tensor", lambda p: fm.Adam([torch.ones(3)]), TypeError, "detach().numpy()"),
    ("params mixed dtypes", lambda p: fm.Adam([p[0], p[1].astype(np.float32)]), TypeError,
     "own param group"),
    ("group without params", lambda p: fm.Adam([{"lr": 0.1}]), ValueError, "no 'params' key"),
    ("group unknown key", lambda p: fm.Adam([{"params": p, "lrr": 0.1}]), ValueError, "lrr"),
    ("group bad lr", lambda p: fm.Adam([{"params": [p[0]]}, {"params": [p[1]], "lr": -1.0}]),
     ValueError, "param_groups[1]"),
    ("group bad betas", lambda p: fm.Adam([{"params": [p[0]], "betas": (0.9, 2.0)}]),
     ValueError, "betas[1]"),
    ("group empty", lambda p: fm.Adam([{"params": [p[0]]}, {"params": []}]), ValueError,
     "empty list of params"),
    ("groups mixed with arrays", lambda p: fm.Adam([{"params": [p[0]]}, p[1]]), TypeError,
     "mixes param-group dicts and arrays"),
]


@pytest.mark.parametrize("factory, exc, fragment", [c[1:] for c in CONSTRUCTOR],
                         ids=[c[0] for c in CONSTRUCTOR])
def test_constructor_refuses(factory, exc, fragment):
    params = make_params()
    before = [p.tobytes() for p in params]
    with pytest.raises(exc) as info:
        factory(params)
    assert fragment in str(info.value)
    assert [p.tobytes() for p in params] == before


def test_table_is_large():
    assert len(CONSTRUCTOR) + len(STEP) >= 60


def test_allowed_edge_cases():
    # zero-size arrays (torch parity), 0-d arrays and unaligned buffers are fine
    zero, scalar = np.ones(0), np.array(2.0)
    unaligned = np.frombuffer(bytearray(8 * 4 + 1), dtype=np.float64, offset=1, count=4)
    assert not unaligned.flags.aligned
    opt = fm.Adam([zero, scalar, unaligned], lr=0.1)
    opt.step([np.ones(0), np.array(1.0), np.ones(4)])
    assert scalar == pytest.approx(1.9) and np.allclose(unaligned, -0.1)
    # two zero-size views of one buffer do not overlap
    base = np.ones(3)
    fm.SGD([base[:0], base[3:], base])


# ---------------------------------------------------------------------- step
def set_group(key, value, k=0):
    def action(opt, params):
        opt.param_groups[k][key] = value
        opt.step(good_grads())

    return action


def with_grads(make):
    return lambda opt, params: opt.step(make())


def swap(i, value):
    def make():
        grads = good_grads()
        grads[i] = value
        return grads

    return with_grads(make)


def noncontiguous():
    return np.ones((2, 6))[:, ::2]


def set_lr(value):
    def action(opt, params):
        opt.lr = value
        opt.step(good_grads())

    return action


def torch_requiring_grad():
    return torch.ones((2, 3), dtype=torch.float64, requires_grad=True)


# (id, optimizer class and options, action, exception type, message fragment,
#  whether the bad setting persists, so that the next good step would fail too)
STEP = [
    ("grads=None", {}, lambda o, p: o.step(), TypeError, "grads=None is only allowed", False),
    ("too few grads", {}, with_grads(lambda: good_grads()[:1]), ValueError,
     "expected 2 gradients (one per parameter), got 1", False),
    ("too many grads", {}, with_grads(lambda: good_grads() + [np.ones(1)]), ValueError,
     "expected 2 gradients", False),
    ("wrong shape", {}, swap(1, np.ones(5)), ValueError,
     "grads[1]: expected shape (4,), got (5,)", False),
    ("transposed", {}, swap(0, np.ones((3, 2))), ValueError,
     "grads[0]: expected shape (2, 3), got (3, 2)", False),
    ("float32 grad", {}, swap(0, np.ones((2, 3), np.float32)), TypeError,
     "grads[0]: expected dtype float64, got float32", False),
    ("int grad", {}, swap(1, np.arange(4)), TypeError, "grads[1]: expected dtype float64", False),
    ("byte-swapped grad", {}, swap(0, np.ones((2, 3), ">f8")), TypeError, "got >f8", False),
    ("strided grad", {}, swap(0, noncontiguous()), ValueError,
     "grads[0]: expected a C-contiguous array", False),
    ("list grad", {}, swap(1, [0.0, 1.0, 2.0, 3.0]), TypeError,
     "grads[1]: expected a NumPy array, got list", False),
    ("None grad", {}, swap(0, None), TypeError, "grads[0]: expected a NumPy array, got NoneType",
     False),
    ("CUDA grad for CPU param", {}, swap(0, FakeCudaArray()), TypeError,
     "grads[0]: expected a host array", False),
    ("torch grad requiring grad", {}, swap(0, torch_requiring_grad()), TypeError,
     "grads[0]: cannot view", False),
    ("dict of grads", {}, lambda o, p: o.step(dict(enumerate(good_grads()))), TypeError,
     "expected a list of arrays", False),
    ("generator of grads", {}, lambda o, p: o.step(g for g in good_grads()), TypeError,
     "expected a list of arrays", False),
    ("one flat array", {}, lambda o, p: o.step(np.ones(10)), TypeError,
     "single flat array is only accepted", False),
    ("grad_scale=0", {}, lambda o, p: o.step(good_grads(), grad_scale=0.0), ValueError,
     "grad_scale", False),
    ("grad_scale<0", {}, lambda o, p: o.step(good_grads(), grad_scale=-2.0), ValueError,
     "grad_scale", False),
    ("grad_scale=nan", {}, lambda o, p: o.step(good_grads(), grad_scale=math.nan), ValueError,
     "grad_scale", False),
    ("grad_scale=inf", {}, lambda o, p: o.step(good_grads(), grad_scale=math.inf), ValueError,
     "grad_scale", False),
    ("grad_scale=str", {}, lambda o, p: o.step(good_grads(), grad_scale="2"), ValueError,
     "grad_scale: expected a finite number > 0", False),
    ("grad_scale=array", {}, lambda o, p: o.step(good_grads(), grad_scale=np.ones(2)),
     ValueError, "grad_scale", False),
    ("opt.lr = -1", {}, set_lr(-1.0), ValueError, "invalid lr", False),
    ("opt.lr = nan", {}, set_lr(math.nan), ValueError, "invalid lr", False),
    ("opt.lr = str", {}, set_lr("fast"), ValueError, "invalid lr", False),
    ("param_groups lr=nan", {}, set_group("lr", math.nan), ValueError,
     "invalid lr: expected a finite number >= 0 or a schedule, got nan (param_groups[0])", True),
    ("param_groups betas", {}, set_group("betas", (1.0, 0.9)), ValueError, "betas[0]", True),
    ("param_groups amsgrad", {}, set_group("amsgrad", "yes"), TypeError, "amsgrad", True),
    ("param_groups eps<0", {}, set_group("eps", -1.0), ValueError, "invalid eps", True),
    ("param_groups weight_decay", {}, set_group("weight_decay", -0.5), ValueError,
     "weight_decay", True),
    ("schedule < 0", {}, set_lr(lambda t: 0.1 - t), ValueError, "returned", True),
    ("schedule nan", {}, set_lr(lambda t: math.nan), ValueError, "lr schedule", True),
    ("schedule str", {}, set_lr(lambda t: "0.1"), ValueError, "lr schedule", True),
    ("nonfinite=raise", {"nonfinite": "raise"}, swap(1, np.array([0.0, np.nan, 1.0, 2.0])),
     FloatingPointError, "NaN or Inf", False),
]


@pytest.mark.parametrize("options, action, exc, fragment, persists",
                         [c[1:] for c in STEP], ids=[c[0] for c in STEP])
def test_step_refuses_and_changes_nothing(options, action, exc, fragment, persists):
    params = make_params()
    opt = fm.Adam(params, lr=0.1, **options)
    ref_params = make_params()
    ref = fm.Adam(ref_params, lr=0.1, **options)
    for t in range(2):
        opt.step(good_grads(t))
        ref.step(good_grads(t))
    before = snapshot(opt, params)
    with pytest.raises(exc) as info:
        action(opt, params)
    assert fragment in str(info.value)
    assert snapshot(opt, params) == before
    if not persists:
        # nothing hidden changed either: the next good step is the reference's
        opt.lr = 0.1
        opt.step(good_grads(2))
        ref.step(good_grads(2))
        assert snapshot(opt, params) == snapshot(ref, ref_params)


# ------------------------------------------------------- multi-group / FlatParams
def test_grad_index_counts_across_groups():
    a, b, c = np.ones(3), np.ones(4), np.ones(5)
    opt = fm.Adam([{"params": [a]}, {"params": [b, c], "lr": 0.5}])
    before = snapshot(opt, [a, b, c])
    with pytest.raises(ValueError, match=r"grads\[2\]: expected shape \(5,\)"):
        opt.step([np.ones(3), np.ones(4), np.ones(6)])
    assert snapshot(opt, [a, b, c]) == before


def test_schedule_failing_in_a_later_group_changes_no_group():
    a, b = np.ones(3), np.ones(4)
    opt = fm.NAdam([{"params": [a]}, {"params": [b], "lr": lambda t: 0.1 if t < 2 else -1.0}])
    for _ in range(2):
        opt.step([np.ones(3), np.ones(4)])
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="lr schedule"):
        opt.step([np.ones(3), np.ones(4)])
    assert snapshot(opt, [a, b]) == before  # NAdam's mu_product (host state) included


def test_schedule_raising_its_own_error_changes_nothing():
    a, b = np.ones(3), np.ones(4)

    def schedule(t):
        if t >= 1:
            raise ZeroDivisionError("schedule bug")
        return 0.1

    opt = fm.Adam([{"params": [a]}, {"params": [b], "lr": schedule}])
    opt.step([np.ones(3), np.ones(4)])
    before = snapshot(opt, [a, b])
    with pytest.raises(ZeroDivisionError):
        opt.step([np.ones(3), np.ones(4)])
    assert snapshot(opt, [a, b]) == before


def test_invalid_edit_in_one_group_rebuilds_no_other_group():
    a, b = np.ones(3), np.ones(4)
    opt = fm.Adam([{"params": [a]}, {"params": [b]}])
    opt.step([np.ones(3), np.ones(4)])
    opt.param_groups[0]["amsgrad"] = True  # valid, needs a new buffer
    opt.param_groups[1]["lr"] = -1.0  # invalid
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        opt.step([np.ones(3), np.ones(4)])
    assert snapshot(opt, [a, b]) == before
    assert set(opt._groups[0].state) == {"exp_avg", "exp_avg_sq"}
    opt.param_groups[1]["lr"] = 0.1
    opt.step([np.ones(3), np.ones(4)])
    assert "max_exp_avg_sq" in opt.state[0]


@pytest.mark.parametrize("bad, exc, fragment", [
    (np.ones(11), ValueError, "grads: expected shape (10,), got (11,)"),
    (np.ones(10, np.float32), TypeError, "grads: expected dtype float64"),
    (np.ones(20)[::2], ValueError, "C-contiguous"),
    (np.ones((2, 5)), ValueError, "expected shape (10,)"),
])
def test_flat_params_refuse_bad_flat_grad(bad, exc, fragment):
    flat = fm.FlatParams(make_params())
    opt = fm.Adam(flat, lr=0.1)
    flat.grad[:] = 1.0
    opt.step()
    before = snapshot(opt, [flat.data])
    with pytest.raises(exc) as info:
        opt.step(bad)
    assert fragment in str(info.value)
    assert snapshot(opt, [flat.data]) == before


def test_no_numba_error_escapes_for_junk_inputs():
    """Whatever is passed as a gradient, the error is a TypeError or ValueError."""
    junk = [object(), "abc", b"bytes", 3.0, np.float64(1.0), np.ones((2, 3), dtype=object),
            np.ones((2, 3), dtype=bool), np.ones((2, 3), dtype=np.complex64),
            np.array("text"), np.ones((2, 3, 1)), {"a": 1}, [[0.5] * 3] * 2]
    for item in junk:
        params = make_params()
        opt = fm.SGD(params, lr=0.1)
        before = snapshot(opt, params)
        with pytest.raises((TypeError, ValueError)) as info:
            opt.step([item, np.ones(4)])
        assert "grads[0]" in str(info.value)
        assert not type(info.value).__module__.startswith("numba")
        assert snapshot(opt, params) == before


GRAD_DTYPES = [np.float64, np.float32, np.int64, np.int32, np.bool_, np.complex128,
               np.float16, ">f8"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.sampled_from([(2, 3), (4,), (3, 2), (6,), (), (0,), (2, 3, 1)]),
                    min_size=0, max_size=3),
    dtype=st.sampled_from(GRAD_DTYPES),
    order=st.sampled_from(["C", "F", "strided"]),
    scale=st.sampled_from([1.0, 0.0, -1.0, 2.0**16]),
)
def test_fuzzed_grads_either_step_or_refuse_cleanly(shapes, dtype, order, scale):
    params = make_params()
    opt = fm.Adam(params, lr=0.1, nonfinite="raise")
    opt.step(good_grads())
    grads = []
    for shape in shapes:
        g = np.ones(shape, dtype=dtype)
        if order == "F" and g.ndim > 1:
            g = np.asfortranarray(g)
        elif order == "strided" and g.ndim >= 1 and g.shape[-1] > 1:
            g = np.ones(shape[:-1] + (2 * shape[-1],), dtype=dtype)[..., ::2]
        grads.append(g)
    before = snapshot(opt, params)
    try:
        opt.step(grads, grad_scale=scale)
    except (TypeError, ValueError) as exc:
        assert "grads" in str(exc) or "grad_scale" in str(exc)
        assert snapshot(opt, params) == before
    else:
        assert opt.step_count == 2
        assert [g.shape for g in grads] == SHAPES


@pytest.mark.parametrize("flat", [False, True], ids=["list", "flat"])
def test_params_of_a_group_cannot_be_changed(flat):
    """The state is laid out for the group's arrays: changing them is refused clearly,
    never ignored, and a refused step changes nothing."""
    params = [np.ones(3), np.ones(4)]
    target = fm.FlatParams(params) if flat else params
    arrays = target.params if flat else params
    opt = fm.Adam(target, lr=0.1)
    grads = [np.ones(3), np.ones(4)]
    opt.step(grads)
    entry = opt.param_groups[0]["params"]
    if not flat:
        assert list(entry) == params
        for mutate in (lambda e: e.append(np.ones(2)), lambda e: e.pop(),
                       lambda e: e.__setitem__(0, np.ones(3)), lambda e: e.extend([]),
                       lambda e: e.clear()):
            with pytest.raises(TypeError, match="cannot be changed"):
                mutate(entry)
        assert len(entry) == 2 and entry[0] is params[0]
    before = snapshot(opt, arrays)
    opt.param_groups[0]["params"] = [np.ones(5)]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]: .* cannot be replaced"):
        opt.step(grads)
    assert snapshot(opt, arrays) == before
    opt.param_groups[0]["params"] = entry  # put back: steps again
    opt.step(grads)
    assert snapshot(opt, arrays) != before
