"""Assemble and run a gateway from its configuration: the composition of the relay service.

Rules kept here:

* ``build_runtime`` turns a ``GatewayConfig`` into the runtime objects (signing key, signer,
  verified directory, store, metrics, relay); nothing is global, the clock is injected.
  Everything wrong with the files is raised before a socket is opened.
* The store is chosen by ``store.url`` (``make_store``): ``sqlite://`` is the embedded
  ``SqliteStore`` of one process; ``postgresql://USER@HOST:PORT/DB`` is ``PostgresStore``
  (the ``postgres`` extra), shared by any number of replicas. Its password comes only from
  ``store.password`` (``KETENPOST_STORE__PASSWORD_FILE``), never from the URL or a command
  line. A deployment (or a test run) that lives in a schema of its own names it in the URL:
  ``postgresql://ketenpost@db/ketenpost?search_path=ijmond`` (asyncpg sends query parameters
  it does not know as server settings).
* With PostgreSQL the rate limit holds per partner across replicas (docs/adr/0005): the
  relay's limiter is a ``SharedRateLimiter`` and ``RateExchange`` tells the other replicas
  every ``RATE_EXCHANGE_S`` what this one admitted, over the store's peer channel.
* A store outage does not stop the process: ``/readyz`` answers 503 while the store cannot be
  reached, submissions are refused with ``store_unavailable`` (transient), and the store
  reconnects by itself (the pool replaces dead connections, the listener reconnects).
* The directory is verified with TUF's rules from the configured trusted root and re-read from
  the bundle folder every ``directory.refresh_s`` (an operator may copy a new bundle in); a
  bundle that fails to verify leaves the last good one in place (and, once that expires, the
  relay refuses with ``directory_expired`` while it keeps delivering). A bundle published to
  ``POST /v1/directory`` is verified against the same trusted state on a copy, written to
  the bundle folder (each file replaced atomically, the timestamp last), and only then
  served: a refused or unwritable bundle changes nothing.
* **TLS certificate rotation without a restart** (``TlsReloader``): every
  ``TLS_RELOAD_S`` and on SIGHUP the certificate and key files are looked at; when they
  changed, the new pair is checked and loaded into the live ``SSLContext``. New handshakes get
  the new certificate, connections already open keep theirs, so no request fails. A pair that
  does not load (half copied, key not the certificate's) keeps the old one and is retried.
* ``serve`` listens with HTTPS only (``keys.tlsidentity.server_context``: TLS >= 1.2, client
  certificates required, only the configured trust anchors) on the partner port and plain
  HTTP on the operator port. SIGTERM/SIGINT: stop accepting, let in-flight requests finish
  (``shutdown_timeout``), then close the store (``cleanup_ctx``).
* **Restore guard** (``gateway.published``): before a socket is opened, ``serve`` compares the
  store's audit head with the highest checkpoint it published (a file outside the store) and
  refuses a store that is behind unless started with ``after_restore``; while it runs it
  advances that mark every ``published.RECORD_INTERVAL_S`` and once more after it stopped.
  A SQLite store is held with ``<store>.lock`` for the process's lifetime, so a second gateway
  or ``store restore`` cannot touch it meanwhile. For PostgreSQL the guard runs only with a
  ``published_state`` file (the configuration folder is read-only in the deployments).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import secrets
import signal
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from aiohttp import web

from gateway.app import Runtime, create_operator_app, create_partner_app
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.published import RECORD_INTERVAL_S, MarkFile, default_mark_path, guard
from gateway.ratelimit import SharedRateLimiter
from gateway.relay import Relay, RelayStore, audit_leaf_hash
from gateway.retention import run_retention
from gateway.signer import GatewaySigner
from gateway.store.backup import store_lock
from gateway.store.errors import StoreError
from gateway.store.sqlite import SqliteStore
from keys import Directory, DirectoryError, KeysError, KeyUse
from keys.keyfile import load_ed25519_key
from keys.signed_directory import (
    DirectoryBundle,
    DirectoryExpiry,
    TrustedDirectory,
    read_bundle,
    write_bundle,
)
from keys.tlsidentity import TlsFiles, reload_certificate, server_context

logger = logging.getLogger("gateway.server")

VERSION: Final = "0.1.0.dev0"
# How long in-flight requests may take to finish after SIGTERM (a long-poll returns sooner:
# its wait is bounded by limits.max_wait_s and the connection is closed).
SHUTDOWN_TIMEOUT_S: Final = 10.0
# How often a replica tells the others what it admitted per partner: the longest a peer's
# admissions go unseen by this replica's rate limit.
RATE_EXCHANGE_S: Final = 0.1
# Partners per peer message: a partner id is at most 64 characters, so 80 of them with their
# counts stay under PostgreSQL's 8,000-byte NOTIFY payload limit.
_PARTNERS_PER_MESSAGE: Final = 80
# How often the TLS certificate and key files are looked at for a rotation (SIGHUP: at once).
TLS_RELOAD_S: Final = 30.0


class TrustedDirectorySource:
    """A ``DirectorySource`` over a TUF-verified bundle folder, refreshed on demand and
    published to (``PublishableDirectorySource``). ``refresh`` and ``publish`` may run in
    worker threads; a lock keeps them one at a time, and readers see the old or the new
    directory, never a mix."""

    def __init__(self, trusted_root: Path, bundle: Path, now: int) -> None:
        try:
            self._trusted = TrustedDirectory(trusted_root.read_bytes())
        except OSError as exc:
            raise ConfigError("directory.trusted_root", str(exc)) from None
        self._bundle = bundle
        self._lock = threading.Lock()
        self._last = self._trusted.update(read_bundle(bundle), now)

    def refresh(self, now: int) -> None:
        """Re-read and verify the bundle; keep the last good directory if it fails."""
        with self._lock:
            try:
                self._last = self._trusted.update(read_bundle(self._bundle), now)
            except DirectoryError as exc:
                logger.warning("directory_refresh_failed", extra={"reason": exc.reason.value})

    def publish(self, bundle: DirectoryBundle, now: int) -> Directory:
        """Verify ``bundle`` at ``now``, write it to the bundle folder, then serve it.

        Verified on a copy of the trusted state, so a refusal (``DirectoryError``: rollback,
        freeze, below threshold, …) or a failed write (``OSError``) leaves everything as it
        was — also the roots: a bundle whose targets fail does not advance the trusted root.
        """
        with self._lock:
            candidate = copy.deepcopy(self._trusted)
            directory = candidate.update(bundle, now)
            write_bundle(bundle, self._bundle)
            self._trusted, self._last = candidate, directory
        logger.info(
            "directory_published",
            extra={"version": directory.version, "root_version": candidate.root_version},
        )
        return directory

    @property
    def expiry(self) -> DirectoryExpiry:
        """Expiry of each TUF role of the directory in use (for the expiry gauges)."""
        return self._trusted.expiry

    def current(self, now: int) -> Directory:
        self._trusted.current(now)
        return self._last

    def last(self) -> Directory:
        return self._last


class PeerChannel(Protocol):
    """What ``RateExchange`` needs of a store shared by replicas (``PostgresStore``)."""

    peer_listener: Callable[[str], None] | None

    async def tell_peers(self, payload: str) -> None: ...


class RateExchange:
    """Shares a ``SharedRateLimiter``'s admissions with the other replicas of one store.

    A message is ``{"replica": ID, "taken": {PARTNER: COUNT}}``; a replica ignores its own
    (NOTIFY reaches the sender's listener too). A message that cannot be sent is kept and sent
    with the next one; one lost in a listener's reconnect lets a partner overshoot once, by
    at most what one interval admitted (the limit protects capacity; it is not a security
    boundary).
    """

    def __init__(
        self, limiter: SharedRateLimiter, peers: PeerChannel, monotonic: Callable[[], float]
    ) -> None:
        self.limiter = limiter
        self.peers = peers
        self.monotonic = monotonic
        self.replica = secrets.token_hex(8)
        # Set whenever a peer's admissions were taken off this replica's buckets (for tests).
        self.debited = asyncio.Event()
        peers.peer_listener = self.receive

    async def send(self) -> None:
        """Tell the peers what was admitted since the last send. Raises ``StoreError`` (what
        was not sent is kept for the next send)."""
        items = sorted(self.limiter.drain().items())
        for start in range(0, len(items), _PARTNERS_PER_MESSAGE):
            chunk = dict(items[start : start + _PARTNERS_PER_MESSAGE])
            payload = json.dumps({"replica": self.replica, "taken": chunk}, separators=(",", ":"))
            try:
                await self.peers.tell_peers(payload)
            except StoreError:
                self.limiter.restore(dict(items[start:]))
                raise

    def receive(self, payload: str) -> None:
        """Debit a peer's admissions (called by the store's listener)."""
        try:
            message = json.loads(payload)
            replica, taken = message["replica"], message["taken"]
        except (ValueError, KeyError, TypeError):
            taken = None
        if not isinstance(taken, dict):
            logger.warning("rate_exchange_malformed")
            return
        if replica == self.replica:
            return
        now = self.monotonic()
        for partner, count in taken.items():
            if isinstance(count, int):
                self.limiter.debit(str(partner), count, now)
        self.debited.set()

    async def run(self, interval_s: float = RATE_EXCHANGE_S) -> None:
        """Send every ``interval_s`` until cancelled; a store outage only delays sending."""
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(StoreError):
                await self.send()


@dataclass
class Built:
    runtime: Runtime
    directories: TrustedDirectorySource
    config: GatewayConfig
    # Set for a store shared by replicas (PostgreSQL); ``serve`` runs it.
    rate_exchange: RateExchange | None = None


def sqlite_path(config: GatewayConfig) -> Path:
    """The SQLite database file; ``ConfigError`` for another kind of store."""
    path = config.store.sqlite_path
    if path is None:
        raise ConfigError("store.url", "not a sqlite:// store")
    return path


def make_store(config: GatewayConfig, signer: GatewaySigner) -> RelayStore:
    """The store ``store.url`` names, not yet opened. Raises ``ConfigError`` for a URL the
    store refuses, or for PostgreSQL without the ``postgres`` extra installed."""
    max_batch = max(config.limits.max_batch, 256)
    path = config.store.sqlite_path
    if path is not None:
        return SqliteStore(path, signer, audit_leaf_hash, max_batch=max_batch)
    try:
        # Imported here: asyncpg is the optional ``postgres`` extra.
        from gateway.store.postgres import PostgresStore  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "store.url",
            "a postgresql:// store needs the postgres extra: pip install 'ketenpost[postgres]'",
        ) from None
    password = config.store.password.reveal() if config.store.password is not None else None
    try:
        return PostgresStore(
            config.store.url, signer, audit_leaf_hash, password=password, max_batch=max_batch
        )
    except ValueError as exc:
        raise ConfigError("store.url", str(exc)) from None


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
    store = make_store(config, signer)
    metrics = metrics if metrics is not None else GatewayMetrics(version=VERSION)
    relay = Relay(
        store=store,
        directories=directories,
        limits=config.limits,
        metrics=metrics,
        clock=clock,
    )
    exchange = None
    if config.store.sqlite_path is None:
        # Replicas share one store: the rate limit is the partner's across all of them.
        limiter = SharedRateLimiter(config.limits.rate_per_s, config.limits.rate_burst)
        relay.rate = limiter
        exchange = RateExchange(limiter, _peer_channel(store), clock.monotonic)
    # The gateway's own certificate expiry is exported beside the partners'.
    relay.note_own_certificate(config.tls.cert.read_bytes())
    runtime = Runtime(
        relay=relay,
        signer=signer,
        metrics=metrics,
        bundle_dir=config.directory.bundle,
        sweep_interval_s=float(min(config.directory.refresh_s, 10)),
    )
    return Built(runtime, directories, config, exchange)


def _peer_channel(store: RelayStore) -> PeerChannel:
    from gateway.store.postgres import PostgresStore  # noqa: PLC0415

    assert isinstance(store, PostgresStore)
    return store


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
        # In a thread: reading and verifying the bundle must not hold up requests.
        await asyncio.to_thread(built.directories.refresh, clock.now())


class TlsReloader:
    """Loads a rotated TLS certificate into the partner listener's live ``SSLContext``.

    ``check`` compares the files' identity (inode, size, mtime) with what was loaded last and
    reloads when either changed; ``reload`` loads unconditionally (SIGHUP). Both return
    whether the context changed and never raise: a pair that fails to load is logged
    (``tls_reload_failed``) and tried again at the next check.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        files: TlsFiles,
        environ: Mapping[str, str] | None = None,
        on_loaded: Callable[[bytes], None] | None = None,
    ) -> None:
        self.context = context
        self.files = files
        self._environ = environ
        # Told the new certificate after each reload (the gateway's own certificate expiry).
        self._on_loaded = on_loaded
        self._seen = self._stamp()

    def _stamp(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            stats = [os.stat(p) for p in (self.files.certificate, self.files.private_key)]
        except OSError:
            return None
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def check(self) -> bool:
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        return self._load(stamp)

    def reload(self) -> bool:
        return self._load(self._stamp())

    def _load(self, stamp: tuple[tuple[int, int, int], ...] | None) -> bool:
        try:
            reload_certificate(self.context, self.files, self._environ)
        except KeysError as exc:
            logger.warning(
                "tls_reload_failed", extra={"reason": exc.reason.value, "detail": str(exc)}
            )
            return False
        self._seen = stamp
        logger.info("tls_reloaded", extra={"certificate": str(self.files.certificate)})
        if self._on_loaded is not None:
            with contextlib.suppress(OSError):
                self._on_loaded(Path(self.files.certificate).read_bytes())
        return True

    async def run(self, interval_s: float = TLS_RELOAD_S) -> None:
        """``check`` every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.check()


def published_mark_file(config: GatewayConfig, published_state: Path | None) -> MarkFile | None:
    """Where the restore guard keeps the published mark: ``published_state`` if given, else
    ``<sqlite file>.published``; None (no guard) for PostgreSQL without ``published_state``."""
    if published_state is not None:
        return MarkFile(published_state)
    path = config.store.sqlite_path
    return MarkFile(default_mark_path(path)) if path is not None else None


async def check_restore_guard(
    config: GatewayConfig, signer: GatewaySigner, marks: MarkFile, *, after_restore: bool, now: int
) -> None:
    """Run ``published.guard`` on a store instance of its own, opened and closed here, before
    anything else touches the store. Raises ``RestoreRefusedError`` or ``PublishedError``."""
    store = make_store(config, signer)
    await store.open()
    try:
        await guard(store, marks, after_restore=after_restore, now=now)
    finally:
        await store.close()


async def _record_published(store: RelayStore, marks: MarkFile) -> None:
    """Advance the published mark to the committed head every ``RECORD_INTERVAL_S``. The
    write and its fsyncs run on a worker thread, off the event loop; a write still running when
    this task is cancelled finishes there, and ``MarkFile``'s lock makes the final ``advance``
    wait for it, so the mark never moves back."""
    while True:
        await asyncio.sleep(RECORD_INTERVAL_S)
        try:
            await asyncio.to_thread(marks.advance, await store.audit_head())
        except Exception:  # a failed read or write is retried next interval; serving goes on
            logger.exception("published_mark_failed")


async def serve(
    config: GatewayConfig,
    *,
    stop: asyncio.Event | None = None,
    after_restore: bool = False,
    published_state: Path | None = None,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set). Raises
    ``RestoreRefusedError`` before listening when the store is behind the published mark
    (module rules), ``StoreInUseError`` when another process holds a SQLite store."""
    sqlite_file = config.store.sqlite_path
    with contextlib.ExitStack() as held:
        if sqlite_file is not None:
            held.enter_context(store_lock(sqlite_file, holder="serve"))
        await _serve(config, stop, after_restore, published_mark_file(config, published_state))


async def _serve(
    config: GatewayConfig,
    stop: asyncio.Event | None,
    after_restore: bool,
    marks: MarkFile | None,
) -> None:
    built = build_runtime(config)
    if marks is None:
        logger.warning("restore_guard_off", extra={"detail": "no published_state file given"})
    else:
        await check_restore_guard(
            config,
            built.runtime.signer,
            marks,
            after_restore=after_restore,
            now=built.runtime.relay.clock.now(),
        )
    environ: dict[str, str] | None = None
    if config.tls.key_passphrase is not None:
        environ = {"KETENPOST_TLS_PASSPHRASE": config.tls.key_passphrase.reveal()}
        from keys.keyfile import PassphraseSource  # noqa: PLC0415

        files = TlsFiles(
            certificate=config.tls.cert,
            private_key=config.tls.key,
            trust_anchors=config.tls.trust_anchors,
            passphrase=PassphraseSource.from_env("KETENPOST_TLS_PASSPHRASE"),
        )
    else:
        files = tls_files(config)
    ssl_context = server_context(files, environ)
    tls_reloader = TlsReloader(
        ssl_context, files, environ, on_loaded=built.runtime.relay.note_own_certificate
    )
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
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, tls_reloader.reload)
    tasks = [
        asyncio.create_task(_refresh_directory(built)),
        asyncio.create_task(tls_reloader.run()),
    ]
    if built.rate_exchange is not None:
        tasks.append(asyncio.create_task(built.rate_exchange.run()))
    if marks is not None:
        tasks.append(asyncio.create_task(_record_published(built.runtime.relay.store, marks)))
    # Retention: at every approach's retention deadline its audit entries, messages and token
    # are deleted (gateway.retention).
    tasks.append(
        asyncio.create_task(
            run_retention(
                built.runtime.relay.store, built.runtime.relay.clock, built.runtime.metrics
            )
        )
    )
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        logger.info("gateway_stopping")
        # Partner listener first: stop accepting, finish in-flight, then cleanup_ctx closes
        # the store.
        await partner.cleanup()
        await operator.cleanup()
        if marks is not None:
            await _record_final(config, built.runtime.signer, marks)


async def _record_final(config: GatewayConfig, signer: GatewaySigner, marks: MarkFile) -> None:
    """After the last request: the mark becomes the head the store was left with."""
    store = make_store(config, signer)
    try:
        await store.open()
        try:
            marks.advance(await store.audit_head())
        finally:
            await store.close()
    except Exception:  # the periodic record stands; logged for the operator
        logger.exception("published_mark_failed")


__all__ = [
    "Built",
    "KeysError",
    "RateExchange",
    "TlsReloader",
    "TrustedDirectorySource",
    "build_runtime",
    "check_restore_guard",
    "make_store",
    "published_mark_file",
    "serve",
]
