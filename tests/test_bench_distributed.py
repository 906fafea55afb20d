"""Smoke tests of ``fastmoments bench --distributed``: the fields and their sanity, never speed.

Two launches at a tiny size, each with a timeout: ``python -m
fastmoments.tools.bench_distributed`` at one rank (which also warms numba's cache), then
``fastmoments bench --distributed`` at two. They need mpi4py and an ``mpiexec`` and are
skipped without them, as in tests/test_distributed.py; the projection's arithmetic and
the checks of the options run without MPI.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from children import child_env

from fastmoments.tools import bench
from fastmoments.tools.bench.distributed import PROJECTED_WORLDS, project, ring_bytes

HAS_MPI = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    not (HAS_MPI and MPIEXEC),
    reason="mpi4py or mpiexec is not installed (pip install 'fastmoments[mpi]')")
NUMEL = 1000
TIMED = ["sharded_step", "reduce_scatter", "shard_step", "all_gather", "replicated_step",
         "replicated_local_step", "one_process_step", "mpi_allreduce", "mpi_reduce_scatter",
         "mpi_allgather"]
MOVED = ["shard_step", "replicated_local_step", "one_process_step", "reduce_scatter",
         "all_gather", "mpi_allreduce", "mpi_reduce_scatter", "mpi_allgather"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _launch(world: int, argv: list[str], folder: Path, timeout: int) -> str:
    env = child_env({**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # (set by conftest; the ranks need no GPU)
    # its own process group: a launch that times out is killed with all its ranks
    launch = subprocess.Popen([MPIEXEC, "-n", str(world), sys.executable, *argv], env=env,
                              cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        output, _ = launch.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        output, _ = launch.communicate()
        pytest.fail(f"timed out after {timeout} s: {output[-4000:]}")
    assert launch.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[dict, str]]:
    """Per world size: the JSON document and the printed text."""
    folder = tmp_path_factory.mktemp("bench_distributed")
    one = _launch(1, ["-m", "fastmoments.tools.bench_distributed", "--numel", str(NUMEL),
                      "--repeat", "2", "--json", "one.json"], folder, 300)
    two = _launch(2, ["-m", "fastmoments", "bench", "--distributed", "--numel", "1e3",
                      "--repeat", "2", "--rules", "adamw", "--network-gbps", "100,400",
                      "--save", "two.json"], folder, 180)
    return {1: (json.loads((folder / "one.json").read_text()), one),
            2: (json.loads((folder / "two.json").read_text()), two)}


@needs_mpi
@pytest.mark.parametrize("world", [1, 2])
def test_every_figure_is_there_and_positive(runs, world):
    doc, text = runs[world]
    assert doc["machine"]["cpu"] and doc["machine"]["numba"]
    (r,) = doc["runs"]
    assert (r["optimizer"], r["dtype"], r["numel"], r["world_size"]) == (
        "AdamW", "float32", NUMEL, world)
    for key in TIMED:
        assert _positive(r[key]), key
    # AdamW float32: two moments of 4 bytes; the shard's state is 1/W of it
    assert r["state_bytes_per_rank_replicated"] == 8 * NUMEL
    assert r["state_bytes_per_rank_sharded"] == 8 * NUMEL // world
    assert r["step_bytes_per_element"] == 28
    assert r["sent_bytes_per_rank_per_step"] == 2 * 4 * NUMEL * (world - 1) // world
    for key in MOVED:
        moves = world > 1 or key in ("shard_step", "replicated_local_step",
                                     "one_process_step")
        assert (_positive(r["gbps"][key]) if moves else r["gbps"][key] is None), key
        if moves:
            assert r["gbps"][key] == pytest.approx(r["bytes"][key] / r[key] / 1e9)
    for label in ("reduce-scatter", "shard step", "all-gather", "shard=False step",
                  "one process, plain step", "MPI Allreduce", "state per rank", "GB/s"):
        assert label in text, label


@needs_mpi
def test_the_projection_is_printed_and_saved(runs):
    doc, text = runs[2]
    (r,) = doc["runs"]
    assert [row["world_size"] for row in r["projection"]] == list(PROJECTED_WORLDS)
    for row in r["projection"]:
        for band in ("100", "400"):
            assert all(_positive(row[band][k]) for k in ("comm", "step", "replicated_step"))
    assert "PROJECTION (computed, not measured)" in text
    assert "100 Gb/s per node" in text and "400 Gb/s per node" in text
    assert "PROJECTION" not in runs[1][1]  # only when --network-gbps is given


def test_projection_arithmetic():
    r = {"numel": 1000, "itemsize": 4, "shard_step": 1e-3, "shard_numel": 500,
         "state_bytes_per_rank_replicated": 8000}
    (row,) = project(r, [100.0], latency_us=2.0, worlds=[8])
    assert row["shard_numel"] == 125
    assert row["shard_step"] == pytest.approx(1e-3 / 500 * 125)
    assert row["state_bytes_per_rank"] == pytest.approx(1000.0)
    sent = 2 * 7 / 8 * 4000  # reduce-scatter + all-gather, ring: (W-1)/W of 4000 bytes each
    assert row["sent_bytes_per_rank"] == pytest.approx(sent)
    comm = sent / (100e9 / 8) + 2 * 7 * 2e-6
    assert row["100"]["comm"] == pytest.approx(comm)
    assert row["100"]["step"] == pytest.approx(1e-3 / 500 * 125 + comm)
    assert row["100"]["replicated_step"] == pytest.approx(1e-3 / 500 * 1000 + comm)
    (uneven,) = project(r, [], worlds=[3])
    assert uneven["shard_numel"] == 334  # the largest shard, ceil(1000 / 3)


def test_ring_bytes():
    assert ring_bytes("reduce_scatter", 4000, 4) == 3000
    assert ring_bytes("allgather", 4000, 4) == 3000
    assert ring_bytes("allreduce", 4000, 4) == 6000
    assert ring_bytes("allreduce", 4000, 1) == 0


@pytest.mark.parametrize("argv, message", [
    (["--numel", "0"], "--numel"),
    (["--numel", "1e7x"], "--numel"),
    (["--repeat", "0"], "--repeat"),
    (["--network-gbps", "100,-1"], "--network-gbps"),
    (["--latency-us", "nan"], "--latency-us"),
    (["--rules", "nosuch"], "--rules"),
    (["--dtypes", "float16"], "--dtypes"),
    (["--tiny"], "--tiny"),
    (["--backend", "cuda"], "--backend cuda"),
])
def test_bad_options_are_refused_before_mpi_starts(capsys, argv, message):
    assert bench.main(["--distributed", *argv]) == 2
    err = capsys.readouterr().err
    assert "fastmoments bench: error:" in err and message in err
