"""A partner's own TLS client certificate: which of its pairs to present, by the directory.

Used by the adapter engine (switching live) and by every command-line verb that calls the
gateway with a partner's certificate; in ``keys`` so that ``keys/cli.py`` can use it too.

``ketenpost keys rotate --use tls`` writes ``keys/tls-2.key`` and ``keys/tls-2.csr`` beside the
configured pair, and the CA's ``keys certify`` writes ``keys/tls-2.crt``. The adapter picks the
pair to present the way it picks its sign key (``adapters.directory.newest_active``): the newest
one the directory lists as usable, so a rotated certificate is presented from its key's
``active_from`` on without editing ``adapter.toml`` or a restart.

Rules kept here:

* The candidates are the configured ``[tls] cert``/``key`` and every other generation beside
  them (``tls_family``): ``tls.key``/``tls.crt`` is generation 1, ``tls-N.key`` beside the key
  with ``tls-N.crt`` beside the certificate generation N; they are judged newest first.
* A pair qualifies at ``now`` when, as the gateway will judge it (``keys.tlsidentity``
  ``identify_peer``): the key file reads (0600, passphrase); the certificate's key is the key;
  the certificate chains to the configured trust anchors and is valid at ``now``; its subject
  names this partner's OIN; and its SPKI is a ``tls`` key of this partner in the directory
  that is usable at ``now`` (active, or retiring until ``retire_at``; never pending, retired or
  revoked). Presenting anything less would only get every request refused.
* The newest qualifying pair is chosen; older ones are not looked at. When none qualifies the
  choice is ``None`` and the caller keeps the pair it presents (a directory that says nothing
  useful must not take the adapter off the network).
* A pair that cannot be judged (the certificate still at the CA, a half-copied file, another
  CA, expired, not for the key) is skipped and reported in ``TlsChoice.skipped``, never raised.
  A pair whose key the directory does not (yet, or any longer) list as usable is skipped as
  ``SkipKind.NOT_USABLE``, which is no news (every successor until its ``active_from``); the
  other kinds are for an operator to fix.
* Functions of the files, the directory and ``now`` only (house rule 5); building the
  ``ssl.SSLContext`` and switching to it are the engine's and ``GatewayClient``'s.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from keys import CertificateError, Directory, KeysError, KeysReason, KeyState, KeyUse
from keys.ca import read_certificates_pem
from keys.keyfile import read_tls_key, resolve_passphrase
from keys.tlsidentity import TlsFiles, verify_chain

# States in which the gateway still accepts a certificate for the key (``check_usable``).
_USABLE = frozenset({KeyState.ACTIVE, KeyState.RETIRING})


class SkipKind(enum.StrEnum):
    """Why a candidate pair was not chosen."""

    NOT_USABLE = "not_usable"  # the directory does not list its key as usable at ``now``
    KEY_UNREADABLE = "key_unreadable"  # missing, readable by others, wrong passphrase, …
    NO_CERTIFICATE = "no_certificate"  # the certificate file is not there (yet)
    CERTIFICATE_INVALID = "certificate_invalid"  # not for the key, untrusted, expired, …


@dataclass(frozen=True)
class TlsPair:
    """A certificate and key that may be presented: ``files`` (the trust anchors and the
    passphrase are the configured ones), its ``tls`` kid, and the certificate's ``notAfter``."""

    generation: int
    files: TlsFiles
    kid: str
    not_after: int


@dataclass(frozen=True)
class Skipped:
    generation: int
    certificate: Path
    kind: SkipKind
    detail: str


@dataclass(frozen=True)
class TlsChoice:
    """The newest qualifying pair (``None``: none qualifies) and every newer one skipped."""

    pair: TlsPair | None
    skipped: tuple[Skipped, ...] = ()


_GENERATION = re.compile(r"^(?P<base>.+)-(?P<n>[0-9]+)$")


def _generation(path: Path) -> tuple[Path, int]:
    """``keys/tls-3.key`` -> (``keys/tls.key``, 3); a name without ``-N`` is generation 1."""
    m = _GENERATION.match(path.stem)
    if m is None or int(m["n"]) < 2:
        return path, 1
    return path.with_name(m["base"] + path.suffix), int(m["n"])


