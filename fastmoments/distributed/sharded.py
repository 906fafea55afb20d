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
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .. import checkpoint
from ..config import config
from ..flat import FlatParams
from ..kernels import host
from ..kernels.elementwise import Kernel
from ..kernels.segmented import Parts
from ..optim._checks import check_optional_positive, is_number
from ..optim._scalars import clip_coefficient
from ..optim._state import copy_into, plan_load
from ..optim.base import Optimizer
from ..optim.multipass import build_sharded
from ._agree import check_same, describe, together
from .comm import as_communicator

__all__ = ["ShardedOptimizer", "shard_sizes", "shard_ranges"]

_OWNER = "ShardedOptimizer"
_NONFINITE_POLICIES = ("apply", "skip", "raise")


def shard_sizes(numel: int, world_size: int) -> list[int]:
    """The number of elements of each rank's shard of a buffer of ``numel`` elements.

    DeepSpeed's split: ``numel // world_size`` each, and one more for each of the first
    ``numel % world_size`` ranks; a rank gets an empty shard when there are more ranks
    than elements.

    Examples
    --------
    >>> shard_sizes(10, 3), shard_sizes(2, 3)
    ([4, 3, 3], [1, 1, 0])
    """
    if world_size < 1 or numel < 0:
        raise ValueError(f"shard_sizes: expected numel >= 0 and world_size >= 1, got "
                         f"{numel} and {world_size}")
    base, extra = divmod(int(numel), int(world_size))
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard_ranges(numel: int, world_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each rank's shard (see :func:`shard_sizes`), in rank order."""
    stops = np.cumsum(shard_sizes(numel, world_size))
    return [(int(stop - size), int(stop))
            for stop, size in zip(stops, shard_sizes(numel, world_size))]


class _Shard:
    """One param group's FlatParams and this rank's part of it."""

    __slots__ = ("flat", "extra", "counts", "start", "stop", "grad", "pieces", "grads",
                 "parts")

    def __init__(self, flat: FlatParams, extra: dict[str, Any], rank: int, size: int) -> None:
        self.flat, self.extra = flat, extra
        self.counts = shard_sizes(flat.numel, size)
        self.start, self.stop = shard_ranges(flat.numel, size)[rank]
        self.grad: Any = None  # the shard's summed gradient
        self.pieces: list[Any] = []  # the params the local optimizer steps
        self.grads: list[Any] = []  # their gradients (views of ``grad``)
        self.parts: tuple | None = None  # (shapes, Parts) for a multi-pass rule


class ShardedOptimizer:
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
            self.comm, _OWNER, lambda: self._arguments(optimizer, params, shard, options, hyper))
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
    def _arguments(self, optimizer: Any, params: Any, shard: Any, options: dict,
                   hyper: dict) -> tuple[list[tuple[FlatParams, dict]], list]:
        """This rank's arguments, checked, and their fingerprint (compared across ranks)."""
        if not (isinstance(optimizer, type) and issubclass(optimizer, Optimizer)):
            raise TypeError(f"optimizer: expected a fastmoments optimizer class (e.g. "
                            f"fm.AdamW), got {optimizer!r}")
        if not isinstance(shard, bool):
            raise TypeError(f"shard: expected True or False, got {shard!r}")
        if options["nonfinite"] not in _NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {_NONFINITE_POLICIES}, got "
                             f"{options['nonfinite']!r}")
        for name in ("max_grad_norm", "clip_value"):
            check_optional_positive(options[name], name, _OWNER)
        groups = _flat_groups(params)
        from .. import __version__

        fingerprint: list[tuple[str, Any]] = [
            ("the fastmoments version", __version__),
            ("the optimizer", f"{optimizer.__module__}.{optimizer.__qualname__}"),
            ("shard", shard), ("the number of ranks", self.world_size),
            *((name, describe(value)) for name, value in options.items()),
            *((f"hyperparameter {name!r}", describe(value))
              for name, value in sorted(hyper.items())),
        ]
        for k, (flat, extra) in enumerate(groups):
            where = f"param group {k}"
            fingerprint += [
                (f"{where}: the shapes", tuple(flat.shapes)),
                (f"{where}: the dtype", str(flat.dtype)),
                (f"{where}: the device", flat.device),
                *((f"{where}: {name!r}", describe(value))
                  for name, value in sorted(extra.items())),
            ]
        return groups, fingerprint

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

    def _global_norm(self, scale: float) -> float:
        """The norm of the mean gradient, from the ranks' sums of squares added in rank
        order (the same bits on every rank)."""
        total = self._sum_over_ranks(sum(_sum_squares(s.grad) for s in self._shards))
        if math.isfinite(total):
            return math.sqrt(total) / scale
        if math.isnan(total):
            return total
        # an Inf gradient, or finite float64 ones whose squares overflow: scale by the
        # largest magnitude on any rank first
        peak = self._max_over_ranks(max(_peak(s.grad) for s in self._shards))
        if not math.isfinite(peak) or peak == 0.0:
            return peak
        total = self._sum_over_ranks(sum(_scaled_squares(s.grad, peak) for s in self._shards))
        return peak * math.sqrt(total) / scale

    def _gathered(self, value: float) -> np.ndarray:
        buffer = self._norm_buffer
        buffer.fill(0.0)
        buffer[self.rank] = value
        if self.world_size > 1:
            self.comm.allgather(buffer, [1] * self.world_size)
        return buffer

    def _sum_over_ranks(self, value: float) -> float:
        total = 0.0
        for x in self._gathered(value):
            total += float(x)
        return total

    def _max_over_ranks(self, value: float) -> float:
        return float(np.max(self._gathered(value)))

    def _reduce_totals(self, totals: np.ndarray) -> None:
        """The multi-pass rules' hook: a pass's per-segment totals summed over the ranks."""
        if self.world_size == 1:
            return
        if totals.flags.c_contiguous:
            self.comm.allreduce(totals)
        else:
            contiguous = np.ascontiguousarray(totals)
            self.comm.allreduce(contiguous)
            totals[...] = contiguous

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, *, root: int | None = 0) -> dict[str, Any] | None:
        """The consolidated state: one process's :meth:`~fastmoments.Adam.state_dict`.

        Collective. The shards of every state buffer are gathered into whole buffers,
        so the dict is the one a single-process optimizer over the same FlatParams
        would give, and it loads into one (or into a ShardedOptimizer at any number of
        ranks).

        Parameters
        ----------
        root
            The rank that receives it (the others get ``None``); ``None``: every rank.
        """
        self._check_root(root)
        local = self.optimizer.state_dict()
        mine = root is None or self.rank == root
        if not self.sharded:
            return local if mine else None
        state = [{name: self._gathered_buffer(s, buf, root) for name, buf in buffers.items()}
                 for s, buffers in zip(self._shards, local["state"])]
        if not mine:
            return None
        groups = [dict(hyper, num_params=len(s.flat.params), numel=s.flat.numel)
                  for s, hyper in zip(self._shards, local["param_groups"])]
        return {**local, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any] | None, *, root: int = 0) -> None:
        """Load a consolidated state dict (from :meth:`state_dict`, or from a
        single-process optimizer of the same class over FlatParams of the same shapes).

        Collective. Only rank ``root``'s ``state_dict`` is read (the others may pass
        ``None``); each rank receives its shards. Everything is checked before anything
        changes, and a refusal raises the same error on every rank.
        """
        self._check_root(root)
        meta, _ = together(self.comm, _OWNER, lambda: (
            self._check_consolidated(state_dict) if self.rank == root else None, None))
        meta = self._from_root(meta, root)
        state = []
        for s, names in zip(self._shards, meta["state_names"]):
            k = len(state)
            state.append({
                name: self._scattered_buffer(
                    s, state_dict["state"][k][name] if self.rank == root else None, root)
                for name in names})
        groups = [dict(hyper, num_params=len(group.params), numel=group.numel)
                  for group, hyper in zip(self.optimizer._groups, meta["param_groups"])]
        local = {key: meta[key] for key in ("format_version", "optimizer", "step_count",
                                            "host_state")}
        local.update(param_groups=groups, state=state)
        together(self.comm, _OWNER, lambda: (plan_load(self.optimizer, local), None))
        self.optimizer.load_state_dict(local)

    def save(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Write one consolidated checkpoint, in the single-process format, from rank 0.

        Collective. The state is gathered on rank 0, which writes ``path`` atomically
        as :func:`fastmoments.checkpoint.save` does (with the parameters, by default);
        an error there is raised on every rank.
        """
        sd = self.state_dict(root=0)

        def write() -> tuple[None, None]:
            if self.rank == 0:
                arrays = [p for s in self._shards for p in s.flat.params] if params else None
                checkpoint.write_atomic(path, checkpoint.to_arrays(
                    sd, self.skipped_steps, arrays, self._cls.__name__))
            return None, None

        together(self.comm, _OWNER, write)

    def load(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Restore a checkpoint written by :meth:`save` at any number of ranks, or by a
        single-process optimizer's ``save``.

        Collective. Rank 0 reads ``path`` (only its file system needs it) and sends each
        rank its shards; the parameters are broadcast. Raises ``CheckpointError`` on
        every rank, changing nothing, when the file does not fit.
        """
        owner = self._cls.__name__
        where = f"{_OWNER}({owner}).load({os.fspath(path)!r})"
        flats = [s.flat for s in self._shards]

        def read() -> tuple[Any, None]:
            if self.rank != 0:
                return None, None
            return checkpoint.read(path, owner, [(f.numel, f.dtype) for f in flats],
                                   [p for f in flats for p in f.params], params), None

        found, _ = together(self.comm, _OWNER, read)
        sd, skipped, entries = found if self.rank == 0 else (None, None, None)
        try:
            self.load_state_dict(sd, root=0)
        except (TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"{where}: {exc}") from None
        self.skipped_steps = self._from_root(skipped, 0)
        if not self.sharded:
            self.optimizer.skipped_steps = self.skipped_steps
        if self._from_root(bool(entries), 0):
            index = 0
            for flat in flats:
                if self.rank == 0:
                    for j, p in enumerate(flat.params):
                        copy_into(p, entries[f"param.{index + j}"])
                index += len(flat.params)
                self.comm.bcast(flat.data, 0)

    def _check_root(self, root: int | None) -> None:
        if root is not None and not (isinstance(root, int) and 0 <= root < self.world_size):
            raise ValueError(f"root: expected a rank in [0, {self.world_size}), got {root!r}")

    def _check_consolidated(self, sd: Any) -> dict[str, Any]:
        """Rank ``root``: the sizes of a consolidated state dict, checked against the
        FlatParams; returns what every rank needs besides the buffers."""
        if not isinstance(sd, dict):
            raise TypeError(f"state_dict: expected a dict, got {type(sd).__name__}")
        missing = {"format_version", "optimizer", "step_count", "param_groups", "state",
                   "host_state"} - set(sd)
        if missing:
            raise ValueError(f"state_dict: missing keys {sorted(missing)}")
        for key in ("param_groups", "state", "host_state"):
            if not isinstance(sd[key], (list, tuple)) or not all(
                isinstance(x, dict) for x in sd[key]
            ):
                raise TypeError(f"state_dict: {key} should be a list of dicts, one per group")
            if len(sd[key]) != len(self._shards):
                raise ValueError(f"state_dict: has {len(sd[key])} param groups, the optimizer "
                                 f"has {len(self._shards)}")
        for k, (s, hyper, buffers) in enumerate(zip(self._shards, sd["param_groups"],
                                                    sd["state"])):
            flat = s.flat
            if hyper.get("num_params") != len(flat.params) or hyper.get("numel") != flat.numel:
                raise ValueError(
                    f"state_dict: param_groups[{k}]: has {hyper.get('num_params')} params / "
                    f"{hyper.get('numel')} elements, the optimizer's group has "
                    f"{len(flat.params)} / {flat.numel}")
            for name, a in buffers.items():
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"state_dict: state[{k}][{name!r}] is not a NumPy array")
                if a.shape != (flat.numel,) or a.dtype != flat.dtype:
                    raise ValueError(
                        f"state_dict: state[{k}][{name!r}] has shape {a.shape} and dtype "
                        f"{a.dtype}, expected ({flat.numel},) and {flat.dtype}")
        return {"format_version": sd["format_version"], "optimizer": sd["optimizer"],
                "step_count": sd["step_count"], "param_groups": [dict(g) for g in
                                                                 sd["param_groups"]],
                "host_state": [dict(h) for h in sd["host_state"]],
                "state_names": [list(buffers) for buffers in sd["state"]]}

    def _from_root(self, value: Any, root: int) -> Any:
        return self.comm.allgather_object(value if self.rank == root else None)[root]

    def _gathered_buffer(self, s: _Shard, local: np.ndarray, root: int | None
                         ) -> np.ndarray | None:
        """The whole buffer from every rank's shard, on ``root`` (None: everywhere)."""
        if self.world_size == 1:
            return local
        if root is None:
            whole = np.empty(s.flat.numel, dtype=local.dtype)
            whole[s.start:s.stop] = local
            self.comm.allgather(whole, s.counts)
            return whole
        whole = np.empty(s.flat.numel, dtype=local.dtype) if self.rank == root else None
        self.comm.gather(np.ascontiguousarray(local), whole, s.counts, root)
        return whole

    def _scattered_buffer(self, s: _Shard, whole: np.ndarray | None, root: int) -> np.ndarray:
        """This rank's part of ``root``'s buffer ``whole``: its shard, or all of it."""
        dtype = s.flat.dtype
        if not self.sharded:
            out = (np.array(whole, dtype=dtype) if self.rank == root
                   else np.empty(s.flat.numel, dtype=dtype))
            if self.world_size > 1:
                self.comm.bcast(out, root)
            return out
        out = np.empty(s.stop - s.start, dtype=dtype)
        send = np.ascontiguousarray(whole) if self.rank == root else None
        if self.world_size == 1:
            out[...] = send
        else:
            self.comm.scatter(send, out, s.counts, root)
        return out

    def __repr__(self) -> str:
        mode = "sharded" if self.sharded else "replicated"
        return (f"ShardedOptimizer({self._cls.__name__}, rank {self.rank} of "
                f"{self.world_size}, {mode}, shards={self.shards})")


