"""Check the plain-NumPy reference optimizers against torch.optim (float64)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    import reference  # noqa: E402
except ImportError:  # tests/ made a package
    from tests import reference  # noqa: E402

REFERENCES = reference.REFERENCES

SHAPES = [(3, 4), (5,), (0,), (2, 3, 2)]
N_STEPS = 60
RTOL = 1e-9
ATOL = 1e-12

# (name, kwargs shared by torch and the reference)
CASES = [
    ("SGD", {}),
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("Adagrad", {}),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, eps=1e-6)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1, maximize=True)),
    ("RMSprop", {}),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, maximize=True, eps=1e-4)),
    ("Adadelta", {}),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)),
    ("Adadelta", dict(maximize=True)),
    ("Adam", {}),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, amsgrad=True,
                  maximize=True)),
    ("AdamW", {}),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, maximize=True, betas=(0.5, 0.9))),
    ("Adamax", {}),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("Adamax", dict(maximize=True, eps=1e-3)),
    ("NAdam", {}),
    ("NAdam", dict(lr=0.01, momentum_decay=0.01, weight_decay=0.1)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("NAdam", dict(lr=0.01, betas=(0.8, 0.99), maximize=True)),
    ("RAdam", {}),
    ("RAdam", dict(lr=0.01, weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-4, maximize=True)),  # rectifies early
]


@pytest.fixture
def float64_default():
    # torch keeps scalar optimizer state (``step``, NAdam's ``mu_product``) in
    # float32 unless the default dtype is float64; NAdam's float32 mu_product
    # alone causes ~1e-8 relative deviations.  Use float64 scalars for the
    # comparison (torch state is created lazily, inside ``step``).
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _id(case):
    name, kw = case
    return name + ("-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else "-defaults")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_reference_matches_torch(case, float64_default):
    name, kw = case
    rng = np.random.default_rng(1234)
    init = [rng.standard_normal(s) for s in SHAPES]

    ref_params = [x.copy() for x in init]
    ref = REFERENCES[name](ref_params, **kw)

    t_params = [torch.nn.Parameter(torch.tensor(x.copy(), dtype=torch.float64)) for x in init]
    t_opt = getattr(torch.optim, name)(t_params, foreach=False, **kw)

    for step in range(N_STEPS):
        # Gradient depends on the current parameters (quadratic bowl) plus noise,
        # so trajectories diverge quickly if any convention is wrong.
        grads = [0.5 * p + rng.standard_normal(p.shape) for p in ref_params]
        if step % 17 == 5:
            grads[0][0] = 0.0  # exact zero gradient entries now and then
        for tp, g in zip(t_params, grads):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        t_opt.step()
        ref.step(grads)
        for i, (rp, tp) in enumerate(zip(ref_params, t_params)):
            np.testing.assert_allclose(
                rp, tp.detach().numpy(), rtol=RTOL, atol=ATOL,
                err_msg=f"{name} {kw} param {i} diverged at step {step + 1}",
            )


def test_updates_in_place_and_dtype():
    for name, cls in REFERENCES.items():
        for dtype in (np.float32, np.float64):
            p = np.ones((3, 4), dtype=dtype) * 0.5
            b = np.ones(4, dtype=dtype)
            alias_p, alias_b = p, b
            opt = cls([p, b], lr=0.01)
            for _ in range(3):
                opt.step([np.full((3, 4), 0.1), np.linspace(-1, 1, 4)])
            assert alias_p is p and alias_b is b
            assert p.dtype == dtype and b.dtype == dtype, name
            assert np.all(np.isfinite(p)) and np.all(np.isfinite(b)), name
            assert not np.allclose(b, 1.0), f"{name} did not update"


# --------------------------------------------------------------------------- #
# Hand-derived sanity checks for the rules torch does not implement.
# --------------------------------------------------------------------------- #
def _rand(seed, shape=(4, 5)):
    return np.random.default_rng(seed).standard_normal(shape)


def test_adam_variants_first_steps_by_hand():
    Adam = reference.Adam

    p0, g1, g2 = _rand(0), _rand(1), _rand(2)
    lr, b1, b2, eps, er = 0.1, 0.9, 0.999, 1e-8, 1e-6
    # eps_root: denom = sqrt(v_hat + eps_root) + eps; at t=1 v_hat = g^2, m_hat = g.
    p = p0.copy()
    Adam([p], lr=lr, eps=eps, eps_root=er).step([g1])
    np.testing.assert_allclose(p, p0 - lr * g1 / (np.sqrt(g1**2 + er) + eps), rtol=1e-12)
    # Original AMSGrad (no bias correction) over two steps.
    p = p0.copy()
    opt = Adam([p], lr=lr, amsgrad=True, amsgrad_bias_correction=False)
    opt.step([g1])
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1**2
    e1 = p0 - lr * m1 / (np.sqrt(v1) + eps)
    np.testing.assert_allclose(p, e1, rtol=1e-12)
    opt.step([g2])
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2**2
    e2 = e1 - lr * m2 / (np.sqrt(np.maximum(v1, v2)) + eps)
    np.testing.assert_allclose(p, e2, rtol=1e-12)


def test_yogi_first_step_by_hand():
    Yogi = reference.Yogi

    p0, g = _rand(3), _rand(4)
    lr, b1, b2, eps, init = 0.01, 0.9, 0.999, 1e-3, 1e-6
    p = p0.copy()
    Yogi([p]).step([g])
    m = b1 * init + (1 - b1) * g
    v = init - (1 - b2) * np.sign(init - g**2) * g**2
    expect = p0 - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
    np.testing.assert_allclose(p, expect, rtol=1e-12)


def test_adabelief_eps_accumulates_in_state():
    AdaBelief = reference.AdaBelief

    p = np.zeros(3)
    opt = AdaBelief([p], eps=1e-3)
    for _ in range(3):
        opt.step([np.zeros(3)])  # zero grads: s_t = b2 s + eps
    b2 = 0.999
    np.testing.assert_allclose(opt.s[0], 1e-3 * (1 + b2 + b2**2), rtol=1e-12)
    p0, g = _rand(5), _rand(6)
    p = p0.copy()
    AdaBelief([p], lr=0.1, eps=1e-16).step([g])
    # t=1: m = 0.1 g, s = 0.001 (0.9 g)^2 + eps -> step = lr * g / |0.9 g|
    np.testing.assert_allclose(p, p0 - 0.1 * np.sign(g) / 0.9, rtol=1e-9)


def test_lion_step_magnitude_is_lr():
    Lion = reference.Lion

    p0, g = _rand(7), _rand(8)
    p = p0.copy()
    opt = Lion([p], lr=0.01, weight_decay=0.5)
    opt.step([g])
    np.testing.assert_allclose(p, p0 * (1 - 0.005) - 0.01 * np.sign(g), rtol=1e-12)
    np.testing.assert_allclose(opt.m[0], 0.01 * g, rtol=1e-12)


def test_lamb_trust_ratio():
    LAMB = reference.LAMB

    p0, g = _rand(9), _rand(10)
    p = p0.copy()
    LAMB([p], lr=0.1, eps=1e-12).step([g])
    # t=1, wd=0: r = sign(g) (up to eps) -> ||step|| = lr * ||p0||
    np.testing.assert_allclose(np.linalg.norm(p - p0), 0.1 * np.linalg.norm(p0), rtol=1e-9)
    z = np.zeros(4)
    LAMB([z], lr=0.1).step([np.ones(4)])  # ||p|| = 0 -> trust = 1
    np.testing.assert_allclose(z, -0.1 / (1 + 1e-6), rtol=1e-12)


def test_ndadam_unit_rows_and_tangent_moments():
    NDAdam, Adam = reference.NDAdam, reference.Adam

    W, b = _rand(11, (4, 6)), _rand(12, (6,))
    b_adam = b.copy()
    opt, adam = NDAdam([W, b], lr=0.05), Adam([b_adam], lr=0.05)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-12)
    rng = np.random.default_rng(13)
    for k in range(10):
        if k == 0:  # the first moment after one step is tangent to each row
            W0 = W.copy()
        W_prev = W.copy()
        gW, gb = rng.standard_normal(W.shape), rng.standard_normal(b.shape)
        opt.step([gW, gb])
        adam.step([gb])
        if k == 0:
            np.testing.assert_allclose(np.sum(opt.m[0] * W0, axis=1), 0.0, atol=1e-14)
        np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-12)
        assert opt.v[0].shape == (4, 1)
    np.testing.assert_allclose(b, b_adam, rtol=1e-12)  # ndim < 2: plain Adam
    assert not np.allclose(W, W_prev)
    W3 = _rand(14, (3, 4, 5))
    NDAdam([W3], axis=1)
    np.testing.assert_allclose(np.linalg.norm(W3, axis=1), 1.0, rtol=1e-12)


def test_swats_adam_phase_then_switch():
    SWATS, Adam = reference.SWATS, reference.Adam

    # Deterministic quadratic f = 0.5 * ||p||^2 (grad = p): Adam phase must equal Adam.
    ps = [_rand(15, (3, 4)), _rand(16, (5,))]
    qs = [x.copy() for x in ps]
    sw = SWATS(ps, lr=0.01, switch_tol=-1.0)  # never switches
    ad = Adam(qs, lr=0.01)
    for _ in range(20):
        sw.step([x.copy() for x in ps])
        ad.step([x.copy() for x in qs])
    for a, b in zip(ps, qs):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert not sw.switched and sw.switch_step is None and sw.sgd_lr is None

    # Huge tolerance: switches at k = 2 (first step allowed), then SGD with momentum.
    ps = [_rand(17, (3, 4))]
    sw = SWATS(ps, lr=0.01, switch_tol=1e9)
    sw.step([ps[0].copy()])
    assert not sw.switched
    sw.step([ps[0].copy()])
    assert sw.switched and sw.switch_step == 2 and sw.sgd_lr > 0
    before = ps[0].copy()
    g = ps[0].copy()
    sw.step([g])
    np.testing.assert_allclose(ps[0], before - (1 - 0.9) * sw.sgd_lr * g, rtol=1e-12)
