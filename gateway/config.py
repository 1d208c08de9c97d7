"""The gateway configuration: one TOML file, parsed once into one frozen, typed object.

Rules kept here:

* One object, ``GatewayConfig``, built by ``load_config`` and passed to whatever needs it; there
  is no global configuration (python-tuf's ``ngclient/config.py``). Its sections are frozen
  dataclasses; limits carry their unit in the name (``max_envelope_bytes``, ``lease_s``).
* Every key has one definition: its field in a section class, whose metadata holds the parser
  and the comment that ``write_default_config`` writes above it. Loading, environment
  overrides, ``render_config`` and the default file all read that one table.
* Sources, strongest first: command-line flags (``apply_cli_overrides``; only ``--listen``,
  ``--metrics-listen`` and ``--store``), then ``KETENPOST_<SECTION>__<KEY>`` environment
  variables (lists comma-separated; an empty variable counts as unset), then the TOML file,
  then the defaults. A secret (``tls.key_passphrase``, ``keys.passphrase``, ``store.password``)
  may also come from a file: ``<key>_file`` in the TOML or ``KETENPOST_<SECTION>__<KEY>_FILE``;
  one trailing newline is stripped. Setting a secret twice at the same level is an error.
* Relative paths in the file and in the environment resolve against the config file's folder,
  so a deployment folder can be moved as a whole; command-line paths resolve against the
  working directory, as on any command line.
* A SQLite store URL is ``sqlite://`` followed by an absolute path (``sqlite:///var/lib/k.db``,
  as ``file:///``), or ``sqlite:RELATIVE/PATH``; it is normalised to the absolute form. A
  PostgreSQL URL is ``postgresql://…`` and must not hold a password: that is ``store.password``.
* Anything wrong raises ``ConfigError`` with one line, ``"<key>: <problem>"``. A rejected value
  is quoted only when its key is not secret. Unknown keys and sections are errors (a typo must
  not silently fall back to a default); unknown ``KETENPOST_*__*`` variables of a known
  section are errors for the same reason.
* Files the gateway reads at start-up (certificate, key, trust anchors, signing key, directory
  bundle and trusted root) must exist when the configuration is loaded, so ``config check``
  finds a broken deployment before ``serve`` does. Their contents are checked by their users.
* Secrets are held as ``Secret``, whose ``repr`` and ``str`` are ``<redacted>``, so a config
  object in a log line or a traceback shows none.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hmac
import ipaddress
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from gateway.errors import ConfigError, GatewayReason

_T = TypeVar("_T")

ENV_PREFIX: Final = "KETENPOST_"
REDACTED: Final = "<redacted>"
# Suffix of the keys and variables that name a file holding a secret.
SECRET_FILE_SUFFIX: Final = "_file"
DEFAULT_ORIGIN: Final = "ketenpost.example/ijmond/audit"

_PARTNER_ID_RE: Final = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_HOSTNAME_RE: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# C2SP tlog-checkpoint: the origin line should be a schema-less URL with neither spaces nor
# '+'. We also keep it ASCII, so that it reads the same in every log and terminal.
_ORIGIN_RE: Final = re.compile(r"^[\x21-\x2a\x2c-\x7e]{1,255}$")


class Secret:
    """A secret string that does not show itself: ``repr`` and ``str`` are ``<redacted>``.

    ``reveal()`` is the one way to read it, so every use is easy to find.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time: a config comparison should not become a timing oracle by accident.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True, slots=True)
class HostPort:
    """A listening address. Port 0 asks the operating system for a free port (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# --- parsers -------------------------------------------------------------------------------


class _InvalidError(Exception):
    """A value is wrong; the loader adds the key's name and raises ``ConfigError``."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Context:
    base_dir: Path
    # Environment values are always strings and are parsed; TOML values already have types,
    # and a TOML string where a number belongs is refused rather than guessed at.
    from_env: bool


_Parser = Callable[[object, _Context], object]


