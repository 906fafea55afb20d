"""State: per-parameter state and state dicts in torch.optim's format.

A mixin of :class:`fastmoments.torch.Optimizer` (``self`` is that optimizer): the
``state`` property (tensors over the live buffers), ``state_dict`` and
``load_state_dict``, converting to and from the inner optimizers' state.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ..optim._precision import MASTER
from . import _int8
from ._cohorts import _Record
from ._hyper import _to_float
from ._int8 import Int8Parts
from ._views import is_half, tensor_view

__all__ = ["TorchState"]


def _as_tensor(view: Any, p: torch.Tensor) -> torch.Tensor:
    """A state view as a tensor over the same memory (bfloat16 patterns as bfloat16)."""
    if isinstance(view, np.ndarray):
        return tensor_view(view)
    t = torch.as_tensor(view, device=p.device)  # pragma: no cover - needs a GPU
    return t.view(torch.bfloat16) if t.dtype == torch.uint16 else t  # pragma: no cover


def _int8_views(group: Any) -> dict[str, list[np.ndarray]]:
    """Per-parameter views of an int8 group's states: each state as its codes (the
    parameter's shape), ``<name>__absmax`` and ``<name>__float32`` (see ``_int8``)."""
    views: dict[str, list[np.ndarray]] = {}
    for name in _int8.state_names(group):
        if name == MASTER:
            views[name] = group.views(name)
            continue
        parts = _int8.tensor_parts(group, name)
        views[name] = [part.codes.reshape(np.shape(q)) for part, q in zip(parts, group.params)]
        for suffix, k in zip(_int8.AUX_SUFFIXES, (1, 2)):
            views[name + suffix] = [part[k] for part in parts]
    return views


