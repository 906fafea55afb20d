r"""The rules that need reductions over parts of the flat buffer: LAMB, NDAdam, SWATS.

They need per-tensor norms, per-weight-vector dot products and norms, or global dot
products. They run a few *segmented* passes over the flat buffer
(:mod:`fastmoments.kernels.segmented`): each pass calls one rule per element and sums
per-element terms per segment in float64; the per-segment results (a trust ratio, a
dot product, a norm) are combined on the host between passes. On a GPU this
synchronizes once per pass (as torch's ``clip_grad_norm_`` followed by ``.item()``
does). Yogi's :meth:`~fastmoments.Yogi.init_second_moment` is such a pass too
(:func:`init_second_moment`).

Every class takes the options shared by all optimizers (``nonfinite``,
``max_grad_norm``, ``clip_value``, see :class:`fastmoments.optim.base.Optimizer`) and
keeps its state in flat buffers (``state_dict`` / ``load_state_dict`` as everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..kernels import rules as _rules
from ..kernels.compile import WhenReady, cached_njit
from ..kernels.elementwise import named_scalars
from ..kernels.segmented import Parts, SegmentedKernel, Segments, run, whole_tensors, workspace
from ._groups import Group, full
from ._scalars import bias_corrections
from .base import Optimizer

__all__ = ["LAMB", "NDAdam", "SWATS", "init_second_moment", "build_sharded", "tensor_sizes"]

_MOMENTS = ("exp_avg", "exp_avg_sq")
_LAMB_MOMENTS = SegmentedKernel(_rules.lamb_moments, (*_MOMENTS, "update"), (), 2,
                                (*_MOMENTS, "update"))
_LAMB_APPLY = SegmentedKernel(_rules.lamb_apply, ("update",), ("trust_step",), 0, ("param",))
_LAMB_NORMS = SegmentedKernel(_rules.lamb_norms, _MOMENTS, (), 2, _MOMENTS)
_LAMB_APPLY_RECOMPUTED = SegmentedKernel(_rules.lamb_apply_recomputed, _MOMENTS,
                                         ("trust_step",), 0, ("param",))
_ND_ADAM = SegmentedKernel(_rules.adam, _MOMENTS, (), 0, ("param", *_MOMENTS))
_ND_RADIAL = SegmentedKernel(_rules.ndadam_radial, (), (), 1, ())
_ND_MOMENTS = SegmentedKernel(_rules.ndadam_moments, ("exp_avg",), ("radial",), 1,
                              ("exp_avg",))
_ND_STEP = SegmentedKernel(_rules.ndadam_step, _MOMENTS, ("grad_bar_sq_norm",), 1,
                           ("param", "exp_avg_sq"))
_SQUARE = SegmentedKernel(_rules.segment_square, (), (), 1, ())
_DIVIDE = SegmentedKernel(_rules.segment_divide, (), ("divisor",), 0, ("param",))
_SWATS_ADAM = SegmentedKernel(_rules.swats_adam, _MOMENTS, (), 2, ("param", *_MOMENTS))
_SWATS_SGD = SegmentedKernel(_rules.swats_sgd, ("momentum_buffer",), (), 0,
                             ("param", "momentum_buffer"))
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
    their layouts (see :class:`~fastmoments.kernels.segmented.Segments`)."""
    shard = getattr(opt, "segment_parts", None)
    if shard is None:
        return Segments(group.offsets, layouts([tuple(p.shape) for p in group.params]))
    shapes, parts = shard[opt._groups.index(group)]
    return Segments(group.offsets, layouts(list(shapes)), parts)


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
        buffer, and a :class:`~fastmoments.kernels.segmented.Parts` saying which part
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

    def _select(self, hyper: dict[str, Any]) -> _Layout:  # type: ignore[override]
        cls = type(self)
        layout = _LAYOUTS.get(cls)
        if layout is None:
            layout = _LAYOUTS[cls] = _Layout(cls.__name__, cls._state_names, cls._scalar_names)
        return layout


_LAYOUTS: dict[type, _Layout] = {}