def _show(raw: object) -> str:
    """A rejected (non-secret) value for an error message: short, quoted, one line."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        text = raw if len(raw) <= 60 else raw[:57] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(raw, int | float):
        return repr(raw)
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, dict):
        return "a table"
    return f"a {type(raw).__name__}"


def _integer(minimum: int, maximum: int | None = None) -> _Parser:
    want = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

    def parse(raw: object, ctx: _Context) -> int:
        value = raw
        if ctx.from_env and isinstance(raw, str):
            try:
                value = int(raw.strip(), 10)
            except ValueError:
                raise _InvalidError(f"expected {want}, got {_show(raw)}") from None
        # bool is an int in Python; `true` for a limit is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _InvalidError(f"expected {want}, got {_show(raw)}")
        if value < minimum or (maximum is not None and value > maximum):
            raise _InvalidError(f"expected {want}, got {_show(raw)}")
        return value

    return parse


def _positive_number(raw: object, ctx: _Context) -> float:
    want = "a number > 0"
    value = raw
    if ctx.from_env and isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise _InvalidError(f"expected {want}, got {_show(raw)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _InvalidError(f"expected {want}, got {_show(raw)}")
    if not math.isfinite(value) or value <= 0:
        raise _InvalidError(f"expected {want}, got {_show(raw)}")
    return float(value)


def _string(raw: object, want: str) -> str:
    if not isinstance(raw, str):
        raise _InvalidError(f"expected {want}, got {_show(raw)}")
    return raw


def _partner_id(raw: object, ctx: _Context) -> str:
    want = "a partner id (lowercase letters, digits and '-', 2-63 long)"
    value = _string(raw, want)
    if not _PARTNER_ID_RE.fullmatch(value):
        raise _InvalidError(f"expected {want}, got {_show(raw)}")
    return value


def _origin(raw: object, ctx: _Context) -> str:
    want = "a checkpoint origin (printable ASCII, no spaces, no '+')"
    value = _string(raw, want)
    if not _ORIGIN_RE.fullmatch(value):
        raise _InvalidError(f"expected {want}, got {_show(raw)}")
    return value


def _host_port(raw: object, ctx: _Context) -> HostPort:
    want = "HOST:PORT (e.g. 127.0.0.1:8443 or [::1]:8443)"
    text = _string(raw, want).strip()
    bracketed = re.fullmatch(r"\[([^\]]+)\]:([0-9]{1,5})", text)
    plain = re.fullmatch(r"([^:\[\]]+):([0-9]{1,5})", text)
    match = bracketed or plain
    if match is None:
        raise _InvalidError(f"expected {want}, got {_show(raw)}")
    host, port = match.group(1), int(match.group(2))
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _InvalidError(f"not an IPv6 address in brackets: {_show(raw)}") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _InvalidError(f"not an IPv4 address: {_show(raw)}") from None
    elif not _HOSTNAME_RE.fullmatch(host):
        raise _InvalidError(f"not a host name: {_show(raw)}")
    if port > 65535:
        raise _InvalidError(f"port must be 0..65535, got {_show(raw)}")
    return HostPort(host, port)


def _resolve(raw: str, ctx: _Context) -> Path:
    # normpath, not resolve(): keep symlinks as the operator wrote them (a mounted secret or a
    # certificate renewed by swapping a link must be read through the link each time).
    return Path(os.path.normpath(ctx.base_dir / raw))


def _path_text(raw: object) -> str:
    value = _string(raw, "a file path")
    if not value.strip():
        raise _InvalidError("expected a file path, got an empty string")
    return value


def _existing_file(raw: object, ctx: _Context) -> Path:
    path = _resolve(_path_text(raw), ctx)
    if not path.exists():
        raise _InvalidError(f"file not found: {path}")
    if not path.is_file():
        raise _InvalidError(f"not a regular file: {path}")
    return path


def _existing_dir(raw: object, ctx: _Context) -> Path:
    path = _resolve(_path_text(raw), ctx)
    if not path.exists():
        raise _InvalidError(f"folder not found: {path}")
    if not path.is_dir():
        raise _InvalidError(f"not a folder: {path}")
    return path


def _existing_files(raw: object, ctx: _Context) -> tuple[Path, ...]:
    if ctx.from_env and isinstance(raw, str):
        items: list[object] = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, list):
        items = list(raw)
    else:
        raise _InvalidError(f"expected a list of file paths, got {_show(raw)}")
    if not items:
        raise _InvalidError("expected at least one file path, got none")
    return tuple(_existing_file(item, ctx) for item in items)


def _log_level(raw: object, ctx: _Context) -> LogLevel:
    want = "one of " + ", ".join(level.value for level in LogLevel)
    value = _string(raw, want)
    try:
        return LogLevel(value.strip().lower())
    except ValueError:
        raise _InvalidError(f"expected {want}, got {_show(raw)}") from None


def _without_userinfo(url: str) -> str:
    """The URL with any user and password removed, for an error message."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _store_url(raw: object, ctx: _Context) -> str:
    want = "a URL sqlite:///PATH, sqlite:RELATIVE/PATH or postgresql://HOST/DB"
    value = _string(raw, want).strip()
    if value.startswith("postgresql://"):
        try:
            parts = urllib.parse.urlsplit(value)
            _ = parts.port  # raises ValueError on a malformed port
        except ValueError:
            raise _InvalidError(f"malformed URL: {_show(_without_userinfo(value))}") from None
        if parts.password is not None:
            # A password in the URL would be shown by `config show` and land in logs; the
            # secret has its own key, which can come from a file.
            raise _InvalidError(
                "the URL must not contain a password; set store.password "
                "or KETENPOST_STORE__PASSWORD_FILE instead"
            )
        return value
    if value.startswith("sqlite:"):
        rest = value.removeprefix("sqlite:")
        if rest.startswith("//"):
            rest = rest[2:]
            if not rest.startswith("/"):
                raise _InvalidError(
                    f"expected sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH, got {_show(value)}"
                )
        if not rest or rest.endswith("/"):
            raise _InvalidError(f"expected a database file path, got {_show(value)}")
        path = _resolve(rest, ctx)
        # The store creates the database file; its folder must already be there.
        if not path.parent.is_dir():
            raise _InvalidError(f"folder not found: {path.parent}")
        return f"sqlite://{path}"
    raise _InvalidError(f"expected {want}, got {_show(_without_userinfo(value))}")


