"""``ketenpost demo``: the covenant's scenario with every adapter, its fake partner system and a
real gateway, on one machine (``adapters.demo`` does the work).

Rules kept here (house rule 10): the timeline goes to stdout, ``ketenpost: error: <one line>``
to stderr. Exit 0 when every step behaved as expected, 1 when a step did not (the message
names it) or the demo could not start, 2 for a bad command line (an unknown ``--without``
partner, ``--without`` with ``--once``) or ``KETENPOST_DEMO_FAULT``. With ``--without`` (a
sandbox) no scenario is played; exit 0 after Ctrl-C or SIGTERM.
``ketenpost init`` comes in as a callable from the composition root, so ``adapters`` imports
neither ``ketenpost`` nor the relay service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Final

from adapters.demo import DEFAULT_STEP_TIMEOUT_S, DemoError, InitDeployment, options_from, run_demo
from adapters.errors import AdapterError
from keys import KeysError

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

USAGE_EXAMPLES: Final = """\
examples:
  ketenpost demo                      # play the scenario, then serve until Ctrl-C
  ketenpost demo --once --dir ./demo  # play it in ./demo and exit: 0 if every step behaved
  ketenpost demo --dir ./sandbox --without cjg
      # a sandbox for your own CJG adapter: everything else runs, no scenario is played;
      # prints the gateway, its metrics and the `ketenpost adapter run cjg …` to start yours
"""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *, init: InitDeployment
) -> None:
    """Add ``demo``; ``init`` makes the deployment (``ketenpost.init_deployment``)."""
    p = subparsers.add_parser(
        "demo",
        help="play the covenant's scenario with every adapter and a real gateway",
        description=(
            "Make a development deployment in a fresh folder, start the gateway (SQLite), every "
            "partner system's fake and every adapter, and play the scenario: an approach, "
            "messages between all partners, and four refusals, each with its reason. With "
            "--without, a sandbox for your own adapter: the partners named get no fake and no "
            "adapter, and no scenario is played."
        ),
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", metavar="DIR", help="an empty or new folder (default: a temp folder)")
    p.add_argument("--once", action="store_true", help="exit after the scenario")
    p.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="PARTNER[,PARTNER...]",
        help=(
            "a sandbox: start no fake and no adapter for these partners, play no scenario, and "
            "print how to run your own adapter in their place; serve until Ctrl-C"
        ),
    )
    p.add_argument(
        "--step-timeout",
        type=float,
        default=DEFAULT_STEP_TIMEOUT_S,
        metavar="S",
        help="how long one step may take (default %(default)s s)",
    )

    def run(args: argparse.Namespace) -> int:
        return run_demo_command(args, init)

    p.set_defaults(handler=run)


def run_demo_command(args: argparse.Namespace, init: InitDeployment) -> int:
    try:
        options = options_from(args.dir, args.once, args.step_timeout, args.without)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ok = asyncio.run(run_demo(options, init, sys.stdout))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{PROG}: error: stopped by a signal before the demo was ready", file=sys.stderr)
        return EXIT_FAILED
    except (DemoError, AdapterError, KeysError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0 if ok else EXIT_FAILED
