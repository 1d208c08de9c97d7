"""A small client of the ZGW Zaken API (1.5) and Documenten API (1.4): the operations the
``zgw`` transport uses, and nothing else.

Rules kept here:

* Every request carries a fresh ZGW JWT: HS256 over ``{iss, iat, client_id, user_id,
  user_representation}``, signed with the application's secret as the Autorisaties API
  registered it (VNG "ZGW authenticatie"). The secret comes from a file, never from the
  config itself; the time comes from the injected clock.
* Zaken resources that carry geometry (``/zaken``) get ``Accept-Crs``/``Content-Crs:
  EPSG:4326``, which the standard requires (412 without).
* Lists are followed page by page through ``next`` (the ``{count, next, previous, results}``
  shape); lists the standard leaves unpaginated (``zaakinformatieobjecten``,
  ``zaakeigenschappen``) are plain arrays. ``next`` must stay on the configured API's origin:
  the bearer token is never sent to a host the configuration did not name.
* Failures become one of two errors: ``ZgwUnavailableError`` (connection error, timeout,
  429, 5xx — try again later) and ``ZgwRefusedError`` (any other 4xx, carrying the status
  and the ``Fout``/``ValidatieFout`` document's code and invalid params, never a body that
  could hold personal data beyond the API's own message).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import jwt

from adapters.base import Clock
from adapters.errors import AdapterError

CRS: Final = "EPSG:4326"
JWT_ALGORITHM: Final = "HS256"
# A list longer than this many pages is a runaway (a server that links to itself).
MAX_PAGES: Final = 1000
TIMEOUT_S: Final = 30.0


class ZgwError(AdapterError):
    """Base of the ZGW client's errors."""


class ZgwUnavailableError(ZgwError):
    """The ZGW API cannot be reached or answered 429/5xx: try again later."""


class ZgwRefusedError(ZgwError):
    """The ZGW API refused the request (a 4xx other than 429)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ZgwCredentials:
    """The application's ZGW identity (Autorisaties API ``applicatie``)."""

    client_id: str
    secret: bytes
    user_id: str
    user_representation: str


