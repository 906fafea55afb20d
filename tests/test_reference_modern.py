"""Check the plain-NumPy references of tests/reference_modern.py (float64).

Against pytorch-optimizer 4.1 (ADOPT, AdEMAMix, Adan, the cautious mask), the
``schedulefree`` package (Schedule-Free AdamW / SGD with the eval()/train()
switch) and optax 0.2.8, to 1e-9 relative wherever the math is
the same.  Where a package's convention differs from the authors' code (which
the references follow) the test either maps the package onto the authors'
convention (ADOPT's clip step, AdEMAMix's decoupled decay, optax's 0-based
schedule step) or restricts itself to where the two agree, and says so.
"""

import math

import numpy as np
import pytest
import reference_modern as rm

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (5,), (2, 3, 2), (0,)]
N_STEPS = 50
RTOL = 1e-9
ATOL = 1e-12


def _init(seed=1234):
    rng = np.random.default_rng(seed)
    return rng, [rng.standard_normal(s) for s in SHAPES]


def _grads(rng, params, step):
    """Quadratic bowl plus noise, zero at the first step, now and then an exact zero."""
    if step == 0:
        return [np.zeros_like(p) for p in params]
    grads = [0.5 * p + rng.standard_normal(p.shape) for p in params]
    if step % 13 == 5:
        grads[0][0] = 0.0
    return grads


def _close(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=f"{what}, param {i}")


class _Torch:
    """A torch optimizer stepped with NumPy gradients (float64)."""

    def __init__(self, cls, init, **kwargs):
        self.params = [torch.nn.Parameter(torch.tensor(x.copy(), dtype=torch.float64))
                       for x in init]
        self.opt = cls(self.params, **kwargs)

    def step(self, grads):
        for p, g in zip(self.params, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        self.opt.step()

    def values(self):
        return [p.detach().numpy().copy() for p in self.params]


def _compare(ref_cls, ref_kw, other, name, n_steps=N_STEPS, before_step=None):
    rng, init = _init()
    ref_params = [x.copy() for x in init]
    ref = ref_cls(ref_params, **ref_kw)
    theirs = other(init)
    for step in range(n_steps):
        grads = _grads(rng, ref_params, step)
        if before_step is not None:
            before_step(theirs, step)
        theirs.step([g.copy() for g in grads])
        ref.step(grads)
        _close(ref_params, theirs.values(), f"{name} {ref_kw} diverged at step {step + 1}")
    return ref, theirs


def _kw_id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items()) or "defaults"


@pytest.fixture
def po(torch64):
    return pytest.importorskip("pytorch_optimizer")


# --------------------------------------------------------------------------- #
# ADOPT
# --------------------------------------------------------------------------- #
ADOPT_CASES = [
    {},
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    dict(lr=0.01, clip_exponent=None),
    dict(lr=0.01, clip_exponent=0.5),
    dict(lr=0.01, cautious=True),
    dict(lr=0.01, cautious=True, weight_decay=0.1, decoupled_weight_decay=True),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, maximize=True),
]


@pytest.mark.parametrize("kw", ADOPT_CASES, ids=_kw_id)
def test_adopt_matches_pytorch_optimizer(kw, po):
    """pytorch-optimizer's clip is evaluated at step + 1 and it decays decoupled weights
    at the first step too; both are mapped onto the authors' convention here."""
    po_kw = {k: v for k, v in kw.items() if k not in ("decoupled_weight_decay", "clip_exponent")}
    po_kw["weight_decouple"] = kw.get("decoupled_weight_decay", False)
    exponent = kw.get("clip_exponent", 0.25)
    po_kw["clip_lambda"] = None if exponent is None else (lambda s: (s - 1) ** exponent)
    wd = kw.get("weight_decay", 0.0)

    def first_step_without_decoupled_decay(theirs, step):
        if po_kw["weight_decouple"]:
            theirs.opt.param_groups[0]["weight_decay"] = 0.0 if step == 0 else wd

    _compare(rm.ADOPT, kw, lambda init: _Torch(po.ADOPT, init, foreach=False, **po_kw),
             "ADOPT", before_step=first_step_without_decoupled_decay)


def test_adopt_pytorch_optimizer_conventions_differ(po):
    """The two differences documented in reference_modern.ADOPT are real."""
    kw = dict(lr=0.01)
    with pytest.raises(AssertionError):  # clip at step + 1
        _compare(rm.ADOPT, kw, lambda init: _Torch(po.ADOPT, init, foreach=False, **kw),
                 "ADOPT", n_steps=3)
    kw = dict(lr=0.01, weight_decay=0.1)
    with pytest.raises(AssertionError):  # decoupled decay at the first step
        _compare(rm.ADOPT, dict(kw, decoupled_weight_decay=True),
                 lambda init: _Torch(po.ADOPT, init, foreach=False, weight_decouple=True,
                                     clip_lambda=lambda s: (s - 1) ** 0.25, **kw),
                 "ADOPT", n_steps=1)


