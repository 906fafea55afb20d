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
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
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
