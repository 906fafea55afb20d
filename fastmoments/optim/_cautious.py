"""``cautious=True`` (Liang et al., 2024): the update masked where its sign disagrees
with the gradient's, each tensor's rest scaled by ``numel / (agreeing + 1)``.

The scale needs a count over each whole tensor before any element of it moves, so a
cautious rule runs two segmented passes (:class:`Cautious`): the first counts the
agreeing elements per tensor (and may update the state), the second applies the masked
update. A class with the option derives from :class:`CautiousOption` and returns its
element-wise :class:`~fastmoments.kernels.elementwise.Kernel` or its :class:`Cautious`
variant from ``_select``. Its class-level ``_run`` stays the element-wise one, so that
with ``cautious=False`` nothing changes (step()'s short path, reduced precision, one
array per shard in ``fastmoments.distributed``); the first group that selects its
cautious variant gives the optimizer a ``_run`` of its own (:func:`run`), and
``ShardedOptimizer`` cuts the shards at the tensors' edges when a group is cautious.

Reduced precision (``state_dtype``, 16-bit parameters; :mod:`._precision`) runs each
pass's variant for the group's layout (:func:`~.multipass._variant`), with the random
bits of the element-wise rule (its state order numbers the streams) and the step's key
written first (:func:`~.multipass._advance_key`), as the multi-pass rules do. A stored
state must be computed once, from the old state, and the parameter must move by the new
state before it is narrowed. A count pass that stores nothing (Adam, AdamW, Lion: the
apply pass recomputes the state) already does that; a count pass that stores the state
(ADOPT, AdEMAMix, Adan: the apply pass reads it back) would hand the apply pass narrowed
values, so such a group runs the count pass without its stores and an apply pass that
recomputes the state first (:func:`recomputing_apply`). int8 states follow
``state_rounding`` as in the element-wise loops (second moments stochastically by default,
the same random bits). Refused: 16-bit CUDA parameters; int8 state on the GPU or with
16-bit parameters.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np

from ..kernels.compile import rule
from ..kernels.elementwise import Kernel, named_scalars
from ..kernels.segmented import SegmentedKernel
from ..kernels.segmented_run import run as run_pass
from ..kernels.segmented_run import workspace
from ._groups import Group
from ._precision import run as run_elementwise
from .base import Optimizer
from .multipass import _advance_key, _reduced, _variant, _whole, tensor_sizes

__all__ = ["Cautious", "CautiousOption", "recomputing_apply", "run"]


def recomputing_apply(count: SegmentedKernel, apply: SegmentedKernel) -> SegmentedKernel:
    """The apply pass of a group whose state is stored in fewer bits, for a count pass
    that stores the new state: ``count``'s rule computes the new state from the old
    one, ``apply``'s rule moves the parameter by it, and the pass stores the parameter
    and every state either of them stores.

    With it the count pass runs without its stores: each stored state is computed from
    the old one exactly once (the two passes compute the same values: the same rule on
    the same inputs), and the parameter update reads the new state before it is
    narrowed, as the element-wise rule does. The rule is generated from the two rules'
    signatures; its name carries a hash of its source, so that the loops built from it
    are cached under new names when this template changes (the two rules are in
    ``kernels/rules``, whose hash the loops' names carry already).
    """
    if "param" in count.writes or apply.segment_names != ("scale",):
        raise TypeError(f"{count.name}, {apply.name}: expected a count pass that leaves the "
                        "parameter and an apply pass that takes the segment value scale")
    states = (*count.state_names, *(s for s in apply.state_names if s not in count.state_names))
    scalars = (*count.scalar_names, *(s for s in apply.scalar_names if s not in count.scalar_names))
    if any("__" in name for name in (*states, *scalars)):  # the generated locals' names
        raise TypeError(f"{count.name}, {apply.name}: argument names with '__'")
    new = {s: f"c__{k + 1}" for k, s in enumerate(count.state_names) if s in count.writes}
    counted = [f"c__{k}" for k in range(2 + len(count.state_names))]
    applied = [f"a__{k}" for k in range(1 + len(apply.state_names))]
    returned = ["a__0"]
    for s in states:
        if s in apply.writes:
            returned.append(applied[1 + apply.state_names.index(s)])
        else:  # the count's new value, or the old one (not stored)
            returned.append(new.get(s, s))
    writes = ("param", *(s for s in states if s in apply.writes or s in new))
    read = [new.get(s, s) for s in apply.state_names]  # the new state where counted

    def listed(*names: str) -> str:
        return ", ".join(names)

    source = "\n".join([
        f"def NAME({listed('param', 'grad', *states, 'scale', *scalars)}):",
        f"    {listed(*counted)}, = count_rule("
        f"{listed('param', 'grad', *count.state_names, *count.scalar_names)})",
        f"    {listed(*applied)}, = apply_rule({listed('param', 'grad', *read, 'scale')}, "
        f"{listed(*apply.scalar_names)})",
        f"    return {listed(*returned)},", ""])
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    name = f"{apply.name}_recomputing_{digest}"
    namespace = {"count_rule": count.rule, "apply_rule": apply.rule}
    exec(compile(source.replace("NAME", name), f"<fastmoments cautious {name}>", "exec"),
         namespace)
    return SegmentedKernel(rule(namespace[name]), states, ("scale",), 0, writes)


class Cautious:
    """The cautious variant of an element-wise rule: two segmented passes.

    It stands where ``_select`` returns a :class:`Kernel` (``Optimizer._prepare`` reads
    ``state_names``, ``scalar_names`` and ``named``): its scalars are the element-wise
    rule's, so a class's ``_scalars`` serves both variants; :meth:`run` hands each
    pass the ones its rule takes, by name (and ``one``, 1 in the buffer dtype).

    Parameters
    ----------
    elementwise
        The rule's element-wise kernel (its states and scalars).
    count
        The first pass: one term per element, 1 where the update agrees in sign with
        the gradient, summed per tensor. It may also update the state (then the second
        pass reads the new state), or store nothing (then the second pass recomputes
        the state from the old one, as the element-wise rule does).
    apply
        The second pass: takes the segment value ``scale`` and stores the parameter
        (and the states it updates).

    A group stored in fewer bits runs :meth:`kernels`' passes (see the module
    docstring).
    """

    def __init__(self, elementwise: Kernel, count: SegmentedKernel,
                 apply: SegmentedKernel) -> None:
        self.name = f"{elementwise.name}_cautious"
        self.state_names = elementwise.state_names
        self.scalar_names = elementwise.scalar_names
        self.named = named_scalars(self.name, self.scalar_names[2:])
        self.count, self.apply = count, apply
        for kernel in (count, apply):
            unknown = set(kernel.scalar_names) - {*self.scalar_names, "one"}
            if unknown:
                raise TypeError(f"{kernel.name}: scalars {sorted(unknown)} are not "
                                f"{elementwise.name}'s")
        if count.num_terms != 1 or apply.segment_names != ("scale",):
            raise TypeError(f"{self.name}: the count pass returns one term and the apply "
                            "pass takes the segment value scale")

    def reduced(self, layout: tuple) -> Cautious:
        """Itself: the passes choose their kernels' layouts (see :meth:`run`)."""
        return self

    @cached_property
    def _stored_passes(self) -> tuple[SegmentedKernel, SegmentedKernel]:
        """The passes of a group stored in fewer bits: ``count`` and ``apply`` when
        the count stores nothing, else the count without its stores and
        :func:`recomputing_apply` (built on first use)."""
        count = self.count
        if not count.writes:
            return count, self.apply
        return (SegmentedKernel(count.rule, count.state_names, (), 1, ()),
                recomputing_apply(count, self.apply))

    def kernels(self, group: Group) -> tuple[SegmentedKernel, SegmentedKernel]:
        """The count and apply passes that ``group`` runs (before its layout's variant)."""
        if group.precision is None:
            return self.count, self.apply
        return self._stored_passes

    def run(self, opt: Optimizer, group: Group, source: Any, scalars: tuple) -> None:
        values = dict(zip(self.scalar_names, scalars))
        values["one"] = 1.0
        _advance_key(group)  # (a group stored in fewer bits: the step's random bits)
        count, apply = (_variant(opt, group, kernel, names=self.state_names)
                        for kernel in self.kernels(group))
        segments = _whole(opt, group)
        totals = run_pass(count, group, source, segments, None,
                          tuple(values[n] for n in count.scalar_names))
        agreeing = _reduced(opt, totals)[:, 0]
        # one segment per tensor (a whole tensor even when the group is a shard of it):
        # scale = its size / (agreeing elements + 1)
        scale = workspace(apply, group, segments).values
        np.divide(tensor_sizes(opt, group), agreeing + 1.0, out=scale[:, 0], casting="unsafe")
        run_pass(apply, group, source, segments, scale,
                 tuple(values[n] for n in apply.scalar_names))

    def passes(self, group: Group, count_reads_param: bool = True) -> list[tuple[int, ...]]:
        """Each pass reads g and its states, and stores what it writes; the apply pass
        reads p, the count pass only when its rule uses it (L2 decay: the class knows)."""
        count_kernel, apply_kernel = self.kernels(group)
        count = (int(count_reads_param) + 1 + len(count_kernel.state_names),
                 len(count_kernel.writes), group.numel)
        apply = (2 + len(apply_kernel.state_names), len(apply_kernel.writes), group.numel)
        return [count, apply]

    def refusal(self, group: Group) -> str | None:
        """Why this variant cannot step ``group`` as it is stored, or None."""
        precision = group.precision
        if precision is None:
            return None
        if group.device == "cuda" and precision.param != "same":
            return (f"is not supported with {group.dtype} CUDA parameters yet (16-bit "
                    "parameters run on the CPU); use float32/float64 CUDA arrays "
                    "(state_dtype='bfloat16' works with them)")
        if precision.state != "int8":
            return None
        if group.device == "cuda":
            return ("is not supported with state_dtype='int8' on the GPU (its int8 passes "
                    "run on the CPU); use state_dtype='bfloat16' on the GPU")
        if precision.param != "same":
            return (f"with state_dtype='int8' needs float32 or float64 parameters, got "
                    f"{group.dtype}; use state_dtype='bfloat16' with 16-bit parameters")
        return None

    def __repr__(self) -> str:
        return f"Cautious({self.name}, states={self.state_names})"


