"""fastmoments for torch users: a ``torch.optim.Optimizer`` per rule, and flat modules.

``import fastmoments.torch as fmt`` (this imports torch; ``import fastmoments`` never
does), then use ``fmt.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)`` where
``torch.optim.AdamW`` was: ``loss.backward(); opt.step(); opt.zero_grad()``, with
``torch.optim.lr_scheduler``, ``torch.amp.GradScaler`` and ``state_dict()`` in torch's
format. :func:`flatten_` puts a module's parameters and gradients in one buffer per
dtype and device, so that a step over the whole model is one kernel call. float16 and
bfloat16 CPU parameters are stepped in float32 (``master_weights``, ``state_dtype``);
``state_dtype="bfloat16"`` or ``"int8"`` stores the state in fewer bits.

The classes (one per rule in :data:`fastmoments.__all__`: ``SGD``, ``Adagrad``,
``RMSprop``, ``Adadelta``, ``Adam``, ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam``,
``Yogi``, ``AdaBelief``, ``Lion``, ``LAMB``, ``NDAdam``, ``SWATS``, and any rule added
later) are generated from that list; see :mod:`fastmoments.torch._rules`.
"""

from __future__ import annotations

from typing import Any

try:
    import torch  # the real torch (absolute import), not this package
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fastmoments.torch needs PyTorch: pip install torch") from exc

from ._flat import flatten_
from ._optimizer import Optimizer
from ._rules import TORCH_RULES, make_rule_classes

_CLASSES = make_rule_classes()
globals().update(_CLASSES)

#: the rule classes, by name, in fastmoments.__all__'s order
RULES: tuple[str, ...] = tuple(_CLASSES)

__all__ = ["Optimizer", "flatten_", "RULES", "TORCH_RULES", *RULES]


def __getattr__(name: str) -> Any:  # pragma: no cover - only for a helpful error
    raise AttributeError(f"module 'fastmoments.torch' has no attribute {name!r} (the rules "
                         f"are {', '.join(RULES)}; torch {torch.__version__})")
