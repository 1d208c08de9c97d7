"""Partner-system transports by name: what ``[system] transport = "…"`` in adapter.toml selects.

Rules kept here:

* A transport factory takes the adapter's config (its ``[system]`` table is the transport's to
  validate) and the clock, and returns a ``adapters.base.Transport``. It raises
  ``AdapterConfigError`` with one line naming the bad setting.
* No module-level mutable state: ``default_registry()`` builds a fresh registry each call with
  the transports that ship with Ketenpost; tests and embedders build their own.
* Partner transports are added to ``BUILTIN_TRANSPORTS`` as ``name → "module:function"`` so
  importing the registry does not import every partner system's dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from adapters.base import Clock, Transport
from adapters.config import AdapterConfig
from adapters.errors import AdapterConfigError

TransportFactory = Callable[[AdapterConfig, Clock], Transport]

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


class TransportRegistry:
    """Names → transport factories."""

    def __init__(self, lazy: Mapping[str, str] | None = None) -> None:
        self._lazy = dict(lazy or {})
        self._factories: dict[str, TransportFactory] = {}

    def register(self, name: str, factory: TransportFactory) -> None:
        if name in self._factories or name in self._lazy:
            raise ValueError(f"transport {name!r} is registered already")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted({*self._factories, *self._lazy})

    def factory(self, name: str) -> TransportFactory:
        if name in self._factories:
            return self._factories[name]
        target = self._lazy.get(name)
        if target is None:
            known = ", ".join(self.names()) or "none"
            raise AdapterConfigError(f"unknown transport {name!r} (known: {known})")
        module_name, _, attribute = target.partition(":")
        factory: TransportFactory = getattr(importlib.import_module(module_name), attribute)
        self._factories[name] = factory
        return factory

    def create(self, config: AdapterConfig, clock: Clock) -> Transport:
        """The transport ``config.system["transport"]`` names, built from ``config``."""
        name = config.system.get("transport")
        if not isinstance(name, str) or not name:
            raise AdapterConfigError(
                f'{config.base}/adapter.toml: [system] transport = "NAME" is missing'
            )
        return self.factory(name)(config, clock)


def default_registry() -> TransportRegistry:
    return TransportRegistry(BUILTIN_TRANSPORTS)
