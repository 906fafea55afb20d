"""Segmented passes: a rule applied per element that also works per *segment*.

Some rules need reductions over parts of the flat buffer: LAMB's trust ratio needs
the norms of each parameter tensor, ND-Adam's step needs dot products and norms of
each weight vector (a row of a matrix), SWATS needs two dot products over every
parameter. Here a *segment* is such a part: a strided run of elements of one
parameter (a whole tensor is one segment of stride 1). A segmented rule is an
``@rule`` function whose arguments are, in order,

``param, grad, <state values...>, <segment values...>, <scalars...>``

and which returns ``(new_param, <new state values...>, <terms...>)``: the segment
values are read once per segment (a per-tensor step size, a per-vector dot
product), and the terms are summed per segment (on the CPU in blocks of the buffer
dtype added into float64, on a GPU in float64). From that signature this module
generates, like :mod:`.elementwise` for the element-wise rules,

- ``serial`` / ``parallel``: ``@njit`` loops over a table of *chunks* (a segment,
  or a piece of a long one, so that the threads share a large tensor evenly; the
  parallel loop hands groups of chunks to the serial one);
  parameters and gradients are read by address, so the list path and the
  FlatParams path are one loop;
- ``cuda``: a ``@cuda.jit`` kernel, one block per chunk (grid-stride over chunks),
  the threads of the block striding over its elements and summing the terms with a
  shared-memory tree, in a fixed order (the sums are reproducible run to run).

The per-chunk partial sums are added per segment on the host (``Segments.totals``).

A step allocates nothing on the CPU: each pass over a group's segment table has a
:class:`Workspace` (built on its first run, kept on the table) that holds the
per-segment values, the packed scalars, the per-chunk sums and the per-segment
totals; :func:`run` returns its totals, and a
caller writes the next pass's segment values into :func:`workspace`'s ``values``.
"""

from __future__ import annotations

import copy
import inspect
import math
import struct
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
from numba import get_num_threads, types
from numba.extending import intrinsic

from ..config import config
from . import host
from .compile import (
    WhenReady,
    argument_marks,
    build_generated,
    cached_njit,
    check_argument_names,
    compile_in_background,
    cpu_loop,
    loop_ready,
    source_hash,
)
from .elementwise import named_scalars

__all__ = ["Segments", "Parts", "SegmentedKernel", "Workspace", "run", "workspace", "CHUNK"]

#: the longest run of elements one chunk (one thread, or one CUDA block) processes
CHUNK = 1 << 14
#: the largest CUDA block the kernels are built for (the size of their shared arrays)
MAX_THREADS = 1024

# chunk-table columns
_TENSOR, _SEGMENT, _FIRST, _COUNT, _STRIDE, _FIRST_FLAT = range(6)


_SOURCE_HASH = source_hash("compile.py", "elementwise.py", "rules.py", "segmented.py")


# ------------------------------------------------------------------ layout
class Parts(NamedTuple):
    """Where each parameter of a group lies in a larger tensor (see :class:`Segments`):
    parameter ``j`` holds the elements ``start[j] ...`` of tensor ``tensor[j]``, in C
    order."""

    tensor: np.ndarray  # per parameter: the index of its tensor
    start: np.ndarray  # per parameter: the index of its first element in that tensor