def test_adopt_first_steps_by_hand():
    p0 = np.linspace(-1.0, 1.0, 6)
    g1, g2 = np.zeros(6), np.array([0.3, -2.0, 0.0, 1e-9, -1e-9, 5.0])
    p = p0.copy()
    opt = rm.ADOPT([p], lr=0.1, weight_decay=0.5, decoupled_weight_decay=True)
    opt.step([g1])  # first step: v = g^2, nothing moves (not even decoupled decay)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(opt.v[0], 0.0)
    opt.step([g2])  # v = 0: g / eps clipped at 1**0.25 = 1, m = (1 - b1) * n
    n = np.array([1.0, -1.0, 0.0, 1e-3, -1e-3, 1.0])
    expect = p0 * (1 - 0.05) - 0.1 * 0.1 * n
    np.testing.assert_allclose(p, expect, rtol=1e-12)
    np.testing.assert_allclose(opt.v[0], (1 - 0.9999) * g2**2, rtol=1e-12)


# --------------------------------------------------------------------------- #
# AdEMAMix
# --------------------------------------------------------------------------- #
ADEMAMIX_CASES = [
    {},
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, t_alpha=20, t_beta3=20),
    dict(lr=0.01, t_alpha=20, t_beta3=20, alpha=8.0, betas=(0.8, 0.99, 0.999)),
    dict(lr=0.01, cautious=True, alpha=0.0, weight_decay=0.1),
    dict(lr=0.01, eps=1e-3, maximize=True),
]


@pytest.mark.parametrize("kw", ADEMAMIX_CASES, ids=_kw_id)
def test_ademamix_matches_pytorch_optimizer(kw, po):
    """Decoupled decay (the authors') is pytorch-optimizer's weight_decouple=True; its one
    t_alpha_beta3 is both warm-ups; its cautious mask covers only the fast EMA, so the
    cautious case has alpha = 0, where that is the whole update."""
    po_kw = {k: v for k, v in kw.items() if k not in ("t_alpha", "t_beta3")}
    if "t_alpha" in kw:
        assert kw["t_alpha"] == kw["t_beta3"]
        po_kw["t_alpha_beta3"] = kw["t_alpha"]
    _compare(rm.AdEMAMix, kw,
             lambda init: _Torch(po.AdEMAMix, init, foreach=False, weight_decouple=True,
                                 **po_kw),
             "AdEMAMix")


def test_ademamix_schedules():
    b1, b3, T = 0.9, 0.9999, 100

    def half_life(beta):
        return math.log(0.5) / math.log(beta)

    assert rm.ademamix_beta3(T, b1, b3, T) == b3 and rm.ademamix_beta3(5 * T, b1, b3, T) == b3
    assert rm.ademamix_beta3(7, b1, b3, None) == b3
    prev = b1
    for t in range(1, T):
        beta = rm.ademamix_beta3(t, b1, b3, T)
        a = t / T
        # linear in the half-life, increasing from b1 to b3
        assert math.isclose(half_life(beta), (1 - a) * half_life(b1) + a * half_life(b3),
                            rel_tol=1e-12)
        assert prev < beta < b3
        prev = beta
    assert math.isclose(rm.ademamix_beta3(1e-9, b1, b3, 1.0), b1, rel_tol=1e-6)
    assert math.isclose(rm.ademamix_beta3(25, 0.0, b3, T), b3 ** 4, rel_tol=1e-12)
    assert rm.ademamix_alpha(5, 8.0, 20) == 2.0 and rm.ademamix_alpha(30, 8.0, 20) == 8.0
    assert rm.ademamix_alpha(1, 8.0, None) == 8.0


def test_ademamix_cautious_masks_the_whole_update():
    """With alpha > 0, the mask is of (m1_hat + alpha m2) / denom against g (the paper's
    rule); pytorch-optimizer masks m1 alone, so the two differ where the terms disagree."""
    p0 = np.zeros(4)
    g1 = np.array([10.0, 1.0, -10.0, 2.0])
    g2 = np.array([-1.0, 1.0, 1.0, 0.5])
    p = p0.copy()
    opt = rm.AdEMAMix([p], lr=1.0, alpha=5.0, betas=(0.0, 0.999, 0.9), cautious=True)
    opt.step([g1])
    before = p.copy()
    opt.step([g2])
    # b1 = 0: m1_hat = g2; m2 = 0.9 * 0.1 * g1 + 0.1 * g2
    m2 = 0.09 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1**2 + 0.001 * g2**2
    u = (g2 + 5.0 * m2) / (np.sqrt(v / (1 - 0.999**2)) + 1e-8)
    phi = (u * g2 > 0).astype(float)
    np.testing.assert_allclose(before - p, u * phi * 4 / (phi.sum() + 1), rtol=1e-12)
    assert phi.tolist() == [0.0, 1.0, 0.0, 1.0]  # elements 0, 2: m1 agrees with g, u does not


