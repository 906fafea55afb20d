"""The communicator adapter: the seven collectives the sharded optimizer uses.

:class:`ShardedOptimizer <fastmoments.distributed.ShardedOptimizer>` talks to the other
processes only through an object with the methods of :class:`Communicator`. Two come
with fastmoments: :class:`MPICommunicator` (an mpi4py communicator, what
:func:`as_communicator` makes of ``MPI.COMM_WORLD``) and :class:`SelfCommunicator` (one
process, no MPI). Another transport, e.g. a ``torch.distributed`` process group, is
added by writing a class with these methods (``all_reduce``, ``reduce_scatter_tensor``,
``all_gather_into_tensor``, ``broadcast`` and ``all_gather_object`` cover them, the
uneven counts by padding every block to the largest) and passing an instance as
``comm``.

Buffers are one-dimensional, C-contiguous arrays of one dtype (NumPy arrays, or CUDA
arrays where the transport accepts them: a CUDA-aware MPI, NCCL). ``counts[r]`` is the
number of elements of rank ``r``'s block; the blocks lie one after the other, in rank
order, from the start of the buffer.
"""

from __future__ import annotations

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
        ``None`` (mpi4py's ``MPI.COMM_WORLD``), an mpi4py communicator, or an object
        that already has the methods of :class:`Communicator` (returned as it is).

    Raises
    ------
    TypeError
        For anything else, e.g. a ``torch.distributed`` process group, which needs an
        adapter class (see the module's docstring).
    """
    if comm is None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError(
                "fastmoments.distributed: comm=None means mpi4py's MPI.COMM_WORLD, and "
                "mpi4py is not installed (pip install 'fastmoments[mpi]'); or pass "
                "comm=fastmoments.distributed.SelfCommunicator() for one process"
            ) from None
        return MPICommunicator(MPI.COMM_WORLD)
    if isinstance(comm, Communicator):
        return comm
    if type(comm).__module__ == "mpi4py.MPI":
        return MPICommunicator(comm)
    raise TypeError(
        f"comm: expected an mpi4py communicator or an object with the methods of "
        f"fastmoments.distributed.Communicator, got {type(comm).__module__}."
        f"{type(comm).__qualname__} (a torch.distributed process group needs a small "
        "adapter class with those methods)"
    )