def _flat_groups(params: Any) -> list[tuple[FlatParams, dict[str, Any]]]:
    """``params`` as (FlatParams, the group's other keys) pairs."""
    hint = ("a FlatParams or a list of param-group dicts whose 'params' is a FlatParams "
            "(pack the arrays with fm.FlatParams: a shard is a contiguous run of one buffer)")
    if isinstance(params, FlatParams):
        return [(params, {})]
    if isinstance(params, dict):
        params = [params]
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError(f"params: expected {hint}, got {type(params).__name__}")
    groups = []
    for k, group in enumerate(params):
        if not isinstance(group, dict) or not isinstance(group.get("params"), FlatParams):
            raise TypeError(f"params[{k}]: expected {hint}, got "
                            f"{type(group).__name__}"
                            + (f" with {type(group.get('params')).__name__} params"
                               if isinstance(group, dict) else ""))
        groups.append((group["params"], {key: v for key, v in group.items() if key != "params"}))
    if len({id(flat) for flat, _ in groups}) != len(groups):
        raise ValueError("params: a FlatParams appears in two param groups")
    return groups


def _cut(s: _Shard, world_size: int, pieces: bool) -> None:
    """The params a rank's optimizer steps: its shard of the buffer, one array (an
    element-wise rule), or cut at the tensors' edges (a multi-pass rule, with the
    ``Parts`` that say which part of which tensor each piece is)."""
    flat, start, stop = s.flat, s.start, s.stop
    if world_size == 1:
        s.grad = flat.grad  # nothing to sum: step on the gradient buffer itself
    elif flat.device == "cuda":
        from ..kernels import cuda as _gpu

        s.grad = _gpu.full(stop - start, 0.0, flat.dtype)
    else:
        s.grad = np.zeros(stop - start, dtype=flat.dtype)
    if not pieces:
        s.pieces, s.grads = [flat.data[start:stop]], [s.grad[: stop - start]]
        return
    offsets = flat.offsets
    tensors, starts = [], []
    for j in range(len(flat.shapes)):
        lo, hi = max(start, int(offsets[j])), min(stop, int(offsets[j + 1]))
        if hi > lo:
            s.pieces.append(flat.data[lo:hi])
            s.grads.append(s.grad[lo - start: hi - start])
            tensors.append(j)
            starts.append(lo - int(offsets[j]))
    if not s.pieces:  # an empty shard: one empty piece, in no tensor's window
        s.pieces, s.grads = [flat.data[start:start]], [s.grad[0:0]]
        tensors, starts = [0], [0]
    s.parts = (list(flat.shapes), Parts(np.array(tensors, dtype=np.int64),
                                        np.array(starts, dtype=np.int64)))


def _sum_squares(buffer: Any) -> float:
    if isinstance(buffer, np.ndarray):
        return host.sum_squares(buffer, buffer.shape[0] >= config.parallel_threshold)
    from ..kernels import cuda as _gpu

    return _gpu.sum_squares([buffer])


def _host(buffer: Any) -> np.ndarray:
    return buffer if isinstance(buffer, np.ndarray) else buffer.copy_to_host()


def _peak(buffer: Any) -> float:
    a = _host(buffer)
    return float(np.max(np.abs(a))) if a.size else 0.0


def _scaled_squares(buffer: Any, peak: float) -> float:
    scaled = _host(buffer).astype(np.float64) / peak
    return float(np.dot(scaled, scaled))
