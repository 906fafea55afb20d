"""Running a segmented pass over a param group: :func:`run` and its :class:`Workspace`.

A step allocates nothing on the CPU: each pass (a :class:`~.segmented.SegmentedKernel`)
over a group's segment table (:class:`~.segments.Segments`) has a :class:`Workspace`
(built on its first run, kept on the table) that holds the per-segment values, the
packed scalars, the per-chunk sums and the per-segment totals; :func:`run` returns
its totals, and a caller writes the next pass's segment values into
:func:`workspace`'s ``values``. On a GPU the pass is launched here too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..config import config
from . import host, quantized
from .compile import WhenReady, compile_in_background, loop_ready
from .segmented import MAX_THREADS, SegmentedKernel
from .segments import _FIRST, _FIRST_FLAT, Segments

__all__ = ["Workspace", "run", "workspace"]


class Workspace:
    """The buffers of one segmented pass over one group, reused step after step.

    :func:`workspace` builds it on the first run of a kernel over a segment table
    (again if the group's dtype or device is another) and keeps it on the table; a
    group's tables are built once, and new ones (with new workspaces) when its
    layout changes, e.g. ND-Adam's ``axis`` edited through ``param_groups``.

    Attributes
    ----------
    values
        ``(num_segments, len(kernel.segment_names))``, buffer dtype: the segment
        values the kernel reads. A caller may write them here and pass this very
        array to :func:`run` (then nothing is copied).
    scalars
        The rule's scalars in the buffer dtype, packed by :func:`run`.
    sums
        ``(num_chunks, num_terms)`` float64: the per-chunk sums the kernel writes.
    totals
        ``(num_segments, num_terms)`` float64: the per-segment totals (``sums``
        itself when every segment is one chunk). :func:`run` returns it; it holds
        until this pass runs again.
    """

    __slots__ = ("kernel", "dtype", "device", "values", "scalars", "sums", "totals",
                 "parallel_ready", "serial_ready", "_pack", "_scalar_bytes", "_grad_source",
                 "_grad_addresses", "_offsets", "_host_sums", "_device_buffers")

    def __init__(self, kernel: SegmentedKernel, segments: Segments, dtype: np.dtype,
                 device: str, offsets: np.ndarray) -> None:
        self.kernel, self.dtype, self.device = kernel, np.dtype(dtype), device
        num_terms = kernel.num_terms
        self.values = np.zeros((max(segments.num_segments, 1), len(kernel.segment_names)),
                               dtype=self.dtype)
        self.scalars, self._pack, self._scalar_bytes = host.scalar_packer(
            len(kernel.scalar_names), self.dtype)
        if device == "cuda":  # the host copy of the device's sums (at least one column)
            self._host_sums = np.empty((segments.num_chunks, max(num_terms, 1)))
            self.sums = self._host_sums[:, :num_terms]
        else:
            self._host_sums = None
            self.sums = np.empty((segments.num_chunks, num_terms))
        self.totals = (self.sums if segments.one_to_one
                       else np.zeros((segments.num_segments, num_terms)))
        self._grad_source: Any = None
        #: the pass's parallel CPU loop is compiled for these buffers (see ``run``)
        self.parallel_ready = False
        #: the serial loops found compiled for these buffers (a pass with a stand-in)
        self.serial_ready = WhenReady()
        self._offsets = offsets[:-1]
        self._grad_addresses = np.zeros(len(offsets) - 1, dtype=np.int64)
        self._device_buffers: Any = None

    def pack(self, scalars: Sequence[float]) -> None:
        """Write ``scalars`` into :attr:`scalars`, cast to the buffer dtype."""
        try:
            self._pack(self._scalar_bytes, 0, *scalars)
        except (OverflowError, struct.error, TypeError):
            # beyond float32's range (NumPy casts to inf), or not numbers: NumPy decides
            args = np.array(scalars, dtype=self.dtype)
            if args.shape != self.scalars.shape:
                raise ValueError(f"{self.kernel.name}: expected {self.scalars.shape[0]} "
                                 f"scalars, got {args.shape[0] if args.ndim else args}") from None
            self.scalars[:] = args

    def grad_addresses(self, source: np.ndarray) -> np.ndarray:
        """The address of each parameter's gradient in the flat array ``source``.

        Computed when ``source`` is another array than last time; the array is held,
        so its address stays valid (NumPy refuses to resize a referenced array).
        """
        if source is not self._grad_source:  # (16-bit gradients: 2 bytes per element)
            np.multiply(self._offsets, source.dtype.itemsize, out=self._grad_addresses)
            self._grad_addresses += host.address_of(source)
            self._grad_source = source
        return self._grad_addresses

    def device_buffers(self) -> tuple[Any, Any]:
        """The segment values and the per-chunk sums on the GPU (allocated once)."""
        if self._device_buffers is None:
            from numba import cuda

            self._device_buffers = (cuda.to_device(self.values),
                                    cuda.device_array(self._host_sums.shape))
        return self._device_buffers


def workspace(kernel: SegmentedKernel, group: Any, segments: Segments) -> Workspace:
    """The :class:`Workspace` of ``kernel`` over ``segments`` (built on first use)."""
    # the dtype of the arithmetic (float32 for 16-bit parameters)
    dtype = getattr(group, "compute_dtype", group.dtype)
    ws = segments._workspaces.get(kernel)
    if ws is None or ws.dtype != dtype or ws.device != group.device:
        if kernel.int8:
            _check_whole_blocks(kernel, group, segments)
        ws = segments._workspaces[kernel] = Workspace(kernel, segments, dtype,
                                                      group.device, group.offsets)
    return ws


def _check_whole_blocks(kernel: SegmentedKernel, group: Any, segments: Segments) -> None:
    """Refuse a table whose chunks are not runs of whole int8 blocks: the loops of an
    int8 kernel requantize each block they step, from all of its new values. (The
    optimizers check their tables when they build them, see ``optim.multipass``.)"""
    if group.device != "cpu" or not segments.whole_blocks(group.offsets,
                                                          group.precision.blocks[0]):
        raise ValueError(f"{kernel.name}: int8 states need a table of contiguous chunks on "
                         "the CPU that begin and end at the edges of the quantization blocks")


def _int8_states(kernel: SegmentedKernel, group: Any, states: tuple) -> tuple:
    """The loop arguments of an int8 kernel after the sums (see
    :func:`~.segmented._int8_arguments`): an int8 state's codes (``states``' entry)
    with the group's scales and float32 buffer of that state, then the block table,
    the maps and the code table; then, where the layout rounds an int8 state
    stochastically, the floor table and the step's key (``group.rounding``)."""
    out: list = []
    for name, codec, buffer in zip(kernel.state_names, kernel.layout[2], states):
        out.append(buffer)
        if codec.startswith("q8"):
            out += [group.state[aux] for aux in quantized.aux_names(name)]
    blocks, small, _, _ = group.precision.blocks
    out += [blocks, small, quantized.maps(), quantized.code_table()]
    if quantized.takes_floors(kernel.layout):
        out.append(quantized.floor_table())
    if quantized.takes_key(kernel.layout):  # (in a uint32 array the loops load)
        out.append(group.rounding)
    return tuple(out)


