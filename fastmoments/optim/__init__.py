"""The optimizer classes: validation, state, the step counter and per-step host scalars.

- :mod:`.base`: :class:`~.base.Optimizer`, the options and ``step()``;
- :mod:`.elementwise`: the single-pass rules (SGD ... Yogi, AdaBelief, Lion);
- :mod:`.multipass`: the rules with per-tensor reductions (LAMB, NDAdam, SWATS).

The public names are re-exported by :mod:`fastmoments`.
"""