# --------------------------------------------------------------------------- #
# Adan
# --------------------------------------------------------------------------- #
ADAN_CASES = [
    {},
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, no_prox=True),
    dict(lr=0.01, betas=(0.9, 0.8, 0.999), eps=1e-4, maximize=True),
]


@pytest.mark.parametrize("kw", ADAN_CASES, ids=_kw_id)
def test_adan_matches_pytorch_optimizer(kw, po):
    po_kw = {k: v for k, v in kw.items() if k != "no_prox"}
    po_kw["weight_decouple"] = kw.get("no_prox", False)
    _compare(rm.Adan, kw, lambda init: _Torch(po.Adan, init, foreach=False, **po_kw), "Adan")


def test_adan_pytorch_optimizer_maximize_first_difference(po):
    """pytorch-optimizer's Adan keeps -g as the previous gradient before negating g for
    maximize: its first difference is -2 g, not 0 (the references and fastmoments keep
    g_0 = g_1, as the authors' code, which has no maximize). The trajectory tests above
    pass a zero first gradient, where the two agree."""
    p0, g = np.array([0.5, -1.0, 2.0]), np.array([1.0, -2.0, 0.5])
    theirs = _Torch(po.Adan, [p0], lr=0.1, maximize=True, foreach=False)
    theirs.step([g])
    np.testing.assert_allclose(theirs.opt.state[theirs.params[0]]["exp_avg_diff"].numpy(),
                               (1 - 0.92) * (-2.0 * g))
    ours = rm.Adan([p0.copy()], lr=0.1, maximize=True)
    ours.step([g])
    np.testing.assert_array_equal(ours.dm[0], 0.0)


def test_adan_first_step_and_cautious_by_hand():
    p0 = np.array([0.5, -0.5, 1.0])
    g = np.array([1.0, -2.0, 0.5])
    p = p0.copy()
    rm.Adan([p], lr=0.1, weight_decay=0.2).step([g])  # d = 0: an Adam-like sign step
    u = g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(p, (p0 - 0.1 * u) / (1 + 0.02), rtol=1e-12)
    # cautious: all signs agree at step 1 -> mask = 3 / 4 everywhere
    p = p0.copy()
    rm.Adan([p], lr=0.1, cautious=True).step([g])
    np.testing.assert_allclose(p, p0 - 0.1 * 0.75 * u, rtol=1e-12)


# --------------------------------------------------------------------------- #
# Cautious mask
# --------------------------------------------------------------------------- #
def test_cautious_mask_matches_pytorch_optimizer(po):
    from pytorch_optimizer.base.optimizer import BaseOptimizer

    rng = np.random.default_rng(7)
    for shape in [(3, 4), (7,), (0,), (1,)]:
        u, g = rng.standard_normal(shape), rng.standard_normal(shape)
        if u.size > 2:
            u.flat[0], g.flat[1] = 0.0, 0.0
        ours = u * rm.cautious_mask(u, g)
        tu = torch.tensor(u)
        BaseOptimizer.apply_cautious(tu, torch.tensor(g))
        np.testing.assert_allclose(ours, tu.numpy(), rtol=1e-15, atol=0)
    phi = np.array([1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(rm.cautious_mask(phi, phi), phi * 4 / 4)


LION_CASES = [
    dict(lr=1e-3),
    dict(lr=1e-3, weight_decay=0.1, cautious=True),
    dict(lr=1e-3, betas=(0.8, 0.95), maximize=True, cautious=True),
]


@pytest.mark.parametrize("kw", LION_CASES, ids=_kw_id)
def test_cautious_lion_matches_pytorch_optimizer(kw, po):
    """C-Lion: pytorch-optimizer 4.1's ``Lion(cautious=True)``, its decay decoupled (its
    default ``weight_decouple=True``, scaled by lr)."""
    _compare(rm.CautiousLion, kw, lambda init: _Torch(po.Lion, init, foreach=False, **kw),
             "Lion")


@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.1),
                                dict(lr=0.01, maximize=True, weight_decay=0.1)], ids=_kw_id)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_cautious_adam_without_the_mask_is_torch(name, kw, torch64):
    """pytorch-optimizer 4.1 has no cautious Adam or AdamW: with ``cautious=False`` the
    reference is torch.optim's trajectory, and its mask is the one checked above."""
    ref_cls = {"Adam": rm.CautiousAdam, "AdamW": rm.CautiousAdamW}[name]
    _compare(ref_cls, kw, lambda init: _Torch(getattr(torch.optim, name), init,
                                              foreach=False, **kw), name)


