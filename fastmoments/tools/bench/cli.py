"""Measure every rule against this machine's memory-traffic ceiling.

An elementwise optimizer step is limited by memory traffic: it reads the parameter,
the gradient and each state buffer once and writes the parameter and each state
buffer once. For a rule with S state buffers that is (2 + S) reads and (1 + S)
writes per element; float32 Adam (S = 2) moves 28 bytes per element. The *ceiling*
is an in-place kernel with exactly those loads and stores and no math
(``p[i] += g[i]; m[i] += g[i]; v[i] += g[i]``), serial or parallel as the library
chooses for that size. Every row is timed interleaved with the ceiling of its
traffic, size, dtype and thread count (one call of each per round, so that both see
the same machine and cache state); it reports its time per step (min and median over
a time budget), GB/s (bytes moved / min time) and its fraction of the ceiling timed
alongside it. A ceiling row shows the best that ceiling reached in the run.

Scenarios:
  sizes        every rule at --sizes, --dtypes, --threads, --paths (flat: a FlatParams,
               one kernel call; list: separate arrays of --chunk elements)
  --tiny       a 10-element model: the cost of one step() call
  --many       many small arrays (--many-shape, default 1000x1000): list and FlatParams
  --first-step first step() in a fresh process: cold (empty numba cache) and cached
  --crossover  serial vs parallel kernels over a range of sizes (parallel_threshold)
  --torch      torch modules stepped by fastmoments and by torch.optim
               (fastmoments.tools.torch_bench; needs torch)
  --distributed  run under mpiexec: the sharded optimizer's step phase by phase, next
               to one process and raw MPI, with GB/s (fastmoments.tools.bench.distributed;
               needs mpi4py); it alone runs, with --rules (default AdamW), --dtypes

With --compare torch, torch.optim rows (fused=True, foreach=True; --torch-impls)
and an in-place NumPy Adam/AdamW are added; "x fused" is torch fused time divided by
fastmoments time (for --tiny/--many against torch with one tensor per array), both
timed in the same rounds (torch fused runs alongside each fastmoments row and its
ceiling), so that a drift of the machine between rows does not enter the ratio.

With --state-dtype float32,bfloat16,int8 every rule of the sizes scenario runs once
per state dtype (the optimizers' state_dtype; the flat path then holds one tensor),
against the ceiling of its own traffic: each buffer loaded and stored at its stored
width (bfloat16-state Adam over float32 parameters: 20 bytes per element; int8: 16
plus 16 per block of 256 for the scales). "state B/p" is the bytes of state per
parameter, measured from the optimizer's buffers; "ns/elem" the time per element
(about the same in cache and at 1e7 where the arithmetic binds, not memory). With
int8, bitsandbytes' 8-bit optimizer (Adam8bit, ...; --compare bitsandbytes, or
whenever it is installed) is timed in the same rounds as fastmoments' int8 row:
"x bnb" is its time over ours. --compare torchao adds torchao's (Adam8bit,
AdamW8bit; compiled by torch.compile on its first step, once per size and thread
count) the same way: "x torchao".

Examples:
  fastmoments bench                                  every rule, 1e6 and 1e7, float32
  fastmoments bench --compare torch                  + torch.optim and NumPy rows
  fastmoments bench --rules adam,adamw --sizes 1e7 --threads 1,2 --dtypes float32,float64
  fastmoments bench --sizes none --tiny --many --first-step --compare torch
  fastmoments bench --crossover --rules adam --sizes none
  fastmoments bench --rules adam --threads 1,2 --contend 1   with a busy process per core
  fastmoments bench --rules adam,lion --state-dtype float32,bfloat16,int8 --threads 1,2
  fastmoments bench --rules adam --state-dtype bfloat16,int8 --markdown   (for the docs)
  fastmoments bench --json > results.json
  fastmoments bench --compare torch --save results.json --plot gbps.png   (matplotlib)
  fastmoments bench --backend cuda --compare torch   NVIDIA GPU (device arrays)
  fastmoments bench --sizes none --torch             only the torch-module scenario
  mpiexec -n 2 fastmoments bench --distributed --numel 1e7 --network-gbps 100,400

See docs/performance.md for what was measured on the development machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numba

from ...config import config
from .cases import (
    STATE_DTYPES,
    TORCH_IMPLS,
    import_bitsandbytes,
    import_torchao_optim,
    optimizer_classes,
    require_cuda,
)
from .machine import OtherLoad, machine_info, start_busy, stop_busy, threading_layer
from .options import parse_list as _parse_list
from .report import plot, render
from .runner import TINY_SIZE, Runner

DEFAULT_SIZES = "1e6,1e7"
#: the torch-module benchmark behind ``--torch``: imported only when the parser is
#: built or the option given, never with this module (it is the one that needs torch)
TORCH_BENCH = "fastmoments.tools.torch_bench"


# --------------------------------------------------------------- parsing

def _parse_sizes(text: str, what: str = "sizes") -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for t in text.split(","):
        try:
            value = float(t)
        except ValueError:
            raise ValueError(f"--{what}: {t.strip()!r} is not a number") from None
        if not (math.isfinite(value) and value >= 1 and value == int(value)):
            raise ValueError(f"--{what}: expected whole numbers >= 1, got {t.strip()!r}")
        out.append(int(value))
    return list(dict.fromkeys(out))


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        a, e = (int(float(x)) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--many-shape: expected ARRAYSxELEMENTS (1000x1000), got {text!r}"
                         ) from None
    if a < 1 or e < 1:
        raise ValueError(f"--many-shape: expected positive counts, got {text!r}")
    return a, e


# ------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` and make :func:`run` its handler."""
    parser.add_argument("--rules", default="all",
                        help="comma-separated optimizer classes (default: all)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"elements per step, comma-separated, or 'none' "
                             f"(default: {DEFAULT_SIZES})")
    parser.add_argument("--dtypes", default="float32", help="float32,float64 (default: float32)")
    parser.add_argument("--state-dtype", default=None,
                        help="optimizer state dtypes of the sizes scenario, comma-separated: "
                             f"{','.join(STATE_DTYPES)} (default: the parameters' dtype, one "
                             "row set without the state columns)")
    parser.add_argument("--threads", default=None,
                        help="numba (and torch) thread counts, comma-separated "
                             "(default: numba's default, all usable cores)")
    parser.add_argument("--block-sizes", default=None,
                        help="--backend cuda: threads per block of the kernels (and of the "
                             "ceiling), comma-separated, each a row set, the best per "
                             "row under the table (default: "
                             "fastmoments.config.cuda_threads_per_block)")
    parser.add_argument("--paths", default="flat,list",
                        help="flat (FlatParams) and/or list (separate arrays); default both")
    parser.add_argument("--chunk", type=int, default=1000,
                        help="elements per array on the list path (default: 1000)")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="seconds of timed calls per row (default: 0.5)")
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (NumPy arrays) or cuda (device arrays)")
    parser.add_argument("--compare", default="",
                        help="'torch': add torch.optim rows and in-place NumPy Adam/AdamW; "
                             "'numpy': only the NumPy rows; 'bitsandbytes': its 8-bit "
                             "optimizers beside the int8 rows (needs --state-dtype int8; "
                             "added without asking when installed); 'torchao': its 8-bit "
                             "Adam/AdamW there too (needs --state-dtype int8)")
    parser.add_argument("--torch-impls", default="fused,foreach",
                        help="torch implementations to compare with: fused,foreach,forloop "
                             "(default: fused,foreach)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"add the {TINY_SIZE}-element model scenario (step() overhead)")
    parser.add_argument("--many", action="store_true",
                        help="add the many-small-arrays scenario (see --many-shape)")
    parser.add_argument("--many-shape", default="1000x1000",
                        help="ARRAYSxELEMENTS for --many (default: 1000x1000)")
    parser.add_argument("--first-step", action="store_true",
                        help="time the first step in fresh processes, cold and cached")
    parser.add_argument("--first-step-sizes", default="1e3,1e6",
                        help="sizes for --first-step (default: 1e3,1e6: serial and parallel)")
    parser.add_argument("--crossover", action="store_true",
                        help="time serial vs parallel loops over --crossover-sizes")
    parser.add_argument("--crossover-sizes",
                        default="1e3,2e3,5e3,1e4,2e4,5e4,1e5,2e5,5e5,1e6",
                        help="sizes for --crossover")
    parser.add_argument("--torch", action="store_true",
                        help="add the torch-module scenario: real module shapes stepped by "
                             "fastmoments and by torch.optim (fastmoments.tools.torch_bench; "
                             "needs torch)")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="run N busy-loop processes (pinned one per core) meanwhile")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--markdown", action="store_true",
                        help="print the rows as a Markdown table (for the docs; ceilings "
                             "as a column, columns equal in every row as a line above)")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON results to FILE")
    parser.add_argument("--plot", metavar="PNG",
                        help="plot GB/s vs size per rule with the ceiling (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--distributed", action="store_true",
                        help="run under mpiexec: the sharded optimizer, phase by phase "
                             "(fastmoments.tools.bench.distributed; needs mpi4py)")
    from . import distributed as bench_distributed

    bench_distributed.add_arguments(parser.add_argument_group("--distributed options"))
    parser.set_defaults(run=run)
    try:
        torch_bench = _torch_bench()
    except ImportError:  # reported when --torch is given
        torch_bench = None
    if torch_bench is not None and hasattr(torch_bench, "add_arguments"):
        group = parser.add_argument_group("--torch options (fastmoments.tools.torch_bench)")
        torch_bench.add_arguments(_TorchOptions(parser, group))


