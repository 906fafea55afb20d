"""ShardedOptimizer: data-parallel steps with the optimizer state sharded over the ranks.

Every rank holds the same parameters (one :class:`~fastmoments.FlatParams` per param
group) and writes its own gradient into ``flat.grad``. A step

1. sums the gradients over the ranks with a *reduce-scatter*: rank ``r`` receives the
   sum of its contiguous shard of each group's buffer, in a shard-sized buffer;
2. steps that shard with the ordinary kernels, dividing by the number of ranks
   inside the kernel as a loss scale is divided (``grad_scale * world_size``), so the
   update is the one-process update on the mean gradient;
3. *all-gathers* the parameters: every replica is identical after every step.

Each rank keeps the optimizer state of its shard only (ZeRO stage 1). Decisions that
need the whole model (the global gradient norm for ``max_grad_norm`` and
``nonfinite``; LAMB's per-tensor norms, ND-Adam's per-vector sums, SWATS's dot
products) are taken from sums over the ranks that every rank computes alike.

The step is here; the shard layout and the checks the ranks agree on are in
:mod:`.layout`, the sums over the ranks (global norm, per-segment totals) in
:mod:`._reductions`, the consolidated state dict and checkpoints in :mod:`._checkpoints`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..kernels.elementwise import Kernel
from ..optim._checks import check_optional_positive, is_number
from ..optim._scalars import clip_coefficient
from ..optim.base import Optimizer
from ..optim.multipass import build_sharded
from ._agree import check_same, together
from ._checkpoints import _Checkpoints
from ._reductions import _Reductions
from .comm import as_communicator
from .layout import (
    _NONFINITE_POLICIES,
    _OWNER,
    _arguments,
    _cut,
    _Shard,
    shard_ranges,
    shard_sizes,
)

__all__ = ["ShardedOptimizer", "shard_sizes", "shard_ranges"]


class ShardedOptimizer(_Checkpoints, _Reductions):
    r"""A fastmoments optimizer stepped by many processes, its state sharded (ZeRO-1).

    .. code-block:: python

        opt = fm.distributed.ShardedOptimizer(fm.AdamW, flat, comm=MPI.COMM_WORLD,
                                              lr=1e-3, weight_decay=0.01)
        # each rank writes its local gradient into flat.grad, then:
        opt.step()

    A step sums ``flat.grad`` over the ranks into this rank's contiguous shard of the
    buffer (reduce-scatter), steps the shard with the ordinary kernels on the mean
    gradient, and all-gathers the parameters. The trajectory is that of one process
    stepping the mean gradient: bit for bit where the sum over the ranks is exact and
    the number of ranks is a power of two (the mean is applied as a division by the
    number of ranks inside the kernel, a multiplication by its reciprocal, as
    ``grad_scale`` is), and to round-off otherwise.

    Parameters
    ----------
    optimizer
        The class: any fastmoments optimizer (``fm.AdamW``, ``fm.LAMB``, ...).
    params
        A :class:`~fastmoments.FlatParams` (the same shapes and dtype on every rank),
        or a list of param-group dicts whose ``"params"`` is a FlatParams each (for
        weight-decay masks: one FlatParams per group). Each group is sharded on its
        own. Lists of separate arrays are refused: a shard must be a contiguous run of
        one buffer.
    comm
        An mpi4py communicator (default: ``MPI.COMM_WORLD``) or an object with the
        methods of :class:`~fastmoments.distributed.Communicator`.
    shard
        ``True``: ZeRO-1 as above. ``False``: data-parallel without sharding (as
        torch's DDP): the gradients are summed with an all-reduce *in place in
        flat.grad* and every rank steps the whole buffer with the whole state.
    nonfinite, max_grad_norm, clip_value
        As for every optimizer, with their one-process meaning over the whole model:
        the global gradient norm (of the mean gradient) decides clipping and skipping,
        and every rank takes the same decision.
    **hyper
        The optimizer's hyperparameters (``lr`` may be a schedule).

    Attributes
    ----------
    optimizer
        This rank's optimizer: over its shard (``shard=True``; its params are views of
        ``flat.data``) or over the whole FlatParams (``shard=False``).
    rank, world_size : int
    shards : list of (int, int)
        This rank's ``(start, stop)`` in each group's flat buffer.
    step_count, skipped_steps : int
    last_step_skipped : bool
    last_grad_norm : float or None

    Notes
    -----
    At construction the parameters are broadcast from rank 0; the ranks compare what
    they were given (shapes, dtype, device, optimizer, hyperparameters, options,
    fastmoments version) and refuse a mismatch with the same ``ValueError`` on every
    rank. An error that one rank meets while checking its arguments is raised on every
    rank. What is given per step (``grad_scale``) and edits of hyperparameters between
    steps are not compared: make them the same on every rank.

    Memory per rank (``shard=True``): the state of the shard (``state_nbytes``) and
    one shard-sized gradient buffer (none with one rank), beside the parameters and
    gradients the model has; LAMB adds its shard-sized scratch buffer. The per-tensor
    sums of LAMB, ND-Adam and SWATS travel as one small float64 array per pass
    (``(segments, terms)``: a row per tensor, or per ND-Adam vector).

    Yogi's ``init_second_moment`` is not available through this class.
    """

    def __init__(self, optimizer: type[Optimizer], params: Any, comm: Any = None, *,
                 shard: bool = True, nonfinite: str = "apply",
                 max_grad_norm: float | None = None, clip_value: float | None = None,
                 **hyper: Any) -> None:
        self.comm = as_communicator(comm)
        self.rank, self.world_size = int(self.comm.rank), int(self.comm.size)
        options = {"nonfinite": nonfinite, "max_grad_norm": max_grad_norm,
                   "clip_value": clip_value}
        groups, fingerprints = together(
            self.comm, _OWNER,
            lambda: _arguments(self.world_size, optimizer, params, shard, options, hyper))
        check_same(_OWNER, fingerprints)
        self.sharded = bool(shard)
        self._cls = optimizer
        self._nonfinite, self._max_grad_norm = nonfinite, check_optional_positive(
            max_grad_norm, "max_grad_norm", _OWNER)
        self._shards = [_Shard(flat, extra, self.rank, self.world_size) for flat, extra in groups]
        self.shards = [(s.start, s.stop) for s in self._shards]
        for s in self._shards:  # every replica starts from rank 0's parameters
            self.comm.bcast(s.flat.data, 0)
        self.optimizer: Optimizer
        self.optimizer, _ = together(
            self.comm, _OWNER, lambda: (self._build(optimizer, hyper, options), None))
        if self.sharded and optimizer._run is not Optimizer._run:
            self._gather_parameters()  # (ND-Adam normalized its shard of the vectors)
        self.skipped_steps = 0
        self.last_step_skipped = False
        self.last_grad_norm: float | None = None
        self._norm_buffer = np.zeros(self.world_size)

    # ------------------------------------------------------------ construction
    def _build(self, cls: type[Optimizer], hyper: dict, options: dict) -> Optimizer:
        """This rank's optimizer: over the whole buffers, or over this rank's shards."""
        if not self.sharded:
            groups = [{"params": s.flat, **s.extra} for s in self._shards]
            return cls(groups, **hyper, **options)
        # an element-wise rule steps each shard as one array; a rule with passes of its
        # own (LAMB, ND-Adam, SWATS, cautious variants) steps it cut at the tensors'
        # edges, its per-segment sums reduced over the ranks (multipass.build_sharded);
        # so does an element-wise class with cautious=True in any group (optim._cautious)
        elementwise = cls._run is Optimizer._run and not any(
            {**hyper, **s.extra}.get("cautious") for s in self._shards)
        for s in self._shards:
            _cut(s, self.world_size, pieces=not elementwise)
        groups = [{"params": s.pieces, **s.extra} for s in self._shards]
        self._grads = [g for s in self._shards for g in s.grads]
        # the norm and the non-finite policy are decided here, on global values
        local = {"clip_value": options["clip_value"]}
        if elementwise:
            return cls(groups, **hyper, **local)
        opt = build_sharded(cls, groups, [s.parts for s in self._shards], self._reduce_totals,
                            **hyper, **local)
        if not getattr(cls, "shard_aware", False) and not all(
            isinstance(group.kernel, Kernel) for group in opt._groups
        ):
            raise NotImplementedError(
                f"{cls.__name__} with these hyperparameters runs passes that are not written "
                "for a shard (no shard_aware flag); use shard=False")
        return opt

    # -------------------------------------------------------------- options
    @property
    def nonfinite(self) -> str:
        """What a step does when a gradient (on any rank) holds NaN or Inf: ``"apply"``,
        ``"skip"`` (every rank skips) or ``"raise"`` (every rank raises)."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        if value not in _NONFINITE_POLICIES:
            raise ValueError(f"{_OWNER}: nonfinite must be one of {_NONFINITE_POLICIES}, "
                             f"got {value!r}")
        if not self.sharded:
            self.optimizer.nonfinite = value
        self._nonfinite = value

    @property
    def max_grad_norm(self) -> float | None:
        """Clip the global norm of the mean gradient to this (None: off)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        value = check_optional_positive(value, "max_grad_norm", _OWNER)
        if not self.sharded:
            self.optimizer.max_grad_norm = value
        self._max_grad_norm = value

    @property
    def clip_value(self) -> float | None:
        """Clip each element of the mean gradient to ``[-clip_value, clip_value]``."""
        return self.optimizer.clip_value

    @clip_value.setter
    def clip_value(self, value: float | None) -> None:
        self.optimizer.clip_value = value

    @property
    def lr(self) -> float:
        """The learning rate of the next step (settable: a float or a schedule)."""
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: Any) -> None:
        self.optimizer.lr = value

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """This rank's optimizer's param groups (edit them alike on every rank)."""
        return self.optimizer.param_groups

    @property
    def step_count(self) -> int:
        return self.optimizer.step_count

    @property
    def state_nbytes(self) -> int:
        """Bytes of optimizer state held by this rank (its shard's, or all of it)."""
        return sum(int(buf.nbytes) for group in self.optimizer._groups
                   for buf in group.state.values())

    def eval(self) -> None:
        """Schedule-Free rules: write the averaged point ``x`` into the parameters (see
        ``fm.ScheduleFreeAdamW.eval``), on every rank. Collective."""
        self._switch("eval")

    def train(self) -> None:
        """Schedule-Free rules: write the gradient point ``y`` back. Collective."""
        self._switch("train")

    def _switch(self, name: str) -> None:
        method = getattr(self.optimizer, name, None)
        if method is None:
            raise AttributeError(f"{_OWNER}.{name}: {type(self.optimizer).__name__} has no "
                                 f"{name}() (only the Schedule-Free rules do)")
        method()
        if self.sharded:
            self._gather_parameters()

    # ----------------------------------------------------------------- step
    def zero_grad(self) -> None:
        """Zero ``flat.grad`` of every group (this rank's local gradients)."""
        for s in self._shards:
            s.flat.zero_grad()

    def step(self, *, grad_scale: float = 1.0) -> float | None:
        """Average the ranks' gradients, step, and give every rank the new parameters.

        Collective: every rank calls it, with the same ``grad_scale``.

        Parameters
        ----------
        grad_scale
            The loss scale the local gradients were multiplied by (divided out in the
            kernel).

        Returns
        -------
        float or None
            The global norm of the mean gradient (after unscaling, before clipping)
            when it was computed (``max_grad_norm`` set or ``nonfinite`` not
            ``"apply"``), else None.
        """
        if not (is_number(grad_scale) and math.isfinite(grad_scale) and grad_scale > 0):
            raise ValueError(f"grad_scale: expected a finite number > 0, got {grad_scale!r}")
        scale = float(grad_scale) * self.world_size  # the mean, divided as a loss scale
        if not self.sharded:
            return self._step_replicated(scale)
        self._reduce_gradients()
        norm = None
        if self._nonfinite != "apply" or self._max_grad_norm is not None:
            norm = self._global_norm(scale)
            if not math.isfinite(norm):
                if self._nonfinite == "raise":
                    raise FloatingPointError(
                        f"{_OWNER}.step: a gradient contains NaN or Inf (on some rank); "
                        "nothing was changed (nonfinite='raise')")
                if self._nonfinite == "skip":
                    self.skipped_steps += 1
                    self.last_step_skipped, self.last_grad_norm = True, norm
                    return norm
            if self._max_grad_norm is not None and math.isfinite(norm):
                coefficient = clip_coefficient(self._max_grad_norm, norm)
                if coefficient != 1.0:
                    scale = scale / coefficient
        self._step_shard(scale)
        self._gather_parameters()
        self.last_step_skipped, self.last_grad_norm = False, norm
        return norm

    def _step_replicated(self, scale: float) -> float | None:
        """``shard=False``: all-reduce the gradients in place, step everything."""
        if self.world_size > 1:
            for s in self._shards:
                self.comm.allreduce(s.flat.grad)
        try:
            return self.optimizer.step(None, grad_scale=scale)
        finally:
            self.skipped_steps = self.optimizer.skipped_steps
            self.last_step_skipped = self.optimizer.last_step_skipped
            self.last_grad_norm = self.optimizer.last_grad_norm

    def _reduce_gradients(self) -> None:
        """The sum of the ranks' gradients of this rank's shard, into its buffer."""
        if self.world_size == 1:
            return  # the shard's gradient buffer is flat.grad itself
        for s in self._shards:
            self.comm.reduce_scatter(s.flat.grad, s.grad, s.counts)

    def _step_shard(self, scale: float) -> None:
        self.optimizer.step(self._grads, grad_scale=scale)

    def _gather_parameters(self) -> None:
        if self.world_size == 1:
            return
        for s in self._shards:
            self.comm.allgather(s.flat.data, s.counts)

    def __repr__(self) -> str:
        mode = "sharded" if self.sharded else "replicated"
        return (f"ShardedOptimizer({self._cls.__name__}, rank {self.rank} of "
                f"{self.world_size}, {mode}, shards={self.shards})")
