"""fastmoments.distributed: the sharded optimizer at 1, 2 and 3 ranks, against one process.

The MPI cases live in tests/mpi_cases.py (what each checks, and why some are bit for
bit and others to 1e-12, is said there). They run as three ``mpiexec`` launches, one per
world size, each with a timeout, batched so that a launch runs every case; the first
launch (one rank) compiles the kernels into numba's cache, so the ranks of the later
launches load them instead of compiling all at once. The launches need mpi4py and an
``mpiexec`` (the ``mpi`` extra: mpi4py and mpich from PyPI) and are skipped without them.
The tests after them need no MPI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmoments as fm
from fastmoments.distributed import (
    Communicator,
    SelfCommunicator,
    ShardedOptimizer,
    as_communicator,
    shard_ranges,
    shard_sizes,
)
from fastmoments.kernels.segments import Parts, Segments

sys.path.insert(0, str(Path(__file__).parent))
import mpi_cases  # noqa: E402

CASES = Path(__file__).with_name("mpi_cases.py")
WORLDS = (1, 2, 3)
#: seconds per launch: the first may compile every kernel (a cold numba cache)
TIMEOUTS = {1: 600, 2: 180, 3: 180}
HAS_MPI = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    not (HAS_MPI and MPIEXEC),
    reason="mpi4py or mpiexec is not installed (pip install 'fastmoments[mpi]')")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Where the launches leave their checkpoints for each other."""
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def launches(folder) -> dict[int, dict]:
    """Run every case at W = 1, 2, 3 (in that order); per W, the cases' failures."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(fm.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # (set by conftest; the ranks need no GPU)
    out: dict[int, dict] = {}
    for world in WORLDS:
        report = folder / f"results-{world}.json"
        command = [MPIEXEC, "-n", str(world), sys.executable, str(CASES), str(report),
                   str(folder)]
        # its own process group: a launch that times out is killed with all its ranks
        launch = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = launch.communicate(timeout=TIMEOUTS[world])
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            output, _ = launch.communicate()
            out[world] = {"launch": f"timed out after {TIMEOUTS[world]} s: {output[-4000:]}"}
            continue
        if launch.returncode != 0 or not report.exists():
            out[world] = {"launch": f"exit {launch.returncode}: {output[-4000:]}"}
            continue
        out[world] = json.loads(report.read_text())
    return out


@needs_mpi
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", sorted(mpi_cases.CASES))
def test_case_under_mpiexec(launches, world, case):
    results = launches[world]
    assert "launch" not in results, results.get("launch")
    assert case in results, f"{case} did not run"
    failures = results[case]["failures"]
    assert not failures, "\n".join(failures[:20])


@needs_mpi
def test_checkpoints_of_every_world_size_continue_in_one_process(launches, folder):
    """The checkpoints saved at W = 1, 2, 3 (and by a plain optimizer) load into a
    one-process ShardedOptimizer (no MPI) and a plain optimizer, and continue on the
    uninterrupted trajectory."""
    assert all("launch" not in launches[w] for w in WORLDS)
    saved = sorted(p.name for p in folder.glob("*-W*.npz") if "damaged" not in p.name)
    assert {f"AdamW-W{w}.npz" for w in WORLDS} <= set(saved)
    fails = mpi_cases.Failures()
    mpi_cases.checkpoint_roundtrips(SelfCommunicator(), fails, str(folder))
    assert not fails, "\n".join(fails)


# ------------------------------------------------------------- without MPI
def test_shard_sizes_follow_deepspeed_split():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert shard_sizes(11, 3) == [4, 4, 3]
    assert shard_sizes(2, 3) == [1, 1, 0]
    assert shard_sizes(0, 2) == [0, 0]
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(2, 3) == [(0, 1), (1, 2), (2, 2)]
    with pytest.raises(ValueError):
        shard_sizes(3, 0)


def _per_segment_sums(segments: Segments, buffer: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum ``buffer`` per segment by walking the chunk table in NumPy."""
    out = np.zeros(segments.num_segments)
    for j, seg, first, count, stride, _ in segments.chunks:
        base = offsets[j]
        out[seg] += buffer[base + first: base + first + count * stride: stride].sum()
    return out


