"""The ``fastmoments`` command: ``fastmoments demo`` and ``fastmoments bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import bench
    from .demo import app as demo

    parser = argparse.ArgumentParser(
        prog="fastmoments",
        description="Fused Numba optimizers (Adam and its family) for NumPy and CUDA arrays.",
    )
    parser.add_argument("--version", action="version", version=f"fastmoments {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_arguments(
        sub.add_parser("demo", help="train a small NumPy model with several optimizers",
                       description=demo.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    bench.add_arguments(
        sub.add_parser("bench", help="measure each rule against this machine's memory ceiling",
                       description=bench.cli.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
