"""Gradient sequences that the 8-bit state is compared on, recorded once and fed to every
optimizer alike (tests/test_precision_bnb.py, tests/test_precision_torchao.py)."""

from __future__ import annotations

import numpy as np

import fastmoments as fm

__all__ = ["demo_gradients", "lognormal_gradients"]


def demo_gradients(seed: int, steps: int,
                   lr: float) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """The demo's spiral MLP (hidden 2048: 10,240 of its 12,291 parameters in tensors
    that are quantized): its initial parameters and the minibatch gradients of a float32
    Adam run, to feed every optimizer alike."""
    from fastmoments.tools.demo.app import make_problem
    from fastmoments.tools.demo.data import batches

    data, net = make_problem("mlp", hidden=2048, seed=seed, dtype=np.float32)
    start = net.copy_params()
    opt = fm.Adam(net.params, lr=lr)
    order = batches(data.n, 64, seed)
    recorded = []
    for _ in range(steps):
        idx = next(order)
        net.loss_grad(data.X[idx], data.y[idx])
        recorded.append([g.copy() for g in net.grads])
        opt.step(net.grads)
    return start, recorded


def lognormal_gradients(seed: int, steps: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """One tensor of 8192 elements whose gradient scales spread log-normally (sigma 1.5:
    a block of 256 spans about 1e4 in |g|, 1e8 in g^2), each element noise around a mean."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0.0, 1.5, 8192)).astype(np.float32)
    mean = rng.normal(0.0, 0.5, 8192).astype(np.float32)
    grads = [[scale * (mean + rng.standard_normal(8192).astype(np.float32))]
             for _ in range(steps)]
    return [rng.standard_normal(8192).astype(np.float32)], grads
