"""The kernels: per-element rules (:mod:`.rules`) and the loops generated from them.

- :mod:`.rules`: the per-element math of every update rule (the single source of truth),
  a package with one module per family (``rules/adam.py``, ``rules/modern.py``, ...);
- :mod:`.elementwise`: :class:`~.elementwise.Kernel`, the CPU (serial, parallel, list
  path) and CUDA loops generated from one element-wise rule;
- :mod:`.segmented`: :class:`~.segmented.SegmentedKernel`, the loops of passes that also
  reduce per tensor or per row (LAMB, ND-Adam, SWATS); :mod:`.segments`: the table of
  segments and chunks they walk; :mod:`.segmented_run`: running a pass over a group;
- :mod:`.compile`: jit options, generated source, background compilation;
- :mod:`.host`: CPU helpers (addresses, scalar packing, sums of squares);
- :mod:`.cuda`: CUDA launch shape and device helpers (imported only for CUDA arrays).
"""
