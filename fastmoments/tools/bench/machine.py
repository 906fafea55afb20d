"""What a run ran on: the CPU, the versions, the load of other processes.

:func:`machine_info` goes into every result file; :class:`OtherLoad` measures how
busy other processes kept the cores during the run (a busy machine makes the
timings pessimistic); :func:`start_busy` provides that load on purpose
(``--contend``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numba
import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds used by the whole machine, by this process and its waited children)."""
    try:
        import resource

        with open("/proc/stat") as handle:
            ticks = [int(x) for x in handle.readline().split()[1:9]]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not Linux
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return busy, own


class OtherLoad:
    """How many cores other processes kept busy, on average, while the benchmark ran."""

    def __init__(self) -> None:
        self.start = _cpu_seconds()
        self.t0 = time.perf_counter()

    def cores(self) -> float | None:
        end = _cpu_seconds()
        wall = time.perf_counter() - self.t0
        if self.start is None or end is None or wall <= 0:
            return None
        return max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / wall)


def threading_layer() -> str | None:
    """numba's threading layer, once a parallel loop has run (None before)."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _source_revision() -> str | None:
    """``git describe --always --dirty`` of the source tree, when run from a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def machine_info(backend: str = "cpu") -> dict[str, Any]:
    """CPU model, core counts, library versions and the date, for the results."""
    import fastmoments as fm

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "fastmoments": fm.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "parallel_threshold": fm.config.parallel_threshold,
        "source": _source_revision(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
    else:  # without importing it (seconds)
        try:
            info["torch"] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            info["torch"] = None
    try:  # the peer of the int8 rows (--state-dtype int8)
        info["bitsandbytes"] = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        info["bitsandbytes"] = None
    try:  # the other peer of the int8 rows (--compare torchao)
        info["torchao"] = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        info["torchao"] = None
    if backend == "cuda":
        from numba import cuda

        name = getattr(cuda.get_current_device(), "name", "numba CUDA simulator")
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["cuda_threads_per_block"] = fm.config.cuda_threads_per_block
        info["cuda_max_blocks"] = fm.config.cuda_max_blocks
    return info


# ------------------------------------------------------------ contention
def start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` busy-loop processes, the k-th pinned to core k (mod the usable cores)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = list(range(os.cpu_count() or 1))
    procs = []
    for k in range(count):
        core = cores[k % len(cores)]
        code = (f"import os\ntry:\n    os.sched_setaffinity(0, {{{core}}})\nexcept Exception:\n"
                "    pass\nwhile True:\n    pass\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
    time.sleep(0.2)
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    """Stop the processes of :func:`start_busy` and wait for them."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            p.kill()
