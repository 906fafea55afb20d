"""Every rule (and the ``cautious=True`` variants): time per step, peak memory, GB/s
and its fraction of the ceiling."""

from __future__ import annotations

from fastmoments.tools import bench

from .common import (
    BACKENDS,
    CAUTIOUS_RULES,
    CHUNK,
    DTYPES,
    PATHS,
    RULES,
    SIZES,
    _StepsWithCeiling,
    run_once,
    skip_combination,
)


class RuleStep(_StepsWithCeiling):
    """One optimizer step of a fastmoments rule (list of arrays, or a FlatParams)."""

    params = [RULES, SIZES, DTYPES, PATHS, BACKENDS]
    param_names = ["rule", "size", "dtype", "path", "backend"]
    timeout = 300

    def setup(self, rule: str, size: int, dtype: str, path: str, backend: str) -> None:
        skip_combination(size, dtype, path, backend)
        self.case = bench.fastmoments_case(rule, size, dtype, path, CHUNK, backend)
        run_once(self.case)  # compilation (or the on-disk cache) happens here

    def peakmem_step(self, *params) -> None:
        self.case.step()
        self.case.sync()


class CautiousStep(_StepsWithCeiling):
    """One step of a rule with ``cautious=True``: two passes (the count of the agreeing
    elements per tensor, then the masked update), against the ceiling of those passes.

    float32 over a FlatParams of 1000-element arrays (the scale is per array) at the
    large sizes: the step is limited by memory traffic there.
    """

    params = [CAUTIOUS_RULES, [10**6, 10**7], ["float32"], ["flat"], BACKENDS]
    param_names = ["rule", "size", "dtype", "path", "backend"]
    timeout = 300

    def setup(self, rule: str, size: int, dtype: str, path: str, backend: str) -> None:
        skip_combination(size, dtype, path, backend)
        self.case = bench.fastmoments_case(rule, size, dtype, path, CHUNK, backend,
                                           kwargs={"cautious": True})
        run_once(self.case)


class FirstStep:
    """The first step in a fresh process: cold (empty numba cache) or cached.

    1e3 elements run the serial loop (flat) / the serial multi-array loop (list);
    1e6 elements the parallel ones.
    """

    params = [RULES, [10**3, 10**6], ["float32"], PATHS, ["cold", "cached"]]
    param_names = ["rule", "size", "dtype", "path", "cache"]
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, rule: str, size: int, dtype: str, path: str, cache: str) -> None:
        import tempfile

        self.dir = tempfile.TemporaryDirectory(prefix="fastmoments-asv-cache-")
        if cache == "cached":
            bench.first_step(rule, size, dtype, path, CHUNK, "cpu", self.dir.name)

    def teardown(self, *params) -> None:
        self.dir.cleanup()

    def track_first_step_s(self, rule, size, dtype, path, cache) -> float:
        out = bench.first_step(rule, size, dtype, path, CHUNK, "cpu", self.dir.name)
        return out["first_step_s"]

    track_first_step_s.unit = "s"
