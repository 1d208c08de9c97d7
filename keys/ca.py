"""The covenant CA for development and tests, and the certificate request path (pyca ``x509``).

Rules kept here (DESIGN.md "Identities and keys"):

* In production the trust anchor is the PKIoverheid private root; this CA stands in for it in
  development, and issues certificates of the same shape: the partner's OIN in the subject
  ``serialNumber`` attribute (as PKIoverheid does), ``CN`` the partner id, ``O`` the partner's
  name.
* Every key is ECDSA P-256 with SHA-256 signatures: OpenSSL 3.0 negotiates it in TLS 1.2 and
  1.3 alike, whereas Ed25519 certificates are not usable with many TLS 1.2 peers.
* The CA certificate is ``basicConstraints CA, pathlen 0`` (critical) with ``keyCertSign`` and
  ``cRLSign`` only; issued certificates are ``CA:FALSE`` with ``digitalSignature`` and the
  ``clientAuth`` EKU; the gateway's also has ``serverAuth`` and DNS/IP subject alternative
  names. All carry subject and authority key identifiers, which strict verifiers (OpenSSL's
  ``X509_STRICT``, pyca's RFC 5280 profile) require.
* Validity comes from an injected ``now`` (house rule 5). ``notBefore`` lies ``BACKDATE_S``
  before ``now`` so a peer whose clock runs a little behind accepts a fresh certificate.
* Private keys are made where they are used: a partner makes its own ``TlsKeyPair`` and a CSR
  (``make_csr``); the CA signs it (``sign_csr``) after checking the CSR's signature, taking only
  the subject (validated and rebuilt from its three attributes) and the public key. Requested
  extensions are never copied, so a CSR cannot ask for ``CA:TRUE`` or another EKU. Whether the
  OIN in a CSR belongs to the requester is the CA operator's out-of-band check; the directory's
  SPKI pin (``keys.tlsidentity.identify_peer``) is the second line.
* Certificates and CSRs are public: written 0644, never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.errors import CertificateError, KeysReason
from keys.keyfile import PUBLIC_FILE_MODE, create_file_exclusive, read_tls_key
from keys.keypair import TlsKeyPair

# A fresh certificate is valid from five minutes before ``now``: the covenant's clock skew.
BACKDATE_S = 300
CA_VALIDITY_DAYS = 3650
CERTIFICATE_VALIDITY_DAYS = 397

# Largest PEM file we parse: a chain of a few certificates. Larger files are not ours.
MAX_PEM_BYTES = 1024 * 1024

_OIN_RE = re.compile(r"^[0-9]{20}$")
_PARTNER_ID_RE = re.compile(r"^[a-z][a-z0-9-]{1,62}$")


@dataclass(frozen=True)
class PartnerSubject:
    """The identity a partner (or the gateway) certificate names.

    ``oin`` goes in ``serialNumber``, ``partner_id`` in ``CN``, ``name`` in ``O``.
    """

    partner_id: str
    oin: str
    name: str

    def __post_init__(self) -> None:
        if not _PARTNER_ID_RE.fullmatch(self.partner_id):
            raise CertificateError(
                f"{self.partner_id!r} is not a partner id", KeysReason.CERTIFICATE_INVALID
            )
        if not _OIN_RE.fullmatch(self.oin):
            raise CertificateError(
                f"{self.oin!r} is not an OIN (20 digits)", KeysReason.CERTIFICATE_INVALID
            )
        if not self.name or len(self.name) > 64:
            # 64 is the X.520 upper bound for organizationName.
            raise CertificateError(
                "the organisation name must be 1 to 64 characters", KeysReason.CERTIFICATE_INVALID
            )

    def to_name(self) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, self.oin),
                x509.NameAttribute(NameOID.COMMON_NAME, self.partner_id),
            ]
        )

    @classmethod
    def from_name(cls, name: x509.Name) -> PartnerSubject:
        """Parse a subject of exactly ``O``, ``serialNumber`` and ``CN``, each once.

        Raises ``CertificateError`` (``CERTIFICATE_INVALID``) for anything else, so nothing
        unchecked rides along into a certificate.
        """
        wanted = {NameOID.ORGANIZATION_NAME, NameOID.SERIAL_NUMBER, NameOID.COMMON_NAME}
        values: dict[x509.ObjectIdentifier, str] = {}
        for attribute in name:
            if attribute.oid not in wanted or attribute.oid in values:
                raise CertificateError(
                    "the subject must hold exactly O, serialNumber (the OIN) and CN",
                    KeysReason.CERTIFICATE_INVALID,
                )
            value = attribute.value
            if not isinstance(value, str):
                raise CertificateError(
                    "a subject attribute is not text", KeysReason.CERTIFICATE_INVALID
                )
            values[attribute.oid] = value
        if set(values) != wanted:
            raise CertificateError(
                "the subject must hold exactly O, serialNumber (the OIN) and CN",
                KeysReason.CERTIFICATE_INVALID,
            )
        return cls(
            partner_id=values[NameOID.COMMON_NAME],
            oin=values[NameOID.SERIAL_NUMBER],
            name=values[NameOID.ORGANIZATION_NAME],
        )


@dataclass(frozen=True, repr=False)
class CovenantCa:
    """The development CA: its self-signed certificate and its ECDSA P-256 key.

    The key is held as a ``TlsKeyPair`` because that is our ECDSA P-256 key type with a PEM
    PKCS#8 file format (``keys.keyfile.write_tls_key``); it is never used for TLS.
    """

    certificate: x509.Certificate
    key: TlsKeyPair

    def __repr__(self) -> str:
        return f"CovenantCa(subject={self.certificate.subject.rfc4514_string()!r})"


def _time(unix: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC)


def _check_p256(public_key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CertificateError("the key is not ECDSA P-256", KeysReason.CERTIFICATE_INVALID)
    return public_key


def create_ca(
    name: str, now: int, *, days: int = CA_VALIDITY_DAYS, key: TlsKeyPair | None = None
) -> CovenantCa:
    """Create a self-signed covenant CA named ``name``, valid for ``days`` from ``now``."""
    ca_key = key or TlsKeyPair.generate()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} development CA"),
        ]
    )
    public = ca_key.private_key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - BACKDATE_S))
        .not_valid_after(_time(now + days * 86400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(ca_key.private_key, hashes.SHA256())
    )
    return CovenantCa(certificate, ca_key)


def _issue(
    ca: CovenantCa,
    public_key: ec.EllipticCurvePublicKey,
    subject: PartnerSubject,
    now: int,
    days: int,
    *,
    server: bool,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    if days < 1:
        raise CertificateError(
            "a certificate is valid for at least a day", KeysReason.CERTIFICATE_INVALID
        )
    not_after = now + days * 86400
    if not_after > int(ca.certificate.not_valid_after_utc.timestamp()):
        # A certificate outliving its issuer fails verification at the end anyway; refuse it
        # now rather than hand out something that breaks later.
        raise CertificateError(
            "the certificate would outlive the CA certificate", KeysReason.CERTIFICATE_INVALID
        )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject.to_name())
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - BACKDATE_S))
        .not_valid_after(_time(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.private_key.public_key()),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key.private_key, hashes.SHA256())


def issue_partner_certificate(
    ca: CovenantCa,
    key: TlsKeyPair | ec.EllipticCurvePublicKey,
    subject: PartnerSubject,
    now: int,
    days: int = CERTIFICATE_VALIDITY_DAYS,
) -> x509.Certificate:
    """Issue a partner's client certificate (``clientAuth``) for ``key``'s public key."""
    public = key.private_key.public_key() if isinstance(key, TlsKeyPair) else key
    return _issue(ca, _check_p256(public), subject, now, days, server=False)


def issue_gateway_certificate(
    ca: CovenantCa,
    key: TlsKeyPair | ec.EllipticCurvePublicKey,
    subject: PartnerSubject,
    now: int,
    days: int = CERTIFICATE_VALIDITY_DAYS,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
) -> x509.Certificate:
    """Issue the gateway's certificate: ``serverAuth`` and ``clientAuth``, with DNS/IP SANs."""
    if not dns_names and not ip_addresses:
        raise CertificateError(
            "a server certificate needs a DNS name or an IP address",
            KeysReason.CERTIFICATE_INVALID,
        )
    public = key.private_key.public_key() if isinstance(key, TlsKeyPair) else key
    return _issue(
        ca,
        _check_p256(public),
        subject,
        now,
        days,
        server=True,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )


# --------------------------------------------------------------------------------------------
# The certificate request path


def make_csr(
    key: TlsKeyPair, partner_id: str, oin: str, name: str
) -> x509.CertificateSigningRequest:
    """A partner's certificate request for its own ``key``, signed by that key."""
    subject = PartnerSubject(partner_id=partner_id, oin=oin, name=name)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject.to_name())
        .sign(key.private_key, hashes.SHA256())
    )


def csr_subject(csr: x509.CertificateSigningRequest) -> PartnerSubject:
    """Check a CSR and return whom it names, for the CA operator to confirm out of band.

    Raises ``CertificateError`` (``CERTIFICATE_INVALID``) if the CSR's signature does not
    verify (its requester does not hold the key), the key is not ECDSA P-256, or the subject is
    not exactly ``O``, ``serialNumber`` and ``CN``.
    """
    try:
        valid = csr.is_signature_valid
    except ValueError:
        valid = False
    if not valid:
        raise CertificateError(
            "the certificate request's signature does not verify", KeysReason.CERTIFICATE_INVALID
        )
    _check_p256(csr.public_key())
    return PartnerSubject.from_name(csr.subject)


def sign_csr(
    ca: CovenantCa,
    csr: x509.CertificateSigningRequest,
    now: int,
    days: int = CERTIFICATE_VALIDITY_DAYS,
) -> x509.Certificate:
    """Issue a partner (client) certificate for a checked CSR (see ``csr_subject``).

    Only the validated subject and the public key are taken from the CSR; its requested
    extensions are ignored.
    """
    subject = csr_subject(csr)
    return _issue(ca, _check_p256(csr.public_key()), subject, now, days, server=False)