# -------------------------------------------------------------------- LAMB
class LAMB(_MultiPass):
    r"""LAMB: Adam steps rescaled per tensor by a trust ratio (You et al., 2020).

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        r_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
               + \lambda \theta_{t-1} \\
        \theta_t &= \theta_{t-1} - \gamma\, \frac{\lVert\theta_{t-1}\rVert}
                    {\lVert r_t \rVert}\, r_t

    per parameter tensor (the trust ratio is 1 where either norm is 0).

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts;
        each array (each view of a FlatParams) gets its own trust ratio.
    lr : float or schedule, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-6
    weight_decay : float, default 0
        Decoupled, added to the Adam direction before the trust ratio.
    maximize : bool, default False

    Notes
    -----
    Follows optax's ``lamb`` (``scale_by_adam`` with bias correction,
    ``add_decayed_weights``, ``scale_by_trust_ratio``). Other implementations
    differ: NVIDIA's / cybertronai's pytorch-lamb and pytorch-optimizer's ``Lamb``
    skip the bias correction (paper v3) and clamp :math:`\lVert\theta\rVert` at 10;
    torch-optimizer's adds eps after bias correcting :math:`m` only. Two passes over
    the buffer: the moments, :math:`r_t` and the two squared norms per tensor, then
    the step. On the CPU :math:`r_t` waits between the two in a buffer of the
    parameters' size and dtype (scratch, not state: it is not saved; recomputing it
    instead was not faster on the CPU); on a GPU the second pass
    recomputes it, bit for bit, and device memory holds the moments only.
    :attr:`trust_ratios` keeps the last step's ratios (one array per group, updated in
    place by each step).

    References
    ----------
    You et al. (2020), Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes. ICLR.
    """

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **options)
        self._trust = [np.ones(_whole(self, g).num_segments) for g in self._groups]
        self.trust_ratios: list[np.ndarray] = list(self._trust)
        self._updates: list[Any] = [None] * len(self._groups)  # r_t, allocated on use
        # the step-size buffers for which the jitted _lamb_trust was found compiled
        self._trust_ready = WhenReady()
        self._stand_in_buffers: dict[int, tuple] = {}  # see _kept

    # the first pass's scalars (lamb_moments / lamb_norms), then lr for the trust ratios
    _scalar_names = (*_LAMB_MOMENTS.scalar_names[2:], "lr")

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        return named(one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                     inv_bias_correction1=1.0 / bias_correction1,
                     inv_bias_correction2=1.0 / bias_correction2, eps=hyper["eps"],
                     weight_decay=hyper["weight_decay"], lr=lr)

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        if group.device == "cuda":  # read p, g, m, v, write m, v; read p, m, v, write p
            return [(4, 2, group.numel), (3, 1, group.numel)]
        # moments: read p, g, m, v, write m, v and r (a buffer it does not read);
        # apply: read p, r, write p
        return [(4, 3, group.numel, 1), (2, 1, group.numel)]

    def _run(self, group: Group, source: Any, scalars: tuple) -> None:
        (grad_mult, clip_value, one_minus_beta1, beta2, one_minus_beta2, inv_bc1, inv_bc2, eps,
         weight_decay, lr) = scalars
        segments = _whole(self, group)
        k = self._groups.index(group)
        pass_scalars = (grad_mult, clip_value, one_minus_beta1, beta2, one_minus_beta2,
                        inv_bc1, inv_bc2, eps, weight_decay)
        if group.device == "cuda":  # no buffer for r on the device: pass 2 recomputes it
            first, second = _LAMB_NORMS, _LAMB_APPLY_RECOMPUTED
            first_states = second_states = None  # the group's moments
            second_scalars: tuple = (inv_bc1, inv_bc2, eps, weight_decay)
        else:  # pass 1 stores r, pass 2 reads it
            update = self._updates[k]
            if update is None:
                update = self._updates[k] = full(group, 0.0)
            first, second = _LAMB_MOMENTS, _LAMB_APPLY
            first_states = (group.state["exp_avg"], group.state["exp_avg_sq"], update)
            second_states, second_scalars = (update,), ()
        squares = _reduced(self, run(first, group, source, segments, None, pass_scalars,
                                     first_states))
        trust = self._trust[k]
        steps = workspace(second, group, segments).values
        arguments = (squares, lr, trust, steps)
        if self._trust_ready.get(id(steps)) is steps:
            _lamb_trust(*arguments)
        else:  # (a cold start: NumPy while it compiles)
            self._trust_ready.call(steps, _lamb_trust, arguments, _lamb_trust_numpy, *arguments,
                                   self._stand_in_buffers)
        if group.device == "cuda":
            run(second, group, source, segments, steps, second_scalars, second_states)
        else:  # on a cold start NumPy stands in while the loop compiles in the background
            run(second, group, source, segments, steps, second_scalars, second_states,
                _lamb_apply_numpy, (group, second_states[0], segments))
        self.trust_ratios[k] = trust


