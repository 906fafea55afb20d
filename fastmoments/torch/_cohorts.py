"""Cohorts: the inner optimizers, and the parameters each one steps.

A mixin of :class:`fastmoments.torch.Optimizer` (``self`` is that optimizer): building
inner optimizers (state carried over as host-copy records), and gathering each
cohort's gradients before a step.

Skipping parameters without a gradient
--------------------------------------
torch skips a parameter whose ``.grad`` is None: its state and its step count stay as
they are, so parameters can have different step counts (torch keeps one per
parameter). A fastmoments optimizer keeps one step count, so the parameters are
split into *cohorts*: the parameters that share one step history, each cohort one
inner optimizer (one kernel call per dtype/device/param group, the whole cohort in
one ``step``). Every step, a cohort whose parameters all have a gradient is stepped;
one whose parameters all lack one is left alone; one with some of each is split in
two once (its state copied into the two new inner optimizers), and the halves go
their own ways from then on. A split happens at most once per parameter, so the
common patterns -- every gradient every step, a frozen part that never gets one, a
head that gets one now and then -- cost no rebuild per step. (Passing zero gradients
instead would be wrong: Adam's moments decay and its step count advances on a zero
gradient, and momentum moves the parameter.)

16-bit parameters
-----------------
float16 and bfloat16 parameters go to inner optimizers of their own (cohorts are
split by step count *and* by whether the parameters are 16-bit), because the core's
``master_weights`` option is one per optimizer and means something only for them:
float32 and float64 parameters in the same torch optimizer are stepped as without
it. Between inner optimizers the state travels as values (bfloat16 states decoded
exactly), and is written into the new one's stored form (:func:`_store`); int8 states
travel as their stored parts, copied exactly (:mod:`._int8`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from .._arrays import as_cuda_array
from ..kernels.precision import bf16_bits_to_float32, float32_to_bf16_bits
from ..optim._precision import MASTER
from ..optim.base import Optimizer as _Rule
from . import _int8
from ._flat import FlatSlot, live_slot, whole_buffer
from ._int8 import Int8Parts
from ._views import is_half, numpy_view

__all__ = ["Cohorts"]

_UNSEEN = object()  # a cohort's cached gradient before (or instead of) the first one
_READY, _MOVED, _MISSING = object(), object(), object()


class _Record(NamedTuple):
    """One parameter's state on its way between inner optimizers (host copies)."""

    step: int
    # one per state buffer, ``master_param`` included when there is one: flat values
    # (float32 or float64; bfloat16 decoded), or an int8 state's parts (exact: see
    # _int8); None: initial
    buffers: dict[str, np.ndarray | Int8Parts] | None
    host: dict[str, float] | None  # the inner group's scalar state; None: initial


class _GroupLR:
    """The inner optimizers' lr: a schedule that returns the torch group's ``"lr"``."""

    __slots__ = ("group", "index")

    def __init__(self, group: dict[str, Any], index: int) -> None:
        self.group = group
        self.index = index

    def __call__(self, steps_taken: int) -> Any:
        lr = self.group["lr"]
        if type(lr) is float:
            return lr
        if isinstance(lr, torch.Tensor):
            return lr.item()
        return lr

    def __repr__(self) -> str:
        return f"param_groups[{self.index}]['lr']"


