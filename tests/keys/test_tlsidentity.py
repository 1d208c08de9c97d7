"""mTLS identity: real handshakes on 127.0.0.1, and mapping a peer certificate to a partner."""

from __future__ import annotations

import dataclasses
import datetime
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.ca import (
    BACKDATE_S,
    CovenantCa,
    PartnerSubject,
    create_ca,
    make_csr,
    sign_csr,
)
from keys.directory import Directory, Partner, Role
from keys.errors import CertificateError, KeyFileError, KeysReason
from keys.keyfile import PassphraseSource
from keys.keypair import TlsKeyPair
from keys.tlsidentity import (
    TlsFiles,
    check_gateway_certificate,
    client_context,
    identify_peer,
    peer_certificate_der,
    server_context,
)
from tests.keys._fixtures_tls import (
    DAY,
    NOW,
    POLITIE,
    VELSEN,
    Issued,
    directory,
    exchange,
    issue_gateway,
    issue_partner,
    partner,
    tls_key_entry,
    write_ca,
    write_tls_files,
)

UNKNOWN = PartnerSubject("onbekend", "00000001999999999000", "Onbekende organisatie")
TLS_PASSPHRASE_ENV = "KETENPOST_TEST_TLS_PASSPHRASE"
TLS_PASSPHRASE = b"3f1c0a9e6b2d4f8a1e7c5b3d9f0a2c4e"


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------------------------
# A real PKI on disk, issued at the wall-clock time: OpenSSL checks validity against the real
# clock during a handshake, so these certificates must be valid now. Reading the clock once is
# not waiting for it.


