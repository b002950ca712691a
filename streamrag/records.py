"""The records that flow between stages, and their JSON wire form on Kafka.

documents / CDC topics --(normalize)--> DocumentEvent --(chunk)--> ChunkRecord
  --(embed)--> EmbeddingRecord --(index)--> vector store

Every record is traceable to its origin (topic/partition/offset) and to its document
version (DESIGN.md invariant 8).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

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
                "chunk": asdict(self.chunk),
                "model_id": self.model_id,
                "vector": self.vector,
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
            vector=data.get("vector"),
            embedded=bool(data.get("embedded", False)),
        )


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


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
