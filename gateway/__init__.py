"""The relay service (aiohttp app, relay decision, store, delivery, audit log, metrics) and, in
``gateway.protocol``, the wire formats shared with the adapters."""