@dataclasses.dataclass(frozen=True)
class Pki:
    now: int
    ca: CovenantCa
    anchor: Path
    other_anchor: Path
    gateway: Issued
    politie: Issued
    velsen_by_csr: Issued
    stranger: Issued  # CA-issued for politie's OIN, key not in the directory
    unknown: Issued  # CA-issued for an OIN not in the directory
    foreign: Issued  # issued by another CA for politie's OIN
    server: TlsFiles  # the gateway, key sealed with a passphrase from the environment
    foreign_server: TlsFiles
    clients: dict[str, TlsFiles]

    def directory(self) -> Directory:
        return directory(
            (
                partner(POLITIE, Role.POLICE, (tls_key_entry(self.politie.key, self.now - DAY),)),
                partner(
                    VELSEN, Role.MUNICIPALITY, (tls_key_entry(self.velsen_by_csr.key, self.now),)
                ),
            ),
            (tls_key_entry(self.gateway.key, self.now - DAY),),
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    now = int(time.time())
    ca = create_ca("IJmond covenant", now)
    other = create_ca("Other covenant", now)
    (root / "other").mkdir()
    anchor = write_ca(root, ca)
    other_anchor = write_ca(root / "other", other)
    # Velsen follows the request path: its own key, a CSR, a certificate signed from it.
    velsen_key = TlsKeyPair.generate()
    velsen = Issued(
        velsen_key,
        sign_csr(ca, make_csr(velsen_key, VELSEN.partner_id, VELSEN.oin, VELSEN.name), now),
    )
    gateway = issue_gateway(ca, now)
    issued = {
        "politie": issue_partner(ca, POLITIE, now),
        "velsen": velsen,
        "stranger": issue_partner(ca, POLITIE, now),
        "unknown": issue_partner(ca, UNKNOWN, now),
        "foreign": issue_partner(other, POLITIE, now),
    }
    clients = {
        name: write_tls_files(root / name, name, item, (anchor,)) for name, item in issued.items()
    }
    server = write_tls_files(
        root / "gateway",
        "gateway",
        gateway,
        (anchor,),
        passphrase=TLS_PASSPHRASE,
        passphrase_source=PassphraseSource.from_env(TLS_PASSPHRASE_ENV),
    )
    foreign_server = write_tls_files(
        root / "foreign-gateway", "gateway", issue_gateway(other, now), (other_anchor,)
    )
    return Pki(
        now=now,
        ca=ca,
        anchor=anchor,
        other_anchor=other_anchor,
        gateway=gateway,
        politie=issued["politie"],
        velsen_by_csr=velsen,
        stranger=issued["stranger"],
        unknown=issued["unknown"],
        foreign=issued["foreign"],
        server=server,
        foreign_server=foreign_server,
        clients=clients,
    )


ENV = {TLS_PASSPHRASE_ENV: TLS_PASSPHRASE.decode()}


def _server(pki: Pki) -> ssl.SSLContext:
    return server_context(pki.server, ENV)


def _no_certificate_client(pki: Pki) -> ssl.SSLContext:
    # A well-configured client that trusts the gateway but has no certificate of its own.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=pki.anchor)
    return context


def _tls12_client(pki: Pki) -> ssl.SSLContext:
    context = client_context(pki.clients["politie"])
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


CLIENTS: dict[str, Callable[[Pki], ssl.SSLContext]] = {
    "politie": lambda pki: client_context(pki.clients["politie"]),
    "politie-tls12": _tls12_client,
    "velsen-by-csr": lambda pki: client_context(pki.clients["velsen"]),
    "no-certificate": _no_certificate_client,
    "other-ca": lambda pki: client_context(pki.clients["foreign"]),
}


@pytest.mark.parametrize(
    ("client", "succeeds"),
    [
        pytest.param("politie", True, id="ca-issued-client-cert"),
        pytest.param("politie-tls12", True, id="ca-issued-client-cert-tls12"),
        pytest.param("velsen-by-csr", True, id="csr-issued-client-cert"),
        pytest.param("no-certificate", False, id="no-client-certificate"),
        pytest.param("other-ca", False, id="client-cert-from-another-ca"),
    ],
)
async def test_handshake(pki: Pki, client: str, succeeds: bool) -> None:
    result = await exchange(_server(pki), CLIENTS[client](pki))
    assert result.succeeded is succeeds
    if not succeeds:
        # The server never handed the connection to the application.
        assert result.peer_der is None
        assert result.client_read == b""


async def test_client_refuses_a_server_from_another_ca(pki: Pki) -> None:
    foreign_server = server_context(pki.foreign_server)
    result = await exchange(foreign_server, client_context(pki.clients["politie"]))
    assert not result.succeeded
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


async def test_client_checks_the_host_name(pki: Pki) -> None:
    result = await exchange(
        _server(pki), client_context(pki.clients["politie"]), server_hostname="gateway.example"
    )
    assert not result.succeeded
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        pytest.param("politie", POLITIE.partner_id, id="partner"),
        pytest.param("velsen", VELSEN.partner_id, id="partner-by-csr"),
    ],
)
async def test_identify_peer_after_handshake(pki: Pki, client: str, expected: str) -> None:
    result = await exchange(_server(pki), client_context(pki.clients[client]))
    assert result.peer_der is not None
    assert identify_peer(result.peer_der, pki.directory(), pki.now).id == expected
    # And the adapter's side: the server it reached is the gateway the directory pins.
    assert result.server_der is not None
    assert check_gateway_certificate(result.server_der, pki.directory(), pki.now).id == "gateway"


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        # Issued by the trusted CA, so the handshake succeeds; the directory has the last word.
        pytest.param("stranger", KeysReason.CERTIFICATE_SPKI_MISMATCH, id="spki-not-in-directory"),
        pytest.param("unknown", KeysReason.CERTIFICATE_OIN_UNKNOWN, id="unknown-oin"),
    ],
)
async def test_handshake_passes_but_identity_refused(
    pki: Pki, client: str, reason: KeysReason
) -> None:
    result = await exchange(_server(pki), client_context(pki.clients[client]))
    assert result.succeeded
    assert result.peer_der is not None
    with pytest.raises(CertificateError) as info:
        identify_peer(result.peer_der, pki.directory(), pki.now)
    assert info.value.reason is reason


# --------------------------------------------------------------------------------------------
# Contexts


def test_context_settings(pki: Pki) -> None:
    server = _server(pki)
    client = client_context(pki.clients["politie"])
    for context in (server, client):
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
        # Only the configured anchor: no system store, so no public CA can mint a partner.
        assert context.cert_store_stats()["x509_ca"] == 1
        tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)
    assert client.check_hostname


def test_server_context_refuses_a_key_readable_by_others(pki: Pki, tmp_path: Path) -> None:
    files = write_tls_files(tmp_path, "politie", pki.politie, (pki.anchor,))
    files.private_key.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        server_context(files)
    assert info.value.reason is KeysReason.KEY_FILE_PERMISSIONS
    assert f"chmod 600 {files.private_key}" in str(info.value)


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        pytest.param({}, KeysReason.PASSPHRASE_UNAVAILABLE, id="passphrase-env-unset"),
        pytest.param({TLS_PASSPHRASE_ENV: "wrong"}, KeysReason.WRONG_PASSPHRASE, id="wrong"),
    ],
)
def test_server_context_passphrase_errors(
    pki: Pki, environ: dict[str, str], reason: KeysReason
) -> None:
    with pytest.raises(KeyFileError) as info:
        server_context(pki.server, environ)
    assert info.value.reason is reason


