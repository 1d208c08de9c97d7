"""The relay benchmark: a real gateway against the ceiling of a bare aiohttp handler, in one run.

Rules kept here (issue 3, item 8):

* The gateway is the real thing: ``ketenpost serve`` in its own process, over mTLS, on a fresh
  SQLite file with ``synchronous=FULL`` (every 202 follows a durable commit), every check of
  the relay decision run for every message (only token signatures are cached, as the design
  allows). The only settings changed are the per-partner rate limit (raised so that it does not
  cap the measurement) and the log level, both as ``KETENPOST_*`` variables.
* The ceiling is a bare aiohttp POST handler in its own process with the **same** TLS context
  (client certificates required, the covenant CA), answering 202 with a small JSON document
  without reading anything but the body: what HTTP over mTLS costs on this machine.
* Senders submit **pre-sealed** envelopes: sealing and opening are the adapters' cost, measured
  here separately, single-threaded, as seals/s, opens/s and outer-signature verifications/s.
  Recipients long-poll, sign a delivery receipt per message (with the plaintext hash known
  from sealing, so the load generator does not spend its core on decryption) and post them
  in batches; one sender task drains and acknowledges the sender events.
* A message counts as relayed when its delivery receipt was accepted: ``relay_msgs_per_s`` is
  measured messages over the time from the first measured submission to the last receipt.
  Latencies are measured by the load generator (``time.perf_counter``) around each request.
* Everything binds to 127.0.0.1. This module imports ``keys`` and ``gateway`` only, never the
  adapters (DESIGN.md layering): it speaks HTTP with aiohttp directly. A development
  deployment is made by running ``ketenpost init`` as a subprocess, as a user would.
* The machine is shared and noisy: compare figures as ratios within one run.
* PostgreSQL in the same run (issue 5, item 5): after SQLite, the same pre-sealed envelopes are
  relayed through one ``ketenpost serve`` on a fresh PostgreSQL schema (``postgres_1``), then
  through two on another fresh schema (``postgres_2``: senders split across both replicas,
  pollers on either, the sender-event drainer on the first). Each schema is created for the run
  (``?search_path=`` in the store URL) and dropped after it. An unreachable server skips both
  with the reason in the JSON (``{"skipped": ...}``); the SQLite figures stand alone then.

* The cost floor (issue 3): in the same run, the per-message CPU of only the work no correct
  implementation of this protocol can avoid, each part measured on this machine: HTTP over
  mTLS (the ceiling server's and its clients' CPU per request, times the requests per message
  the relay run made), the Ed25519 signatures and verifications the protocol requires per
  message (PyNaCl, the faster library here), and a minimal durable SQLite workload (WAL,
  ``synchronous=FULL``, group commits of the size the relay run reached). Everything else the
  gateway spends is overhead of this implementation. ``floor.floor_max_msgs_per_s_on_this_machine``
  is what the machine's cores could relay if the gateway and the load generator did nothing
  else; the floor is a lower bound, not a forecast.

``GatewayProcess`` and ``Covenant`` are reused by the crash-safety test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import resource
import secrets
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import nacl.signing
from aiohttp import web

from gateway.protocol.envelope import (
    CONTENT_TYPE as ENVELOPE_CONTENT_TYPE,
)
from gateway.protocol.envelope import (
    decode_envelope,
    encode_envelope,
    open_envelope,
    seal,
    verify_signature,
)
from gateway.protocol.messages import encode_body, example
from gateway.protocol.policy import default_policy, sendable_types
from gateway.protocol.receipts import DeliveryReceipt, sign_delivery_receipt
from gateway.protocol.token import RolePurpose, TokenSubject, encode_signed, issue, token_hash
from gateway.protocol.types import ApproachKind, MessageType, new_pseudonym
from gateway.signer import encode_signed_object
from keys import Directory, Ed25519KeyPair, HybridKemKeyPair, KeyUse, Role
from keys.keyfile import load_ed25519_key, load_encrypt_key
from keys.signed_directory import TrustedDirectory, read_bundle
from keys.tlsidentity import TlsFiles, client_context, server_context

DAY: Final = 86_400
# The W3C traceparent every benchmark envelope carries (a fixed, valid example value).
TRACE: Final = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SENDER: Final = "politie-ijmond"
RECIPIENT: Final = "halt"
COORDINATOR: Final = "gemeente-velsen"
PARTICIPANTS: Final = (COORDINATOR, SENDER, RECIPIENT)
TOKEN_CONTENT_TYPE: Final = "application/vnd.ketenpost.token+msgpack"
# Targets of issue 3 on the 2-core development machine.
TARGET_MSGS_PER_S: Final = 3000.0
TARGET_ACCEPT_P99_MS: Final = 25.0
# How long to wait for a process to listen, and for a run to finish, before giving up.
READY_TIMEOUT_S: Final = 30.0
# The PostgreSQL server of ``--postgres`` unless given (``KETENPOST_BENCH_PG_URL`` overrides).
DEFAULT_PG_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNECT_TIMEOUT_S: Final = 5.0
# Figures compared with SQLite's in ``postgres_N.ratio_to_sqlite``.
RATIO_FIGURES: Final = (
    "relay_msgs_per_s",
    "accept_p50_ms",
    "accept_p99_ms",
    "accept_to_receipt_p50_ms",
    "accept_to_receipt_p99_ms",
    "gateway_cpu_s_per_1000_msgs",
)
RUN_TIMEOUT_S: Final = 600.0
# The rate limit is a protection against a misbehaving partner, not part of the relay's
# cost; the benchmark raises it so that it does not cap the measurement.
BENCH_ENV: Final = {
    "KETENPOST_LIMITS__RATE_PER_S": "1000000",
    "KETENPOST_LIMITS__RATE_BURST": "1000000",
}


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a request was refused)."""


class PostgresUnreachable(Exception):
    """The PostgreSQL server of the run cannot be reached: its parts are skipped."""


@dataclass(frozen=True)
class BenchSettings:
    """One run's shape. ``messages`` are relayed end to end; ``crypto_samples`` envelopes are
    opened and verified for the per-core figures (all ``messages`` are sealed and timed)."""

    messages: int = 20_000
    senders: int = 32
    pollers: int = 4
    poll_limit: int = 100
    ceiling_requests: int = 20_000
    crypto_samples: int = 1_000
    quick: bool = False
    profile: Path | None = None
    # PostgreSQL server for the postgres_1 / postgres_2 runs; None: SQLite only.
    postgres: str | None = None
    # Messages through the cost floor's SQLite workload, and Ed25519 operations timed per
    # round (three rounds; the median counts).
    floor_messages: int = 5_000
    floor_ed25519_ops: int = 2_000


