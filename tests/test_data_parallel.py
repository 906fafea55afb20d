"""examples/data_parallel.py: the loss curve at 1, 2 and 3 ranks is the one-process curve.

The example runs under ``mpiexec -n W`` (W = 1, 2, 3; 3 ranks split a batch of 64 rows
22/21/21), each launch with a timeout, after a run in this process (a plain
``fm.AdamW``, the reference) has compiled the kernels into numba's cache, so that the
ranks load them instead of compiling all at once. The launches need mpi4py and an
``mpiexec`` and are skipped without them, as in tests/test_distributed.py; the
in-process checks run without MPI.

Why the tolerance: a rank writes ``W / n`` times the gradient of its rows' summed loss
and the optimizer takes the mean over the ranks, which is the whole batch's mean
gradient in exact arithmetic for any split. In floating point the rows are summed in
another order (each rank's matmul over its rows, then MPI's sum over the ranks, where
one process sums all rows in one matmul), so the curves agree to round-off: 5e-16
relative was measured over 600 steps at 3 ranks; 1e-12 leaves room for the drift of
100 float64 Adam steps and still fails on a real difference. (Adam barely sees a
gradient's scale: leaving out the factor ``W`` at 2 ranks moved the curve by 2.6e-7
relative, through ``eps`` alone, and failed here; a rank stepping on its own rows'
gradient would change the curve far more.)
One rank does no arithmetic of its own and must match the plain run bit for bit.
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
from children import child_env

import fastmoments as fm

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data_parallel.py"
WORLDS = (1, 2, 3)
#: seconds per launch: the first may still compile what the in-process run did not
TIMEOUTS = {1: 300, 2: 180, 3: 180}
RTOL = 1e-12
HAS_MPI = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    not (HAS_MPI and MPIEXEC),
    reason="mpi4py or mpiexec is not installed (pip install 'fastmoments[mpi]')")


def load_example():
    """Import the example by path (examples/ is no package)."""
    spec = importlib.util.spec_from_file_location("fastmoments_example_data_parallel", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plain() -> dict:
    """One process, a plain fm.AdamW: the reference curve (and numba's cache warmed)."""
    return load_example().main(quick=True, plain=True,
                               comm=fm.distributed.SelfCommunicator())


@pytest.fixture(scope="module")
def launches(plain, tmp_path_factory) -> dict[int, dict]:
    """Per W: the example's JSON result and its output, or ``{"launch": why}``."""
    folder = tmp_path_factory.mktemp("data_parallel")
    env = child_env({**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # (set by conftest; the ranks need no GPU)
    out: dict[int, dict] = {}
    for world in WORLDS:
        report = folder / f"curve-{world}.json"
        command = [MPIEXEC, "-n", str(world), sys.executable, str(EXAMPLE), "--quick",
                   "--out", str(report)]
        # its own process group: a launch that times out is killed with all its ranks
        launch = subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.PIPE,
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
        out[world] = {**json.loads(report.read_text()), "output": output}
    return out


def test_the_reference_run_learns(plain):
    curve = plain["curve"]
    assert len(curve) == plain["steps"] == 100
    assert plain["final_train_loss"] < 0.7 * curve[0]
    assert plain["replicas_identical"] and plain["world_size"] == 1


def test_one_rank_without_mpi_is_the_plain_run_bit_for_bit(plain):
    """The sharded optimizer over SelfCommunicator (what the example runs without mpi4py)."""
    sharded = load_example().main(quick=True, comm=fm.distributed.SelfCommunicator())
    assert sharded["curve"] == plain["curve"]
    assert sharded["state_bytes"] == plain["state_bytes"]


def test_plain_refuses_several_ranks():
    class Two(fm.distributed.SelfCommunicator):
        size = 2

    with pytest.raises(ValueError, match="plain"):
        load_example().main(quick=True, plain=True, comm=Two())


@needs_mpi
@pytest.mark.parametrize("world", WORLDS)
def test_the_curve_under_mpiexec_is_the_one_process_curve(launches, plain, world):
    result = launches[world]
    assert "launch" not in result, result.get("launch")
    assert result["world_size"] == world and not result["plain"]
    assert result["replicas_identical"]
    curve, reference = np.array(result["curve"]), np.array(plain["curve"])
    assert curve.shape == reference.shape == (100,)
    if world == 1:
        np.testing.assert_array_equal(curve, reference)
    else:
        np.testing.assert_allclose(curve, reference, rtol=RTOL, atol=0)
    assert result["final_train_loss"] == pytest.approx(plain["final_train_loss"], rel=RTOL)
    # the state is sharded: this rank's (rank 0's, the largest) part of the two moments
    numel = plain["state_bytes"] // 16  # AdamW, float64: two moments of 8 bytes
    assert result["state_bytes"] == 16 * fm.distributed.shard_sizes(numel, world)[0]
    split = [len(part) for part in np.array_split(np.arange(64), world)]
    assert f"rows per rank {split}" in result["output"]
    assert "batch loss" in result["output"]