@cached_njit(error_model="numpy")
def _lamb_trust(squares, lr, trust, steps):
    """Trust ratios ``||theta|| / ||r||`` (1 where either is 0, or NaN) and the step
    sizes ``lr * trust`` (cast to the buffer dtype) from the squared norms per tensor."""
    for i in range(squares.shape[0]):
        param_norm = np.sqrt(squares[i, 0])
        direction_norm = np.sqrt(squares[i, 1])
        ratio = 1.0
        if param_norm > 0 and direction_norm > 0:
            ratio = param_norm / direction_norm
        trust[i] = ratio
        steps[i, 0] = lr * ratio


def _kept(buffers: dict, array: np.ndarray, build: Callable[[], Any]) -> Any:
    """What ``build()`` made for ``array``, kept in ``buffers`` (the NumPy stand-ins'
    buffers, built once per workspace array)."""
    entry = buffers.get(id(array))
    if entry is None or entry[0] is not array:
        entry = buffers[id(array)] = (array, build())
    return entry[1]


def _lamb_trust_numpy(squares: np.ndarray, lr: float, trust: np.ndarray, steps: np.ndarray,
                      buffers: dict) -> None:
    """:func:`_lamb_trust` in NumPy ufuncs, into buffers kept in ``buffers``
    (:func:`_trust_scratch`): the stand-in while the jitted loop compiles in the
    background (its compilation would otherwise delay LAMB's cold first step; these
    calls are slower than the loop per step). The same operations (float64 square roots
    and quotient, one rounding to the buffer dtype), so the same bits."""
    (norms, positive, both, trust, param_norm, direction_norm, param_positive,
     direction_positive, steps) = _kept(buffers, steps, lambda: _trust_scratch(trust, steps))
    np.sqrt(squares, out=norms)
    np.greater(norms, 0.0, out=positive)
    np.logical_and(param_positive, direction_positive, out=both)
    trust.fill(1.0)
    with np.errstate(over="ignore", invalid="ignore"):  # inf / inf is NaN, silently,
        np.divide(param_norm, direction_norm, out=trust, where=both)  # as in the loop
        np.multiply(trust, lr, out=steps)


def _lamb_apply_numpy(steps: np.ndarray, group: Group, update: np.ndarray,
                      segments: Segments | None = None) -> None:
    r"""LAMB's second CPU pass (``_rules.lamb_apply``: :math:`\theta \leftarrow \theta -
    \gamma\,\mathrm{trust}\; r` per tensor) in NumPy: the stand-in while its loop
    compiles in the background on a cold start (it would delay LAMB's first step). The
    same product and difference in the buffer dtype, so the same bits; it overwrites
    ``update`` (pass 1 writes it again next step). Silent on inf and NaN, as the loop.
    (Param ``j`` is segment ``j``; with a shard's ``segments``, its tensor's segment.)"""
    offsets = group.offsets
    segment_of = (range(len(group.params)) if segments is None
                  else segments.first_segment[segments.tensor_of])
    with np.errstate(over="ignore", invalid="ignore"):
        for j, param in enumerate(group.params):
            start, stop = offsets[j], offsets[j + 1]
            if stop > start:
                direction = update[start:stop]
                flat = param.reshape(-1)
                np.multiply(direction, steps[segment_of[j], 0], out=direction)
                np.subtract(flat, direction, out=flat)


