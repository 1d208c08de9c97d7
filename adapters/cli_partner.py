"""``ketenpost approach issue|revoke|notice``, ``ketenpost send`` and ``ketenpost inbox``: a
partner's hands on the gateway from the command line, over ``adapters.client.GatewayClient``.

Rules kept here (age's command-line style, house rule 10):

* Thin front ends. Imports ``adapters``, ``gateway.protocol`` and ``keys`` only, never the
  relay service (DESIGN.md). Flags are a contract partners' scripts rely on: they are named
  exactly as issue 3 names them, and only ever added to.
* Data goes to stdout as JSON (one document, or JSON lines for ``inbox``); errors go to stderr
  as ``ketenpost: error: <one line>``. Exit status: 0 success, 1 failure, 2 a bad command line
  (argparse, or an argument naming what cannot be used: ``CliInputError``), 3 the gateway
  refused (``ketenpost: error: refused: <reason>: <detail>``).
* Everything comes from the partner folder's ``adapter.toml``: keys, TLS files, trusted root,
  directory bundle, the gateway URL (``--gateway`` overrides it). A key passphrase comes from
  the ``file:``/``env:`` source named there, never from an argument.
* Nothing the gateway says is believed unverified. The directory is verified with TUF's rules
  from the partner's own trusted root; a bundle from ``GET /v1/directory`` replaces the local
  one only when it verifies and is newer (and is then written back to the folder). Tokens,
  acceptance receipts, checkpoints and sender events are verified against that directory.
* Own keys are picked as the adapter engine picks them, so a rotation needs no edit of
  ``adapter.toml``: the verbs sign (envelopes, receipts, rejections) with the newest sign key
  beside the configured one that the verified directory lists as usable, and issue and revoke
  tokens with the newest token key likewise (``adapters.config.key_family`` +
  ``adapters.directory.newest_active``); they present the newest TLS pair that qualifies
  (``keys.tlspairs.choose_tls_pair``: by the folder's directory until the gateway's is
  verified, then by that one; the configured ``[tls]`` pair when none qualifies); ``inbox``
  opens with every encrypt key held, retired ones too.
* Pseudonyms are drawn at random (128 bits, ``types.new_pseudonym``), never derived from a
  BSN or a name. Message ids are derived, ``HMAC(outbox key, source record id)``: the record id
  defaults to a hash of the body file, the type and the recipients, so sending the same file
  twice is refused as ``duplicate_id`` instead of making a second message.
* ``approach issue`` writes the signed token and the opening of its private part to
  ``<partner>/approaches/<token_id>.json`` (0600, never overwritten) before it registers the
  token: the coordinator needs both for the ``approach-notice``, and a token whose private
  part is lost could only be revoked.
* ``approach notice`` is the coordinator's alone: it reads token and opening from that file
  (``CliInputError`` without one, or when the token names another coordinator), checks the
  opening against the token, and sends each recipient its own notice, one message each,
  whose persons carry only what the recipient's role may hold
  (``adapters.role_details.details_for_role``, the rule the ZGW adapter applies; ADR 9).
  All notices are sealed before the first is submitted, so a local problem sends nothing.
* ``inbox`` checks what it receives as an adapter does, trusting nothing the gateway checked:
  first the acceptance (``adapters.acceptance.check_delivery_acceptance``, the adapter
  engine's check: the delivery's acceptance receipt verified as a sender verifies its own,
  its ``accepted_at`` equal to the inbox's and within the bounds); then ``open_envelope``
  with the partner's own keys, the sender key judged at that **verified** ``accepted_at``; the
  token (fetched from the gateway, verified here) and policy ∩ token at **our** time, as the
  engine judges them; the schema. A delivery whose acceptance does not hold is neither
  answered nor rejected (the sender did nothing wrong): it is an ``"alarm"`` line
  (``"alarm": "delivery"``), one ``ketenpost: error:`` line on stderr, and exit status 1; a
  receipt's checkpoint inconsistent with the log witnessed is the same (``"alarm":
  "witness"``), the delivery judged on as the engine does. The witness state is the partner
  folder's ``adapter.db`` when there is one (a partner that also runs the adapter), otherwise
  this run's own, forgotten after (the CLI never witnesses the head itself). With ``--ack``
  it answers each message with a signed delivery receipt, or a signed rejection with the
  reason, and acknowledges verified sender events.
* The time is read once per command, at this edge, and passed down (house rule 5).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from adapters.acceptance import DeliveryAcceptanceError, check_delivery_acceptance
from adapters.client import GatewayClient, InboxDelivery, InboxEvent, RefusedError
from adapters.config import AdapterConfig, key_family, load_partner_dir
from adapters.directory import newest_active
from adapters.errors import AdapterError
from adapters.outbox import AdapterStore
from adapters.role_details import details_for_role
from adapters.witness import Witness
from gateway.protocol.checkpoint import CheckpointError, verify_checkpoint
from gateway.protocol.envelope import (
    Envelope,
    EnvelopeError,
    EnvelopeOpenError,
    EnvelopeReason,
    EnvelopeSignatureError,
    decode_envelope,
    derive_message_id,
    encode_envelope,
    header_hash,
    open_envelope,
    seal,
)
from gateway.protocol.errors import ProtocolError, TokenError
from gateway.protocol.merkle import InclusionProof, MerkleError, verify_inclusion
from gateway.protocol.messages import (
    SCHEMA_VERSION,
    ApproachChange,
    ApproachNotice,
    PersonDetails,
    decode_body,
    encode_body,
    subjects_of,
)
from gateway.protocol.policy import Policy, policy_from_directory, sendable_types
from gateway.protocol.reasons import Reason, RejectionReason
from gateway.protocol.receipts import (
    AcceptanceReceipt,
    DeliveryReceipt,
    Rejection,
    sign_delivery_receipt,
    sign_rejection,
    verify_acceptance_receipt,
    verify_sender_event,
)
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import (
    PrivatePartOpening,
    RolePurpose,
    TokenStatus,
    TokenSubject,
    check_private_part,
    check_use,
    decode_signed,
    encode_signed,
    issue,
    revoke,
    token_hash,
    verify_token,
    verify_token_signature,
)
from gateway.protocol.types import ApproachKind, MessageType, new_pseudonym
from keys import (
    Directory,
    DirectoryError,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeysError,
    KeyUse,
    Role,
)
from keys.deployment import read_outbox_key
from keys.keyfile import (
    PassphraseKind,
    PassphraseSource,
    create_file_exclusive,
    load_ed25519_key,
    load_encrypt_key,
    resolve_passphrase,
)
from keys.signed_directory import (
    DirectoryBundle,
    TrustedDirectory,
    decode_bundle,
    read_bundle,
    write_bundle,
)
from keys.tlsidentity import TlsFiles, client_context
from keys.tlspairs import choose_tls_pair

PROG: Final = "ketenpost"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INPUT: Final = 2
EXIT_REFUSED: Final = 3

DAY_S: Final = 86_400
APPROACHES_DIR: Final = "approaches"
APPROACH_FILE_FORMAT: Final = "ketenpost-approach-v1"
APPROACH_FILE_MODE: Final = 0o600
DEFAULT_VALID_DAYS: Final = 90
# Audit entries and everything else about an approach are deleted at its retention deadline;
# a year after the approach ends is what such covenants agree for their case files.
DEFAULT_RETENTION_DAYS: Final = 365
DEFAULT_EXPIRES_DAYS: Final = 14
# The token is valid from a little before "now": the gateway judges validity with its own
# clock, which may lag the coordinator's by up to the covenant's clock skew (300 s).
VALID_FROM_SLACK_S: Final = 300
MAX_NEW_SUBJECTS: Final = 64
MAX_TEXT: Final = 2000
# ``ShortText`` of the case-message schemas (``ApproachNotice.contact``).
MAX_SHORT_TEXT: Final = 200
# A long-poll must outlive its own wait; the client's timeout is the wait plus this margin.
POLL_MARGIN_S: Final = 30.0

_PSEUDONYM_RE: Final = re.compile(r"[0-9a-f]{32}")
_TOKEN_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
_PARTNER_ID_RE: Final = re.compile(r"[a-z][a-z0-9-]{1,62}")

_EXAMPLES_ISSUE: Final = """\
examples:
  ketenpost approach issue --partner-dir dev/partners/gemeente-velsen \\
      --kind person --new-subjects 1 --participants politie-ijmond,halt,om \\
      --informed-at 2026-05-20 --valid-days 90
  ketenpost approach issue --partner-dir dev/partners/gemeente-velsen \\
      --gateway https://ketenpost.ijmond.example:8443 --kind group \\
      --subject 3f2a9c0d4e5b6a7f8091a2b3c4d5e6f7 --subject 0a1b2c3d4e5f60718293a4b5c6d7e8f9 \\
      --participants politie-ijmond,cjg --informing-deferred-until 2026-07-01 --valid-days 60

