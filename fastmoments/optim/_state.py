"""``state_dict()`` and ``load_state_dict()``: the plain-dict form of an optimizer.

A state dict holds NumPy arrays and Python scalars only. Loading builds a complete
plan first (every key, shape, dtype and hyperparameter checked against the
optimizer) and changes nothing when it refuses.

Reduced-precision state (``state_dtype``, see :mod:`._precision`) is saved in its
stored form, exactly: bfloat16 buffers as their ``uint16`` patterns, with
``param_groups[k]["state_dtype"]`` naming it (the key is absent for the default,
state in the parameters' dtype), and a float32 ``master_param`` buffer for 16-bit
parameters kept with master weights; an int8 state as its codes (``uint8``), its
block scales ``<name>__absmax`` and the float32 values of its small tensors
``<name>__float32``. A state dict loads into an optimizer whose ``state_dtype``
differs, converted: bfloat16 to float32/float64 exactly, int8 dequantized, float32 or
float64 to bfloat16 rounded to nearest (ties to even), to int8 quantized (nearest map
entry), float64 to float32 rounded to nearest. A ``master_param`` buffer is dropped
when the optimizer keeps none, and refused when the optimizer keeps one and the state
dict has none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels import precision as _precision_codecs
from . import _precision
from ._checks import is_number, lr_at

if TYPE_CHECKING:
    from .base import Optimizer

__all__ = ["STATE_DICT_VERSION", "state_dict", "load_state_dict", "check_form", "plan_load",
           "to_host",
           "copy_into"]

STATE_DICT_VERSION = 1


def state_dict(opt: Optimizer) -> dict[str, Any]:
    """The optimizer state as a plain dict of NumPy arrays and Python scalars.

    Keys: ``format_version``, ``optimizer`` (class name), ``step_count``,
    ``param_groups`` (hyperparameters and sizes, one dict per group; a schedule
    ``lr`` is stored as its current value with ``lr_schedule`` = its repr),
    ``state`` (one dict of flat state buffers per group, copies) and
    ``host_state`` (per-group scalar state, e.g. NAdam's ``mu_product``).
    """
    groups = []
    for group in opt._groups:
        hyper = {k: _plain(v) for k, v in group.hyper.items() if k != "params"}
        if callable(group.hyper["lr"]):
            hyper["lr"] = float(lr_at(group.hyper["lr"], opt.step_count))
            hyper["lr_schedule"] = repr(group.hyper["lr"])
        hyper["num_params"] = len(group.params)
        hyper["numel"] = group.numel
        hyper["dtype"] = str(group.dtype)
        if group.precision is not None:
            hyper["state_dtype"] = group.precision.state_dtype
        groups.append(hyper)
    state = []
    for group in opt._groups:
        state.append({name: to_host(buf) for name, buf in group.state.items()})
    return {
        "format_version": STATE_DICT_VERSION,
        "optimizer": type(opt).__name__,
        "step_count": int(opt.step_count),
        "param_groups": groups,
        "state": state,
        "host_state": [dict(g.host_state) for g in opt._groups],
    }


def load_state_dict(opt: Optimizer, state_dict: dict[str, Any]) -> None:
    """Load a :meth:`state_dict`; everything is validated before anything changes."""
    plan = plan_load(opt, state_dict)
    for group, hyper, arrays, host in plan:
        for key, value in hyper.items():
            if key == "lr" and callable(group.hyper["lr"]) and "lr_schedule" in hyper:
                continue
            if key in opt.defaults:
                group.hyper[key] = value
        opt._prepare(group, fresh=False)
        for name, array in arrays.items():
            copy_into(group.state[name], array)
        group.host_state = dict(host)
    opt.step_count = int(state_dict["step_count"])
    for group in opt._groups:  # the random bits of stochastic rounding resume too
        _precision.sync_counter(group, opt.step_count)


def check_form(sd: Any, num_groups: int) -> None:
    """That ``sd`` has a state dict's keys and one dict per group in each per-group list
    (``num_groups`` of them); the contents are checked by the caller."""
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
        if len(sd[key]) != num_groups:
            raise ValueError(f"state_dict: has {len(sd[key])} param groups, the optimizer "
                             f"has {num_groups}")


def plan_load(opt: Optimizer, sd: dict[str, Any]) -> list:
    owner = type(opt).__name__
    check_form(sd, len(opt._groups))
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
    plan = []
    for k, (group, hyper, arrays, host) in enumerate(
        zip(opt._groups, sd["param_groups"], sd["state"], sd["host_state"])
    ):
        where = f"state_dict: param_groups[{k}]"
        if hyper.get("num_params") != len(group.params) or hyper.get("numel") != group.numel:
            raise ValueError(
                f"{where}: has {hyper.get('num_params')} params / {hyper.get('numel')} "
                f"elements, the optimizer's group has {len(group.params)} / {group.numel}"
            )
        merged = {**group.hyper}
        for key, value in hyper.items():
            if key in opt.defaults:
                merged[key] = _restore(value)
        if "lr_schedule" in hyper and callable(group.hyper["lr"]):
            merged["lr"] = group.hyper["lr"]
        try:
            opt._check(merged)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        names = opt._select(merged).state_names
        arrays = _converted(group, hyper, arrays, names, k)
        expected_host = set(opt._initial_host_state(merged))
        if set(host) != expected_host:
            raise ValueError(
                f"state_dict: host_state[{k}] has keys {sorted(host)}, expected "
                f"{sorted(expected_host)}"
            )
        for key, v in host.items():
            if not is_number(v):
                raise TypeError(f"state_dict: host_state[{k}][{key!r}] should be a number, "
                                f"got {v!r}")
        plan.append((group, {k2: _restore(v) for k2, v in hyper.items()}, arrays,
                     {key: float(v) for key, v in host.items()}))
    return plan


def _converted(group: Any, hyper: dict[str, Any], arrays: dict[str, Any],
               names: tuple[str, ...], k: int) -> dict[str, Any]:
    """The state arrays of group ``k`` of a state dict, checked (names, shapes, stored
    dtypes) and converted to the group's stored form (see the module docstring)."""
    precision = group.precision
    master = precision is not None and precision.master
    source = hyper.get("state_dtype")
    if source is None:  # the default: the state in the parameters' dtype
        source = hyper.get("dtype", str(group.dtype))
        if source not in ("float32", "float64"):
            source = "float32"  # 16-bit params keep float32 state by default
    if source not in _precision_codecs.STATE_DTYPES:
        raise ValueError(f"state_dict: param_groups[{k}]['state_dtype'] is {source!r}, "
                         f"expected one of {_precision_codecs.STATE_DTYPES}")
    target = precision.state_dtype if precision is not None else str(group.dtype)
    if precision is None and "state_dtype" not in hyper:
        source = target  # default storage on both sides: the dtypes must match, as ever
    layouts = {name: _precision.stored_layout(group, name, source) for name in names}
    expected = {n for layout in layouts.values() for n in layout}
    given = set(arrays) - {_precision.MASTER}
    if given != expected or (master and _precision.MASTER not in arrays):
        wanted = sorted((*expected, _precision.MASTER) if master else expected)
        raise ValueError(
            f"state_dict: state[{k}] has buffers {sorted(arrays)}, expected {wanted}"
        )
    if _precision.MASTER in arrays:
        layouts[_precision.MASTER] = {_precision.MASTER: ((group.numel,), np.dtype(np.float32))}
    for layout in layouts.values():
        for name, (shape, dtype) in layout.items():
            a = arrays[name]
            if not isinstance(a, np.ndarray):
                raise TypeError(f"state_dict: state[{k}][{name!r}] is not a NumPy array")
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(
                    f"state_dict: state[{k}][{name!r}] has shape {a.shape} and dtype "
                    f"{a.dtype}, expected {shape} and {dtype}"
                    + (f" (state_dtype {source!r})" if source != str(group.dtype) else "")
                )
    out = {}
    if master:
        out[_precision.MASTER] = arrays[_precision.MASTER]
    for name in names:
        parts = {n: arrays[n] for n in layouts[name]}
        if source == target:
            out.update(parts)
        else:  # bfloat16 -> float: exact; to bfloat16, int8 or float32: nearest
            values = _precision.decode_state(group, name, parts, source)
            out.update(_precision.encode_state(group, name, values, target))
    return out


def to_host(buf: Any) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        return buf.copy()
    return buf.copy_to_host()


def copy_into(buf: Any, array: np.ndarray) -> None:
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
