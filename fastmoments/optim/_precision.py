"""Param groups whose buffers are stored in fewer bits than their arithmetic.

A group gets a :class:`~fastmoments.kernels.precision.Precision` when the optimizer is
given ``state_dtype`` other than its parameters' dtype, or 16-bit parameters (float16,
``ml_dtypes.bfloat16``). Such a group:

- keeps its state buffers in their stored form (bfloat16 patterns as ``uint16``, or
  float32 under float64 parameters), allocated by :func:`allocate`;
- with 16-bit parameters and ``master_weights``, keeps a float32 copy of them as the
  state buffer ``master_param`` (what the rule updates; the 16-bit parameters are
  written from it in the same pass);
- runs the kernel variant for its layout (:meth:`~fastmoments.kernels.elementwise.
  Kernel.reduced`) through :func:`run`, which writes the step's key for the random bits
  of stochastic rounding before the loop (so these groups never take ``step()``'s
  short path, which repeats a call without it).

16-bit parameters and gradients reach the loops as ``uint16`` views of their patterns,
on the host and on the GPU alike (numba's CUDA kernels cannot type
``ml_dtypes.bfloat16``: a bfloat16 CUDA parameter is a numba device array of that
dtype, viewed here, never a ``uint16`` array taken for one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import precision as _precision
from ..kernels import quantized as _quantized
from ..kernels.elementwise import Kernel
from ._dispatch import _plain_variant, pack
from ._dispatch import run as _run_plain
from ._groups import Group, state_buffers

__all__ = ["MASTER", "attach", "prepare", "allocate", "run", "sync_counter", "stored_dtype",
           "stored_layout", "decode_state", "encode_state"]

#: the state buffer holding the float32 master copy of 16-bit parameters
MASTER = "master_param"


def attach(group: Group, precision: _precision.Precision) -> None:
    """Give ``group`` its precision: compute dtype, 16-bit views, the key array."""
    group.precision = precision
    group.compute_dtype = precision.compute
    # the step's key for the random bits, a uint32 that the loops load (see
    # kernels.precision: computed there, it would make LLVM widen the hash to 64 bits)
    group.rounding = np.zeros(1, dtype=np.uint32)
    if precision.state == "int8":
        if group.device == "cuda" and precision.compute != np.float32:
            raise ValueError("state_dtype='int8' on the GPU needs float32 parameters, got "
                             f"{precision.compute}")
        precision.blocks = _quantized.block_table(group.offsets)
    if precision.param != "same":
        # the loops take 16-bit buffers as their uint16 patterns (host and device alike:
        # numba's CUDA kernels cannot type ml_dtypes.bfloat16)
        if group.flat is not None:
            group.data = group.flat.data.view(np.uint16)
            group.grad_data = group.flat.grad.view(np.uint16)


def stored_dtype(group: Group, name: str) -> np.dtype:
    """The dtype of state buffer ``name`` of ``group`` as stored (and in state dicts)."""
    precision = group.precision
    if precision is None:
        return group.dtype
    if name == MASTER or name.endswith(("__absmax", "__float32")):
        return np.dtype(np.float32)
    return precision.state_storage


def allocate(group: Group, value: float) -> Any:
    """A state buffer of ``group`` in its stored form, every element ``value``."""
    precision = group.precision
    if precision.state == "bf16":
        fill = _precision.float32_to_bf16_bits(np.array([value], dtype=np.float32))[0]
    else:
        fill = value
    host = np.full(group.numel, fill, dtype=precision.state_storage)
    if group.device == "cuda":
        from ..kernels import cuda as _gpu

        return _gpu.cuda.to_device(host)
    return host


def _master_copy(group: Group) -> Any:
    """float32 values of the group's 16-bit parameters, in its flat layout (on the
    group's device)."""
    master = np.empty(group.numel, dtype=np.float32)
    for j, p in enumerate(group.params):
        host = p if isinstance(p, np.ndarray) else p.copy_to_host()
        master[int(group.offsets[j]):int(group.offsets[j + 1])] = np.asarray(
            host, dtype=np.float32).reshape(-1)
    if group.device == "cuda":
        from ..kernels import cuda as _gpu

        return _gpu.cuda.to_device(master)
    return master


