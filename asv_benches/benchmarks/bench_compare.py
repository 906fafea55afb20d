"""Comparison rows: torch.optim (for-loop, foreach, fused) and in-place NumPy Adam/AdamW.

Skipped (NotImplementedError in setup) where torch is not installed, where torch has
no such optimizer or implementation (e.g. no fused RMSprop on the CPU, no Yogi), and
for NumPy other than Adam/AdamW. The list path is one tensor per 1000 elements, the
flat path one tensor.
"""

from __future__ import annotations

from fastmoments.tools import bench

from .common import (
    BACKENDS,
    CHUNK,
    PATHS,
    RULES,
    SIZES,
    _StepsWithCeiling,
    run_once,
    skip_combination,
)

IMPLS = ["torch-forloop", "torch-foreach", "torch-fused", "numpy"]
# torch.optim's counterparts of fastmoments' rules (torch is not imported to list them)
_TORCH_NAMES = ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam",
                "RAdam")
COMPARED_RULES = [r for r in RULES if r in _TORCH_NAMES]
COMPARED_SIZES = [s for s in SIZES if s <= 10**7]


def _build(impl: str, rule: str, size: int, dtype: str, path: str, backend: str) -> bench.Case:
    if impl == "numpy":
        if backend != "cpu":
            raise NotImplementedError("NumPy runs on the CPU only")
        return bench.numpy_case(rule, size, dtype, path, CHUNK)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    return bench.torch_case(rule, impl.removeprefix("torch-"), size, dtype, path, CHUNK, backend)


class Compare(_StepsWithCeiling):
    """One optimizer step of another implementation of the same rule.

    A smaller grid than :class:`~benchmarks.bench_rules.RuleStep` (rules torch has,
    up to 1e7 elements, float32) to keep ``asv run --quick`` short.
    """

    params = [IMPLS, COMPARED_RULES, COMPARED_SIZES, ["float32"], PATHS, BACKENDS]
    param_names = ["impl", "rule", "size", "dtype", "path", "backend"]
    timeout = 300

    def setup(self, impl: str, rule: str, size: int, dtype: str, path: str,
              backend: str) -> None:
        skip_combination(size, dtype, path, backend)
        if impl == "numpy" and rule not in bench.NUMPY_RULES:
            raise NotImplementedError(f"no NumPy implementation of {rule}")
        self.case = _build(impl, rule, size, dtype, path, backend)
        run_once(self.case)
