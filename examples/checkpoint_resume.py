"""Save a training run half-way, resume it in a fresh process state, get the same bits.

A run of ``2 * k`` steps is compared with a run that stops after ``k`` steps, writes
a checkpoint (the parameters and the optimizer state), rebuilds the model and the
optimizer from scratch, loads the checkpoint and takes the remaining ``k`` steps.
Because the optimizer state, the step counter (bias corrections) and the host-side
state (e.g. NAdam's running ``mu_product``) are all restored, and the minibatch of
step ``t`` depends on ``t`` only, the resumed parameters equal the uninterrupted
ones bit for bit.

The checkpoint uses ``opt.save(path)`` / ``opt.load(path)`` (one ``.npz`` holding the
optimizer state and, by default, the parameters) when this version of fastmoments
has them; otherwise ``opt.state_dict()`` is written with ``np.savez``
(arrays as entries, everything else as one JSON string) and read back with
``np.load(allow_pickle=False)``, rebuilding the dict for ``opt.load_state_dict``.

Run::

    python examples/checkpoint_resume.py [--steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import numpy as np

import fastmoments as fm

N, DIM, CLASSES, BATCH = 512, 8, 4, 32


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, DIM))
    y = (X @ rng.normal(size=(DIM, CLASSES))).argmax(axis=1)
    return X, y


def new_model(seed: int = 0) -> fm.FlatParams:
    """Softmax regression: W (DIM x CLASSES) and b, packed in one flat buffer."""
    rng = np.random.default_rng(seed)
    return fm.FlatParams([rng.normal(size=(DIM, CLASSES)) * 0.1, np.zeros(CLASSES)])


def gradients(flat: fm.FlatParams, X: np.ndarray, y: np.ndarray) -> None:
    """Cross-entropy gradients of the batch, written into ``flat.grads``."""
    W, b = flat.params
    gW, gb = flat.grads
    z = X @ W + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    np.matmul(X.T, p, out=gW)
    np.sum(p, axis=0, out=gb)


def train(opt: Any, flat: fm.FlatParams, X: np.ndarray, y: np.ndarray, stop: int,
          seed: int = 0) -> None:
    """Step until ``opt.step_count == stop``; the batch of step t depends only on t."""
    while opt.step_count < stop:
        rng = np.random.default_rng([seed, opt.step_count])
        idx = rng.integers(0, len(y), size=BATCH)
        gradients(flat, X[idx], y[idx])
        opt.step()


# ---------------------------------------------------- checkpoint without opt.save
def save_checkpoint(path: str, opt: Any, flat: fm.FlatParams) -> None:
    """Parameters + ``opt.state_dict()`` in one ``.npz`` (no pickles)."""
    arrays: dict[str, np.ndarray] = {"params": flat.data}

    def pack(obj: Any, key: str) -> Any:  # arrays become entries, the rest JSON
        if isinstance(obj, np.ndarray):
            arrays[key] = obj
            return {"__array__": key}
        if isinstance(obj, dict):
            return {k: pack(v, f"{key}.{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [pack(v, f"{key}.{i}") for i, v in enumerate(obj)]
        return obj

    meta = pack(opt.state_dict(), "sd")
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def load_checkpoint(path: str, opt: Any, flat: fm.FlatParams) -> None:
    """Inverse of :func:`save_checkpoint`: restore the parameters and the optimizer."""
    with np.load(path, allow_pickle=False) as archive:

        def unpack(obj: Any) -> Any:
            if isinstance(obj, dict):
                if set(obj) == {"__array__"}:
                    return archive[obj["__array__"]]
                return {k: unpack(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [unpack(v) for v in obj]
            return obj

        state = unpack(json.loads(str(archive["meta"])))
        opt.load_state_dict(state)  # validates everything before changing anything
        flat.data[:] = archive["params"]


# --------------------------------------------------------------------- the demo
OPTIMIZERS = {
    "Adam": lambda flat: fm.Adam(flat, lr=1e-2),
    "NAdam": lambda flat: fm.NAdam(flat, lr=1e-2),  # has host-side state (mu_product)
    "Yogi": lambda flat: fm.Yogi(flat, lr=1e-2),
    "SGD+momentum": lambda flat: fm.SGD(flat, lr=0.1, momentum=0.9, nesterov=True),
}


def resume_matches(make, steps: int, folder: str, use_save: bool, seed: int = 0) -> bool:
    X, y = make_data(seed)
    half = steps // 2

    # 1. the uninterrupted run
    flat = new_model(seed)
    opt = make(flat)
    train(opt, flat, X, y, steps, seed)
    reference = flat.data.copy()
    reference_state = opt.state_dict()

    # 2. stop half-way and write a checkpoint
    flat = new_model(seed)
    opt = make(flat)
    train(opt, flat, X, y, half, seed)
    path = os.path.join(folder, "checkpoint.npz")
    if use_save:
        opt.save(path)
    else:
        save_checkpoint(path, opt, flat)
    del flat, opt

    # 3. a fresh model and optimizer (different arrays, step_count 0), then resume
    flat = new_model(seed + 1)  # deliberately a different initialization
    opt = make(flat)
    if use_save:
        opt.load(path)
    else:
        load_checkpoint(path, opt, flat)
    assert opt.step_count == half
    train(opt, flat, X, y, steps, seed)

    same_state = all(
        np.array_equal(a, b)
        for sa, sb in zip(reference_state["state"], opt.state_dict()["state"], strict=True)
        for a, b in zip(sa.values(), sb.values(), strict=True)
    )
    return bool(np.array_equal(flat.data, reference)) and same_state


def main(steps: int = 200, quick: bool = False, use_save: bool | None = None) -> bool:
    """Check resume == uninterrupted for each optimizer.

    Parameters
    ----------
    use_save
        Use ``opt.save`` / ``opt.load`` (default: when the optimizers have them).

    Returns
    -------
    bool
        True when every resumed run equals its uninterrupted twin bit for bit.
    """
    if quick:
        steps = min(steps, 40)
    if use_save is None:
        use_save = hasattr(fm.Adam, "save") and hasattr(fm.Adam, "load")
    how = "opt.save / opt.load" if use_save else "state_dict + np.savez / np.load"
    print(f"{steps} steps uninterrupted vs {steps // 2} + checkpoint ({how}) + "
          f"{steps - steps // 2}\n")
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        for name, make in OPTIMIZERS.items():
            same = resume_matches(make, steps, folder, use_save)
            ok &= same
            print(f"{name:<13} resumed == uninterrupted, bit for bit: {same}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a short run (40 steps)")
    cli = parser.parse_args()
    raise SystemExit(0 if main(cli.steps, cli.quick) else 1)
