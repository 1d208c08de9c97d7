"""Assemble and run a gateway from its configuration: the composition of the relay service.

Rules kept here:

* ``build_runtime`` turns a ``GatewayConfig`` into the runtime objects (signing key, signer,
  verified directory, SQLite store, metrics, relay); nothing is global, the clock is injected.
  Everything wrong with the files is raised before a socket is opened.
* The directory is verified with TUF's rules from the configured trusted root and re-read from
  the bundle folder every ``directory.refresh_s``; a bundle that fails to verify leaves the
  last good one in place (and, once that expires, the relay refuses with
  ``directory_expired`` while it keeps delivering).
* ``serve`` listens with HTTPS only (``keys.tlsidentity.server_context``: TLS >= 1.2, client
  certificates required, only the configured trust anchors) on the partner port and plain
  HTTP on the operator port. SIGTERM/SIGINT: stop accepting, let in-flight requests finish
  (``shutdown_timeout``), then close the store (``cleanup_ctx``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from gateway.app import Runtime, create_operator_app, create_partner_app
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.relay import Relay, audit_leaf_hash
from gateway.signer import GatewaySigner
from gateway.store.sqlite import SqliteStore
from keys import Directory, DirectoryError, KeysError, KeyUse
from keys.keyfile import load_ed25519_key
from keys.signed_directory import TrustedDirectory, read_bundle
from keys.tlsidentity import TlsFiles, server_context

logger = logging.getLogger("gateway.server")

VERSION: Final = "0.1.0.dev0"
# How long in-flight requests may take to finish after SIGTERM (a long-poll returns sooner:
# its wait is bounded by limits.max_wait_s and the connection is closed).
SHUTDOWN_TIMEOUT_S: Final = 10.0


class TrustedDirectorySource:
    """A ``DirectorySource`` over a TUF-verified bundle folder, refreshed on demand."""

    def __init__(self, trusted_root: Path, bundle: Path, now: int) -> None:
        try:
            self._trusted = TrustedDirectory(trusted_root.read_bytes())
        except OSError as exc:
            raise ConfigError("directory.trusted_root", str(exc)) from None
        self._bundle = bundle
        self._last = self._trusted.update(read_bundle(bundle), now)

    def refresh(self, now: int) -> None:
        """Re-read and verify the bundle; keep the last good directory if it fails."""
        try:
            self._last = self._trusted.update(read_bundle(self._bundle), now)
        except DirectoryError as exc:
            logger.warning("directory_refresh_failed", extra={"reason": exc.reason.value})

    def current(self, now: int) -> Directory:
        self._trusted.current(now)
        return self._last

    def last(self) -> Directory:
        return self._last


@dataclass
class Built:
    runtime: Runtime
    directories: TrustedDirectorySource
    config: GatewayConfig


def sqlite_path(config: GatewayConfig) -> Path:
    path = config.store.sqlite_path
    if path is None:
        raise ConfigError("store.url", "only sqlite:// stores are implemented in this version")
    return path


def build_runtime(
    config: GatewayConfig, *, clock: Clock | None = None, metrics: GatewayMetrics | None = None
) -> Built:
    """Load keys and directory and build the runtime. Raises ``ConfigError`` or ``KeysError``
    (a key file, certificate or directory that does not load or verify)."""
    clock = clock if clock is not None else SystemClock()
    passphrase = config.keys.passphrase.reveal().encode() if config.keys.passphrase else None
    key = load_ed25519_key(config.keys.sign_key, KeyUse.SIGN, passphrase)
    signer = GatewaySigner(key, config.gateway.origin)
    directories = TrustedDirectorySource(
        config.directory.trusted_root, config.directory.bundle, clock.now()
    )
    store = SqliteStore(
        sqlite_path(config), signer, audit_leaf_hash, max_batch=max(config.limits.max_batch, 256)
    )
    metrics = metrics if metrics is not None else GatewayMetrics(version=VERSION)
    relay = Relay(
        store=store,
        directories=directories,
        limits=config.limits,
        metrics=metrics,
        clock=clock,
    )
    runtime = Runtime(
        relay=relay,
        signer=signer,
        metrics=metrics,
        bundle_dir=config.directory.bundle,
        sweep_interval_s=float(min(config.directory.refresh_s, 10)),
    )
    return Built(runtime, directories, config)


def tls_files(config: GatewayConfig) -> TlsFiles:
    return TlsFiles(
        certificate=config.tls.cert,
        private_key=config.tls.key,
        trust_anchors=config.tls.trust_anchors,
    )


async def _refresh_directory(built: Built) -> None:
    clock = built.runtime.relay.clock
    while True:
        await asyncio.sleep(built.config.directory.refresh_s)
        built.directories.refresh(clock.now())


async def serve(config: GatewayConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set)."""
    built = build_runtime(config)
    if config.tls.key_passphrase is not None:
        environ = {"KETENPOST_TLS_PASSPHRASE": config.tls.key_passphrase.reveal()}
        from keys.keyfile import PassphraseSource  # noqa: PLC0415

        files = TlsFiles(
            certificate=config.tls.cert,
            private_key=config.tls.key,
            trust_anchors=config.tls.trust_anchors,
            passphrase=PassphraseSource.from_env("KETENPOST_TLS_PASSPHRASE"),
        )
        ssl_context = server_context(files, environ)
    else:
        ssl_context = server_context(tls_files(config))
    partner = web.AppRunner(
        create_partner_app(built.runtime), shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None
    )
    operator = web.AppRunner(create_operator_app(built.runtime), access_log=None)
    await partner.setup()
    await operator.setup()
    listen, metrics_listen = config.gateway.listen, config.gateway.metrics_listen
    await web.TCPSite(partner, listen.host, listen.port, ssl_context=ssl_context).start()
    await web.TCPSite(operator, metrics_listen.host, metrics_listen.port).start()
    logger.info("gateway_started", extra={"address": str(listen), "version": VERSION})
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    refresher = asyncio.create_task(_refresh_directory(built))
    try:
        await stop.wait()
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        logger.info("gateway_stopping")
        # Partner listener first: stop accepting, finish in-flight, then cleanup_ctx closes
        # the store.
        await partner.cleanup()
        await operator.cleanup()


__all__ = ["Built", "KeysError", "TrustedDirectorySource", "build_runtime", "serve"]