QUICK: Final = BenchSettings(messages=3_000, ceiling_requests=3_000, crypto_samples=300, quick=True)
FULL: Final = BenchSettings()


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the process binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ketenpost_command(*args: str) -> list[str]:
    """The ``ketenpost`` command line with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "ketenpost", *args]


def run_ketenpost(*args: str, env: Mapping[str, str] | None = None) -> str:
    """Run one ``ketenpost`` verb to completion; its stdout. Raises ``BenchError``."""
    done = subprocess.run(
        ketenpost_command(*args),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if done.returncode != 0:
        raise BenchError(f"ketenpost {args[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def make_deployment(target: Path) -> Path:
    """``ketenpost init`` a development deployment in ``target``; its root."""
    run_ketenpost("init", str(target))
    return target


class GatewayProcess:
    """``ketenpost serve`` as a subprocess on fixed ports and one SQLite file, restartable.

    The ports are chosen once, so clients keep their URL across restarts. ``kill`` is SIGKILL
    (nothing runs in the gateway after it); ``stop`` is SIGTERM, the orderly shutdown.
    """

    def __init__(
        self,
        config: Path,
        store: Path,
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        profile: Path | None = None,
        store_url: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # A postgresql:// URL instead of the SQLite file ``store``.
        self._store_url = store_url
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.profile = profile
        self.port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def operator_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def migrate(self) -> None:
        run_ketenpost(
            "store",
            "migrate",
            "--config",
            str(self.config),
            "--store",
            self.store_url,
            env=self.env,
        )

    @property
    def store_url(self) -> str:
        if self._store_url is not None:
            return self._store_url
        return f"sqlite://{self.store.resolve()}"

    def command(self) -> list[str]:
        serve = [
            "serve",
            "--config",
            str(self.config),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--store",
            self.store_url,
        ]
        if self.profile is None:
            return ketenpost_command(*serve)
        # pyinstrument samples the event loop thread; SIGTERM ends serve() normally, so the
        # report is written on the way out.
        return [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "text",
            "-o",
            str(self.profile),
            "-m",
            "ketenpost",
            *serve,
        ]

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise BenchError("the gateway is already running")
        out = (
            self.log.open("ab") if self.log is not None else open(os.devnull, "wb")  # noqa: SIM115
        )
        with out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.starts += 1

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until ``/readyz`` answers 200. Raises ``BenchError`` if the process exits first."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    raise BenchError(f"the gateway exited during start-up{self._log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.operator_url + "/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise BenchError(f"the gateway was not ready within {timeout_s} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return ": " + self.log.read_text(encoding="utf-8", errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait; the exit code (SIGKILL after ``timeout_s``)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the running gateway process (Linux ``/proc``)."""
        if self.process is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        # After the ")" of the command name: state is field 0, utime 11 and stime 12.
        return (int(fields[11]) + int(fields[12])) / ticks


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of process ``pid`` in nanoseconds (Linux
    ``/proc/PID/task/*/schedstat``, first field); ``None`` where that is not available.

    Finer than ``/proc/PID/stat``'s clock ticks (10 ms), which matters for the ceiling phase of
    a quick run (a few tenths of a second). A thread's figure is brought up to date whenever it
    is switched out, so read it while the process is idle."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        for task in tasks:
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


# -- the covenant, from a deployment folder -----------------------------------------------


@dataclass(frozen=True)
class RegisteredToken:
    token_id: str
    token_hash: str
    subjects: tuple[str, ...]
    body: bytes


@dataclass(frozen=True)
class Sealed:
    """A pre-sealed envelope and what its recipient's receipt needs."""

    message_id: str
    envelope: bytes
    header_hash: str
    plaintext_hash: str


class Covenant:
    """The partners' keys and the verified directory of a ``ketenpost init`` deployment."""

    def __init__(self, root: Path, *, now: int) -> None:
        self.root = root
        trusted = TrustedDirectory((root / "directory" / "root.json").read_bytes())
        self.directory: Directory = trusted.update(read_bundle(root / "directory"), now)
        self.gateway_config = root / "gateway.toml"

    def folder(self, partner: str) -> Path:
        return self.root / "partners" / partner

    def tls(self, partner: str) -> TlsFiles:
        keys = self.folder(partner) / "keys"
        return TlsFiles(
            certificate=keys / "tls.crt",
            private_key=keys / "tls.key",
            trust_anchors=(self.folder(partner) / "trust" / "ca.crt",),
        )

    def client_ssl(self, partner: str) -> ssl.SSLContext:
        return client_context(self.tls(partner))

    def sign_key(self, partner: str) -> Ed25519KeyPair:
        return load_ed25519_key(self.folder(partner) / "keys" / "sign.key", KeyUse.SIGN)

    def encrypt_key(self, partner: str) -> HybridKemKeyPair:
        return load_encrypt_key(self.folder(partner) / "keys" / "encrypt.key")

    def issue_token(
        self, *, now: int, participants: Sequence[str] = PARTICIPANTS
    ) -> RegisteredToken:
        """A group-approach token of the coordinator for one fresh, informed subject."""
        policy = default_policy()
        subjects = (TokenSubject(pseudonym=new_pseudonym(), informed_at=now - DAY),)
        signed, _opening = issue(
            key=load_ed25519_key(self.folder(COORDINATOR) / "keys" / "token.key", KeyUse.TOKEN),
            coordinator=COORDINATOR,
            kind=ApproachKind.GROUP,
            subjects=subjects,
            participants=tuple(participants),
            allowed={
                role: sorted(sendable_types(policy, ApproachKind.GROUP, role)) for role in Role
            },
            valid_from=now - DAY,
            valid_until=now + 30 * DAY,
            retention_until=now + 365 * DAY,
            policy=policy,
            purposes={
                Role.MUNICIPALITY: RolePurpose(purpose="Regie.", legal_basis="Convenant art. 4")
            },
            decided_by="Regisseur",
            decided_on=datetime.datetime.fromtimestamp(now - DAY, tz=datetime.UTC).date(),
            decision_reference="BENCH-1",
            informing={s.pseudonym: "Per brief." for s in subjects},
            now=now,
        )
        token_id: str = msgspec.msgpack.decode(signed.payload)["token_id"]
        return RegisteredToken(
            token_id,
            token_hash(signed),
            tuple(s.pseudonym for s in subjects),
            encode_signed(signed),
        )

    def sealer(self, token: RegisteredToken, *, now: int) -> Iterator[Sealed]:
        """Endless fresh envelopes ``SENDER`` -> ``RECIPIENT`` (a ``signal`` about the token's
        subject), each with a random message id."""
        sign_key = self.sign_key(SENDER)
        recipients = [(RECIPIENT, self.directory.current_key(RECIPIENT, KeyUse.ENCRYPT, now))]
        body = encode_body(example(MessageType.SIGNAL, subjects=tuple(sorted(token.subjects))))
        plaintext_hash = hashlib.sha256(body).hexdigest()
        while True:
            message_id = secrets.token_hex(32)
            data = encode_envelope(
                seal(
                    sender=SENDER,
                    sign_key=sign_key,
                    recipients=recipients,
                    body=body,
                    message_id=message_id,
                    token_id=token.token_id,
                    token_hash=token.token_hash,
                    subjects=token.subjects,
                    message_type=MessageType.SIGNAL,
                    schema_version=1,
                    created_at=now,
                    expires_at=now + 7 * DAY,
                    trace_id=TRACE,
                )
            )
            header_hash = decode_envelope(data).header_hash.hex()
            yield Sealed(message_id, data, header_hash, plaintext_hash)

    def receipt(self, sealed: Sealed, key: Ed25519KeyPair, *, now: int) -> bytes:
        """``RECIPIENT``'s signed delivery receipt for ``sealed``."""
        return encode_signed_object(
            sign_delivery_receipt(
                DeliveryReceipt(
                    message_id=sealed.message_id,
                    header_hash=sealed.header_hash,
                    recipient=RECIPIENT,
                    received_at=now,
                    plaintext_hash=sealed.plaintext_hash,
                ),
                key,
            )
        )


# -- crypto per core -----------------------------------------------------------------------


@dataclass(frozen=True)
class CryptoFigures:
    seals_per_s: float
    opens_per_s: float
    verify_per_s: float


def measure_crypto(
    covenant: Covenant, token: RegisteredToken, messages: int, samples: int, *, now: int
) -> tuple[list[Sealed], CryptoFigures]:
    """Seal ``messages`` envelopes (timed: seals/s), then open and verify ``samples`` of them
    (opens/s, outer-signature verifications/s). Single-threaded: figures per core."""
    sealer = covenant.sealer(token, now=now)
    started = time.perf_counter()
    sealed = [next(sealer) for _ in range(messages)]
    seal_s = time.perf_counter() - started
    sample = sealed[: max(1, min(samples, len(sealed)))]
    key = covenant.encrypt_key(RECIPIENT)
    keys = {key.kid: key}
    started = time.perf_counter()
    for s in sample:
        open_envelope(
            s.envelope,
            covenant.directory,
            recipient=RECIPIENT,
            encrypt_keys=keys,
            accepted_at=now,
            now=now,
        )
    open_s = time.perf_counter() - started
    decoded = [decode_envelope(s.envelope) for s in sample]
    started = time.perf_counter()
    for d in decoded:
        verify_signature(d, covenant.directory, at=now)
    verify_s = time.perf_counter() - started
    return sealed, CryptoFigures(
        seals_per_s=len(sealed) / seal_s,
        opens_per_s=len(sample) / open_s,
        verify_per_s=len(decoded) / verify_s,
    )


# -- the ceiling: a bare aiohttp POST handler over the same mTLS ----------------------------


async def _bare_post(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"received": len(body)}, status=202)


def gateway_ssl(root: Path) -> ssl.SSLContext:
    """The gateway's server context of the deployment in ``root`` (the ceiling server's)."""
    return server_context(
        TlsFiles(
            certificate=root / "gateway" / "tls.crt",
            private_key=root / "gateway" / "tls.key",
            trust_anchors=(root / "ca" / "ca.crt",),
        )
    )


def serve_ceiling(root: Path, port: int) -> None:
    """Run the bare handler on 127.0.0.1:``port`` with the gateway's TLS context until SIGTERM."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/messages", _bare_post)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        ssl_context=gateway_ssl(root),
        access_log=None,
        print=None,
    )


def start_ceiling(root: Path, port: int) -> subprocess.Popen[bytes]:
    """Start ``serve_ceiling`` in its own process (as the gateway runs in its own)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.bench", "ceiling", str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError("the ceiling server exited during start-up")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise BenchError("the ceiling server did not listen in time")


def _session(ssl_context: ssl.SSLContext, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context, limit=connections),
        timeout=aiohttp.ClientTimeout(total=120),
    )


@dataclass(frozen=True)
class CeilingFigures:
    """The bare handler's throughput and the CPU both sides spent on the measured requests
    (``server_cpu_s`` is ``None`` where ``/proc`` does not tell)."""

    req_per_s: float
    requests: int
    server_cpu_s: float | None
    client_cpu_s: float


async def measure_ceiling(
    covenant: Covenant, settings: BenchSettings, envelopes: list[bytes]
) -> CeilingFigures:
    """Requests per second of ``settings.senders`` concurrent POSTs to the bare handler, and
    the CPU per request of the server (from ``/proc``) and of this process (the clients)."""
    port = free_port()
    process = start_ceiling(covenant.root, port)
    try:
        await _wait_port(port, process)
        url = f"https://127.0.0.1:{port}/v1/messages"
        headers = {"Content-Type": ENVELOPE_CONTENT_TYPE}
        async with _session(covenant.client_ssl(SENDER), settings.senders) as session:

            async def post(i: int) -> None:
                data = envelopes[i % len(envelopes)]
                async with session.post(url, data=data, headers=headers) as response:
                    await response.read()
                    if response.status != 202:
                        raise BenchError(f"the ceiling server answered {response.status}")

            async def worker(start: int, count: int) -> None:
                for i in range(start, start + count):
                    await post(i)

            # Warm up every connection (TLS handshakes are not what this measures).
            await asyncio.gather(*(post(i) for i in range(settings.senders)))
            per = max(1, settings.ceiling_requests // settings.senders)
            server_before = process_cpu_ns(process.pid)
            client_before = _own_cpu_seconds()
            started = time.perf_counter()
            await asyncio.gather(*(worker(w * per, per) for w in range(settings.senders)))
            elapsed = time.perf_counter() - started
            client_cpu = _own_cpu_seconds() - client_before
            server_after = process_cpu_ns(process.pid)
        requests = per * settings.senders
        server_cpu = (
            (server_after - server_before) / 1e9
            if server_before is not None and server_after is not None
            else None
        )
        return CeilingFigures(requests / elapsed, requests, server_cpu, client_cpu)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the relay -----------------------------------------------------------------------------


@dataclass
class RelayRun:
    """What the load generator saw (times from ``time.perf_counter``)."""

    accept_ms: list[float] = field(default_factory=list)
    accepted_at: dict[str, float] = field(default_factory=dict)
    receipted_at: dict[str, float] = field(default_factory=dict)
    deliveries: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    events_acked: int = 0
    receipt_posts: int = 0
    polls: int = 0
    event_polls: int = 0
    event_posts: int = 0
    # HTTP requests made during the measured phase (submissions, polls, receipt posts, event
    # polls and acknowledgements): the cost floor's requests per message.
    measured_requests: int = 0

    def requests(self) -> int:
        """Requests made so far other than submissions."""
        return self.polls + self.receipt_posts + self.event_polls + self.event_posts


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class RelayLoad:
    """Senders, recipients and the sender-event drainer against one running gateway."""

    def __init__(
        self,
        covenant: Covenant,
        url: str | Sequence[str],
        settings: BenchSettings,
        sealed: Sequence[Sealed],
    ) -> None:
        self.covenant = covenant
        # Several URLs: replicas of one store; senders and pollers are spread over them.
        self.urls = [url] if isinstance(url, str) else list(url)
        self.url = self.urls[0]
        self.settings = settings
        self.by_id = {s.message_id: s for s in sealed}
        self.halt_key = covenant.sign_key(RECIPIENT)
        self.run = RelayRun()
        self.expected: set[str] = set()
        self.all_receipted = asyncio.Event()
        self.stopping = False

    async def register(self, token: RegisteredToken) -> None:
        async with (
            _session(self.covenant.client_ssl(COORDINATOR), 1) as session,
            session.post(
                self.url + "/v1/approaches",
                data=token.body,
                headers={"Content-Type": TOKEN_CONTENT_TYPE},
            ) as response,
        ):
            if response.status not in (200, 201):
                detail = await response.text()
                raise BenchError(f"token registration refused ({response.status}): {detail}")

    async def send(
        self, session: aiohttp.ClientSession, items: Sequence[Sealed], url: str | None = None
    ) -> None:
        headers = {"Content-Type": ENVELOPE_CONTENT_TYPE}
        target = (url or self.url) + "/v1/messages"
        for item in items:
            started = time.perf_counter()
            async with session.post(target, data=item.envelope, headers=headers) as response:
                body = await response.read()
                done = time.perf_counter()
            if response.status != 202:
                try:
                    reason = str(json.loads(body).get("reason", response.status))
                except ValueError:
                    reason = str(response.status)
                self.run.refused[reason] = self.run.refused.get(reason, 0) + 1
                raise BenchError(f"the gateway refused a benchmark message: {reason}")
            self.run.accept_ms.append((done - started) * 1000)
            self.run.accepted_at[item.message_id] = done

    async def receive(self, session: aiohttp.ClientSession, url: str | None = None) -> None:
        base = url or self.url
        params = {"wait": "1", "limit": str(self.settings.poll_limit)}
        while not self.stopping:
            async with session.get(base + "/v1/inbox", params=params) as response:
                if response.status != 200:
                    raise BenchError(f"inbox answered {response.status}")
                doc = await response.json()
            self.run.polls += 1
            deliveries = doc["deliveries"]
            if not deliveries:
                continue
            self.run.deliveries += len(deliveries)
            now = int(time.time())
            receipts = [
                self.covenant.receipt(self.by_id[d["message_id"]], self.halt_key, now=now)
                for d in deliveries
            ]
            payload = {
                "receipts": [_b64(r) for r in receipts],
                "rejections": [],
                "acks": [],
            }
            async with session.post(base + "/v1/receipts", json=payload) as response:
                if response.status != 200:
                    raise BenchError(
                        f"receipts answered {response.status}: {await response.text()}"
                    )
                await response.read()
            done = time.perf_counter()
            self.run.receipt_posts += 1
            for d in deliveries:
                self.run.receipted_at.setdefault(d["message_id"], done)
            if self.expected and self.expected.issubset(self.run.receipted_at):
                self.all_receipted.set()

    async def drain_events(self, session: aiohttp.ClientSession) -> None:
        params = {"wait": "1", "limit": "100"}
        while not self.stopping:
            async with session.get(self.url + "/v1/inbox", params=params) as response:
                if response.status != 200:
                    raise BenchError(f"inbox answered {response.status}")
                doc = await response.json()
            self.run.event_polls += 1
            ids = [e["event_id"] for e in doc["events"]]
            if not ids:
                continue
            async with session.post(self.url + "/v1/receipts", json={"acks": ids}) as response:
                if response.status != 200:
                    raise BenchError(f"event acks answered {response.status}")
                self.run.events_acked += int((await response.json())["acked"])
            self.run.event_posts += 1

    async def phase(self, sender: aiohttp.ClientSession, items: Sequence[Sealed]) -> float:
        """Submit ``items`` over ``settings.senders`` tasks; wait until all are receipted.
        Returns the seconds from the first submission to the last receipt."""
        self.expected = {s.message_id for s in items}
        self.all_receipted.clear()
        n = self.settings.senders
        slices = [items[i::n] for i in range(n)]
        urls = self.urls
        started = time.perf_counter()
        await asyncio.gather(
            *(self.send(sender, s, urls[i % len(urls)]) for i, s in enumerate(slices) if s)
        )
        await asyncio.wait_for(self.all_receipted.wait(), RUN_TIMEOUT_S)
        last = max(self.run.receipted_at[m] for m in self.expected)
        return last - started


def _b64(data: bytes) -> str:
    import base64  # noqa: PLC0415 - only the load generator needs it

    return base64.b64encode(data).decode("ascii")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores (Linux
    ``/proc/stat``; zeros elsewhere). Busy is everything but idle and iowait."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(f) for f in fields]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already counted in user; the first 8 fields are the whole.
    total = sum(ticks[:8])
    return (total - idle) / hz, total / hz


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuShares:
    """CPU seconds spent during the measured phase: by the gateway, by the load generator
    (this process), and by the whole machine (busy and in total, over all cores)."""

    gateway_s: float
    loadgen_s: float
    machine_busy_s: float
    machine_total_s: float


async def measure_relay(
    covenant: Covenant,
    gateway: GatewayProcess | Sequence[GatewayProcess],
    settings: BenchSettings,
    token: RegisteredToken,
    sealed: Sequence[Sealed],
) -> tuple[RelayRun, float, int, CpuShares]:
    """Run warm-up then the measured phase. Returns the run, its seconds, the measured
    message count and the CPU spent during the measured phase (of all gateways). Several
    gateways (replicas of one store): senders and pollers are spread over them."""
    gateways = [gateway] if isinstance(gateway, GatewayProcess) else list(gateway)
    load = RelayLoad(covenant, [g.url for g in gateways], settings, sealed)
    await load.register(token)
    warmup = min(len(sealed) // 10, settings.senders * 4)
    sender = _session(covenant.client_ssl(SENDER), settings.senders)
    recipient = _session(covenant.client_ssl(RECIPIENT), settings.pollers * 2)
    drainer = _session(covenant.client_ssl(SENDER), 2)
    async with sender, recipient, drainer:
        background = [
            asyncio.create_task(load.receive(recipient, load.urls[i % len(load.urls)]))
            for i in range(settings.pollers)
        ]
        background.append(asyncio.create_task(load.drain_events(drainer)))
        try:
            await load.phase(sender, sealed[:warmup])
            load.run.accept_ms.clear()
            cpu_before = sum(g.cpu_seconds() for g in gateways)
            own_before = _own_cpu_seconds()
            busy_before, total_before = machine_cpu_seconds()
            requests_before = load.run.requests()
            elapsed = await load.phase(sender, sealed[warmup:])
            busy_after, total_after = machine_cpu_seconds()
            load.run.measured_requests = (
                len(sealed) - warmup + load.run.requests() - requests_before
            )
            cpu = CpuShares(
                gateway_s=sum(g.cpu_seconds() for g in gateways) - cpu_before,
                loadgen_s=_own_cpu_seconds() - own_before,
                machine_busy_s=busy_after - busy_before,
                machine_total_s=total_after - total_before,
            )
        finally:
            load.stopping = True
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    # Only the measured messages count for accept-to-receipt.
    measured = sealed[warmup:]
    run = load.run
    run.accepted_at = {s.message_id: run.accepted_at[s.message_id] for s in measured}
    return run, elapsed, len(measured), cpu


# -- the cost floor ------------------------------------------------------------------------

# Ed25519 operations per relayed message that the protocol requires of the gateway: it
# verifies the sender's outer signature and the recipient's delivery receipt, and signs the
# acceptance receipt and the sender event (the receipt sent back to the sender); each commit
# that appends audit leaves also signs one checkpoint (counted from the run). The token's
# signature is checked once per token (DESIGN.md allows caching it), so not per message. The
# load generator signs one delivery receipt per message; sealing was done beforehand.
GATEWAY_VERIFIES_PER_MSG: Final = 2
GATEWAY_SIGNS_PER_MSG: Final = 2
LOADGEN_SIGNS_PER_MSG: Final = 1
# What the gateway signs: a label and a payload of a few hundred bytes (receipts, events).
FLOOR_SIGNED_BYTES: Final = 512
# Audit leaves per message in this protocol: the acceptance and the delivery outcome.
AUDIT_LEAVES_PER_MSG: Final = 2
# Sizes of what the floor's SQLite workload stores besides the envelope, in bytes: an
# acceptance receipt (inclusion proof and checkpoint), an audit entry, its salt, and a signed
# sender event carrying the delivery receipt.
FLOOR_RECEIPT_BYTES: Final = 1_200
FLOOR_ENTRY_BYTES: Final = 300
FLOOR_SALT_BYTES: Final = 16
FLOOR_EVENT_BYTES: Final = 700
_FLOOR_ROUNDS: Final = 3

_FLOOR_SCHEMA: Final = """
CREATE TABLE messages (
    message_id TEXT PRIMARY KEY, sender TEXT NOT NULL, header_hash TEXT NOT NULL,
    token_id TEXT NOT NULL, accepted_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    audit_index INTEGER NOT NULL, receipt BLOB NOT NULL, envelope BLOB
);
CREATE TABLE deliveries (
    message_id TEXT NOT NULL, recipient TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (message_id, recipient)
);
CREATE TABLE audit_leaves (idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, entry BLOB, salt BLOB);
CREATE TABLE sender_events (
    event_id INTEGER PRIMARY KEY, sender TEXT NOT NULL, message_id TEXT NOT NULL,
    signed BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Ed25519Costs:
    """CPU seconds per operation (PyNaCl, this thread, median of the rounds)."""

    sign_s: float
    verify_s: float


def measure_ed25519(ops: int, rounds: int = _FLOOR_ROUNDS) -> Ed25519Costs:
    """Time ``ops`` signatures and ``ops`` verifications of ``FLOOR_SIGNED_BYTES``-byte
    messages, ``rounds`` times, in this thread's CPU time."""
    key = nacl.signing.SigningKey.generate()
    verify_key = key.verify_key
    messages = [secrets.token_bytes(FLOOR_SIGNED_BYTES) for _ in range(ops)]
    signs: list[float] = []
    verifies: list[float] = []
    for _ in range(rounds):
        started = time.thread_time()
        signed = [key.sign(m).signature for m in messages]
        signs.append((time.thread_time() - started) / ops)
        started = time.thread_time()
        for m, sig in zip(messages, signed, strict=True):
            verify_key.verify(m, sig)
        verifies.append((time.thread_time() - started) / ops)
    return Ed25519Costs(statistics.median(signs), statistics.median(verifies))


@dataclass(frozen=True)
class SqliteFloor:
    """The floor's durable store work: CPU (this thread, ``fsync`` included) and wall time."""

    cpu_s_per_msg: float
    wall_s_per_commit: float
    msgs_per_commit: int
    commits: int
    messages: int


def measure_sqlite_floor(
    folder: Path, envelopes: Sequence[bytes], msgs_per_commit: int
) -> SqliteFloor:
    """A minimal durable relay store, timed: SQLite in WAL mode with ``synchronous=FULL``;
    each commit accepts ``msgs_per_commit`` messages (message row with its envelope and
    acceptance receipt, one delivery, one audit leaf with its SHA-256 leaf hash) and finishes
    the previous commit's (delivery deleted, ciphertext dropped, signed sender event stored,
    one audit leaf). One connection, ``executemany`` per statement and commit: nothing a
    correct store could leave out, nothing it would have to add per message."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "floor.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    try:
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_FLOOR_SCHEMA)
        receipt = secrets.token_bytes(FLOOR_RECEIPT_BYTES)
        entry = secrets.token_bytes(FLOOR_ENTRY_BYTES)
        salt = secrets.token_bytes(FLOOR_SALT_BYTES)
        event = secrets.token_bytes(FLOOR_EVENT_BYTES)
        ids = [secrets.token_hex(32) for _ in envelopes]
        header = secrets.token_hex(32)
        token_id = secrets.token_hex(16)
        batches = [
            range(i, min(i + msgs_per_commit, len(envelopes)))
            for i in range(0, len(envelopes), msgs_per_commit)
        ]
        leaf = 0
        # The first commit warms the page cache and is not counted.
        cpu = wall = 0.0
        for n, batch in enumerate([*batches, range(0)]):
            previous = batches[n - 1] if n > 0 else range(0)
            cpu_started, wall_started = time.thread_time(), time.perf_counter()
            accepted = []
            leaves = []
            for i in batch:
                accepted.append(
                    (ids[i], SENDER, header, token_id, 0, 0, leaf, receipt, envelopes[i])
                )
                leaves.append((leaf, hashlib.sha256(b"\x00" + entry + ids[i].encode()).digest()))
                leaf += 1
            finished = []
            for i in previous:
                finished.append((ids[i],))
                leaves.append((leaf, hashlib.sha256(b"\x00" + entry + ids[i].encode()).digest()))
                leaf += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", accepted)
            conn.executemany(
                "INSERT INTO deliveries VALUES (?, ?, 'pending')",
                [(row[0], RECIPIENT) for row in accepted],
            )
            conn.executemany(
                "INSERT INTO audit_leaves VALUES (?, ?, ?, ?)",
                [(idx, digest, entry, salt) for idx, digest in leaves],
            )
            conn.executemany(
                "DELETE FROM deliveries WHERE message_id = ? AND recipient = 'halt'", finished
            )
            conn.executemany("UPDATE messages SET envelope = NULL WHERE message_id = ?", finished)
            conn.executemany(
                "INSERT INTO sender_events (sender, message_id, signed) VALUES (?, ?, ?)",
                [(SENDER, row[0], event) for row in finished],
            )
            conn.execute("COMMIT")
            if n > 0:
                cpu += time.thread_time() - cpu_started
                wall += time.perf_counter() - wall_started
    finally:
        conn.close()
    # The counted commits accept every batch but the first and finish every batch.
    counted = max(1, len(envelopes) - len(batches[0]) // 2)
    commits = max(1, len(batches))
    return SqliteFloor(
        cpu_s_per_msg=cpu / counted,
        wall_s_per_commit=wall / commits,
        msgs_per_commit=msgs_per_commit,
        commits=commits,
        messages=counted,
    )


def measure_floor(
    ceiling: CeilingFigures,
    facts: _RunFacts,
    *,
    gateway_cpu_ms_per_msg: float,
    loadgen_cpu_ms_per_msg: float,
    envelopes: Sequence[bytes],
    workdir: Path,
    ed25519_ops: int,
) -> dict[str, Any]:
    """The cost floor of the relay run ``facts`` on this machine (see the module docstring):
    per-message CPU of HTTP over mTLS, Ed25519 and durable SQLite work, for the gateway and
    the load generator, and the throughput the machine's cores allow at that cost."""
    cores = os.cpu_count() or 1
    requests_per_msg = facts.measured_requests / max(1, facts.measured)
    server_s = (ceiling.server_cpu_s or 0.0) / ceiling.requests
    client_s = ceiling.client_cpu_s / ceiling.requests
    checkpoints_per_msg = (facts.checkpoints or 0) / max(1, facts.messages)
    # Messages per commit as the run reached them: its commits with audit leaves are its
    # checkpoints, and each message brings AUDIT_LEAVES_PER_MSG leaves.
    msgs_per_commit = max(1, round(facts.messages / facts.checkpoints)) if facts.checkpoints else 1
    ed = measure_ed25519(ed25519_ops)
    store = measure_sqlite_floor(workdir, envelopes, msgs_per_commit)
    gateway_signs = GATEWAY_SIGNS_PER_MSG + checkpoints_per_msg
    parts_gateway_ms = {
        "http": server_s * requests_per_msg * 1000,
        "ed25519": (GATEWAY_VERIFIES_PER_MSG * ed.verify_s + gateway_signs * ed.sign_s) * 1000,
        "sqlite": store.cpu_s_per_msg * 1000,
    }
    parts_loadgen_ms = {
        "http": client_s * requests_per_msg * 1000,
        "ed25519": LOADGEN_SIGNS_PER_MSG * ed.sign_s * 1000,
    }
    gateway_ms = sum(parts_gateway_ms.values())
    loadgen_ms = sum(parts_loadgen_ms.values())
    return {
        "floor_cpu_ms_per_msg": _round(gateway_ms, 4),
        "floor_loadgen_cpu_ms_per_msg": _round(loadgen_ms, 4),
        "floor_max_msgs_per_s_on_this_machine": _round(cores * 1000 / (gateway_ms + loadgen_ms), 1),
        # Cores the floor alone takes at the target rate (gateway and load generator).
        "floor_cores_at_target": _round(TARGET_MSGS_PER_S * (gateway_ms + loadgen_ms) / 1000, 3),
        "cores": cores,
        "gateway_parts_ms_per_msg": {k: _round(v, 4) for k, v in parts_gateway_ms.items()},
        "loadgen_parts_ms_per_msg": {k: _round(v, 4) for k, v in parts_loadgen_ms.items()},
        # The relay run's own CPU per message over the floor's (same run).
        "gateway_cpu_over_floor": _round(gateway_cpu_ms_per_msg / gateway_ms, 2),
        "loadgen_cpu_over_floor": _round(loadgen_cpu_ms_per_msg / loadgen_ms, 2),
        "http": {
            "ceiling_server_cpu_ms_per_req": _round(server_s * 1000, 4),
            "ceiling_client_cpu_ms_per_req": _round(client_s * 1000, 4),
            "ceiling_requests": ceiling.requests,
            "requests_per_msg": _round(requests_per_msg, 4),
        },
        "ed25519": {
            "library": "PyNaCl",
            "sign_ms": _round(ed.sign_s * 1000, 4),
            "verify_ms": _round(ed.verify_s * 1000, 4),
            "gateway_verifies_per_msg": GATEWAY_VERIFIES_PER_MSG,
            "gateway_signs_per_msg": _round(gateway_signs, 4),
            "checkpoints_per_msg": _round(checkpoints_per_msg, 4),
            "loadgen_signs_per_msg": LOADGEN_SIGNS_PER_MSG,
        },
        "sqlite": {
            "cpu_ms_per_msg": _round(store.cpu_s_per_msg * 1000, 4),
            "commit_wall_ms": _round(store.wall_s_per_commit * 1000, 3),
            "msgs_per_commit": store.msgs_per_commit,
            "commits": store.commits,
            "messages": store.messages,
            "synchronous": "FULL",
        },
    }


# -- the run -------------------------------------------------------------------------------


def machine_info(loadavg_before: Sequence[float]) -> dict[str, Any]:
    """The machine, and its load average before and after the run (a shared machine's other
    work shows there)."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "aiohttp": aiohttp.__version__,
        "openssl": ssl.OPENSSL_VERSION,
        "sqlite": sqlite3.sqlite_version,
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _round(value: float, digits: int = 2) -> float:
    return round(value, digits)


@dataclass(frozen=True)
class _Shared:
    """What every backend's relay run of one benchmark shares."""

    covenant: Covenant
    settings: BenchSettings
    token: RegisteredToken
    sealed: Sequence[Sealed]
    ceiling: float
    workdir: Path


@dataclass(frozen=True)
class _RunFacts:
    """What the cost floor takes from a relay run: the requests made in the measured phase
    and, for SQLite, the signed checkpoints (one per commit that appended audit leaves)."""

    messages: int
    measured: int
    measured_requests: int
    checkpoints: int | None


def _count_checkpoints(store: Path) -> int | None:
    """Rows in the stopped gateway's ``checkpoints`` table (read-only); ``None`` if unreadable."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT count(*) FROM checkpoints").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0])


async def _relay_figures(
    shared: _Shared, name: str, *, replicas: int = 1, store_url: str | None = None
) -> tuple[dict[str, Any], _RunFacts]:
    """Relay ``shared.sealed`` through ``replicas`` gateways on one fresh store (a SQLite file
    in the work folder, or ``store_url``); stop them (exit 0 required), verify the audit log;
    the figures of the run and what the cost floor needs of it."""
    covenant, settings = shared.covenant, shared.settings
    gateways = [
        GatewayProcess(
            covenant.gateway_config,
            shared.workdir / f"{name}.db",
            env={**BENCH_ENV, "KETENPOST_LOG__LEVEL": "warning"},
            log=shared.workdir / f"gateway-{name}-{i + 1}.log",
            profile=settings.profile if store_url is None else None,
            store_url=store_url,
        )
        for i in range(replicas)
    ]
    gateways[0].migrate()
    try:
        for gateway in gateways:
            gateway.start()
        for gateway in gateways:
            await gateway.wait_ready()
        run, elapsed, measured, cpu = await measure_relay(
            covenant, gateways, settings, shared.token, shared.sealed
        )
    finally:
        exit_codes = [gateway.stop() for gateway in gateways]
    for gateway, exit_code in zip(gateways, exit_codes, strict=True):
        if exit_code != 0:
            raise BenchError(f"the gateway exited with {exit_code}{gateway._log_tail()}")
    audit = json.loads(
        run_ketenpost(
            "audit",
            "verify",
            "--config",
            str(covenant.gateway_config),
            "--store",
            gateways[0].store_url,
            env=gateways[0].env,
        )
    )
    to_receipt = [max(0.0, (run.receipted_at[m] - t) * 1000) for m, t in run.accepted_at.items()]
    relay_rate = measured / elapsed
    cores = os.cpu_count() or 1
    # Of the machine's CPU during the measured phase (all cores = 1.0): the gateway(s), the
    # load generator, and everything else (PostgreSQL; other work on a shared machine).
    machine_total = cpu.machine_total_s or elapsed * cores
    other = max(0.0, cpu.machine_busy_s - cpu.gateway_s - cpu.loadgen_s)
    facts = _RunFacts(
        messages=len(shared.sealed),
        measured=measured,
        measured_requests=run.measured_requests,
        checkpoints=_count_checkpoints(gateways[0].store) if store_url is None else None,
    )
    figures = {
        "relay_msgs_per_s": _round(relay_rate, 1),
        "ceiling_req_per_s": _round(shared.ceiling, 1),
        "relay_to_ceiling_ratio": _round(relay_rate / shared.ceiling, 3),
        "accept_p50_ms": _round(percentile(run.accept_ms, 50)),
        "accept_p99_ms": _round(percentile(run.accept_ms, 99)),
        "accept_to_receipt_p50_ms": _round(percentile(to_receipt, 50)),
        "accept_to_receipt_p99_ms": _round(percentile(to_receipt, 99)),
        "accept_mean_ms": _round(statistics.fmean(run.accept_ms) if run.accept_ms else 0.0),
        "senders": settings.senders,
        "pollers": settings.pollers,
        "messages": measured,
        "warmup_messages": len(shared.sealed) - measured,
        "relay_seconds": _round(elapsed, 3),
        "deliveries": run.deliveries,
        "redeliveries": max(0, run.deliveries - len(shared.sealed)),
        "receipt_posts": run.receipt_posts,
        "sender_events_acked": run.events_acked,
        "refused": run.refused,
        "gateway_cpu_s_per_1000_msgs": _round(cpu.gateway_s / measured * 1000, 3),
        "loadgen_cpu_s_per_1000_msgs": _round(cpu.loadgen_s / measured * 1000, 3),
        # Cores in use on average during the measured phase (all replicas together).
        "gateway_cores": _round(cpu.gateway_s / elapsed),
        "loadgen_cores": _round(cpu.loadgen_s / elapsed),
        "cpu_share": {
            "gateway": _round(cpu.gateway_s / machine_total, 3),
            "loadgen": _round(cpu.loadgen_s / machine_total, 3),
            "other_processes": _round(other / machine_total, 3),
            "idle": _round(max(0.0, 1 - cpu.machine_busy_s / machine_total), 3),
        },
        "audit_verified": bool(audit.get("ok")),
        "audit_leaves": audit.get("leaves"),
    }
    return figures, facts


def _with_search_path(url: str, schema: str) -> str:
    """``url`` with ``search_path=schema`` among its query parameters (replacing any)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def shown_url(url: str) -> str:
    """``url`` without a password and query, for the result document."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


async def _pg_admin(url: str) -> Any:
    """An asyncpg connection to ``url``; ``PostgresUnreachable`` (with the reason) if none."""
    try:
        import asyncpg  # noqa: PLC0415 - the optional ``postgres`` extra
    except ImportError:
        raise PostgresUnreachable("asyncpg (the postgres extra) is not installed") from None
    try:
        return await asyncpg.connect(url, timeout=PG_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PostgresUnreachable(f"{type(exc).__name__}: {exc}") from None


async def _postgres_figures(shared: _Shared, url: str, replicas: int) -> dict[str, Any]:
    """One PostgreSQL run with ``replicas`` gateways on a fresh schema, dropped afterwards."""
    admin = await _pg_admin(url)
    schema = f"kp_bench_{secrets.token_hex(6)}"
    try:
        version = str(await admin.fetchval("SHOW server_version"))
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            figures, _facts = await _relay_figures(
                shared,
                f"postgres-{replicas}",
                replicas=replicas,
                store_url=_with_search_path(url, schema),
            )
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await admin.close()
    figures["replicas"] = replicas
    figures["gateway"] = {
        "store": "postgresql",
        "server": shown_url(url),
        "server_version": version,
        "replicas": replicas,
        "tls": "mTLS (client certificates required)",
        "log_level": "warning",
        "rate_limit": "raised for the benchmark (shared across replicas)",
    }
    return figures


def _ratios(figures: dict[str, Any], sqlite: dict[str, Any]) -> dict[str, float]:
    """``figures`` / SQLite's, per ``RATIO_FIGURES`` (same run, so the ratios hold)."""
    return {
        name: _round(figures[name] / sqlite[name], 3) for name in RATIO_FIGURES if sqlite.get(name)
    }


async def run_bench(settings: BenchSettings, workdir: Path) -> dict[str, Any]:
    """One complete benchmark in ``workdir``; the result document."""
    run_started = time.perf_counter()
    loadavg_before = os.getloadavg()
    root = make_deployment(workdir / "covenant")
    # After init: its keys become active at the time it ran.
    now = int(time.time())
    covenant = Covenant(root, now=now)
    token = covenant.issue_token(now=now)
    sealed, crypto = measure_crypto(
        covenant, token, settings.messages, settings.crypto_samples, now=now
    )
    ceiling = await measure_ceiling(
        covenant, settings, [s.envelope for s in sealed[: settings.senders * 8]]
    )
    shared = _Shared(covenant, settings, token, sealed, ceiling.req_per_s, workdir)
    result, facts = await _relay_figures(shared, "ketenpost")
    floor = measure_floor(
        ceiling,
        facts,
        gateway_cpu_ms_per_msg=result["gateway_cpu_s_per_1000_msgs"],
        loadgen_cpu_ms_per_msg=result["loadgen_cpu_s_per_1000_msgs"],
        envelopes=[s.envelope for s in sealed[: settings.floor_messages]],
        workdir=workdir / "floor",
        ed25519_ops=settings.floor_ed25519_ops,
    )
    accept_p99 = result["accept_p99_ms"]
    relay_rate = result["relay_msgs_per_s"]
    result.update(
        {
            "seals_per_s": _round(crypto.seals_per_s, 1),
            "opens_per_s": _round(crypto.opens_per_s, 1),
            "verify_per_s": _round(crypto.verify_per_s, 1),
            "targets": {
                "relay_msgs_per_s": TARGET_MSGS_PER_S,
                "accept_p99_ms": TARGET_ACCEPT_P99_MS,
            },
            "targets_met": {
                "relay_msgs_per_s": relay_rate >= TARGET_MSGS_PER_S,
                "accept_p99_ms": accept_p99 <= TARGET_ACCEPT_P99_MS,
            },
            "floor": floor,
            "gateway": {
                "store": "sqlite",
                "synchronous": "FULL",
                "tls": "mTLS (client certificates required)",
                "log_level": "warning",
                "rate_limit": "raised for the benchmark",
            },
        }
    )
    for replicas in (1, 2):
        key = f"postgres_{replicas}"
        if settings.postgres is None:
            result[key] = {"skipped": "not requested (--no-postgres)"}
            continue
        try:
            figures = await _postgres_figures(shared, settings.postgres, replicas)
        except PostgresUnreachable as exc:
            result[key] = {
                "skipped": f"PostgreSQL at {shown_url(settings.postgres)} is not reachable "
                f"({exc}); the SQLite figures stand alone"
            }
            continue
        figures["ratio_to_sqlite"] = _ratios(figures, result)
        result[key] = figures
    result.update(
        {
            "quick": settings.quick,
            "machine": machine_info(loadavg_before),
            "started_at": datetime.datetime.fromtimestamp(now, tz=datetime.UTC).isoformat(),
            "duration_s": _round(time.perf_counter() - run_started, 1),
        }
    )
    return result


def bench(settings: BenchSettings, workdir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark (in a temporary folder unless ``workdir``). Raises ``BenchError``."""
    if workdir is not None:
        return asyncio.run(run_bench(settings, workdir))
    with tempfile.TemporaryDirectory(prefix="ketenpost-bench-") as tmp:
        return asyncio.run(run_bench(settings, Path(tmp)))


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.bench ceiling ROOT PORT``: the ceiling server process."""
    parser = argparse.ArgumentParser(prog="python -m gateway.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    ceiling = sub.add_parser("ceiling", help="the bare aiohttp POST handler over mTLS")
    ceiling.add_argument("root", type=Path)
    ceiling.add_argument("port", type=int)
    args = parser.parse_args(argv)
    serve_ceiling(args.root, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
