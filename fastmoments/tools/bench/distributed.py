r"""Time one step of the sharded optimizer, phase by phase, next to one process and MPI.

Run under mpiexec (one rank is the one-process baseline)::

    mpiexec -n 2 fastmoments bench --distributed --numel 1e7 --rules adamw
    mpiexec -n 2 fastmoments bench --distributed --network-gbps 100,400   (+ a projection)
    mpiexec -n 2 python -m fastmoments.tools.bench_distributed --numel 10000000

Every figure is the best of ``--repeat`` timed calls after two warm-up calls, each
started after a barrier, taken as the slowest rank's time (a collective ends when its
last rank does). Reported: the ``shard=True`` step and its three phases (reduce-scatter
of the gradient, the shard's step, all-gather of the parameters), the ``shard=False``
step (all-reduce, then every rank steps everything), one process's plain step over the
whole buffer (on rank 0, the other ranks waiting without spinning), the raw MPI
collectives on a buffer of the same size, the optimizer state per rank and the bytes
each rank sends per step.

GB/s: a step moves ``3 * itemsize`` bytes per element (the parameter read and written,
the gradient read) plus its state read and written once (28 bytes per float32 AdamW
element); a rule with passes of its own (LAMB, ND-Adam, SWATS) moves more, so its
figure is a lower bound. A collective's GB/s is the bytes each rank sends in the ring
algorithm over the time (nccl-tests' "bus bandwidth"): a reduce-scatter or an
all-gather of ``B`` bytes sends :math:`(W-1)/W \cdot B` per rank, an all-reduce twice
that.

Ranks on one machine share its memory bandwidth: a measurement on one machine says
what the communication costs, not how the step scales across machines. With
``--network-gbps`` the run adds a *projection* (computed, not measured) to ``W`` = 8 ...
1024 nodes, one rank per node, each stepping at the per-element speed of this run's
shard step, over ring collectives at the given bandwidth per node:

.. math::

    t(W) = t_\text{shard} \frac{\lceil N/W \rceil}{n_\text{shard}}
         + 2 \frac{W-1}{W} \frac{N b}{B} + 2 (W-1) \alpha

with ``N`` elements of ``b`` bytes, ``B`` the bandwidth in bytes per second and
:math:`\alpha` the latency of one ring step (``--latency-us``, default 0: the
bandwidth term alone). The ``shard=False`` (DDP) column steps all ``N`` elements at the
same speed and sends the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_NUMEL = "1e7"
#: the world sizes of the projection
PROJECTED_WORLDS = (8, 16, 32, 64, 128, 256, 512, 1024)
DTYPES = ("float32", "float64")
MIB = 1 << 20


# ------------------------------------------------------------------ options
def add_arguments(parser: Any) -> None:
    """The options of this scenario that ``fastmoments bench --distributed`` shares with
    ``python -m fastmoments.tools.bench_distributed``."""
    parser.add_argument("--numel", default=DEFAULT_NUMEL,
                        help=f"--distributed: elements of the flat buffer (default: "
                             f"{DEFAULT_NUMEL})")
    parser.add_argument("--repeat", type=int, default=5,
                        help="--distributed: timed calls per figure, the best kept "
                             "(default: 5)")
    parser.add_argument("--network-gbps", default="",
                        help="--distributed: add a projection to W = 8 ... 1024 nodes at "
                             "these network bandwidths per node, Gb/s, comma-separated "
                             "(e.g. 100,400)")
    parser.add_argument("--latency-us", type=float, default=0.0,
                        help="--distributed: the projection's latency of one ring step, "
                             "microseconds (default: 0, the bandwidth term alone)")


def _count(text: str, what: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--{what}: {text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise ValueError(f"--{what}: expected a whole number >= 1, got {text!r}")
    return int(value)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The shared options, checked; ValueError naming the option."""
    gbps = []
    for t in (x.strip() for x in args.network_gbps.split(",")):
        if not t:
            continue
        try:
            value = float(t)
        except ValueError:
            raise ValueError(f"--network-gbps: {t!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--network-gbps: expected bandwidths > 0, got {t!r}")
        gbps.append(value)
    if args.repeat < 1:
        raise ValueError(f"--repeat: expected >= 1, got {args.repeat}")
    if not (math.isfinite(args.latency_us) and args.latency_us >= 0):
        raise ValueError(f"--latency-us: expected microseconds >= 0, got {args.latency_us}")
    return {"numel": _count(str(args.numel), "numel"), "repeat": args.repeat,
            "network_gbps": list(dict.fromkeys(gbps)), "latency_us": args.latency_us}