def _secret(raw: object, ctx: _Context) -> Secret:
    # Never quote the value: only its type.
    if not isinstance(raw, str):
        raise _InvalidError(f"expected a string, got a value of type {type(raw).__name__}")
    if not raw:
        raise _InvalidError("expected a non-empty secret")
    return Secret(raw)


def _read_secret_file(raw: object, ctx: _Context) -> Secret:
    path = _existing_file(raw, ctx)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _InvalidError(f"cannot read {path}: {exc}") from None
    # Strip exactly one trailing newline (as written by `echo` or an editor), nothing else: a
    # passphrase may legitimately end in spaces.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise _InvalidError(f"secret file is empty: {path}")
    return Secret(text)


# --- the settings table ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    parse: _Parser
    doc: str
    secret: bool = False
    # A TOML-level default, parsed like a value from the file. Used where the default depends
    # on the config file's folder (the SQLite store).
    raw_default: object = None


def _spec(
    parse: _Parser, doc: str, *, secret: bool = False, raw_default: object = None
) -> dict[str, _Spec]:
    """Field metadata: the key's parser and documentation (the one definition of a key)."""
    return {"spec": _Spec(parse, doc, secret, raw_default)}


# Each field below: its type, its default (none: the key is required), and in its metadata how
# a raw value is parsed and the comment that the default file writes above it.


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    id: str = dataclasses.field(
        default="gateway",
        metadata=_spec(_partner_id, "This gateway's id in the key directory."),
    )
    listen: HostPort = dataclasses.field(
        default=HostPort("127.0.0.1", 8443),
        metadata=_spec(_host_port, "Partner API (HTTPS, client certificates required)."),
    )
    metrics_listen: HostPort = dataclasses.field(
        default=HostPort("127.0.0.1", 9464),
        metadata=_spec(
            _host_port,
            "Operators: /metrics, /healthz, /readyz (plain HTTP; keep it on a private network).",
        ),
    )
    origin: str = dataclasses.field(
        default=DEFAULT_ORIGIN,
        metadata=_spec(
            _origin, "Origin line of the audit log's signed checkpoints; unique per region."
        ),
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    cert: Path = dataclasses.field(
        metadata=_spec(_existing_file, "Server certificate chain (PEM).")
    )
    key: Path = dataclasses.field(metadata=_spec(_existing_file, "Server private key (PEM)."))
    key_passphrase: Secret | None = dataclasses.field(
        default=None,
        metadata=_spec(
            _secret,
            "Passphrase of the server key, if it has one. Prefer key_passphrase_file.",
            secret=True,
        ),
    )
    trust_anchors: tuple[Path, ...] = dataclasses.field(
        metadata=_spec(
            _existing_files,
            "CA certificates (PEM) that partner client certificates must chain to.",
        )
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KeysSettings:
    sign_key: Path = dataclasses.field(
        metadata=_spec(
            _existing_file,
            "The gateway's Ed25519 signing key file (receipts, checkpoints, sender events).",
        )
    )
    passphrase: Secret | None = dataclasses.field(
        default=None,
        metadata=_spec(
            _secret,
            "Passphrase of the signing key file, if it has one. Prefer passphrase_file.",
            secret=True,
        ),
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DirectorySettings:
    bundle: Path = dataclasses.field(
        metadata=_spec(
            _existing_dir, "Folder holding the signed key directory (TUF metadata and targets)."
        )
    )
    trusted_root: Path = dataclasses.field(
        metadata=_spec(
            _existing_file, "The trusted root.json every directory update must chain to."
        )
    )
    refresh_s: int = dataclasses.field(
        default=60,
        metadata=_spec(_integer(1), "How often to reload the directory, in seconds."),
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    url: str = dataclasses.field(
        metadata=_spec(
            _store_url,
            "sqlite:///ABSOLUTE/PATH, sqlite:RELATIVE/PATH (to this file's folder), "
            "or postgresql://USER@HOST:PORT/DB.",
            raw_default="sqlite:ketenpost.db",
        )
    )
    password: Secret | None = dataclasses.field(
        default=None,
        metadata=_spec(
            _secret,
            "PostgreSQL password. Prefer password_file or KETENPOST_STORE__PASSWORD_FILE.",
            secret=True,
        ),
    )

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite store; None for PostgreSQL."""
        if self.url.startswith("sqlite://"):
            return Path(self.url.removeprefix("sqlite://"))
        return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LimitsSettings:
    max_envelope_bytes: int = dataclasses.field(
        default=8 * 1024 * 1024,
        metadata=_spec(_integer(1), "Largest envelope accepted (8 MiB: ordinary PDF reports fit)."),
    )
    max_recipients: int = dataclasses.field(
        default=16, metadata=_spec(_integer(1), "Most recipients per message.")
    )
    rate_per_s: float = dataclasses.field(
        default=100.0,
        metadata=_spec(_positive_number, "Sustained submissions per second per partner."),
    )
    rate_burst: int = dataclasses.field(
        default=200, metadata=_spec(_integer(1), "Token-bucket burst per partner, in submissions.")
    )
    clock_skew_s: int = dataclasses.field(
        default=300,
        metadata=_spec(_integer(0), "How far a sender's created_at may lie in the future."),
    )
    message_lifetime_s: int = dataclasses.field(
        default=30 * 24 * 3600,
        metadata=_spec(_integer(1), "Longest lifetime of a message (expires_at - created_at)."),
    )
    lease_s: int = dataclasses.field(
        default=60,
        metadata=_spec(_integer(1), "How long a delivery is leased before it is delivered again."),
    )
    max_wait_s: int = dataclasses.field(
        default=30, metadata=_spec(_integer(0), "Longest long-poll wait of GET /v1/inbox.")
    )
    max_batch: int = dataclasses.field(
        default=100, metadata=_spec(_integer(1), "Most deliveries returned per inbox poll.")
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: LogLevel = dataclasses.field(
        default=LogLevel.INFO,
        metadata=_spec(_log_level, "debug, info, warning or error (JSON lines on stdout)."),
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The whole configuration. Build it with ``load_config``; pass it, never keep it global."""

    gateway: GatewaySettings
    tls: TlsSettings
    keys: KeysSettings
    directory: DirectorySettings
    store: StoreSettings
    limits: LimitsSettings
    log: LogSettings
    # The file it was loaded from (absolute), or None when built from a mapping.
    source: Path | None = None


# Section name -> section class, in the order the file and `config show` list them.
_SECTIONS: Final[tuple[tuple[str, type[Any]], ...]] = (
    ("gateway", GatewaySettings),
    ("tls", TlsSettings),
    ("keys", KeysSettings),
    ("directory", DirectorySettings),
    ("store", StoreSettings),
    ("limits", LimitsSettings),
    ("log", LogSettings),
)


def _specs(section_cls: type[Any]) -> Iterator[tuple[str, _Spec, dataclasses.Field[Any]]]:
    for field in dataclasses.fields(section_cls):
        yield field.name, field.metadata["spec"], field


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


# --- loading -------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str], check_across: bool = True
) -> GatewayConfig:
    """Read, parse and validate the TOML file at ``path``, with overrides from ``environ``.

    Pass ``os.environ`` from the command line, a plain dict in tests. Raises ``ConfigError``
    (one line naming the key and the problem); never returns a partial configuration.
    ``check_across=False`` leaves the rules between keys to ``apply_cli_overrides``, so a
    command-line flag (``--store``) can settle them.
    """
    file = Path(os.path.abspath(path))
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            str(file), "config file not found", GatewayReason.CONFIG_UNREADABLE
        ) from None
    except OSError as exc:
        raise ConfigError(
            str(file), f"cannot read config file: {exc.strerror}", GatewayReason.CONFIG_UNREADABLE
        ) from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(file), "not UTF-8 text", GatewayReason.CONFIG_UNREADABLE) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            str(file), f"invalid TOML: {exc}", GatewayReason.CONFIG_UNREADABLE
        ) from None
    return parse_config(
        document, base_dir=file.parent, environ=environ, source=file, check_across=check_across
    )


