"""fastmoments: Adam and its family as fused, in-place Numba kernels (CPU and CUDA)."""

from . import distributed, extra, param_groups, schedules
from .checkpoint import CheckpointError
from .config import config
from .flat import FlatParams
from .interop import from_torch_state_dict, to_torch_state_dict
from .kernels.compile import wait_compiled
from .optim.adam import Adam, Adamax, AdamW, NAdam, RAdam
from .optim.adam_variants import AdaBelief, Lion, Yogi
from .optim.adaptive import Adadelta, Adagrad, RMSprop
from .optim.lamb import LAMB
from .optim.modern import ADOPT, Adan, AdEMAMix
from .optim.ndadam import NDAdam
from .optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD
from .optim.sgd import SGD
from .optim.swats import SWATS
from .param_groups import decay_mask_groups

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam",
    "Yogi", "AdaBelief", "Lion", "LAMB", "NDAdam", "SWATS",
    "ADOPT", "AdEMAMix", "ScheduleFreeAdamW", "ScheduleFreeSGD", "Adan",
    "FlatParams", "config", "wait_compiled", "schedules", "extra", "param_groups",
    "decay_mask_groups", "CheckpointError", "to_torch_state_dict", "from_torch_state_dict",
    "distributed", "__version__",
]
