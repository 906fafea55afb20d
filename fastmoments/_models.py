"""Small NumPy models and built-in data sets for the demo and the examples.

Everything here is plain NumPy: deterministic data generators (a 2-D spiral,
Gaussian blobs, a noisy linear target), a reader for a user's CSV / ``.npz`` table,
and :class:`Net`, a dense network (no hidden layer = linear / logistic regression,
one hidden layer = MLP) whose forward and backward passes are written by hand and
write the gradients into arrays the caller owns (views of a ``FlatParams.grad``
buffer on the fast path), reusing its work buffers from step to step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DataError", "Dataset", "Net", "spiral", "blobs", "linear", "load_table", "batches",
]

_EVAL_CHUNK = 8192


class DataError(ValueError):
    """A data file that cannot be used (missing, unreadable, wrong shape, not numeric)."""


class Dataset:
    """Features, targets and what kind of task they make.

    Parameters
    ----------
    X
        Features, shape ``(n, d)``.
    y
        Targets, shape ``(n,)``: class indices ``0..k-1`` (int64) for classification,
        floats for regression.
    task
        ``"classification"`` or ``"regression"``.
    name
        A short description for printing.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, task: str, name: str) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task: expected 'classification' or 'regression', got {task!r}")
        self.X = X
        self.y = y
        self.task = task
        self.name = name
        self.classes = int(y.max()) + 1 if task == "classification" else 0

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_out(self) -> int:
        """Output width of a model for this data: classes, or 1 for regression."""
        return self.classes if self.task == "classification" else 1

    def astype(self, dtype: Any) -> Dataset:
        """The same data with features (and regression targets) in ``dtype``."""
        y = self.y if self.task == "classification" else self.y.astype(dtype)
        return Dataset(np.ascontiguousarray(self.X, dtype=dtype), y, self.task, self.name)

    def __repr__(self) -> str:
        kind = f"{self.classes} classes" if self.task == "classification" else "regression"
        return f"Dataset({self.name!r}, n={self.n}, dim={self.dim}, {kind})"


# ------------------------------------------------------------------- built-in data
def spiral(n_per_class: int = 200, classes: int = 3, noise: float = 0.25, twist: float = 6.0,
           seed: int = 0, dtype: Any = np.float64) -> Dataset:
    """Interleaved 2-D spiral arms, one per class (the classic "not linearly separable" toy).

    Parameters
    ----------
    n_per_class
        Points per arm.
    classes
        Number of arms (classes).
    noise
        Standard deviation of the angular jitter (radians).
    twist
        The angle (radians) each arm turns through from the centre to the rim.
    seed
        Seed of the NumPy generator: the same seed gives the same data.
    dtype
        Dtype of the features.
    """
    rng = np.random.default_rng(seed)
    radius = np.tile(np.linspace(0.05, 1.0, n_per_class), classes)
    label = np.repeat(np.arange(classes), n_per_class)
    angle = (label * (2.0 * np.pi / classes) + radius * twist
             + rng.normal(0.0, noise, size=radius.shape))
    X = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1) * 2.0
    return Dataset(X.astype(dtype), label.astype(np.int64), "classification",
                   f"spiral ({classes} arms, {n_per_class} points each)")


def blobs(n: int = 600, classes: int = 3, dim: int = 2, spread: float = 1.0, seed: int = 0,
          dtype: Any = np.float64) -> Dataset:
    """Isotropic Gaussian clusters, one per class, centres on a circle of radius 2.

    Parameters
    ----------
    n
        Total number of points (split as evenly as possible among the classes).
    classes
        Number of clusters.
    dim
        Feature dimension (at least 2; the centres lie in the first two coordinates).
    spread
        Standard deviation of each cluster.
    seed, dtype
        As in :func:`spiral`.
    """
    if dim < 2:
        raise ValueError(f"dim: expected >= 2, got {dim}")
    rng = np.random.default_rng(seed)
    label = np.arange(n) % classes
    angles = 2.0 * np.pi * np.arange(classes) / classes
    centres = np.zeros((classes, dim))
    centres[:, 0] = 2.0 * np.cos(angles)
    centres[:, 1] = 2.0 * np.sin(angles)
    X = centres[label] + rng.normal(0.0, spread, size=(n, dim))
    return Dataset(X.astype(dtype), label.astype(np.int64), "classification",
                   f"gaussian blobs ({classes} classes, dim {dim})")