def parse_config(
    document: Mapping[str, Any],
    *,
    base_dir: Path,
    environ: Mapping[str, str],
    source: Path | None = None,
    check_across: bool = True,
) -> GatewayConfig:
    """Build the configuration from an already-parsed TOML document (what ``load_config`` does
    after reading the file). ``base_dir`` anchors relative paths. Raises ``ConfigError``."""
    base_dir = Path(os.path.abspath(base_dir))
    known = dict(_SECTIONS)
    for name, table in document.items():
        if name not in known:
            raise ConfigError(name, f"unknown section [{name}]{_did_you_mean(name, known)}")
        if not isinstance(table, dict):
            raise ConfigError(name, f"expected a table [{name}], got {_show(table)}")
    env = _environment_overrides(environ)

    def section(name: str, cls: type[_T]) -> _T:
        return _build_section(name, cls, document.get(name, {}), env.get(name, {}), base_dir)

    config = GatewayConfig(
        gateway=section("gateway", GatewaySettings),
        tls=section("tls", TlsSettings),
        keys=section("keys", KeysSettings),
        directory=section("directory", DirectorySettings),
        store=section("store", StoreSettings),
        limits=section("limits", LimitsSettings),
        log=section("log", LogSettings),
        source=source,
    )
    if check_across:
        _check_across(config)
    return config


