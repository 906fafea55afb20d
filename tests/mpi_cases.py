"""The distributed cases, run by every rank under ``mpiexec`` (see test_distributed.py).

``mpiexec -n W python tests/mpi_cases.py OUT.json DIR`` runs every case of ``CASES`` on
every rank; each case compares the sharded optimizer with one process computed on each
rank (every rank draws every rank's gradient from the same seeds), and checks that the
replicas agree. Rank 0 writes ``{case: [failures on any rank]}`` to ``OUT.json``.
``DIR`` holds the checkpoints that launches at other world sizes save and load.

The gradients:

- *exact*: multiples of 1/64 in [-1, 1] in float32, so the sum over 1-3 ranks is exact
  whatever order MPI adds them in; the one-process reference steps that sum with
  ``grad_scale=W`` (which is what the sharded step does: the mean as a division by
  ``W`` inside the kernel) and must agree bit for bit. For ``W`` = 1 or 2 that is also
  the mean gradient itself, and the reference on the mean must agree bit for bit.
- *random*: float64 normals; MPI's order of summation and the kernel's multiplication
  by ``1/W`` differ from NumPy's mean by round-off, so the reference on the mean must
  agree to 1e-12 (relative to the parameters' magnitude).

Multi-pass rules (LAMB, ND-Adam, SWATS) are bit for bit when every tensor (LAMB,
SWATS) or weight vector (ND-Adam) lies in one rank's shard: the sum over the ranks then
adds zeros to one rank's total. When a shard boundary cuts one, its two partial sums
are added in another order than one process adds them: 1e-12.

Nothing here imports mpi4py at import time: the functions take a communicator, so
the test can run the checkpoint continuation in its own process (SelfCommunicator).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

import fastmoments as fm
from fastmoments.checkpoint import CheckpointError
from fastmoments.distributed import ShardedOptimizer, shard_ranges
from fastmoments.optim.base import Optimizer

TOL = 1e-12
STEPS = 4

#: hyperparameter variants per class; a class not listed runs with its defaults
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "SGD": [{"lr": 0.1}, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}],
    "RMSprop": [{"centered": True, "momentum": 0.9}],
    "Adam": [{"amsgrad": True}],
    "AdamW": [{"lr": 1e-2, "weight_decay": 0.1},
              {"lr": 1e-2, "weight_decay": 0.1, "cautious": True}],
    "Lion": [{}, {"cautious": True}],
    "LAMB": [{"weight_decay": 0.01}],
    "SWATS": [{}, {"switch_tol": 10.0}],  # the second switches to SGD at step 2
    "ADOPT": [{}, {"cautious": True}],
    "AdEMAMix": [{"t_alpha": 20, "t_beta3": 20}],
    "ScheduleFreeAdamW": [{"warmup_steps": 2}],
}


def rules() -> list[tuple[str, dict[str, Any]]]:
    """Every optimizer class of ``fm.__all__``, with its variants."""
    names = [n for n in fm.__all__
             if isinstance(getattr(fm, n), type) and issubclass(getattr(fm, n), Optimizer)]
    return [(n, kw) for n in names for kw in VARIANTS.get(n, [{}])]


class Failures(list):
    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.append(what)


# ------------------------------------------------------------------ helpers
def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def replicas_agree(comm: Any, flats: list) -> bool:
    mine = [digest(f.data) for f in flats]
    return all(d == mine for d in comm.allgather_object(mine))


def same_everywhere(comm: Any, value: Any) -> bool:
    values = comm.allgather_object(value)
    return all(v == values[0] for v in values)


def initial(shapes: list, dtype: Any, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def gradients(t: int, n: int, world: int, dtype: Any, kind: str, scale: float = 1.0
              ) -> list[np.ndarray]:
    """Every rank's gradient at step ``t`` (the same on every rank)."""
    out = []
    for r in range(world):
        rng = np.random.default_rng([t, r, n])
        if kind == "exact":
            g = rng.integers(-64, 65, n) / 64.0
        else:
            g = rng.standard_normal(n)
        out.append((g * scale).astype(dtype))
    return out


