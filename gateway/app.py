"""The aiohttp applications: the partner API v1 (HTTPS, mTLS) and the operator listener.

Rules kept here:

* Runtime objects live under typed ``web.AppKey``s on the application; they are opened and
  closed in ``cleanup_ctx`` (store, expiry sweeper, metric refresher). No globals.
* Every partner API response carries ``API-Version: 1``, also errors and 404s.
* The caller is whoever the TLS client certificate names (``keys.tlsidentity.identify_peer``
  against the last verified directory); nothing in a request body or header is believed about
  who is calling.
* Refusals are ``application/problem+json`` (RFC 9457) built by ``reasons.problem``, with
  ``Retry-After`` on ``rate_limited``. A request that is not even shaped right (a query
  parameter that is not a number, a body that is not the JSON asked for) gets a plain
  ``about:blank`` problem with status 400: there is no relay reason for it.
* Binary objects (envelopes, signed receipts and events, tokens) travel as the request body in
  their own content types, or base64 inside JSON answers; the bytes are never re-encoded.
* The API is described by ``gateway/openapi.yaml`` (package data; ``docs/openapi.yaml`` links to
  it), served as YAML and JSON at ``/v1/openapi.yaml`` and ``/v1/openapi.json``. It is read and
  parsed once when the application is built, so a broken description fails at start-up.
* The operator listener is plain HTTP: ``/metrics``, ``/healthz`` (the process is alive) and
  ``/readyz`` (this replica can reach its store — nothing more, so an expiring directory never
  takes every replica out of the load balancer at once).
* **Publishing a directory** (``POST /v1/directory`` for a partner, ``POST /directory`` on the
  operator listener): the bundle authenticates itself (threshold signatures of the officers,
  the key authority's timestamp, versions that never go back), so whoever carries it in need
  not be trusted: any authenticated partner, or the operator on the operator listener. It is
  verified against the gateway's trusted state, persisted and served without a restart; a
  refusal is a problem document whose ``reason`` is the ``keys`` reason
  (``directory_rollback``, ``directory_threshold``, ``directory_timestamp_stale``, …).
* **A partner's own key revocation** (``POST /v1/keys/revocations``): the body is the
  statement exactly as ``ketenpost keys revoke --self`` writes it (JSON). It authenticates
  itself (signed by another of the partner's own sign keys), so any partner may carry it; the
  caller is recorded. 201 with the recorded statement the first time, 200 with the same
  document again. ``GET /v1/keys/revocations`` lists every recorded statement, so partners can
  verify them themselves (docs/adr/0011).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.resources
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml
from aiohttp import web

from gateway.metrics import UNMATCHED_ROUTE, GatewayMetrics
from gateway.protocol.reasons import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, problem
from gateway.relay import PublishableDirectorySource, RecordedRevocation, Refusal, Relay
from gateway.signer import GatewaySigner
from keys import DirectoryError, KeysReason, Partner
from keys.signed_directory import decode_bundle, encode_bundle, read_bundle

logger = logging.getLogger("gateway.app")

API_VERSION: Final = "1"
TOKEN_CONTENT_TYPE: Final = "application/vnd.ketenpost.token+msgpack"
REVOCATION_CONTENT_TYPE: Final = "application/vnd.ketenpost.revocation+msgpack"
# Slack above the envelope limit for aiohttp's own body limit; the relay judges the exact size.
BODY_SLACK_BYTES: Final = 1024
# Bodies other than envelopes (tokens, revocations, receipt batches) are small.
MAX_SMALL_BODY_BYTES: Final = 4 * 1024 * 1024


@dataclass
class Runtime:
    """What the applications need at run time; built by ``gateway.server`` or a test."""

    relay: Relay
    signer: GatewaySigner
    metrics: GatewayMetrics
    bundle_dir: Path | None = None
    # Real seconds between sweeps and gauge refreshes; 0 disables the background tasks
    # (tests drive ``relay.sweep_expired`` themselves with a manual clock).
    sweep_interval_s: float = 10.0
    open_store: bool = True


RUNTIME: Final = web.AppKey("runtime", Runtime)


@dataclass(frozen=True)
class OpenApiDocument:
    """The API description as served: the shipped YAML bytes and their JSON rendering."""

    yaml: bytes
    json: bytes

    @classmethod
    def load(cls) -> OpenApiDocument:
        """Read ``gateway/openapi.yaml`` from the installed package. Raises ``OSError`` or
        ``yaml.YAMLError`` (a packaging bug, found at start-up rather than at the first
        request)."""
        raw = importlib.resources.files("gateway").joinpath("openapi.yaml").read_bytes()
        document = yaml.safe_load(raw)
        return cls(raw, json.dumps(document, ensure_ascii=False).encode("utf-8"))


OPENAPI: Final = web.AppKey("openapi", OpenApiDocument)


# -- helpers -------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# The hot answers (submit, inbox, receipts) are encoded with msgspec: it writes ``bytes`` as
# standard padded base64 itself (what ``_b64`` gives), without a Python string per envelope.
_JSON_ENCODER: Final = msgspec.json.Encoder()


def _json(document: dict[str, Any], status: int = 200) -> web.Response:
    """``web.json_response`` with the same content type and charset, encoded by msgspec."""
    return web.Response(
        body=_JSON_ENCODER.encode(document),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


def problem_response(refusal: Refusal) -> web.Response:
    headers = {}
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(refusal.retry_after)
    return web.json_response(
        problem(refusal.code, refusal.detail),
        status=refusal.code.status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def bad_request(detail: str, status: int = 400) -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": "Bad Request", "status": status, "detail": detail},
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def _peer_der(request: web.Request) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der or None


def _caller(request: web.Request) -> Partner:
    runtime = request.app[RUNTIME]
    return runtime.relay.authenticate(_peer_der(request), runtime.relay.clock.now())


def _int_query(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise web.HTTPBadRequest(reason=f"{name} is required")
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} is not an integer") from None
    if value < 0:
        raise web.HTTPBadRequest(reason=f"{name} is negative")
    return value


# -- middleware and signals -----------------------------------------------------------------


@web.middleware
async def _refusals(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
    except Refusal as refusal:
        status = refusal.code.status
        return problem_response(refusal)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status >= 400:
            return bad_request(exc.reason, exc.status)
        raise
    else:
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        runtime.metrics.observe_request(
            route, request.method, status, time.perf_counter() - started
        )


async def _api_version(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["API-Version"] = API_VERSION


# -- partner API handlers -------------------------------------------------------------------


async def submit_message(request: web.Request) -> web.Response:
    relay = request.app[RUNTIME].relay
    limit = relay.limits.max_envelope_bytes
    body: bytes | None
    if request.content_length is not None and request.content_length > limit:
        body = None
    else:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
    result = await relay.submit(body, _peer_der(request))
    return _json(
        {
            "message_id": result.message_id,
            "receipt": result.receipt,
            "leaf_index": result.leaf_index,
            "first_time": result.first_time,
        },
        status=202,
    )


async def inbox(request: web.Request) -> web.Response:
    partner = _caller(request)
    relay = request.app[RUNTIME].relay
    try:
        wait_s = float(request.query.get("wait", "0"))
    except ValueError:
        raise web.HTTPBadRequest(reason="wait is not a number") from None
    if not wait_s >= 0:  # also refuses NaN
        raise web.HTTPBadRequest(reason="wait is negative")
    limit = _int_query(request, "limit", relay.limits.max_batch)
    box = await relay.inbox(partner, wait_s, limit)
    return _json(
        {
            "deliveries": [
                {
                    "message_id": d.message_id,
                    "sender": d.sender,
                    "envelope": d.envelope,
                    "lease_until": d.lease_until,
                    "attempts": d.attempts,
                    "accepted_at": d.accepted_at,
                    # The recipient checks ``accepted_at`` with it (signature, audit entry,
                    # inclusion proof), as the sender checked it.
                    "receipt": d.receipt,
                }
                for d in box.deliveries
            ],
            "events": [
                {
                    "event_id": e.event_id,
                    "message_id": e.message_id,
                    "kind": e.kind.value,
                    "event": e.signed,
                    "created_at": e.created_at,
                }
                for e in box.events
            ],
        }
    )


class _ReceiptsBody(msgspec.Struct, frozen=True):
    """The body of ``POST /v1/receipts`` as the fast path reads it: msgspec decodes the JSON and
    the standard, padded base64 of ``bytes`` in C. Unknown fields are ignored, as they always
    were (no ``forbid_unknown_fields``: refusing them now would break a caller that sends one).
    """

    receipts: list[bytes] = []
    rejections: list[bytes] = []
    acks: list[int] = []


_RECEIPTS_BODY: Final = msgspec.json.Decoder(_ReceiptsBody)
# Charset names under which the body is decoded as UTF-8 (aiohttp's default without one).
_UTF8_NAMES: Final = frozenset({"utf-8", "utf8"})


def _receipts_body(body: bytes, charset: str | None) -> tuple[list[bytes], list[bytes], list[int]]:
    """Receipts, rejections and acknowledged event ids of a receipts POST body.

    Accepts and refuses exactly what ``_receipts_body_checked`` does, with the same
    ``HTTPBadRequest`` reasons: the fast path answers only when msgspec accepts the body, and
    everything msgspec accepts here the checked path accepts with the same values
    (``tests/gateway/test_perf_loop.py`` compares the two over a table of edge cases). Any
    body msgspec refuses, and any body that is not ASCII (msgspec does not check the UTF-8 of
    a skipped string) or not declared UTF-8, goes through the checked path, which gives the
    refusal and its reason as before.
    """
    if (not charset or charset.lower() in _UTF8_NAMES) and body.isascii():
        try:
            fast = _RECEIPTS_BODY.decode(body)
        except (msgspec.DecodeError, RecursionError):
            pass
        else:
            return fast.receipts, fast.rejections, fast.acks
    return _receipts_body_checked(body, charset)


def _receipts_body_checked(
    body: bytes, charset: str | None
) -> tuple[list[bytes], list[bytes], list[int]]:
    """The slow path of ``_receipts_body``: ``request.json()``'s decoding (the charset, else
    UTF-8; ``json.loads``), then each field checked and each string decoded on its own."""
    try:
        document = json.loads(body.decode(charset or "utf-8"))
    except ValueError:
        raise web.HTTPBadRequest(reason="body is not JSON") from None
    if not isinstance(document, dict):
        raise web.HTTPBadRequest(reason="body is not a JSON object")
    acks = document.get("acks", [])
    if not isinstance(acks, list) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in acks
    ):
        raise web.HTTPBadRequest(reason="acks must be a list of event ids")
    return _b64_list(document, "receipts"), _b64_list(document, "rejections"), acks


def _b64_list(document: dict[str, Any], name: str) -> list[bytes]:
    items = document.get(name, [])
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise web.HTTPBadRequest(reason=f"{name} must be a list of base64 strings")
    try:
        return [base64.b64decode(i, validate=True) for i in items]
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} holds invalid base64") from None


async def post_receipts(request: web.Request) -> web.Response:
    partner = _caller(request)
    try:
        body = await request.read()
    except ValueError:  # where ``request.json()`` refused it before
        raise web.HTTPBadRequest(reason="body is not JSON") from None
    receipts, rejections, acks = _receipts_body(body, request.charset)
    outcome = await request.app[RUNTIME].relay.receipts(partner, receipts, rejections, acks)
    return _json(
        {
            "finished": outcome.finished,
            "already_finished": outcome.already_finished,
            "acked": outcome.acked,
        }
    )


async def message_status(request: web.Request) -> web.Response:
    partner = _caller(request)
    status = await request.app[RUNTIME].relay.message_status(
        request.match_info["message_id"], partner
    )
    return web.json_response(
        {
            "message_id": status.message_id,
            "accepted_at": status.accepted_at,
            "expires_at": status.expires_at,
            "recipients": [
                {
                    "recipient": r.recipient,
                    "state": r.state.value,
                    "attempts": r.attempts,
                    "finished_at": r.finished_at,
                }
                for r in status.recipients
            ],
        }
    )


async def register_approach(request: web.Request) -> web.Response:
    partner = _caller(request)
    body = await request.read()
    registered = await request.app[RUNTIME].relay.register_token(body, partner)
    row = registered.row
    return web.json_response(
        {
            "token_id": row.token_id,
            "token_hash": row.token_hash,
            "registered_at": row.registered_at,
            "first_time": registered.first_time,
        },
        status=201 if registered.first_time else 200,
    )


async def revoke_approach(request: web.Request) -> web.Response:
    partner = _caller(request)
    body = await request.read()
    token_id = request.match_info["token_id"]
    purged = await request.app[RUNTIME].relay.revoke_token(token_id, body, partner)
    return web.json_response({"token_id": token_id, "purged": len(purged)})


async def get_approach(request: web.Request) -> web.Response:
    partner = _caller(request)
    row, _token = await request.app[RUNTIME].relay.approach(request.match_info["token_id"], partner)
    return web.json_response(
        {
            "token_id": row.token_id,
            "coordinator": row.coordinator,
            "token_hash": row.token_hash,
            "token": _b64(row.signed),
            "registered_at": row.registered_at,
            "revoked_at": row.revoked_at,
            "supersedes": row.supersedes,
            "superseded_by": row.superseded_by,
        }
    )


def _key_revocation(recorded: RecordedRevocation) -> dict[str, Any]:
    row = recorded.row
    return {
        "statement_hash": row.statement_hash,
        "partner": row.partner,
        "kid": row.kid,
        "signing_kid": row.signing_kid,
        "revoked_at": row.revoked_at,
        "compromised_since": row.compromised_since,
        "recorded_at": row.recorded_at,
        "carried_by": row.carried_by,
        "leaf_index": row.audit_index,
        # The statement as recorded, so a partner can verify its signature itself.
        "statement": msgspec.to_builtins(recorded.statement),
    }


async def post_key_revocation(request: web.Request) -> web.Response:
    partner = _caller(request)
    body = await request.read()
    recorded = await request.app[RUNTIME].relay.record_key_revocation(body, partner)
    return web.json_response(_key_revocation(recorded), status=201 if recorded.first_time else 200)


async def get_key_revocations(request: web.Request) -> web.Response:
    _caller(request)
    recorded = await request.app[RUNTIME].relay.key_revocations()
    return web.json_response({"revocations": [_key_revocation(r) for r in recorded]})


async def get_directory(request: web.Request) -> web.Response:
    # No ``_caller``: the bundle authenticates itself and holds only what every partner holds,
    # and a partner whose own tls key retired while it was offline (or that is joining) must
    # still fetch the version listing its successor. The handshake demands a covenant
    # certificate; every other route identifies the caller (ADR 12).
    folder = request.app[RUNTIME].bundle_dir
    if folder is None:
        raise web.HTTPNotFound(reason="this gateway serves no directory bundle")
    bundle = await asyncio.to_thread(read_bundle, folder)
    return web.Response(body=encode_bundle(bundle), content_type="application/json")


# HTTP status of a refused directory publication, by ``keys`` reason; anything else is 422.
_DIRECTORY_STATUS: Final = {
    KeysReason.DIRECTORY_MALFORMED: 400,
    KeysReason.DIRECTORY_ROLLBACK: 409,
    KeysReason.DIRECTORY_MISMATCH: 409,
}


def directory_problem(exc: DirectoryError) -> web.Response:
    """A refused publication as problem+json: the ``keys`` reason, never transient (the same
    bundle is refused again; the officers or the key authority must publish another)."""
    status = _DIRECTORY_STATUS.get(exc.reason, 422)
    return web.json_response(
        {
            "type": PROBLEM_TYPE_BASE + exc.reason.value,
            "title": "The directory bundle is refused.",
            "status": status,
            "detail": str(exc),
            "reason": exc.reason.value,
            "transient": False,
        },
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )


async def _publish(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    source = runtime.relay.directories
    if not isinstance(source, PublishableDirectorySource):
        raise web.HTTPNotFound(reason="this gateway takes no published directory")
    body = await request.read()
    try:
        directory = await asyncio.to_thread(
            source.publish, decode_bundle(body), runtime.relay.clock.now()
        )
    except DirectoryError as exc:
        logger.warning("directory_publish_refused", extra={"reason": exc.reason.value})
        return directory_problem(exc)
    return web.json_response({"version": directory.version, "partners": len(directory.partners())})


async def publish_directory(request: web.Request) -> web.Response:
    _caller(request)
    return await _publish(request)


async def get_checkpoint(request: web.Request) -> web.Response:
    _caller(request)
    runtime = request.app[RUNTIME]
    head = await runtime.relay.store_call("audit_head", runtime.relay.store.audit_head())
    note = head.checkpoint or runtime.signer.checkpoint(head.size, head.root)
    return web.Response(text=note, content_type="text/plain", charset="utf-8")


async def get_proof(request: web.Request) -> web.Response:
    _caller(request)
    relay = request.app[RUNTIME].relay
    store = relay.store
    head = await relay.store_call("audit_head", store.audit_head())
    if "index" in request.query:
        index = _int_query(request, "index")
        size = _int_query(request, "size", head.size)
        if not index < size <= head.size:
            raise web.HTTPBadRequest(reason="need index < size <= the checkpointed tree size")
        hashes = await relay.store_call("inclusion_proof", store.inclusion_proof(index, size))
        leaves = await relay.store_call("audit_leaves", store.audit_leaves())
        return web.json_response(
            {
                "leaf_index": index,
                "tree_size": size,
                "leaf_hash": _b64(leaves[index][1]),
                "hashes": [_b64(h) for h in hashes],
            }
        )
    old = _int_query(request, "from")
    new = _int_query(request, "to", head.size)
    if not 0 < old <= new <= head.size:
        raise web.HTTPBadRequest(reason="need 0 < from <= to <= the checkpointed tree size")
    hashes = await relay.store_call("consistency_proof", store.consistency_proof(old, new))
    return web.json_response(
        {"old_size": old, "new_size": new, "hashes": [_b64(h) for h in hashes]}
    )


async def openapi_yaml(request: web.Request) -> web.Response:
    # No ``_caller``: the TLS handshake already demands a covenant certificate, and a partner
    # whose directory entry is changing should still be able to read how to talk to us.
    return web.Response(body=request.app[OPENAPI].yaml, content_type="application/yaml")


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI].json, content_type="application/json")


# -- lifecycle -----------------------------------------------------------------------------


async def _periodic(runtime: Runtime) -> None:
    """Expire undelivered messages and refresh the gauges, every ``sweep_interval_s``."""
    while True:
        await asyncio.sleep(runtime.sweep_interval_s)
        try:
            await runtime.relay.sweep_expired()
            await runtime.relay.refresh_metrics()
        except Exception:  # a failed sweep is retried next interval; the process stays up
            logger.exception("sweep_failed")


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    if runtime.open_store:
        await runtime.relay.store.open()
    task = (
        asyncio.create_task(_periodic(runtime), name="ketenpost-sweeper")
        if runtime.sweep_interval_s > 0
        else None
    )
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if runtime.open_store:
            await runtime.relay.store.close()


def create_partner_app(runtime: Runtime) -> web.Application:
    """The partner API v1. Owns the runtime's lifecycle (store, sweeper) via ``cleanup_ctx``."""
    app = web.Application(
        middlewares=[_refusals],
        client_max_size=max(runtime.relay.limits.max_envelope_bytes, MAX_SMALL_BODY_BYTES)
        + BODY_SLACK_BYTES,
    )
    app[RUNTIME] = runtime
    app[OPENAPI] = OpenApiDocument.load()
    app.on_response_prepare.append(_api_version)
    app.cleanup_ctx.append(_runtime_ctx)
    app.router.add_post("/v1/messages", submit_message)
    app.router.add_get("/v1/messages/{message_id}", message_status)
    app.router.add_get("/v1/inbox", inbox)
    app.router.add_post("/v1/receipts", post_receipts)
    app.router.add_post("/v1/approaches", register_approach)
    app.router.add_post("/v1/approaches/{token_id}/revocation", revoke_approach)
    app.router.add_get("/v1/approaches/{token_id}", get_approach)
    app.router.add_post("/v1/keys/revocations", post_key_revocation)
    app.router.add_get("/v1/keys/revocations", get_key_revocations)
    app.router.add_get("/v1/directory", get_directory)
    app.router.add_post("/v1/directory", publish_directory)
    app.router.add_get("/v1/audit/checkpoint", get_checkpoint)
    app.router.add_get("/v1/audit/proof", get_proof)
    app.router.add_get("/v1/openapi.yaml", openapi_yaml)
    app.router.add_get("/v1/openapi.json", openapi_json)
    return app


# -- operator listener ---------------------------------------------------------------------

READY_TIMEOUT_S: Final = 2.0


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[RUNTIME].metrics
    body, content_type = metrics.exposition(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    store = request.app[RUNTIME].relay.store
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await store.ping()
    except Exception as exc:  # any failure to reach the store means not ready
        return web.json_response({"status": "not ready", "error": type(exc).__name__}, status=503)
    return web.json_response({"status": "ready"})


def create_operator_app(runtime: Runtime) -> web.Application:
    # Room for a directory bundle (``POST /directory``); nothing else here takes a body.
    app = web.Application(client_max_size=MAX_SMALL_BODY_BYTES + BODY_SLACK_BYTES)
    app[RUNTIME] = runtime
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/directory", _publish)
    return app