class Segments:
    """The segments of one param group and the chunk table the loops walk.

    Parameters
    ----------
    offsets
        The group's offsets (``offsets[j]`` = first flat index of parameter ``j``).
    layouts
        One entry per parameter: ``None`` (not covered) or ``(outer, length, inner)``:
        the parameter, seen as an ``(outer, length, inner)`` array, has
        ``outer * inner`` segments of ``length`` elements with stride ``inner``
        (a whole tensor of ``n`` elements is ``(1, n, 1)``; the rows of an
        ``(r, c)`` matrix are ``(r, c, 1)``, its columns ``(1, r, c)``).
        Segments are numbered in parameter order, then in C order of
        ``(outer, inner)``.
    parts
        ``None``: each parameter is a whole tensor. Otherwise the parameters are
        contiguous *parts* of larger tensors (a shard of a flat buffer split over
        processes, see :mod:`fastmoments.distributed`): ``layouts`` then has one
        entry per *tensor* of the whole buffer, the segments are numbered over all
        of them (every process numbers a segment alike, so per-segment totals can be
        summed over the processes), and the chunk table covers the elements that
        parameter ``j`` holds: elements ``parts.start[j]`` to ``parts.start[j] +
        size_j - 1`` (C order) of tensor ``parts.tensor[j]``. A segment cut by a
        part's edge is covered by the chunks of its elements inside the part.
    """

    def __init__(self, offsets: np.ndarray, layouts: Sequence[tuple[int, int, int] | None],
                 parts: Parts | None = None):
        num_params = len(offsets) - 1
        # segments are numbered over the tensors of ``layouts``, in order
        self.first_segment = np.zeros(len(layouts) + 1, dtype=np.int64)
        count = 0
        for t, layout in enumerate(layouts):
            self.first_segment[t] = count
            if layout is not None:
                count += int(layout[0]) * int(layout[2])
        self.first_segment[-1] = count
        self.num_segments = count
        #: the tensor (an index into ``layouts``) that each parameter is (part of)
        self.tensor_of = (np.arange(num_params, dtype=np.int64) if parts is None
                          else np.asarray(parts.tensor, dtype=np.int64))
        rows = []
        for j in range(num_params):
            t = int(self.tensor_of[j])
            layout = layouts[t]
            if layout is None:
                continue
            outer, length, inner = (int(x) for x in layout)
            start = 0 if parts is None else int(parts.start[j])
            size = int(offsets[j + 1] - offsets[j])
            if outer * inner == 0 or length == 0 or size == 0:
                continue
            if start == 0 and size == outer * length * inner:  # the whole tensor
                rows.append(_chunks_of(j, int(self.first_segment[t]), outer, length, inner,
                                       int(offsets[j])))
            else:
                rows.append(_window_chunks(j, int(self.first_segment[t]), outer, length, inner,
                                           int(offsets[j]), start, start + size))
        self.chunks = (np.concatenate(rows) if rows else np.zeros((0, 6), dtype=np.int64))
        # rows of the table per parameter (the table is in parameter order)
        tensors = self.chunks[:, _TENSOR]
        self.rows = np.searchsorted(tensors, np.arange(num_params + 1), side="left")
        #: every segment is exactly one chunk, in order (the sums are the totals)
        self.one_to_one = bool(np.array_equal(self.chunks[:, _SEGMENT],
                                              np.arange(count, dtype=np.int64)))
        #: the segment of each chunk (what ``totals`` adds by)
        self.segment_of_chunk = np.ascontiguousarray(self.chunks[:, _SEGMENT])
        #: every chunk has stride 1 (the loops without a strided branch apply)
        self.contiguous = bool((self.chunks[:, _STRIDE] == 1).all())
        self._device: Any = None
        self._workspaces: dict[SegmentedKernel, Workspace] = {}
        self._bounds: dict[int, np.ndarray] = {}
        # the ``out`` arrays for which ``_add_per_segment`` was found compiled
        self._totals_ready = WhenReady()

    def group_bounds(self) -> np.ndarray:
        """The groups of chunks of the parallel CPU loop's ``prange``: group ``k`` is
        chunks ``bounds[k]`` to ``bounds[k + 1]``. About 8 groups per thread, cut so
        that each holds an equal share of the *elements* (to within half a chunk at
        each cut): ``prange`` hands each thread an equal number of consecutive
        groups, so the threads get equal work even when the chunks differ in size (a
        segment's last piece, tensors of different sizes). Cut by count instead, a
        1e6-element tensor (62 chunks) gave one of two threads 32 chunks and the other
        30. Computed once per table and thread count. The grouping does not change the
        results (every chunk is summed on its own)."""
        threads = get_num_threads()
        bounds = self._bounds.get(threads)
        if bounds is None:
            counts = self.chunks[:, _COUNT]
            ends = np.cumsum(counts)  # elements up to each chunk's end
            groups = max(min(self.num_chunks, 8 * threads), 1)
            # the equal shares between groups (none for one group, so none without chunks)
            shares = ends[-1] * np.arange(1, groups) / groups if groups > 1 else ends[:0]
            # the chunk that holds each share; the cut goes at its nearer edge
            holder = np.searchsorted(ends, shares)
            nearer_end = ends[holder] - shares <= shares - (ends[holder] - counts[holder])
            cuts = holder + nearer_end
            bounds = self._bounds[threads] = np.concatenate(
                ([0], cuts, [self.num_chunks])).astype(np.int64)
        return bounds

    @property
    def num_chunks(self) -> int:
        return int(self.chunks.shape[0])

    def totals(self, sums: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Per-segment totals ``(num_segments, k)`` of per-chunk sums ``(num_chunks, k)``.

        The chunks of a segment are added in table order, from 0 (as ``np.bincount``
        with weights); into ``out`` when given (nothing allocated). On a cold start
        NumPy adds them (the same bits) while the jitted loop compiles in the background
        (see ``config.background_compile``).
        """
        if self.one_to_one:  # the chunks are the segments, in order
            return sums
        if out is None:
            out = np.empty((self.num_segments, sums.shape[1]))
        if sums.shape[1]:
            arguments = (self.segment_of_chunk, sums, out)
            if self._totals_ready.get(id(out)) is out:
                _add_per_segment(*arguments)
            else:
                self._totals_ready.call(out, _add_per_segment, arguments,
                                        _add_per_segment_numpy, *arguments)
        return out

    def device_chunks(self):
        """The chunk table on the GPU (copied once)."""
        if self._device is None:
            from numba import cuda

            self._device = cuda.to_device(self.chunks)
        return self._device


@cached_njit(error_model="numpy")
def _add_per_segment(segment_of_chunk, sums, out):
    out[:] = 0.0
    for c in range(sums.shape[0]):
        s = segment_of_chunk[c]
        for k in range(sums.shape[1]):
            out[s, k] += sums[c, k]


def _add_per_segment_numpy(segment_of_chunk, sums, out):
    """:func:`_add_per_segment` in NumPy, its stand-in while it compiles in the background
    (its compilation would delay the cold first step of LAMB or SWATS over a long
    tensor): ``np.add.at`` adds the rows unbuffered, in index order, so each total is
    the same chain of additions from 0, the same bits (and, as in the loop, no warning
    when a total overflows or adds inf to -inf)."""
    out.fill(0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        np.add.at(out, segment_of_chunk, sums)


def _chunks_of(j: int, first_segment: int, outer: int, length: int, inner: int,
               offset: int) -> np.ndarray:
    o = np.repeat(np.arange(outer, dtype=np.int64), inner)
    q = np.tile(np.arange(inner, dtype=np.int64), outer)
    first = o * (length * inner) + q
    segment = first_segment + o * inner + q
    pieces = -(-length // CHUNK)
    piece = np.arange(pieces, dtype=np.int64)
    table = np.empty((segment.size, pieces, 6), dtype=np.int64)
    table[:, :, _TENSOR] = j
    table[:, :, _SEGMENT] = segment[:, None]
    table[:, :, _FIRST] = first[:, None] + (piece * CHUNK * inner)[None, :]
    table[:, :, _COUNT] = np.minimum(CHUNK, length - piece * CHUNK)[None, :]
    table[:, :, _STRIDE] = inner
    table[:, :, _FIRST_FLAT] = table[:, :, _FIRST] + offset
    return table.reshape(-1, 6)


def _window_chunks(j: int, first_segment: int, outer: int, length: int, inner: int,
                   offset: int, start: int, stop: int) -> np.ndarray:
    """The chunk rows of the elements ``start`` to ``stop - 1`` (C order) of a tensor
    of layout ``(outer, length, inner)`` held by parameter ``j`` (whose element 0 is
    the tensor's element ``start``): each segment that the window cuts is covered by
    one strided run of its elements inside the window, split into pieces of at most
    ``CHUNK``, with the segment's number in the whole tensor."""
    span = length * inner
    o = np.repeat(np.arange(start // span, (stop - 1) // span + 1, dtype=np.int64), inner)
    q = np.tile(np.arange(inner, dtype=np.int64), o.size // inner)
    base = o * span + q  # the tensor index of each segment's element 0
    # the segment's elements base + l * inner inside [start, stop): l in [lo, hi)
    lo = np.clip(-((base - start) // inner), 0, length)
    hi = np.clip(-((base - stop) // inner), 0, length)
    keep = hi > lo
    base, o, q, lo, count = base[keep], o[keep], q[keep], lo[keep], (hi - lo)[keep]
    pieces = -(-count // CHUNK)
    row = np.repeat(np.arange(count.size), pieces)  # the segment of each chunk
    piece = np.arange(row.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    table = np.empty((row.size, 6), dtype=np.int64)
    table[:, _TENSOR] = j
    table[:, _SEGMENT] = first_segment + o[row] * inner + q[row]
    table[:, _FIRST] = base[row] + (lo[row] + piece * CHUNK) * inner - start
    table[:, _COUNT] = np.minimum(CHUNK, count[row] - piece * CHUNK)
    table[:, _STRIDE] = inner
    table[:, _FIRST_FLAT] = table[:, _FIRST] + offset
    return table


def whole_tensors(params: Sequence[Any]) -> list[tuple[int, int, int]]:
    """Layouts with one segment per parameter tensor (``params``: arrays, or shapes)."""
    return [(1, math.prod(p) if isinstance(p, tuple) else int(p.size), 1) for p in params]


# ------------------------------------------------------------- generation
# The serial loop over the chunks ``first_chunk`` to ``stop_chunk`` of the table.
_CPU_TEMPLATE = """
def {name}(param_addresses, grad_addresses, offsets, chunks, segment_values, sums{states},
           scalars, first_chunk, stop_chunk):
    {unpack}
    for c in range(first_chunk, stop_chunk):
        j = chunks[c, 0]
        seg = chunks[c, 1]
        first = chunks[c, 2]
        count = chunks[c, 3]
        stride = chunks[c, 4]
        base = offsets[j]
        n = offsets[j + 1] - base
        param = carray(void_pointer(param_addresses[j]), n, scalars.dtype)
        grad = carray(void_pointer(grad_addresses[j]), n, scalars.dtype)
        {segment_unpack}
        if stride == 1:
{contiguous}
{strided}
        {acc_store}
"""

# The parallel loop: ``prange`` over groups of chunks (``Segments.group_bounds``), each
# group run by the serial loop (a call, not inlined). numba's parfor passes then analyse
# a loop of one call instead of the whole rule, which shortens the compilation of a cold
# first step at the same speed per step.
_CPU_PARALLEL_TEMPLATE = """
def {name}(param_addresses, grad_addresses, offsets, chunks, segment_values, sums{states},
           scalars, bounds):
    for group in prange(bounds.shape[0] - 1):
        chunk_loop(param_addresses, grad_addresses, offsets, chunks, segment_values, sums{states},
                   scalars, bounds[group], bounds[group + 1])
"""

# The strided loop (segments along an inner axis, e.g. ND-Adam's columns).
_CPU_STRIDED = """
        else:
            {acc_init}
            for k in range(count):
                i = first + k * stride
                {targets_cpu} = rule(param[i], grad[i]{states_cpu}{segment_args}{scalar_args})
                {acc_update}
"""
# A kernel for tables whose chunks are all contiguous (whole tensors, rows) has no
# strided loop (it would skip a strided chunk: ``run`` uses it only for tables without
# any), and compiles faster. No ``raise`` here: it would keep ``prange`` serial.
_CPU_NO_STRIDED = ""

# The contiguous (stride 1) loop of a rule that returns no terms: unit-stride views,
# so that LLVM vectorizes it like the element-wise loops of :mod:`.elementwise`.
_CPU_CONTIGUOUS = """
            param_c = param[first:first + count]
            grad_c = grad[first:first + count]
            {slices}
            for k in range(count):
                {targets_c} = {call_c}
"""

# The contiguous loop of a rule with terms. A chain of float64 adds (``acc += term``)
# keeps LLVM from vectorizing the loop without fastmath, and 64 partial sums kept in a
# scratch array (stored and reloaded every element, widened to float64; the previous
# design) cost SWATS and LAMB about as much time as their rule. So the chunk is walked in
# blocks of BLOCK elements; within a block each term is summed in the buffer dtype by
# ``add_term``, an addition that LLVM may reassociate (``fastmath={"reassoc"}`` on
# that one instruction only, not on the rule's math): the loop vectorizes at the full
# width of the buffer dtype with the partial sums in registers. Each block's sum is
# added to the chunk's float64 total. The sums are the same run to run and for any
# thread count or grouping of the chunks (each chunk is summed on its own, in a fixed
# order); the order within a block follows the vector width LLVM chose for this CPU.
_CPU_BLOCKS = """
            {acc_init}
            for start in range(first, first + count, {block}):
                stop = min(start + {block}, first + count)
                param_b = param[start:stop]
                grad_b = grad[start:stop]
                {block_slices}
                {part_init}
                for k in range(stop - start):
                    {targets_b} = {call_b}
                    {part_update}
                {acc_from_parts}
"""

#: elements per block of the contiguous CPU loop with terms (summed in the buffer
#: dtype, then added to a float64 total)
BLOCK = 512


@intrinsic
def _add_term(typingctx, total, term):
    """``total + term``, an addition LLVM may reorder (``fadd reassoc``): a loop
    summing terms with it vectorizes (see ``_CPU_BLOCKS``). An intrinsic, not a jitted
    function: it is emitted where it is called, with no compilation of its own (a
    function with ``fastmath={"reassoc"}`` would add a compilation to a cold first step)."""
    if not isinstance(total, types.Float) or not isinstance(term, types.Float):
        return None
    result = typingctx.unify_types(total, term)

    def codegen(context, builder, signature, args):
        left = context.cast(builder, args[0], signature.args[0], result)
        right = context.cast(builder, args[1], signature.args[1], result)
        return builder.fadd(left, right, flags=("reassoc",))

    return result(total, term), codegen


_CUDA_TEMPLATE = """
def {name}(param, grad{states}, chunks, first_column, segment_values, sums{scalar_params}):
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    {shared}
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        seg = chunks[c, 1]
        first = chunks[c, first_column]
        count = chunks[c, 3]
        stride = chunks[c, 4]
        {segment_unpack}
        {acc_init}
        for k in range(tid, count, nthreads):
            i = first + k * stride
            {targets_cuda} = rule(param[i], grad[i]{states_cuda}{segment_args}{scalar_args})
            {acc_update}
{reduce}
"""

_CUDA_REDUCE = """
        {acc_share}
        cuda.syncthreads()
        width = 1
        while width < nthreads:
            width *= 2
        half = width // 2
        while half > 0:
            if tid < half and tid + half < nthreads:
                {tree_add}
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            {tree_store}
        cuda.syncthreads()
"""


class SegmentedKernel:
    """The loops generated from one segmented rule.

    Parameters
    ----------
    rule_fn
        An ``@rule`` dispatcher taking ``(param, grad, <states>, <segment values>,
        <scalars>)`` and returning ``(param, <states>, <terms>)``.
    state_names
        Its state arguments (flat buffers of the group, read and returned).
    segment_names
        Its per-segment arguments.
    num_terms
        How many per-element terms it returns after the states (summed per segment).
    writes
        Which of ``"param"`` and the state names are stored back (the others are
        only read; a pass that only reduces stores nothing).

    The rule's argument names must not be names the loops use themselves (``n``,
    ``stride``, ``first``, ...): building a loop raises TypeError otherwise.
    """

    def __init__(self, rule_fn, state_names: tuple[str, ...], segment_names: tuple[str, ...],
                 num_terms: int, writes: tuple[str, ...]):
        self.rule = rule_fn
        self.name = rule_fn.py_func.__name__
        args = list(inspect.signature(rule_fn.py_func).parameters)
        k = 2 + len(state_names)
        if (args[:2] != ["param", "grad"] or tuple(args[2:k]) != tuple(state_names)
                or tuple(args[k : k + len(segment_names)]) != tuple(segment_names)):
            raise TypeError(
                f"rule {self.name} must take (param, grad, {', '.join(state_names)}, "
                f"{', '.join(segment_names)}, ...)"
            )
        unknown = set(writes) - {"param", *state_names}
        if unknown:
            raise ValueError(f"writes: unknown names {sorted(unknown)}")
        self.state_names = tuple(state_names)
        self.segment_names = tuple(segment_names)
        self.scalar_names = tuple(args[k + len(segment_names) :])
        # the scalars after grad_mult and clip_value, by name (see elementwise.named_scalars)
        self.named = (named_scalars(self.name, self.scalar_names[2:])
                      if self.scalar_names[:2] == ("grad_mult", "clip_value") else None)
        self.num_terms = int(num_terms)
        self.writes = tuple(writes)
        self._names_checked = False

    def _check_names(self) -> None:
        """Refuse a rule whose argument names the loops use for something else (a
        scalar ``n`` would be the loop's tensor size, silently); before the first loop
        is built (not at import: it costs a fraction of a millisecond per rule)."""
        if self._names_checked:
            return
        names = (*self.state_names, *self.segment_names, *self.scalar_names)
        marks = dict(zip(names, argument_marks(len(names))))
        probe = copy.copy(self)
        probe.state_names = tuple(marks[s] for s in self.state_names)
        probe.segment_names = tuple(marks[s] for s in self.segment_names)
        probe.scalar_names = tuple(marks[s] for s in self.scalar_names)
        probe.writes = tuple(marks.get(s, s) for s in self.writes)
        sources = [probe.cpu_source(parallel, strided)[1]
                   for parallel in (False, True) for strided in (False, True)]
        check_argument_names(self.name, names, [*sources, probe.cuda_source()[1]])
        self._names_checked = True

    def _pieces(self) -> dict[str, str]:
        states = "".join(f", {s}" for s in self.state_names)
        scalar_args = "".join(f", {s}" for s in self.scalar_names)
        segment_args = "".join(f", {s}" for s in self.segment_names)

        terms = range(self.num_terms)
        return dict(
            states=states,
            scalar_args=scalar_args,
            scalar_params=scalar_args,
            states_cpu="".join(f", {s}[base + i]" for s in self.state_names),
            call_c=self._call("_c", segment_args + scalar_args),
            call_b=self._call("_b", segment_args + scalar_args),
            targets_c=self._targets("param_c[k]", "{s}_c[k]", "term{k}"),
            slices="; ".join(f"{s}_c = {s}[base + first:base + first + count]"
                             for s in self.state_names) or "pass",
            states_cuda="".join(f", {s}[i]" for s in self.state_names),
            targets_cpu=self._targets("param[i]", "{s}[base + i]", "term{k}"),
            targets_cuda=self._targets("param[i]", "{s}[i]", "term{k}"),
            segment_args=segment_args,
            segment_unpack="; ".join(
                f"{s} = segment_values[seg, {k}]" for k, s in enumerate(self.segment_names)
            ) or "pass",
            acc_init="; ".join(f"acc{k} = 0.0" for k in terms) or "pass",
            acc_update="; ".join(f"acc{k} += term{k}" for k in terms) or "pass",
            acc_store="; ".join(f"sums[c, {k}] = acc{k}" for k in terms) or "pass",
            unpack="".join(f"{s} = scalars[{k}]; " for k, s in enumerate(self.scalar_names))
            or "pass",
        )

    def _build(self, source: str, name: str, extra_globals: dict):
        self._check_names()
        return build_generated(source, name, __file__, self.rule, extra_globals)

    def _contiguous(self, pieces: dict[str, str]) -> str:
        if not self.num_terms:
            return _CPU_CONTIGUOUS.format(**pieces)
        terms = range(self.num_terms)
        return _CPU_BLOCKS.format(
            block=BLOCK,
            block_slices="; ".join(f"{s}_b = {s}[base + start:base + stop]"
                                   for s in self.state_names) or "pass",
            part_init="; ".join(f"part{k} = scalars.dtype.type(0)" for k in terms),
            targets_b=self._targets("param_b[k]", "{s}_b[k]", "term{k}"),
            call_b=pieces["call_b"],
            part_update="; ".join(f"part{k} = add_term(part{k}, term{k})" for k in terms),
            acc_from_parts="; ".join(f"acc{k} += part{k}" for k in terms),
            acc_init=pieces["acc_init"],
        )

    def _call(self, view: str, tail: str) -> str:
        """The rule called on element ``k`` of the unit-stride views named with the
        suffix ``view`` (``param_c``, ``exp_avg_c``, ...), then the arguments ``tail``."""
        states = "".join(f", {s}{view}[k]" for s in self.state_names)
        return f"rule(param{view}[k], grad{view}[k]{states}{tail})"

    def _targets(self, param: str, state: str, term: str) -> str:
        """The left side of ``... = rule(...)``: ``param`` / ``state`` (a format with
        ``{s}``) where stored, a dummy name where only read, then the terms."""
        out = [param if "param" in self.writes else "_param"]
        for s in self.state_names:
            out.append(state.format(s=s) if s in self.writes else f"_{s}")
        out += [term.format(k=k) for k in range(self.num_terms)]
        return ", ".join(out) + ("," if len(out) == 1 else "")

    def cpu_source(self, parallel: bool, strided: bool = True) -> tuple[str, str]:
        """The name and the generated source of a CPU loop (see ``serial`` and co.)."""
        suffix = ("parallel" if parallel else "serial") + ("" if strided else "_contiguous")
        name = f"{self.name}_segmented_{suffix}_{_SOURCE_HASH}"
        pieces = self._pieces()
        if parallel:  # calls the serial loop (``chunk_loop``) per group of chunks
            return name, _CPU_PARALLEL_TEMPLATE.format(name=name, **pieces)
        source = _CPU_TEMPLATE.format(name=name, contiguous=self._contiguous(pieces),
                                      strided=(_CPU_STRIDED if strided else _CPU_NO_STRIDED)
                                      .format(**pieces), **pieces)
        return name, source

    def _cpu(self, parallel: bool, strided: bool = True):
        name, source = self.cpu_source(parallel, strided)
        if parallel:
            chunk_loop = self.serial if strided else self.contiguous_serial
            fn = self._build(source, name, {"chunk_loop": chunk_loop})
        else:
            fn = self._build(source, name, {"add_term": _add_term})
        return cpu_loop(fn, parallel)

    @cached_property
    def serial(self):
        """The loop over chunks ``first_chunk`` to ``stop_chunk`` of a table."""
        return self._cpu(False)

    @cached_property
    def parallel(self):
        """``prange`` over groups of chunks (``Segments.group_bounds``), each run by
        ``serial``."""
        return self._cpu(True)

    @cached_property
    def contiguous_serial(self):
        """``serial`` for tables without strided chunks (compiles faster)."""
        return self._cpu(False, strided=False)

    @cached_property
    def contiguous_parallel(self):
        return self._cpu(True, strided=False)

    def cuda_source(self) -> tuple[str, str]:
        """The name and the generated source of the CUDA kernel (see ``cuda``)."""
        pieces = self._pieces()
        name = f"{self.name}_segmented_cuda_{_SOURCE_HASH}"
        terms = range(self.num_terms)
        if self.num_terms:
            shared = f"partial = cuda.shared.array(({MAX_THREADS}, {self.num_terms}), float64)"
            reduce = _CUDA_REDUCE.format(
                acc_share="; ".join(f"partial[tid, {k}] = acc{k}" for k in terms),
                tree_add="; ".join(
                    f"partial[tid, {k}] += partial[tid + half, {k}]" for k in terms
                ),
                tree_store="; ".join(f"sums[c, {k}] = partial[0, {k}]" for k in terms),
            )
        else:
            shared, reduce = "pass", ""
        return name, _CUDA_TEMPLATE.format(name=name, shared=shared, reduce=reduce, **pieces)

    @cached_property
    def cuda(self):
        from numba import cuda, float64

        name, source = self.cuda_source()
        fn = self._build(source, name, {"cuda": cuda, "float64": float64})
        return cuda.jit(fn)

    def __repr__(self) -> str:
        return (f"SegmentedKernel({self.name}, states={self.state_names}, "
                f"segments={self.segment_names}, terms={self.num_terms})")


# --------------------------------------------------------------------- run
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
                 "_grad_addresses", "_offset_bytes", "_host_sums", "_device_buffers")

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
        self._offset_bytes = offsets[:-1] * self.dtype.itemsize
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
        if source is not self._grad_source:
            np.add(self._offset_bytes, host.address_of(source), out=self._grad_addresses)
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
    ws = segments._workspaces.get(kernel)
    if ws is None or ws.dtype != group.dtype or ws.device != group.device:
        ws = segments._workspaces[kernel] = Workspace(kernel, segments, group.dtype,
                                                      group.device, group.offsets)
    return ws


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
    if group.device == "cuda":
        _run_cuda(kernel, group, source, segments, ws, states)
    else:
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
    into ``ws.sums`` (a launch still allocates numba's small argument objects)."""
    fn = kernel.cuda
    chunks = segments.device_chunks()
    d_values, d_sums = ws.device_buffers()
    if kernel.segment_names:
        d_values.copy_to_device(ws.values)
    scalars = tuple(ws.scalars)
    if group.flat is not None and not isinstance(source, list):
        data = group.flat.data
        grad = data if isinstance(source, str) else source
        blocks, threads = _grid(segments.num_chunks)
        fn[blocks, threads](data, grad, *states, chunks, _FIRST_FLAT, d_values, d_sums,
                            *scalars)
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
                                _FIRST, d_values, d_sums[r0:r1], *scalars)
    d_sums.copy_to_host(ws._host_sums)
