"""The records that flow between stages, and their JSON wire form on Kafka.

documents / CDC topics --(normalize)--> DocumentEvent --(chunk)--> ChunkRecord
  --(embed)--> EmbeddingRecord --(index)--> vector store

Every record is traceable to its origin (topic/partition/offset) and to its document
version (DESIGN.md invariant 8). A vector travels as binary float32 (little-endian, in
base64 inside the JSON: ``vector_f32``), which round-trips exactly and costs far less to
write and read than decimal text; ``streamrag topics tail`` shows it decoded.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any, Literal

import numpy as np

# upsert: write the chunk (unless the store holds a newer version of it).
# trim:   delete the document's chunks at positions >= ``position`` that are older than
#         ``version``; sent after a document's upserts (a delete is a trim from 0).
Op = Literal["upsert", "trim"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record was read from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DocumentEvent:
    """One source record normalized: a document's new text, or its deletion."""

    doc_id: str
    version: int
    source: str
    origin: Origin
    text: str | None = None
    deleted: bool = False
    title: str | None = None
    content_type: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)
    # When the source committed the change (ms since epoch): CDC commit time, else record time.
    source_ts_ms: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> DocumentEvent:
        data = json.loads(raw)
        data["origin"] = Origin(**data["origin"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A chunk upsert keyed by chunk_id, or a document trim marker keyed by trim_key(doc)."""

    chunk_id: str
    doc_id: str
    version: int
    op: Op
    position: int = -1
    start: int = 0
    end: int = 0
    text: str = ""
    content_hash: str = ""
    source: str = ""
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source_ts_ms: int = 0
    # The headings above the chunk ("Chapter > Section"), its page (PDF; 0: none) and the
    # id of the chunking rules that made it (jobs.chunking.stage.chunker_id).
    heading_path: str = ""
    page: int = 0
    chunker: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Its fields as a dict (all are JSON values): ``asdict`` without its deep copy,
        which cost more than the JSON encoding of a chunk."""
        return {name: getattr(self, name) for name in _field_names(ChunkRecord)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> ChunkRecord:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkRecord:
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True, slots=True)
class EmbeddingRecord:
    """A chunk with its vector (op="upsert"), or a trim marker passed through."""

    chunk: ChunkRecord
    model_id: str = ""
    vector: list[float] | None = None
    # False when the vector came from the cache of (model id, content hash): no model call.
    embedded: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "chunk": self.chunk.as_dict(),
                "model_id": self.model_id,
                "vector_f32": None if self.vector is None else pack_vector(self.vector),
                "embedded": self.embedded,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> EmbeddingRecord:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingRecord:
        chunk = ChunkRecord.from_dict(data["chunk"])
        return cls(
            chunk=chunk,
            model_id=data.get("model_id", ""),
            vector=vector_of(data),
            embedded=bool(data.get("embedded", False)),
        )


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The records of one document event between stages (its upserts, then its trim),
    as dicts in the JSON form above: ``[doc_id, [topic, partition, offset], [records]]``.
    The embed stage gathers many of them before the model (jobs.embedding.batching)."""

    doc_id: str
    origin: Origin
    records: list[dict[str, Any]]

    @property
    def upserts(self) -> int:
        return sum(r.get("op") == "upsert" for r in self.records)

    def to_json(self) -> str:
        return event_json(
            self.doc_id,
            self.origin,
            [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in self.records],
        )

    @classmethod
    def from_json(cls, raw: str) -> EventBatch:
        doc_id, (topic, partition, offset), records = json.loads(raw)
        return cls(str(doc_id), Origin(str(topic), int(partition), int(offset)), records)


def event_json(doc_id: str, origin: Origin, records: list[str]) -> str:
    """EventBatch JSON from the records' own JSON (written once, never re-encoded)."""
    where = json.dumps(
        [doc_id, [origin.topic, origin.partition, origin.offset]], ensure_ascii=False
    )
    return where[:-1] + ",[" + ",".join(records) + "]]"


def events_from_json(raw: str) -> list[EventBatch]:
    """A JSON list of EventBatch (a flush of many documents' events)."""
    return [
        EventBatch(str(d), Origin(str(t), int(p), int(o)), records)
        for d, (t, p, o), records in json.loads(raw)
    ]


def pack_vector(vector: list[float]) -> str:
    """A vector as base64 of its little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def unpack_vector(packed: str) -> list[float]:
    return np.frombuffer(base64.b64decode(packed, validate=True), dtype="<f4").tolist()  # type: ignore[no-any-return]


def vector_of(data: dict[str, Any]) -> list[float] | None:
    """The vector of an embedding record's JSON: binary (``vector_f32``), or a list of
    numbers as records written before vectors went binary hold it (``vector``)."""
    packed = data.get("vector_f32")
    if packed is not None:
        return unpack_vector(packed)
    vector = data.get("vector")
    return None if vector is None else [float(x) for x in vector]


def readable(value: str) -> str:
    """A record's JSON for a person: an embedding's binary vector shown as numbers."""
    try:
        data = json.loads(value)
    except ValueError:
        return value
    if isinstance(data, dict) and isinstance(data.get("vector_f32"), str):
        data["vector"] = unpack_vector(data.pop("vector_f32"))
        return json.dumps(data, ensure_ascii=False)
    return value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that a stage could not use: the stage, the reason (it names the limit when
    a limit was broken), the error's class, where the record came from, and a preview of
    its key and value (the whole record stays in its source topic at ``origin``)."""

    stage: str
    reason: str
    origin: Origin | None
    key: str | None
    value: str | None
    error: str = "BadRecord"

    def to_json(self) -> str:
        # Whatever the record held, the dead letter itself must be writable: lone
        # surrogates become \udXXX escapes instead of failing the string coder.
        return (
            json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))
            .encode("utf-8", "backslashreplace")
            .decode("utf-8")
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        data = json.loads(raw)
        origin = data.get("origin")
        data["origin"] = Origin(**origin) if origin else None
        return cls(**_known_fields(cls, data))


EmbedHeading = Literal["none", "section", "path"]


def model_input(text: str, heading_path: str, embed_heading: EmbedHeading) -> str:
    """What the model is given for a chunk (``chunking.embed_heading``): its text alone,
    after its own section's title, or after its whole heading path."""
    if embed_heading == "none" or not heading_path:
        return text
    heading = heading_path if embed_heading == "path" else heading_path.rsplit(" > ", 1)[-1]
    return f"{heading}\n\n{text}"


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    """The names of a dataclass's fields, in their order."""
    return tuple(f.name for f in fields(cls))


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = _field_names(cls)
    return {k: v for k, v in data.items() if k in names}