class _Cohort:
    """Parameters with one step history, and the inner optimizer that steps them."""

    __slots__ = ("inner", "params", "keys", "group_keys", "addresses", "flat_slots",
                 "slots", "all_flat", "seen", "seen_addresses", "grads", "cuda", "loaded")

    def __init__(self, inner: _Rule, params: list[torch.Tensor], keys: list[int],
                 group_keys: list[int], flat_slots: list[FlatSlot | None], loaded: bool) -> None:
        self.inner = inner
        self.params = params  # in the inner optimizer's order
        self.keys = keys  # the torch param group of each parameter
        self.group_keys = group_keys  # the torch param group of each inner group
        self.addresses = [p.data_ptr() for p in params]  # p.data replaced: rebuild
        # per parameter: its slot when its inner group is that FlatParams (its
        # gradient must then be the slot's view), else None
        self.flat_slots = flat_slots
        # per parameter: its slot when it is flattened (in a whole-buffer group or not);
        # it stays live until p.data changes, which rebuilds the cohort
        self.slots = [live_slot(p) for p in params]
        self.all_flat = all(s is not None for s in flat_slots)
        self.seen: list[Any] = [_UNSEEN] * len(params)  # the .grad the arrays below view
        self.seen_addresses = [0] * len(params)  # its data_ptr (g.data = ... replaces it)
        self.grads: list[Any] = [  # what the inner step is given, one per parameter
            None if s is None else s.buffer.flat.grads[s.index] for s in flat_slots
        ]
        self.cuda = [p.device.type == "cuda" for p in params]
        self.loaded = loaded  # built with state given (so step 0 is not the initial state)

    def forget_grads(self) -> None:
        """Drop the references to the last gradients (``zero_grad(set_to_none=True)``
        frees them, as torch does)."""
        for j, slot in enumerate(self.flat_slots):
            if slot is None:
                self.seen[j] = _UNSEEN
                self.grads[j] = None
        for group in self.inner._groups:
            # the list path keeps the last gradient arrays (see optim._groups.Group);
            # the next step records the new ones
            group.grad_objects[:] = [None] * len(group.grad_objects)


def _host_copy(view: Any) -> np.ndarray:
    """The values of a state view, flat, on the host (bfloat16 patterns decoded: exact)."""
    host = view.reshape(-1).copy() if isinstance(view, np.ndarray) else \
        view.copy_to_host().reshape(-1)
    if host.dtype == np.uint16:  # the core stores bfloat16 states as their patterns
        return bf16_bits_to_float32(host)
    return host


def _store(target: np.ndarray, values: np.ndarray) -> None:
    """Write state ``values`` into ``target``, a slice of a buffer in its stored form
    (bfloat16 patterns: rounded to nearest, exact for values that were bfloat16)."""
    if target.dtype == np.uint16:
        target[:] = float32_to_bf16_bits(values)
    else:
        target[:] = values


