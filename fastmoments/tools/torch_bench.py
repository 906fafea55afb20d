"""Step time of fastmoments.torch.Adam against torch.optim.Adam on real module shapes.

Three parameter lists, built from the shapes of real modules (no forward pass is run:
the gradients are fixed random tensors, the same objects at every step, as after
``zero_grad(set_to_none=False)``):

- ``mlp``: an MLP policy, 64 -> 256 -> 256 -> 8 (84,488 parameters in 6 tensors);
- ``cnn``: a small CNN, three 3x3 conv layers (32, 64, 128 channels) and two linear
  layers (0.62 M parameters in 10 tensors);
- ``gpt2``: GPT-2 small's parameter list (124 M parameters in 148 tensors with 12
  layers; ``--torch-gpt2-layers`` makes it smaller).

Each is stepped by ``fastmoments.torch.Adam`` over the module's tensors (``fmt``) and
over a flattened copy (``fmt-flat``, :func:`fastmoments.torch.flatten_`), and by
``torch.optim.Adam`` with ``fused=True``, ``foreach=True`` and the for-loop
(``foreach=False``). Each row is the best, over ``--torch-rounds`` rounds, of the
round's median step time (each step timed on its own), quiet and while one other
process spins on one core (``busy``). The optimizers' rounds alternate (when they fit
in memory together), so that a slow spell of a shared machine falls on all alike.

Run it as ``fastmoments bench --torch`` (the bench command's options also apply) or
``python -m fastmoments.tools.torch_bench``. torch is imported by :func:`run` only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["add_arguments", "run", "main", "MODELS", "OPTIMIZERS"]

#: the parameter lists (see the module docstring)
MODELS = ("mlp", "cnn", "gpt2")
#: the optimizers, as named in the table
OPTIMIZERS = ("fmt-flat", "fmt", "torch-fused", "torch-foreach", "torch-forloop")
LOADS = ("quiet", "busy")


def add_arguments(parser: Any) -> None:
    """Add this benchmark's options (all prefixed ``--torch-``) to ``parser``."""
    parser.add_argument("--torch-models", default=",".join(MODELS),
                        help=f"parameter lists to time (default: {','.join(MODELS)})")
    parser.add_argument("--torch-optimizers", default=",".join(OPTIMIZERS),
                        help=f"optimizers to time (default: {','.join(OPTIMIZERS)})")
    parser.add_argument("--torch-loads", default=",".join(LOADS),
                        help="quiet, and/or busy: one other process spinning on one core "
                             "(default: quiet,busy)")
    parser.add_argument("--torch-rounds", type=int, default=5,
                        help="rounds per row; a row is the best round's median (default 5)")
    parser.add_argument("--torch-round-time", type=float, default=0.2,
                        help="seconds of steps per round, at least 3 steps (default 0.2)")
    parser.add_argument("--torch-gpt2-layers", type=int, default=12,
                        help="transformer layers of the gpt2 list (default 12: GPT-2 small)")
    parser.add_argument("--torch-dtype", choices=("float32", "float64"), default="float32",
                        help="parameter dtype (default float32)")
    parser.add_argument("--torch-memory-gb", type=float, default=4.0,
                        help="alternate the optimizers' rounds when their parameters, "
                             "gradients and moments fit in this much memory together, else "
                             "time them one after the other (default 4)")
    parser.set_defaults(run=run)


# ------------------------------------------------------------------ the shapes
def model_shapes(model: str, gpt2_layers: int = 12) -> list[tuple[int, ...]]:
    """The parameter shapes of ``model`` (one of :data:`MODELS`), in module order."""
    if model == "mlp":
        sizes = (64, 256, 256, 8)
        return [s for a, b in zip(sizes, sizes[1:]) for s in ((b, a), (b,))]
    if model == "cnn":
        convs = [(32, 3), (64, 32), (128, 64)]
        linears = [(256, 128 * 4 * 4), (10, 256)]
        return ([s for o, i in convs for s in ((o, i, 3, 3), (o,))]
                + [s for o, i in linears for s in ((o, i), (o,))])
    if model == "gpt2":
        d, vocab, context = 768, 50257, 1024
        layer = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d),
                 (4 * d,), (4 * d, d), (d,)]
        return [(vocab, d), (context, d)] + layer * gpt2_layers + [(d,), (d,)]
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


