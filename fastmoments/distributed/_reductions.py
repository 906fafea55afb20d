"""The sums over the ranks of a sharded step: the global gradient norm (for
``max_grad_norm`` and ``nonfinite``) and the multi-pass rules' per-segment totals,
computed alike on every rank (a mixin of :class:`.sharded.ShardedOptimizer`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import config
from ..kernels import host
from .comm import Communicator
from .layout import _Shard

__all__: list[str] = []


class _Reductions:
    """The sums over the ranks (needs ``comm``, ``rank``, ``world_size``, ``_shards``
    and ``_norm_buffer``)."""

    comm: Communicator
    rank: int
    world_size: int
    _shards: list[_Shard]
    _norm_buffer: np.ndarray

    def _global_norm(self, scale: float) -> float:
        """The norm of the mean gradient, from the ranks' sums of squares added in rank
        order (the same bits on every rank)."""
        total = self._sum_over_ranks(sum(_sum_squares(s.grad) for s in self._shards))
        if math.isfinite(total):
            return math.sqrt(total) / scale
        if math.isnan(total):
            return total
        # an Inf gradient, or finite float64 ones whose squares overflow: scale by the
        # largest magnitude on any rank first
        peak = self._max_over_ranks(max(_peak(s.grad) for s in self._shards))
        if not math.isfinite(peak) or peak == 0.0:
            return peak
        total = self._sum_over_ranks(sum(_scaled_squares(s.grad, peak) for s in self._shards))
        return peak * math.sqrt(total) / scale

    def _gathered(self, value: float) -> np.ndarray:
        buffer = self._norm_buffer
        buffer.fill(0.0)
        buffer[self.rank] = value
        if self.world_size > 1:
            self.comm.allgather(buffer, [1] * self.world_size)
        return buffer

    def _sum_over_ranks(self, value: float) -> float:
        total = 0.0
        for x in self._gathered(value):
            total += float(x)
        return total

    def _max_over_ranks(self, value: float) -> float:
        return float(np.max(self._gathered(value)))

    def _reduce_totals(self, totals: np.ndarray) -> None:
        """The multi-pass rules' hook: a pass's per-segment totals summed over the ranks."""
        if self.world_size == 1:
            return
        if totals.flags.c_contiguous:
            self.comm.allreduce(totals)
        else:
            contiguous = np.ascontiguousarray(totals)
            self.comm.allreduce(contiguous)
            totals[...] = contiguous


def _sum_squares(buffer: Any) -> float:
    if isinstance(buffer, np.ndarray):
        return host.sum_squares(buffer, buffer.shape[0] >= config.parallel_threshold)
    from ..kernels import cuda as _gpu

    return _gpu.sum_squares([buffer])


def _host(buffer: Any) -> np.ndarray:
    return buffer if isinstance(buffer, np.ndarray) else buffer.copy_to_host()


def _peak(buffer: Any) -> float:
    a = _host(buffer)
    return float(np.max(np.abs(a))) if a.size else 0.0


def _scaled_squares(buffer: Any, peak: float) -> float:
    scaled = _host(buffer).astype(np.float64) / peak
    return float(np.dot(scaled, scaled))
