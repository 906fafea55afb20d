"""The one table of optimizers that drives the tests: (class name, keyword arguments).

Every case runs against the plain-NumPy reference (tests/reference.py), against
torch.optim where torch has the rule, across the list / FlatParams / param-group
paths, and on the simulated CUDA kernels.
"""

from __future__ import annotations

import numpy as np

CASES: list[tuple[str, dict]] = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.5, weight_decay=0.1,
                     maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, maximize=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01)),
    # eps large enough to be seen in float32 (where it sits: outside the square root)
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True, eps=1e-4)),
    ("Adam", dict(lr=0.01, amsgrad=True, betas=(0.8, 0.9))),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("Adamax", dict(lr=0.01)),
    ("Adamax", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("NAdam", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("Yogi", dict()),
    ("Yogi", dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, initial_accumulator_value=0.1)),
]

#: float32 trajectories against the NumPy reference (tests/reference.py, run in float32 too):
#: the tolerance per rule, in units of float32's machine epsilon (2**-23), for
#: ``assert_allclose(rtol=tol, atol=tol)``, i.e. ``|mine - ref| <= tol * (1 + |ref|)`` (the
#: differences are round-off of order-1 values: absolute, not relative, near 0). Measured over
#: this table and test_extra's (60 steps of :func:`problem`) and test_extra's long segmented
#: tensors, the largest ``|mine - ref| / (1 + |ref|)`` per rule, in eps: 0 for SGD, Adagrad and
#: Lion (the same operations in the same order), RAdam 0.32, Adamax 0.64, SWATS 0.65, NAdam
#: 0.79, AdaBelief 0.86, Adadelta 0.95, Yogi 0.96, RMSprop 0.97, Adam 1.58, AdamW 1.59, NDAdam
#: 1.69, LAMB 1.91 (largest absolute difference 6e-7, LAMB). The tolerance is about 3 times
#: that, at least 1 eps: a wrong AdamW decay order, NAdam's schedule off by one at step 1
#: and eps inside Adam's square root fail in float32 too (they passed rtol=2e-4, atol=2e-5).
FLOAT32_EPS_TOL = {"SGD": 1, "Adagrad": 1, "Lion": 1, "RAdam": 1, "SWATS": 2, "Adamax": 2,
                   "NAdam": 3, "Yogi": 3, "RMSprop": 3, "Adadelta": 3, "AdaBelief": 3,
                   "Adam": 5, "AdamW": 5, "NDAdam": 6, "LAMB": 6}


def float32_tol(name: str) -> dict:
    """``assert_allclose`` keywords for rule ``name`` in float32 (see FLOAT32_EPS_TOL)."""
    if name not in FLOAT32_EPS_TOL:
        raise KeyError(f"{name}: measure its float32 difference from the reference and add "
                       "it to FLOAT32_EPS_TOL")
    tol = FLOAT32_EPS_TOL[name] * float(np.finfo(np.float32).eps)
    return dict(rtol=tol, atol=tol)


#: rules whose trajectory torch.optim defines (Yogi follows optax / torch-optimizer)
TORCH_HAS = {"SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam",
             "RAdam"}

SHAPES = [(3, 4), (5,), (0,), (2, 3, 2)]


def case_id(case: tuple[str, dict]) -> str:
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in sorted(kwargs.items()))


def problem(shapes=SHAPES, steps: int = 60, dtype=np.float64, seed: int = 0):
    """Initial params and a gradient function ``grad(params, t)``.

    The gradient of a quadratic plus fixed noise, with some exact zeros: it depends on
    the current params, so a convention error compounds instead of staying constant.
    """
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    noise = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    half = dtype(0.5)

    def grad(current, t):
        out = [half * p + n for p, n in zip(current, noise[t])]
        if t % 7 == 3:
            for g in out:
                g[..., :1] = 0
        return out

    return params, grad
