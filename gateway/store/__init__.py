"""Durable storage of the relay: one interface (``base``), SQLite and PostgreSQL backends."""