def run(opt: Optimizer, group: Group, source: Any, scalars: tuple) -> None:
    """One step over ``group``: its cautious passes, or its element-wise kernel (in the
    group's precision, see :func:`._precision.run`)."""
    kernel = group.kernel
    if isinstance(kernel, Cautious):
        kernel.run(opt, group, source, scalars)
    else:
        run_elementwise(group, source, scalars)


def _runner(opt: Optimizer) -> Callable[[Group, Any, tuple], None]:
    """:func:`run` for ``opt``, as its ``_run``: through a weak reference, so that the
    optimizer does not reference itself (its state is freed without the cyclic GC)."""
    ref = weakref.ref(opt)

    def run_group(group: Group, source: Any, scalars: tuple) -> None:
        run(ref(), group, source, scalars)

    run_group.cautious = True  # type: ignore[attr-defined]
    return run_group


class CautiousOption(Optimizer):
    """A class with a ``cautious`` hyperparameter (see the module docstring).

    ``_select`` returns the element-wise kernel or the :class:`Cautious` variant; the
    traffic of a cautious group is its two passes. A cautious group that its variant
    cannot step as it is stored (:meth:`Cautious.refusal`) is refused when the optimizer
    is built, when ``param_groups`` is edited and when a state dict is loaded, before
    anything changes.
    """

    #: the cautious passes count per tensor with ``_whole`` / ``_reduced`` /
    #: ``tensor_sizes`` (see ``multipass.build_sharded``): a shard of the tensors gets
    #: their global counts
    shard_aware = True

    def _check(self, hyper: dict[str, Any]) -> None:
        super()._check(hyper)
        # a built group (an edit of param_groups, a state dict's hyperparameters): its
        # storage is known here; a new one is checked by _prepare
        group = next((g for g in getattr(self, "_groups", ())
                      if g.params_entry is hyper.get("params")), None)
        if group is not None:
            kernel = self._select(hyper)
            reason = kernel.refusal(group) if isinstance(kernel, Cautious) else None
            if reason is not None:
                raise ValueError(f"{type(self).__name__}: cautious=True {reason}")

    def _prepare(self, group: Group, fresh: bool) -> None:
        kernel = self._select(group.hyper)
        if isinstance(kernel, Cautious):
            reason = kernel.refusal(group)
            if reason is not None:
                raise ValueError(f"{type(self).__name__}: cautious=True {reason} "
                                 f"(param_groups[{self._groups.index(group)}])")
            if not getattr(self.__dict__.get("_run"), "cautious", False):
                self._run = _runner(self)  # type: ignore[method-assign]
        super()._prepare(group, fresh)

    def _count_reads_param(self, hyper: dict[str, Any]) -> bool:
        """Whether the cautious count pass reads the parameter with these
        hyperparameters (for :meth:`traffic`: a load the rule does not use is not made)."""
        return True

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        if isinstance(group.kernel, Cautious):
            return group.kernel.passes(group, self._count_reads_param(group.hyper))
        return super()._passes(group)
