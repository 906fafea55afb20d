"""Running a step's kernel over one group: the CPU loop or the CUDA kernel.

:func:`run` packs the step's scalars into the group's scalar array, picks the
kernel's plain variant when the scalars allow it, then the serial or parallel loop
(flat buffer or list path) by size, and calls the compiled overload directly when it
is the same loop on the same arrays as last time (see :func:`_callee`).
"""

from __future__ import annotations

import math
from typing import Any

from ..config import config
from ..kernels.compile import compile_in_background, loop_ready
from ..kernels.elementwise import NEUTRAL, Kernel
from ._groups import UNDECIDED, Group

__all__ = ["run", "pack"]

_INF = math.inf


def run(group: Group, source: Any, scalars: tuple) -> None:
    """One step of ``group``'s kernel; ``scalars`` start with ``grad_mult, clip_value``."""
    pack(group, scalars)
    args = group.scalars
    plain = group.plain
    if plain is UNDECIDED:
        plain = group.plain = _plain_variant(group.kernel, scalars)
    if plain is not None and scalars[0] == 1.0 and scalars[1] == _INF:
        kernel = plain  # no scaling, clipping, L2 decay: fewer operations
    else:
        kernel = group.kernel
    if group.device == "cuda":
        _run_cuda(group, source, kernel, group.states, tuple(args))
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
        arguments = (group.data, source, *group.states, args)
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


def _run_cuda(group: Group, source: Any, kernel: Kernel, states: tuple, args) -> None:
    from ..kernels import cuda as _gpu

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


def pack(group: Group, scalars: tuple) -> None:
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

    numba's dispatcher types every argument on every call (a cost per array that a
    small step notices);
    the overload's entry point skips that but trusts its arguments' types blindly.
    It is used only for serial loops on arrays this optimizer owns and never swaps
    (state buffers, scalars, address tables, and FlatParams' ``data`` and ``grad``,
    whose identity ``_run`` checks each call), right after the dispatcher ran on the
    very same objects; anything else, or any surprise from numba, keeps the dispatcher.
    """
    if loop is not kernel.serial and loop is not kernel.multi_serial:
        return loop, None  # parallel loops: the dispatch is noise beside the threads' start
    if source is not None and (group.flat is None or source is not group.grad_data):
        return loop, None  # a flat gradient array given to step(): not ours
    try:
        overload = loop.overloads[tuple(loop.typeof_pyval(a) for a in arguments)]
        return overload.entry_point, overload
    except Exception:  # pragma: no cover - another numba, or jit disabled
        return loop, None
