"""Time one step of the sharded optimizer, phase by phase, next to one process and MPI.

Run under mpiexec (one rank is the one-process baseline)::

    mpiexec -n 1 python -m fastmoments.tools.bench_distributed
    mpiexec -n 2 python -m fastmoments.tools.bench_distributed --numel 10000000

Every figure is the best of ``--repeat`` timed calls after two warm-up calls, each
started after a barrier, taken as the slowest rank's time (a collective ends when its
last rank does). Reported: the ``shard=True`` step and its three phases (reduce-scatter
of the gradient, the shard's step, all-gather of the parameters), the ``shard=False``
step (all-reduce, then every rank steps everything), one process's plain step over the
whole buffer, the raw MPI collectives on a buffer of the same size, and the optimizer
state per rank. Ranks on one machine share its memory bandwidth: a measurement on one
machine says what the communication costs, not how the step scales across machines.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _best(comm: Any, fn: Callable[[], Any], repeat: int) -> float:
    """Best of ``repeat`` calls (after 2 warm-ups), the slowest rank's, in seconds."""
    times = []
    for i in range(repeat + 2):
        comm.Barrier()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i >= 2:
            times.append(elapsed)
    return float(max(comm.allgather(min(times))))


def measure(numel: int, repeat: int, optimizer: str) -> dict[str, Any]:
    """The timings (seconds) and sizes of one run, the same dict on every rank."""
    from mpi4py import MPI
    from numba import get_num_threads

    import fastmoments as fm
    from fastmoments.distributed import ShardedOptimizer

    comm = MPI.COMM_WORLD
    world, rank = comm.Get_size(), comm.Get_rank()
    cls = getattr(fm, optimizer)
    rng = np.random.default_rng(rank)
    flat = fm.FlatParams([rng.standard_normal(numel).astype(np.float32)])
    flat.grad[:] = rng.standard_normal(numel).astype(np.float32) * 1e-3
    out: dict[str, Any] = {"optimizer": optimizer, "numel": numel, "dtype": "float32",
                           "world_size": world, "numba_threads": get_num_threads(),
                           "mpi": MPI.Get_library_version().splitlines()[0].strip()}
    sharded = ShardedOptimizer(cls, flat, comm, lr=1e-4)
    scale = float(world)
    out["sharded_step"] = _best(comm, sharded.step, repeat)
    out["reduce_scatter"] = _best(comm, sharded._reduce_gradients, repeat)
    out["shard_step"] = _best(comm, lambda: sharded._step_shard(scale), repeat)
    out["all_gather"] = _best(comm, sharded._gather_parameters, repeat)
    out["state_bytes_per_rank_sharded"] = sharded.state_nbytes
    replicated = ShardedOptimizer(cls, flat, comm, shard=False, lr=1e-4)
    flat.grad[:] = 1e-3 / world  # (the all-reduce sums it again at every call)
    out["replicated_step"] = _best(comm, replicated.step, repeat)
    out["replicated_local_step"] = _best(
        comm, lambda: replicated.optimizer.step(grad_scale=scale), repeat)
    out["state_bytes_per_rank_replicated"] = replicated.state_nbytes
    if rank == 0:  # one process alone (the other ranks wait at the barrier below)
        plain = cls(flat, lr=1e-4)
        for _ in range(2):
            plain.step()
        best = []
        for _ in range(repeat):
            start = time.perf_counter()
            plain.step()
            best.append(time.perf_counter() - start)
        out["one_process_step"] = min(best)
    comm.Barrier()
    out["one_process_step"] = comm.bcast(out.get("one_process_step"), root=0)
    # the raw collectives, equal blocks (the largest multiple of the world size)
    block = numel // world
    buffer = np.ones(block * world, dtype=np.float32)
    recv = np.empty(block, dtype=np.float32)
    out["mpi_allreduce"] = _best(
        comm, lambda: comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM), repeat)
    out["mpi_reduce_scatter"] = _best(
        comm, lambda: comm.Reduce_scatter_block(buffer, recv, op=MPI.SUM), repeat)
    out["mpi_allgather"] = _best(
        comm, lambda: comm.Allgather(MPI.IN_PLACE, buffer), repeat)
    return out


def _table(r: dict[str, Any]) -> str:
    ms = {k: v * 1e3 for k, v in r.items() if isinstance(v, float)}
    mib = 1 << 20
    lines = [
        f"{r['optimizer']}, {r['numel']:.3g} {r['dtype']} elements, {r['world_size']} "
        f"rank(s), {r['numba_threads']} numba thread(s) per rank; {r['mpi']}",
        f"  shard=True step           {ms['sharded_step']:8.1f} ms",
        f"    reduce-scatter          {ms['reduce_scatter']:8.1f} ms",
        f"    shard step              {ms['shard_step']:8.1f} ms",
        f"    all-gather              {ms['all_gather']:8.1f} ms",
        f"  shard=False step          {ms['replicated_step']:8.1f} ms "
        f"(its local step {ms['replicated_local_step']:.1f} ms)",
        f"  one process, plain step   {ms['one_process_step']:8.1f} ms",
        f"  MPI Allreduce             {ms['mpi_allreduce']:8.1f} ms",
        f"  MPI Reduce_scatter_block  {ms['mpi_reduce_scatter']:8.1f} ms",
        f"  MPI Allgather (in place)  {ms['mpi_allgather']:8.1f} ms",
        f"  state per rank: {r['state_bytes_per_rank_sharded'] / mib:.1f} MiB sharded, "
        f"{r['state_bytes_per_rank_replicated'] / mib:.1f} MiB with shard=False",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--optimizer", default="AdamW")
    parser.add_argument("--json", help="also write the figures to this file (rank 0)")
    args = parser.parse_args(argv)
    result = measure(args.numel, args.repeat, args.optimizer)
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 0:
        print(_table(result))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
