"""A typed async client of the gateway's partner API v1.

Rules kept here:

* Imports ``gateway.protocol`` and ``keys`` only, never the relay service (DESIGN.md).
* mTLS with ``keys.tlsidentity.client_context``: the partner's certificate, only the covenant's
  trust anchors, host name checked. ``HTTPS_PROXY`` is honoured (``trust_env``).
* **The gateway's key is pinned**, not only its chain: with a ``peer_check`` every connection
  is checked before a request is written to it — a new one, one reused from the pool, one
  made after a reconnect — by handing the server certificate (DER) to ``peer_check``, which
  raises ``GatewayIdentityError`` to refuse (the engine checks it against the directory's
  gateway ``tls`` key). A refused connection is closed, never pooled; nothing is sent on it.
  A trust anchor that mis-issues a certificate for the gateway's name therefore cannot
  impersonate the gateway. Only ``GET /v1/directory`` goes over an unpinned session of its
  own: the bundle authenticates itself (threshold signatures, versions, the key authority's
  timestamp), and fetching it is how a rotated gateway TLS key is learned.
* **The client certificate can be switched live** (``use_ssl_context``, a rotated partner
  ``tls`` key): every request names the context it is made with, and aiohttp's pool keys
  connections by that context, so from the switch on each new request goes over a connection
  made with the new certificate — pinned as before, since the check runs in the connector
  whatever the context — while a request in flight finishes on the connection it has. Nothing
  is closed or dropped: idle connections made with the old context are never handed out again
  and end at the pool's keep-alive timeout.
* Refusals arrive as problem+json; a transient one (``transient: true``, or a 429/503 without a
  document) is retried with bounded exponential backoff, waiting at least ``Retry-After``; a
  final one, or the last transient one, raises ``RefusedError`` carrying the ``Reason``.
* Bytes the gateway signs (receipts, sender events) are returned as the exact bytes received;
  the caller verifies them with ``gateway.protocol.receipts``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from adapters.errors import AdapterError
from gateway.protocol.envelope import CONTENT_TYPE as ENVELOPE_CONTENT_TYPE
from gateway.protocol.reasons import Reason
from keys import CertificateError
from keys.tlsidentity import peer_certificate_der

TOKEN_CONTENT_TYPE: Final = "application/vnd.ketenpost.token+msgpack"
REVOCATION_CONTENT_TYPE: Final = "application/vnd.ketenpost.revocation+msgpack"
DEFAULT_ATTEMPTS: Final = 4
MAX_BACKOFF_S: Final = 30.0


class RefusedError(AdapterError):
    """The gateway refused a request with ``reason`` (``None``: no reason code, e.g. a 400)."""

    def __init__(
        self, status: int, reason: Reason | None, detail: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{reason.value if reason else status}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        if self.reason is not None:
            return self.reason.transient
        return self.status in (429, 503)


class GatewayUnreachableError(AdapterError):
    """The gateway could not be reached (connection or TLS failure) after the retries."""


class GatewayIdentityError(GatewayUnreachableError):
    """The server reached is not the gateway the directory names (its certificate's key is not
    the gateway's ``tls`` key): the connection was closed and nothing was sent on it. A kind
    of unreachable, so every caller that waits for the gateway waits for the real one."""


PeerCheck = Callable[[bytes], Awaitable[None]]
"""Called with the server certificate (DER) of every connection before it is used; raises
``GatewayIdentityError`` to refuse the server."""


class _PinnedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that runs ``check`` on every connection it hands out, pooled or new.

    ``connect`` is where aiohttp hands a connection to a request, after the TLS handshake and
    before a byte of the request is written; checking there covers reused connections (whose
    handshake an older directory judged) and new ones after a reconnect alike.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, check: PeerCheck) -> None:
        super().__init__(ssl=ssl_context)
        self._check = check

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature, overridden
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        try:
            transport = connection.transport
            ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
            try:
                der = peer_certificate_der(ssl_object)
            except CertificateError as exc:
                raise GatewayIdentityError(f"no gateway certificate to check: {exc}") from None
            await self._check(der)
        except BaseException:
            # Closed, not released: a refused server's connection must not go back to the pool.
            connection.close()
            raise
        return connection


@dataclass(frozen=True)
class SubmitReceipt:
    message_id: str
    receipt: bytes
    leaf_index: int
    first_time: bool


@dataclass(frozen=True)
class InboxDelivery:
    message_id: str
    sender: str
    envelope: bytes
    lease_until: int
    attempts: int
    # What the gateway says; believed only once ``receipt`` verified and names the same time
    # (``adapters.acceptance.check_delivery_acceptance``).
    accepted_at: int
    # The message's gateway-signed acceptance receipt, the exact bytes received; empty when
    # the gateway sent none (the recipient refuses such a delivery).
    receipt: bytes = b""


@dataclass(frozen=True)
class InboxEvent:
    event_id: int
    message_id: str
    kind: str
    event: bytes
    created_at: int


@dataclass(frozen=True)
class InboxBatch:
    deliveries: list[InboxDelivery]
    events: list[InboxEvent]


def _unb64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _receipt_bytes(value: object) -> bytes:
    """A delivery's receipt field: its bytes, or empty when it is missing or not base64. The
    recipient refuses the one delivery then; one bad field must not stop the whole batch."""
    if not isinstance(value, str):
        return b""
    try:
        return _unb64(value)
    except ValueError:
        return b""


class GatewayClient:
    """One partner's connection to the gateway. Use as ``async with GatewayClient(...)``."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: float = 0.2,
        timeout_s: float = 60.0,
        peer_check: PeerCheck | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._ssl = ssl_context
        self._attempts = max(1, attempts)
        self._backoff = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._peer_check = peer_check
        self._session: aiohttp.ClientSession | None = None
        # The unpinned session for the self-authenticating directory bundle (see the module
        # rules); ``None`` without a ``peer_check``, when ``_session`` is unpinned itself.
        self._courier: aiohttp.ClientSession | None = None

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=connector, trust_env=True, timeout=self._timeout)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The context new requests are made with (their client certificate)."""
        return self._ssl

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """Make every request from now on with ``context`` (a new client certificate).

        Requests in flight keep their connection and finish; a retry of one after a lost
        connection is made with ``context`` (see the module rules). Safe at any time, also
        inside a ``peer_check``.
        """
        self._ssl = context

    async def __aenter__(self) -> GatewayClient:
        if self._peer_check is None:
            self._session = self._new_session(aiohttp.TCPConnector(ssl=self._ssl))
            return self
        self._session = self._new_session(
            _PinnedConnector(ssl_context=self._ssl, check=self._peer_check)
        )
        self._courier = self._new_session(aiohttp.TCPConnector(ssl=self._ssl))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for session in (self._session, self._courier):
            if session is not None:
                await session.close()
        self._session = self._courier = None

    # -- transport -------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        payload: Any = None,
        content_type: str | None = None,
        params: dict[str, str] | None = None,
        pinned: bool = True,
    ) -> tuple[int, bytes, str]:
        session = self._session if pinned or self._courier is None else self._courier
        if session is None:
            raise AdapterError("use the client inside 'async with'")
        headers = {"Content-Type": content_type} if content_type else {}
        last: RefusedError | None = None
        for attempt in range(self._attempts):
            try:
                async with session.request(
                    method,
                    self._base + path,
                    data=data,
                    json=payload,
                    headers=headers,
                    params=params,
                    # Per request, so a switched certificate is used from the next request on:
                    # the pool keys connections by this context.
                    ssl=self._ssl,
                ) as response:
                    body = await response.read()
                    if response.status < 400:
                        return response.status, body, response.content_type
                    last = self._refusal(response.status, body, response.headers)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if attempt == self._attempts - 1:
                    raise GatewayUnreachableError(f"gateway unreachable: {exc}") from exc
                await asyncio.sleep(min(MAX_BACKOFF_S, self._backoff * 2**attempt))
                continue
            if not last.transient or attempt == self._attempts - 1:
                raise last
            delay = min(MAX_BACKOFF_S, self._backoff * 2**attempt)
            await asyncio.sleep(max(delay, min(MAX_BACKOFF_S, last.retry_after or 0.0)))
        raise AdapterError("unreachable")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _refusal(status: int, body: bytes, headers: Any) -> RefusedError:
        retry_after: float | None = None
        raw_retry = headers.get("Retry-After")
        if raw_retry is not None and raw_retry.isdigit():
            retry_after = float(raw_retry)
        reason: Reason | None = None
        detail = ""
        try:
            doc = json.loads(body)
            if isinstance(doc, dict):
                detail = str(doc.get("detail", doc.get("title", "")))
                if "reason" in doc:
                    reason = Reason(doc["reason"])
        except ValueError:
            detail = body[:200].decode("utf-8", "replace")
        return RefusedError(status, reason, detail, retry_after)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        _status, body, _ctype = await self._request(method, path, **kwargs)
        return json.loads(body)

    # -- API -------------------------------------------------------------------------------

    async def submit(self, envelope: bytes) -> SubmitReceipt:
        """POST /v1/messages; the signed acceptance receipt bytes (msgpack SignedObject)."""
        doc = await self._json(
            "POST", "/v1/messages", data=envelope, content_type=ENVELOPE_CONTENT_TYPE
        )
        return SubmitReceipt(
            doc["message_id"], _unb64(doc["receipt"]), doc["leaf_index"], doc["first_time"]
        )

    async def inbox(self, *, wait_s: float = 0.0, limit: int = 100) -> InboxBatch:
        doc = await self._json(
            "GET", "/v1/inbox", params={"wait": str(wait_s), "limit": str(limit)}
        )
        return InboxBatch(
            [
                InboxDelivery(
                    d["message_id"],
                    d["sender"],
                    _unb64(d["envelope"]),
                    d["lease_until"],
                    d["attempts"],
                    d["accepted_at"],
                    _receipt_bytes(d.get("receipt")),
                )
                for d in doc["deliveries"]
            ],
            [
                InboxEvent(
                    e["event_id"], e["message_id"], e["kind"], _unb64(e["event"]), e["created_at"]
                )
                for e in doc["events"]
            ],
        )

    async def send_receipts(
        self,
        receipts: Sequence[bytes] = (),
        rejections: Sequence[bytes] = (),
        acks: Sequence[int] = (),
    ) -> dict[str, int]:
        """POST /v1/receipts: signed receipts/rejections (msgpack SignedObjects), event acks."""
        doc: dict[str, int] = await self._json(
            "POST",
            "/v1/receipts",
            payload={
                "receipts": [base64.b64encode(r).decode() for r in receipts],
                "rejections": [base64.b64encode(r).decode() for r in rejections],
                "acks": list(acks),
            },
        )
        return doc

    async def message_status(self, message_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json("GET", f"/v1/messages/{message_id}")
        return doc

    async def register_token(self, signed_token: bytes) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json(
            "POST", "/v1/approaches", data=signed_token, content_type=TOKEN_CONTENT_TYPE
        )
        return doc

    async def revoke_token(self, token_id: str, signed_revocation: bytes) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json(
            "POST",
            f"/v1/approaches/{token_id}/revocation",
            data=signed_revocation,
            content_type=REVOCATION_CONTENT_TYPE,
        )
        return doc

    async def approach(self, token_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json("GET", f"/v1/approaches/{token_id}")
        return doc

    async def directory_bundle(self) -> bytes:
        """GET /v1/directory: the bundle JSON (``keys.signed_directory.decode_bundle``).

        Over the unpinned session: the caller verifies the bundle itself, and this is how a
        rotated gateway ``tls`` key reaches a partner whose pin no longer matches."""
        _status, body, _ctype = await self._request("GET", "/v1/directory", pinned=False)
        return body

    async def checkpoint(self) -> str:
        _status, body, _ctype = await self._request("GET", "/v1/audit/checkpoint")
        return body.decode("utf-8")

    async def inclusion_proof(self, index: int, size: int | None = None) -> dict[str, Any]:
        params = {"index": str(index)} | ({"size": str(size)} if size is not None else {})
        doc: dict[str, Any] = await self._json("GET", "/v1/audit/proof", params=params)
        return doc

    async def consistency_proof(self, old_size: int, new_size: int) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json(
            "GET", "/v1/audit/proof", params={"from": str(old_size), "to": str(new_size)}
        )
        return doc

    async def submit_key_revocation(self, statement: bytes) -> dict[str, Any]:
        """POST /v1/keys/revocations: a partner's own key revocation statement, as
        ``ketenpost keys revoke --self`` writes it (``keys.revocation.encode_revocation``).
        The recorded revocation (the same document again for a statement recorded before)."""
        doc: dict[str, Any] = await self._json(
            "POST", "/v1/keys/revocations", data=statement, content_type="application/json"
        )
        return doc

    async def key_revocations(self) -> list[dict[str, Any]]:
        """GET /v1/keys/revocations: every statement the gateway recorded. Verify each one
        yourself (``keys.revocation.verify_revocation`` of its ``statement``) before acting."""
        doc: dict[str, Any] = await self._json("GET", "/v1/keys/revocations")
        revocations: list[dict[str, Any]] = doc["revocations"]
        return revocations
