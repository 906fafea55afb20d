"""Moving optimizer state between fastmoments and torch.optim.

:func:`to_torch_state_dict` turns a fastmoments optimizer's state into the dict that
``torch.optim.<Same class>.state_dict()`` would return (per-parameter state with a
``"step"`` tensor and the moment buffers as tensors; param groups with torch's keys
and integer parameter ids), ready for ``torch_opt.load_state_dict``.
:func:`from_torch_state_dict` does the reverse, validating everything before the
fastmoments optimizer is changed.

Supported: ``SGD``, ``Adagrad``, ``RMSprop``, ``Adadelta``, ``Adam``, ``AdamW``,
``Adamax``, ``NAdam`` and ``RAdam`` (the rules torch.optim has), with the options
both sides have. torch is imported only when these functions are called.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .optim._checks import lr_at
from .optim._precision import MASTER, decode_state, stored_layout
from .optim._state import STATE_DICT_VERSION, to_host

if TYPE_CHECKING:  # pragma: no cover
    from .optim.base import Optimizer

__all__ = ["to_torch_state_dict", "from_torch_state_dict"]

# fastmoments class -> torch.optim class of the same name and semantics
_TORCH_CLASSES = ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam",
                  "RAdam")
# rules whose per-parameter torch state carries no "step" (SGD keeps only a momentum buffer)
_NO_STEP = ("SGD",)


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("torch interop needs PyTorch: pip install torch") from exc
    return torch


def _class_name(optimizer: Optimizer) -> str:
    name = type(optimizer).__name__
    if name not in _TORCH_CLASSES:
        raise TypeError(
            f"{name} has no torch.optim counterpart; interop supports {', '.join(_TORCH_CLASSES)}"
        )
    return name


def _check_expressible(name: str, hyper: dict[str, Any], k: int) -> None:
    """Refuse fastmoments-only options that torch cannot represent."""
    if name in ("Adam", "AdamW"):
        if hyper.get("eps_root", 0.0) != 0:
            raise ValueError(f"param_groups[{k}]: eps_root={hyper['eps_root']!r} has no "
                             "torch.optim equivalent (torch has eps_root = 0)")
        if hyper.get("amsgrad") and not hyper.get("amsgrad_bias_correction", True):
            raise ValueError(f"param_groups[{k}]: amsgrad_bias_correction=False has no "
                             "torch.optim equivalent")
        if hyper.get("cautious"):
            raise ValueError(f"param_groups[{k}]: cautious=True has no torch.optim "
                             "equivalent")


def _scalar_dtype(torch: Any) -> Any:
    # torch.optim keeps "step" (and NAdam's mu_product) in float64 when the default dtype
    # is float64, in float32 otherwise
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _values(group: Any, name: str) -> np.ndarray:
    """State ``name`` of ``group`` as values: a host copy, bfloat16 patterns widened to
    float32 (exact), int8 states dequantized."""
    precision = group.precision
    if precision is None or precision.state_dtype not in ("bfloat16", "int8"):
        return to_host(group.state[name])
    parts = {n: to_host(group.state[n])
             for n in stored_layout(group, name, precision.state_dtype)}
    return decode_state(group, name, parts, precision.state_dtype)


def to_torch_state_dict(optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's state in torch.optim's ``state_dict()`` format.

    Parameters
    ----------
    optimizer
        A fastmoments ``SGD``, ``Adagrad``, ``RMSprop``, ``Adadelta``, ``Adam``,
        ``AdamW``, ``Adamax``, ``NAdam`` or ``RAdam``.

    Returns
    -------
    dict
        ``{"state": {i: {...}}, "param_groups": [{..., "params": [i, ...]}]}`` with
        parameter ids numbered across groups in order (as torch does), CPU tensors of
        the parameters' shapes and dtypes, and a ``"step"`` tensor of torch's scalar
        dtype (float64 when ``torch.get_default_dtype()`` is float64, else float32).
        A schedule ``lr`` is exported as its current value. Load it with
        ``torch.optim.<Class>(params).load_state_dict(...)``. Reduced-precision state
        (``state_dtype="bfloat16"``) is exported as float32 tensors (exact), without the
        ``master_param`` copy of 16-bit parameters; :func:`from_torch_state_dict` rounds
        the values back to the optimizer's state dtype (to nearest) and takes the
        master copy from the parameters.

    Raises
    ------
    TypeError
        For a rule torch.optim does not have (``Yogi``).
    ValueError
        For options torch cannot express (``eps_root`` != 0,
        ``amsgrad_bias_correction=False``).
    """
    torch = _torch()
    name = _class_name(optimizer)
    torch_cls = getattr(torch.optim, name)
    accepted = set(inspect.signature(torch_cls.__init__).parameters) - {"self", "params"}
    scalar_dtype = _scalar_dtype(torch)
    step = optimizer.step_count
    state: dict[int, dict[str, Any]] = {}
    param_groups: list[dict[str, Any]] = []
    index = 0
    for k, group in enumerate(optimizer._groups):
        hyper = {key: value for key, value in group.hyper.items() if key != "params"}
        _check_expressible(name, hyper, k)
        hyper["lr"] = lr_at(hyper["lr"], step)
        kwargs = {key: value for key, value in hyper.items() if key in accepted}
        # a throwaway torch optimizer gives the exact param-group keys and defaults of the
        # installed torch version
        probe = torch_cls([torch.zeros(1)], **kwargs)
        torch_group = {key: value for key, value in probe.param_groups[0].items()
                       if key != "params"}
        ids = list(range(index, index + len(group.params)))
        torch_group["params"] = ids
        param_groups.append(torch_group)
        # torch creates state lazily at the first step, except Adagrad (eagerly)
        if step == 0 and name != "Adagrad":
            index += len(group.params)
            continue
        # reduced-precision state as float32 values (bfloat16 widens exactly); the master
        # copy of 16-bit parameters has no torch counterpart
        views = {buf: _values(group, buf) for buf in group.kernel.state_names}
        for j, p in enumerate(group.params):
            start, stop = int(group.offsets[j]), int(group.offsets[j + 1])
            entry: dict[str, Any] = {}
            if name not in _NO_STEP:
                entry["step"] = torch.tensor(float(step), dtype=scalar_dtype)
            if name == "NAdam":
                entry["mu_product"] = torch.tensor(group.host_state["mu_product"],
                                                   dtype=scalar_dtype)
            for buf, flat in views.items():
                entry[buf] = torch.from_numpy(flat[start:stop].reshape(tuple(p.shape)).copy())
            state[ids[j]] = entry
        index += len(group.params)
    return {"state": state, "param_groups": param_groups}