def test_cautious_adamw_by_hand():
    """One tensor of 4 elements: at step 2 the momentum of the first still points up
    while its gradient points down: it does not move (but for the decay); the three
    others agree and move by lr * u * 4 / (3 + 1)."""
    p = np.ones(4)
    opt = rm.CautiousAdamW([p], lr=0.1, betas=(0.5, 0.5), eps=0.0, weight_decay=0.5,
                           cautious=True)
    opt.step([np.ones(4)])  # m = v = 0.5, corrected 1: u = 1, all agree: scale 4 / 5
    np.testing.assert_allclose(p, 0.95 - 0.1 * 4 / 5, rtol=1e-15)
    q = p.copy()
    opt.step([np.array([-0.25, 1.0, 1.0, 1.0])])  # m = [0.125, 0.75, ...], v[1:] = 0.75
    np.testing.assert_allclose(p, [0.95 * q[0], *(0.95 * q[1:] - 0.1)], rtol=1e-15)


# --------------------------------------------------------------------------- #
# Schedule-Free AdamW / SGD against the schedulefree package
# --------------------------------------------------------------------------- #
class _ScheduleFreePkg(_Torch):
    def __init__(self, cls, init, **kwargs):
        super().__init__(cls, init, **kwargs)
        self.opt.train()  # the package starts in eval mode

    def eval(self):
        self.opt.eval()

    def train(self):
        self.opt.train()


SF_ADAMW_CASES = [
    {},
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, warmup_steps=10),
    dict(lr=0.01, warmup_steps=10, r=1.0, weight_lr_power=1.0, betas=(0.8, 0.99)),
    dict(lr=0.01, weight_lr_power=0.0, eps=1e-4, weight_decay=0.05),
]
SF_SGD_CASES = [
    {},
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.5, weight_decay=0.1),
    dict(lr=0.1, warmup_steps=10, r=2.0),
    dict(lr=0.1, warmup_steps=10, weight_lr_power=0.0),
]


def _compare_schedule_free(ref_cls, kw, make_theirs, name):
    """Step both, and every 7 steps switch both to eval (x) and back to train (y)."""
    rng, init = _init()
    ref_params = [x.copy() for x in init]
    ref = ref_cls(ref_params, **kw)
    theirs = make_theirs(init)
    for step in range(N_STEPS):
        grads = _grads(rng, ref_params, step)
        theirs.step([g.copy() for g in grads])
        ref.step(grads)
        _close(ref_params, theirs.values(), f"{name} {kw} y at step {step + 1}")
        if step % 7 == 3:
            ref.eval()
            theirs.eval()
            _close(ref_params, theirs.values(), f"{name} {kw} x at step {step + 1}")
            _close(ref_params, ref.x, f"{name} {kw} eval() wrote x")
            ref.eval()  # a second eval() moves nothing
            _close(ref_params, ref.x, f"{name} {kw} eval() twice")
            ref.train()
            theirs.train()
            _close(ref_params, theirs.values(), f"{name} {kw} y again at step {step + 1}")
    return ref


@pytest.mark.parametrize("kw", SF_ADAMW_CASES, ids=_kw_id)
def test_schedule_free_adamw_matches_package(kw, torch64):
    sf = pytest.importorskip("schedulefree")
    _compare_schedule_free(rm.ScheduleFreeAdamW, kw,
                           lambda init: _ScheduleFreePkg(sf.AdamWScheduleFree, init,
                                                         foreach=False, **kw),
                           "ScheduleFreeAdamW")


@pytest.mark.parametrize("kw", SF_SGD_CASES, ids=_kw_id)
def test_schedule_free_sgd_matches_package(kw, torch64):
    sf = pytest.importorskip("schedulefree")
    _compare_schedule_free(rm.ScheduleFreeSGD, kw,
                           lambda init: _ScheduleFreePkg(sf.SGDScheduleFree, init,
                                                         foreach=False, **kw),
                           "ScheduleFreeSGD")


