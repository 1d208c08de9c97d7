"""mTLS identity: TLS contexts for the gateway and adapters, and who a peer certificate is.

Rules kept here (DESIGN.md "Identities and keys"):

* A peer is a partner when all three hold: its certificate chain verifies to a configured trust
  anchor (done by the TLS handshake, or by ``verify_chain`` outside one); the OIN in the subject
  ``serialNumber`` names a partner in the directory; and the certificate's SPKI is that partner's
  ``tls`` key in the directory, usable at ``now`` (``keys.state.check_usable``). The directory,
  not the CA, has the last word: a certificate the CA issued for a key the directory does not
  list for that OIN is refused (``CERTIFICATE_SPKI_MISMATCH``).
* Contexts trust only the configured anchors, never the system store: a public web CA must not
  be able to mint a partner. TLS 1.2 is the floor; in TLS 1.2 only ECDHE with an AEAD cipher is
  offered (forward secrecy). The server requires a client certificate. ``VERIFY_X509_STRICT``
  makes OpenSSL apply RFC 5280 strictly, as pyca's verifier does. Compression and
  renegotiation are off.
* Private key files handed to ``ssl`` are first read through ``keys.keyfile.read_tls_key``, so a
  key readable by others, a missing or wrong passphrase, or a malformed key fails with the
  same clear ``KeyFileError`` as our own key files do, before OpenSSL sees the file.
* Every time check takes ``now`` (house rule 5). The peer's validity is checked again here, at
  ``now``, because a long-lived connection outlives the handshake's check.
* Errors are ``CertificateError`` with a ``KeysReason``; a key-state refusal keeps its reason
  (``key_revoked`` and so on).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    Subject,
    VerificationError,
)

from keys.ca import read_certificates_pem
from keys.directory import Directory, DirectoryKey, GatewayEntry, Partner
from keys.errors import CertificateError, DirectoryError, KeysReason, KeyStateError
from keys.keyfile import PassphraseSource, read_tls_key, resolve_passphrase
from keys.keypair import KeyUse, spki_kid
from keys.state import check_usable

# TLS 1.2 cipher suites: ECDHE key exchange (forward secrecy) with an AEAD only. TLS 1.3 suites
# are all AEAD with ephemeral key exchange and are left at OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class TlsFiles:
    """The files a TLS endpoint needs. Paths, never contents; the passphrase by its source.

    ``certificate`` is PEM, leaf first then any intermediates; ``private_key`` is PEM PKCS#8,
    0600 (``keys.keyfile.write_tls_key``); ``trust_anchors`` are PEM files of the roots that
    peers must chain to.
    """

    certificate: Path
    private_key: Path
    trust_anchors: tuple[Path, ...]
    passphrase: PassphraseSource | None = None


def _base_context(
    protocol: int, files: TlsFiles, environ: Mapping[str, str] | None
) -> ssl.SSLContext:
    if not files.trust_anchors:
        raise CertificateError("no trust anchors are configured", KeysReason.CERTIFICATE_UNTRUSTED)
    passphrase = (
        resolve_passphrase(files.passphrase, environ) if files.passphrase is not None else None
    )
    # Checks mode, passphrase and key type with our errors before OpenSSL reads the file.
    key = read_tls_key(files.private_key, passphrase)
    chain = read_certificates_pem(files.certificate)
    if chain[0].public_key() != key.private_key.public_key():
        raise CertificateError(
            f"{files.certificate} is not the certificate of {files.private_key}",
            KeysReason.CERTIFICATE_INVALID,
        )
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    for anchor in files.trust_anchors:
        try:
            context.load_verify_locations(cafile=anchor)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"cannot load trust anchors from {anchor}: {exc}", KeysReason.CERTIFICATE_INVALID
            ) from None
    # ``password`` is a callable so OpenSSL asks for it only when the key is encrypted.
    context.load_cert_chain(
        files.certificate,
        files.private_key,
        password=(lambda: passphrase) if passphrase is not None else None,
    )
    return context


def server_context(files: TlsFiles, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate chaining to a trust anchor.

    ``environ`` is where an ``env:`` passphrase is looked up (default ``os.environ``).
    Raises ``KeyFileError`` for the key file, ``CertificateError`` for the certificates.
    """
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, files, environ)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def reload_certificate(
    context: ssl.SSLContext, files: TlsFiles, environ: Mapping[str, str] | None = None
) -> None:
    """Load ``files``' certificate and key into a live ``context`` (a certificate rotation).

    The pair is checked first as ``server_context`` checks it (mode, passphrase, the key is
    the certificate's), so a half-copied rotation raises and leaves ``context`` untouched.
    OpenSSL uses the new pair for handshakes from now on; connections already open keep the
    one they were made with. Raises ``KeyFileError`` or ``CertificateError``.
    """
    passphrase = (
        resolve_passphrase(files.passphrase, environ) if files.passphrase is not None else None
    )
    key = read_tls_key(files.private_key, passphrase)
    chain = read_certificates_pem(files.certificate)
    if chain[0].public_key() != key.private_key.public_key():
        raise CertificateError(
            f"{files.certificate} is not the certificate of {files.private_key}",
            KeysReason.CERTIFICATE_INVALID,
        )
    try:
        context.load_cert_chain(
            files.certificate,
            files.private_key,
            password=(lambda: passphrase) if passphrase is not None else None,
        )
    except (OSError, ssl.SSLError) as exc:
        # A file replaced between our check and OpenSSL's read: try again at the next reload.
        raise CertificateError(
            f"cannot load {files.certificate}: {exc}", KeysReason.CERTIFICATE_INVALID
        ) from None


