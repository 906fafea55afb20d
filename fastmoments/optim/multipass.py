r"""The shared base of the rules that need reductions over parts of the flat buffer.

LAMB (:mod:`.lamb`), NDAdam (:mod:`.ndadam`) and SWATS (:mod:`.swats`) need per-tensor
norms, per-weight-vector dot products and norms, or global dot products. They run a
few *segmented* passes over the flat buffer (:mod:`fastmoments.kernels.segmented`):
each pass calls one rule per element and sums per-element terms per segment in
float64; the per-segment results (a trust ratio, a dot product, a norm) are combined
on the host between passes. On a GPU this synchronizes once per pass (as torch's
``clip_grad_norm_`` followed by ``.item()`` does). Yogi's
:meth:`~fastmoments.Yogi.init_second_moment` is such a pass too
(:func:`init_second_moment`).

Here: their base class :class:`_MultiPass`, the segment tables per group
(``_whole``, ``_table``), the hooks by which :mod:`fastmoments.distributed` steps them
over a shard (``build_sharded``, ``tensor_sizes``, ``_reduced``), and ``_kept``, the
buffers of the NumPy stand-ins.

Every class takes the options shared by all optimizers (``nonfinite``,
``max_grad_norm``, ``clip_value``, see :class:`fastmoments.optim.base.Optimizer`) and
keeps its state in flat buffers (``state_dict`` / ``load_state_dict`` as everywhere).

Reduced precision (``state_dtype="bfloat16"``, 16-bit parameters, see
:mod:`._precision`) works as for the element-wise rules: the group's state buffers are
kept in their stored form, and each pass runs its kernel's variant for the group's
layout (:func:`_variant`, :meth:`~fastmoments.kernels.segmented.
SegmentedKernel.reduced`), which widens what it loads and narrows what it stores with
the step's key (:func:`_advance_key`, at the start of each step's ``_run``): on the CPU
and, for float32/float64 parameters, on the GPU (the same codecs and random bits).
``state_dtype="int8"`` works on the CPU for the classes whose passes that touch a state
walk whole tensors (LAMB, SWATS: ``int8_refusal`` None): such a pass dequantizes,
steps and requantizes whole blocks, and checks its table for it (``_table``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..kernels import quantized
from ..kernels import rules as _rules
from ..kernels import segments as segments_module
from ..kernels.elementwise import named_scalars
from ..kernels.precision import resolve as resolve_precision
from ..kernels.precision import step_key_host
from ..kernels.segmented import SegmentedKernel
from ..kernels.segmented_run import run
from ..kernels.segments import Parts, Segments, whole_tensors
from . import _precision
from ._groups import Group
from .base import Optimizer

__all__ = ["init_second_moment", "build_sharded", "tensor_sizes"]

_MOMENTS = ("exp_avg", "exp_avg_sq")
_ACCUMULATE_SQUARE = SegmentedKernel(_rules.accumulate_square, ("exp_avg_sq",), (), 0,
                                     ("exp_avg_sq",))


def _segments(opt: Any, group: Group, key: Any, build: Callable[[], Segments]) -> Segments:
    """The segment table of a group, built once per (group, key)."""
    tables = opt.__dict__.setdefault("_segment_tables", {})
    full_key = (id(group), key)
    table = tables.get(full_key)
    if table is None:
        table = tables[full_key] = build()
    return table


def _whole(opt: Any, group: Group) -> Segments:
    return _segments(opt, group, "whole", lambda: _table(opt, group, whole_tensors))


# ------------------------------------------------- the hook for sharded steps
# fastmoments.distributed steps a multi-pass rule over one process's shard of each
# group's flat buffer. It builds the optimizer with ``build_sharded``, which sets the
# attributes ``segment_parts`` and ``reduce_totals`` before ``__init__`` runs (ND-Adam's
# constructor already runs passes): the segment tables then describe the shard's part
# of each tensor under the tensor's global numbering, and every per-segment total a
# pass returns is summed over the processes before it is used. Without them (``None``,
# the default) nothing here changes. A class whose ``_run`` runs segmented passes
# declares ``shard_aware = True`` when its passes build their tables with ``_whole`` or
# ``_table``, reduce their totals with ``_reduced``, and index per-segment values by
# segment (whole tensors: ``segments.first_segment[segments.tensor_of[j]]`` for param
# ``j``, and ``tensor_sizes`` for the tensors' sizes), never by param.
def _table(opt: Any, group: Group, layouts: Callable[[list], list]) -> Segments:
    """A segment table of ``group``: ``layouts`` maps the shapes of the tensors to
    their layouts (see :class:`~fastmoments.kernels.segments.Segments`)."""
    shard = getattr(opt, "segment_parts", None)
    if shard is None:
        table = Segments(group.offsets, layouts([tuple(p.shape) for p in group.params]))
    else:
        shapes, parts = shard[opt._groups.index(group)]
        table = Segments(group.offsets, layouts(list(shapes)), parts)
    precision = group.precision
    if (precision is not None and precision.state == "int8"
            and not table.whole_blocks(group.offsets, precision.blocks[0])):
        # (whole tensors and a shard's pieces are, for CHUNK a multiple of the block)
        raise ValueError(f"{type(opt).__name__}: state_dtype='int8' needs chunks of whole "
                         f"quantization blocks: segments.CHUNK ({segments_module.CHUNK}) "
                         f"must be a multiple of {quantized.BLOCK}")
    return table


def tensor_sizes(opt: Any, group: Group) -> np.ndarray:
    """The number of elements of each whole tensor of ``group`` (of the whole buffer's
    tensors when the group is a shard), one per segment of ``_whole``'s table."""
    shard = getattr(opt, "segment_parts", None)
    shapes = ([tuple(p.shape) for p in group.params] if shard is None
              else shard[opt._groups.index(group)][0])
    return np.array([math.prod(s) for s in shapes], dtype=np.int64)


