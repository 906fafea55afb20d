"""The communicator adapter: the seven collectives the sharded optimizer uses.

:class:`ShardedOptimizer <fastmoments.distributed.ShardedOptimizer>` talks to the other
processes only through an object with the methods of :class:`Communicator`. Two come
with fastmoments: :class:`MPICommunicator` (an mpi4py communicator, what
:func:`as_communicator` makes of ``MPI.COMM_WORLD``) and :class:`SelfCommunicator` (one
process, no MPI); a ``torch.distributed`` process group is wrapped in a
:class:`~fastmoments.distributed.TorchCommunicator` (module ``torch_comm``). Another
transport is added by writing a class with these methods and passing an instance as
``comm``.

Buffers are one-dimensional, C-contiguous arrays of one dtype (NumPy arrays, or CUDA
arrays where the transport accepts them: a CUDA-aware MPI, NCCL). ``counts[r]`` is the
number of elements of rank ``r``'s block; the blocks lie one after the other, in rank
order, from the start of the buffer.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Communicator", "MPICommunicator", "SelfCommunicator", "as_communicator"]


@runtime_checkable
class Communicator(Protocol):
    """What the sharded optimizer needs from a group of processes.

    Every method is collective: every rank calls it, in the same order, with blocks of
    the same sizes. Sums must give every rank the same bits (the optimizer's decisions
    are taken from them on every rank alike).
    """

    @property
    def rank(self) -> int:
        """This process's index, ``0 <= rank < size``."""
        ...

    @property
    def size(self) -> int:
        """The number of processes."""
        ...

    def allreduce(self, buffer: Any) -> None:
        """Replace ``buffer`` by its elementwise sum over the ranks, on every rank."""
        ...

    def reduce_scatter(self, send: Any, recv: Any, counts: Sequence[int]) -> None:
        """Sum ``send`` (``sum(counts)`` elements) over the ranks and write this rank's
        block of the sum into ``recv`` (``counts[rank]`` elements)."""
        ...

    def allgather(self, buffer: Any, counts: Sequence[int]) -> None:
        """In place: every rank's block of ``buffer`` (``sum(counts)`` elements) is
        copied from that rank into the same block on every other rank."""
        ...

    def gather(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        """Copy every rank's ``send`` (``counts[rank]`` elements) into its block of
        ``recv`` on ``root`` (``recv`` is ignored on the other ranks)."""
        ...

    def scatter(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        """Copy each block of ``send`` on ``root`` into ``recv`` on the block's rank
        (``send`` is ignored on the other ranks)."""
        ...

    def bcast(self, buffer: Any, root: int) -> None:
        """Copy ``buffer`` from ``root`` into ``buffer`` on every rank."""
        ...

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        ...


def _displacements(counts: Sequence[int]) -> list[int]:
    """Where each rank's block starts."""
    out, start = [], 0
    for count in counts:
        out.append(start)
        start += int(count)
    return out


class MPICommunicator:
    """:class:`Communicator` over an mpi4py communicator (``MPI.COMM_WORLD`` or a
    sub-communicator).

    Uses ``Allreduce``, ``Reduce_scatter`` (with counts: uneven blocks need no
    padding), ``Bcast`` and the pickle-based ``allgather``. The all-gather is MPI's
    ``Allgather`` in place when the blocks are equal, else a ring of ``Sendrecv``
    (``world_size - 1`` steps, each rank passing on the block it received last);
    gather and scatter are point-to-point to and from the root. (The ``Allgatherv`` of
    MPICH 5.0.2, with its default algorithm, was about a hundred times slower than
    ``Allgather`` and the ring on one machine; docs/distributed.md has the figures.)
    CUDA arrays are passed through as they are: they need an MPI built CUDA-aware.

    Parameters
    ----------
    comm
        An ``mpi4py.MPI.Comm`` (an intracommunicator).
    """

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self._rank = int(comm.Get_rank())
        self._size = int(comm.Get_size())

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    def allreduce(self, buffer: Any) -> None:
        # MPICH's and Open MPI's algorithms for a commutative sum give every rank the
        # same bits (each element is reduced once and copied, or pairs are added in
        # either order, which IEEE addition does not tell apart)
        self.comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)

    def reduce_scatter(self, send: Any, recv: Any, counts: Sequence[int]) -> None:
        self.comm.Reduce_scatter(send, recv, recvcounts=[int(c) for c in counts],
                                 op=self._MPI.SUM)

    def allgather(self, buffer: Any, counts: Sequence[int]) -> None:
        size, rank = self._size, self._rank
        if size == 1:
            return
        if all(int(c) == int(counts[0]) for c in counts):
            self.comm.Allgather(self._MPI.IN_PLACE, buffer[: size * int(counts[0])])
            return
        starts = _displacements(counts)
        right, left = (rank + 1) % size, (rank - 1) % size
        for step in range(size - 1):  # pass on the block received at the last step
            out, into = (rank - step) % size, (rank - step - 1) % size
            self.comm.Sendrecv(buffer[starts[out]: starts[out] + int(counts[out])], dest=right,
                               recvbuf=buffer[starts[into]: starts[into] + int(counts[into])],
                               source=left)

    def gather(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        if self._rank != root:
            self.comm.Send(send, dest=root)
            return
        for rank, start in enumerate(_displacements(counts)):
            block = recv[start: start + int(counts[rank])]
            if rank == root:
                block[...] = send
            else:
                self.comm.Recv(block, source=rank)

    def scatter(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        if self._rank != root:
            self.comm.Recv(recv, source=root)
            return
        for rank, start in enumerate(_displacements(counts)):
            block = send[start: start + int(counts[rank])]
            if rank == root:
                recv[...] = block
            else:
                self.comm.Send(block, dest=rank)

    def bcast(self, buffer: Any, root: int) -> None:
        self.comm.Bcast(buffer, root=root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self.comm.allgather(obj))

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self._rank}, size={self._size})"


class SelfCommunicator:
    """:class:`Communicator` of one process (no MPI): every collective is a copy or
    nothing. ``ShardedOptimizer(..., comm=SelfCommunicator())`` is then a plain
    optimizer with the sharded optimizer's interface."""

    rank = 0
    size = 1

    def allreduce(self, buffer: Any) -> None:
        pass

    def reduce_scatter(self, send: Any, recv: Any, counts: Sequence[int]) -> None:
        recv[:] = send[: int(counts[0])]

    def allgather(self, buffer: Any, counts: Sequence[int]) -> None:
        pass

    def gather(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        recv[: int(counts[0])] = send

    def scatter(self, send: Any, recv: Any, counts: Sequence[int], root: int) -> None:
        recv[:] = send[: int(counts[0])]

    def bcast(self, buffer: Any, root: int) -> None:
        pass

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def __repr__(self) -> str:
        return "SelfCommunicator()"


def as_communicator(comm: Any) -> Communicator:
    """The :class:`Communicator` for ``comm``.

    Parameters
    ----------
    comm
        ``None``: mpi4py's ``MPI.COMM_WORLD``; or, when ``torch.distributed`` is
        initialized and MPI's world is this process alone (or mpi4py is not installed),
        torch's default process group. An mpi4py communicator; a ``torch.distributed``
        process group (a :class:`~fastmoments.distributed.TorchCommunicator` over it);
        or an object that already has the methods of :class:`Communicator` (returned as
        it is).

    Raises
    ------
    TypeError
        For anything else.
    """
    if comm is None:
        return _default()
    if _is_process_group(comm):
        from .torch_comm import TorchCommunicator

        return TorchCommunicator(comm)
    if isinstance(comm, Communicator):
        return comm
    if type(comm).__module__ == "mpi4py.MPI":
        return MPICommunicator(comm)
    raise TypeError(
        f"comm: expected an mpi4py communicator, a torch.distributed process group or an "
        f"object with the methods of fastmoments.distributed.Communicator, got "
        f"{type(comm).__module__}.{type(comm).__qualname__}"
    )


def _torch_distributed() -> Any:
    """``torch.distributed`` if it is imported and initialized, else None (torch is
    never imported here: a process group exists only once the user imported it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return None
    return dist


def _is_process_group(comm: Any) -> bool:
    dist = sys.modules.get("torch.distributed")
    group = getattr(dist, "ProcessGroup", None)  # (absent from torch built without it)
    return isinstance(group, type) and isinstance(comm, group)


def _default() -> Communicator:
    """``comm=None``: MPI's world as before; torch's default group only where MPI's
    world would be this process alone, so that nothing launched by mpiexec changes."""
    torch_initialized = _torch_distributed() is not None
    try:
        from mpi4py import MPI
    except ImportError:
        if torch_initialized:
            from .torch_comm import TorchCommunicator

            return TorchCommunicator()
        raise ImportError(
            "fastmoments.distributed: comm=None means mpi4py's MPI.COMM_WORLD, and "
            "mpi4py is not installed (pip install 'fastmoments[mpi]'); or pass "
            "a torch.distributed process group, or "
            "comm=fastmoments.distributed.SelfCommunicator() for one process"
        ) from None
    if torch_initialized and MPI.COMM_WORLD.Get_size() == 1:
        from .torch_comm import TorchCommunicator

        return TorchCommunicator()
    return MPICommunicator(MPI.COMM_WORLD)
