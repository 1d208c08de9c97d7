"""The OpenAPI description against the gateway that serves it.

* ``gateway/openapi.yaml`` is the canonical file (package data, served at ``/v1/openapi.yaml``
  and, parsed, at ``/v1/openapi.json``); ``docs/openapi.yaml`` must hold the same bytes.
* It is valid OpenAPI 3.1 (``openapi-spec-validator``); its paths are exactly the routes of the
  two aiohttp applications; its ``Reason`` enumeration is exactly ``reasons.Reason``.
* Real answers of a round trip validate against the schemas the description gives for their
  operation, status and content type (``jsonschema``), with undocumented members refused, and
  every partner operation is exercised at least once.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Any, Final

import aiohttp
import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.app import (
    REVOCATION_CONTENT_TYPE,
    TOKEN_CONTENT_TYPE,
    Runtime,
    create_operator_app,
    create_partner_app,
)
from gateway.protocol.envelope import CONTENT_TYPE as ENVELOPE_CONTENT_TYPE
from gateway.protocol.envelope import open_envelope
from gateway.protocol.reasons import Reason, reasons_markdown
from gateway.protocol.token import revoke
from gateway.signer import encode_signed_object
from keys.ca import PartnerSubject
from keys.revocation import encode_revocation, sign_revocation
from keys.signed_directory import encode_bundle, read_bundle
from tests.gateway.conftest import Gw
from tests.gateway.test_api_roundtrip import _receipt_for
from tests.gateway.test_relay_reasons import (
    Answer,
    Call,
    checked,
    foreign_certificate,
    send,
)

ROOT: Final = Path(__file__).resolve().parents[2]
SHIPPED: Final = ROOT / "gateway" / "openapi.yaml"
DOCS: Final = ROOT / "docs" / "openapi.yaml"
SPEC_URI: Final = "urn:ketenpost:openapi"
METHODS: Final = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SHIPPED.read_bytes())
    return document


def _operations(spec: dict[str, Any], *, operator: bool) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of the partner listener, or of the operator listener (the paths
    with their own ``servers``)."""
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        if ("servers" in item) is operator
        for method in METHODS
        if method in item
    }


def _routes(runtime: Runtime, *, operator: bool) -> set[tuple[str, str]]:
    app = create_operator_app(runtime) if operator else create_partner_app(runtime)
    # aiohttp answers HEAD wherever it answers GET; HTTP implies it, the description omits it.
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_docs_copy_is_the_shipped_description() -> None:
    assert DOCS.read_bytes() == SHIPPED.read_bytes()


def test_description_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate_openapi(spec)


def test_reason_enumeration_is_every_reason(spec: dict[str, Any]) -> None:
    reason = spec["components"]["schemas"]["Reason"]
    assert reason["enum"] == [r.value for r in Reason]
    # The table of meanings, statuses and transience is the one ``reasons`` renders.
    assert reasons_markdown() in reason["description"]


def test_paths_are_exactly_the_routes(gateway: Gw, spec: dict[str, Any]) -> None:
    runtime = gateway.built.runtime
    assert _routes(runtime, operator=False) == _operations(spec, operator=False)
    assert _routes(runtime, operator=True) == _operations(spec, operator=True)


async def test_both_endpoints_serve_the_shipped_description(gateway: Gw) -> None:
    as_yaml = await send(gateway, Call("halt", "GET", "/v1/openapi.yaml"))
    as_json = await send(gateway, Call("halt", "GET", "/v1/openapi.json"))
    assert (as_yaml.status, as_yaml.content_type) == (200, "application/yaml")
    assert (as_json.status, as_json.content_type) == (200, "application/json")
    assert as_yaml.headers["API-Version"] == as_json.headers["API-Version"] == "1"
    assert as_yaml.document == SHIPPED.read_bytes()
    assert as_json.document == yaml.safe_load(as_yaml.document)


# -- real answers against their schemas -----------------------------------------------------


