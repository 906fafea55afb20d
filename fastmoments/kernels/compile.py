"""Jit options in one place; compilation in the background; generated source.

- :func:`rule` marks a per-element update rule (``njit(inline="always")``, no
  signature); :func:`cpu_loop` compiles a generated CPU loop with the library's options
  (``error_model="numpy"`` so that LLVM vectorizes, cached on disk in
  ``config.cache_dir``: :func:`.cache.cached_njit`, never ``njit(cache=True)``).
- A parallel loop that the process has not compiled yet is compiled in a background
  thread (:func:`loop_ready`, :func:`compile_in_background`, :func:`start_compiling`,
  :func:`wait_compiled`); the step runs the serial loop, which gives the same results,
  meanwhile (``config.background_compile``).
- :func:`build_generated` compiles generated source text attributed to a real module
  file, so that numba's on-disk cache finds it again in a new process; the generated
  names carry a hash of the sources (:func:`source_hash`), so editing a rule or a
  template invalidates the cache. :func:`check_argument_names` refuses a rule whose
  argument names the generated loops use for something else.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence

from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..config import config
from .cache import cached_njit

__all__ = ["rule", "cpu_loop", "cached_njit", "prepare_cpu_target", "loop_ready",
           "call_when_ready",
           "WhenReady", "compile_in_background", "start_compiling", "wait_compiled",
           "source_hash", "build_generated", "argument_marks", "check_argument_names"]

_FASTMATH = False

_CPU_TARGET_READY = False


def prepare_cpu_target() -> None:
    """Let numba's CPU target load without importing the whole of ``scipy.linalg``.

    The first compilation or cache load of a process loads numba's CPU target, whose
    ``numba.np.arraymath`` checks that a BLAS is available by importing
    ``scipy.linalg.cython_blas`` when SciPy is installed. That import runs the
    ``scipy.linalg`` package (most of a cached first step), and
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
    return cached_njit(error_model="numpy", parallel=parallel, fastmath=_FASTMATH,
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
    call site: a method call costs more than the check); until then it calls
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


def _source_files(here: str, name: str) -> list[str]:
    """The files that ``name`` stands for: a module file, or every ``.py`` file of a
    package folder (``"rules"``, its subfolders included), in a fixed order."""
    path = os.path.join(here, name)
    if os.path.isdir(path):
        return sorted(os.path.join(root, file)
                      for root, _, files in os.walk(path) for file in files
                      if file.endswith(".py"))
    return [path]


def source_hash(*names: str) -> str:
    """A short hash of this package's source files ``names`` (for generated-code names).

    A name may be a package folder (``"rules"``): every ``.py`` file in it is hashed,
    with its name, so that editing any of them gives new names.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in names:
        for path in _source_files(here, name):
            if path != os.path.join(here, name):  # a file of a package: its name too
                digest.update(os.path.relpath(path, here).replace(os.sep, "/").encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:10]


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


# ---------------------------------------------------- rule argument names
# A generated loop names a rule's states, segment values and scalars after the rule's
# arguments, beside names of its own (``i``, ``n``, ``stride``, ``carray``, ...). A rule
# argument with one of those names would silently be the loop's variable, so a kernel
# renders its loops with a mark in place of each argument name and refuses the names
# that the rendered text uses otherwise.
_MARK = re.compile(r"__fm(\d+)__")
#: every character that is not part of a name or an attribute access, as a space
_NOT_NAME = str.maketrans({chr(c): " " for c in range(128)
                           if not (chr(c).isalnum() or chr(c) in "_.")})


def argument_marks(count: int) -> tuple[str, ...]:
    """Stand-ins for ``count`` argument names of a rule (see :func:`check_argument_names`)."""
    return tuple(f"__fm{k}__" for k in range(count))


def _names(source: str) -> set[str]:
    """The names in Python source ``source`` (attributes, ``x.name``, left out)."""
    words = {word.partition(".")[0] for word in set(source.translate(_NOT_NAME).split())}
    return {word for word in words if word and not word[0].isdigit()}


def check_argument_names(owner: str, names: Sequence[str], sources: Iterable[str]) -> None:
    """Raise TypeError if a name of ``names`` is one the generated loops use otherwise.

    ``sources`` are the loops generated with ``argument_marks(len(names))`` in place of
    ``names``: any other name in them is the loops' own (a local such as ``n`` or
    ``stride``, a global such as ``carray``), and a name that contains a mark is made
    from that argument's name (``exp_avg_j`` from ``exp_avg``).
    """
    taken: dict[str, str] = {}
    for name in _names("\n".join(sources)):
        mark = _MARK.search(name) if "__fm" in name else None
        if mark is None:
            taken[name] = "a name of the generated loops"
        elif mark.group(0) != name:
            made = names[int(mark.group(1))]
            taken[name.replace(mark.group(0), made)] = f"the loops' name made from {made!r}"
    clashes = [f"{name!r} ({taken[name]})" for name in names if name in taken]
    if clashes:
        raise TypeError(f"rule {owner}: argument names that its generated loops use "
                        f"otherwise: {', '.join(clashes)}; rename them")
