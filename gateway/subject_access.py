"""``ketenpost audit subject``: answer a data-subject access request from the audit log.

The coordinator, who knows which pseudonyms belong to the youth (one per approach), runs this
where the gateway's store is reachable. The report (``gateway.protocol.subject_report``) lists
which partners exchanged which message types about those pseudonyms, when, under which
approach and legal basis, each row with the evidence to verify it offline.

Rules kept here:

* Rows: every entry naming a requested pseudonym (acceptances, refusals after the sender's
  signature verified, approach registrations), and the entries that belong to those without
  naming a subject: a recipient's delivery receipt or rejection of such a message (same header
  hash) and the revocation of such an approach. Nothing else: an entry about another youth only
  never appears, and a row shows only the requested pseudonyms.
* An entry that also names another subject has its entry bytes and salt withheld unless
  ``full_evidence`` (see ``subject_report``); its inclusion is still proven.
* Every proof is against the latest signed checkpoint; leaves after it are left for the next
  report (none, normally: every committed batch signs a checkpoint).
* Entries deleted at their token's retention deadline are gone: the report cannot show them,
  and that is the point of the deadline.
* The HTML document is Dutch, self-contained (no external resource, no script), and escapes
  every value it shows.
* Only reads the store; ``now`` is an argument.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Sequence
from typing import Final
from zoneinfo import ZoneInfo

import msgspec

from gateway.protocol.auditentry import AuditDecision, AuditEntry, AuditEntryError, decode_entry
from gateway.protocol.checkpoint import parse_checkpoint
from gateway.protocol.errors import PolicyError
from gateway.protocol.merkle import InclusionProof
from gateway.protocol.policy import Policy, policy_from_directory
from gateway.protocol.signed import SignedObject
from gateway.protocol.subject_report import (
    REPORT_FORMAT,
    Approach,
    Evidence,
    ReportRow,
    SubjectReport,
    parties_for,
)
from gateway.protocol.token import ApproachToken
from gateway.store.base import Store
from keys import Directory

_LINKED_BY_HEADER: Final = frozenset({AuditDecision.DELIVERED, AuditDecision.REJECTED})
_SIGNED: Final = msgspec.msgpack.Decoder(SignedObject)
_TOKEN: Final = msgspec.msgpack.Decoder(ApproachToken)


class SubjectAccessError(Exception):
    """The report cannot be made (no checkpoint yet, an entry that does not decode)."""


async def build_report(
    store: Store,
    directory: Directory,
    pseudonyms: Sequence[str],
    *,
    origin: str,
    now: int,
    full_evidence: bool = False,
) -> SubjectReport:
    """The report for ``pseudonyms`` from ``store``. Raises ``SubjectAccessError``."""
    requested = frozenset(pseudonyms)
    head = await store.audit_head()
    if head.size == 0 or not head.checkpoint:
        raise SubjectAccessError("the audit log has no signed checkpoint yet")
    try:
        policy: Policy | None = policy_from_directory(directory)
    except PolicyError:  # a directory whose policy does not decode: no bases shown
        policy = None
    leaves = [leaf for leaf in await store.audit_leaves() if leaf[0] < head.size]
    decoded: list[tuple[int, bytes, bytes, bytes, AuditEntry]] = []
    for index, stored_hash, entry_bytes, salt in leaves:
        if entry_bytes is None or salt is None:
            continue  # deleted at its retention deadline
        try:
            decoded.append((index, stored_hash, entry_bytes, salt, decode_entry(entry_bytes)))
        except AuditEntryError as exc:
            raise SubjectAccessError(f"audit entry {index}: {exc}") from None
    about = [d for d in decoded if requested.intersection(d[4].subjects)]
    headers = {d[4].header_hash for d in about if d[4].header_hash}
    tokens = {d[4].token_id for d in about if d[4].decision is AuditDecision.REGISTERED}
    selected = {d[0] for d in about}
    for d in decoded:
        entry = d[4]
        if (entry.decision in _LINKED_BY_HEADER and entry.header_hash in headers) or (
            entry.decision is AuditDecision.REVOKED and entry.token_id in tokens
        ):
            selected.add(d[0])
    rows: list[ReportRow] = []
    for index, stored_hash, entry_bytes, salt, entry in decoded:
        if index not in selected:
            continue
        hashes = await store.inclusion_proof(index, head.size)
        others = set(entry.subjects) - requested
        withhold = bool(others) and not full_evidence
        current = policy is not None and entry.policy_hash == directory.policy_hash
        rows.append(
            ReportRow(
                leaf_index=index,
                time=entry.time,
                decision=entry.decision,
                reason=entry.reason,
                sender=entry.sender,
                recipients=entry.recipients,
                message_type=entry.message_type,
                token_id=entry.token_id,
                subjects=tuple(s for s in entry.subjects if s in requested),
                policy_hash=entry.policy_hash,
                policy_current=current,
                header_hash=entry.header_hash,
                trace_id=entry.trace_id,
                parties=parties_for(
                    entry.sender, entry.recipients, directory, policy if current else None
                ),
                evidence=Evidence(
                    leaf_hash=stored_hash,
                    proof=InclusionProof(
                        leaf_index=index, tree_size=head.size, hashes=tuple(hashes)
                    ),
                    checkpoint=head.checkpoint,
                    entry=None if withhold else entry_bytes,
                    salt=None if withhold else salt,
                ),
            )
        )
    approaches = []
    for token_id in sorted({r.token_id for r in rows if r.token_id}):
        found = await _approach(store, token_id)
        if found is not None:
            approaches.append(found)
    return SubjectReport(
        format=REPORT_FORMAT,
        generated_at=now,
        origin=origin,
        subjects=tuple(pseudonyms),
        policy_hash=directory.policy_hash,
        policy_name=policy.name if policy is not None else "",
        directory_version=directory.version,
        tree_size=head.size,
        approaches=tuple(approaches),
        rows=tuple(rows),
    )


async def _approach(store: Store, token_id: str) -> Approach | None:
    row = await store.get_token(token_id)
    if row is None:
        return None  # deleted at its retention deadline, or never registered (a refusal)
    try:
        token = _TOKEN.decode(_SIGNED.decode(row.signed).payload)
    except msgspec.DecodeError:
        return None
    return Approach(
        token_id=token.token_id,
        kind=token.kind.value,
        coordinator=token.coordinator,
        valid_from=token.valid_from,
        valid_until=token.valid_until,
        retention_until=token.retention_until,
        policy_hash=token.policy_hash,
        registered_at=row.registered_at,
        revoked_at=row.revoked_at,
        superseded_by=row.superseded_by,
    )


# -- the Dutch HTML document ---------------------------------------------------------------

_DECISIONS: Final = {
    AuditDecision.ACCEPTED: "verstuurd (door de gateway aangenomen)",
    AuditDecision.REFUSED: "geweigerd door de gateway (niet doorgegeven)",
    AuditDecision.DELIVERED: "ontvangen en bevestigd door de ontvanger",
    AuditDecision.REJECTED: "door de ontvanger geweigerd",
    AuditDecision.EXPIRED: "verlopen (niet afgeleverd)",
    AuditDecision.PURGED: "verwijderd na intrekking (niet afgeleverd)",
    AuditDecision.REGISTERED: "aanpak geregistreerd",
    AuditDecision.REVOKED: "aanpak ingetrokken",
    AuditDecision.RETENTION: "gegevens verwijderd na de bewaartermijn",
    AuditDecision.RESTORE: "herstel uit back-up",
}
_TYPES: Final = {
    "approach-notice": "bericht over de start of wijziging van de aanpak",
    "signal": "signaal",
    "referral": "verwijzing",
    "case-conference": "casusoverleg",
    "action-plan": "plan van aanpak",
    "progress": "voortgangsbericht",
    "closure": "afsluiting van de aanpak",
}
_ROLES: Final = {
    "municipality": "gemeente",
    "police": "politie",
    "prosecution": "Openbaar Ministerie",
    "halt": "Halt",
    "youth-care": "jeugdhulp",
    "welfare": "welzijn",
}
_KINDS: Final = {"group": "groepsaanpak", "person": "persoonsgerichte aanpak"}
_ZONE: Final = "Europe/Amsterdam"

_CSS: Final = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #111; line-height: 1.4; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { border: 1px solid #999; padding: 0.3rem 0.5rem; vertical-align: top; text-align: left; }
th { background: #eee; }
code { font-size: 0.85em; word-break: break-all; }
.note { background: #f6f6f6; border-left: 4px solid #666; padding: 0.5rem 1rem; }
small { color: #444; }
@media print {
  body { margin: 0; font-size: 10pt; }
  h2 { page-break-after: avoid; }
  tr { page-break-inside: avoid; }
  .note { border-left: 2px solid #000; }
}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(unix: int) -> str:
    try:
        zone: datetime.tzinfo = ZoneInfo(_ZONE)
    except Exception:  # no time zone data on this host: UTC, and say so
        zone = datetime.UTC
    moment = datetime.datetime.fromtimestamp(unix, tz=zone)
    return moment.strftime("%d-%m-%Y %H:%M:%S %Z")


def _party(partner: str, role: str | None) -> str:
    name = _ROLES.get(role or "", "onbekende rol")
    return f"{_e(partner)} <small>({_e(name)})</small>"


def _basis_cell(row: ReportRow) -> str:
    if not row.policy_current:
        return (
            "<em>Dit bericht viel onder een andere versie van het convenantbeleid (kenmerk "
            f"<code>{_e(row.policy_hash or 'onbekend')}</code>) dan de huidige; de rechtsgrond "
            "staat in die versie en wordt hier niet getoond.</em>"
        )
    parts = []
    for party in row.parties:
        bases = "; ".join(f"{_e(b.text)} ({_e(b.reference)})" for b in party.legal_basis)
        parts.append(f"<strong>{_e(party.partner)}</strong>: {bases or '—'}")
    return "<br>".join(parts) or "—"


def render_html(report: SubjectReport) -> str:
    """The report as a self-contained Dutch HTML document (every value escaped)."""
    roles = {p.partner: p.role for r in report.rows for p in r.parties}
    rows_html = []
    for row in report.rows:
        mtype = _TYPES.get(row.message_type or "", row.message_type or "—")
        reason = f"<br><small>reden: {_e(row.reason)}</small>" if row.reason else ""
        to = ", ".join(_party(r, roles.get(r)) for r in row.recipients) or "—"
        sender = _party(row.sender, roles.get(row.sender)) if row.sender else "—"
        proof = "bewijs volledig" if not row.evidence.withheld else "inhoud afgeschermd"
        rows_html.append(
            "<tr>"
            f"<td>{_e(_when(row.time))}</td>"
            f"<td>{_e(_DECISIONS.get(row.decision, row.decision))}{reason}</td>"
            f"<td>{sender}</td><td>{to}</td><td>{_e(mtype)}</td>"
            f"<td><code>{_e(row.token_id or '—')}</code></td>"
            f"<td>{_basis_cell(row)}</td>"
            f"<td>{_e(row.leaf_index)}<br><small>{_e(proof)}</small></td>"
            "</tr>"
        )
    approaches_html = "".join(
        "<tr>"
        f"<td><code>{_e(a.token_id)}</code></td><td>{_e(_KINDS.get(a.kind, a.kind))}</td>"
        f"<td>{_e(a.coordinator)}</td>"
        f"<td>{_e(_when(a.valid_from))} tot {_e(_when(a.valid_until))}</td>"
        f"<td>{_e(_when(a.retention_until))}</td>"
        f"<td>{_e(_when(a.revoked_at)) if a.revoked_at else '—'}</td>"
        "</tr>"
        for a in report.approaches
    )
    subjects = ", ".join(f"<code>{_e(s)}</code>" for s in report.subjects)
    withheld = sum(1 for r in report.rows if r.evidence.withheld)
    withheld_note = (
        f"<p>Van {withheld} regel(s) is de inhoud afgeschermd omdat het bericht ook over een "
        "ander persoon ging; dat deze regels in het logboek staan is wel bewezen.</p>"
        if withheld
        else ""
    )
    try:
        checkpoint = parse_checkpoint(report.rows[0].evidence.checkpoint) if report.rows else None
    except Exception:
        checkpoint = None
    head = (
        f"<p>Alle regels zijn bewezen tegen het ondertekende controlepunt van het logboek "
        f"<code>{_e(report.origin)}</code> met {_e(checkpoint.size)} regels.</p>"
        if checkpoint is not None
        else ""
    )
    empty = (
        "<p>Het logboek bevat geen berichten over deze pseudoniemen (meer).</p>"
        if not report.rows
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="nl">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Overzicht van gedeelde gegevens</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Overzicht van gedeelde gegevens (inzageverzoek, artikel 15 AVG)</h1>
<p>Dit overzicht laat zien welke partners van het {_e(report.policy_name or "convenant")}
via Ketenpost berichten hebben uitgewisseld over de persoon met de pseudoniemen {subjects},
wanneer, binnen welke aanpak en op grond waarvan. Het is gemaakt op
{_e(_when(report.generated_at))}.</p>
<div class="note"><p>Ketenpost ziet de inhoud van berichten niet: die is versleuteld en alleen
leesbaar voor de ontvangers. Dit overzicht komt uit het controleerbare logboek van Ketenpost
en bevat daarom alleen wie, wat voor bericht, wanneer en waarom. Wat er in de berichten stond,
kunt u opvragen bij de partners zelf.</p></div>
{empty}
<h2>Aanpakken</h2>
<table>
<thead><tr><th>Aanpak</th><th>Soort</th><th>Regie</th><th>Geldig</th>
<th>Bewaard tot</th><th>Ingetrokken</th></tr></thead>
<tbody>{approaches_html}</tbody>
</table>
<h2>Berichten en gebeurtenissen</h2>
<table>
<thead><tr><th>Tijdstip</th><th>Gebeurtenis</th><th>Van</th><th>Aan</th><th>Soort bericht</th>
<th>Aanpak</th><th>Rechtsgrond</th><th>Logregel</th></tr></thead>
<tbody>{"".join(rows_html)}</tbody>
</table>
<h2>Controle</h2>
{head}
{withheld_note}
<p>Bij dit overzicht hoort een JSON-bestand met per regel de vastgelegde gegevens, het
bewijs dat die regel in het logboek staat en het ondertekende controlepunt. Iedereen kan dat
zonder Ketenpost controleren met <code>ketenpost audit verify-report</code> en de openbare
sleutel van de gateway uit de sleuteldirectory van het convenant.</p>
<p><small>Tijden in {_e(_ZONE)}. Gegevens worden verwijderd op de bewaartermijn van de
aanpak; wat daarna is verwijderd, staat niet meer in dit overzicht.</small></p>
</body>
</html>
"""
