"""The loops generated from one element-wise rule: CPU serial/parallel, list path, CUDA.

A *rule* is the per-element math of an optimizer (see :mod:`.rules`): an ``@rule``
function whose arguments are, in order,

``param, grad, <state values...>, <scalars...>``

and which returns ``(new_param, <new state values...>)``. Its state arguments are
named after the flat state buffers (``exp_avg``, ``exp_avg_sq``, ...). From that
signature :class:`Kernel` writes, from one template each, the loops that call it:

- ``serial``:   ``@njit`` loop over one flat buffer, scalars packed in one array;
- ``parallel``: the same with ``prange`` (numba threads);
- ``multi``:    one call for many separate parameter arrays (the list path): it
  walks a table of addresses and sizes, so a step over 1000 arrays is one call;
- ``cuda``:     ``@cuda.jit`` grid-stride kernel (built lazily, see :mod:`.cuda`).

Each kernel also has a *plain* variant (:attr:`Kernel.plain`): the same loops with the
scalars of :data:`NEUTRAL` (gradient multiplier, clipping, weight decay, ...) fixed
at the value that makes their term vanish, as compile-time constants, so that LLVM
drops those operations. The class layer calls it when a step's scalars have exactly
those values (the common case), which gives the same results bit for bit: ``x * 1``,
``x > inf``, ``x + -0.0`` and a ``weight_decay`` branch fold exactly.
"""

from __future__ import annotations

import inspect
import math
from functools import cached_property

import numpy as np

from .compile import build_generated, cpu_loop, source_hash

__all__ = ["Kernel", "NEUTRAL", "named_scalars"]

#: Scalars that a plain kernel fixes, and the value at which each one's term vanishes
#: (the value a step must have for the plain kernel to be used).
NEUTRAL = {
    "grad_mult": 1.0,
    "clip_value": math.inf,
    "weight_decay": 0.0,
    "eps_root": 0.0,
}
# The constants compiled into plain kernels: float32 values are exact in both dtypes;
# eps_root is added (``v + eps_root``), and only ``x + -0.0`` folds to ``x`` exactly.
_CONSTANTS = {name: np.float32(value) for name, value in NEUTRAL.items()}
_CONSTANTS["eps_root"] = np.float32(-0.0)


_SOURCE_HASH = source_hash("compile.py", "elementwise.py", "rules.py")


_FLAT_TEMPLATE = """
def {name}(param, grad{states}, scalars):
    {unpack}
    for i in {range}(param.shape[0]):
        param[i]{states_i}, = rule(param[i], grad[i]{states_i}{scalars})
"""

# ``table``: the group's (3, arrays + 1) int64 table: the parameters' addresses, the
# gradients' addresses, the offsets (one array, not three: each array argument costs
# the call about 0.05 us of unboxing)
_MULTI_TEMPLATE = """
def {name}(table{states}, scalars):
    {unpack}
    for j in {range}(table.shape[1] - 1):
        start = table[2, j]
        n = table[2, j + 1] - start
        param = carray(void_pointer(table[0, j]), n, scalars.dtype)
        grad = carray(void_pointer(table[1, j]), n, scalars.dtype)
        {slices}
        for i in range(n):
            param[i]{states_k}, = rule(param[i], grad[i]{states_k}{scalars})
"""

_CUDA_TEMPLATE = """
def {name}(param, grad{states}{scalars}):
    {fixed}
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        param[i]{states_i}, = rule(param[i], grad[i]{states_i}{scalars})
"""


def named_scalars(rule_name: str, names: tuple[str, ...]):
    """A function that takes ``names`` as keyword arguments and returns their values as
    a tuple in that order: how a class hands a rule its per-step scalars by name.

    A misspelt, missing or extra name raises ``TypeError`` on the first step instead of
    shifting every later value by one place.
    """
    params = ", ".join(("*", *names)) if names else ""
    values = "".join(f"{n}, " for n in names)
    namespace: dict = {}
    exec(f"def named({params}):\n    return ({values})\n", namespace)
    fn = namespace["named"]
    fn.__qualname__ = f"{rule_name}.named"
    return fn


