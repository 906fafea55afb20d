r"""The digits MLP trained data-parallel over MPI, its optimizer state sharded (ZeRO-1).

The model and the data are those of examples/digits_mlp.py (a NumPy MLP on
scikit-learn's 8x8 digits, or the package's spiral data without scikit-learn). Every
rank holds the same parameters and draws the same batches; each computes the gradient
of its own part of every batch, and ``fm.distributed.ShardedOptimizer`` averages the
ranks' gradients, steps this rank's shard of the optimizer state and hands every rank
the new parameters. The loss curve is the one of one process on the whole batch.

A rank's part of a batch need not be half: with ``W`` ranks and a batch of ``n`` rows,
rank ``r`` writes ``W / n`` times the gradient of its rows' summed loss, so that the
mean over the ranks, which the optimizer takes, is the gradient of the whole batch's
mean loss for any split:

.. math::

    \frac{1}{W} \sum_{r=1}^{W} \frac{W}{n} \sum_{i \in \text{rows}_r} \nabla \ell_i
    = \frac{1}{n} \sum_{i=1}^{n} \nabla \ell_i

With equal parts this is each rank's mean gradient, as in the two-line recipe of
docs/distributed.md. The curve reports the loss of the whole batch (the ranks' sums
added up), not of a rank's part, so curves at any number of ranks compare.

Run::

    mpiexec -n 2 python examples/data_parallel.py [--steps 600] [--quick] [--out curve.json]
    python examples/data_parallel.py            # one process: the curve to compare with
    python examples/data_parallel.py --plain    # one process, a plain fm.AdamW

Without mpi4py (``pip install 'fastmoments[mpi]'``) it runs as one process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import numpy as np

import fastmoments as fm


def load_data(seed: int = 0, say=print) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray, str]:
    """Standardized features and integer labels, split 80/20 into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from fastmoments.tools.demo.data import spiral

        say("scikit-learn is not installed: using the synthetic spiral data instead "
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
    """input -> tanh(hidden) -> softmax, forward and backward by hand, in one FlatParams."""

    def __init__(self, n_in: int, hidden: int, n_out: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        init = [rng.normal(size=(n_in, hidden)) / np.sqrt(n_in), np.zeros(hidden),
                rng.normal(size=(hidden, n_out)) / np.sqrt(hidden), np.zeros(n_out)]
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

    def loss_sum_and_grads(self, X: np.ndarray, y: np.ndarray, batch: int,
                           world: int) -> float:
        """The summed cross-entropy of these rows; ``world / batch`` times its gradient
        goes into ``self.flat.grad`` (in place)."""
        rows = len(y)
        h = np.tanh(X @ self.W1 + self.b1)
        z = h @ self.W2 + self.b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        total = p.sum(axis=1, keepdims=True)
        loss_sum = float(np.sum(np.log(total[:, 0]) - z[np.arange(rows), y]))
        p /= total  # softmax
        p[np.arange(rows), y] -= 1.0
        p /= batch  # d (whole-batch mean loss) / d logits, for these rows
        if world != 1:
            p *= world  # (the optimizer divides the sum over the ranks by world)
        np.matmul(h.T, p, out=self.gW2)
        np.sum(p, axis=0, out=self.gb2)
        dh = (p @ self.W2.T) * (1.0 - h * h)
        np.matmul(X.T, dh, out=self.gW1)
        np.sum(dh, axis=0, out=self.gb1)
        return loss_sum


def state_bytes(opt: Any) -> int:
    """Bytes of optimizer state this rank holds (a plain optimizer: all of it)."""
    if isinstance(opt, fm.distributed.ShardedOptimizer):
        return opt.state_nbytes
    return sum(int(a.nbytes) for per_param in opt.state for a in per_param.values()
               if isinstance(a, np.ndarray))


def world_communicator() -> Any:
    """MPI's world (one rank when started without mpiexec), or one process without mpi4py."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return fm.distributed.SelfCommunicator()
    return fm.distributed.as_communicator(None)  # mpi4py's MPI.COMM_WORLD


def main(steps: int = 600, quick: bool = False, out: str | None = None, plain: bool = False,
         comm: Any = None, hidden: int = 64, batch_size: int = 64,
         seed: int = 0) -> dict[str, Any]:
    """Train the MLP on every rank of ``comm``; the same result on every rank.

    Parameters
    ----------
    steps, quick
        Training steps (``quick``: at most 100).
    out
        Rank 0 writes the returned dict to this JSON file.
    plain
        One process with a plain ``fm.AdamW`` instead of the sharded optimizer (the
        reference the sharded runs are compared with).
    comm
        A communicator (default: :func:`world_communicator`).

    Returns
    -------
    dict
        ``curve`` (the whole batch's mean loss at every step, before the step),
        ``final_train_loss``, ``test_accuracy``, ``world_size``, ``batch_size``,
        ``steps``, ``state_bytes`` (this rank's optimizer state), ``replicas_identical``
        (every rank ended with the same parameter bits) and ``data``.
    """
    if quick:
        steps = min(steps, 100)
    comm = world_communicator() if comm is None else fm.distributed.as_communicator(comm)
    rank, world = comm.rank, comm.size
    if plain and world != 1:
        raise ValueError(f"plain: a plain optimizer runs in one process, not {world} ranks")

    def say(*args: Any) -> None:
        if rank == 0:
            print(*args, flush=True)

    Xtr, ytr, Xte, yte, name = load_data(seed, say)
    classes = int(ytr.max()) + 1
    model = MLP(Xtr.shape[1], hidden, classes, seed=seed)
    hyper = {"lr": 3e-3, "weight_decay": 1e-2}
    if plain:
        opt = fm.AdamW(model.flat, **hyper)
    else:
        opt = fm.distributed.ShardedOptimizer(fm.AdamW, model.flat, comm=comm, **hyper)
    parts = fm.distributed.shard_ranges(batch_size, world)  # this rank's rows of a batch
    mine = slice(*parts[rank])
    mode = "one process, plain fm.AdamW" if plain else f"{world} rank(s), ShardedOptimizer"
    say(f"{name}: {len(ytr)} train / {len(yte)} test samples; MLP hidden {hidden}; "
        f"{steps} steps of batch {batch_size}; {mode}; rows per rank "
        f"{[stop - start for start, stop in parts]}")
    rng = np.random.default_rng(seed)  # the same batches on every rank
    loss_sum = np.zeros(1)
    curve = []
    every = max(1, steps // 10)
    for t in range(steps):
        idx = rng.integers(0, len(ytr), size=batch_size)
        loss_sum[0] = model.loss_sum_and_grads(Xtr[idx][mine], ytr[idx][mine], batch_size,
                                               world)
        comm.allreduce(loss_sum)  # the whole batch's loss: the ranks' sums added up
        curve.append(float(loss_sum[0]) / batch_size)
        opt.step()
        if t % every == 0 or t == steps - 1:
            say(f"step {t:4d}  batch loss {curve[-1]:.6f}")
    digest = hashlib.sha256(model.flat.data.tobytes()).hexdigest()
    result = {
        "world_size": world, "batch_size": batch_size, "steps": steps, "plain": plain,
        "data": name, "curve": curve, "final_train_loss": model.loss(Xtr, ytr),
        "test_accuracy": model.accuracy(Xte, yte),
        "state_bytes": state_bytes(opt),
        "replicas_identical": len(set(comm.allgather_object(digest))) == 1,
    }
    say(f"final training loss {result['final_train_loss']:.6f}, test accuracy "
        f"{result['test_accuracy']:.1%}; optimizer state per rank {result['state_bytes']} "
        f"bytes; replicas identical: {result['replicas_identical']}")
    if out and rank == 0:
        with open(out, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="a short run (100 steps)")
    parser.add_argument("--out", help="rank 0 writes the loss curve and results (JSON) here")
    parser.add_argument("--plain", action="store_true",
                        help="one process with a plain fm.AdamW (the reference)")
    cli = parser.parse_args()
    main(cli.steps, cli.quick, cli.out, cli.plain)
