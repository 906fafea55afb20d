"""The class layer shared by every optimizer: options, the step and its short path.

:class:`Optimizer` keeps the param groups (:mod:`._groups`), validates the options,
and runs ``step()``: gradients are collected and checked (:mod:`._grads`), the global
norm decides skipping and clipping, the subclass computes the rule's per-step scalars
on the host, and :mod:`._dispatch` runs the kernel. ``state_dict`` and checkpoints
live in :mod:`._state` and :mod:`fastmoments.checkpoint`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from .. import checkpoint
from ..config import config
from ..kernels import host
from ..kernels.compile import start_compiling
from ..kernels.elementwise import Kernel
from ..kernels.precision import resolve as resolve_precision
from . import _precision, _state
from ._checks import (
    check_betas,
    check_flag,
    check_lr,
    check_number,
    check_optional_positive,
    is_number,
    lr_at,
)
from ._dispatch import pack as pack_scalars
from ._dispatch import run
from ._grads import collect, global_norm, record_host_grads
from ._groups import Group, ParamGroup, as_group_dicts, check_no_aliasing, state_buffers
from ._scalars import clip_coefficient
from ._specialize import specialize

__all__ = ["Optimizer", "ShortPath"]

_NONFINITE_POLICIES = ("apply", "skip", "raise")
_INF = math.inf
_LONE_SOURCES = (None,)  # step()'s sources for one group of host arrays (the list path)


class ShortPath(NamedTuple):
    """The fields of what ``step()`` repeats when nothing it decided can have changed
    since the last step (see :meth:`Optimizer._build_short_path`), declared once.

    The optimizer keeps them as a plain tuple (``tuple(ShortPath(...))``): CPython's
    fast paths for indexing and unpacking apply to exact tuples only, and a 10-element
    step is a microsecond. ``step()`` unpacks them in this order (a test compares its
    assignment with these names).
    """

    flat: bool  # gradients from the FlatParams' own buffer (step()); else a list
    group: Group  # the only group
    threshold: int  # config.parallel_threshold when it was built
    pack: Callable[..., None]  # writes the scalars into the group's scalar array
    grad_mult: float  # 1.0, or -1.0 with maximize
    callee: Callable[..., None]  # the compiled loop
    arguments: tuple  # its arguments (buffers, address table, scalar array)
    repeats: bool  # the class's _scalars_repeat
    scalars: Callable[..., tuple]  # the class's _scalars, specialized for the kernel
    named: Callable[..., tuple]  # the kernel's named scalars (see Optimizer._scalars)


class Optimizer:
    """Base class: param groups, flat state, validation and the fused step.

    Subclasses define the hyperparameter checks (``_check``), the rule variant
    (``_select``), the initial state values (``_initial``) and the per-step host
    scalars (``_scalars``, by name). Everything else -- groups, flat state buffers,
    gradient validation, the non-finite policy, clipping, checkpoints -- lives here once.
    """

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        nonfinite: str = "apply",
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        state_dtype: str | None = None,
        state_rounding: str | dict[str, str] = "auto",
        master_weights: bool | None = None,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        self.defaults = dict(defaults)
        self._check(self.defaults)
        self._nonfinite, self._max_grad_norm, self._clip_value = "apply", None, None
        self.nonfinite = nonfinite  # validated by the property setters
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value
        self.step_count = 0
        self.skipped_steps = 0
        self.last_step_skipped = False
        self.last_grad_norm: float | None = None

        group_dicts = as_group_dicts(params, owner)
        self._groups: list[Group] = []
        self.param_groups: list[dict[str, Any]] = []
        index = 0
        for k, gd in enumerate(group_dicts):
            unknown = set(gd) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{owner}: unknown param-group keys {sorted(unknown)}")
            hyper = ParamGroup({**self.defaults, **gd})
            self._check_group(hyper, k)
            group = Group(hyper, index, owner)
            index += len(group.params)
            self._groups.append(group)
            self.param_groups.append(hyper)
        all_params = [p for g in self._groups for p in g.params]
        check_no_aliasing(all_params, owner)
        self._precision_options(state_dtype, state_rounding, master_weights, seed)
        self._num_params = len(all_params)
        # every group a FlatParams: step() reads their (fixed) .grad buffers
        self._flat_grads = (
            [g.flat.grad for g in self._groups]
            if all(g.flat is not None for g in self._groups) else None
        )
        # (group, its FlatParams' gradient buffer) pairs: step(None)'s loop
        self._flat_pairs = (
            list(zip(self._groups, self._flat_grads)) if self._flat_grads is not None else None
        )
        # step(list)'s short path: ((the group, None),) when the only group is host
        # arrays (None: their sources, the list path), else None
        only = self._groups[0] if len(self._groups) == 1 else None
        self._lone_pairs = (
            ((only, None),)
            if only is not None and only.flat is None and only.device != "cuda" else None
        )
        # step()'s short path applies (see ShortPath): one group, on the CPU, and this
        # class's step is the element-wise one
        self._short_path_capable = (len(self._groups) == 1 and self._groups[0].device == "cpu"
                                    and type(self)._run is Optimizer._run
                                    and self._groups[0].precision is None)
        # the rule scalars the short path last packed into the group's scalars array
        # (None: pack them); a rule whose scalars stay the same step after step (SGD,
        # Adagrad, RMSprop, ... with a constant lr) then skips the packing
        self._packed_scalars: tuple | None = None
        self._short_path: tuple | None = None  # a ShortPath as a plain tuple
        for group in self._groups:
            self._prepare(group, fresh=True)

    # ------------------------------------------------------------ subclass API
    #: hyperparameters checked as finite numbers >= 0, and as bools (see ``_check``)
    _nonneg: ClassVar[tuple[str, ...]] = ("eps", "weight_decay")
    _bools: ClassVar[tuple[str, ...]] = ("maximize",)

    def _check(self, hyper: dict[str, Any]) -> None:
        """Raise ValueError/TypeError for invalid hyperparameters: lr, the numbers of
        ``_nonneg``, the flags of ``_bools`` and ``betas``; subclasses add their own."""
        owner = type(self).__name__
        check_lr(hyper["lr"], owner)
        for key in self._nonneg:
            check_number(hyper, key, owner)
        for key in self._bools:
            check_flag(hyper, key, owner)
        if "betas" in hyper:
            check_betas(hyper, owner)

    def _select(self, hyper: dict[str, Any]) -> Kernel:
        raise NotImplementedError

    def _initial(self, hyper: dict[str, Any]) -> dict[str, float]:
        """Initial value of each state buffer (default 0)."""
        return {}

    def _initial_host_state(self, hyper: dict[str, Any]) -> dict[str, float]:
        return {}

    #: whether the rule's scalars can stay the same from step to step (a constant lr and
    #: no bias correction: SGD, Adagrad, RMSprop, Adadelta, Lion); step()'s short path
    #: then compares them with the last ones it packed and skips the packing when equal
    _scalars_repeat: ClassVar[bool] = False

    def _scalars(self, hyper: dict[str, Any], lr: float, step: int, host: dict,
                 named: Callable[..., tuple]) -> tuple:
        """The rule's scalars after ``grad_mult, clip_value`` for step ``step`` (1-based).

        ``named`` is the selected kernel's :attr:`~fastmoments.kernels.elementwise.Kernel.named`:
        a function whose keyword parameters are the rule function's scalar parameters, which
        returns them in the rule's order. Return ``named(name=value, ...)``: a misspelt,
        missing or extra name raises instead of shifting the values.
        """
        raise NotImplementedError

    def traffic(self) -> list[list[tuple[int, ...]]]:
        """The memory traffic of one step, per param group (what the benchmarks' ceilings
        are built from): a list of passes, each ``(buffers read, buffers written,
        elements)`` and, when some written buffers are not read by the pass, a fourth
        number (how many: a store-only stream costs more than an in-place one).

        Example: fp32 Adam over a FlatParams of ``n`` elements gives ``[[(4, 3, n)]]``
        (reads p, g, m, v; writes p, m, v: 28 bytes per element).
        """
        return [self._passes(group) for group in self._groups]

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        """The memory traffic of one step over ``group`` (see :meth:`traffic`):
        ``(buffers read, buffers written, elements)`` per pass over its buffers, and a
        fourth number when some of the written buffers are not read by the pass (a
        store-only stream costs more than an in-place one; its ceiling has it too).
        An element-wise rule makes one pass: it reads the parameter, the gradient
        and each state buffer, and writes the parameter and each state buffer. Buffers
        are counted, not bytes: a state stored in fewer bits is one buffer, and an int8
        state's per-block scales and small tensors' values, far from full-size, are not
        counted (the bench builds the ceilings of such states from their widths)."""
        n_states = sum(1 for name in group.state if not name.endswith(("__absmax",
                                                                        "__float32")))
        return [(2 + n_states, 1 + n_states, group.numel)]

    # ------------------------------------------------------------------ state
    def _prepare(self, group: Group, fresh: bool) -> None:
        """(Re)build the kernel choice and state buffers for the group's hyperparameters."""
        kernel = self._select(group.hyper)
        init = self._initial(group.hyper)
        if group.precision is not None:  # buffers stored in fewer bits (see _precision)
            kernel = _precision.prepare(group, kernel, init, fresh)
        else:
            state = state_buffers(group, kernel.state_names, init, fresh)
            group.state = state
            group.states = tuple(state.values())
        group.kernel = kernel
        group.scalars, group.pack, group.scalar_bytes = host.scalar_packer(
            len(kernel.scalar_names), group.compute_dtype)
        # new state buffers, scalars array and hyperparameters: decide again
        self._forget_plans(group)
        # what step() passes to _scalars: a plain-dict copy of the hyperparameters (a
        # lookup costs half of one in the ParamGroup, a dict subclass); every edit of
        # the group goes through _prepare again. lr is read from the group itself (the
        # ``lr`` property sets it without an edit mark).
        group.values = dict(group.hyper)
        if fresh:
            group.host_state = self._initial_host_state(group.hyper)
        group.hyper.dirty = False

    def _precision_options(self, state_dtype: str | None, state_rounding: Any,
                           master_weights: bool | None, seed: int) -> None:
        """Validate ``state_dtype``, ``state_rounding``, ``master_weights`` and ``seed``
        and give each group that stores its buffers in fewer bits its
        :class:`~fastmoments.kernels.precision.Precision` (see :mod:`._precision`)."""
        owner = type(self).__name__
        self.state_dtype, self.state_rounding = state_dtype, state_rounding
        self.master_weights, self.seed = master_weights, seed
        reduced = False
        for group in self._groups:
            found = resolve_precision(group.dtype, state_dtype, state_rounding,
                                      master_weights, seed, owner)
            if found is not None:
                if type(self)._run is not Optimizer._run:
                    raise ValueError(
                        f"{owner}: state_dtype={state_dtype!r} with {group.dtype} parameters "
                        f"is not supported yet for {owner}, which runs passes of its own "
                        "(reduced precision covers the single-pass rules); use "
                        "state_dtype=None and float32/float64 parameters")
                _precision.attach(group, found)
                reduced = True
        if reduced:  # the step writes the key of the random bits first (no short path)
            self._run = _precision.run

    def _check_group(self, hyper: dict[str, Any], k: int) -> None:
        """``_check``, naming the param group in the message."""
        try:
            self._check(hyper)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{exc} (param_groups[{k}])") from None

    def _revalidate(self) -> None:
        """Hyperparameters edited through ``param_groups``: check every edited group,
        then rebuild their kernels and state (so that a refusal changes nothing)."""
        dirty = [(k, g) for k, g in enumerate(self._groups) if g.hyper.dirty]
        for k, group in dirty:
            if group.hyper.get("params") is not group.params_entry:
                raise ValueError(
                    f"param_groups[{k}]['params']: the parameters of a group cannot be "
                    "replaced after the optimizer is built (its state is laid out for "
                    "them); put the original entry back, or build a new optimizer"
                )
            self._check_group(group.hyper, k)
        for _, group in dirty:
            self._prepare(group, fresh=False)

    # --------------------------------------------------------- step options
    @property
    def nonfinite(self) -> str:
        """What a step does when a gradient holds NaN or Inf: ``"apply"`` (as torch),
        ``"skip"`` (change nothing) or ``"raise"``. Settable (validated)."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        if value not in _NONFINITE_POLICIES:
            raise ValueError(f"{type(self).__name__}: nonfinite must be one of "
                             f"{_NONFINITE_POLICIES}, got {value!r}")
        self._nonfinite = value
        self._step_options()

    @property
    def max_grad_norm(self) -> float | None:
        """Clip the global gradient norm to this (None: off). Settable (validated)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        self._max_grad_norm = check_optional_positive(value, "max_grad_norm",
                                                       type(self).__name__)
        self._step_options()

    @property
    def clip_value(self) -> float | None:
        """Clip each gradient element to ``[-clip_value, clip_value]`` (None: off).
        Settable (validated)."""
        return self._clip_value

    @clip_value.setter
    def clip_value(self, value: float | None) -> None:
        self._clip_value = check_optional_positive(value, "clip_value", type(self).__name__)
        self._step_options()

    def _step_options(self) -> None:
        # what step() reads on every call, derived once per change of the options
        self._needs_norm = self._nonfinite != "apply" or self._max_grad_norm is not None
        self._clip_bound = math.inf if self._clip_value is None else self._clip_value
        self._forget_plans()

    def _forget_plans(self, *groups: Group) -> None:
        """Invalidate every cached plan that depends on what changed: step()'s short
        path always, and the given groups' cached loop calls and plain-variant choice
        (after a rebuild of their kernel, state or hyperparameters)."""
        self._short_path = None
        self._packed_scalars = None
        for group in groups:
            group.forget_plans()

    @property
    def state(self) -> list[dict[str, Any]]:
        """Per-parameter state: a list (one entry per parameter) of dicts of views.

        An int8 state (``state_dtype="int8"``) has no per-parameter view: its codes share
        scales by blocks of the whole buffer. It is given as its dequantized values, a
        read-only float32 copy; its block scales are not listed.
        """
        out = []
        for group in self._groups:
            views = {}
            int8 = group.precision is not None and group.precision.state_dtype == "int8"
            for name, buf in group.state.items():
                if not int8 or name == _precision.MASTER:  # the master copy: float32
                    views[name] = group.views(name)
                elif buf.shape == (group.numel,) and buf.dtype.itemsize == 1:
                    parts = {n: group.state[n]
                             for n in _precision.stored_layout(group, name, "int8")}
                    values = _precision.decode_state(group, name, parts, "int8")
                    values.flags.writeable = False
                    views[name] = [values[int(group.offsets[j]):int(group.offsets[j + 1])]
                                   .reshape(p.shape) for j, p in enumerate(group.params)]
            for j in range(len(group.params)):
                out.append({name: v[j] for name, v in views.items()})
        return out

    # --------------------------------------------------------------------- lr
    @property
    def lr(self) -> float:
        """The learning rate of the next step (of the first param group).

        Setting it changes every group; a float or a schedule (a callable of the number
        of steps taken) is accepted and validated.
        """
        return lr_at(self._groups[0].hyper["lr"], self.step_count)

    @lr.setter
    def lr(self, value: float | Callable[[int], float]) -> None:
        check_lr(value, type(self).__name__)
        for group in self._groups:
            dict.__setitem__(group.hyper, "lr", value)

    # ------------------------------------------------------------------- step
    def zero_grad(self) -> None:
        """Zero the flat gradient buffer of every FlatParams group."""
        for group in self._groups:
            if group.flat is not None:
                group.flat.zero_grad()

    def step(self, grads: Any = None, *, grad_scale: float = 1.0) -> float | None:
        """Update every parameter in place with one fused pass per group.

        Parameters
        ----------
        grads
            One gradient per parameter (a list in the order of the params, across
            groups), or, when every group is a ``FlatParams``, ``None`` (use their
            ``.grad`` buffers) or a single flat array (one group).
        grad_scale
            The loss scale the gradients were multiplied by: they are divided by it
            inside the kernel (mixed-precision training).

        Returns
        -------
        float or None
            The global gradient norm (after unscaling, before clipping) when it was
            computed (``max_grad_norm`` set), otherwise ``None``.
        """
        short = self._short_path
        if short is not None and type(grad_scale) is float and grad_scale == 1.0 and (
            grads is None if short[0] else type(grads) is list and len(grads) == self._num_params
        ):  # the short path (see ShortPath): the same step as below, decided already
            (flat, group, threshold, pack, grad_mult, callee, arguments, repeats, scalars,
             named) = short
            if not group.hyper.dirty and config.parallel_threshold == threshold:
                if not flat:
                    record_host_grads(group, grads, 0)
                lr = group.hyper["lr"]
                if callable(lr):
                    lr = lr_at(lr, self.step_count)
                step = self.step_count + 1
                rule_scalars = scalars(self, group.values, lr, step, group.host_state, named)
                # the scalars array holds them already if they equal the last ones packed
                # (SGD, Adagrad, ... with a constant lr; see _scalars_repeat): equal floats
                # are the same bits, but for 0.0 and -0.0, which an lr of zero can make
                if not repeats or rule_scalars != self._packed_scalars or not lr:
                    try:
                        pack(group.scalar_bytes, 0, grad_mult, _INF, *rule_scalars)
                    except OverflowError:
                        pack_scalars(group, (grad_mult, _INF) + rule_scalars)
                    self._packed_scalars = rule_scalars
                callee(*arguments)
                # last_step_skipped and last_grad_norm stay False and None: the step
                # that built the short path set them, and no norm is computed here
                self.step_count = step
                return None
        if (type(grad_scale) is not float or grad_scale != 1.0) and not (
            is_number(grad_scale) and math.isfinite(grad_scale) and grad_scale > 0
        ):
            raise ValueError(f"grad_scale: expected a finite number > 0, got {grad_scale!r}")
        if grads is None and self._flat_grads is not None:  # FlatParams' own buffers
            sources = self._flat_grads
            pairs = self._flat_pairs
        elif (
            self._lone_pairs is not None and type(grads) is list
            and len(grads) == self._num_params
        ):  # the only group is host arrays: no per-group bookkeeping
            pairs = self._lone_pairs
            record_host_grads(pairs[0][0], grads, 0)
            sources = _LONE_SOURCES
        else:
            sources = self._collect(grads)
            groups = self._groups
            pairs = ((groups[0], sources[0]),) if len(groups) == 1 else zip(groups, sources)
        for group in self._groups:
            if group.hyper.dirty:
                self._revalidate()
                break
        if len(self._groups) > 1:  # a schedule may refuse: ask each before any group changes
            for group in self._groups:
                if callable(group.hyper["lr"]):
                    lr_at(group.hyper["lr"], self.step_count)
        clip_coef = 1.0
        norm = None
        if self._needs_norm:  # nonfinite != "apply" or max_grad_norm set
            norm = global_norm(self._groups, grads, sources, grad_scale)
            if not math.isfinite(norm):
                if self.nonfinite == "raise":
                    raise FloatingPointError(
                        f"{type(self).__name__}.step: a gradient contains NaN or Inf; nothing "
                        "was changed (nonfinite='raise')"
                    )
                if self.nonfinite == "skip":
                    self.skipped_steps += 1
                    self.last_step_skipped = True
                    self.last_grad_norm = norm
                    return norm
            if self.max_grad_norm is not None and math.isfinite(norm):
                clip_coef = clip_coefficient(self.max_grad_norm, norm)
        step = self.step_count + 1
        clip_value = self._clip_bound
        grad_mult = clip_coef / grad_scale
        for group, source in pairs:
            values = group.values
            lr = group.hyper["lr"]
            if callable(lr):
                lr = lr_at(lr, self.step_count)
            rule_scalars = self._scalars(values, lr, step, group.host_state,
                                         group.kernel.named)
            self._run(group, source, (-grad_mult if values["maximize"] else grad_mult,
                                      clip_value) + rule_scalars)
        start_compiling()  # parallel loops queued by this step, if any (see _run)
        self.step_count = step
        self.last_step_skipped = False
        self.last_grad_norm = norm
        self._packed_scalars = None  # the short path packs its first step's scalars
        if self._short_path_capable and grad_mult == 1.0 and (
            pairs is self._lone_pairs or pairs is self._flat_pairs
        ):
            self._short_path = self._build_short_path()
        return norm

    def _collect(self, grads: Any) -> list[Any]:
        """Validate ``grads`` and say where each group reads them from (see
        :func:`._grads.collect`); nothing is changed when this raises."""
        return collect(self._groups, grads, self._num_params, self._flat_grads)

    def _build_short_path(self) -> tuple | None:
        """What step()'s short path needs to repeat the step just taken, or None.

        A step over the only group, on the CPU, with no norm to compute, no clipping
        and no loss scale, whose hyperparameters are unchanged since the last step, and
        with gradients given the same way (a list, or ``None`` for a FlatParams' own
        buffer), does what the last one did with new scalars: same loop, same arguments
        (a list's addresses are written into the group's table). The short path
        skips the choices that led there; anything that could change them
        (``_forget_plans``, an edit of the group, the parallel threshold) sends the
        step down the full path again.
        """
        group = self._groups[0]
        call = group.last_call
        if self._needs_norm or self._clip_bound != _INF or call is None:
            return None
        grad_mult = -1.0 if group.values["maximize"] else 1.0
        # no bound method of the optimizer here: it would make the optimizer reference
        # itself, and only the cyclic GC would free its state
        return tuple(ShortPath(
            flat=group.flat is not None, group=group, threshold=config.parallel_threshold,
            pack=group.pack, grad_mult=grad_mult, callee=call[1], arguments=call[3],
            repeats=self._scalars_repeat,
            scalars=specialize(type(self)._scalars, group.kernel.named.names),
            named=group.kernel.named))

    #: ``_dispatch.run`` (a subclass with passes of its own overrides it)
    _run = staticmethod(run)

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """The optimizer state as a plain dict of NumPy arrays and Python scalars.

        Keys: ``format_version``, ``optimizer`` (class name), ``step_count``,
        ``param_groups`` (hyperparameters and sizes, one dict per group; a schedule
        ``lr`` is stored as its current value with ``lr_schedule`` = its repr),
        ``state`` (one dict of flat state buffers per group, copies) and
        ``host_state`` (per-group scalar state, e.g. NAdam's ``mu_product``).
        """
        return _state.state_dict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; everything is validated before anything changes."""
        _state.load_state_dict(self, state_dict)

    def save(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Write a checkpoint (state, step count, hyperparameters, and the params) atomically.

        See :func:`fastmoments.checkpoint.save`: a temporary file in the same folder,
        fsynced, then renamed over ``path``; a crash leaves the old or the new file.
        """
        checkpoint.save(self, path, params=params)

    def load(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Restore a checkpoint written by :meth:`save`; validated in full before any change.

        See :func:`fastmoments.checkpoint.load`. Raises ``CheckpointError`` (a
        ``ValueError``) for truncated, foreign or unsafe files, changing nothing.
        """
        checkpoint.load(self, path, params=params)

    # -------------------------------------------------------------- display
    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self._groups):
            lines.append(f"Parameter Group {i}: {len(group.params)} arrays, {group.numel} "
                         f"elements, {group.dtype}, {group.device}")
            for key, value in group.hyper.items():
                if key != "params":
                    lines.append(f"    {key}: {value!r}")
        lines.append(")")
        return "\n".join(lines)