Prints {"token_id": ..., "subjects": [...], ...}. The coordinating municipality is always a
participant. The signed token and its private part are kept in
<partner-dir>/approaches/<token_id>.json (0600) for the approach-notice.
"""

_EXAMPLES_REVOKE: Final = """\
example:
  ketenpost approach revoke --partner-dir dev/partners/gemeente-velsen \\
      9c1e0f3a5b7d4c2e8f6a1b3d5c7e9f0a --reason "Aanpak beëindigd na casusoverleg"

Only the issuing coordinator revokes; the gateway purges the approach's undelivered messages.
"""

_EXAMPLES_NOTICE: Final = """\
examples:
  ketenpost approach notice --partner-dir dev/partners/gemeente-velsen \\
      9c1e0f3a5b7d4c2e8f6a1b3d5c7e9f0a --persons persons.json \\
      --contact "M. Jansen, regisseur jeugd en veiligheid, 0255 567 200"
  ketenpost approach notice --partner-dir dev/partners/gemeente-velsen \\
      9c1e0f3a5b7d4c2e8f6a1b3d5c7e9f0a --to halt --persons persons.json --change changed

persons.json lists, per pseudonym of the token, the identifying details (every field but
"pseudonym" optional; the BSN must pass the eleven-test):
  [{"pseudonym": "3f2a9c0d4e5b6a7f8091a2b3c4d5e6f7",
    "given_name": "Daan", "family_name": "de Vries", "date_of_birth": "2010-05-17",
    "bsn": "111222333",
    "address": {"street": "Lange Nieuwstraat", "house_number": "12",
                "postcode": "1972GH", "city": "IJmuiden"}}]

Only the coordinator that issued the token sends its notice: token and private part come from
<partner-dir>/approaches/<token_id>.json, written by "approach issue". Each recipient (default:
every participant but the coordinator) gets its own message, whose persons carry only the
details its role may hold (ADR 9: police, OM, Halt and welfare name and date of birth; the CJG
also BSN and address). Without --persons the notice carries the token and its private part
only: recipients keep the token but can link no pseudonym to anyone in their own register.
Prints one JSON line per recipient once it is accepted: {"recipient": ..., "persons":
{pseudonym: [names of the details sent]}, "message_id": ..., "receipt": {...}}. A refusal exits
3 with "ketenpost: error: refused: <reason>: <detail>"; the lines printed before it were sent.
Sending the same notice again is refused as duplicate_id.
"""

_EXAMPLES_SEND: Final = """\
examples:
  ketenpost send --partner-dir dev/partners/politie-ijmond --to halt \\
      --approach 9c1e0f3a5b7d4c2e8f6a1b3d5c7e9f0a --type signal --body signal.json
  ketenpost send --partner-dir dev/partners/gemeente-velsen --to halt,cjg,om \\
      --approach 9c1e0f3a5b7d4c2e8f6a1b3d5c7e9f0a --type case-conference \\
      --body conference.json --record-id zaak-2026-0042/overleg-1

The subjects are taken from the body. Prints {"message_id": ..., "receipt": {...}}; a refusal
exits 3 with "ketenpost: error: refused: <reason>: <detail>". The same body, type and
recipients make the same message id (refused as duplicate_id); give --record-id to send it again
as a new message.
"""

_EXAMPLES_INBOX: Final = """\
examples:
  ketenpost inbox --partner-dir dev/partners/halt
  ketenpost inbox --partner-dir dev/partners/halt --wait 30 --ack

Prints one JSON line per message ("kind": "message", the opened body under "body"), per
message that failed a check ("kind": "rejection", with the reason) and per sender event
("kind": "event"). Without --ack nothing is acknowledged: the gateway delivers the messages
again when their lease ends. A message whose acceptance receipt does not verify, or whose
acceptance time the gateway misstates, is opened by no one: it gets a "kind": "alarm" line
and a "ketenpost: error: ..." line on stderr, is never acknowledged, and the exit status is 1.
"""


class CliError(AdapterError):
    """A command failed; the message is one line for the person at the terminal."""


class CliInputError(CliError):
    """The command line names something that cannot be used (a missing file, a recipient that
    is not a participant); exits 2, as argparse does for a bad command line."""


class _Rejected(Exception):
    """A delivered message failed a recipient check; it is answered with a signed rejection."""

    def __init__(self, reason: RejectionReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Postponed(Exception):
    """A delivered message could not be checked now (the gateway did not answer); it is left
    unacknowledged and comes again when its lease ends."""


# -- argument types --------------------------------------------------------------------------


def _pseudonym(text: str) -> str:
    if _PSEUDONYM_RE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pseudonym (32 lowercase hex)")
    return text


def _token_id(text: str) -> str:
    if _TOKEN_ID_RE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token id (32 lowercase hex)")
    return text


def _partner_ids(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("give at least one partner id")
    for partner_id in ids:
        if _PARTNER_ID_RE.fullmatch(partner_id) is None:
            raise argparse.ArgumentTypeError(f"{partner_id!r} is not a partner id")
    if len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError("a partner id is listed twice")
    return ids


def _moment(text: str) -> int:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 time with its offset, as Unix seconds."""
    try:
        if len(text) == 10:
            day = datetime.date.fromisoformat(text)
            return int(datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp())
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM:SS+HH:MM)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone offset")
    return int(moment.timestamp())


def _positive(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"{value} is not between 1 and {limit}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 3600 seconds")
    return value


def _text(text: str) -> str:
    if not 1 <= len(text) <= MAX_TEXT:
        raise argparse.ArgumentTypeError(f"give between 1 and {MAX_TEXT} characters")
    return text


def _short_text(text: str) -> str:
    if not 1 <= len(text) <= MAX_SHORT_TEXT:
        raise argparse.ArgumentTypeError(f"give between 1 and {MAX_SHORT_TEXT} characters")
    return text


# -- the partner folder ----------------------------------------------------------------------


