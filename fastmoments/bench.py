"""Measure every rule against this machine's memory-traffic ceiling.

An elementwise optimizer step is limited by memory traffic: it reads the parameter,
the gradient and each state buffer once and writes the parameter and each state
buffer once. For a rule with S state buffers that is (2 + S) reads and (1 + S)
writes per element; float32 Adam (S = 2) moves 28 bytes per element. The *ceiling*
is an in-place kernel with exactly those loads and stores and no math
(``p[i] += g[i]; m[i] += g[i]; v[i] += g[i]``), serial or parallel as the library
chooses for that size. Every row is timed interleaved with the ceiling of its
traffic, size, dtype and thread count (one call of each per round, so that both see
the same machine and cache state); it reports its time per step (min and median over
a time budget), GB/s (bytes moved / min time) and its fraction of the ceiling timed
alongside it. A ceiling row shows the best that ceiling reached in the run.

Scenarios:
  sizes        every rule at --sizes, --dtypes, --threads, --paths (flat: a FlatParams,
               one kernel call; list: separate arrays of --chunk elements)
  --tiny       a 10-element model: the cost of one step() call
  --many       many small arrays (--many-shape, default 1000x1000): list and FlatParams
  --first-step first step() in a fresh process: cold (empty numba cache) and cached
  --crossover  serial vs parallel kernels over a range of sizes (parallel_threshold)

With --compare torch, torch.optim rows (fused=True, foreach=True; --torch-impls)
and an in-place NumPy Adam/AdamW are added; "x fused" is torch fused time divided by
fastmoments time (for --tiny/--many against torch with one tensor per array), both
timed in the same rounds (torch fused runs alongside each fastmoments row and its
ceiling), so that a drift of the machine between rows does not enter the ratio.

Examples:
  fastmoments bench                                  every rule, 1e6 and 1e7, float32
  fastmoments bench --compare torch                  + torch.optim and NumPy rows
  fastmoments bench --rules adam,adamw --sizes 1e7 --threads 1,2 --dtypes float32,float64
  fastmoments bench --sizes none --tiny --many --first-step --compare torch
  fastmoments bench --crossover --rules adam --sizes none
  fastmoments bench --rules adam --threads 1,2 --contend 1   with a busy process per core
  fastmoments bench --json > results.json
  fastmoments bench --compare torch --save results.json --plot gbps.png   (matplotlib)
  fastmoments bench --backend cuda --compare torch   NVIDIA GPU (device arrays)

See docs/performance.md for what was measured on the development machine.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
from numba import njit

from ._backend import config
from ._jit import build_generated, wait_compiled

__all__ = [
    "Case", "Timing", "add_arguments", "run", "main", "optimizer_classes", "rule_states",
    "require_cuda", "traffic", "ceiling_kernel", "cuda_ceiling_kernel", "fastmoments_case",
    "ceiling_case", "ceiling_for", "multipass_ceiling_case", "pass_ceiling_kernel",
    "cuda_pass_ceiling_kernel",
    "device_copy_case", "torch_case", "numpy_case", "time_step", "time_steps", "first_step",
    "machine_info",
]

#: keyword arguments each rule is benchmarked with (torch gets the same ones);
#: SGD with momentum, as it is used in practice (one state buffer).
# SWATS with switch_tol=0 stays in its Adam phase (two dot products per step): without
# it, the switch to SGD happens within a few steps and the timed phase would change.
RULE_KWARGS: dict[str, dict[str, Any]] = {"SGD": {"lr": 1e-3, "momentum": 0.9},
                                          "SWATS": {"switch_tol": 0.0}}
TORCH_IMPLS = ("fused", "foreach", "forloop")
NUMPY_RULES = ("Adam", "AdamW")
DEFAULT_SIZES = "1e6,1e7"
TINY_SIZE = 10


# ------------------------------------------------------------------- rules
def optimizer_classes() -> dict[str, type]:
    """The optimizer classes exported by ``fastmoments`` (name -> class), in ``__all__`` order."""
    import fastmoments as fm
    from fastmoments._base import Optimizer

    out = {}
    for name in fm.__all__:
        obj = getattr(fm, name)
        if isinstance(obj, type) and issubclass(obj, Optimizer):
            out[name] = obj
    return out


def _state_count(opt: Any) -> int:
    # the flat state buffers of the (single) param group: each is read and written once
    return len(opt._groups[0].state)


def rule_states(rule: str) -> int:
    """How many state buffers ``rule`` (with :data:`RULE_KWARGS`) reads and writes."""
    cls = optimizer_classes()[rule]
    opt = cls([np.zeros(1)], **RULE_KWARGS.get(rule, {}))
    return _state_count(opt)


def traffic(n_states: int) -> tuple[int, int]:
    """(reads, writes) per element of a rule with ``n_states`` state buffers."""
    return 2 + n_states, 1 + n_states


def _pass_fields(one_pass: Sequence[int]) -> tuple[int, int, int, int]:
    """``(reads, writes, elements, store_only)`` of a declared pass (``store_only``,
    the written buffers that the pass does not read, is 0 when not declared)."""
    reads, writes, count, *rest = (int(x) for x in one_pass)
    return reads, writes, count, rest[0] if rest else 0


def _traffic_label(passes: Sequence[Sequence[int]]) -> str:
    labels = []
    for reads, writes, _, store_only in map(_pass_fields, passes):
        labels.append(f"{reads}r/{writes}w" + (f"({store_only}new)" if store_only else ""))
    return "+".join(labels)


_PASS_CEILING_SOURCE = """
def {name}(n, a0{args}):
    total = 0.0
    for i in {range}(n):
        {body}
    return total
"""
# a reduction-only pass stores its sum where it cannot happen (the loads stay live)
_CUDA_PASS_CEILING_SOURCE = """
def {name}(n, a0{args}):
    total = 0.0
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        {body}
    if total == -3.0e38:
        a0[0] = total
