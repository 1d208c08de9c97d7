"""A complete development deployment of a covenant, made in one place: ``ketenpost init``.

Rules kept here:

* For development and tests only. In production every partner makes its own keys
  (``ketenpost keys generate``) and hands over public keys and a certificate request; the root
  and directory keys are held by officers, offline; the timestamp key by the key authority.
  This module puts all of them in one folder so a developer can run the whole covenant on one
  machine — and says so in the README it writes.
* Refuses a non-empty target folder; never overwrites a file (the key-file writers use
  ``O_EXCL``). Secret files are 0600, secret folders 0700.
* Each partner gets one self-contained folder, ``partners/<id>/``: its private keys, its
  certificate, the trust anchor and a copy of the signed directory with its trusted root.
  Deploying a partner means copying that folder. Configuration files (``gateway.toml``,
  ``adapter.toml``) are written by the packages that own them (see ``ketenpost.py``).
* The covenant policy arrives as opaque canonical bytes: ``keys`` cannot parse it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from keys.ca import (
    PartnerSubject,
    create_ca,
    issue_gateway_certificate,
    issue_partner_certificate,
    write_certificates_pem,
)
from keys.directory import DirectoryContents, DirectoryKey, GatewayEntry, Partner, Role
from keys.errors import KeyFileError, KeysReason
from keys.keyfile import (
    create_file_exclusive,
    read_private_file,
    write_key_file,
    write_tls_key,
)
from keys.keypair import Ed25519KeyPair, HybridKemKeyPair, KeyUse, TlsKeyPair
from keys.signed_directory import DirectoryRepository, write_bundle, write_trusted_root

PRIVATE_DIR_MODE = 0o700
OUTBOX_KEY_BYTES = 32


@dataclass(frozen=True)
class PartnerSpec:
    id: str
    name: str
    oin: str
    role: Role
    coordinator: bool = False


def _dev_oin(n: int) -> str:
    # A well-formed 20-digit OIN in a range no real organisation has ("99" after the prefix
    # marks development values), so a development certificate can never name a real partner.
    return f"00000099{n:09d}000"


IJMOND_PARTNERS: tuple[PartnerSpec, ...] = (
    PartnerSpec("gemeente-heemskerk", "Gemeente Heemskerk", _dev_oin(1), Role.MUNICIPALITY, True),
    PartnerSpec("gemeente-beverwijk", "Gemeente Beverwijk", _dev_oin(2), Role.MUNICIPALITY, True),
    PartnerSpec("gemeente-uitgeest", "Gemeente Uitgeest", _dev_oin(3), Role.MUNICIPALITY, True),
    PartnerSpec("gemeente-velsen", "Gemeente Velsen", _dev_oin(4), Role.MUNICIPALITY, True),
    PartnerSpec("politie-ijmond", "Politie basisteam IJmond", _dev_oin(5), Role.POLICE),
    PartnerSpec("om", "Openbaar Ministerie", _dev_oin(6), Role.PROSECUTION),
    PartnerSpec("halt", "Halt", _dev_oin(7), Role.HALT),
    PartnerSpec("cjg", "Centrum voor Jeugd en Gezin", _dev_oin(8), Role.YOUTH_CARE),
    PartnerSpec("welzijn-ijmond", "Welzijn IJmond", _dev_oin(9), Role.WELFARE),
)

GATEWAY_ID = "gateway"
GATEWAY_OIN = _dev_oin(100)


@dataclass(frozen=True)
class PartnerLayout:
    id: str
    folder: Path
    coordinator: bool
    # The role the directory gives the partner (``None`` only for layouts made by hand).
    role: Role | None = None


@dataclass(frozen=True)
class DeploymentLayout:
    """Where ``create_deployment`` put everything."""

    root: Path
    ca_certificate: Path
    directory: Path
    gateway: Path
    partners: tuple[PartnerLayout, ...]
    secrets: tuple[Path, ...]

    def partner(self, partner_id: str) -> PartnerLayout:
        for p in self.partners:
            if p.id == partner_id:
                return p
        raise KeyError(partner_id)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def _key_entry(pair: Ed25519KeyPair | HybridKemKeyPair | TlsKeyPair, now: int) -> DirectoryKey:
    return DirectoryKey(
        kid=pair.kid, use=pair.use, alg=pair.algorithm, public=pair.public, active_from=now
    )


def create_deployment(
    target: Path,
    *,
    policy: bytes,
    now: int,
    partners: Sequence[PartnerSpec] = IJMOND_PARTNERS,
    covenant: str = "IJmond",
) -> DeploymentLayout:
    """Create keys, certificates and the signed directory of a development deployment.

    Raises ``KeyFileError`` (``key_file_exists``) if ``target`` exists and is not empty.
    """
    if target.exists() and any(target.iterdir()):
        raise KeyFileError(f"{target} is not empty", KeysReason.KEY_FILE_EXISTS)
    target.mkdir(parents=True, exist_ok=True)
    written_secrets: list[Path] = []

    def secret_key(path: Path, key: Ed25519KeyPair | HybridKemKeyPair) -> None:
        write_key_file(path, key)
        written_secrets.append(path)

    # The covenant CA: the development trust anchor (PKIoverheid private root in production).
    ca_dir = _private_dir(target / "ca")
    ca = create_ca(f"Ketenpost {covenant}", now)
    ca_cert = ca_dir / "ca.crt"
    write_certificates_pem(ca_cert, ca.certificate)
    write_tls_key(ca_dir / "ca.key", ca.key)
    written_secrets.append(ca_dir / "ca.key")

    # Officers (root and directory keys, 2 of 3 each) and the key authority (timestamp key).
    officers = _private_dir(target / "officers")
    root_keys = [Ed25519KeyPair.generate(KeyUse.SIGN) for _ in range(3)]
    directory_keys = [Ed25519KeyPair.generate(KeyUse.SIGN) for _ in range(3)]
    for i, key in enumerate(root_keys, 1):
        secret_key(officers / f"root-{i}.key", key)
    for i, key in enumerate(directory_keys, 1):
        secret_key(officers / f"directory-{i}.key", key)
    authority = _private_dir(target / "key-authority")
    timestamp_key = Ed25519KeyPair.generate(KeyUse.SIGN)
    secret_key(authority / "timestamp.key", timestamp_key)

    # The gateway: its sign key (receipts, checkpoints, sender events) and TLS certificate.
    gateway_dir = _private_dir(target / "gateway")
    gateway_sign = Ed25519KeyPair.generate(KeyUse.SIGN)
    secret_key(gateway_dir / "sign.key", gateway_sign)
    gateway_tls = TlsKeyPair.generate()
    write_tls_key(gateway_dir / "tls.key", gateway_tls)
    written_secrets.append(gateway_dir / "tls.key")
    gateway_subject = PartnerSubject(GATEWAY_ID, GATEWAY_OIN, f"Ketenpost gateway {covenant}")
    write_certificates_pem(
        gateway_dir / "tls.crt", issue_gateway_certificate(ca, gateway_tls, gateway_subject, now)
    )

    # Partners: each its own keys and certificate, in its own folder.
    directory_partners: list[Partner] = []
    layouts: list[PartnerLayout] = []
    for spec in partners:
        folder = target / "partners" / spec.id
        keys_dir = _private_dir(folder / "keys")
        sign = Ed25519KeyPair.generate(KeyUse.SIGN)
        encrypt = HybridKemKeyPair.generate()
        tls = TlsKeyPair.generate()
        secret_key(keys_dir / "sign.key", sign)
        secret_key(keys_dir / "encrypt.key", encrypt)
        write_tls_key(keys_dir / "tls.key", tls)
        written_secrets.append(keys_dir / "tls.key")
        subject = PartnerSubject(spec.id, spec.oin, spec.name)
        write_certificates_pem(
            keys_dir / "tls.crt", issue_partner_certificate(ca, tls, subject, now)
        )
        create_file_exclusive(
            keys_dir / "outbox.key", secrets.token_hex(OUTBOX_KEY_BYTES).encode() + b"\n", 0o600
        )
        written_secrets.append(keys_dir / "outbox.key")
        entries = [_key_entry(sign, now), _key_entry(encrypt, now), _key_entry(tls, now)]
        if spec.coordinator:
            token = Ed25519KeyPair.generate(KeyUse.TOKEN)
            secret_key(keys_dir / "token.key", token)
            entries.append(_key_entry(token, now))
        directory_partners.append(
            Partner(
                id=spec.id,
                name=spec.name,
                oin=spec.oin,
                role=spec.role,
                keys=tuple(entries),
                coordinator=spec.coordinator,
            )
        )
        trust = folder / "trust"
        trust.mkdir(parents=True)
        shutil.copyfile(ca_cert, trust / "ca.crt")
        layouts.append(PartnerLayout(spec.id, folder, spec.coordinator, spec.role))

    contents = DirectoryContents(
        covenant=covenant,
        partners=tuple(directory_partners),
        gateway=GatewayEntry(
            id=GATEWAY_ID, keys=(_key_entry(gateway_sign, now), _key_entry(gateway_tls, now))
        ),
        policy=policy,
    )
    repo = DirectoryRepository.create(
        root_keys=root_keys,
        directory_keys=directory_keys,
        authority_key=timestamp_key,
        contents=contents,
        now=now,
    )
    bundle = repo.bundle()
    directory_dir = target / "directory"
    write_bundle(bundle, directory_dir)
    write_trusted_root(directory_dir, repo.initial_root())
    for layout in layouts:
        write_bundle(bundle, layout.folder / "directory")
        write_trusted_root(layout.folder / "directory", repo.initial_root())

    return DeploymentLayout(
        root=target,
        ca_certificate=ca_cert,
        directory=directory_dir,
        gateway=gateway_dir,
        partners=tuple(layouts),
        secrets=tuple(written_secrets),
    )


def read_outbox_key(path: Path) -> bytes:
    """The partner's outbox HMAC key (hex in a 0600 file)."""
    raw = read_private_file(path).strip()
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except ValueError:
        raise KeyFileError(
            f"{os.fspath(path)}: not a hex outbox key", KeysReason.KEY_FILE_MALFORMED
        ) from None
    if len(key) < OUTBOX_KEY_BYTES:
        raise KeyFileError(
            f"{os.fspath(path)}: outbox key too short", KeysReason.KEY_FILE_MALFORMED
        )
    return key
