"""Jit options in one place, and the template that turns one rule into its loops.

A *rule* is the per-element math of an optimizer: an ``@rule`` function (numba
``njit(inline="always")`` with no signature) whose arguments are, in order,

``param, grad, <state values...>, <scalars...>``

and which returns ``(new_param, <new state values...>)``. Its state arguments are
named after the flat state buffers (``exp_avg``, ``exp_avg_sq``, ...). From that
signature this module writes, from one template each, the loops that call it:

- ``serial``:   ``@njit`` loop over one flat buffer, scalars packed in one array;
- ``parallel``: the same with ``prange`` (numba threads);
- ``multi``:    one call for many separate parameter arrays (the list path): it
  walks a table of addresses and sizes, so a step over 1000 arrays is one call;
- ``cuda``:     ``@cuda.jit`` grid-stride kernel (built lazily, see ``_gpu``).

Each kernel also has a *plain* variant (:attr:`Kernel.plain`): the same loops with the
scalars of :data:`NEUTRAL` (gradient multiplier, clipping, weight decay, ...) fixed
at the value that makes their term vanish, as compile-time constants, so that LLVM
drops those operations. The class layer calls it when a step's scalars have exactly
those values (the common case), which gives the same results bit for bit: ``x * 1``,
``x > inf``, ``x + -0.0`` and a ``weight_decay`` branch fold exactly.

A parallel loop that the process has not compiled yet is compiled in a background
thread (``loop_ready``, ``compile_in_background``, ``start_compiling``,
``wait_compiled``); the step runs the serial loop, which gives the same results,
meanwhile (``config.background_compile``).

The generated functions are compiled from source text attributed to this file so
that numba's on-disk cache (``cache=True``) finds them again in a new process; their
names carry a hash of the rule sources, so editing a rule invalidates the cache.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.machinery
import importlib.util
import inspect
import math
import os
import sys
import threading
import time
from functools import cached_property

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._backend import config

__all__ = ["rule", "Kernel", "cpu_loop", "prepare_cpu_target", "loop_ready",
           "call_when_ready", "WhenReady", "compile_in_background", "start_compiling",
           "wait_compiled"]

_FASTMATH = False

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


_CPU_TARGET_READY = False


def prepare_cpu_target() -> None:
    """Let numba's CPU target load without importing the whole of ``scipy.linalg``.

    The first compilation or cache load of a process loads numba's CPU target, whose
    ``numba.np.arraymath`` checks that a BLAS is available by importing
    ``scipy.linalg.cython_blas`` when SciPy is installed. That import runs the
    ``scipy.linalg`` package (about 0.2 s here: most of a cached first step), and
    fastmoments never calls BLAS. So, the first time a loop is built, if SciPy is
    installed and neither ``scipy.linalg`` nor ``numba.np.arraymath`` is imported yet,
    the ``cython_blas`` extension module alone is loaded (a few ms) and registered for
    the duration of that check, then unregistered: numba records that BLAS is
    available, as it would have, and a later ``import scipy.linalg.cython_blas``
    (numba's own ``np.dot``, or the user's) imports ``scipy.linalg`` as usual and gets
    the same extension module. If anything differs from that plan (another SciPy or
    numba layout), numba is left to do what it always does.
    """
    global _CPU_TARGET_READY
    if _CPU_TARGET_READY:
        return
    _CPU_TARGET_READY = True
    name = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("scipy.linalg")
        folder = list(spec.submodule_search_locations)[0]
        path = next(os.path.join(folder, "cython_blas" + suffix)
                    for suffix in importlib.machinery.EXTENSION_SUFFIXES
                    if os.path.exists(os.path.join(folder, "cython_blas" + suffix)))
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        module = importlib.util.module_from_spec(
            importlib.util.spec_from_file_location(name, path, loader=loader))
        loader.exec_module(module)
    except Exception:  # no SciPy, or not the layout expected: numba imports as usual
        return
    sys.modules[name] = module
    try:
        import numba.np.arraymath  # noqa: F401  (its BLAS check runs here)
    except Exception:  # pragma: no cover - numba imports it again, the usual way
        pass
    finally:
        if sys.modules.get(name) is module:
            del sys.modules[name]


def cpu_loop(fn, parallel: bool):
    """``fn`` (a generated loop) compiled with the library's CPU jit options.

    ``no_cfunc_wrapper``: the loops are only called from Python, never passed as a
    first-class function to other jitted code, so the C-callable wrapper numba builds
    by default is dead code; skipping it trims a cold first step (same machine code
    for the loop, so the same results).
    """
    prepare_cpu_target()
    return njit(cache=True, error_model="numpy", parallel=parallel, fastmath=_FASTMATH,
                no_cfunc_wrapper=True)(fn)


# ------------------------------------------------- background compilation
_BACKGROUND: dict[tuple, threading.Thread] = {}  # (loop, signature) -> its compile thread
_QUEUED: list[tuple] = []  # (loop, signature) waiting for the end of the step
_BACKGROUND_LOCK = threading.Lock()


def _compile_in_background(loop, signature: tuple) -> None:
    try:
        loop.compile(signature)  # numba's on-disk cache first, as a call would
    except Exception:  # the step that needs the loop compiles it again and raises
        pass


def _signature(loop, arguments: tuple) -> tuple | None:
    try:
        return tuple(loop.typeof_pyval(a) for a in arguments)
    except Exception:  # pragma: no cover - another numba: the call compiles it
        return None


def loop_ready(loop, arguments: tuple) -> bool:
    """Whether a step may call the jitted loop ``loop`` on ``arguments`` now.

    True when it is compiled for their types, when ``config.background_compile`` is
    off (the call compiles it), or when its background compilation ended (if that
    failed, the call compiles it again and raises what numba raises). False: the
    caller calls :func:`compile_in_background` and runs what gives the same results
    meanwhile (the serial loop for a parallel one; a NumPy version for LAMB's second
    pass and trust ratios and SWATS's column sums).
    """
    if not config.background_compile:
        return True
    signature = _signature(loop, arguments)
    if signature is None or signature in loop.overloads:
        return True
    job = _BACKGROUND.get((loop, signature))
    return job is not None and not job.is_alive()


def compile_in_background(loop, arguments: tuple) -> None:
    """Queue the compilation of ``loop`` for the types of ``arguments`` (or its load from
    numba's on-disk cache) for a background thread, unless it was queued already.

    :func:`start_compiling` starts the queued ones, at the end of the step: a
    compilation holds numba's compiler lock, which the step's other loops (a second
    pass, another group) need for their own compilation or cache load.
    """
    signature = _signature(loop, arguments)
    if signature is None:  # pragma: no cover
        return
    key = (loop, signature)
    with _BACKGROUND_LOCK:
        if key not in _BACKGROUND and key not in _QUEUED:
            _QUEUED.append(key)


def call_when_ready(loop, arguments: tuple, stand_in, *stand_in_args) -> bool:
    """Call ``loop(*arguments)`` if :func:`loop_ready`; otherwise queue its compilation
    (:func:`compile_in_background`) and call ``stand_in(*stand_in_args)``, which must
    give the same results. Returns whether the loop ran (a caller may remember that
    and call the loop directly from then on)."""
    if loop_ready(loop, arguments):
        loop(*arguments)
        return True
    compile_in_background(loop, arguments)
    stand_in(*stand_in_args)
    return False


class WhenReady(dict):
    """:func:`call_when_ready` that remembers the loops it found compiled.

    Each call names a ``key``: an object the caller keeps while the arguments keep
    their types (the output or workspace array of a pass, or the loop itself). Once
    the loop ran for a key, ``ready.get(id(key)) is key`` and the caller calls the loop
    directly, without :func:`loop_ready`'s type lookup (the check is written at the
    call site: a method call would cost a step about 0.3 us); until then it calls
    :meth:`call`, where NumPy stands in while the loop compiles. The keys are held (an
    identity is not reused while it is remembered).
    """

    __slots__ = ()

    def call(self, key: object, loop, arguments: tuple, stand_in, *stand_in_args) -> None:
        """:func:`call_when_ready`, remembering ``key`` when the loop ran."""
        if call_when_ready(loop, arguments, stand_in, *stand_in_args):
            self[id(key)] = key


def start_compiling() -> None:
    """Start the compilations queued by :func:`compile_in_background`, each in a
    background thread (they take numba's compiler lock in turn)."""
    if not _QUEUED:
        return
    with _BACKGROUND_LOCK:
        for key in _QUEUED:
            job = threading.Thread(target=_compile_in_background, args=key, daemon=True,
                                   name="fastmoments-compile")
            _BACKGROUND[key] = job
            job.start()
        _QUEUED.clear()


def wait_compiled(timeout: float | None = None) -> bool:
    """Wait for the CPU loops compiling in the background (the parallel loops, and the
    loops a NumPy version stands in for meanwhile; see ``config.background_compile``).

    Parameters
    ----------
    timeout
        Seconds to wait at most (None: until they are ready).

    Returns
    -------
    bool
        True when none is compiling any more (the next step over a large group runs
        its parallel loop), False when the timeout came first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    start_compiling()
    with _BACKGROUND_LOCK:
        jobs = list(_BACKGROUND.values())
    for job in jobs:
        job.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(job.is_alive() for job in jobs)


# A fork while a compilation holds numba's compiler lock would leave the child a lock
# nobody releases; at exit, an unfinished compilation would not reach numba's cache.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=wait_compiled)
atexit.register(wait_compiled, 30.0)


def rule(fn):
    """Mark ``fn`` as an update rule: inlined into every loop that calls it."""
    return njit(inline="always", error_model="numpy", fastmath=_FASTMATH)(fn)


@intrinsic
def _void_pointer(typingctx, address):
    """Reinterpret an integer address as ``void*`` (for ``numba.carray``)."""
    sig = types.voidptr(address)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


def source_hash(*names: str) -> str:
    """A short hash of this package's source files ``names`` (for generated-code names)."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(here, name), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:10]


_SOURCE_HASH = source_hash("_jit.py", "_rules.py")


def build_generated(source: str, name: str, filename: str, rule_fn, extra_globals: dict):
    """Compile generated source and return its function ``name``.

    The code is attributed to ``filename`` (a real module file, at a line past its
    end) so that numba's on-disk cache can locate and stamp it; the generated names
    carry a source hash, so editing a rule or a template gives new cache entries.
    """
    namespace = {
        "__name__": __name__,
        "rule": rule_fn,
        "prange": prange,
        "carray": carray,
        "void_pointer": _void_pointer,
        **extra_globals,
    }
    exec(compile("\n" * 2000 + source, filename, "exec"), namespace)
    return namespace[name]

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