def _did_you_mean(name: str, choices: Sequence[str] | Mapping[str, object]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, tuple[str, str]]]:
    """``KETENPOST_<SECTION>__<KEY>`` variables as section -> key -> (value, variable name).

    Variables without ``__`` or of an unknown section are not ours (adapters and tools share
    the prefix) and are left alone; an unknown key in a known section is a typo and an error.
    """
    allowed = {name: _allowed_keys(cls) for name, cls in _SECTIONS}
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or "__" not in variable:
            continue
        section, _, key = variable.removeprefix(ENV_PREFIX).partition("__")
        section, key = section.lower(), key.lower()
        if section not in allowed:
            continue
        if key not in allowed[section]:
            hint = _did_you_mean(key, sorted(allowed[section]))
            raise ConfigError(variable, f"unknown setting {section}.{key}{hint}")
        if value == "":
            # Compose and Kubernetes turn an unset `${VAR}` into an empty one.
            continue
        found.setdefault(section, {})[key] = (value, variable)
    return found


def _allowed_keys(cls: type[Any]) -> set[str]:
    keys: set[str] = set()
    for key, spec, _ in _specs(cls):
        keys.add(key)
        if spec.secret:
            keys.add(key + SECRET_FILE_SUFFIX)
    return keys


def _build_section(
    section: str,
    cls: type[_T],
    table: Mapping[str, object],
    env: Mapping[str, tuple[str, str]],
    base_dir: Path,
) -> _T:
    allowed = _allowed_keys(cls)
    for key in table:
        if key not in allowed:
            hint = _did_you_mean(key, sorted(allowed))
            raise ConfigError(f"{section}.{key}", f"unknown key{hint}")
    in_file = _Context(base_dir, from_env=False)
    in_env = _Context(base_dir, from_env=True)
    values: dict[str, object] = {}
    for key, spec, field in _specs(cls):
        name = f"{section}.{key}"
        file_key = key + SECRET_FILE_SUFFIX
        # (raw value, parser, context, name for errors) of the strongest source that has it.
        choice: tuple[object, _Parser, _Context, str] | None = None
        if spec.secret and key in env and file_key in env:
            raise ConfigError(name, f"set either {env[key][1]} or {env[file_key][1]}, not both")
        if spec.secret and key in table and file_key in table:
            raise ConfigError(name, f"set either {key} or {file_key}, not both")
        if key in env:
            raw, variable = env[key]
            choice = (raw, spec.parse, in_env, f"{name} (from {variable})")
        elif spec.secret and file_key in env:
            raw, variable = env[file_key]
            choice = (raw, _read_secret_file, in_env, f"{name} (from {variable})")
        elif key in table:
            choice = (table[key], spec.parse, in_file, name)
        elif spec.secret and file_key in table:
            choice = (table[file_key], _read_secret_file, in_file, f"{section}.{file_key}")
        elif spec.raw_default is not None:
            choice = (spec.raw_default, spec.parse, in_file, f"{name} (default)")
        if choice is None:
            if field.default is dataclasses.MISSING:
                hint = f"; set it in [{section}] or as {env_name(section, key)}"
                raise ConfigError(name, f"required{hint}")
            continue
        value, parse, ctx, label = choice
        try:
            values[key] = parse(value, ctx)
        except _InvalidError as exc:
            raise ConfigError(label, str(exc)) from None
    return cls(**values)


