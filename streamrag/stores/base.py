"""The vector-store contract that the index stage, replay and queries use.

Two implementations: Milvus (Lite or server) and pgvector. Both store every chunk with
what makes it traceable (DESIGN.md invariant 8) and apply writes idempotently: an upsert
by chunk id replaces the row, a delete of a missing id is a no-op.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamrag.records import EmbeddingRecord

# Filters are values, never code: only these fields (and metadata keys matching
# METADATA_KEY) can be filtered on, and every value is bound as a parameter.
FILTER_FIELDS = frozenset({"doc_id", "source", "model_id"})
METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class StoreError(Exception):
    """A store operation that failed; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class StoredChunk:
    chunk_id: str
    doc_id: str
    version: int
    position: int
    start: int
    end: int
    text: str
    content_hash: str
    source: str
    title: str | None
    metadata: dict[str, Any]
    model_id: str
    source_ts_ms: int
    indexed_at_ms: int
    vector: list[float] | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    score: float
    chunk: StoredChunk


@dataclass(frozen=True, slots=True)
class Filters:
    """Equality filters: ``fields`` on FILTER_FIELDS, ``metadata`` on metadata keys."""

    fields: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.fields:
            if name not in FILTER_FIELDS:
                raise StoreError(f"cannot filter on {name!r}: use one of {sorted(FILTER_FIELDS)}")
        for key in self.metadata:
            if not METADATA_KEY.fullmatch(key):
                raise StoreError(f"metadata filter key {key!r} must be a plain identifier")


class VectorStore(Protocol):
    def ensure(self, dim: int) -> None:
        """Create the collection/table and index if missing (idempotent)."""

    def upsert(self, records: Sequence[EmbeddingRecord]) -> None:
        """Write chunks by id; a chunk whose stored version is newer is left alone."""

    def trim(self, doc_id: str, from_position: int, up_to_version: int) -> None:
        """Delete the document's chunks at ``position >= from_position`` whose version is
        at most ``up_to_version`` (what an update made surplus, or all of a deleted doc).
        Equal versions go too: a trim follows its own event's upserts, so a chunk of that
        version at those positions can only be from an earlier event ordered before it."""

    def delete(self, chunk_ids: Sequence[str]) -> None: ...

    def search(self, vector: Sequence[float], k: int, filters: Filters | None = None
               ) -> list[SearchHit]: ...

    def get(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> list[StoredChunk]: ...

    def doc_chunk_ids(self, doc_id: str) -> list[str]: ...

    def count(self) -> int: ...

    def all_ids(self) -> list[str]: ...

    def flush(self) -> None:
        """Make recent writes visible to searches (Milvus); a no-op where they already are."""

    def drop(self) -> None:
        """Remove the collection/table and everything in it."""

    def close(self) -> None: ...


def apply_records(store: VectorStore, records: Sequence[EmbeddingRecord]) -> None:
    """Apply upserts and trim markers in order; consecutive upserts go in one write.

    A document's trim follows its upserts, so an update never removes a chunk that it
    keeps (invariant 4), and versions guard every write (invariant 2).
    """
    pending: dict[str, EmbeddingRecord] = {}
    for record in records:
        chunk = record.chunk
        if chunk.op == "upsert":
            pending[chunk.chunk_id] = record
            continue
        if pending:
            store.upsert(list(pending.values()))
            pending.clear()
        store.trim(chunk.doc_id, chunk.position, chunk.version)
    if pending:
        store.upsert(list(pending.values()))