def _trust_scratch(trust: np.ndarray, steps: np.ndarray) -> tuple:
    """The buffers and views :func:`_lamb_trust_numpy` writes (built once per table)."""
    count = trust.shape[0]
    norms = np.empty((count, 2))
    positive = np.empty((count, 2), dtype=np.bool_)
    return (norms, positive, np.empty(count, dtype=np.bool_), trust, norms[:, 0],
            norms[:, 1], positive[:, 0], positive[:, 1], steps[:, 0])


# ----------------------------------------------------------------- ND-Adam
def _vector_layout(shape: tuple[int, ...], axis: Any, owner: str) -> tuple[int, int, int]:
    """(outer, length, inner) of the weight vectors along ``axis`` of an array."""
    ndim = len(shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    normalized = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{owner}: axis {a} is out of range for a parameter of shape "
                             f"{shape}")
        normalized.append(a % ndim)
    normalized.sort()
    if len(set(normalized)) != len(normalized) or normalized != list(
        range(normalized[0], normalized[-1] + 1)
    ):
        raise ValueError(f"{owner}: axis {axis!r} must name distinct, adjacent axes (got them "
                         f"as {tuple(normalized)} for shape {shape})")
    lo, hi = normalized[0], normalized[-1] + 1
    return (math.prod(shape[:lo]), math.prod(shape[lo:hi]), math.prod(shape[hi:]))


