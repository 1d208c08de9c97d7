"""The covenant policy: which role may send which case-message type to which role, per approach
kind, and under which legal basis.

Rules kept here:

* The policy is data, signed as part of the key directory (``DirectoryContents.policy`` holds
  its canonical bytes) and named everywhere by ``policy_hash`` = SHA-256 hex of those bytes —
  the same value as ``keys.directory.DirectoryContents.policy_hash``.
* Canonical bytes are compact JSON with object keys sorted (msgspec ``order="sorted"``) and
  every list of message types sorted and free of duplicates. ``encode_policy`` produces them;
  ``policy_from_directory`` refuses directory bytes that are not canonical, so the hash a token
  names and the policy the gateway enforces can never disagree.
* Rules are an allow-list: a (kind, sender role, recipient role, type) not listed is refused.
  Every role that sends or receives anything has a legal basis and at least one processing
  activity (for the Logboek Dataverwerkingen) — a rule without a basis is a validation error.
* Decoding is strict (unknown fields, roles and types refused) and raises ``PolicyError`` with
  the reason ``policy_invalid`` and a message naming the offending path.
* Roles come from the directory; the policy only speaks of roles, never of partner ids.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

import msgspec

from gateway.protocol.errors import PolicyError
from gateway.protocol.reasons import Reason
from gateway.protocol.types import ApproachKind, MessageType
from keys import Directory, Role

NonEmptyText = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# Processing-activity ids as registered in the partner's register of processing activities
# (AVG art. 30); the Logboek Dataverwerkingen links each logged processing to one of them.
ProcessingActivityId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9./:-]{2,99}$")]
TypeList = Annotated[tuple[MessageType, ...], msgspec.Meta(min_length=1)]

RoleRules = dict[Role, dict[Role, TypeList]]


class LegalBasis(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One legal ground: ``text`` for a person, ``reference`` to the article it rests on."""

    text: NonEmptyText
    reference: ShortText


