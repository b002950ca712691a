"""Vector stores behind one contract (base.py), their columns (schema.py) and generations."""

from __future__ import annotations

from streamrag.config import MilvusConfig, PgvectorConfig
from streamrag.stores.base import GenerationCatalog, VectorStore


def open_store(config: MilvusConfig | PgvectorConfig, name: str | None = None) -> VectorStore:
    """The store that ``config`` names; ``name`` overrides the collection/table."""
    if isinstance(config, MilvusConfig):
        from streamrag.stores.milvus import MilvusStore

        return MilvusStore(config, name)
    from streamrag.stores.pgvector import PgvectorStore

    return PgvectorStore(config, name)


def open_catalog(config: MilvusConfig | PgvectorConfig) -> GenerationCatalog:
    """The generations of the serving name that ``config`` names."""
    if isinstance(config, MilvusConfig):
        from streamrag.stores.milvus_generations import MilvusGenerations

        return MilvusGenerations(config)
    from streamrag.stores.pgvector_generations import PgvectorGenerations

    return PgvectorGenerations(config)
