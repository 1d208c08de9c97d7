"""Checking a partner adapter's ``[system]`` table (private to ``adapters.partners``).

Every transport validates its own ``[system]`` table when it is created; these helpers keep
the errors alike across partners:

* every problem is one ``AdapterConfigError`` whose message is one line:
  ``<partner folder>/adapter.toml: [system] <key>: <what is wrong>``, so an operator finds the
  file and the key without reading a traceback;
* an unknown key is an error, never ignored: a misspelt key would otherwise silently fall back
  to its default.

What a key means, and its limits, stay in the partner's module; only the checking is here.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Final, TypeVar

import msgspec
import yarl

from adapters.config import AdapterConfig
from adapters.errors import AdapterConfigError

_S = TypeVar("_S", bound=msgspec.Struct)
# msgspec's messages for a bad and an unknown field, rewritten to name the key the way an
# operator wrote it (``key``, not ``$.key``).
_AT_PATH: Final = re.compile(r"^(?P<msg>.*) - at `\$\.(?P<key>[A-Za-z0-9_]+)`$")
_UNKNOWN: Final = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`$")


def where(config: AdapterConfig) -> str:
    """``<partner folder>/adapter.toml: [system]``, the prefix of every message here."""
    return f"{Path(config.base) / 'adapter.toml'}: [system]"


def config_error(config: AdapterConfig, key: str, why: str) -> AdapterConfigError:
    """The one-line error naming ``key`` (returned, for the caller to raise)."""
    return AdapterConfigError(f"{where(config)} {key}: {why}")


def check_keys(
    config: AdapterConfig,
    known: Collection[str],
    transport: str,
    *,
    unknown_why: str = "unknown key",
) -> None:
    """Raise for the first unknown key (in sorted order, so the message does not depend on
    the order of the table) and for a ``transport`` other than ``transport``."""
    unknown = sorted(set(config.system) - set(known))
    if unknown:
        raise config_error(config, unknown[0], unknown_why)
    if config.system.get("transport") != transport:
        raise config_error(config, "transport", f'must be "{transport}"')


def struct_settings(config: AdapterConfig, struct: type[_S]) -> _S:
    """``config.system`` as ``struct`` (a frozen ``msgspec.Struct`` that forbids unknown
    fields, its limits as ``Meta``); ``AdapterConfigError`` with one line naming the key."""
    try:
        return msgspec.convert(config.system, struct)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if m := _UNKNOWN.match(text):
            raise config_error(config, m["key"], "unknown setting") from None
        if m := _AT_PATH.match(text):
            raise config_error(config, m["key"], m["msg"]) from None
        raise AdapterConfigError(f"{where(config)} {text}") from None


def distinct_folders(config: AdapterConfig, folders: Mapping[str, str]) -> dict[str, Path]:
    """Resolve ``folders`` (setting → path relative to the partner folder); raise if two
    settings name the same folder (the adapter would read back what it wrote)."""
    resolved: dict[str, Path] = {}
    seen: dict[Path, str] = {}
    for key, relative in folders.items():
        path = config.path(relative).resolve()
        if path in seen:
            raise config_error(config, key, f"the same folder as {seen[path]}")
        seen[path] = key
        resolved[key] = path
    return resolved


def http_url(config: AdapterConfig, key: str, value: object, *, query: bool = True) -> str:
    """``value`` if it is an http(s) URL with a host (and, with ``query=False``, without a
    query string, for a base URL that paths are appended to)."""
    if not isinstance(value, str) or not value:
        raise config_error(config, key, "is missing (an http(s) URL)")
    url = yarl.URL(value)
    if url.scheme not in ("http", "https") or not url.host or (not query and url.query_string):
        without = "" if query else " without a query"
        raise config_error(config, key, f"{value!r} is not an http(s) URL{without}")
    return value