def _allocate_int8(group: Group, value: float, signed: bool) -> tuple[np.ndarray, ...]:
    """An int8 state of ``group`` in stored form, every element ``value``: codes,
    scales, float32 values of the small tensors."""
    blocks, small, _, n_small = group.precision.blocks
    unit = np.array([np.sign(value) if value else 0.0], dtype=np.float32)
    code = _quantized._nearest_codes_host(_quantized.dynamic_map(signed), unit)[0]
    arrays = (np.full(group.numel, code, dtype=np.uint8),
              np.full(len(small), abs(value), dtype=np.float32),
              np.full(n_small, value, dtype=np.float32))
    if group.device == "cuda":
        from ..kernels import cuda as _gpu

        return tuple(_gpu.cuda.to_device(a) for a in arrays)
    return arrays


def _prepare_int8(group: Group, kernel: Kernel, init: dict[str, float], fresh: bool) -> Kernel:
    """:func:`prepare` for int8 states: codes, scales and small tensors' float32 values
    per state, then (16-bit parameters) the float32 master copy, and the loop arguments
    in the order of :func:`~fastmoments.kernels.quantized.loop_source` (CPU) or
    :func:`~fastmoments.kernels.quantized.cuda_source` (CUDA): the floor table where a
    state is rounded stochastically, the key array (CPU; :func:`run` fills it) where
    anything is."""
    if not kernel.state_names:  # nothing to quantize (SGD without momentum)
        group.state, group.states = {}, ()
        return kernel
    iterates = sorted(_precision.PARAMETER_LIKE & set(kernel.state_names))
    if iterates:
        raise ValueError(f"state_dtype='int8' would keep {iterates} (iterates of the "
                         "parameters) in 8 bits; use state_dtype='bfloat16' for this rule")
    layout = group.precision.layout(kernel.state_names)
    old = group.state
    state: dict[str, Any] = {}
    for name, codec in zip(kernel.state_names, layout[2]):
        names = (name, *_quantized.aux_names(name))
        if not fresh and all(n in old for n in names):
            arrays = tuple(old[n] for n in names)
        else:
            arrays = _allocate_int8(group, init.get(name, 0.0), codec.startswith("q8s"))
        state.update(zip(names, arrays))
    precision = group.precision
    if precision.master:  # 16-bit parameters: their float32 copy, not quantized (last)
        master = None if fresh else old.get(MASTER)
        state[MASTER] = master if master is not None else _master_copy(group)
    group.state = state
    blocks, small, tensor_blocks, _ = precision.blocks
    floors = (_quantized.floor_table(),) if _quantized.takes_floors(layout) else ()
    if group.device == "cuda":  # the block table and the maps on the device
        from ..kernels import cuda as _gpu

        group.states = (*state.values(), *_gpu.int8_tables(blocks, small),
                        *(_gpu.cuda.to_device(f) for f in floors))
    else:
        group.states = (*state.values(), blocks, small, tensor_blocks, _quantized.maps(),
                        _quantized.code_table(), *floors)
        if _quantized.takes_key(layout):  # the random bits' key
            group.states += (group.rounding,)
    return kernel.reduced(layout)


def prepare(group: Group, kernel: Kernel, init: dict[str, float], fresh: bool) -> Kernel:
    """``Optimizer._prepare`` for a group with a precision: its state buffers (kept
    when not ``fresh``), the loop arguments, and the kernel for its layout."""
    precision = group.precision
    # (int8 for a rule without state over 16-bit parameters: their element-wise loops)
    if precision.state == "int8" and (kernel.state_names or precision.param == "same"):
        return _prepare_int8(group, kernel, init, fresh)
    old = group.state
    state = state_buffers(group, kernel.state_names, init, fresh, allocate)
    extras: tuple = ()
    if precision.master:
        master = old.get(MASTER) if not fresh else None
        state[MASTER] = master if master is not None else _master_copy(group)
        extras = (state[MASTER],)
    group.state = state
    group.states = tuple(state[name] for name in kernel.state_names) + extras
    if group.device == "cpu":
        group.states += (group.rounding,)
    return kernel.reduced(precision.layout(kernel.state_names))


def sync_counter(group: Group, step_count: int) -> None:
    """Set the step of the random bits (after a load: a resumed run draws the bits of
    the uninterrupted one)."""
    if group.precision is not None:
        group.precision.counter = int(step_count)


def run(group: Group, source: Any, scalars: tuple) -> None:
    """One step over a group with a precision (``Optimizer._run`` for such optimizers):
    the step's key for stochastic rounding, the 16-bit views, then the loop."""
    precision = group.precision
    if precision is None:
        _run_plain(group, source, scalars)
        return
    precision.counter += 1
    key = _precision.step_key_host(precision.seed, precision.counter)
    if source is not None and precision.param != "same" and not isinstance(source, list):
        source = (group.grad_data if group.flat is not None and source is group.flat.grad
                  else source.view(np.uint16))
    if group.device == "cuda" and group.kernel.layout is not None:
        _run_cuda(group, source, scalars, key)
        return
    # (a kernel without layout: int8 for a rule without state, which runs as plain)
    group.rounding[0] = key
    _run_plain(group, source, scalars)


