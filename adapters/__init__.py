"""The adapter SDK and one adapter per partner system. Never imports the relay service."""
