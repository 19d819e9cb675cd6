"""Build the pipeline's parts from Settings (shared by the worker, search, demo, tools)."""
from __future__ import annotations

from pathlib import Path

from app.config import ConfigError, Settings


def build_encoder(settings: Settings):
    from app.encoder import Encoder

    return Encoder.load(variant=settings.model_variant or None, device=settings.device,
                        threads=settings.encoder_threads or None, max_batch_tokens=settings.max_batch_tokens)


def open_store(settings: Settings, fingerprint: str, dim: int, create: bool = True, sole_writer: bool = False):
    """The configured VectorStore for one fingerprint. ``sole_writer``: this process is the only
    one writing the collection (the worker: LanceDB takes one writer per table), so its reads
    need not look for other processes' commits."""
    if settings.store == "lancedb":
        from app.store.lancedb import LanceDBStore

        return LanceDBStore(Path(settings.data_dir) / "lancedb", fingerprint=fingerprint, dim=dim,
                            collection_prefix=settings.collection_prefix, create=create,
                            sole_writer=sole_writer)
    if settings.store == "weaviate":
        from app.store.weaviate import WeaviateStore

        return WeaviateStore(url=settings.weaviate_url, grpc_port=settings.weaviate_grpc_port,
                             api_key=settings.weaviate_api_key or None, timeout_s=settings.weaviate_timeout_s,
                             fingerprint=fingerprint, dim=dim, collection_prefix=settings.collection_prefix)
    raise ConfigError(f"unknown store {settings.store!r}")


def build_codec(settings: Settings):
    from app.events import EventCodec, Limits

    registry = None
    if settings.schema_registry_url:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        # new_client: a real client for http(s) URLs, the in-process registry for mock://
        registry = SchemaRegistryClient.new_client({"url": settings.schema_registry_url})
    native = EventCodec(registry=registry, limits=Limits(max_text_bytes=settings.max_text_bytes))
    if not settings.inputs:
        return native
    from app.inputs import InputCodec

    # several input topics, each decoded by its mapping (app/inputs), behind the same decode()
    return InputCodec(native, settings.input_specs())


def build_processor(settings: Settings, encoder=None, store=None):
    from app.cache import EmbeddingCache
    from app.chunking import Chunker
    from app.pipeline import Processor

    encoder = encoder or build_encoder(settings)
    store = store or open_store(settings, encoder.fingerprint, encoder.dim)
    chunker = Chunker(encoder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
    cache = EmbeddingCache(settings.embedding_cache_entries) if settings.embedding_cache_entries > 0 else None
    from app.scrub import load_scrubber

    try:
        scrubber = load_scrubber(settings.scrubber)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"EMBEDSTREAM_SCRUBBER={settings.scrubber!r}: {exc}") from exc
    return Processor(build_codec(settings), encoder, chunker, store, cache=cache, scrubber=scrubber,
                     optimize_every=settings.store_optimize_every)
