"""The covenant CA: certificate shape, the CSR path, PEM files, chain verification."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.ca import (
    BACKDATE_S,
    CovenantCa,
    PartnerSubject,
    create_ca,
    csr_subject,
    issue_gateway_certificate,
    issue_partner_certificate,
    load_ca,
    make_csr,
    read_certificate_pem,
    read_certificates_pem,
    read_csr_pem,
    sign_csr,
    write_certificates_pem,
    write_csr_pem,
)
from keys.errors import CertificateError, KeyFileError, KeysReason
from keys.keyfile import write_tls_key
from keys.keypair import TlsKeyPair
from keys.tlsidentity import verify_chain
from tests.keys._fixtures_tls import DAY, GATEWAY, NOW, POLITIE, VELSEN

INVALID = KeysReason.CERTIFICATE_INVALID


@pytest.fixture(scope="module")
def ca() -> CovenantCa:
    return create_ca("IJmond covenant", NOW)


def _ts(moment: datetime.datetime) -> int:
    return int(moment.timestamp())


def _spki(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _only(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    (attribute,) = name.get_attributes_for_oid(oid)
    assert isinstance(attribute.value, str)
    return attribute.value


# --------------------------------------------------------------------------------------------
# Certificate shape


def test_ca_certificate(ca: CovenantCa) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert _ts(cert.not_valid_before_utc) == NOW - BACKDATE_S


def test_partner_certificate(ca: CovenantCa) -> None:
    key = TlsKeyPair.generate()
    cert = issue_partner_certificate(ca, key, POLITIE, NOW, days=30)
    # The OIN goes where PKIoverheid puts it: the subject serialNumber.
    assert _only(cert.subject, NameOID.SERIAL_NUMBER) == POLITIE.oin
    assert _only(cert.subject, NameOID.COMMON_NAME) == POLITIE.partner_id
    assert _only(cert.subject, NameOID.ORGANIZATION_NAME) == POLITIE.name
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    assert _spki(cert.public_key()) == key.public  # type: ignore[arg-type]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert _ts(cert.not_valid_before_utc) == NOW - BACKDATE_S
    assert _ts(cert.not_valid_after_utc) == NOW + 30 * DAY
    assert verify_chain(cert, [ca.certificate], NOW) == [cert, ca.certificate]


def test_gateway_certificate(ca: CovenantCa) -> None:
    cert = issue_gateway_certificate(ca, TlsKeyPair.generate(), GATEWAY, NOW)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    for name in ("localhost", "127.0.0.1"):
        verify_chain(cert, [ca.certificate], NOW, server_name=name)
    verify_chain(cert, [ca.certificate], NOW)


def test_certificate_may_not_outlive_the_ca() -> None:
    short_ca = create_ca("short", NOW, days=10)
    with pytest.raises(CertificateError) as info:
        issue_partner_certificate(short_ca, TlsKeyPair.generate(), POLITIE, NOW, days=11)
    assert info.value.reason is INVALID


def test_gateway_certificate_needs_a_name(ca: CovenantCa) -> None:
    with pytest.raises(CertificateError):
        issue_gateway_certificate(
            ca, TlsKeyPair.generate(), GATEWAY, NOW, dns_names=(), ip_addresses=()
        )


@pytest.mark.parametrize(
    ("partner_id", "oin", "name"),
    [
        pytest.param("Politie", POLITIE.oin, "Politie", id="partner-id-uppercase"),
        pytest.param("p", POLITIE.oin, "Politie", id="partner-id-too-short"),
        pytest.param("politie-ijmond", "1234", "Politie", id="oin-too-short"),
        pytest.param("politie-ijmond", "0000000100321434500X", "Politie", id="oin-not-digits"),
        pytest.param("politie-ijmond", POLITIE.oin, "", id="name-empty"),
        pytest.param("politie-ijmond", POLITIE.oin, "x" * 65, id="name-too-long"),
    ],
)
def test_partner_subject_is_validated(partner_id: str, oin: str, name: str) -> None:
    with pytest.raises(CertificateError) as info:
        PartnerSubject(partner_id, oin, name)
    assert info.value.reason is INVALID


# --------------------------------------------------------------------------------------------
# The CSR path


def test_csr_path_end_to_end(ca: CovenantCa, tmp_path: Path) -> None:
    # The partner makes its key and request; only the request (public) travels to the CA.
    partner_key = TlsKeyPair.generate()
    write_tls_key(tmp_path / "tls.key", partner_key)
    write_csr_pem(
        tmp_path / "request.pem", make_csr(partner_key, VELSEN.partner_id, VELSEN.oin, VELSEN.name)
    )
    # The CA reads it, shows whom it names, and signs.
    request = read_csr_pem(tmp_path / "request.pem")
    assert csr_subject(request) == VELSEN
    write_certificates_pem(tmp_path / "cert.pem", sign_csr(ca, request, NOW, days=90))
    # Back at the partner: the certificate is for its own key and verifies to the CA.
    cert = read_certificate_pem(tmp_path / "cert.pem")
    assert _spki(cert.public_key()) == partner_key.public  # type: ignore[arg-type]
    assert PartnerSubject.from_name(cert.subject) == VELSEN
    assert verify_chain(cert, [ca.certificate], NOW)[0] == cert
    assert _ts(cert.not_valid_after_utc) == NOW + 90 * DAY


def test_csr_extensions_are_not_copied(ca: CovenantCa) -> None:
    key = TlsKeyPair.generate()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(POLITIE.to_name())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("gateway.example")]), critical=False
        )
        .sign(key.private_key, hashes.SHA256())
    )
    cert = sign_csr(ca, greedy, NOW)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def _csr_with_subject(attributes: list[x509.NameAttribute[str]]) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .sign(TlsKeyPair.generate().private_key, hashes.SHA256())
    )


def _tampered_signature() -> x509.CertificateSigningRequest:
    csr = make_csr(TlsKeyPair.generate(), POLITIE.partner_id, POLITIE.oin, POLITIE.name)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s
    return x509.load_der_x509_csr(bytes(der))


def _p384_csr() -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(POLITIE.to_name())
        .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    )


_O = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Politie IJmond")
_SN = x509.NameAttribute(NameOID.SERIAL_NUMBER, POLITIE.oin)
_CN = x509.NameAttribute(NameOID.COMMON_NAME, POLITIE.partner_id)

BAD_CSRS: list[tuple[str, Callable[[], x509.CertificateSigningRequest]]] = [
    ("signature-tampered", _tampered_signature),
    ("key-p384", _p384_csr),
    ("no-serial-number", lambda: _csr_with_subject([_O, _CN])),
    ("no-common-name", lambda: _csr_with_subject([_O, _SN])),
    ("two-serial-numbers", lambda: _csr_with_subject([_O, _SN, _SN, _CN])),
    (
        "extra-attribute",
        lambda: _csr_with_subject([x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"), _O, _SN, _CN]),
    ),
    (
        "bad-oin",
        lambda: _csr_with_subject([_O, x509.NameAttribute(NameOID.SERIAL_NUMBER, "12"), _CN]),
    ),
    (
        "bad-partner-id",
        lambda: _csr_with_subject([_O, _SN, x509.NameAttribute(NameOID.COMMON_NAME, "Not Id")]),
    ),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=n) for n, m in BAD_CSRS])
def test_bad_csr_is_refused(
    ca: CovenantCa, make: Callable[[], x509.CertificateSigningRequest]
) -> None:
    csr = make()
    with pytest.raises(CertificateError) as info:
        sign_csr(ca, csr, NOW)
    assert info.value.reason is INVALID


# --------------------------------------------------------------------------------------------
# PEM files


def test_certificate_files(ca: CovenantCa, tmp_path: Path) -> None:
    leaf = issue_partner_certificate(ca, TlsKeyPair.generate(), POLITIE, NOW)
    chain_path = tmp_path / "chain.pem"
    write_certificates_pem(chain_path, [leaf, ca.certificate])
    assert stat.S_IMODE(chain_path.stat().st_mode) == 0o644
    assert read_certificates_pem(chain_path) == [leaf, ca.certificate]
    with pytest.raises(CertificateError) as info:
        read_certificate_pem(chain_path)
    assert info.value.reason is INVALID
    with pytest.raises(KeyFileError) as exists:
        write_certificates_pem(chain_path, leaf)
    assert exists.value.reason is KeysReason.KEY_FILE_EXISTS
    assert read_certificates_pem(chain_path) == [leaf, ca.certificate]


def test_csr_file_refuses_overwrite(tmp_path: Path) -> None:
    csr = make_csr(TlsKeyPair.generate(), POLITIE.partner_id, POLITIE.oin, POLITIE.name)
    write_csr_pem(tmp_path / "r.pem", csr)
    with pytest.raises(KeyFileError):
        write_csr_pem(tmp_path / "r.pem", csr)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello", id="not-pem"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="bad"),
    ],
)
def test_malformed_pem(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pem"
    path.write_bytes(content)
    for read in (read_certificates_pem, read_csr_pem):
        with pytest.raises(CertificateError) as info:
            read(path)
        assert info.value.reason is INVALID


def test_load_ca(ca: CovenantCa, tmp_path: Path) -> None:
    write_certificates_pem(tmp_path / "ca.pem", ca.certificate)
    write_tls_key(tmp_path / "ca.key", ca.key, b"ca passphrase")
    loaded = load_ca(tmp_path / "ca.pem", tmp_path / "ca.key", b"ca passphrase")
    assert loaded.certificate == ca.certificate
    assert loaded.key.kid == ca.key.kid
    # A key that is not the CA's is refused.
    write_tls_key(tmp_path / "other.key", TlsKeyPair.generate())
    with pytest.raises(CertificateError) as info:
        load_ca(tmp_path / "ca.pem", tmp_path / "other.key")
    assert info.value.reason is INVALID


def test_load_ca_refuses_a_leaf(ca: CovenantCa, tmp_path: Path) -> None:
    key = TlsKeyPair.generate()
    write_certificates_pem(tmp_path / "leaf.pem", issue_partner_certificate(ca, key, POLITIE, NOW))
    write_tls_key(tmp_path / "leaf.key", key)
    with pytest.raises(CertificateError):
        load_ca(tmp_path / "leaf.pem", tmp_path / "leaf.key")


# --------------------------------------------------------------------------------------------
# verify_chain failures


def _no_client_auth(ca: CovenantCa) -> x509.Certificate:
    key = TlsKeyPair.generate()
    public = key.private_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(POLITIE.to_name())
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(NOW - DAY, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(NOW + DAY, datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.private_key.public_key()),
            critical=False,
        )
        .sign(ca.key.private_key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("case", "server_name", "at"),
    [
        pytest.param("other-ca", None, NOW, id="issued-by-another-ca"),
        pytest.param("partner", None, NOW + 398 * DAY, id="expired"),
        pytest.param("partner", None, NOW - BACKDATE_S - 1, id="not-yet-valid"),
        pytest.param("partner", "localhost", NOW, id="client-cert-used-as-server"),
        pytest.param("gateway", "gateway.example", NOW, id="wrong-server-name"),
        pytest.param("no-client-auth", None, NOW, id="no-client-auth-eku"),
    ],
)
def test_verify_chain_refuses(ca: CovenantCa, case: str, server_name: str | None, at: int) -> None:
    other = create_ca("Other covenant", NOW)
    certs = {
        "other-ca": issue_partner_certificate(other, TlsKeyPair.generate(), POLITIE, NOW),
        "partner": issue_partner_certificate(ca, TlsKeyPair.generate(), POLITIE, NOW),
        "gateway": issue_gateway_certificate(ca, TlsKeyPair.generate(), GATEWAY, NOW),
        "no-client-auth": _no_client_auth(ca),
    }
    with pytest.raises(CertificateError) as info:
        verify_chain(certs[case], [ca.certificate], at, server_name=server_name)
    assert info.value.reason is KeysReason.CERTIFICATE_UNTRUSTED


def test_verify_chain_needs_anchors(ca: CovenantCa) -> None:
    cert = issue_partner_certificate(ca, TlsKeyPair.generate(), POLITIE, NOW)
    with pytest.raises(CertificateError) as info:
        verify_chain(cert, [], NOW)
    assert info.value.reason is KeysReason.CERTIFICATE_UNTRUSTED
