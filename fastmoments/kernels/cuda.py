"""CUDA side: launching the generated grid-stride kernels and the int8 block kernels,
and a gradient reduction.

Imported only when a CUDA array is seen (see ``fastmoments._arrays.cuda_module``).
"""

from __future__ import annotations

import numpy as np

from .._arrays import cuda_module
from ..config import config
from .precision import bf16_to_f32, f16_to_f32
from .quantized import BLOCK, code_table, maps

cuda = cuda_module()

__all__ = ["launch", "launch_blocks", "int8_tables", "sum_squares", "full"]


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


def launch_blocks(kernel, n_blocks: int, *args) -> None:
    """Run an int8 kernel (``quantized.cuda_source``) over ``n_blocks`` quantization
    blocks: one thread block each (grid-stride beyond ``config.cuda_max_blocks``), with
    the largest power of two of threads up to ``config.cuda_threads_per_block`` and the
    block size (asynchronous)."""
    if n_blocks <= 0:
        return
    threads = min(config.cuda_threads_per_block, BLOCK)
    threads = 1 << (threads.bit_length() - 1)  # the reduction halves the threads
    grid = n_blocks
    if config.cuda_max_blocks is not None:
        grid = min(grid, config.cuda_max_blocks)
    kernel[grid, threads](*args)


def int8_tables(blocks: np.ndarray, small: np.ndarray) -> tuple:
    """The arguments of an int8 kernel after its states, on the device: a group's block
    table, the maps and the code table (about 50 KB, copied per group rather than
    cached: a cache would outlive a reset of the CUDA context)."""
    return tuple(cuda.to_device(a) for a in (blocks, small, maps(), code_table()))


@cuda.jit
def _sum_squares_kernel(x, out):
    total = 0.0
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        v = np.float64(x[i])
        total += v * v
    cuda.atomic.add(out, 0, total)


@cuda.jit
def _sum_squares_16_kernel(bits, bfloat16, out):
    # 16-bit values as their uint16 patterns (numba's kernels cannot type
    # ml_dtypes.bfloat16), widened exactly to float32
    total = 0.0
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, bits.shape[0], stride):
        if bfloat16:
            v = np.float64(bf16_to_f32(bits[i]))
        else:
            v = np.float64(f16_to_f32(bits[i]))
        total += v * v
    cuda.atomic.add(out, 0, total)


def sum_squares(flats: list) -> float:
    """Sum of squares (float64) over a list of flat device arrays (float32, float64,
    float16 or ``ml_dtypes.bfloat16``); synchronizes."""
    out = cuda.to_device(np.zeros(1, dtype=np.float64))
    for x in flats:
        if x.shape[0]:
            blocks, threads = _grid(x.shape[0])
            if np.dtype(x.dtype).itemsize == 2:
                _sum_squares_16_kernel[blocks, threads](
                    x.view(np.uint16), np.dtype(x.dtype) != np.float16, out)
            else:
                _sum_squares_kernel[blocks, threads](x, out)
    return float(out.copy_to_host()[0])


def full(n: int, value: float, dtype) -> object:
    """A device array of ``n`` elements filled with ``value``."""
    return cuda.to_device(np.full(n, value, dtype=dtype))

