"""Built-in data sets and a reader for the user's own table (plain NumPy).

Deterministic generators (a 2-D spiral, Gaussian blobs, a noisy linear target), a
reader for a CSV / ``.npz`` table, and the mini-batch order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["DataError", "Dataset", "spiral", "blobs", "linear", "load_table", "batches"]

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
