"""What is timed: a :class:`Case` is one step of something over flat buffers.

The rows of ``fastmoments bench`` and of the asv suite are built here: a fastmoments
rule (:func:`fastmoments_case`), its torch.optim counterpart (:func:`torch_case`) and
an in-place NumPy Adam/AdamW (:func:`numpy_case`), each over the same data. A case
carries its memory traffic (the passes it makes over its buffers), from which the
ceiling it is compared with is built (:mod:`.ceilings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: keyword arguments each rule is benchmarked with (torch gets the same ones);
#: SGD with momentum, as it is used in practice (one state buffer).
# SWATS with switch_tol=0 stays in its Adam phase (two dot products per step): without
# it, the switch to SGD happens within a few steps and the timed phase would change.
RULE_KWARGS: dict[str, dict[str, Any]] = {"SGD": {"lr": 1e-3, "momentum": 0.9},
                                          "SWATS": {"switch_tol": 0.0}}
TORCH_IMPLS = ("fused", "foreach", "forloop")
NUMPY_RULES = ("Adam", "AdamW")


def optimizer_classes() -> dict[str, type]:
    """The optimizer classes exported by ``fastmoments`` (name -> class), in ``__all__`` order."""
    import fastmoments as fm
    from fastmoments.optim.base import Optimizer

    out = {}
    for name in fm.__all__:
        obj = getattr(fm, name)
        if isinstance(obj, type) and issubclass(obj, Optimizer):
            out[name] = obj
    return out


def _state_count(opt: Any) -> int:
    # the state buffers of the first parameter: every one is read and written once per
    # element (the optimizers here have one param group, every parameter the same state)
    return len(opt.state[0])


def rule_states(rule: str) -> int:
    """How many state buffers ``rule`` (with :data:`RULE_KWARGS`) reads and writes."""
    cls = optimizer_classes()[rule]
    opt = cls([np.zeros(1)], **RULE_KWARGS.get(rule, {}))
    return _state_count(opt)


def traffic(n_states: int) -> tuple[int, int]:
    """(reads, writes) per element of a rule with ``n_states`` state buffers."""
    return 2 + n_states, 1 + n_states


def pass_fields(one_pass: Sequence[int]) -> tuple[int, int, int, int]:
    """``(reads, writes, elements, store_only)`` of a declared pass (``store_only``,
    the written buffers that the pass does not read, is 0 when not declared)."""
    reads, writes, count, *rest = (int(x) for x in one_pass)
    return reads, writes, count, rest[0] if rest else 0


def traffic_label(passes: Sequence[Sequence[int]]) -> str:
    """``"4r/3w"`` per pass, joined by ``+``; ``"(1new)"``: one write to a buffer not read."""
    labels = []
    for reads, writes, _, store_only in map(pass_fields, passes):
        labels.append(f"{reads}r/{writes}w" + (f"({store_only}new)" if store_only else ""))
    return "+".join(labels)


def noop() -> None:
    """The ``sync`` of a CPU case: nothing to wait for."""
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
    sync: Callable[[], Any] = noop
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
        return sum((r + w) * k for r, w, k, _ in map(pass_fields, self.traffic_passes)
                   ) * self.itemsize


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """The array sizes of the list path: ``chunk`` elements each, the remainder last."""
    sizes = [chunk] * (n // chunk)
    if n % chunk or not sizes:
        sizes.append(n % chunk if sizes else n)
    return sizes


def host_data(n: int, dtype: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A parameter in [0, 1) and a gradient in [-0.01, 0.01) of ``n`` elements."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    param = rng.random(n, dtype=dtype)
    grad = rng.random(n, dtype=dtype)
    grad -= dtype.type(0.5)
    grad *= dtype.type(0.02)
    return param, grad


def split(x: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
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


def on_backend(backend: str, *groups: Sequence[np.ndarray]) -> tuple[Any, ...]:
    """Each group of host arrays as a list on ``backend`` (copied to the device for
    ``"cuda"``), then the function that waits for the backend."""
    if backend == "cpu":
        return (*(list(g) for g in groups), noop)
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
    param, grad = host_data(n, dtype, seed)
    sizes = chunk_sizes(n, chunk)
    params, grads, sync = on_backend(backend, split(param, sizes), split(grad, sizes))
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

    def passes() -> tuple[tuple[int, ...], ...]:
        (group,) = opt.traffic()  # one param group
        return tuple(group)

    return Case(step, _state_count(opt), n, np.dtype(dtype).itemsize, len(sizes), sync,
                (opt, *keep), passes(), passes)


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
    param, grad = host_data(n, dtype, seed)
    sizes = [n] if path == "flat" else chunk_sizes(n, chunk)
    params = []
    for p, g in zip(split(param, sizes), split(grad, sizes), strict=True):
        t = torch.nn.Parameter(torch.from_numpy(p).to(device))
        t.grad = torch.from_numpy(g).to(device)
        params.append(t)
    opt = cls(params, **kwargs)
    sync = torch.cuda.synchronize if device == "cuda" else noop
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
    param, grad = host_data(n, dtype, seed)
    sizes = [n] if path == "flat" else chunk_sizes(n, chunk)
    arrays = [(p, g, np.zeros_like(p), np.zeros_like(p), np.empty_like(p))
              for p, g in zip(split(param, sizes), split(grad, sizes), strict=True)]
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

    return Case(step, 2, n, np.dtype(dtype).itemsize, len(sizes), noop, (arrays,))