def _numbered(base: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for sibling in base.parent.glob(f"{base.stem}-*{base.suffix}"):
        n = sibling.name[len(base.stem) + 1 : len(sibling.name) - len(base.suffix)]
        if n.isdigit() and int(n) >= 2:
            found[int(n)] = sibling
    return found


def tls_family(files: TlsFiles) -> list[tuple[int, TlsFiles]]:
    """The configured pair and the other generations beside it, oldest first.

    Generation 1 is ``tls.key``/``tls.crt``, generation N ``tls-N.key``/``tls-N.crt`` (the
    names ``keys rotate`` and the runbook's ``keys certify --out`` use). The configured pair is
    always listed, as its own generation (an ``adapter.toml`` edited to name ``tls-2`` still
    finds ``tls-3`` later); another generation is listed when its key file exists (``keys
    rotate`` writes the key first, the certificate follows from the CA), with the certificate
    path where it belongs whether or not it is there yet.
    """
    key_base, configured = _generation(files.private_key)
    cert_base, _ = _generation(files.certificate)
    keys = _numbered(key_base)
    if key_base.exists():
        keys[1] = key_base
    keys[configured] = files.private_key
    family = []
    for n in sorted(keys):
        if n == configured:
            cert = files.certificate
        elif n == 1:
            cert = cert_base
        else:
            cert = cert_base.with_name(f"{cert_base.stem}-{n}{cert_base.suffix}")
        family.append((n, replace(files, certificate=cert, private_key=keys[n])))
    return family


def read_anchors(files: TlsFiles) -> list[x509.Certificate]:
    """The configured trust anchors; ``CertificateError`` if one cannot be read."""
    return [c for path in files.trust_anchors for c in read_certificates_pem(path)]


def _usable_kids(directory: Directory, partner_id: str, now: int) -> tuple[str, set[str]]:
    """The partner's OIN and its ``tls`` kids usable at ``now`` (none if it is not listed)."""
    try:
        partner = directory.partner(partner_id)
    except KeysError:  # unknown_partner: not (or no longer) in the directory
        return "", set()
    if partner.left_at is not None and now >= partner.left_at:
        return partner.oin, set()
    kids = {k.kid for k in partner.keys if k.use is KeyUse.TLS and k.state(now) in _USABLE}
    return partner.oin, kids


def check_pair(
    generation: int,
    files: TlsFiles,
    anchors: Sequence[x509.Certificate],
    now: int,
    *,
    oin: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TlsPair:
    """``files`` as a presentable pair at ``now``: the key reads, the certificate (leaf first,
    then intermediates) is for that key, chains to ``anchors`` and is valid at ``now``, and —
    when ``oin`` is given — its subject's serialNumber is ``oin``.

    Raises ``KeyFileError`` (the key) or ``CertificateError`` (the certificate).
    """
    passphrase = (
        resolve_passphrase(files.passphrase, environ) if files.passphrase is not None else None
    )
    key = read_tls_key(files.private_key, passphrase)
    chain = read_certificates_pem(files.certificate)
    leaf = chain[0]
    if leaf.public_key() != key.private_key.public_key():
        raise CertificateError(
            f"{files.certificate} is not the certificate of {files.private_key}",
            KeysReason.CERTIFICATE_INVALID,
        )
    verify_chain(leaf, anchors, now, intermediates=chain[1:])
    if oin is not None:
        serials = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        if [s.value for s in serials] != [oin]:
            raise CertificateError(
                f"{files.certificate} does not name the OIN {oin}",
                KeysReason.CERTIFICATE_OIN_UNKNOWN,
            )
    return TlsPair(
        generation=generation,
        files=files,
        kid=key.kid,
        not_after=int(leaf.not_valid_after_utc.timestamp()),
    )


def describe_pair(
    generation: int, files: TlsFiles, environ: Mapping[str, str] | None = None
) -> TlsPair:
    """``files`` as a ``TlsPair`` without judging them (the configured pair an adapter starts
    with when no pair qualifies). Raises ``KeyFileError`` or ``CertificateError`` if the key or
    the certificate cannot be read."""
    passphrase = (
        resolve_passphrase(files.passphrase, environ) if files.passphrase is not None else None
    )
    leaf = read_certificates_pem(files.certificate)[0]
    return TlsPair(
        generation=generation,
        files=files,
        kid=read_tls_key(files.private_key, passphrase).kid,
        not_after=int(leaf.not_valid_after_utc.timestamp()),
    )


def choose_tls_pair(
    files: TlsFiles,
    directory: Directory,
    partner_id: str,
    now: int,
    environ: Mapping[str, str] | None = None,
) -> TlsChoice:
    """The newest pair of ``files``' family that qualifies at ``now`` (see the module rules).

    Never raises for a pair: a pair that fails is in ``skipped``, newest first. Raises
    ``CertificateError`` only when the configured trust anchors cannot be read.
    """
    anchors = read_anchors(files)
    oin, usable = _usable_kids(directory, partner_id, now)
    skipped: list[Skipped] = []
    for generation, candidate in reversed(tls_family(files)):
        problem: tuple[SkipKind, str] | None = None
        try:
            passphrase = (
                resolve_passphrase(candidate.passphrase, environ)
                if candidate.passphrase is not None
                else None
            )
            kid = read_tls_key(candidate.private_key, passphrase).kid
        except KeysError as exc:
            problem = (SkipKind.KEY_UNREADABLE, f"{exc.reason.value}: {exc}")
        else:
            if kid not in usable:
                problem = (SkipKind.NOT_USABLE, "the directory lists no usable tls key for it")
            elif not candidate.certificate.exists():
                problem = (SkipKind.NO_CERTIFICATE, f"{candidate.certificate} does not exist")
            else:
                try:
                    pair = check_pair(generation, candidate, anchors, now, oin=oin, environ=environ)
                except KeysError as exc:
                    problem = (SkipKind.CERTIFICATE_INVALID, f"{exc.reason.value}: {exc}")
                except ValueError as exc:  # a certificate pyca's verifier cannot handle
                    problem = (SkipKind.CERTIFICATE_INVALID, str(exc))
                else:
                    return TlsChoice(pair, tuple(skipped))
        kind, detail = problem
        skipped.append(Skipped(generation, candidate.certificate, kind, detail))
    return TlsChoice(None, tuple(skipped))