class Cohorts:
    """The cohort methods of :class:`fastmoments.torch.Optimizer`: build, split,
    rebuild, and gather the gradients."""

    # --------------------------------------------------------- inner optimizers
    def _param_array(self, p: torch.Tensor) -> Any:
        if p.device.type == "cpu":
            return numpy_view(p)
        return p.detach()

    def _inner_options(self, half: bool) -> dict[str, Any]:
        """The reduced-precision options of an inner optimizer (``master_weights`` for
        16-bit parameters only: the core refuses it for the others)."""
        options = dict(self._precision)
        if not half:
            del options["master_weights"]
        return options

    def _build(self, members: list[tuple[int, torch.Tensor]], records: dict[int, _Record],
               values: list[dict[str, Any]] | None = None) -> list[_Cohort]:
        """Cohorts for ``members`` ((group index, parameter) pairs), one per step count.

        ``records`` gives state (by ``id(parameter)``; missing: fresh); ``values``
        the hyperparameters of each group (default: the param groups themselves).
        """
        by_step: dict[tuple[int, bool], list[tuple[int, torch.Tensor, _Record | None]]] = {}
        for k, p in members:
            record = records.get(id(p))
            step = record.step if record is not None else 0
            by_step.setdefault((step, is_half(p.dtype)), []).append((k, p, record))
        return [self._build_one(step, entries, values, half)
                for (step, half), entries in by_step.items()]

    def _build_one(self, step: int, entries: list[tuple[int, torch.Tensor, _Record | None]],
                   values: list[dict[str, Any]] | None, half: bool) -> _Cohort:
        groups = values if values is not None else self.param_groups
        parts: dict[tuple, list[tuple[torch.Tensor, _Record | None]]] = {}
        for k, p, record in entries:
            host = None if record is None or record.host is None else tuple(
                sorted(record.host.items()))
            parts.setdefault((k, p.dtype, p.device, host), []).append((p, record))
        inner_groups: list[dict[str, Any]] = []
        params: list[torch.Tensor] = []
        keys: list[int] = []
        group_keys: list[int] = []
        flat_slots: list[FlatSlot | None] = []
        for (k, _, _, _), part in parts.items():
            ps = [p for p, _ in part]
            buffer = whole_buffer(ps)
            if buffer is not None:  # the group tiles one flat buffer: one kernel over it
                arrays: Any = buffer.flat
                flat_slots += [live_slot(p) for p in ps]
            else:
                arrays = [self._param_array(p) for p in ps]
                flat_slots += [None] * len(ps)
            hyper = self._rule_values(groups[k], f"param_groups[{k}]")
            hyper["lr"] = _GroupLR(self.param_groups[k], k)
            inner_groups.append({"params": arrays, **hyper})
            params += ps
            keys += [k] * len(ps)
            group_keys.append(k)
        try:
            inner = self._rule(inner_groups, **self._inner_options(half))
        except (TypeError, ValueError) as exc:  # the core's refusal, said as this class's
            message = str(exc)
            owner = type(self).__name__
            if not message.startswith(f"{owner}:"):
                message = f"{owner}: {message}"
            raise type(exc)(message) from None
        loaded = any(record is not None for _, _, record in entries)
        if step or loaded:
            self._load_records(inner, step, list(parts.values()))
        return _Cohort(inner, params, keys, group_keys, flat_slots, loaded)

    def _where(self, p: torch.Tensor) -> str:
        for k, group in enumerate(self.param_groups):
            for i, q in enumerate(group["params"]):
                if q is p:
                    return f"param_groups[{k}]['params'][{i}]"
        return "a parameter"  # pragma: no cover

    def _load_records(self, inner: _Rule, step: int,
                      parts: list[list[tuple[torch.Tensor, _Record | None]]]) -> None:
        """Give a new inner optimizer its step count and the records' state.

        A record without ``master_param`` (torch.optim's state, or state from before the
        parameter was 16-bit) keeps the master copy the new optimizer took from the
        parameter; one with it, for an optimizer that keeps none, drops it.
        """
        owner = type(self).__name__
        sd = inner.state_dict()
        sd["step_count"] = step
        for gi, part in enumerate(parts):
            group = inner._groups[gi]
            offsets = group.offsets
            int8 = _int8.is_int8(group)
            names = set(_int8.state_names(group))
            for j, (p, record) in enumerate(part):
                if record is None or record.buffers is None:
                    continue
                given = set(record.buffers) - {MASTER}
                if given != names - {MASTER}:
                    raise ValueError(
                        f"{owner}: the state of {self._where(p)} has buffers "
                        f"{sorted(given)}, expected {sorted(names - {MASTER})}")
                start, stop = int(offsets[j]), int(offsets[j + 1])
                for name in names:
                    values = record.buffers.get(name)
                    if values is None:  # only the master copy can be missing (see above)
                        continue
                    size = values.codes.size if isinstance(values, Int8Parts) else values.size
                    if size != stop - start:
                        raise ValueError(f"{owner}: the state of {self._where(p)}: {name!r} has "
                                         f"{size} elements, the parameter {stop - start}")
                    if int8 and name != MASTER:  # int8 parts copied, values quantized
                        if not isinstance(values, Int8Parts):
                            values = _int8.quantize(values, name)
                        _int8.write(sd["state"][gi], group, j, name, values)
                        continue
                    if isinstance(values, Int8Parts):
                        values = _int8.dequantize(values, name)
                    _store(sd["state"][gi][name][start:stop], values)
            host = next((r.host for _, r in part if r is not None and r.host is not None), None)
            if host is not None:
                if set(host) != set(sd["host_state"][gi]):
                    raise ValueError(f"{owner}: host state {sorted(host)}, expected "
                                     f"{sorted(sd['host_state'][gi])}")
                sd["host_state"][gi] = dict(host)
        inner.load_state_dict(sd)

    def _records(self, cohort: _Cohort) -> dict[int, _Record]:
        """The state of a cohort's parameters, as host copies (by ``id(parameter)``)."""
        inner = cohort.inner
        step = inner.step_count
        if step == 0 and not cohort.loaded:
            return {}  # the initial state: rebuilt as it was
        out = {}
        j = 0
        for group in inner._groups:
            host = dict(group.host_state)
            int8 = _int8.is_int8(group)
            views = {name: (_int8.tensor_parts(group, name) if int8 and name != MASTER
                            else group.views(name)) for name in _int8.state_names(group)}
            for i in range(len(group.params)):
                buffers = {name: (Int8Parts(*(a.copy() for a in v[i]))
                                  if isinstance(v[i], Int8Parts) else _host_copy(v[i]))
                           for name, v in views.items()}
                out[id(cohort.params[j])] = _Record(step, buffers, host)
                j += 1
        return out

    def _split(self, cohort: _Cohort, missing: list[int]) -> list[_Cohort]:
        """The cohort as two: the parameters with a gradient, then those without."""
        records = self._records(cohort)
        gone = set(missing)
        members = list(zip(cohort.keys, cohort.params))
        present = [m for j, m in enumerate(members) if j not in gone]
        absent = [m for j, m in enumerate(members) if j in gone]
        return self._build(present, records) + self._build(absent, records)

    def _rebuild(self, cohort: _Cohort) -> list[_Cohort]:
        """The cohort over its parameters' current tensors (``p.data`` was replaced)."""
        for k, p in zip(cohort.keys, cohort.params):
            self._check_params({"params": [p]}, k)
        return self._build(list(zip(cohort.keys, cohort.params)), self._records(cohort))

    # ------------------------------------------------------------- gradients
    def _adopt(self, cohort: _Cohort, j: int, p: torch.Tensor, g: torch.Tensor) -> None:
        """A new ``.grad`` for position ``j``: check it and view it without copying."""
        slot = cohort.slots[j]
        if slot is not None and g is slot.grad and g.data_ptr() == slot.grad_address:
            cohort.seen[j] = g  # the flat gradient buffer's own view
            cohort.seen_addresses[j] = slot.grad_address
            cohort.grads[j] = slot.buffer.flat.grads[slot.index]
            return
        if g.layout is not torch.strided:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                               f"({self._where(p)} has a {g.layout} gradient)")
        cuda = cohort.cuda[j]
        if (g.dtype is not p.dtype or g.shape != p.shape
                or (g.device != p.device if cuda else not g.is_cpu)):
            raise TypeError(f"{type(self).__name__}: the gradient of {self._where(p)} is "
                            f"{g.dtype} {tuple(g.shape)} on {g.device}; the parameter is "
                            f"{p.dtype} {tuple(p.shape)} on {p.device}")
        data = g.detach() if g.requires_grad else g
        if cohort.flat_slots[j] is not None:  # stepped from the flat gradient buffer
            if slot.grad.data_ptr() != slot.grad_address:
                raise RuntimeError(f"{type(self).__name__}: the gradient view of "
                                   f"{self._where(p)} no longer views the flat buffer "
                                   "(its .data was replaced); call flatten_ again")
            with torch.no_grad():
                slot.grad.copy_(data)
            p.grad = slot.grad  # the view back in place (see flatten_)
            cohort.seen[j] = slot.grad
            cohort.seen_addresses[j] = slot.grad_address
            return
        cache = data.is_contiguous()
        if not cache:  # a copy: made again at each step (it would not see new values)
            data = data.contiguous()
        cohort.grads[j] = as_cuda_array(data) if cuda else numpy_view(data)
        cohort.seen[j] = g if cache else _UNSEEN
        cohort.seen_addresses[j] = g.data_ptr()

    def _gather(self, cohort: _Cohort) -> tuple[Any, Any]:
        """(``_READY``, the gradients), (``_MISSING``, positions without one) or
        (``_MOVED``, None) when a parameter's storage was replaced."""
        params = cohort.params
        seen = cohort.seen
        seen_addresses = cohort.seen_addresses
        addresses = cohort.addresses
        missing = None
        for j, p in enumerate(params):
            if p.data_ptr() != addresses[j]:
                return _MOVED, None
            g = p.grad
            if g is seen[j] and g.data_ptr() == seen_addresses[j]:
                continue
            if g is None:
                if missing is None:
                    missing = []
                missing.append(j)
                continue
            self._adopt(cohort, j, p, g)
        if missing is not None:
            return _MISSING, missing
        return _READY, None if cohort.all_flat else cohort.grads
