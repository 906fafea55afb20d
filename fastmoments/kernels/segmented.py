"""Segmented passes: a rule applied per element that also works per *segment*.

Some rules need reductions over parts of the flat buffer: LAMB's trust ratio needs
the norms of each parameter tensor, ND-Adam's step needs dot products and norms of
each weight vector (a row of a matrix), SWATS needs two dot products over every
parameter. Here a *segment* is such a part: a strided run of elements of one
parameter (a whole tensor is one segment of stride 1). A segmented rule is an
``@rule`` function whose arguments are, in order,

``param, grad, <state values...>, <segment values...>, <scalars...>``

and which returns ``(new_param, <new state values...>, <terms...>)``: the segment
values are read once per segment (a per-tensor step size, a per-vector dot
product), and the terms are summed per segment (on the CPU in blocks of the buffer
dtype added into float64, on a GPU in float64). From that signature this module
generates (:class:`SegmentedKernel`), like :mod:`.elementwise` for the element-wise
rules,

- ``serial`` / ``parallel``: ``@njit`` loops over a table of *chunks* (a segment,
  or a piece of a long one, so that the threads share a large tensor evenly; the
  parallel loop hands groups of chunks to the serial one);
  parameters and gradients are read by address, so the list path and the
  FlatParams path are one loop;
- ``cuda``: a ``@cuda.jit`` kernel, one block per chunk (grid-stride over chunks),
  the threads of the block striding over its elements and summing the terms with a
  shared-memory tree, in a fixed order (the sums are reproducible run to run).

A kernel for buffers stored in fewer bits (:meth:`SegmentedKernel.reduced`) calls a
generated element function that widens, runs the rule and narrows, in the CPU loops and
the CUDA kernel alike (the same codecs and random bits); one with int8 states has CPU
loops of its own that step whole quantization blocks (``_int8_source``).

The chunk table and the per-segment totals of the per-chunk sums are
:mod:`.segments`' (``Segments.totals``); :mod:`.segmented_run` runs a pass over a
param group with buffers that it keeps (nothing allocated per step).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from functools import cached_property

import numpy as np
from numba import types
from numba.extending import intrinsic

from . import precision, quantized
from .compile import (
    argument_marks,
    build_generated,
    check_argument_names,
    cpu_loop,
    rule,
    source_hash,
)
from .elementwise import _LOAD, _STORE, named_scalars

__all__ = ["SegmentedKernel", "BLOCK", "MAX_THREADS"]

#: the largest CUDA block the kernels are built for (the size of their shared arrays)
MAX_THREADS = 1024

# the generated loops' names carry this hash: an edit of any of these files (the
# rules, the templates, the chunk table's columns, how a pass is run) gives new names
_SOURCE_HASH = source_hash("compile.py", "elementwise.py", "rules", "segmented.py",
                           "segments.py", "segmented_run.py", "precision.py", "quantized.py")


# ------------------------------------------------------------- generation
# The serial loop over the chunks ``first_chunk`` to ``stop_chunk`` of the table.
_CPU_TEMPLATE = """
def {name}(param_addresses, grad_addresses, offsets, chunks, segment_values, sums{states}{extra},
           scalars, first_chunk, stop_chunk):
    {unpack}
    {key}
    for c in range(first_chunk, stop_chunk):
        j = chunks[c, 0]
        seg = chunks[c, 1]
        first = chunks[c, 2]
        count = chunks[c, 3]
        stride = chunks[c, 4]
        base = offsets[j]
        n = offsets[j + 1] - base
        param = carray(void_pointer(param_addresses[j]), n, {param_dtype})
        grad = carray(void_pointer(grad_addresses[j]), n, {param_dtype})
        {segment_unpack}
        if stride == 1:
{contiguous}
{strided}
        {acc_store}
"""

# The parallel loop: ``prange`` over groups of chunks (``Segments.group_bounds``), each
# group run by the serial loop (a call, not inlined). numba's parfor passes then analyse
# a loop of one call instead of the whole rule, which shortens the compilation of a cold
# first step at the same speed per step.
_CPU_PARALLEL_TEMPLATE = """
def {name}(param_addresses, grad_addresses, offsets, chunks, segment_values, sums{states}{extra},
           scalars, bounds):
    for group in prange(bounds.shape[0] - 1):
        chunk_loop(param_addresses, grad_addresses, offsets, chunks, segment_values,
                   sums{states}{extra}, scalars, bounds[group], bounds[group + 1])
"""

# The strided loop (segments along an inner axis, e.g. ND-Adam's columns).
_CPU_STRIDED = """
        else:
            {acc_init}
            for k in range(count):
                i = first + k * stride
                {targets_cpu} = rule(param[i], grad[i]{states_cpu}{segment_args}{index_i}
                                     {scalar_args})
                {acc_update}
