"""Index stage logic: how embedding records change an index, whatever the store.

The rules, once for the live index stage, the replay and its verification:

- A record *supersedes* an earlier one with the same key when its version is not older:
  versions never go back (DESIGN.md invariant 2), and an equal version (a re-run) wins.
- A document's *trim* marker removes its chunks at positions >= n whose version is at most
  the trim's: what an update made surplus, or all of a deleted document (from 0).
- Over a slice of the log, the newest upsert per chunk id wins, and the latest trim per
  document applies after every upsert. A trim never removes a chunk of its own event's
  upserts (its positions are past them) and never a newer one, so "upserts, then trims"
  gives the final state whatever order the partitions were read in (trims are keyed by
  document, chunks by chunk id: they may sit in different partitions).

:class:`Latest` keeps that state for any kind of item (records to write, or what a
verification expects); :class:`PendingWrites` writes it to a store. The store itself
refuses to replace a newer version (its upsert is version-guarded), so re-applying any
slice twice changes nothing (invariant 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.base import Trim, VectorStore


class Placed(Protocol):
    """What the rules look at: which chunk of which document, at which version."""

    @property
    def chunk_id(self) -> str: ...

    @property
    def doc_id(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def position(self) -> int: ...


T = TypeVar("T")


def supersedes(new: Placed, old: Placed | None) -> bool:
    """True when ``new``, read after ``old`` with the same key, replaces it."""
    return old is None or new.version >= old.version


def trimmed(chunk: Placed, trim: Placed | None) -> bool:
    """True when ``trim`` removes ``chunk``: positions >= the trim's, versions up to it."""
    return trim is not None and chunk.position >= trim.position and chunk.version <= trim.version


class Latest(Generic[T]):
    """The newest upsert per chunk id (an item of any kind, placed by its chunk) and the
    latest trim per document, from records fed in log order."""

    def __init__(self) -> None:
        self._upserts: dict[str, tuple[Placed, T]] = {}
        self._trims: dict[str, ChunkRecord] = {}

    def upsert(self, chunk: Placed, item: T) -> None:
        old = self._upserts.get(chunk.chunk_id)
        if supersedes(chunk, old[0] if old else None):
            self._upserts[chunk.chunk_id] = (chunk, item)

    def trim(self, marker: ChunkRecord) -> None:
        if supersedes(marker, self._trims.get(marker.doc_id)):
            self._trims[marker.doc_id] = marker

    @property
    def upsert_count(self) -> int:
        return len(self._upserts)

    def final(self) -> dict[str, T]:
        """Chunk id -> item, for the upserts that no trim removes: the index's state."""
        return {
            chunk_id: item
            for chunk_id, (chunk, item) in self._upserts.items()
            if not trimmed(chunk, self._trims.get(chunk.doc_id))
        }

    def take_upserts(self) -> list[T]:
        items = [item for _, item in self._upserts.values()]
        self._upserts.clear()
        return items

    def trims(self) -> list[ChunkRecord]:
        """The latest trim of each document, by doc id (kept)."""
        return [self._trims[doc] for doc in sorted(self._trims)]

    def take_trims(self) -> list[ChunkRecord]:
        trims = self.trims()
        self._trims.clear()
        return trims


class PendingWrites:
    """Embedding records on their way into a store, by the rules above: upserts are written
    in batches as they come, trims are held until :meth:`finish` and written together.
    The live index stage feeds a batch of document events (of many documents) and
    finishes; the replay feeds the whole log. ``stored_versions``: what the embed stage
    read of these chunks' versions (VectorStore.upsert)."""

    def __init__(
        self,
        store: VectorStore,
        batch: int = 256,
        stored_versions: Mapping[str, int] | None = None,
    ) -> None:
        self._store = store
        self._batch = batch
        # Kept up to date with what this writes, so that later batches need no read.
        self._versions = None if stored_versions is None else dict(stored_versions)
        self._latest: Latest[EmbeddingRecord] = Latest()

    def add(self, record: EmbeddingRecord) -> None:
        chunk = record.chunk
        if chunk.op == "trim":
            self._latest.trim(chunk)
        elif record.vector is not None:
            self._latest.upsert(chunk, record)
            if self._latest.upsert_count >= self._batch:
                self._write_upserts()

    def finish(self) -> None:
        """Write what is pending: the upserts, then the latest trim of each document."""
        self._write_upserts()
        trims = self._latest.take_trims()
        if trims:
            self._store.trim(as_trims(trims))

    def _write_upserts(self) -> None:
        upserts = self._latest.take_upserts()
        if upserts:
            self._store.upsert(upserts, self._versions)
        if self._versions is not None:
            for r in upserts:
                known = self._versions.get(r.chunk.chunk_id, -1)
                self._versions[r.chunk.chunk_id] = max(known, r.chunk.version)


def as_trims(markers: Iterable[ChunkRecord]) -> list[Trim]:
    """Trim markers (chunk records with op "trim") as the store's trims."""
    return [Trim(m.doc_id, m.position, m.version) for m in markers]


def apply_records(
    store: VectorStore,
    records: Iterable[EmbeddingRecord],
    stored_versions: Mapping[str, int] | None = None,
) -> None:
    """Apply a slice of the log (e.g. a batch of document events) to ``store``: its
    upserts in batches, then its trims in one call."""
    pending = PendingWrites(store, stored_versions=stored_versions)
    for record in records:
        pending.add(record)
    pending.finish()
