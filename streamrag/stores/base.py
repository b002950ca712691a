"""The vector-store contract that the index stage, replay and queries use.

Two implementations: Milvus (Lite or server) and pgvector. Both store every chunk with
what makes it traceable (DESIGN.md invariant 8) and apply writes idempotently: an upsert
by chunk id replaces the row, a delete of a missing id is a no-op.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from streamrag.errors import Unreachable, UserError
from streamrag.records import EmbeddingRecord

# Filters are values, never code: only these fields (and metadata keys matching
# METADATA_KEY) can be filtered on, and every value is bound as a parameter.
FILTER_FIELDS = frozenset({"doc_id", "source", "model_id"})
METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_K = 16_384
MAX_DOCUMENT_CHUNKS = 16_384  # what document() returns at most (Milvus caps a query there)


class StoreError(UserError):
    """A store operation that failed; the message is one line for the user."""


class StoreUnreachable(StoreError, Unreachable):
    """The store does not answer."""


class BadFilter(StoreError):
    """A filter or k that the caller got wrong (not the store failing)."""


class Unsupported(StoreError):
    """What was asked needs a feature this store (or its server version) lacks."""


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
    heading_path: str = ""
    page: int = 0
    chunker: str = ""


@dataclass(frozen=True, slots=True)
class SearchHit:
    score: float
    chunk: StoredChunk


@dataclass(frozen=True, slots=True)
class Filters:
    """Equality filters: ``fields`` on FILTER_FIELDS, ``metadata`` on metadata keys.

    Checked when made, so a filter that no stored value can match, or that a store would
    choke on, fails at once with one line: keys must be plain identifiers, values str,
    int or bool, strings valid Unicode (no lone surrogates: e.g. invalid UTF-8 in a
    command-line argument) without NUL, integers within int64."""

    fields: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.fields.items():
            if name not in FILTER_FIELDS:
                raise BadFilter(f"cannot filter on {name!r}: use one of {sorted(FILTER_FIELDS)}")
            if not isinstance(value, str):
                raise BadFilter(f"filter {name} must be a string, got {type(value).__name__}")
            _check_value(name, value)
        for key, meta in self.metadata.items():
            if not isinstance(key, str) or not METADATA_KEY.fullmatch(key):
                raise BadFilter(f"metadata filter key {key!a} must be a plain identifier")
            _check_value(key, meta)

    @property
    def empty(self) -> bool:
        return not (self.fields or self.metadata)


def _check_value(name: str, value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise BadFilter(f"filter {name}: {value} is outside int64")
        return
    if not isinstance(value, str):
        raise BadFilter(
            f"filter {name}: cannot filter on a {type(value).__name__} value: use str, int or bool"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFilter(f"filter {name}: the value is not valid Unicode ({value[:40]!a})") from None
    if "\x00" in value:
        raise BadFilter(f"filter {name}: the value holds a NUL character")


def check_k(k: int) -> int:
    """``k`` for a search: 0 or less finds nothing (callers return at once), more than
    MAX_K is an error (Milvus's own limit, kept on both stores)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise BadFilter(f"k must be an integer, got {type(k).__name__}")
    if k > MAX_K:
        raise BadFilter(f"k must be at most {MAX_K}, got {k}")
    return max(k, 0)


class Trim(NamedTuple):
    """Delete a document's chunks at ``position >= from_position`` whose version is at
    most ``up_to_version`` (what an update made surplus, or all of a deleted document).
    Equal versions go too: a trim follows its own event's upserts, so a chunk of that
    version at those positions can only be from an earlier event ordered before it."""

    doc_id: str
    from_position: int
    up_to_version: int


class VectorStore(Protocol):
    def ensure(self, dim: int) -> None:
        """Create the collection/table and index if missing (idempotent)."""

    def upsert(
        self, records: Sequence[EmbeddingRecord], stored_versions: Mapping[str, int] | None = None
    ) -> None:
        """Write chunks by id, in one round trip where the store allows; a chunk whose
        stored version is newer is left alone. ``stored_versions``: what the caller just
        read of these chunk ids (an id absent: not stored), which spares a store that
        cannot guard its writes itself (Milvus) a read; only valid while nobody else
        writes those ids (Flink gives each document one writer)."""

    def trim(self, trims: Sequence[Trim]) -> None:
        """Apply the trims, in one round trip where the store allows."""

    def delete(self, chunk_ids: Sequence[str]) -> None: ...

    def search(
        self, vector: Sequence[float], k: int, filters: Filters | None = None
    ) -> list[SearchHit]: ...

    def lexical_search(self, text: str, k: int, filters: Filters | None = None) -> list[SearchHit]:
        """The k chunks whose words best match ``text`` (hybrid mode's lexical half); the
        score is the store's own lexical rank, comparable only within one result. A
        StoreError when the collection/table predates lexical search."""

    def document(self, doc_id: str, filters: Filters | None = None) -> list[StoredChunk]:
        """The chunks of one document that match ``filters``, in position order."""

    def get(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> list[StoredChunk]: ...

    def doc_chunk_ids(self, doc_id: str) -> list[str]: ...

    def count(self) -> int: ...

    def all_ids(self) -> list[str]: ...

    def flush(self) -> None:
        """Make recent writes visible to searches (Milvus); a no-op where they already are."""

    def drop(self) -> None:
        """Remove the collection/table and everything in it (not a generations alias or
        view: GenerationCatalog.drop_all)."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Generation:
    """One generation of an index: the collection/table ``name`` holds it."""

    number: int
    name: str
    model_id: str
    created_at_ms: int
    serving: bool
    served_at_ms: int = 0  # when it last became serving; 0: never served
    chunker: str = ""  # id of the chunking rules of (a sample of) its chunks


class GenerationCatalog(Protocol):
    """The generations of one serving name in one store (Milvus collections behind an
    alias, pgvector tables behind a view). It does what it is told, each operation
    atomically for readers and writers; the policy is streamrag.generations'."""

    base: str  # the serving name

    def generations(self) -> list[Generation]:
        """Every generation; a serving name that is still a plain collection/table is
        generation 0."""

    def serving(self) -> Generation | None: ...

    def create(self, number: int, name: str, model_id: str, dim: int) -> None:
        """Create generation ``number``, empty, in collection/table ``name``."""

    def swap(self, target: Generation) -> None:
        """Serve ``target`` under the base name."""

    def drop(self, name: str) -> None:
        """Drop one generation that is not serving."""

    def drop_all(self) -> None:
        """Drop the serving name and every generation."""

    def close(self) -> None: ...
