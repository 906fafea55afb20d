"""Helpers that build param groups (weight-decay masks)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .flat import FlatParams
from .optim._checks import is_number

__all__ = ["decay_mask_groups"]


def decay_mask_groups(
    params: Sequence[Any] | Mapping[str, Any],
    weight_decay: float,
    mask: None | Sequence[bool] | Mapping[str, bool] | Callable[..., bool] = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Split parameters into a decayed and an undecayed param group.

    Parameters
    ----------
    params
        The parameter arrays, or a mapping ``name -> array`` (e.g.
        ``{n: p.detach().numpy() for n, p in model.named_parameters()}``).
    weight_decay
        The decay of the decayed group (the other gets 0).
    mask
        Which parameters decay. ``None`` (default): those with ``ndim >= 2``
        (weight matrices and filters, not biases, norm gains or other vectors). A
        sequence of bools (one per parameter), a mapping ``name -> bool``, or a
        callable: ``mask(array)``, or ``mask(name, array)`` when ``params`` is a
        mapping (e.g. ``lambda n, p: p.ndim >= 2 and "norm" not in n``).
    **options
        Other hyperparameters for both groups (e.g. ``lr=...``).

    Returns
    -------
    list of dict
        ``[{"params": decayed, "weight_decay": weight_decay, ...}, {"params":
        others, "weight_decay": 0.0, ...}]``, each keeping the parameters' order; a
        group with no parameter is left out.

    Notes
    -----
    The optimizer then expects gradients in the order of its groups: decayed
    parameters first. ``[p for g in groups for p in g["params"]]`` is that order.
    A FlatParams cannot be split (a group is one buffer): build one FlatParams per
    group instead.

    Examples
    --------
    >>> import numpy as np, fastmoments as fm
    >>> w, b = np.ones((3, 2)), np.zeros(3)
    >>> groups = fm.extra.decay_mask_groups([w, b], weight_decay=0.1)
    >>> [len(g["params"]) for g in groups], [g["weight_decay"] for g in groups]
    ([1, 1], [0.1, 0.0])
    >>> opt = fm.AdamW(groups, lr=1e-3)
    """
    if isinstance(params, FlatParams):
        raise TypeError("decay_mask_groups: a FlatParams cannot be split into groups; build "
                        "one FlatParams for the decayed arrays and one for the others")
    if not is_number(weight_decay) or not weight_decay >= 0 or not math.isfinite(weight_decay):
        raise ValueError(f"decay_mask_groups: weight_decay must be a finite number >= 0, got "
                         f"{weight_decay!r}")
    named = isinstance(params, Mapping)
    names = list(params) if named else [None] * len(params)
    arrays = list(params.values()) if named else list(params)
    if mask is None:
        flags = [np.ndim(p) >= 2 for p in arrays]
    elif callable(mask):
        flags = [mask(n, p) if named else mask(p) for n, p in zip(names, arrays, strict=True)]
    elif isinstance(mask, Mapping):
        if not named:
            raise TypeError("decay_mask_groups: a mask mapping needs params given as a "
                            "mapping name -> array")
        missing = [n for n in names if n not in mask]
        if missing:
            raise ValueError(f"decay_mask_groups: mask has no entry for {missing}")
        flags = [mask[n] for n in names]
    else:
        flags = list(mask)
        if len(flags) != len(arrays):
            raise ValueError(f"decay_mask_groups: mask has {len(flags)} entries for "
                             f"{len(arrays)} parameters")
    for n, f in zip(names, flags, strict=True):
        if not isinstance(f, (bool, np.bool_)):
            where = f" for {n!r}" if n is not None else ""
            raise TypeError(f"decay_mask_groups: mask values must be bools, got {f!r}{where}")
    decayed = [p for p, f in zip(arrays, flags, strict=True) if f]
    others = [p for p, f in zip(arrays, flags, strict=True) if not f]
    groups = []
    if decayed:
        groups.append({"params": decayed, **options, "weight_decay": float(weight_decay)})
    if others:
        groups.append({"params": others, **options, "weight_decay": 0.0})
    if not groups:
        raise ValueError("decay_mask_groups: got no parameters")
    return groups