class Kernel:
    """The loops generated from one rule.

    Parameters
    ----------
    rule_fn
        An ``@rule`` dispatcher.
    state_names
        The names of its state arguments (the flat buffers it reads and writes).
    fixed
        Scalars compiled in as their :data:`NEUTRAL` value (the plain variant).
    """

    def __init__(self, rule_fn, state_names: tuple[str, ...], fixed: tuple[str, ...] = ()):
        self.rule = rule_fn
        self.name = rule_fn.py_func.__name__
        args = list(inspect.signature(rule_fn.py_func).parameters)
        if args[:2] != ["param", "grad"] or tuple(args[2 : 2 + len(state_names)]) != state_names:
            expected = ", ".join(("param", "grad", *state_names))
            raise TypeError(f"rule {self.name} must take ({expected}, ...)")
        self.state_names = tuple(state_names)
        self.scalar_names = tuple(args[2 + len(state_names) :])
        # step() passes every rule its gradient multiplier and clipping bound first
        if self.scalar_names[:2] != ("grad_mult", "clip_value"):
            raise TypeError(f"rule {self.name}: its scalars must start with grad_mult, "
                            "clip_value")
        self.fixed = tuple(fixed)
        self._tag = "_plain" if fixed else ""
        self.named = named_scalars(self.name, self.scalar_names[2:])

    def _format(self, template: str, suffix: str, parallel: bool) -> str:
        # Every piece starts with ", " (or is empty), so rules without state need no
        # special case: ``param[i], = rule(param[i], grad[i], lr)`` is valid Python.
        states = "".join(f", {s}" for s in self.state_names)
        scalars = "".join(f", {s}" for s in self.scalar_names)
        states_i = "".join(f", {s}[i]" for s in self.state_names)
        # the list path slices each state buffer per array first: indexing the whole
        # buffer at ``start + i`` kept LLVM from vectorizing the loop (measured 4.6x)
        states_k = "".join(f", {s}_j[i]" for s in self.state_names)
        slices = "".join(f"{s}_j = {s}[start:start + n]; " for s in self.state_names)
        # CPU loops take the scalars as one array of the buffer dtype (one argument to
        # type-check per call instead of a dozen); they are unpacked before the loop.
        unpack = "".join(
            f"{s} = fixed_{s}; " if s in self.fixed else f"{s} = scalars[{k}]; "
            for k, s in enumerate(self.scalar_names)
        )
        fixed = "".join(f"{s} = fixed_{s}; " for s in self.fixed)
        return template.format(
            name=f"{self.name}_{suffix}{self._tag}_{_SOURCE_HASH}",
            states=states,
            scalars=scalars,
            states_i=states_i,
            states_k=states_k,
            unpack=unpack or "pass",
            slices=slices or "pass",
            fixed=fixed or "pass",
            range="prange" if parallel else "range",
        )

    def _build(self, template: str, suffix: str, parallel: bool, extra_globals: dict):
        source = self._format(template, suffix, parallel)
        name = f"{self.name}_{suffix}{self._tag}_{_SOURCE_HASH}"
        constants = {f"fixed_{s}": _CONSTANTS[s] for s in self.fixed}
        return build_generated(source, name, __file__, self.rule, {**constants, **extra_globals})

    def _cpu(self, template: str, suffix: str, parallel: bool):
        return cpu_loop(self._build(template, suffix, parallel, {}), parallel)

    @cached_property
    def plain(self) -> Kernel | None:
        """The variant with the :data:`NEUTRAL` scalars fixed (None if it has none,
        or if this kernel is that variant)."""
        if self.fixed:
            return None
        fixed = tuple(s for s in self.scalar_names if s in NEUTRAL)
        return Kernel(self.rule, self.state_names, fixed) if fixed else None

    @cached_property
    def serial(self):
        return self._cpu(_FLAT_TEMPLATE, "serial", False)

    @cached_property
    def parallel(self):
        return self._cpu(_FLAT_TEMPLATE, "parallel", True)

    @cached_property
    def multi_serial(self):
        return self._cpu(_MULTI_TEMPLATE, "multi_serial", False)

    @cached_property
    def multi_parallel(self):
        return self._cpu(_MULTI_TEMPLATE, "multi_parallel", True)

    @cached_property
    def cuda(self):
        from numba import cuda

        fn = self._build(_CUDA_TEMPLATE, "cuda", False, {"cuda": cuda})
        return cuda.jit(fn)

    def __repr__(self) -> str:
        fixed = f", fixed={self.fixed}" if self.fixed else ""
        return f"Kernel({self.name}, states={self.state_names}, scalars={self.scalar_names}{fixed})"