def _check_across(config: GatewayConfig) -> None:
    """Rules between keys; each names the key the operator should change."""
    listen, metrics = config.gateway.listen, config.gateway.metrics_listen
    if listen == metrics and listen.port != 0:
        raise ConfigError(
            "gateway.metrics_listen",
            f"must differ from gateway.listen (both are {listen})",
        )
    if config.store.password is not None and config.store.sqlite_path is not None:
        raise ConfigError("store.password", "only used with a postgresql:// store URL")


def apply_cli_overrides(
    config: GatewayConfig,
    *,
    listen: str | None = None,
    metrics_listen: str | None = None,
    store: str | None = None,
    cwd: Path,
) -> GatewayConfig:
    """Return ``config`` with the ``serve`` flags applied (the strongest source).

    Paths given on the command line resolve against ``cwd``. Raises ``ConfigError`` naming the
    flag; ``config`` itself is never changed.
    """
    ctx = _Context(Path(os.path.abspath(cwd)), from_env=True)
    gateway = config.gateway
    store_settings = config.store
    flag = ""
    try:
        if listen is not None:
            flag = "--listen"
            gateway = dataclasses.replace(gateway, listen=_host_port(listen, ctx))
        if metrics_listen is not None:
            flag = "--metrics-listen"
            gateway = dataclasses.replace(gateway, metrics_listen=_host_port(metrics_listen, ctx))
        if store is not None:
            flag = "--store"
            store_settings = dataclasses.replace(store_settings, url=_store_url(store, ctx))
    except _InvalidError as exc:
        raise ConfigError(flag, str(exc)) from None
    result = dataclasses.replace(config, gateway=gateway, store=store_settings)
    _check_across(result)
    return result


# --- rendering -----------------------------------------------------------------------------