def test_sealed_key_without_a_passphrase_source(pki: Pki) -> None:
    with pytest.raises(KeyFileError) as info:
        server_context(dataclasses.replace(pki.server, passphrase=None))
    assert info.value.reason is KeysReason.PASSPHRASE_REQUIRED


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(
            lambda f, p: dataclasses.replace(f, trust_anchors=()),
            KeysReason.CERTIFICATE_UNTRUSTED,
            id="no-trust-anchors",
        ),
        pytest.param(
            lambda f, p: dataclasses.replace(f, trust_anchors=(p / "absent.pem",)),
            KeysReason.CERTIFICATE_INVALID,
            id="trust-anchor-missing",
        ),
        pytest.param(
            lambda f, p: dataclasses.replace(f, certificate=f.trust_anchors[0]),
            KeysReason.CERTIFICATE_INVALID,
            id="certificate-not-of-the-key",
        ),
    ],
)
def test_context_configuration_errors(
    pki: Pki,
    tmp_path: Path,
    change: Callable[[TlsFiles, Path], TlsFiles],
    reason: KeysReason,
) -> None:
    files = change(pki.clients["politie"], tmp_path)
    for build in (server_context, client_context):
        with pytest.raises(CertificateError) as info:
            build(files)
        assert info.value.reason is reason


def test_peer_certificate_der_without_a_certificate() -> None:
    with pytest.raises(CertificateError) as info:
        peer_certificate_der(None)
    assert info.value.reason is KeysReason.CERTIFICATE_INVALID


# --------------------------------------------------------------------------------------------
# identify_peer, at a fixed time, as a table of named cases


@dataclasses.dataclass(frozen=True)
class World:
    ca: CovenantCa
    politie: Issued
    politie_new: Issued  # the successor key during a rotation
    velsen: Issued
    gateway: Issued


@pytest.fixture(scope="module")
def world() -> World:
    ca = create_ca("IJmond covenant", NOW - 30 * DAY)
    return World(
        ca=ca,
        politie=issue_partner(ca, POLITIE, NOW),
        politie_new=issue_partner(ca, POLITIE, NOW),
        velsen=issue_partner(ca, VELSEN, NOW),
        gateway=issue_gateway(ca, NOW),
    )


def _custom(ca: CovenantCa, key: TlsKeyPair, subject: x509.Name) -> bytes:
    """A CA-issued client certificate with an arbitrary subject."""
    return _der(
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(NOW - DAY, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(NOW + DAY, datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key.private_key, hashes.SHA256())
    )


@dataclasses.dataclass(frozen=True)
class Case:
    # The certificate presented, built from the world.
    cert: Callable[[World], bytes]
    # Politie's directory entry: its tls key entries and when it left, from the world.
    politie: Callable[[World], Partner] = lambda w: partner(
        POLITIE, Role.POLICE, (tls_key_entry(w.politie.key, NOW - DAY),)
    )
    at: int = NOW
    # None: identified as politie-ijmond.
    reason: KeysReason | None = None


def _politie_cert(w: World) -> bytes:
    return _der(w.politie.certificate)


def _politie_with(**times: int) -> Callable[[World], Partner]:
    return lambda w: partner(POLITIE, Role.POLICE, (tls_key_entry(w.politie.key, **times),))


def _rotating(w: World) -> Partner:
    # Old key retiring in a day, the successor active since an hour: both identify.
    return partner(
        POLITIE,
        Role.POLICE,
        (
            tls_key_entry(w.politie.key, NOW - 30 * DAY, retire_at=NOW + DAY),
            tls_key_entry(w.politie_new.key, NOW - 3600),
        ),
    )


def _politie_name(*attributes: x509.NameAttribute[str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, POLITIE.partner_id), *attributes])


_SN = x509.NameAttribute(NameOID.SERIAL_NUMBER, POLITIE.oin)

