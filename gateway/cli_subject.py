"""``ketenpost audit subject`` and ``ketenpost audit verify-report``.

Rules kept here (house rule 10): data to stdout, ``ketenpost: error: <one line>`` to stderr;
exit 0 on success, 2 for a bad configuration or usage, 1 for any other failure (a store that
cannot be opened, a report that does not verify). ``audit subject`` never overwrites a file:
a report already in ``--out`` is an error. ``verify-report`` needs no gateway, store or
network: only the report and the gateway's checkpoint key (given, or from a signed key
directory verified against its trusted root).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from gateway.config import GatewayConfig, apply_cli_overrides, load_config
from gateway.errors import ConfigError
from gateway.protocol.checkpoint import CheckpointError, NoteVerifierKey
from gateway.protocol.subject_report import (
    SubjectReport,
    SubjectReportError,
    encode_report,
    verify_report,
)
from gateway.store.errors import StoreError
from keys import Directory, DirectoryError, KeysError, KeyUse
from keys.keyfile import load_ed25519_key
from keys.signed_directory import TrustedDirectory, read_bundle

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
FORMATS: Final = ("json", "html")
REPORT_NAME: Final = "inzage"
_PSEUDONYM_RE: Final = re.compile(r"[0-9a-f]{32}")

SUBJECT_EPILOG: Final = """\
examples:
  ketenpost audit subject 3f2a…(32 hex) --config covenant/gateway.toml --out inzage/
  ketenpost audit subject P1 P2 --config covenant/gateway.toml --out inzage/ --format html
"""
VERIFY_EPILOG: Final = """\
examples:
  ketenpost audit verify-report inzage/inzage.json --directory covenant/directory
  ketenpost audit verify-report inzage/inzage.json --gateway-key 'ORIGIN+1a2b3c4d+AQ…'
