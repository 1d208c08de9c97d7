"""JSON-lines logs on stdout: fixed fields, an allow-list for the rest, never a subject or secret.

Rules kept here:

* One JSON object per line with the fixed fields ``ts`` (RFC 3339, UTC, milliseconds),
  ``level``, ``event`` and ``logger``, then allowed extra fields in name order. Code logs with
  the standard library: ``logger.info("message_accepted", extra={"partner": p, ...})``. The
  message is the event: a short ``snake_case`` name, without ``%`` arguments.
* Extra fields must be on the allow-list (``ALLOWED_FIELDS``). Anything else is dropped and
  counted; the line says how many fields were dropped (``dropped_fields``), never their names or
  values, since a key built from data would otherwise leak the data.
* A field whose name contains ``subject``, ``body``, ``secret``, ``passphrase``, ``password``,
  ``plaintext``, ``private`` or ``credential`` is always dropped, even if a caller adds it to the
  allow-list: DESIGN.md says logs carry "never a subject, body or secret". Message ids and trace
  ids are allowed (they link a log line to the audit log and to partners' logs); token ids and
  pseudonyms are not on the list.
* Values are JSON scalars or lists of them; strings are cut at ``MAX_VALUE_CHARS``. Other
  objects are dropped, not ``str()``-ed, because an object's ``str`` may show its contents.
* Our own loggers (``ketenpost``, ``gateway``, ``keys``, ``adapters``) must log an event name;
  free text from them is dropped (event ``malformed_event``), since its ``%`` arguments could be
  anything. Libraries (aiohttp, asyncio) log free text; it is kept in ``message``, cut short.
* An exception is logged as ``error`` (type and message) and ``traceback``.
* Another service adds its own fields with ``extra_fields`` (the adapter: key ids, certificate
  paths, alarm details); the forbidden names stay forbidden there too.
* No global set-up except ``configure_logging``, called once by ``serve`` and by ``adapter
  run``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Final, TextIO

from gateway.config import LogLevel

FIXED_FIELDS: Final = ("ts", "level", "event", "logger")
ALLOWED_FIELDS: Final = frozenset(
    {
        "partner",
        "sender",
        "recipient",
        "type",
        "reason",
        "route",
        "method",
        "status",
        "duration_ms",
        "message_id",
        "trace_id",
        "replica",
        "count",
        "error",
        "address",
        "version",
        # The root version beside the directory version (``directory_published``): a root
        # rotation shows in the logs.
        "root_version",
    }
)
# Checked by substring, so `subject_pseudonym`, `subjects`, `body_hash`, `key_passphrase` and
# `db_password` are caught too.
FORBIDDEN_FIELD_RE: Final = re.compile(
    r"subject|body|secret|passphrase|password|plaintext|private|credential", re.IGNORECASE
)
OWN_LOGGERS: Final = ("ketenpost", "gateway", "keys", "adapters")
MAX_VALUE_CHARS: Final = 1000
MAX_TRACEBACK_CHARS: Final = 8000

_EVENT_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


def _cut(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Unsupported:
    """Marker for a value we will not write."""


_UNSUPPORTED: Final = _Unsupported()


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _UNSUPPORTED
    if isinstance(value, str):
        return _cut(str(value))
    if isinstance(value, BaseException):
        return _cut(_describe_exception(value))
    if isinstance(value, list | tuple | frozenset | set):
        items = [_json_value(item) for item in value]
        if any(isinstance(item, list) or item is _UNSUPPORTED for item in items):
            return _UNSUPPORTED
        return sorted(items, key=str) if isinstance(value, frozenset | set) else items
    return _UNSUPPORTED


def _describe_exception(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON line (see the module docstring for the rules).

    ``dropped`` counts the fields dropped so far; ``on_drop``, if given, is called once per
    dropped field (``GatewayMetrics.log_field_dropped``).
    """

    def __init__(
        self,
        *,
        extra_fields: Iterable[str] = (),
        static_fields: Mapping[str, str | int] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        extra = frozenset(extra_fields)
        static = dict(static_fields or {})
        for name in extra | static.keys():
            if FORBIDDEN_FIELD_RE.search(name) or name in FIXED_FIELDS:
                raise ValueError(f"log field {name!r} may not be allowed")
        self._allowed = ALLOWED_FIELDS | extra
        unknown = static.keys() - self._allowed
        if unknown:
            raise ValueError(f"static log fields not on the allow-list: {sorted(unknown)}")
        self._static = static
        self._on_drop = on_drop
        self.dropped = 0

    def format(self, record: logging.LogRecord) -> str:
        dropped = 0
        event, text = self._event(record)
        if event == "malformed_event":
            dropped += 1
        line: dict[str, object] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "event": event,
            "logger": record.name,
        }
        fields: dict[str, object] = dict(self._static)
        for name, value in record.__dict__.items():
            if name in _RECORD_ATTRIBUTES:
                continue
            plain = _json_value(value)
            if (
                name not in self._allowed
                or FORBIDDEN_FIELD_RE.search(name)
                or plain is _UNSUPPORTED
            ):
                dropped += 1
                continue
            fields[name] = plain
        line.update(sorted(fields.items()))
        if text is not None:
            line["message"] = text
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line.setdefault("error", _cut(_describe_exception(exc)))
            formatted = "".join(traceback.format_exception(exc))
            line["traceback"] = _cut(formatted, MAX_TRACEBACK_CHARS)
        if dropped:
            line["dropped_fields"] = dropped
            self.dropped += dropped
            if self._on_drop is not None:
                for _ in range(dropped):
                    self._on_drop()
        # ensure_ascii: one line of 7-bit text whatever a library put in a message.
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"), allow_nan=False)

    def _event(self, record: logging.LogRecord) -> tuple[str, str | None]:
        msg = record.msg
        if isinstance(msg, str) and not record.args and _EVENT_RE.fullmatch(msg):
            return msg, None
        if _is_own(record.name):
            return "malformed_event", None
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            # A library's broken %-format: keep the template, not the arguments.
            text = str(msg)
        return "library_log", _cut(text)


def _is_own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


def _rfc3339(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """The handler ``configure_logging`` installs; recognised (and replaced) when called again."""


def configure_logging(
    level: LogLevel | str,
    stream: TextIO | None = None,
    *,
    extra_fields: Iterable[str] = (),
    static_fields: Mapping[str, str | int] | None = None,
    on_drop: Callable[[], None] | None = None,
) -> JsonLineFormatter:
    """Send every log record (ours and the libraries') as JSON lines to ``stream`` (stdout).

    The one global change this module makes: the root logger gets one ``JsonLinesHandler``
    (replacing one installed earlier) and ``level``. ``extra_fields`` extend the allow-list
    (``ValueError`` for a forbidden or fixed name); ``static_fields`` go on every line (e.g.
    ``{"replica": "gw-1"}``; they must be on the allow-list). Returns the formatter, whose
    ``dropped`` counts dropped fields.
    """
    numeric = logging.getLevelNamesMapping()[LogLevel(str(level).lower()).value.upper()]
    formatter = JsonLineFormatter(
        extra_fields=extra_fields, static_fields=static_fields, on_drop=on_drop
    )
    handler = JsonLinesHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, JsonLinesHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return formatter
