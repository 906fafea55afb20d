"""Adam's non-convergence counterexample (Reddi, Kale & Kumar, 2018, Theorem 1).

An online problem on the interval ``[-1, 1]``: at step ``t`` the loss is

    f_t(x) = C * x   when t mod 3 == 1,
    f_t(x) = -x      otherwise,

so over every three steps the total loss is ``(C - 2) * x`` and, for ``C > 2``, the
best fixed point is ``x = -1``. With ``beta1 = 0``, ``beta2 = 1 / (1 + C**2)`` and the
step size ``alpha / sqrt(t)`` of the theorem, Adam's second moment forgets the rare
large gradient ``C`` within a step or two, the two small steps towards ``+1`` outweigh
the large one towards ``-1``, and Adam settles at the *worst* point ``x = +1``.
AMSGrad (``Adam(amsgrad=True)``, which keeps the running maximum of the second
moment) and Yogi (whose second moment changes additively, by at most
``(1 - beta2) * g**2``) do not forget, and approach the optimum ``-1``. ADOPT
(Taniguchi et al., 2024) keeps Adam's ``beta2`` but divides each gradient by the second
moment of the steps *before* it, so the rare large gradient is not normalized by itself:
it approaches ``-1`` too.

After every step the iterate is projected back onto ``[-1, 1]`` (``np.clip`` in
place), as in the paper's constrained online setting.

Run::

    python examples/reddi_counterexample.py [--steps 20000] [--quick] [--C 3]

Reference: S. J. Reddi, S. Kale, S. Kumar, "On the Convergence of Adam and Beyond",
ICLR 2018; S. Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with
the Optimal Rate", NeurIPS 2024.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import fastmoments as fm


def online_gradient(t: int, C: float) -> float:
    """The gradient of f_t (t counts from 1): C when t mod 3 == 1, else -1."""
    return C if t % 3 == 1 else -1.0


def run(make_optimizer, steps: int, C: float, x0: float = 0.0) -> tuple[float, float]:
    """Play the online game; returns (final x, average loss per step)."""
    x = np.array([x0])  # the iterate: updated in place by the optimizer
    g = np.zeros(1)  # its gradient, rewritten every step
    opt = make_optimizer([x])
    total = 0.0
    for t in range(1, steps + 1):
        g[0] = online_gradient(t, C)
        total += g[0] * x[0]  # f_t is linear: f_t(x) = g_t * x
        opt.step([g])
        np.clip(x, -1.0, 1.0, out=x)  # projection onto the feasible interval
    return float(x[0]), total / steps


def main(steps: int = 20000, quick: bool = False, C: float = 3.0, alpha: float = 0.5,
         verbose: bool = True) -> dict[str, float]:
    """Run Adam, AMSGrad, Yogi and ADOPT on the counterexample.

    Returns
    -------
    dict
        Final ``x`` per optimizer (the optimum is -1).
    """
    if quick:
        steps = min(steps, 3000)
    beta2 = 1.0 / (1.0 + C**2)
    betas = (0.0, beta2)

    def step_size(k: int) -> float:  # alpha / sqrt(t), t = k + 1 = the step being taken
        return alpha / math.sqrt(k + 1)

    contenders = {
        "Adam": lambda p: fm.Adam(p, lr=step_size, betas=betas),
        "AMSGrad": lambda p: fm.Adam(p, lr=step_size, betas=betas, amsgrad=True),
        "Yogi": lambda p: fm.Yogi(p, lr=step_size, betas=betas),
        "ADOPT": lambda p: fm.ADOPT(p, lr=step_size, betas=betas),
    }
    finals = {}
    if verbose:
        print(f"f_t(x) = {C:g}x if t mod 3 == 1 else -x on [-1, 1]; optimum x* = -1")
        print(f"beta1 = 0, beta2 = 1/(1+C^2) = {beta2:.4g}, step size {alpha:g}/sqrt(t), "
              f"{steps} steps\n")
        print(f"{'optimizer':<10} {'final x':>9} {'avg loss':>9}")
    for name, make in contenders.items():
        x, avg = run(make, steps, C)
        finals[name] = x
        if verbose:
            print(f"{name:<10} {x:>9.4f} {avg:>9.4f}")
    if verbose:
        best = (C - 2.0) / 3.0 * -1.0
        print(f"\n(the optimum x = -1 has average loss {best:.4f}; x = +1 has {-best:.4f})")
    return finals


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="a short run (3000 steps)")
    parser.add_argument("--C", type=float, default=3.0, help="the large gradient (> 2)")
    parser.add_argument("--alpha", type=float, default=0.5, help="step size alpha")
    cli = parser.parse_args()
    main(cli.steps, cli.quick, cli.C, cli.alpha)
