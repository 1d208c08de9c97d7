"""JSON-lines logs: the fixed fields, the allow-list, and the fields that must never appear."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.logs import (
    ALLOWED_FIELDS,
    FIXED_FIELDS,
    JsonLineFormatter,
    JsonLinesHandler,
    configure_logging,
)

PSEUDONYM = "7f3a9c0e5b2d4e6f8a1b3c5d7e9f0a2b"
BODY = '{"type":"signal","subjects":["7f3a..."],"text":"Jan woont op de Dorpsstraat 1"}'
PASSPHRASE = "correct horse battery staple"
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def record(
    msg: object = "message_accepted",
    *,
    name: str = "ketenpost.relay",
    level: int = logging.INFO,
    args: tuple[object, ...] = (),
    extra: dict[str, Any] | None = None,
    created: float = 1_700_000_000.25,
    exc_info: Any = None,
) -> logging.LogRecord:
    logger = logging.getLogger(name)
    made = logger.makeRecord(name, level, "relay.py", 1, msg, args, exc_info, extra=extra)
    made.created = created
    return made


def line(formatter: JsonLineFormatter, made: logging.LogRecord) -> dict[str, Any]:
    text = formatter.format(made)
    assert "\n" not in text
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_fixed_fields_first_then_allowed_fields_in_name_order() -> None:
    formatter = JsonLineFormatter()
    extra = {"recipient": "halt", "partner": "politie-ijmond", "duration_ms": 3.5, "count": 2}

    out = line(formatter, record(extra=extra))

    assert list(out)[:4] == list(FIXED_FIELDS)
    assert out["ts"] == "2023-11-14T22:13:20.250Z"
    assert RFC3339_UTC.fullmatch(out["ts"])
    assert out["level"] == "info"
    assert out["event"] == "message_accepted"
    assert out["logger"] == "ketenpost.relay"
    assert list(out)[4:] == ["count", "duration_ms", "partner", "recipient"]
    assert out["partner"] == "politie-ijmond"
    assert "dropped_fields" not in out
    assert formatter.dropped == 0


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warning"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "critical"),
    ],
)
def test_level_names(level: int, name: str) -> None:
    assert line(JsonLineFormatter(), record(level=level))["level"] == name


def test_message_and_trace_ids_are_allowed() -> None:
    message_id = "ab" * 32
    extra = {"message_id": message_id, "trace_id": "0af7651916cd43dd8448eb211c80319c"}
    out = line(JsonLineFormatter(), record(extra=extra))
    assert out["message_id"] == message_id
    assert out["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


FORBIDDEN = [
    pytest.param({"subject": PSEUDONYM}, id="subject"),
    pytest.param({"subjects": [PSEUDONYM]}, id="subjects"),
    pytest.param({"subject_pseudonym": PSEUDONYM}, id="subject-pseudonym"),
    pytest.param({"body": BODY}, id="body"),
    pytest.param({"body_json": BODY}, id="body-json"),
    pytest.param({"plaintext": BODY}, id="plaintext"),
    pytest.param({"secret": PASSPHRASE}, id="secret"),
    pytest.param({"passphrase": PASSPHRASE}, id="passphrase"),
    pytest.param({"key_passphrase": PASSPHRASE}, id="key-passphrase"),
    pytest.param({"password": PASSPHRASE}, id="password"),
    pytest.param({"DB_PASSWORD": PASSPHRASE}, id="password-upper"),
    pytest.param({"private_key": PASSPHRASE}, id="private-key"),
    pytest.param({"token_id": PSEUDONYM}, id="token-id-not-on-list"),
    pytest.param({"header": BODY}, id="unknown"),
]


@pytest.mark.parametrize("extra", FORBIDDEN)
def test_forbidden_and_unknown_fields_never_appear(extra: dict[str, Any]) -> None:
    drops: list[None] = []
    formatter = JsonLineFormatter(on_drop=lambda: drops.append(None))

    text = formatter.format(record(extra={"partner": "halt", **extra}))

    for value in (PSEUDONYM, BODY, PASSPHRASE, "Dorpsstraat"):
        assert value not in text
    for name in extra:
        assert name not in text
    out = json.loads(text)
    assert out["partner"] == "halt"
    assert out["dropped_fields"] == 1
    assert formatter.dropped == 1
    assert len(drops) == 1


@pytest.mark.parametrize("name", ["subject", "body", "secret", "passphrase", "password"])
def test_forbidden_fields_cannot_be_allowed(name: str) -> None:
    with pytest.raises(ValueError, match="may not be allowed"):
        JsonLineFormatter(extra_fields=[name])
    with pytest.raises(ValueError, match="may not be allowed"):
        JsonLineFormatter(static_fields={name: "x"})


def test_extra_fields_extend_the_allow_list() -> None:
    out = line(JsonLineFormatter(extra_fields=["listen"]), record(extra={"listen": "[::1]:8443"}))
    assert out["listen"] == "[::1]:8443"


class Revealing:
    """An object whose str() would show what it holds."""

    def __str__(self) -> str:
        return BODY


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(Revealing(), id="object"),
        pytest.param({"nested": BODY}, id="dict"),
        pytest.param([Revealing()], id="list-of-objects"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(b"Dorpsstraat", id="bytes"),
    ],
)
def test_values_that_are_not_plain_json_are_dropped(value: object) -> None:
    formatter = JsonLineFormatter()
    text = formatter.format(record(extra={"reason": value}))
    assert "Dorpsstraat" not in text
    assert json.loads(text)["dropped_fields"] == 1


def test_values_are_plain_and_short() -> None:
    extra = {
        "recipient": ("halt", "om"),
        "status": 202,
        "error": ValueError("store busy"),
        "reason": "x" * 5000,
        "type": None,
    }
    out = line(JsonLineFormatter(), record(extra=extra))
    assert out["recipient"] == ["halt", "om"]
    assert out["status"] == 202
    assert out["error"] == "ValueError: store busy"
    assert len(out["reason"]) == 1000
    assert out["type"] is None


def test_own_loggers_must_log_an_event_name_not_text() -> None:
    formatter = JsonLineFormatter()
    made = record("accepted message about %s", args=(PSEUDONYM,), name="gateway.relay")

    text = formatter.format(made)

    assert PSEUDONYM not in text
    assert "accepted message" not in text
    out = json.loads(text)
    assert out["event"] == "malformed_event"
    assert out["dropped_fields"] == 1
    assert "message" not in out


def test_library_text_is_kept_short() -> None:
    made = record("Error handling request from %s", args=("127.0.0.1",), name="aiohttp.server")
    out = line(JsonLineFormatter(), made)
    assert out["event"] == "library_log"
    assert out["message"] == "Error handling request from 127.0.0.1"


def test_exception_is_logged_as_error_and_traceback() -> None:
    try:
        raise RuntimeError("store unavailable")
    except RuntimeError:
        made = record("store_failed", level=logging.ERROR, exc_info=sys.exc_info())
    out = line(JsonLineFormatter(), made)
    assert out["error"] == "RuntimeError: store unavailable"
    assert out["traceback"].startswith("Traceback (most recent call last):")
    assert out["traceback"].rstrip().endswith("RuntimeError: store unavailable")


def test_output_is_one_ascii_line_whatever_the_input() -> None:
    made = record("Line one\nline two \u2603", name="asyncio", extra={"reason": "a\nb"})
    text = JsonLineFormatter().format(made)
    assert "\n" not in text
    assert text.isascii()
    assert json.loads(text)["message"] == "Line one\nline two \u2603"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (configure_logging changes it)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_configure_logging_writes_json_lines(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    first = configure_logging("debug", io.StringIO())
    formatter = configure_logging("warning", stream, static_fields={"replica": "gw-1"})

    log = logging.getLogger("ketenpost.test")
    log.info("not_shown")
    log.warning("directory_expiring", extra={"reason": "directory_expired", "subject": PSEUDONYM})
    logging.getLogger("aiohttp.access").error("GET /v1/inbox 200")

    assert [type(h) for h in root_logger.handlers].count(JsonLinesHandler) == 1
    assert root_logger.level == logging.WARNING
    assert formatter is not first
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [entry["event"] for entry in lines] == ["directory_expiring", "library_log"]
    assert lines[0]["replica"] == "gw-1"
    assert lines[0]["reason"] == "directory_expired"
    assert PSEUDONYM not in stream.getvalue()
    assert formatter.dropped == 1


def test_configure_logging_checks_static_fields(root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="not on the allow-list"):
        configure_logging("info", io.StringIO(), static_fields={"hostname": "gw-1"})


def test_allow_list_has_no_forbidden_name() -> None:
    for name in ALLOWED_FIELDS:
        formatter = JsonLineFormatter()
        assert name in line(formatter, record(extra={name: "x"})), name


def test_the_allow_list() -> None:
    # Listed here so that a field is allowed on purpose, never by accident.
    assert sorted(ALLOWED_FIELDS) == [
        "address",
        "count",
        "duration_ms",
        "error",
        "message_id",
        "method",
        "partner",
        "reason",
        "recipient",
        "replica",
        "root_version",
        "route",
        "sender",
        "status",
        "trace_id",
        "type",
        "version",
    ]


def test_directory_published_keeps_the_root_version() -> None:
    made = record(
        "directory_published", name="gateway.server", extra={"version": 7, "root_version": 2}
    )
    out = line(JsonLineFormatter(), made)
    assert (out["version"], out["root_version"]) == (7, 2)
    assert "dropped_fields" not in out


def test_configure_logging_checks_extra_fields(root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="may not be allowed"):
        configure_logging("info", io.StringIO(), extra_fields=["subject_hint"])


# -- the adapter's logs (``ketenpost adapter run``) ------------------------------------------


def test_adapter_logs_its_fields_as_json_lines(root_logger: logging.Logger) -> None:
    from adapters.cli import ADAPTER_LOG_FIELDS, configure_adapter_logging

    kid = "c0ffee" * 10 + "abcd"
    stream = io.StringIO()
    formatter = configure_adapter_logging(stream)
    engine = logging.getLogger("adapters.engine")
    # The engine's own lines, with the fields it gives them.
    engine.info(
        "tls_key_in_use",
        extra={
            "kid": kid,
            "generation": 2,
            "certificate": "/srv/halt/keys/tls-2.crt",
            "not_after": 1_790_000_000,
            "switched": True,
        },
    )
    engine.warning(
        "tls_key_skipped",
        extra={
            "generation": 3,
            "certificate": "/srv/halt/keys/tls-3.crt",
            "reason": "no_certificate",
            "detail": "/srv/halt/keys/tls-3.crt does not exist",
        },
    )
    # A token id is not for the logs, nor is free text from our own loggers.
    logging.getLogger("adapters.partners.zgw").info("token_revoked", extra={"token_id": PSEUDONYM})
    engine.info("not_an_event %s", PSEUDONYM)

    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [entry["event"] for entry in lines] == [
        "tls_key_in_use",
        "tls_key_skipped",
        "token_revoked",
        "malformed_event",
    ]
    in_use, skipped, revoked, malformed = lines
    assert list(in_use)[:4] == list(FIXED_FIELDS)
    assert in_use["level"] == "info"
    assert in_use["logger"] == "adapters.engine"
    assert in_use["kid"] == kid
    assert (in_use["generation"], in_use["not_after"], in_use["switched"]) == (
        2,
        1_790_000_000,
        True,
    )
    assert "dropped_fields" not in in_use
    assert skipped["reason"] == "no_certificate"
    assert skipped["detail"] == "/srv/halt/keys/tls-3.crt does not exist"
    assert "dropped_fields" not in skipped
    assert revoked["dropped_fields"] == 1
    assert malformed["dropped_fields"] == 1
    assert PSEUDONYM not in stream.getvalue()
    assert formatter.dropped == 2
    assert not ADAPTER_LOG_FIELDS & set(FIXED_FIELDS)