def zgw_jwt(credentials: ZgwCredentials, now: int) -> str:
    """A ZGW JWT for one request (HS256; ``iss`` and ``client_id`` name the application)."""
    claims = {
        "iss": credentials.client_id,
        "iat": now,
        "client_id": credentials.client_id,
        "user_id": credentials.user_id,
        "user_representation": credentials.user_representation,
    }
    return jwt.encode(claims, credentials.secret, algorithm=JWT_ALGORITHM)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class ZgwClient:
    """``async with ZgwClient(...)``: the Zaken and Documenten APIs at two base URLs."""

    def __init__(
        self,
        zaken_api: str,
        documenten_api: str,
        credentials: ZgwCredentials,
        clock: Clock,
        *,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.zaken_api = zaken_api.rstrip("/")
        self.documenten_api = documenten_api.rstrip("/")
        self._credentials = credentials
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ZgwClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _allowed(self, url: str) -> bool:
        origin = _origin(url)
        return origin in (_origin(self.zaken_api), _origin(self.documenten_api))

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        crs: bool = False,
    ) -> Any:
        """One request; the decoded JSON answer (``None`` for an empty one). Raises
        ``ZgwUnavailableError`` or ``ZgwRefusedError``."""
        if self._session is None:
            raise ZgwError("the ZGW client is not open")
        if not self._allowed(url):
            raise ZgwError(f"refusing to send credentials to {url!r}: not a configured ZGW API")
        headers = {
            "Authorization": f"Bearer {zgw_jwt(self._credentials, self._clock.now())}",
            "Accept": "application/json",
        }
        if crs:
            headers["Accept-Crs"] = CRS
            headers["Content-Crs"] = CRS
        try:
            async with self._session.request(
                method, url, params=params, json=body, headers=headers
            ) as response:
                data = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ZgwUnavailableError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if status == 429 or status >= 500:
            raise ZgwUnavailableError(f"{method} {url}: HTTP {status}")
        if status >= 400:
            raise _refused(status, data)
        if not data:
            return None
        try:
            return _json(data)
        except ValueError as exc:
            raise ZgwUnavailableError(f"{method} {url}: the answer is not JSON: {exc}") from None

    async def paginated(
        self, url: str, params: Mapping[str, str], *, crs: bool = False
    ) -> list[Any]:
        """Every ``results`` item of a paginated list, following ``next``."""
        items: list[Any] = []
        page: Any = await self.request("GET", url, params=params, crs=crs)
        for _ in range(MAX_PAGES):
            if not isinstance(page, dict) or not isinstance(page.get("results"), list):
                raise ZgwUnavailableError(f"GET {url}: not a paginated list")
            items.extend(page["results"])
            following = page.get("next")
            if not following:
                return items
            page = await self.request("GET", str(following), crs=crs)
        raise ZgwUnavailableError(f"GET {url}: more than {MAX_PAGES} pages")

    # -- Zaken API ---------------------------------------------------------------------

    async def zaken(self, zaaktype: str) -> list[dict[str, Any]]:
        return await self.paginated(f"{self.zaken_api}/zaken", {"zaaktype": zaaktype}, crs=True)

    async def zaak(self, url: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request("GET", url, crs=True)
        return doc

    async def create_zaak(self, body: Mapping[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request(
            "POST", f"{self.zaken_api}/zaken", body=dict(body), crs=True
        )
        return doc

    async def patch_zaak(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request("PATCH", url, body=dict(body), crs=True)
        return doc

    async def statussen(self, zaak: str) -> list[dict[str, Any]]:
        return await self.paginated(f"{self.zaken_api}/statussen", {"zaak": zaak})

    async def rollen(self, zaak: str) -> list[dict[str, Any]]:
        return await self.paginated(f"{self.zaken_api}/rollen", {"zaak": zaak})

    async def zaakeigenschappen(self, zaak: str) -> list[dict[str, Any]]:
        uuid = zaak.rstrip("/").rsplit("/", 1)[-1]
        doc = await self.request("GET", f"{self.zaken_api}/zaken/{uuid}/zaakeigenschappen")
        if not isinstance(doc, list):
            raise ZgwUnavailableError("zaakeigenschappen: not a list")
        return doc

    async def zaakinformatieobjecten(
        self, zaak: str, informatieobject: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"zaak": zaak}
        if informatieobject is not None:
            params["informatieobject"] = informatieobject
        doc = await self.request("GET", f"{self.zaken_api}/zaakinformatieobjecten", params=params)
        if not isinstance(doc, list):
            raise ZgwUnavailableError("zaakinformatieobjecten: not a list")
        return doc

    async def relate(self, zaak: str, informatieobject: str, titel: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request(
            "POST",
            f"{self.zaken_api}/zaakinformatieobjecten",
            body={"zaak": zaak, "informatieobject": informatieobject, "titel": titel},
        )
        return doc

    # -- Documenten API ----------------------------------------------------------------

    async def informatieobjecten(
        self, identificatie: str, bronorganisatie: str
    ) -> list[dict[str, Any]]:
        return await self.paginated(
            f"{self.documenten_api}/enkelvoudiginformatieobjecten",
            {"identificatie": identificatie, "bronorganisatie": bronorganisatie},
        )

    async def create_informatieobject(
        self, body: Mapping[str, Any], content: bytes
    ) -> dict[str, Any]:
        payload = {**body, "inhoud": base64.b64encode(content).decode("ascii")}
        payload["bestandsomvang"] = len(content)
        doc: dict[str, Any] = await self.request(
            "POST", f"{self.documenten_api}/enkelvoudiginformatieobjecten", body=payload
        )
        return doc


def _json(data: bytes) -> Any:
    return json.loads(data)


def _refused(status: int, data: bytes) -> ZgwRefusedError:
    code, detail = "", ""
    try:
        doc = _json(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        code = str(doc.get("code", ""))
        detail = str(doc.get("detail", ""))[:300]
        params = doc.get("invalidParams")
        if isinstance(params, list):
            named = [f"{p.get('name')}: {p.get('code')}" for p in params if isinstance(p, dict)]
            detail = f"{detail} ({'; '.join(named)[:300]})" if named else detail
    return ZgwRefusedError(status, code or "refused", detail)
