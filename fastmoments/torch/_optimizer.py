"""The ``torch.optim.Optimizer`` that steps with fastmoments' kernels.

:class:`Optimizer` keeps torch's side as torch does -- ``param_groups`` (a list of
plain dicts), ``defaults``, the hooks, ``zero_grad``, ``state_dict`` in torch's
format -- and steps the parameters with fastmoments optimizers ("inner" optimizers)
over zero-copy views of them: NumPy views of CPU tensors, the tensors themselves
(``__cuda_array_interface__``) on a GPU, or a :class:`~fastmoments.FlatParams` when a
param group tiles a buffer made by :func:`~fastmoments.torch.flatten_`.

The jobs are split by module: this one has the class, its constructor, its structure
(``add_param_group``) and its step; ``_cohorts`` builds the inner optimizers and gathers
the gradients (and explains how parameters without a gradient are skipped); ``_hyper``
validates hyperparameters and follows edits of the param groups; ``_state`` gives
``state``, ``state_dict`` and ``load_state_dict`` in torch's format. Each of the
three is a mixin of :class:`Optimizer`.

GradScaler
----------
The class sets ``_step_supports_amp_scaling``: ``torch.amp.GradScaler.step`` then
checks the gradients for inf/NaN itself (one pass, no unscaling), sets
``optimizer.grad_scale`` (the scale, or None after a ``scaler.unscale_(optimizer)``)
and ``optimizer.found_inf``, and calls ``step()``. The step does nothing when
``found_inf`` is nonzero (parameters, state and step counts stay, as torch's fused
Adam does); otherwise each kernel divides the gradients by ``grad_scale`` as it
reads them, so torch's in-place unscaling (which rewrites every gradient) is left
out, and float16 gradients are divided in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from ..optim.base import Optimizer as _Rule
from ._cohorts import _MOVED, _READY, Cohorts, _Cohort, _Record
from ._flat import FlatSlot, buckets, flatten_params, live_slot
from ._hyper import HyperSync, precision_options
from ._state import TorchState

__all__ = ["Optimizer"]

_profiler_enabled = torch._C._autograd._profiler_enabled


class Optimizer(TorchState, HyperSync, Cohorts, torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose step is a fastmoments fused kernel.

    The classes of :mod:`fastmoments.torch` (``Adam``, ``AdamW``, ...) derive from it,
    one per rule, each with the constructor of the torch.optim class of the same
    name (or of the fastmoments class, for rules torch does not have) plus
    ``flat=``. Everything torch.optim's base class offers works as there:
    ``param_groups``, ``add_param_group``, ``zero_grad``, ``step(closure)``,
    ``state_dict`` / ``load_state_dict`` in torch's format, the step and state-dict
    hooks, ``torch.optim.lr_scheduler``, ``torch.amp.GradScaler``.

    Parameters
    ----------
    params
        Parameters (``model.parameters()``), ``(name, parameter)`` pairs, or
        param-group dicts, as for torch.optim. float32 or float64, dense, on the CPU
        (stepped through zero-copy NumPy views) or a CUDA device (through
        ``__cuda_array_interface__``); contiguous.
    hyperparameters
        The constructor's values, by name (the subclasses' ``__init__`` gives them).
    flat
        Flatten each param group's parameters (those that require grad) and their
        gradients into one buffer per dtype and device first
        (:func:`~fastmoments.torch.flatten_`), so that each group is stepped by one
        kernel call over one buffer.
    state_dtype, state_rounding, master_weights, seed
        Reduced precision, as for the NumPy optimizers (see the page "Reduced
        precision"): ``state_dtype`` None (float32 for 16-bit parameters, else the
        parameters' dtype), ``"float32"``, ``"float64"``, ``"bfloat16"`` (a torch
        dtype works too) or ``"int8"`` (blockwise 8-bit codes and scales, CPU
        tensors; see ``state_dict``); ``master_weights`` (None: True) concerns the float16 and
        bfloat16 parameters only: True keeps a float32 master copy of them, False
        rounds them stochastically; ``seed`` and ``state_rounding`` choose the random
        bits and which states are rounded stochastically. Fixed at construction.

    Notes
    -----
    ``state`` is built on each access: per parameter, a dict of tensors that view
    the live state buffers (edit them in place to change the state) and ``"step"``;
    replacing an entry changes nothing (use ``load_state_dict``). The buffers are in
    their stored form: bfloat16 states as ``torch.bfloat16``, an int8 state as its
    ``uint8`` codes plus ``<name>__absmax`` and ``<name>__float32``.
    """

    # set by each rule's class (see fastmoments.torch._rules)
    _rule: ClassVar[type[_Rule]]
    _torch_rule: ClassVar[type | None] = None
    _rule_keys: ClassVar[tuple[str, ...]] = ()  # the fastmoments hyperparameters
    _torch_keys: ClassVar[tuple[str, ...]] = ()  # torch-only options (foreach, fused, ...)
    _torch_params: ClassVar[tuple[str, ...]] = ()  # torch's constructor keywords
    _has_step: ClassVar[bool] = True  # torch's state has "step" (SGD's has not)
    _eager: ClassVar[bool] = False  # torch creates the state before the first step (Adagrad)
    _decoupled: ClassVar[bool | None] = None  # torch's decoupled_weight_decay key (Adam/AdamW)
    _tensor_host: ClassVar[frozenset[str]] = frozenset()  # host state torch keeps as tensors
    #: torch.amp.GradScaler's protocol for optimizers that unscale in their own step
    #: (see the module notes)
    _step_supports_amp_scaling: ClassVar[bool] = True

    def __init__(self, params: Any, hyperparameters: dict[str, Any], *,
                 flat: bool = False, state_dtype: Any = None, state_rounding: Any = "auto",
                 master_weights: bool | None = None, seed: int = 0) -> None:
        if not hasattr(type(self), "_rule"):
            raise TypeError("fastmoments.torch.Optimizer is a base class; use a rule's class "
                            "(fastmoments.torch.Adam, ...)")
        if not isinstance(flat, bool):
            raise TypeError(f"{type(self).__name__}: flat must be True or False, got {flat!r}")
        values = dict(hyperparameters)
        self._precision = precision_options(state_dtype, state_rounding, master_weights, seed,
                                            type(self).__name__)
        if self._torch_rule is not None:
            # torch's own class gives its validation and the exact keys and defaults of
            # its param groups (AdamW's decoupled_weight_decay=True, for instance)
            probe = self._torch_rule([torch.zeros(1)], **{
                k: v for k, v in values.items() if k in self._torch_params})
            defaults = {k: v for k, v in probe.param_groups[0].items() if k != "params"}
            defaults.update({k: values[k] for k in self._rule_keys if k not in defaults})
        else:
            defaults = values
        self._flat = flat
        self._cohorts: list[_Cohort] = []
        self._ready = False
        # an inner optimizer of one element: validates hyperparameters, names the state
        self._probe = self._rule([np.zeros(1)], **self._rule_values(defaults, "defaults"))
        self._check_options(defaults, "defaults")
        super().__init__(params, defaults)
        self._ready = True
        if flat:
            for group in self.param_groups:
                self._flatten_group(group)
        self._restructure()

    # ------------------------------------------------------------ structure
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as torch.optim; its parameters start with fresh state)."""
        count = len(self.param_groups)
        super().add_param_group(param_group)
        k = len(self.param_groups) - 1
        group = self.param_groups[k]
        try:
            self._rule_values(group, f"param_groups[{k}]")
            self._check_options(group, f"param_groups[{k}]")
            self._check_params(group, k)
            if self._ready:
                if self._flat:
                    self._flatten_group(group)
                self._restructure()  # the inner optimizers may refuse (a dtype, an option)
        except Exception:
            del self.param_groups[count:]
            raise

    def _flatten_group(self, group: dict[str, Any]) -> None:
        for bucket in buckets(group["params"], type(self).__name__):
            flatten_params(bucket)

    def _restructure(self) -> None:
        """Rebuild every inner optimizer from the param groups, carrying the state over."""
        records: dict[int, _Record] = {}
        for cohort in self._cohorts:
            records.update(self._records(cohort))
        for k, group in enumerate(self.param_groups):
            self._rule_values(group, f"param_groups[{k}]")
            self._check_options(group, f"param_groups[{k}]")
            self._check_params(group, k)
        members = [(k, p) for k, g in enumerate(self.param_groups) for p in g["params"]]
        self._cohorts = self._build(members, records)
        self._snapshot()

    # ------------------------------------------------------------ precision
    @property
    def state_dtype(self) -> str | None:
        """How the state is stored (None: the parameters' dtype, float32 for 16-bit ones)."""
        return self._precision["state_dtype"]

    @property
    def master_weights(self) -> bool | None:
        """Whether 16-bit parameters get a float32 master copy (None: yes)."""
        return self._precision["master_weights"]

    @property
    def state_rounding(self) -> Any:
        """Which bfloat16 states are rounded stochastically (see the core optimizers)."""
        return self._precision["state_rounding"]

    @property
    def seed(self) -> int:
        """The seed of the random bits of stochastic rounding."""
        return self._precision["seed"]

    # ----------------------------------------------------------------- step
    def _amp_scale(self) -> float | None:
        """What GradScaler asks of this step (see the module notes): None to skip it,
        else the scale to divide the gradients by (1.0: none)."""
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf):
            return None
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is None:
            return 1.0
        scale = float(grad_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{type(self).__name__}: grad_scale must be a finite number > 0, "
                             f"got {grad_scale!r}; nothing was changed")
        return scale

    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scale = self._amp_scale()
        if scale is None:
            return loss  # an inf/NaN gradient (GradScaler's found_inf): nothing changes
        self._refresh()
        cohorts = self._cohorts
        work = []
        i = 0
        while i < len(cohorts):  # check every gradient before any parameter changes
            cohort = cohorts[i]
            kind, value = self._gather(cohort)
            if kind is _READY:
                work.append((cohort.inner, value))
                i += 1
            elif kind is _MOVED:
                cohorts[i:i + 1] = self._rebuild(cohort)
            elif len(value) == len(cohort.params):
                i += 1  # no gradient at all: skipped, its state unchanged
            else:
                cohorts[i:i + 1] = self._split(cohort, value)
        if scale == 1.0:
            for inner, grads in work:
                inner.step(grads)
        else:  # the unscaling happens in the kernel, as it reads each gradient
            for inner, grads in work:
                inner.step(grads, grad_scale=scale)
        return loss

    def _hooked_step(self, closure: Callable[[], Any] | None) -> Any:
        # torch's Optimizer.profile_hook_step, for when hooks or the profiler are on
        args: tuple = (self,) if closure is None else (self, closure)
        kwargs: dict[str, Any] = {}
        with torch.autograd.profiler.record_function(
                f"Optimizer.step#{type(self).__name__}.step"):
            for pre_hook in chain(_global_optimizer_pre_hooks.values(),
                                  self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"step must return None or a tuple of (new_args, "
                                           f"new_kwargs), but got {result}.")
                    args, kwargs = result
            out = self._step(*args[1:], **kwargs)
            self._optimizer_step_code()
            for post_hook in chain(self._optimizer_step_post_hooks.values(),
                                   _global_optimizer_post_hooks.values()):
                post_hook(self, args, kwargs)
        return out

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step over every parameter that has a gradient (as torch.optim).

        Parameters
        ----------
        closure
            Optional: re-evaluates the model and returns the loss; called under
            ``torch.enable_grad()`` before the step.

        Returns
        -------
        The closure's loss, or None.
        """
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                or _profiler_enabled()):
            return self._hooked_step(closure)
        return self._step(closure)

    # torch's base class wraps a subclass's step in its hook-and-profiler wrapper (about
    # 7 us a call) unless it is marked as wrapped: step runs the hooks itself, and the
    # wrapper only when there is a hook or a profiler to serve
    step.hooked = True  # type: ignore[attr-defined]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients (as torch.optim), and keep flat gradient buffers.

        Parameters
        ----------
        set_to_none
            For parameters that are not flattened: set ``.grad`` to None (default) or
            zero it in place, as torch.optim. Flattened parameters
            (:func:`~fastmoments.torch.flatten_`, ``flat=True``) always keep their
            ``.grad`` views, zeroed in place: one fill per flat buffer whose parameters
            all belong to this optimizer, one per view otherwise. A view replaced
            since (``module.zero_grad()`` and a backward pass) is put back.
        """
        flats: dict[int, tuple[Any, list[FlatSlot]]] = {}
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    slot = live_slot(p)
                    if slot is None:
                        grad = p.grad
                        if grad is None:
                            continue
                        if set_to_none:
                            p.grad = None
                        else:
                            if grad.grad_fn is not None:
                                grad.detach_()
                            else:
                                grad.requires_grad_(False)
                            grad.zero_()
                        continue
                    if p.grad is not slot.grad:
                        p.grad = slot.grad
                    flats.setdefault(id(slot.buffer), (slot.buffer, []))[1].append(slot)
            for buffer, slots in flats.values():
                if len({s.index for s in slots}) == len(buffer):
                    buffer.grad.zero_()
                else:
                    for s in slots:
                        s.grad.zero_()
        if set_to_none:
            for cohort in self._cohorts:
                cohort.forget_grads()

    # -------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied (its inner "
                        "optimizers hold views of the parameters); save state_dict() instead")

    def __repr__(self) -> str:
        name = type(self).__name__
        return super().__repr__().replace(f"{name} (", f"fastmoments.torch.{name} (", 1)