class NDAdam(_MultiPass):
    r"""ND-Adam: normalized direction-preserving Adam (Zhang et al., 2017).

    Every parameter with two or more dimensions is a set of weight vectors: the
    1-D slices along ``axis`` (``axis=-1``: the rows of an ``(out, in)`` matrix, the
    incoming weights of each unit). Each vector :math:`w` is kept at unit norm
    (normalized when the optimizer is built, renormalized after every step) and
    updated with a gradient stripped of its radial part and a *scalar* second
    moment:

    .. math::

        \bar g_t &= g_t - (g_t \cdot w_{t-1})\, w_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) \bar g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) \lVert \bar g_t \rVert^2 \\
        \bar w_t &= w_{t-1} - \frac{\gamma}{1 - \beta_1^t}
                    \frac{m_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}, \qquad
        w_t = \bar w_t / \lVert \bar w_t \rVert

    Parameters with fewer than two dimensions (biases, gains) are updated by Adam.

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
        The weight vectors are normalized in place when the optimizer is built.
    lr : float or schedule, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    axis : int or tuple of int, default -1
        The axis (or adjacent axes) along which the vectors lie: ``-1`` for the
        rows of a linear layer's ``(out, in)`` weight, ``(1, 2, 3)`` for the
        filters of a conv layer's ``(out, in, kh, kw)`` weight (put layers of
        different ranks in different param groups to give each its axis).
    maximize : bool, default False

    Notes
    -----
    State: ``exp_avg`` per element; ``exp_avg_sq`` per element for the Adam
    parameters, and for the vectors the vector's scalar :math:`v` repeated in each
    of its elements (so its per-parameter view is the paper's :math:`v`
    broadcast along ``axis``). A vector of norm 0 is left as it is. No weight
    decay: the vectors' norm is fixed, and the paper leaves biases undecayed.
    Four segmented passes: :math:`g\cdot w`; :math:`m` and
    :math:`\lVert\bar g\rVert^2`; :math:`v`, the step and
    :math:`\lVert\bar w\rVert^2`; the renormalization (plus one Adam pass for the
    1-D parameters).

    References
    ----------
    Zhang, Ma, Li & Wu (2017), Normalized Direction-preserving Adam.
    arXiv:1709.04546.
    """

    _nonneg = ("eps",)

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, axis: int | tuple[int, ...] = -1, *,
                 maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, axis=axis,
                                      maximize=maximize), **options)
        tables = [self._tables(group) for group in self._groups]  # validates every shape
        for group, (vectors, _) in zip(self._groups, tables, strict=True):
            self._normalize(group, vectors)

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        axis = hyper["axis"]
        axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
        if (isinstance(axis, bool) or not isinstance(axes, (tuple, list)) or not axes
                or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                           for a in axes)):
            raise ValueError(f"NDAdam: invalid axis: expected an int or a tuple of ints, "
                             f"got {axis!r}")

    def _tables(self, group: Group) -> tuple[Segments, Segments]:
        axis = group.hyper["axis"]
        axis = int(axis) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)

        def vectors(shapes: list) -> list:
            return [_vector_layout(s, axis, "NDAdam") if len(s) >= 2 else None for s in shapes]

        def adam(shapes: list) -> list:
            return [(1, math.prod(s), 1) if len(s) < 2 else None for s in shapes]

        def build() -> tuple[Segments, Segments]:
            return _table(self, group, vectors), _table(self, group, adam)

        return _segments(self, group, ("nd", axis), build)

    def _normalize(self, group: Group, vectors: Segments) -> None:
        divisors = workspace(_DIVIDE, group, vectors).values
        _divisors(_reduced(self, run(_SQUARE, group, "params", vectors, None, ())), divisors)
        run(_DIVIDE, group, "params", vectors, divisors, ())

    _scalar_names = ("one_minus_beta1", "beta2", "one_minus_beta2", "step_size",
                     "inv_bias_correction2", "eps")

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        return named(one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                     step_size=lr / bias_correction1,
                     inv_bias_correction2=1.0 / bias_correction2, eps=hyper["eps"])

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        vectors, adam = self._tables(group)
        out = []
        if adam.num_chunks:  # Adam: read p, g, m, v, write p, m, v
            out.append((4, 3, int(adam.chunks[:, 3].sum())))
        if vectors.num_chunks:  # radial, moments, step, renormalization
            n = int(vectors.chunks[:, 3].sum())
            out += [(2, 0, n), (3, 1, n), (3, 2, n), (1, 1, n)]
        return out

    def _run(self, group: Group, source: Any, scalars: tuple) -> None:
        grad_mult, clip_value, one_minus_beta1, beta2, one_minus_beta2, step_size, inv_bc2, eps = (
            scalars
        )
        vectors, adam = self._tables(group)
        if adam.num_chunks:  # Adam for the 1-D parameters (no weight decay, eps outside)
            run(_ND_ADAM, group, source, adam, None,
                (grad_mult, clip_value, 0.0, 1.0, one_minus_beta1, beta2, one_minus_beta2,
                 step_size, inv_bc2, 0.0, eps))
        if not vectors.num_segments:  # (a shard without vectors runs the reductions)
            return
        radial = _reduced(self, run(_ND_RADIAL, group, source, vectors, None,
                                    (grad_mult, clip_value)))
        grad_bar_sq = _reduced(self, run(_ND_MOMENTS, group, source, vectors, radial,
                                         (grad_mult, clip_value, one_minus_beta1)))
        w_bar_sq = _reduced(self, run(_ND_STEP, group, source, vectors, grad_bar_sq,
                                      (beta2, one_minus_beta2, step_size, inv_bc2, eps)))
        divisors = workspace(_DIVIDE, group, vectors).values
        _divisors(w_bar_sq, divisors)
        run(_DIVIDE, group, "params", vectors, divisors, ())


@cached_njit(error_model="numpy")
def _divisors(squares, divisors):
    """The norm of each vector from its squared norm (1 where it is not > 0), cast
    to the buffer dtype."""
    for i in range(squares.shape[0]):
        norm = np.sqrt(squares[i, 0])
        divisors[i, 0] = norm if norm > 0 else 1.0