def run(kernel: SegmentedKernel, group: Any, source: Any, segments: Segments,
        segment_values: np.ndarray | None, scalars: Sequence[float],
        states: tuple[Any, ...] | None = None,
        stand_in: Callable[..., None] | None = None, stand_in_args: tuple = ()) -> np.ndarray:
    """Run one segmented pass over a param group; return the per-segment totals.

    Nothing is allocated on the CPU once the pass has run before (see
    :class:`Workspace`).

    Parameters
    ----------
    kernel
        The pass.
    group
        The optimizer's internal ``Group`` (params, flat state, device, addresses).
    source
        Where the gradients are, as the optimizer's ``_collect`` returned it: a
        flat array, ``None`` (CPU list path: addresses in ``group.grad_addresses``)
        or a list of device arrays (CUDA list path); ``"params"`` for passes that
        read no gradient (the parameters are passed in its place).
    segments
        The group's segments.
    segment_values
        ``(num_segments, len(kernel.segment_names))`` values (cast to the buffer
        dtype here), or None when the rule takes none; ``workspace(...).values``
        itself is used as it is.
    scalars
        The rule's scalars (cast to the buffer dtype here).
    states
        The flat buffers of ``kernel.state_names``, in order; None: the group's state
        buffers of those names. (LAMB passes a scratch buffer beside its moments.)
        A kernel with a layout (:meth:`~.segmented.SegmentedKernel.reduced`) also
        gets the group's float32 master copy (``group.state["master_param"]``) when
        its layout keeps one, and the step's key (``group.rounding``) here.
    stand_in, stand_in_args
        For a CPU pass without terms: ``stand_in(values, *stand_in_args)`` gives the
        pass's results bit for bit (in NumPy) from the segment values. When
        ``config.background_compile`` is on and the pass's serial loop is not compiled
        for these buffers, it runs instead, and the loop is compiled in the background
        (as the parallel loops are).

    Returns
    -------
    numpy.ndarray
        ``(num_segments, kernel.num_terms)`` float64 totals of the returned terms:
        the workspace's :attr:`Workspace.totals`, overwritten by the pass's next run.
    """
    ws = workspace(kernel, group, segments)
    ws.pack(scalars)
    if segments.num_chunks == 0:
        ws.totals.fill(0.0)
        return ws.totals
    values = ws.values
    if segment_values is not values:
        if segment_values is None:
            if kernel.segment_names:
                values.fill(0)
        elif type(segment_values) is np.ndarray and segment_values.shape == values.shape:
            np.copyto(values, segment_values, casting="unsafe")
        else:
            given = np.reshape(np.asarray(segment_values), (-1, values.shape[1]))
            if given.shape != values.shape:
                raise ValueError(f"{kernel.name}: expected {values.shape[0]} rows of segment "
                                 f"values, got {given.shape[0]}")
            np.copyto(values, given, casting="unsafe")
    if states is None:
        states = tuple(group.state[name] for name in kernel.state_names)
    if kernel.layout is not None and kernel.layout[3]:
        states = (*states, group.state["master_param"])
    if group.device == "cuda":
        _run_cuda(kernel, group, source, segments, ws, states)
    else:
        if kernel.int8:  # codes, scales and float32 buffer per int8 state; the tables
            states = _int8_states(kernel, group, states)
        elif kernel.layout is not None:  # the step's key, in a uint32 array the loops load
            states = (*states, group.rounding)
        param_addresses = group.param_addresses
        if isinstance(source, str):  # "params": no gradient is read
            grad_addresses = param_addresses
        elif source is None:
            grad_addresses = group.grad_addresses
        else:
            grad_addresses = ws.grad_addresses(source)
        num_chunks = segments.num_chunks
        arguments = (param_addresses, grad_addresses, group.offsets, segments.chunks, values,
                     ws.sums, *states, ws.scalars)
        if group.numel >= config.parallel_threshold and num_chunks > 1:
            loop = kernel.contiguous_parallel if segments.contiguous else kernel.parallel
            parallel_arguments = (*arguments, segments.group_bounds())
            if ws.parallel_ready or loop_ready(loop, parallel_arguments):
                ws.parallel_ready = True
                loop(*parallel_arguments)
                return segments.totals(ws.sums, ws.totals)
            # compiled in a background thread, started at the end of the step; the
            # serial loop meanwhile (the same sums: each chunk is summed on its own)
            compile_in_background(loop, parallel_arguments)
        serial = kernel.contiguous_serial if segments.contiguous else kernel.serial
        serial_arguments = (*arguments, 0, num_chunks)
        if stand_in is None or ws.serial_ready.get(id(serial)) is serial:
            serial(*serial_arguments)
        else:  # (a cold start: NumPy while the loop compiles)
            ws.serial_ready.call(serial, serial, serial_arguments, stand_in, values,
                                  *stand_in_args)
    return segments.totals(ws.sums, ws.totals)


