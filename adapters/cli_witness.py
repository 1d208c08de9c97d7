"""``ketenpost audit witness --partner-dir DIR/partners/ID``: a partner's view of the audit log.

Prints JSON to stdout: the checkpoints this partner verified (size, root, when), its latest,
each witness peer's latest statement and how it compares (``consistent``, ``pending``,
``inconsistent``, ``invalid``, ``unavailable``), and the open witness alarms. Exit 0 when no
witness alarm is open, 1 when one is, 2 when the partner folder cannot be read.

Registered into the ``audit`` verb group by ``register`` (after ``gateway.cli_serve`` made
that group): the composition root lists it among its registrars.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adapters.config import load_partner_dir
from adapters.errors import AdapterError
from adapters.outbox import AdapterStore
from adapters.witness import peer_views

PROG = "ketenpost"
WITNESS_ALARMS = frozenset({"witness", "checkpoint"})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``witness`` to the existing ``audit`` group (``gateway.cli_serve`` makes it)."""
    audit = subparsers.choices["audit"]
    averbs = next(a for a in audit._actions if isinstance(a, argparse._SubParsersAction))
    witness = averbs.add_parser(
        "witness",
        help="a partner's view of the audit log: checkpoints seen, peers' latest, consistency",
        epilog="example: ketenpost audit witness --partner-dir dev/partners/halt",
    )
    witness.add_argument("--partner-dir", required=True, type=Path, metavar="DIR")
    witness.set_defaults(handler=run_audit_witness)


def partner_view(store: AdapterStore, partner_id: str) -> dict[str, Any]:
    checkpoints = store.checkpoints()
    latest = store.last_checkpoint()
    alarms = [a for a in store.alarms() if a.kind in WITNESS_ALARMS]
    return {
        "partner": partner_id,
        "checkpoints": [
            {"size": c.size, "root": c.root.hex(), "seen_at": c.seen_at} for c in checkpoints
        ],
        "latest": None
        if latest is None
        else {"size": latest.size, "root": latest.root.hex(), "seen_at": latest.seen_at},
        "peers": {peer: asdict(view) for peer, view in sorted(peer_views(store).items())},
        "alarms": [{"kind": a.kind, "detail": a.detail, "raised_at": a.raised_at} for a in alarms],
        "status": "alarm" if alarms else "consistent",
    }


def run_audit_witness(args: argparse.Namespace) -> int:
    try:
        config = load_partner_dir(args.partner_dir)
        store = AdapterStore(config.path(config.store.path))
    except AdapterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        view = partner_view(store, config.partner.id)
    finally:
        store.close()
    print(json.dumps(view, indent=2, sort_keys=True))
    return 1 if view["alarms"] else 0
