"""Final training loss with float32, bfloat16 and int8 optimizer state, over several seeds.

Issue 22's accuracy target: with ``state_dtype="bfloat16"`` the final loss is within 1 %
of float32 state, with ``"int8"`` within 2 %, on the demo's task and on the digits MLP,
over three seeds. This script trains each problem once per seed, optimizer and state
dtype, from the same initialization on the same minibatches, and prints the final loss
on the whole training set (mean over the seeds and per seed) and its relative distance
to float32 state:

- ``spiral``: the demo's MLP problem (``fastmoments.tools.demo.app.make_problem("mlp")``,
  a 3-arm spiral of 600 points), float32, one tanh layer of ``--hidden-spiral`` units
  (2048 by default, so that its first weight matrix, 2 x 2048, has the 4096 elements
  from which int8 state is quantized);
- ``digits``: the data and the model of ``examples/digits_mlp.py`` (scikit-learn's 8x8
  digits, 80 % for training, one tanh layer of 64 units, softmax), in float32, built with
  the demo's ``Net``; its first weight matrix (64 x 64) is quantized, the rest is below
  4096 elements and keeps float32 state (as in bitsandbytes).

With ``--bnb``, bitsandbytes' CPU ``Adam8bit`` / ``AdamW8bit`` (block 256, tensors of 4096
elements or more quantized) runs the same training too; with ``--torchao``, torchao's
``Adam8bit`` / ``AdamW8bit`` (block 256, tensors of 4096 elements or more that are a whole
number of blocks quantized: every tensor quantized here is; compiled by ``torch.compile``
on its first step, once per tensor shape and optimizer).

Run::

    python tools/precision_accuracy.py [--seeds 0,1,2] [--bnb] [--torchao] [--json out.json]
        [--markdown]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import fastmoments as fm
from fastmoments.tools.demo.app import make_problem
from fastmoments.tools.demo.data import Dataset, batches
from fastmoments.tools.demo.models import Net

STATES = ("float32", "bfloat16", "int8")
#: the issue's targets: |final loss / float32's - 1| at most this, per state dtype
TARGETS = {"bfloat16": 0.01, "int8": 0.02}
#: per problem: optimizer name -> (class, keywords); the learning rates of the examples
OPTIMIZERS = {
    "spiral": {"Adam": (fm.Adam, {"lr": 1e-3}),
               "AdamW": (fm.AdamW, {"lr": 1e-3, "weight_decay": 1e-2})},
    "digits": {"Adam": (fm.Adam, {"lr": 3e-3}),
               "AdamW": (fm.AdamW, {"lr": 3e-3, "weight_decay": 1e-2})},
}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _digits(seed: int) -> Dataset:
    """The training split of ``examples/digits_mlp.py`` (standardized, float32)."""
    spec = importlib.util.spec_from_file_location("fastmoments_example_digits_mlp",
                                                  EXAMPLES / "digits_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    X, y, _, _, name = module.load_data(seed)
    if name != "digits":
        raise RuntimeError("the digits problem needs scikit-learn (pip install scikit-learn)")
    return Dataset(np.ascontiguousarray(X, dtype=np.float32), y, "classification", name)


def problem(name: str, seed: int, hidden: int | None = None) -> tuple[Dataset, Net]:
    """The data and a freshly initialized float32 model of problem ``name`` for ``seed``."""
    if name == "spiral":
        return make_problem("mlp", hidden=hidden or 2048, seed=seed, dtype=np.float32)
    if name == "digits":
        data = _digits(seed)
        net = Net(data.dim, data.n_out, hidden=hidden or 64, activation="tanh",
                  head="softmax", seed=seed, dtype=np.float32)
        return data, net
    raise ValueError(f"problem: expected 'spiral' or 'digits', got {name!r}")


def final_loss(name: str, optimizer: str, state: str, seed: int, steps: int,
               batch_size: int = 64, hidden: int | None = None) -> dict[str, float]:
    """Train once; the final loss and accuracy on the whole training set.

    ``state`` is ``"float32"`` (the parameters' dtype: no ``state_dtype``), ``"bfloat16"``
    or ``"int8"``. The seed fixes the data, the initialization and the batch order, so the
    runs of one seed differ only in their state dtype.
    """
    data, net = problem(name, seed, hidden)
    if state in PEERS:
        return _peer_final_loss(state, name, optimizer, data, net, seed, steps, batch_size)
    flat = fm.FlatParams(net.copy_params())
    net.bind(flat.params, flat.grads)
    cls, kwargs = OPTIMIZERS[name][optimizer]
    options = {} if state == "float32" else {"state_dtype": state}
    opt = cls(flat, **kwargs, **options)
    order = batches(data.n, batch_size, seed)
    for _ in range(steps):
        idx = next(order)
        net.loss_grad(data.X[idx], data.y[idx])
        opt.step()
    state_bytes = sum(np.asarray(v).nbytes for v in opt.state_dict()["state"][0].values()
                      if isinstance(v, np.ndarray))
    return {"loss": net.loss(data.X, data.y), "accuracy": net.accuracy(data.X, data.y),
            "state_bytes_per_param": state_bytes / flat.data.size}


def _bnb_optimizer(optimizer: str, params: list, kwargs: dict[str, Any]) -> Any:
    import bitsandbytes as bnb

    cls = {"Adam": bnb.optim.Adam8bit, "AdamW": bnb.optim.AdamW8bit}[optimizer]
    return cls(params, min_8bit_size=4096, **kwargs)  # fastmoments' threshold


def _torchao_optimizer(optimizer: str, params: list, kwargs: dict[str, Any]) -> Any:
    from fastmoments.tools.bench.cases import import_torchao_optim

    optim = import_torchao_optim()
    cls = {"Adam": optim.Adam8bit, "AdamW": optim.AdamW8bit}[optimizer]
    return cls(params, block_size=256, **kwargs)  # its default, stated


#: the 8-bit optimizers of other libraries: state label -> optimizer factory
PEERS = {"bnb-int8": _bnb_optimizer, "torchao-int8": _torchao_optimizer}


def _tensor_bytes(t: Any) -> int:
    # torchao's 8-bit state is a tensor subclass whose stored form is codes, scales, map
    parts = [getattr(t, k) for k in ("codes", "scale", "qmap")] if hasattr(t, "codes") else [t]
    return sum(x.numel() * x.element_size() for x in parts)


def _peer_final_loss(peer: str, name: str, optimizer: str, data: Dataset, net: Net,
                     seed: int, steps: int, batch_size: int) -> dict[str, float]:
    """:func:`final_loss` with another library's 8-bit ``Adam`` / ``AdamW`` (CPU,
    :data:`PEERS`): the model computes in NumPy views of the torch tensors' memory."""
    import torch

    params = [torch.nn.Parameter(torch.from_numpy(p)) for p in net.copy_params()]
    grads = [np.zeros_like(p) for p in net.params]
    net.bind([p.data.numpy() for p in params], grads)
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g)
    _, kwargs = OPTIMIZERS[name][optimizer]
    opt = PEERS[peer](optimizer, params, kwargs)
    order = batches(data.n, batch_size, seed)
    for _ in range(steps):
        idx = next(order)
        net.loss_grad(data.X[idx], data.y[idx])
        opt.step()
    state_bytes = sum(_tensor_bytes(v) for st in opt.state.values()
                      for k, v in st.items() if k != "step" and isinstance(v, torch.Tensor))
    return {"loss": net.loss(data.X, data.y), "accuracy": net.accuracy(data.X, data.y),
            "state_bytes_per_param": state_bytes / net.numel}


