"""A dense NumPy network whose backward pass writes into arrays the caller owns.

:class:`Net`: no hidden layer = linear / logistic regression, one hidden layer = MLP;
forward and backward written by hand; the gradients go into arrays the caller owns
(views of a ``FlatParams.grad`` buffer on the fast path), and the work buffers are
reused from step to step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Net"]

_EVAL_CHUNK = 8192


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