def _scalar_dtype() -> torch.dtype:
    # torch.optim keeps "step" (and NAdam's mu_product) in float64 when the default
    # dtype is float64, in float32 otherwise
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class TorchState:
    """The state methods of :class:`fastmoments.torch.Optimizer`."""

    # ----------------------------------------------------------------- state
    @property
    def state(self) -> defaultdict:  # type: ignore[override]
        """Per-parameter state in torch's form: tensors that view the live buffers.

        Built again only when a step or a rebuild has changed it (so that
        ``opt.state[p]`` in a loop over the parameters stays cheap)."""
        # (the inner optimizers themselves, so that their ids stay theirs)
        token = tuple((c.inner, c.inner.step_count) for c in self._cohorts)
        cached = self.__dict__.get("_state_cache")
        if cached is not None and len(cached[0]) == len(token) and all(
                a is c and s == t for (a, s), (c, t) in zip(cached[0], token)):
            return cached[1]
        entries = self._entries()
        out: defaultdict = defaultdict(dict)
        for group in self.param_groups:
            for p in group["params"]:
                entry = entries.get(id(p))
                if entry is not None:
                    out[p] = entry
        self.__dict__["_state_cache"] = (token, out)
        return out

    @state.setter
    def state(self, value: Any) -> None:
        if value:  # torch's base __init__ assigns an empty defaultdict
            raise AttributeError(f"{type(self).__name__}.state cannot be replaced; use "
                                 "load_state_dict")

    def _entries(self) -> dict[int, dict[str, Any]]:
        """torch's per-parameter state entries (by ``id(parameter)``), over live buffers."""
        scalar = _scalar_dtype()
        out: dict[int, dict[str, Any]] = {}
        for cohort in self._cohorts:
            inner = cohort.inner
            step = inner.step_count
            if step == 0 and not self._eager:
                continue  # torch creates the state at the first step
            j = 0
            for group in inner._groups:
                views = _int8_views(group) if _int8.is_int8(group) else {
                    name: group.views(name) for name in group.state}
                for i in range(len(group.params)):
                    p = cohort.params[j]
                    j += 1
                    entry: dict[str, Any] = {}
                    if self._has_step:
                        entry["step"] = torch.tensor(float(step), dtype=scalar)
                    for key, value in group.host_state.items():
                        entry[key] = (torch.tensor(value, dtype=scalar)
                                      if key in self._tensor_host else float(value))
                    for name, v in views.items():
                        entry[name] = _as_tensor(v[i], p)
                    if entry:
                        out[id(p)] = entry
        return out

    def state_dict(self) -> dict[str, Any]:
        """The state in torch.optim's format (loadable into the torch.optim class of the
        same name, and back).

        Returns
        -------
        dict
            ``{"state": {id: {"step": tensor, <buffer>: tensor, ...}}, "param_groups":
            [{<hyperparameters>, "params": [id, ...]}]}``: ids number the parameters
            across groups in order; each parameter's ``"step"`` is its own step count;
            parameters never stepped have no entry (Adagrad's state exists from the
            start, as in torch). The buffers view the live state (as torch's
            ``state_dict`` returns its state tensors): copy them to keep a snapshot.
            fastmoments-only keys (``eps_root``, ...) appear in the param groups;
            torch.optim ignores them. Rules torch does not have keep their scalar
            state (SWATS's switch, Yogi's flag) as floats in each entry. Reduced
            precision: states stored as bfloat16 are ``torch.bfloat16`` tensors;
            16-bit parameters have float32 states and, with master weights, their
            float32 master copy as ``"master_param"``. An int8 state ``<name>`` is
            three tensors, the parameter's piece of the core's stored buffers:
            ``<name>`` its ``uint8`` codes (the parameter's shape),
            ``<name>__absmax`` one float32 scale per block of 256 elements, and
            ``<name>__float32`` its float32 values when the parameter has fewer
            than 4096 elements (then the codes and scales are unused), else empty.
            torch.optim cannot read int8 states (it would cast the codes).
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        entries = self._entries()
        index: dict[int, int] = {}
        state: dict[int, dict[str, Any]] = {}
        param_groups = []
        for group in self.param_groups:
            packed = {key: value for key, value in group.items() if key != "params"}
            ids = []
            for p in group["params"]:
                pid = index.setdefault(id(p), len(index))
                ids.append(pid)
                entry = entries.get(id(p))
                if entry is not None:
                    state[pid] = entry
            packed["params"] = ids
            param_groups.append(packed)
        sd: dict[str, Any] = {"state": state, "param_groups": param_groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict in torch.optim's format (from this class or from torch.optim's
        class of the same name); everything is checked before anything changes.

        Parameters
        ----------
        state_dict
            ``optimizer.state_dict()``. Parameters are matched in order, as torch
            does; hyperparameters are taken from its param groups (keys it lacks
            keep their values); each parameter's ``"step"`` is kept (parameters with
            different step counts are stepped by different inner optimizers). States
            are converted to this optimizer's form (to bfloat16: rounded to nearest;
            int8 states dequantized, or copied exactly into an int8 optimizer; other
            states to int8: quantized per parameter, as the core does);
            ``"master_param"`` is dropped where no master copy is kept, and, where one
            is kept but the entry has none (torch.optim's state), the master copy is
            taken from the parameter as it is now: load the model first.

        Raises
        ------
        TypeError, ValueError
            When the state dict does not fit: the number of groups or parameters,
            shapes, missing or unexpected buffers, invalid hyperparameters.
        """
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise TypeError(f"{owner}: expected a dict with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise TypeError(f"{owner}: 'param_groups' should be a list and 'state' a dict")
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(f"{owner}: loaded state dict has {len(saved_groups)} parameter "
                             f"groups, the optimizer has {len(groups)}")
        merged: list[dict[str, Any]] = []
        by_id: dict[Any, tuple[int, torch.Tensor]] = {}
        for k, (group, saved) in enumerate(zip(groups, saved_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise TypeError(f"{owner}: param_groups[{k}] should be a dict with a 'params' "
                                "list")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{owner}: param_groups[{k}] has {len(saved['params'])} "
                                 f"params, the optimizer's group has {len(group['params'])}")
            values = {key: value for key, value in group.items() if key != "params"}
            values.update({key: value for key, value in saved.items() if key != "params"})
            self._rule_values(values, f"loaded param_groups[{k}]")
            self._check_options(values, f"loaded param_groups[{k}]")
            merged.append(values)
            for pid, p in zip(saved["params"], group["params"]):
                by_id[pid] = (k, p)
        records: dict[int, _Record] = {}
        for pid, entry in saved_state.items():
            if pid not in by_id:
                continue  # as torch: state for ids no group names is ignored
            k, p = by_id[pid]
            record = self._record(entry, p, merged[k], f"{owner}: state[{pid!r}]")
            if record is not None:
                records[id(p)] = record
        members = [(k, p) for k, g in enumerate(groups) for p in g["params"]]
        cohorts = self._build(members, records, merged)  # raises before any change
        for group, values in zip(groups, merged):
            params = group["params"]
            group.clear()
            group.update(values)
            group["params"] = params
        self._cohorts = cohorts
        self._snapshot()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _record(self, entry: Any, p: torch.Tensor, values: dict[str, Any],
                where: str) -> _Record | None:
        """A torch state entry as a record (None: no state), checked."""
        if not isinstance(entry, dict):
            raise TypeError(f"{where}: expected a dict, got {type(entry).__name__}")
        items = {key: value for key, value in entry.items() if value is not None}
        if not items:
            return None
        hyper = self._rule_values(values, where)
        names = tuple(self._probe._select(hyper).state_names)
        master = items.pop(MASTER, None)
        host_names = tuple(self._probe._initial_host_state(hyper))
        if "step" in items:
            step_value = _to_float(items.pop("step"), f"{where}['step']")
            if not (math.isfinite(step_value) and step_value >= 0
                    and step_value == math.floor(step_value)):
                raise ValueError(f"{where}: 'step' is {step_value!r}; expected a whole number")
            step = int(step_value)
        elif self._has_step:
            raise ValueError(f"{where}: no 'step'")
        else:  # SGD: torch keeps no step; momentum buffers exist after the first step
            step = 1 if (all(n in items for n in names) if names else master is not None) \
                else 0
        host = {h: _to_float(items.pop(h), f"{where}[{h!r}]") for h in host_names if h in items}
        if host_names and step > 0 and len(host) != len(host_names):
            missing = sorted(set(host_names) - set(host))
            raise ValueError(f"{where}: missing {missing}")
        buffers: dict[str, np.ndarray | Int8Parts] = {}
        for name in names:
            t = items.pop(name, None)
            if t is None:
                raise ValueError(f"{where}: missing buffer {name!r}")
            aux = [items.pop(name + suffix, None) for suffix in _int8.AUX_SUFFIXES]
            if any(a is not None for a in aux) or (isinstance(t, torch.Tensor)
                                                   and t.dtype == torch.uint8):
                buffers[name] = self._int8_parts(name, t, aux, p, where)
            else:
                buffers[name] = self._state_values(t, p, f"{where}: {name!r}")
        if master is not None and is_half(p.dtype) and self._precision["master_weights"] \
                is not False:
            buffers[MASTER] = self._state_values(master, p, f"{where}: {MASTER!r}")
        if items:
            raise ValueError(f"{where}: unexpected entries {sorted(items)} for "
                             f"{type(self).__name__} with these options (expected "
                             f"{['step'] if self._has_step else []} + {list(names)})")
        return _Record(step, buffers, host or None)

    @staticmethod
    def _int8_parts(name: str, codes: Any, aux: list[Any], p: torch.Tensor,
                    where: str) -> Int8Parts:
        """A loaded int8 state (codes, scales, float32 values) as flat host copies,
        checked against the parameter's size."""
        n = p.numel()
        wanted = _int8.sizes(n)
        for t, suffix, size in zip(aux, _int8.AUX_SUFFIXES, wanted):
            key = name + suffix
            if t is None:
                raise ValueError(f"{where}: {name!r} is an int8 state (uint8 codes) without "
                                 f"{key!r}; an int8 state is {name!r} with "
                                 f"{[name + s for s in _int8.AUX_SUFFIXES]}, as "
                                 "state_dict() writes it")
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() != 1:
                raise TypeError(f"{where}: {key!r} should be a 1-d float32 tensor")
            if t.numel() != size:
                raise ValueError(f"{where}: {key!r} has {t.numel()} elements; a parameter of "
                                 f"{n} elements has {size}")
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
            raise TypeError(f"{where}: {name!r} should be a uint8 tensor (int8 codes) beside "
                            f"{name + _int8.AUX_SUFFIXES[0]!r}")
        if tuple(codes.shape) != tuple(p.shape):
            raise ValueError(f"{where}: {name!r} has shape {tuple(codes.shape)}, the "
                             f"parameter has shape {tuple(p.shape)}")
        return Int8Parts(*(t.detach().to("cpu").numpy().reshape(-1).copy()
                           for t in (codes, *aux)))

    @staticmethod
    def _state_values(t: Any, p: torch.Tensor, where: str) -> np.ndarray:
        """A loaded state tensor's values, flat, float64 for float64 tensors and float32
        for the others (exact), checked against the parameter's shape."""
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{where} should be a floating-point tensor")
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{where} has shape {tuple(t.shape)}, the parameter has shape "
                             f"{tuple(p.shape)}")
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        return t.detach().to("cpu", dtype).numpy().reshape(-1)
