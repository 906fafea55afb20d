"""SGD, momentum, Adagrad, RMSProp, Adam and Yogi on one linear regression.

In the style of the optimization chapter of *Dive into Deep Learning*: a linear
model ``y_hat = X w + b`` fitted with minibatches of 10 under the squared loss
``(y_hat - y)**2 / 2``, one run per optimizer from the same initialization (zeros)
over the same batches, and a table of the loss on the whole data set after every
epoch. The data are synthetic: 1000 samples of 5 standard-normal features, true
weights ``(0.5, -0.5, 1, -1, 1.5)``, bias 0.5 and noise of standard deviation 0.1,
so the best achievable loss is about ``0.1**2 / 2 = 0.005``.

Run::

    python examples/linear_regression_comparison.py [--steps 500] [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np

import fastmoments as fm

N, DIM, BATCH, NOISE = 1000, 5, 10, 0.1


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = np.array([0.5, -0.5, 1.0, -1.0, 1.5])
    X = rng.normal(size=(N, DIM))
    y = X @ w + 0.5 + rng.normal(0.0, NOISE, size=N)
    return X, y


def squared_loss(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    r = X @ w + b[0] - y
    return 0.5 * float(r @ r) / len(y)


# (label, factory) in the order of the d2l chapter; learning rates as tuned there
# for a linear model with minibatches of 10.
OPTIMIZERS = [
    ("SGD", lambda flat: fm.SGD(flat, lr=0.05)),
    ("Momentum", lambda flat: fm.SGD(flat, lr=0.01, momentum=0.9)),
    ("Adagrad", lambda flat: fm.Adagrad(flat, lr=0.1)),
    ("RMSProp", lambda flat: fm.RMSprop(flat, lr=0.01, alpha=0.9)),
    ("Adam", lambda flat: fm.Adam(flat, lr=0.01)),
    ("Yogi", lambda flat: fm.Yogi(flat, lr=0.01)),
]


def train(make, X: np.ndarray, y: np.ndarray, steps: int, seed: int = 0) -> list[float]:
    """Loss on the whole data before training and after every epoch (and at the end)."""
    flat = fm.FlatParams([np.zeros(DIM), np.zeros(1)])
    w, b = flat.params  # views into flat.data: the optimizer updates them in place
    gw, gb = flat.grads  # views into flat.grad: we write the gradients there
    opt = make(flat)
    rng = np.random.default_rng(seed)
    per_epoch = len(y) // BATCH
    losses = [squared_loss(X, y, w, b)]
    order = rng.permutation(len(y))
    for t in range(steps):
        k = t % per_epoch
        if k == 0 and t:
            order = rng.permutation(len(y))
        idx = order[k * BATCH:(k + 1) * BATCH]
        Xb, yb = X[idx], y[idx]
        r = Xb @ w + b[0] - yb  # residuals
        np.matmul(r, Xb, out=gw)
        gw /= BATCH
        gb[0] = r.mean()
        opt.step()
        if (t + 1) % per_epoch == 0 or t + 1 == steps:
            losses.append(squared_loss(X, y, w, b))
    return losses


def main(steps: int = 500, quick: bool = False, seed: int = 0) -> dict[str, list[float]]:
    """Train with each optimizer; print and return the loss per epoch.

    Returns
    -------
    dict
        ``{label: [loss before training, after epoch 1, ...]}``.
    """
    if quick:
        steps = min(steps, 200)
    X, y = make_data(seed)
    results = {label: train(make, X, y, steps, seed) for label, make in OPTIMIZERS}
    epochs = len(next(iter(results.values()))) - 1
    per_epoch = N // BATCH
    print(f"linear regression, {N} samples x {DIM} features, batch {BATCH}: "
          f"{steps} steps ({per_epoch} per epoch); loss on the whole data set\n")
    header = f"{'epoch':>6}" + "".join(f"{label:>10}" for label, _ in OPTIMIZERS)
    print(header)
    for e in range(epochs + 1):
        tag = f"{e:>6}" if e * per_epoch <= steps else f"{steps / per_epoch:>6.2g}"
        print(tag + "".join(f"{results[label][e]:>10.4g}" for label, _ in OPTIMIZERS))
    print(f"\n(the noise floor is about {NOISE**2 / 2:.3g})")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a short run (200 steps)")
    cli = parser.parse_args()
    main(cli.steps, cli.quick)
