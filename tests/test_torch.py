"""fastmoments.torch: torch.optim optimizers over fastmoments' kernels, and flat modules.

Every rule is trained on a real ``nn.Module`` with ``loss.backward()`` in float64 and
compared with torch.optim's class of the same name, with an outside implementation
(lion-pytorch, adabelief-pytorch), and with the plain fastmoments optimizer over NumPy
views (itself tested against references). Then the torch protocol: schedulers,
GradScaler, param groups, missing gradients, add_param_group, state dicts both ways,
hooks, closures; and flatten_. torch here has no CUDA: the CUDA tensor path is tested
only where torch has a GPU (test_cuda_tensors).
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fastmoments as fm  # noqa: E402
import fastmoments.torch as fmt  # noqa: E402

STEPS = 12
RTOL, ATOL = 1e-9, 1e-12


@pytest.fixture(autouse=True)
def float64_default():
    """torch keeps "step" in float64 when that is the default dtype (exact counts)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class TwoHeads(nn.Module):
    """An MLP trunk with two heads; ``head_b`` is used only when asked (a parameter
    without a gradient on the other steps), and ``frozen`` never gets one."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh())
        self.head_a = nn.Linear(6, 3)
        self.head_b = nn.Linear(6, 3)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, x, use_b=True):
        h = self.trunk(x)
        out = self.head_a(h)
        return out + self.head_b(h) if use_b else out


def make_model(seed: int = 0) -> TwoHeads:
    torch.manual_seed(seed)
    return TwoHeads().double()


def batches(steps: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g))
            for _ in range(steps)]


def loss_of(model, X, y, use_b=True):
    return nn.functional.mse_loss(model(X, use_b), y)


def train(model, opt, data, *, skip_b=(), closure=False, clip=None, zero_to_none=True,
          after_step=None):
    for t, (X, y) in enumerate(data):
        opt.zero_grad(set_to_none=zero_to_none)
        use_b = t not in skip_b
        if closure:
            def step_closure(X=X, y=y, use_b=use_b):
                opt.zero_grad()
                loss = loss_of(model, X, y, use_b)
                loss.backward()
                return loss
            opt.step(step_closure)
        else:
            loss_of(model, X, y, use_b).backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        if after_step is not None:
            after_step(t)
    return [p.detach().clone() for p in model.parameters()]


def train_plain(model, rule, kwargs, data):
    """The plain fastmoments optimizer over NumPy views of the same module."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = getattr(fm, rule)([p.detach().numpy() for p in params], **kwargs)
    for X, y in data:
        model.zero_grad()
        loss_of(model, X, y).backward()
        opt.step([p.grad.numpy() for p in params])
    return [p.detach().clone() for p in model.parameters()]


def assert_close(mine, theirs, rtol=RTOL, atol=ATOL):
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=atol)


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------- the classes
def test_importing_fastmoments_does_not_import_torch():
    code = ("import sys, fastmoments; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'fastmoments.torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_class_for_every_rule_in_the_table():
    base = fm.optim.base.Optimizer
    rules = [n for n in fm.__all__
             if isinstance(getattr(fm, n), type) and issubclass(getattr(fm, n), base)]
    assert list(fmt.RULES) == rules
    assert {"SGD", "Adam", "AdamW", "Lion", "LAMB", "NDAdam", "SWATS"} <= set(rules)
    for name in rules:
        cls = getattr(fmt, name)
        assert issubclass(cls, torch.optim.Optimizer) and issubclass(cls, fmt.Optimizer)
        assert cls.__module__ == "fastmoments.torch" and "Parameters" in cls.__doc__
    import inspect

    for name in fmt.TORCH_RULES:  # torch's signature, in torch's order, then ours
        theirs = list(inspect.signature(getattr(torch.optim, name)).parameters)
        mine = list(inspect.signature(getattr(fmt, name)).parameters)
        assert mine[:len(theirs)] == theirs and mine[-1] == "flat"
    with pytest.raises(TypeError, match="base class"):
        fmt.Optimizer([nn.Parameter(torch.zeros(1))], {})


# ------------------------------------------------------------------ trajectories
#: (rule, keywords, reference): "torch" is torch.optim's class of the same name
CASES = [
    ("SGD", dict(lr=0.05), "torch"),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), "torch"),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1), "torch"),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01), "torch"),
    ("Adadelta", dict(lr=0.5, weight_decay=0.01), "torch"),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01), "torch"),
    ("Adam", dict(lr=0.01, maximize=True), "torch"),
    ("AdamW", dict(lr=0.01, weight_decay=0.1), "torch"),
    ("Adamax", dict(lr=0.01, weight_decay=0.01), "torch"),
    ("NAdam", dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True), "torch"),
    ("RAdam", dict(lr=0.01, weight_decay=0.01), "torch"),
    ("Lion", dict(lr=1e-3, weight_decay=0.1), "lion_pytorch"),
    ("AdaBelief", dict(lr=0.01, eps=1e-10, weight_decay=0.1), "adabelief_pytorch"),
]


