"""``ketenpost serve``, ``ketenpost store migrate`` and ``ketenpost audit verify``.

``store backup`` and ``store restore`` live in ``gateway.cli_store`` and are registered beside
``store migrate`` here.

``audit subject`` and ``audit verify-report`` live in ``gateway.cli_subject`` and are
registered beside ``audit verify`` here.

Rules kept here (house rule 10): data to stdout, ``ketenpost: error: <one line>`` to stderr;
exit 0 on success, 2 for a bad configuration (as ``config check``), 1 for any other failure
(a store that cannot be opened, an audit log that does not verify).

The store is the one ``store.url`` names (``sqlite://`` or ``postgresql://``; ``--store``
overrides it). A PostgreSQL password comes from ``store.password`` /
``KETENPOST_STORE__PASSWORD_FILE`` only: never from the URL or the command line, where ``ps``
and shell histories would show it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Final

from gateway import cli_store, cli_subject
from gateway.audit import AuditVerifyError, verify_log
from gateway.config import GatewayConfig, apply_cli_overrides, load_config
from gateway.errors import ConfigError
from gateway.logs import configure_logging
from gateway.published import PublishedError, RestoreRefusedError
from gateway.server import make_store, serve
from gateway.signer import GatewaySigner
from gateway.store.errors import StoreError
from gateway.store.sqlite import SqliteStore
from keys import KeysError, KeyUse
from keys.keyfile import load_ed25519_key

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``, ``store migrate`` and ``audit verify``."""
    s = subparsers.add_parser(
        "serve",
        help="run the gateway (HTTPS partner API and plain-HTTP operator listener)",
        epilog="example: ketenpost serve --config dev/gateway.toml --listen 127.0.0.1:8443",
    )
    _config_arg(s)
    s.add_argument("--listen", metavar="HOST:PORT", help="partner API address (HTTPS)")
    s.add_argument("--metrics-listen", metavar="HOST:PORT", help="/metrics, /healthz, /readyz")
    s.add_argument(
        "--store",
        metavar="URL",
        help="store URL: sqlite:///ABSOLUTE/PATH or postgresql://USER@HOST:PORT/DB "
        "(password from KETENPOST_STORE__PASSWORD_FILE)",
    )
    s.add_argument(
        "--after-restore",
        action="store_true",
        help="serve a store restored from a backup (older than the published checkpoint): "
        "records a signed restore event in the audit log; once, never in a unit file",
    )
    s.add_argument(
        "--published-state",
        type=Path,
        metavar="FILE",
        help="where the restore guard keeps the highest published checkpoint "
        "(default: <sqlite file>.published; PostgreSQL: no guard unless given)",
    )
    s.set_defaults(handler=run_serve)

    store = subparsers.add_parser("store", help="store maintenance")
    verbs = store.add_subparsers(dest="store_command", required=True, metavar="VERB")
    migrate = verbs.add_parser(
        "migrate",
        help="apply pending schema migrations",
        epilog="example: ketenpost store migrate --config dev/gateway.toml --dry-run",
    )
    _config_arg(migrate)
    migrate.add_argument("--store", metavar="URL", help="store URL (overrides the config)")
    migrate.add_argument("--dry-run", action="store_true", help="list, apply nothing")
    migrate.set_defaults(handler=run_migrate)
    cli_store.register(verbs, _config_arg)

    audit = subparsers.add_parser("audit", help="audit log")
    averbs = audit.add_subparsers(dest="audit_command", required=True, metavar="VERB")
    verify = averbs.add_parser(
        "verify",
        help="recompute the Merkle tree and check every checkpoint and entry",
        epilog="example: ketenpost audit verify --config dev/gateway.toml",
    )
    _config_arg(verify)
    verify.add_argument("--store", metavar="URL", help="store URL (overrides the config)")
    verify.set_defaults(handler=run_audit_verify)
    cli_subject.register(averbs, _config_arg)


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="FILE")


def _load(args: argparse.Namespace) -> GatewayConfig:
    # The rules between keys run once the flags are applied: ``--store postgresql://…`` with a
    # password in the environment is valid even when the file names a SQLite store.
    config = load_config(args.config, environ=os.environ, check_across=False)
    return apply_cli_overrides(
        config,
        listen=getattr(args, "listen", None),
        metrics_listen=getattr(args, "metrics_listen", None),
        store=getattr(args, "store", None),
        cwd=Path.cwd(),
    )


def _error(message: object, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def run_serve(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    configure_logging(config.log.level)
    try:
        asyncio.run(
            serve(
                config,
                after_restore=args.after_restore,
                published_state=args.published_state,
            )
        )
    except ConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    except (KeysError, StoreError, OSError, RestoreRefusedError, PublishedError) as exc:
        return _error(exc, EXIT_FAILED)
    return 0


def _migrate_postgres(config: GatewayConfig, dry_run: bool) -> list[str]:
    from gateway.store.postgres import PostgresStore  # noqa: PLC0415 - the postgres extra

    password = config.store.password.reveal() if config.store.password is not None else None
    return asyncio.run(PostgresStore.migrate(config.store.url, dry_run=dry_run, password=password))


def run_migrate(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    path = config.store.sqlite_path
    try:
        if path is not None:
            applied = SqliteStore.migrate(path, dry_run=args.dry_run)
        else:
            applied = _migrate_postgres(config, args.dry_run)
    except ImportError:
        return _error(
            "store.url: a postgresql:// store needs the postgres extra: "
            "pip install 'ketenpost[postgres]'",
            EXIT_BAD_CONFIG,
        )
    except ValueError as exc:  # the store refused the URL
        return _error(f"store.url: {exc}", EXIT_BAD_CONFIG)
    except Exception as exc:  # database and OS errors: one line, exit 1
        return _error(exc, EXIT_FAILED)
    # The URL holds no password (the configuration refuses one), so it may be printed.
    shown = str(path) if path is not None else config.store.url
    print(json.dumps({"store": shown, "dry_run": args.dry_run, "migrations": applied}))
    return 0


async def _verify(config: GatewayConfig) -> dict[str, int]:
    passphrase = config.keys.passphrase.reveal().encode() if config.keys.passphrase else None
    key = load_ed25519_key(config.keys.sign_key, KeyUse.SIGN, passphrase)
    signer = GatewaySigner(key, config.gateway.origin)
    store = make_store(config, signer)
    await store.open()
    try:
        leaves = await store.audit_leaves()
        checkpoints = await store.checkpoints()
    finally:
        await store.close()
    report = verify_log(
        leaves, checkpoints, origin=config.gateway.origin, public_key=signer.public_key
    )
    return {
        "leaves": report.leaves,
        "entries_checked": report.entries_checked,
        "checkpoints_checked": report.checkpoints_checked,
    }


def run_audit_verify(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    try:
        result = asyncio.run(_verify(config))
    except ConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    except (AuditVerifyError, KeysError, StoreError) as exc:
        return _error(exc, EXIT_FAILED)
    print(json.dumps({"ok": True, **result}))
    return 0
