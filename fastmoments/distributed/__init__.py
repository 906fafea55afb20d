"""Data-parallel training over many processes: the optimizer state sharded (ZeRO-1).

- :class:`ShardedOptimizer`: any fastmoments optimizer, stepped by every rank on the
  mean of the ranks' gradients, each rank keeping the state of its shard only
  (``shard=False``: every rank steps everything, as torch's DDP);
- :class:`Communicator`: the collectives it uses, with :class:`MPICommunicator`
  (mpi4py, imported only when used: ``pip install 'fastmoments[mpi]'``),
  :class:`SelfCommunicator` (one process) and :class:`TorchCommunicator` (a
  ``torch.distributed`` process group; torch is imported only when one is built);
- :func:`shard_sizes`, :func:`shard_ranges`: how a buffer is split over the ranks.

See docs/distributed.md for how to run it on several machines.
"""

from .comm import Communicator, MPICommunicator, SelfCommunicator, as_communicator
from .sharded import ShardedOptimizer, shard_ranges, shard_sizes
from .torch_comm import TorchCommunicator

__all__ = ["ShardedOptimizer", "Communicator", "MPICommunicator", "SelfCommunicator",
           "TorchCommunicator", "as_communicator", "shard_sizes", "shard_ranges"]