@dataclass(frozen=True)
class PartnerFolder:
    """A partner's self-contained folder and its ``adapter.toml``; keys are read on demand."""

    config: AdapterConfig
    environ: Mapping[str, str]
    passphrase_source: PassphraseSource | None = None

    @classmethod
    def open(cls, folder: Path, environ: Mapping[str, str]) -> PartnerFolder:
        """Raise ``CliError`` for a missing folder and ``AdapterConfigError`` for its config."""
        if not folder.is_dir():
            raise CliError(f"{folder}: no such partner folder")
        config = load_partner_dir(folder)
        source: PassphraseSource | None = None
        if config.keys.passphrase:
            try:
                source = PassphraseSource.parse(config.keys.passphrase)
            except ValueError as exc:
                raise CliError(f"{folder / 'adapter.toml'}: keys.passphrase: {exc}") from None
            if source.kind is PassphraseKind.FILE:
                source = PassphraseSource.from_file(config.path(source.where))
        return cls(config, environ, source)

    @property
    def id(self) -> str:
        return self.config.partner.id

    @property
    def folder(self) -> Path:
        return Path(self.config.base)

    def _passphrase(self) -> bytes | None:
        if self.passphrase_source is None:
            return None
        return resolve_passphrase(self.passphrase_source, self.environ)

    def tls_files(self) -> TlsFiles:
        tls = self.config.tls
        return TlsFiles(
            certificate=self.config.path(tls.cert),
            private_key=self.config.path(tls.key),
            trust_anchors=tuple(self.config.path(a) for a in tls.trust_anchors),
            passphrase=self.passphrase_source,
        )

    def sign_keys(self) -> tuple[Ed25519KeyPair, ...]:
        """The configured sign key and its rotated successors beside it (``sign-2.key``, …;
        ``adapters.config.key_family``), oldest first, as the adapter engine holds them."""
        passphrase = self._passphrase()
        return tuple(
            load_ed25519_key(path, KeyUse.SIGN, passphrase)
            for path in key_family(self.config.path(self.config.keys.sign))
        )

    def sign_key(
        self,
        directory: Directory | None = None,
        now: int | None = None,
        keys: Sequence[Ed25519KeyPair] | None = None,
    ) -> Ed25519KeyPair:
        """The newest of ``keys`` (default ``sign_keys()``) that ``directory`` lists as usable
        at ``now`` (``adapters.directory.newest_active``, as ``Adapter.own_sign_key``): a
        rotated sign key signs from its ``active_from`` on, the old one until then. The
        configured key without a directory and a time, or when the directory lists none (the
        gateway then refuses with its reason)."""
        family = tuple(keys) if keys is not None else self.sign_keys()
        if directory is None or now is None:
            return family[0]
        chosen = newest_active(family, directory, self.id, KeyUse.SIGN, now)
        return chosen if chosen is not None else family[0]

    def token_keys(self) -> tuple[Ed25519KeyPair, ...]:
        """The configured token key and its rotated successors beside it (``token-2.key``, …;
        ``adapters.config.key_family``), oldest first. ``CliError`` when there is none."""
        if self.config.keys.token is None:
            raise CliError(
                f"{self.id} has no token key in adapter.toml: only a coordinating municipality "
                "issues and revokes approach tokens"
            )
        passphrase = self._passphrase()
        return tuple(
            load_ed25519_key(path, KeyUse.TOKEN, passphrase)
            for path in key_family(self.config.path(self.config.keys.token))
        )

    def token_key(
        self, directory: Directory, now: int, keys: Sequence[Ed25519KeyPair] | None = None
    ) -> Ed25519KeyPair:
        """The newest of ``keys`` (default ``token_keys()``) that ``directory`` lists as usable
        at ``now``: a rotated token key signs from its ``active_from`` on, the old one until
        then. The configured key when the directory lists none (the gateway then refuses with
        its reason)."""
        family = tuple(keys) if keys is not None else self.token_keys()
        chosen = newest_active(family, directory, self.id, KeyUse.TOKEN, now)
        return chosen if chosen is not None else family[0]

    def encrypt_keys(self) -> dict[str, HybridKemKeyPair]:
        """Every encrypt key the partner holds (current and retired), by kid: each one
        ``[keys] encrypt`` lists and the rotated successors beside it (``key_family``), as the
        adapter engine holds them, so a message sealed to any of them opens."""
        passphrase = self._passphrase()
        paths = [q for p in self.config.keys.encrypt for q in key_family(self.config.path(p))]
        pairs = [load_encrypt_key(path, passphrase) for path in dict.fromkeys(paths)]
        return {pair.kid: pair for pair in pairs}

    def outbox_key(self) -> bytes:
        return read_outbox_key(self.config.path(self.config.keys.outbox))

    def approach_file(self, token_id: str) -> Path:
        return self.folder / APPROACHES_DIR / f"{token_id}.json"

    def tls_pair(self, directory: Directory | None, now: int) -> TlsFiles:
        """The certificate and key to present: the newest own pair that qualifies at ``now`` by
        ``directory`` (``keys.tlspairs.choose_tls_pair``, as the adapter engine picks), so a
        rotated certificate is presented from its key's ``active_from`` on. The configured
        ``[tls]`` pair without a directory, when none qualifies, or when the trust anchors
        cannot be read (building the context then says why)."""
        configured = self.tls_files()
        if directory is None:
            return configured
        try:
            choice = choose_tls_pair(configured, directory, self.id, now, self.environ)
        except (KeysError, OSError):
            return configured
        return configured if choice.pair is None else choice.pair.files

    def _trusted_local(self, now: int) -> tuple[TrustedDirectory, Directory | None, str]:
        """The partner's trusted root updated with the folder's bundle: the trusted state, the
        folder's directory (``None`` if it does not verify at ``now``) and why not."""
        section = self.config.directory
        try:
            trusted = TrustedDirectory(self.config.path(section.trusted_root).read_bytes())
        except OSError as exc:
            raise CliError(f"cannot read the trusted root: {exc}") from None
        try:
            return trusted, trusted.update(read_bundle(self.config.path(section.bundle)), now), ""
        except DirectoryError as exc:
            return trusted, None, f"the folder's directory does not verify: {exc}"

    @contextlib.asynccontextmanager
    async def session(
        self, gateway: str | None, now: int, *, wait_s: float = 0.0
    ) -> AsyncIterator[tuple[GatewayClient, Directory]]:
        """A client of the gateway (``gateway`` or ``gateway.url``) and the verified directory.

        The directory is the folder's bundle, or the gateway's when that verifies and is newer
        (then also written back to the folder); ``CliError`` when neither verifies. The client
        first presents the pair the folder's directory picks (``tls_pair``), and from the
        moment the directory is known the pair that one picks: a certificate rotated after the
        folder's bundle was written is presented once the gateway's newer bundle lists it.
        """
        trusted, local, local_problem = self._trusted_local(now)
        presented = self.tls_pair(local, now)
        client = GatewayClient(
            gateway or self.config.gateway.url,
            client_context(presented, self.environ),
            timeout_s=max(60.0, wait_s + POLL_MARGIN_S),
        )
        async with client:
            directory = await self._directory(client, trusted, local, local_problem, now)
            current = self.tls_pair(directory, now)
            if current != presented:
                client.use_ssl_context(client_context(current, self.environ))
            yield client, directory

    async def _directory(
        self,
        client: GatewayClient,
        trusted: TrustedDirectory,
        local: Directory | None,
        local_problem: str,
        now: int,
    ) -> Directory:
        local_version = trusted.version
        directory = local
        remote: DirectoryBundle | None = None
        try:
            remote = decode_bundle(await client.directory_bundle())
            directory = trusted.update(remote, now)
        except DirectoryError as exc:
            if directory is None:
                raise CliError(f"{local_problem}; the gateway's does not either: {exc}") from None
        if remote is not None and trusted.version > local_version:
            write_bundle(remote, self.config.path(self.config.directory.bundle))
        if directory is None:  # pragma: no cover - update returns or raises
            raise CliError(local_problem)
        return directory

    def read_approach(self, token_id: str) -> SignedObject | None:
        """The signed token from the local approach file, ``None`` if there is none."""
        path = self.approach_file(token_id)
        try:
            document = json.loads(path.read_bytes())
            return decode_signed(base64.b64decode(document["signed_token"], validate=True))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, TokenError) as exc:
            raise CliError(f"{path}: not an approach file: {exc}") from None

    def read_approach_opening(self, token_id: str) -> tuple[SignedObject, PrivatePartOpening]:
        """The signed token and the opening of its private part from the local approach file.

        ``CliInputError`` when there is no such file (only the coordinator that issued the
        token has it) or it cannot be read as one. The opening is not checked here.
        """
        path = self.approach_file(token_id)
        try:
            document = json.loads(path.read_bytes())
            signed = decode_signed(base64.b64decode(document["signed_token"], validate=True))
            part = document["private_part_opening"]
            opening = PrivatePartOpening(
                salt=base64.b64decode(part["salt"], validate=True),
                content=base64.b64decode(part["content"], validate=True),
            )
        except FileNotFoundError:
            raise CliInputError(
                f"no approach file {path}: only the coordinator that issued the token "
                "(with approach issue, from this partner folder) holds its private part"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, TokenError) as exc:
            raise CliInputError(f"{path}: not an approach file: {exc}") from None
        return signed, opening


