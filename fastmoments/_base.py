"""The class layer shared by every optimizer: groups, state, validation, the step."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from . import _cpu
from ._backend import as_cuda_array, config, device_address, is_cuda_array
from ._jit import NEUTRAL, Kernel, compile_in_background, loop_ready, start_compiling
from .flat import FlatParams

__all__ = ["Optimizer", "Group", "STATE_DICT_VERSION"]

STATE_DICT_VERSION = 1
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NONFINITE_POLICIES = ("apply", "skip", "raise")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


_LONE_SOURCES = (None,)  # step()'s sources for one group of host arrays (the list path)


class ParamGroup(dict):
    """A param group: a plain dict of hyperparameters (and ``"params"``), as in torch.

    Edits (``opt.param_groups[0]["lr"] = 0.1``) mark it dirty, so the next step
    validates the new values before using them, at no cost to steps without edits.
    """

    dirty = False

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.dirty = True

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self.dirty = True


class ParamList(list):
    """The ``"params"`` entry of a param group built from a list of arrays: a list that
    refuses changes (the optimizer's state buffers and address tables are laid out for
    exactly these arrays; build a new optimizer to train other ones)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "param_groups[...]['params'] cannot be changed after the optimizer is built "
            "(its state is laid out for these arrays); build a new optimizer instead"
        )

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse


