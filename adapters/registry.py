"""Partner-system transports by name: what ``[system] transport = "…"`` in adapter.toml selects.

Rules kept here:

* A transport factory takes the adapter's config (its ``[system]`` table is the transport's to
  validate) and the clock, and returns a ``adapters.base.Transport``. It raises
  ``AdapterConfigError`` with one line naming the bad setting.
* No module-level mutable state: ``default_registry()`` builds a fresh registry each call with
  the transports that ship with Ketenpost; tests and embedders build their own.
* Partner transports are added to ``BUILTIN_TRANSPORTS`` as ``name → "module:function"`` so
  importing the registry does not import every partner system's dependencies.
* **Transports of other packages** register themselves without changing Ketenpost: an installed
  distribution declares ``[project.entry-points."ketenpost.transports"] NAME =
  "module:function"`` (``TRANSPORT_ENTRY_POINTS``), loaded as lazily as the built-in ones. A
  built-in name cannot be taken over: installing a package must not replace a partner's
  adapter, so such an entry point is ignored with a warning. Two packages claiming one name
  are ambiguous: that name is refused with one line when it is used. A factory that cannot be
  imported is an ``AdapterConfigError`` naming the transport and its target, not a
  traceback. A partner
  module also holds ``DEFAULT_SYSTEM_TOML``, the ``[system]`` table of a development
  deployment; ``default_system_toml(role)`` finds it through ``ROLE_TRANSPORTS``.
* Development secrets (``write_development_secrets``): the secret files a partner system and
  its adapter share (``DEVELOPMENT_SECRET_KEYS``) are random, 0600, never overwritten, and the
  **same** for every partner of one transport: in a development deployment the four
  municipalities talk to one fake zaaksysteem with one set of client credentials. Production
  credentials come from each partner system's own administrator.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

from adapters.base import Clock, Transport
from adapters.config import AdapterConfig
from adapters.errors import AdapterConfigError
from keys import Role
from keys.keyfile import create_file_exclusive

TransportFactory = Callable[[AdapterConfig, Clock], Transport]

logger = logging.getLogger("adapters.registry")

# name → "module:function" of a ``TransportFactory``. Partner adapters add themselves here.
BUILTIN_TRANSPORTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "police-rest": "adapters.partners.police:create_transport",
        "cjg-rest": "adapters.partners.cjg:create_transport",
        "om-xml": "adapters.partners.om:create_transport",
        "halt-csv": "adapters.partners.halt:create_transport",
        "welfare-sql": "adapters.partners.welfare:create_transport",
        "zgw": "adapters.partners.zgw:create_transport",
    }
)


# The entry-point group through which installed packages add transports.
TRANSPORT_ENTRY_POINTS: Final = "ketenpost.transports"

# The partner system each covenant role runs, as the IJmond covenant's partners do.
ROLE_TRANSPORTS: Final[Mapping[Role, str]] = MappingProxyType(
    {
        Role.MUNICIPALITY: "zgw",
        Role.POLICE: "police-rest",
        Role.PROSECUTION: "om-xml",
        Role.HALT: "halt-csv",
        Role.YOUTH_CARE: "cjg-rest",
        Role.WELFARE: "welfare-sql",
    }
)

# transport → the ``[system]`` key naming a secret file the partner system and the adapter share.
DEVELOPMENT_SECRET_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {"zgw": "secret_file", "cjg-rest": "api_token_file"}
)
# 48 random bytes, URL-safe: 64 characters, above the ZGW JWT secret's 32-byte minimum.
DEVELOPMENT_SECRET_BYTES: Final = 48
PRIVATE_DIR_MODE: Final = 0o700


def transport_for(role: Role) -> str:
    """The transport name of ``role``'s partner system."""
    return ROLE_TRANSPORTS[role]


def default_system_toml(role: Role) -> str:
    """The ``[system]`` table (TOML text) of ``role``'s transport for a development deployment:
    the partner module's ``DEFAULT_SYSTEM_TOML``."""
    target = BUILTIN_TRANSPORTS[transport_for(role)]
    module = importlib.import_module(target.partition(":")[0])
    text: str = module.DEFAULT_SYSTEM_TOML
    return text


