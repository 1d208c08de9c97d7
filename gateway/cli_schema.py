"""``ketenpost schema …``: export the case-message JSON Schemas and print example bodies.

Thin front end over ``gateway.protocol.messages`` (house rule 10): data to stdout, errors as
``ketenpost: error: …`` to stderr with a non-zero exit status. ``register`` adds the verbs to
the composition root's subparsers; each handler takes the parsed ``args`` and returns the exit
status.

``schema export DIR`` writes ``<type>.schema.json`` per message type and
``case-message.schema.json`` for the union, creating ``DIR`` if needed and replacing earlier
exports of the same files (they are generated, never edited by hand), and prints each path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.protocol.messages import encode_body, example, json_schemas
from gateway.protocol.types import MessageType

PROG = "ketenpost"

_EXAMPLES = """\
examples:
  ketenpost schema export docs/schemas
  ketenpost schema example signal > signal.json
"""


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def export(args: argparse.Namespace) -> int:
    """Write one JSON Schema file per message type plus the union into ``args.dir``."""
    directory = Path(args.dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, schema in json_schemas().items():
            path = directory / f"{name}.schema.json"
            path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", "utf-8")
            print(path)
    except OSError as exc:
        return _error(f"cannot write schemas to {directory}: {exc.strerror or exc}")
    return 0


def show_example(args: argparse.Namespace) -> int:
    """Print a valid example body of ``args.type`` as JSON."""
    try:
        message_type = MessageType(args.type)
    except ValueError:
        known = ", ".join(t.value for t in MessageType)
        return _error(f"unknown message type {args.type!r} (known: {known})")
    body: Any = json.loads(encode_body(example(message_type)))
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``schema export`` and ``schema example`` to the ``ketenpost`` command."""
    schema = subparsers.add_parser(
        "schema",
        help="case-message JSON Schemas and examples",
        description="Export the case-message JSON Schemas or print an example body.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = schema.add_subparsers(dest="schema_command", required=True, metavar="VERB")
    export_parser = verbs.add_parser(
        "export",
        help="write one JSON Schema file per message type and one for the union",
        description="Write <type>.schema.json per message type and case-message.schema.json.",
    )
    export_parser.add_argument("dir", metavar="DIR", help="folder to write into (created)")
    export_parser.set_defaults(handler=export)
    example_parser = verbs.add_parser(
        "example",
        help="print a valid example body (JSON) of a message type",
        description="Print a valid example body of TYPE with fresh pseudonyms.",
    )
    # Validated in the handler rather than with ``choices`` so the error says which types exist
    # in the house format (``ketenpost: error: …``).
    example_parser.add_argument(
        "type", metavar="TYPE", help=", ".join(t.value for t in MessageType)
    )
    example_parser.set_defaults(handler=show_example)
