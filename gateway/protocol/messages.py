"""Case-message schemas: the plaintext bodies partners exchange, as one tagged union.

Rules kept here:

* Every body is a JSON object with a ``type`` tag (a ``types.MessageType`` value) and a
  non-empty ``subjects`` list of distinct pseudonyms; the recipient checks those against the
  envelope header. The union is decoded by one decoder, built once.
* This is schema version ``SCHEMA_VERSION`` (1); the header carries the version. Schemas evolve
  only by adding optional fields with defaults, or new types; a breaking change is version 2.
* Decoding is strict: unknown fields, unknown types, bad patterns and inconsistent references
  (a person or action about a pseudonym not among the subjects) raise ``SchemaError`` with
  reason ``schema_invalid`` and msgspec's message naming the path.
* Dates are calendar dates (``YYYY-MM-DD``); the wire's integer Unix times are for the
  envelope, these are what a case worker writes down.
* Identifying details (name, date of birth, BSN, address) appear only in ``approach-notice``,
  per pseudonym, and each is optional: the coordinator includes only what the recipient's
  role may hold. The BSN, when present, must pass the eleven-test.
* Bodies are usable in group and person approaches alike; the token says which one applies.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final

import msgspec

from gateway.protocol.errors import SchemaError
from gateway.protocol.reasons import Reason
from gateway.protocol.signed import SignedObject
from gateway.protocol.token import PrivatePartOpening
from gateway.protocol.types import (
    ApproachKind,
    MessageType,
    PartnerId,
    Pseudonym,
    TokenId,
)

SCHEMA_VERSION: Final = 1
SCHEMA_ID_BASE: Final = "https://ketenpost.nl/schemas/v1/"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
UNION_NAME: Final = "case-message"

Subjects = Annotated[tuple[Pseudonym, ...], msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Bsn = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{9}$")]
Postcode = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{3}[A-Z]{2}$")]
HouseNumber = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,4}( ?[A-Za-z0-9-]{1,6})?$")]


def bsn_valid(bsn: str) -> bool:
    """The BSN eleven-test: the first eight digits weighted 9 down to 2, minus the last digit,
    sum to a multiple of 11."""
    if len(bsn) != 9 or not bsn.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(bsn[:8], range(9, 1, -1), strict=True))
    return (total - int(bsn[8])) % 11 == 0 and bsn != "000000000"


class _Body(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="type"
):
    """Fields every case message has."""

    subjects: Subjects

    def __post_init__(self) -> None:
        if len(set(self.subjects)) != len(self.subjects):
            raise ValueError("a pseudonym is listed twice in subjects")


# -- approach-notice -----------------------------------------------------------------------


class ApproachChange(enum.StrEnum):
    STARTED = "started"
    CHANGED = "changed"


class Address(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    street: ShortText
    house_number: HouseNumber
    postcode: Postcode
    city: ShortText


class PersonDetails(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the recipient's role may hold about the youth behind one pseudonym."""

    pseudonym: Pseudonym
    given_name: ShortText | None = None
    family_name: ShortText | None = None
    date_of_birth: datetime.date | None = None
    bsn: Bsn | None = None
    address: Address | None = None

    def __post_init__(self) -> None:
        if self.bsn is not None and not bsn_valid(self.bsn):
            raise ValueError("bsn fails the eleven-test")


class ApproachNotice(
    _Body, frozen=True, forbid_unknown_fields=True, tag=MessageType.APPROACH_NOTICE.value
):
    """Coordinator → participants: the approach started or changed.

    Carries the registered token (so adapters can check it without asking the gateway), the
    opening of its private part, and per pseudonym the details the recipient may hold; the
    adapter keeps the pseudonym ↔ local id mapping from it.
    """

    token_id: TokenId
    approach_kind: ApproachKind
    change: ApproachChange
    token: SignedObject
    token_private: PrivatePartOpening
    persons: tuple[PersonDetails, ...] = ()
    # The coordinator's case director (regisseur) the participants can call.
    contact: ShortText | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        pseudonyms = [p.pseudonym for p in self.persons]
        if len(set(pseudonyms)) != len(pseudonyms):
            raise ValueError("persons lists a pseudonym twice")
        if not set(pseudonyms) <= set(self.subjects):
            raise ValueError("persons names a pseudonym that is not among the subjects")


# -- signal, referral ----------------------------------------------------------------------


class SignalCategory(enum.StrEnum):
    NUISANCE = "nuisance"
    VANDALISM = "vandalism"
    THEFT = "theft"
    VIOLENCE = "violence"
    THREAT = "threat"
    DRUGS = "drugs"
    WEAPONS = "weapons"
    ONLINE = "online"
    SCHOOL_ABSENCE = "school-absence"
    CONCERN = "concern"
    OTHER = "other"


