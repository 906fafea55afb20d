"""``python -m fastmoments.tools.bench_distributed``: the same measurement as
``fastmoments bench --distributed`` (see :mod:`fastmoments.tools.bench.distributed`),
run under mpiexec."""

from .bench.distributed import main

if __name__ == "__main__":
    import sys

    sys.exit(main())