async def _fetched_token(client: GatewayClient, token_id: str) -> tuple[SignedObject, TokenStatus]:
    """``GET /v1/approaches/{id}``: the signed token and its registry status (participants
    only). Raises ``RefusedError`` as the gateway refuses."""
    doc = await client.approach(token_id)
    try:
        signed = decode_signed(base64.b64decode(doc["token"], validate=True))
        status = TokenStatus(
            registered_at=int(doc["registered_at"]),
            revoked_at=doc.get("revoked_at"),
            superseded_by=doc.get("superseded_by"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"the gateway's approach answer is malformed: {exc}") from None
    return signed, status


# -- approach issue --------------------------------------------------------------------------


def _purpose(policy: Policy, role: Role, kind: ApproachKind) -> RolePurpose:
    """Purpose and legal basis of ``role``, from the covenant policy in the directory."""
    basis = policy.roles.get(role)
    if basis is None:
        raise CliError(f"the covenant policy gives the {role} role no legal basis")
    legal = "; ".join(f"{b.text} ({b.reference})" for b in basis.legal_basis)
    purpose = (
        f"Participation as {role} in the {kind} approach of the covenant "
        f"({policy.name}); processing activities: {', '.join(basis.processing_activities)}"
    )
    return RolePurpose(purpose=purpose[:MAX_TEXT], legal_basis=legal[:MAX_TEXT])


def _informing_note(args: argparse.Namespace) -> str:
    if args.informing_note:
        return str(args.informing_note)
    if args.informed_at is not None:
        day = datetime.datetime.fromtimestamp(args.informed_at, datetime.UTC).date()
        return f"Youth and parents/guardians informed on {day.isoformat()}."
    day = datetime.datetime.fromtimestamp(args.informing_deferred_until, datetime.UTC).date()
    return f"Informing deferred until {day.isoformat()}, by decision of the coordinator."


async def approach_issue(
    args: argparse.Namespace, partner: PartnerFolder, now: int
) -> dict[str, Any]:
    kind = ApproachKind(args.kind)
    token_keys = partner.token_keys()  # fails before anything is sent
    participants: list[str] = list(args.participants)
    if partner.id not in participants:
        participants.insert(0, partner.id)
    if args.subject:
        pseudonyms = list(args.subject)
        if len(set(pseudonyms)) != len(pseudonyms):
            raise CliError("a subject is listed twice")
    else:
        pseudonyms = [new_pseudonym() for _ in range(args.new_subjects)]
    if args.informing_deferred_until is not None and args.informing_deferred_until <= now:
        raise CliError("--informing-deferred-until lies in the past")
    subjects = tuple(
        TokenSubject(
            pseudonym=p,
            informed_at=args.informed_at,
            informing_deferred_until=args.informing_deferred_until,
        )
        for p in pseudonyms
    )
    note = _informing_note(args)
    decided_on = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    reference = args.decision_reference or (
        f"{partner.id}-{decided_on.strftime('%Y%m%d')}-{secrets.token_hex(4)}"
    )
    valid_until = now + args.valid_days * DAY_S
    async with partner.session(args.gateway, now) as (client, directory):
        policy = policy_from_directory(directory)
        try:
            me = directory.partner(partner.id)
            roles = {directory.partner(p).role for p in participants}
        except DirectoryError as exc:
            raise CliError(f"--participants: {exc}") from None
        if not me.coordinator:
            raise CliError(f"{partner.id} is not a coordinating municipality in the directory")
        signed, opening = issue(
            key=partner.token_key(directory, now, token_keys),
            coordinator=partner.id,
            kind=kind,
            subjects=subjects,
            participants=participants,
            allowed={role: sorted(sendable_types(policy, kind, role)) for role in Role},
            valid_from=now - VALID_FROM_SLACK_S,
            valid_until=valid_until,
            retention_until=valid_until + args.retention_days * DAY_S,
            policy=policy,
            purposes={role: _purpose(policy, role, kind) for role in sorted(roles)},
            decided_by=partner.id,
            decided_on=decided_on,
            decision_reference=reference,
            informing={p: note for p in pseudonyms},
            now=now,
            supersedes=args.supersedes,
        )
        token = verify_token_signature(signed, directory)
        path = partner.approach_file(token.token_id)
        _write_approach_file(path, signed, opening, token.token_id)
        try:
            registered = await client.register_token(encode_signed(signed))
        except RefusedError:
            # Never registered: the token is no legal basis for anything; drop its file.
            path.unlink(missing_ok=True)
            raise
    return {
        "token_id": token.token_id,
        "token_hash": token_hash(signed),
        "kind": kind.value,
        "coordinator": partner.id,
        "subjects": pseudonyms,
        "participants": participants,
        "valid_from": token.valid_from,
        "valid_until": token.valid_until,
        "decision_reference": reference,
        "registered_at": registered.get("registered_at"),
        "approach_file": str(path),
    }


def _write_approach_file(
    path: Path, signed: SignedObject, opening: PrivatePartOpening, token_id: str
) -> None:
    document = {
        "format": APPROACH_FILE_FORMAT,
        "token_id": token_id,
        "token_hash": token_hash(signed),
        "signed_token": base64.b64encode(encode_signed(signed)).decode("ascii"),
        "private_part_opening": {
            "salt": base64.b64encode(opening.salt).decode("ascii"),
            "content": base64.b64encode(opening.content).decode("ascii"),
        },
        "private_part": msgspec.to_builtins(opening.decoded()),
    }
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    create_file_exclusive(path, data, APPROACH_FILE_MODE)


# -- approach revoke -------------------------------------------------------------------------


async def approach_revoke(
    args: argparse.Namespace, partner: PartnerFolder, now: int
) -> dict[str, Any]:
    token_keys = partner.token_keys()  # fails before anything is sent
    async with partner.session(args.gateway, now) as (client, directory):
        signed = partner.read_approach(args.token_id)
        if signed is None:
            signed, _status = await _fetched_token(client, args.token_id)
        token = verify_token_signature(signed, directory)
        if token.token_id != args.token_id:
            raise CliError(f"the approach file names token {token.token_id}")
        if token.coordinator != partner.id:
            raise CliError(f"only the issuing coordinator ({token.coordinator}) revokes this token")
        # Any usable token key of the coordinator may revoke (keys rotate during a token's life).
        key = partner.token_key(directory, now, token_keys)
        revocation = revoke(token, key=key, now=now, reason=args.reason)
        result = await client.revoke_token(token.token_id, encode_signed(revocation))
    return {"token_id": token.token_id, "revoked_at": now, "purged": result.get("purged", 0)}


# -- send ------------------------------------------------------------------------------------


def _record_id(body: bytes, message_type: MessageType, recipients: Sequence[str]) -> str:
    return (
        "cli:"
        + hashlib.sha256(
            body
            + b"\0"
            + message_type.value.encode()
            + b"\0"
            + ",".join(sorted(recipients)).encode()
        ).hexdigest()
    )


def _traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _verified_receipt(
    raw: bytes, directory: Directory, now: int, message_id: str, digest: str
) -> AcceptanceReceipt:
    """Verify the acceptance receipt and the gateway checkpoint inside it."""
    try:
        signed = msgspec.msgpack.decode(raw, type=SignedObject)
    except msgspec.DecodeError:
        raise CliError("the gateway's acceptance receipt does not decode") from None
    receipt = verify_acceptance_receipt(
        signed, directory, now=now, message_id=message_id, header_hash=digest
    )
    origin = receipt.checkpoint.split("\n", 1)[0]
    problems = []
    for key in directory.gateway.keys:
        if key.use is not KeyUse.SIGN:
            continue
        try:
            checkpoint = verify_checkpoint(receipt.checkpoint, origin, origin, key.public)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if checkpoint.size != receipt.tree_size:
            raise CliError("the receipt's checkpoint is for another tree size")
        return receipt
    raise CliError(f"the receipt's checkpoint does not verify: {'; '.join(problems)}")


async def _check_inclusion(
    client: GatewayClient, receipt: AcceptanceReceipt, directory: Directory
) -> None:
    """The receipt's inclusion proof leads from the gateway's leaf to the signed checkpoint."""
    doc = await client.inclusion_proof(receipt.leaf_index, receipt.tree_size)
    origin = receipt.checkpoint.split("\n", 1)[0]
    for key in directory.gateway.keys:
        if key.use is not KeyUse.SIGN:
            continue
        try:
            checkpoint = verify_checkpoint(receipt.checkpoint, origin, origin, key.public)
        except CheckpointError:
            continue
        proof = InclusionProof(
            leaf_index=receipt.leaf_index,
            tree_size=receipt.tree_size,
            hashes=receipt.inclusion_proof,
        )
        verify_inclusion(base64.b64decode(doc["leaf_hash"]), proof, checkpoint.root_hash)
        return


def _sealed(
    partner: PartnerFolder,
    directory: Directory,
    now: int,
    *,
    sign_key: Ed25519KeyPair,
    signed: SignedObject,
    token_id: str,
    recipients: Sequence[str],
    body: bytes,
    message_type: MessageType,
    subjects: Sequence[str],
    message_id: str,
    expires_at: int,
) -> Envelope:
    """``body`` sealed to the current encrypt key of each recipient, signed with ``sign_key``,
    under the token ``signed`` (whose id is ``token_id``). ``CliError`` for a recipient the
    directory does not know or lists no usable key of."""
    targets = []
    for recipient in recipients:
        try:
            targets.append((recipient, directory.current_key(recipient, KeyUse.ENCRYPT, now)))
        except DirectoryError as exc:
            raise CliError(f"--to: {exc}") from None
    return seal(
        sender=partner.id,
        sign_key=sign_key,
        recipients=targets,
        body=body,
        message_id=message_id,
        token_id=token_id,
        token_hash=token_hash(signed),
        subjects=tuple(subjects),
        message_type=message_type,
        schema_version=SCHEMA_VERSION,
        created_at=now,
        expires_at=expires_at,
        trace_id=_traceparent(),
    )


async def _submitted(
    client: GatewayClient, directory: Directory, envelope: Envelope, message_id: str, now: int
) -> dict[str, Any]:
    """Submit ``envelope``; verify the acceptance receipt, its checkpoint and inclusion proof.

    Returns the output document of ``send``; raises ``RefusedError`` as the gateway refuses.
    """
    digest = header_hash(envelope.header).hex()
    accepted = await client.submit(encode_envelope(envelope))
    receipt = _verified_receipt(accepted.receipt, directory, now, message_id, digest)
    await _check_inclusion(client, receipt, directory)
    return {
        "message_id": accepted.message_id,
        "first_time": accepted.first_time,
        "receipt": {
            "message_id": receipt.message_id,
            "header_hash": receipt.header_hash,
            "accepted_at": receipt.accepted_at,
            "leaf_index": receipt.leaf_index,
            "tree_size": receipt.tree_size,
            "inclusion_proof": [h.hex() for h in receipt.inclusion_proof],
            "checkpoint": receipt.checkpoint,
            "verified": True,
        },
    }


async def send(args: argparse.Namespace, partner: PartnerFolder, now: int) -> dict[str, Any]:
    message_type = MessageType(args.type)
    recipients: list[str] = list(args.to)
    try:
        body = await asyncio.to_thread(Path(args.body).read_bytes)
    except OSError as exc:
        raise CliError(f"--body: {exc.strerror or exc}: {args.body}") from None
    case_message = decode_body(body, expected_type=message_type)
    subjects = subjects_of(case_message)
    record_id = args.record_id or _record_id(body, message_type, recipients)
    message_id = derive_message_id(partner.outbox_key(), record_id)
    sign_keys = partner.sign_keys()  # fails before anything is sent
    async with partner.session(args.gateway, now) as (client, directory):
        signed = partner.read_approach(args.approach)
        if signed is None:
            signed, _status = await _fetched_token(client, args.approach)
        token = verify_token_signature(signed, directory)
        if token.token_id != args.approach:
            raise CliError(f"the approach file names token {token.token_id}")
        envelope = _sealed(
            partner,
            directory,
            now,
            sign_key=partner.sign_key(directory, now, sign_keys),
            signed=signed,
            token_id=token.token_id,
            recipients=recipients,
            body=body,
            message_type=message_type,
            subjects=subjects,
            message_id=message_id,
            expires_at=min(now + args.expires_in_days * DAY_S, token.valid_until),
        )
        return await _submitted(client, directory, envelope, message_id, now)


# -- approach notice -------------------------------------------------------------------------


def _read_persons(path: str, subjects: Sequence[str]) -> tuple[PersonDetails, ...]:
    """The ``--persons`` file: a JSON list of ``PersonDetails``, each about a subject of the
    token, each subject at most once. ``CliInputError`` saying what is wrong otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliInputError(f"--persons: {exc.strerror or exc}: {path}") from None
    try:
        persons = msgspec.json.decode(data, type=tuple[PersonDetails, ...])
    except msgspec.DecodeError as exc:
        raise CliInputError(f"--persons: {path}: {exc}") from None
    seen: set[str] = set()
    for person in persons:
        if person.pseudonym not in subjects:
            raise CliInputError(
                f"--persons: {path}: {person.pseudonym} is not a subject of the token"
            )
        if person.pseudonym in seen:
            raise CliInputError(f"--persons: {path}: {person.pseudonym} is listed twice")
        seen.add(person.pseudonym)
    return persons


def _held_details(person: PersonDetails) -> list[str]:
    """The names of the details ``person`` carries (for the output; never their values)."""
    return [
        name
        for name in ("given_name", "family_name", "date_of_birth", "bsn", "address")
        if getattr(person, name) is not None
    ]


async def approach_notice(
    args: argparse.Namespace,
    partner: PartnerFolder,
    now: int,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Send the approach-notice of ``args.token_id``: one message per recipient, each with
    the persons as its role may hold them; ``emit`` each recipient's result once accepted.

    Everything is checked and sealed before the first submission. Raises ``CliInputError``
    (no approach file, another coordinator's token, a recipient that is not a participant, a
    bad ``--persons`` file), ``RefusedError`` naming the recipient it was refused for.
    """
    signed, opening = partner.read_approach_opening(args.token_id)
    outbox_key = partner.outbox_key()
    sign_keys = partner.sign_keys()  # fails before anything is sent
    async with partner.session(args.gateway, now) as (client, directory):
        token = verify_token_signature(signed, directory)
        if token.token_id != args.token_id:
            raise CliInputError(f"the approach file names token {token.token_id}")
        if token.coordinator != partner.id:
            raise CliInputError(
                f"only the issuing coordinator ({token.coordinator}) sends this token's "
                "approach-notice"
            )
        try:
            check_private_part(token, opening)
        except TokenError as exc:
            raise CliInputError(
                f"{partner.approach_file(token.token_id)}: the private part: {exc}"
            ) from None
        others = [p for p in token.participants if p != partner.id]
        recipients: list[str] = list(args.to) if args.to else others
        strangers = [r for r in recipients if r not in others]
        if strangers:
            raise CliInputError(
                f"--to: {', '.join(strangers)} is not a participant of the token "
                f"(other than the sender: {', '.join(others) or 'none'})"
            )
        subjects = tuple(sorted(token.subject_pseudonyms))
        persons = _read_persons(args.persons, subjects) if args.persons else ()
        sign_key = partner.sign_key(directory, now, sign_keys)
        expires_at = min(now + DEFAULT_EXPIRES_DAYS * DAY_S, token.valid_until)
        sealed: list[tuple[str, str, Envelope, dict[str, list[str]]]] = []
        for recipient in recipients:
            try:
                role = directory.partner(recipient).role
            except DirectoryError as exc:
                raise CliInputError(f"--to: {exc}") from None
            held = tuple(details_for_role(person, role) for person in persons)
            body = encode_body(
                ApproachNotice(
                    subjects=subjects,
                    token_id=token.token_id,
                    approach_kind=token.kind,
                    change=ApproachChange(args.change),
                    token=signed,
                    token_private=opening,
                    persons=held,
                    contact=args.contact,
                )
            )
            message_type = MessageType.APPROACH_NOTICE
            message_id = derive_message_id(outbox_key, _record_id(body, message_type, [recipient]))
            envelope = _sealed(
                partner,
                directory,
                now,
                sign_key=sign_key,
                signed=signed,
                token_id=token.token_id,
                recipients=[recipient],
                body=body,
                message_type=message_type,
                subjects=subjects,
                message_id=message_id,
                expires_at=expires_at,
            )
            details = {p.pseudonym: _held_details(p) for p in held}
            sealed.append((recipient, message_id, envelope, details))
        sent: list[str] = []
        for recipient, message_id, envelope, details in sealed:
            try:
                result = await _submitted(client, directory, envelope, message_id, now)
            except RefusedError as exc:
                done = f"sent to {', '.join(sent)}" if sent else "nothing sent"
                raise RefusedError(
                    exc.status,
                    exc.reason,
                    f"notice to {recipient} ({done}): {exc.detail}",
                    exc.retry_after,
                ) from None
            sent.append(recipient)
            emit({"recipient": recipient, "persons": details} | result)


# -- inbox -----------------------------------------------------------------------------------


_OPEN_REJECTIONS: Final[Mapping[EnvelopeReason, RejectionReason]] = {
    EnvelopeReason.NOT_A_RECIPIENT: RejectionReason.NOT_ADDRESSED,
    EnvelopeReason.INNER_SIGNATURE: RejectionReason.BAD_INNER_SIGNATURE,
    EnvelopeReason.BODY_MALFORMED: RejectionReason.SCHEMA_INVALID,
    EnvelopeReason.TYPE_MISMATCH: RejectionReason.SCHEMA_INVALID,
    EnvelopeReason.SUBJECTS_MISMATCH: RejectionReason.SUBJECTS_MISMATCH,
}


@dataclass
class _Inbox:
    """One poll's work: the checks of every delivery and what to answer."""

    client: GatewayClient
    partner: PartnerFolder
    directory: Directory
    policy: Policy
    encrypt_keys: dict[str, HybridKemKeyPair]
    sign_key: Ed25519KeyPair
    now: int
    witness: Witness
    tokens: dict[str, tuple[SignedObject, TokenStatus] | _Rejected] = field(default_factory=dict)
    # Inconsistencies the receipts' checkpoints showed (the adapter's ``witness`` alarm).
    witness_alarms: list[str] = field(default_factory=list)

    async def _consistency(self, old_size: int, new_size: int) -> list[bytes]:
        doc = await self.client.consistency_proof(old_size, new_size)
        return [base64.b64decode(h, validate=True) for h in doc["hashes"]]

    async def accepted_at(self, delivery: InboxDelivery) -> int:
        """The delivery's verified acceptance time (``check_delivery_acceptance``, as the
        adapter engine checks it). An envelope that does not decode is rejected unopened
        below, so its claimed time is returned unused. Raises ``DeliveryAcceptanceError``."""
        try:
            envelope = decode_envelope(delivery.envelope)
        except EnvelopeError:
            return delivery.accepted_at
        receipt = await check_delivery_acceptance(
            delivery,
            envelope,
            directory=self.directory,
            witness=self.witness,
            prove=self._consistency,
            now=self.now,
            witness_alarm=self.witness_alarms.append,
        )
        return receipt.accepted_at

    async def token(self, token_id: str) -> tuple[SignedObject, TokenStatus]:
        cached = self.tokens.get(token_id)
        if cached is None:
            try:
                cached = await _fetched_token(self.client, token_id)
            except RefusedError as exc:
                if exc.transient:
                    raise _Postponed(str(exc)) from None
                cached = _Rejected(RejectionReason.TOKEN_INVALID, f"approach token: {exc}")
            self.tokens[token_id] = cached
        if isinstance(cached, _Rejected):
            raise cached
        return cached

    async def check(self, delivery: InboxDelivery) -> tuple[dict[str, Any], bytes, bytes]:
        """Verify the acceptance, open and check one delivery; return its output line, header
        hash and body.

        Raises ``DeliveryAcceptanceError`` (answer nothing), ``_Rejected`` with the rejection
        reason, or ``_Postponed``.
        """
        accepted_at = await self.accepted_at(delivery)
        try:
            opened = open_envelope(
                delivery.envelope,
                self.directory,
                recipient=self.partner.id,
                encrypt_keys=self.encrypt_keys,
                accepted_at=accepted_at,
                now=self.now,
            )
        except EnvelopeOpenError as exc:
            reason = _OPEN_REJECTIONS.get(exc.reason, RejectionReason.CANNOT_OPEN)
            raise _Rejected(reason, str(exc)) from None
        except EnvelopeSignatureError as exc:
            raise _Rejected(RejectionReason.CANNOT_OPEN, f"outer signature: {exc}") from None
        except EnvelopeError as exc:
            raise _Rejected(RejectionReason.CANNOT_OPEN, str(exc)) from None
        header = opened.header
        if header.sender != delivery.sender:
            raise _Rejected(RejectionReason.CANNOT_OPEN, "the gateway names another sender")
        if header.schema_version != SCHEMA_VERSION:
            raise _Rejected(
                RejectionReason.UNSUPPORTED_SCHEMA_VERSION,
                f"schema version {header.schema_version}",
            )
        signed, status = await self.token(header.token_id)
        if token_hash(signed) != header.token_hash:
            raise _Rejected(RejectionReason.TOKEN_INVALID, "the header names another token hash")
        # The token and the policy are judged at our own time, as the adapter engine judges
        # them: a token no longer valid now is refused, whatever the gateway says of when.
        try:
            token = verify_token(
                signed,
                self.directory,
                now=self.now,
                status=status,
                subjects=header.subjects,
            )
        except TokenError as exc:
            raise _Rejected(RejectionReason.TOKEN_INVALID, f"{exc.reason}: {exc}") from None
        try:
            check_use(
                token,
                self.policy,
                self.directory,
                now=self.now,
                sender=header.sender,
                recipients=[r.partner for r in header.recipients],
                subjects=header.subjects,
                message_type=header.message_type,
                expires_at=header.expires_at,
            )
        except TokenError as exc:
            reason = (
                RejectionReason.POLICY_CHECK_FAILED
                if exc.reason is Reason.TYPE_NOT_ALLOWED
                else RejectionReason.TOKEN_INVALID
            )
            raise _Rejected(reason, f"{exc.reason}: {exc}") from None
        try:
            decode_body(opened.body, expected_type=header.message_type)
        except ProtocolError as exc:
            raise _Rejected(RejectionReason.SCHEMA_INVALID, str(exc)) from None
        line = {
            "kind": "message",
            "message_id": header.message_id,
            "sender": header.sender,
            "type": header.message_type.value,
            "schema_version": header.schema_version,
            "subjects": list(header.subjects),
            "token_id": header.token_id,
            "accepted_at": accepted_at,
            "expires_at": header.expires_at,
            "trace_id": header.trace_id,
            "attempts": delivery.attempts,
            "body": json.loads(opened.body),
        }
        return line, opened.header_hash, opened.body

    def receipt(self, message_id: str, digest: bytes, body: bytes) -> bytes:
        receipt = DeliveryReceipt(
            message_id=message_id,
            header_hash=digest.hex(),
            recipient=self.partner.id,
            received_at=self.now,
            plaintext_hash=hashlib.sha256(body).hexdigest(),
        )
        return encode_signed(sign_delivery_receipt(receipt, self.sign_key))

    def rejection(self, message_id: str, digest: bytes, rejected: _Rejected) -> bytes:
        rejection = Rejection(
            message_id=message_id,
            header_hash=digest.hex(),
            recipient=self.partner.id,
            rejected_at=self.now,
            reason=rejected.reason,
            detail=rejected.detail[:1000],
        )
        return encode_signed(sign_rejection(rejection, self.sign_key))

    def event_line(self, event: InboxEvent) -> tuple[dict[str, Any], bool]:
        """The output line of a sender event and whether it verified."""
        line: dict[str, Any] = {
            "kind": "event",
            "event_id": event.event_id,
            "event": event.kind,
            "message_id": event.message_id,
        }
        try:
            signed = msgspec.msgpack.decode(event.event, type=SignedObject)
            verified = verify_sender_event(
                signed, self.directory, now=self.now, message_id=event.message_id
            )
        except (msgspec.DecodeError, ProtocolError) as exc:
            return line | {"verified": False, "error": str(exc)}, False
        line |= {"recipient": verified.event.recipient, "at": verified.event.at, "verified": True}
        if verified.receipt is not None:
            line["receipt"] = {
                "received_at": verified.receipt.received_at,
                "header_hash": verified.receipt.header_hash,
                "plaintext_hash": verified.receipt.plaintext_hash,
            }
        if verified.rejection is not None:
            line["rejection"] = {
                "reason": verified.rejection.reason.value,
                "detail": verified.rejection.detail,
                "rejected_at": verified.rejection.rejected_at,
            }
        return line, True


@contextlib.contextmanager
def _witness_store(partner: PartnerFolder) -> Iterator[AdapterStore]:
    """The partner folder's ``adapter.db`` when it has one (its adapter's witness state),
    otherwise a store of this run only: the CLI never creates ``adapter.db``."""
    path = partner.config.path(partner.config.store.path)
    store = AdapterStore(path if path.exists() else Path(":memory:"))
    try:
        yield store
    finally:
        store.close()


async def inbox(args: argparse.Namespace, partner: PartnerFolder, now: int) -> list[dict[str, Any]]:
    encrypt_keys = partner.encrypt_keys()
    sign_keys = partner.sign_keys()
    with _witness_store(partner) as store:
        return await _inbox(args, partner, now, encrypt_keys, sign_keys, Witness(store))


async def _inbox(
    args: argparse.Namespace,
    partner: PartnerFolder,
    now: int,
    encrypt_keys: dict[str, HybridKemKeyPair],
    sign_keys: tuple[Ed25519KeyPair, ...],
    witness: Witness,
) -> list[dict[str, Any]]:
    async with partner.session(args.gateway, now, wait_s=args.wait) as (client, directory):
        work = _Inbox(
            client,
            partner,
            directory,
            policy_from_directory(directory),
            encrypt_keys,
            partner.sign_key(directory, now, sign_keys),
            now,
            witness,
        )
        batch = await client.inbox(wait_s=args.wait, limit=args.limit)
        lines: list[dict[str, Any]] = []
        receipts: list[bytes] = []
        rejections: list[bytes] = []
        acks: list[int] = []
        for delivery in batch.deliveries:
            try:
                line, digest, body = await work.check(delivery)
            except _Postponed as exc:
                lines.append(_skipped(delivery, str(exc)))
                continue
            except DeliveryAcceptanceError as exc:
                lines.append(_untrusted(delivery, exc))
                continue
            except _Rejected as rejected:
                try:
                    digest = decode_envelope(delivery.envelope).header_hash
                except EnvelopeError as exc:
                    lines.append(_skipped(delivery, f"cannot even reject: {exc}"))
                    continue
                lines.append(
                    {
                        "kind": "rejection",
                        "message_id": delivery.message_id,
                        "sender": delivery.sender,
                        "reason": rejected.reason.value,
                        "detail": rejected.detail,
                    }
                )
                rejections.append(work.rejection(delivery.message_id, digest, rejected))
                continue
            lines.append(line)
            receipts.append(work.receipt(delivery.message_id, digest, body))
        lines.extend(
            {"kind": "alarm", "alarm": "witness", "error": detail, "acked": False}
            for detail in dict.fromkeys(work.witness_alarms)
        )
        for event in batch.events:
            line, verified = work.event_line(event)
            lines.append(line)
            if verified:
                acks.append(event.event_id)
        if args.ack and (receipts or rejections or acks):
            await client.send_receipts(receipts=receipts, rejections=rejections, acks=acks)
    for line in lines:
        if line["kind"] in ("message", "rejection"):
            line["acked"] = bool(args.ack)
        elif line["kind"] == "event":
            line["acked"] = bool(args.ack) and bool(line["verified"])
    return lines


def _untrusted(delivery: InboxDelivery, exc: DeliveryAcceptanceError) -> dict[str, Any]:
    """The line of a delivery whose acceptance does not hold (never answered)."""
    return {
        "kind": "alarm",
        "alarm": "delivery",
        "message_id": delivery.message_id,
        "sender": delivery.sender,
        "reason": exc.reason.value,
        "error": f"the gateway's acceptance of it does not hold: {exc}",
        "acked": False,
    }


def _skipped(delivery: InboxDelivery, error: str) -> dict[str, Any]:
    return {
        "kind": "postponed",
        "message_id": delivery.message_id,
        "sender": delivery.sender,
        "error": error,
        "acked": False,
    }


# -- the command line ------------------------------------------------------------------------


def _error(message: object, code: int = EXIT_FAILED) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _refused(exc: RefusedError) -> int:
    reason = exc.reason.value if exc.reason is not None else f"http_{exc.status}"
    return _error(f"refused: {reason}: {exc.detail}", EXIT_REFUSED)


def _run(
    args: argparse.Namespace,
    command: Callable[[argparse.Namespace, PartnerFolder, int], Coroutine[Any, Any, Any]],
    emit: Callable[[Any], None],
) -> int:
    """Run ``command`` at the current time; print its result with ``emit`` or the error."""
    now = int(time.time())
    try:
        partner = PartnerFolder.open(Path(args.partner_dir), os.environ)
        result: Any = asyncio.run(command(args, partner, now))
    except RefusedError as exc:
        return _refused(exc)
    except CliInputError as exc:
        return _error(" ".join(str(exc).split()), EXIT_INPUT)
    except (
        AdapterError,
        KeysError,
        ProtocolError,
        EnvelopeError,
        CheckpointError,
        MerkleError,
        OSError,
    ) as exc:
        return _error(" ".join(str(exc).split()) or type(exc).__name__)
    emit(result)
    return EXIT_OK


def _print_json(result: Any) -> None:
    print(json.dumps(result, ensure_ascii=False))


def _print_line(line: Any) -> None:
    print(json.dumps(line, ensure_ascii=False), flush=True)


def _print_lines(lines: Any) -> None:
    for line in lines:
        print(json.dumps(line, ensure_ascii=False), flush=True)


def run_approach_issue(args: argparse.Namespace) -> int:
    return _run(args, approach_issue, _print_json)


def run_approach_revoke(args: argparse.Namespace) -> int:
    return _run(args, approach_revoke, _print_json)


def run_approach_notice(args: argparse.Namespace) -> int:
    # Each recipient's line is printed once its notice is accepted, so after a refusal the
    # lines already printed say which recipients have theirs.
    async def notice(args: argparse.Namespace, partner: PartnerFolder, now: int) -> None:
        await approach_notice(args, partner, now, _print_line)

    return _run(args, notice, lambda _result: None)


def run_send(args: argparse.Namespace) -> int:
    return _run(args, send, _print_json)


def run_inbox(args: argparse.Namespace) -> int:
    """``inbox``; exit 1 (after the lines) when a delivery's acceptance did not hold or a
    receipt's checkpoint contradicts the log witnessed."""
    alarms: list[str] = []

    def emit(lines: Any) -> None:
        _print_lines(lines)
        alarms.extend(
            f"delivery {line['message_id']} from {line['sender']} not opened: {line['error']}"
            if line["alarm"] == "delivery"
            else f"the gateway's audit log is inconsistent: {line['error']}"
            for line in lines
            if line["kind"] == "alarm"
        )

    code = _run(args, inbox, emit)
    for alarm in alarms:
        _error(alarm)
    return EXIT_FAILED if code == EXIT_OK and alarms else code


def _partner_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partner-dir",
        required=True,
        metavar="DIR",
        help="the partner's folder (with adapter.toml), e.g. dev/partners/halt",
    )
    parser.add_argument(
        "--gateway", metavar="URL", help="the gateway's URL (default: gateway.url in adapter.toml)"
    )


