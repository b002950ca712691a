"""Vector stores behind one contract (see base.py)."""

from __future__ import annotations

from streamrag.config import MilvusConfig, PgvectorConfig
from streamrag.stores.base import VectorStore


def open_store(config: MilvusConfig | PgvectorConfig, name: str | None = None) -> VectorStore:
    """The store that ``config`` names; ``name`` overrides the collection/table."""
    if isinstance(config, MilvusConfig):
        from streamrag.stores.milvus import MilvusStore

        return MilvusStore(config, name)
    from streamrag.stores.pgvector import PgvectorStore

    return PgvectorStore(config, name)