def _to_float(value: Any, what: str) -> float:
    if hasattr(value, "item") and not isinstance(value, np.ndarray):
        value = value.item()  # a 0-d torch tensor (capturable / fused lr, step)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: expected a number, got {value!r}")
    return float(value)


def _to_hyper(value: Any, what: str) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_to_hyper(v, f"{what}[{i}]") for i, v in enumerate(value))
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return _to_float(value, what)


def from_torch_state_dict(optimizer: Optimizer, state_dict: dict[str, Any], *,
                          step_count: int | None = None) -> None:
    """Load a torch.optim ``state_dict()`` into a fastmoments optimizer of the same class.

    The fastmoments optimizer must have the same param groups with the same number of
    parameters of the same shapes; the saved parameter ids are matched in order (as
    ``torch.optim.Optimizer.load_state_dict`` does). Hyperparameters are taken from
    the torch param groups (except a schedule ``lr``, which is kept, and
    fastmoments-only options such as ``eps_root``, which are kept); buffers are
    cast to each group's dtype. Everything is checked before anything changes.

    Parameters
    ----------
    optimizer
        The fastmoments optimizer to load into.
    state_dict
        ``torch_optimizer.state_dict()``.
    step_count
        Only for ``SGD``, whose torch state has no step count: the number of steps
        taken (it positions an lr schedule). Default: 1 when momentum buffers exist,
        else 0. For the other rules the count is read from the torch state.

    Raises
    ------
    TypeError, ValueError
        When the state dict does not match the optimizer (class options, number of
        groups or parameters, shapes, missing or partial state, unequal per-parameter
        step counts), or when ``step_count`` is given for a rule that records steps.
    """
    torch = _torch()
    name = _class_name(optimizer)
    owner = f"from_torch_state_dict({name})"
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise TypeError(f"{owner}: expected a torch.optim state_dict (a dict with 'state' and "
                        "'param_groups')")
    torch_state, torch_groups = state_dict["state"], state_dict["param_groups"]
    if not isinstance(torch_state, dict) or not isinstance(torch_groups, (list, tuple)):
        raise TypeError(f"{owner}: 'state' should be a dict and 'param_groups' a list")
    groups = optimizer._groups
    if len(torch_groups) != len(groups):
        raise ValueError(f"{owner}: the state dict has {len(torch_groups)} param groups, the "
                         f"optimizer has {len(groups)}")
    if step_count is not None and name not in _NO_STEP:
        raise ValueError(f"{owner}: step_count is read from the torch state for {name}; "
                         "it can only be given for SGD")
    if step_count is not None and (not isinstance(step_count, int) or isinstance(step_count, bool)
                                   or step_count < 0):
        raise ValueError(f"{owner}: step_count must be an integer >= 0, got {step_count!r}")

    merged_groups: list[dict[str, Any]] = []
    entries: list[list[dict[str, Any] | None]] = []
    for k, (group, tg) in enumerate(zip(groups, torch_groups, strict=True)):
        where = f"{owner}: param_groups[{k}]"
        if not isinstance(tg, dict) or not isinstance(tg.get("params"), (list, tuple)):
            raise TypeError(f"{where}: expected a dict with a 'params' list of ids")
        if len(tg["params"]) != len(group.params):
            raise ValueError(f"{where}: has {len(tg['params'])} params, the optimizer's group "
                             f"has {len(group.params)}")
        if name in ("Adam", "AdamW") and "decoupled_weight_decay" in tg:
            decoupled = bool(tg["decoupled_weight_decay"])
            if decoupled != (name == "AdamW"):
                raise ValueError(
                    f"{where}: decoupled_weight_decay={decoupled} is torch's "
                    f"{'AdamW' if decoupled else 'Adam'}; load it into fastmoments."
                    f"{'AdamW' if decoupled else 'Adam'}"
                )
        # torch-only execution options (foreach, fused, capturable, differentiable) have
        # no bearing on the state and are ignored; fastmoments-only ones are kept
        merged = {key: value for key, value in group.hyper.items() if key != "params"}
        for key in merged:
            if key in tg and not (key == "lr" and callable(group.hyper["lr"])):
                merged[key] = _to_hyper(tg[key], f"{where}[{key!r}]")
        _check_expressible(name, merged, k)
        merged_groups.append(merged)
        group_entries = []
        for pid in tg["params"]:
            entry = torch_state.get(pid)
            if entry is not None and not isinstance(entry, dict):
                raise TypeError(f"{owner}: state[{pid!r}] should be a dict")
            group_entries.append(entry or None)
        entries.append(group_entries)

    # the step count: one number shared by every parameter
    flat_entries = [e for group_entries in entries for e in group_entries]
    steps = set()
    for e in flat_entries:
        if e is not None and e.get("step") is not None:
            s = _to_float(e["step"], f"{owner}: a 'step' entry")
            if not (s >= 0 and s == math.floor(s) and math.isfinite(s)):
                raise ValueError(f"{owner}: a 'step' entry is {s!r}; expected a whole number")
            steps.add(int(s))
    if len(steps) > 1:
        raise ValueError(
            f"{owner}: the parameters have different step counts {sorted(steps)}; fastmoments "
            "keeps one step count per optimizer"
        )
    has_state = [e is not None and any(v is not None for v in e.values()) for e in flat_entries]

    state_arrays: list[dict[str, np.ndarray]] = []
    host_states: list[dict[str, float]] = []
    param_groups: list[dict[str, Any]] = []
    index = 0
    for k, (group, merged, group_entries) in enumerate(
        zip(groups, merged_groups, entries, strict=True)
    ):
        try:
            optimizer._check(merged)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{owner}: param_groups[{k}]: {exc}") from None
        names = optimizer._select(merged).state_names
        init = optimizer._initial(merged)
        # a reduced-precision group takes the values in float64, converted on load
        dtype = group.dtype if group.precision is None else np.dtype(np.float64)
        buffers = {n: np.full(group.numel, init.get(n, 0.0), dtype=dtype) for n in names}
        mu_products = set()
        for j, (p, entry) in enumerate(zip(group.params, group_entries, strict=True)):
            where = f"{owner}: state of params[{index + j}]"
            if not names or not has_state[index + j]:
                if names and any(has_state):
                    raise ValueError(
                        f"{where}: missing, while other parameters have state; fastmoments "
                        "cannot hold state for only some parameters"
                    )
                continue
            assert entry is not None
            known = set(names) | {"step", "mu_product"}
            unknown = sorted(key for key, v in entry.items() if key not in known and v is not None)
            if unknown:
                raise ValueError(f"{where}: unexpected buffers {unknown} for {name} with "
                                 f"these options (expected {list(names)})")
            start, stop = int(group.offsets[j]), int(group.offsets[j + 1])
            for n in names:
                t = entry.get(n)
                if t is None:
                    raise ValueError(f"{where}: missing buffer {n!r}")
                if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                    raise TypeError(f"{where}: {n!r} should be a floating-point tensor")
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"{where}: {n!r} has shape {tuple(t.shape)}, the parameter "
                                     f"has shape {tuple(p.shape)}")
                values = t.detach().to("cpu", torch.float64).numpy().reshape(-1)
                buffers[n][start:stop] = values.astype(dtype, copy=False)
            if name == "NAdam":
                if entry.get("mu_product") is None:
                    raise ValueError(f"{where}: missing 'mu_product'")
                mu_products.add(_to_float(entry["mu_product"], f"{where}: mu_product"))
        if len(mu_products) > 1:
            raise ValueError(f"{owner}: param_groups[{k}] has different mu_product values "
                             f"{sorted(mu_products)}")
        host = optimizer._initial_host_state(merged)
        if mu_products:
            host["mu_product"] = mu_products.pop()
        hyper = dict(merged)
        if callable(hyper["lr"]):
            hyper["lr_schedule"] = repr(hyper["lr"])
            hyper["lr"] = 0.0  # ignored: the schedule is kept
        hyper.update(num_params=len(group.params), numel=group.numel, dtype=str(group.dtype))
        if group.precision is not None:
            hyper["state_dtype"] = "float64"
            if group.precision.master:  # the master copy: the parameters as they are
                buffers[MASTER] = np.concatenate(
                    [np.asarray(p, dtype=np.float32).reshape(-1) for p in group.params])
        param_groups.append(hyper)
        state_arrays.append(buffers)
        host_states.append(host)
        index += len(group.params)

    if name in _NO_STEP:
        steps_taken = step_count if step_count is not None else (1 if any(has_state) else 0)
        if any(has_state) and steps_taken == 0:
            raise ValueError(f"{owner}: step_count=0 with momentum buffers present")
    else:
        steps_taken = steps.pop() if steps else 0
        if any(has_state) != (steps_taken > 0) and name != "Adagrad":
            raise ValueError(f"{owner}: step count {steps_taken} does not match the state "
                             "(state present only after a step)")
    optimizer.load_state_dict({
        "format_version": STATE_DICT_VERSION,
        "optimizer": type(optimizer).__name__,
        "step_count": steps_taken,
        "param_groups": param_groups,
        "state": state_arrays,
        "host_state": host_states,
    })
