"""``ketenpost adapter failed --config DIR/partners/ID/adapter.toml [--data]``.

Prints the records the adapter put in its failed place (malformed records of the partner
system, each with the report the mapping wrote for a person) as JSON lines on stdout, oldest
first. The adapter's log names no record id and no report (they may hold case numbers or
quote the record), so this is where the partner's operator reads them. The record's own bytes
are printed only with ``--data`` (base64): they are the partner system's data. Reads
``adapter.db`` only; a running adapter may keep writing.

House rule 10: data to stdout, ``ketenpost: error: <one line>`` to stderr; exit 2 for a bad
configuration, 1 when the store cannot be read.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
from typing import Any, Final

from adapters.cli_processing_log import PROG, StoreUnavailable, add_store_verb, open_store
from adapters.outbox import FailedRecord

EXAMPLES: Final = """\
examples:
  ketenpost adapter failed --config covenant/partners/halt/adapter.toml
  ketenpost adapter failed --config covenant/partners/halt/adapter.toml --data | jq .report
"""


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    failed = add_store_verb(
        verbs,
        "failed",
        "print the records put in the failed place, with their reports, as JSON lines",
        EXAMPLES,
    )
    failed.add_argument(
        "--data", action="store_true", help="include each record's bytes (base64, field data)"
    )
    failed.set_defaults(handler=run_failed)


def failed_json(record: FailedRecord, *, data: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": record.id,
        "record_id": record.record_id,
        "failed_at": datetime.datetime.fromtimestamp(record.failed_at, datetime.UTC).isoformat(),
        "report": record.report,
        "content_type": record.content_type,
        "size": len(record.data),
        "metadata": record.metadata,
    }
    if data:
        doc["data"] = base64.b64encode(record.data).decode("ascii")
    return doc


def run_failed(args: argparse.Namespace) -> int:
    try:
        store = open_store(args.config)
    except StoreUnavailable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    try:
        for record in store.failed():
            sys.stdout.write(json.dumps(failed_json(record, data=args.data)) + "\n")
    finally:
        store.close()
    return 0