def _closed(node: Any) -> Any:
    """A copy where every object schema that lists ``properties`` refuses other members: the
    description promises clients may ignore new members, but the gateway must not send any
    that the description does not name."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


class Checker:
    """Validates answers against the operation they answer; remembers what it saw."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        closed = _closed(spec)
        self.registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, Resource.from_contents(closed, default_specification=DRAFT202012)
        )
        self.seen: set[tuple[str, str]] = set()

    def _deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def check(self, method: str, path: str, answer: Answer, *, operator: bool = False) -> None:
        operation = self.spec["paths"][path][method.lower()]
        responses = operation["responses"]
        assert str(answer.status) in responses, (method, path, answer.status, answer.document)
        response = self._deref(responses[str(answer.status)])
        if not operator:
            assert "API-Version" in response["headers"]
            assert answer.headers["API-Version"] == "1"
        media = response["content"]
        assert answer.content_type in media, (method, path, answer.content_type)
        if answer.content_type.endswith("json"):
            pointer = "/".join(
                p.replace("~", "~0").replace("/", "~1")
                for p in ("paths", path, method.lower(), "responses", str(answer.status))
            )
            schema_ref = f"{SPEC_URI}#/{pointer}"
            if "$ref" in responses[str(answer.status)]:
                schema_ref = SPEC_URI + responses[str(answer.status)]["$ref"]
            ctype = answer.content_type.replace("~", "~0").replace("/", "~1")
            validator = jsonschema.Draft202012Validator(
                {"$ref": f"{schema_ref}/content/{ctype}/schema"}, registry=self.registry
            )
            validator.validate(answer.document)
        self.seen.add((method.upper(), path))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def test_real_answers_match_their_schemas(gateway: Gw, spec: dict[str, Any]) -> None:
    gw = gateway
    checker = Checker(spec)
    token = gw.issue_token()

    async def call(partner: str, method: str, path: str, template: str, **kw: Any) -> Answer:
        answer = await send(gw, Call(partner, method, path, **kw))
        checker.check(method, template, answer)
        return answer

    approaches = "/v1/approaches"
    registered = await call(
        "gemeente-velsen",
        "POST",
        approaches,
        approaches,
        body=token.body,
        content_type=TOKEN_CONTENT_TYPE,
    )
    assert registered.status == 201
    again = await call(
        "gemeente-velsen",
        "POST",
        approaches,
        approaches,
        body=token.body,
        content_type=TOKEN_CONTENT_TYPE,
    )
    assert again.status == 200
    one = f"{approaches}/{token.token_id}"
    await call("halt", "GET", one, "/v1/approaches/{token_id}")
    await call("halt", "GET", "/v1/approaches/" + "cd" * 16, "/v1/approaches/{token_id}")

    envelope = gw.seal(token)
    accepted = await call(
        "politie-ijmond",
        "POST",
        "/v1/messages",
        "/v1/messages",
        body=envelope,
        content_type=ENVELOPE_CONTENT_TYPE,
    )
    assert accepted.status == 202
    refused = await call(
        "politie-ijmond",
        "POST",
        "/v1/messages",
        "/v1/messages",
        body=b"\x93not",
        content_type=ENVELOPE_CONTENT_TYPE,
    )
    assert refused.document["reason"] == "malformed_envelope"
    unknown_sender = await call(
        "politie-ijmond",
        "POST",
        "/v1/messages",
        "/v1/messages",
        body=envelope,
        content_type=ENVELOPE_CONTENT_TYPE,
        ssl=_unlisted_context(gw),
    )
    assert unknown_sender.status == 401
    message_id = accepted.document["message_id"]

    inbox = await call("halt", "GET", "/v1/inbox?wait=0&limit=10", "/v1/inbox")
    (delivery,) = inbox.document["deliveries"]
    await call("halt", "GET", "/v1/inbox?wait=soon", "/v1/inbox")
    key = gw.deployment.encrypt_key("halt")
    opened = open_envelope(
        base64.b64decode(delivery["envelope"]),
        gw.directory,
        recipient="halt",
        encrypt_keys={key.kid: key},
        accepted_at=delivery["accepted_at"],
        now=gw.clock.now(),
    )
    signed_receipt = _receipt_for(gw, "halt", opened.body, opened.header_hash, message_id)
    await call("halt", "POST", "/v1/receipts", "/v1/receipts", json={"receipts": []})
    await call(
        "halt", "POST", "/v1/receipts", "/v1/receipts", json={"receipts": [_b64(signed_receipt)]}
    )
    await call("halt", "POST", "/v1/receipts", "/v1/receipts", json={"acks": "all"})
    events = await call("politie-ijmond", "GET", "/v1/inbox", "/v1/inbox")
    assert [e["kind"] for e in events.document["events"]] == ["receipt"]
    status = f"/v1/messages/{message_id}"
    await call("politie-ijmond", "GET", status, "/v1/messages/{message_id}")
    await call("halt", "GET", status, "/v1/messages/{message_id}")

    await call("om", "GET", "/v1/directory", "/v1/directory")
    # Publishing the bundle already served is accepted (and changes nothing); one that is not
    # a bundle is refused with its directory reason.
    bundle = encode_bundle(read_bundle(gw.deployment.root / "directory"))
    published = await call(
        "om", "POST", "/v1/directory", "/v1/directory", body=bundle, content_type="application/json"
    )
    assert published.document["version"] == gw.directory.version
    malformed = await call(
        "om", "POST", "/v1/directory", "/v1/directory", body=b"{}", content_type="application/json"
    )
    assert malformed.document["reason"] == "directory_malformed"
    checkpoint = await call("om", "GET", "/v1/audit/checkpoint", "/v1/audit/checkpoint")
    assert checkpoint.content_type == "text/plain"
    proof = "/v1/audit/proof"
    await call("om", "GET", proof + "?index=0", proof)
    await call("om", "GET", proof + "?from=1&to=2", proof)
    await call("om", "GET", proof + "?from=0", proof)
    await call("om", "GET", "/v1/openapi.yaml", "/v1/openapi.yaml")
    await call("om", "GET", "/v1/openapi.json", "/v1/openapi.json")

    revocation = encode_signed_object(
        revoke(
            checked(token),
            key=gw.deployment.token_key("gemeente-velsen"),
            now=gw.clock.now(),
            reason="Beëindigd.",
        )
    )
    revoke_path = f"{one}/revocation"
    await call(
        "gemeente-velsen",
        "POST",
        revoke_path,
        "/v1/approaches/{token_id}/revocation",
        body=revocation,
        content_type=REVOCATION_CONTENT_TYPE,
    )

    # A partner's own key revocation (recorded, recorded again, refused), and the list.
    keys = "/v1/keys/revocations"
    statement = encode_revocation(
        sign_revocation(
            partner="halt",
            kid=gw.deployment.encrypt_key("halt").kid,
            revoked_at=gw.clock.now(),
            compromised_since=None,
            signing_key=gw.deployment.sign_key("halt"),
        )
    )
    for expected in (201, 200):
        recorded = await call(
            "om", "POST", keys, keys, body=statement, content_type="application/json"
        )
        assert recorded.status == expected
    refused_statement = await call(
        "om", "POST", keys, keys, body=b"{}", content_type="application/json"
    )
    assert refused_statement.document["reason"] == "key_revocation_malformed"
    listed = await call("cjg", "GET", keys, keys)
    assert listed.document["revocations"] == [recorded.document]

    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(gw.operator_url + path) as response:
                body = await response.read()
                document = json.loads(body) if response.content_type.endswith("json") else body
                answer = Answer(
                    response.status, response.content_type, dict(response.headers), document
                )
            checker.check("GET", path, answer, operator=True)
        for data in (bundle, b"[1]"):
            async with session.post(gw.operator_url + "/directory", data=data) as response:
                answer = Answer(
                    response.status,
                    response.content_type,
                    dict(response.headers),
                    json.loads(await response.read()),
                )
            checker.check("POST", "/directory", answer, operator=True)

    assert checker.seen == _operations(spec, operator=False) | _operations(spec, operator=True)


def _unlisted_context(gw: Gw) -> ssl.SSLContext:
    """A context with a certificate the covenant CA issued for a key the directory lacks."""
    police = gw.directory.partner("politie-ijmond")
    subject = PartnerSubject(police.id, police.oin, police.name)
    return foreign_certificate(gw, gw.db.parent / "unlisted", subject)
