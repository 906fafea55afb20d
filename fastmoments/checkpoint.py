"""Checkpoints: an optimizer's state in one ``.npz`` file, written atomically, read safely.

Layout of a checkpoint (a plain NumPy ``.npz``; no entry is ever a pickle):

- ``meta``: a 0-d unicode array holding one JSON object: ``format``
  (``"fastmoments-checkpoint"``), ``format_version``, ``optimizer`` (the class
  name), ``step_count``, ``skipped_steps``, ``state_dict_version``,
  ``param_groups`` (hyperparameters and sizes, as in
  :meth:`~fastmoments._base.Optimizer.state_dict`), ``host_state``,
  ``state_names`` (the buffer names of each group) and ``num_params`` (the number
  of ``param.<i>`` entries; 0 when the parameters were not saved);
- ``state.<group>.<name>``: the flat state buffer ``name`` of param group ``group``;
- ``param.<i>``: parameter ``i`` (across groups, in order), unless saved with
  ``params=False``.

:func:`save` writes a temporary file in the target's folder, flushes and fsyncs it,
then renames it over the target (and fsyncs the folder), so a process killed at any
moment leaves either the old or the new checkpoint, never a mix or a torn file.
:func:`load` reads with ``allow_pickle=False`` (a checkpoint can never run code),
checks every entry's name, shape and dtype, the class and the format version before
touching the optimizer, and changes nothing when it refuses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from .optim._state import STATE_DICT_VERSION, copy_into, plan_load, to_host

if TYPE_CHECKING:  # pragma: no cover
    from .optim.base import Optimizer

__all__ = ["save", "load", "CheckpointError", "FORMAT", "FORMAT_VERSION", "to_arrays",
           "write_atomic", "read"]

FORMAT = "fastmoments-checkpoint"
FORMAT_VERSION = 1

_META = "meta"
_META_MAX_BYTES = 1 << 24  # 16 MiB of JSON is far beyond any real optimizer's metadata
_HEADER_SLACK = 1 << 16  # an .npy header is at most 64 KiB (format 2.0/3.0)
_STATE_NAME = re.compile(r"state\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)\Z")


class CheckpointError(ValueError):
    """A file that is not a valid checkpoint for this optimizer (truncated, foreign, unsafe)."""


# ------------------------------------------------------------------- save
def save(optimizer: Optimizer, path: str | os.PathLike[str], *, params: bool = True) -> None:
    """Write the optimizer's state (and, by default, its parameters) to ``path`` atomically.

    Parameters
    ----------
    optimizer
        Any fastmoments optimizer.
    path
        The file to write (used as given: no ``.npz`` suffix is added). Its folder
        must exist.
    params
        Also save the parameter arrays, so that :func:`load` restores the whole
        training state from one file (a model file and an optimizer file written
        separately can be torn apart by a crash between the two writes).

    Notes
    -----
    The file is first written to a temporary file in the same folder, flushed and
    fsynced, then renamed over ``path`` (an atomic replacement on POSIX and
    Windows), and the folder is fsynced. A process killed at any moment leaves the
    old checkpoint or the new one; after an operating-system crash the renamed
    file's data is on disk. A new file gets mode 0o644; an existing one keeps its
    mode.
    """
    write_atomic(path, _collect(optimizer, params))


def write_atomic(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` file at ``path`` atomically (see :func:`save`)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _collect(optimizer: Optimizer, params: bool) -> dict[str, np.ndarray]:
    all_params = [p for group in optimizer._groups for p in group.params]
    return to_arrays(optimizer.state_dict(), optimizer.skipped_steps,
                     all_params if params else None, type(optimizer).__name__)


def to_arrays(sd: dict[str, Any], skipped_steps: int, all_params: list[Any] | None,
              owner: str) -> dict[str, np.ndarray]:
    """The entries of a checkpoint file: a state dict, the number of skipped steps and
    the parameters (``None``: not saved), for :func:`write_atomic`."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": sd["optimizer"],
        "state_dict_version": sd["format_version"],
        "step_count": sd["step_count"],
        "skipped_steps": int(skipped_steps),
        "param_groups": sd["param_groups"],
        "host_state": sd["host_state"],
        "state_names": [list(buffers) for buffers in sd["state"]],
        "num_params": len(all_params) if all_params is not None else 0,
    }
    try:
        text = json.dumps(meta, allow_nan=True)
    except TypeError as exc:
        raise TypeError(
            f"{owner}.save: a hyperparameter cannot be stored in a "
            f"checkpoint ({exc}); only numbers, booleans, strings and tuples of them can"
        ) from None
    arrays: dict[str, np.ndarray] = {_META: np.array(text)}
    for k, buffers in enumerate(sd["state"]):
        for name, buf in buffers.items():
            arrays[f"state.{k}.{name}"] = buf
    for i, p in enumerate(all_params or ()):
        arrays[f"param.{i}"] = _storable(p if isinstance(p, np.ndarray) else to_host(p))
    return arrays


