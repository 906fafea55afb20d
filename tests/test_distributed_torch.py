"""fastmoments.distributed over a torch.distributed process group (gloo, on the CPU).

This file is also the worker: ``python tests/test_distributed_torch.py RANK WORLD INIT
OUT.json DIR`` joins a gloo group of ``WORLD`` processes through the file ``INIT`` and
runs every case of ``CASES`` with a :class:`TorchCommunicator`; rank 0 writes
``{case: {"failures": [...]}}`` to ``OUT.json``. The test starts the processes of 1, 2 and 3
ranks in turn, each launch with a timeout (and gloo's own, so a rank left waiting raises):
the one-rank launch compiles the kernels into numba's cache first, so the ranks of the
later launches load them instead of compiling all at once.

The cases, with ``W`` ranks:

- ``protocol``: each of the seven collectives against what it must do, computed in NumPy:
  even and uneven blocks, more ranks than elements, empty blocks first or last, every root,
  float32/float64 (and float16, bfloat16, summed exactly); the sums the same bits on every
  rank; the ``send`` of a reduce-scatter and a gather left as it was. The same table runs
  under ``mpiexec`` with :class:`MPICommunicator` (``--mpi``), so it states MPI's semantics
  and not only the adapter's. At ``W = 3`` it also runs over a sub-group of ranks 1 and 2
  (group ranks are not global ranks), and with ``native=True`` (torch's collectives for
  equal blocks, the path CUDA tensors take) instead of the ring.
- ``adapter``: what ``as_communicator`` makes of a process group and of ``None``; refusals.
- ``trajectories``: Adam, LAMB and SWATS, ``shard=True`` and ``False``, equal to one process
  (tests/mpi_cases.py: bit for bit on exact float32 sums, 1e-12 on random float64 means);
- ``uneven_and_empty_shards``, ``mismatches_refused``, ``nonfinite``: tests/mpi_cases.py's
  cases, unchanged;
- ``checkpoints``: save at this W; load what the launches at other W (and one plain
  process) saved; every one continues on the uninterrupted trajectory. The test then loads
  the W = 2 and 3 files in one process.

Skipped without torch (in strict mode: failed, as for every package of the test extra) and
where torch has no gloo. NCCL and CUDA arrays are not tested (no GPU here).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import mpi_cases  # noqa: E402
from strict import skip_or_fail  # noqa: E402

import fastmoments as fm  # noqa: E402
from fastmoments.distributed import (  # noqa: E402
    Communicator,
    SelfCommunicator,
    TorchCommunicator,
    as_communicator,
    shard_sizes,
)

HERE = Path(__file__)
WORLDS = (1, 2, 3)
#: seconds per launch: the first may compile every kernel (a cold numba cache)
TIMEOUTS = {1: 600, 2: 180, 3: 180}
#: gloo's own timeout in the workers: a rank left waiting raises before the launch's
GLOO_TIMEOUT = 120


# ------------------------------------------------------------------ the cases
def _values(rank: int, n: int, dtype: Any) -> np.ndarray:
    """Rank ``rank``'s buffer: multiples of 1/4 in [-2, 2], so that sums over 3 ranks
    are exact in every dtype here, in any order."""
    return (((np.arange(n) * 7 + rank * 13) % 17 - 8) / 4).astype(dtype)


def _dtypes(comm: Any) -> list[Any]:
    """float32 and float64; for torch also float16 and bfloat16 (MPI has no standard
    16-bit float type)."""
    out: list[Any] = [np.float32, np.float64]
    if isinstance(comm, TorchCommunicator):
        out.append(np.float16)
        if importlib.util.find_spec("ml_dtypes") is not None:
            import ml_dtypes

            out.append(ml_dtypes.bfloat16)
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(a.tobytes()).hexdigest()


def case_protocol(comm: Any, fails: mpi_cases.Failures, _: str) -> None:
    """The seven collectives against their definitions in comm.Communicator."""
    world, rank = comm.size, comm.rank
    fails.check(comm.allgather_object(rank) == list(range(world)), "rank/size")
    fails.check(comm.allgather_object({"rank": rank, "a": np.arange(rank)})[world - 1]["rank"]
                == world - 1, "allgather_object")
    layouts = []
    for n in (0, 2, 7, 3 * world):  # 2 at W = 3: more ranks than elements
        counts = shard_sizes(n, world)
        layouts += [counts, counts[::-1]]  # the empty blocks last, then first
    layouts.append([0] * (world - 1) + [5])  # everything on the last rank
    for dtype in _dtypes(comm):
        name = np.dtype(dtype).name
        for counts in layouts:
            n = sum(counts)
            starts = np.concatenate(([0], np.cumsum(counts))).astype(int)
            mine = slice(starts[rank], starts[rank + 1])
            label = f"{name} counts={counts}"
            total = sum(_values(r, n, np.float64) for r in range(world)).astype(dtype)

            buffer = _values(rank, n, dtype)
            comm.allreduce(buffer)
            fails.check(_same(buffer, total), f"allreduce {label}")

            send = _values(rank, n, dtype)
            recv = np.full(counts[rank], 99, dtype=dtype)
            comm.reduce_scatter(send, recv, counts)
            fails.check(_same(recv, total[mine]), f"reduce_scatter {label}")
            fails.check(_same(send, _values(rank, n, dtype)), f"reduce_scatter {label}: send")

            gathered = np.concatenate([_values(r, n, dtype)[starts[r]:starts[r + 1]]
                                       for r in range(world)])
            buffer = _values(rank, n, dtype)
            comm.allgather(buffer, counts)
            fails.check(_same(buffer, gathered), f"allgather {label}")

            for root in sorted({0, world - 1}):
                where = f"{label} root={root}"
                send = _values(rank, n, dtype)[mine].copy()
                recv = np.full(n, 99, dtype=dtype) if rank == root else None
                comm.gather(send, recv, counts, root)
                fails.check(rank != root or _same(recv, gathered), f"gather {where}")
                fails.check(_same(send, _values(rank, n, dtype)[mine]), f"gather {where}: send")

                source = _values(100 + root, n, dtype)
                recv = np.full(counts[rank], 99, dtype=dtype)
                comm.scatter(source.copy() if rank == root else None, recv, counts, root)
                fails.check(_same(recv, source[mine]), f"scatter {where}")

                buffer = _values(rank, n, dtype)
                comm.bcast(buffer, root)
                fails.check(_same(buffer, _values(root, n, dtype)), f"bcast {where}")
    # a sum that is not exact: every rank must still get the same bits
    buffer = np.random.default_rng([rank, 5]).standard_normal(1001)
    expected = sum(np.random.default_rng([r, 5]).standard_normal(1001) for r in range(world))
    comm.allreduce(buffer)
    fails.check(np.allclose(buffer, expected, rtol=1e-14, atol=1e-14), "allreduce random")
    fails.check(len(set(comm.allgather_object(_digest(buffer)))) == 1,
                "allreduce: not the same bits on every rank")


def _torch_protocol(comm: Any, fails: mpi_cases.Failures, folder: str) -> None:
    """The table over the whole group, with torch's collectives for equal blocks
    (``native=True``, the CUDA path's choice) instead of the ring, and at W = 3 over a
    sub-group of ranks 1 and 2 (every rank calls new_group; only members use it)."""
    import torch.distributed as dist

    case_protocol(comm, fails, folder)
    sub = mpi_cases.Failures()
    case_protocol(TorchCommunicator(native=True), sub, folder)
    fails.extend(f"native=True: {f}" for f in sub)
    if comm.size == 3:
        group = dist.new_group([1, 2])
        if comm.rank in (1, 2):
            sub = mpi_cases.Failures()
            pair = as_communicator(group)
            fails.check((pair.rank, pair.size) == (comm.rank - 1, 2), "sub-group rank")
            case_protocol(pair, sub, folder)
            fails.extend(f"sub-group [1, 2]: {f}" for f in sub)
        dist.barrier()


def _raises(kind: type, word: str, fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except kind as exc:
        return word in str(exc)
    return False


def case_adapter(comm: Any, fails: mpi_cases.Failures, _: str) -> None:
    """as_communicator of a process group and of None; what the adapter refuses."""
    import torch
    import torch.distributed as dist

    fails.check(isinstance(comm, TorchCommunicator) and isinstance(comm, Communicator),
                f"as_communicator(group) gave {comm!r}")
    default = as_communicator(None)  # MPI's world is this process alone: torch's group
    fails.check(isinstance(default, TorchCommunicator)
                and (default.rank, default.size) == (comm.rank, comm.size),
                f"as_communicator(None) gave {default!r}")
    a = np.arange(5.0)
    fails.check(comm._tensor(a, "a").data_ptr() == a.ctypes.data, "NumPy buffers are copied")
    fails.check(_raises(TypeError, "group", lambda: TorchCommunicator(object())),
                "a group that is not one")
    fails.check(_raises(ValueError, "native", lambda: TorchCommunicator(native="yes")),
                "native='yes'")
    fails.check(_raises(TypeError, "allreduce", lambda: comm.allreduce([1.0, 2.0])), "a list")
    fails.check(_raises(ValueError, "contiguous",
                        lambda: comm.bcast(np.ones((2, 4))[:, ::2], 0)), "a strided buffer")
    fails.check(_raises(TypeError, "sum", lambda: comm.allreduce(np.zeros(2, "datetime64[s]"))),
                "a sum of datetimes")
    tensor = torch.arange(3.0) + comm.rank  # torch tensors go as they are
    comm.allreduce(tensor)
    expected = [comm.size * i + sum(range(comm.size)) for i in range(3)]
    fails.check(tensor.tolist() == expected, f"a tensor: {tensor.tolist()} != {expected}")
    fails.check(dist.get_backend(comm.group) == "gloo", "not gloo")


_SUM_LEFT = "shard=False leaves the sum in flat.grad"


class _InexactSums(mpi_cases.Failures):
    """Failures, less one check of tests/mpi_cases.py for the runs labelled ``inexact``.

    mpi_cases checks that ``shard=False`` leaves in ``flat.grad`` exactly NumPy's sum of
    the ranks' gradients taken in rank order: MPICH adds in that order at 3 ranks, gloo's
    all-reduce in another. Where the sum is not exact (float64 normals) the bits then
    differ by round-off, which the protocol allows (every rank gets the same bits: the
    protocol case checks that); :func:`case_trajectories` checks that sum to 1e-12 instead.
    """

    def __init__(self, inexact: set[str]) -> None:
        super().__init__()
        self.inexact = inexact

    def append(self, what: str) -> None:
        if not any(what == f"{label}: {_SUM_LEFT}" for label in self.inexact):
            super().append(what)


def _nonfinite(comm: Any, fails: mpi_cases.Failures, folder: str) -> None:
    """mpi_cases.case_nonfinite (LAMB's run there has float64 normal gradients)."""
    mine = _InexactSums({"LAMB skip shard=False"})
    mpi_cases.case_nonfinite(comm, mine, folder)
    fails.extend(mine)


def case_trajectories(comm: Any, fails: mpi_cases.Failures, _: str) -> None:
    """Adam, LAMB and SWATS (a switch at step 2), sharded and not: one process's
    trajectory, bit for bit on exact sums (and on the mean itself at W <= 2), to 1e-12 on
    random float64 gradients with shards that cut tensors; ``shard=False`` leaves the sum
    of the ranks' gradients in ``flat.grad``, the same bits on every rank."""
    world, rank = comm.size, comm.rank
    for name, hyper in (("Adam", {}), ("LAMB", {"weight_decay": 0.01}),
                        ("SWATS", {"switch_tol": 10.0})):
        for shard in (True, False):
            label = f"{name} shard={shard}"
            mpi_cases.trajectory(comm, fails, f"{label} exact", name, hyper,
                                 groups=mpi_cases.aligned(world), dtype=np.float32,
                                 kind="exact", reference="sum", tol=0.0, shard=shard)
            mine = _InexactSums({f"{label} straddling"})
            opt = mpi_cases.trajectory(comm, mine, f"{label} straddling", name, hyper,
                                       groups=mpi_cases.STRADDLING, dtype=np.float64,
                                       kind="random", reference="mean", tol=mpi_cases.TOL,
                                       shard=shard)
            fails.extend(mine)
            if not shard:  # the last step's sum, as mpi_cases.trajectory drew it
                flat = opt._shards[0].flat
                grads = mpi_cases.gradients(mpi_cases.STEPS * 10, flat.numel, world,
                                            np.float64, "random")
                fails.check(mpi_cases.close(flat.grad, mpi_cases.total(grads), mpi_cases.TOL)
                            and len(set(comm.allgather_object(_digest(flat.grad)))) == 1,
                            f"{label} straddling: flat.grad is not the sum (rank {rank})")
        if world in (1, 2):
            mpi_cases.trajectory(comm, fails, f"{name} on the mean", name, hyper,
                                 groups=mpi_cases.aligned(world), dtype=np.float32,
                                 kind="exact", reference="mean", tol=0.0)


CASES: dict[str, Callable[[Any, mpi_cases.Failures, str], None]] = {
    "protocol": _torch_protocol,
    "adapter": case_adapter,
    "trajectories": case_trajectories,
    "uneven_and_empty_shards": mpi_cases.case_uneven_and_empty_shards,
    "mismatches_refused": mpi_cases.case_mismatches_refused,
    "nonfinite": _nonfinite,
    "checkpoints": mpi_cases.checkpoint_roundtrips,
}


def main(argv: list[str]) -> None:
    fm.config.background_compile = False
    if argv[0] == "--mpi":  # under mpiexec: the protocol table with MPICommunicator
        from mpi4py import MPI

        mpi_cases.run_cases(as_communicator(MPI.COMM_WORLD), {"protocol": case_protocol},
                            argv[1], argv[2])
        return
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world, init, out, folder = int(argv[0]), int(argv[1]), argv[2], argv[3], argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                            world_size=world,
                            timeout=datetime.timedelta(seconds=GLOO_TIMEOUT))
    mpi_cases.run_cases(as_communicator(dist.group.WORLD), CASES, out, folder)
    dist.barrier()  # every rank is done (rank 0 has written the results)
    # and out, without the interpreter's teardown: gloo's threads can abort it ("terminate
    # called without an active exception", exit -6), seen in one cold run of the suite
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ------------------------------------------------------------------ the tests
def _gloo() -> None:
    pytest.importorskip("torch")  # (strict mode: torch is in the test extra, it must import)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        skip_or_fail("this torch has no torch.distributed with gloo")


def _env() -> dict[str, str]:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(fm.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # (set by conftest; the ranks need no GPU)
    return env


def _launch(commands: list[list[str]], timeout: float) -> str | None:
    """Start the processes; None when all exit with 0, else what went wrong. Each runs
    in its own session: on a timeout every one is killed with its children."""
    procs = [subprocess.Popen(c, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True) for c in commands]
    deadline = time.monotonic() + timeout
    outputs, problem = [], None
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            problem = f"timed out after {timeout} s"
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            outputs.append(proc.communicate()[0])
            outputs += [p.communicate()[0] for p in procs[len(outputs):]]
            break
    if problem is None and any(p.returncode != 0 for p in procs):
        problem = f"exit codes {[p.returncode for p in procs]}"
    if problem is None:
        return None
    return problem + "".join(f"\n--- process {i}:\n{o[-3000:]}" for i, o in enumerate(outputs))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Where the launches leave their checkpoints for each other."""
    return tmp_path_factory.mktemp("distributed-torch")


@pytest.fixture(scope="module")
def launches(folder) -> dict[int, dict]:
    """Every case at W = 1, 2, 3 (in that order); per W, the cases' failures."""
    _gloo()
    out: dict[int, dict] = {}
    for world in WORLDS:
        report, init = folder / f"results-{world}.json", folder / f"init-{world}"
        commands = [[sys.executable, str(HERE), str(rank), str(world), str(init), str(report),
                     str(folder)] for rank in range(world)]
        problem = _launch(commands, TIMEOUTS[world])
        out[world] = ({"launch": problem} if problem or not report.exists()
                      else json.loads(report.read_text()))
    return out


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_case_over_gloo(launches, world, case):
    results = launches[world]
    assert "launch" not in results, results.get("launch")
    assert case in results, f"{case} did not run"
    failures = results[case]["failures"]
    assert not failures, "\n".join(failures[:20])


def test_checkpoints_saved_over_gloo_load_in_one_process(launches, folder):
    """The checkpoints saved by 2 and 3 gloo ranks load into a one-process
    ShardedOptimizer and a plain optimizer, and continue on the uninterrupted run."""
    assert all("launch" not in launches[w] for w in WORLDS)
    saved = {p.name for p in folder.glob("*-W*.npz")}
    assert {f"{name}-W{w}.npz" for name, _ in mpi_cases.CHECKPOINT_RULES for w in WORLDS} <= saved
    fails = mpi_cases.Failures()
    mpi_cases.checkpoint_roundtrips(SelfCommunicator(), fails, str(folder))
    assert not fails, "\n".join(fails)


HAS_MPI = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@pytest.mark.skipif(not (HAS_MPI and MPIEXEC),
                    reason="mpi4py or mpiexec is not installed (pip install 'fastmoments[mpi]')")
def test_the_protocol_table_states_mpis_semantics(tmp_path):
    """The protocol case, run by MPICommunicator under mpiexec at 3 ranks (equal and
    uneven blocks, empty ones, more ranks than elements): what the torch adapter is
    checked against is what the MPI one does."""
    world = 3
    report = tmp_path / "results.json"
    problem = _launch([[MPIEXEC, "-n", str(world), sys.executable, str(HERE), "--mpi",
                        str(report), str(tmp_path)]], 120)
    assert problem is None, problem
    failures = json.loads(report.read_text())["protocol"]["failures"]
    assert not failures, "\n".join(failures[:20])


def test_without_an_initialized_group_the_adapter_refuses():
    _gloo()
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("torch.distributed is initialized in this test process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        TorchCommunicator()


def test_importing_fastmoments_distributed_does_not_import_torch():
    code = ("import sys, fastmoments, fastmoments.distributed; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})


if __name__ == "__main__":
    main(sys.argv[1:])
