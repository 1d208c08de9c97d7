"""Realistic fakes of the partner systems, for tests and the demo (never used by adapters)."""