# ------------------------------------------------------------------- SWATS
class SWATS(_MultiPass):
    r"""SWATS: Adam, then SGD at the rate Adam's steps imply (Keskar & Socher, 2017).

    Adam phase, with all parameters as one vector (every group included):

    .. math::

        p_t &= -\frac{\gamma}{1 - \beta_1^t}\, \frac{m_t}{\sqrt{a_t / (1 - \beta_2^t)}
               + \epsilon}, \qquad \theta_t = \theta_{t-1} + p_t \\
        \gamma^{sgd}_t &= \frac{p_t \cdot p_t}{-p_t \cdot g_t}, \qquad
        \lambda_t = \beta_2 \lambda_{t-1} + (1 - \beta_2)\, \gamma^{sgd}_t

    (:math:`m_t, a_t`: Adam's moments; :math:`\gamma^{sgd}_t` is the SGD step
    size whose step has the same projection on :math:`p_t`; skipped when
    :math:`p_t \cdot g_t = 0`). When :math:`t > 1` and
    :math:`|\lambda_t / (1 - \beta_2^t) - \gamma^{sgd}_t| <` ``switch_tol``, it
    switches for good to SGD with momentum at :math:`\Lambda = \lambda_t / (1 -
    \beta_2^t)`:

    .. math::

        v_t = \beta_1 v_{t-1} + g_t, \qquad
        \theta_t = \theta_{t-1} - (1 - \beta_1)\,\Lambda\,
                   (g_t + \beta_1 v_t \text{ if nesterov else } v_t)

    Parameters
    ----------
    params
        A list of arrays, a :class:`~fastmoments.FlatParams`, or param-group dicts.
    lr : float or schedule, default 1e-3
        Adam's learning rate. After the switch a group's rate is
        :math:`\Lambda\,\gamma_t / \gamma_s` (:math:`\gamma_s`: its rate at the
        switch), so a schedule keeps decaying the SGD rate.
    betas : (float, float), default (0.9, 0.999)
        :math:`\beta_1` is also the SGD momentum.
    eps : float, default 1e-8
        Outside the square root, after bias correction (torch's Adam).
    weight_decay : float, default 0
        L2, in both phases.
    nesterov : bool, default False
        Nesterov momentum in the SGD phase.
    maximize : bool, default False
    switch_tol : float, default 1e-9
        The paper's :math:`\epsilon` of the switching test (absolute).

    Attributes
    ----------
    switched : bool
        Whether the switch happened (the step that decided it was an Adam step).
    switch_step : int or None
        The step (1-based) that decided it.
    sgd_lr : float or None
        :math:`\Lambda`, the SGD rate.

    Notes
    -----
    Algorithm 1 of the paper, with eps placed as in torch's Adam (the paper
    multiplies :math:`\sqrt{1-\beta_2^t}` into the step and adds eps to
    :math:`\sqrt{a_t}`). The switch is global; the estimate and the test use the
    first group's betas and switch_tol. torch-optimizer's ``SWATS`` differs: it
    switches per parameter tensor (setting its whole group's lr), with eps=1e-3 and
    a relative test. The switch and :math:`\lambda` are saved in ``host_state``.

    References
    ----------
    Keskar & Socher (2017), Improving Generalization Performance by Switching from
    Adam to SGD. arXiv:1712.07628.
    """

    _nonneg = ("eps", "weight_decay", "switch_tol")
    _bools = ("nesterov", "maximize")
    _state_names = ("exp_avg", "exp_avg_sq", "momentum_buffer")

    def __init__(self, params: Any, lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, switch_tol: float = 1e-9, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize,
                                      switch_tol=switch_tol), **options)
        self._dots = np.zeros(2)  # p.g and p.p of this step, over every group
        # the totals arrays for which _add_column_sums was found compiled
        self._sums_ready = WhenReady()
        self._stand_in_buffers: dict[int, tuple] = {}  # see _kept

    def _initial_host_state(self, hyper: dict[str, Any]) -> dict[str, float]:
        return {"switched": 0.0, "switch_step": 0.0, "lambda": 0.0, "sgd_lr": 0.0,
                "lr_at_switch": 0.0}

    @property
    def switched(self) -> bool:
        return bool(self._groups[0].host_state["switched"])

    @property
    def switch_step(self) -> int | None:
        return int(self._groups[0].host_state["switch_step"]) if self.switched else None

    @property
    def sgd_lr(self) -> float | None:
        return float(self._groups[0].host_state["sgd_lr"]) if self.switched else None

    def step(self, grads: Any = None, *, grad_scale: float = 1.0) -> float | None:
        """One step of the current phase; in the Adam phase, then test the switch.

        Parameters and return value as :meth:`fastmoments.Adam.step`.
        """
        self._dots.fill(0.0)
        was_switched = self.switched
        norm = super().step(grads, grad_scale=grad_scale)
        if not was_switched and not self.last_step_skipped:
            self._test_switch()
        return norm

    def _test_switch(self) -> None:
        p_dot_g, p_dot_p = (float(x) for x in self._dots)
        if p_dot_g == 0:
            return
        k = self.step_count
        first = self._groups[0]
        beta2 = first.hyper["betas"][1]
        gamma = p_dot_p / -p_dot_g
        lam = beta2 * first.host_state["lambda"] + (1.0 - beta2) * gamma
        estimate = lam / (1.0 - beta2**k)
        switch = k > 1 and abs(estimate - gamma) < first.hyper["switch_tol"]
        for group in self._groups:
            host = group.host_state
            host["lambda"] = lam
            if switch:
                host.update(switched=1.0, switch_step=float(k), sgd_lr=estimate)

    # the Adam phase's pass (swats_adam), then lr; the SGD phase gives swats_sgd's own
    _scalar_names = (*_SWATS_ADAM.scalar_names[2:], "lr")

    def _scalars(self, hyper: dict, lr: float, step: int, host: dict, named) -> tuple:
        beta1, beta2 = hyper["betas"]
        weight_decay = hyper["weight_decay"]
        if host["switched"]:
            ratio = lr / host["lr_at_switch"] if host["lr_at_switch"] > 0 else 1.0
            return _SWATS_SGD.named(weight_decay=weight_decay, beta1=beta1,
                                    nesterov=1.0 if hyper["nesterov"] else 0.0,
                                    step_size=(1.0 - beta1) * host["sgd_lr"] * ratio)
        bias_correction1, bias_correction2 = bias_corrections(beta1, beta2, step)
        return named(weight_decay=weight_decay, one_minus_beta1=1.0 - beta1, beta2=beta2,
                     one_minus_beta2=1.0 - beta2, step_size=lr / bias_correction1,
                     inv_bias_correction2=1.0 / bias_correction2, eps=hyper["eps"], lr=lr)

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        # one pass: Adam phase read p, g, m, v, write p, m, v; SGD phase p, g, buffer
        if group.host_state["switched"]:
            return [(3, 2, group.numel)]
        return [(4, 3, group.numel)]

    def _run(self, group: Group, source: Any, scalars: tuple) -> None:
        segments = _whole(self, group)
        if group.host_state["switched"]:
            run(_SWATS_SGD, group, source, segments, None, scalars)
            return
        *args, lr = scalars
        group.host_state["lr_at_switch"] = lr  # the rate of the latest Adam step
        totals = _reduced(self, run(_SWATS_ADAM, group, source, segments, None, args))
        if self._sums_ready.get(id(totals)) is totals:
            _add_column_sums(totals, self._dots)
        else:  # (a cold start: NumPy while it compiles)
            self._sums_ready.call(totals, _add_column_sums, (totals, self._dots),
                                  _add_column_sums_numpy, totals, self._dots,
                                  self._stand_in_buffers)


