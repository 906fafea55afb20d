"""The per-element math of every update rule: the single source of truth.

Each rule takes ``(param, grad, <state values>, grad_mult, clip_value, <scalars>)`` for
one element and returns the new ``(param, <state values>)``. The CPU loops and the
CUDA kernels are generated from these signatures (see :mod:`..elementwise`). Every scalar is
computed on the host in float64 and cast to the buffer dtype before the call, and no
rule contains a numeric literal, so a float32 buffer is processed in float32.

The rules live in modules by family, and this package re-exports every one of them
(``rules.adam``, ``rules.lamb_moments``, ...):

- :mod:`.common`: the shared gradient preamble (:func:`effective_grad`,
  :func:`scaled_grad`) and :func:`lerp`;
- :mod:`.sgd`: SGD, with and without momentum;
- :mod:`.adaptive`: Adagrad, RMSprop, Adadelta;
- :mod:`.adam`: Adam, AdamW, AMSGrad, Adamax, NAdam, RAdam, Yogi, AdaBelief;
- :mod:`.lion`: Lion;
- :mod:`.multipass`: the passes of LAMB, ND-Adam and SWATS, and Yogi's initial v;
- :mod:`.modern`: ADOPT, AdEMAMix, Schedule-Free AdamW / SGD, Adan (and the passes of
  their cautious variants);
- :mod:`.cautious`: the cautious mask and the passes of the cautious Adam, AdamW, Lion.

The generated loops' cache keys hash every file of this package
(:func:`..compile.source_hash`), so editing any rule invalidates numba's cache.
"""

from __future__ import annotations

from .adam import adabelief, adabelief_amsgrad, adam, adam_amsgrad, adamax, nadam, radam, yogi
from .adaptive import (
    adadelta,
    adagrad,
    rmsprop,
    rmsprop_centered,
    rmsprop_centered_momentum,
    rmsprop_momentum,
)
from .cautious import (
    adam_amsgrad_cautious_apply,
    adam_cautious_apply,
    adam_cautious_count,
    agreement,
    cautious,
    lion_cautious_apply,
    lion_cautious_count,
    same_sign,
)
from .common import effective_grad, lerp, scaled_grad
from .lion import lion
from .modern import (
    adan,
    adan_cautious_apply,
    adan_cautious_moments,
    adan_moments,
    adan_update,
    ademamix,
    ademamix_cautious_apply,
    ademamix_cautious_moments,
    ademamix_moments,
    ademamix_update,
    adopt,
    adopt_cautious_apply,
    adopt_cautious_moments,
    adopt_momentum,
    schedule_free_adamw,
    schedule_free_sgd,
)
from .multipass import (
    accumulate_square,
    lamb_apply,
    lamb_apply_recomputed,
    lamb_direction,
    lamb_first_pass,
    lamb_moments,
    lamb_moments_apply,
    lamb_norms,
    ndadam_moments,
    ndadam_radial,
    ndadam_step,
    segment_divide,
    segment_square,
    swats_adam,
    swats_sgd,
)
from .sgd import sgd, sgd_momentum

__all__ = [
    # common
    "scaled_grad", "effective_grad", "lerp",
    # sgd, adaptive
    "sgd", "sgd_momentum", "adagrad", "rmsprop", "rmsprop_centered", "rmsprop_momentum",
    "rmsprop_centered_momentum", "adadelta",
    # adam, lion
    "adam", "adam_amsgrad", "adamax", "nadam", "radam", "yogi", "adabelief",
    "adabelief_amsgrad", "lion",
    # multipass
    "lamb_direction", "lamb_first_pass", "lamb_moments", "lamb_apply", "lamb_norms",
    "lamb_apply_recomputed", "lamb_moments_apply", "ndadam_radial", "ndadam_moments", "ndadam_step",
    "segment_square", "segment_divide", "swats_adam", "swats_sgd", "accumulate_square",
    # modern
    "adopt_momentum", "adopt", "adopt_cautious_moments", "adopt_cautious_apply",
    "ademamix_update", "ademamix_moments", "ademamix", "ademamix_cautious_moments",
    "ademamix_cautious_apply", "schedule_free_adamw", "schedule_free_sgd", "adan_moments",
    "adan_update", "adan", "adan_cautious_moments", "adan_cautious_apply",
    # cautious
    "agreement", "cautious", "same_sign", "adam_cautious_count", "adam_cautious_apply",
    "adam_amsgrad_cautious_apply", "lion_cautious_count", "lion_cautious_apply",
]