def config_to_dict(config: GatewayConfig, *, redact: bool = True) -> dict[str, dict[str, Any]]:
    """The configuration as plain TOML/JSON values, section by section. Unset optional keys are
    left out; secrets are ``"<redacted>"`` unless ``redact`` is False."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in _SECTIONS:
        settings = getattr(config, section)
        table: dict[str, Any] = {}
        for key, _spec, _field in _specs(cls):
            value = getattr(settings, key)
            if value is None:
                continue
            if isinstance(value, Secret):
                table[key] = REDACTED if redact else value.reveal()
            else:
                table[key] = _plain(value)
        out[section] = table
    return out


def render_config(
    config: GatewayConfig, *, redact: bool = True, fmt: Literal["toml", "json"] = "toml"
) -> str:
    """Text for ``ketenpost config show``: TOML that ``load_config`` reads back (with
    ``redact=False``), or JSON. Secrets are ``"<redacted>"`` unless ``redact`` is False."""
    data = config_to_dict(config, redact=redact)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    lines: list[str] = []
    if config.source is not None:
        lines.append(f"# {config.source}" + (" (secrets redacted)" if redact else ""))
    for section, table in data.items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def _plain(value: object) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, HostPort | Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _toml_string(text: str) -> str:
    # TOML basic strings: escape the quote, the backslash and every control character; JSON's
    # escaping is not enough (it leaves DEL raw, and TOML forbids surrogate escapes).
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


# --- the default file ------------------------------------------------------------------------


def write_default_config(
    path: str | os.PathLike[str],
    *,
    tls_cert: str,
    tls_key: str,
    trust_anchors: Sequence[str],
    sign_key: str,
    directory_bundle: str,
    trusted_root: str,
    gateway_id: str = "gateway",
    origin: str = DEFAULT_ORIGIN,
    tls_key_passphrase_file: str | None = None,
    sign_key_passphrase_file: str | None = None,
    store_url: str | None = None,
) -> Path:
    """Write a commented ``gateway.toml`` for one deployment and return its path.

    The deployment's paths are written as given (relative ones resolve against the file's
    folder when it is loaded); every other key appears commented out with its default and an
    explanation. Refuses to overwrite: raises ``ConfigError`` (reason ``config_exists``) if
    anything is at ``path``. No secret is ever written, only ``*_file`` paths.
    """
    given: dict[tuple[str, str], object] = {
        ("gateway", "id"): gateway_id,
        ("gateway", "origin"): origin,
        ("tls", "cert"): tls_cert,
        ("tls", "key"): tls_key,
        ("tls", "trust_anchors"): list(trust_anchors),
        ("keys", "sign_key"): sign_key,
        ("directory", "bundle"): directory_bundle,
        ("directory", "trusted_root"): trusted_root,
    }
    if tls_key_passphrase_file is not None:
        given[("tls", "key_passphrase_file")] = tls_key_passphrase_file
    if sign_key_passphrase_file is not None:
        given[("keys", "passphrase_file")] = sign_key_passphrase_file
    if store_url is not None:
        given[("store", "url")] = store_url
    text = _default_config_text(given)
    target = Path(path)
    try:
        # "x": create, never truncate an operator's file (house rule 10).
        with target.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ConfigError(
            str(target), "refusing to overwrite an existing file", GatewayReason.CONFIG_EXISTS
        ) from None
    except OSError as exc:
        raise ConfigError(str(target), f"cannot write: {exc.strerror}") from None
    return target


def _default_config_text(given: Mapping[tuple[str, str], object]) -> str:
    lines = [
        "# Ketenpost gateway configuration.",
        "#",
        "# Relative paths resolve against this file's folder. Every key can be overridden by an",
        "# environment variable KETENPOST_<SECTION>__<KEY> (lists comma-separated); secrets also",
        '# by KETENPOST_<SECTION>__<KEY>_FILE, or here as <key>_file = "path". Check this file',
        "# with `ketenpost config check --config FILE`; see the result with `config show`.",
    ]
    for section, cls in _SECTIONS:
        lines += ["", f"[{section}]"]
        for key, spec, field in _specs(cls):
            lines.append(f"# {spec.doc}")
            file_key = key + SECRET_FILE_SUFFIX
            if (section, key) in given:
                lines.append(f"{key} = {_toml_value(_plain(given[section, key]))}")
            elif spec.secret:
                if (section, file_key) in given:
                    lines.append(f"{file_key} = {_toml_value(given[section, file_key])}")
                else:
                    example = f"secrets/{section}-{key}".replace("_", "-")
                    lines.append(f"# {file_key} = {_toml_string(example)}")
            elif spec.raw_default is not None:
                lines.append(f"# {key} = {_toml_value(spec.raw_default)}")
            elif field.default is not dataclasses.MISSING:
                lines.append(f"# {key} = {_toml_value(_plain(field.default))}")
            else:
                # A required key the caller did not give: the file will not load until it is set.
                lines.append(f"# {key} = ...  (required)")
    return "\n".join(lines) + "\n"
