"""The data-subject access report: its wire format, and its offline verification.

``ketenpost audit subject`` (``gateway.subject_access``) writes a report of what the audit log
holds about one youth's pseudonyms; anyone holding the report and the gateway's checkpoint key
(or the signed key directory that lists it) checks it here, without the gateway or its store.
This module needs only protocol code, so adapters and third parties can use it too.

Rules kept here:

* A row is one audit entry. Its **evidence** is the exact stored entry bytes, their salt, the
  Merkle leaf hash, the RFC 9162 inclusion proof of that leaf, and the signed checkpoint
  (C2SP ``tlog-checkpoint``) whose root the proof leads to. ``verify_report`` checks, for every
  row: entry and salt give the leaf hash (``auditentry.entry_leaf``, ``merkle.leaf_hash``); the
  proof leads from the leaf to the checkpoint's root, for the row's leaf index and the
  checkpoint's tree size; the checkpoint carries a valid signature by the gateway key for the
  report's origin; and every field the row **shows** (time, decision, sender, recipients, type,
  approach, subjects, policy hash, header hash, trace id) is what the entry bytes say. A row
  cannot say one thing and prove another.
* Legal bases come from the covenant policy named by the entry's ``policy_hash``. Only the
  policy in the current directory is at hand, so a row states the bases only when the hashes
  match (``policy_current``) and says so when they do not; with ``directory=`` the verifier
  recomputes them from that directory's policy when its hash matches.
* Nothing about another youth: a row shows only the requested pseudonyms. An entry that names
  another subject too (a message about several youths) would reveal that youth's pseudonym
  through its bytes, so by default its entry and salt are **withheld**: the row is listed and
  its leaf's inclusion is proven, but its content cannot be checked offline
  (``Evidence.withheld``); a report made with full evidence (for a supervisor who may see it)
  carries the bytes. ``verify_report`` counts withheld rows rather than failing on them.
* What the report cannot prove: that it is complete. A gateway could leave rows out; partners'
  witnessing of checkpoints (issue 8, item 4) and their own processing logs are the check.
* Verification raises ``SubjectReportError`` with a reason; it never returns a bool.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from gateway.protocol.auditentry import (
    AuditDecision,
    AuditEntry,
    AuditEntryError,
    decode_entry,
    entry_leaf,
)
from gateway.protocol.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifierKey,
    verify_checkpoint,
)
from gateway.protocol.errors import PolicyError
from gateway.protocol.merkle import (
    InclusionProof,
    MerkleError,
    leaf_hash,
    verify_inclusion,
)
from gateway.protocol.policy import LegalBasis, Policy, policy_from_directory
from gateway.protocol.types import MessageType, PartnerId, Pseudonym, Sha256Hex, TokenId, UnixTime
from keys import Directory, KeyUse, Role

REPORT_FORMAT: Final = "ketenpost-subject-report/1"

Hash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class PartyBasis(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One partner in a row, its role from the directory, and its role's legal bases and
    processing activities from the policy (empty when the policy is not the current one)."""

    partner: PartnerId
    role: Role | None
    legal_basis: tuple[LegalBasis, ...] = ()
    processing_activities: tuple[str, ...] = ()


class Evidence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What lets a third party recompute the leaf and check it against a signed checkpoint.

    ``entry`` and ``salt`` are ``None`` when withheld (the entry names another subject).
    """

    leaf_hash: Hash
    proof: InclusionProof
    checkpoint: str
    entry: bytes | None = None
    salt: bytes | None = None

    @property
    def withheld(self) -> bool:
        return self.entry is None


class ReportRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One audit entry about the subject, as shown, with its evidence."""

    leaf_index: int
    time: UnixTime
    decision: AuditDecision
    evidence: Evidence
    reason: str | None = None
    sender: PartnerId | None = None
    recipients: tuple[PartnerId, ...] = ()
    message_type: MessageType | None = None
    token_id: TokenId | None = None
    # Only the requested pseudonyms the entry names; never another youth's.
    subjects: tuple[Pseudonym, ...] = ()
    policy_hash: Sha256Hex | None = None
    # Whether ``policy_hash`` is the policy of the directory the report was made with.
    policy_current: bool = False
    header_hash: Sha256Hex | None = None
    trace_id: str | None = None
    parties: tuple[PartyBasis, ...] = ()


class Approach(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An approach (token) a row names, from the gateway's registry (the checked part only;
    not verifiable from the report: the signed token names every subject of a group)."""

    token_id: TokenId
    kind: str
    coordinator: PartnerId
    valid_from: UnixTime
    valid_until: UnixTime
    retention_until: UnixTime
    policy_hash: Sha256Hex
    registered_at: UnixTime | None = None
    revoked_at: UnixTime | None = None
    superseded_by: TokenId | None = None


class SubjectReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The report. ``rows`` are in leaf order."""

    format: str
    generated_at: UnixTime
    origin: str
    subjects: tuple[Pseudonym, ...]
    policy_hash: Sha256Hex
    policy_name: str
    directory_version: int
    tree_size: int
    approaches: tuple[Approach, ...]
    rows: tuple[ReportRow, ...]


