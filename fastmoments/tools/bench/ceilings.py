"""The ceilings: in-place kernels with exactly a rule's loads and stores and no math.

An elementwise optimizer step is limited by memory traffic, so each row is compared
with a kernel that moves the same bytes the same way: :func:`ceiling_kernel` for a
single pass (``p[i] += g[i]`` and ``s[i] += g[i]`` per state buffer),
:func:`pass_ceiling_kernel` for each pass of a multi-pass rule, and on a GPU also the
device's own copy (:func:`device_copy_case`), the figure vendors quote. The CPU
kernels are serial or parallel as the library chooses for the size; the CUDA ones are
grid-stride kernels launched as the library's are. A step whose buffers are stored in
other widths than its arithmetic (bfloat16 or int8 state: a
:class:`~.cases.Storage`) gets :func:`storage_ceiling_kernel`: the same loads and
stores, each at its stored width, and for int8 state one scale per block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...config import config
from ...kernels.compile import build_generated, cached_njit
from .cases import (
    INT8_BLOCK,
    Case,
    Storage,
    host_data,
    on_backend,
    pass_fields,
    require_cuda,
)

# --------------------------------------------------- multi-pass ceilings
_PASS_CEILING_SOURCE = """
def {name}(n, a0{args}):
    total = 0.0
    for i in {range}(n):
        {body}
    return total
"""
# a reduction-only pass stores its sum where it cannot happen (the loads stay live)
_CUDA_PASS_CEILING_SOURCE = """
def {name}(n, a0{args}):
    total = 0.0
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        {body}
    if total == -3.0e38:
        a0[0] = total
