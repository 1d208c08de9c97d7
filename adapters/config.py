"""An adapter's configuration: ``DIR/partners/<id>/adapter.toml``.

Rules kept here:

* A partner folder is self-contained: every path in ``adapter.toml`` is relative to the folder,
  so deploying a partner means copying one folder.
* One frozen config object, built once and passed in (house rule 4). Secrets (key passphrases)
  come from a file or an environment variable named in the config, never from the command line.
* The ``[system]`` table belongs to the partner-system transport (police REST, OM XML drop
  folders, …) and is kept as a plain table here; each adapter validates its own part.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from adapters.errors import AdapterConfigError

ADAPTER_TOML = "adapter.toml"


class PartnerSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str


class GatewaySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "https://127.0.0.1:8443"
    # An acceptance receipt must carry its audit entry and salt, so the adapter checks the
    # inclusion proof against its own leaf. ``false`` only for the rollout window in which a
    # gateway replica that leaves them out still runs (docs/protocol.md, section 14): a
    # receipt without them is then checked against the leaf the gateway serves, which shows
    # that *a* leaf is logged, not that it is this message's.
    require_receipt_entries: bool = True


class TlsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cert: str = "keys/tls.crt"
    key: str = "keys/tls.key"
    trust_anchors: tuple[str, ...] = ("trust/ca.crt",)


class KeysSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sign: str = "keys/sign.key"
    # Current and retired encrypt keys: a recipient keeps retired private keys until every
    # message that could use them has expired.
    encrypt: tuple[str, ...] = ("keys/encrypt.key",)
    token: str | None = None
    outbox: str = "keys/outbox.key"
    # "file:PATH" or "env:NAME" (keys.keyfile.PassphraseSource); empty: key files in clear.
    passphrase: str = ""


class DirectorySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bundle: str = "directory"
    trusted_root: str = "directory/root.json"
    refresh_s: int = 300


class StoreSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "adapter.db"


class WitnessPeer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a peer publishes its witness statement (``adapters.witness``, docs/adr/0010):
    ``path`` (a file, relative to this folder or absolute: a share both partners reach) or
    ``url`` (any HTTP(S) server serving the file). The statement is signed, so the channel
    need not be trusted; it must only not be the gateway."""

    id: str
    path: str = ""
    url: str = ""


class WitnessSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Our own statement (the largest checkpoint we saw, signed with our sign key), rewritten
    # at every exchange; serve or share this file for the peers.
    publish: str = "witness/statement.json"
    # Seconds between exchanges: a split view is seen by both partners within one interval.
    exchange_s: int = 300
    peers: tuple[WitnessPeer, ...] = ()


class AdapterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    partner: PartnerSection
    gateway: GatewaySection = GatewaySection()
    tls: TlsSection = TlsSection()
    keys: KeysSection = KeysSection()
    directory: DirectorySection = DirectorySection()
    store: StoreSection = StoreSection()
    witness: WitnessSection = WitnessSection()
    system: dict[str, Any] = msgspec.field(default_factory=dict)
    # The folder the file was read from; relative paths resolve against it.
    base: str = ""

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else Path(self.base) / p


def key_family(path: Path) -> list[Path]:
    """``path`` and its rotated successors beside it, oldest first: ``keys/sign.key``,
    ``keys/sign-2.key``, ``keys/sign-3.key``, … (the names ``ketenpost keys rotate`` writes).

    An adapter holds every member and picks by the directory (the newest one that is active),
    so a rotated key is used from its ``active_from`` on without editing ``adapter.toml`` or a
    restart. Members that do not exist are left out; ``path`` itself is always first.
    """
    numbered = []
    for sibling in path.parent.glob(f"{path.stem}-*{path.suffix}"):
        n = sibling.name[len(path.stem) + 1 : len(sibling.name) - len(path.suffix)]
        if n.isdigit():
            numbered.append((int(n), sibling))
    return [path, *(p for _, p in sorted(numbered))]


def load_adapter_config(path: Path) -> AdapterConfig:
    """Read ``adapter.toml``; raise ``AdapterConfigError`` with one clear line on any problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise AdapterConfigError(f"{path}: not valid TOML: {exc}") from None
    raw["base"] = str(path.parent.resolve())
    try:
        return msgspec.convert(raw, AdapterConfig)
    except msgspec.ValidationError as exc:
        raise AdapterConfigError(f"{path}: {exc}") from None


def load_partner_dir(partner_dir: Path) -> AdapterConfig:
    return load_adapter_config(partner_dir / ADAPTER_TOML)


def render_adapter_toml(
    partner_id: str,
    *,
    gateway_url: str,
    coordinator: bool,
    system: str = "",
    encrypt: Sequence[str] = ("keys/encrypt.key",),
    trust_anchors: Sequence[str] = ("trust/ca.crt",),
    passphrase: str = "",
) -> str:
    """The ``adapter.toml`` that ``ketenpost init`` and ``ketenpost adapter configure`` write
    into a partner folder.

    ``system`` is the ``[system]`` table of the partner's transport as TOML text (for a
    development deployment ``adapters.registry.default_system_toml(role)``); it is appended
    as given, after the sections the SDK owns. Empty: no ``[system]`` table. ``encrypt`` lists
    the encrypt key files, oldest first (the adapter opens with every one of them), and
    ``trust_anchors`` the CA certificates; both relative to the folder or absolute.
    ``passphrase`` names where the key files' passphrase comes from (``file:PATH`` or
    ``env:NAME``, never the passphrase itself); empty: key files in clear.
    """
    token_line = 'token = "keys/token.key"\n' if coordinator else ""
    passphrase_line = f"passphrase = {_toml_string(passphrase)}\n" if passphrase else ""
    system_part = "\n" + system.strip() + "\n" if system.strip() else ""
    return (
        f"# Ketenpost adapter of {partner_id}. Paths are relative to this folder.\n"
        "[partner]\n"
        f"id = {_toml_string(partner_id)}\n\n"
        "[gateway]\n"
        f"url = {_toml_string(gateway_url)}\n\n"
        "[tls]\n"
        'cert = "keys/tls.crt"\n'
        'key = "keys/tls.key"\n'
        f"trust_anchors = {_toml_array(trust_anchors)}\n\n"
        "[keys]\n"
        'sign = "keys/sign.key"\n'
        f"encrypt = {_toml_array(encrypt)}\n"
        f"{token_line}"
        'outbox = "keys/outbox.key"\n'
        f"{passphrase_line}\n"
        "[directory]\n"
        'bundle = "directory"\n'
        'trusted_root = "directory/root.json"\n\n'
        "[store]\n"
        'path = "adapter.db"\n'
        f"{system_part}"
    )


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string: the same quotes and escapes, and quote, backslash,
    # control characters and non-ASCII come out escaped. (DEL does not, which TOML refuses:
    # `adapter configure` loads what it rendered before writing it, so that is caught.)
    return json.dumps(text)


def _toml_array(items: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_string(item) for item in items) + "]"
