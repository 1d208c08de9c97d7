"""``ketenpost config check`` and ``ketenpost config show``: thin front ends to ``gateway.config``.

Rules kept here (age's command-line style, house rule 10):

* Data goes to stdout; errors go to stderr as ``ketenpost: error: <one line>``.
* Exit status 0 on success, 2 on a bad configuration (the same status argparse uses for a bad
  command line, so a script can tell "fix your input" from "the program failed").
* ``show`` redacts secrets; there is deliberately no flag to reveal them.
* The process environment is read here, at the edge, and passed into ``load_config``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Final

from gateway.config import load_config, render_config
from gateway.errors import ConfigError

PROG: Final = "ketenpost"
EXIT_OK: Final = 0
EXIT_BAD_CONFIG: Final = 2

_EPILOG: Final = """\
examples:
  ketenpost config check --config /etc/ketenpost/gateway.toml
  KETENPOST_LIMITS__MAX_RECIPIENTS=8 ketenpost config show --config gateway.toml
  ketenpost config show --config gateway.toml --format json

Every key can be overridden as KETENPOST_<SECTION>__<KEY>; secrets also as
KETENPOST_<SECTION>__<KEY>_FILE (a file holding the secret).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``config`` command with its ``check`` and ``show`` verbs.

    Each verb sets ``handler`` to a function taking the parsed arguments and returning the
    exit status.
    """
    config = subparsers.add_parser(
        "config",
        help="check or show the gateway configuration",
        description="Check or show the gateway configuration (gateway.toml and environment).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = config.add_subparsers(dest="config_command", required=True, metavar="VERB")

    check = verbs.add_parser(
        "check",
        help="validate the configuration; print 'ok: FILE' or the first problem",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_argument(check)
    check.set_defaults(handler=run_check)

    show = verbs.add_parser(
        "show",
        help="print the effective configuration, secrets redacted",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_argument(show)
    show.add_argument(
        "--format",
        choices=("toml", "json"),
        default="toml",
        help="output format (default: toml)",
    )
    show.set_defaults(handler=run_show)


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        metavar="FILE",
        help="the gateway configuration file (gateway.toml)",
    )


def run_check(args: argparse.Namespace) -> int:
    """Load and validate ``args.config``; print ``ok: FILE`` (exit 0) or the error (exit 2)."""
    try:
        load_config(args.config, environ=os.environ)
    except ConfigError as exc:
        return _fail(exc)
    print(f"ok: {args.config}")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    """Print the effective configuration with secrets redacted (exit 0), or the error (exit 2)."""
    try:
        config = load_config(args.config, environ=os.environ)
    except ConfigError as exc:
        return _fail(exc)
    sys.stdout.write(render_config(config, redact=True, fmt=args.format))
    return EXIT_OK


def _fail(exc: ConfigError) -> int:
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return EXIT_BAD_CONFIG