def build_sharded(cls: type[Optimizer], params: Any, segment_parts: list,
                  reduce_totals: Callable[[np.ndarray], None], /, **kwargs: Any) -> Any:
    """Build an optimizer of class ``cls`` over one process's shard of larger tensors.

    Parameters
    ----------
    cls
        The optimizer class (its segmented passes, if any, must be shard-aware).
    params
        Param groups whose params are contiguous parts of tensors.
    segment_parts
        Per group: ``(shapes, parts)``: the shapes of every tensor of the group's whole
        buffer, and a :class:`~fastmoments.kernels.segments.Parts` saying which part
        of which tensor each param is.
    reduce_totals
        Sums a pass's float64 per-segment totals over the processes, in place, with
        the same bits on every process; called by every process at the same points
        (ND-Adam's constructor calls it too).
    **kwargs
        The class's hyperparameters and options.
    """
    opt = cls.__new__(cls)
    opt.segment_parts = segment_parts
    opt.reduce_totals = reduce_totals
    opt.__init__(params, **kwargs)
    return opt


def _reduced(opt: Any, totals: np.ndarray) -> np.ndarray:
    """The per-segment totals of a pass, summed over the processes when sharded."""
    reduce = getattr(opt, "reduce_totals", None)
    if reduce is not None:
        reduce(totals)
    return totals


class _Layout:
    """What ``Optimizer._prepare`` needs from ``_select`` for a multi-pass rule.

    The base class allocates one flat buffer per state name; the passes themselves
    are run by the class's ``_run``.
    """

    def __init__(self, name: str, state_names: tuple[str, ...],
                 scalar_names: tuple[str, ...]) -> None:
        self.name = name
        self.state_names = state_names
        # as a Kernel's: the step's grad_mult and clip_value, then the class's scalars,
        # which its ``_scalars`` gives by name through ``named`` and its ``_run`` unpacks
        self.scalar_names = ("grad_mult", "clip_value", *scalar_names)
        self.named = named_scalars(name, scalar_names)

    def reduced(self, layout: tuple) -> _Layout:
        """Itself: the passes choose their kernels' layouts (:func:`_variant`)."""
        return self

    def __repr__(self) -> str:
        return f"_Layout({self.name}, states={self.state_names})"