def _run_cuda(group: Group, source: Any, scalars: tuple, key: int) -> None:
    from ..kernels import cuda as _gpu

    pack(group, scalars)
    plain = _plain_variant(group.kernel, scalars)
    kernel = plain if plain is not None and scalars[0] == 1.0 and scalars[1] == np.inf \
        else group.kernel
    args = tuple(group.scalars)
    states = group.states
    cuda_kernel = kernel.cuda
    if group.precision.state == "int8" and kernel.state_names:  # a thread block per block
        _, _, tensor_blocks, _ = group.precision.blocks
        # the step's key after tensor_start where something rounds stochastically
        tail = (np.uint32(key),) if _quantized.takes_key(kernel.layout) else ()
        if not isinstance(source, list):
            _gpu.launch_blocks(cuda_kernel, int(tensor_blocks[-1]),
                               group.data, source, *states, np.int64(0),
                               np.int64(tensor_blocks[-1]), np.int64(0), *tail, *args)
            return
        bits = group.precision.param != "same"  # 16-bit arrays as their uint16 patterns
        for j, (p, g) in enumerate(zip(group.params, source)):
            first, last = int(tensor_blocks[j]), int(tensor_blocks[j + 1])
            p, g = p.reshape(p.size), g.reshape(g.size)
            if bits:
                p, g = p.view(np.uint16), g.view(np.uint16)
            _gpu.launch_blocks(cuda_kernel, last - first, p, g, *states, np.int64(first),
                               np.int64(last - first), np.int64(group.offsets[j]), *tail,
                               *args)
        return
    key = np.uint32(key)
    if not isinstance(source, list):
        _gpu.launch(cuda_kernel, group.numel, group.data, source, *states, key, np.int64(0),
                    *args)
        return
    half = group.precision.param != "same"  # the kernel takes 16-bit buffers as uint16
    for j, (p, g) in enumerate(zip(group.params, source)):
        start, stop = int(group.offsets[j]), int(group.offsets[j + 1])
        if stop > start:
            p, g = p.reshape(p.size), g.reshape(g.size)
            if half:
                p, g = p.view(np.uint16), g.view(np.uint16)
            _gpu.launch(cuda_kernel, stop - start, p, g, *(s[start:stop] for s in states),
                        key, np.int64(start), *args)


# ------------------------------------------------ state dicts: stored forms
def _blocks(group: Group) -> tuple:
    precision = group.precision
    if precision is not None and precision.blocks is not None:
        return precision.blocks
    return _quantized.block_table(group.offsets)


def stored_layout(group: Group, name: str, state_dtype: str) -> dict[str, tuple]:
    """The arrays that hold state ``name`` of ``group`` stored as ``state_dtype``:
    ``{array name: (shape, dtype)}``."""
    if state_dtype == "int8":
        _, small, _, n_small = _blocks(group)
        absmax, kept = _quantized.aux_names(name)
        return {name: ((group.numel,), np.dtype(np.uint8)),
                absmax: ((len(small),), np.dtype(np.float32)),
                kept: ((n_small,), np.dtype(np.float32))}
    dtype = np.dtype(np.uint16) if state_dtype == "bfloat16" else np.dtype(state_dtype)
    return {name: ((group.numel,), dtype)}


def decode_state(group: Group, name: str, parts: dict[str, np.ndarray],
                 state_dtype: str) -> np.ndarray:
    """The values of state ``name`` from its stored arrays ``parts`` (float32/64)."""
    if state_dtype == "int8":
        blocks, small, _, _ = _blocks(group)
        absmax, kept = _quantized.aux_names(name)
        return _quantized.dequantize(parts[name], parts[absmax], parts[kept], blocks, small,
                                     name not in _precision.SECOND_MOMENTS)
    return _precision.decode(parts[name], state_dtype)


def encode_state(group: Group, name: str, values: np.ndarray,
                 state_dtype: str) -> dict[str, np.ndarray]:
    """State ``name`` with ``values`` in the stored form of ``state_dtype``."""
    if state_dtype == "int8":
        blocks, small, _, n_small = _blocks(group)
        arrays = _quantized.quantize(values, blocks, small, n_small,
                                     name not in _precision.SECOND_MOMENTS)
        return dict(zip((name, *_quantized.aux_names(name)), arrays))
    return {name: _precision.encode(values, state_dtype)}