def _reference(rule, kwargs, source, params):
    if source == "torch":
        return getattr(torch.optim, rule)(params, **kwargs)
    if source == "lion_pytorch":
        return pytest.importorskip("lion_pytorch").Lion(params, **kwargs)
    adabelief = pytest.importorskip("adabelief_pytorch")
    return adabelief.AdaBelief(params, rectify=False, weight_decouple=True, fixed_decay=False,
                               print_change_log=False, **kwargs)


@pytest.mark.parametrize("rule, kwargs, source", CASES,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(CASES)])
def test_trajectory_matches_the_reference(rule, kwargs, source):
    data = batches(STEPS)
    theirs_model, mine_model = make_model(), make_model()
    theirs = train(theirs_model, _reference(rule, kwargs, source, theirs_model.parameters()),
                   data)
    mine = train(mine_model, getattr(fmt, rule)(mine_model.parameters(), **kwargs), data)
    assert_close(mine, theirs)
    assert any(not torch.equal(a, b) for a, b in zip(mine, make_model().parameters()))


@pytest.mark.parametrize("rule", fmt.RULES)
def test_every_rule_matches_the_plain_fastmoments_optimizer(rule):
    """The generated class of every rule (a rule added later included) steps as the
    NumPy optimizer over views of the same module does."""
    kwargs = {"lr": 0.01}
    data = batches(STEPS)
    plain_model, mine_model = make_model(), make_model()
    theirs = train_plain(plain_model, rule, kwargs, data)
    mine = train(mine_model, getattr(fmt, rule)(trainable(mine_model), **kwargs), data)
    assert_close(mine, theirs)


@pytest.mark.parametrize("rule, kwargs", [
    ("Adam", dict(lr=0.01)), ("NAdam", dict(lr=0.01)), ("RAdam", dict(lr=0.01)),
    ("Adagrad", dict(lr=0.1)), ("SGD", dict(lr=0.05, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, momentum=0.5)),
])
def test_parameters_without_a_gradient_are_skipped_as_torch_does(rule, kwargs):
    """head_b gets a gradient only on some steps and `frozen` never: torch skips them
    (their state and step count stay), so parameters end with different step counts."""
    skip = {0, 3, 4, 7, 10}
    data = batches(STEPS)
    theirs_model, mine_model = make_model(), make_model()
    torch_opt = getattr(torch.optim, rule)(theirs_model.parameters(), **kwargs)
    opt = getattr(fmt, rule)(mine_model.parameters(), **kwargs)
    b_state = {}

    def record(t):  # head_b's state must not move on a step that skips it
        b_state[t] = {k: v.clone() for k, v in opt.state[mine_model.head_b.weight].items()}

    theirs = train(theirs_model, torch_opt, data, skip_b=skip)
    mine = train(mine_model, opt, data, skip_b=skip, after_step=record)
    assert_close(mine, theirs)
    for t in sorted(skip - {0}):
        for key, value in b_state[t].items():
            assert torch.equal(value, b_state[t - 1][key]), (t, key)
    mine_sd, torch_sd = opt.state_dict(), torch_opt.state_dict()
    assert set(mine_sd["state"]) == set(torch_sd["state"])  # frozen: no state in either
    for pid, entry in torch_sd["state"].items():
        for key, value in entry.items():
            np.testing.assert_allclose(np.asarray(mine_sd["state"][pid][key]), np.asarray(value),
                                       rtol=RTOL, atol=ATOL, err_msg=f"{pid} {key}")
    if rule != "SGD":
        steps = {int(e["step"]) for e in mine_sd["state"].values()}
        eager = {0} if rule == "Adagrad" else set()  # torch's Adagrad has state from the start
        assert steps == {STEPS, STEPS - len(skip)} | eager
    # the frozen parameter and head_b were split off once, not rebuilt per step
    assert len(opt._cohorts) == 3


