"""Test helpers for certificates, TLS files and directories with ``tls`` keys.

Everything is built in memory or under a test's ``tmp_path``; nothing is shared between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from keys.ca import (
    CovenantCa,
    PartnerSubject,
    issue_gateway_certificate,
    issue_partner_certificate,
    write_certificates_pem,
)
from keys.directory import Directory, DirectoryContents, DirectoryKey, GatewayEntry, Partner, Role
from keys.keyfile import PassphraseSource, write_tls_key
from keys.keypair import Algorithm, KeyUse, TlsKeyPair
from keys.tlsidentity import TlsFiles

# 2026-05-28T20:26:40Z: a fixed "now" for tests that do not touch a real handshake.
NOW = 1_780_000_000
DAY = 86_400

POLITIE = PartnerSubject("politie-ijmond", "00000001003214345000", "Politie IJmond")
VELSEN = PartnerSubject("gemeente-velsen", "00000001001753298000", "Gemeente Velsen")
GATEWAY = PartnerSubject("gateway", "00000009999999999000", "Ketenpost gateway")


@dataclass(frozen=True)
class Issued:
    """A key and the certificate a CA issued for it."""

    key: TlsKeyPair
    certificate: x509.Certificate


def issue_partner(ca: CovenantCa, subject: PartnerSubject, now: int) -> Issued:
    key = TlsKeyPair.generate()
    return Issued(key, issue_partner_certificate(ca, key, subject, now))


def issue_gateway(ca: CovenantCa, now: int) -> Issued:
    key = TlsKeyPair.generate()
    return Issued(key, issue_gateway_certificate(ca, key, GATEWAY, now))


def tls_key_entry(
    key: TlsKeyPair,
    active_from: int,
    *,
    retire_at: int | None = None,
    revoked_at: int | None = None,
) -> DirectoryKey:
    return DirectoryKey(
        kid=key.kid,
        use=KeyUse.TLS,
        alg=Algorithm.TLS_SPKI,
        public=key.public,
        active_from=active_from,
        retire_at=retire_at,
        revoked_at=revoked_at,
    )


def partner(
    subject: PartnerSubject,
    role: Role,
    keys: tuple[DirectoryKey, ...],
    *,
    left_at: int | None = None,
) -> Partner:
    return Partner(
        id=subject.partner_id,
        name=subject.name,
        oin=subject.oin,
        role=role,
        keys=keys,
        left_at=left_at,
    )


def directory(
    partners: tuple[Partner, ...], gateway_keys: tuple[DirectoryKey, ...] = ()
) -> Directory:
    return Directory(
        DirectoryContents(
            covenant="ijmond",
            partners=partners,
            gateway=GatewayEntry(id=GATEWAY.partner_id, keys=gateway_keys),
            policy=b"{}",
        )
    )


def write_ca(folder: Path, ca: CovenantCa) -> Path:
    path = folder / "ca.pem"
    write_certificates_pem(path, ca.certificate)
    return path


def write_tls_files(
    folder: Path,
    name: str,
    issued: Issued,
    anchors: tuple[Path, ...],
    *,
    passphrase: bytes | None = None,
    passphrase_source: PassphraseSource | None = None,
) -> TlsFiles:
    """Write ``issued`` as ``folder/name.pem`` and ``folder/name.key`` and describe them."""
    folder.mkdir(parents=True, exist_ok=True)
    certificate = folder / f"{name}.pem"
    key = folder / f"{name}.key"
    write_certificates_pem(certificate, issued.certificate)
    write_tls_key(key, issued.key, passphrase)
    return TlsFiles(
        certificate=certificate,
        private_key=key,
        trust_anchors=anchors,
        passphrase=passphrase_source,
    )


@dataclass(frozen=True)
class Exchange:
    """What one TLS connection attempt did."""

    # The client certificate the server saw (DER), or None if the server handler never ran.
    peer_der: bytes | None
    # The server certificate the client saw (DER), or None if the handshake failed.
    server_der: bytes | None
    # What the client read back: b"hello\n" when the whole exchange worked.
    client_read: bytes
    # The exception the client saw, if any.
    client_error: BaseException | None

    @property
    def succeeded(self) -> bool:
        return self.peer_der is not None and self.client_read == b"hello\n"


async def exchange(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "localhost"
) -> Exchange:
    """Run one real TLS connection on 127.0.0.1 between the two contexts.

    The server answers ``hello`` after the handshake and records the client's certificate. A
    failed handshake never reaches the handler; the client sees an exception or end of stream
    (in TLS 1.3 the client finishes its side before the server has judged its certificate).
    """
    peers: list[bytes | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        peers.append(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        writer.write(b"hello\n")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    read = b""
    server_der: bytes | None = None
    error: BaseException | None = None
    try:
        async with asyncio.timeout(10):
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client, server_hostname=server_hostname
                )
            except (ssl.SSLError, ConnectionError) as exc:
                error = exc
            else:
                client_ssl = writer.get_extra_info("ssl_object")
                server_der = client_ssl.getpeercert(binary_form=True) if client_ssl else None
                try:
                    read = await reader.readline()
                except (ssl.SSLError, ConnectionError) as exc:
                    error = exc
                finally:
                    writer.close()
                    with contextlib.suppress(ssl.SSLError, ConnectionError):
                        await writer.wait_closed()
    finally:
        listener.close()
        await listener.wait_closed()
    return Exchange(peers[0] if peers else None, server_der, read, error)
