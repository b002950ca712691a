"""Id, version and change rules of the chunk stage (pure; the Flink shell keeps DocState).

- A chunk's id is ``uuid5(doc id, position)``: deterministic, so replays upsert in place.
- Per document, state keeps the latest version and a fingerprint per chunk position.
- An event whose version is not newer than the state's is stale and changes nothing.
- An update emits upserts for the positions whose fingerprint changed, *then* delete
  markers for positions the shorter document no longer has: unchanged chunks are never
  touched, so a search never loses them mid-update (invariant 4).
- A delete emits delete markers for every position and keeps the version, so an older
  event that arrives late cannot resurrect the document (invariant 2).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field

from jobs.chunking.chunker import Span
from streamrag.records import ChunkRecord, DocumentEvent

CHUNK_NAMESPACE = uuid.UUID("6f1c1a52-3c7e-4d0e-9a55-1f1d0c0de0a1")


def chunk_id(doc_id: str, position: int) -> str:
    """Deterministic chunk id of the chunk at ``position`` of document ``doc_id``."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{doc_id}\x1f{position}"))


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(slots=True)
class DocState:
    """What the chunk stage remembers of one document."""

    version: int
    deleted: bool = False
    fingerprints: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"v": self.version, "d": self.deleted, "f": self.fingerprints})

    @classmethod
    def from_json(cls, raw: str | None) -> DocState | None:
        if not raw:
            return None
        data = json.loads(raw)
        return cls(version=data["v"], deleted=data["d"], fingerprints=data["f"])


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The chunk stage's answer to one event: new state and records to emit."""

    state: DocState | None
    records: list[ChunkRecord]
    stale: bool = False


def plan_document(
    state: DocState | None, event: DocumentEvent, spans: list[Span]
) -> ChunkPlan:
    """Records that bring the index from ``state`` to ``event`` (spans of its clean text)."""
    if state is not None and event.version <= state.version:
        return ChunkPlan(state=state, records=[], stale=True)
    old = [] if state is None else state.fingerprints
    if event.deleted:
        deletes = [_delete_marker(event, pos) for pos in range(len(old))]
        return ChunkPlan(DocState(event.version, deleted=True), deletes)

    upserts: list[ChunkRecord] = []
    fingerprints: list[str] = []
    for position, span in enumerate(spans):
        record = _upsert(event, position, span)
        fingerprint = _fingerprint(record)
        fingerprints.append(fingerprint)
        if position >= len(old) or old[position] != fingerprint:
            upserts.append(record)
    deletes = [_delete_marker(event, pos) for pos in range(len(spans), len(old))]
    return ChunkPlan(DocState(event.version, fingerprints=fingerprints), upserts + deletes)


def _upsert(event: DocumentEvent, position: int, span: Span) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=chunk_id(event.doc_id, position),
        doc_id=event.doc_id,
        version=event.version,
        op="upsert",
        position=position,
        start=span.start,
        end=span.end,
        text=span.text,
        content_hash=content_hash(span.text),
        source=event.source,
        title=event.title,
        metadata=event.metadata,
        source_ts_ms=event.source_ts_ms,
    )


def _delete_marker(event: DocumentEvent, position: int) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=chunk_id(event.doc_id, position),
        doc_id=event.doc_id,
        version=event.version,
        op="delete",
        position=position,
        source=event.source,
        source_ts_ms=event.source_ts_ms,
    )


def _fingerprint(record: ChunkRecord) -> str:
    """Changes when anything stored for the chunk changes, except the version."""
    meta = json.dumps([record.start, record.end, record.title, record.metadata, record.source],
                      sort_keys=True, default=str)
    return content_hash(record.content_hash + meta)[:16]