def _add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, epilog: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``approach issue``, ``approach revoke``, ``approach notice``, ``send`` and
    ``inbox``."""
    approach = subparsers.add_parser(
        "approach",
        help="issue, revoke or announce approach tokens (coordinating municipalities)",
        epilog=_EXAMPLES_ISSUE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = approach.add_subparsers(dest="approach_command", required=True, metavar="VERB")

    p = _add_parser(verbs, "issue", "issue and register an approach token", _EXAMPLES_ISSUE)
    _partner_args(p)
    p.add_argument("--kind", required=True, choices=[k.value for k in ApproachKind])
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--subject",
        action="extend",
        nargs="+",
        type=_pseudonym,
        metavar="PSEUDONYM",
        help="the pseudonym of a subject (repeatable)",
    )
    who.add_argument(
        "--new-subjects",
        type=_positive(MAX_NEW_SUBJECTS),
        metavar="N",
        help="draw N fresh random pseudonyms",
    )
    p.add_argument(
        "--participants",
        required=True,
        type=_partner_ids,
        metavar="ID,ID,...",
        help="participating partners (the coordinator is added)",
    )
    informing = p.add_mutually_exclusive_group(required=True)
    informing.add_argument(
        "--informed-at",
        type=_moment,
        metavar="DATE",
        help="when youth and parents were informed (YYYY-MM-DD, UTC)",
    )
    informing.add_argument(
        "--informing-deferred-until",
        type=_moment,
        metavar="DATE",
        help="informing is deferred until DATE; messages are allowed until then",
    )
    p.add_argument(
        "--valid-days",
        type=_positive(3 * 365),
        default=DEFAULT_VALID_DAYS,
        metavar="N",
        help=f"validity in days (default {DEFAULT_VALID_DAYS})",
    )
    p.add_argument(
        "--retention-days",
        type=_positive(10 * 365),
        default=DEFAULT_RETENTION_DAYS,
        metavar="N",
        help=f"keep the audit trail N days after validity ends (default {DEFAULT_RETENTION_DAYS})",
    )
    p.add_argument("--decision-reference", type=_text, metavar="REF", help="default: generated")
    p.add_argument("--informing-note", type=_text, metavar="TEXT", help="how they were informed")
    p.add_argument("--supersedes", type=_token_id, metavar="TOKEN_ID", help="token replaced")
    p.set_defaults(handler=run_approach_issue)

    p = _add_parser(verbs, "revoke", "revoke an approach token", _EXAMPLES_REVOKE)
    _partner_args(p)
    p.add_argument("token_id", type=_token_id, metavar="TOKEN_ID")
    p.add_argument("--reason", required=True, type=_text, metavar="TEXT")
    p.set_defaults(handler=run_approach_revoke)

    p = _add_parser(verbs, "notice", "send an approach token's approach-notice", _EXAMPLES_NOTICE)
    _partner_args(p)
    p.add_argument("token_id", type=_token_id, metavar="TOKEN_ID")
    p.add_argument(
        "--to",
        type=_partner_ids,
        metavar="ID[,ID]",
        help="recipient participants (default: every participant but the sender)",
    )
    p.add_argument(
        "--persons",
        metavar="FILE.json",
        help="identifying details per pseudonym (see below); default: none",
    )
    p.add_argument("--contact", type=_short_text, metavar="TEXT", help="the case director to call")
    p.add_argument(
        "--change",
        choices=[c.value for c in ApproachChange],
        default=ApproachChange.STARTED.value,
        help=f"what the notice announces (default {ApproachChange.STARTED.value})",
    )
    p.set_defaults(handler=run_approach_notice)

    p = _add_parser(subparsers, "send", "seal and submit a case message", _EXAMPLES_SEND)
    _partner_args(p)
    p.add_argument(
        "--to", required=True, type=_partner_ids, metavar="ID[,ID]", help="recipient partners"
    )
    p.add_argument(
        "--approach", required=True, type=_token_id, metavar="TOKEN_ID", help="the legal basis"
    )
    p.add_argument("--type", required=True, choices=[t.value for t in MessageType])
    p.add_argument("--body", required=True, metavar="FILE.json", help="the case-message body")
    p.add_argument(
        "--record-id", type=_text, metavar="ID", help="source record id the message id derives from"
    )
    p.add_argument(
        "--expires-in-days",
        type=_positive(30),
        default=DEFAULT_EXPIRES_DAYS,
        metavar="N",
        help=f"undelivered after N days it expires (default {DEFAULT_EXPIRES_DAYS})",
    )
    p.set_defaults(handler=run_send)

    p = _add_parser(subparsers, "inbox", "fetch, open and check messages", _EXAMPLES_INBOX)
    _partner_args(p)
    p.add_argument(
        "--wait", type=_seconds, default=0.0, metavar="S", help="long-poll up to S seconds"
    )
    p.add_argument(
        "--ack", action="store_true", help="send signed receipts/rejections, ack sender events"
    )
    p.add_argument(
        "--limit", type=_positive(1000), default=100, metavar="N", help="at most N of each"
    )
    p.set_defaults(handler=run_inbox)