# ----------------------------------------------------------------- the timing
def _spinner() -> subprocess.Popen:
    """A process that keeps one core busy (the last one this process may use)."""
    try:
        core = sorted(os.sched_getaffinity(0))[-1]
    except AttributeError:  # pragma: no cover - not Linux
        core = 0
    code = (f"import os\ntry:\n    os.sched_setaffinity(0, {{{core}}})\nexcept Exception:\n"
            "    pass\nwhile True:\n    pass\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()


def _round(step: Callable[[], Any], round_time: float) -> float:
    """The median step time in seconds of one round (each step timed on its own; at
    least 3 steps and ``round_time`` seconds)."""
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < round_time:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_steps(step: Callable[[], Any], rounds: int, round_time: float) -> list[float]:
    """Each round's median step time in seconds (see :func:`_round`)."""
    return [_round(step, round_time) for _ in range(rounds)]


def _build(torch: Any, shapes: list[tuple[int, ...]], optimizer: str, dtype: Any) -> Any:
    """Parameters of ``shapes`` with fixed gradients, and the optimizer's step."""
    import fastmoments.torch as fmt

    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype) * 0.02)
        p.grad = torch.randn(shape, generator=generator, dtype=dtype) * 1e-3
        params.append(p)
    lr = 1e-5
    if optimizer == "fmt-flat":
        fmt.flatten_(params)
        return fmt.Adam(params, lr=lr)
    if optimizer == "fmt":
        return fmt.Adam(params, lr=lr)
    kind = optimizer.split("-", 1)[1]
    options = {"fused": {"fused": True}, "foreach": {"foreach": True},
               "forloop": {"foreach": False}}[kind]
    return torch.optim.Adam(params, lr=lr, **options)


def _prepared(torch: Any, shapes: list[tuple[int, ...]], optimizer: str, dtype: Any) -> Any:
    """The optimizer, after its first steps (compilation, allocation)."""
    import fastmoments as fm

    opt = _build(torch, shapes, optimizer, dtype)
    for _ in range(3):
        opt.step()
    fm.wait_compiled()
    opt.step()
    return opt