def client_context(files: TlsFiles, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A TLS client context: verifies the server (chain to a trust anchor, and host name) and
    presents the client certificate. Errors as ``server_context``."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, files, environ)
    context.check_hostname = True
    return context


def peer_certificate_der(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes:
    """The verified peer certificate of a finished handshake, in DER.

    Raises ``CertificateError`` (``CERTIFICATE_INVALID``) if there is no TLS or no peer
    certificate (which a ``server_context`` never lets through).
    """
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise CertificateError("the peer presented no certificate", KeysReason.CERTIFICATE_INVALID)
    return der


def _load_der(cert_der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise CertificateError(
            "the peer certificate does not parse", KeysReason.CERTIFICATE_INVALID
        ) from None


def _check_validity(certificate: x509.Certificate, now: int) -> None:
    # RFC 5280 4.1.2.5: the validity period includes both notBefore and notAfter.
    if now < int(certificate.not_valid_before_utc.timestamp()):
        raise CertificateError("the certificate is not valid yet", KeysReason.CERTIFICATE_INVALID)
    if now > int(certificate.not_valid_after_utc.timestamp()):
        raise CertificateError("the certificate has expired", KeysReason.CERTIFICATE_INVALID)


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pinned_tls_key(owner: str, spki: bytes, directory: Directory, now: int) -> DirectoryKey:
    try:
        key = directory.owned_key(owner, spki_kid(spki), KeyUse.TLS)
    except DirectoryError:
        raise CertificateError(
            f"the certificate's key is not a tls key of {owner} in the directory",
            KeysReason.CERTIFICATE_SPKI_MISMATCH,
        ) from None
    # The kid is a hash of the bytes; comparing the bytes too costs nothing.
    if key.public != spki:
        raise CertificateError(
            f"the certificate's key is not a tls key of {owner} in the directory",
            KeysReason.CERTIFICATE_SPKI_MISMATCH,
        )
    try:
        check_usable(key, now)
    except KeyStateError as exc:
        raise CertificateError(f"the tls key of {owner}: {exc}", exc.reason) from None
    return key


def identify_peer(cert_der: bytes, directory: Directory, now: int) -> Partner:
    """The partner a peer certificate authenticates, at ``now``.

    ``cert_der`` must already be chain-verified against the configured trust anchors (by the
    TLS handshake or ``verify_chain``). Raises ``CertificateError``:
    ``CERTIFICATE_INVALID`` (unparsable, not valid at ``now``, no single ``serialNumber``),
    ``CERTIFICATE_OIN_UNKNOWN``, ``PARTNER_LEFT``, ``CERTIFICATE_SPKI_MISMATCH``, or the key
    state reason if the pinned ``tls`` key is not usable at ``now``.
    """
    certificate = _load_der(cert_der)
    _check_validity(certificate, now)
    serials = certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(serials) != 1 or not isinstance(serials[0].value, str):
        raise CertificateError(
            "the certificate subject must carry exactly one serialNumber (the OIN)",
            KeysReason.CERTIFICATE_INVALID,
        )
    try:
        partner = directory.partner_by_oin(serials[0].value)
    except DirectoryError:
        raise CertificateError(
            "no partner in the directory has the certificate's OIN",
            KeysReason.CERTIFICATE_OIN_UNKNOWN,
        ) from None
    if partner.left_at is not None and now >= partner.left_at:
        raise CertificateError(f"{partner.id} has left the covenant", KeysReason.PARTNER_LEFT)
    _pinned_tls_key(partner.id, _spki(certificate), directory, now)
    return partner


def check_gateway_certificate(cert_der: bytes, directory: Directory, now: int) -> GatewayEntry:
    """Check that the server an adapter reached is the gateway the directory names: the
    certificate is valid at ``now`` and its SPKI is a usable ``tls`` key of the gateway.

    The host name and chain are checked by the TLS handshake (``client_context``); this pins
    the key, so a certificate mis-issued by a trust anchor cannot impersonate the gateway.
    Raises ``CertificateError`` as ``identify_peer``.
    """
    certificate = _load_der(cert_der)
    _check_validity(certificate, now)
    _pinned_tls_key(directory.gateway.id, _spki(certificate), directory, now)
    return directory.gateway


def verify_chain(
    certificate: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    now: int,
    *,
    intermediates: Sequence[x509.Certificate] = (),
    server_name: str | None = None,
) -> list[x509.Certificate]:
    """Verify ``certificate`` to one of ``anchors`` at ``now`` with pyca's RFC 5280 verifier,
    outside a TLS handshake (``ketenpost init``, onboarding a partner's certificate).

    Without ``server_name`` the certificate is checked as a TLS client (``clientAuth``);
    with it, as a server for that DNS name or IP address (``serverAuth``). Returns the chain,
    leaf first. Raises ``CertificateError`` (``CERTIFICATE_UNTRUSTED``) if it does not verify.
    """
    if not anchors:
        raise CertificateError("no trust anchors are given", KeysReason.CERTIFICATE_UNTRUSTED)
    builder = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(datetime.datetime.fromtimestamp(now, datetime.UTC))
    )
    try:
        if server_name is None:
            # pyca's web PKI profile requires a subjectAltName on every leaf; PKIoverheid
            # client certificates name the partner in the subject (the OIN in serialNumber),
            # and so do ours. Every other check of the profile stays.
            builder = builder.extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.webpki_defaults_ee().may_be_present(
                    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
                ),
            )
            return builder.build_client_verifier().verify(certificate, list(intermediates)).chain
        return builder.build_server_verifier(_subject(server_name)).verify(
            certificate, list(intermediates)
        )
    except VerificationError as exc:
        raise CertificateError(
            f"the certificate does not verify to a trust anchor: {exc}",
            KeysReason.CERTIFICATE_UNTRUSTED,
        ) from None


def _subject(server_name: str) -> Subject:
    try:
        return x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        return x509.DNSName(server_name)