def total(grads: list[np.ndarray]) -> np.ndarray:
    out = grads[0].copy()
    for g in grads[1:]:
        out += g
    return out


def close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    if tol == 0.0:
        return a.tobytes() == b.tobytes()
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    return bool(np.all(np.abs(a.astype(np.float64) - b) <= tol * scale))


def make_flats(groups: list[tuple[list, dict]], dtype: Any, seed: int, perturb: float = 0.0
               ) -> list[fm.FlatParams]:
    flats = []
    for k, (shapes, _) in enumerate(groups):
        arrays = initial(shapes, dtype, seed + k)
        flats.append(fm.FlatParams([a + perturb for a in arrays]))
    return flats


def params_of(flats: list, groups: list[tuple[list, dict]]) -> Any:
    if len(flats) == 1 and not groups[0][1]:
        return flats[0]
    return [{"params": f, **extra} for f, (_, extra) in zip(flats, groups)]


def trajectory(comm: Any, fails: Failures, label: str, name: str, hyper: dict, *,
               groups: list[tuple[list, dict]], dtype: Any, kind: str, reference: str,
               tol: float, shard: bool = True, options: dict | None = None,
               grad_scale: float = 1.0, scale: float = 1.0, steps: int = STEPS,
               poison: Callable[[int, list[np.ndarray]], None] | None = None) -> Any:
    """Run the sharded optimizer and a one-process reference side by side.

    ``reference``: ``"sum"`` (one process steps the sum with ``grad_scale * W``) or
    ``"mean"`` (one process steps the mean with ``grad_scale``). Returns the sharded
    optimizer, or None when it was refused (NotImplementedError, on every rank alike).
    """
    cls = getattr(fm, name)
    world, rank = comm.size, comm.rank
    options = options or {}
    # the non-root ranks start elsewhere: the broadcast must overwrite it
    flats = make_flats(groups, dtype, 7, perturb=float(rank))
    ref_flats = make_flats(groups, dtype, 7)
    try:
        opt = ShardedOptimizer(cls, params_of(flats, groups), comm, shard=shard,
                               **options, **hyper)
    except NotImplementedError as exc:
        fails.check(same_everywhere(comm, str(exc)), f"{label}: refusal differs by rank")
        return None
    ref = cls(params_of(ref_flats, groups), **options, **hyper)
    fails.check(all(a.data.tobytes() == b.data.tobytes() for a, b in zip(flats, ref_flats)),
                f"{label}: the parameters after construction differ from one process's")
    seen = []  # the parameters' digests after each step, compared across ranks at the end
    for t in range(1, steps + 1):
        sums = []
        for k, (f, rf) in enumerate(zip(flats, ref_flats)):
            grads = gradients(t * 10 + k, f.numel, world, dtype, kind, scale)
            if poison is not None:
                poison(t, grads)
            f.grad[:] = grads[rank]
            s = total(grads)
            sums.append(s)
            rf.grad[:] = s if reference == "sum" else (s / world).astype(dtype)
        norm = opt.step(grad_scale=grad_scale)
        ref_norm = ref.step(grad_scale=grad_scale * (world if reference == "sum" else 1))
        seen.append([digest(f.data) for f in flats])
        for k, (f, rf) in enumerate(zip(flats, ref_flats)):
            if not close(f.data, rf.data, tol):
                fails.append(f"{label}: step {t}, group {k}: max difference "
                             f"{float(np.max(np.abs(f.data.astype(float) - rf.data))):.3g}")
        fails.check((norm is None) == (ref_norm is None) and (
            norm is None or norm == ref_norm or abs(norm - ref_norm) <= TOL * abs(ref_norm)
            or (np.isnan(norm) and np.isnan(ref_norm))),
            f"{label}: step {t}: norm {norm} vs one process {ref_norm}")
        fails.check(opt.last_step_skipped == ref.last_step_skipped
                    and opt.skipped_steps == ref.skipped_steps
                    and opt.step_count == ref.step_count,
                    f"{label}: step {t}: skip bookkeeping differs")
        if not shard and world > 1:
            fails.check(all(f.grad.tobytes() == s.tobytes() for f, s in zip(flats, sums)),
                        f"{label}: shard=False leaves the sum in flat.grad")
    fails.check(same_everywhere(comm, seen), f"{label}: the replicas differ")
    return opt


