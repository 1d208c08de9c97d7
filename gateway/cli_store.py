"""``ketenpost store backup`` and ``ketenpost store restore`` (registered by ``cli_serve``).

Rules kept here (house rule 10): the result as one JSON line on stdout, ``ketenpost: error:
<one line>`` on stderr; exit 0 on success, 2 for a bad configuration, 1 for any other failure
or refusal. Neither verb ever overwrites a file: a backup refuses an existing target, a restore
moves the replaced database aside. ``restore`` changes nothing without ``--yes``: without it,
it verifies the backup, prints what it would do, and exits 1.

A PostgreSQL store is refused with the pointer to its procedure (base backup and WAL
archiving, point-in-time recovery; docs/operations.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from gateway.config import GatewayConfig, apply_cli_overrides, load_config
from gateway.errors import ConfigError
from gateway.store.backup import (
    BackupError,
    Manifest,
    PostgresBackupRefusedError,
    backup_sqlite,
    manifest_path,
    restore_sqlite,
    verify_backup,
)

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2


def register(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``backup`` and ``restore`` to the ``store`` verbs."""
    backup = verbs.add_parser(
        "backup",
        help="copy a running SQLite store to a new file, with a manifest beside it",
        epilog="example: ketenpost store backup --config /etc/ketenpost/gateway.toml "
        "--out /var/backups/ketenpost/2026-05-29.db",
    )
    config_arg(backup)
    backup.add_argument("--store", metavar="URL", help="store URL (overrides the config)")
    backup.add_argument("--out", required=True, type=Path, metavar="PATH", help="a new file")
    backup.set_defaults(handler=run_backup)

    restore = verbs.add_parser(
        "restore",
        help="replace a stopped gateway's SQLite store with a verified backup",
        epilog="example: ketenpost store restore --config /etc/ketenpost/gateway.toml "
        "--from /var/backups/ketenpost/2026-05-29.db --yes   (then: ketenpost serve "
        "--config ... --after-restore)",
    )
    config_arg(restore)
    restore.add_argument("--store", metavar="URL", help="store URL (overrides the config)")
    restore.add_argument(
        "--from", dest="source", required=True, type=Path, metavar="PATH", help="the backup"
    )
    restore.add_argument(
        "--yes", action="store_true", help="replace the store (without it: verify and show)"
    )
    restore.set_defaults(handler=run_restore)


def _load(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(args.config, environ=os.environ, check_across=False)
    return apply_cli_overrides(config, store=args.store, cwd=Path.cwd())


def _error(message: object, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _manifest_summary(manifest: Manifest) -> dict[str, object]:
    return {
        "checkpoint_size": manifest.checkpoint_size,
        "checkpoint_root": base64.b64encode(manifest.checkpoint_root).decode(),
        "schema_version": manifest.schema_version,
        "created_at": manifest.created_at,
        "sha256": manifest.sha256,
    }


def run_backup(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    path = config.store.sqlite_path
    try:
        if path is None:
            raise PostgresBackupRefusedError
        manifest = backup_sqlite(path, args.out)
    except BackupError as exc:
        return _error(exc, EXIT_FAILED)
    print(
        json.dumps(
            {
                "backup": str(args.out),
                "manifest": str(manifest_path(args.out)),
                **_manifest_summary(manifest),
            }
        )
    )
    return 0


def run_restore(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    path = config.store.sqlite_path
    try:
        if path is None:
            raise PostgresBackupRefusedError
        if not args.yes:
            manifest = verify_backup(args.source)
            print(
                json.dumps(
                    {
                        "store": str(path),
                        "from": str(args.source),
                        "verified": True,
                        "restored": False,
                        **_manifest_summary(manifest),
                    }
                )
            )
            return _error(
                "the backup verifies; pass --yes to replace the store (the gateway must be "
                "stopped; the current database is moved aside)",
                EXIT_FAILED,
            )
        restored = restore_sqlite(path, args.source)
    except BackupError as exc:
        return _error(exc, EXIT_FAILED)
    print(
        json.dumps(
            {
                "store": str(restored.store),
                "from": str(restored.backup),
                "verified": True,
                "restored": True,
                "moved_aside": str(restored.moved_aside) if restored.moved_aside else None,
                **_manifest_summary(restored.manifest),
                "next": "ketenpost serve --config ... --after-restore",
            }
        )
    )
    return 0
