"""fastmoments: Adam and its family as fused, in-place Numba kernels (CPU and CUDA)."""

from ._backend import config
from .flat import FlatParams
from .optimizers import (
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    NAdam,
    RAdam,
    RMSprop,
    Yogi,
)

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam",
    "Yogi", "FlatParams", "config", "__version__",
]
