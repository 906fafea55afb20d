"""The parameter grid and the helpers every benchmark shares.

The cases themselves (data, optimizers, ceiling kernels, torch and NumPy rows,
timing) come from :mod:`fastmoments.tools.bench`, so ``fastmoments bench`` and these
benchmarks measure the same thing.
"""

from __future__ import annotations

import inspect
import os

import numpy as np

import fastmoments
from fastmoments.tools import bench

# asv forks every benchmark from a server that imported this suite once: what is
# initialised here is not paid again per benchmark. numba's CPU target (about 0.3 s
# on the first compilation or cache load of a process) is set up by one call of a
# serial kernel; torch's optimizers import ~800 modules on first construction (about
# 1 s). Neither starts a thread, so forking stays safe.
bench.ceiling_kernel(1, False)(np.zeros(1), np.zeros(1), np.zeros(1))
try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    pass
else:
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], fused=True)

RULES = list(bench.optimizer_classes())
#: the rules with a ``cautious`` keyword (two passes when True)
CAUTIOUS_RULES = [name for name, cls in bench.optimizer_classes().items()
                  if "cautious" in inspect.signature(cls.__init__).parameters]
SIZES = [10**3, 10**5, 10**6, 10**7, 5 * 10**7]
DTYPES = ["float32", "float64"]
PATHS = ["list", "flat"]
BACKENDS = ["cpu", "cuda"]
CHUNK = 1000  # elements per array on the list path

#: seconds of timed calls in the track_* figures (GB/s, fraction of the ceiling)
TRACK_BUDGET = 0.2


def skip_combination(size: int, dtype: str, path: str, backend: str) -> None:
    """Raise NotImplementedError (asv: skipped) for combinations not worth running.

    Skipped: CUDA without a usable device, or under numba's CUDA simulator (not a GPU
    figure, and hours at these sizes); 5e7 elements except float32 flat (one
    large-buffer point is enough); float64 above 1e6 elements (float32 covers the
    large sizes; keeps ``asv run --quick`` shorter).
    """
    if backend == "cuda":
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            raise NotImplementedError("numba's CUDA simulator is not a GPU")
        try:
            bench.require_cuda()
        except RuntimeError as exc:
            raise NotImplementedError(str(exc)) from None
    if size >= 5 * 10**7 and (dtype != "float32" or path != "flat"):
        raise NotImplementedError("5e7 elements: float32 flat only")
    if size > 10**6 and dtype != "float32":
        raise NotImplementedError("float64: up to 1e6 elements (float32 covers the large sizes)")


def gbps(case: bench.Case) -> float:
    """Achieved GB/s of ``case`` (bytes moved per step / min time over the budget)."""
    timing = bench.time_step(case, TRACK_BUDGET)
    return case.bytes_per_step / timing.min / 1e9


def fraction_of_ceiling(case: bench.Case, backend: str) -> float:
    """GB/s of ``case`` over GB/s of the ceiling of the same traffic, timed interleaved."""
    ceiling = bench.ceiling_for(case, backend)
    mine, best = bench.time_steps([case, ceiling], TRACK_BUDGET)
    return best.min / mine.min  # same bytes per step: the ratio of the times


def run_once(case: bench.Case) -> None:
    """Compile, or load from numba's on-disk cache, what the timed steps run: a step,
    the parallel loop's background compilation (``fastmoments.wait_compiled``), and
    a step of the loop the timed steps will call."""
    case.step()
    fastmoments.wait_compiled()
    case.step()
    case.sync()


class _Steps:
    """The measurements of a benchmark whose ``setup`` builds ``self.case``.

    (A leading underscore: asv does not collect this class itself.)
    """

    def teardown(self, *params) -> None:
        self.case = None

    def time_step(self, *params) -> None:
        self.case.step()
        self.case.sync()

    def track_gbps(self, *params) -> float:
        return gbps(self.case)

    track_gbps.unit = "GB/s"


class _StepsWithCeiling(_Steps):
    """:class:`_Steps` and the fraction of the ceiling (``backend`` is the last param)."""

    def track_fraction_of_ceiling(self, *params) -> float:
        return fraction_of_ceiling(self.case, params[-1])

    track_fraction_of_ceiling.unit = "fraction"