class _TorchOptions:
    """What ``torch_bench.add_arguments`` is given: an argument group of the bench
    parser where an option bench already has stays bench's (one ``--budget`` for both
    scenarios) and ``run`` stays bench's handler."""

    def __init__(self, parser: argparse.ArgumentParser, group: Any) -> None:
        self._parser, self._group = parser, group

    def add_argument(self, *names: str, **kwargs: Any) -> Any:
        try:
            return self._group.add_argument(*names, **kwargs)
        except argparse.ArgumentError:  # a name bench has: bench parses it
            return None

    def set_defaults(self, **kwargs: Any) -> None:
        kwargs.pop("run", None)
        self._parser.set_defaults(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)


def _torch_bench() -> Any:
    """The module :data:`TORCH_BENCH`, or None when this fastmoments has none; an
    ImportError from inside it (torch not installed) propagates."""
    try:
        return importlib.import_module(TORCH_BENCH)
    except ModuleNotFoundError as exc:
        if exc.name != TORCH_BENCH:
            raise
        return None


def _resolve(args: argparse.Namespace) -> None:
    """Parse the comma-separated options in place; ValueError with the option's name."""
    classes = list(optimizer_classes())
    args.rules = classes if args.rules.strip().lower() == "all" else _parse_list(
        args.rules, classes, "rules")
    args.sizes = _parse_sizes(args.sizes)
    args.dtypes = _parse_list(args.dtypes, ["float32", "float64"], "dtypes")
    args.paths = _parse_list(args.paths, ["flat", "list"], "paths")
    args.compare = _parse_list(args.compare, ["torch", "numpy", "bitsandbytes", "torchao"],
                               "compare")
    if args.state_dtype is not None:
        args.state_dtype = _parse_list(args.state_dtype, STATE_DTYPES, "state-dtype")
        if not args.state_dtype:
            raise ValueError(f"--state-dtype: expected one or more of {', '.join(STATE_DTYPES)}")
    if "bitsandbytes" in args.compare:
        if "int8" not in (args.state_dtype or []) or args.backend != "cpu":
            raise ValueError("--compare bitsandbytes: its rows are timed beside fastmoments' "
                             "int8 rows on the CPU; add --state-dtype int8")
        try:
            import_bitsandbytes()
        except ImportError as exc:
            raise ValueError(f"--compare bitsandbytes: cannot import it ({exc}); "
                             "pip install bitsandbytes") from None
    if "torchao" in args.compare:
        if "int8" not in (args.state_dtype or []) or args.backend != "cpu":
            raise ValueError("--compare torchao: its rows are timed beside fastmoments' "
                             "int8 rows on the CPU; add --state-dtype int8")
        try:
            import_torchao_optim()
        except ImportError as exc:
            raise ValueError(f"--compare torchao: cannot import it ({exc}); "
                             "pip install torchao") from None
    args.torch_impls = _parse_list(args.torch_impls, TORCH_IMPLS, "torch-impls")
    args.first_step_sizes = _parse_sizes(args.first_step_sizes, "first-step-sizes")
    args.crossover_sizes = _parse_sizes(args.crossover_sizes, "crossover-sizes")
    args.many_shape = _parse_shape(args.many_shape)
    limit = numba.config.NUMBA_NUM_THREADS
    if args.threads is None:
        args.threads = [numba.get_num_threads()]
    else:
        args.threads = [int(x) for x in _parse_sizes(args.threads, "threads")]
        bad = [t for t in args.threads if t > limit]
        if bad:
            raise ValueError(f"--threads: at most {limit} (NUMBA_NUM_THREADS), got {bad}")
    if args.block_sizes is None:
        args.block_sizes = [config.cuda_threads_per_block]
    elif args.backend != "cuda":
        raise ValueError("--block-sizes: only with --backend cuda (CUDA threads per block)")
    else:
        args.block_sizes = [int(x) for x in _parse_sizes(args.block_sizes, "block-sizes")]
        bad = [b for b in args.block_sizes if not 1 <= b <= 1024]
        if bad or not args.block_sizes:
            raise ValueError(f"--block-sizes: expected threads per block in 1..1024 "
                             f"(CUDA's limit), got {bad}")
    if not args.rules or not args.dtypes or not args.paths:
        raise ValueError("--rules, --dtypes and --paths need at least one value each")
    if args.chunk < 1:
        raise ValueError(f"--chunk: expected >= 1, got {args.chunk}")
    if not (args.budget >= 0 and math.isfinite(args.budget)):
        raise ValueError(f"--budget: expected seconds >= 0, got {args.budget}")
    if args.contend < 0:
        raise ValueError(f"--contend: expected >= 0, got {args.contend}")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; print the table (or JSON). Returns 0, or 2."""
    if getattr(args, "distributed", False):
        from .distributed import run as run_distributed

        return run_distributed(args)
    try:
        _resolve(args)
    except ValueError as exc:
        print(f"fastmoments bench: error: {exc}", file=sys.stderr)
        return 2
    if args.backend == "cuda":
        try:
            require_cuda()
        except RuntimeError as exc:
            print(f"fastmoments bench: error: {exc}", file=sys.stderr)
            return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastmoments bench: error: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 2
    torch_bench = None
    if args.torch:
        try:
            torch_bench = _torch_bench()
        except ImportError as exc:
            print(f"fastmoments bench: error: --torch: {TORCH_BENCH} cannot be imported "
                  f"({exc}); install torch (pip install torch)", file=sys.stderr)
            return 2
        if torch_bench is None or not hasattr(torch_bench, "run"):
            print(f"fastmoments bench: error: --torch: this fastmoments has no torch-module "
                  f"benchmark ({TORCH_BENCH} with a run(args) function)", file=sys.stderr)
            return 2
    runner = Runner(args, torch_bench)
    runner.plan()
    info = machine_info(args.backend)
    others = OtherLoad()
    busy = start_busy(args.contend) if args.contend else []
    block_size = config.cuda_threads_per_block
    try:
        runner.run()
    finally:
        stop_busy(busy)  # waited for: their CPU time counts as ours
        config.cuda_threads_per_block = block_size
    info["other_processes_cores"] = others.cores()
    if info["other_processes_cores"] is not None and info["other_processes_cores"] > 0.2:
        runner.notes.append(
            f"other processes kept {info['other_processes_cores']:.2f} of the "
            f"{info['usable_cores']} cores busy on average during the run: the timings "
            "(parallel ones most) are pessimistic")
    info["threading_layer"] = threading_layer()
    text, doc = render(runner, info, args.json, args.markdown)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.save:
        with open(args.save, "w") as handle:
            json.dump(doc, handle, indent=1)
    if args.plot:
        plot(doc, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``fastmoments bench`` without the top-level CLI (for scripts and tests)."""
    parser = argparse.ArgumentParser(prog="fastmoments bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