"""
# A kernel for tables whose chunks are all contiguous (whole tensors, rows) has no
# strided loop (it would skip a strided chunk: ``run`` uses it only for tables without
# any), and compiles faster. No ``raise`` here: it would keep ``prange`` serial.
_CPU_NO_STRIDED = ""

# The contiguous (stride 1) loop of a rule that returns no terms: unit-stride views,
# so that LLVM vectorizes it like the element-wise loops of :mod:`.elementwise`.
_CPU_CONTIGUOUS = """
            param_c = param[first:first + count]
            grad_c = grad[first:first + count]
            {slices}
            for k in range(count):
                {targets_c} = {call_c}
"""

# The contiguous loop of a rule with terms. A chain of float64 adds (``acc += term``)
# keeps LLVM from vectorizing the loop without fastmath, and 64 partial sums kept in a
# scratch array (stored and reloaded every element, widened to float64; the previous
# design) cost SWATS and LAMB about as much time as their rule. So the chunk is walked in
# blocks of BLOCK elements; within a block each term is summed in the buffer dtype by
# ``add_term``, an addition that LLVM may reassociate (``fastmath={"reassoc"}`` on
# that one instruction only, not on the rule's math): the loop vectorizes at the full
# width of the buffer dtype with the partial sums in registers. Each block's sum is
# added to the chunk's float64 total. The sums are the same run to run and for any
# thread count or grouping of the chunks (each chunk is summed on its own, in a fixed
# order); the order within a block follows the vector width LLVM chose for this CPU.
_CPU_BLOCKS = """
            {acc_init}
            for start in range(first, first + count, {block}):
                stop = min(start + {block}, first + count)
                param_b = param[start:stop]
                grad_b = grad[start:stop]
                {block_slices}
                {part_init}
                for k in range(stop - start):
                    {targets_b} = {call_b}
                    {part_update}
                {acc_from_parts}
"""

#: elements per block of the contiguous CPU loop with terms (summed in the buffer
#: dtype, then added to a float64 total)
BLOCK = 512


@intrinsic
def _add_term(typingctx, total, term):
    """``total + term``, an addition LLVM may reorder (``fadd reassoc``): a loop
    summing terms with it vectorizes (see ``_CPU_BLOCKS``). An intrinsic, not a jitted
    function: it is emitted where it is called, with no compilation of its own (a
    function with ``fastmath={"reassoc"}`` would add a compilation to a cold first step)."""
    if not isinstance(total, types.Float) or not isinstance(term, types.Float):
        return None
    result = typingctx.unify_types(total, term)

    def codegen(context, builder, signature, args):
        left = context.cast(builder, args[0], signature.args[0], result)
        right = context.cast(builder, args[1], signature.args[1], result)
        return builder.fadd(left, right, flags=("reassoc",))

    return result(total, term), codegen


# A kernel with a layout (see ``SegmentedKernel.reduced``) also takes the step's key
# (a ``uint32``) and ``offset``, the index in the group of ``param[0]`` (0 for the flat
# buffer, the parameter's offset on the list path): its element function draws the
# random bits of element ``offset + i`` (as the CPU loops do of ``base + i``).
_CUDA_TEMPLATE = """
def {name}(param, grad{states}, chunks, first_column, segment_values, sums{cuda_extra}
           {scalar_params}):
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    {shared}
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        seg = chunks[c, 1]
        first = chunks[c, first_column]
        count = chunks[c, 3]
        stride = chunks[c, 4]
        {segment_unpack}
        {acc_init}
        for k in range(tid, count, nthreads):
            i = first + k * stride
            {targets_cuda} = rule(param[i], grad[i]{states_cuda}{segment_args}{index_cuda}
                                  {scalar_args})
            {acc_update}
{reduce}
"""

_CUDA_REDUCE = """
        {acc_share}
        cuda.syncthreads()
        width = 1
        while width < nthreads:
            width *= 2
        half = width // 2
        while half > 0:
            if tid < half and tid + half < nthreads:
                {tree_add}
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            {tree_store}
        cuda.syncthreads()
