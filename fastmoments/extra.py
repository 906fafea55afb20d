"""The rules that came after the core family, under the name they were first published.

Kept so that ``fastmoments.extra.LAMB`` and ``from fastmoments import extra`` keep
working; the classes live in :mod:`fastmoments.optim` and are exported by
:mod:`fastmoments` itself (``fm.LAMB``).
"""

from .optim.adam_variants import AdaBelief, Lion, Yogi
from .optim.lamb import LAMB
from .optim.ndadam import NDAdam
from .optim.swats import SWATS
from .param_groups import decay_mask_groups

__all__ = ["AdaBelief", "Lion", "LAMB", "NDAdam", "SWATS", "Yogi", "decay_mask_groups"]
