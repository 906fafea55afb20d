"""Validation of hyperparameters and options, shared by every optimizer class."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["is_number", "check_number", "check_betas", "check_flag", "check_lr",
           "check_optional_positive", "lr_at"]


def is_number(x: Any) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_number(hyper: dict, key: str, owner: str, low: float = 0.0, high: float | None = None,
            high_open: bool = True) -> float:
    x = hyper[key]
    if not is_number(x) or math.isnan(x):
        raise ValueError(f"{owner}: invalid {key}: expected a number, got {x!r}")
    ok = x >= low and (high is None or (x < high if high_open else x <= high)) and (
        high is not None or math.isfinite(x)
    )
    if not ok:
        bound = "" if high is None else (f" and < {high}" if high_open else f" and <= {high}")
        raise ValueError(f"{owner}: invalid {key}: expected a finite value >= {low}{bound}, "
                         f"got {x!r}")
    return float(x)


def check_betas(hyper: dict, owner: str) -> tuple[float, float]:
    betas = hyper["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: invalid betas: expected a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if not is_number(b) or not 0.0 <= b < 1.0:
            raise ValueError(f"{owner}: invalid betas[{i}]: expected 0.0 <= betas[{i}] < 1.0, "
                             f"got {b!r}")
    return float(betas[0]), float(betas[1])


def check_flag(hyper: dict, key: str, owner: str) -> bool:
    x = hyper[key]
    if not isinstance(x, bool):
        raise TypeError(f"{owner}: invalid {key}: expected True or False, got {x!r}")
    return x


def check_lr(lr: Any, owner: str) -> None:
    if callable(lr):
        return
    if not is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{owner}: invalid lr: expected a finite number >= 0 or a schedule, "
                         f"got {lr!r}")


def check_optional_positive(x: Any, name: str, owner: str) -> float | None:
    if x is None:
        return None
    if not is_number(x) or not (x > 0) or math.isnan(x):
        raise ValueError(f"{owner}: {name} must be a number > 0 or None, got {x!r}")
    return float(x)


def lr_at(lr: Any, steps_taken: int) -> float:
    """The learning rate of the step after ``steps_taken`` steps (a float or a schedule),
    validated."""
    if callable(lr):
        value = lr(steps_taken)
        if not (is_number(value) and math.isfinite(value) and value >= 0):
            raise ValueError(
                f"lr schedule {lr!r} returned {value!r} at step {steps_taken}; expected a "
                "finite number >= 0"
            )
        return float(value)
    return float(lr)