# ---------------------------------------------------------- multi-pass base
class _MultiPass(Optimizer):
    """Rules that run their own segmented passes (``_run``) instead of one kernel."""

    _state_names: tuple[str, ...] = _MOMENTS
    #: the scalars ``_scalars`` returns (by name) and ``_run`` unpacks, in that order
    _scalar_names: tuple[str, ...] = ()
    #: per param group, ``(shapes, parts)`` when the group's params are parts of larger
    #: tensors (the shapes of all of them, and a ``Parts``), else None (see ``sharded``)
    segment_parts: list[tuple[list[tuple[int, ...]], Parts]] | None = None
    #: ``reduce_totals(totals)`` sums a pass's float64 per-segment totals (shape
    #: ``(num_segments, terms)``) over the processes, in place, identically on each
    reduce_totals: Callable[[np.ndarray], None] | None = None
    #: the passes work on a shard (see ``build_sharded``)
    shard_aware = True
    #: why ``state_dtype="int8"`` is refused for this class, or None where each pass
    #: that touches a state walks whole int8 blocks (whole tensors or a shard's
    #: pieces, see :func:`_variant`)
    int8_refusal: str | None = None

    def _precision_options(self, state_dtype: str | None, state_rounding: Any,
                           master_weights: bool | None, seed: int) -> None:
        """As :class:`~fastmoments.optim.base.Optimizer`'s, for the passes of
        :func:`_variant`: bfloat16 (or float32) state, on the CPU and the GPU; 16-bit
        parameters on the CPU; int8 state on the CPU with float32/float64 parameters
        where the class allows it (:attr:`int8_refusal`). Refuses the rest before
        attaching anything. The step's key is written by ``_run``
        (:func:`_advance_key`), so ``_run`` stays the class's own."""
        owner = type(self).__name__
        self.state_dtype, self.state_rounding = state_dtype, state_rounding
        self.master_weights, self.seed = master_weights, seed
        found = [resolve_precision(group.dtype, state_dtype, state_rounding, master_weights,
                                   seed, owner) for group in self._groups]
        for group, precision in zip(self._groups, found):  # refuse before attaching
            if precision is None:
                continue
            if precision.state == "int8":
                refusal = type(self).int8_refusal
                if refusal is not None:
                    raise ValueError(f"{owner}: state_dtype='int8' is not supported for "
                                     f"{owner}: {refusal}; use state_dtype='bfloat16'")
                if group.device == "cuda":
                    raise ValueError(f"{owner}: state_dtype='int8' is not supported on the "
                                     f"GPU for {owner} (its int8 passes run on the CPU); use "
                                     "state_dtype='bfloat16' on the GPU")
                if precision.param != "same":
                    raise ValueError(f"{owner}: state_dtype='int8' needs float32 or float64 "
                                     f"parameters for {owner}, got {group.dtype}; use "
                                     "state_dtype='bfloat16' with 16-bit parameters")
            if group.device == "cuda" and precision.param != "same":
                # the GPU passes take the parameters in the arithmetic's dtype: 16-bit
                # ones would need their uint16 views and a master copy there
                raise ValueError(f"{owner}: {group.dtype} CUDA parameters are not supported "
                                 f"for {owner} yet (16-bit parameters run on the CPU); use "
                                 "float32/float64 CUDA arrays (state_dtype='bfloat16' "
                                 "works with them)")
        for group, precision in zip(self._groups, found):
            if precision is not None:
                _precision.attach(group, precision)
                if precision.state == "int8":  # its table of whole blocks, checked now
                    _whole(self, group)

    def _select(self, hyper: dict[str, Any]) -> _Layout:  # type: ignore[override]
        cls = type(self)
        layout = _LAYOUTS.get(cls)
        if layout is None:
            layout = _LAYOUTS[cls] = _Layout(cls.__name__, cls._state_names, cls._scalar_names)
        return layout


_LAYOUTS: dict[type, _Layout] = {}

#: the stream numbers of per-segment random bits start here (see :func:`_variant`)
_SEGMENT_STREAMS = 32


def _advance_key(group: Group) -> None:
    """A new step of a reduced-precision group: its counter and the key of its random
    bits (what ``optim._precision.run`` does before an element-wise loop)."""
    precision = group.precision
    if precision is not None:
        precision.counter += 1
        group.rounding[0] = step_key_host(precision.seed, precision.counter)


def _variant(opt: Any, group: Group, kernel: SegmentedKernel,
             per_segment: tuple[str, ...] = (),
             names: tuple[str, ...] | None = None) -> SegmentedKernel:
    """The kernel of a pass for the group's storage: ``kernel`` itself without a
    precision (or when the pass touches nothing stored in fewer bits), else its
    reduced variant.

    A state's codec is the group's (:meth:`~fastmoments.kernels.precision.Precision.
    layout`; ``"same"`` for a scratch buffer such as LAMB's ``update``), and its random
    bits are stream ``1 + `` its place in ``names`` (default: the class's
    ``_state_names``; the element-wise rule's states, so that the bits are that rule's),
    keyed by the element's index in the group. The states of
    ``per_segment`` hold one value per segment repeated in each element (ND-Adam's
    ``v``): their bits are keyed by the segment's number instead (stream
    :data:`_SEGMENT_STREAMS` + that place), so every element rounds alike and the
    copies stay equal.
    """
    precision = group.precision
    if precision is None:
        return kernel
    cache = opt.__dict__.setdefault("_variants", {})
    key = (id(group), kernel)
    found = cache.get(key)
    if found is not None:
        return found
    param, grad, _, master = precision.layout(())
    if names is None:
        names = type(opt)._state_names
    codecs = tuple(precision.layout((n,))[2][0] if n in group.state else "same"
                   for n in kernel.state_names)
    places = tuple(names.index(n) if n in names else 0 for n in kernel.state_names)
    streams = tuple((_SEGMENT_STREAMS if n in per_segment else 1) + k
                    for n, k in zip(kernel.state_names, places))
    if param == "same" and not master and all(c == "same" for c in codecs):
        found = kernel
    else:
        found = kernel.reduced((param, grad, codecs, bool(master), streams,
                                tuple(n in per_segment for n in kernel.state_names)))
    cache[key] = found
    return found


