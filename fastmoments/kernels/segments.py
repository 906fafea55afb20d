"""The segment table of a param group: which elements each segmented pass walks.

A *segment* is a strided run of elements of one parameter over which a segmented
rule sums its terms (a whole tensor, a row or a column of a matrix; see
:mod:`.segmented`). :class:`Segments` numbers a group's segments and cuts them into
*chunks* (at most :data:`CHUNK` elements each, so that the threads share a large
tensor evenly): the table the loops of :mod:`.segmented` walk. It also adds the
per-chunk sums per segment (:meth:`Segments.totals`) and groups the chunks for the
parallel CPU loop. :class:`Parts` describes a group whose parameters are parts of
larger tensors (a shard, see :mod:`fastmoments.distributed`); :func:`whole_tensors`
gives the layouts of one segment per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numba import get_num_threads

from .compile import WhenReady, cached_njit

if TYPE_CHECKING:
    from .segmented import SegmentedKernel
    from .segmented_run import Workspace

__all__ = ["Segments", "Parts", "whole_tensors", "CHUNK"]

#: the longest run of elements one chunk (one thread, or one CUDA block) processes; a
#: multiple of int8's block (256), so that the chunks of whole tensors are whole blocks
#: (``Segments.whole_blocks``)
CHUNK = 1 << 14

# chunk-table columns
_TENSOR, _SEGMENT, _FIRST, _COUNT, _STRIDE, _FIRST_FLAT = range(6)


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

    def whole_blocks(self, offsets: np.ndarray, blocks: np.ndarray) -> bool:
        """Whether every chunk is contiguous and begins and ends at one of the flat
        indices ``blocks`` (the edges of int8 quantization blocks, see
        :func:`~.quantized.block_table`; ``offsets``: the group's). A table of whole
        tensors, or of a shard's pieces, is when :data:`CHUNK` is a multiple of the
        block size: its chunks start every ``CHUNK`` elements of a parameter, and the
        blocks every block size."""
        starts = offsets[self.chunks[:, _TENSOR]] + self.chunks[:, _FIRST]
        edges = np.concatenate((starts, starts + self.chunks[:, _COUNT]))
        return self.contiguous and bool(np.isin(edges, blocks).all())

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
