"""One adapter per partner system, each a Source, a Mapping and a Destination on the SDK."""