def aligned(world: int) -> list[tuple[list, dict]]:
    """Shapes whose shard boundaries fall on tensor and row edges: 8 elements per rank."""
    return [([(2, 3), (2,)] * world, {})]


STRADDLING = [([(3, 5), (4, 3), (7,)], {})]  # 34 elements: shards cut tensors and rows


def masked(decayed: list, others: list, name: str) -> list[tuple[list, dict]]:
    """Two param groups as a weight-decay mask makes them (one FlatParams each); for a
    rule without weight decay (ND-Adam), two learning rates instead."""
    if name == "NDAdam":
        return [(decayed, {}), (others, {"lr": 0.05})]
    return [(decayed, {"weight_decay": 0.1}), (others, {"weight_decay": 0.0, "lr": 0.05})]


# -------------------------------------------------------------------- cases
def case_rules_exact(comm: Any, fails: Failures, _: str) -> None:
    """Every rule, float32, exact sums, shards on tensor edges: bit for bit, sharded and
    shard=False; and on the mean itself when W is 1 or 2."""
    world = comm.size
    for name, hyper in rules():
        label = f"{name}{hyper}"
        for shard in (True, False):
            trajectory(comm, fails, f"{label} shard={shard}", name, hyper,
                       groups=aligned(world), dtype=np.float32, kind="exact",
                       reference="sum", tol=0.0, shard=shard)
        if world in (1, 2):
            trajectory(comm, fails, f"{label} on the mean", name, hyper, groups=aligned(world),
                       dtype=np.float32, kind="exact", reference="mean", tol=0.0)


def case_rules_straddling(comm: Any, fails: Failures, _: str) -> None:
    """Every rule, float64, random gradients, shards cutting tensors and rows: the
    one-process trajectory on the mean gradient to 1e-12."""
    for name, hyper in rules():
        trajectory(comm, fails, f"{name}{hyper} straddling", name, hyper, groups=STRADDLING,
                   dtype=np.float64, kind="random", reference="mean", tol=TOL)


