"""Index stage logic: apply embedding records to a vector store, idempotently."""

from __future__ import annotations

from collections.abc import Sequence

from streamrag.config import MilvusConfig, PgvectorConfig
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores import open_store
from streamrag.stores.base import VectorStore, apply_records


class IndexWriter:
    """Applies embedding records to a store whose collection/table it creates if missing."""

    def __init__(self, store: VectorStore, dim: int) -> None:
        self._store = store
        self._store.ensure(dim)

    @classmethod
    def open(cls, config: MilvusConfig | PgvectorConfig, dim: int) -> IndexWriter:
        return cls(open_store(config), dim)

    def apply(self, records: Sequence[EmbeddingRecord]) -> None:
        apply_records(self._store, records)

    def known_vectors(self, chunks: Sequence[ChunkRecord], model_id: str) -> dict[str, list[float]]:
        """content hash -> vector, for chunks the index already holds with this model."""
        ids = [c.chunk_id for c in chunks if c.op == "upsert"]
        stored = self._store.get(ids, with_vectors=True) if ids else []
        return {s.content_hash: s.vector for s in stored
                if s.model_id == model_id and s.vector is not None}

    def close(self) -> None:
        self._store.close()