"""


class SegmentedKernel:
    """The loops generated from one segmented rule.

    Parameters
    ----------
    rule_fn
        An ``@rule`` dispatcher taking ``(param, grad, <states>, <segment values>,
        <scalars>)`` and returning ``(param, <states>, <terms>)``.
    state_names
        Its state arguments (flat buffers of the group, read and returned).
    segment_names
        Its per-segment arguments.
    num_terms
        How many per-element terms it returns after the states (summed per segment).
    writes
        Which of ``"param"`` and the state names are stored back (the others are
        only read; a pass that only reduces stores nothing).

    The rule's argument names must not be names the loops use themselves (``n``,
    ``stride``, ``first``, ...): building a loop raises TypeError otherwise.
    """

    def __init__(self, rule_fn, state_names: tuple[str, ...], segment_names: tuple[str, ...],
                 num_terms: int, writes: tuple[str, ...]):
        self.rule = rule_fn
        self.name = rule_fn.py_func.__name__
        args = list(inspect.signature(rule_fn.py_func).parameters)
        k = 2 + len(state_names)
        if (args[:2] != ["param", "grad"] or tuple(args[2:k]) != tuple(state_names)
                or tuple(args[k : k + len(segment_names)]) != tuple(segment_names)):
            raise TypeError(
                f"rule {self.name} must take (param, grad, {', '.join(state_names)}, "
                f"{', '.join(segment_names)}, ...)"
            )
        unknown = set(writes) - {"param", *state_names}
        if unknown:
            raise ValueError(f"writes: unknown names {sorted(unknown)}")
        self.state_names = tuple(state_names)
        self.segment_names = tuple(segment_names)
        self.scalar_names = tuple(args[k + len(segment_names) :])
        # the scalars after grad_mult and clip_value, by name (see elementwise.named_scalars)
        self.named = (named_scalars(self.name, self.scalar_names[2:])
                      if self.scalar_names[:2] == ("grad_mult", "clip_value") else None)
        self.num_terms = int(num_terms)
        self.writes = tuple(writes)
        self._names_checked = False
        #: how the buffers are stored (see :meth:`reduced`); None: as the arithmetic
        self.layout: tuple | None = None
        self._loop_rule = rule_fn
        self._variants: dict[tuple, SegmentedKernel] = {}

    def reduced(self, layout: tuple) -> SegmentedKernel:
        """This pass's kernel for buffers stored in fewer bits than the arithmetic.

        ``layout`` is ``(param, grad, states, master, streams, by_segment)``: the
        codecs of the parameters (``"same"``, ``"bf16"``, ``"f16"``, or with ``"_sr"``
        when stored stochastically rounded), of the gradients, and of each state (as
        :meth:`~.precision.Precision.layout`, ``"same"`` for a scratch buffer); whether
        a float32 master copy of 16-bit parameters is read and written (the last state
        argument of the loops, ``master``); per state, the stream number of its random
        bits, and whether they are keyed by the element's *segment* instead of its
        index (a per-segment value repeated in each element, ND-Adam's ``v``, stays
        equal in every element). The CPU loops take the step's key in a ``uint32``
        array, ``rounding``, after the states; the CUDA kernel takes it as a ``uint32``
        after the sums, then ``offset``, the index in the group of its ``param[0]``
        (see :mod:`.elementwise` for the element-wise rules' twin). One kernel per
        layout.

        States stored as int8 blocks (codecs ``"q8s"``, ``"q8u"``, to nearest, or with
        ``"_sr"`` rounded stochastically; float32 or float64 parameters, no master copy)
        make CPU loops that take, per such state, its codes, scales and float32 buffer,
        then the group's block table, the maps and the code table (``_int8_source``),
        then, where a state is rounded stochastically, the floor table and the step's
        key (``rounding``); their tables must be contiguous chunks of whole blocks.
        They have no CUDA kernel.
        """
        kernel = self._variants.get(layout)
        if kernel is None:
            kernel = copy.copy(self)
            kernel._variants = {}
            kernel.layout = layout
            digest = hashlib.sha256(repr(layout).encode()).hexdigest()[:8]
            kernel.name = f"{self.name}_r{digest}"
            # int8 states: the loops dequantize and requantize whole blocks around the
            # rule itself (no codec in the element; their random bits are the loops')
            kernel._loop_rule = (self.rule if _int8(layout)
                                 else _element_function(kernel.name, self, layout))
            # the cached loops of this kernel are not the variant's
            for attr in ("serial", "parallel", "contiguous_serial", "contiguous_parallel",
                         "cuda"):
                kernel.__dict__.pop(attr, None)
            self._variants[layout] = kernel
        return kernel

    @property
    def int8(self) -> bool:
        """Whether some state of this kernel's layout is stored as int8 blocks."""
        return self.layout is not None and _int8(self.layout)

    @property
    def _master(self) -> bool:
        return self.layout is not None and bool(self.layout[3])

    @property
    def _loop_states(self) -> tuple[str, ...]:
        """The state buffers the loops take: the rule's, then the master copy."""
        return (*self.state_names, *(("master",) if self._master else ()))

    @property
    def _loop_writes(self) -> tuple[str, ...]:
        return (*self.writes, *(("master",) if self._master and "param" in self.writes
                                else ()))

    def _check_names(self) -> None:
        """Refuse a rule whose argument names the loops use for something else (a
        scalar ``n`` would be the loop's tensor size, silently); before the first loop
        is built (not at import: it costs a fraction of a millisecond per rule)."""
        if self._names_checked:
            return
        names = (*self.state_names, *self.segment_names, *self.scalar_names)
        marks = dict(zip(names, argument_marks(len(names))))
        probe = copy.copy(self)
        probe.state_names = tuple(marks[s] for s in self.state_names)
        probe.segment_names = tuple(marks[s] for s in self.segment_names)
        probe.scalar_names = tuple(marks[s] for s in self.scalar_names)
        probe.writes = tuple(marks.get(s, s) for s in self.writes)
        sources = [probe.cpu_source(parallel, strided)[1]
                   for parallel in (False, True) for strided in (False, True)]
        n = len(self.state_names)
        probe.layout = ("bf16", "bf16", ("bf16_sr",) * n, True, tuple(range(1, n + 1)),
                        (True,) * n)
        sources += [probe.cpu_source(parallel, strided)[1]
                    for parallel in (False, True) for strided in (False, True)]
        sources.append(_element_source("probe", probe, probe.layout))
        sources.append(probe.cuda_source()[1])
        probe.layout = ("same", "same",
                        tuple(("q8s", "q8u_sr", "same")[k % 3] for k in range(n)),
                        False, tuple(range(1, n + 1)), (False,) * n)
        if n:  # int8 loops (a kernel without states has none)
            sources += [probe.cpu_source(parallel)[1] for parallel in (False, True)]
        probe.layout = None
        check_argument_names(self.name, names, [*sources, probe.cuda_source()[1]])
        self._names_checked = True

    def _pieces(self) -> dict[str, str]:
        loop_states = self._loop_states
        states = "".join(f", {s}" for s in loop_states)
        scalar_args = "".join(f", {s}" for s in self.scalar_names)
        segment_args = "".join(f", {s}" for s in self.segment_names)
        reduced = self.layout is not None
        # a reduced kernel's element function also takes the step's key, the element's
        # index in the group's flat layout and its segment (see ``reduced``)
        index = ", key, {}, seg" if reduced else ""

        terms = range(self.num_terms)
        return dict(
            extra=", rounding" if reduced else "",
            key="key = rounding[0]" if reduced else "pass",
            param_dtype=("uint16" if reduced and self.layout[0] != "same"
                         else "scalars.dtype"),
            index_i=index.format("base + i"),
            cuda_extra=", key, offset" if reduced else "",
            index_cuda=index.format("offset + i"),
            states=states,
            scalar_args=scalar_args,
            scalar_params=scalar_args,
            states_cpu="".join(f", {s}[base + i]" for s in loop_states),
            call_c=self._call("_c", segment_args + index.format("base + first + k")
                              + scalar_args),
            call_b=self._call("_b", segment_args + index.format("base + start + k")
                              + scalar_args),
            targets_c=self._targets("param_c[k]", "{s}_c[k]", "term{k}"),
            slices="; ".join(f"{s}_c = {s}[base + first:base + first + count]"
                             for s in loop_states) or "pass",
            states_cuda="".join(f", {s}[i]" for s in loop_states),
            targets_cpu=self._targets("param[i]", "{s}[base + i]", "term{k}"),
            targets_cuda=self._targets("param[i]", "{s}[i]", "term{k}"),
            segment_args=segment_args,
            segment_unpack="; ".join(
                f"{s} = segment_values[seg, {k}]" for k, s in enumerate(self.segment_names)
            ) or "pass",
            acc_init="; ".join(f"acc{k} = 0.0" for k in terms) or "pass",
            acc_update="; ".join(f"acc{k} += term{k}" for k in terms) or "pass",
            acc_store="; ".join(f"sums[c, {k}] = acc{k}" for k in terms) or "pass",
            unpack="".join(f"{s} = scalars[{k}]; " for k, s in enumerate(self.scalar_names))
            or "pass",
        )

    def _build(self, source: str, name: str, extra_globals: dict):
        self._check_names()
        return build_generated(source, name, __file__, self._loop_rule,
                               {"uint16": np.uint16, **extra_globals})

    def _contiguous(self, pieces: dict[str, str]) -> str:
        if not self.num_terms:
            return _CPU_CONTIGUOUS.format(**pieces)
        terms = range(self.num_terms)
        return _CPU_BLOCKS.format(
            block=BLOCK,
            block_slices="; ".join(f"{s}_b = {s}[base + start:base + stop]"
                                   for s in self._loop_states) or "pass",
            part_init="; ".join(f"part{k} = scalars.dtype.type(0)" for k in terms),
            targets_b=self._targets("param_b[k]", "{s}_b[k]", "term{k}"),
            call_b=pieces["call_b"],
            part_update="; ".join(f"part{k} = add_term(part{k}, term{k})" for k in terms),
            acc_from_parts="; ".join(f"acc{k} += part{k}" for k in terms),
            acc_init=pieces["acc_init"],
        )

    def _call(self, view: str, tail: str) -> str:
        """The rule called on element ``k`` of the unit-stride views named with the
        suffix ``view`` (``param_c``, ``exp_avg_c``, ...), then the arguments ``tail``."""
        states = "".join(f", {s}{view}[k]" for s in self._loop_states)
        return f"rule(param{view}[k], grad{view}[k]{states}{tail})"

    def _targets(self, param: str, state: str, term: str) -> str:
        """The left side of ``... = rule(...)``: ``param`` / ``state`` (a format with
        ``{s}``) where stored, a dummy name where only read, then the terms."""
        out = [param if "param" in self.writes else "_param"]
        writes = self._loop_writes
        for s in self._loop_states:
            out.append(state.format(s=s) if s in writes else f"_{s}")
        out += [term.format(k=k) for k in range(self.num_terms)]
        return ", ".join(out) + ("," if len(out) == 1 else "")

    def cpu_source(self, parallel: bool, strided: bool = True) -> tuple[str, str]:
        """The name and the generated source of a CPU loop (see ``serial`` and co.)."""
        suffix = ("parallel" if parallel else "serial") + ("" if strided else "_contiguous")
        name = f"{self.name}_segmented_{suffix}_{_SOURCE_HASH}"
        pieces = self._pieces()
        if self.int8:  # whole quantization blocks (contiguous chunks only)
            pieces["states"] = "".join(f", {s}" for s in _int8_arguments(self))
            pieces["extra"] = (", blocks, small, qmaps, coding"
                               + (", flooring" if quantized.takes_floors(self.layout) else "")
                               + (", rounding" if quantized.takes_key(self.layout) else ""))
            if not parallel:
                return name, _int8_source(name, self, pieces)
        if parallel:  # calls the serial loop (``chunk_loop``) per group of chunks
            return name, _CPU_PARALLEL_TEMPLATE.format(name=name, **pieces)
        source = _CPU_TEMPLATE.format(name=name, contiguous=self._contiguous(pieces),
                                      strided=(_CPU_STRIDED if strided else _CPU_NO_STRIDED)
                                      .format(**pieces), **pieces)
        return name, source

    def _cpu(self, parallel: bool, strided: bool = True):
        name, source = self.cpu_source(parallel, strided)
        if parallel:
            chunk_loop = self.serial if strided else self.contiguous_serial
            fn = self._build(source, name, {"chunk_loop": chunk_loop})
        else:
            fn = self._build(source, name, {"add_term": _add_term, **_INT8_GLOBALS})
        return cpu_loop(fn, parallel)

    @cached_property
    def serial(self):
        """The loop over chunks ``first_chunk`` to ``stop_chunk`` of a table."""
        return self._cpu(False)

    @cached_property
    def parallel(self):
        """``prange`` over groups of chunks (``Segments.group_bounds``), each run by
        ``serial``."""
        return self._cpu(True)

    @cached_property
    def contiguous_serial(self):
        """``serial`` for tables without strided chunks (compiles faster)."""
        return self._cpu(False, strided=False)

    @cached_property
    def contiguous_parallel(self):
        return self._cpu(True, strided=False)

    def cuda_source(self) -> tuple[str, str]:
        """The name and the generated source of the CUDA kernel (see ``cuda``)."""
        pieces = self._pieces()
        name = f"{self.name}_segmented_cuda_{_SOURCE_HASH}"
        terms = range(self.num_terms)
        if self.num_terms:
            shared = f"partial = cuda.shared.array(({MAX_THREADS}, {self.num_terms}), float64)"
            reduce = _CUDA_REDUCE.format(
                acc_share="; ".join(f"partial[tid, {k}] = acc{k}" for k in terms),
                tree_add="; ".join(
                    f"partial[tid, {k}] += partial[tid + half, {k}]" for k in terms
                ),
                tree_store="; ".join(f"sums[c, {k}] = partial[0, {k}]" for k in terms),
            )
        else:
            shared, reduce = "pass", ""
        return name, _CUDA_TEMPLATE.format(name=name, shared=shared, reduce=reduce, **pieces)

    @cached_property
    def cuda(self):
        from numba import cuda, float64

        if self.int8:  # (the optimizers refuse int8 multi-pass state on the GPU)
            raise NotImplementedError(f"{self.name}: int8 states run on the CPU only")
        name, source = self.cuda_source()
        fn = self._build(source, name, {"cuda": cuda, "float64": float64})
        return cuda.jit(fn)

    def __repr__(self) -> str:
        return (f"SegmentedKernel({self.name}, states={self.state_names}, "
                f"segments={self.segment_names}, terms={self.num_terms})")


# ------------------------------------------------------- reduced precision
# how the element function widens a stored value and narrows a result: _LOAD and _STORE,
# the codecs of :mod:`.elementwise`
_GLOBALS = {"np": np, "bf16_to_f32": precision.bf16_to_f32, "f16_to_f32": precision.f16_to_f32,
            "f32_to_bf16_nearest": precision.f32_to_bf16_nearest,
            "f32_to_bf16_stochastic": precision.f32_to_bf16_stochastic,
            "f32_to_f16_nearest": precision.f32_to_f16_nearest,
            "f32_to_f16_stochastic": precision.f32_to_f16_stochastic,
            "element_bits": precision.element_bits}


def _element_source(name: str, kernel: SegmentedKernel, layout: tuple) -> str:
    """The element function of a reduced kernel: widen what it loads, call the rule,
    narrow what the pass stores (the values it only reads are returned as the rule
    gave them, to dummy targets). Its arguments are the loop's: ``param, grad,
    <states>, [master], <segment values>, key, index, seg, <scalars>``; it returns
    ``(param, <states>, [master], <terms>)``."""
    param, grad, states, master, streams, by_segment = layout
    n = len(kernel.state_names)
    ins = [f"s{k}" for k in range(n)]
    args = ", ".join(("param", "grad", *ins, *(("master",) if master else ()),
                      *kernel.segment_names, "key", "index", "seg", *kernel.scalar_names))
    lines = [f"def {name}({args}):"]
    lines.append("    p_ = " + ("master" if master else
                                _LOAD[param.replace("_sr", "")].format("param")))
    lines.append(f"    g_ = {_LOAD[grad].format('grad')}")
    for k, codec in enumerate(states):
        lines.append(f"    v{k} = {_LOAD[codec.replace('_sr', '')].format(ins[k])}")
    terms = [f"t{k}" for k in range(kernel.num_terms)]
    outs = ("p_", *(f"v{k}" for k in range(n)), *terms)
    call = ", ".join(("p_", "g_", *(f"v{k}" for k in range(n)), *kernel.segment_names,
                      *kernel.scalar_names))
    lines.append(f"    {', '.join(outs)}, = rule({call})")
    writes_param = "param" in kernel.writes
    results = [_STORE[param].format("p_", bits="element_bits(key, index, 0)")
               if writes_param else "p_"]
    for k, (codec, stream, per_segment) in enumerate(zip(states, streams, by_segment)):
        if kernel.state_names[k] not in kernel.writes:
            results.append(f"v{k}")
            continue
        bits = f"element_bits(key, {'seg' if per_segment else 'index'}, {stream})"
        results.append(_STORE[codec].format(f"v{k}", bits=bits))
    if master:
        results.append("np.float32(p_)")
    results += terms
    lines.append(f"    return {', '.join(results)},")
    return "\n".join(lines) + "\n"


def _element_function(name: str, kernel: SegmentedKernel, layout: tuple):
    """The element function of ``layout`` (an inlined ``@rule``)."""
    source = _element_source(name, kernel, layout)
    namespace = {"rule": kernel.rule, **_GLOBALS}
    exec(compile(source, f"<fastmoments segmented element {name}>", "exec"), namespace)
    return rule(namespace[name])


# ------------------------------------------------------------- int8 states
# A pass over int8 states (codecs "q8s"/"q8u", see :mod:`.quantized`) walks whole
# quantization blocks: its chunks are contiguous runs of one tensor that begin and end
# at block edges (a table of whole tensors, or of a shard's pieces, with CHUNK a multiple
# of the block: ``segmented_run`` checks it). Each block is dequantized into a
# block-sized scratch, the rule runs on its elements (the parameter and the terms from
# the values before requantization), and the block's states written by the pass are
# requantized with their new scales, as the element-wise int8 loops do it (a state of
# codec "q8u_sr" / "q8s_sr" rounded stochastically with their random bits: the step's
# key, the element's index in the group, the state's stream); a block of a tensor below
# the int8 threshold reads and writes the state's float32 buffer instead.
_INT8_GLOBALS = {"np": np, "code_slot": quantized.code_slot, "code_of": quantized.code_of,
                 "magnitude": quantized.magnitude, "nonzero_code": quantized.nonzero_code,
                 "stochastic_code": quantized.stochastic_code,
                 "element_bits": precision.element_bits}


def _int8(layout: tuple) -> bool:
    return any(codec.startswith("q8") for codec in layout[2])


def _int8_arguments(kernel: SegmentedKernel) -> list[str]:
    """The state arguments of an int8 kernel's loops: per int8 state its codes, scales
    and float32 buffer (:func:`~.quantized.aux_names`), per other state its buffer."""
    out = []
    for name, codec in zip(kernel.state_names, kernel.layout[2]):
        out += [name, *quantized.aux_names(name)] if codec.startswith("q8") else [name]
    return out


def _int8_source(name: str, kernel: SegmentedKernel, pieces: dict[str, str]) -> str:
    """The serial CPU loop of an int8 kernel over chunks ``first_chunk`` to
    ``stop_chunk`` (arguments as the other loops', the states as
    :func:`_int8_arguments`, then ``blocks, small, qmaps, coding``: the group's block
    table, :func:`~.quantized.maps` and :func:`~.quantized.code_table`; then, where the
    layout rounds an int8 state stochastically (:func:`~.quantized.takes_floors`),
    ``flooring``, :func:`~.quantized.floor_table`, and ``rounding``, the step's key).

    A state rounded stochastically (:func:`~.quantized.rounded_states`) is stored as
    :func:`~.quantized.loop_source`'s block body does it: its values over the new scale
    are kept (``ys``), their floor codes and the two map entries around them read in the
    pass of table reads, and the codes drawn by :func:`~.quantized.stochastic_code` with
    :func:`~.precision.element_bits` of the key, the element's index in the group (or
    its segment, for a per-segment state) and the state's stream (``layout[4]``: the
    element-wise rule's ``k + 1`` for its state ``k``, see ``optim.multipass._variant``),
    so the same bits as the element-wise loops, for any thread count. A state rounded to
    nearest gets the code table's nearest code."""
    states, codecs, writes = kernel.state_names, kernel.layout[2], kernel.writes
    quantized_rows = {s: q for q, s in enumerate(s for s, c in zip(states, codecs)
                                                 if c.startswith("q8"))}
    signs = {s: int(c.startswith("q8s")) for s, c in zip(states, codecs)}
    rounded = dict(zip(states, quantized.rounded_states(kernel.layout, len(states))))
    streams = dict(zip(states, kernel.layout[4]))
    by_segment = dict(zip(states, kernel.layout[5]))
    terms = range(kernel.num_terms)
    segment_args = "".join(f", {s}" for s in kernel.segment_names)
    scalar_args = "".join(f", {s}" for s in kernel.scalar_names)

    def call(value) -> str:
        """``targets = rule(...)`` with the state values ``value(state)``."""
        out = ["param[ip]" if "param" in writes else "_param"]
        out += [value(s) if s in writes else f"_{s}" for s in states]
        out += [f"term{k}" for k in terms]
        args = "".join(f", {value(s)}" for s in states)
        return (", ".join(out) + ("," if len(out) == 1 else "")
                + f" = rule(param[ip], grad[ip]{args}{segment_args}{scalar_args})")

    parts = [f"part{k} = add_term(part{k}, term{k})" for k in terms]
    small_value = {s: (f"{quantized.aux_names(s)[1]}[fk]" if s in quantized_rows else f"{s}[i]")
                   for s in states}
    block_value = {s: (f"v{quantized_rows[s]}" if s in quantized_rows else f"{s}[i]")
                   for s in states}
    body = ["lo = blocks[b]", "hi = blocks[b + 1]", "count = hi - lo",
            "first = np.uint64(lo - base)", *[f"part{k} = scalars.dtype.type(0)" for k in terms],
            "off = small[b]", "if off >= 0:",
            "    kept = np.uint64(off)",
            "    for k in range(count):",
            "        i = np.uint64(lo) + np.uint64(k)",
            "        ip = first + np.uint64(k)",
            "        fk = kept + np.uint64(k)",
            "        " + call(small_value.__getitem__),
            *["        " + line for line in parts],
            "else:", "    start = np.uint64(lo)"]
    inner = ["for k in range(count):", "    i = start + np.uint64(k)"]  # the map values
    for s, q in quantized_rows.items():
        inner.append(f"    work[{q}, k] = qmaps[{signs[s]}, {s}[i]]")
    for s, q in quantized_rows.items():
        inner += [f"scale{q} = {quantized.aux_names(s)[0]}[b]", f"peak{q} = np.uint32(0)"]
    inner += ["for k in range(count):", "    i = start + np.uint64(k)",
              "    ip = first + np.uint64(k)"]
    inner += [f"    v{q} = work[{q}, k] * scale{q}" for q in quantized_rows.values()]
    inner.append("    " + call(block_value.__getitem__))
    for s, q in quantized_rows.items():
        if s in writes:
            inner += [f"    work[{q}, k] = v{q}", f"    peak{q} = max(peak{q}, magnitude(v{q}))"]
    inner += ["    " + line for line in parts]
    stored = [(s, q) for s, q in quantized_rows.items() if s in writes]
    for s, q in stored:  # the new scales, the values' slots (a stochastic state: its y too)
        w = f"work[{q}, k]"
        inner += [f"top = np.uint32(peak{q}).view(np.float32)",
                  f"{quantized.aux_names(s)[0]}[b] = top"]
        for test, y in (("if top > 0:", f"{w} / top"), ("else:", f"{w} - {w}")):
            inner += [test, "    for k in range(count):"]
            if rounded[s]:
                inner += [f"        y = np.float32({y})", f"        ys[{q}, k] = y",
                          f"        slots[{q}, k] = code_slot(y)"]
            else:
                inner.append(f"        slots[{q}, k] = code_slot({y})")
    if stored:
        # the table entries (scalar reads); a stochastic state's floor code (in place
        # of its slot) and the two map entries around its value
        inner.append("for k in range(count):")
        for s, q in stored:
            row = signs[s]
            if rounded[s]:
                inner += [f"    f = code_of(flooring[{row}, slots[{q}, k] >> 16], slots[{q}, k])",
                          f"    slots[{q}, k] = f", f"    lows[{q}, k] = qmaps[{row}, f]",
                          f"    highs[{q}, k] = qmaps[{row}, f + 1]"]
            else:
                inner.append(f"    entries[{q}, k] = coding[{row}, slots[{q}, k] >> 16]")
        # the codes; a stochastic state's random bits are those of the element-wise
        # loops (its stream, the element's index in the group, counted in ix)
        draws = any(rounded[s] for s, _ in stored)
        inner += [*(["ix = lo"] if draws else []),
                  "for k in range(count):", "    i = start + np.uint64(k)"]
        for s, q in stored:
            if rounded[s]:
                where = "seg" if by_segment[s] else "ix"
                code = (f"stochastic_code(slots[{q}, k], ys[{q}, k], lows[{q}, k], "
                        f"highs[{q}, k], element_bits(key, {where}, {streams[s]}))")
            else:
                code = f"code_of(entries[{q}, k], slots[{q}, k])"
            if not signs[s]:  # a positive value never stored as 0 (see nonzero_code)
                code = f"nonzero_code({code}, work[{q}, k])"
            inner.append(f"    {s}[i] = {code}")
        if draws:
            inner.append("    ix += 1")
    body += ["    " + line for line in inner]
    body += [f"acc{k} += part{k}" for k in terms]
    body.append("b += 1")
    shape = f"({max(len(quantized_rows), 1)}, {quantized.BLOCK})"
    lines = [f"def {name}(param_addresses, grad_addresses, offsets, chunks, segment_values, "
             f"sums{pieces['states']}{pieces['extra']}, scalars, first_chunk, stop_chunk):",
             f"    {pieces['unpack']}",
             f"    work = np.empty({shape}, scalars.dtype)",
             f"    slots = np.empty({shape}, np.uint32)",
             f"    entries = np.empty({shape}, np.uint32)",
             *[f"    {a} = np.empty({shape}, np.float32)" for a in ("ys", "lows", "highs")
               if quantized.takes_floors(kernel.layout)],
             *(["    key = rounding[0]"] if quantized.takes_key(kernel.layout) else []),
             "    for c in range(first_chunk, stop_chunk):",
             "        j = chunks[c, 0]",
             "        seg = chunks[c, 1]",
             "        base = offsets[j]",
             "        n = offsets[j + 1] - base",
             "        param = carray(void_pointer(param_addresses[j]), n, scalars.dtype)",
             "        grad = carray(void_pointer(grad_addresses[j]), n, scalars.dtype)",
             f"        {pieces['segment_unpack']}",
             f"        {pieces['acc_init']}",
             "        stop = base + chunks[c, 2] + chunks[c, 3]",
             "        b = np.searchsorted(blocks, base + chunks[c, 2])",
             "        while blocks[b] < stop:"]
    lines += ["            " + line for line in body]
    lines.append(f"        {pieces['acc_store']}")
    return "\n".join(lines) + "\n"
