"""Reddi, Kale & Kumar (2018), Theorem 1: Adam converges to the worst point of a convex
problem; AMSGrad (both forms), Yogi and ADOPT reach the optimum.

The online problem on the feasible set [-1, 1]: f_t(x) = C x when t mod 3 = 1, else -x
(C > 2), so the regret-minimizing point is x = -1. With beta1 = 0, beta2 = 1 / (1 + C^2)
and alpha_t = alpha / sqrt(t), Adam's large gradient C is forgotten within a step while
the two -1 gradients each move x up by about alpha_t: x drifts to +1, and the average
regret stays near (2C - 4) / 3. AMSGrad's max keeps v at about C^2, Yogi's additive
update lets v shrink by only (1 - beta2) g^2 = ~1 a step: both then move by alpha_t / C
on the small gradients and reach x = -1. ADOPT (Taniguchi et al., 2024) keeps Adam's
beta2 but divides each gradient by the second moment of the steps *before* it: the large
gradient C, after two gradients of -1, is divided by about 1 and moves x down by
alpha_t * min(C, k^(1/4)) (its clipping bound), more than the two small steps move it up.
(Also the seeds' exercise: a case where Adam fails and Yogi converges.) See docs/reddi.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference
import reference_modern

import fastmoments as fm
from fastmoments.schedules import inverse_sqrt

C = 10.0
BETAS = (0.0, 1.0 / (1.0 + C * C))
ALPHA = 0.5


def gradient(t: int) -> float:
    """The gradient of f_t at any x (t counted from 1)."""
    return C if t % 3 == 1 else -1.0


def play(make, steps: int) -> tuple[float, float]:
    """Run the online game with projection onto [-1, 1]; return (x_T, average regret)."""
    x = np.zeros(1)
    opt = make([x])
    regret = 0.0
    for t in range(1, steps + 1):
        g = gradient(t)
        regret += g * x[0] - g * -1.0  # f_t(x_t) - f_t(x*), x* = -1
        opt.step([np.array([g])])
        np.clip(x, -1.0, 1.0, out=x)  # the projection (1-D: the same in any metric)
    return float(x[0]), regret / steps


OPTIMIZERS = {
    "Adam": lambda p: fm.Adam(p, lr=inverse_sqrt(ALPHA), betas=BETAS),
    "AMSGrad (torch, bias-corrected)": lambda p: fm.Adam(
        p, lr=inverse_sqrt(ALPHA), betas=BETAS, amsgrad=True),
    "AMSGrad (Reddi et al.)": lambda p: fm.Adam(
        p, lr=inverse_sqrt(ALPHA), betas=BETAS, amsgrad=True, amsgrad_bias_correction=False),
    "Yogi": lambda p: fm.Yogi(p, lr=inverse_sqrt(ALPHA), betas=BETAS, eps=1e-8),
    "ADOPT": lambda p: fm.ADOPT(p, lr=inverse_sqrt(ALPHA), betas=BETAS),
}


def test_adam_converges_to_the_worst_point():
    x, regret = play(OPTIMIZERS["Adam"], 3001)
    assert x > 0.98  # the last step (t = 3001, gradient C) moved it down by alpha_t only
    # linear regret: at x = +1 a cycle of 3 steps costs f(1) - f(-1) = 2C - 2 - 2
    assert regret > 0.95 * (2 * C - 4) / 3


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in ("Adam", "ADOPT")])
def test_amsgrad_and_yogi_reach_the_optimum(name):
    x_short, regret_short = play(OPTIMIZERS[name], 1000)
    x, regret = play(OPTIMIZERS[name], 3001)
    assert x == -1.0 and x_short == -1.0  # after a C step: at the optimum
    assert regret < 0.05 and regret < regret_short / 2  # regret / T -> 0


def test_reddi_amsgrad_matches_the_reference_on_this_problem():
    a, b = np.zeros(1), np.zeros(1)
    kw = dict(betas=BETAS, amsgrad=True, amsgrad_bias_correction=False)
    opt = fm.Adam([a], lr=ALPHA, **kw)
    ref = reference.Adam([b], lr=ALPHA, **kw)
    for t in range(1, 301):
        ref.lr = ALPHA / np.sqrt(t)
        opt.lr = ALPHA / np.sqrt(t)
        opt.step([np.array([gradient(t)])])
        ref.step([np.array([gradient(t)])])
        np.clip(a, -1, 1, out=a)
        np.clip(b, -1, 1, out=b)
        assert a[0] == pytest.approx(b[0], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("clip_exponent", [0.25, None], ids=["clipped", "unclipped"])
def test_adopt_reaches_the_optimum_with_adams_beta2(clip_exponent):
    """ADOPT with the beta2 that makes Adam fail: at the optimum, and the average regret
    falls about as 1 / sqrt(T) (0.13 at T = 1000, 0.063 at T = 3001 clipped; slower than
    AMSGrad's at first: the clipping bound k^(1/4) is below C = 10 until k = 10^4)."""
    make = lambda p: fm.ADOPT(p, lr=inverse_sqrt(ALPHA), betas=BETAS,  # noqa: E731
                              clip_exponent=clip_exponent)
    x_short, regret_short = play(make, 1000)
    x, regret = play(make, 3001)
    assert x == -1.0 and x_short == -1.0
    assert regret < 0.07 and regret < regret_short / 1.5


def test_adopt_matches_the_reference_on_this_problem():
    a, b = np.zeros(1), np.zeros(1)
    opt = fm.ADOPT([a], lr=ALPHA, betas=BETAS)
    ref = reference_modern.ADOPT([b], lr=ALPHA, betas=BETAS)
    for t in range(1, 301):
        ref.lr = opt.lr = ALPHA / np.sqrt(t)
        opt.step([np.array([gradient(t)])])
        ref.step([np.array([gradient(t)])])
        np.clip(a, -1, 1, out=a)
        np.clip(b, -1, 1, out=b)
        assert a[0] == pytest.approx(b[0], rel=1e-12, abs=1e-15)
