"""The consolidated state of a ShardedOptimizer: the shards of every state buffer
gathered into one process's state dict, or scattered from one, and the checkpoint
files (a mixin of :class:`.sharded.ShardedOptimizer`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import checkpoint
from ..optim._state import check_form, copy_into, plan_load
from ..optim.base import Optimizer
from ._agree import together
from .comm import Communicator
from .layout import _OWNER, _Shard

__all__: list[str] = []


class _Checkpoints:
    """state_dict / load_state_dict / save / load (needs ``comm``, ``rank``,
    ``world_size``, ``sharded``, ``optimizer``, ``skipped_steps``, ``_cls`` and
    ``_shards``)."""

    comm: Communicator
    rank: int
    world_size: int
    sharded: bool
    optimizer: Optimizer
    skipped_steps: int
    _cls: type[Optimizer]
    _shards: list[_Shard]

    def state_dict(self, *, root: int | None = 0) -> dict[str, Any] | None:
        """The consolidated state: one process's :meth:`~fastmoments.Adam.state_dict`.

        Collective. The shards of every state buffer are gathered into whole buffers,
        so the dict is the one a single-process optimizer over the same FlatParams
        would give, and it loads into one (or into a ShardedOptimizer at any number of
        ranks).

        Parameters
        ----------
        root
            The rank that receives it (the others get ``None``); ``None``: every rank.
        """
        self._check_root(root)
        local = self.optimizer.state_dict()
        mine = root is None or self.rank == root
        if not self.sharded:
            return local if mine else None
        state = [{name: self._gathered_buffer(s, buf, root) for name, buf in buffers.items()}
                 for s, buffers in zip(self._shards, local["state"])]
        if not mine:
            return None
        groups = [dict(hyper, num_params=len(s.flat.params), numel=s.flat.numel)
                  for s, hyper in zip(self._shards, local["param_groups"])]
        return {**local, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any] | None, *, root: int = 0) -> None:
        """Load a consolidated state dict (from :meth:`state_dict`, or from a
        single-process optimizer of the same class over FlatParams of the same shapes).

        Collective. Only rank ``root``'s ``state_dict`` is read (the others may pass
        ``None``); each rank receives its shards. Everything is checked before anything
        changes, and a refusal raises the same error on every rank.
        """
        self._check_root(root)
        meta, _ = together(self.comm, _OWNER, lambda: (
            self._check_consolidated(state_dict) if self.rank == root else None, None))
        meta = self._from_root(meta, root)
        state = []
        for s, names in zip(self._shards, meta["state_names"]):
            k = len(state)
            state.append({
                name: self._scattered_buffer(
                    s, state_dict["state"][k][name] if self.rank == root else None, root)
                for name in names})
        groups = [dict(hyper, num_params=len(group.params), numel=group.numel)
                  for group, hyper in zip(self.optimizer._groups, meta["param_groups"])]
        local = {key: meta[key] for key in ("format_version", "optimizer", "step_count",
                                            "host_state")}
        local.update(param_groups=groups, state=state)
        together(self.comm, _OWNER, lambda: (plan_load(self.optimizer, local), None))
        self.optimizer.load_state_dict(local)

    def save(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Write one consolidated checkpoint, in the single-process format, from rank 0.

        Collective. The state is gathered on rank 0, which writes ``path`` atomically
        as :func:`fastmoments.checkpoint.save` does (with the parameters, by default);
        an error there is raised on every rank.
        """
        sd = self.state_dict(root=0)

        def write() -> tuple[None, None]:
            if self.rank == 0:
                arrays = [p for s in self._shards for p in s.flat.params] if params else None
                checkpoint.write_atomic(path, checkpoint.to_arrays(
                    sd, self.skipped_steps, arrays, self._cls.__name__))
            return None, None

        together(self.comm, _OWNER, write)

    def load(self, path: str | os.PathLike[str], *, params: bool = True) -> None:
        """Restore a checkpoint written by :meth:`save` at any number of ranks, or by a
        single-process optimizer's ``save``.

        Collective. Rank 0 reads ``path`` (only its file system needs it) and sends each
        rank its shards; the parameters are broadcast. Raises ``CheckpointError`` on
        every rank, changing nothing, when the file does not fit.
        """
        owner = self._cls.__name__
        where = f"{_OWNER}({owner}).load({os.fspath(path)!r})"
        flats = [s.flat for s in self._shards]

        def read() -> tuple[Any, None]:
            if self.rank != 0:
                return None, None
            return checkpoint.read(path, owner, [(f.numel, f.dtype) for f in flats],
                                   [p for f in flats for p in f.params], params), None

        found, _ = together(self.comm, _OWNER, read)
        sd, skipped, entries = found if self.rank == 0 else (None, None, None)
        try:
            self.load_state_dict(sd, root=0)
        except (TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"{where}: {exc}") from None
        self.skipped_steps = self._from_root(skipped, 0)
        if not self.sharded:
            self.optimizer.skipped_steps = self.skipped_steps
        if self._from_root(bool(entries), 0):
            index = 0
            for flat in flats:
                if self.rank == 0:
                    for j, p in enumerate(flat.params):
                        copy_into(p, entries[f"param.{index + j}"])
                index += len(flat.params)
                self.comm.bcast(flat.data, 0)

    def _check_root(self, root: int | None) -> None:
        if root is not None and not (isinstance(root, int) and 0 <= root < self.world_size):
            raise ValueError(f"root: expected a rank in [0, {self.world_size}), got {root!r}")

    def _check_consolidated(self, sd: Any) -> dict[str, Any]:
        """Rank ``root``: the sizes of a consolidated state dict, checked against the
        FlatParams; returns what every rank needs besides the buffers."""
        check_form(sd, len(self._shards))
        for k, (s, hyper, buffers) in enumerate(zip(self._shards, sd["param_groups"],
                                                    sd["state"])):
            flat = s.flat
            if hyper.get("num_params") != len(flat.params) or hyper.get("numel") != flat.numel:
                raise ValueError(
                    f"state_dict: param_groups[{k}]: has {hyper.get('num_params')} params / "
                    f"{hyper.get('numel')} elements, the optimizer's group has "
                    f"{len(flat.params)} / {flat.numel}")
            for name, a in buffers.items():
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"state_dict: state[{k}][{name!r}] is not a NumPy array")
                if a.shape != (flat.numel,) or a.dtype != flat.dtype:
                    raise ValueError(
                        f"state_dict: state[{k}][{name!r}] has shape {a.shape} and dtype "
                        f"{a.dtype}, expected ({flat.numel},) and {flat.dtype}")
        return {"format_version": sd["format_version"], "optimizer": sd["optimizer"],
                "step_count": sd["step_count"], "param_groups": [dict(g) for g in
                                                                 sd["param_groups"]],
                "host_state": [dict(h) for h in sd["host_state"]],
                "state_names": [list(buffers) for buffers in sd["state"]]}

    def _from_root(self, value: Any, root: int) -> Any:
        return self.comm.allgather_object(value if self.rank == root else None)[root]

    def _gathered_buffer(self, s: _Shard, local: np.ndarray, root: int | None
                         ) -> np.ndarray | None:
        """The whole buffer from every rank's shard, on ``root`` (None: everywhere)."""
        if self.world_size == 1:
            return local
        if root is None:
            whole = np.empty(s.flat.numel, dtype=local.dtype)
            whole[s.start:s.stop] = local
            self.comm.allgather(whole, s.counts)
            return whole
        whole = np.empty(s.flat.numel, dtype=local.dtype) if self.rank == root else None
        self.comm.gather(np.ascontiguousarray(local), whole, s.counts, root)
        return whole

    def _scattered_buffer(self, s: _Shard, whole: np.ndarray | None, root: int) -> np.ndarray:
        """This rank's part of ``root``'s buffer ``whole``: its shard, or all of it."""
        dtype = s.flat.dtype
        if not self.sharded:
            out = (np.array(whole, dtype=dtype) if self.rank == root
                   else np.empty(s.flat.numel, dtype=dtype))
            if self.world_size > 1:
                self.comm.bcast(out, root)
            return out
        out = np.empty(s.stop - s.start, dtype=dtype)
        send = np.ascontiguousarray(whole) if self.rank == root else None
        if self.world_size == 1:
            out[...] = send
        else:
            self.comm.scatter(send, out, s.counts, root)
        return out