def test_schedule_free_step_refused_in_eval_mode():
    p = np.ones(3)
    opt = rm.ScheduleFreeSGD([p], lr=0.1)
    opt.step([np.ones(3)])
    opt.eval()
    with pytest.raises(RuntimeError, match="train"):
        opt.step([np.ones(3)])
    opt.train()
    opt.step([np.ones(3)])


def test_schedule_free_uniform_average_by_hand():
    """r = 0 and weight_lr_power = 0: c_t = 1/t, x is the running mean of the z."""
    p = np.array([1.0, -2.0])
    opt = rm.ScheduleFreeSGD([p], lr=0.5, momentum=0.75, weight_lr_power=0.0)
    zs, z = [], np.array([1.0, -2.0])
    rng = np.random.default_rng(3)
    for _ in range(6):
        g = rng.standard_normal(2)
        opt.step([g])
        z = z - 0.5 * g
        zs.append(z)
    np.testing.assert_allclose(opt.x[0], np.mean(zs, axis=0), rtol=1e-13)
    np.testing.assert_allclose(p, 0.75 * np.mean(zs, axis=0) + 0.25 * z, rtol=1e-13)


# --------------------------------------------------------------------------- #
# optax 0.2.8 (the test extra installs it)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def optax64():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield optax
    jax.config.update("jax_enable_x64", old)


class _Optax:
    """An optax transformation stepped with NumPy gradients (float64, not jitted)."""

    def __init__(self, tx, init):
        import jax.numpy as jnp

        self.jnp = jnp
        self.tx = tx
        self.params = [jnp.asarray(x) for x in init]
        self.state = tx.init(self.params)

    def step(self, grads):
        import optax

        updates, self.state = self.tx.update([self.jnp.asarray(g) for g in grads],
                                             self.state, self.params)
        self.params = optax.apply_updates(self.params, updates)

    def values(self):
        return [np.asarray(p) for p in self.params]


OPTAX_STEPS = 25


@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.01, clip_exponent=None),
                                dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3)], ids=_kw_id)
def test_adopt_matches_optax(kw, optax64):
    """optax's ADOPT evaluates the clip at the 0-based count, as the authors do."""
    b1, b2 = kw.get("betas", (0.9, 0.9999))
    tx = optax64.contrib.adopt(kw["lr"], b1=b1, b2=b2, eps=kw.get("eps", 1e-6),
                               use_clipping=kw.get("clip_exponent", 0.25) is not None)
    _compare(rm.ADOPT, kw, lambda init: _Optax(tx, init), "ADOPT/optax", n_steps=OPTAX_STEPS)


@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1),
                                dict(lr=0.01, t_alpha=10, t_beta3=15, alpha=8.0)],
                         ids=_kw_id)
def test_ademamix_matches_optax(kw, optax64):
    """optax calls the schedules with the 0-based count: shifted by one here."""
    b1, b2, b3 = kw.get("betas", (0.9, 0.999, 0.9999))
    alpha = kw.get("alpha", 5.0)
    a_sched, b3_sched = alpha, b3
    if "t_alpha" in kw:
        def a_sched(count):
            return rm.ademamix_alpha(int(count) + 1, alpha, kw["t_alpha"])

        def b3_sched(count):
            return rm.ademamix_beta3(int(count) + 1, b1, b3, kw["t_beta3"])
    tx = optax64.contrib.ademamix(kw["lr"], b1=b1, b2=b2, b3=b3_sched, alpha=a_sched,
                                  weight_decay=kw.get("weight_decay", 0.0))
    _compare(rm.AdEMAMix, kw, lambda init: _Optax(tx, init), "AdEMAMix/optax",
             n_steps=OPTAX_STEPS)


@pytest.mark.parametrize("which", ["adamw", "sgd"])
def test_schedule_free_matches_optax(which, optax64):
    """No warm-up: optax's base optimizer counts the warm-up from 0 where the averaging
    (and the schedulefree package) count from 1."""
    if which == "adamw":
        kw = dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))
        tx = optax64.contrib.schedule_free_adamw(0.01, b1=0.8, b2=0.99, weight_decay=0.1)
        ref_cls = rm.ScheduleFreeAdamW
    else:
        kw = dict(lr=0.1, momentum=0.8, weight_decay=0.1)
        tx = optax64.contrib.schedule_free_sgd(0.1, b1=0.8, weight_decay=0.1)
        ref_cls = rm.ScheduleFreeSGD
    ref, theirs = _compare(ref_cls, kw, lambda init: _Optax(tx, init), f"ScheduleFree/{which}",
                           n_steps=OPTAX_STEPS)
    x = optax64.contrib.schedule_free_eval_params(theirs.state, theirs.params)
    _close(ref.x, [np.asarray(a) for a in x], f"ScheduleFree/{which} x")
