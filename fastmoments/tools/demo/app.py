"""Train a small NumPy model with several optimizers and compare them.

Every optimizer starts from the same initialization and sees the same minibatches.
The model's forward and backward passes are plain NumPy; the gradients are written
into the views of one flat buffer (FlatParams), so each optimizer step is one fused
kernel call. Printed: the training loss at ~10 checkpoints per optimizer, and a
summary with the final loss, the accuracy (classification), the time of the
optimizer step alone (median, microseconds) and the total time.

problems (--problem):
  mlp     one-hidden-layer MLP classifier on a 3-arm 2-D spiral (default)
  logreg  multinomial logistic regression on Gaussian blobs
  linreg  linear regression on a noisy linear target
  With --data FILE (.csv or .npz, last column = target) the model is trained on
  your table instead (features are standardized; --task picks classification or
  regression, by default from the target column).

The optimizers: every class of fastmoments (adam, adopt, ademamix, adan,
schedulefreeadamw, ...), plus momentum, nesterov (SGD), amsgrad (Adam) and the
cautious c-adamw, c-lion (cautious=True). Schedule-Free rules are evaluated at
their average (opt.eval() before each evaluation, opt.train() after).

examples:
  fastmoments demo
  fastmoments demo --optimizers adam,amsgrad,yogi --steps 2000 --lr 3e-3
  fastmoments demo --optimizers adamw,c-adamw,adopt,ademamix,adan,schedulefreeadamw
  fastmoments demo --problem linreg --no-flat --dtype float32
  fastmoments demo --data table.csv --plot curves.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...flat import FlatParams
from .data import DataError, Dataset, batches, blobs, linear, load_table, spiral
from .models import Net

__all__ = [
    "add_arguments", "run", "compare", "make_problem", "Preset", "Result", "presets",
    "DEFAULT_OPTIMIZERS", "spiral", "blobs", "linear", "load_table", "Net", "Dataset",
]

DEFAULT_OPTIMIZERS = ("momentum", "rmsprop", "adam", "adamw", "yogi")
DEFAULT_PLOT = "fastmoments-demo.png"


# ----------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class Preset:
    """One optimizer choice of the demo: a class, its keywords and a default lr."""

    name: str
    cls: type
    lr: float
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    def build(self, params: Any, lr: float | None = None) -> Any:
        """The optimizer over ``params`` (with ``lr`` instead of the preset's, if given)."""
        return self.cls(params, lr=self.lr if lr is None else lr, **self.kwargs)


# Learning rates that work on the built-in problems (and are sensible starting points
# for small standardized problems); classes not listed use their own default lr.
_LR = {
    "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.1, "rmsprop": 1e-2,
    "adadelta": 1.0, "adam": 1e-2, "amsgrad": 1e-2, "adamw": 1e-2, "adamax": 2e-2,
    "nadam": 1e-2, "radam": 1e-2, "yogi": 1e-2, "lion": 3e-3, "adopt": 1e-2,
    "ademamix": 1e-2, "schedulefreeadamw": 1e-2, "schedulefreesgd": 1.0, "adan": 1e-2,
    "c-adamw": 1e-2, "c-lion": 3e-3,
}


def presets() -> dict[str, Preset]:
    """Every optimizer the demo knows, by lower-case name.

    One entry per optimizer class exported by ``fastmoments`` (``adam``, ``yogi``,
    ...), plus the variants ``momentum`` / ``nesterov`` (SGD with momentum 0.9),
    ``amsgrad`` (Adam with ``amsgrad=True``) and ``c-adamw`` / ``c-lion`` (AdamW and
    Lion with ``cautious=True``).
    """
    import fastmoments

    from ...optim.base import Optimizer

    out: dict[str, Preset] = {}
    for attr in fastmoments.__all__:
        cls = getattr(fastmoments, attr, None)
        if isinstance(cls, type) and issubclass(cls, Optimizer):
            name = attr.lower()
            lr = _LR.get(name, _default_lr(cls))
            out[name] = Preset(name, cls, lr, {}, attr)
    if "sgd" in out:
        sgd = out["sgd"].cls
        out["momentum"] = Preset("momentum", sgd, _LR["momentum"], {"momentum": 0.9},
                                 "SGD+momentum")
        out["nesterov"] = Preset("nesterov", sgd, _LR["nesterov"],
                                 {"momentum": 0.9, "nesterov": True}, "SGD+nesterov")
    if "adam" in out:
        out["amsgrad"] = Preset("amsgrad", out["adam"].cls, _LR["amsgrad"], {"amsgrad": True},
                                "AMSGrad")
    for name, base, label in (("c-adamw", "adamw", "C-AdamW"), ("c-lion", "lion", "C-Lion")):
        if base in out:
            out[name] = Preset(name, out[base].cls, _LR[name], {"cautious": True}, label)
    return out


def _default_lr(cls: type) -> float:
    import inspect

    default = inspect.signature(cls.__init__).parameters.get("lr")
    value = getattr(default, "default", None)
    return float(value) if isinstance(value, (int, float)) else 1e-3


# -------------------------------------------------------------------- problems
def make_problem(problem: str = "mlp", data: str | None = None, task: str = "auto",
                 hidden: int = 64, activation: str = "tanh", seed: int = 0,
                 dtype: Any = np.float64) -> tuple[Dataset, Net]:
    """The data set and a freshly initialized model for a demo problem.

    Parameters
    ----------
    problem
        ``"mlp"``, ``"logreg"`` or ``"linreg"``.
    data
        A ``.csv`` / ``.npz`` file (last column = target) to use instead of the
        built-in data; see :func:`fastmoments.tools.demo.data.load_table`.
    task
        For ``data``: ``"auto"``, ``"classification"`` or ``"regression"``
        (``logreg`` forces classification, ``linreg`` regression).
    hidden, activation
        The MLP's hidden width and nonlinearity.
    seed
        Seeds the built-in data and the initialization.
    dtype
        float32 or float64.

    Raises
    ------
    DataError
        For a data file that cannot be used.
    """
    if problem not in ("mlp", "logreg", "linreg"):
        raise ValueError(f"problem: expected 'mlp', 'logreg' or 'linreg', got {problem!r}")
    if data is not None:
        forced = {"logreg": "classification", "linreg": "regression"}.get(problem, task)
        if task not in ("auto", forced):
            raise DataError(f"--problem {problem} needs --task {forced}, got --task {task}")
        dataset = load_table(data, task=forced, dtype=dtype)
    elif problem == "mlp":
        dataset = spiral(200, classes=3, seed=seed, dtype=dtype)
    elif problem == "logreg":
        dataset = blobs(600, classes=3, dim=2, spread=1.0, seed=seed, dtype=dtype)
    else:
        dataset = linear(1000, dim=5, noise=0.1, seed=seed, dtype=dtype)
    head = "softmax" if dataset.task == "classification" else "mse"
    width = hidden if problem == "mlp" else 0
    net = Net(dataset.dim, dataset.n_out, hidden=width, activation=activation, head=head,
              seed=seed, dtype=dtype)
    return dataset, net


# -------------------------------------------------------------------- training
@dataclass
class Result:
    """What one optimizer did in :func:`compare`."""

    name: str
    label: str
    lr: float
    checkpoints: np.ndarray  # step numbers of the curve (0 = before training)
    curve: np.ndarray  # loss on the whole training set at each checkpoint
    batch_losses: np.ndarray  # minibatch loss of every step taken
    accuracy: float | None  # final training accuracy (classification), else None
    step_us: float  # median time of opt.step() alone, microseconds
    train_s: float  # wall time of the whole training loop
    jit_s: float  # compiling (or loading from numba's cache) the kernels
    diverged: bool = False

    @property
    def initial_loss(self) -> float:
        return float(self.curve[0])

    @property
    def final_loss(self) -> float:
        return float(self.curve[-1])


def _checkpoints(steps: int, count: int = 10) -> np.ndarray:
    return np.unique(np.linspace(0, steps, count + 1).round().astype(np.int64))


def _attach(net: Net, init: list[np.ndarray], flat: bool) -> tuple[Any, list[np.ndarray] | None]:
    """Give ``net`` fresh copies of ``init``; return the optimizer's params and grads."""
    if flat:
        fp = FlatParams([p.copy() for p in init])
        net.bind(fp.params, fp.grads)
        return fp, None
    params = [p.copy() for p in init]
    grads = [np.zeros_like(p) for p in init]
    net.bind(params, grads)
    return params, grads


def _evaluated(opt: Any, evaluate: Callable[[], Any]) -> Any:
    """``evaluate()`` at the parameters a user evaluates: a Schedule-Free optimizer's
    average ``x`` (``opt.eval()`` first, ``opt.train()`` after), else as they are."""
    if not hasattr(opt, "train_mode"):
        return evaluate()
    opt.eval()
    try:
        return evaluate()
    finally:
        opt.train()


def _warm_up(preset: Preset, init: list[np.ndarray], flat: bool, lr: float | None) -> float:
    """Compile (or load from the cache) the kernels this optimizer will use; seconds."""
    start = time.perf_counter()
    zeros = [np.zeros_like(p) for p in init]
    if flat:
        opt = preset.build(FlatParams(zeros), lr)
        opt.step()
    else:
        opt = preset.build(zeros, lr)
        opt.step([np.zeros_like(p) for p in init])
    return time.perf_counter() - start


def compare(
    optimizers: Sequence[str] = DEFAULT_OPTIMIZERS,
    problem: str = "mlp",
    *,
    steps: int = 1000,
    lr: float | None = None,
    batch_size: int = 64,
    hidden: int = 64,
    activation: str = "tanh",
    seed: int = 0,
    dtype: Any = np.float64,
    flat: bool = True,
    data: str | None = None,
    task: str = "auto",
    progress: Callable[[str, int], None] | None = None,
) -> tuple[Dataset, Net, list[Result]]:
    """Train the same model from the same initialization with each optimizer.

    Parameters
    ----------
    optimizers
        Names from :func:`presets` (case-insensitive).
    problem, data, task, hidden, activation, seed, dtype
        See :func:`make_problem`.
    steps
        Optimizer steps per optimizer.
    lr
        One learning rate for all (default: each preset's own).
    batch_size
        Minibatch size (0: the whole data set every step).
    flat
        Pack the parameters in a :class:`~fastmoments.FlatParams` (one kernel call
        per step) instead of stepping a list of arrays.
    progress
        Called as ``progress(name, steps_done_since_last_call)`` while training.

    Returns
    -------
    dataset, net, results
        The data, the model (holding the last optimizer's parameters) and one
        :class:`Result` per optimizer, in order.
    """
    table = presets()
    chosen = []
    for name in optimizers:
        key = name.strip().lower()
        if key not in table:
            raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(sorted(table))}")
        chosen.append(table[key])
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    dtype = np.dtype(dtype)
    dataset, net = make_problem(problem, data, task, hidden, activation, seed, dtype)
    init = net.copy_params()
    X, y = dataset.X, dataset.y
    batch = batch_size if 0 < batch_size < dataset.n else dataset.n
    if batch < dataset.n:
        xb = np.empty((batch, dataset.dim), dtype=dtype)
        yb = np.empty(batch, dtype=y.dtype)
    marks = _checkpoints(steps)
    classify = dataset.task == "classification"
    results = []
    every = max(1, steps // 100)
    for preset in chosen:
        jit_s = _warm_up(preset, init, flat, lr)
        params, grads = _attach(net, init, flat)
        opt = preset.build(params, lr)
        step = opt.step
        args = () if grads is None else (grads,)
        curve = np.full(len(marks), np.nan)
        curve[0] = net.loss(X, y)
        batch_losses = np.full(steps, np.nan)
        step_ns = np.zeros(steps, dtype=np.int64)
        order = batches(dataset.n, batch, seed)
        next_mark = 1
        taken = 0
        reported = 0
        diverged = False
        clock = time.perf_counter_ns
        start = time.perf_counter()
        with np.errstate(all="ignore"):  # a diverging run is reported, not warned about
            for t in range(steps):
                idx = next(order)
                if idx is None:
                    loss = net.loss_grad(X, y)
                else:
                    np.take(X, idx, axis=0, out=xb)
                    np.take(y, idx, out=yb)
                    loss = net.loss_grad(xb, yb)
                batch_losses[t] = loss
                t0 = clock()
                step(*args)
                step_ns[t] = clock() - t0
                taken = t + 1
                if taken == marks[next_mark]:
                    curve[next_mark] = _evaluated(opt, lambda: net.loss(X, y))
                    next_mark += 1
                if not math.isfinite(loss):
                    diverged = True
                    curve[next_mark:] = np.nan
                    break
                if progress is not None and taken % every == 0:
                    progress(preset.name, every)
                    reported += every
        train_s = time.perf_counter() - start
        if progress is not None and reported < steps:
            progress(preset.name, steps - reported)
        accuracy = None
        if classify and not diverged:
            accuracy = _evaluated(opt, lambda: net.accuracy(X, y))
        results.append(Result(
            name=preset.name, label=preset.label, lr=float(opt.lr), checkpoints=marks,
            curve=curve, batch_losses=batch_losses, accuracy=accuracy,
            step_us=float(np.median(step_ns[:taken])) / 1e3, train_s=train_s, jit_s=jit_s,
            diverged=diverged,
        ))
    return dataset, net, results


# ------------------------------------------------------------------- printing
_BLOCKS = "▁▂▃▄▅▆▇█"
_ASCII = "_.-~=+*#"


def _can_print(text: str, stream: Any) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def sparkline(values: Sequence[float], low: float, high: float, chars: str = _BLOCKS) -> str:
    """One character per value, from ``chars[0]`` (at ``low``) to ``chars[-1]`` (``high``).

    Values are placed on a log scale when ``low > 0``; non-finite values print as ``!``.
    """
    out = []
    use_log = low > 0
    lo, hi = (math.log(low), math.log(high)) if use_log else (low, high)
    span = hi - lo
    for v in values:
        if not math.isfinite(v):
            out.append("!")
            continue
        x = math.log(v) if use_log and v > 0 else v
        k = 0 if span <= 0 else round((x - lo) / span * (len(chars) - 1))
        out.append(chars[min(max(k, 0), len(chars) - 1)])
    return "".join(out)


def _fmt_loss(x: float) -> str:
    if not math.isfinite(x):
        return "diverged" if math.isnan(x) else f"{x}"
    return f"{x:.4g}" if abs(x) >= 1e-3 else f"{x:.3e}"


def format_curves(results: Sequence[Result], stream: Any = None, columns: int = 6) -> str:
    """The loss-at-checkpoints table, one column per optimizer, with a sparkline row.

    More than ``columns`` optimizers are printed as several tables, one below the other.
    """
    stream = sys.stdout if stream is None else stream
    finite = [v for r in results for v in r.curve if math.isfinite(v)]
    chars = _BLOCKS if _can_print(_BLOCKS, stream) else _ASCII
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    blocks = []
    for first in range(0, len(results), columns):
        part = results[first:first + columns]
        width = max(10, len(part[0].curve) + 2, *(len(r.label) + 1 for r in part))
        lines = ["  step" + "".join(f"{r.label:>{width}}" for r in part)]
        for k, step in enumerate(part[0].checkpoints):
            lines.append(f"{step:6d}"
                         + "".join(f"{_fmt_loss(r.curve[k]):>{width}}" for r in part))
        if finite:
            spark = [sparkline(r.curve, low, high, chars) for r in part]
            lines.append(" curve" + "".join(f"{s:>{width}}" for s in spark))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_summary(results: Sequence[Result], classify: bool, stream: Any = None) -> str:
    """The summary table: final loss, accuracy, optimizer-step time, total time."""
    stream = sys.stdout if stream is None else stream
    micro = "µs" if _can_print("µ", stream) else "us"
    name_w = max(9, *(len(r.label) for r in results))
    head = (f"{'optimizer':<{name_w}}  {'lr':>8}  {'final loss':>10}"
            + (f"  {'accuracy':>8}" if classify else "")
            + f"  {'step ' + micro:>8}  {'train s':>7}  {'jit s':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        final = "diverged" if r.diverged else _fmt_loss(r.final_loss)
        acc = ""
        if classify:
            acc = f"  {'-':>8}" if r.accuracy is None else f"  {r.accuracy:>8.1%}"
        lines.append(
            f"{r.label:<{name_w}}  {r.lr:>8.3g}  {final:>10}{acc}"
            f"  {r.step_us:>8.1f}  {r.train_s:>7.2f}  {r.jit_s:>6.2f}"
        )
    return "\n".join(lines)


def plot_curves(results: Sequence[Result], path: str, title: str) -> None:
    """Save the loss curves (smoothed minibatch loss and whole-set checkpoints) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    palette = plt.get_cmap("tab10" if len(results) <= 10 else "tab20").colors
    try:
        for k, r in enumerate(results):
            color = palette[k % len(palette)]
            losses = r.batch_losses[np.isfinite(r.batch_losses)]
            smooth = _ema(losses, 0.9) if losses.size else losses
            ax.plot(np.arange(1, smooth.size + 1), smooth, lw=1.2, alpha=0.8, color=color,
                    label=r.label)
            ax.plot(r.checkpoints, r.curve, "o", ms=3, color=color)
        positive = all(np.all(r.curve[np.isfinite(r.curve)] > 0) for r in results)
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (line: minibatch EMA, dots: whole set)")
        ax.set_title(title, fontsize=10)
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _ema(x: np.ndarray, decay: float) -> np.ndarray:
    out = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):
        acc = decay * acc + (1 - decay) * v
        out[i] = acc
    return out


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


# ----------------------------------------------------------------- progress bar
class _Progress:
    """tqdm when it is installed, else a one-line bar on stderr (TTY only)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.bar = None
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.shown = 0.0
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                # disable=None: no bar when stderr is not a terminal (logs, CI)
                self.bar = tqdm(total=total, unit="step", leave=False, file=sys.stderr,
                                disable=None)

    def __call__(self, name: str, n: int) -> None:
        if not self.enabled:
            return
        self.done += n
        if self.bar is not None:
            self.bar.set_description(name, refresh=False)
            self.bar.update(n)
        elif self.tty:
            now = time.monotonic()
            if now - self.shown < 0.1 and self.done < self.total:
                return
            self.shown = now
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.done}/{self.total} {name:<12}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.tty:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


# -------------------------------------------------------------------------- CLI
def _optimizer_list(text: str) -> list[str]:
    table = presets()
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of optimizer names; "
                                         f"valid names: {', '.join(sorted(table))}")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(sorted(table))}"
        )
    return names


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` and make :func:`run` its handler."""
    names = ", ".join(sorted(presets()))
    parser.add_argument(
        "--optimizers", type=_optimizer_list, default=list(DEFAULT_OPTIMIZERS), metavar="NAMES",
        help=f"comma-separated optimizers to compare (default: {','.join(DEFAULT_OPTIMIZERS)}); "
             f"one of: {names}")
    parser.add_argument("--problem", choices=("mlp", "logreg", "linreg"), default="mlp",
                        help="the model (and built-in data set) to train (default: mlp)")
    parser.add_argument("--data", metavar="FILE", default=None,
                        help="train on this .csv/.npz table instead (last column = target)")
    parser.add_argument("--task", choices=("auto", "classification", "regression"),
                        default="auto", help="with --data: what the target column is "
                                             "(default: auto, from its values)")
    parser.add_argument("--steps", type=_int_at_least(1), default=1000,
                        help="optimizer steps per optimizer (default: 1000)")
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help="one learning rate for every optimizer (default: a per-optimizer "
                             "value that suits the built-in problems)")
    parser.add_argument("--batch-size", type=_int_at_least(0), default=64,
                        help="minibatch size; 0 = the whole data set (default: 64)")
    parser.add_argument("--hidden", type=_int_at_least(1), default=64,
                        help="hidden units of the mlp (default: 64)")
    parser.add_argument("--activation", choices=("tanh", "relu"), default="tanh",
                        help="hidden nonlinearity of the mlp (default: tanh)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data, the initialization and the batches (default: 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="parameter and data dtype (default: float64)")
    parser.add_argument("--flat", action=argparse.BooleanOptionalAction, default=True,
                        help="pack the parameters in a FlatParams, one kernel call per step "
                             "(default; --no-flat steps a list of arrays)")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help=f"save the loss curves as a PNG (needs matplotlib; default: "
                             f"{DEFAULT_PLOT} when matplotlib is installed)")
    parser.add_argument("--no-plot", dest="plot", action="store_const", const="",
                        help="do not save a plot")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no loss table: only the summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed options; returns the exit code."""
    out = sys.stdout
    quiet = args.quiet
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        print(f"fastmoments demo: error: --plot {args.plot}: the folder does not exist",
              file=sys.stderr)
        return 2
    progress = _Progress(len(args.optimizers) * args.steps, enabled=not quiet)
    try:
        dataset, net, results = compare(
            args.optimizers, args.problem, steps=args.steps, lr=args.lr,
            batch_size=args.batch_size, hidden=args.hidden, activation=args.activation,
            seed=args.seed, dtype=args.dtype, flat=args.flat, data=args.data, task=args.task,
            progress=progress,
        )
    except DataError as exc:
        print(f"fastmoments demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    classify = dataset.task == "classification"
    model = {"mlp": f"MLP (hidden {args.hidden}, {args.activation})",
             "logreg": "logistic regression", "linreg": "linear regression"}[args.problem]
    if args.problem == "mlp" and not classify:
        model += ", squared error"
    batch = args.batch_size if 0 < args.batch_size < dataset.n else dataset.n
    title = f"{model} on {dataset.name}"
    if not quiet:
        kind = f"{dataset.classes} classes" if classify else "regression"
        print(f"{title}: {dataset.n} samples, {dataset.dim} features, {kind}", file=out)
        path = "FlatParams (one fused kernel call per step)" if args.flat else "list of arrays"
        print(f"{net.numel:,} parameters, {args.dtype}, {path}, {args.steps} steps, "
              f"batch {batch}\n", file=out)
        print("Loss on the whole training set:", file=out)
        print(format_curves(results, out) + "\n", file=out)
    print(format_summary(results, classify, out), file=out)
    if not quiet:
        print("\nstep: median time of opt.step() alone; train s: the whole loop (forward, "
              "backward, step,\ncheckpoints); jit s: compiling the kernels or loading them "
              "from numba's cache", file=out)
    plot = args.plot
    if plot is None:
        plot = DEFAULT_PLOT if _has_matplotlib() else ""
    if plot:
        if not _has_matplotlib():
            print(f"note: --plot {plot} needs matplotlib (pip install matplotlib); "
                  "no plot written", file=sys.stderr)
        else:
            try:
                plot_curves(results, plot, title)
            except OSError as exc:
                print(f"fastmoments demo: error: cannot write the plot {plot!r}: {exc}",
                      file=sys.stderr)
                return 2
            if not quiet:
                print(f"\nloss curves written to {plot}", file=out)
    return 0