IDENTIFY_CASES: dict[str, Case] = {
    "known-partner": Case(_politie_cert),
    "rotation-old-key-retiring": Case(_politie_cert, politie=_rotating),
    "rotation-new-key": Case(lambda w: _der(w.politie_new.certificate), politie=_rotating),
    "unknown-oin": Case(
        lambda w: _der(issue_partner(w.ca, UNKNOWN, NOW).certificate),
        reason=KeysReason.CERTIFICATE_OIN_UNKNOWN,
    ),
    "spki-not-in-directory": Case(
        lambda w: _der(issue_partner(w.ca, POLITIE, NOW).certificate),
        reason=KeysReason.CERTIFICATE_SPKI_MISMATCH,
    ),
    "spki-of-another-partner": Case(
        lambda w: _custom(w.ca, w.velsen.key, POLITIE.to_name()),
        reason=KeysReason.CERTIFICATE_SPKI_MISMATCH,
    ),
    "spki-of-the-gateway": Case(
        lambda w: _custom(w.ca, w.gateway.key, POLITIE.to_name()),
        reason=KeysReason.CERTIFICATE_SPKI_MISMATCH,
    ),
    "no-serial-number": Case(
        lambda w: _custom(w.ca, w.politie.key, _politie_name()),
        reason=KeysReason.CERTIFICATE_INVALID,
    ),
    "two-serial-numbers": Case(
        lambda w: _custom(w.ca, w.politie.key, _politie_name(_SN, _SN)),
        reason=KeysReason.CERTIFICATE_INVALID,
    ),
    "expired": Case(_politie_cert, at=NOW + 398 * DAY, reason=KeysReason.CERTIFICATE_INVALID),
    "not-yet-valid": Case(
        _politie_cert, at=NOW - BACKDATE_S - 1, reason=KeysReason.CERTIFICATE_INVALID
    ),
    "not-a-certificate": Case(
        lambda w: b"\x30\x03\x02\x01\x01", reason=KeysReason.CERTIFICATE_INVALID
    ),
    "tls-key-revoked": Case(
        _politie_cert,
        politie=_politie_with(active_from=NOW - DAY, revoked_at=NOW - 60),
        reason=KeysReason.KEY_REVOKED,
    ),
    "tls-key-not-yet-active": Case(
        _politie_cert,
        politie=_politie_with(active_from=NOW + 60),
        reason=KeysReason.KEY_NOT_YET_ACTIVE,
    ),
    "tls-key-retired": Case(
        _politie_cert,
        politie=_politie_with(active_from=NOW - 30 * DAY, retire_at=NOW),
        reason=KeysReason.KEY_RETIRED,
    ),
    "partner-left": Case(
        _politie_cert,
        politie=lambda w: partner(
            POLITIE, Role.POLICE, (tls_key_entry(w.politie.key, NOW - DAY),), left_at=NOW
        ),
        reason=KeysReason.PARTNER_LEFT,
    ),
}


@pytest.mark.parametrize("name", list(IDENTIFY_CASES))
def test_identify_peer(world: World, name: str) -> None:
    case = IDENTIFY_CASES[name]
    lookup = directory(
        (
            case.politie(world),
            partner(VELSEN, Role.MUNICIPALITY, (tls_key_entry(world.velsen.key, NOW - DAY),)),
        ),
        (tls_key_entry(world.gateway.key, NOW - DAY),),
    )
    cert_der = case.cert(world)
    if case.reason is None:
        assert identify_peer(cert_der, lookup, case.at).id == POLITIE.partner_id
    else:
        with pytest.raises(CertificateError) as info:
            identify_peer(cert_der, lookup, case.at)
        assert info.value.reason is case.reason


def test_gateway_pin(world: World) -> None:
    lookup = directory((), (tls_key_entry(world.gateway.key, NOW - DAY),))
    assert check_gateway_certificate(_der(world.gateway.certificate), lookup, NOW).id == "gateway"
    # A certificate the trusted CA issued for another key is not the gateway.
    impostor = issue_gateway(world.ca, NOW)
    with pytest.raises(CertificateError) as info:
        check_gateway_certificate(_der(impostor.certificate), lookup, NOW)
    assert info.value.reason is KeysReason.CERTIFICATE_SPKI_MISMATCH
    # Nor is a partner's certificate, even one the directory lists.
    lookup = directory(
        (partner(POLITIE, Role.POLICE, (tls_key_entry(world.politie.key, NOW - DAY),)),),
        (tls_key_entry(world.gateway.key, NOW - DAY),),
    )
    with pytest.raises(CertificateError):
        check_gateway_certificate(_der(world.politie.certificate), lookup, NOW)