# --------------------------------------------------------------------------------------------
# PEM files


def certificates_to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def write_certificates_pem(
    path: str | os.PathLike[str], certificates: x509.Certificate | Sequence[x509.Certificate]
) -> None:
    """Write one certificate or a chain (leaf first) to a new 0644 file; never overwrites
    (``KeyFileError`` ``KEY_FILE_EXISTS``)."""
    chain = [certificates] if isinstance(certificates, x509.Certificate) else list(certificates)
    if not chain:
        raise CertificateError("no certificate to write", KeysReason.CERTIFICATE_INVALID)
    create_file_exclusive(path, certificates_to_pem(chain), PUBLIC_FILE_MODE)


def write_csr_pem(path: str | os.PathLike[str], csr: x509.CertificateSigningRequest) -> None:
    """Write a CSR to a new 0644 file; never overwrites."""
    create_file_exclusive(path, csr.public_bytes(serialization.Encoding.PEM), PUBLIC_FILE_MODE)


def _read_public(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise CertificateError(
            f"cannot read {os.fspath(path)}: {exc.strerror}", KeysReason.CERTIFICATE_INVALID
        ) from None
    if len(data) > MAX_PEM_BYTES:
        raise CertificateError(f"{os.fspath(path)} is too large", KeysReason.CERTIFICATE_INVALID)
    return data


def read_certificates_pem(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order; ``CERTIFICATE_INVALID`` if there are none or
    one does not parse."""
    try:
        return x509.load_pem_x509_certificates(_read_public(path))
    except ValueError:
        raise CertificateError(
            f"{os.fspath(path)} holds no valid PEM certificate", KeysReason.CERTIFICATE_INVALID
        ) from None


def read_certificate_pem(path: str | os.PathLike[str]) -> x509.Certificate:
    """The single certificate in a PEM file; ``CERTIFICATE_INVALID`` otherwise."""
    certificates = read_certificates_pem(path)
    if len(certificates) != 1:
        raise CertificateError(
            f"{os.fspath(path)} holds {len(certificates)} certificates, expected one",
            KeysReason.CERTIFICATE_INVALID,
        )
    return certificates[0]


def read_csr_pem(path: str | os.PathLike[str]) -> x509.CertificateSigningRequest:
    """The CSR in a PEM file (not yet checked: see ``csr_subject``)."""
    try:
        return x509.load_pem_x509_csr(_read_public(path))
    except ValueError:
        raise CertificateError(
            f"{os.fspath(path)} holds no valid PEM certificate request",
            KeysReason.CERTIFICATE_INVALID,
        ) from None


def load_ca(
    certificate_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    passphrase: bytes | None = None,
) -> CovenantCa:
    """Load a CA written with ``write_certificates_pem`` and ``keys.keyfile.write_tls_key``.

    Raises the errors of those readers, and ``CertificateError`` if the key is not the
    certificate's or the certificate is not a CA.
    """
    certificate = read_certificate_pem(certificate_path)
    key = read_tls_key(key_path, passphrase)
    if certificate.public_key() != key.private_key.public_key():
        raise CertificateError(
            "the CA key does not belong to the CA certificate", KeysReason.CERTIFICATE_INVALID
        )
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise CertificateError(
            f"{os.fspath(certificate_path)} is not a CA", KeysReason.CERTIFICATE_INVALID
        )
    return CovenantCa(certificate, key)
