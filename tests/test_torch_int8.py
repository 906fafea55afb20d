"""fastmoments.torch with ``state_dtype="int8"`` (blockwise 8-bit state).

- a real ``nn.Module`` trained with ``loss.backward()`` (closure, ``zero_grad``, an lr
  changed through ``param_groups``) follows the core ``fastmoments.Adam(...,
  state_dtype="int8")`` over NumPy copies fed the same gradients, bit for bit, and
  ``state_dict()`` holds exactly the core's stored buffers, cut by parameter;
- fed one gradient sequence, its steps stay within the int8 quantization error of
  ``torch.optim.Adam``'s (float32 state);
- state dicts: the documented form, ``opt.state`` as live views, ``torch.save`` /
  ``torch.load(weights_only=True)``, exact round trips (a resumed run is the
  uninterrupted one), state carried exactly through a cohort split and
  ``add_param_group``; loads between int8, float32, bfloat16 and torch.optim state
  dicts converted as the core converts them (bit for bit against the core);
- GradScaler's fused path against its unfused protocol, bit for bit;
- refusals: rules the core refuses int8 for, CUDA tensors, malformed int8 entries
  (nothing changed), 16-bit parameters as the core decides.

The model has one quantized tensor (5200 elements: 20 full blocks and a partial one)
and three below 4096 elements (float32 state), so both storage forms are exercised.
"""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fastmoments as fm  # noqa: E402
import fastmoments.torch as fmt  # noqa: E402

STEPS = 6
LR = 1e-2
NAMES = ("exp_avg", "exp_avg_sq")
SUFFIXES = ("", "__absmax", "__float32")


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(65, 80), nn.Tanh(), nn.Linear(80, 3))


def batches(steps: int = STEPS, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 65, generator=g), torch.randn(16, 3, generator=g))
            for _ in range(steps)]


def train(model, opt, data):
    """Train with ``opt`` (through a closure); returns each step's gradients (copies)."""
    grads = []
    for X, y in data:
        def closure(X=X, y=y):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(X), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor)
        grads.append([p.grad.numpy().copy() for p in model.parameters()])
    return grads


def bits(t) -> np.ndarray:
    """The bit patterns of a tensor or array (exact comparison, NaN included)."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        t = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    a = t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_sd_equal(a, b):
    assert a["state"].keys() == b["state"].keys()
    for pid, entry in a["state"].items():
        assert entry.keys() == b["state"][pid].keys()
        for key, value in entry.items():
            other = b["state"][pid][key]
            assert value.dtype == other.dtype and value.shape == other.shape, (pid, key)
            np.testing.assert_array_equal(bits(value), bits(other), err_msg=f"{pid} {key}")


def core_form(sd, names=NAMES) -> dict[str, np.ndarray]:
    """A torch-form int8 state dict as the core's buffers: each stored array, the
    parameters' pieces in order."""
    entries = [sd["state"][pid] for pid in sorted(sd["state"])]
    return {name + suffix: np.concatenate([e[name + suffix].numpy().reshape(-1)
                                           for e in entries])
            for name in names for suffix in SUFFIXES}


def flat_values(sd, names=NAMES) -> dict[str, np.ndarray]:
    """A float-state torch-form state dict as flat arrays (bfloat16 as its bits)."""
    entries = [sd["state"][pid] for pid in sorted(sd["state"])]
    return {name: np.concatenate([bits(e[name]).reshape(-1) for e in entries])
            for name in names}


def trained(steps: int = STEPS):
    """A model trained with int8 Adam, and the core optimizer that followed it."""
    model = make_model()
    core_params = [p.detach().numpy().copy() for p in model.parameters()]
    opt = fmt.Adam(model.parameters(), lr=LR, state_dtype="int8")
    core = fm.Adam(core_params, lr=LR, state_dtype="int8")
    for grads in train(model, opt, batches(steps)):
        core.step(grads)
    return model, opt, core, core_params