class Group:
    """Internal view of one param group: its arrays, flat state buffers and addresses."""

    __slots__ = (
        "hyper", "params", "flat", "device", "dtype", "offsets", "numel", "state",
        "host_state", "param_addresses", "grad_addresses", "like", "kernel", "index_base",
        "scalars", "states", "pack", "scalar_bytes", "grad_objects", "calls", "plain",
        "values", "params_entry", "layouts", "last_call", "table",
    )

    def __init__(self, hyper: dict, index_base: int, owner: str) -> None:
        self.hyper = hyper
        self.index_base = index_base
        raw = hyper["params"]
        self.flat: FlatParams | None = raw if isinstance(raw, FlatParams) else None
        if self.flat is not None:
            params = list(self.flat.params)
            self.device = self.flat.device
        else:
            if _is_array_like(raw):
                raise TypeError(
                    f"{owner}: params should be a list of arrays, a FlatParams or a list of "
                    f"param-group dicts, got a single {type(raw).__name__}; wrap it in a list"
                )
            try:
                params = list(raw)
            except TypeError:
                raise TypeError(
                    f"{owner}: params should be a list of arrays, a FlatParams or a list of "
                    f"param-group dicts, got {type(raw).__name__}"
                ) from None
            params = [_check_param(p, index_base + i, owner) for i, p in enumerate(params)]
            self.device = "cuda" if params and is_cuda_array(params[0]) else "cpu"
        if not params:
            raise ValueError(f"{owner}: a param group has an empty list of params")
        devices = {("cuda" if is_cuda_array(p) else "cpu") for p in params}
        if len(devices) != 1:
            raise TypeError(f"{owner}: params of one group must all be on one device")
        dtypes = {np.dtype(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise TypeError(
                f"{owner}: params of one group must share one dtype, got "
                f"{sorted(str(d) for d in dtypes)}; put each dtype in its own param group"
            )
        self.dtype = dtypes.pop()
        self.params = params
        # the group's "params" entry (the FlatParams, or the arrays in a list that
        # refuses changes); replacing it is refused on the next step
        self.params_entry = self.flat if self.flat is not None else ParamList(params)
        hyper["params"] = self.params_entry
        sizes = [int(p.size) for p in params]
        # the list path's table (one argument of its loop): rows of the parameters'
        # addresses, the gradients' addresses (written by each step) and the offsets;
        # ``param_addresses``, ``grad_addresses`` and ``offsets`` are views of its rows
        self.table = np.zeros((3, len(params) + 1), dtype=np.int64)
        self.offsets = self.table[2]
        np.cumsum(sizes, out=self.offsets[1:])
        self.numel = int(self.offsets[-1])
        self.like = np.empty(0, dtype=self.dtype)
        if self.device == "cpu":
            self.param_addresses = self.table[0, :-1]
            self.param_addresses[:] = [_cpu.address_of(p) for p in params]
        else:
            self.param_addresses = None
        self.grad_addresses = self.table[1, :-1]
        # the list path: the gradient arrays whose addresses ``grad_addresses`` holds.
        # A gradient that is the same object as last step keeps its address, so its
        # lookup and table write are skipped. Holding the reference also keeps that
        # address valid: NumPy refuses to resize (reallocate) an array referenced here.
        self.grad_objects: list[Any] = [None] * len(params)
        # (shape, strides) of each parameter, what a gradient on the list path must
        # have (read once here: ``p.shape`` builds a new tuple on every access)
        self.layouts = [(p.shape, p.strides) for p in params]
        # per CPU loop: (source, callee, overload, arguments) of its last call;
        # see _run and _callee
        self.calls: dict[Any, tuple] = {}
        self.last_call: tuple | None = None  # the entry of ``calls`` the last step used
        self.state: dict[str, Any] = {}
        self.states: tuple = ()
        self.host_state: dict[str, float] = {}
        self.kernel: Kernel | None = None
        # the kernel's plain variant when this group's rule scalars allow it, None when
        # they don't, _UNDECIDED until the first step after (re)building (see _run)
        self.plain: Any = _UNDECIDED
        self.scalars = np.empty(0, dtype=self.dtype)
        self.values: dict[str, Any] = {}

    def views(self, name: str) -> list[Any]:
        """Per-parameter views of the flat state buffer ``name``."""
        buf = self.state[name]
        return [
            buf[int(self.offsets[j]) : int(self.offsets[j + 1])].reshape(p.shape)
            for j, p in enumerate(self.params)
        ]


def _is_array_like(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_cuda_array(x) or hasattr(x, "__array_interface__")


def _check_param(p: Any, index: int, owner: str) -> Any:
    where = f"{owner}: params[{index}]"
    if is_cuda_array(p):
        p = as_cuda_array(p)
        if np.dtype(p.dtype) not in _FLOAT_DTYPES:
            raise TypeError(f"{where}: expected a float32 or float64 array, got dtype {p.dtype}")
        if not p.is_c_contiguous():
            raise ValueError(f"{where}: expected a C-contiguous array")
        return p
    if not isinstance(p, np.ndarray):
        if hasattr(p, "numpy") and hasattr(p, "requires_grad"):
            raise TypeError(
                f"{where}: got a {type(p).__name__}; pass tensor.detach().numpy() (a view that "
                f"is updated in place) for CPU tensors, or a CUDA tensor for the GPU path"
            )
        raise TypeError(f"{where}: expected a NumPy or CUDA array, got {type(p).__name__}")
    if p.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{where}: expected a float32 or float64 array, got dtype {p.dtype}")
    if not p.flags.writeable:
        raise ValueError(f"{where}: expected a writeable array (it is updated in place)")
    if not p.flags.c_contiguous:
        raise ValueError(f"{where}: expected a C-contiguous array, got strides {p.strides}")
    return p


def _check_no_aliasing(params: list[Any], owner: str) -> None:
    spans = []
    for i, p in enumerate(params):
        if isinstance(p, np.ndarray):
            start = _cpu.address_of(p)
        else:
            start = device_address(p)
        nbytes = int(p.size) * p.dtype.itemsize
        if nbytes:
            spans.append((start, start + nbytes, i))
    spans.sort()
    # sorted by start, any overlap shows up between neighbours
    for (_s0, e0, i0), (s1, _e1, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            first, second = sorted((i0, i1))
            raise ValueError(
                f"{owner}: params[{second}] overlaps params[{first}] (an array given twice or "
                f"two views of one buffer); each parameter must be a distinct array"
            )


class Optimizer:
    """Base class: param groups, flat state, validation and the fused step.

    Subclasses define the hyperparameter checks (``_check``), the rule variant
    (``_select``), the initial state values (``_initial``) and the per-step host
    scalars (``_scalars``). Everything else -- groups, flat state buffers, gradient
    validation, the non-finite policy, clipping, checkpoints -- lives here once.
    """

    #: hyperparameters that are not floats (flags); all others are validated as numbers
    _flags: ClassVar[tuple[str, ...]] = ("maximize",)

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        nonfinite: str = "apply",
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
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

        group_dicts = _as_group_dicts(params, owner)
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
        _check_no_aliasing(all_params, owner)
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
        # step()'s short path applies (see _hot_path): one group, on the CPU, and this
        # class's step is the element-wise one
        self._hot_capable = (len(self._groups) == 1 and self._groups[0].device == "cpu"
                             and type(self)._run is Optimizer._run)
        # the rule scalars the short path last packed into the group's scalars array
        # (None: pack them); a rule whose scalars stay the same step after step (SGD,
        # Adagrad, RMSprop, ... with a constant lr) then skips the packing
        self._packed_scalars: tuple | None = None
        for group in self._groups:
            self._prepare(group, fresh=True)
        self._devices = {g.device for g in self._groups}

    # ------------------------------------------------------------ subclass API
    def _check(self, hyper: dict[str, Any]) -> None:
        """Raise ValueError/TypeError for invalid hyperparameters."""
        _check_lr(hyper["lr"], type(self).__name__)

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

    def _scalars(self, hyper: dict[str, Any], lr: float, step: int, host: dict) -> tuple:
        """The rule's scalars after ``grad_mult, clip_value`` for step ``step`` (1-based)."""
        raise NotImplementedError

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        """The memory traffic of one step over ``group`` (for the benchmarks):
        ``(buffers read, buffers written, elements)`` per pass over its buffers, and a
        fourth number when some of the written buffers are not read by the pass (a
        store-only stream costs more than an in-place one; its ceiling has it too).
        An element-wise rule makes one pass: it reads the parameter, the gradient
        and each state buffer, and writes the parameter and each state buffer."""
        n_states = len(group.state)
        return [(2 + n_states, 1 + n_states, group.numel)]

    # ------------------------------------------------------------------ state
    def _prepare(self, group: Group, fresh: bool) -> None:
        """(Re)build the kernel choice and state buffers for the group's hyperparameters."""
        kernel = self._select(group.hyper)
        init = self._initial(group.hyper)
        old = group.state
        state = {}
        for name in kernel.state_names:
            if not fresh and name in old:
                state[name] = old[name]
            else:
                state[name] = _full(group, init.get(name, 0.0))
        group.state = state
        group.states = tuple(state.values())
        group.kernel = kernel
        group.scalars, group.pack, group.scalar_bytes = _cpu.scalar_packer(
            len(kernel.scalar_names), group.dtype)
        group.calls = {}  # new state buffers / scalars array: rebuild the cached calls
        group.last_call = None
        self._hot = None
        group.plain = _UNDECIDED  # new hyperparameters: decided again on the next step
        # what step() passes to _scalars: a plain-dict copy of the hyperparameters (a
        # lookup costs half of one in the ParamGroup, a dict subclass); every edit of
        # the group goes through _prepare again. lr is read from the group itself (the
        # ``lr`` property sets it without an edit mark).
        group.values = dict(group.hyper)
        if fresh:
            group.host_state = self._initial_host_state(group.hyper)
        group.hyper.dirty = False

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
        self._max_grad_norm = _check_optional_positive(value, "max_grad_norm",
                                                       type(self).__name__)
        self._step_options()

    @property
    def clip_value(self) -> float | None:
        """Clip each gradient element to ``[-clip_value, clip_value]`` (None: off).
        Settable (validated)."""
        return self._clip_value

    @clip_value.setter
    def clip_value(self, value: float | None) -> None:
        self._clip_value = _check_optional_positive(value, "clip_value", type(self).__name__)
        self._step_options()

    def _step_options(self) -> None:
        # what step() reads on every call, derived once per change of the options
        self._needs_norm = self._nonfinite != "apply" or self._max_grad_norm is not None
        self._clip_bound = math.inf if self._clip_value is None else self._clip_value
        self._hot = None

    @property
    def state(self) -> list[dict[str, Any]]:
        """Per-parameter state: a list (one entry per parameter) of dicts of views."""
        out = []
        for group in self._groups:
            views = {name: group.views(name) for name in group.state}
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
        return _current(self._groups[0].hyper["lr"], self.step_count)

    @lr.setter
    def lr(self, value: float | Callable[[int], float]) -> None:
        _check_lr(value, type(self).__name__)
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
        hot = self._hot
        if hot is not None and type(grad_scale) is float and grad_scale == 1.0 and (
            grads is None if hot[0] else type(grads) is list and len(grads) == self._num_params
        ):  # the short path (see _hot_path): the same step as below, decided already
            flat, group, threshold, pack, grad_mult, callee, arguments, repeats = hot
            if not group.hyper.dirty and config.parallel_threshold == threshold:
                if not flat:
                    self._record_host_grads(group, grads, 0)
                lr = group.hyper["lr"]
                if callable(lr):
                    lr = _current(lr, self.step_count)
                step = self.step_count + 1
                rule_scalars = self._scalars(group.values, lr, step, group.host_state)
                # the scalars array holds them already if they equal the last ones packed
                # (SGD, Adagrad, ... with a constant lr; see _scalars_repeat): equal floats
                # are the same bits, but for 0.0 and -0.0, which an lr of zero can make
                if not repeats or rule_scalars != self._packed_scalars or not lr:
                    try:
                        pack(group.scalar_bytes, 0, grad_mult, _INF, *rule_scalars)
                    except OverflowError:
                        _pack(group, (grad_mult, _INF) + rule_scalars)
                    self._packed_scalars = rule_scalars
                callee(*arguments)
                # last_step_skipped and last_grad_norm stay False and None: the step
                # that built the short path set them, and no norm is computed here
                self.step_count = step
                return None
        if (type(grad_scale) is not float or grad_scale != 1.0) and not (
            _is_number(grad_scale) and math.isfinite(grad_scale) and grad_scale > 0
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
            self._record_host_grads(pairs[0][0], grads, 0)
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
                    _current(group.hyper["lr"], self.step_count)
        clip_coef = 1.0
        norm = None
        if self._needs_norm:  # nonfinite != "apply" or max_grad_norm set
            total = self._sum_squares(sources)
            if math.isfinite(total):
                norm = math.sqrt(total) / grad_scale
            elif math.isnan(total):  # a sum of squares is NaN only when a gradient is
                norm = total
            else:  # an Inf gradient, or finite float64 ones whose squares overflow
                norm = self._exact_norm(grads, sources) / grad_scale
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
                clip_coef = min(1.0, self.max_grad_norm / (norm + 1e-6))
        step = self.step_count + 1
        clip_value = self._clip_bound
        grad_mult = clip_coef / grad_scale
        for group, source in pairs:
            values = group.values
            lr = group.hyper["lr"]
            if callable(lr):
                lr = _current(lr, self.step_count)
            self._run(group, source, (-grad_mult if values["maximize"] else grad_mult,
                                      clip_value) + self._scalars(values, lr, step,
                                                                  group.host_state))
        start_compiling()  # parallel loops queued by this step, if any (see _run)
        self.step_count = step
        self.last_step_skipped = False
        self.last_grad_norm = norm
        self._packed_scalars = None  # the short path packs its first step's scalars
        if self._hot_capable and grad_mult == 1.0 and (
            pairs is self._lone_pairs or pairs is self._flat_pairs
        ):
            self._hot = self._hot_path()
        return norm

    def _hot_path(self) -> tuple | None:
        """What step()'s short path needs to repeat the step just taken, or None.

        A step over the only group, on the CPU, with no norm to compute, no clipping
        and no loss scale, whose hyperparameters are unchanged since the last step, and
        with gradients given the same way (a list, or ``None`` for a FlatParams' own
        buffer), does what the last one did with new scalars: same loop, same arguments
        (a list's addresses are written into the group's table). The short path
        skips the choices that led there; anything that could change them
        (``_step_options``, ``_prepare``, an edit of the group, the parallel
        threshold) sends the step down the full path again.
        """
        group = self._groups[0]
        call = group.last_call
        if self._needs_norm or self._clip_bound != _INF or call is None:
            return None
        grad_mult = -1.0 if group.values["maximize"] else 1.0
        # no bound method of the optimizer here: it would make the optimizer reference
        # itself, and only the cyclic GC would free its state
        return (group.flat is not None, group, config.parallel_threshold, group.pack,
                grad_mult, call[1], call[3], self._scalars_repeat)

    def _collect(self, grads: Any) -> list[Any]:
        """Validate the gradients and say where each group reads them from.

        Returns one entry per group: a flat array (one kernel over the buffer), or
        ``None`` for the list path (addresses already written into the group).
        Nothing is changed when this raises.
        """
        groups = self._groups
        if type(grads) is not list and type(grads) is not tuple:
            return self._collect_other(grads)
        if len(grads) != self._num_params:
            raise ValueError(
                f"grads: expected {self._num_params} gradients (one per parameter), "
                f"got {len(grads)}"
            )
        sources: list[Any] = []
        single = len(groups) == 1
        for group in groups:
            base = group.index_base
            mine = grads if single else grads[base : base + len(group.params)]
            if group.flat is not None and all(a is b for a, b in zip(mine, group.flat.grads)):
                sources.append(group.flat.grad)
                continue
            if group.device == "cuda":
                sources.append(
                    [self._check_grad(g, group, j, p.shape, f"grads[{base + j}]")
                     for j, (g, p) in enumerate(zip(mine, group.params))]
                )
                continue
            self._record_host_grads(group, mine, base)
            sources.append(None)
        return sources

    def _record_host_grads(self, group: Group, grads: Sequence[Any], base: int) -> None:
        """The list path: validate each gradient of ``group`` (a fast identity/shape/
        stride test, the full check only when it fails) and write its address into the
        group's table, which the multi-array loop reads."""
        dtype = group.dtype
        layouts = group.layouts
        addresses = group.grad_addresses
        objects = group.grad_objects
        j = 0
        for g in grads:
            shape, strides = layouts[j]
            if (
                type(g) is not np.ndarray
                or g.dtype is not dtype
                or g.shape != shape
                or g.strides != strides
            ):
                g = self._check_grad(g, group, j, shape, f"grads[{base + j}]")
            if g is not objects[j]:  # a new array: record its address
                addresses[j] = _cpu.address_of(g)
                objects[j] = g
            j += 1

    def _collect_other(self, grads: Any) -> list[Any]:
        """``grads`` given as None (FlatParams' own buffers) or as one flat array."""
        groups = self._groups
        if grads is None:
            if self._flat_grads is None:
                raise TypeError(
                    "grads: expected one gradient per parameter; grads=None is only "
                    "allowed when every param group is a FlatParams"
                )
            return self._flat_grads
        if _is_array_like(grads):
            if len(groups) != 1 or groups[0].flat is None:
                raise TypeError(
                    "grads: a single flat array is only accepted for one FlatParams group; "
                    "pass a list with one gradient per parameter"
                )
            group = groups[0]
            return [self._check_grad(grads, group, None, (group.numel,), "grads")]
        raise TypeError(
            f"grads: expected a list of arrays (one per parameter), got {type(grads).__name__}"
        )

    def _check_grad(self, g: Any, group: Group, j: int | None, shape: tuple, name: str) -> Any:
        if group.device == "cuda":
            if not is_cuda_array(g):
                raise TypeError(
                    f"{name}: expected a CUDA array (the parameter is on the GPU), got "
                    f"{type(g).__name__}"
                )
            g = as_cuda_array(g)
            contiguous = g.is_c_contiguous()
        else:
            if is_cuda_array(g):
                raise TypeError(f"{name}: expected a host array (the parameter is on the CPU), "
                                f"got a CUDA array")
            if not isinstance(g, np.ndarray):
                if hasattr(g, "__array__") and hasattr(g, "numpy"):
                    try:
                        g = np.asarray(g)
                    except Exception as exc:  # e.g. a torch tensor that requires grad
                        raise TypeError(f"{name}: cannot view this {type(g).__name__} as a "
                                        f"NumPy array ({exc})") from None
                else:
                    raise TypeError(f"{name}: expected a NumPy array, got {type(g).__name__}")
            contiguous = g.flags.c_contiguous
        if tuple(g.shape) != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(g.shape)}")
        if np.dtype(g.dtype) != group.dtype:
            raise TypeError(f"{name}: expected dtype {group.dtype}, got {g.dtype}")
        if not contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array")
        return g

    def _sum_squares(self, sources: list[Any]) -> float:
        total = 0.0
        for group, source in zip(self._groups, sources):
            if group.device == "cuda":
                from . import _gpu

                flats = [source] if not isinstance(source, list) else [
                    g.reshape(g.size) for g in source
                ]
                total += _gpu.sum_squares(flats)
            elif source is None:
                total += _cpu.sum_squares_multi(group.grad_addresses, group.offsets, group.like)
            else:
                total += _cpu.sum_squares(source, source.shape[0] >= config.parallel_threshold)
        return total

    def _exact_norm(self, grads: Any, sources: list[Any]) -> float:
        """The global gradient norm without overflow; NaN/Inf when a gradient holds one.

        The rare path, taken only when the fast float64 sum of squares is +Inf: for
        an Inf gradient, and for finite float64 gradients beyond ~1e154 whose squares
        overflow (which must neither be skipped nor escape ``max_grad_norm``).
        """
        arrays = []
        for group, source in zip(self._groups, sources, strict=True):
            if source is None:  # the list path: the host arrays given to step
                base = group.index_base
                arrays += [np.asarray(g) for g in grads[base : base + len(group.params)]]
            elif isinstance(source, list):
                arrays += [g.copy_to_host() for g in source]
            else:
                arrays.append(source if isinstance(source, np.ndarray) else source.copy_to_host())
        peak = 0.0
        for a in arrays:
            if a.size:
                m = float(np.max(np.abs(a)))
                if not math.isfinite(m):
                    return m
                peak = max(peak, m)
        if peak == 0.0:
            return 0.0
        total = 0.0
        for a in arrays:
            scaled = a.reshape(-1).astype(np.float64) / peak
            total += float(np.dot(scaled, scaled))
        return peak * math.sqrt(total)

    def _run(self, group: Group, source: Any, scalars: tuple) -> None:
        _pack(group, scalars)
        args = group.scalars
        plain = group.plain
        if plain is _UNDECIDED:
            plain = group.plain = _plain_variant(group.kernel, scalars)
        if plain is not None and scalars[0] == 1.0 and scalars[1] == _INF:
            kernel = plain  # no scaling, clipping, L2 decay: fewer operations
        else:
            kernel = group.kernel
        if group.device == "cuda":
            self._run_cuda(group, source, kernel, group.states, tuple(args))
            return
        big = group.numel >= config.parallel_threshold
        if source is None:
            serial = kernel.multi_serial
            loop = kernel.multi_parallel if big and len(group.params) > 1 else serial
        else:
            serial = kernel.serial
            loop = kernel.parallel if big else serial
        call = group.calls.get(loop)
        if call is not None and call[0] is source:
            # the same loop on the same arrays as last time (a FlatParams' buffers
            # cannot be replaced; the list path's address tables are updated in place)
            call[1](*call[3])
            group.last_call = call
            return
        if source is None:
            arguments = (group.table, *group.states, args)
        else:
            arguments = (group.flat.data, source, *group.states, args)
        waiting = loop is not serial and not loop_ready(loop, arguments)
        if waiting:  # compiled in a background thread, started at the end of the step
            compile_in_background(loop, arguments)
            loop = serial  # meanwhile (the same results)
            call = group.calls.get(loop)
        if call is None or call[0] is not source:
            loop(*arguments)
            call = group.calls[loop] = (
                source, *_callee(kernel, group, loop, source, arguments), arguments)
        else:
            call[1](*call[3])
        group.last_call = None if waiting else call  # step()'s short path: not a stand-in

    def _run_cuda(self, group: Group, source: Any, kernel: Kernel, states: tuple, args) -> None:
        from . import _gpu

        cuda_kernel = kernel.cuda
        if not isinstance(source, list):
            _gpu.launch(cuda_kernel, group.numel, group.flat.data, source, *states, *args)
            return
        for j, (p, g) in enumerate(zip(group.params, source)):
            start, stop = int(group.offsets[j]), int(group.offsets[j + 1])
            if stop > start:
                _gpu.launch(
                    cuda_kernel, stop - start, p.reshape(p.size), g.reshape(g.size),
                    *(s[start:stop] for s in states), *args,
                )

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """The optimizer state as a plain dict of NumPy arrays and Python scalars.

        Keys: ``format_version``, ``optimizer`` (class name), ``step_count``,
        ``param_groups`` (hyperparameters and sizes, one dict per group; a schedule
        ``lr`` is stored as its current value with ``lr_schedule`` = its repr),
        ``state`` (one dict of flat state buffers per group, copies) and
        ``host_state`` (per-group scalar state, e.g. NAdam's ``mu_product``).
        """
        groups = []
        for group in self._groups:
            hyper = {k: _plain(v) for k, v in group.hyper.items() if k != "params"}
            if callable(group.hyper["lr"]):
                hyper["lr"] = float(_current(group.hyper["lr"], self.step_count))
                hyper["lr_schedule"] = repr(group.hyper["lr"])
            hyper["num_params"] = len(group.params)
            hyper["numel"] = group.numel
            hyper["dtype"] = str(group.dtype)
            groups.append(hyper)
        state = []
        for group in self._groups:
            state.append({name: _to_host(buf) for name, buf in group.state.items()})
        return {
            "format_version": STATE_DICT_VERSION,
            "optimizer": type(self).__name__,
            "step_count": int(self.step_count),
            "param_groups": groups,
            "state": state,
            "host_state": [dict(g.host_state) for g in self._groups],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; everything is validated before anything changes."""
        plan = self._plan_load(state_dict)
        for group, hyper, arrays, host in plan:
            for key, value in hyper.items():
                if key == "lr" and callable(group.hyper["lr"]) and "lr_schedule" in hyper:
                    continue
                if key in self.defaults:
                    group.hyper[key] = value
            self._prepare(group, fresh=False)
            for name, array in arrays.items():
                _copy_into(group.state[name], array)
            group.host_state = dict(host)
        self.step_count = int(state_dict["step_count"])

    def save(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Write a checkpoint (state, step count, hyperparameters, and the params) atomically.

        See :func:`fastmoments.checkpoint.save`: a temporary file in the same folder,
        fsynced, then renamed over ``path``; a crash leaves the old or the new file.
        """
        from .checkpoint import save

        save(self, path, params=params)

    def load(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Restore a checkpoint written by :meth:`save`; validated in full before any change.

        See :func:`fastmoments.checkpoint.load`. Raises ``CheckpointError`` (a
        ``ValueError``) for truncated, foreign or unsafe files, changing nothing.
        """
        from .checkpoint import load

        load(self, path, params=params)

    def _plan_load(self, sd: dict[str, Any]) -> list:
        owner = type(self).__name__
        if not isinstance(sd, dict):
            raise TypeError(f"state_dict: expected a dict, got {type(sd).__name__}")
        missing = {"format_version", "optimizer", "step_count", "param_groups", "state",
                   "host_state"} - set(sd)
        if missing:
            raise ValueError(f"state_dict: missing keys {sorted(missing)}")
        if sd["format_version"] != STATE_DICT_VERSION:
            raise ValueError(
                f"state_dict: format_version {sd['format_version']!r} is not supported "
                f"(expected {STATE_DICT_VERSION})"
            )
        if sd["optimizer"] != owner:
            raise ValueError(f"state_dict: saved by {sd['optimizer']!r}, cannot load into {owner}")
        step = sd["step_count"]
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            raise ValueError(f"state_dict: step_count must be an integer >= 0, got {step!r}")
        for key in ("param_groups", "state", "host_state"):
            if not isinstance(sd[key], (list, tuple)) or not all(
                isinstance(x, dict) for x in sd[key]
            ):
                raise TypeError(f"state_dict: {key} should be a list of dicts, one per group")
        if not (len(sd["param_groups"]) == len(sd["state"]) == len(sd["host_state"])
                == len(self._groups)):
            raise ValueError(
                f"state_dict: has {len(sd['param_groups'])} param groups, the optimizer has "
                f"{len(self._groups)}"
            )
        plan = []
        for k, (group, hyper, arrays, host) in enumerate(
            zip(self._groups, sd["param_groups"], sd["state"], sd["host_state"])
        ):
            where = f"state_dict: param_groups[{k}]"
            if hyper.get("num_params") != len(group.params) or hyper.get("numel") != group.numel:
                raise ValueError(
                    f"{where}: has {hyper.get('num_params')} params / {hyper.get('numel')} "
                    f"elements, the optimizer's group has {len(group.params)} / {group.numel}"
                )
            merged = {**group.hyper}
            for key, value in hyper.items():
                if key in self.defaults:
                    merged[key] = _restore(value)
            if "lr_schedule" in hyper and callable(group.hyper["lr"]):
                merged["lr"] = group.hyper["lr"]
            try:
                self._check(merged)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: {exc}") from None
            names = self._select(merged).state_names
            if set(arrays) != set(names):
                raise ValueError(
                    f"state_dict: state[{k}] has buffers {sorted(arrays)}, expected {sorted(names)}"
                )
            for name in names:
                a = arrays[name]
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"state_dict: state[{k}][{name!r}] is not a NumPy array")
                if a.shape != (group.numel,) or a.dtype != group.dtype:
                    raise ValueError(
                        f"state_dict: state[{k}][{name!r}] has shape {a.shape} and dtype "
                        f"{a.dtype}, expected ({group.numel},) and {group.dtype}"
                    )
            expected_host = set(self._initial_host_state(merged))
            if set(host) != expected_host:
                raise ValueError(
                    f"state_dict: host_state[{k}] has keys {sorted(host)}, expected "
                    f"{sorted(expected_host)}"
                )
            for key, v in host.items():
                if not _is_number(v):
                    raise TypeError(f"state_dict: host_state[{k}][{key!r}] should be a number, "
                                    f"got {v!r}")
            plan.append((group, {k2: _restore(v) for k2, v in hyper.items()}, arrays,
                         {key: float(v) for key, v in host.items()}))
        return plan

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


# ------------------------------------------------------------------ helpers
def _as_group_dicts(params: Any, owner: str) -> list[dict[str, Any]]:
    if isinstance(params, FlatParams):
        return [{"params": params}]
    if _is_array_like(params):
        raise TypeError(
            f"{owner}: params should be a list of arrays, a FlatParams or a list of param-group "
            f"dicts, got a single {type(params).__name__}; wrap it in a list"
        )
    if isinstance(params, dict):
        return [dict(params)]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(
            f"{owner}: params should be a list of arrays, a FlatParams or a list of param-group "
            f"dicts, got {type(params).__name__}"
        ) from None
    if not items:
        raise ValueError(f"{owner}: got an empty list of params")
    if all(isinstance(x, dict) for x in items):
        for i, x in enumerate(items):
            if "params" not in x:
                raise ValueError(f"{owner}: param group {i} has no 'params' key")
        return [dict(x) for x in items]
    if any(isinstance(x, dict) for x in items):
        raise TypeError(f"{owner}: params mixes param-group dicts and arrays")
    return [{"params": items}]


_UNDECIDED = object()
_INF = math.inf


def _pack(group: Group, scalars: tuple) -> None:
    """Write a step's scalars into the group's scalar array, cast to the buffer dtype
    once, on the host."""
    try:
        group.pack(group.scalar_bytes, 0, *scalars)
    except OverflowError:  # a float64 scalar beyond float32's range: inf, as NumPy
        group.scalars[:] = scalars


def _plain_variant(kernel: Kernel, scalars: tuple) -> Kernel | None:
    """The plain variant of ``kernel`` if ``scalars`` allow it apart from their first two.

    A step's scalars start with ``grad_mult, clip_value`` (they change with
    ``grad_scale``, ``max_grad_norm`` and ``clip_value``, and ``_run`` tests them on
    every step); the rule's own neutral scalars (``weight_decay``, ``eps_root``) are
    hyperparameter values, fixed until the group is edited (which rebuilds it), so
    they are tested once, on the first step after the group was (re)built.
    """
    plain = kernel.plain
    if plain is None:
        return None
    rule_fixed = plain.fixed[2:]  # after grad_mult, clip_value (see Kernel)
    values = tuple(scalars[kernel.scalar_names.index(s)] for s in rule_fixed)
    return plain if values == tuple(NEUTRAL[s] for s in rule_fixed) else None


def _callee(kernel: Kernel, group: Group, loop: Any, source: Any,
            arguments: tuple) -> tuple[Any, Any]:
    """What ``_run`` calls for ``loop`` on ``arguments`` next time: the compiled overload.

    Returns ``(callee, overload)``; the overload (numba's compile result, None for the
    dispatcher) is only held so that its machine code lives as long as the entry point.

    numba's dispatcher types every argument on every call (about 0.07 us per array);
    the overload's entry point skips that but trusts its arguments' types blindly.
    It is used only for serial loops on arrays this optimizer owns and never swaps
    (state buffers, scalars, address tables, and FlatParams' ``data`` and ``grad``,
    whose identity ``_run`` checks each call), right after the dispatcher ran on the
    very same objects; anything else, or any surprise from numba, keeps the dispatcher.
    """
    if loop is not kernel.serial and loop is not kernel.multi_serial:
        return loop, None  # parallel loops: the dispatch is noise beside the threads' start
    if source is not None and (group.flat is None or source is not group.flat.grad):
        return loop, None  # a flat gradient array given to step(): not ours
    try:
        overload = loop.overloads[tuple(loop.typeof_pyval(a) for a in arguments)]
        return overload.entry_point, overload
    except Exception:  # pragma: no cover - another numba, or jit disabled
        return loop, None


def _check_lr(lr: Any, owner: str) -> None:
    if callable(lr):
        return
    if not _is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{owner}: invalid lr: expected a finite number >= 0 or a schedule, "
                         f"got {lr!r}")


def _check_optional_positive(x: Any, name: str, owner: str) -> float | None:
    if x is None:
        return None
    if not _is_number(x) or not (x > 0) or math.isnan(x):
        raise ValueError(f"{owner}: {name} must be a number > 0 or None, got {x!r}")
    return float(x)


def _current(lr: Any, steps_taken: int) -> float:
    if callable(lr):
        value = lr(steps_taken)
        if not (_is_number(value) and math.isfinite(value) and value >= 0):
            raise ValueError(
                f"lr schedule {lr!r} returned {value!r} at step {steps_taken}; expected a "
                "finite number >= 0"
            )
        return float(value)
    return float(lr)


def _full(group: Group, value: float) -> Any:
    if group.device == "cuda":
        from . import _gpu

        return _gpu.full(group.numel, value, group.dtype)
    return np.full(group.numel, value, dtype=group.dtype)


def _to_host(buf: Any) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        return buf.copy()
    return buf.copy_to_host()


def _copy_into(buf: Any, array: np.ndarray) -> None:
    if isinstance(buf, np.ndarray):
        buf[...] = array
    else:
        buf.copy_to_device(np.ascontiguousarray(array))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return tuple(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value