def _kept(buffers: dict, array: np.ndarray, build: Callable[[], Any]) -> Any:
    """What ``build()`` made for ``array``, kept in ``buffers`` (the NumPy stand-ins'
    buffers, built once per workspace array)."""
    entry = buffers.get(id(array))
    if entry is None or entry[0] is not array:
        entry = buffers[id(array)] = (array, build())
    return entry[1]


# -------------------------------------------------------------------- Yogi
def init_second_moment(opt: Any, grads: Sequence[Any]) -> None:
    """:meth:`fastmoments.Yogi.init_second_moment`: v0 from the mean squared gradient."""
    if opt.step_count:
        raise RuntimeError("Yogi.init_second_moment: call it before the first step "
                           f"(step_count is {opt.step_count})")
    if not grads:
        raise TypeError("Yogi.init_second_moment: expected at least one gradient")
    for g in grads:  # validate all before changing anything
        opt._collect(g)
    opt._revalidate()
    weight = 1.0 / len(grads)
    for k, g in enumerate(grads):
        # (collected right before its run: the list path writes the gradients'
        # addresses into the group's table, which the run reads)
        for group, source in zip(opt._groups, opt._collect(g)):
            if group.precision is None:
                run(_ACCUMULATE_SQUARE, group, source, _whole(opt, group), None,
                    (0.0 if k == 0 else 1.0, weight, group.hyper["weight_decay"]))
    sources = [opt._collect(g) for g in grads]
    for j, group in enumerate(opt._groups):
        if group.precision is not None:
            # the list path's source is None (its addresses are in the group's table):
            # the group's own slice of each list instead
            mine = [g[group.index_base:group.index_base + len(group.params)]
                    if isinstance(g, (list, tuple)) and s[j] is None else s[j]
                    for g, s in zip(grads, sources)]
            _init_stored_second_moment(group, mine)
    for group in opt._groups:
        group.host_state["second_moment_initialized"] = 1.0


def _host_values(group: Group, source: Any) -> np.ndarray:
    """A group's gradient (``source`` as ``_collect`` gives it; None: its FlatParams'
    buffer) or, for ``source=group.params``, its parameters, as one float64 host array
    in the group's flat layout (16-bit values widened exactly)."""
    if source is None:
        source = group.flat.grad
    arrays = list(source) if isinstance(source, (list, tuple)) else [source]
    out = np.empty(group.numel, dtype=np.float64)
    at = 0
    for a in arrays:
        host = a if isinstance(a, np.ndarray) else a.copy_to_host()
        host = host.reshape(-1)
        out[at:at + host.size] = host.astype(np.float64)
        at += host.size
    return out


def _init_stored_second_moment(group: Group, sources: list[Any]) -> None:
    """:func:`init_second_moment` for a group stored in fewer bits (bfloat16 or int8
    state, 16-bit parameters): the mean of the squared gradients computed once on the
    host in float64 and stored in the group's form, rounded to nearest (what loading a
    state dict does). An initialization, not a step: no loop is compiled for it."""
    params = group.state.get(_precision.MASTER)
    values = _host_values(group, params if params is not None else group.params)
    decay = float(group.hyper["weight_decay"])
    total = np.zeros(group.numel, dtype=np.float64)
    for source in sources:
        g = _host_values(group, source) + decay * values
        total += g * g
    total /= len(sources)
    parts = _precision.encode_state(group, "exp_avg_sq", total.astype(group.compute_dtype),
                                    group.precision.state_dtype)
    for name, array in parts.items():
        buffer = group.state[name]
        if isinstance(buffer, np.ndarray):
            buffer[...] = array
        else:
            buffer.copy_to_device(np.ascontiguousarray(array, dtype=buffer.dtype))
