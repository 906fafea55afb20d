r"""LAMB (You et al., 2020): Adam steps rescaled per tensor by a trust ratio.

Two segmented passes per step (see :mod:`.multipass`): the moments with the squared
norms per tensor, then the step; the trust ratios are computed on the host between
them (:func:`_lamb_trust`, with NumPy stand-ins while the loops compile on a cold
start).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import rules as _rules
from ..kernels.compile import WhenReady, cached_njit
from ..kernels.segmented import SegmentedKernel
from ..kernels.segmented_run import run, workspace
from ..kernels.segments import Segments
from ._groups import Group, full
from ._scalars import bias_corrections
from .multipass import _MOMENTS, _advance_key, _kept, _MultiPass, _reduced, _variant, _whole

__all__ = ["LAMB"]

_LAMB_MOMENTS = SegmentedKernel(_rules.lamb_moments, (*_MOMENTS, "update"), (), 2,
                                (*_MOMENTS, "update"))
_LAMB_APPLY = SegmentedKernel(_rules.lamb_apply, ("update",), ("trust_step",), 0, ("param",))
_LAMB_NORMS = SegmentedKernel(_rules.lamb_norms, _MOMENTS, (), 2, _MOMENTS)
_LAMB_APPLY_RECOMPUTED = SegmentedKernel(_rules.lamb_apply_recomputed, _MOMENTS,
                                         ("trust_step",), 0, ("param",))
# the GPU with moments stored in fewer bits: pass 1 only reads them (the norms), pass 2
# computes them again from the same stored values, steps and stores them (r from the
# stored, narrowed moments would not be pass 1's)
_LAMB_NORMS_READ = SegmentedKernel(_rules.lamb_norms, _MOMENTS, (), 2, ())
_LAMB_MOMENTS_APPLY = SegmentedKernel(_rules.lamb_moments_apply, _MOMENTS, ("trust_step",), 0,
                                      ("param", *_MOMENTS))


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
    recomputes it, bit for bit, and device memory holds the moments only (with
    ``state_dtype``, the second pass recomputes the moments too from the stored ones
    and stores them, so that :math:`r_t` is the CPU's, from the moments before they
    are narrowed; so does ``state_dtype="int8"`` on the CPU, which keeps no buffer
    for :math:`r_t` either).
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
        if _recomputes(group):  # read p, g, m, v; read p, g, m, v, write p, m, v
            return [(4, 0, group.numel), (4, 3, group.numel)]
        if group.device == "cuda":  # read p, g, m, v, write m, v; read p, m, v, write p
            return [(4, 2, group.numel), (3, 1, group.numel)]
        # moments: read p, g, m, v, write m, v and r (a buffer it does not read);
        # apply: read p, r, write p
        return [(4, 3, group.numel, 1), (2, 1, group.numel)]

    def _run(self, group: Group, source: Any, scalars: tuple) -> None:
        (grad_mult, clip_value, one_minus_beta1, beta2, one_minus_beta2, inv_bc1, inv_bc2, eps,
         weight_decay, lr) = scalars
        _advance_key(group)
        segments = _whole(self, group)
        k = self._groups.index(group)
        pass_scalars = (grad_mult, clip_value, one_minus_beta1, beta2, one_minus_beta2,
                        inv_bc1, inv_bc2, eps, weight_decay)
        if _recomputes(group):  # no buffer for r: pass 2 recomputes the moments too
            first, second = (_variant(self, group, _LAMB_NORMS_READ),
                             _variant(self, group, _LAMB_MOMENTS_APPLY))
            first_states = second_states = None  # the group's moments
            second_scalars: tuple = pass_scalars
        elif group.device == "cuda":  # no buffer for r on the device: pass 2 recomputes it
            first, second = _LAMB_NORMS, _LAMB_APPLY_RECOMPUTED
            first_states = second_states = None  # the group's moments
            second_scalars = (inv_bc1, inv_bc2, eps, weight_decay)
        else:  # pass 1 stores r, pass 2 reads it
            update = self._updates[k]
            if update is None:  # in the arithmetic's dtype (float32 for 16-bit params)
                update = self._updates[k] = (
                    full(group, 0.0) if group.precision is None
                    else np.zeros(group.numel, dtype=group.compute_dtype))
            first, second = _variant(self, group, _LAMB_MOMENTS), _variant(self, group,
                                                                          _LAMB_APPLY)
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
        elif second is not _LAMB_APPLY:  # 16-bit parameters: no NumPy stand-in
            run(second, group, source, segments, steps, second_scalars, second_states)
        else:  # on a cold start NumPy stands in while the loop compiles in the background
            run(second, group, source, segments, steps, second_scalars, second_states,
                _lamb_apply_numpy, (group, second_states[0], segments))
        self.trust_ratios[k] = trust


def _recomputes(group: Group) -> bool:
    """Whether the group's second pass recomputes the moments and r from the stored
    moments (and stores the moments) instead of reading r from a buffer: on a GPU with
    ``state_dtype`` (no buffer for r there; r from the moments before they are
    narrowed), and for int8 state (a float32 buffer for r would be twice the int8
    moments' memory)."""
    precision = group.precision
    return precision is not None and (group.device == "cuda" or precision.state == "int8")


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
