"""fastmoments.torch with float16 / bfloat16 parameters and reduced-precision state.

- with master weights, a small ``nn.Module`` trained in 16 bits follows a float64
  reference of the same arithmetic (torch.optim's rule on a float64 master, the
  parameters its nearest 16-bit values), to float32 round-off;
- every step is the core optimizer's over NumPy 16-bit arrays, bit for bit
  (master weights, stochastic rounding of the parameters, bfloat16 state);
- float32 and bfloat16 parameters in one optimizer, ``flat=True``;
- state dicts: the documented form, round trips, to and from torch.optim, conversions
  between state dtypes;
- bad combinations refused clearly, nothing changed.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")
nn = torch.nn

import fastmoments as fm  # noqa: E402
import fastmoments.torch as fmt  # noqa: E402

STEPS = 12
HALF = [torch.bfloat16, torch.float16]
EPS32 = float(np.finfo(np.float32).eps)


def make_model(dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def batches(steps: int = STEPS, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g))
            for _ in range(steps)]


def loss_of(model, X, y):
    dtype = next(model.parameters()).dtype
    return nn.functional.mse_loss(model(X.to(dtype)).float(), y)


def train(model, opt, data):
    """Train with ``opt``; returns the gradients of each step (copies)."""
    grads = []
    for X, y in data:
        opt.zero_grad()
        loss_of(model, X, y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads


def bits(t: torch.Tensor) -> np.ndarray:
    """The bit patterns of a tensor (exact comparison, NaN included)."""
    t = t.detach()
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy of a 16-bit tensor (bfloat16 as ml_dtypes.bfloat16)."""
    t = t.detach().clone()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def numpy_bits(a: np.ndarray) -> np.ndarray:
    return a.view({2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize])