@pytest.mark.parametrize("world", [2, 3, 5, 40])
def test_shard_segment_tables_cover_each_segment_once(world):
    """The tables of the parts (one per rank) cover every element of every segment once,
    under the whole table's numbering: rows, columns, whole tensors, an empty tensor,
    and chunks longer than CHUNK."""
    from fastmoments.kernels import segments

    shapes = [(3, 5), (4, 3, 2), (0, 3), (7,), (2, 3 * segments.CHUNK // 2 + 5)]
    layouts = {
        "whole": [(1, int(np.prod(s)), 1) for s in shapes],
        "rows": [(int(np.prod(s[:-1])), s[-1], 1) if len(s) >= 2 else None for s in shapes],
        "columns": [(1, s[0], int(np.prod(s[1:]))) if len(s) >= 2 else None for s in shapes],
    }
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    buffer = np.random.default_rng(0).integers(1, 5, int(offsets[-1])).astype(np.float64)
    for name, layout in layouts.items():
        whole = Segments(offsets, layout)
        expected = _per_segment_sums(whole, buffer, offsets)
        got = np.zeros_like(expected)
        for start, stop in shard_ranges(int(offsets[-1]), world):
            tensors, starts, pieces = [], [], [0]
            for j in range(len(shapes)):
                lo, hi = max(start, offsets[j]), min(stop, offsets[j + 1])
                if hi > lo:
                    tensors.append(j)
                    starts.append(lo - offsets[j])
                    pieces.append(pieces[-1] + hi - lo)
            if not tensors:
                continue
            part = Segments(np.array(pieces), layout, Parts(np.array(tensors), np.array(starts)))
            assert part.num_segments == whole.num_segments
            assert (part.chunks[:, 3] <= segments.CHUNK).all()
            got += _per_segment_sums(part, buffer[start:stop], np.array(pieces))
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_whole_tables_are_unchanged_by_the_shard_hook():
    """Without parts, a table is built as before: the whole tensors' chunks, in order."""
    shapes = [(3, 5), (2, 2, 3), (4,)]
    offsets = np.concatenate(([0], np.cumsum([int(np.prod(s)) for s in shapes])))
    rows = [(int(np.prod(s[:-1])), s[-1], 1) for s in shapes]
    table = Segments(offsets, rows)
    parts = Segments(offsets, rows, Parts(np.arange(3), np.zeros(3, dtype=np.int64)))
    np.testing.assert_array_equal(table.chunks, parts.chunks)
    assert table.one_to_one and parts.one_to_one


@pytest.mark.parametrize("name, hyper", mpi_cases.rules(), ids=lambda x: str(x))
def test_one_rank_is_one_process_bit_for_bit(name, hyper):
    """SelfCommunicator (one process, no MPI): the same parameters as a plain optimizer
    with a loss scale, two param groups, per-element clipping, bit for bit; with global
    clipping to round-off (the clipping factor reaches the kernel as ``1 / (scale /
    factor)`` instead of ``factor / scale``)."""
    fails = mpi_cases.Failures()
    comm = SelfCommunicator()
    groups = (mpi_cases.masked([(2, 3)], [(4,)], name) if name in ("AdamW", "LAMB", "NDAdam")
              else mpi_cases.aligned(1))
    mpi_cases.trajectory(comm, fails, f"{name}{hyper}", name, hyper, groups=groups,
                         dtype=np.float32, kind="exact", reference="mean", tol=0.0,
                         options={"clip_value": 0.7}, grad_scale=2.0, scale=3.0)
    mpi_cases.trajectory(comm, fails, f"{name}{hyper} clipped", name, hyper, groups=groups,
                         dtype=np.float64, kind="random", reference="mean", tol=mpi_cases.TOL,
                         options={"max_grad_norm": 0.5, "nonfinite": "skip"}, grad_scale=2.0,
                         scale=3.0)
    assert not fails, "\n".join(fails)


def test_the_consolidated_state_dict_is_the_plain_one_and_loads_back():
    flat = fm.FlatParams([np.ones((2, 3)), np.arange(4.0)])
    plain_flat = fm.FlatParams([np.ones((2, 3)), np.arange(4.0)])
    opt = ShardedOptimizer(fm.LAMB, flat, SelfCommunicator(), weight_decay=0.1)
    plain = fm.LAMB(plain_flat, weight_decay=0.1)
    for t in range(3):
        flat.grad[:] = plain_flat.grad[:] = np.sin(np.arange(10.0) + t)
        opt.step()
        plain.step()
    assert mpi_cases._same_state(opt.state_dict(), plain.state_dict())
    other = ShardedOptimizer(fm.LAMB, fm.FlatParams([np.ones((2, 3)), np.arange(4.0)]),
                             SelfCommunicator(), weight_decay=0.1)
    other.load_state_dict(plain.state_dict())
    assert mpi_cases._same_state(other.state_dict(), plain.state_dict())
    bad = plain.state_dict()
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"][:-1]
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="saved by"):
        other.load_state_dict({**plain.state_dict(), "optimizer": "Adam"})


def test_arguments_are_checked():
    comm = SelfCommunicator()
    flat = fm.FlatParams([np.ones(3)])
    with pytest.raises(TypeError, match="FlatParams"):
        ShardedOptimizer(fm.Adam, [np.ones(3)], comm)
    with pytest.raises(TypeError, match="FlatParams"):
        ShardedOptimizer(fm.Adam, [{"params": [np.ones(3)]}], comm)
    with pytest.raises(TypeError, match="optimizer class"):
        ShardedOptimizer(fm.Adam(flat), flat, comm)
    with pytest.raises(ValueError, match="two param groups"):
        ShardedOptimizer(fm.Adam, [{"params": flat}, {"params": flat}], comm)
    with pytest.raises(ValueError, match="nonfinite"):
        ShardedOptimizer(fm.Adam, flat, comm, nonfinite="ignore")
    with pytest.raises(ValueError, match="lr"):
        ShardedOptimizer(fm.Adam, flat, comm, lr=-1.0)
    opt = ShardedOptimizer(fm.Adam, flat, comm)
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step(grad_scale=0.0)
    with pytest.raises(AttributeError, match="Schedule-Free"):
        opt.eval()
    with pytest.raises(TypeError, match="Communicator"):
        as_communicator(object())


def test_the_adapter_protocol_is_small_and_self_communicator_satisfies_it():
    assert isinstance(SelfCommunicator(), Communicator)
    names = {n for n in vars(Communicator) if not n.startswith("_")}
    assert names == {"rank", "size", "allreduce", "reduce_scatter", "allgather", "gather",
                     "scatter", "bcast", "allgather_object"}


def test_importing_fastmoments_does_not_import_mpi4py():
    code = ("import sys, fastmoments, fastmoments.distributed; "
            "assert 'mpi4py' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
                    reason="runs under numba's CUDA simulator (set by conftest)")
@pytest.mark.parametrize("name", ["AdamW", "LAMB"])
def test_a_cuda_flatparams_steps_on_one_rank_under_the_simulator(name, monkeypatch):
    """The CUDA side at one rank (SelfCommunicator): what a plain optimizer does, and a
    consolidated state dict on the host. (More ranks need a CUDA-aware MPI: not tested.)"""
    from numba import cuda

    monkeypatch.setattr(fm.config, "cuda_threads_per_block", 32)  # (the simulator's speed)

    host = [np.linspace(-1.0, 1.0, 6).reshape(2, 3), np.ones(4)]
    plain_flat = fm.FlatParams([cuda.to_device(h) for h in host])
    flat = fm.FlatParams([cuda.to_device(h) for h in host])
    cls = getattr(fm, name)
    plain = cls(plain_flat, max_grad_norm=1.0)
    opt = ShardedOptimizer(cls, flat, SelfCommunicator(), max_grad_norm=1.0)
    for t in range(3):
        g = np.sin(np.arange(10.0) + t)
        plain_flat.grad.copy_to_device(g)
        flat.grad.copy_to_device(g)
        assert opt.step() == pytest.approx(plain.step(), rel=1e-12)
    np.testing.assert_allclose(flat.data.copy_to_host(), plain_flat.data.copy_to_host(),
                               rtol=1e-12, atol=1e-12)
    state = opt.state_dict()["state"][0]
    assert all(isinstance(a, np.ndarray) and a.shape == (10,) for a in state.values())