# ------------------------------------------------------- the core, bit for bit
def test_trajectory_and_stored_state_are_the_core_int8_adam_bit_for_bit():
    model, opt, core, core_params = trained()
    assert opt.state_dtype == "int8"
    for p, a in zip(model.parameters(), core_params):
        np.testing.assert_array_equal(bits(p), bits(a))
    # an lr changed through param_groups (as a scheduler does) takes effect as the
    # core's lr does
    opt.param_groups[0]["lr"] = LR / 4
    core.lr = LR / 4
    for grads in train(model, opt, batches(2, seed=2)):
        core.step(grads)
    for p, a in zip(model.parameters(), core_params):
        np.testing.assert_array_equal(bits(p), bits(a))

    sd = opt.state_dict()
    entry = sd["state"][0]  # the 80x65 weight: 5200 elements, 21 blocks, quantized
    assert set(entry) == {"step"} | {n + s for n in NAMES for s in SUFFIXES}
    assert entry["exp_avg"].dtype == torch.uint8 and entry["exp_avg"].shape == (80, 65)
    assert entry["exp_avg__absmax"].dtype == torch.float32
    assert entry["exp_avg__absmax"].shape == (21,) and entry["exp_avg__float32"].shape == (0,)
    assert float(entry["step"]) == STEPS + 2
    small = sd["state"][1]  # the bias of 80 elements: float32 values, one unused scale
    assert small["exp_avg_sq__absmax"].shape == (1,)
    assert small["exp_avg_sq__float32"].shape == (80,)
    assert sd["param_groups"][0]["lr"] == LR / 4
    expected = core.state_dict()["state"][0]
    for key, value in core_form(sd).items():
        np.testing.assert_array_equal(bits(value), bits(expected[key]), err_msg=key)

    # opt.state: the same tensors as the state dict, views of the live buffers
    weight = model[0].weight
    state = opt.state[weight]
    assert set(state) == set(entry)
    assert torch.equal(state["exp_avg"], entry["exp_avg"])
    with torch.no_grad():
        state["exp_avg__absmax"][0] = 7.0
    assert float(opt.state_dict()["state"][0]["exp_avg__absmax"][0]) == 7.0


