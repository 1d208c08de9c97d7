"""``ketenpost bench``: the relay benchmark (``gateway.bench``) as a command.

Thin front end (house rule 10): the result document (its ``floor`` object is the cost floor,
see ``gateway.bench``) goes to ``--out`` and, as JSON, to stdout;
``ketenpost: error: …`` to stderr and exit 1 if the run fails. ``--messages`` (hidden) shrinks
a run for the test suite; ``--profile`` runs the gateway under pyinstrument.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Final

from gateway.bench import DEFAULT_PG_URL, FULL, QUICK, BenchError, bench

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1

_EXAMPLES: Final = """\
examples:
  ketenpost bench --quick --out bench-quick.json     (under a minute)
  ketenpost bench --out bench-results.json           (make bench)
  ketenpost bench --quick --profile gateway-profile.txt --out bench-quick.json
  ketenpost bench --postgres postgresql://postgres@db:5432/bench --out bench-results.json
  ketenpost bench --no-postgres --out bench-sqlite.json   (SQLite only)
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench``."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark the relay against a bare aiohttp handler on 127.0.0.1",
        description=(
            "Start a real gateway (mTLS, SQLite, durable commit) and a bare aiohttp handler "
            "over the same mTLS, relay pre-sealed envelopes police -> halt with signed "
            "delivery receipts, measure the cost floor (the CPU per message of only the HTTP, "
            "Ed25519 and durable SQLite work no implementation can avoid), then relay the same "
            "through one and two gateway replicas on PostgreSQL (a fresh schema per run, "
            "dropped after), and write the figures as JSON."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.json", help="result file")
    p.add_argument("--senders", type=int, metavar="N", help="concurrent senders (default 32)")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="FILE.txt",
        help="run the gateway under pyinstrument and write its text report here",
    )
    pg = p.add_mutually_exclusive_group()
    pg.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("KETENPOST_BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL server for the 1- and 2-replica runs (default: $KETENPOST_BENCH_PG_URL "
        f"or {DEFAULT_PG_URL}); skipped with a note in the JSON when unreachable",
    )
    pg.add_argument(
        "--no-postgres", action="store_true", help="SQLite only: skip the PostgreSQL runs"
    )
    # For the test suite: a tiny run. Not a figure to quote.
    p.add_argument("--messages", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else FULL
    if args.messages is not None:
        if args.messages < 1:
            print(f"{PROG}: error: --messages must be at least 1", file=sys.stderr)
            return EXIT_FAILED
        settings = dataclasses.replace(
            settings,
            messages=args.messages,
            ceiling_requests=args.messages,
            crypto_samples=min(settings.crypto_samples, args.messages),
        )
    if args.senders is not None:
        if args.senders < 1:
            print(f"{PROG}: error: --senders must be at least 1", file=sys.stderr)
            return EXIT_FAILED
        settings = dataclasses.replace(settings, senders=args.senders)
    if args.profile is not None:
        settings = dataclasses.replace(settings, profile=args.profile.resolve())
    settings = dataclasses.replace(
        settings, postgres=None if args.no_postgres else (args.postgres or None)
    )
    try:
        result = bench(settings)
    except (BenchError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    text = json.dumps(result, indent=2)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
