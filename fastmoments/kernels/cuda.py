"""CUDA side: launching the generated grid-stride kernels, and a gradient reduction.

Imported only when a CUDA array is seen (see ``fastmoments._arrays.cuda_module``).
"""

from __future__ import annotations

import numpy as np

from .._arrays import cuda_module
from ..config import config

cuda = cuda_module()

__all__ = ["launch", "sum_squares", "full"]


def _grid(n: int) -> tuple[int, int]:
    threads = config.cuda_threads_per_block
    blocks = max(1, (n + threads - 1) // threads)
    if config.cuda_max_blocks is not None:
        blocks = min(blocks, config.cuda_max_blocks)
    return blocks, threads


def launch(kernel, n: int, *args) -> None:
    """Run a generated ``Kernel.cuda`` over ``n`` elements (asynchronous)."""
    if n == 0:
        return
    blocks, threads = _grid(n)
    kernel[blocks, threads](*args)


@cuda.jit
def _sum_squares_kernel(x, out):
    total = 0.0
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        v = np.float64(x[i])
        total += v * v
    cuda.atomic.add(out, 0, total)


def sum_squares(flats: list) -> float:
    """Sum of squares (float64) over a list of flat device arrays; synchronizes."""
    out = cuda.to_device(np.zeros(1, dtype=np.float64))
    for x in flats:
        if x.shape[0]:
            blocks, threads = _grid(x.shape[0])
            _sum_squares_kernel[blocks, threads](x, out)
    return float(out.copy_to_host()[0])


def full(n: int, value: float, dtype) -> object:
    """A device array of ``n`` elements filled with ``value``."""
    return cuda.to_device(np.full(n, value, dtype=dtype))

