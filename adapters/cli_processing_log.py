"""``ketenpost adapter processing-log --config DIR/partners/ID/adapter.toml [--since WHEN]``.

Prints the adapter's processing-log records (Logboek Dataverwerkingen, see
``adapters.processing_log``) as JSON lines on stdout, oldest first, for the partner's own
Logboek or its privacy officer. Reads ``adapter.db`` only; a running adapter may keep writing.

House rule 10: data to stdout, ``ketenpost: error: <one line>`` to stderr; exit 2 for a bad
configuration or ``--since``, 1 when the store cannot be read.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Final

from adapters.config import load_adapter_config
from adapters.errors import AdapterConfigError, AdapterError
from adapters.outbox import AdapterStore

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2

EXAMPLES: Final = """\
examples:
  ketenpost adapter processing-log --config covenant/partners/halt/adapter.toml > halt.jsonl
  ketenpost adapter processing-log --config covenant/partners/halt/adapter.toml \\
      --since 2026-03-01
  ketenpost adapter processing-log --config covenant/partners/halt/adapter.toml \\
      --since 2026-03-01T12:00:00+01:00
"""


def add_store_verb(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, examples: str
) -> argparse.ArgumentParser:
    """A read-only ``ketenpost adapter NAME --config FILE`` verb over ``adapter.db``."""
    parser = verbs.add_parser(
        name, help=help, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, metavar="FILE")
    return parser


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    log = add_store_verb(
        verbs,
        "processing-log",
        "print the processing log (Logboek Dataverwerkingen) as JSON lines",
        EXAMPLES,
    )
    log.add_argument(
        "--since",
        metavar="WHEN",
        help="only records that ended at or after WHEN: ISO 8601 date or time (UTC unless "
        "an offset is given) or Unix seconds",
    )
    log.set_defaults(handler=run_processing_log)


def parse_since(value: str | None) -> int:
    """``--since`` as milliseconds since the epoch (0 for none); ``ValueError`` if unreadable."""
    if not value:
        return 0
    if value.isdigit():
        return int(value) * 1000
    moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


class StoreUnavailable(Exception):
    """``open_store`` failed: the one line to print and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def open_store(config_path: Path) -> AdapterStore:
    """The ``adapter.db`` of the adapter configured in ``config_path``, for the read-only verbs
    (``processing-log``, ``failed``). Raises ``StoreUnavailable`` (exit 2 for a bad
    configuration, 1 when there is no store yet or it cannot be opened)."""
    try:
        config = load_adapter_config(config_path)
    except AdapterConfigError as exc:
        raise StoreUnavailable(str(exc), EXIT_BAD_CONFIG) from None
    path = config.path(config.store.path)
    if not path.exists():
        raise StoreUnavailable(f"{path}: no adapter store (has the adapter run?)", EXIT_FAILED)
    try:
        return AdapterStore(path)
    except AdapterError as exc:
        raise StoreUnavailable(str(exc), EXIT_FAILED) from None


def run_processing_log(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since)
    except ValueError:
        print(f"{PROG}: error: --since: not a date, time or Unix seconds", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        store = open_store(args.config)
    except StoreUnavailable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    try:
        for line in store.processing_records(since):
            sys.stdout.write(line + "\n")
    finally:
        store.close()
    return 0