"""
_PASS_CEILINGS: dict[tuple[int, int, bool, int], Any] = {}
_CUDA_PASS_CEILINGS: dict[tuple[int, int, int], Any] = {}


def _pass_ceiling_source(template: str, reads: int, writes: int, store_only: int,
                         name: str, **names: str) -> str:
    in_place = writes - store_only
    if not 0 <= in_place <= reads or reads < 1 or store_only < 0 or (
            store_only and in_place == reads):
        raise ValueError(f"no ceiling kernel for {reads} reads and {writes} writes "
                         f"({store_only} to buffers not read)")
    loads = [f"a{k}[i]" for k in range(in_place, reads)]
    if writes == 0:
        body = "total += " + " + ".join(loads)
    elif loads:
        body = f"x = {' + '.join(loads)}; " + "; ".join(
            [f"a{k}[i] += x" for k in range(in_place)]
            + [f"b{k}[i] = x" for k in range(store_only)])
    else:
        body = "; ".join(f"a{k}[i] = -a{k}[i]" for k in range(writes))
    return template.format(
        name=name, args="".join([f", a{k}" for k in range(1, reads)]
                                + [f", b{k}" for k in range(store_only)]),
        body=body, **names)


def pass_ceiling_kernel(reads: int, writes: int, parallel: bool,
                        store_only: int = 0) -> Callable[..., Any]:
    """A CPU ceiling kernel for one pass of a multi-pass rule: ``f(n, a0, a1, ..., b0, ...)``.

    It loads ``a0 .. a{reads-1}[:n]`` and stores ``writes`` buffers: ``a0 ..
    a{writes-store_only-1}`` in place (the sum of the loaded-only ones added, or,
    when every loaded array is stored, their sign flipped), and the ``store_only``
    buffers ``b0 ..``, which it does not load (that sum written). A store to a buffer
    that is not loaded costs more than an in-place one (the cache line is read for
    ownership first): a rule that keeps a value between passes (LAMB's update on the
    CPU) makes such stores, and its ceiling makes them too. A pass that stores
    nothing sums what it reads (with reassociation allowed, so that the sum
    vectorizes).
    """
    key = (reads, writes, parallel, store_only)
    if key not in _PASS_CEILINGS:
        name = (f"pass_ceiling_{reads}r{writes}w{f'{store_only}new' if store_only else ''}_"
                f"{'parallel' if parallel else 'serial'}")
        source = _pass_ceiling_source(_PASS_CEILING_SOURCE, reads, writes, store_only, name,
                                      range="prange" if parallel else "range")
        fn = build_generated(source, name, __file__, None, {})
        _PASS_CEILINGS[key] = cached_njit(error_model="numpy", parallel=parallel,
                                          fastmath=writes == 0)(fn)
    return _PASS_CEILINGS[key]


def cuda_pass_ceiling_kernel(reads: int, writes: int, store_only: int = 0) -> Any:
    """:func:`pass_ceiling_kernel` as a CUDA grid-stride kernel ``f[grid](n, a0, ...)``
    (launched as the library's kernels); a pass that stores nothing sums what it reads
    per thread and returns nothing."""
    key = (reads, writes, store_only)
    if key not in _CUDA_PASS_CEILINGS:
        name = f"pass_ceiling_{reads}r{writes}w{f'{store_only}new' if store_only else ''}"
        source = _pass_ceiling_source(_CUDA_PASS_CEILING_SOURCE, reads, writes, store_only,
                                      name)
        from numba import cuda

        _CUDA_PASS_CEILINGS[key] = cuda.jit(
            build_generated(source, name, __file__, None, {"cuda": cuda}))
    return _CUDA_PASS_CEILINGS[key]


# ------------------------------------------------- single-pass ceilings
# In place, exactly the loads and stores of a rule with any number of state buffers
# (Adan has 4), no math beyond one add per store: ``p[i] += g[i]`` and ``s[i] += g[i]``
# for each state buffer. One body for the CPU loops (serial / prange, the library's jit options,
# compiled like its generated loops so that numba's on-disk cache applies) and the
# CUDA grid-stride kernel.
_CPU_CEILING_SOURCE = """
def {name}(p, g{args}):
    for i in {range}(p.shape[0]):
        {body}
"""
_CUDA_CEILING_SOURCE = """
def ceiling(p, g{args}):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        {body}
"""
_CEILINGS: dict[tuple[int, bool], Any] = {}
_CUDA_CEILINGS: dict[int, Any] = {}


def _ceiling_source(template: str, n_states: int, **names: str) -> str:
    if not (isinstance(n_states, (int, np.integer)) and n_states >= 0):
        raise ValueError(f"no ceiling kernel for {n_states!r} state buffers (a count >= 0)")
    states = [f"s{k}" for k in range(n_states)]
    body = "gi = g[i]; p[i] += gi" + "".join(f"; {s}[i] += gi" for s in states)
    return template.format(args="".join(f", {s}" for s in states), body=body, **names)


def ceiling_kernel(n_states: int, parallel: bool) -> Callable[..., None]:
    """The CPU ceiling kernel ``f(p, g, *states)`` for a rule with ``n_states`` buffers."""
    key = (n_states, parallel)
    if key not in _CEILINGS:
        name = f"ceiling{n_states}_{'parallel' if parallel else 'serial'}"
        source = _ceiling_source(_CPU_CEILING_SOURCE, n_states, name=name,
                                 range="prange" if parallel else "range")
        fn = build_generated(source, name, __file__, None, {})
        _CEILINGS[key] = cached_njit(error_model="numpy", parallel=parallel)(fn)
    return _CEILINGS[key]


def cuda_ceiling_kernel(n_states: int) -> Any:
    """The CUDA ceiling kernel (grid-stride, as the library's) for ``n_states`` buffers."""
    if n_states not in _CUDA_CEILINGS:
        source = _ceiling_source(_CUDA_CEILING_SOURCE, n_states)
        from numba import cuda

        # ``cuda`` must be a global of the kernel (the simulator swaps it there)
        _CUDA_CEILINGS[n_states] = cuda.jit(
            build_generated(source, "ceiling", __file__, None, {"cuda": cuda}))
    return _CUDA_CEILINGS[n_states]


# ------------------------------------------------ widths of the buffers
# The single-pass ceiling at the stored width of every buffer: a buffer in the
# gradient's dtype gets ``+= gi`` as above, any other (uint16 bfloat16 patterns, uint8
# codes) ``+= 1`` in its own type: one load and one store at its width, no conversion.
# With block-scaled (int8) states the loop runs over the blocks, as the library's int8
# loop does, and loads and stores each state's float32 scale once per block.
_STORAGE_CEILING_SOURCE = """
def {name}(blocks, p, g{args}):
    for i in {range}(p.shape[0]):
        {body}
"""
# (unsigned indices: with signed bounds loaded from ``blocks`` numba cannot tell that
# ``i`` is not negative and wraps every access around, which stops the vectorization:
# 4x slower here)
_BLOCK_CEILING_SOURCE = """
def {name}(blocks, p, g{args}):
    for b in {range}(blocks.shape[0] - 1):
        for i in range(np.uint64(blocks[b]), np.uint64(blocks[b + 1])):
            {body}
        {scales}
"""
_CUDA_STORAGE_CEILING_SOURCE = """
def ceiling(blocks, p, g{args}):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        {body}
"""
_STORAGE_CEILINGS: dict[tuple, Any] = {}


def _storage_source(template: str, storage: Storage, **names: str) -> str:
    def add(buffer: str, dtype: str) -> str:
        return f"{buffer}[i] += gi" if dtype == storage.grad else f"{buffer}[i] += 1"

    states = [f"s{k}" for k in range(len(storage.states))]
    body = "; ".join(["gi = g[i]", add("p", storage.param)]
                     + [add(s, d) for s, d in zip(states, storage.states, strict=True)])
    scaled = [f"a{k}" for k, q in enumerate(storage.scaled) if q]
    args = "".join(f", s{k}" + (f", a{k}" if q else "") for k, q in enumerate(storage.scaled))
    return template.format(args=args, body=body,
                           scales="; ".join(f"{a}[b] += 1" for a in scaled), **names)


def _storage_name(storage: Storage) -> str:
    def code(dtype: str) -> str:
        return np.dtype(dtype).str[1:]  # f4, u2, u1

    states = "".join(code(s) + ("q" if q else "")
                     for s, q in zip(storage.states, storage.scaled, strict=True))
    return f"ceiling_{code(storage.param)}{code(storage.grad)}_{states or 'none'}"


def storage_ceiling_kernel(storage: Storage, parallel: bool) -> Callable[..., None]:
    """The CPU ceiling ``f(blocks, p, g, s0[, a0], s1[, a1], ...)`` of a step whose
    buffers are stored as ``storage`` says: each loaded and stored once per element at
    its width (``a{k}``: the float32 scales of a block-scaled state ``s{k}``, one per
    block of ``blocks``, loaded and stored once per block; ``blocks`` is not read
    without them).

    Examples: bfloat16-state Adam over float32 parameters (20 bytes per element):
    ``Storage("float32", "float32", ("uint16", "uint16"), (False, False))``; int8:
    ``("uint8", "uint8"), (True, True)`` (16 bytes plus 16 per block of 256).
    """
    if len(storage.states) != len(storage.scaled):
        raise ValueError(f"storage: {len(storage.states)} states and "
                         f"{len(storage.scaled)} scale flags")
    key = (storage, parallel)
    if key not in _STORAGE_CEILINGS:
        name = f"{_storage_name(storage)}_{'parallel' if parallel else 'serial'}"
        template = _BLOCK_CEILING_SOURCE if any(storage.scaled) else _STORAGE_CEILING_SOURCE
        source = _storage_source(template, storage, name=name,
                                 range="prange" if parallel else "range")
        fn = build_generated(source, name, __file__, None, {"np": np})
        _STORAGE_CEILINGS[key] = cached_njit(error_model="numpy", parallel=parallel)(fn)
    return _STORAGE_CEILINGS[key]


def cuda_storage_ceiling_kernel(storage: Storage) -> Any:
    """:func:`storage_ceiling_kernel` as a CUDA grid-stride kernel (states without
    block scales: the library has no int8 CUDA loop)."""
    if any(storage.scaled):
        raise NotImplementedError("block-scaled (int8) state has no CUDA kernel")
    key = (storage, "cuda")
    if key not in _STORAGE_CEILINGS:
        source = _storage_source(_CUDA_STORAGE_CEILING_SOURCE, storage)
        from numba import cuda

        _STORAGE_CEILINGS[key] = cuda.jit(
            build_generated(source, "ceiling", __file__, None, {"cuda": cuda}))
    return _STORAGE_CEILINGS[key]


def storage_ceiling_case(storage: Storage, n: int, blocks: np.ndarray | None = None,
                         backend: str = "cpu", seed: int = 0) -> Case:
    """The ceiling of a step over ``n`` elements stored as ``storage``
    (:func:`storage_ceiling_kernel`), serial or parallel as the library chooses.

    ``blocks``: the starts of the blocks of the scaled states and, last, ``n``
    (default: blocks of 256 over one tensor).
    """
    if any(storage.scaled) and blocks is None:
        blocks = np.array([*range(0, n, INT8_BLOCK), n], dtype=np.int64)
    if blocks is None:
        blocks = np.zeros(1, dtype=np.int64)
    blocks = np.asarray(blocks, dtype=np.int64)
    param, grad = host_data(n, storage.param, seed)
    buffers = [param, grad.astype(storage.grad)]
    for dtype, q in zip(storage.states, storage.scaled, strict=True):
        buffers.append(np.zeros(n, dtype=dtype))
        if q:
            buffers.append(np.zeros(len(blocks) - 1, dtype=np.float32))
    arrays, sync = on_backend(backend, buffers)
    if backend == "cuda":
        from ...kernels import cuda as _gpu

        kernel = cuda_storage_ceiling_kernel(storage)
        device_blocks = _gpu.cuda.to_device(blocks)

        def step() -> None:
            _gpu.launch(kernel, n, device_blocks, *arrays)
    else:
        kernel = storage_ceiling_kernel(storage, n >= config.parallel_threshold)

        def step() -> None:
            kernel(blocks, *arrays)

    n_states = len(storage.states)
    return Case(step, n_states, n, np.dtype(storage.param).itemsize, 1, sync,
                (arrays, blocks), None, None, storage,
                blocks if any(storage.scaled) else None)


# ----------------------------------------------------------------- cases
def ceiling_for(case: Case, backend: str = "cpu", seed: int = 0) -> Case:
    """The ceiling of ``case``'s traffic: its passes' reads and writes, no math.

    A multi-pass step gets one ceiling kernel per pass (:func:`multipass_ceiling_case`);
    a step whose buffers have other widths than its parameters' (reduced-precision
    state) the ceiling of those widths (:func:`storage_ceiling_case`).
    """
    if case.storage is not None and not case.storage.uniform:
        return storage_ceiling_case(case.storage, case.numel, case.blocks, backend, seed)
    dtype = np.dtype(f"f{case.itemsize}")
    (reads, writes, count, store_only), *more = map(pass_fields, case.traffic_passes)
    if not more and writes == reads - 1 and count == case.numel and not store_only:
        # param, grad and states
        return ceiling_case(reads - 2, case.numel, dtype, backend, seed)
    return multipass_ceiling_case(case.traffic_passes, case.numel, dtype, seed, backend)


def multipass_ceiling_case(passes: Sequence[Sequence[int]], n: int,
                           dtype: Any = np.float32, seed: int = 0,
                           backend: str = "cpu") -> Case:
    """The ceiling of a multi-pass step: one :func:`pass_ceiling_kernel` (CPU) or
    :func:`cuda_pass_ceiling_kernel` (CUDA) per pass.

    ``passes``: ``(reads, writes, elements[, store_only])`` each; the passes run one
    after the other over the first ``elements`` of the same buffers (as the rule's
    passes do); the buffers that a pass stores without reading are extra ones.
    """
    passes = tuple(pass_fields(p) for p in passes)
    param, grad = host_data(n, dtype, seed)
    arrays, stored_only, sync = on_backend(
        backend,
        [param, grad] + [np.zeros(n, dtype=dtype) for _ in range(max(p[0] for p in passes) - 2)],
        [np.zeros(n, dtype=dtype) for _ in range(max(p[3] for p in passes))])
    calls = []
    for reads, writes, count, store_only in passes:
        # the stored buffers first: param and the states, then the gradient
        order = [arrays[0], *arrays[2:], arrays[1]][:reads] if writes < reads else arrays[:reads]
        order = (count, *order, *stored_only[:store_only])
        if backend == "cuda":
            calls.append((cuda_pass_ceiling_kernel(reads, writes, store_only), order))
        else:
            calls.append((pass_ceiling_kernel(reads, writes, count >= config.parallel_threshold,
                                              store_only), order))

    if backend == "cuda":
        from ...kernels import cuda as _gpu

        def step() -> None:
            for kernel, order in calls:
                _gpu.launch(kernel, order[0], *order)
    else:
        def step() -> None:
            for kernel, order in calls:
                kernel(*order)

    return Case(step, len(arrays) - 2, n, np.dtype(dtype).itemsize, 1, sync,
                (arrays, stored_only), tuple(p if p[3] else p[:3] for p in passes))


def ceiling_case(n_states: int, n: int, dtype: Any = np.float32, backend: str = "cpu",
                 seed: int = 0) -> Case:
    """The ceiling kernel for ``n_states`` state buffers over ``n`` elements.

    Serial below ``fastmoments.config.parallel_threshold`` and parallel from it on
    (the library's choice for a flat buffer); on CUDA launched as the library does.
    """
    param, grad = host_data(n, dtype, seed)
    arrays, sync = on_backend(backend, [param, grad]
                               + [np.zeros(n, dtype=dtype) for _ in range(n_states)])
    if backend == "cuda":
        from ...kernels import cuda as _gpu

        kernel = cuda_ceiling_kernel(n_states)

        def step() -> None:
            _gpu.launch(kernel, n, *arrays)

        return Case(step, n_states, n, np.dtype(dtype).itemsize, 1, sync, (arrays,))
    kernel = ceiling_kernel(n_states, n >= config.parallel_threshold)

    def step() -> None:
        kernel(*arrays)

    return Case(step, n_states, n, np.dtype(dtype).itemsize, 1, sync, (arrays,))


def device_copy_case(n: int, dtype: Any = np.float32, seed: int = 0) -> Case:
    """A device-to-device copy of one buffer of ``n`` elements (``cuMemcpyDtoD``): the
    device's copy bandwidth, the figure GPU vendors and torch users quote (bytes read
    plus bytes written). One read and one write per element, into a buffer it does not
    read, so its traffic is ``1r/1w(1new)``."""
    cuda = require_cuda()
    source = cuda.to_device(host_data(n, dtype, seed)[0])
    target = cuda.device_array_like(source)

    def step() -> None:
        target.copy_to_device(source)

    return Case(step, 0, n, np.dtype(dtype).itemsize, 1, cuda.synchronize, (source, target),
                ((1, 1, n, 1),))