def _measure_all(torch: Any, shapes: list[tuple[int, ...]], optimizers: list[str],
                 dtype: Any, rounds: int, round_time: float,
                 memory_gb: float = 4.0) -> dict[str, list[float]]:
    """Each optimizer's round medians. When all of them fit in ``memory_gb`` together,
    their rounds alternate, so that a slow spell of the machine (other processes)
    falls on all of them alike; else one optimizer after the other."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    footprint = 4 * itemsize * sum(_numel(s) for s in shapes)  # params, grads, 2 moments
    if footprint * len(optimizers) <= memory_gb * 2**30:
        prepared = {name: _prepared(torch, shapes, name, dtype) for name in optimizers}
        medians: dict[str, list[float]] = {name: [] for name in optimizers}
        for _ in range(rounds):
            for name, opt in prepared.items():
                medians[name].append(_round(opt.step, round_time))
        return medians
    out = {}
    for name in optimizers:
        out[name] = time_steps(_prepared(torch, shapes, name, dtype).step, rounds, round_time)
    return out


def _machine(torch: Any) -> dict[str, Any]:
    import numba
    import numpy

    import fastmoments

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": cores, "platform": platform.platform(),
        "python": platform.python_version(), "fastmoments": fastmoments.__version__,
        "numpy": numpy.__version__, "numba": numba.__version__, "torch": torch.__version__,
        "numba_threads": numba.get_num_threads(), "torch_threads": torch.get_num_threads(),
    }


def _parse(value: Any, allowed: Sequence[str], option: str) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [
        v.strip() for v in str(value).split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"--{option}: expected names from {','.join(allowed)}, got {value!r}")
    return list(items)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time every (model, load, optimizer), print the table, return the results.

    Returns
    -------
    dict
        ``{"format", "machine", "settings", "results": [{"model", "elements",
        "tensors", "load", "optimizer", "us_per_step", "round_medians_us"}]}``.
    """
    import torch

    models = _parse(getattr(args, "torch_models", MODELS), MODELS, "torch-models")
    optimizers = _parse(getattr(args, "torch_optimizers", OPTIMIZERS), OPTIMIZERS,
                        "torch-optimizers")
    loads = _parse(getattr(args, "torch_loads", LOADS), LOADS, "torch-loads")
    rounds = int(getattr(args, "torch_rounds", 5))
    round_time = float(getattr(args, "torch_round_time", 0.2))
    layers = int(getattr(args, "torch_gpt2_layers", 12))
    dtype_name = getattr(args, "torch_dtype", "float32")
    memory_gb = float(getattr(args, "torch_memory_gb", 4.0))
    if rounds < 1 or round_time < 0 or layers < 0:
        raise ValueError("--torch-rounds must be >= 1, --torch-round-time and "
                         "--torch-gpt2-layers >= 0")
    dtype = getattr(torch, dtype_name)
    load_before = _load_average()
    results = []
    for model in models:
        shapes = model_shapes(model, layers)
        elements = sum(_numel(s) for s in shapes)
        for load in loads:
            spinner = _spinner() if load == "busy" else None
            try:
                measured = _measure_all(torch, shapes, optimizers, dtype, rounds, round_time,
                                        memory_gb)
                for optimizer, medians in measured.items():
                    results.append({
                        "model": model, "elements": elements, "tensors": len(shapes),
                        "load": load, "optimizer": optimizer,
                        "us_per_step": min(medians) * 1e6,
                        "round_medians_us": [m * 1e6 for m in medians],
                    })
            finally:
                if spinner is not None:
                    _stop(spinner)
    machine = _machine(torch)
    # other processes' load (1-minute averages, this run's own processes included):
    # timings taken on a busy machine are pessimistic
    machine["load_average"] = [load_before, _load_average()]
    doc = {
        "format": "fastmoments-torch-bench/1",
        "machine": machine,
        "settings": {"models": models, "optimizers": optimizers, "loads": loads,
                     "rounds": rounds, "round_time": round_time, "gpt2_layers": layers,
                     "dtype": dtype_name, "memory_gb": memory_gb},
        "results": results,
    }
    print(format_table(doc))
    return doc


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _time(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def format_table(doc: dict[str, Any]) -> str:
    """The results as a text table: one row per (model, optimizer), one column per
    load, and each time relative to torch's fused Adam under the same load."""
    m, s = doc["machine"], doc["settings"]
    loads = s["loads"]
    rows = doc["results"]
    by = {(r["model"], r["load"], r["optimizer"]): r for r in rows}
    lines = [
        f"fastmoments.torch.Adam vs torch.optim.Adam, step time ({s['dtype']}; best of "
        f"{s['rounds']} rounds' medians; busy: one other process spinning on one core)",
        f"{m['date']}  {m['cpu']}, {m['cores']} cores (numba threads {m['numba_threads']}, "
        f"torch threads {m['torch_threads']})",
        f"fastmoments {m['fastmoments']}, torch {m['torch']}, numba {m['numba']}, numpy "
        f"{m['numpy']}, python {m['python']}"
        + ("" if m.get("load_average") is None else
           f"; load average {m['load_average'][0]} before, {m['load_average'][1]} after"),
        "",
    ]
    header = f"{'model':<6} {'params':>11} {'tensors':>7}  {'optimizer':<14}" + "".join(
        f" {load:>10} {'vs fused':>8}" for load in loads)
    lines += [header, "-" * len(header)]
    for model in s["models"]:
        for optimizer in s["optimizers"]:
            first = next((by[(model, load, optimizer)] for load in loads
                          if (model, load, optimizer) in by), None)
            if first is None:
                continue
            line = f"{model:<6} {first['elements']:>11,} {first['tensors']:>7}  {optimizer:<14}"
            for load in loads:
                row = by.get((model, load, optimizer))
                fused = by.get((model, load, "torch-fused"))
                if row is None:
                    line += f" {'':>10} {'':>8}"
                    continue
                ratio = (f"{row['us_per_step'] / fused['us_per_step']:.2f}x"
                         if fused is not None else "")
                line += f" {_time(row['us_per_step']):>10} {ratio:>8}"
            lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastmoments.tools.torch_bench [--torch-... options] [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m fastmoments.tools.torch_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args(argv)
    doc = run(args)
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