def linear(n: int = 1000, dim: int = 5, noise: float = 0.1, seed: int = 0,
           dtype: Any = np.float64) -> Dataset:
    """A noisy linear target ``y = X w + b + noise`` with ``X`` standard normal.

    The weights are ``w = (1, -1, 2, -2, ...) / 2`` and ``b = 0.5``; the best
    achievable squared-error loss (``mean(r**2) / 2``) is about ``noise**2 / 2``.
    """
    rng = np.random.default_rng(seed)
    w = np.array([(1.0 + k // 2) * (-1.0) ** k for k in range(dim)]) / 2.0
    X = rng.normal(size=(n, dim))
    y = X @ w + 0.5 + rng.normal(0.0, noise, size=n)
    return Dataset(X.astype(dtype), y.astype(dtype), "regression",
                   f"linear target (dim {dim}, noise {noise:g})")


# -------------------------------------------------------------------- data files
def load_table(path: str | os.PathLike, task: str = "auto", dtype: Any = np.float64,
               standardize: bool = True) -> Dataset:
    """Read a table whose last column is the target: ``.csv`` (header optional) or ``.npz``.

    An ``.npz`` holds either arrays ``X`` and ``y``, or a single 2-D array.

    Parameters
    ----------
    path
        The file.
    task
        ``"classification"``, ``"regression"`` or ``"auto"``: classification when
        every target is a whole number and there are at most 50 distinct ones.
    dtype
        Dtype of the features.
    standardize
        Scale every feature column to mean 0 and standard deviation 1.

    Raises
    ------
    DataError
        With a message that says what is wrong with the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise DataError(f"data file {path!r} is a directory")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        X, y = _read_npz(path)
    elif ext in (".csv", ".txt"):
        table = _read_csv(path)
        X, y = table[:, :-1], table[:, -1]
    else:
        raise DataError(f"data file {path!r}: expected a .csv or .npz file, got "
                        f"{ext or 'no extension'!r}")
    if X.shape[0] < 2:
        raise DataError(f"data file {path!r}: expected at least 2 rows, got {X.shape[0]}")
    if X.shape[1] < 1:
        raise DataError(f"data file {path!r}: expected at least 2 columns (features, then the "
                        "target), got 1")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise DataError(f"data file {path!r}: contains NaN, Inf or empty fields")
    y = np.asarray(y, dtype=np.float64)
    whole = bool(np.all(y == np.round(y)))
    distinct = np.unique(y)
    if task == "auto":
        task = "classification" if whole and 2 <= distinct.size <= 50 else "regression"
    elif task == "classification":
        if not whole:
            raise DataError(f"data file {path!r}: classification needs whole-number class "
                            "labels in the last column")
        if distinct.size < 2:
            raise DataError(f"data file {path!r}: classification needs at least 2 classes, "
                            f"the last column has {distinct.size}")
    elif task != "regression":
        raise ValueError(f"task: expected 'auto', 'classification' or 'regression', got {task!r}")
    X = X.astype(np.float64)
    if standardize:
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std[std == 0] = 1.0
        X = (X - mean) / std
    if task == "classification":
        target = np.searchsorted(distinct, y).astype(np.int64)
    else:
        target = y.astype(dtype)
    name = os.path.basename(path)
    return Dataset(np.ascontiguousarray(X, dtype=dtype), target, task, name)


def _read_csv(path: str) -> np.ndarray:
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    if not first.strip():
        raise DataError(f"data file {path!r} is empty")
    header = 0
    try:
        [float(x) for x in first.split(",")]
    except ValueError:
        header = 1  # a header row of column names
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"data file {path!r}: expected comma-separated numbers ({exc})") from None
    if table.size == 0:
        raise DataError(f"data file {path!r} has no data rows")
    if table.shape[1] < 2:
        raise DataError(f"data file {path!r}: expected at least 2 columns (features, then the "
                        f"target), got {table.shape[1]}")
    return table


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise DataError(f"data file {path!r}: not a readable .npz archive ({exc})") from None
    if "X" in arrays and "y" in arrays:
        X, y = arrays["X"], arrays["y"]
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise DataError(f"data file {path!r}: expected X of shape (n, d) and y of shape (n,), "
                            f"got {X.shape} and {y.shape}")
    elif len(arrays) == 1:
        (table,) = arrays.values()
        if table.ndim != 2 or table.shape[1] < 2:
            raise DataError(f"data file {path!r}: expected one 2-D array with at least 2 columns "
                            f"(features, then the target), got shape {table.shape}")
        X, y = table[:, :-1], table[:, -1]
    else:
        raise DataError(f"data file {path!r}: expected arrays 'X' and 'y' or a single 2-D array, "
                        f"found {sorted(arrays)}")
    for name, a in (("features", X), ("target", y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DataError(f"data file {path!r}: the {name} are not numeric (dtype {a.dtype})")
    return X.astype(np.float64), y.astype(np.float64)


def batches(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray | None]:
    """Endless minibatch indices: shuffled epochs without replacement.

    Yields ``None`` (meaning "the whole data set") when ``batch_size`` is 0 or at
    least ``n``. The same ``seed`` gives the same sequence, so every optimizer of a
    comparison sees the same batches.
    """
    if batch_size <= 0 or batch_size >= n:
        while True:
            yield None
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    while True:
        order = rng.permutation(n)
        for k in range(per_epoch):
            yield order[k * batch_size:(k + 1) * batch_size]


# ------------------------------------------------------------------------- model
class Net:
    """A dense network with hand-written forward and backward passes.

    ``hidden=0`` gives a linear model (linear regression with the ``"mse"`` head,
    multinomial logistic regression with the ``"softmax"`` head); ``hidden>0`` one
    hidden layer with ``tanh`` or ``relu``.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    hidden
        Width of the hidden layer (0: none).
    activation
        ``"tanh"`` or ``"relu"``.
    head
        ``"softmax"`` (cross-entropy on integer class labels) or ``"mse"``
        (``mean((out - y)**2) / 2`` on float targets; ``n_out`` must be 1).
    seed
        Seed of the initialization (scaled normal weights, zero biases).
    dtype
        float32 or float64.

    Attributes
    ----------
    params : list of ndarray
        ``[W1, b1]`` or ``[W1, b1, W2, b2]``; replace with :meth:`bind`.
    grads : list of ndarray
        Same shapes; :meth:`loss_grad` writes into them in place.
    """

    def __init__(self, n_in: int, n_out: int, hidden: int = 0, activation: str = "tanh",
                 head: str = "softmax", seed: int = 0, dtype: Any = np.float64) -> None:
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation: expected 'tanh' or 'relu', got {activation!r}")
        if head not in ("softmax", "mse"):
            raise ValueError(f"head: expected 'softmax' or 'mse', got {head!r}")
        if head == "mse" and n_out != 1:
            raise ValueError("head 'mse' expects n_out == 1")
        self.hidden = int(hidden)
        self.activation = activation
        self.head = head
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        widths = [n_in, hidden, n_out] if hidden > 0 else [n_in, n_out]
        params = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            gain = np.sqrt(2.0) if activation == "relu" and fan_out == hidden else 1.0
            params.append((rng.normal(size=(fan_in, fan_out)) * gain / np.sqrt(fan_in))
                          .astype(self.dtype))
            params.append(np.zeros(fan_out, dtype=self.dtype))
        self.params: list[np.ndarray] = params
        self.grads: list[np.ndarray] = [np.zeros_like(p) for p in params]
        self._work: dict[int, tuple[np.ndarray, ...]] = {}

    def bind(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Use these arrays (e.g. ``FlatParams.params`` / ``.grads`` views) from now on."""
        params, grads = list(params), list(grads)
        for p, mine in zip(params, self.params, strict=True):
            if p.shape != mine.shape:
                raise ValueError(f"bind: expected shape {mine.shape}, got {p.shape}")
        for g, mine in zip(grads, self.params, strict=True):
            if g.shape != mine.shape:
                raise ValueError(f"bind: expected gradient shape {mine.shape}, got {g.shape}")
        self.params, self.grads = params, grads

    def copy_params(self) -> list[np.ndarray]:
        """Copies of the current parameters (e.g. one initialization for several runs)."""
        return [p.copy() for p in self.params]

    @property
    def numel(self) -> int:
        return sum(int(p.size) for p in self.params)

    # ---------------------------------------------------------------- passes
    def _buffers(self, batch: int) -> tuple[np.ndarray, ...]:
        work = self._work.get(batch)
        if work is None:
            n_out = self.params[-1].shape[0]
            hidden = (np.empty((batch, self.hidden), dtype=self.dtype) if self.hidden
                      else np.empty((batch, 0), dtype=self.dtype))
            work = (hidden, np.empty((batch, n_out), dtype=self.dtype),
                    np.arange(batch), np.empty((batch, 1), dtype=self.dtype))
            self._work = {batch: work}  # one batch size at a time (the training one)
        return work

    def forward(self, X: np.ndarray, out: np.ndarray | None = None,
                hidden: np.ndarray | None = None) -> np.ndarray:
        """The outputs (logits or predictions) for ``X``, shape ``(n, n_out)``."""
        params = self.params
        if self.hidden:
            W1, b1, W2, b2 = params
            h = np.matmul(X, W1, out=hidden)
            h += b1
            if self.activation == "tanh":
                np.tanh(h, out=h)
            else:
                np.maximum(h, 0, out=h)
            o = np.matmul(h, W2, out=out)
            o += b2
        else:
            W1, b1 = params
            o = np.matmul(X, W1, out=out)
            o += b1
        return o

    def loss_grad(self, X: np.ndarray, y: np.ndarray) -> float:
        """The mean loss on ``(X, y)``; its gradients are written into ``self.grads``."""
        n = X.shape[0]
        hidden, out, rows, column = self._buffers(n)
        o = self.forward(X, out=out, hidden=hidden if self.hidden else None)
        loss = self._head_backward(o, y, rows, column)  # o becomes dLoss/do
        grads = self.grads
        if self.hidden:
            W2 = self.params[2]
            gW1, gb1, gW2, gb2 = grads
            np.matmul(hidden.T, o, out=gW2)
            np.sum(o, axis=0, out=gb2)
            dh = np.matmul(o, W2.T)  # (batch, hidden); the one allocation per step
            if self.activation == "tanh":
                hidden *= hidden
                np.subtract(1, hidden, out=hidden)
                dh *= hidden
            else:
                dh *= hidden > 0
            np.matmul(X.T, dh, out=gW1)
            np.sum(dh, axis=0, out=gb1)
        else:
            gW1, gb1 = grads
            np.matmul(X.T, o, out=gW1)
            np.sum(o, axis=0, out=gb1)
        return loss

    def _head_backward(self, o: np.ndarray, y: np.ndarray, rows: np.ndarray,
                       column: np.ndarray) -> float:
        n = o.shape[0]
        if self.head == "mse":
            o -= y.reshape(n, 1)
            loss = 0.5 * float(np.vdot(o, o)) / n
            o /= n
            return loss
        # softmax cross-entropy, shifted by the row max for stability
        np.max(o, axis=1, keepdims=True, out=column)
        o -= column
        picked = o[rows, y]
        np.exp(o, out=o)
        np.sum(o, axis=1, keepdims=True, out=column)
        loss = float(np.log(column).sum() - picked.sum()) / n
        o /= column
        o[rows, y] -= 1
        o /= n
        return loss

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        """The mean loss on the whole of ``(X, y)`` (evaluated in chunks), no gradients."""
        total = 0.0
        for start in range(0, X.shape[0], _EVAL_CHUNK):
            o = self.forward(X[start:start + _EVAL_CHUNK]).astype(np.float64)
            t = y[start:start + _EVAL_CHUNK]
            if self.head == "mse":
                r = o[:, 0] - t
                total += 0.5 * float(np.dot(r, r))
            else:
                o -= o.max(axis=1, keepdims=True)
                total += float(np.log(np.exp(o).sum(axis=1)).sum()
                               - o[np.arange(o.shape[0]), t].sum())
        return total / X.shape[0]

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        """Fraction of rows whose largest output is the label (softmax head only)."""
        if self.head != "softmax":
            raise ValueError("accuracy is defined for the softmax head only")
        hits = 0
        for start in range(0, X.shape[0], _EVAL_CHUNK):
            o = self.forward(X[start:start + _EVAL_CHUNK])
            hits += int(np.count_nonzero(o.argmax(axis=1) == y[start:start + _EVAL_CHUNK]))
        return hits / X.shape[0]
