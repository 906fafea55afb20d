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
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..kernels.elementwise import Kernel, named_scalars
from ..kernels.segmented import SegmentedKernel
from ..kernels.segmented_run import run as run_pass
from ..kernels.segmented_run import workspace
from ._dispatch import run as run_elementwise
from ._groups import Group
from .base import Optimizer
from .multipass import _reduced, _whole, tensor_sizes

__all__ = ["Cautious", "CautiousOption", "run"]


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

    def run(self, opt: Optimizer, group: Group, source: Any, scalars: tuple) -> None:
        values = dict(zip(self.scalar_names, scalars))
        values["one"] = 1.0
        segments = _whole(opt, group)
        totals = run_pass(self.count, group, source, segments, None,
                          tuple(values[n] for n in self.count.scalar_names))
        agreeing = _reduced(opt, totals)[:, 0]
        # one segment per tensor (a whole tensor even when the group is a shard of it):
        # scale = its size / (agreeing elements + 1)
        scale = workspace(self.apply, group, segments).values
        np.divide(tensor_sizes(opt, group), agreeing + 1.0, out=scale[:, 0], casting="unsafe")
        run_pass(self.apply, group, source, segments, scale,
                 tuple(values[n] for n in self.apply.scalar_names))

    def passes(self, group: Group, count_reads_param: bool = True) -> list[tuple[int, ...]]:
        """Each pass reads g and its states, and stores what it writes; the apply pass
        reads p, the count pass only when its rule uses it (L2 decay: the class knows)."""
        count = (int(count_reads_param) + 1 + len(self.count.state_names),
                 len(self.count.writes), group.numel)
        apply = (2 + len(self.apply.state_names), len(self.apply.writes), group.numel)
        return [count, apply]

    def __repr__(self) -> str:
        return f"Cautious({self.name}, states={self.state_names})"


def run(opt: Optimizer, group: Group, source: Any, scalars: tuple) -> None:
    """One step over ``group``: its cautious passes, or its element-wise kernel."""
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

    return run_group


class CautiousOption(Optimizer):
    """A class with a ``cautious`` hyperparameter (see the module docstring).

    ``_select`` returns the element-wise kernel or the :class:`Cautious` variant; the
    traffic of a cautious group is its two passes. Reduced precision (``state_dtype``,
    16-bit parameters) is refused with ``cautious=True``.
    """

    #: the cautious passes count per tensor with ``_whole`` / ``_reduced`` /
    #: ``tensor_sizes`` (see ``multipass.build_sharded``): a shard of the tensors gets
    #: their global counts
    shard_aware = True

    def _check_group(self, hyper: dict[str, Any], k: int) -> None:
        super()._check_group(hyper, k)
        if hyper["cautious"] and self._reduced_precision():  # an edit of a built optimizer
            raise ValueError(self._refusal(k))

    def _prepare(self, group: Group, fresh: bool) -> None:
        if isinstance(self._select(group.hyper), Cautious):
            if self._reduced_precision():
                raise ValueError(self._refusal(self._groups.index(group)))
            if "_run" not in self.__dict__:
                self._run = _runner(self)  # type: ignore[method-assign]
        super()._prepare(group, fresh)

    def _reduced_precision(self) -> bool:
        return any(getattr(g, "precision", None) is not None for g in self._groups)

    def _refusal(self, k: int) -> str:
        return (f"{type(self).__name__}: cautious=True is not supported with reduced "
                f"precision (state_dtype={self.state_dtype!r} or 16-bit parameters) yet "
                f"(param_groups[{k}])")

    def _count_reads_param(self, hyper: dict[str, Any]) -> bool:
        """Whether the cautious count pass reads the parameter with these
        hyperparameters (for :meth:`traffic`: a load the rule does not use is not made)."""
        return True

    def _passes(self, group: Group) -> list[tuple[int, ...]]:
        if isinstance(group.kernel, Cautious):
            return group.kernel.passes(group, self._count_reads_param(group.hyper))
        return super()._passes(group)
