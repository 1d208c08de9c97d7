"""The ``ketenpost`` command: the composition root (ADR 0002).

This is the only module that imports from all three packages. Each package owns its verbs and
registers them here; this module only assembles the parser and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "ketenpost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ketenpost: the covenant's secure case-message gateway.",
    )
    parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error("no command")
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
