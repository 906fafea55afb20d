"""Per-step host scalars that several rules share, computed once in float64.

Each rule's class combines these into the scalars its rule function takes (by name,
see ``Optimizer._scalars``); the kernels never compute them. The helpers a class calls
from ``_scalars`` are marked :func:`~._specialize.inline`: step() runs a copy of
``_scalars`` with their expressions in place of the calls.
"""

from __future__ import annotations

from ._specialize import inline

__all__ = ["clip_coefficient", "weight_decay_terms", "bias_corrections"]


def clip_coefficient(max_grad_norm: float, norm: float) -> float:
    """The factor that scales the gradients to a global norm of at most ``max_grad_norm``
    (as ``torch.nn.utils.clip_grad_norm_``: ``max_norm / (norm + 1e-6)``, capped at 1)."""
    return min(1.0, max_grad_norm / (norm + 1e-6))


@inline
def weight_decay_terms(weight_decay: float, lr: float, decoupled: bool) -> tuple[float, float]:
    """``(weight_decay, decay_factor)`` for a rule's two decay scalars.

    L2 decay (``decoupled=False``) adds ``weight_decay * param`` to the gradient and
    keeps ``param`` as it is (factor 1); decoupled decay (Loshchilov & Hutter, AdamW)
    adds nothing to the gradient and multiplies ``param`` by ``1 - lr * weight_decay``.
    """
    return (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)


@inline
def bias_corrections(beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """Adam's ``(1 - beta1**step, 1 - beta2**step)`` for step ``step`` (1-based)."""
    return 1.0 - beta1**step, 1.0 - beta2**step
