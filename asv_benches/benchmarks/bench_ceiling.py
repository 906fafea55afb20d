"""The ceiling: in-place kernels with a rule's reads and writes and no math."""

from __future__ import annotations

from fastmoments.tools import bench

from .common import BACKENDS, DTYPES, SIZES, _Steps, run_once, skip_combination


class Ceiling(_Steps):
    """``p += g`` and ``s += g`` for each of ``states`` buffers: (2+S) reads, (1+S) writes.

    Serial below ``fastmoments.config.parallel_threshold``, parallel from it on.
    """

    params = [[0, 1, 2, 3, 4], SIZES, DTYPES, BACKENDS]  # Adan has 4
    param_names = ["states", "size", "dtype", "backend"]
    timeout = 300

    def setup(self, states: int, size: int, dtype: str, backend: str) -> None:
        skip_combination(size, dtype, "flat", backend)
        self.case = bench.ceiling_case(states, size, dtype, backend)
        run_once(self.case)
