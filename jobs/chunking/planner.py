"""Id, version and change rules of the chunk stage (pure; the Flink shell keeps DocState).

- A chunk's id is ``uuid5(doc id, position)``: deterministic, so replays upsert in place.
- Per document, state keeps the latest version and a fingerprint per chunk position.
- An event whose version is not newer than the state's is stale and changes nothing. Equal
  versions are told apart by the Kafka offset when both come from the same partition
  (two records produced in the same millisecond carry the same timestamp version).
- An update emits upserts for the positions whose fingerprint changed, *then* one trim
  marker that removes the positions the document no longer has: unchanged chunks are
  never touched, so a search never loses them mid-update (invariant 4).
- A delete emits a trim from position 0 and keeps the version, so an older event that
  arrives late cannot resurrect the document (invariant 2).
- State is an optimization, not the guard: a fresh job (no state) re-emits every chunk,
  and the store still refuses older versions and trims what the document lost.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field

from jobs.chunking.chunker import Span
from streamrag.records import ChunkRecord, DocumentEvent, EmbedHeading, model_input

CHUNK_NAMESPACE = uuid.UUID("6f1c1a52-3c7e-4d0e-9a55-1f1d0c0de0a1")


def chunk_id(doc_id: str, position: int) -> str:
    """Deterministic chunk id of the chunk at ``position`` of document ``doc_id``."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{doc_id}\x1f{position}"))


def trim_key(doc_id: str) -> str:
    """Kafka key of a document's trim marker (chunk ids are UUIDs, so never clash)."""
    return f"trim:{doc_id}"


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(slots=True)
class DocState:
    """What the chunk stage remembers of one document."""

    version: int
    deleted: bool = False
    fingerprints: list[str] = field(default_factory=list)
    # topic, partition, offset of the event that set this state (tie-break of versions)
    origin: tuple[str, int, int] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"v": self.version, "d": self.deleted, "f": self.fingerprints, "o": self.origin}
        )

    @classmethod
    def from_json(cls, raw: str | None) -> DocState | None:
        if not raw:
            return None
        data = json.loads(raw)
        o = data.get("o")
        origin = (str(o[0]), int(o[1]), int(o[2])) if o else None
        return cls(version=data["v"], deleted=data["d"], fingerprints=data["f"], origin=origin)


def is_stale(state: DocState | None, event: DocumentEvent) -> bool:
    """True when ``event`` is not newer than what ``state`` already reflects."""
    if state is None or event.version > state.version:
        return False
    if event.version < state.version or state.origin is None:
        return True
    topic, partition, offset = state.origin
    same_partition = (event.origin.topic, event.origin.partition) == (topic, partition)
    return not (same_partition and event.origin.offset > offset)


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The chunk stage's answer to one event: new state and records to emit."""

    state: DocState | None
    records: list[ChunkRecord]
    stale: bool = False


def plan_document(
    state: DocState | None,
    event: DocumentEvent,
    spans: list[Span],
    chunker_id: str = "",
    embed_heading: EmbedHeading = "none",
) -> ChunkPlan:
    """Records that bring the index from ``state`` to ``event`` (spans of its clean text)."""
    if is_stale(state, event):
        return ChunkPlan(state=state, records=[], stale=True)
    old = [] if state is None else state.fingerprints
    origin = (event.origin.topic, event.origin.partition, event.origin.offset)
    if event.deleted:
        return ChunkPlan(
            DocState(event.version, deleted=True, origin=origin), [_trim_marker(event, 0)]
        )

    upserts: list[ChunkRecord] = []
    fingerprints: list[str] = []
    for position, span in enumerate(spans):
        record = _upsert(event, position, span, chunker_id, embed_heading)
        fingerprint = _fingerprint(record)
        fingerprints.append(fingerprint)
        if position >= len(old) or old[position] != fingerprint:
            upserts.append(record)
    state = DocState(event.version, fingerprints=fingerprints, origin=origin)
    if not upserts and len(old) == len(spans):
        return ChunkPlan(state, [])  # nothing changed: the index is already right
    return ChunkPlan(state, [*upserts, _trim_marker(event, len(spans))])


def _upsert(
    event: DocumentEvent, position: int, span: Span, chunker: str, embed_heading: EmbedHeading
) -> ChunkRecord:
    # The content hash is of what the model is given: the same text under another
    # heading path is another vector when the path is embedded too.
    embedded = model_input(span.text, span.heading_path, embed_heading)
    return ChunkRecord(
        chunk_id=chunk_id(event.doc_id, position),
        doc_id=event.doc_id,
        version=event.version,
        op="upsert",
        position=position,
        start=span.start,
        end=span.end,
        text=span.text,
        content_hash=content_hash(embedded),
        source=event.source,
        title=event.title,
        metadata=event.metadata,
        source_ts_ms=event.source_ts_ms,
        heading_path=span.heading_path,
        page=span.page,
        chunker=chunker,
    )


def _trim_marker(event: DocumentEvent, position: int) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=trim_key(event.doc_id),
        doc_id=event.doc_id,
        version=event.version,
        op="trim",
        position=position,
        source=event.source,
        source_ts_ms=event.source_ts_ms,
    )


def _fingerprint(record: ChunkRecord) -> str:
    """Changes when anything stored for the chunk changes, except the version."""
    meta = json.dumps(
        [
            record.start,
            record.end,
            record.title,
            record.metadata,
            record.source,
            record.heading_path,
            record.page,
            record.chunker,
        ],
        sort_keys=True,
        default=str,
    )
    return content_hash(record.content_hash + meta)[:16]