"""


def register(
    averbs: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``audit subject`` and ``audit verify-report`` to the ``audit`` verbs."""
    subject = averbs.add_parser(
        "subject",
        help="data-subject access report (JSON and Dutch HTML) for a youth's pseudonyms",
        epilog=SUBJECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subject.add_argument("pseudonyms", nargs="+", metavar="PSEUDONYM")
    config_arg(subject)
    subject.add_argument("--store", metavar="URL", help="store URL (overrides the config)")
    subject.add_argument("--out", required=True, type=Path, metavar="DIR")
    subject.add_argument(
        "--format", default="json,html", metavar="LIST", help="json, html or json,html"
    )
    subject.add_argument(
        "--full-evidence",
        action="store_true",
        help="include entries that also name other subjects (for a supervisor, not the youth)",
    )
    subject.set_defaults(handler=run_audit_subject)

    verify = averbs.add_parser(
        "verify-report",
        help="verify a subject report offline: entries, proofs, checkpoint signatures",
        epilog=VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("report", type=Path, metavar="REPORT.json")
    keys = verify.add_mutually_exclusive_group(required=True)
    keys.add_argument(
        "--gateway-key",
        metavar="VKEY|FILE",
        help="the checkpoint verifier key <origin>+<key id>+<base64>, or a file holding it",
    )
    keys.add_argument(
        "--directory",
        type=Path,
        metavar="DIR",
        help="a signed key directory folder (verified against DIR/root.json)",
    )
    verify.add_argument("--trusted-root", type=Path, metavar="FILE", help="default DIR/root.json")
    verify.add_argument("--origin", metavar="ORIGIN", help="pin the log (default: the report's)")
    verify.set_defaults(handler=run_verify_report)


def _error(message: object, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(args.config, environ=os.environ, check_across=False)
    return apply_cli_overrides(config, store=args.store, cwd=Path.cwd())


def _formats(value: str) -> tuple[str, ...]:
    chosen = tuple(f.strip() for f in value.split(",") if f.strip())
    if not chosen or any(f not in FORMATS for f in chosen):
        raise ValueError(f"--format: one or more of {', '.join(FORMATS)}")
    return chosen


async def _report(
    config: GatewayConfig, pseudonyms: Sequence[str], now: int, full: bool
) -> tuple[SubjectReport, Directory]:
    # Imported here: the relay service's modules are needed only where a store is read.
    from gateway.server import TrustedDirectorySource, make_store  # noqa: PLC0415
    from gateway.signer import GatewaySigner  # noqa: PLC0415
    from gateway.subject_access import build_report  # noqa: PLC0415

    passphrase = config.keys.passphrase.reveal().encode() if config.keys.passphrase else None
    key = load_ed25519_key(config.keys.sign_key, KeyUse.SIGN, passphrase)
    signer = GatewaySigner(key, config.gateway.origin)
    directory = TrustedDirectorySource(
        config.directory.trusted_root, config.directory.bundle, now
    ).last()
    store = make_store(config, signer)
    await store.open()
    try:
        report = await build_report(
            store,
            directory,
            pseudonyms,
            origin=config.gateway.origin,
            now=now,
            full_evidence=full,
        )
    finally:
        await store.close()
    return report, directory


def run_audit_subject(args: argparse.Namespace) -> int:
    from gateway.subject_access import SubjectAccessError, render_html  # noqa: PLC0415

    bad = [p for p in args.pseudonyms if not _PSEUDONYM_RE.fullmatch(p)]
    if bad:
        return _error(f"not a pseudonym (32 lowercase hex): {bad[0]!r}", EXIT_USAGE)
    try:
        formats = _formats(args.format)
        config = _load(args)
    except (ValueError, ConfigError) as exc:
        return _error(exc, EXIT_USAGE)
    out: Path = args.out
    targets = {f: out / f"{REPORT_NAME}.{f}" for f in formats}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        return _error(f"{existing[0]} exists; refusing to overwrite it", EXIT_FAILED)
    pseudonyms = list(dict.fromkeys(args.pseudonyms))
    try:
        report, _ = asyncio.run(_report(config, pseudonyms, int(time.time()), args.full_evidence))
    except ConfigError as exc:
        return _error(exc, EXIT_USAGE)
    except (SubjectAccessError, KeysError, StoreError, OSError) as exc:
        return _error(exc, EXIT_FAILED)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt, path in targets.items():
        data = encode_report(report) if fmt == "json" else render_html(report).encode("utf-8")
        # 0600 and exclusive create: a report names a youth's pseudonyms and who shared what.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        written[fmt] = str(path)
    withheld = sum(1 for r in report.rows if r.evidence.withheld)
    print(json.dumps({"rows": len(report.rows), "withheld": withheld, "files": written}))
    return 0


def _gateway_key(value: str) -> NoteVerifierKey:
    candidate = Path(value)
    text = candidate.read_text(encoding="utf-8").strip() if candidate.is_file() else value
    return NoteVerifierKey.from_vkey(text)


def _directory(folder: Path, trusted_root: Path | None, now: int) -> Directory:
    root = trusted_root if trusted_root is not None else folder / "root.json"
    trusted = TrustedDirectory(root.read_bytes())
    return trusted.update(read_bundle(folder), now)


def run_verify_report(args: argparse.Namespace) -> int:
    try:
        data = args.report.read_bytes()
    except OSError as exc:
        return _error(exc, EXIT_FAILED)
    try:
        key = _gateway_key(args.gateway_key) if args.gateway_key else None
        directory = (
            _directory(args.directory, args.trusted_root, int(time.time()))
            if args.directory is not None
            else None
        )
    except CheckpointError as exc:
        return _error(f"--gateway-key: {exc}", EXIT_USAGE)
    except (DirectoryError, OSError) as exc:
        return _error(f"--directory: {exc}", EXIT_FAILED)
    try:
        check = verify_report(data, gateway_key=key, directory=directory, origin=args.origin)
    except SubjectReportError as exc:
        return _error(f"{exc.reason.value}: {exc}", EXIT_FAILED)
    print(
        json.dumps(
            {
                "ok": True,
                "origin": check.origin,
                "rows": check.rows,
                "entries_verified": check.entries_verified,
                "withheld": check.withheld,
                "checkpoints": check.checkpoints,
            }
        )
    )
    return 0