def development_secret_file(role: Role) -> str | None:
    """The secret file (relative to the partner folder) ``role``'s development ``[system]``
    table names, or ``None`` when the transport has none."""
    key = DEVELOPMENT_SECRET_KEYS.get(transport_for(role))
    if key is None:
        return None
    value = tomllib.loads(default_system_toml(role))["system"].get(key)
    return value if isinstance(value, str) and value else None


def write_development_secrets(partners: Sequence[tuple[Role, Path]]) -> list[Path]:
    """Write the development secret file of every ``(role, partner folder)`` that needs one.

    One random secret per transport, shared by every partner of that transport (see the
    module docstring). Files are 0600, folders this creates 0700; an existing file raises
    ``KeyFileError`` (``key_file_exists``) and is left alone. Returns the paths written.
    """
    shared: dict[str, bytes] = {}
    written: list[Path] = []
    for role, folder in partners:
        relative = development_secret_file(role)
        if relative is None:
            continue
        secret = shared.setdefault(
            transport_for(role), secrets.token_urlsafe(DEVELOPMENT_SECRET_BYTES).encode()
        )
        path = folder / relative
        if path.parent != folder:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(PRIVATE_DIR_MODE)
        create_file_exclusive(path, secret + b"\n", 0o600)
        written.append(path)
    return written


class TransportRegistry:
    """Names → transport factories."""

    def __init__(
        self, lazy: Mapping[str, str] | None = None, refused: Mapping[str, str] | None = None
    ) -> None:
        self._lazy = dict(lazy or {})
        self._factories: dict[str, TransportFactory] = {}
        # name → why it cannot be used (a clash found while collecting entry points).
        self._refused = dict(refused or {})

    def register(self, name: str, factory: TransportFactory) -> None:
        if name in self._factories or name in self._lazy:
            raise ValueError(f"transport {name!r} is registered already")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted({*self._factories, *self._lazy})

    def factory(self, name: str) -> TransportFactory:
        if name in self._factories:
            return self._factories[name]
        if name in self._refused:
            raise AdapterConfigError(f"transport {name!r}: {self._refused[name]}")
        target = self._lazy.get(name)
        if target is None:
            known = ", ".join(self.names()) or "none"
            raise AdapterConfigError(f"unknown transport {name!r} (known: {known})")
        module_name, _, attribute = target.partition(":")
        try:
            factory: TransportFactory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise AdapterConfigError(f"transport {name!r}: cannot load {target}: {exc}") from None
        if not callable(factory):
            raise AdapterConfigError(f"transport {name!r}: {target} is not a function")
        self._factories[name] = factory
        return factory

    def target(self, name: str) -> str:
        """Where ``name`` comes from, for the log: its ``module:function`` (built in or an
        installed package's entry point), or ``registered in code``."""
        return self._lazy.get(name, "registered in code")

    def create(self, config: AdapterConfig, clock: Clock) -> Transport:
        """The transport ``config.system["transport"]`` names, built from ``config``."""
        name = config.system.get("transport")
        if not isinstance(name, str) or not name:
            raise AdapterConfigError(
                f'{config.base}/adapter.toml: [system] transport = "NAME" is missing'
            )
        transport = self.factory(name)(config, clock)
        logger.info("transport_loaded", extra={"detail": f"{name} = {self.target(name)}"})
        return transport


def installed_transports() -> tuple[dict[str, str], dict[str, str]]:
    """The transports installed packages declare (``TRANSPORT_ENTRY_POINTS``): name → target,
    and name → why it is refused (packages disagree on it). Built-in names are skipped."""
    found: dict[str, str] = {}
    refused: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group=TRANSPORT_ENTRY_POINTS):
        source = entry.dist.name if entry.dist is not None else "an installed package"
        if entry.name in BUILTIN_TRANSPORTS:
            logger.warning(
                "transport_entry_point_ignored",
                extra={"detail": f"{source} declares the built-in transport {entry.name!r}"},
            )
        elif entry.name in found and found[entry.name] != entry.value:
            refused[entry.name] = (
                f"installed packages declare it twice ({found[entry.name]} and {entry.value})"
            )
        else:
            found[entry.name] = entry.value
    for name in refused:
        found.pop(name, None)
    return found, refused


def default_registry() -> TransportRegistry:
    """The built-in transports and those of installed packages (module rules)."""
    installed, refused = installed_transports()
    return TransportRegistry({**installed, **BUILTIN_TRANSPORTS}, refused)