def measure(problems: Sequence[str] = ("spiral", "digits"), seeds: Sequence[int] = (0, 1, 2),
            steps: dict[str, int] | None = None, hidden: dict[str, int] | None = None,
            optimizers: Sequence[str] = ("Adam", "AdamW"), bnb: bool = False,
            torchao: bool = False) -> list[dict[str, Any]]:
    """One row per problem, optimizer and state dtype.

    Returns
    -------
    list of dict
        ``problem``, ``optimizer``, ``state``, ``steps``, ``seeds``, ``losses`` (per seed),
        ``mean_loss``, ``accuracy`` (mean), ``state_bytes_per_param``, and, for the reduced
        states, ``rel_mean`` (mean loss over float32's mean, minus 1), ``rel_worst`` (the
        largest ``|loss / float32's - 1|`` of a single seed) and ``target``. With
        ``bnb``, a row ``"bnb-int8"`` too: bitsandbytes' 8-bit optimizer (held to the
        int8 target); with ``torchao``, a row ``"torchao-int8"``: torchao's.
    """
    steps = {"spiral": 1500, "digits": 600, **(steps or {})}
    hidden = hidden or {}
    rows: list[dict[str, Any]] = []
    for name in problems:
        for optimizer in optimizers:
            base = None
            peers = (("bnb-int8",) if bnb else ()) + (("torchao-int8",) if torchao else ())
            for state in STATES + peers:
                runs = [final_loss(name, optimizer, state, s, steps[name],
                                   hidden=hidden.get(name)) for s in seeds]
                losses = [r["loss"] for r in runs]
                row = {"problem": name, "optimizer": optimizer, "state": state,
                       "steps": steps[name], "seeds": list(seeds), "losses": losses,
                       "mean_loss": float(np.mean(losses)),
                       "accuracy": float(np.mean([r["accuracy"] for r in runs])),
                       "state_bytes_per_param": runs[0]["state_bytes_per_param"]}
                if base is None:
                    base = row
                else:
                    row["rel_mean"] = row["mean_loss"] / base["mean_loss"] - 1.0
                    row["rel_worst"] = max(abs(a / b - 1.0) for a, b in
                                           zip(losses, base["losses"], strict=True))
                    row["target"] = TARGETS["int8" if state in PEERS else state]
                rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| problem | optimizer | state | state B/param | final loss, mean (per seed) "
             "| vs float32, mean | worst seed | target | accuracy |",
             "|---|---|---|--:|---|--:|--:|--:|--:|"]
    for r in rows:
        per_seed = ", ".join(f"{x:.4f}" for x in r["losses"])
        rel = (f"{r['rel_mean']:+.2%} | {r['rel_worst']:.2%} | {r['target']:.0%}"
               if "rel_mean" in r else "- | - | -")
        lines.append(f"| {r['problem']} | {r['optimizer']} | {r['state']} | "
                     f"{r['state_bytes_per_param']:.3f} | {r['mean_loss']:.4f} ({per_seed}) | "
                     f"{rel} | {r['accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="spiral,digits")
    parser.add_argument("--optimizers", default="Adam,AdamW")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps-spiral", type=int, default=1500)
    parser.add_argument("--steps-digits", type=int, default=600)
    parser.add_argument("--hidden-spiral", type=int, default=2048)
    parser.add_argument("--hidden-digits", type=int, default=64)
    parser.add_argument("--bnb", action="store_true",
                        help="also bitsandbytes' Adam8bit / AdamW8bit (CPU)")
    parser.add_argument("--torchao", action="store_true",
                        help="also torchao's Adam8bit / AdamW8bit (CPU, torch.compile)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    cli = parser.parse_args(argv)
    start = time.perf_counter()
    rows = measure(cli.problems.split(","), [int(s) for s in cli.seeds.split(",")],
                   {"spiral": cli.steps_spiral, "digits": cli.steps_digits},
                   {"spiral": cli.hidden_spiral, "digits": cli.hidden_digits},
                   cli.optimizers.split(","), cli.bnb, cli.torchao)
    if cli.markdown:
        print(markdown(rows))
    else:
        for r in rows:
            rel = (f"{r['rel_mean']:+8.2%} (worst seed {r['rel_worst']:.2%}, target "
                   f"{r['target']:.0%})" if "rel_mean" in r else "")
            print(f"{r['problem']:<7} {r['optimizer']:<6} {r['state']:<12} "
                  f"{r['state_bytes_per_param']:6.3f} B/p  loss {r['mean_loss']:.4f}  {rel}")
    print(f"({time.perf_counter() - start:.0f} s)")
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