"""
_PASS_CEILINGS: dict[tuple[int, int, bool, int], Any] = {}
_CUDA_PASS_CEILINGS: dict[tuple[int, int, int], Any] = {}


def _pass_ceiling_source(template: str, reads: int, writes: int, store_only: int,
                         name: str, **names: str) -> str:
    in_place = writes - store_only
    if not 0 <= in_place <= reads or reads < 1 or store_only < 0 or (
            store_only and in_place == reads):
        raise ValueError(f"no ceiling kernel for {reads} reads and {writes} writes "
                         f"({store_only} to buffers not read)")
    loads = [f"a{k}[i]" for k in range(in_place, reads)]
    if writes == 0:
        body = "total += " + " + ".join(loads)
    elif loads:
        body = f"x = {' + '.join(loads)}; " + "; ".join(
            [f"a{k}[i] += x" for k in range(in_place)]
            + [f"b{k}[i] = x" for k in range(store_only)])
    else:
        body = "; ".join(f"a{k}[i] = -a{k}[i]" for k in range(writes))
    return template.format(
        name=name, args="".join([f", a{k}" for k in range(1, reads)]
                                + [f", b{k}" for k in range(store_only)]),
        body=body, **names)


def pass_ceiling_kernel(reads: int, writes: int, parallel: bool,
                        store_only: int = 0) -> Callable[..., Any]:
    """A CPU ceiling kernel for one pass of a multi-pass rule: ``f(n, a0, a1, ..., b0, ...)``.

    It loads ``a0 .. a{reads-1}[:n]`` and stores ``writes`` buffers: ``a0 ..
    a{writes-store_only-1}`` in place (the sum of the loaded-only ones added, or,
    when every loaded array is stored, their sign flipped), and the ``store_only``
    buffers ``b0 ..``, which it does not load (that sum written). A store to a buffer
    that is not loaded costs more than an in-place one (the cache line is read for
    ownership first): a rule that keeps a value between passes (LAMB's update on the
    CPU) makes such stores, and its ceiling makes them too. A pass that stores
    nothing sums what it reads (with reassociation allowed, so that the sum
    vectorizes).
    """
    key = (reads, writes, parallel, store_only)
    if key not in _PASS_CEILINGS:
        name = (f"pass_ceiling_{reads}r{writes}w{f'{store_only}new' if store_only else ''}_"
                f"{'parallel' if parallel else 'serial'}")
        source = _pass_ceiling_source(_PASS_CEILING_SOURCE, reads, writes, store_only, name,
                                      range="prange" if parallel else "range")
        fn = build_generated(source, name, __file__, None, {})
        _PASS_CEILINGS[key] = njit(cache=True, error_model="numpy", parallel=parallel,
                                   fastmath=writes == 0)(fn)
    return _PASS_CEILINGS[key]


def cuda_pass_ceiling_kernel(reads: int, writes: int, store_only: int = 0) -> Any:
    """:func:`pass_ceiling_kernel` as a CUDA grid-stride kernel ``f[grid](n, a0, ...)``
    (launched as the library's kernels); a pass that stores nothing sums what it reads
    per thread and returns nothing."""
    key = (reads, writes, store_only)
    if key not in _CUDA_PASS_CEILINGS:
        name = f"pass_ceiling_{reads}r{writes}w{f'{store_only}new' if store_only else ''}"
        source = _pass_ceiling_source(_CUDA_PASS_CEILING_SOURCE, reads, writes, store_only,
                                      name)
        from numba import cuda

        _CUDA_PASS_CEILINGS[key] = cuda.jit(
            build_generated(source, name, __file__, None, {"cuda": cuda}))
    return _CUDA_PASS_CEILINGS[key]


# -------------------------------------------------------- ceiling kernels
# In place, exactly the loads and stores of a rule with 0..3 state buffers, no math
# beyond one add per store: ``p[i] += g[i]`` and ``s[i] += g[i]`` for each state
# buffer. One body for the CPU loops (serial / prange, the library's jit options,
# compiled like its generated loops so that numba's on-disk cache applies) and the
# CUDA grid-stride kernel.
_CPU_CEILING_SOURCE = """
def {name}(p, g{args}):
    for i in {range}(p.shape[0]):
        {body}
"""
_CUDA_CEILING_SOURCE = """
def ceiling(p, g{args}):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        {body}
"""
_CEILINGS: dict[tuple[int, bool], Any] = {}
_CUDA_CEILINGS: dict[int, Any] = {}


def _ceiling_source(template: str, n_states: int, **names: str) -> str:
    if not 0 <= n_states <= 3:
        raise ValueError(f"no ceiling kernel for {n_states} state buffers (0..3)")
    states = [f"s{k}" for k in range(n_states)]
    body = "gi = g[i]; p[i] += gi" + "".join(f"; {s}[i] += gi" for s in states)
    return template.format(args="".join(f", {s}" for s in states), body=body, **names)


def ceiling_kernel(n_states: int, parallel: bool) -> Callable[..., None]:
    """The CPU ceiling kernel ``f(p, g, *states)`` for a rule with ``n_states`` buffers."""
    key = (n_states, parallel)
    if key not in _CEILINGS:
        name = f"ceiling{n_states}_{'parallel' if parallel else 'serial'}"
        source = _ceiling_source(_CPU_CEILING_SOURCE, n_states, name=name,
                                 range="prange" if parallel else "range")
        fn = build_generated(source, name, __file__, None, {})
        _CEILINGS[key] = njit(cache=True, error_model="numpy", parallel=parallel)(fn)
    return _CEILINGS[key]


def cuda_ceiling_kernel(n_states: int) -> Any:
    """The CUDA ceiling kernel (grid-stride, as the library's) for ``n_states`` buffers."""
    if n_states not in _CUDA_CEILINGS:
        source = _ceiling_source(_CUDA_CEILING_SOURCE, n_states)
        from numba import cuda

        # ``cuda`` must be a global of the kernel (the simulator swaps it there)
        _CUDA_CEILINGS[n_states] = cuda.jit(
            build_generated(source, "ceiling", __file__, None, {"cuda": cuda}))
    return _CUDA_CEILINGS[n_states]


# ------------------------------------------------------------------ cases
def _noop() -> None:
    return None


@dataclass
class Case:
    """One thing to time: ``step()`` performs one optimizer step (or ceiling pass).

    Attributes
    ----------
    step
        Performs one step; asynchronous on a GPU (``sync`` waits for it).
    n_states
        State buffers read and written per element (defines the traffic).
    numel, itemsize
        Elements per step and bytes per element of one buffer.
    sync
        Waits for the device (no-op on the CPU).
    keep
        Objects that must stay alive while ``step`` is used.
    passes
        ``(buffers read, buffers written, elements)`` of each pass of a step over the
        buffers, and optionally a fourth number: how many of the written buffers the
        pass does not read; None: one pass with the traffic of ``n_states`` over
        ``numel``. Rules with per-tensor reductions (LAMB, ND-Adam on matrices) make
        several.
    """

    step: Callable[[], Any]
    n_states: int
    numel: int
    itemsize: int
    arrays: int = 1
    sync: Callable[[], Any] = _noop
    keep: tuple = field(default=(), repr=False)
    passes: tuple[tuple[int, ...], ...] | None = None
    current_passes: Callable[[], tuple] | None = field(default=None, repr=False)

    @property
    def traffic_passes(self) -> tuple[tuple[int, ...], ...]:
        """``passes``, or the single pass of ``n_states`` over ``numel``."""
        if self.passes is None:
            return ((*traffic(self.n_states), self.numel),)
        return self.passes

    @property
    def single_pass(self) -> bool:
        return len(self.traffic_passes) == 1

    @property
    def bytes_per_step(self) -> int:
        return sum((r + w) * k for r, w, k, _ in map(_pass_fields, self.traffic_passes)
                   ) * self.itemsize


def _chunk_sizes(n: int, chunk: int) -> list[int]:
    sizes = [chunk] * (n // chunk)
    if n % chunk or not sizes:
        sizes.append(n % chunk if sizes else n)
    return sizes


def _host_data(n: int, dtype: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    param = rng.random(n, dtype=dtype)
    grad = rng.random(n, dtype=dtype)
    grad -= dtype.type(0.5)
    grad *= dtype.type(0.02)
    return param, grad


def _split(x: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Separate arrays (their own allocations) holding consecutive pieces of ``x``."""
    out, start = [], 0
    for s in sizes:
        out.append(x[start:start + s].copy())
        start += s
    return out


def require_cuda() -> Any:
    """``numba.cuda``; RuntimeError with a clear message when no usable CUDA device."""
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError(
            "--backend cuda: no usable CUDA device/driver (numba.cuda.is_available() is "
            "False); install an NVIDIA driver and `pip install fastmoments[cuda]`"
        )
    return cuda


def _on_backend(backend: str, *groups: Sequence[np.ndarray]) -> tuple[Any, ...]:
    """Each group of host arrays as a list on ``backend`` (copied to the device for
    ``"cuda"``), then the function that waits for the backend."""
    if backend == "cpu":
        return (*(list(g) for g in groups), _noop)
    if backend != "cuda":
        raise ValueError(f"backend: expected 'cpu' or 'cuda', got {backend!r}")
    cuda = require_cuda()
    return (*([cuda.to_device(a) for a in g] for g in groups), cuda.synchronize)


def fastmoments_case(rule: str, n: int, dtype: Any = np.float32, path: str = "flat",
                     chunk: int = 1000, backend: str = "cpu", seed: int = 0,
                     kwargs: dict[str, Any] | None = None) -> Case:
    """A fastmoments optimizer over ``n`` elements, ready to step.

    Parameters
    ----------
    rule
        Class name (``"Adam"``).
    n
        Total number of elements.
    dtype
        float32 or float64.
    path
        ``"flat"``: a :class:`~fastmoments.FlatParams` stepped with its own ``.grad``;
        ``"list"``: separate arrays of ``chunk`` elements and a list of gradients.
    backend
        ``"cpu"`` or ``"cuda"`` (device arrays).
    kwargs
        Constructor keywords (default: :data:`RULE_KWARGS`).
    """
    import fastmoments as fm

    cls = optimizer_classes()[rule]
    kwargs = dict(RULE_KWARGS.get(rule, {}) if kwargs is None else kwargs)
    param, grad = _host_data(n, dtype, seed)
    sizes = _chunk_sizes(n, chunk)
    params, grads, sync = _on_backend(backend, _split(param, sizes), _split(grad, sizes))
    if path == "flat":
        flat = fm.FlatParams(params)
        if backend == "cuda":
            flat.grad.copy_to_device(grad)
        else:
            flat.grad[:] = grad
        opt = cls(flat, **kwargs)
        step = opt.step
        keep: tuple = (flat,)
    elif path == "list":
        opt = cls(params, **kwargs)

        def step() -> None:
            opt.step(grads)

        keep = (params, grads)
    else:
        raise ValueError(f"path: expected 'flat' or 'list', got {path!r}")
    n_states = _state_count(opt)
    passes = tuple(opt._passes(opt._groups[0]))
    return Case(step, n_states, n, np.dtype(dtype).itemsize, len(sizes), sync, (opt, *keep),
                passes, lambda: tuple(opt._passes(opt._groups[0])))


def ceiling_for(case: Case, backend: str = "cpu", seed: int = 0) -> Case:
    """The ceiling of ``case``'s traffic: its passes' reads and writes, no math.

    A multi-pass step gets one ceiling kernel per pass (:func:`multipass_ceiling_case`).
    """
    dtype = np.dtype(f"f{case.itemsize}")
    (reads, writes, count, store_only), *more = map(_pass_fields, case.traffic_passes)
    if not more and writes == reads - 1 and count == case.numel and not store_only:
        # param, grad and states
        return ceiling_case(reads - 2, case.numel, dtype, backend, seed)
    return multipass_ceiling_case(case.traffic_passes, case.numel, dtype, seed, backend)


def multipass_ceiling_case(passes: Sequence[Sequence[int]], n: int,
                           dtype: Any = np.float32, seed: int = 0,
                           backend: str = "cpu") -> Case:
    """The ceiling of a multi-pass step: one :func:`pass_ceiling_kernel` (CPU) or
    :func:`cuda_pass_ceiling_kernel` (CUDA) per pass.

    ``passes``: ``(reads, writes, elements[, store_only])`` each; the passes run one
    after the other over the first ``elements`` of the same buffers (as the rule's
    passes do); the buffers that a pass stores without reading are extra ones.
    """
    passes = tuple(_pass_fields(p) for p in passes)
    param, grad = _host_data(n, dtype, seed)
    arrays, stored_only, sync = _on_backend(
        backend,
        [param, grad] + [np.zeros(n, dtype=dtype) for _ in range(max(p[0] for p in passes) - 2)],
        [np.zeros(n, dtype=dtype) for _ in range(max(p[3] for p in passes))])
    calls = []
    for reads, writes, count, store_only in passes:
        # the stored buffers first: param and the states, then the gradient
        order = [arrays[0], *arrays[2:], arrays[1]][:reads] if writes < reads else arrays[:reads]
        order = (count, *order, *stored_only[:store_only])
        if backend == "cuda":
            calls.append((cuda_pass_ceiling_kernel(reads, writes, store_only), order))
        else:
            calls.append((pass_ceiling_kernel(reads, writes, count >= config.parallel_threshold,
                                              store_only), order))

    if backend == "cuda":
        from fastmoments import _gpu

        def step() -> None:
            for kernel, order in calls:
                _gpu.launch(kernel, order[0], *order)
    else:
        def step() -> None:
            for kernel, order in calls:
                kernel(*order)

    return Case(step, len(arrays) - 2, n, np.dtype(dtype).itemsize, 1, sync,
                (arrays, stored_only), tuple(p if p[3] else p[:3] for p in passes))


def ceiling_case(n_states: int, n: int, dtype: Any = np.float32, backend: str = "cpu",
                 seed: int = 0) -> Case:
    """The ceiling kernel for ``n_states`` state buffers over ``n`` elements.

    Serial below ``fastmoments.config.parallel_threshold`` and parallel from it on
    (the library's choice for a flat buffer); on CUDA launched as the library does.
    """
    param, grad = _host_data(n, dtype, seed)
    arrays, sync = _on_backend(backend, [param, grad]
                               + [np.zeros(n, dtype=dtype) for _ in range(n_states)])
    if backend == "cuda":
        from fastmoments import _gpu

        kernel = cuda_ceiling_kernel(n_states)

        def step() -> None:
            _gpu.launch(kernel, n, *arrays)

        return Case(step, n_states, n, np.dtype(dtype).itemsize, 1, sync, (arrays,))
    kernel = ceiling_kernel(n_states, n >= config.parallel_threshold)

    def step() -> None:
        kernel(*arrays)

    return Case(step, n_states, n, np.dtype(dtype).itemsize, 1, sync, (arrays,))


def device_copy_case(n: int, dtype: Any = np.float32, seed: int = 0) -> Case:
    """A device-to-device copy of one buffer of ``n`` elements (``cuMemcpyDtoD``): the
    device's copy bandwidth, the figure GPU vendors and torch users quote (bytes read
    plus bytes written). One read and one write per element, into a buffer it does not
    read, so its traffic is ``1r/1w(1new)``."""
    cuda = require_cuda()
    source = cuda.to_device(_host_data(n, dtype, seed)[0])
    target = cuda.device_array_like(source)

    def step() -> None:
        target.copy_to_device(source)

    return Case(step, 0, n, np.dtype(dtype).itemsize, 1, cuda.synchronize, (source, target),
                ((1, 1, n, 1),))


def torch_case(rule: str, impl: str, n: int, dtype: Any = np.float32, path: str = "flat",
               chunk: int = 1000, backend: str = "cpu", seed: int = 0) -> Case:
    """A ``torch.optim`` optimizer over ``n`` elements (one tensor, or ``chunk``-sized ones).

    ``impl``: ``"fused"`` (``fused=True``), ``"foreach"`` (``foreach=True``) or
    ``"forloop"`` (``foreach=False``). Raises ImportError without torch and
    NotImplementedError when torch has no such optimizer or implementation.
    """
    import torch

    cls = getattr(torch.optim, rule, None)
    if cls is None:
        raise NotImplementedError(f"torch.optim has no {rule}")  # e.g. Yogi
    if impl not in TORCH_IMPLS:
        raise ValueError(f"impl: expected one of {TORCH_IMPLS}, got {impl!r}")
    device = "cuda" if backend == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("torch.cuda is not available")
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True},
             "forloop": {"foreach": False}}[impl]
    kwargs = {**RULE_KWARGS.get(rule, {}), **flags}
    try:  # on one element first: no data is built for an unsupported combination
        probe = torch.nn.Parameter(torch.zeros(1, dtype=getattr(torch, np.dtype(dtype).name),
                                               device=device))
        probe.grad = torch.zeros_like(probe)
        cls([probe], **kwargs).step()
    except (TypeError, RuntimeError, ValueError) as exc:
        raise NotImplementedError(
            f"torch.optim.{rule} has no {impl} implementation on {device} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:80]})") from None
    param, grad = _host_data(n, dtype, seed)
    sizes = [n] if path == "flat" else _chunk_sizes(n, chunk)
    params = []
    for p, g in zip(_split(param, sizes), _split(grad, sizes), strict=True):
        t = torch.nn.Parameter(torch.from_numpy(p).to(device))
        t.grad = torch.from_numpy(g).to(device)
        params.append(t)
    opt = cls(params, **kwargs)
    sync = torch.cuda.synchronize if device == "cuda" else _noop
    n_states = rule_states(rule)
    return Case(opt.step, n_states, n, np.dtype(dtype).itemsize, len(sizes), sync,
                (params,))


def numpy_case(rule: str, n: int, dtype: Any = np.float32, path: str = "flat",
               chunk: int = 1000, seed: int = 0) -> Case:
    """In-place NumPy Adam / AdamW (``out=`` ufuncs, one scratch buffer per array)."""
    if rule not in NUMPY_RULES:
        raise NotImplementedError(f"no NumPy implementation of {rule}")
    defaults = optimizer_classes()[rule]([np.zeros(1)]).defaults
    lr, (beta1, beta2), eps = defaults["lr"], defaults["betas"], defaults["eps"]
    decay = 1.0 - lr * defaults["weight_decay"] if rule == "AdamW" else 1.0
    param, grad = _host_data(n, dtype, seed)
    sizes = [n] if path == "flat" else _chunk_sizes(n, chunk)
    arrays = [(p, g, np.zeros_like(p), np.zeros_like(p), np.empty_like(p))
              for p, g in zip(_split(param, sizes), _split(grad, sizes), strict=True)]
    count = [0]

    def step() -> None:
        count[0] += 1
        t = count[0]
        step_size = lr / (1.0 - beta1**t)
        inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - beta2**t)
        for p, g, m, v, tmp in arrays:
            m *= beta1
            np.multiply(g, 1.0 - beta1, out=tmp)
            m += tmp
            v *= beta2
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - beta2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            if decay != 1.0:
                p *= decay
            p -= tmp

    return Case(step, 2, n, np.dtype(dtype).itemsize, len(sizes), _noop, (arrays,))


# ----------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds per call: the minimum and the median over ``repeats`` samples (one per
    round of :func:`time_steps`: a call, or the mean call of a block of short ones)."""

    min: float
    median: float
    repeats: int


def time_steps(cases: Sequence[Case], budget: float = 0.5, warmup: int = 2,
               min_repeats: int = 5, max_repeats: int = 100_000,
               block: float = 200e-6) -> list[Timing]:
    """Time several cases' ``step`` calls interleaved (one block of each per round).

    After ``warmup`` untimed calls of each (compilation; after the first, the wait for
    the parallel loops compiled in the background), rounds are timed until
    ``budget`` seconds have been spent and at least ``min_repeats`` rounds were made;
    the garbage collector is off. In a round each case runs a block of consecutive
    calls (synchronized at its end) lasting about ``block`` seconds, and the block's
    time per call is one sample: a call of ``block`` or more is a block of one
    (every call timed alone), a 2 us call a block of about 100 (so that the calls of
    another case, e.g. torch's 30 us step, do not evict its code and data between
    two of its calls: each case is timed in its own hot loop, as ``timeit`` does).
    Cases timed together see the same machine over the same seconds: a rule and its
    ceiling measured this way give a fraction that another process's load, or this
    machine's drift, cannot inflate. Returns the minimum and the median of the samples.
    """
    clock = time.perf_counter
    calls = []
    for case in cases:
        for i in range(warmup):
            case.step()
            if i == 0:  # a parallel loop compiling in the background: ready for the next
                wait_compiled()
        case.sync()
        t0 = clock()
        case.step()
        case.sync()
        calls.append(max(1, min(10_000, int(block / max(clock() - t0, 1e-9)))))
    times: list[list[float]] = [[] for _ in cases]
    enabled = gc.isenabled()
    gc.disable()
    try:
        rounds = 0
        deadline = clock() + budget
        while rounds < min_repeats or (clock() < deadline and rounds < max_repeats):
            for case, out, count in zip(cases, times, calls, strict=True):
                step = case.step
                t0 = clock()
                for _ in range(count):
                    step()
                case.sync()
                out.append((clock() - t0) / count)
            rounds += 1
    finally:
        if enabled:
            gc.enable()
    return [Timing(min(t), statistics.median(t), len(t)) for t in times]


def time_step(case: Case, budget: float = 0.5, warmup: int = 2, min_repeats: int = 5,
              max_repeats: int = 100_000) -> Timing:
    """Time ``case.step`` alone: see :func:`time_steps`. Returns min and median seconds."""
    return time_steps([case], budget, warmup, min_repeats, max_repeats)[0]


# ------------------------------------------------------------- first step
# argv: the spec, the folder the parent imported fastmoments from (the child imports the
# same one: asv, for one, runs the parent with a sys.path of its own), packages to hide
_CHILD = (
    "import sys, time; sys.path.insert(0, sys.argv[2]) if sys.argv[2] not in sys.path "
    "else None; sys.modules.update(dict.fromkeys(sys.argv[3:])); "
    "t0 = time.perf_counter(); import fastmoments; "
    "t1 = time.perf_counter(); from fastmoments.bench import _first_step_child; "
    "_first_step_child(sys.argv[1], t1 - t0)"
)


def _first_step_child(spec: str, import_s: float) -> None:
    s = json.loads(spec)
    t0 = time.perf_counter()
    case = fastmoments_case(s["rule"], s["n"], s["dtype"], s["path"], s["chunk"], s["backend"])
    t1 = time.perf_counter()
    case.step()
    case.sync()
    t2 = time.perf_counter()
    case.step()
    case.sync()
    t3 = time.perf_counter()
    wait_compiled()  # a parallel loop compiling in the background (config.background_compile)
    t4 = time.perf_counter()
    print(json.dumps({"import_s": import_s, "setup_s": t1 - t0, "first_step_s": t2 - t1,
                      "second_step_s": t3 - t2, "loops_ready_s": t4 - t1,
                      "scipy_loaded": sys.modules.get("scipy") is not None,
                      "fastmoments_file": sys.modules["fastmoments"].__file__}))


def first_step(rule: str, n: int, dtype: Any = np.float32, path: str = "flat",
               chunk: int = 1000, backend: str = "cpu", cache_dir: str | None = None,
               timeout: float = 600.0, hide: Sequence[str] = ()) -> dict[str, float]:
    """Time the first ``step()`` in a fresh Python process.

    ``cache_dir`` is numba's on-disk cache for that process (``NUMBA_CACHE_DIR``): an
    empty directory gives a cold start (compilation), a directory filled by an earlier
    call a cached one. ``hide``: top-level packages the child cannot import (as if
    not installed), e.g. ``("scipy",)``: ``import numba`` imports SciPy when it is
    installed, and its CPU target checks for SciPy's BLAS on the first compilation or
    cache load of a process (fastmoments lets that check load only the BLAS module,
    see ``_jit.prepare_cpu_target``). The child imports the fastmoments this process
    imported. Returns ``import_s``, ``setup_s``, ``first_step_s``, ``second_step_s``,
    ``process_s`` (the whole child process) and ``fastmoments_file``.
    """
    spec = json.dumps({"rule": rule, "n": int(n), "dtype": np.dtype(dtype).name, "path": path,
                       "chunk": int(chunk), "backend": backend})
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    import fastmoments

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastmoments.__file__)))
    proc = subprocess.run([sys.executable, "-c", _CHILD, spec, root, *hide], env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"first-step child failed ({rule}, {path}, {n}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


# ----------------------------------------------------------- machine info
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds used by the whole machine, by this process and its waited children)."""
    try:
        import resource

        with open("/proc/stat") as handle:
            ticks = [int(x) for x in handle.readline().split()[1:9]]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not Linux
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return busy, own


class _OtherLoad:
    """How many cores other processes kept busy, on average, while the benchmark ran."""

    def __init__(self) -> None:
        self.start = _cpu_seconds()
        self.t0 = time.perf_counter()

    def cores(self) -> float | None:
        end = _cpu_seconds()
        wall = time.perf_counter() - self.t0
        if self.start is None or end is None or wall <= 0:
            return None
        return max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / wall)


def _threading_layer() -> str | None:
    """numba's threading layer, once a parallel loop has run (None before)."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _source_revision() -> str | None:
    """``git describe --always --dirty`` of the source tree, when run from a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def machine_info(backend: str = "cpu") -> dict[str, Any]:
    """CPU model, core counts, library versions and the date, for the results."""
    import fastmoments as fm

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "fastmoments": fm.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "parallel_threshold": fm.config.parallel_threshold,
        "source": _source_revision(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
    else:  # without importing it (seconds)
        try:
            info["torch"] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            info["torch"] = None
    if backend == "cuda":
        from numba import cuda

        name = getattr(cuda.get_current_device(), "name", "numba CUDA simulator")
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["cuda_threads_per_block"] = fm.config.cuda_threads_per_block
        info["cuda_max_blocks"] = fm.config.cuda_max_blocks
    return info


# ----------------------------------------------------------------- the run
@dataclass
class _Job:
    label: str
    run: Callable[[], Any]


class _Progress:
    """tqdm on stderr when installed, else a one-line counter; silent when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, file=sys.stderr, unit="row", leave=False,
                                 dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
        else:
            sys.stderr.write(f"\r[{self.done}/{self.total}] {label[:60]:<60}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.total:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


def _parse_list(text: str, allowed: Sequence[str] | None, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed is not None:
        lookup = {a.lower(): a for a in allowed}
        bad = [t for t in items if t.lower() not in lookup]
        if bad:
            raise ValueError(f"--{what}: unknown {', '.join(bad)}; choose from "
                             f"{', '.join(allowed)}")
        items = [lookup[t.lower()] for t in items]
    return list(dict.fromkeys(items))


def _parse_sizes(text: str, what: str = "sizes") -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for t in text.split(","):
        try:
            value = float(t)
        except ValueError:
            raise ValueError(f"--{what}: {t.strip()!r} is not a number") from None
        if not (math.isfinite(value) and value >= 1 and value == int(value)):
            raise ValueError(f"--{what}: expected whole numbers >= 1, got {t.strip()!r}")
        out.append(int(value))
    return list(dict.fromkeys(out))


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        a, e = (int(float(x)) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--many-shape: expected ARRAYSxELEMENTS (1000x1000), got {text!r}"
                         ) from None
    if a < 1 or e < 1:
        raise ValueError(f"--many-shape: expected positive counts, got {text!r}")
    return a, e


def _fmt_threads(threads: int | None, backend: str) -> str:
    """``t2`` (numba threads) or ``b256`` (CUDA threads per block)."""
    return "-" if threads is None else f"{'b' if backend == 'cuda' else 't'}{threads}"


def _fmt_size(n: int) -> str:
    if n >= 1000:
        exp = int(math.floor(math.log10(n)))
        mant = n / 10**exp
        if mant == int(mant):
            return f"{int(mant)}e{exp}" if mant != 1 else f"1e{exp}"
    return str(n)


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


class _Runner:
    """Builds the job list from the options, runs it and collects rows and notes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.first_step_rows: list[dict[str, Any]] = []
        self.crossover_rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.ceilings: dict[tuple, dict[str, Any]] = {}
        self.copies: dict[tuple, dict[str, Any]] = {}  # (size, dtype): device-copy row
        self.jobs: list[_Job] = []
        self.torch_ok = False
        if "torch" in args.compare:
            try:
                import torch  # noqa: F401

                self.torch_ok = True
            except ImportError:
                self.notes.append("torch is not installed: torch.optim rows skipped")

    # -------------------------------------------------------- one measurement
    def _set_threads(self, threads: int) -> None:
        # on CUDA the value is the threads per block of the library's kernels and the ceiling
        if self.args.backend == "cuda":
            config.cuda_threads_per_block = threads
            return
        numba.set_num_threads(threads)
        if self.torch_ok:
            import torch

            torch.set_num_threads(threads)

    def _row(self, scenario: str, impl: str, rule: str | None, path: str, size: int,
             dtype: str, threads: int | None, case: Case, timing: Timing) -> dict[str, Any]:
        return {
            "scenario": scenario, "impl": impl, "rule": rule, "path": path,
            "arrays": case.arrays, "size": size, "dtype": dtype,
            "threads": None if self.args.backend == "cuda" else threads,
            "block_size": threads if self.args.backend == "cuda" else None,
            "backend": self.args.backend, "traffic": _traffic_label(case.traffic_passes),
            "bytes_per_step": case.bytes_per_step, "time_min_s": timing.min,
            "time_median_s": timing.median, "repeats": timing.repeats,
            "gbps": case.bytes_per_step / timing.min / 1e9, "single_pass": case.single_pass,
        }

    def _measure(self, build: Callable[[], Case], scenario: str, impl: str, rule: str | None,
                 path: str, size: int, dtype: str, threads: int,
                 alongside: Callable[[], Case] | None = None) -> None:
        """Time one case interleaved with its ceiling; record both.

        ``alongside``: torch's fused optimizer on the same problem, timed in the same
        rounds; the row's "x fused" is then the ratio of two minimums taken under the
        same machine state (this VM's speed drifts between jobs a minute apart).
        """
        self._set_threads(threads)
        try:
            case = build()
        except NotImplementedError as exc:
            self.notes.append(f"skipped: {exc}")
            return
        ceiling = ceiling_for(case, self.args.backend)
        cases = [case, ceiling]
        if alongside is not None:
            try:
                cases.append(alongside())
            except NotImplementedError:  # torch has no fused version of this rule
                pass
        timings = time_steps(cases, self.args.budget)
        mine, best = timings[0], timings[1]
        if case.current_passes is not None and case.current_passes() != case.traffic_passes:
            raise RuntimeError(f"{impl} {rule} {path} {size}: the traffic of a step changed "
                               "while it was timed (e.g. SWATS switched phase)")
        key = (ceiling.traffic_passes, size, dtype, threads)
        self._record_ceiling(key, scenario, ceiling, best)
        row = self._row(scenario, impl, rule, path, size, dtype, threads, case, mine)
        # the fraction of the ceiling timed alongside (same cache and machine state)
        row["ceiling_gbps"] = ceiling.bytes_per_step / best.min / 1e9
        row["fraction"] = row["gbps"] / row["ceiling_gbps"]
        if len(timings) == 3:
            row["torch_fused_alongside_s"] = timings[2].min
            row["speedup_vs_torch_fused"] = timings[2].min / mine.min
        self.rows.append(row)
        del case, ceiling, cases

    def _measure_copy(self, size: int, dtype: str) -> None:
        """The device's copy bandwidth at ``size`` (``--backend cuda``): a row of its own,
        and each CUDA row of that size and dtype gets its fraction of it (``_finish``)."""
        case = device_copy_case(size, dtype)
        timing = time_steps([case], self.args.budget)[0]
        row = self._row("sizes", "device-copy", None, "flat", size, dtype, None, case, timing)
        self.copies[(size, dtype)] = row
        self.rows.append(row)

    def _record_ceiling(self, key: tuple, scenario: str, case: Case, timing: Timing) -> None:
        # the ceiling of a traffic/size/dtype/threads: the best of all its measurements
        _, size, dtype, threads = key
        row = self.ceilings.get(key)
        if row is None:
            row = self._row(scenario, "ceiling", None, "flat", size, dtype, threads, case, timing)
            row["_medians"] = [timing.median]
            self.ceilings[key] = row
            self.rows.append(row)
            return
        row["_medians"].append(timing.median)
        row["repeats"] += timing.repeats
        row["time_median_s"] = statistics.median(row["_medians"])
        if timing.min < row["time_min_s"]:
            row["time_min_s"] = timing.min
            row["gbps"] = row["bytes_per_step"] / timing.min / 1e9

    def _finish(self) -> None:
        for row in self.ceilings.values():
            row.pop("_medians", None)
        for row in self.rows:
            copy = self.copies.get((row["size"], row["dtype"]))
            if copy is not None and row is not copy:
                row["copy_gbps"] = copy["gbps"]
                row["fraction_of_copy"] = row["gbps"] / copy["gbps"]
        self.notes = list(dict.fromkeys(self.notes))

    # ----------------------------------------------------------------- plan
    def plan(self) -> None:
        a = self.args
        torch_impls = a.torch_impls if self.torch_ok else []
        numpy_ok = ("torch" in a.compare or "numpy" in a.compare) and a.backend == "cpu"

        def family(scenario: str, size: int, dtype: str, threads: int,
                   paths: Sequence[str], torch_paths: Sequence[str], chunk: int,
                   comparisons: bool) -> None:
            where = f"{_fmt_size(size)} {dtype} {_fmt_threads(threads, a.backend)}"
            if not comparisons:
                torch_paths = []
            for rule in a.rules:
                for path in paths:
                    # torch fused on the same problem (for --tiny / --many: the user's
                    # list of tensors), timed alongside for the "x fused" column
                    fused_path = path if scenario == "sizes" else "list"
                    alongside = (
                        (lambda rule=rule, fused_path=fused_path: torch_case(
                            rule, "fused", size, dtype, fused_path, chunk, a.backend))
                        if "fused" in torch_impls else None
                    )
                    self.jobs.append(_Job(
                        f"{rule} {path} {where}",
                        lambda rule=rule, path=path, alongside=alongside: self._measure(
                            lambda: fastmoments_case(rule, size, dtype, path, chunk, a.backend),
                            scenario, "fastmoments", rule, path, size, dtype, threads,
                            alongside)))
                for impl in torch_impls:
                    for path in torch_paths:
                        self.jobs.append(_Job(
                            f"torch-{impl} {rule} {path} {where}",
                            lambda rule=rule, impl=impl, path=path: self._measure(
                                lambda: torch_case(rule, impl, size, dtype, path, chunk,
                                                   a.backend),
                                scenario, f"torch-{impl}", rule, path, size, dtype, threads)))
                if numpy_ok and rule in NUMPY_RULES:
                    for path in torch_paths:
                        self.jobs.append(_Job(
                            f"numpy {rule} {path} {where}",
                            lambda rule=rule, path=path: self._measure(
                                lambda: numpy_case(rule, size, dtype, path, chunk),
                                scenario, "numpy", rule, path, size, dtype, threads)))

        # CPU: numba thread counts; CUDA: threads per block (the comparison rows and the
        # device copy, which do not depend on it, only with the first)
        thread_list: list[int] = list(a.threads if a.backend == "cpu" else a.block_sizes)
        for dtype in a.dtypes:
            for threads in thread_list:
                first = threads == thread_list[0] or a.backend == "cpu"
                for size in a.sizes:
                    if a.backend == "cuda" and first:  # the device's copy bandwidth
                        self.jobs.append(_Job(
                            f"device copy {_fmt_size(size)} {dtype}",
                            lambda size=size, dtype=dtype: self._measure_copy(size, dtype)))
                    family("sizes", size, dtype, threads, a.paths, a.paths, a.chunk, first)
                if a.tiny:
                    family("tiny", TINY_SIZE, dtype, threads, a.paths, ["list"], TINY_SIZE,
                           first)
                if a.many:
                    arrays, elements = a.many_shape
                    family("many", arrays * elements, dtype, threads, a.paths, ["list"],
                           elements, first)
        if a.crossover:  # the CPU loops, also with --backend cuda
            threads = max(a.threads)
            for dtype in a.dtypes:
                for rule in a.rules:
                    for path in a.paths:
                        for size in a.crossover_sizes:
                            self.jobs.append(_Job(
                                f"crossover {rule} {path} {_fmt_size(size)}",
                                lambda rule=rule, path=path, size=size, dtype=dtype:
                                self._crossover(rule, path, size, dtype, threads)))
        if a.first_step:
            for dtype in a.dtypes:
                for rule in a.rules:
                    for path in a.paths:
                        for size in a.first_step_sizes:
                            self.jobs.append(_Job(
                                f"first step {rule} {path} {_fmt_size(size)}",
                                lambda rule=rule, path=path, size=size, dtype=dtype:
                                self._first_step(rule, path, size, dtype)))

    def _crossover(self, rule: str, path: str, size: int, dtype: str, threads: int) -> None:
        numba.set_num_threads(threads)
        saved = config.parallel_threshold

        def forced(case: Case, threshold: int) -> Case:
            inner = case.step

            def step() -> None:
                config.parallel_threshold = threshold
                inner()

            return Case(step, case.n_states, case.numel, case.itemsize, case.arrays, case.sync,
                        case.keep, case.passes)

        try:
            serial = forced(fastmoments_case(rule, size, dtype, path, self.args.chunk), 2**62)
            parallel = forced(fastmoments_case(rule, size, dtype, path, self.args.chunk), 0)
            t_serial, t_parallel = time_steps([serial, parallel], self.args.budget)
        finally:
            config.parallel_threshold = saved
        self.crossover_rows.append({
            "rule": rule, "path": path, "size": size, "dtype": dtype, "threads": threads,
            "arrays": serial.arrays,
            "serial_min_s": t_serial.min, "serial_median_s": t_serial.median,
            "parallel_min_s": t_parallel.min, "parallel_median_s": t_parallel.median,
        })

    def _first_step(self, rule: str, path: str, size: int, dtype: str) -> None:
        def measure(hide: tuple[str, ...]) -> tuple[dict, dict]:
            with tempfile.TemporaryDirectory(prefix="fastmoments-cache-") as cache_dir:
                cold = first_step(rule, size, dtype, path, self.args.chunk,
                                  self.args.backend, cache_dir, hide=hide)
                cached = first_step(rule, size, dtype, path, self.args.chunk,
                                    self.args.backend, cache_dir, hide=hide)
            return cold, cached

        cold, cached = measure(())
        # numba imports SciPy (when installed) on its first compilation or cache load in a
        # process; fastmoments does not need it: measure without it too, when it is here
        if importlib.util.find_spec("scipy") is not None:
            bare = [r["first_step_s"] for r in measure(("scipy",))]
        else:
            bare = [None, None]
        self.first_step_rows.append({
            "cold_no_scipy_s": bare[0], "cached_no_scipy_s": bare[1],
            "rule": rule, "path": path, "size": size, "dtype": dtype,
            "backend": self.args.backend, "import_s": cold["import_s"],
            "cold_first_step_s": cold["first_step_s"],
            "cached_first_step_s": cached["first_step_s"],
            "second_step_s": cached["second_step_s"],
            "cold_loops_ready_s": cold.get("loops_ready_s"),
            "cold_process_s": cold["process_s"], "cached_process_s": cached["process_s"],
        })

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        progress = _Progress(len(self.jobs), not self.args.quiet)
        saved_threads = numba.get_num_threads()
        try:
            for job in self.jobs:
                job.run()
                progress.update(job.label)
        finally:
            progress.close()
            numba.set_num_threads(saved_threads)
        self._finish()


# ---------------------------------------------------------------- targets
def targets(rows: list[dict], first_steps: list[dict]) -> list[dict[str, Any]]:
    """The performance targets of the project, checked against the measured rows."""
    out: list[dict[str, Any]] = []

    def add(name: str, subject: str, value: float | None, threshold: float,
            higher: bool = True) -> None:
        if value is None:
            return
        met = value >= threshold if higher else value <= threshold
        out.append({"target": name, "subject": subject, "value": value,
                    "threshold": threshold, "met": bool(met)})

    for r in rows:
        if r["impl"] != "fastmoments" or r["backend"] != "cpu":
            continue
        star = "" if r.get("single_pass", True) else "*"
        who = (f"{r['rule']}{star} {r['path']} {_fmt_size(r['size'])} {r['dtype']} "
               f"t{r['threads']}")
        if (r["scenario"] == "sizes" and r["path"] == "flat" and r["dtype"] == "float32"
                and r["size"] >= 10**6):
            add("large buffers: >= 0.90 of ceiling", who, r.get("fraction"), 0.90)
            if r["rule"] in ("Adam", "AdamW"):
                add("Adam/AdamW: >= 0.95 of ceiling", who, r.get("fraction"), 0.95)
                add("Adam/AdamW: >= 1.1x torch fused", who, r.get("speedup_vs_torch_fused"),
                    1.1)
        if r["scenario"] == "many":
            need = 5.0 if r["path"] == "list" else 15.0
            add(f"many small arrays ({r['path']}): >= {need:g}x torch fused", who,
                r.get("speedup_vs_torch_fused"), need)
        if r["scenario"] == "tiny":
            add("tiny model: >= 15x torch fused", who, r.get("speedup_vs_torch_fused"), 15.0)
    for f in first_steps:
        who = f"{f['rule']} {f['path']} {_fmt_size(f['size'])} {f['dtype']}"
        add("cold first step <= 1 s", who, f["cold_first_step_s"], 1.0, higher=False)
        add("cached first step <= 0.3 s", who, f["cached_first_step_s"], 0.3, higher=False)
        if f.get("cold_no_scipy_s") is not None:  # fastmoments' own dependencies only
            add("cold first step <= 1 s (no SciPy)", who, f["cold_no_scipy_s"], 1.0,
                higher=False)
            add("cached first step <= 0.3 s (no SciPy)", who, f["cached_no_scipy_s"], 0.3,
                higher=False)
    return out


# ----------------------------------------------------------------- output
def _format_table(rows: list[dict]) -> str:
    header = ["scenario", "impl", "rule", "path", "arrays", "size", "dtype", "thr", "traffic",
              "time/step", "median", "GB/s", "of ceil", "x fused"]
    lines = []
    for r in rows:
        frac = r.get("fraction")
        speed = r.get("speedup_vs_torch_fused")
        rule = (r["rule"] or "-") + ("" if r.get("single_pass", True) else "*")
        lines.append([
            r["scenario"], r["impl"], rule, r["path"], str(r["arrays"]),
            _fmt_size(r["size"]), r["dtype"],
            _fmt_threads(r["threads"] if r["backend"] == "cpu" else r["block_size"],
                         r["backend"]),
            r["traffic"], _fmt_time(r["time_min_s"]), _fmt_time(r["time_median_s"]),
            f"{r['gbps']:.2f}", "-" if frac is None else f"{frac:.2f}",
            "-" if speed is None else f"{speed:.2f}",
        ])
    return _columns(header, lines, right_from=4)


def _columns(header: list[str], lines: list[list[str]], right_from: int) -> str:
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
              for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i >= right_from else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _crossover_summary(rows: list[dict]) -> list[dict[str, Any]]:
    """Per (rule, path, dtype, threads): the smallest size from which parallel wins."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["rule"], r["path"], r["dtype"], r["threads"]), []).append(r)
    out = []
    for (rule, path, dtype, threads), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["size"])
        crossover = None
        for i in range(len(rs)):
            if all(r["parallel_min_s"] < r["serial_min_s"] for r in rs[i:]):
                crossover = rs[i]["size"]
                break
        out.append({"rule": rule, "path": path, "dtype": dtype, "threads": threads,
                    "crossover_size": crossover})
    return out


def _block_size_summary(rows: list[dict]) -> list[dict[str, Any]]:
    """Per CUDA fastmoments row measured at several block sizes: the fastest block size and
    each block size's time as a fraction of the fastest (``--block-sizes``)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["impl"] == "fastmoments" and r["block_size"] is not None:
            key = (r["scenario"], r["rule"], r["path"], r["size"], r["dtype"])
            groups.setdefault(key, []).append(r)
    out = []
    for (scenario, rule, path, size, dtype), rs in groups.items():
        if len(rs) < 2:
            continue
        best = min(rs, key=lambda r: r["time_min_s"])
        out.append({"scenario": scenario, "rule": rule, "path": path, "size": size,
                    "dtype": dtype, "best_block_size": best["block_size"],
                    "best_gbps": best["gbps"],
                    "speed_vs_best": {r["block_size"]: best["time_min_s"] / r["time_min_s"]
                                      for r in rs}})
    return out


def _report(runner: _Runner, info: dict, as_json: bool) -> tuple[str, dict]:
    a = runner.args
    checked = targets(runner.rows, runner.first_step_rows)
    summary = _crossover_summary(runner.crossover_rows)
    blocks = _block_size_summary(runner.rows)
    settings = {
        "rules": a.rules, "sizes": a.sizes, "dtypes": a.dtypes, "threads": a.threads,
        "block_sizes": a.block_sizes if a.backend == "cuda" else None,
        "paths": a.paths, "chunk": a.chunk, "budget_s": a.budget, "backend": a.backend,
        "compare": a.compare, "torch_impls": a.torch_impls, "tiny": a.tiny,
        "many": list(a.many_shape) if a.many else None, "contend": a.contend,
        "rule_kwargs": {r: RULE_KWARGS[r] for r in a.rules if r in RULE_KWARGS},
    }
    doc = {"format": "fastmoments-bench/1", "machine": info, "settings": settings,
           "results": runner.rows, "crossover": runner.crossover_rows,
           "crossover_summary": summary, "block_size_summary": blocks,
           "first_step": runner.first_step_rows,
           "targets": checked, "notes": runner.notes}
    if as_json:
        return json.dumps(doc, indent=1), doc
    out = [
        f"fastmoments bench  {info['date']}  backend={a.backend}",
        f"machine: {info['cpu']}, {info['usable_cores']} usable cores "
        f"(numba threads {info['numba_threads']}), {info['platform']}"
        + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        f"versions: fastmoments {info['fastmoments']} ({info['source'] or 'installed'}), "
        f"numpy {info['numpy']}, numba {info['numba']} "
        f"({info.get('threading_layer') or 'no parallel loop run'} threading layer), "
        f"torch {info['torch']}, python {info['python']}",
        f"parallel_threshold={info['parallel_threshold']}  budget={a.budget}s/row  "
        f"chunk={a.chunk}" + (f"  busy processes={a.contend}" if a.contend else "")
        + ("" if info.get("other_processes_cores") is None else
           f"  other processes: {info['other_processes_cores']:.2f} cores busy on average"),
        "",
    ]
    if runner.rows:
        out += [_format_table(runner.rows)]
        if not all(r.get("single_pass", True) for r in runner.rows):
            out.append("* more than one pass over the buffers (per-tensor reductions); the "
                       "traffic column lists the passes, and the ceiling makes the same passes "
                       "(\"(1new)\": one of the writes goes to a buffer the pass does not read)")
        out.append("")
    for (size, dtype), copy in runner.copies.items():
        fractions = [r["fraction_of_copy"] for r in runner.rows
                     if r["impl"] == "fastmoments" and r["size"] == size and r["dtype"] == dtype
                     and "fraction_of_copy" in r]
        ceilings = ", ".join(f"{r['traffic']} {_fmt_threads(r['block_size'], 'cuda')} "
                             f"{r['fraction_of_copy']:.2f}"
                             for r in runner.ceilings.values()
                             if r["size"] == size and r["dtype"] == dtype)
        out.append(f"device copy {_fmt_size(size)} {dtype}: {copy['gbps']:.1f} GB/s (bytes "
                   f"read + written); of it: ceilings {ceilings or '-'}"
                   + (f"; fastmoments rows {min(fractions):.2f}-{max(fractions):.2f}"
                      if fractions else ""))
    if runner.copies:
        out.append("")
    for b in blocks:
        others = ", ".join(f"b{k} {v:.2f}" for k, v in b["speed_vs_best"].items())
        out.append(f"block size {b['rule']} {b['path']} {_fmt_size(b['size'])} {b['dtype']}"
                   f"{'' if b['scenario'] == 'sizes' else ' (' + b['scenario'] + ')'}: "
                   f"fastest b{b['best_block_size']} ({b['best_gbps']:.1f} GB/s); speed "
                   f"relative to it: {others}")
    if blocks:
        out.append("")
    if runner.crossover_rows:
        lines = [[r["rule"], r["path"], r["dtype"], str(r["threads"]), _fmt_size(r["size"]),
                  str(r["arrays"]), _fmt_time(r["serial_min_s"]), _fmt_time(r["parallel_min_s"]),
                  f"{r['serial_min_s'] / r['parallel_min_s']:.2f}"]
                 for r in runner.crossover_rows]
        out += ["serial vs parallel (min time per step; ratio > 1: parallel is faster)",
                _columns(["rule", "path", "dtype", "thr", "size", "arrays", "serial",
                          "parallel", "ratio"], lines, right_from=4)]
        for s in summary:
            where = ("none in the measured range" if s["crossover_size"] is None
                     else _fmt_size(s["crossover_size"]))
            out.append(f"crossover {s['rule']} {s['path']} {s['dtype']} t{s['threads']}: "
                       f"parallel wins from {where}")
        out.append("")
    if runner.first_step_rows:
        def seconds(x: float | None, digits: int) -> str:
            return "-" if x is None else f"{x:.{digits}f} s"

        lines = [[f["rule"], f["path"], _fmt_size(f["size"]), f["dtype"],
                  f"{f['import_s']:.2f} s", f"{f['cold_first_step_s']:.2f} s",
                  f"{f['cached_first_step_s']:.3f} s", seconds(f.get("cold_no_scipy_s"), 2),
                  seconds(f.get("cached_no_scipy_s"), 3), _fmt_time(f["second_step_s"]),
                  seconds(f.get("cold_loops_ready_s"), 2)]
                 for f in runner.first_step_rows]
        out += ["first step in a fresh process (cold: empty numba cache; cached: on-disk cache;"
                " no SciPy: the child cannot import SciPy, which numba uses when installed;"
                " cold, all loops: from the first step until the parallel loops compiled in the"
                " background were ready)",
                _columns(["rule", "path", "size", "dtype", "import", "cold 1st", "cached 1st",
                          "cold, no SciPy", "cached, no SciPy", "2nd step", "cold, all loops"],
                         lines, right_from=2), ""]
    if checked:
        out.append("targets")
        for t in checked:
            mark = "met    " if t["met"] else "NOT met"
            out.append(f"  {mark}  {t['target']:<40} {t['subject']:<36} {t['value']:.3g}")
        out.append("")
    for note in runner.notes:
        out.append(f"note: {note}")
    return "\n".join(out).rstrip() + "\n", doc


_COLORS = {"fastmoments": "C0", "torch-fused": "C1", "torch-foreach": "C2",
           "torch-forloop": "C4", "numpy": "C3"}


def _plot(doc: dict, filename: str) -> None:
    """GB/s vs size, one panel per rule, the ceiling as a dashed line (``--plot``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["results"] if r["scenario"] == "sizes"]
    if not rows:
        raise ValueError("--plot needs rows of the sizes scenario (give --sizes)")
    threads = max((r["threads"] or 0) for r in rows)
    dtype = rows[0]["dtype"]
    rows = [r for r in rows if (r["threads"] or 0) == threads and r["dtype"] == dtype]
    blocks = list(dict.fromkeys(r["block_size"] for r in rows if r["block_size"] is not None))
    block = None
    if blocks:  # CUDA: the rows of one block size (the copy rows have none)
        configured = doc["machine"].get("cuda_threads_per_block")
        block = configured if configured in blocks else blocks[0]
        rows = [r for r in rows if r["block_size"] in (None, block)]
    rules = list(dict.fromkeys(r["rule"] for r in rows if r["rule"]))
    best = {(r["traffic"], r["size"]): r["gbps"] for r in rows if r["impl"] == "ceiling"}
    copies = sorted((r["size"], r["gbps"]) for r in rows if r["impl"] == "device-copy")
    rows = [r for r in rows if r["impl"] != "device-copy"]
    ncols = 2 if len(rules) > 1 else 1
    nrows = math.ceil(len(rules) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.6 * nrows), squeeze=False,
                             sharex=True)
    for ax, rule in zip(axes.flat, rules, strict=False):
        mine = [r for r in rows if r["rule"] == rule]
        ceiling = sorted((size, g) for (t, size), g in best.items() if t == mine[0]["traffic"])
        if ceiling:
            ax.plot(*zip(*ceiling, strict=True), "k--", lw=2, label="ceiling (best in the run)")
        if copies:
            ax.plot(*zip(*copies, strict=True), ":", color="0.5", lw=2, label="device copy")
        for impl, path in dict.fromkeys((r["impl"], r["path"]) for r in mine):
            pts = sorted((r["size"], r["gbps"]) for r in mine
                         if r["impl"] == impl and r["path"] == path)
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=f"{impl} ({path})",
                    color=_COLORS.get(impl, "C5"), ls="-" if path == "flat" else ":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        star = "" if mine[0].get("single_pass", True) else ", more than one pass"
        where = (f"GPU, {block} threads per block" if mine[0]["backend"] == "cuda"
                 else f"{threads} threads")
        ax.set_title(f"{rule} ({mine[0]['traffic']}{star}, {dtype}, {where})", fontsize=10)
        ax.set_ylabel("GB/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(rules):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("elements")
    info = doc["machine"]
    machine = (f"GPU {info['gpu']}" if "gpu" in info
               else f"{info['cpu']}, {info['usable_cores']} cores")
    fig.suptitle(f"fastmoments bench, {machine}, {info['date'][:10]}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))
    fig.savefig(filename, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------- contention
def _start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` busy-loop processes, the k-th pinned to core k (mod the usable cores)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = list(range(os.cpu_count() or 1))
    procs = []
    for k in range(count):
        core = cores[k % len(cores)]
        code = (f"import os\ntry:\n    os.sched_setaffinity(0, {{{core}}})\nexcept Exception:\n"
                "    pass\nwhile True:\n    pass\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
    time.sleep(0.2)
    return procs


def _stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            p.kill()


# --------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` and make :func:`run` its handler."""
    parser.add_argument("--rules", default="all",
                        help="comma-separated optimizer classes (default: all)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"elements per step, comma-separated, or 'none' "
                             f"(default: {DEFAULT_SIZES})")
    parser.add_argument("--dtypes", default="float32", help="float32,float64 (default: float32)")
    parser.add_argument("--threads", default=None,
                        help="numba (and torch) thread counts, comma-separated "
                             "(default: numba's default, all usable cores)")
    parser.add_argument("--block-sizes", default=None,
                        help="--backend cuda: threads per block of the kernels (and of the "
                             "ceiling), comma-separated, each a row set, the best per "
                             "row under the table (default: "
                             "fastmoments.config.cuda_threads_per_block)")
    parser.add_argument("--paths", default="flat,list",
                        help="flat (FlatParams) and/or list (separate arrays); default both")
    parser.add_argument("--chunk", type=int, default=1000,
                        help="elements per array on the list path (default: 1000)")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="seconds of timed calls per row (default: 0.5)")
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (NumPy arrays) or cuda (device arrays)")
    parser.add_argument("--compare", default="",
                        help="'torch': add torch.optim rows and in-place NumPy Adam/AdamW; "
                             "'numpy': only the NumPy rows")
    parser.add_argument("--torch-impls", default="fused,foreach",
                        help="torch implementations to compare with: fused,foreach,forloop "
                             "(default: fused,foreach)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"add the {TINY_SIZE}-element model scenario (step() overhead)")
    parser.add_argument("--many", action="store_true",
                        help="add the many-small-arrays scenario (see --many-shape)")
    parser.add_argument("--many-shape", default="1000x1000",
                        help="ARRAYSxELEMENTS for --many (default: 1000x1000)")
    parser.add_argument("--first-step", action="store_true",
                        help="time the first step in fresh processes, cold and cached")
    parser.add_argument("--first-step-sizes", default="1e3,1e6",
                        help="sizes for --first-step (default: 1e3,1e6: serial and parallel)")
    parser.add_argument("--crossover", action="store_true",
                        help="time serial vs parallel loops over --crossover-sizes")
    parser.add_argument("--crossover-sizes",
                        default="1e3,2e3,5e3,1e4,2e4,5e4,1e5,2e5,5e5,1e6",
                        help="sizes for --crossover")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="run N busy-loop processes (pinned one per core) meanwhile")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON results to FILE")
    parser.add_argument("--plot", metavar="PNG",
                        help="plot GB/s vs size per rule with the ceiling (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(run=run)


def _resolve(args: argparse.Namespace) -> None:
    """Parse the comma-separated options in place; ValueError with the option's name."""
    classes = list(optimizer_classes())
    args.rules = classes if args.rules.strip().lower() == "all" else _parse_list(
        args.rules, classes, "rules")
    args.sizes = _parse_sizes(args.sizes)
    args.dtypes = _parse_list(args.dtypes, ["float32", "float64"], "dtypes")
    args.paths = _parse_list(args.paths, ["flat", "list"], "paths")
    args.compare = _parse_list(args.compare, ["torch", "numpy"], "compare")
    args.torch_impls = _parse_list(args.torch_impls, TORCH_IMPLS, "torch-impls")
    args.first_step_sizes = _parse_sizes(args.first_step_sizes, "first-step-sizes")
    args.crossover_sizes = _parse_sizes(args.crossover_sizes, "crossover-sizes")
    args.many_shape = _parse_shape(args.many_shape)
    limit = numba.config.NUMBA_NUM_THREADS
    if args.threads is None:
        args.threads = [numba.get_num_threads()]
    else:
        args.threads = [int(x) for x in _parse_sizes(args.threads, "threads")]
        bad = [t for t in args.threads if t > limit]
        if bad:
            raise ValueError(f"--threads: at most {limit} (NUMBA_NUM_THREADS), got {bad}")
    if args.block_sizes is None:
        args.block_sizes = [config.cuda_threads_per_block]
    elif args.backend != "cuda":
        raise ValueError("--block-sizes: only with --backend cuda (CUDA threads per block)")
    else:
        args.block_sizes = [int(x) for x in _parse_sizes(args.block_sizes, "block-sizes")]
        bad = [b for b in args.block_sizes if not 1 <= b <= 1024]
        if bad or not args.block_sizes:
            raise ValueError(f"--block-sizes: expected threads per block in 1..1024 "
                             f"(CUDA's limit), got {bad}")
    if not args.rules or not args.dtypes or not args.paths:
        raise ValueError("--rules, --dtypes and --paths need at least one value each")
    if args.chunk < 1:
        raise ValueError(f"--chunk: expected >= 1, got {args.chunk}")
    if not (args.budget >= 0 and math.isfinite(args.budget)):
        raise ValueError(f"--budget: expected seconds >= 0, got {args.budget}")
    if args.contend < 0:
        raise ValueError(f"--contend: expected >= 0, got {args.contend}")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; print the table (or JSON). Returns 0, or 2."""
    try:
        _resolve(args)
    except ValueError as exc:
        print(f"fastmoments bench: error: {exc}", file=sys.stderr)
        return 2
    if args.backend == "cuda":
        try:
            require_cuda()
        except RuntimeError as exc:
            print(f"fastmoments bench: error: {exc}", file=sys.stderr)
            return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastmoments bench: error: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 2
    runner = _Runner(args)
    runner.plan()
    info = machine_info(args.backend)
    others = _OtherLoad()
    busy = _start_busy(args.contend) if args.contend else []
    block_size = config.cuda_threads_per_block
    try:
        runner.run()
    finally:
        _stop_busy(busy)  # waited for: their CPU time counts as ours
        config.cuda_threads_per_block = block_size
    info["other_processes_cores"] = others.cores()
    if info["other_processes_cores"] is not None and info["other_processes_cores"] > 0.2:
        runner.notes.append(
            f"other processes kept {info['other_processes_cores']:.2f} of the "
            f"{info['usable_cores']} cores busy on average during the run: the timings "
            "(parallel ones most) are pessimistic")
    info["threading_layer"] = _threading_layer()
    text, doc = _report(runner, info, args.json)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if args.save:
        with open(args.save, "w") as handle:
            json.dump(doc, handle, indent=1)
    if args.plot:
        _plot(doc, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``fastmoments bench`` without the top-level CLI (for scripts and tests)."""
    parser = argparse.ArgumentParser(prog="fastmoments bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