@cached_njit(error_model="numpy")
def _add_column_sums(totals, out):
    """``out += totals.sum(axis=0)``: the rows added in order."""
    for k in range(totals.shape[1]):
        column = totals[0, k] if totals.shape[0] else 0.0
        for i in range(1, totals.shape[0]):
            column += totals[i, k]
        out[k] += column


def _add_column_sums_numpy(totals: np.ndarray, out: np.ndarray, buffers: dict) -> None:
    """:func:`_add_column_sums` in NumPy, the stand-in while it compiles in the
    background (its compilation would delay SWATS's cold first step): the rows
    added in order (``np.add.accumulate`` is sequential), so the same bits, into a
    buffer kept in ``buffers`` (:func:`_kept`) per ``totals`` array. Silent on inf and
    NaN, as the loop."""
    if len(totals):
        running = _kept(buffers, totals, lambda: np.empty_like(totals))
        with np.errstate(over="ignore", invalid="ignore"):
            np.add.accumulate(totals, axis=0, out=running)
            np.add(out, running[-1], out=out)


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
        for group, source in zip(opt._groups, opt._collect(g)):
            run(_ACCUMULATE_SQUARE, group, source, _whole(opt, group), None,
                (0.0 if k == 0 else 1.0, weight, group.hyper["weight_decay"]))
    for group in opt._groups:
        group.host_state["second_moment_initialized"] = 1.0