def case_uneven_and_empty_shards(comm: Any, fails: Failures, _: str) -> None:
    """Two elements over up to three ranks (DeepSpeed's split: 1, 1, 0), and 3 * W + 1
    elements (the remainder on the first ranks); state bytes per rank."""
    world, rank = comm.size, comm.rank
    for shapes in ([(2,)], [(3 * world + 1,)]):
        numel = int(np.prod(shapes[0]))
        groups = [(shapes, {})]
        opt = trajectory(comm, fails, f"AdamW {shapes}", "AdamW", {"lr": 0.1}, groups=groups,
                         dtype=np.float32, kind="exact", reference="sum", tol=0.0)
        start, stop = shard_ranges(numel, world)[rank]
        fails.check(opt.shards == [(start, stop)], f"{shapes}: shards {opt.shards}")
        expected = [numel // world + (1 if r < numel % world else 0) for r in range(world)]
        fails.check(comm.allgather_object(stop - start) == expected,
                    f"{shapes}: shard sizes are not DeepSpeed's split")
        fails.check(opt.state_nbytes == (stop - start) * 4 * 2,
                    f"{shapes}: state bytes {opt.state_nbytes} for a shard of {stop - start}")
        fails.check(sum(comm.allgather_object(opt.state_nbytes)) == numel * 4 * 2,
                    f"{shapes}: the ranks' state bytes do not add up to one process's")
        for name in ("LAMB", "NDAdam", "SWATS"):
            trajectory(comm, fails, f"{name} {shapes}", name, {}, groups=groups,
                       dtype=np.float64, kind="random", reference="mean", tol=TOL)
    nd = [([(1, 2), (3,)], {})]  # one weight vector of two elements, cut at W >= 2
    trajectory(comm, fails, "NDAdam one short vector", "NDAdam", {}, groups=nd,
               dtype=np.float64, kind="random", reference="mean", tol=TOL)


def case_groups_masks_schedule_scale(comm: Any, fails: Failures, _: str) -> None:
    """Two param groups (a weight-decay mask: one FlatParams each), a schedule, a loss
    scale, per-element clipping."""
    world = comm.size
    hyper = {"lr": fm.schedules.Cosine(0.1, 4)}
    groups = masked([(2, 3)] * world + [(3, 4)], [(3,), (5,)], "AdamW")
    trajectory(comm, fails, "AdamW groups", "AdamW", hyper, groups=groups, dtype=np.float32,
               kind="exact", reference="sum", tol=0.0, grad_scale=4.0,
               options={"clip_value": 0.5})
    for name in ("LAMB", "SWATS", "NDAdam"):
        trajectory(comm, fails, f"{name} groups", name, hyper,
                   groups=masked([(2, 3)] * world + [(3, 4)], [(3,), (5,)], name),
                   dtype=np.float64, kind="random", reference="mean", tol=TOL, grad_scale=8.0)


def case_global_clipping(comm: Any, fails: Failures, _: str) -> None:
    """max_grad_norm on the global norm of the mean gradient (the returned norms too);
    finite float64 gradients whose squares overflow are measured without overflow."""
    for name in ("AdamW", "LAMB"):
        trajectory(comm, fails, f"{name} clipped", name, {}, groups=STRADDLING,
                   dtype=np.float64, kind="random", reference="mean", tol=TOL, scale=10.0,
                   options={"max_grad_norm": 1.0})
    # shard=False: the reference's own norm over the summed buffer, bit for bit
    trajectory(comm, fails, "AdamW clipped shard=False", "AdamW", {}, groups=STRADDLING,
               dtype=np.float32, kind="exact", reference="sum", tol=0.0, shard=False,
               scale=10.0, options={"max_grad_norm": 1.0})
    trajectory(comm, fails, "AdamW huge gradients", "AdamW", {}, groups=STRADDLING,
               dtype=np.float64, kind="random", reference="mean", tol=TOL, scale=1e200,
               options={"max_grad_norm": 1.0, "nonfinite": "skip"})


def case_nonfinite(comm: Any, fails: Failures, _: str) -> None:
    """A NaN or Inf on the last rank only: every rank skips the step (or raises the same
    error), as one process on the mean gradient does."""
    world = comm.size

    def nan_at_step_2(t: int, grads: list[np.ndarray]) -> None:
        if t == 2:
            grads[-1][3] = np.nan
        if t == 4:
            grads[-1][0] = np.inf

    for shard in (True, False):
        for name, dtype, kind, reference, tol in (
                ("AdamW", np.float32, "exact", "sum", 0.0),
                ("LAMB", np.float64, "random", "mean", TOL)):
            opt = trajectory(comm, fails, f"{name} skip shard={shard}", name, {},
                             groups=STRADDLING, dtype=dtype, kind=kind, reference=reference,
                             tol=tol, shard=shard, options={"nonfinite": "skip"},
                             poison=nan_at_step_2)
            fails.check(opt.skipped_steps == 2 and opt.step_count == STEPS - 2,
                        f"{name} skip: {opt.skipped_steps} skipped, {opt.step_count} taken")
        flat = fm.FlatParams(initial(STRADDLING[0][0], np.float32, 1))
        opt = ShardedOptimizer(fm.AdamW, flat, comm, shard=shard, nonfinite="raise")
        before = flat.data.copy()
        flat.grad[:] = 1.0
        if comm.rank == world - 1:
            flat.grad[-1] = np.nan
        try:
            opt.step()
            message = None
        except FloatingPointError as exc:
            message = str(exc)
        fails.check(message is not None and same_everywhere(comm, message),
                    f"nonfinite='raise' shard={shard}: not the same error everywhere "
                    f"({message!r})")
        fails.check(flat.data.tobytes() == before.tobytes() and opt.step_count == 0,
                    f"nonfinite='raise' shard={shard}: something changed")


def _refusal(comm: Any, build: Callable[[], Any]) -> tuple[str, str] | None:
    try:
        build()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


def case_mismatches_refused(comm: Any, fails: Failures, _: str) -> None:
    """A rank that disagrees: the same error on every rank, no hang."""
    world, rank = comm.size, comm.rank
    last = rank == world - 1 and world > 1
    shapes = [(3, 2), (4,)]

    def flat(dtype: Any = np.float32, extra: int = 0) -> fm.FlatParams:
        return fm.FlatParams(initial(shapes[:1] + [(4 + extra,)], dtype, 0))

    builds = {
        "lr": (lambda: ShardedOptimizer(fm.AdamW, flat(), comm, lr=0.002 if last else 0.001),
               "ValueError", "'lr'"),
        "shapes": (lambda: ShardedOptimizer(fm.AdamW, flat(extra=int(last)), comm),
                   "ValueError", "shapes"),
        "dtype": (lambda: ShardedOptimizer(fm.AdamW, flat(np.float64 if last else np.float32),
                                           comm), "ValueError", "dtype"),
        "optimizer": (lambda: ShardedOptimizer(fm.Adam if last else fm.AdamW, flat(), comm),
                      "ValueError", "optimizer"),
        "shard": (lambda: ShardedOptimizer(fm.AdamW, flat(), comm, shard=not last),
                  "ValueError", "shard"),
        "options": (lambda: ShardedOptimizer(fm.AdamW, flat(), comm,
                                             max_grad_norm=1.0 if last else None),
                    "ValueError", "max_grad_norm"),
        "a list of arrays on one rank": (
            lambda: ShardedOptimizer(fm.AdamW, list(flat().params) if last else flat(), comm),
            "TypeError", "FlatParams"),
    }
    for what, (build, kind, word) in builds.items():
        got = _refusal(comm, build)
        if world == 1:
            fails.check(what != "a list of arrays on one rank" or got is None,
                        f"{what}: refused at W=1: {got}")
            continue
        fails.check(got is not None and got[0] == kind and word in got[1],
                    f"{what}: expected a {kind} naming {word}, got {got}")
        fails.check(same_everywhere(comm, got), f"{what}: not the same error on every rank")
    # the same invalid value on every rank: the class's own error, everywhere
    got = _refusal(comm, lambda: ShardedOptimizer(fm.AdamW, flat(), comm, lr=-1.0))
    fails.check(got is not None and got[0] == "ValueError" and "lr" in got[1]
                and same_everywhere(comm, got), f"lr=-1: {got}")


CHECKPOINT_RULES = [("AdamW", {"weight_decay": 0.1}), ("LAMB", {}),
                    ("SWATS", {"switch_tol": 10.0}), ("NDAdam", {})]
CHECKPOINT_AT = 3  # the step after which the checkpoints are written

def checkpoint_groups(name: str) -> list[tuple[list, dict]]:
    return masked([(3, 5), (7,)], [(4, 3)], name)


def _mean_gradient(t: int, k: int, n: int, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s gradient whose mean over ``world`` ranks is the same at every
    world size: G_t plus noise that sums to zero over the ranks (up to round-off)."""
    base = np.random.default_rng([t, k, n, 99]).standard_normal(n)
    noise = [np.random.default_rng([t, k, n, r]).standard_normal(n) for r in range(world)]
    mean_noise = total(noise) / world
    return base + noise[rank] - mean_noise


def _uninterrupted(name: str, hyper: dict) -> list[list[np.ndarray]]:
    """One process on the mean gradients: the parameters after each step."""
    flats = make_flats(checkpoint_groups(name), np.float64, 3)
    opt = getattr(fm, name)(params_of(flats, checkpoint_groups(name)), **hyper)
    out = []
    for t in range(1, STEPS + 2):
        for k, f in enumerate(flats):
            f.grad[:] = np.random.default_rng([t, k, f.numel, 99]).standard_normal(f.numel)
        opt.step()
        out.append([f.data.copy() for f in flats])
    return out


def _continue(comm: Any, fails: Failures, label: str, opt: Any, flats: list,
              expected: list, first: int) -> None:
    for t in range(first, STEPS + 2):
        for k, f in enumerate(flats):
            f.grad[:] = _mean_gradient(t, k, f.numel, comm.rank, comm.size)
        opt.step()
        for k, f in enumerate(flats):
            if not close(f.data, expected[t - 1][k], TOL):
                fails.append(f"{label}: step {t}, group {k} differs from the uninterrupted "
                             "run")
                return
    fails.check(replicas_agree(comm, flats), f"{label}: replicas differ")


def _plain_view(path: str, name: str, hyper: dict) -> tuple[dict, list[np.ndarray]]:
    """What one process finds in a checkpoint: its state dict and parameters."""
    flats = make_flats(checkpoint_groups(name), np.float64, 11)
    plain = getattr(fm, name)(params_of(flats, checkpoint_groups(name)), **hyper)
    plain.load(path)
    return plain.state_dict(), [f.data.copy() for f in flats]


def _same_state(a: dict, b: dict) -> bool:
    if {k: v for k, v in a.items() if k != "state"} != {
            k: v for k, v in b.items() if k != "state"}:
        return False
    return all(set(x) == set(y) and all(x[n].tobytes() == y[n].tobytes() for n in x)
               for x, y in zip(a["state"], b["state"]))


def checkpoint_roundtrips(comm: Any, fails: Failures, folder: str) -> None:
    """Save at this world size; load every checkpoint saved at other world sizes (and
    by one process); each continues on the uninterrupted trajectory."""
    world = comm.size
    tag = f"W{world}" if type(comm).__name__ != "SelfCommunicator" else "self"
    for name, hyper in CHECKPOINT_RULES:
        expected = _uninterrupted(name, hyper)
        if world == 1 and comm.rank == 0 and tag == "W1":  # one process's own checkpoint
            flats = make_flats(checkpoint_groups(name), np.float64, 3)
            plain = getattr(fm, name)(params_of(flats, checkpoint_groups(name)), **hyper)
            for t in range(1, CHECKPOINT_AT + 1):
                for k, f in enumerate(flats):
                    f.grad[:] = np.random.default_rng([t, k, f.numel, 99]).standard_normal(
                        f.numel)
                plain.step()
            plain.save(os.path.join(folder, f"{name}-plain.npz"))
        # train to CHECKPOINT_AT here, save
        flats = make_flats(checkpoint_groups(name), np.float64, 3)
        opt = ShardedOptimizer(getattr(fm, name), params_of(flats, checkpoint_groups(name)), comm,
                               **hyper)
        for t in range(1, CHECKPOINT_AT + 1):
            for k, f in enumerate(flats):
                f.grad[:] = _mean_gradient(t, k, f.numel, comm.rank, world)
            opt.step()
        path = os.path.join(folder, f"{name}-{tag}.npz")
        opt.save(path)
        everywhere = opt.state_dict(root=None)
        on_root = opt.state_dict(root=0)  # (collective: every rank calls it)
        fails.check((on_root is None) == (comm.rank != 0), f"{name}: state_dict(root=0) on "
                    f"rank {comm.rank} gave {type(on_root).__name__}")
        fails.check(_same_state(everywhere, on_root if comm.rank == 0 else everywhere),
                    f"{name}: state_dict(root=None) differs")
        sd, params = _plain_view(path, name, hyper)
        fails.check(_same_state(sd, everywhere), f"{name}-{tag}: one process reads another "
                    "state from the checkpoint")
        fails.check(all(p.tobytes() == f.data.tobytes() for p, f in zip(params, flats)),
                    f"{name}-{tag}: the checkpoint's parameters differ")
        _continue(comm, fails, f"{name}-{tag} continued", opt, flats, expected,
                  CHECKPOINT_AT + 1)
        # every other checkpoint of this rule, loaded here
        found = sorted(f for f in os.listdir(folder) if f.startswith(f"{name}-")
                       and f.endswith(".npz") and f != f"{name}-{tag}.npz")
        found = comm.allgather_object(found)[0]
        for file in found:
            flats = make_flats(checkpoint_groups(name), np.float64, 5 + comm.rank)
            opt = ShardedOptimizer(getattr(fm, name), params_of(flats, checkpoint_groups(name)),
                                   comm, **hyper)
            opt.load(os.path.join(folder, file))
            sd, params = _plain_view(os.path.join(folder, file), name, hyper)
            fails.check(_same_state(opt.state_dict(root=None), sd),
                        f"{file} loaded at {tag}: another state")
            fails.check(all(p.tobytes() == f.data.tobytes() for p, f in zip(params, flats)),
                        f"{file} loaded at {tag}: other parameters")
            _continue(comm, fails, f"{file} loaded at {tag}", opt, flats, expected,
                      CHECKPOINT_AT + 1)


def case_checkpoints(comm: Any, fails: Failures, folder: str) -> None:
    checkpoint_roundtrips(comm, fails, folder)
    # refusals: another class's file, a damaged file, a missing file; the same on every rank
    groups = checkpoint_groups("LAMB")
    flats = make_flats(groups, np.float64, 3)
    opt = ShardedOptimizer(fm.LAMB, params_of(flats, groups), comm)
    before = [f.data.copy() for f in flats]
    damaged = os.path.join(folder, f"damaged-W{comm.size}.npz")
    if comm.rank == 0:
        with open(os.path.join(folder, f"AdamW-W{comm.size}.npz"), "rb") as src:
            data = src.read()
        with open(damaged, "wb") as dst:
            dst.write(data[: len(data) // 2])
    comm.allgather_object(None)  # (the file is written before any rank reads it)
    for file, kind in ((f"AdamW-W{comm.size}.npz", CheckpointError),
                       (damaged, CheckpointError), ("missing.npz", FileNotFoundError)):
        try:
            opt.load(os.path.join(folder, file))
            got = None
        except Exception as exc:
            got = (type(exc).__name__, str(exc))
        fails.check(got is not None and got[0] == kind.__name__, f"load({file}): got {got}")
        fails.check(same_everywhere(comm, got), f"load({file}): not the same error everywhere")
    fails.check(all(a.tobytes() == f.data.tobytes() for a, f in zip(before, flats))
                and opt.step_count == 0, "a refused load changed something")


CASES: dict[str, Callable[[Any, Failures, str], None]] = {
    name[len("case_"):]: fn for name, fn in sorted(globals().items())
    if name.startswith("case_")
}


def main() -> None:
    from mpi4py import MPI

    out, folder = sys.argv[1], sys.argv[2]
    only = sys.argv[3:]
    fm.config.background_compile = False
    comm = fm.distributed.as_communicator(MPI.COMM_WORLD)
    run_cases(comm, {n: f for n, f in CASES.items() if not only or n in only}, out, folder)


def run_cases(comm: Any, cases: dict[str, Any], out: str, folder: str) -> None:
    """Run each case on every rank; rank 0 writes every rank's failures to ``out`` (JSON).
    A case that raises is reported and the next one goes on (if no rank hangs)."""
    results: dict[str, Any] = {}
    for name, fn in cases.items():
        fails = Failures()
        start = time.perf_counter()
        try:
            fn(comm, fails, folder)
        except Exception:  # reported, and the next case goes on (if no rank hangs)
            fails.append(traceback.format_exc())
        everyone = comm.allgather_object(list(fails))
        results[name] = {
            "failures": [f"rank {r}: {f}" for r, mine in enumerate(everyone) for f in mine],
            "seconds": round(time.perf_counter() - start, 2),
        }
    if comm.rank == 0:
        with open(out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
