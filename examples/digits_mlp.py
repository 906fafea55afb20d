"""A NumPy MLP on scikit-learn's handwritten digits, trained with several optimizers.

The tutorial pattern for a hand-written NumPy model:

1. create the parameters, then pack them into one :class:`fastmoments.FlatParams`
   and use its ``params`` views in the model from then on;
2. write the gradients of every step into its ``grads`` views (``out=`` arguments,
   no new arrays), which all live in one flat buffer;
3. ``opt.step()`` updates every parameter with one fused kernel call.

The 8x8 digits (1797 images, 10 classes) ship with scikit-learn. Without it the
example falls back to the package's synthetic spiral data and says so. Loss curves
are plotted when matplotlib is installed.

Run::

    python examples/digits_mlp.py [--steps 600] [--quick] [--plot digits.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastmoments as fm


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Standardized features and integer labels, split 80/20 into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from fastmoments.tools.demo.data import spiral

        print("scikit-learn is not installed: using the synthetic spiral data instead "
              "(pip install scikit-learn for the digits)")
        data = spiral(300, classes=3, noise=0.2, twist=4.0, seed=seed)
        X, y, name = data.X, data.y, "spiral (3 classes)"
    else:
        digits = load_digits()
        X, y, name = digits.data.astype(np.float64), digits.target.astype(np.int64), "digits"
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8)
    order = np.random.default_rng(seed).permutation(len(y))
    X, y = X[order], y[order]
    cut = int(0.8 * len(y))
    return X[:cut], y[:cut], X[cut:], y[cut:], name


class MLP:
    """input -> tanh(hidden) -> softmax, forward and backward by hand."""

    def __init__(self, n_in: int, hidden: int, n_out: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        init = [rng.normal(size=(n_in, hidden)) / np.sqrt(n_in), np.zeros(hidden),
                rng.normal(size=(hidden, n_out)) / np.sqrt(hidden), np.zeros(n_out)]
        # One flat buffer for the parameters and one for the gradients.
        self.flat = fm.FlatParams(init)
        self.W1, self.b1, self.W2, self.b2 = self.flat.params
        self.gW1, self.gb1, self.gW2, self.gb2 = self.flat.grads

    def logits(self, X: np.ndarray) -> np.ndarray:
        return np.tanh(X @ self.W1 + self.b1) @ self.W2 + self.b2

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        z = self.logits(X)
        z -= z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.logits(X).argmax(axis=1) == y))

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy; the gradients go into ``self.flat.grad`` in place."""
        n = len(y)
        h = np.tanh(X @ self.W1 + self.b1)
        z = h @ self.W2 + self.b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        total = p.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(total[:, 0]) - z[np.arange(n), y]))
        p /= total  # softmax
        p[np.arange(n), y] -= 1.0
        p /= n  # d loss / d logits
        np.matmul(h.T, p, out=self.gW2)
        np.sum(p, axis=0, out=self.gb2)
        dh = (p @ self.W2.T) * (1.0 - h * h)
        np.matmul(X.T, dh, out=self.gW1)
        np.sum(dh, axis=0, out=self.gb1)
        return loss


OPTIMIZERS = {
    "SGD+momentum": lambda flat: fm.SGD(flat, lr=0.05, momentum=0.9),
    "RMSprop": lambda flat: fm.RMSprop(flat, lr=1e-3),
    "Adam": lambda flat: fm.Adam(flat, lr=3e-3),
    "AdamW": lambda flat: fm.AdamW(flat, lr=3e-3, weight_decay=1e-2),
    "Yogi": lambda flat: fm.Yogi(flat, lr=1e-2),
}


def main(steps: int = 600, quick: bool = False, plot: str | None = None,
         hidden: int = 64, batch_size: int = 64, seed: int = 0) -> dict[str, dict]:
    """Train one MLP per optimizer from the same initialization on the same batches.

    Returns
    -------
    dict
        Per optimizer: ``initial_loss`` and ``final_loss`` (training set),
        ``test_accuracy``, ``curve`` (training loss every ``steps // 10`` steps)
        and ``seconds``.
    """
    if quick:
        steps = min(steps, 150)
    Xtr, ytr, Xte, yte, name = load_data(seed)
    classes = int(ytr.max()) + 1
    every = max(1, steps // 10)
    print(f"{name}: {len(ytr)} train / {len(yte)} test samples, {Xtr.shape[1]} features, "
          f"{classes} classes; MLP hidden {hidden}; {steps} steps of batch {batch_size}\n")
    results = {}
    for label, make in OPTIMIZERS.items():
        model = MLP(Xtr.shape[1], hidden, classes, seed=seed)  # same initialization
        opt = make(model.flat)
        rng = np.random.default_rng(seed)  # same batches for every optimizer
        curve = [model.loss(Xtr, ytr)]
        start = time.perf_counter()
        for t in range(steps):
            idx = rng.integers(0, len(ytr), size=batch_size)
            model.loss_and_grads(Xtr[idx], ytr[idx])
            opt.step()  # reads model.flat.grad, updates model.flat.data in place
            if (t + 1) % every == 0:
                curve.append(model.loss(Xtr, ytr))
        seconds = time.perf_counter() - start
        results[label] = {
            "initial_loss": curve[0], "final_loss": model.loss(Xtr, ytr),
            "test_accuracy": model.accuracy(Xte, yte), "curve": curve, "seconds": seconds,
        }
    print(f"{'optimizer':<13} {'train loss':>10} {'test acc':>9} {'seconds':>8}")
    for label, r in results.items():
        print(f"{label:<13} {r['final_loss']:>10.4f} {r['test_accuracy']:>9.1%} "
              f"{r['seconds']:>8.2f}")
    if plot:
        _plot(results, every, plot, name)
    return results


def _plot(results: dict[str, dict], every: int, path: str, name: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in results.items():
        ax.semilogy(np.arange(len(r["curve"])) * every, r["curve"], marker="o", ms=3,
                    label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"NumPy MLP on {name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"\nloss curves written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="a short run (150 steps)")
    parser.add_argument("--plot", default="digits_mlp.png",
                        help="PNG of the loss curves ('' for none; needs matplotlib)")
    cli = parser.parse_args()
    main(cli.steps, cli.quick, cli.plot or None)