def test_steps_stay_within_int8_error_of_torch_adam():
    # One gradient sequence for both (so the parameters do not feed back into it):
    # per element scales spread log-normally, random signs each step. The int8 map
    # holds a value near its block's largest to within 0.35 % (unsigned) or 0.7 %
    # (signed) of that largest, and smaller values coarser: each step's m / sqrt(v)
    # carries both errors. Measured: 1.2 % of lr per element on average (at most 1.3 %
    # in one step), the parameters 0.7 % of lr * steps apart after 40 steps.
    rng = np.random.default_rng(0)
    shapes = [(64, 130), (100,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    scales = [np.exp(rng.standard_normal(s)).astype(np.float32) for s in shapes]
    steps, lr = 40, 1e-3
    grads = [[torch.from_numpy((rng.standard_normal(s) * sc).astype(np.float32))
              for s, sc in zip(shapes, scales)] for _ in range(steps)]

    def run(cls, **options):
        params = [nn.Parameter(torch.from_numpy(a.copy())) for a in init]
        opt = cls(params, lr=lr, **options)
        moves = []
        for gs in grads:
            before = [p.detach().clone() for p in params]
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
            moves.append([p.detach() - b for p, b in zip(params, before)])
        return moves, [p.detach() for p in params]

    moves8, final8 = run(fmt.Adam, state_dtype="int8")
    moves32, final32 = run(torch.optim.Adam)
    gaps = [float((a[0] - b[0]).abs().mean()) / lr for a, b in zip(moves8, moves32)]
    assert 0 < float(np.mean(gaps)) < 0.03 and max(gaps) < 0.05
    assert float((final8[0] - final32[0]).abs().mean()) < 0.02 * lr * steps
    # the small tensor keeps float32 state: torch's steps to the round-off of the
    # parameters (their float32 spacing near 1 is 1.2e-7, 1.2e-4 of lr), not int8's
    for a, b in zip(moves8, moves32):
        assert float((a[1] - b[1]).abs().max()) < 1e-3 * lr


# --------------------------------------------------------------- state dicts
def test_state_dict_round_trips_through_torch_save_with_weights_only():
    model, opt, _, _ = trained()
    sd = opt.state_dict()
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert_sd_equal(sd, loaded)

    # a second run, resumed from the file, is the first one continued
    resumed = make_model()
    resumed.load_state_dict(model.state_dict())
    opt2 = fmt.Adam(resumed.parameters(), lr=1.0, state_dtype="int8")
    opt2.load_state_dict(loaded)
    assert opt2.param_groups[0]["lr"] == LR
    assert_sd_equal(opt2.state_dict(), sd)
    more = batches(3, seed=3)
    train(model, opt, more)
    train(resumed, opt2, more)
    for p, q in zip(model.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(bits(p), bits(q))
    assert_sd_equal(opt.state_dict(), opt2.state_dict())

    # into itself: the same state, bit for bit
    snapshot = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(copy.deepcopy(snapshot))
    assert_sd_equal(opt.state_dict(), snapshot)


def test_state_travels_exactly_through_a_split_and_add_param_group():
    model, opt, _, _ = trained(2)
    before = copy.deepcopy(opt.state_dict())
    head = model[2]
    opt.zero_grad()
    nn.functional.mse_loss(model(torch.randn(4, 65)), torch.zeros(4, 3)).backward()
    head.weight.grad = None  # skipped: its state and step stay, the others step on
    opt.step()
    after = opt.state_dict()
    kept = before["state"][2]
    for key, value in after["state"][2].items():
        np.testing.assert_array_equal(bits(value), bits(kept[key]), err_msg=key)
    assert float(after["state"][0]["step"]) == 3 and float(after["state"][2]["step"]) == 2
    assert not torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])

    extra = nn.Parameter(torch.ones(4100))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert extra not in opt.state  # fresh state, as torch
    moved = [copy.deepcopy(opt.state[p]) for p in model.parameters()]
    opt.zero_grad()
    extra.grad = torch.full((4100,), 2.0)
    opt.step()  # only the new parameter has a gradient
    assert float(opt.state[extra]["step"]) == 1
    assert opt.state[extra]["exp_avg"].dtype == torch.uint8
    # Adam's first step moves every element by lr (m / sqrt(v) = 1), up to eps
    np.testing.assert_allclose(extra.detach().numpy(), 0.5, rtol=1e-6)
    for p, state in zip(model.parameters(), moved):
        for key, value in opt.state[p].items():
            np.testing.assert_array_equal(bits(value), bits(state[key]), err_msg=key)


def test_loads_between_state_dtypes_convert_as_the_core():
    model, opt, core, core_params = trained()
    sd8 = copy.deepcopy(opt.state_dict())
    core_sd8 = core.state_dict()

    # int8 -> float32: dequantized; int8 -> bfloat16: dequantized, rounded to nearest
    for state_dtype in (None, "bfloat16"):
        target = fmt.Adam(model.parameters(), lr=LR, state_dtype=state_dtype)
        target.load_state_dict(copy.deepcopy(sd8))
        mirror = fm.Adam([a.copy() for a in core_params], lr=LR, state_dtype=state_dtype)
        mirror.load_state_dict(core_sd8)
        expected = mirror.state_dict()["state"][0]
        for name, value in flat_values(target.state_dict()).items():
            np.testing.assert_array_equal(value, bits(expected[name]), err_msg=name)
        assert target.state_dict()["state"][0]["exp_avg"].dtype == (
            torch.float32 if state_dtype is None else torch.bfloat16)

    # bfloat16 -> int8 (quantized), and the bfloat16 state dict written by torch
    # (target above) as the core's
    back = fmt.Adam(model.parameters(), lr=LR, state_dtype="int8")
    back.load_state_dict(copy.deepcopy(target.state_dict()))
    core_back = fm.Adam([a.copy() for a in core_params], lr=LR, state_dtype="int8")
    core_back.load_state_dict(mirror.state_dict())
    expected = core_back.state_dict()["state"][0]
    for key, value in core_form(back.state_dict()).items():
        np.testing.assert_array_equal(bits(value), bits(expected[key]), err_msg=key)

    # torch.optim.Adam (float32 state) -> int8: quantized, as from_torch_state_dict does
    reference = make_model()
    torch_opt = torch.optim.Adam(reference.parameters(), lr=LR)
    train(reference, torch_opt, batches(2))
    torch_sd = torch_opt.state_dict()
    ours = fmt.Adam(reference.parameters(), lr=LR, state_dtype="int8")
    ours.load_state_dict(copy.deepcopy(torch_sd))
    core_ours = fm.Adam([p.detach().numpy().copy() for p in reference.parameters()],
                        lr=LR, state_dtype="int8")
    fm.from_torch_state_dict(core_ours, torch_sd)
    expected = core_ours.state_dict()["state"][0]
    for key, value in core_form(ours.state_dict()).items():
        np.testing.assert_array_equal(bits(value), bits(expected[key]), err_msg=key)
    assert float(ours.state_dict()["state"][0]["step"]) == 2


# ----------------------------------------------------------------- GradScaler
def test_gradscaler_fused_path_is_its_unfused_protocol():
    data = batches(4)
    results = []
    for fused in (True, False):
        model = make_model()
        opt = fmt.Adam(model.parameters(), lr=LR, state_dtype="int8")
        opt._step_supports_amp_scaling = fused
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for k, (X, y) in enumerate(data):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(X), y) * (float("inf") if k == 1 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)  # step 1 has inf/NaN gradients: skipped
            scaler.update()
        assert float(opt.state[model[0].weight]["step"]) == len(data) - 1
        results.append((model, opt.state_dict()))
    (fused_model, fused_sd), (plain_model, plain_sd) = results
    for p, q in zip(fused_model.parameters(), plain_model.parameters()):
        np.testing.assert_array_equal(bits(p), bits(q))
    assert_sd_equal(fused_sd, plain_sd)


