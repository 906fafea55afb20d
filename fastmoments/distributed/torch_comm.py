"""TorchCommunicator: the communicator adapter over a ``torch.distributed`` process group.

:class:`~fastmoments.distributed.ShardedOptimizer` accepts a process group as ``comm``
(:func:`~fastmoments.distributed.as_communicator` wraps it in a :class:`TorchCommunicator`),
so a job launched with ``torchrun`` and ``torch.distributed.init_process_group`` needs no
MPI. torch is imported when a TorchCommunicator is built, never by ``import fastmoments``.

NumPy buffers travel as ``torch.from_numpy`` views (no copy); CUDA arrays (anything with
``__cuda_array_interface__``: numba device arrays, CuPy, torch CUDA tensors) as
``torch.as_tensor`` views on their device, which an NCCL group (or the CUDA side of a
``"cpu:gloo,cuda:nccl"`` group) moves. The CPU side is tested with gloo at 1, 2 and 3
processes; the CUDA/NCCL side is written to torch's documented API but not tested here
(no GPU).

How each collective is done, and why:

- ``allreduce``, ``bcast``, ``allgather_object``: torch's own (``all_reduce``,
  ``broadcast``, ``all_gather_object``). gloo's all-reduce gives every rank the same bits
  (the tests check it), as NCCL's ring and tree algorithms do by reducing each element
  once and copying the result (not tested here). The order of the additions is the
  backend's: sums that are not exact may differ from NumPy's by round-off.
- ``reduce_scatter`` and ``allgather``: on CPU tensors, a ring of point-to-point
  exchanges (``world_size - 1`` steps), as :class:`~fastmoments.distributed.MPICommunicator`
  does for uneven all-gathers. gloo (torch 2.13) has no uneven all-gather (it refuses blocks
  of different sizes), and its reduce-scatter, which accepts uneven blocks, was 8 times
  slower than the ring at 2 processes (4e6 float32: 78 ms against 9 ms, best of 5, on a
  loaded 2-core machine) and allocated about twice the buffer's size in temporaries; the
  ring needs at most two blocks of scratch (reduce-scatter) or none (all-gather). On CUDA tensors
  with equal blocks: NCCL's ``reduce_scatter_single`` and an in-place
  ``all_gather_single`` (the rank's block is its own input); uneven blocks take the ring.
- ``gather`` and ``scatter``: point-to-point to and from the root, as MPICommunicator
  (gloo's gather refuses blocks of different sizes).

Blocks of zero elements are not sent at all: every rank knows every block's size, so the
ranks skip the same transfers.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import numpy as np

__all__ = ["TorchCommunicator"]

#: NumPy dtypes torch.from_numpy does not take, moved as unsigned integers of their size
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _starts(counts: Sequence[int]) -> list[int]:
    """Where each rank's block starts (comm.py, which imports this module, has its own)."""
    return [0, *accumulate(int(c) for c in counts)][:-1]


