"""``fastmoments bench``: every rule against this machine's memory-traffic ceiling.

- :mod:`.cases`: what is timed: a :class:`~.cases.Case` (one step over flat buffers and
  its memory traffic, with the widths of its buffers for reduced-precision state:
  :class:`~.cases.Storage`) for a fastmoments rule, torch.optim, bitsandbytes' and
  torchao's 8-bit optimizers and in-place NumPy;
- :mod:`.ceilings`: the in-place kernels with a rule's loads and stores (at their
  stored widths) and no math, and the device copy;
- :mod:`.timing`: interleaved rounds, minimum and median; the first step in a fresh
  process;
- :mod:`.machine`: the machine, the versions, other processes' load, ``--contend``;
- :mod:`.runner`: the job list built from the options, each row measured;
- :mod:`.report`: the table, the JSON document, the targets, the plot;
- :mod:`.cli`: the options and :func:`main` (its docstring is the command's help).

The asv suite (``asv_benches/``) builds its cases from the same functions, so that
``fastmoments bench`` and asv measure the same thing; they are re-exported here.
"""

from .cases import (
    BNB_8BIT,
    NUMPY_RULES,
    RULE_KWARGS,
    STATE_DTYPES,
    TORCH_IMPLS,
    TORCHAO_8BIT,
    Case,
    Storage,
    bitsandbytes_case,
    fastmoments_case,
    numpy_case,
    optimizer_classes,
    require_cuda,
    rule_states,
    torch_case,
    torchao_case,
    traffic,
)
from .ceilings import (
    ceiling_case,
    ceiling_for,
    ceiling_kernel,
    cuda_ceiling_kernel,
    cuda_pass_ceiling_kernel,
    cuda_storage_ceiling_kernel,
    device_copy_case,
    multipass_ceiling_case,
    pass_ceiling_kernel,
    storage_ceiling_case,
    storage_ceiling_kernel,
)
from .cli import DEFAULT_SIZES, add_arguments, main, run
from .machine import machine_info
from .report import targets
from .runner import TINY_SIZE
from .timing import Timing, first_step, time_step, time_steps

__all__ = [
    "Case", "Timing", "add_arguments", "run", "main", "optimizer_classes", "rule_states",
    "require_cuda", "traffic", "ceiling_kernel", "cuda_ceiling_kernel", "fastmoments_case",
    "ceiling_case", "ceiling_for", "multipass_ceiling_case", "pass_ceiling_kernel",
    "cuda_pass_ceiling_kernel", "device_copy_case", "torch_case", "numpy_case", "time_step",
    "time_steps", "first_step", "machine_info", "targets", "RULE_KWARGS", "TORCH_IMPLS",
    "NUMPY_RULES", "DEFAULT_SIZES", "TINY_SIZE", "Storage", "STATE_DTYPES", "BNB_8BIT",
    "bitsandbytes_case", "storage_ceiling_case", "storage_ceiling_kernel",
    "cuda_storage_ceiling_kernel", "TORCHAO_8BIT", "torchao_case",
]