# -------------------------------------------------------------------- refusals
def test_refusals_name_the_problem_and_change_nothing():
    params = list(make_model().parameters())
    # rules whose state holds an iterate of the parameters, and rules with passes of
    # their own: the core's refusal, as this class's
    with pytest.raises(ValueError, match=r"ScheduleFreeAdamW: state_dtype='int8' would "
                                         r"keep \['z'\]"):
        fmt.ScheduleFreeAdamW(params, state_dtype="int8")
    with pytest.raises(ValueError, match="NDAdam: state_dtype='int8' is not supported"):
        fmt.NDAdam(params, state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        fmt.Adam(params, state_dtype=torch.int8)

    # CUDA tensors (torch here has no CUDA: a parameter that says it is on one)
    class OnCuda(nn.Parameter):
        @property
        def device(self):
            return torch.device("cuda", 0)

    with pytest.raises(TypeError, match=r"\['params'\]\[0\] is on cuda:0; "
                                        r"state_dtype='int8' is for CPU tensors"):
        fmt.Adam([OnCuda(torch.zeros(3))], state_dtype="int8")
    opt = fmt.Adam(params, lr=LR, state_dtype="int8")
    with pytest.raises(TypeError, match="state_dtype='int8' is for CPU tensors"):
        opt.add_param_group({"params": [OnCuda(torch.zeros(3))]})
    assert len(opt.param_groups) == 1

    # malformed int8 entries: refused before anything changes
    model, opt, _, _ = trained(1)
    good = copy.deepcopy(opt.state_dict())
    cases = [
        (lambda e: e.pop("exp_avg__absmax"), ValueError, "without 'exp_avg__absmax'"),
        (lambda e: e.update(exp_avg__absmax=torch.zeros(20)), ValueError,
         "'exp_avg__absmax' has 20 elements; a parameter of 5200 elements has 21"),
        (lambda e: e.update(exp_avg__float32=torch.zeros(5200)), ValueError,
         "'exp_avg__float32' has 5200 elements"),
        (lambda e: e.update(exp_avg__absmax=torch.zeros(21, dtype=torch.float64)),
         TypeError, "1-d float32 tensor"),
        (lambda e: e.update(exp_avg=e["exp_avg"].reshape(-1)), ValueError,
         r"has shape \(5200,\), the parameter has shape \(80, 65\)"),
        (lambda e: e.update(exp_avg=e["exp_avg"].to(torch.int16)), TypeError,
         "should be a uint8 tensor"),
        (lambda e: [e.pop(k) for k in ("exp_avg__absmax", "exp_avg__float32")], ValueError,
         "is an int8 state"),
    ]
    for edit, error, message in cases:
        sd = copy.deepcopy(good)
        edit(sd["state"][0])
        with pytest.raises(error, match=message):
            opt.load_state_dict(sd)
        assert_sd_equal(opt.state_dict(), good)


def test_16bit_parameters_take_int8_where_the_core_does():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    array = np.zeros(3, ml_dtypes.bfloat16)
    try:
        fm.Adam([array], state_dtype="int8")
    except ValueError as exc:  # the core refuses: so does the torch face, in its words
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            fmt.Adam([nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))],
                     state_dtype="int8")
        return
    # the core takes them: the torch face shows and reloads the stored state with the
    # master copy (Adagrad's state exists before any step; the stepping arithmetic is
    # the core's, tested there)
    p = nn.Parameter(torch.full((5000,), 1.5, dtype=torch.bfloat16))
    opt = fmt.Adagrad([p], state_dtype="int8", initial_accumulator_value=0.25)
    sd = copy.deepcopy(opt.state_dict())
    entry = sd["state"][0]
    assert entry["sum"].dtype == torch.uint8 and entry["sum__absmax"].shape == (20,)
    np.testing.assert_array_equal(entry["sum__absmax"].numpy(), 0.25)
    np.testing.assert_array_equal(entry["master_param"].numpy(), 1.5)
    entry["master_param"].fill_(2.0)
    opt.load_state_dict(sd)
    assert_sd_equal(opt.state_dict(), sd)
