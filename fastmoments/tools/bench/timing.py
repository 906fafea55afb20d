"""How a case is timed: interleaved rounds, minimum and median, and the first step.

:func:`time_steps` times several cases in the same rounds (a rule and its ceiling see
the same machine over the same seconds); :func:`first_step` times the first ``step()``
of a fresh Python process, cold (empty numba cache) or cached.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...kernels.compile import wait_compiled
from .cases import Case, fastmoments_case


@dataclass
class Timing:
    """Seconds per call: the minimum and the median over ``repeats`` samples (one per
    round of :func:`time_steps`: a call, or the mean call of a block of short ones)."""

    min: float
    median: float
    repeats: int


def time_steps(cases: Sequence[Case], budget: float = 0.5, warmup: int = 2,
               min_repeats: int = 5, max_repeats: int = 100_000,
               block: float = 200e-6) -> list[Timing]:
    """Time several cases' ``step`` calls interleaved (one block of each per round).

    After ``warmup`` untimed calls of each (compilation; after the first, the wait for
    the parallel loops compiled in the background), rounds are timed until
    ``budget`` seconds have been spent and at least ``min_repeats`` rounds were made;
    the garbage collector is off. In a round each case runs a block of consecutive
    calls (synchronized at its end) lasting about ``block`` seconds, and the block's
    time per call is one sample: a call of ``block`` or more is a block of one
    (every call timed alone), a call of a few microseconds a block of many (so that
    the calls of another case, e.g. torch's slower step, do not evict its code and
    data between two of its calls: each case is timed in its own hot loop, as
    ``timeit`` does).
    Cases timed together see the same machine over the same seconds: a rule and its
    ceiling measured this way give a fraction that another process's load, or this
    machine's drift, cannot inflate. Returns the minimum and the median of the samples.
    """
    clock = time.perf_counter
    calls = []
    for case in cases:
        for i in range(warmup):
            case.step()
            if i == 0:  # a parallel loop compiling in the background: ready for the next
                wait_compiled()
        case.sync()
        t0 = clock()
        case.step()
        case.sync()
        calls.append(max(1, min(10_000, int(block / max(clock() - t0, 1e-9)))))
    times: list[list[float]] = [[] for _ in cases]
    enabled = gc.isenabled()
    gc.disable()
    try:
        rounds = 0
        deadline = clock() + budget
        while rounds < min_repeats or (clock() < deadline and rounds < max_repeats):
            for case, out, count in zip(cases, times, calls, strict=True):
                step = case.step
                t0 = clock()
                for _ in range(count):
                    step()
                case.sync()
                out.append((clock() - t0) / count)
            rounds += 1
    finally:
        if enabled:
            gc.enable()
    return [Timing(min(t), statistics.median(t), len(t)) for t in times]


def time_step(case: Case, budget: float = 0.5, warmup: int = 2, min_repeats: int = 5,
              max_repeats: int = 100_000) -> Timing:
    """Time ``case.step`` alone: see :func:`time_steps`. Returns min and median seconds."""
    return time_steps([case], budget, warmup, min_repeats, max_repeats)[0]


# ------------------------------------------------------------- first step
# argv: the spec, the folder the parent imported fastmoments from (the child imports the
# same one: asv, for one, runs the parent with a sys.path of its own), packages to hide
_CHILD = (
    "import sys, time; sys.path.insert(0, sys.argv[2]) if sys.argv[2] not in sys.path "
    "else None; sys.modules.update(dict.fromkeys(sys.argv[3:])); "
    "t0 = time.perf_counter(); import fastmoments; t1 = time.perf_counter(); "
    "from fastmoments.tools.bench.timing import _first_step_child; "
    "_first_step_child(sys.argv[1], t1 - t0)"
)


def _first_step_child(spec: str, import_s: float) -> None:
    """The child's side of :func:`first_step`: build the case, time two steps, print JSON."""
    s = json.loads(spec)
    t0 = time.perf_counter()
    case = fastmoments_case(s["rule"], s["n"], s["dtype"], s["path"], s["chunk"], s["backend"])
    t1 = time.perf_counter()
    case.step()
    case.sync()
    t2 = time.perf_counter()
    case.step()
    case.sync()
    t3 = time.perf_counter()
    wait_compiled()  # a parallel loop compiling in the background (config.background_compile)
    t4 = time.perf_counter()
    print(json.dumps({"import_s": import_s, "setup_s": t1 - t0, "first_step_s": t2 - t1,
                      "second_step_s": t3 - t2, "loops_ready_s": t4 - t1,
                      "scipy_loaded": sys.modules.get("scipy") is not None,
                      "fastmoments_file": sys.modules["fastmoments"].__file__}))


def first_step(rule: str, n: int, dtype: Any = np.float32, path: str = "flat",
               chunk: int = 1000, backend: str = "cpu", cache_dir: str | None = None,
               timeout: float = 600.0, hide: Sequence[str] = ()) -> dict[str, float]:
    """Time the first ``step()`` in a fresh Python process.

    ``cache_dir`` is the on-disk cache of compiled loops for that process
    (``FASTMOMENTS_CACHE_DIR`` and ``NUMBA_CACHE_DIR``, see ``config.cache_dir``): an
    empty directory gives a cold start (compilation), a directory filled by an earlier
    call a cached one. ``hide``: top-level packages the child cannot import (as if
    not installed), e.g. ``("scipy",)``: ``import numba`` imports SciPy when it is
    installed, and its CPU target checks for SciPy's BLAS on the first compilation or
    cache load of a process (fastmoments lets that check load only the BLAS module,
    see :func:`fastmoments.kernels.compile.prepare_cpu_target`). The child imports the
    fastmoments this process imported. Returns ``import_s``, ``setup_s``,
    ``first_step_s``, ``second_step_s``, ``loops_ready_s``, ``scipy_loaded``,
    ``process_s`` (the whole child process) and ``fastmoments_file``.
    """
    spec = json.dumps({"rule": rule, "n": int(n), "dtype": np.dtype(dtype).name, "path": path,
                       "chunk": int(chunk), "backend": backend})
    env = dict(os.environ)
    if cache_dir is not None:
        env["FASTMOMENTS_CACHE_DIR"] = env["NUMBA_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    import fastmoments

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastmoments.__file__)))
    proc = subprocess.run([sys.executable, "-c", _CHILD, spec, root, *hide], env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"first-step child failed ({rule}, {path}, {n}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out
