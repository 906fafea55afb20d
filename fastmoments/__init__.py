"""fastmoments: Adam and its family as fused, in-place Numba kernels (CPU and CUDA)."""

from . import extra, schedules
from ._backend import config
from ._jit import wait_compiled
from .checkpoint import CheckpointError
from .extra import LAMB, SWATS, AdaBelief, Lion, NDAdam, decay_mask_groups
from .flat import FlatParams
from .interop import from_torch_state_dict, to_torch_state_dict
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
    "Yogi", "AdaBelief", "Lion", "LAMB", "NDAdam", "SWATS",
    "FlatParams", "config", "wait_compiled", "schedules", "extra", "decay_mask_groups",
    "CheckpointError", "to_torch_state_dict", "from_torch_state_dict", "__version__",
]
