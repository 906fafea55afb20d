"""The optimizer classes: validation, state, the step counter and per-step host scalars.

- :mod:`.base`: :class:`~.base.Optimizer`, the options and ``step()``;
- :mod:`.sgd`: SGD;
- :mod:`.adaptive`: Adagrad, RMSprop, Adadelta;
- :mod:`.adam`: Adam, AdamW, Adamax, NAdam, RAdam;
- :mod:`.adam_variants`: Yogi, AdaBelief, Lion;
- :mod:`.modern`: ADOPT, AdEMAMix, Adan;
- :mod:`.schedulefree`: Schedule-Free AdamW and SGD, with ``eval()`` / ``train()``;
- :mod:`.multipass`: the shared base of the rules with per-tensor reductions (segment
  tables, the hooks for sharded steps, Yogi's ``init_second_moment`` pass), and those
  rules: :mod:`.lamb` (LAMB), :mod:`.ndadam` (NDAdam), :mod:`.swats` (SWATS).

Every class takes torch.optim's name, keywords and defaults where torch has the rule. The
math of each rule lives in :mod:`fastmoments.kernels.rules` (one function for the CPU loop
and the CUDA kernel); the classes compute the per-step scalars (bias corrections, step
sizes) on the host in float64.

Options shared by every optimizer (keyword-only):

- ``nonfinite``: ``"apply"`` (default, as torch), ``"skip"`` (skip the whole step when
  a gradient has NaN/Inf; ``skipped_steps`` counts them) or ``"raise"``
  (``FloatingPointError``, nothing changed);
- ``max_grad_norm``: clip the global gradient norm (as ``clip_grad_norm_``), fused;
- ``clip_value``: clip each gradient element to ``[-clip_value, clip_value]``;
- ``state_dtype``: ``None`` (the parameters' dtype; float32 for 16-bit parameters),
  ``"bfloat16"``, ``"int8"`` (blockwise) or ``"float32"`` (under float64 parameters);
  ``state_rounding``: ``"auto"`` (second moments stochastic, others nearest),
  ``"nearest"``, ``"stochastic"`` or a dict per state; ``seed`` of the stochastic
  rounding; ``master_weights``: a float32 copy of float16 / bfloat16 parameters (default
  True for them; False rounds the parameters stochastically). See docs/precision.md.

``cautious=True`` on Adam, AdamW, Lion, ADOPT, AdEMAMix and Adan (Liang et al., 2024) runs
the rule as two segmented passes (see :mod:`._cautious`); the default keeps the single
fused pass.

The public names are re-exported by :mod:`fastmoments`.
"""
