"""Users of the public API, not part of it: the command line, the benchmark, the demo."""
