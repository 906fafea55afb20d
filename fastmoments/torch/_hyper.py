"""Hyperparameters: validation, and following edits of the torch param groups.

A mixin of :class:`fastmoments.torch.Optimizer` (``self`` is that optimizer): the
checks of torch groups and options, and the sync of edited values into the inner
optimizers before each step.

Edits
-----
``lr`` is read from the torch group by the inner optimizers at each step (their lr is
a schedule: a callable that returns the group's current ``"lr"``), so an
``lr_scheduler`` costs nothing. Other hyperparameters are compared with their last
values at each step; a changed one is validated and passed on (the inner optimizer
then rebuilds that group's kernel choice). Replaced or resized ``"params"`` lists,
added groups and replaced ``p.data`` (``module.to(...)``) rebuild the inner
optimizers, their state carried over.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..kernels.precision import STATE_DTYPES, resolve
from ._views import STEPPED_DTYPES, bf16_unavailable, is_half

__all__ = ["HyperSync", "precision_options"]

#: torch dtypes accepted for ``state_dtype``, by the name the core takes
_STATE_TORCH_DTYPES = {torch.float32: "float32", torch.float64: "float64",
                       torch.bfloat16: "bfloat16"}


def _plain(value: Any) -> Any:
    """A hyperparameter as fastmoments takes it: tensors as numbers, lists as tuples."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a number, got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def precision_options(state_dtype: Any, state_rounding: Any, master_weights: Any, seed: Any,
                      owner: str) -> dict[str, Any]:
    """The reduced-precision options, validated, as the inner optimizers take them.

    ``state_dtype`` may be a name or a torch dtype. The values are checked by the
    core's own parser (for 16-bit parameters, the case that takes them all); what
    depends on the parameters' dtype or the rule (``"float64"`` state under float32
    parameters, ``"int8"`` under 16-bit ones or for a rule whose state holds iterates
    of the parameters) is checked when the inner optimizers are built, by the core.
    """
    if isinstance(state_dtype, torch.dtype):
        if state_dtype not in _STATE_TORCH_DTYPES:
            raise ValueError(f"{owner}: state_dtype must be one of {STATE_DTYPES}, "
                             f"{tuple(_STATE_TORCH_DTYPES)} or None, got {state_dtype}")
        state_dtype = _STATE_TORCH_DTYPES[state_dtype]
    resolve(np.float16, None if state_dtype in ("float64", "int8") else state_dtype,
            state_rounding, master_weights, seed, owner)
    return {"state_dtype": state_dtype, "state_rounding": state_rounding,
            "master_weights": master_weights, "seed": int(seed)}


def _same(new: Any, old: Any) -> bool:
    try:
        return bool(new == old)
    except Exception:  # tensors of several elements, odd objects: treat as changed
        return False


