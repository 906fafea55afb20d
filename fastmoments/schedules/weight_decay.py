"""Weight decay from its normalized value (Loshchilov & Hutter)."""

from __future__ import annotations

import math

from ._base import _nonneg, _pos_int, _positive

__all__ = ["normalized_weight_decay"]


def normalized_weight_decay(
    lambda_norm: float, batch_size: int, num_train_points: int, num_epochs: float
) -> float:
    r"""Weight decay from its normalized value (Loshchilov & Hutter).

    .. math::

        \lambda = \lambda_{\mathrm{norm}} \sqrt{\frac{b}{B\,T}}

    with :math:`b` the batch size, :math:`B` the number of training points and
    :math:`T` the number of epochs, so that the total decay applied over training
    (about :math:`\lambda B T / b` steps) does not depend on the training budget.

    Parameters
    ----------
    lambda_norm : float
        Normalized weight decay :math:`\lambda_{\mathrm{norm}}`, non-negative
        (the paper finds 0.025 to 0.05 good for AdamW on CIFAR-10).
    batch_size : int
        Batch size :math:`b`, a positive integer.
    num_train_points : int
        Number of training points :math:`B`, a positive integer.
    num_epochs : float
        Number of epochs :math:`T` (per restart cycle with SGDR), positive.

    Returns
    -------
    float
        The weight decay :math:`\lambda` to pass to the optimizer.

    References
    ----------
    I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization",
    ICLR 2019 (Appendix B.1).

    Examples
    --------
    >>> normalized_weight_decay(0.05, batch_size=100, num_train_points=50_000,
    ...                         num_epochs=20)
    0.0005
    """
    lam = _nonneg("lambda_norm", lambda_norm)
    b = _pos_int("batch_size", batch_size)
    n = _pos_int("num_train_points", num_train_points)
    t = _positive("num_epochs", num_epochs)
    return lam * math.sqrt(b / (n * t))
