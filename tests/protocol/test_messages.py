"""Case-message schemas: examples valid, strict decoding, round trips, JSON Schema export and
the ``schema`` CLI verbs."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli_schema import register
from gateway.protocol.errors import SchemaError
from gateway.protocol.messages import (
    BODY_TYPES,
    UNION_NAME,
    ActionPlan,
    ApproachNotice,
    CaseMessage,
    bsn_valid,
    decode_body,
    encode_body,
    example,
    json_schemas,
    subjects_of,
    type_of,
)
from gateway.protocol.reasons import Reason
from gateway.protocol.token import ApproachToken, check_private_part
from gateway.protocol.types import MessageType

P1, P2 = "1" * 32, "2" * 32


@pytest.mark.parametrize("message_type", list(MessageType), ids=[t.value for t in MessageType])
def test_example_is_valid_and_round_trips(message_type: MessageType) -> None:
    body = example(message_type)
    assert type_of(body) is message_type
    data = encode_body(body)
    assert json.loads(data)["type"] == message_type.value
    assert decode_body(data, expected_type=message_type) == body
    assert len(subjects_of(body)) == 2


def test_examples_draw_fresh_pseudonyms() -> None:
    assert subjects_of(example(MessageType.SIGNAL)) != subjects_of(example(MessageType.SIGNAL))


def test_every_message_type_has_a_schema_class() -> None:
    assert set(BODY_TYPES) == set(MessageType)


def test_approach_notice_example_carries_a_checkable_token() -> None:
    body = example(MessageType.APPROACH_NOTICE)
    assert isinstance(body, ApproachNotice)
    token = msgspec.msgpack.decode(body.token.payload)
    assert token["token_id"] == body.token_id
    # The private part opens the token's commitment (the key is throwaway, so check the
    # commitment on the decoded payload rather than through a directory).
    checked = msgspec.msgpack.decode(body.token.payload, type=ApproachToken)
    assert check_private_part(checked, body.token_private).token_id == body.token_id
    assert set(checked.subject_pseudonyms) == set(body.subjects)


def _signal(**changes: Any) -> bytes:
    doc = json.loads(encode_body(example(MessageType.SIGNAL, subjects=(P1, P2))))
    for key, value in changes.items():
        if value is _DROP:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc).encode()


_DROP = object()


def _notice(**changes: Any) -> bytes:
    doc = json.loads(encode_body(example(MessageType.APPROACH_NOTICE, subjects=(P1, P2))))
    doc.update(changes)
    return json.dumps(doc).encode()


INVALID = [
    pytest.param(b"[]", "Expected `object`", id="not an object"),
    pytest.param(b"{", "truncated", id="not JSON"),
    pytest.param(_signal(type="gossip"), "gossip", id="unknown type"),
    pytest.param(_signal(type=_DROP), "type", id="no type"),
    pytest.param(_signal(nickname="Daantje"), "unknown field", id="unknown field"),
    pytest.param(_signal(subjects=[]), "length", id="no subjects"),
    pytest.param(_signal(subjects=_DROP), "subjects", id="subjects missing"),
    pytest.param(_signal(subjects=[P1, P1]), "twice", id="subject twice"),
    pytest.param(_signal(subjects=["111222333"]), "subjects[0]", id="subject not a pseudonym"),
    pytest.param(_signal(incident_date="28-02-2026"), "date", id="date not ISO"),
    pytest.param(_signal(category="murder-mystery"), "category", id="unknown category"),
    pytest.param(_signal(summary=""), "length", id="empty summary"),
    pytest.param(
        _notice(persons=[{"pseudonym": P1, "bsn": "123456789"}]), "eleven", id="bsn fails 11-test"
    ),
    pytest.param(
        _notice(persons=[{"pseudonym": "3" * 32, "given_name": "Daan"}]),
        "not among the subjects",
        id="person not a subject",
    ),
    pytest.param(
        _notice(persons=[{"pseudonym": P1}, {"pseudonym": P1}]), "twice", id="person twice"
    ),
    pytest.param(
        _notice(
            persons=[
                {
                    "pseudonym": P1,
                    "address": {
                        "street": "A",
                        "house_number": "1",
                        "postcode": "1972 gh",
                        "city": "IJmuiden",
                    },
                }
            ]
        ),
        "regex",
        id="bad postcode",
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_decode_refuses(data: bytes, message: str) -> None:
    with pytest.raises(SchemaError) as caught:
        decode_body(data)
    assert caught.value.reason is Reason.SCHEMA_INVALID
    assert message in str(caught.value)


def test_action_subject_must_be_a_subject() -> None:
    doc = json.loads(encode_body(example(MessageType.ACTION_PLAN, subjects=(P1,))))
    doc["actions"][0]["subject"] = P2
    with pytest.raises(SchemaError, match="not among the subjects"):
        decode_body(json.dumps(doc).encode())


def test_expected_type_mismatch_refused() -> None:
    with pytest.raises(SchemaError, match="header says referral"):
        decode_body(_signal(), expected_type=MessageType.REFERRAL)


@pytest.mark.parametrize(
    ("bsn", "valid"),
    [
        pytest.param("111222333", True, id="valid"),
        pytest.param("123456782", True, id="valid 2"),
        pytest.param("123456789", False, id="fails 11-test"),
        pytest.param("000000000", False, id="all zeros"),
        pytest.param("12345678", False, id="too short"),
    ],
)
def test_bsn_eleven_test(bsn: str, valid: bool) -> None:
    assert bsn_valid(bsn) is valid


# -- Property: encode → decode round-trips ------------------------------------------------------

pseudonyms = st.lists(
    st.binary(min_size=16, max_size=16).map(bytes.hex), min_size=1, max_size=8, unique=True
).map(tuple)
texts = st.text(min_size=1, max_size=200)
dates = st.dates(min_value=datetime.date(1990, 1, 1), max_value=datetime.date(2100, 12, 31))

# The example of each type is the template; the strategy varies subjects, free text and dates,
# which is where encoding could go wrong (escaping, unicode, date formatting).
_TEXT_FIELD = {
    MessageType.SIGNAL: "summary",
    MessageType.REFERRAL: "summary",
    MessageType.ACTION_PLAN: "goal",
    MessageType.PROGRESS: "summary",
    MessageType.CLOSURE: "summary",
    MessageType.APPROACH_NOTICE: "contact",
}
_DATE_FIELD = {
    MessageType.SIGNAL: "incident_date",
    MessageType.REFERRAL: "offence_date",
    MessageType.CASE_CONFERENCE: "date",
    MessageType.PROGRESS: "reported_on",
    MessageType.CLOSURE: "closed_on",
}


@st.composite
def bodies(draw: st.DrawFn) -> CaseMessage:
    message_type = draw(
        st.sampled_from([t for t in MessageType if t is not MessageType.APPROACH_NOTICE])
    )
    subjects = draw(pseudonyms)
    body = example(message_type, subjects=subjects)
    changes: dict[str, Any] = {}
    if message_type in _TEXT_FIELD:
        changes[_TEXT_FIELD[message_type]] = draw(texts)
    if message_type in _DATE_FIELD:
        changes[_DATE_FIELD[message_type]] = draw(dates)
    if isinstance(body, ActionPlan):
        changes["actions"] = tuple(
            msgspec.structs.replace(a, subject=None, description=draw(texts)) for a in body.actions
        )
    return msgspec.structs.replace(body, **changes)


@given(bodies())
def test_encode_decode_round_trips(body: CaseMessage) -> None:
    assert decode_body(encode_body(body), expected_type=type_of(body)) == body


# -- JSON Schema --------------------------------------------------------------------------------


def _resolve_all_refs(schema: dict[str, Any]) -> None:
    defs = schema["$defs"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                assert ref.startswith("#/$defs/")
                assert ref.removeprefix("#/$defs/") in defs, ref
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)


def test_json_schemas() -> None:
    schemas = json_schemas()
    assert set(schemas) == {t.value for t in MessageType} | {UNION_NAME}
    for name, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/{name}.schema.json")
        _resolve_all_refs(schema)
        json.dumps(schema)
    for message_type in MessageType:
        schema = schemas[message_type.value]
        root = schema["$defs"][schema["$ref"].removeprefix("#/$defs/")]
        assert root["properties"]["type"] == {"enum": [message_type.value]}
        assert {"type", "subjects"} <= set(root["required"])
        assert root["additionalProperties"] is False
        assert root["properties"]["subjects"]["minItems"] == 1
    union = schemas[UNION_NAME]
    assert union["discriminator"]["propertyName"] == "type"
    assert set(union["discriminator"]["mapping"]) == {t.value for t in MessageType}


# -- CLI ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ketenpost")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    status: int = args.handler(args)
    return status


def test_cli_schema_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "schemas"
    assert _run(["schema", "export", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{n}.schema.json" for n in json_schemas())
    assert capsys.readouterr().out.splitlines() == [
        str(out / f"{n}.schema.json") for n in json_schemas()
    ]
    for path in out.iterdir():
        schema = json.loads(path.read_text("utf-8"))
        expected = json_schemas()[path.name.removesuffix(".schema.json")]
        assert schema == json.loads(json.dumps(expected))
    # Exporting again replaces the generated files.
    assert _run(["schema", "export", str(out)]) == 0


def test_cli_schema_export_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run(["schema", "export", str(blocker)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("ketenpost: error: cannot write schemas")


@pytest.mark.parametrize("message_type", list(MessageType), ids=[t.value for t in MessageType])
def test_cli_schema_example(message_type: MessageType, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["schema", "example", message_type.value]) == 0
    printed = capsys.readouterr().out
    body = decode_body(printed.encode("utf-8"), expected_type=message_type)
    assert type_of(body) is message_type


def test_cli_schema_example_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["schema", "example", "gossip"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ketenpost: error: unknown message type 'gossip'")
    assert "signal" in captured.err