# --------------------------------------------------------------- measuring
def _best(comm: Any, fn: Callable[[], Any], repeat: int) -> float:
    """Best of ``repeat`` calls (after 2 warm-ups), the slowest rank's, in seconds."""
    from fastmoments import wait_compiled

    times = []
    for i in range(repeat + 2):
        comm.Barrier()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i == 0:  # a parallel loop the first call started compiling in the background
            wait_compiled()
        if i >= 2:
            times.append(elapsed)
    return float(max(comm.allgather(min(times))))


def _wait_idle(comm: Any) -> None:
    """A barrier that sleeps instead of spinning (MPICH's Barrier polls, and would take
    a core from rank 0 while it times one process alone)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(1e-3)


def ring_bytes(collective: str, nbytes: int, world: int) -> int:
    """Bytes each rank sends in a ring ``collective`` of an ``nbytes`` buffer."""
    share = nbytes * (world - 1) // world
    return 2 * share if collective == "allreduce" else share


def measure(numel: int, repeat: int, optimizer: str,
            dtype: str = "float32") -> dict[str, Any]:
    """The timings (seconds), sizes (bytes) and GB/s of one run, the same on every rank."""
    from mpi4py import MPI
    from numba import get_num_threads

    import fastmoments as fm
    from fastmoments import wait_compiled
    from fastmoments.distributed import ShardedOptimizer, shard_sizes

    from .cases import RULE_KWARGS

    comm = MPI.COMM_WORLD
    world, rank = comm.Get_size(), comm.Get_rank()
    cls = getattr(fm, optimizer)
    hyper = {"lr": 1e-4, **RULE_KWARGS.get(optimizer, {})}
    itemsize = np.dtype(dtype).itemsize
    rng = np.random.default_rng(rank)
    flat = fm.FlatParams([rng.standard_normal(numel).astype(dtype)])
    flat.grad[:] = rng.standard_normal(numel).astype(dtype) * 1e-3
    shard_numel = shard_sizes(numel, world)[0]  # rank 0's, the largest
    out: dict[str, Any] = {"optimizer": optimizer, "numel": numel, "dtype": dtype,
                           "itemsize": itemsize, "world_size": world,
                           "shard_numel": shard_numel, "numba_threads": get_num_threads(),
                           "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                           "mpi4py": _version("mpi4py")}
    sharded = ShardedOptimizer(cls, flat, comm, **hyper)
    scale = float(world)
    out["sharded_step"] = _best(comm, sharded.step, repeat)
    out["reduce_scatter"] = _best(comm, sharded._reduce_gradients, repeat)
    out["shard_step"] = _best(comm, lambda: sharded._step_shard(scale), repeat)
    out["all_gather"] = _best(comm, sharded._gather_parameters, repeat)
    out["state_bytes_per_rank_sharded"] = int(comm.bcast(sharded.state_nbytes, root=0))
    replicated = ShardedOptimizer(cls, flat, comm, shard=False, **hyper)
    flat.grad[:] = 1e-3 / world  # (the all-reduce sums it again at every call)
    out["replicated_step"] = _best(comm, replicated.step, repeat)
    out["replicated_local_step"] = _best(
        comm, lambda: replicated.optimizer.step(grad_scale=scale), repeat)
    out["state_bytes_per_rank_replicated"] = replicated.state_nbytes
    if rank == 0:  # one process alone, the other ranks asleep in _wait_idle
        plain = cls(flat, **hyper)
        for _ in range(2):
            plain.step()
            wait_compiled()
        best = []
        for _ in range(repeat):
            start = time.perf_counter()
            plain.step()
            best.append(time.perf_counter() - start)
        out["one_process_step"] = min(best)
    _wait_idle(comm)
    out["one_process_step"] = comm.bcast(out.get("one_process_step"), root=0)
    # the raw collectives, equal blocks (the largest multiple of the world size)
    block = numel // world
    buffer = np.ones(block * world, dtype=dtype)
    recv = np.empty(block, dtype=dtype)
    out["mpi_buffer_bytes"] = int(buffer.nbytes)
    out["mpi_allreduce"] = _best(
        comm, lambda: comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM), repeat)
    out["mpi_reduce_scatter"] = _best(
        comm, lambda: comm.Reduce_scatter_block(buffer, recv, op=MPI.SUM), repeat)
    out["mpi_allgather"] = _best(
        comm, lambda: comm.Allgather(MPI.IN_PLACE, buffer), repeat)
    _add_bandwidths(out)
    return out


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _add_bandwidths(r: dict[str, Any]) -> None:
    """Bytes moved and GB/s (None where nothing moves: one rank's collectives)."""
    world, itemsize, numel = r["world_size"], r["itemsize"], r["numel"]
    state_per_element = r["state_bytes_per_rank_replicated"] / numel
    # the step: p read and written, g read, the state read and written once
    step_bytes = 3 * itemsize + 2 * state_per_element
    r["step_bytes_per_element"] = step_bytes
    r["bytes"] = {
        "shard_step": step_bytes * r["shard_numel"],
        "replicated_local_step": step_bytes * numel,
        "one_process_step": step_bytes * numel,
        "reduce_scatter": ring_bytes("reduce_scatter", numel * itemsize, world),
        "all_gather": ring_bytes("allgather", numel * itemsize, world),
        "mpi_allreduce": ring_bytes("allreduce", r["mpi_buffer_bytes"], world),
        "mpi_reduce_scatter": ring_bytes("reduce_scatter", r["mpi_buffer_bytes"], world),
        "mpi_allgather": ring_bytes("allgather", r["mpi_buffer_bytes"], world),
    }
    r["sent_bytes_per_rank_per_step"] = r["bytes"]["reduce_scatter"] + r["bytes"]["all_gather"]
    r["gbps"] = {k: (b / r[k] / 1e9 if b > 0 and r[k] > 0 else None)
                 for k, b in r["bytes"].items()}


# -------------------------------------------------------------- projecting
def project(r: dict[str, Any], network_gbps: Sequence[float], latency_us: float = 0.0,
            worlds: Sequence[int] = PROJECTED_WORLDS) -> list[dict[str, Any]]:
    """The step at ``worlds`` nodes, computed from the run ``r`` (see the module's docstring).

    Returns
    -------
    list of dict
        Per ``W``: ``world_size``, ``shard_numel``, ``state_bytes_per_rank``,
        ``shard_step`` (seconds), and per bandwidth (``"100"`` for 100 Gb/s):
        ``comm``, ``step`` (``shard=True``) and ``replicated_step`` (``shard=False``).
    """
    numel, nbytes = r["numel"], r["numel"] * r["itemsize"]
    per_element = r["shard_step"] / max(r["shard_numel"], 1)
    state_per_element = r["state_bytes_per_rank_replicated"] / numel
    rows = []
    for world in worlds:
        shard = -(-numel // world)
        row: dict[str, Any] = {"world_size": world, "shard_numel": shard,
                               "state_bytes_per_rank": state_per_element * shard,
                               "shard_step": per_element * shard,
                               "sent_bytes_per_rank": 2 * nbytes * (world - 1) / world}
        for gbps in network_gbps:
            comm = (row["sent_bytes_per_rank"] / (gbps * 1e9 / 8)
                    + 2 * (world - 1) * latency_us * 1e-6)
            row[f"{gbps:g}"] = {"comm": comm, "step": row["shard_step"] + comm,
                                "replicated_step": per_element * numel + comm}
        rows.append(row)
    return rows


# ---------------------------------------------------------------- reporting
def _gbps(r: dict[str, Any], key: str) -> str:
    value = r["gbps"].get(key)
    return f"{value:7.2f} GB/s" if value is not None else "      -     "


def table(r: dict[str, Any]) -> str:
    """The run ``r`` as text."""
    ms = {k: v * 1e3 for k, v in r.items() if isinstance(v, float)}
    world = r["world_size"]

    def line(label: str, key: str, note: str = "") -> str:
        return f"  {label:<26}{ms[key]:9.2f} ms {_gbps(r, key)}{note}"

    lines = [
        f"{r['optimizer']}, {r['numel']:.3g} {r['dtype']} elements, {world} rank(s) "
        f"(rank 0's shard {r['shard_numel']:.4g}), {r['numba_threads']} numba thread(s) "
        f"per rank; {r['mpi']}, mpi4py {r['mpi4py']}",
        line("shard=True step", "sharded_step"),
        line("  reduce-scatter", "reduce_scatter"),
        line("  shard step", "shard_step"),
        line("  all-gather", "all_gather"),
        line("shard=False step", "replicated_step"),
        line("  its local step", "replicated_local_step"),
        line("one process, plain step", "one_process_step"),
        line("MPI Allreduce", "mpi_allreduce"),
        line("MPI Reduce_scatter_block", "mpi_reduce_scatter"),
        line("MPI Allgather (in place)", "mpi_allgather"),
        f"  state per rank: {r['state_bytes_per_rank_sharded'] / MIB:.2f} MiB sharded, "
        f"{r['state_bytes_per_rank_replicated'] / MIB:.2f} MiB with shard=False; sent per "
        f"rank per step: {r['sent_bytes_per_rank_per_step'] / MIB:.2f} MiB "
        f"(2 (W-1)/W of {r['numel'] * r['itemsize'] / MIB:.2f} MiB)",
        f"  GB/s: a step moves {r['step_bytes_per_element']:g} bytes per element (p, g, "
        "state); a collective, the bytes each rank sends in a ring over the time",
    ]
    return "\n".join(lines)


def projection_table(r: dict[str, Any], rows: list[dict[str, Any]],
                     latency_us: float) -> str:
    """The projection ``rows`` of :func:`project` as text, with its formula."""
    if not rows:
        return ""
    bands = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    per_element_ns = r["shard_step"] / max(r["shard_numel"], 1) * 1e9
    mb = r["numel"] * r["itemsize"] / 1e6
    head = f"{'W':>5} {'state/rank':>11} {'shard step':>11}"
    sub = " " * len(head)
    for b in bands:
        head += f" | {'comm':>8} {'step':>8} {'DDP step':>9}"
        sub += f" | {b + ' Gb/s per node':^28}"
    lines = [
        "PROJECTION (computed, not measured): one rank per node, each stepping "
        f"ceil(N/W) elements at this run's shard-step speed ({per_element_ns:.3g} ns per "
        f"element), ring collectives at B Gb/s per node, latency {latency_us:g} us per "
        "ring step:",
        f"  step = {per_element_ns:.3g} ns x ceil(N/W) + 2 (W-1)/W x {mb:.4g} MB x 8 / B"
        f" + 2 (W-1) x {latency_us:g} us;  DDP step: all N elements, the same traffic",
        sub, head,
    ]
    for row in rows:
        text = (f"{row['world_size']:>5} {row['state_bytes_per_rank'] / MIB:>7.3f} MiB "
                f"{row['shard_step'] * 1e3:>8.3f} ms")
        for b in bands:
            p = row[b]
            text += (f" | {p['comm'] * 1e3:>5.2f} ms {p['step'] * 1e3:>5.2f} ms "
                     f"{p['replicated_step'] * 1e3:>6.2f} ms")
        lines.append(text)
    return "\n".join(lines)


def _header(info: dict[str, Any]) -> str:
    return (f"fastmoments bench --distributed  {info['date']}\n"
            f"machine: {info['cpu']}, {info['usable_cores']} usable cores, "
            f"{info['platform']}; load average {info['load_average']}\n"
            f"versions: fastmoments {info['fastmoments']} ({info['source'] or 'installed'}), "
            f"numpy {info['numpy']}, numba {info['numba']}, python {info['python']}\n"
            "Ranks on one machine share its memory bandwidth and cores: this says what the "
            "communication costs here, not how a step scales across machines.\n")


# -------------------------------------------------------------------- run
#: options of the other bench scenarios, refused with --distributed (not silently ignored)
_OTHER_SCENARIOS: tuple[tuple[str, Callable[[argparse.Namespace], bool]], ...] = (
    ("--tiny", lambda a: bool(getattr(a, "tiny", False))),
    ("--many", lambda a: bool(getattr(a, "many", False))),
    ("--first-step", lambda a: bool(getattr(a, "first_step", False))),
    ("--crossover", lambda a: bool(getattr(a, "crossover", False))),
    ("--torch", lambda a: bool(getattr(a, "torch", False))),
    ("--compare", lambda a: bool(getattr(a, "compare", ""))),
    ("--backend cuda", lambda a: getattr(a, "backend", "cpu") != "cpu"),
    ("--state-dtype", lambda a: getattr(a, "state_dtype", None) is not None),
    ("--contend", lambda a: bool(getattr(a, "contend", 0))),
    ("--plot", lambda a: bool(getattr(a, "plot", None))),
)


def run(args: argparse.Namespace) -> int:
    """``fastmoments bench --distributed``: every rank runs it; rank 0 prints. 0, or 2.

    Uses ``args.rules`` (default ``all``: AdamW alone), ``args.dtypes``, ``args.json``
    (print JSON), ``args.save`` (a JSON file) and the options of :func:`add_arguments`.
    """
    from .cases import optimizer_classes
    from .machine import machine_info
    from .options import parse_list as _parse_list

    try:
        settings = _settings(args)
        rules = (["AdamW"] if args.rules.strip().lower() == "all"
                 else _parse_list(args.rules, list(optimizer_classes()), "rules"))
        dtypes = _parse_list(args.dtypes, list(DTYPES), "dtypes")
        if not rules or not dtypes:
            raise ValueError("--rules and --dtypes need at least one value each")
        others = [name for name, given in _OTHER_SCENARIOS if given(args)]
        if others:
            raise ValueError(f"--distributed runs alone, on the CPU; drop {', '.join(others)}")
    except ValueError as exc:
        print(f"fastmoments bench: error: {exc}", file=sys.stderr)
        return 2
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("fastmoments bench: error: --distributed needs mpi4py (pip install "
              "'fastmoments[mpi]'), and runs under mpiexec", file=sys.stderr)
        return 2
    info = machine_info("cpu")  # (before MPI starts: it runs git in a subprocess)
    info["load_average"] = _load()
    runs = []
    for rule in rules:
        for dtype in dtypes:
            result = measure(settings["numel"], settings["repeat"], rule, dtype)
            result["projection"] = (project(result, settings["network_gbps"],
                                            settings["latency_us"])
                                    if settings["network_gbps"] else [])
            runs.append(result)
    info["load_average_after"] = _load()
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() != 0:
        return 0
    doc = {"format": "fastmoments-bench-distributed/1", "machine": info,
           "settings": settings, "runs": runs}
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(_header(info))
        for r in runs:
            print(table(r))
            if r["projection"]:
                print()
                print(projection_table(r, r["projection"], settings["latency_us"]))
            print()
    if args.save:
        with open(args.save, "w") as handle:
            json.dump(doc, handle, indent=1)
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not available
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """``python -m fastmoments.tools.bench_distributed`` (one optimizer, one dtype)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--optimizer", default="AdamW", help="the class (default: AdamW)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this file "
                                                       "(rank 0)")
    args = parser.parse_args(argv)
    ns = argparse.Namespace(**{**vars(args), "rules": args.optimizer, "dtypes": args.dtype,
                               "json": False, "save": args.json})
    return run(ns)


if __name__ == "__main__":
    sys.exit(main())
