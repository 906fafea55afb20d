"""What is timed: a :class:`Case` is one step of something over flat buffers.

The rows of ``fastmoments bench`` and of the asv suite are built here: a fastmoments
rule (:func:`fastmoments_case`, also with a ``state_dtype``), its torch.optim
counterpart (:func:`torch_case`), bitsandbytes' and torchao's 8-bit optimizers
(:func:`bitsandbytes_case`, :func:`torchao_case`) and an in-place NumPy Adam/AdamW
(:func:`numpy_case`), each over the same data. A case carries its memory traffic (the
passes it makes over its buffers and, for reduced-precision state, the width of each
buffer: :class:`Storage`), from which the ceiling it is compared with is built
(:mod:`.ceilings`).
"""

from __future__ import annotations

import inspect
import logging
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
#: the values of ``--state-dtype`` (the optimizers' ``state_dtype``)
STATE_DTYPES = ("float32", "float64", "bfloat16", "int8")
#: bitsandbytes' 8-bit optimizer of each rule: the peer of ``state_dtype="int8"``
#: (blockwise, 256 elements per block, on the CPU through torch ops)
BNB_8BIT = {"Adam": "Adam8bit", "AdamW": "AdamW8bit", "Lion": "Lion8bit",
            "Adagrad": "Adagrad8bit", "RMSprop": "RMSprop8bit", "SGD": "SGD8bit"}
#: torchao's 8-bit optimizer of each rule (``torchao.optim``, compiled by torch.compile),
#: the other peer of ``state_dtype="int8"`` (``--compare torchao``)
TORCHAO_8BIT = {"Adam": "Adam8bit", "AdamW": "AdamW8bit"}
#: the int8 state's block (elements per float32 scale) and the size below which a
#: tensor keeps float32 state, as in :mod:`fastmoments.kernels.quantized` and bitsandbytes
INT8_BLOCK = 256
INT8_THRESHOLD = 4096


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


def _width(dtype: str) -> int:
    return np.dtype(dtype).itemsize


