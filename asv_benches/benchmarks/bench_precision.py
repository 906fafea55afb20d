"""Reduced-precision state (``state_dtype``): time per step, GB/s and fraction of the
ceiling of the step's own traffic (each buffer at its stored width), and the bytes of
state per parameter; bitsandbytes' 8-bit Adam on the same data, when installed."""

from __future__ import annotations

from fastmoments.tools import bench

from .common import BACKENDS, _StepsWithCeiling, run_once, skip_combination

STATE_DTYPES = ["float32", "bfloat16", "int8"]
SIZES = [10**6, 10**7]


class PrecisionStep(_StepsWithCeiling):
    """Adam over one float32 tensor with its state in float32, bfloat16 or int8."""

    params = [["Adam"], SIZES, STATE_DTYPES, BACKENDS]
    param_names = ["rule", "size", "state_dtype", "backend"]
    timeout = 300

    def setup(self, rule: str, size: int, state_dtype: str, backend: str) -> None:
        skip_combination(size, "float32", "flat", backend)
        # raises NotImplementedError (asv: skipped) where the library refuses, e.g.
        # int8 state on the GPU
        self.case = bench.fastmoments_case(rule, size, "float32", "flat", backend=backend,
                                           state_dtype=state_dtype)
        run_once(self.case)

    def track_state_bytes_per_param(self, *params) -> float:
        """Bytes of optimizer state per parameter, from its buffers: 8 (float32 Adam),
        4 (bfloat16), 2 + 8 per block of 256 (int8)."""
        return self.case.state_bytes / self.case.numel

    track_state_bytes_per_param.unit = "bytes"


class BitsandbytesStep(_StepsWithCeiling):
    """bitsandbytes' 8-bit Adam (``Adam8bit``) on the CPU, the peer of int8 state;
    GB/s counts the bytes of a fused int8 step (the same ceiling as
    :class:`PrecisionStep`'s int8 rows)."""

    params = [["Adam"], SIZES, ["cpu"]]
    param_names = ["rule", "size", "backend"]
    timeout = 300

    def setup(self, rule: str, size: int, backend: str) -> None:
        try:
            self.case = bench.bitsandbytes_case(rule, size)
        except ImportError as exc:
            raise NotImplementedError(f"bitsandbytes: {exc}") from None
        run_once(self.case)

    def track_state_bytes_per_param(self, *params) -> float:
        return self.case.state_bytes / self.case.numel

    track_state_bytes_per_param.unit = "bytes"