def _storable(a: np.ndarray) -> np.ndarray:
    """``a`` as ``np.save`` can store it without a pickle: an ``ml_dtypes.bfloat16``
    array (which NumPy would write as opaque bytes) as its ``uint16`` patterns."""
    return a.view(np.uint16) if a.dtype.kind == "V" and a.dtype.itemsize == 2 else a


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    flags = getattr(os, "O_DIRECTORY", 0) | os.O_RDONLY
    try:
        fd = os.open(directory, flags)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------- load
def load(optimizer: Optimizer, path: str | os.PathLike[str], *, params: bool = True) -> None:
    """Restore a checkpoint written by :func:`save`; nothing changes unless all of it is valid.

    Parameters
    ----------
    optimizer
        An optimizer of the class that saved the checkpoint, over parameters of the
        same shapes and dtypes, in the same param groups.
    path
        The checkpoint file.
    params
        Restore the parameters too (in place), when the checkpoint holds them.

    Raises
    ------
    CheckpointError
        (a ``ValueError``) when the file is not a valid checkpoint for this
        optimizer: truncated or corrupted, not an ``.npz``, a pickle, written by
        another class or format version, or holding arrays of other names, shapes
        or dtypes. The optimizer and its parameters are then unchanged.
    FileNotFoundError
        When ``path`` does not exist.
    """
    owner = type(optimizer).__name__
    where = f"{owner}.load({os.fspath(path)!r})"
    all_params = [p for group in optimizer._groups for p in group.params]
    # (reduced-precision groups: state stored in fewer or more bytes than the params,
    # converted on load; the size bound of each entry is float64's)
    sd, skipped_steps, entries = read(path, owner,
                                      [(g.numel, g.dtype if g.precision is None else np.float64)
                                       for g in optimizer._groups],
                                      all_params, params)
    try:
        plan_load(optimizer, sd)  # validation only: raises before anything changes
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    # Everything is valid: apply. Nothing below can fail on a validated input.
    optimizer.load_state_dict(sd)
    optimizer.skipped_steps = skipped_steps
    for i, p in enumerate(all_params if entries else ()):
        copy_into(p, entries[f"param.{i}"])


def read(path: str | os.PathLike[str], owner: str, groups: list[tuple[int, np.dtype]],
         all_params: list[Any], params: bool = True
         ) -> tuple[dict[str, Any], int, dict[str, np.ndarray]]:
    """Read and check a checkpoint for an optimizer of class ``owner`` whose param groups
    have ``groups`` = ``(numel, dtype)`` and whose parameters are ``all_params``.

    Returns the state dict (not yet checked against an optimizer: see
    :func:`~fastmoments.optim._state.plan_load`), the number of skipped steps, and the
    ``param.<i>`` entries when ``params`` and the file holds them (else ``{}``).
    Raises as :func:`load`.
    """
    path = os.fspath(path)
    where = f"{owner}.load({path!r})"
    try:
        meta, entries = _read(path, owner, groups, all_params, params, where)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except CheckpointError:
        raise
    except Exception as exc:  # anything a damaged or hostile file can raise while parsed
        raise CheckpointError(
            f"{where}: not a readable fastmoments checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    sd = {
        "format_version": meta["state_dict_version"],
        "optimizer": meta["optimizer"],
        "step_count": meta["step_count"],
        "param_groups": meta["param_groups"],
        "state": [
            {name: entries[f"state.{k}.{name}"] for name in names}
            for k, names in enumerate(meta["state_names"])
        ],
        "host_state": meta["host_state"],
    }
    restore = params and meta["num_params"] > 0
    return sd, meta["skipped_steps"], {
        name: a for name, a in entries.items() if restore and name.startswith("param.")}