class Signal(_Body, frozen=True, forbid_unknown_fields=True, tag=MessageType.SIGNAL.value):
    """An incident or concern about the subjects, for the coordinator or a chain partner."""

    incident_date: datetime.date
    category: SignalCategory
    summary: Text
    location_municipality: ShortText
    source_reference: ShortText | None = None


class OffenceCategory(enum.StrEnum):
    SHOPLIFTING = "shoplifting"
    VANDALISM = "vandalism"
    FIREWORKS = "fireworks"
    NUISANCE = "nuisance"
    THEFT = "theft"
    ASSAULT = "assault"
    ONLINE = "online"
    TRUANCY = "truancy"
    OTHER = "other"


class Referral(_Body, frozen=True, forbid_unknown_fields=True, tag=MessageType.REFERRAL.value):
    """Police or OM refer an offence (to Halt for a Halt-afdoening, or to the OM)."""

    offence_category: OffenceCategory
    offence_date: datetime.date
    referral_date: datetime.date
    halt_eligible: bool
    summary: Text
    case_reference: ShortText | None = None


# -- case-conference, action-plan ----------------------------------------------------------


class CaseConference(
    _Body, frozen=True, forbid_unknown_fields=True, tag=MessageType.CASE_CONFERENCE.value
):
    """An invitation to, or the outcome of, a case conference (casusoverleg)."""

    date: datetime.date
    participants: Annotated[tuple[PartnerId, ...], msgspec.Meta(min_length=1)]
    agenda: Annotated[tuple[ShortText, ...], msgspec.Meta(min_length=1)]
    decisions: tuple[Text, ...] = ()
    next_date: datetime.date | None = None