def _to_float(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: expected a number, got {value!r}")
    return float(value)


class HyperSync:
    """The validation and edit-following methods of :class:`fastmoments.torch.Optimizer`."""

    # ----------------------------------------------------------- validation
    def _rule_values(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        """The fastmoments hyperparameters of a torch group (lr as a number), validated."""
        owner = type(self).__name__
        try:
            hyper = {key: _plain(values[key]) for key in self._rule_keys}
        except KeyError as exc:
            raise KeyError(f"{owner}: {where} has no {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"{owner}: {where}: {exc}") from None
        lr = hyper["lr"]
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)
                and lr >= 0):
            raise ValueError(f"{owner}: invalid lr: expected a finite number >= 0, got "
                             f"{values['lr']!r} ({where})")
        if hasattr(self, "_probe"):
            try:
                self._probe._check(hyper)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{exc} ({where})") from None
        return hyper

    def _check_options(self, values: dict[str, Any], where: str) -> None:
        """torch-only options: accepted (foreach, fused: every step is one fused pass)
        or refused (capturable, differentiable)."""
        owner = type(self).__name__
        for key in ("capturable", "differentiable"):
            if values.get(key):
                raise ValueError(f"{owner}: {key}=True is not supported (fastmoments steps "
                                 f"through its own kernels) ({where})")
        if self._decoupled is not None and "decoupled_weight_decay" in values:
            if bool(values["decoupled_weight_decay"]) != self._decoupled:
                other = "AdamW" if values["decoupled_weight_decay"] else "Adam"
                raise ValueError(f"{owner}: decoupled_weight_decay="
                                 f"{values['decoupled_weight_decay']!r} is {other}'s rule; use "
                                 f"fastmoments.torch.{other} ({where})")

    def _check_params(self, group: dict[str, Any], k: int) -> None:
        owner = type(self).__name__
        for i, p in enumerate(group["params"]):
            where = f"{owner}: param_groups[{k}]['params'][{i}]"
            if p.dtype not in STEPPED_DTYPES:
                raise TypeError(f"{where} has dtype {p.dtype}; fastmoments steps float32, "
                                "float64, float16 and bfloat16 parameters")
            if is_half(p.dtype):
                if p.device.type != "cpu":
                    raise TypeError(f"{where} is a {p.dtype} tensor on {p.device}; 16-bit "
                                    "parameters are stepped on the CPU only for now (keep "
                                    "float32 CUDA parameters; state_dtype='bfloat16' works "
                                    "there)")
                if p.dtype is torch.bfloat16 and bf16_unavailable():
                    raise TypeError(f"{where} is bfloat16: stepping bfloat16 parameters needs "
                                    "ml_dtypes (pip install ml_dtypes)")
            if p.layout is not torch.strided:
                raise TypeError(f"{where} has layout {p.layout}; expected a dense tensor")
            if p.device.type not in ("cpu", "cuda"):
                raise ValueError(f"{where} is on {p.device}; fastmoments steps CPU and CUDA "
                                 "tensors")
            if p.device.type == "cuda" and self._precision["state_dtype"] == "int8":
                raise TypeError(f"{where} is on {p.device}; state_dtype='int8' is for CPU "
                                "tensors in fastmoments.torch for now (use "
                                "state_dtype='bfloat16' for CUDA tensors, or "
                                "fastmoments.Adam(..., state_dtype='int8') over them)")
            if not p.is_contiguous():
                raise ValueError(f"{where} is not contiguous (strides {p.stride()}); make it "
                                 "contiguous first (p.data = p.data.contiguous())")

    def _snapshot(self) -> None:
        """Remember the structure and hyperparameters that the inner optimizers hold."""
        groups = self.param_groups
        self._seen_list = groups
        self._seen_groups = list(groups)
        self._seen_params = [(g["params"], len(g["params"])) for g in groups]
        keys = [key for key in self._rule_keys if key != "lr"] + list(self._torch_keys)
        self._seen_values = [{key: g[key] for key in keys if key in g} for g in groups]

    def _refresh(self) -> None:
        """Before a step: follow edits of the param groups (see the module notes)."""
        groups = self.param_groups
        seen = self._seen_groups
        if groups is not self._seen_list or len(groups) != len(seen):
            self._restructure()
            return
        for k, group in enumerate(groups):
            params, length = self._seen_params[k]
            if group is not seen[k] or group["params"] is not params or len(params) != length:
                self._restructure()
                return
        for k, group in enumerate(groups):
            lr = group.get("lr")
            if type(lr) is not float or not 0.0 <= lr < math.inf:
                # every group's lr before any cohort steps (each inner optimizer checks
                # only its own)
                self._rule_values({**group, "lr": _plain(lr)}, f"param_groups[{k}]")
            changed = None
            for key, old in self._seen_values[k].items():
                new = group.get(key, old)
                if new is not old and not _same(new, old):
                    if changed is None:
                        changed = {}
                    changed[key] = new
            if changed is not None:
                self._apply_edits(k, group, changed)

    def _apply_edits(self, k: int, group: dict[str, Any], changed: dict[str, Any]) -> None:
        where = f"param_groups[{k}]"
        hyper = self._rule_values(group, where)  # raises: nothing changes, asked again
        self._check_options(group, where)
        for cohort in self._cohorts:
            for gi, key in enumerate(cohort.group_keys):
                if key == k:
                    inner_group = cohort.inner.param_groups[gi]
                    for name in changed:
                        if name in hyper:
                            inner_group[name] = hyper[name]  # validated again, then rebuilt
        self._seen_values[k].update(changed)