def test_param_groups_scheduler_clipping_and_closure():
    data = batches(STEPS)
    results = []
    for module in (torch.optim, fmt):
        model = make_model()
        groups = [{"params": list(model.trunk.parameters()), "weight_decay": 0.0},
                  {"params": list(model.head_a.parameters()) + list(model.head_b.parameters()),
                   "lr": 0.02}]
        opt = module.AdamW(groups, lr=0.01, weight_decay=0.1)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.05, 0.1],
                                                       total_steps=STEPS)  # edits betas too
        results.append(train(model, opt, data, clip=0.5,
                             after_step=lambda t, s=schedule: s.step()))
        assert opt.param_groups[0]["lr"] != 0.01
    assert_close(results[1], results[0])
    results = []
    for module in (torch.optim, fmt):
        model = make_model()
        opt = module.SGD(trainable(model), lr=0.05, momentum=0.9)
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        results.append(train(model, opt, data, closure=True,
                             after_step=lambda t, s=schedule: s.step()))
    assert_close(results[1], results[0])
    model = make_model()
    opt = fmt.SGD(model.parameters(), lr=0.1)
    loss = opt.step(lambda: loss_of(model, *data[0]))
    assert torch.is_tensor(loss) and loss.grad_fn is not None  # under enable_grad


def test_grad_scaler_unscales_and_skips_steps_with_inf():
    """torch.amp.GradScaler("cpu") (enabled in torch 2.13) with the user's unscale_ (to
    clip) against torch.optim's default protocol: the same trajectory, scale and step
    counts, the inf step skipped (the fused protocol: tests/test_torch_amp.py)."""
    data = batches(STEPS)
    bad = 5  # an inf in the loss: every gradient is NaN, the step is skipped
    results, scales, counts = [], [], []
    for module in (torch.optim, fmt):
        model = make_model()
        opt = module.Adam(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
        assert scaler.is_enabled()
        for t, (X, y) in enumerate(data):
            opt.zero_grad()
            loss = loss_of(model, X, y) * (math.inf if t == bad else 1.0)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            if t == bad:
                assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        results.append([p.detach().clone() for p in model.parameters()])
        scales.append(scaler.get_scale())
        counts.append({int(e["step"]) for e in opt.state_dict()["state"].values()})
    assert_close(results[1], results[0])
    assert scales[0] == scales[1] and counts[0] == counts[1] == {STEPS - 1}


def test_add_param_group_mid_training():
    data = batches(STEPS)
    results, sds = [], []
    for module in (torch.optim, fmt):
        model = make_model()
        opt = module.NAdam(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                           lr=0.01)

        def later(t, opt=opt, model=model):
            if t == 4:
                opt.add_param_group({"params": list(model.head_b.parameters()), "lr": 0.03})

        results.append(train(model, opt, data, after_step=later))
        sds.append(opt.state_dict())
    assert_close(results[1], results[0])
    assert sds[1]["param_groups"][1]["lr"] == 0.03
    assert [int(e["step"]) for e in sds[1]["state"].values()] == \
        [int(e["step"]) for e in sds[0]["state"].values()]


# -------------------------------------------------------------------- state dicts
ROUND_TRIP = [(r, k) for r, k, s in CASES if s == "torch"]


def _continue(model, opt, data):
    return train(model, opt, data, skip_b={1})


@pytest.mark.parametrize("rule, kwargs", ROUND_TRIP,
                         ids=[f"{r}-{i}" for i, (r, _) in enumerate(ROUND_TRIP)])
def test_state_dict_round_trips_with_torch(rule, kwargs):
    """torch.optim -> fastmoments.torch and back, mid-training, with different step
    counts per parameter: each continues exactly as the original does."""
    first, second = batches(6, seed=1), batches(6, seed=2)
    for source, target in ((torch.optim, fmt), (fmt, torch.optim)):
        model = make_model()
        opt = getattr(source, rule)(model.parameters(), **kwargs)
        train(model, opt, first, skip_b={0, 2})
        twin = copy.deepcopy(model)
        other = getattr(target, rule)(twin.parameters(), **kwargs)
        # a copy, as torch.save / torch.load would make: torch.optim's load_state_dict
        # keeps the tensors it is given (both optimizers would share them)
        other.load_state_dict(copy.deepcopy(opt.state_dict()))
        expected = _continue(model, opt, second)
        assert_close(_continue(twin, other, second), expected)


@pytest.mark.parametrize("rule", [r for r in fmt.RULES if r not in fmt.TORCH_RULES])
def test_state_dict_round_trip_of_rules_torch_does_not_have(rule):
    first, second = batches(6, seed=1), batches(6, seed=2)
    model = make_model()
    opt = getattr(fmt, rule)(model.parameters(), lr=0.01)
    train(model, opt, first, skip_b={0})
    sd = opt.state_dict()
    assert {int(e["step"]) for e in sd["state"].values()} == {6, 5}
    twin = copy.deepcopy(model)
    other = getattr(fmt, rule)(twin.parameters(), lr=0.01)
    other.load_state_dict(copy.deepcopy(sd))
    assert_close(_continue(twin, other, second), _continue(model, opt, second))


def test_state_dict_is_torch_format_and_load_refuses_mismatches():
    model = make_model()
    opt = fmt.Adam(model.parameters(), lr=0.01)
    assert opt.state_dict()["state"] == {}  # lazily, as torch
    train(model, opt, batches(2))
    sd = opt.state_dict()
    torch_opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, torch_opt, batches(2))
    reference = torch_opt.state_dict()
    assert sd["param_groups"][0]["params"] == reference["param_groups"][0]["params"]
    for pid, entry in reference["state"].items():
        assert set(sd["state"][pid]) == set(entry)
        assert sd["state"][pid]["step"].dtype == entry["step"].dtype
    state = opt.state
    assert state[model.head_a.weight]["exp_avg"].shape == model.head_a.weight.shape
    before = [p.detach().clone() for p in model.parameters()]
    assert 0 not in sd["state"]  # the frozen parameter, first in the module
    bad = copy.deepcopy(sd)
    bad["state"][1]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    del bad["state"][1]["exp_avg_sq"]
    with pytest.raises(ValueError, match="exp_avg_sq"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["betas"] = (1.5, 0.9)
    with pytest.raises(ValueError, match="betas"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="AdamW"):
        fmt.Adam(model.parameters()).load_state_dict(
            torch.optim.AdamW(model.parameters()).state_dict())
    opt.step()
    after = opt.state_dict()
    assert all(int(e["step"]) == 3 for e in after["state"].values())  # the refusals changed nothing
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(TypeError, match="state_dict"):
        copy.deepcopy(opt)


# ------------------------------------------------------------------- the protocol
def test_hyperparameter_edits_are_validated_and_followed():
    data = batches(STEPS)
    results = []
    for module in (torch.optim, fmt):
        model = make_model()
        opt = module.Adam(model.parameters(), lr=0.01)

        def edit(t, opt=opt):
            if t == 3:
                opt.param_groups[0]["betas"] = (0.8, 0.99)
                opt.param_groups[0]["weight_decay"] = 0.05
            if t == 6:
                opt.param_groups[0]["eps"] = 1e-6

        results.append(train(model, opt, data, after_step=edit))
    assert_close(results[1], results[0])
    model = make_model()
    opt = fmt.Adam(model.parameters(), lr=0.01)
    loss_of(model, *batches(1)[0]).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["betas"] = (1.5, 0.9)
    with pytest.raises(ValueError, match=r"betas.*param_groups\[0\]"):
        opt.step()
    opt.param_groups[0]["lr"] = -1.0
    opt.param_groups[0]["betas"] = (0.9, 0.999)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    opt.param_groups[0]["lr"] = 0.01
    opt.step()
    # a bad lr in one group: no group steps (several cohorts: head_b got no gradient)
    model = make_model()
    opt = fmt.Adam([{"params": trainable(model)[:-2]}, {"params": trainable(model)[-2:]}])
    loss_of(model, *batches(1)[0], use_b=False).backward()
    opt.step()
    loss_of(model, *batches(1)[0]).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[1]["lr"] = math.nan
    with pytest.raises(ValueError, match=r"lr.*param_groups\[1\]"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert len(opt._cohorts) == 2
    with pytest.raises(ValueError, match="capturable"):
        fmt.Adam(model.parameters(), capturable=True)
    fmt.Adam(model.parameters(), fused=True, foreach=False)  # accepted: always fused


def test_gradients_are_checked():
    emb = nn.Embedding(10, 3, sparse=True).double()
    opt = fmt.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    with pytest.raises(TypeError, match="complex64"):
        fmt.SGD([nn.Parameter(torch.zeros(3, dtype=torch.complex64))])
    q = nn.Parameter(torch.zeros(4, 3).t())
    with pytest.raises(ValueError, match="contiguous"):
        fmt.SGD([q])
    # a non-contiguous gradient is copied at each step (never a stale copy)
    r = nn.Parameter(torch.zeros(2, 3))
    opt = fmt.SGD([r], lr=1.0)
    r.grad = torch.ones(3, 2).t()
    opt.step()
    r.grad.add_(1.0)
    opt.step()
    assert torch.equal(r.detach(), torch.full((2, 3), -3.0))
    r.grad = torch.ones(2, 3)
    opt.step()
    r.grad.data = torch.full((2, 3), 2.0)  # the same .grad object over new memory
    opt.step()
    assert torch.equal(r.detach(), torch.full((2, 3), -6.0))


def test_hooks_run_and_the_profiler_sees_the_step():
    model = make_model()
    opt = fmt.Adam(model.parameters())
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load"))
    loss_of(model, *batches(1)[0]).backward()
    with torch.profiler.profile() as prof:
        opt.step()
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "sd", "load"]
    assert any("Optimizer.step#Adam.step" in e.name for e in prof.events())


def test_moved_parameters_are_followed_with_their_state():
    """p.data replaced after the optimizer was built rebuilds the inner optimizer over
    the new tensors, the state carried over (torch.optim follows the Parameter too)."""
    data = batches(6)
    results = []
    for module in (torch.optim, fmt):
        model = make_model()
        opt = module.Adam(model.parameters(), lr=0.01)

        def move(t, model=model):
            if t == 2:
                for p in model.parameters():
                    p.data = p.data.clone()

        results.append(train(model, opt, data, after_step=move))
    assert_close(results[1], results[0])
    # a cast (which torch.optim's Adam does not survive: its state keeps the old dtype)
    torch.manual_seed(0)
    model = TwoHeads().float()
    opt = fmt.Adam(trainable(model), lr=0.01)
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        opt.zero_grad()
        X, y = batches(1)[0]
        loss_of(model, X.to(dtype), y.to(dtype)).backward()
        opt.step()
    assert opt.state[model.head_a.weight]["exp_avg"].dtype == torch.float64
    assert {int(e["step"]) for e in opt.state_dict()["state"].values()} == {2}


# ---------------------------------------------------------------------- flatten_
def test_flattened_module_trains_as_the_unflattened_one():
    data = batches(STEPS)
    plain = train(make_model(), None, []) if False else None  # noqa: F841 (clarity)
    model, flat_model = make_model(), fmt.flatten_(make_model())
    params = trainable(flat_model)
    assert not flat_model.frozen.requires_grad and flat_model.frozen.grad is None
    base = params[0].data_ptr()
    size = params[0].element_size()
    offsets = [p.data_ptr() - base for p in params]
    assert offsets == list(np.cumsum([0] + [p.numel() * size for p in params[:-1]]))
    expected = train(model, fmt.AdamW(model.parameters(), lr=0.01), data)
    opt = fmt.AdamW(flat_model.parameters(), lr=0.01)
    grads = [p.grad for p in params]
    mine = train(flat_model, opt, data)
    assert_close(mine, expected, rtol=1e-13, atol=0)
    # one kernel over one buffer (the frozen parameter split off at the first step)
    flat_cohorts = [c for c in opt._cohorts if c.all_flat]
    assert len(flat_cohorts) == 1 and flat_cohorts[0].inner._groups[0].flat is not None
    opt.zero_grad()
    assert all(p.grad is g for p, g in zip(params, grads))  # zero_grad kept the views
    assert all(float(p.grad.abs().sum()) == 0 for p in params)


def test_flat_gradients_survive_module_zero_grad_and_match_torch():
    data = batches(6)
    results = []
    for module in (torch.optim, fmt):
        model = make_model()
        if module is fmt:
            fmt.flatten_(model)
        opt = module.Adam(trainable(model), lr=0.01)
        for X, y in data:
            model.zero_grad()  # torch's default: set_to_none=True drops the views
            loss_of(model, X, y).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
        if module is fmt:
            slot = fmt._flat.live_slot(model.head_a.weight)
            assert model.head_a.weight.grad is slot.grad  # put back by the step
    assert_close(results[1], results[0])


def test_flat_option_with_param_groups():
    data = batches(STEPS)
    results = []
    for module in (torch.optim, fmt):
        model = make_model()
        decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay,
                                                            "weight_decay": 0.0}]
        extra = {"flat": True} if module is fmt else {}
        opt = module.AdamW(groups, lr=0.01, **extra)
        results.append(train(model, opt, data))
        if module is fmt:
            assert len(opt._cohorts) == 1 and opt._cohorts[0].all_flat
            assert [g.flat is not None for g in opt._cohorts[0].inner._groups] == [True, True]
    assert_close(results[1], results[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch here has no CUDA device")
def test_cuda_tensors():  # pragma: no cover - needs a GPU and a CUDA build of torch
    data = batches(6)
    results = []
    for module, flat in ((torch.optim, False), (fmt, False), (fmt, True)):
        model = make_model().cuda()
        opt = module.Adam(trainable(model), lr=0.01, **({"flat": flat} if flat else {}))
        for X, y in data:
            opt.zero_grad()
            loss_of(model, X.cuda(), y.cuda()).backward()
            opt.step()
        torch.cuda.synchronize()
        results.append([p.detach().cpu() for p in model.parameters()])
    assert_close(results[1], results[0])
    assert_close(results[2], results[0])


# -------------------------------------------------------------------- the bench
def test_torch_bench_shapes_and_a_tiny_run(capsys):
    import argparse
    import math as _math

    from fastmoments.tools import torch_bench

    sizes = {m: (len(s), sum(_math.prod(x) for x in s))
             for m in torch_bench.MODELS for s in [torch_bench.model_shapes(m)]}
    assert sizes == {"mlp": (6, 84_488), "cnn": (10, 620_362), "gpt2": (148, 124_439_808)}
    parser = argparse.ArgumentParser()
    torch_bench.add_arguments(parser)
    args = parser.parse_args(["--torch-models", "mlp", "--torch-loads", "quiet",
                              "--torch-rounds", "1", "--torch-round-time", "0",
                              "--torch-optimizers", "fmt-flat,fmt,torch-fused"])
    doc = args.run(args)
    assert [r["optimizer"] for r in doc["results"]] == ["fmt-flat", "fmt", "torch-fused"]
    assert all(r["us_per_step"] > 0 for r in doc["results"])
    assert "vs fused" in capsys.readouterr().out
    with pytest.raises(ValueError, match="torch-models"):
        torch_bench.run(parser.parse_args(["--torch-models", "resnet"]))


def test_zero_grad_releases_gradients_and_named_parameters_round_trip():
    import weakref

    model = nn.Linear(3, 2).double()
    opt = fmt.AdamW(model.named_parameters(), lr=0.1)  # (name, parameter) pairs, as torch
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    gone = weakref.ref(model.weight.grad)
    opt.zero_grad()  # set_to_none=True: the optimizer keeps no reference either
    assert model.weight.grad is None and gone() is None
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["weight", "bias"]
    theirs = torch.optim.AdamW(model.named_parameters(), lr=0.1)
    theirs.load_state_dict(copy.deepcopy(sd))
    opt.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert int(opt.state_dict()["state"][0]["step"]) == 1


def test_rule_methods_are_forwarded():
    """A rule's own methods without arguments and properties reach every inner
    optimizer: Schedule-Free's eval() / train() / train_mode, SWATS's switched."""
    assert not fmt.SWATS(make_model().parameters()).switched
    if "ScheduleFreeAdamW" not in fmt.RULES:
        pytest.skip("this fastmoments has no ScheduleFreeAdamW")
    data = batches(6)
    plain_model, model = make_model(), make_model()
    params = trainable(plain_model)
    plain = fm.ScheduleFreeAdamW([p.detach().numpy() for p in params], lr=0.01)
    opt = fmt.ScheduleFreeAdamW(model.parameters(), lr=0.01)
    for X, y in data:
        plain_model.zero_grad()
        loss_of(plain_model, X, y).backward()
        plain.step([p.grad.numpy() for p in params])
        opt.zero_grad()
        loss_of(model, X, y).backward()
        opt.step()
    assert len(opt._cohorts) == 2 and opt.train_mode  # the frozen parameter on its own
    plain.eval()
    opt.eval()
    assert opt.train_mode is False
    assert_close([p.detach().clone() for p in model.parameters()],
                 [p.detach().clone() for p in plain_model.parameters()])
    opt.train()
    assert opt.train_mode