def _grid(rows: int) -> tuple[int, int]:
    threads = config.cuda_threads_per_block
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"config.cuda_threads_per_block must be in [1, {MAX_THREADS}] for "
                         f"segmented kernels, got {threads}")
    blocks = rows
    if config.cuda_max_blocks is not None:
        blocks = min(blocks, config.cuda_max_blocks)
    return max(blocks, 1), threads


def _run_cuda(kernel, group, source, segments, ws: Workspace, states) -> None:
    """The pass on the GPU, into the workspace's device buffers; the sums are copied
    into ``ws.sums`` (a launch still allocates numba's small argument objects). A kernel
    with a layout also takes the step's key and the group index of its ``param[0]``."""
    fn = kernel.cuda
    chunks = segments.device_chunks()
    d_values, d_sums = ws.device_buffers()
    if kernel.segment_names:
        d_values.copy_to_device(ws.values)
    scalars = tuple(ws.scalars)
    key = (np.uint32(group.rounding[0]),) if kernel.layout is not None else ()
    if group.flat is not None and not isinstance(source, list):
        data = group.flat.data
        grad = data if isinstance(source, str) else source
        blocks, threads = _grid(segments.num_chunks)
        fn[blocks, threads](data, grad, *states, chunks, _FIRST_FLAT, d_values, d_sums,
                            *_indexed(key, 0), *scalars)
    else:
        for j, p in enumerate(group.params):
            r0, r1 = int(segments.rows[j]), int(segments.rows[j + 1])
            if r1 == r0:
                continue
            start, stop = int(group.offsets[j]), int(group.offsets[j + 1])
            flat_p = p.reshape(p.size)
            grad = flat_p if isinstance(source, str) else source[j].reshape(p.size)
            blocks, threads = _grid(r1 - r0)
            fn[blocks, threads](flat_p, grad, *(s[start:stop] for s in states), chunks[r0:r1],
                                _FIRST, d_values, d_sums[r0:r1], *_indexed(key, start),
                                *scalars)
    d_sums.copy_to_host(ws._host_sums)


def _indexed(key: tuple, offset: int) -> tuple:
    """A reduced kernel's ``key, offset`` arguments (none for a plain kernel)."""
    return (*key, np.int64(offset)) if key else ()