class Action(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    description: Text
    owner: PartnerId
    due: datetime.date
    # The youth the action is about; ``None`` for an action about the whole group.
    subject: Pseudonym | None = None


class ActionPlan(_Body, frozen=True, forbid_unknown_fields=True, tag=MessageType.ACTION_PLAN.value):
    """The approach's plan: a goal and actions, each owned by a partner, with due dates."""

    goal: Text
    actions: Annotated[tuple[Action, ...], msgspec.Meta(min_length=1)]
    review_date: datetime.date | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for action in self.actions:
            if action.subject is not None and action.subject not in self.subjects:
                raise ValueError("an action names a pseudonym that is not among the subjects")


# -- progress, closure ---------------------------------------------------------------------


class ProgressStatus(enum.StrEnum):
    ON_TRACK = "on-track"
    CONCERN = "concern"
    COMPLETED = "completed"
    NOT_COMPLETED = "not-completed"
    NO_CONTACT = "no-contact"


class Progress(_Body, frozen=True, forbid_unknown_fields=True, tag=MessageType.PROGRESS.value):
    """How an agreed action or a referral is going."""

    status: ProgressStatus
    summary: Text
    reported_on: datetime.date
    action: ShortText | None = None


class ClosureReason(enum.StrEnum):
    GOALS_REACHED = "goals-reached"
    NO_LONGER_NEEDED = "no-longer-needed"
    MOVED_AWAY = "moved-away"
    HANDED_OVER = "handed-over"
    OTHER = "other"


class Closure(_Body, frozen=True, forbid_unknown_fields=True, tag=MessageType.CLOSURE.value):
    """The coordinator closes the approach for the subjects."""

    reason: ClosureReason
    closed_on: datetime.date
    summary: Text | None = None


CaseMessage = ApproachNotice | Signal | Referral | CaseConference | ActionPlan | Progress | Closure

BODY_TYPES: Final[Mapping[MessageType, type[CaseMessage]]] = MappingProxyType(
    {
        MessageType.APPROACH_NOTICE: ApproachNotice,
        MessageType.SIGNAL: Signal,
        MessageType.REFERRAL: Referral,
        MessageType.CASE_CONFERENCE: CaseConference,
        MessageType.ACTION_PLAN: ActionPlan,
        MessageType.PROGRESS: Progress,
        MessageType.CLOSURE: Closure,
    }
)

_DECODER: Final = msgspec.json.Decoder(CaseMessage)
_ENCODER: Final = msgspec.json.Encoder()


def type_of(body: CaseMessage) -> MessageType:
    """The ``type`` tag of ``body``."""
    return MessageType(str(body.__struct_config__.tag))


def decode_body(data: bytes, *, expected_type: MessageType | None = None) -> CaseMessage:
    """Decode a case-message body; raise ``SchemaError(schema_invalid)`` saying what is wrong.

    With ``expected_type`` (the header's message type), a body of another type is refused too.
    """
    try:
        body = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise SchemaError(f"body: {exc}", Reason.SCHEMA_INVALID) from None
    if expected_type is not None and type_of(body) is not expected_type:
        raise SchemaError(
            f"body is a {type_of(body)}, the header says {expected_type}", Reason.SCHEMA_INVALID
        )
    return body


def encode_body(body: CaseMessage) -> bytes:
    """The JSON bytes of ``body`` (what the sender seals)."""
    return _ENCODER.encode(body)


def subjects_of(body: CaseMessage) -> tuple[str, ...]:
    """The body's subject pseudonyms, to compare with the envelope header's."""
    return body.subjects


# -- JSON Schema ---------------------------------------------------------------------------


def _refs(node: Any) -> set[str]:
    """Names of the ``#/$defs/<name>`` references anywhere in ``node``."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


def _standalone(
    name: str, title: str, root: dict[str, Any], components: dict[str, Any]
) -> dict[str, Any]:
    """A self-contained schema document: ``root`` plus the ``$defs`` it reaches."""
    needed: set[str] = set()
    todo = _refs(root)
    while todo:
        ref = todo.pop()
        if ref not in needed:
            needed.add(ref)
            todo |= _refs(components[ref])
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_ID_BASE}{name}.schema.json",
        "title": title,
        **root,
        "$defs": {ref: components[ref] for ref in sorted(needed)},
    }


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema (draft 2020-12) per message type, keyed by type, plus the union under
    ``"case-message"``. Each is self-contained (its own ``$defs``)."""
    order: list[Any] = [*BODY_TYPES.values(), CaseMessage]
    roots, components = msgspec.json.schema_components(order, ref_template="#/$defs/{name}")
    out: dict[str, dict[str, Any]] = {}
    for message_type, root in zip(BODY_TYPES, roots, strict=False):
        out[message_type.value] = _standalone(
            message_type.value, f"Ketenpost case message: {message_type} (v1)", root, components
        )
    out[UNION_NAME] = _standalone(UNION_NAME, "Ketenpost case message (v1)", roots[-1], components)
    return out


# -- Examples ------------------------------------------------------------------------------

# A fixed reference day keeps examples reproducible apart from their fresh pseudonyms and keys.
EXAMPLE_DAY: Final = datetime.date(2026, 3, 2)
_DAY_S: Final = 86_400


def _example_notice(subjects: tuple[str, ...], day: datetime.date) -> ApproachNotice:
    # Imported here: only this example needs the token machinery and a throwaway key.
    from gateway.protocol.policy import default_policy  # noqa: PLC0415
    from gateway.protocol.token import RolePurpose, TokenSubject, issue  # noqa: PLC0415
    from keys import Ed25519KeyPair, KeyUse, Role  # noqa: PLC0415

    now = int(datetime.datetime.combine(day, datetime.time(9), datetime.UTC).timestamp())
    participants = ("gemeente-velsen", "politie-ijmond", "halt", "cjg")
    signed, opening = issue(
        key=Ed25519KeyPair.generate(KeyUse.TOKEN),
        coordinator="gemeente-velsen",
        kind=ApproachKind.GROUP,
        subjects=[TokenSubject(pseudonym=p, informed_at=now - _DAY_S) for p in subjects],
        participants=participants,
        allowed={
            Role.MUNICIPALITY: (
                MessageType.APPROACH_NOTICE,
                MessageType.CASE_CONFERENCE,
                MessageType.ACTION_PLAN,
                MessageType.PROGRESS,
                MessageType.CLOSURE,
            ),
            Role.POLICE: (MessageType.SIGNAL, MessageType.REFERRAL, MessageType.PROGRESS),
            Role.HALT: (MessageType.PROGRESS,),
            Role.YOUTH_CARE: (MessageType.PROGRESS, MessageType.CASE_CONFERENCE),
        },
        valid_from=now,
        valid_until=now + 180 * _DAY_S,
        retention_until=now + 5 * 365 * _DAY_S,
        policy=default_policy(),
        purposes={
            Role.MUNICIPALITY: RolePurpose(
                purpose="Regie op de groepsaanpak Plein Velsen-Noord.",
                legal_basis="Convenant Jeugd en Veiligheid IJmond, art. 4",
            ),
            Role.POLICE: RolePurpose(
                purpose="Signalering van overlast en strafbare feiten van de groep.",
                legal_basis="Wet politiegegevens art. 20",
            ),
            Role.HALT: RolePurpose(
                purpose="Terugkoppeling over Halt-afdoeningen.",
                legal_basis="Wetboek van Strafrecht art. 77e",
            ),
            Role.YOUTH_CARE: RolePurpose(
                purpose="Afstemming van jeugdhulp met de aanpak.",
                legal_basis="Jeugdwet art. 7.3.11",
            ),
        },
        decided_by="Casusregisseur gemeente Velsen",
        decided_on=day - datetime.timedelta(days=3),
        decision_reference="VLS-GA-2026-014",
        informing={
            p: "Jongere en ouders mondeling en per brief geïnformeerd door de regisseur."
            for p in subjects
        },
        now=now,
    )
    persons = (
        PersonDetails(
            pseudonym=subjects[0],
            given_name="Daan",
            family_name="de Vries",
            date_of_birth=datetime.date(2010, 5, 17),
            bsn="111222333",
            address=Address(
                street="Lange Nieuwstraat", house_number="12", postcode="1972GH", city="IJmuiden"
            ),
        ),
        *(
            PersonDetails(pseudonym=p, given_name="Sem", date_of_birth=datetime.date(2011, 1, 9))
            for p in subjects[1:]
        ),
    )
    return ApproachNotice(
        subjects=subjects,
        token_id=msgspec.msgpack.decode(signed.payload)["token_id"],
        approach_kind=ApproachKind.GROUP,
        change=ApproachChange.STARTED,
        token=signed,
        token_private=opening,
        persons=persons,
        contact="M. Jansen, regisseur jeugd en veiligheid, 0255 567 200",
    )


def example(
    message_type: MessageType,
    *,
    subjects: tuple[str, ...] | None = None,
    day: datetime.date = EXAMPLE_DAY,
) -> CaseMessage:
    """A valid, realistic body of ``message_type`` about ``subjects`` (two fresh pseudonyms
    by default). For ``approach-notice`` it issues a throwaway token with a fresh key."""
    from gateway.protocol.types import new_pseudonym  # noqa: PLC0415

    subj = (new_pseudonym(), new_pseudonym()) if subjects is None else subjects
    days = datetime.timedelta
    match message_type:
        case MessageType.APPROACH_NOTICE:
            return _example_notice(subj, day)
        case MessageType.SIGNAL:
            return Signal(
                subjects=subj,
                incident_date=day - days(2),
                category=SignalCategory.NUISANCE,
                summary="Groep van vijf jongeren veroorzaakt na 22.00 uur geluidsoverlast en "
                "intimideert voorbijgangers bij het winkelcentrum; twee van hen herkend.",
                location_municipality="Velsen",
                source_reference="PL1200-2026-0412345",
            )
        case MessageType.REFERRAL:
            return Referral(
                subjects=subj,
                offence_category=OffenceCategory.VANDALISM,
                offence_date=day - days(10),
                referral_date=day,
                halt_eligible=True,
                summary="Vernieling van een bushokje; eerste aanraking met politie, bekennend.",
                case_reference="PL1200-2026-0398765",
            )
        case MessageType.CASE_CONFERENCE:
            return CaseConference(
                subjects=subj,
                date=day + days(7),
                participants=("gemeente-velsen", "politie-ijmond", "halt", "cjg"),
                agenda=("Stand van zaken groep", "Inzet jongerenwerk", "Afspraken school"),
                decisions=("Jongerenwerk benadert de groep wekelijks op het plein.",),
                next_date=day + days(35),
            )
        case MessageType.ACTION_PLAN:
            return ActionPlan(
                subjects=subj,
                goal="Overlast bij het winkelcentrum binnen drie maanden beëindigd.",
                actions=(
                    Action(
                        description="Huisbezoek met ouders; afspraken over avondtijden.",
                        owner="gemeente-velsen",
                        due=day + days(14),
                        subject=subj[0],
                    ),
                    Action(
                        description="Extra surveillance vrijdag- en zaterdagavond.",
                        owner="politie-ijmond",
                        due=day + days(28),
                    ),
                ),
                review_date=day + days(42),
            )
        case MessageType.PROGRESS:
            return Progress(
                subjects=subj,
                status=ProgressStatus.COMPLETED,
                summary="Halt-afdoening afgerond: excuses aangeboden en schade vergoed.",
                reported_on=day,
                action="Halt-afdoening",
            )
        case MessageType.CLOSURE:
            return Closure(
                subjects=subj,
                reason=ClosureReason.GOALS_REACHED,
                closed_on=day,
                summary="Geen nieuwe meldingen sinds drie maanden; aanpak afgesloten.",
            )