def _read(
    path: str, owner: str, groups: list[tuple[int, np.dtype]], all_params: list[Any],
    params: bool, where: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":
        if magic == b"":
            raise CheckpointError(f"{where}: the file is empty")
        raise CheckpointError(f"{where}: not an .npz checkpoint (no zip header)")
    with np.load(path, allow_pickle=False) as npz:
        zip_file = npz.zip
        names = set(npz.files)
        if _META not in names:
            raise CheckpointError(f"{where}: no '{_META}' entry; not a fastmoments checkpoint")
        if _declared_size(zip_file, _META) > _META_MAX_BYTES:
            raise CheckpointError(f"{where}: the '{_META}' entry is implausibly large")
        raw = npz[_META]
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise CheckpointError(
                f"{where}: the '{_META}' entry should be a 0-d unicode array, got "
                f"dtype {raw.dtype} and shape {raw.shape}"
            )
        meta = json.loads(str(raw))
        _check_meta(meta, owner, where)
        expected: dict[str, int] = {}  # entry -> its size in bytes for this optimizer
        if len(meta["state_names"]) != len(groups):
            raise CheckpointError(
                f"{where}: the checkpoint has {len(meta['state_names'])} param groups, the "
                f"optimizer has {len(groups)}"
            )
        pairs = zip(groups, meta["state_names"], strict=True)
        for k, ((numel, dtype), state_names) in enumerate(pairs):
            for name in state_names:
                expected[f"state.{k}.{name}"] = numel * np.dtype(dtype).itemsize
        if meta["num_params"] not in (0, len(all_params)):
            raise CheckpointError(
                f"{where}: the checkpoint holds {meta['num_params']} parameters, the "
                f"optimizer has {len(all_params)}"
            )
        for i in range(meta["num_params"]):
            p = all_params[i]
            expected[f"param.{i}"] = int(p.size) * np.dtype(p.dtype).itemsize
        extra = sorted(names - set(expected) - {_META})
        missing = sorted(set(expected) - names)
        if extra or missing:
            raise CheckpointError(
                f"{where}: unexpected entries {extra[:5]} / missing entries {missing[:5]}"
            )
        wanted = [n for n in expected if n.startswith("state.") or params]
        entries: dict[str, np.ndarray] = {}
        for name in wanted:
            if _declared_size(zip_file, name) > expected[name] + _HEADER_SLACK:
                raise CheckpointError(f"{where}: entry {name!r} is larger than expected")
            entries[name] = npz[name]  # reads the whole entry: zipfile checks its CRC-32
    for i in range(meta["num_params"] if params else 0):
        p, a = all_params[i], entries[f"param.{i}"]
        if a.dtype == np.uint16 and _storable(np.empty(0, p.dtype)).dtype == np.uint16:
            a = entries[f"param.{i}"] = a.view(p.dtype)  # bfloat16 saved as its patterns
        if tuple(a.shape) != tuple(p.shape) or a.dtype != np.dtype(p.dtype):
            raise CheckpointError(
                f"{where}: param.{i} has shape {tuple(a.shape)} and dtype {a.dtype}, the "
                f"optimizer's params[{i}] has shape {tuple(p.shape)} and dtype {p.dtype}"
            )
    return meta, entries


def _declared_size(zip_file: zipfile.ZipFile, name: str) -> int:
    return zip_file.getinfo(f"{name}.npy").file_size


def _check_meta(meta: Any, owner: str, where: str) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a fastmoments checkpoint (no format tag)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format_version {version!r} is not supported by this "
            f"fastmoments (it reads version {FORMAT_VERSION})"
        )
    if meta.get("optimizer") != owner:
        raise CheckpointError(
            f"{where}: the checkpoint was saved by {meta.get('optimizer')!r}, cannot load it "
            f"into {owner}"
        )
    keys = ("state_dict_version", "step_count", "skipped_steps", "param_groups", "host_state",
            "state_names", "num_params")
    missing = [key for key in keys if key not in meta]
    if missing:
        raise CheckpointError(f"{where}: the metadata lacks {missing}")
    if meta["state_dict_version"] != STATE_DICT_VERSION:
        raise CheckpointError(
            f"{where}: state_dict_version {meta['state_dict_version']!r} is not supported "
            f"(expected {STATE_DICT_VERSION})"
        )
    for key in ("step_count", "skipped_steps", "num_params"):
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{where}: {key} must be an integer >= 0, got {value!r}")
    names = meta["state_names"]
    if not isinstance(names, list) or not all(
        isinstance(group, list) and all(isinstance(n, str) and _STATE_NAME.match(f"state.0.{n}")
                                        for n in group)
        for group in names
    ):
        raise CheckpointError(f"{where}: state_names should be lists of buffer names")
    for key in ("param_groups", "host_state"):
        if not isinstance(meta[key], list) or not all(isinstance(g, dict) for g in meta[key]):
            raise CheckpointError(f"{where}: {key} should be a list of dicts")
    for k, host in enumerate(meta["host_state"]):
        for name, value in host.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or (
                isinstance(value, float) and math.isnan(value)
            ):
                raise CheckpointError(
                    f"{where}: host_state[{k}][{name!r}] should be a number, got {value!r}"
                )