class TorchCommunicator:
    """:class:`~fastmoments.distributed.Communicator` over a ``torch.distributed``
    process group.

    .. code-block:: python

        import torch.distributed as dist
        dist.init_process_group("gloo")     # torchrun sets the rank and the world size
        opt = fm.distributed.ShardedOptimizer(fm.AdamW, flat, comm=dist.group.WORLD)

    Parameters
    ----------
    group
        A process group (``torch.distributed.new_group(...)``), or None: the default
        group. ``torch.distributed`` must be initialized, and this process a member.
    native
        Which algorithm moves equal blocks in ``reduce_scatter`` and ``allgather``:
        None (default) the backend's collective for CUDA tensors and a ring of
        point-to-point exchanges for CPU tensors (the faster on gloo, see the module's
        docstring); True or False: the collective, or the ring, always.

    Notes
    -----
    ``rank``, the ``root`` arguments and ``counts`` are numbered within ``group``. The
    buffers must be contiguous NumPy arrays, torch tensors, or CUDA arrays (of any
    shape: each is moved as its flat run of elements); NumPy's
    ``ml_dtypes.bfloat16`` is moved as ``torch.bfloat16``. With NCCL, set this process's
    GPU (``torch.cuda.set_device``) before the first collective, as torch asks; the CUDA
    path is not tested here.
    """

    def __init__(self, group: Any = None, *, native: bool | None = None) -> None:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "TorchCommunicator: torch.distributed is not initialized (call "
                "torch.distributed.init_process_group first)")
        if group is None:
            group = dist.group.WORLD
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"group: expected a torch.distributed ProcessGroup or None, got "
                            f"{type(group).__qualname__}")
        if native not in (None, True, False):
            raise ValueError(f"native: expected None, True or False, got {native!r}")
        rank = int(dist.get_rank(group))
        if rank < 0:
            raise ValueError("group: this process is not a member of the process group")
        self._torch, self._dist = torch, dist
        self.group = group
        self.native = native
        self._rank, self._size = rank, int(dist.get_world_size(group))
        # torch's point-to-point and root arguments are global ranks
        self._peers = [int(dist.get_global_rank(group, r)) for r in range(self._size)]
        # (renamed in torch 2.13; the old names warn there)
        self._reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or \
            dist.reduce_scatter_tensor
        self._all_gather_single = getattr(dist, "all_gather_single", None) or \
            dist.all_gather_into_tensor

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    # ------------------------------------------------------------ the buffers
    def _tensor(self, buffer: Any, what: str, *, reduced: bool = False) -> Any:
        """``buffer`` as a torch tensor sharing its memory (a NumPy array, a tensor, a
        CUDA array); a dtype torch lacks is viewed as unsigned integers of its size,
        unless the values are summed."""
        torch = self._torch
        if isinstance(buffer, torch.Tensor):
            tensor = buffer
        elif isinstance(buffer, np.ndarray):
            try:
                tensor = torch.from_numpy(buffer)
            except TypeError:
                if buffer.dtype.name == "bfloat16":  # ml_dtypes: torch has its own
                    tensor = torch.from_numpy(buffer.view(np.uint16)).view(torch.bfloat16)
                elif not reduced and buffer.dtype.itemsize in _UNSIGNED:
                    tensor = torch.from_numpy(buffer.view(_UNSIGNED[buffer.dtype.itemsize]))
                else:
                    raise TypeError(f"{what}: torch cannot sum {buffer.dtype} buffers") from None
        elif hasattr(buffer, "__cuda_array_interface__"):
            # a view on the array's own device (no device argument: that would copy an
            # array of another GPU to the current one); not tested here
            tensor = torch.as_tensor(buffer)
        else:
            raise TypeError(f"{what}: expected a NumPy array, a torch tensor or a CUDA "
                            f"array, got {type(buffer).__qualname__}")
        if not tensor.is_contiguous():
            raise ValueError(f"{what}: expected a contiguous buffer, got one of shape "
                             f"{tuple(tensor.shape)} and strides {tensor.stride()}")
        return tensor.view(-1)  # (a view: the per-segment sums of LAMB are 2-D)

    def _native(self, tensor: Any) -> bool:
        return tensor.device.type != "cpu" if self.native is None else self.native

    def _exchange(self, out: Any, into: Any) -> None:
        """Send ``out`` to the next rank and receive ``into`` from the previous one, at
        once (the ring's step; posted together, so no rank waits on its neighbour)."""
        dist, size = self._dist, self._size
        ops = []
        if out.numel():
            ops.append(dist.P2POp(dist.isend, out, self._peers[(self._rank + 1) % size],
                                  self.group))
        if into.numel():
            ops.append(dist.P2POp(dist.irecv, into, self._peers[(self._rank - 1) % size],
                                  self.group))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()

    def _wait_all(self, ops: list[Any]) -> None:
        if ops:
            for work in self._dist.batch_isend_irecv(ops):
                work.wait()

    # ------------------------------------------------------------ collectives
    def allreduce(self, buffer: Any) -> None:
        tensor = self._tensor(buffer, "allreduce", reduced=True)
        if tensor.numel():
            self._dist.all_reduce(tensor, group=self.group)

    def reduce_scatter(self, send: Any, recv: Any, counts: Sequence[int]) -> None:
        counts = [int(c) for c in counts]
        source = self._tensor(send, "reduce_scatter: send", reduced=True)
        out = self._tensor(recv, "reduce_scatter: recv", reduced=True)
        size, rank = self._size, self._rank
        if size == 1:
            out.copy_(source[: counts[0]])
            return
        if self._native(source) and len(set(counts)) == 1:
            if counts[0]:
                self._reduce_scatter_single(out, source[: size * counts[0]], group=self.group)
            return
        # the ring: block b starts as rank b + 1's part, travels right, each rank adding
        # its own, and arrives complete at rank b; two blocks of scratch alternate between
        # the block received and the one being sent on
        starts = _starts(counts)

        def block(b: int) -> Any:
            return source[starts[b]: starts[b] + counts[b]]

        scratch = [source.new_empty(max(counts)) for _ in range(min(2, size - 2))]
        outgoing = block((rank - 1) % size)
        for step in range(size - 1):
            b = (rank - step - 2) % size
            into = out if step == size - 2 else scratch[step % 2][: counts[b]]
            self._exchange(outgoing, into)
            into += block(b)
            outgoing = into

    def allgather(self, buffer: Any, counts: Sequence[int]) -> None:
        counts = [int(c) for c in counts]
        size, rank = self._size, self._rank
        if size == 1:
            return
        tensor = self._tensor(buffer, "allgather")
        if self._native(tensor) and len(set(counts)) == 1:
            c = counts[0]
            if c:  # in place: this rank's block of the output is its input
                self._all_gather_single(tensor[: size * c], tensor[rank * c: (rank + 1) * c],
                                        group=self.group)
            return
        starts = _starts(counts)
        for step in range(size - 1):  # pass on the block received at the last step
            out, into = (rank - step) % size, (rank - step - 1) % size
            self._exchange(tensor[starts[out]: starts[out] + counts[out]],
                           tensor[starts[into]: starts[into] + counts[into]])

    def gather(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        dist = self._dist
        source = self._tensor(send, "gather: send")
        if self._rank != root:
            if source.numel():
                self._wait_all([dist.P2POp(dist.isend, source, self._peers[root], self.group)])
            return
        whole = self._tensor(recv, "gather: recv")
        ops = []
        for rank, start in enumerate(_starts(counts)):
            block = whole[start: start + int(counts[rank])]
            if rank == root:
                block.copy_(source)
            elif block.numel():
                ops.append(dist.P2POp(dist.irecv, block, self._peers[rank], self.group))
        self._wait_all(ops)

    def scatter(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        dist = self._dist
        out = self._tensor(recv, "scatter: recv")
        if self._rank != root:
            if out.numel():
                self._wait_all([dist.P2POp(dist.irecv, out, self._peers[root], self.group)])
            return
        whole = self._tensor(send, "scatter: send")
        ops = []
        for rank, start in enumerate(_starts(counts)):
            block = whole[start: start + int(counts[rank])]
            if rank == root:
                out.copy_(block)
            elif block.numel():
                ops.append(dist.P2POp(dist.isend, block, self._peers[rank], self.group))
        self._wait_all(ops)

    def bcast(self, buffer: Any, root: int) -> None:
        tensor = self._tensor(buffer, "bcast")
        if tensor.numel():
            self._dist.broadcast(tensor, src=self._peers[root], group=self.group)

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self._size
        self._dist.all_gather_object(out, obj, group=self.group)
        return out

    def __repr__(self) -> str:
        return (f"TorchCommunicator(rank={self._rank}, size={self._size}, "
                f"backend={self._dist.get_backend(self.group)!r})")