# ------------------------------------------------- against a float64 reference
REFERENCE_CASES = [
    ("Adam", dict(lr=0.01, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("rule, kwargs", REFERENCE_CASES, ids=[r for r, _ in REFERENCE_CASES])
def test_master_weights_follow_a_float64_reference(rule, kwargs, dtype):
    """The arithmetic of master weights: a float32 master updated by the rule, the
    parameters its nearest 16-bit values. The reference is torch.optim's rule in
    float64 on a float64 master, fed the same (16-bit) gradients.

    Tolerance: the kernel computes in float32. Each step adds at most a few float32
    roundings of the update (|update| <= about lr for these rules) and one rounding of
    the stored master (eps32/2 of its magnitude), and the same gradients leave no
    feedback but weight decay's, so after ``t`` steps the masters differ by at most
    ``t * 4 * eps32 * (max|master| + lr)``. The parameters are then the nearest 16-bit
    values of the float32 master exactly, and within one 16-bit ulp of the float64
    master's nearest (the two masters can fall on either side of a rounding boundary).
    """
    model = make_model(dtype)
    masters = [p.detach().double().clone().requires_grad_() for p in model.parameters()]
    reference = getattr(torch.optim, rule)(masters, **kwargs)
    opt = getattr(fmt, rule)(model.parameters(), **kwargs)
    start = [p.detach().clone() for p in model.parameters()]
    for t, grads in enumerate(train_steps(model, opt, batches())):
        for m, g in zip(masters, grads):
            m.grad = g.double()
        reference.step()
        scale = max(float(m.detach().abs().max()) for m in masters) + kwargs["lr"]
        bound = (t + 1) * 4 * EPS32 * scale
        for p, m in zip(model.parameters(), masters):
            mine = opt.state[p]["master_param"]
            assert mine.dtype == torch.float32
            gap = float((mine.double() - m.detach()).abs().max())
            assert gap <= bound, (t, gap, bound)
            assert np.array_equal(bits(p), bits(mine.to(dtype)))  # p = round(master)
            ours, theirs = p.detach().double(), m.detach().to(dtype).double()
            ulp = torch.finfo(dtype).eps * theirs.abs().clamp_min(torch.finfo(dtype).tiny)
            assert bool(((ours - theirs).abs() <= ulp).all()), t
    assert any(not torch.equal(a, p) for a, p in zip(start, model.parameters()))


def train_steps(model, opt, data):
    """Yield each step's gradients (copies) after the optimizer has taken the step."""
    for X, y in data:
        opt.zero_grad()
        loss_of(model, X, y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        yield grads


class TwoHeads(nn.Module):
    """A bfloat16 trunk and two heads; ``head_b`` gets a gradient on some steps only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(5, 6)
        self.head_a = nn.Linear(6, 3)
        self.head_b = nn.Linear(6, 3)
        self.to(torch.bfloat16)

    def forward(self, x, use_b):
        h = torch.tanh(self.trunk(x.to(torch.bfloat16)))
        return (self.head_a(h) + self.head_b(h) if use_b else self.head_a(h)).float()


def test_parameters_without_a_gradient_keep_their_master_copy():
    """torch skips a parameter without a gradient; here that splits the inner optimizer
    once, and the float32 master copies travel with the state (were they taken again
    from the bfloat16 parameters, they would be off by up to half a bfloat16 ulp, a
    thousand times the bound below). Reference and bound as in
    test_master_weights_follow_a_float64_reference."""
    model = TwoHeads()
    params = list(model.parameters())
    masters = [p.detach().double().clone().requires_grad_() for p in params]
    reference = torch.optim.Adam(masters, lr=0.01)
    opt = fmt.Adam(params, lr=0.01)
    skip = {1, 2, 5, 8}
    for t, (X, y) in enumerate(batches()):
        opt.zero_grad()
        nn.functional.mse_loss(model(X, t not in skip), y).backward()
        for p, m in zip(params, masters):
            m.grad = None if p.grad is None else p.grad.double()
        opt.step()
        reference.step()
        bound = (t + 1) * 4 * EPS32 * (max(float(m.detach().abs().max()) for m in masters)
                                       + 0.01)
        for p, m in zip(params, masters):
            gap = float((opt.state[p]["master_param"].double() - m.detach()).abs().max())
            assert gap <= bound, (t, gap, bound)
            assert np.array_equal(bits(p), bits(opt.state[p]["master_param"].to(p.dtype)))
    assert len(opt._cohorts) == 2
    assert {int(opt.state[p]["step"]) for p in params} == {STEPS, STEPS - len(skip)}


def test_a_module_cast_to_float16_keeps_its_state_and_gets_a_master_copy():
    model = make_model(torch.float32)
    opt = fmt.Adam(model.parameters(), lr=0.01)
    data = batches(6)
    train(model, opt, data[:3])
    before = {name: {k: v.clone() for k, v in opt.state[p].items()}
              for name, p in model.named_parameters()}
    model.half()  # replaces p.data: the next step rebuilds over the float16 tensors
    opt.zero_grad()
    opt.step()  # no gradients: the rebuild only
    for name, p in model.named_parameters():
        entry = opt.state[p]
        assert entry["exp_avg"].dtype == torch.float32
        assert torch.equal(entry["exp_avg"], before[name]["exp_avg"])
        assert torch.equal(entry["master_param"], p.detach().float())
    train(model, opt, data[4:])
    assert all(int(opt.state[p]["step"]) == 5 for p in model.parameters())
    assert all(bool(p.isfinite().all()) for p in model.parameters())


# ------------------------------------------------------- against the core optimizer
CORE_OPTIONS = [
    dict(),  # master weights (the default for 16-bit parameters), float32 state
    dict(state_dtype="bfloat16"),
    dict(master_weights=False, state_dtype="bfloat16", seed=7),
    dict(master_weights=False, state_rounding="stochastic"),
]


def _core_run(rule, kwargs, options, start, grads):
    arrays = [as_numpy(p) for p in start]
    core = getattr(fm, rule)(arrays, **kwargs, **options)
    for step in grads:
        core.step([as_numpy(g) for g in step])
    return core, arrays


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("options", CORE_OPTIONS, ids=lambda o: ",".join(o) or "master")
def test_same_bits_as_the_core_optimizer_on_numpy_16bit_arrays(options, dtype):
    kwargs = dict(lr=0.01, weight_decay=0.01)
    model = make_model(dtype)
    start = [p.detach().clone() for p in model.parameters()]
    opt = fmt.AdamW(model.parameters(), **kwargs, **options)
    grads = train(model, opt, batches())
    core, arrays = _core_run("AdamW", kwargs, options, start, grads)
    for p, a in zip(model.parameters(), arrays, strict=True):
        assert np.array_equal(bits(p), numpy_bits(a))
    state = [opt.state[p] for p in model.parameters()]
    for mine, theirs in zip(state, core.state, strict=True):
        assert set(mine) - {"step"} == set(theirs)
        for name, value in theirs.items():
            assert np.array_equal(bits(mine[name]), numpy_bits(value)), name
        assert int(mine["step"]) == core.step_count == STEPS


def test_pure_16bit_training_moves_parameters_by_steps_below_half_an_ulp():
    """master_weights=False: updates far below half an ulp move the parameters
    (stochastic rounding); rounded to nearest they would never move."""
    p = nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = fmt.SGD([p], lr=1e-4, master_weights=False)
    for _ in range(20):
        p.grad = torch.ones_like(p)
        opt.step()
    moved = 1 - p.detach().double()
    # 20 steps of 1e-4 below 1, where bfloat16's spacing is 2**-8: on average 2e-3
    assert abs(float(moved.mean()) - 2e-3) < 2e-4
    assert "master_param" not in opt.state[p]


# ---------------------------------------------------------------- mixed dtypes
class Mixed(nn.Module):
    """A bfloat16 trunk with a float32 head (as mixed-precision models keep norms and
    heads in float32)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(5, 7).to(torch.bfloat16)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.trunk(x.to(torch.bfloat16))).float())


@pytest.mark.parametrize("options", [dict(), dict(state_dtype="bfloat16", seed=3)],
                         ids=["master", "bf16-state"])
def test_float32_and_bfloat16_parameters_in_one_optimizer(options):
    """Each dtype is stepped as the core optimizer steps it on its own: master weights
    for the bfloat16 parameters only, the other options for both."""
    model = Mixed()
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    opt = fmt.Adam(params, lr=0.01, **options)
    grads = []
    for X, y in batches():
        opt.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        grads.append([p.grad.clone() for p in params])
        opt.step()
    assert len(opt._cohorts) == 2  # one inner optimizer per kind of parameter
    for part in (slice(0, 2), slice(2, 4)):
        core, arrays = _core_run("Adam", dict(lr=0.01), options, start[part],
                                 [g[part] for g in grads])
        for p, a in zip(params[part], arrays, strict=True):
            assert np.array_equal(bits(p), numpy_bits(a))
    sd = opt.state_dict()
    assert [("master_param" in sd["state"][i]) for i in range(4)] == [True, True, False, False]
    if options:
        assert {sd["state"][i]["exp_avg"].dtype for i in range(4)} == {torch.bfloat16}


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_flat_16bit_module_trains_as_the_unflattened_one(dtype):
    results = []
    for flat in (False, True):
        model = make_model(dtype)
        opt = fmt.Adam(model.parameters(), lr=0.01, master_weights=False,
                       state_dtype="bfloat16", flat=flat)
        train(model, opt, batches())
        results.append([p.detach().clone() for p in model.parameters()])
        if flat:
            w, b = model[0].weight, model[0].bias
            assert b.data_ptr() - w.data_ptr() == w.numel() * w.element_size()
            assert opt._cohorts[0].all_flat
    for a, b in zip(*results, strict=True):
        assert np.array_equal(bits(a), bits(b))


# ------------------------------------------------------------------ state dicts
def _two_runs(dtype, options, split=6):
    """Train STEPS steps straight, and ``split`` steps, state_dict through torch.save,
    a new optimizer, the rest: both runs' parameters and optimizers."""
    data = batches()
    straight = make_model(dtype)
    opt = fmt.Adam(straight.parameters(), lr=0.01, **options)
    train(straight, opt, data)
    first = make_model(dtype)
    opt_a = fmt.Adam(first.parameters(), lr=0.01, **options)
    train(first, opt_a, data[:split])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = make_model(dtype, seed=5)  # other values: all come from the file
    resumed.load_state_dict(saved["model"])
    opt_b = fmt.Adam(resumed.parameters(), lr=0.01, **options)
    opt_b.load_state_dict(saved["opt"])
    train(resumed, opt_b, data[split:])
    return (straight, opt), (resumed, opt_b), saved["opt"]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("options", [dict(), dict(state_dtype="bfloat16"),
                                     dict(master_weights=False, state_dtype="bfloat16")],
                         ids=["master", "master-bf16-state", "pure-bf16-state"])
def test_state_dict_round_trip_resumes_bit_for_bit(options, dtype):
    """The documented form (master_param float32, bfloat16 states as torch.bfloat16)
    survives torch.save / torch.load, and a resumed run draws the random bits of the
    uninterrupted one."""
    (straight, opt), (resumed, opt_b), saved = _two_runs(dtype, options)
    entry = saved["state"][0]
    keeps_master = options.get("master_weights", True)
    assert ("master_param" in entry) == keeps_master
    if keeps_master:
        assert entry["master_param"].dtype == torch.float32
    state_dtype = torch.bfloat16 if options.get("state_dtype") else torch.float32
    assert entry["exp_avg"].dtype == entry["exp_avg_sq"].dtype == state_dtype
    assert int(entry["step"]) == 6
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert np.array_equal(bits(a), bits(b))
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        for name, value in opt.state[p].items():
            assert np.array_equal(bits(value), bits(opt_b.state[q][name])), name


def test_state_tensors_view_the_live_buffers():
    model = make_model(torch.bfloat16)
    opt = fmt.Adam(model.parameters(), lr=0.01, state_dtype="bfloat16")
    train(model, opt, batches(2))
    p = model[0].bias
    entry = opt.state[p]
    entry["exp_avg"].fill_(0.5)  # bfloat16 patterns of the stored buffer
    entry["master_param"].fill_(2.0)
    inner = opt._cohorts[0].inner
    assert np.all(inner.state[1]["exp_avg"] == np.uint16(0x3F00))  # 0.5 in bfloat16
    assert np.all(inner.state[1]["master_param"] == 2.0)


def test_to_and_from_torch_optim_with_float16_parameters():
    """torch.optim keeps float16 state for float16 parameters and casts what it loads
    to the parameter's dtype: our float32 states arrive rounded to float16 (the master
    copy travels along, unused). torch's state loads here widened exactly, and the
    master copy is taken from the parameters (load the model first). (eps=1e-3: torch's
    float16 arithmetic rounds the default 1e-8 to 0, and divides 0 by 0 once v
    underflows.)"""
    data = batches()
    kwargs = dict(lr=0.01, eps=1e-3)
    mine_model, theirs_model = make_model(torch.float16), make_model(torch.float16)
    opt = fmt.Adam(mine_model.parameters(), **kwargs)
    train(mine_model, opt, data[:4])
    torch_opt = torch.optim.Adam(theirs_model.parameters(), **kwargs)
    torch_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in zip(mine_model.parameters(), theirs_model.parameters(), strict=True):
        s, t = opt.state[p], torch_opt.state[q]
        assert t["exp_avg"].dtype == torch.float16
        assert torch.equal(t["exp_avg"], s["exp_avg"].to(torch.float16))
        assert torch.equal(t["exp_avg_sq"], s["exp_avg_sq"].to(torch.float16))
    train(theirs_model, torch_opt, data[:3])  # torch steps with what it loaded

    assert all(bool(p.isfinite().all()) for p in theirs_model.parameters())
    back = fmt.Adam(theirs_model.parameters(), **kwargs)
    back.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    for q in theirs_model.parameters():
        s, t = back.state[q], torch_opt.state[q]
        assert s["exp_avg"].dtype == torch.float32
        assert torch.equal(s["exp_avg"], t["exp_avg"].float())
        assert torch.equal(s["exp_avg_sq"], t["exp_avg_sq"].float())
        # torch's state dict carried our master_param along (as float16): it is loaded
        assert torch.equal(s["master_param"], t["master_param"].float())
        assert int(s["step"]) == int(t["step"]) == 7
    fresh = make_model(torch.float16)
    plain = torch.optim.Adam(fresh.parameters(), **kwargs)
    train(fresh, plain, data[:2])
    again = fmt.Adam(fresh.parameters(), **kwargs)
    again.load_state_dict(copy.deepcopy(plain.state_dict()))  # no master_param there
    for q in fresh.parameters():
        assert torch.equal(again.state[q]["master_param"], q.detach().float())
    train(fresh, again, data[2:4])
    assert all(bool(p.isfinite().all()) for p in fresh.parameters())


def test_state_converts_between_state_dtypes_on_load():
    model = make_model(torch.float32)
    wide = fmt.Adam(model.parameters(), lr=0.01)
    train(model, wide, batches(3))
    narrow = fmt.Adam(model.parameters(), lr=0.01, state_dtype="bfloat16")
    narrow.load_state_dict(copy.deepcopy(wide.state_dict()))  # rounded to nearest
    for p in model.parameters():
        for name in ("exp_avg", "exp_avg_sq"):
            value = narrow.state[p][name]
            assert value.dtype == torch.bfloat16
            assert torch.equal(value, wide.state[p][name].to(torch.bfloat16))
    widened = fmt.Adam(model.parameters(), lr=0.01)
    widened.load_state_dict(copy.deepcopy(narrow.state_dict()))  # exact
    for p in model.parameters():
        assert torch.equal(widened.state[p]["exp_avg"], narrow.state[p]["exp_avg"].float())
    # a master copy is dropped where none is kept (pure 16-bit training)
    half = make_model(torch.bfloat16)
    master = fmt.Adam(half.parameters(), lr=0.01)
    train(half, master, batches(2))
    pure = fmt.Adam(half.parameters(), lr=0.01, master_weights=False)
    pure.load_state_dict(copy.deepcopy(master.state_dict()))
    assert all("master_param" not in pure.state[p] for p in half.parameters())
    assert torch.equal(pure.state[half[0].bias]["exp_avg"], master.state[half[0].bias]["exp_avg"])


def test_load_refuses_a_master_copy_of_the_wrong_shape_and_changes_nothing():
    model = make_model(torch.bfloat16)
    opt = fmt.Adam(model.parameters(), lr=0.01)
    train(model, opt, batches(2))
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["master_param"] = torch.zeros(3)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="master_param"):
        opt.load_state_dict(sd)
    sd["state"][1]["master_param"] = torch.zeros(7, dtype=torch.int32)
    with pytest.raises(TypeError, match="master_param"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for pid, entry in before["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, after["state"][pid][name])


# ------------------------------------------------------------------ refusals
def test_bad_options_and_combinations_are_refused_clearly():
    params = list(make_model(torch.bfloat16).parameters())
    wide = list(make_model(torch.float32).parameters())
    cases = [
        (dict(state_dtype="float16"), ValueError, "state_dtype must be one of"),
        (dict(state_dtype=torch.float16), ValueError, "state_dtype must be one of"),
        (dict(state_dtype="float64"), ValueError, "float64"),
        (dict(master_weights="yes"), TypeError, "master_weights"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(state_rounding="up"), ValueError, "state_rounding"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            fmt.Adam(params, **options)
    with pytest.raises(ValueError, match="float64 parameters"):
        fmt.Adam(wide, state_dtype="float64")
    # cautious passes take 16-bit parameters with bfloat16 or float32 state, not with
    # int8 state (tests/test_precision_cautious.py)
    int8 = "cautious=True with state_dtype='int8' needs float32 or float64 parameters"
    with pytest.raises(ValueError, match=int8):
        fmt.Adam(params, cautious=True, state_dtype="int8")
    opt = fmt.Adam(wide, cautious=True, state_dtype="int8", state_rounding="nearest")
    with pytest.raises(ValueError, match=int8):
        opt.add_param_group({"params": params})
    assert len(opt.param_groups) == 1  # the refused group was not added
    with pytest.raises(TypeError, match="int64"):
        fmt.Adam([torch.zeros(3, dtype=torch.int64)])
    elsewhere = nn.Parameter(torch.zeros(3, dtype=torch.float16, device="meta"))
    with pytest.raises(TypeError, match="16-bit parameters are stepped on the CPU only"):
        fmt.Adam([elsewhere])
    with pytest.raises(TypeError, match="float16 and bfloat16 ones on the CPU"):
        fmt.flatten_([elsewhere])


def test_options_are_read_only_attributes_and_ignored_for_wide_parameters():
    wide = make_model(torch.float32)
    opt = fmt.Adam(wide.parameters(), lr=0.01, master_weights=True, seed=3)
    assert (opt.master_weights, opt.seed, opt.state_dtype, opt.state_rounding) == \
        (True, 3, None, "auto")
    with pytest.raises(AttributeError):
        opt.seed = 4
    train(wide, opt, batches(2))  # master_weights concerns 16-bit parameters only
    assert "master_param" not in opt.state[wide[0].weight]
    assert fmt.Adam(wide.parameters(), state_dtype=torch.bfloat16).state_dtype == "bfloat16"


def test_without_ml_dtypes_bfloat16_parameters_are_refused_and_the_rest_works(monkeypatch):
    import fastmoments.torch._views as views

    monkeypatch.setattr(views, "bfloat16_dtype", lambda: None)
    with pytest.raises(TypeError, match="ml_dtypes"):
        fmt.Adam(make_model(torch.bfloat16).parameters())
    with pytest.raises(TypeError, match="ml_dtypes"):
        fmt.flatten_(make_model(torch.bfloat16))
    for dtype in (torch.float16, torch.float32, torch.float64):  # need no ml_dtypes
        model = make_model(dtype)
        opt = fmt.Adam(model.parameters(), lr=0.01, state_dtype="bfloat16")
        train(model, opt, batches(2))
        assert opt.state[model[0].bias]["exp_avg"].dtype == torch.bfloat16
        assert views.tensor_view(np.zeros(2)).dtype == torch.float64  # not taken for bf16