class RoleBasis(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Why a role may take part: its legal grounds and its processing activities."""

    legal_basis: Annotated[tuple[LegalBasis, ...], msgspec.Meta(min_length=1)]
    processing_activities: Annotated[tuple[ProcessingActivityId, ...], msgspec.Meta(min_length=1)]


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The covenant policy. ``rules[kind][sender role][recipient role]`` = allowed types."""

    name: ShortText
    version: Annotated[int, msgspec.Meta(ge=1)]
    rules: dict[ApproachKind, RoleRules]
    roles: dict[Role, RoleBasis]


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECODER: Final = msgspec.json.Decoder(Policy)


def _normalised(policy: Policy) -> Policy:
    """``policy`` with every type list sorted; raises on duplicates (they hint at a typo)."""
    rules: dict[ApproachKind, RoleRules] = {}
    for kind, senders in policy.rules.items():
        rules[kind] = {}
        for sender, recipients in senders.items():
            rules[kind][sender] = {}
            for recipient, types in recipients.items():
                if len(set(types)) != len(types):
                    raise PolicyError(
                        f"policy: {kind}/{sender}/{recipient} lists a message type twice",
                        Reason.POLICY_INVALID,
                    )
                rules[kind][sender][recipient] = tuple(sorted(types))
    return msgspec.structs.replace(policy, rules=rules)


def validate_policy(policy: Policy) -> None:
    """Raise ``PolicyError`` unless ``policy`` is consistent.

    Consistent: at least one rule; no empty sender or recipient map; every role that appears
    in a rule has a legal basis in ``roles``; no duplicate types in a list.
    """
    _normalised(policy)
    if not any(policy.rules.values()):
        raise PolicyError("policy: has no rules at all", Reason.POLICY_INVALID)
    for kind, senders in policy.rules.items():
        for sender, recipients in senders.items():
            if not recipients:
                raise PolicyError(
                    f"policy: {kind}/{sender} lists no recipient roles", Reason.POLICY_INVALID
                )
            for role in (sender, *recipients):
                if role not in policy.roles:
                    raise PolicyError(
                        f"policy: role {role!r} appears in {kind} rules but has no legal basis",
                        Reason.POLICY_INVALID,
                    )


def encode_policy(policy: Policy) -> bytes:
    """The canonical bytes of ``policy`` (validated first). These go into the directory."""
    validate_policy(policy)
    return _ENCODER.encode(_normalised(policy))


def decode_policy(data: bytes, *, require_canonical: bool = False) -> Policy:
    """Decode and validate policy JSON; raise ``PolicyError`` naming what is wrong.

    With ``require_canonical``, also refuse bytes that are not exactly ``encode_policy`` of
    the result (so that their SHA-256 is the policy's hash).
    """
    try:
        policy = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        # msgspec's message names the path, e.g. "Invalid enum value 'x' - at `$.roles`".
        raise PolicyError(f"policy: {exc}", Reason.POLICY_INVALID) from None
    validate_policy(policy)
    if require_canonical and encode_policy(policy) != data:
        raise PolicyError("policy: bytes are not in canonical form", Reason.POLICY_INVALID)
    return policy


def policy_hash(policy: Policy) -> str:
    """SHA-256 hex of the canonical bytes; equals ``DirectoryContents.policy_hash``."""
    return hashlib.sha256(encode_policy(policy)).hexdigest()


def policy_from_directory(directory: Directory) -> Policy:
    """The policy a verified directory carries. Raises ``PolicyError`` if it is not canonical."""
    return decode_policy(directory.policy, require_canonical=True)


def allowed_types(
    policy: Policy, kind: ApproachKind, sender_role: Role, recipient_role: Role
) -> frozenset[MessageType]:
    """The message types ``sender_role`` may send to ``recipient_role`` in a ``kind`` approach."""
    return frozenset(policy.rules.get(kind, {}).get(sender_role, {}).get(recipient_role, ()))


def allowed(
    policy: Policy,
    kind: ApproachKind,
    sender_role: Role,
    recipient_role: Role,
    message_type: MessageType,
) -> bool:
    """Whether the policy allows this type between these roles in this kind of approach.

    A query, not a verification: the relay decision combines it with the token and raises
    ``TokenError(type_not_allowed)`` (see ``gateway.protocol.token.check_use``).
    """
    return message_type in allowed_types(policy, kind, sender_role, recipient_role)


def sendable_types(policy: Policy, kind: ApproachKind, sender_role: Role) -> frozenset[MessageType]:
    """Every type ``sender_role`` may send to some role: a token may list only these."""
    out: set[MessageType] = set()
    for types in policy.rules.get(kind, {}).get(sender_role, {}).values():
        out.update(types)
    return frozenset(out)


# -- The IJmond covenant's default policy (development and demo) ------------------------------

_COVENANT: Final = "Convenant Jeugd en Veiligheid IJmond"


def _basis(text: str, reference: str) -> LegalBasis:
    return LegalBasis(text=text, reference=reference)


def _default_roles() -> dict[Role, RoleBasis]:
    # The references name the statutes such covenants rest on; the covenant's own article is
    # listed first so a reader of the audit log finds the agreement before the law.
    return {
        Role.MUNICIPALITY: RoleBasis(
            legal_basis=(
                _basis(
                    "Regie op de integrale groeps- en persoonsgerichte aanpak jeugd.",
                    f"{_COVENANT}, art. 4",
                ),
                _basis(
                    "Taak van algemeen belang: openbare orde en jeugdhulp.",
                    "AVG art. 6 lid 1 sub e; Gemeentewet art. 172; Jeugdwet art. 2.1",
                ),
            ),
            processing_activities=("ijmond-jeugd/gemeente/regie-aanpak",),
        ),
        Role.POLICE: RoleBasis(
            legal_basis=(
                _basis(
                    "Verstrekking van politiegegevens aan het samenwerkingsverband.",
                    f"{_COVENANT}, art. 6; Wet politiegegevens art. 20",
                ),
            ),
            processing_activities=("ijmond-jeugd/politie/verstrekking-samenwerkingsverband",),
        ),
        Role.PROSECUTION: RoleBasis(
            legal_basis=(
                _basis(
                    "Verstrekking van strafvorderlijke gegevens ter voorkoming van strafbare "
                    "feiten.",
                    f"{_COVENANT}, art. 6; Wet justitiële en strafvorderlijke gegevens art. 39f",
                ),
            ),
            processing_activities=("ijmond-jeugd/om/verstrekking-39f",),
        ),
        Role.HALT: RoleBasis(
            legal_basis=(
                _basis(
                    "Uitvoering van de Halt-afdoening en terugkoppeling aan ketenpartners.",
                    f"{_COVENANT}, art. 6; Wetboek van Strafrecht art. 77e; Besluit Halt-afdoening",
                ),
            ),
            processing_activities=("ijmond-jeugd/halt/afdoening",),
        ),
        Role.YOUTH_CARE: RoleBasis(
            legal_basis=(
                _basis(
                    "Verstrekking door de jeugdhulpverlener bij zwaarwegend belang van de "
                    "jeugdige.",
                    f"{_COVENANT}, art. 7; Jeugdwet art. 7.3.11",
                ),
            ),
            processing_activities=("ijmond-jeugd/cjg/jeugdhulp-afstemming",),
        ),
        Role.WELFARE: RoleBasis(
            legal_basis=(
                _basis(
                    "Maatschappelijke ondersteuning en jongerenwerk binnen de aanpak.",
                    f"{_COVENANT}, art. 7; AVG art. 6 lid 1 sub e; Wmo 2015 art. 5.2.1",
                ),
            ),
            processing_activities=("ijmond-jeugd/welzijn/jongerenwerk",),
        ),
    }


def _default_rules(kind: ApproachKind) -> RoleRules:
    T = MessageType
    coordination = (T.APPROACH_NOTICE, T.CASE_CONFERENCE, T.ACTION_PLAN, T.PROGRESS, T.CLOSURE)
    everyone = tuple(Role)
    rules: RoleRules = {
        # The coordinating municipality runs the approach: it tells every participant the
        # approach started or changed, convenes case conferences, sets the action plan and
        # closes the approach. (That only the *coordinating* municipality sends the
        # approach-notice is a token rule: see ``token.allowed_types``.)
        Role.MUNICIPALITY: {role: coordination for role in everyone},
        # Police signal incidents to the coordinator and refer offences to Halt and the OM;
        # to care and welfare partners they only report progress on agreed actions.
        Role.POLICE: {
            Role.MUNICIPALITY: (T.SIGNAL, T.PROGRESS),
            Role.HALT: (T.REFERRAL, T.SIGNAL),
            Role.PROSECUTION: (T.REFERRAL, T.SIGNAL, T.PROGRESS),
            Role.YOUTH_CARE: (T.PROGRESS,),
            Role.WELFARE: (T.PROGRESS,),
        },
        # The OM refers Halt-able cases to Halt and reports outcomes back.
        Role.PROSECUTION: {
            Role.HALT: (T.REFERRAL, T.PROGRESS),
            Role.MUNICIPALITY: (T.SIGNAL, T.PROGRESS),
            Role.POLICE: (T.PROGRESS,),
        },
        # Halt reports how the Halt-afdoening went to whoever referred and to the coordinator.
        Role.HALT: {
            Role.PROSECUTION: (T.PROGRESS,),
            Role.MUNICIPALITY: (T.PROGRESS,),
            Role.POLICE: (T.PROGRESS,),
        },
        # Care and welfare partners talk to the coordinator only: they never send signals to
        # police or OM (the demo's "type the covenant does not allow": welfare → police).
        Role.YOUTH_CARE: {Role.MUNICIPALITY: (T.SIGNAL, T.PROGRESS, T.CASE_CONFERENCE)},
        Role.WELFARE: {Role.MUNICIPALITY: (T.SIGNAL, T.PROGRESS, T.CASE_CONFERENCE)},
    }
    if kind is ApproachKind.PERSON:
        # In a person-oriented approach care and welfare coordinate the youth's support
        # directly with each other.
        rules[Role.YOUTH_CARE][Role.WELFARE] = (T.PROGRESS,)
        rules[Role.WELFARE][Role.YOUTH_CARE] = (T.PROGRESS,)
    return rules


def default_policy() -> Policy:
    """The IJmond covenant's development policy (``ketenpost init`` puts it in the directory).

    The legal references are those such covenants cite; the covenant's own text is the
    authority for a production deployment.
    """
    policy = Policy(
        name=_COVENANT,
        version=1,
        rules={kind: _default_rules(kind) for kind in ApproachKind},
        roles=_default_roles(),
    )
    return _normalised(policy)
