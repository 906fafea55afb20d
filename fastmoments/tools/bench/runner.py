"""The run: the job list built from the options, each job measured, the rows kept.

:class:`Runner` turns the parsed options of ``fastmoments bench`` into jobs (one row
each: a rule, torch or NumPy case at a size, dtype, state dtype and thread count or
block size), times every row interleaved with its ceiling (and with its peers: torch's
fused optimizer, bitsandbytes' and torchao's 8-bit ones), and keeps the rows, the
crossover and first-step measurements and the notes that :mod:`.report` prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numba

from ...config import config
from .cases import (
    BNB_8BIT,
    NUMPY_RULES,
    TORCHAO_8BIT,
    Case,
    bitsandbytes_case,
    fastmoments_case,
    import_bitsandbytes,
    numpy_case,
    torch_case,
    torchao_case,
)
from .ceilings import ceiling_for, device_copy_case
from .report import fmt_size, fmt_threads
from .timing import Timing, first_step, time_steps

#: elements of the --tiny model: what one step() call costs beyond the arithmetic
TINY_SIZE = 10


@dataclass
class _Job:
    """One row to measure: its progress label and what measures it."""

    label: str
    run: Callable[[], Any]


class _Progress:
    """tqdm on stderr when installed, else a one-line counter; silent when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, file=sys.stderr, unit="row", leave=False,
                                 dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
        else:
            sys.stderr.write(f"\r[{self.done}/{self.total}] {label[:60]:<60}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.total:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


class Runner:
    """Builds the job list from the options, runs it and collects rows and notes.

    ``torch_bench``: the module :mod:`fastmoments.tools.torch_bench` when ``--torch``
    was given (its ``run(args)`` is the last job; what it returns is
    :attr:`torch_modules`), else None.
    """

    def __init__(self, args: argparse.Namespace, torch_bench: Any = None) -> None:
        self.args = args
        self.torch_bench = torch_bench
        self.torch_modules: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.first_step_rows: list[dict[str, Any]] = []
        self.crossover_rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.ceilings: dict[tuple, dict[str, Any]] = {}
        self.copies: dict[tuple, dict[str, Any]] = {}  # (size, dtype): device-copy row
        self.jobs: list[_Job] = []
        self.torch_ok = False
        if "torch" in args.compare:
            try:
                import torch  # noqa: F401

                self.torch_ok = True
            except ImportError:
                self.notes.append("torch is not installed: torch.optim rows skipped")
        # bitsandbytes' 8-bit optimizers: timed with fastmoments' int8 rows, when asked
        # for or, with --state-dtype int8, when installed
        self.state_dtypes: list[str] | None = getattr(args, "state_dtype", None)
        self.bnb_ok = False
        if "int8" in (self.state_dtypes or []) and args.backend == "cpu":
            try:
                import_bitsandbytes()
                self.bnb_ok = True
            except ImportError:
                self.notes.append("bitsandbytes is not installed: no 8-bit peer rows "
                                  "(pip install bitsandbytes)")
        # torchao's only when asked for (--compare torchao; cli checks that it imports):
        # its first step compiles, for each size and thread count
        self.torchao_ok = "torchao" in args.compare

    # -------------------------------------------------------- one measurement
    def _set_threads(self, threads: int) -> None:
        # on CUDA the value is the threads per block of the library's kernels and the ceiling
        if self.args.backend == "cuda":
            config.cuda_threads_per_block = threads
            return
        numba.set_num_threads(threads)
        if self.torch_ok or self.bnb_ok or self.torchao_ok:
            import torch

            torch.set_num_threads(threads)

    def _row(self, scenario: str, impl: str, rule: str | None, path: str, size: int,
             dtype: str, threads: int | None, case: Case, timing: Timing) -> dict[str, Any]:
        row = {
            "scenario": scenario, "impl": impl, "rule": rule, "path": path,
            "arrays": case.arrays, "size": size, "dtype": dtype,
            "threads": None if self.args.backend == "cuda" else threads,
            "block_size": threads if self.args.backend == "cuda" else None,
            "backend": self.args.backend, "traffic": case.label,
            "bytes_per_step": case.bytes_per_step, "time_min_s": timing.min,
            "time_median_s": timing.median, "repeats": timing.repeats,
            "gbps": case.bytes_per_step / timing.min / 1e9, "single_pass": case.single_pass,
            "state_dtype": case.state_dtype,
        }
        if case.state_bytes is not None:  # measured from the optimizer's buffers
            row["state_bytes_per_param"] = case.state_bytes / case.numel
            row["state_bytes_per_param_per_state"] = (
                case.state_bytes / case.numel / case.n_states if case.n_states else 0.0)
        return row

    def _measure(self, build: Callable[[], Case], scenario: str, impl: str, rule: str | None,
                 path: str, size: int, dtype: str, threads: int,
                 alongside: Callable[[], Case] | None = None,
                 peers: Sequence[tuple[str, Callable[[], Case]]] = ()) -> None:
        """Time one case interleaved with its ceiling; record both.

        ``alongside``: torch's fused optimizer on the same problem, timed in the same
        rounds; the row's "x fused" is then the ratio of two minimums taken under the
        same machine state (this VM's speed drifts between jobs a minute apart).
        ``peers``: ``(name, build)`` of other implementations of the same step (e.g.
        ``"bitsandbytes"``), timed in the same rounds too; each gets a row of its own
        (impl ``name``, against the same ceiling) and the row ``speedup_vs_{name}``.
        """
        self._set_threads(threads)
        try:
            case = build()
        except NotImplementedError as exc:
            self.notes.append(f"skipped: {exc}")
            return
        ceiling = ceiling_for(case, self.args.backend)
        others: list[tuple[str, Case]] = []
        if alongside is not None:
            try:
                others.append(("torch_fused", alongside()))
            except NotImplementedError:  # torch has no fused version of this rule
                pass
        for name, build_peer in peers:
            try:
                others.append((name, build_peer()))
            except NotImplementedError as exc:
                self.notes.append(f"skipped: {exc}")
        timings = time_steps([case, ceiling, *(c for _, c in others)], self.args.budget)
        mine, best = timings[0], timings[1]
        if case.current_passes is not None and case.current_passes() != case.traffic_passes:
            raise RuntimeError(f"{impl} {rule} {path} {size}: the traffic of a step changed "
                               "while it was timed (e.g. SWATS switched phase)")
        key = (ceiling.traffic_passes, ceiling.storage, size, dtype, threads)
        self._record_ceiling(key, scenario, ceiling, best, case.state_dtype)
        row = self._row(scenario, impl, rule, path, size, dtype, threads, case, mine)
        # the fraction of the ceiling timed alongside (same cache and machine state)
        row["ceiling_gbps"] = ceiling.bytes_per_step / best.min / 1e9
        row["fraction"] = row["gbps"] / row["ceiling_gbps"]
        peer_rows = []
        for (name, other), timing in zip(others, timings[2:], strict=True):
            row[f"{name}_alongside_s"] = timing.min
            row[f"speedup_vs_{name}"] = timing.min / mine.min
            if name != "torch_fused":
                peer = self._row(scenario, name, rule, path, size, dtype, threads, other,
                                 timing)
                peer["ceiling_gbps"] = row["ceiling_gbps"]
                peer["fraction"] = peer["gbps"] / peer["ceiling_gbps"]
                peer_rows.append(peer)
        self.rows += [row, *peer_rows]
        del case, ceiling, others

    def _measure_copy(self, size: int, dtype: str) -> None:
        """The device's copy bandwidth at ``size`` (``--backend cuda``): a row of its own,
        and each CUDA row of that size and dtype gets its fraction of it (``_finish``)."""
        case = device_copy_case(size, dtype)
        timing = time_steps([case], self.args.budget)[0]
        row = self._row("sizes", "device-copy", None, "flat", size, dtype, None, case, timing)
        self.copies[(size, dtype)] = row
        self.rows.append(row)

    def _record_ceiling(self, key: tuple, scenario: str, case: Case, timing: Timing,
                        state_dtype: str | None = None) -> None:
        # the ceiling of a traffic/widths/size/dtype/threads: the best of all its
        # measurements (its row names the state dtype of the first row it served)
        size, dtype, threads = key[-3:]
        row = self.ceilings.get(key)
        if row is None:
            row = self._row(scenario, "ceiling", None, "flat", size, dtype, threads, case, timing)
            row["state_dtype"] = state_dtype
            row["_medians"] = [timing.median]
            self.ceilings[key] = row
            self.rows.append(row)
            return
        row["_medians"].append(timing.median)
        row["repeats"] += timing.repeats
        row["time_median_s"] = statistics.median(row["_medians"])
        if timing.min < row["time_min_s"]:
            row["time_min_s"] = timing.min
            row["gbps"] = row["bytes_per_step"] / timing.min / 1e9

    def _finish(self) -> None:
        for row in self.ceilings.values():
            row.pop("_medians", None)
        for row in self.rows:
            copy = self.copies.get((row["size"], row["dtype"]))
            if copy is not None and row is not copy:
                row["copy_gbps"] = copy["gbps"]
                row["fraction_of_copy"] = row["gbps"] / copy["gbps"]
        self.notes = list(dict.fromkeys(self.notes))

    # ----------------------------------------------------------------- plan
    def plan(self) -> None:
        a = self.args
        torch_impls = a.torch_impls if self.torch_ok else []
        numpy_ok = ("torch" in a.compare or "numpy" in a.compare) and a.backend == "cpu"

        def family(scenario: str, size: int, dtype: str, threads: int,
                   paths: Sequence[str], torch_paths: Sequence[str], chunk: int,
                   comparisons: bool) -> None:
            where = f"{fmt_size(size)} {dtype} {fmt_threads(threads, a.backend)}"
            if not comparisons:
                torch_paths = []
            # --state-dtype: each state dtype a row set of the sizes scenario
            states = self.state_dtypes if scenario == "sizes" and self.state_dtypes else [None]
            for rule in a.rules:
                for state, path in ((s, p) for s in states for p in paths):
                    # torch fused on the same problem (for --tiny / --many: the user's
                    # list of tensors), timed alongside for the "x fused" column
                    fused_path = path if scenario == "sizes" else "list"
                    alongside = (
                        (lambda rule=rule, fused_path=fused_path: torch_case(
                            rule, "fused", size, dtype, fused_path, chunk, a.backend))
                        if "fused" in torch_impls else None
                    )
                    # bitsandbytes' and torchao's 8-bit optimizers beside the int8 rows
                    int8_flat = state == "int8" and path == "flat"
                    peers = (
                        [("bitsandbytes", lambda rule=rule: bitsandbytes_case(rule, size, dtype))]
                        if self.bnb_ok and int8_flat and rule in BNB_8BIT else []
                    ) + (
                        [("torchao", lambda rule=rule: torchao_case(rule, size, dtype))]
                        if self.torchao_ok and int8_flat and rule in TORCHAO_8BIT else []
                    )
                    label = f"{rule} {path}" + (f" {state}" if state else "")
                    self.jobs.append(_Job(
                        f"{label} {where}",
                        lambda rule=rule, path=path, alongside=alongside, state=state,
                        peers=peers: self._measure(
                            lambda: fastmoments_case(rule, size, dtype, path, chunk, a.backend,
                                                     state_dtype=state),
                            scenario, "fastmoments", rule, path, size, dtype, threads,
                            alongside, peers)))
                for impl in torch_impls:
                    for path in torch_paths:
                        self.jobs.append(_Job(
                            f"torch-{impl} {rule} {path} {where}",
                            lambda rule=rule, impl=impl, path=path: self._measure(
                                lambda: torch_case(rule, impl, size, dtype, path, chunk,
                                                   a.backend),
                                scenario, f"torch-{impl}", rule, path, size, dtype, threads)))
                if numpy_ok and rule in NUMPY_RULES:
                    for path in torch_paths:
                        self.jobs.append(_Job(
                            f"numpy {rule} {path} {where}",
                            lambda rule=rule, path=path: self._measure(
                                lambda: numpy_case(rule, size, dtype, path, chunk),
                                scenario, "numpy", rule, path, size, dtype, threads)))

        # CPU: numba thread counts; CUDA: threads per block (the comparison rows and the
        # device copy, which do not depend on it, only with the first)
        thread_list: list[int] = list(a.threads if a.backend == "cpu" else a.block_sizes)
        for dtype in a.dtypes:
            for threads in thread_list:
                first = threads == thread_list[0] or a.backend == "cpu"
                for size in a.sizes:
                    if a.backend == "cuda" and first:  # the device's copy bandwidth
                        self.jobs.append(_Job(
                            f"device copy {fmt_size(size)} {dtype}",
                            lambda size=size, dtype=dtype: self._measure_copy(size, dtype)))
                    family("sizes", size, dtype, threads, a.paths, a.paths, a.chunk, first)
                if a.tiny:
                    family("tiny", TINY_SIZE, dtype, threads, a.paths, ["list"], TINY_SIZE,
                           first)
                if a.many:
                    arrays, elements = a.many_shape
                    family("many", arrays * elements, dtype, threads, a.paths, ["list"],
                           elements, first)
        if a.crossover:  # the CPU loops, also with --backend cuda
            threads = max(a.threads)
            for dtype in a.dtypes:
                for rule in a.rules:
                    for path in a.paths:
                        for size in a.crossover_sizes:
                            self.jobs.append(_Job(
                                f"crossover {rule} {path} {fmt_size(size)}",
                                lambda rule=rule, path=path, size=size, dtype=dtype:
                                self._crossover(rule, path, size, dtype, threads)))
        if a.first_step:
            for dtype in a.dtypes:
                for rule in a.rules:
                    for path in a.paths:
                        for size in a.first_step_sizes:
                            self.jobs.append(_Job(
                                f"first step {rule} {path} {fmt_size(size)}",
                                lambda rule=rule, path=path, size=size, dtype=dtype:
                                self._first_step(rule, path, size, dtype)))
        if self.torch_bench is not None:
            self.jobs.append(_Job("torch modules", self._torch_modules))

    def _torch_modules(self) -> None:
        result = self.torch_bench.run(self.args)
        if not isinstance(result, dict):
            raise TypeError(f"fastmoments.tools.torch_bench.run returned "
                            f"{type(result).__name__}, expected a dict")
        self.torch_modules = result

    def _crossover(self, rule: str, path: str, size: int, dtype: str, threads: int) -> None:
        numba.set_num_threads(threads)
        saved = config.parallel_threshold

        def forced(case: Case, threshold: int) -> Case:
            inner = case.step

            def step() -> None:
                config.parallel_threshold = threshold
                inner()

            return Case(step, case.n_states, case.numel, case.itemsize, case.arrays, case.sync,
                        case.keep, case.passes)

        try:
            serial = forced(fastmoments_case(rule, size, dtype, path, self.args.chunk), 2**62)
            parallel = forced(fastmoments_case(rule, size, dtype, path, self.args.chunk), 0)
            t_serial, t_parallel = time_steps([serial, parallel], self.args.budget)
        finally:
            config.parallel_threshold = saved
        self.crossover_rows.append({
            "rule": rule, "path": path, "size": size, "dtype": dtype, "threads": threads,
            "arrays": serial.arrays,
            "serial_min_s": t_serial.min, "serial_median_s": t_serial.median,
            "parallel_min_s": t_parallel.min, "parallel_median_s": t_parallel.median,
        })

    def _first_step(self, rule: str, path: str, size: int, dtype: str) -> None:
        def measure(hide: tuple[str, ...]) -> tuple[dict, dict]:
            with tempfile.TemporaryDirectory(prefix="fastmoments-cache-") as cache_dir:
                cold = first_step(rule, size, dtype, path, self.args.chunk,
                                  self.args.backend, cache_dir, hide=hide)
                cached = first_step(rule, size, dtype, path, self.args.chunk,
                                    self.args.backend, cache_dir, hide=hide)
            return cold, cached

        cold, cached = measure(())
        # numba imports SciPy (when installed) on its first compilation or cache load in a
        # process; fastmoments does not need it: measure without it too, when it is here
        if importlib.util.find_spec("scipy") is not None:
            bare = [r["first_step_s"] for r in measure(("scipy",))]
        else:
            bare = [None, None]
        self.first_step_rows.append({
            "cold_no_scipy_s": bare[0], "cached_no_scipy_s": bare[1],
            "rule": rule, "path": path, "size": size, "dtype": dtype,
            "backend": self.args.backend, "import_s": cold["import_s"],
            "cold_first_step_s": cold["first_step_s"],
            "cached_first_step_s": cached["first_step_s"],
            "second_step_s": cached["second_step_s"],
            "cold_loops_ready_s": cold.get("loops_ready_s"),
            "cold_process_s": cold["process_s"], "cached_process_s": cached["process_s"],
        })

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        progress = _Progress(len(self.jobs), not self.args.quiet)
        saved_threads = numba.get_num_threads()
        try:
            for job in self.jobs:
                job.run()
                progress.update(job.label)
        finally:
            progress.close()
            numba.set_num_threads(saved_threads)
        self._finish()