class SubjectReportReason(enum.StrEnum):
    """Why a report failed. Values are stable: they appear in logs and CLI output."""

    MALFORMED = "report_malformed"
    ENTRY_MISMATCH = "report_entry_mismatch"  # entry and salt do not give the leaf hash
    ROW_MISMATCH = "report_row_mismatch"  # a shown field differs from the entry bytes
    PROOF_MISMATCH = "report_proof_mismatch"  # the proof does not lead to the root
    CHECKPOINT_INVALID = "report_checkpoint_invalid"  # signature, key, origin or form
    BASIS_MISMATCH = "report_basis_mismatch"  # legal bases differ from the directory's policy


class SubjectReportError(Exception):
    """A subject-access report does not verify; the message names the row."""

    def __init__(self, message: str, reason: SubjectReportReason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReportCheck:
    """What ``verify_report`` checked."""

    rows: int
    entries_verified: int
    withheld: int
    checkpoints: int
    origin: str


_ENCODER: Final = msgspec.json.Encoder(order="deterministic")
_DECODER: Final = msgspec.json.Decoder(SubjectReport)


def encode_report(report: SubjectReport) -> bytes:
    """The report as JSON (bytes fields in standard base64)."""
    return _ENCODER.encode(report)


def decode_report(data: bytes) -> SubjectReport:
    """Decode a report; raises ``SubjectReportError`` (``MALFORMED``)."""
    try:
        report = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise SubjectReportError(
            f"not a subject report: {exc}", SubjectReportReason.MALFORMED
        ) from None
    if report.format != REPORT_FORMAT:
        raise SubjectReportError(
            f"unknown report format {report.format!r}", SubjectReportReason.MALFORMED
        )
    return report


# -- legal bases ---------------------------------------------------------------------------


def parties_for(
    sender: str | None, recipients: Iterable[str], directory: Directory, policy: Policy | None
) -> tuple[PartyBasis, ...]:
    """Sender and recipients with their directory role and, when ``policy`` is given (it is
    the policy the entry names), that role's legal bases and processing activities."""
    out: list[PartyBasis] = []
    known = {p.id: p for p in directory.partners()}
    for partner in ([sender] if sender else []) + list(recipients):
        entry = known.get(partner)
        role = entry.role if entry is not None else None
        basis = policy.roles.get(role) if policy is not None and role is not None else None
        out.append(
            PartyBasis(
                partner=partner,
                role=role,
                legal_basis=basis.legal_basis if basis is not None else (),
                processing_activities=basis.processing_activities if basis is not None else (),
            )
        )
    return tuple(out)


# -- verification --------------------------------------------------------------------------


def _fail(message: str, reason: SubjectReportReason) -> SubjectReportError:
    return SubjectReportError(message, reason)


def _shown_matches(row: ReportRow, entry: AuditEntry, requested: frozenset[str]) -> None:
    where = f"row {row.leaf_index}"
    shown = {
        "time": (row.time, entry.time),
        "decision": (row.decision, entry.decision),
        "reason": (row.reason, entry.reason),
        "sender": (row.sender, entry.sender),
        "recipients": (tuple(row.recipients), tuple(entry.recipients)),
        "message_type": (row.message_type, entry.message_type),
        "token_id": (row.token_id, entry.token_id),
        "policy_hash": (row.policy_hash, entry.policy_hash),
        "header_hash": (row.header_hash, entry.header_hash),
        "trace_id": (row.trace_id, entry.trace_id),
    }
    for name, (a, b) in shown.items():
        if a != b:
            raise _fail(f"{where}: {name} differs from the entry", SubjectReportReason.ROW_MISMATCH)
    expected = tuple(s for s in entry.subjects if s in requested)
    if tuple(row.subjects) != expected:
        raise _fail(f"{where}: subjects differ from the entry", SubjectReportReason.ROW_MISMATCH)


def _checkpoint_keys(
    gateway_key: NoteVerifierKey | None, directory: Directory | None, origin: str
) -> list[NoteVerifierKey]:
    keys: list[NoteVerifierKey] = []
    if gateway_key is not None:
        keys.append(gateway_key)
    if directory is not None:
        # The checkpoint key name is the log's origin (C2SP recommends it; the gateway and
        # the adapters' witness use it so).
        signing = [k for k in directory.gateway.keys if k.use is KeyUse.SIGN]
        keys.extend(NoteVerifierKey(origin, k.public) for k in signing)
    if not keys:
        raise ValueError("verify_report needs a gateway key or a directory")
    return keys


def _verify_checkpoint(
    note: str, origin: str, keys: Sequence[NoteVerifierKey], where: str
) -> Checkpoint:
    """The checkpoint if one of ``keys`` verifies it; ``CHECKPOINT_INVALID`` otherwise."""
    last: CheckpointError | None = None
    for key in keys:
        try:
            return verify_checkpoint(note, origin, key.name, key.public_key)
        except CheckpointError as exc:
            last = exc
    detail = f"{last.reason.value}: {last}" if last is not None else "no key"
    raise _fail(
        f"{where}: checkpoint does not verify ({detail})", SubjectReportReason.CHECKPOINT_INVALID
    )


def _verify_row(
    row: ReportRow, checkpoint: Checkpoint, requested: frozenset[str]
) -> AuditEntry | None:
    """Check one row's proof and, unless withheld, its entry; the decoded entry or None."""
    where = f"row {row.leaf_index}"
    ev = row.evidence
    if ev.proof.leaf_index != row.leaf_index:
        raise _fail(f"{where}: proof is for another leaf", SubjectReportReason.PROOF_MISMATCH)
    if ev.proof.tree_size != checkpoint.size:
        raise _fail(
            f"{where}: proof is for a tree of {ev.proof.tree_size}, "
            f"its checkpoint of {checkpoint.size}",
            SubjectReportReason.PROOF_MISMATCH,
        )
    try:
        verify_inclusion(ev.leaf_hash, ev.proof, checkpoint.root_hash)
    except MerkleError as exc:
        raise _fail(f"{where}: {exc}", SubjectReportReason.PROOF_MISMATCH) from None
    if ev.entry is None or ev.salt is None:
        if (ev.entry is None) != (ev.salt is None):
            raise _fail(f"{where}: entry without salt", SubjectReportReason.MALFORMED)
        return None
    try:
        computed = leaf_hash(entry_leaf(ev.entry, ev.salt))
        entry = decode_entry(ev.entry)
    except AuditEntryError as exc:
        raise _fail(f"{where}: {exc}", SubjectReportReason.ENTRY_MISMATCH) from None
    if computed != ev.leaf_hash:
        raise _fail(
            f"{where}: entry and salt do not give the leaf hash",
            SubjectReportReason.ENTRY_MISMATCH,
        )
    _shown_matches(row, entry, requested)
    return entry


def verify_report(
    report: SubjectReport | bytes,
    *,
    gateway_key: NoteVerifierKey | None = None,
    directory: Directory | None = None,
    origin: str | None = None,
) -> ReportCheck:
    """Verify every row of ``report`` offline (see the module rules).

    The checkpoint key is ``gateway_key`` and/or every ``sign`` key of ``directory``'s gateway
    entry (under the origin as key name). ``origin`` pins the log; by default the report's
    own. Rows that name no subject must belong to a row that does (a receipt or rejection of
    the same header hash, a revocation of the same approach). With ``directory``, rows whose
    policy hash is that directory's policy must show its legal bases. Raises
    ``SubjectReportError``; ``ValueError`` when given no key at all.
    """
    parsed = decode_report(report) if isinstance(report, bytes) else report
    log = origin if origin is not None else parsed.origin
    if parsed.origin != log:
        raise _fail("the report is for another log", SubjectReportReason.CHECKPOINT_INVALID)
    keys = _checkpoint_keys(gateway_key, directory, log)
    requested = frozenset(parsed.subjects)
    policy: Policy | None = None
    if directory is not None:
        try:
            policy = policy_from_directory(directory)
        except PolicyError:  # a directory without a readable policy: bases not rechecked
            policy = None
    checkpoints: dict[str, Checkpoint] = {}
    verified = withheld = 0
    about_headers = {r.header_hash for r in parsed.rows if r.subjects and r.header_hash}
    about_tokens = {r.token_id for r in parsed.rows if r.subjects and r.token_id}
    for row in parsed.rows:
        where = f"row {row.leaf_index}"
        note = row.evidence.checkpoint
        if note not in checkpoints:
            checkpoints[note] = _verify_checkpoint(note, log, keys, where)
        entry = _verify_row(row, checkpoints[note], requested)
        if entry is None:
            withheld += 1
            continue
        if not row.subjects and not (
            (row.decision in _LINKED_BY_HEADER and row.header_hash in about_headers)
            or (row.decision is AuditDecision.REVOKED and row.token_id in about_tokens)
        ):
            raise _fail(
                f"{where}: the entry is not about the subject", SubjectReportReason.ROW_MISMATCH
            )
        if (
            policy is not None
            and directory is not None
            and row.policy_hash == directory.policy_hash
        ):
            expected = parties_for(row.sender, row.recipients, directory, policy)
            if tuple(row.parties) != expected:
                raise _fail(
                    f"{where}: legal bases differ from the directory's policy",
                    SubjectReportReason.BASIS_MISMATCH,
                )
        verified += 1
    return ReportCheck(len(parsed.rows), verified, withheld, len(checkpoints), log)


# Entries that name no subject but belong to a message about the subject: the recipient's
# delivery receipt or rejection (same header hash).
_LINKED_BY_HEADER: Final = frozenset({AuditDecision.DELIVERED, AuditDecision.REJECTED})
