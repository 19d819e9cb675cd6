"""Vector stores: the protocol (base) and its adapters (lancedb, weaviate)."""