@dataclass(frozen=True)
class Storage:
    r"""How the buffers of a single-pass step are stored: its loads and stores per element.

    A rule with ``S`` state buffers reads the parameter, the gradient and each state and
    writes the parameter and each state, every one at its stored width; an int8 state
    also reads and writes one float32 scale per block. Per step over ``n`` elements in
    ``B`` blocks:

    .. math::

        \text{bytes} = n\,(2 w_p + w_g + 2 \textstyle\sum_s w_s)
                      + 8 B \cdot \#\{\text{scaled states}\}

    (bfloat16-state Adam over float32 parameters: 20 bytes per element; int8-state
    Adam: 16 + 16/256).

    Attributes
    ----------
    param, grad
        NumPy dtype names of the parameter (read and written) and the gradient (read).
    states
        dtype name of each state buffer as stored (``"uint16"``: bfloat16 patterns,
        ``"uint8"``: int8 codes).
    scaled
        Per state buffer: whether it has one float32 scale per block (int8 state).
    """

    param: str
    grad: str
    states: tuple[str, ...]
    scaled: tuple[bool, ...]

    @property
    def uniform(self) -> bool:
        """Every buffer in the parameters' dtype, no scales: the plain ceiling's traffic."""
        return (self.grad == self.param and all(s == self.param for s in self.states)
                and not any(self.scaled))

    def bytes_per_step(self, n: int, blocks: int = 0) -> int:
        """Bytes loaded and stored by a step over ``n`` elements in ``blocks`` blocks."""
        per_element = 2 * _width(self.param) + _width(self.grad) + 2 * sum(
            _width(s) for s in self.states)
        return n * per_element + 8 * blocks * sum(self.scaled)

    @property
    def label(self) -> str:
        """``p4 g4 s2,2``: bytes per element of each buffer; ``q``: with block scales."""
        states = ",".join(f"{_width(s)}{'q' if q else ''}"
                          for s, q in zip(self.states, self.scaled, strict=True))
        return f"p{_width(self.param)} g{_width(self.grad)} s{states or '-'}"


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
    storage
        The widths of a single-pass step's buffers when they differ from ``itemsize``
        (reduced-precision state, see :class:`Storage`); None: all ``itemsize``.
    blocks
        With scaled (int8) states: the start of each block and, last, ``numel``.
    state_dtype
        The ``state_dtype`` the optimizer was given (None: the default).
    state_bytes
        Bytes of optimizer state, measured from its buffers (None: not measured).
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
    storage: Storage | None = None
    blocks: np.ndarray | None = field(default=None, repr=False)
    state_dtype: str | None = None
    state_bytes: int | None = None

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
    def n_blocks(self) -> int:
        """Blocks of the scaled (int8) states: 0 without."""
        return 0 if self.blocks is None else len(self.blocks) - 1

    @property
    def bytes_per_step(self) -> int:
        if self.storage is not None:
            return self.storage.bytes_per_step(self.numel, self.n_blocks)
        return sum((r + w) * k for r, w, k, _ in map(pass_fields, self.traffic_passes)
                   ) * self.itemsize

    @property
    def label(self) -> str:
        """The traffic column: ``4r/3w``, with the widths when not all ``itemsize``."""
        text = traffic_label(self.traffic_passes)
        if self.storage is not None and not self.storage.uniform:
            text += " " + self.storage.label
        return text


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
                     kwargs: dict[str, Any] | None = None,
                     state_dtype: str | None = None) -> Case:
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
    state_dtype
        The optimizer's ``state_dtype`` (None: its default). With one, the ``"flat"``
        path holds one tensor of ``n`` elements (int8 blocks never cross tensors, and
        tensors below 4096 elements keep float32 state), the case gets the
        :class:`Storage` of its buffers and the bytes of its state, both read from its
        state dict; NotImplementedError when the rule refuses the ``state_dtype``,
        makes more than one pass, or keeps an int8 state in float32 (small tensors).
    """
    import fastmoments as fm

    cls = optimizer_classes()[rule]
    kwargs = dict(RULE_KWARGS.get(rule, {}) if kwargs is None else kwargs)
    sizes = chunk_sizes(n, chunk)
    if state_dtype is not None:
        kwargs["state_dtype"] = state_dtype
        if path == "flat":
            sizes = [n]
        try:  # on one small tensor first: no data is built for a refused combination
            cls(on_backend(backend, [np.zeros(1, dtype)])[0], **kwargs)
        except ValueError as exc:
            raise NotImplementedError(f"{rule} with state_dtype={state_dtype!r}: "
                                      f"{str(exc).splitlines()[0][:100]}") from None
    param, grad = host_data(n, dtype, seed)
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

    if state_dtype is not None:
        return _reduced_case(opt, rule, step, sizes, dtype, sync, (opt, *keep), state_dtype)
    return Case(step, _state_count(opt), n, np.dtype(dtype).itemsize, len(sizes), sync,
                (opt, *keep), passes(), passes)


def _reduced_case(opt: Any, rule: str, step: Callable[[], Any], sizes: Sequence[int],
                  dtype: Any, sync: Callable[[], Any], keep: tuple, state_dtype: str) -> Case:
    """The case of an optimizer given ``state_dtype``: the widths of its buffers, its
    blocks and the bytes of its state, read from its state dict (the stored form)."""
    (entry,) = opt.state_dict()["state"]  # one param group
    names = [k for k in entry if not k.endswith(("__absmax", "__float32"))]
    n = int(sum(sizes))
    scaled = tuple(f"{name}__absmax" in entry for name in names)
    for name, q in zip(names, scaled, strict=True):
        if q and entry[f"{name}__float32"].size:
            raise NotImplementedError(
                f"{rule} with state_dtype={state_dtype!r}: tensors below {INT8_THRESHOLD} "
                f"elements keep float32 state (give --chunk {INT8_THRESHOLD} or more)")
    blocks = None
    if any(scaled):  # blocks of INT8_BLOCK elements that never cross tensors
        offsets = np.cumsum([0, *sizes])
        blocks = np.array([*(s for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)
                             for s in range(int(lo), int(hi), INT8_BLOCK)), n], dtype=np.int64)
        found = {entry[f"{name}__absmax"].size for name, q in zip(names, scaled) if q}
        if found != {len(blocks) - 1}:
            raise RuntimeError(f"{rule}: {found} int8 blocks, expected {len(blocks) - 1}")
    storage = Storage(np.dtype(dtype).name, np.dtype(dtype).name,
                      tuple(entry[name].dtype.name for name in names), scaled)
    state_bytes = sum(a.nbytes for a in entry.values() if isinstance(a, np.ndarray))
    itemsize = np.dtype(dtype).itemsize

    def passes() -> tuple[tuple[int, ...], ...]:
        (group,) = opt.traffic()  # one param group
        return tuple(group)

    if storage.uniform:  # the state in the parameters' dtype: the default traffic
        return Case(step, len(names), n, itemsize, len(sizes), sync, keep, passes(), passes,
                    None, None, state_dtype, state_bytes)
    if len(passes()) != 1:
        raise NotImplementedError(f"{rule} with state_dtype={state_dtype!r}: "
                                  f"{len(passes())} passes (no ceiling of their widths)")
    return Case(step, len(names), n, itemsize, len(sizes), sync, keep,
                (traffic(len(names)) + (n,),), None, storage, blocks, state_dtype,
                state_bytes)


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


def import_bitsandbytes() -> Any:
    """``bitsandbytes``; ImportError when it (or torch) is not installed.

    Its CPU backend warns on import when the optional ``kernels`` package (4-bit
    matrix products, nothing the optimizers use) is missing: silenced meanwhile.
    """
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        logger.setLevel(level)
    return bitsandbytes


def bitsandbytes_case(rule: str, n: int, dtype: Any = np.float32, seed: int = 0) -> Case:
    """bitsandbytes' 8-bit optimizer of ``rule`` (:data:`BNB_8BIT`) over one torch CPU
    tensor of ``n`` elements, on the data of :func:`fastmoments_case`, with the
    hyperparameters of the fastmoments optimizer it is compared with (its defaults and
    :data:`RULE_KWARGS`).

    Its state is blockwise int8 as ``state_dtype="int8"`` is (256 elements per float32
    scale, the dynamic maps): the case carries the same :class:`Storage`, the bytes a
    fused step moves, so that its GB/s and fraction of the ceiling compare with
    fastmoments' int8 row (bitsandbytes' CPU step moves more: it dequantizes the whole
    state into float32 tensors through torch ops), and the bytes of its state measured
    from its buffers (codes, scales and a 256-entry map per state). One step is taken
    here: bitsandbytes creates the state on the first, and it is checked to be 8-bit.

    Raises ImportError without bitsandbytes or torch; NotImplementedError for a rule
    it has no 8-bit optimizer for, a dtype other than float32, or a state it keeps in
    32 bits.
    """
    bnb = import_bitsandbytes()
    import torch

    if rule not in BNB_8BIT:
        raise NotImplementedError(f"bitsandbytes has no 8-bit {rule}")
    if np.dtype(dtype) != np.float32:
        raise NotImplementedError(f"bitsandbytes' 8-bit {rule}: float32 parameters only "
                                  f"here, got {np.dtype(dtype).name}")
    cls = getattr(bnb.optim, BNB_8BIT[rule])
    defaults = optimizer_classes()[rule]([np.zeros(1, np.float32)],
                                         **RULE_KWARGS.get(rule, {})).defaults
    accepted = set(inspect.signature(cls.__init__).parameters) - {
        "self", "params", "args", "optim_bits", "min_8bit_size", "is_paged"}
    kwargs = {k: v for k, v in defaults.items() if k in accepted}
    param, grad = host_data(n, dtype, seed)
    tensor = torch.nn.Parameter(torch.from_numpy(param))
    tensor.grad = torch.from_numpy(grad)
    opt = cls([tensor], min_8bit_size=INT8_THRESHOLD, **kwargs)
    opt.step()
    state = opt.state[tensor]
    codes = [state[k] for k in ("state1", "state2") if torch.is_tensor(state.get(k))]
    if not codes or any(c.dtype != torch.uint8 or c.device.type != "cpu" for c in codes):
        raise NotImplementedError(
            f"bitsandbytes {BNB_8BIT[rule]} kept a {[str(c.dtype) for c in codes]} state at "
            f"{n} elements (8-bit from min_8bit_size={INT8_THRESHOLD})")
    blocks = np.array([*range(0, n, INT8_BLOCK), n], dtype=np.int64)
    if state["absmax1"].numel() != len(blocks) - 1:
        raise RuntimeError(f"bitsandbytes {BNB_8BIT[rule]}: {state['absmax1'].numel()} "
                           f"blocks, expected {len(blocks) - 1}")
    state_bytes = sum(t.numel() * t.element_size() for t in state.values()
                      if torch.is_tensor(t))
    storage = Storage("float32", "float32", ("uint8",) * len(codes), (True,) * len(codes))
    return Case(opt.step, len(codes), n, 4, 1, noop, (opt, tensor), None, None, storage,
                blocks, "int8", state_bytes)


def import_torchao_optim() -> Any:
    """``torchao.optim``; ImportError when torchao (or torch) is not installed.

    torchao logs a warning on import for each of its CUDA libraries that does not load
    (on a CPU-only machine, all of them; the optimizers need none): silenced meanwhile.
    """
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.optim
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return torchao.optim


def torchao_case(rule: str, n: int, dtype: Any = np.float32, seed: int = 0) -> Case:
    """torchao's 8-bit optimizer of ``rule`` (:data:`TORCHAO_8BIT`) over torch CPU tensors
    holding the ``n`` elements of :func:`fastmoments_case`'s data, with the
    hyperparameters of the fastmoments optimizer it is compared with.

    Its state is blockwise int8 as ``state_dtype="int8"`` is (256 elements per float32
    scale, the same dynamic maps), but it quantizes only tensors whose size is a
    multiple of its block: for another ``n`` the data is two tensors, the largest
    multiple of 256 (8-bit state) and the rest (under 256 elements, float32 state, as
    torchao keeps such a tensor). The case carries fastmoments' int8 :class:`Storage`
    and blocks, so that its GB/s count the bytes a fused step over the ``n`` elements
    moves, and the bytes of its state measured from its buffers. Its step runs under
    ``torch.compile``: the first one, taken here, compiles it for the tensors' shapes
    and torch's thread count (seconds to a minute, once per process); the state is
    checked to be 8-bit.

    Raises ImportError without torchao or torch; NotImplementedError for a rule it has
    no 8-bit optimizer for, a dtype other than float32, or ``n`` under 4096.
    """
    optim = import_torchao_optim()
    import warnings

    import torch

    if rule not in TORCHAO_8BIT:
        raise NotImplementedError(f"torchao has no 8-bit {rule}")
    if np.dtype(dtype) != np.float32:
        raise NotImplementedError(f"torchao's 8-bit {rule}: float32 parameters only "
                                  f"here, got {np.dtype(dtype).name}")
    whole = n - n % INT8_BLOCK
    if whole < INT8_THRESHOLD:
        raise NotImplementedError(f"torchao's 8-bit {rule} quantizes tensors of "
                                  f"{INT8_THRESHOLD} elements or more, got {n}")
    cls = getattr(optim, TORCHAO_8BIT[rule])
    defaults = optimizer_classes()[rule]([np.zeros(1, np.float32)],
                                         **RULE_KWARGS.get(rule, {})).defaults
    accepted = set(inspect.signature(cls.__init__).parameters) - {
        "self", "params", "block_size", "bf16_stochastic_round"}
    kwargs = {k: v for k, v in defaults.items() if k in accepted}
    param, grad = host_data(n, dtype, seed)
    tensors = []
    for lo, hi in ((0, whole), (whole, n)):
        if hi > lo:
            tensor = torch.nn.Parameter(torch.from_numpy(param[lo:hi]))
            tensor.grad = torch.from_numpy(grad[lo:hi])
            tensors.append(tensor)
    opt = cls(tensors, block_size=INT8_BLOCK, **kwargs)
    with warnings.catch_warnings():  # torch.compile's advice to torchao's tensor class
        warnings.simplefilter("ignore", UserWarning)
        opt.step()
    state = opt.state[tensors[0]]
    codes = [getattr(state[k], "codes", None) for k in ("exp_avg", "exp_avg_sq")]
    if any(c is None or c.dtype != torch.uint8 for c in codes):
        raise NotImplementedError(f"torchao {TORCHAO_8BIT[rule]} kept a 32-bit state at "
                                  f"{whole} elements")
    state_bytes = 0
    for st in opt.state.values():
        for name in ("exp_avg", "exp_avg_sq"):
            t = st[name]
            parts = (t.codes, t.scale, t.qmap) if hasattr(t, "codes") else (t,)
            state_bytes += sum(x.numel() * x.element_size() for x in parts)
    blocks = np.array([*range(0, n, INT8_BLOCK), n], dtype=np.int64)
    storage = Storage("float32", "float32", ("uint8",) * len(codes), (True,) * len(codes))
    return Case(opt.step, len(codes), n, 4, len(tensors), noop, (opt, tensors), None, None,
                storage, blocks, "int8", state_bytes)


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
