r"""ND-Adam (Zhang et al., 2017): Adam on weight vectors kept at unit norm.

Four segmented passes per step over the weight vectors (see :mod:`.multipass`), plus
one Adam pass for the parameters with fewer than two dimensions;
:func:`_vector_layout` maps ``axis`` to the vectors' segment layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..kernels import rules as _rules
from ..kernels.compile import cached_njit
from ..kernels.segmented import SegmentedKernel
from ..kernels.segmented_run import run, workspace
from ..kernels.segments import Segments
from ._groups import Group
from ._scalars import bias_corrections
from .multipass import _MOMENTS, _advance_key, _MultiPass, _reduced, _segments, _table, _variant

__all__ = ["NDAdam"]

_ND_ADAM = SegmentedKernel(_rules.adam, _MOMENTS, (), 0, ("param", *_MOMENTS))
_ND_RADIAL = SegmentedKernel(_rules.ndadam_radial, (), (), 1, ())
_ND_MOMENTS = SegmentedKernel(_rules.ndadam_moments, ("exp_avg",), ("radial",), 1,
                              ("exp_avg",))
_ND_STEP = SegmentedKernel(_rules.ndadam_step, _MOMENTS, ("grad_bar_sq_norm",), 1,
                           ("param", "exp_avg_sq"))
_SQUARE = SegmentedKernel(_rules.segment_square, (), (), 1, ())
_DIVIDE = SegmentedKernel(_rules.segment_divide, (), ("divisor",), 0, ("param",))


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
    int8_refusal = (
        "its second moment is one value per weight vector, repeated in the vector's "
        "elements, and int8 blocks of 256 consecutive elements (one scale each) would "
        "store the copies of a vector that crosses a block edge (or of a column, which "
        "meets every block) as different values; its first moment is stored by one pass "
        "and read by the next along vectors that do not line up with the blocks")

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
        divide = _variant(self, group, _DIVIDE)
        divisors = workspace(divide, group, vectors).values
        _divisors(_reduced(self, run(_variant(self, group, _SQUARE), group, "params", vectors,
                                     None, ())), divisors)
        run(divide, group, "params", vectors, divisors, ())

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
        _advance_key(group)
        vectors, adam = self._tables(group)
        if adam.num_chunks:  # Adam for the 1-D parameters (no weight decay, eps outside)
            run(_variant(self, group, _ND_ADAM), group, source, adam, None,
                (grad_mult, clip_value, 0.0, 1.0, one_minus_beta1, beta2, one_minus_beta2,
                 step_size, inv_bc2, 0.0, eps))
        if not vectors.num_segments:  # (a shard without vectors runs the reductions)
            return
        radial = _reduced(self, run(_variant(self, group, _ND_RADIAL), group, source, vectors,
                                    None, (grad_mult, clip_value)))
        grad_bar_sq = _reduced(self, run(_variant(self, group, _ND_MOMENTS), group, source,
                                         vectors, radial, (grad_mult, clip_value,
                                                           one_minus_beta1)))
        # the vector's v, one value in each of its elements, rounds alike in each
        step = _variant(self, group, _ND_STEP, per_segment=("exp_avg_sq",))
        w_bar_sq = _reduced(self, run(step, group, source, vectors, grad_bar_sq,
                                      (beta2, one_minus_beta2, step_size, inv_bc2, eps)))
        divide = _variant(self, group, _DIVIDE)
        divisors = workspace(divide, group, vectors).values
        _divisors(w_bar_sq, divisors)
        run(divide, group, "params", vectors, divisors, ())


@cached_njit(error_model="numpy")
def _divisors(squares, divisors):
    """The norm of each vector from its squared norm (1 where it is not > 0), cast
    to the buffer dtype."""
    for i in range(squares.shape[0]):
        norm = np.sqrt(squares[i, 0])
        divisors[i, 0] = norm if norm > 0 else 1.0
