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

A kernel built with a *layout* (:meth:`Kernel.reduced`; see
:class:`~.precision.Precision`) stores some buffers in fewer bits than its arithmetic:
its loops call, instead of the rule, a generated *element* function that widens each
value it loads (bfloat16 and float16 patterns to float32, float32 to float64), calls
the same rule, and narrows each result it stores (to nearest, or stochastically with
bits from :func:`~.precision.element_bits` of the step's key and the element's index
in the group); with a float32 master copy of 16-bit parameters it reads the master and
writes both. Those loops take two more arguments: ``rounding`` (a ``uint32`` array
holding the step's key, written by the host each step) on the CPU, and ``key`` and
``offset`` (the index of the first element) on the GPU.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
from functools import cached_property

import numpy as np

from . import precision, quantized
from .compile import (
    argument_marks,
    build_generated,
    check_argument_names,
    cpu_loop,
    rule,
    source_hash,
)

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


_SOURCE_HASH = source_hash("compile.py", "elementwise.py", "rules", "precision.py",
                           "quantized.py")


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

# The loops of a kernel with a layout (see the module docstring): ``rule`` is the
# generated element function, which also takes the step's key and the element's index.
_REDUCED_FLAT_TEMPLATE = """
def {name}(param, grad{states}{extra}, rounding, scalars):
    {unpack}
    key = rounding[0]
    for i in {range}(param.shape[0]):
        param[i]{states_i}{extra_i}, = rule(param[i], grad[i]{states_i}{extra_i}, key, i{scalars})
"""

# ``index`` (the element's index in the group, for the random bits) is a counter of its
# own, not ``start + i``: LLVM then keeps the hash in 32-bit lanes (from ``start + i`` it
# built a 64-bit vector and 512-bit instructions, which slowed the whole loop, see
# kernels.precision)
_REDUCED_MULTI_TEMPLATE = """
def {name}(table{states}{extra}, rounding, scalars):
    {unpack}
    key = rounding[0]
    for j in {range}(table.shape[1] - 1):
        start = table[2, j]
        n = table[2, j + 1] - start
        param = carray(void_pointer(table[0, j]), n, {param_dtype})
        grad = carray(void_pointer(table[1, j]), n, {param_dtype})
        index = start
        {slices}
        for i in range(n):
            param[i]{states_k}{extra_k}, = rule(param[i], grad[i]{states_k}{extra_k}, key,
                                                index{scalars})
            index += 1
"""

_REDUCED_CUDA_TEMPLATE = """
def {name}(param, grad{states}{extra}, key, offset{scalars}):
    {fixed}
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        param[i]{states_i}{extra_i}, = rule(param[i], grad[i]{states_i}{extra_i}, key,
                                             offset + i{scalars})
"""

# how the element function widens a stored value (``{}``) and narrows a result;
# ``{bits}`` is the element's random bits for that buffer
_LOAD = {"same": "{}", "f32": "{}", "bf16": "bf16_to_f32({})", "f16": "f16_to_f32({})"}
_STORE = {
    "same": "{}",
    "f32": "np.float32({})",
    "bf16": "f32_to_bf16_nearest({})",
    "bf16_sr": "f32_to_bf16_stochastic({}, {bits})",
    "f16": "f32_to_f16_nearest({})",
    "f16_sr": "f32_to_f16_stochastic({}, {bits})",
}


def _element_source(name: str, n_states: int, scalar_names: tuple[str, ...],
                    layout: tuple) -> str:
    """The element function of a layout ``(param, grad, states, master)`` (see
    :meth:`~.precision.Precision.layout`): widen, call the rule, narrow."""
    param, grad, states, master = layout
    ins = [f"s{k}" for k in range(n_states)]
    args = ", ".join(("param", "grad", *ins, *(("master",) if master else ()), "key", "index",
                      *scalar_names))
    lines = [f"def {name}({args}):"]
    load = "master" if master else _LOAD[param.replace("_sr", "")].format("param")
    lines.append(f"    p_ = {load}")
    lines.append(f"    g_ = {_LOAD[grad].format('grad')}")
    for k, codec in enumerate(states):
        lines.append(f"    v{k} = {_LOAD[codec.replace('_sr', '')].format(ins[k])}")
    outs = ", ".join(("p_", *(f"v{k}" for k in range(n_states))))
    call = ", ".join(("p_", "g_", *(f"v{k}" for k in range(n_states)), *scalar_names))
    lines.append(f"    {outs}, = rule({call})")
    results = [_STORE[param].format("p_", bits="element_bits(key, index, 0)")]
    results += [_STORE[codec].format(f"v{k}", bits=f"element_bits(key, index, {k + 1})")
                for k, codec in enumerate(states)]
    if master:
        results.append("np.float32(p_)")
    lines.append(f"    return {', '.join(results)},")
    return "\n".join(lines) + "\n"


#: the (rule, state names) whose argument names were checked (see Kernel._check_names)
_CHECKED: set[tuple] = set()


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
    fn.names = names  # read by optim._specialize
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
    layout
        How the buffers are stored, ``(param, grad, states, master)`` (see
        :meth:`~.precision.Precision.layout`); None: as the arithmetic (the default).

    The rule's argument names must not be names the loops use themselves (``i``,
    ``n``, ``table``, ``key``, ...): building a loop raises TypeError otherwise.
    """

    def __init__(self, rule_fn, state_names: tuple[str, ...], fixed: tuple[str, ...] = (),
                 layout: tuple | None = None):
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
        self.layout = layout
        self._reduced: dict[tuple, Kernel] = {}
        self._loop_rule = rule_fn
        # int8 states (codecs "q8s"/"q8u", "_sr" appended where rounded stochastically,
        # see .quantized): block loops, whether each state takes the signed map; None
        # for element loops
        self._signed: tuple[bool, ...] | None = None
        if layout is not None:
            digest = hashlib.sha256(repr(layout).encode()).hexdigest()[:8]
            self._tag += f"_r{digest}"
            if any(codec.startswith("q8") for codec in layout[2]):
                self._signed = tuple(codec.startswith("q8s") for codec in layout[2])
            else:
                self._loop_rule = self._element(digest)

    def _check_names(self) -> None:
        """Refuse a rule whose argument names the loops use for something else (a
        scalar ``i`` would be the loop's index, silently): the loops of this kernel, of
        its plain variant and of every layout :meth:`reduced` can make (16-bit states
        with a float32 master, int8 states). Once per rule, before its first loop is
        built (not at import: it costs a fraction of a millisecond per rule)."""
        key = (self.rule, self.state_names)
        if key in _CHECKED:
            return
        names = (*self.state_names, *self.scalar_names)
        marks = dict(zip(names, argument_marks(len(names))))
        probe = copy.copy(self)
        probe.state_names = tuple(marks[s] for s in self.state_names)
        probe.scalar_names = tuple(marks[s] for s in self.scalar_names)
        probe.fixed = tuple(marks[s] for s in self.scalar_names if s in NEUTRAL)
        probe.layout = None
        sources = [probe._format(t, "probe", False)
                   for t in (_FLAT_TEMPLATE, _MULTI_TEMPLATE, _CUDA_TEMPLATE)]
        n = len(self.state_names)
        probe.layout = ("same", "same", ("same",) * n, True)
        sources += [probe._format(t, "probe", False) for t in
                    (_REDUCED_FLAT_TEMPLATE, _REDUCED_MULTI_TEMPLATE, _REDUCED_CUDA_TEMPLATE)]
        sources.append(_element_source("probe", n, probe.scalar_names, probe.layout))
        for layout in (None, ("bf16", "bf16", (), True), ("f16_sr", "f16", (), False),
                       ("same", "same", ("q8s_sr",) * n, False)):
            sources += [quantized.loop_source("probe", flat, False, probe.state_names,
                                              (True,) * n, probe.scalar_names,
                                              probe._unpack(), layout) for flat in (True, False)]
            sources.append(quantized.cuda_source("probe", probe.state_names, (True,) * n,
                                                 probe.scalar_names, probe._fixed(), layout))
        check_argument_names(self.name, names, sources)
        _CHECKED.add(key)

    def _element(self, digest: str):
        """The generated element function of this kernel's layout (see the module
        docstring), an inlined ``@rule``."""
        name = f"{self.name}_element_{digest}"
        source = _element_source(name, len(self.state_names), self.scalar_names, self.layout)
        namespace = {"rule": self.rule, "np": np, "bf16_to_f32": precision.bf16_to_f32,
                     "f16_to_f32": precision.f16_to_f32,
                     "f32_to_bf16_nearest": precision.f32_to_bf16_nearest,
                     "f32_to_bf16_stochastic": precision.f32_to_bf16_stochastic,
                     "f32_to_f16_nearest": precision.f32_to_f16_nearest,
                     "f32_to_f16_stochastic": precision.f32_to_f16_stochastic,
                     "element_bits": precision.element_bits}
        exec(compile(source, f"<fastmoments element {name}>", "exec"), namespace)
        return rule(namespace[name])

    def reduced(self, layout: tuple) -> Kernel:
        """This rule's kernel for buffers stored as ``layout`` (one per layout)."""
        kernel = self._reduced.get(layout)
        if kernel is None:
            kernel = self._reduced[layout] = Kernel(self.rule, self.state_names, self.fixed,
                                                    layout)
        return kernel

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
        unpack = self._unpack()
        fixed = self._fixed()
        master = self.layout is not None and self.layout[3]
        if master:
            slices += "master_j = master[start:start + n]; "
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
            extra=", master" if master else "",
            extra_i=", master[i]" if master else "",
            extra_k=", master_j[i]" if master else "",
            param_dtype=("scalars.dtype" if self.layout is None or self.layout[0] == "same"
                         else "uint16"),
        )

    def _fixed(self) -> str:
        # CUDA kernels take every scalar; the fixed ones are replaced by constants
        return "".join(f"{s} = fixed_{s}; " for s in self.fixed)

    def _unpack(self) -> str:
        # CPU loops take the scalars as one array of the buffer dtype (one argument to
        # type-check per call instead of a dozen); they are unpacked before the loop.
        return "".join(
            f"{s} = fixed_{s}; " if s in self.fixed else f"{s} = scalars[{k}]; "
            for k, s in enumerate(self.scalar_names)
        )

    def _build(self, template: str, suffix: str, parallel: bool, extra_globals: dict):
        self._check_names()
        name = f"{self.name}_{suffix}{self._tag}_{_SOURCE_HASH}"
        if self._signed is not None and suffix == "cuda":  # int8 states: blocks
            source = quantized.cuda_source(name, self.state_names, self._signed,
                                           self.scalar_names, self._fixed(), self.layout)
            extra_globals = {**extra_globals, **quantized.CUDA_GLOBALS}
        elif self._signed is not None:
            source = quantized.loop_source(name, not suffix.startswith("multi"), parallel,
                                           self.state_names, self._signed, self.scalar_names,
                                           self._unpack() or "pass", self.layout)
            extra_globals = {**extra_globals, **quantized.LOOP_GLOBALS}
        else:
            source = self._format(template, suffix, parallel)
        constants = {f"fixed_{s}": _CONSTANTS[s] for s in self.fixed}
        constants["uint16"] = np.uint16
        return build_generated(source, name, __file__, self._loop_rule,
                               {**constants, **extra_globals})

    def _cpu(self, template: str, suffix: str, parallel: bool):
        return cpu_loop(self._build(template, suffix, parallel, {}), parallel)

    @cached_property
    def plain(self) -> Kernel | None:
        """The variant with the :data:`NEUTRAL` scalars fixed (None if it has none,
        or if this kernel is that variant)."""
        if self.fixed:
            return None
        fixed = tuple(s for s in self.scalar_names if s in NEUTRAL)
        return Kernel(self.rule, self.state_names, fixed, self.layout) if fixed else None

    @property
    def _flat(self) -> str:
        return _FLAT_TEMPLATE if self.layout is None else _REDUCED_FLAT_TEMPLATE

    @property
    def _multi(self) -> str:
        return _MULTI_TEMPLATE if self.layout is None else _REDUCED_MULTI_TEMPLATE

    @cached_property
    def serial(self):
        return self._cpu(self._flat, "serial", False)

    @cached_property
    def parallel(self):
        return self._cpu(self._flat, "parallel", True)

    @cached_property
    def multi_serial(self):
        return self._cpu(self._multi, "multi_serial", False)

    @cached_property
    def multi_parallel(self):
        return self._cpu(self._multi, "multi_parallel", True)

    @cached_property
    def cuda(self):
        from numba import cuda

        template = _CUDA_TEMPLATE if self.layout is None else _REDUCED_CUDA_TEMPLATE
        fn = self._build(template, "cuda", False, {"cuda": cuda})
        return cuda.jit(fn)

    def __repr__(self) -> str:
        fixed = f", fixed={self.fixed}" if self.fixed else ""
        layout = f", layout={self.layout}" if self.layout is not None else ""
        return (f"Kernel({self.name}, states={self.state_names}, scalars={self.scalar_names}"
                f"{fixed}{layout})")
