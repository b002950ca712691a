"""The chunk columns, declared once: both stores' DDL and row mapping come from here.

Each stored chunk carries what makes it traceable (DESIGN.md invariant 8). The size
limits of the VARCHAR columns are those of ``streamrag.limits``, which the normalize step
checks, so no record reaches a store with a value its column cannot hold.

``python -m streamrag.stores.schema`` prints the pgvector DDL for the default table and
the bundled model's dimension; ``sql/store/001_pgvector.sql`` is that output (a unit
test keeps them equal).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from streamrag.errors import BadRecord
from streamrag.limits import (
    CHUNK_TEXT_BYTES,
    DOC_ID_BYTES,
    HEADING_PATH_BYTES,
    MODEL_ID_BYTES,
    SOURCE_BYTES,
    TITLE_BYTES,
)
from streamrag.records import EmbeddingRecord
from streamrag.stores.base import StoredChunk

Kind = Literal["key", "vector", "varchar", "int64", "json"]
CHUNK_ID_BYTES: Final = 64  # uuid5 text: 36


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    comment: str
    max_bytes: int | None = None  # varchar and key columns


VECTOR = "embedding"
COLUMNS: Final[tuple[Column, ...]] = (
    Column("chunk_id", "key", "uuid5(doc id, position): replays upsert in place", CHUNK_ID_BYTES),
    Column(VECTOR, "vector", "unit length; cosine distance"),
    Column("doc_id", "varchar", "the document's id", DOC_ID_BYTES.value),
    Column("version", "int64", "document version (CDC: commit LSN; snapshot: 0)"),
    Column("position", "int64", "chunk index within the document"),
    Column("span_start", "int64", "character span in the cleaned text"),
    Column("span_end", "int64", "end of that span"),
    Column("text", "varchar", "the chunk's text", CHUNK_TEXT_BYTES.value),
    Column("content_hash", "varchar", "sha256 of the text (32 hex chars)", 64),
    Column("source", "varchar", "topic, or <schema>.<table> for CDC", SOURCE_BYTES.value),
    Column("title", "varchar", "the document's title", TITLE_BYTES.value),
    Column("metadata", "json", "filtered by equality of top-level keys"),
    Column(
        "heading_path", "varchar", "Chapter > Section above the chunk", HEADING_PATH_BYTES.value
    ),
    Column("page", "int64", "the page it starts on (PDF; 0: none)"),
    Column("chunker", "varchar", "id of the chunking rules that made it", 64),
    Column("model_id", "varchar", "the model that embedded the text", MODEL_ID_BYTES.value),
    Column("source_ts_ms", "int64", "commit time at the source"),
    Column("indexed_at_ms", "int64", "when the store wrote the row"),
)
# Lexical search (hybrid mode) reads a column that each store derives from ``text`` in the
# same write as the vector: in PostgreSQL a generated tsvector (the 'simple' text-search
# configuration: words are lower-cased, never stemmed or dropped as stop words, so
# identifiers and error codes match as written), in Milvus a sparse vector made by its BM25
# function. Neither is written by the project, so neither is in COLUMNS.
LEXICAL = "text_lexical"
TEXT_SEARCH_CONFIG = "simple"
KEY = COLUMNS[0].name
SCALARS: Final = tuple(c.name for c in COLUMNS if c.kind not in ("key", "vector"))
# What an upsert compares to leave an identical row alone: all but the key and the time.
CONTENT: Final = tuple(c.name for c in COLUMNS if c.name not in (KEY, "indexed_at_ms"))


def column_values(record: EmbeddingRecord, indexed_at_ms: int) -> dict[str, Any]:
    """An embedding record as column name -> value (the vector as a list of floats)."""
    c = record.chunk
    if record.vector is None:
        raise BadRecord(f"chunk {c.chunk_id} has no vector: cannot upsert it")
    return {
        KEY: c.chunk_id,
        VECTOR: record.vector,
        "doc_id": c.doc_id,
        "version": c.version,
        "position": c.position,
        "span_start": c.start,
        "span_end": c.end,
        "text": c.text,
        "content_hash": c.content_hash,
        "source": c.source,
        "title": c.title or "",
        "metadata": c.metadata,
        "heading_path": c.heading_path,
        "page": c.page,
        "chunker": c.chunker,
        "model_id": record.model_id,
        "source_ts_ms": c.source_ts_ms,
        "indexed_at_ms": indexed_at_ms,
    }


def stored_chunk(values: Mapping[str, Any]) -> StoredChunk:
    """A stored row (column name -> value; the vector only when it was read) as a chunk."""
    vector = values.get(VECTOR)
    return StoredChunk(
        chunk_id=values[KEY],
        doc_id=values["doc_id"],
        version=values["version"],
        position=values["position"],
        start=values["span_start"],
        end=values["span_end"],
        text=values["text"],
        content_hash=values["content_hash"],
        source=values["source"],
        title=values["title"] or None,
        metadata=values["metadata"] or {},
        heading_path=values.get("heading_path") or "",
        page=values.get("page") or 0,
        chunker=values.get("chunker") or "",
        model_id=values["model_id"],
        source_ts_ms=values["source_ts_ms"],
        indexed_at_ms=values["indexed_at_ms"],
        vector=[float(x) for x in vector] if vector is not None else None,
    )


# Each kind's PostgreSQL type (a vector's dimension comes from the model).
PG_TYPES: Final[dict[Kind, str]] = {
    "key": "text",
    "vector": "vector",
    "varchar": "text",
    "int64": "bigint",
    "json": "jsonb",
}


def pgvector_type(column: Column, dim: int) -> str:
    if column.kind == "vector":
        return f"vector({int(dim)}) NOT NULL"
    return PG_TYPES[column.kind] + (" PRIMARY KEY" if column.kind == "key" else "")


LEXICAL_TYPE: Final = (
    f"tsvector GENERATED ALWAYS AS (to_tsvector('{TEXT_SEARCH_CONFIG}', text)) STORED"
)


@dataclass(frozen=True, slots=True)
class PgIndex:
    column: str
    method: str  # the access method: btree, hnsw, gin
    opclass: str = ""
    search: bool = True  # only searches read it: a bulk load builds it after the rows


# A chunk table's indexes, by the suffix of their names.
PG_INDEXES: Final[dict[str, PgIndex]] = {
    "doc_id": PgIndex("doc_id", "btree", search=False),  # trims and document reads
    "hnsw": PgIndex(VECTOR, "hnsw", "vector_cosine_ops"),
    # Metadata filters (metadata @> ...) find their rows without a full scan.
    "metadata": PgIndex("metadata", "gin", "jsonb_path_ops"),
    "lexical": PgIndex(LEXICAL, "gin"),
}
INDEX_SUFFIXES: Final = tuple(PG_INDEXES)


def pgvector_index_ddl(table: str, index_names: dict[str, str]) -> dict[str, str]:
    """CREATE INDEX statements of a chunk table, by suffix (names already quoted)."""
    statements = {}
    for suffix, index in PG_INDEXES.items():
        using = "" if index.method == "btree" else f" USING {index.method}"
        opclass = f" {index.opclass}" if index.opclass else ""
        statements[suffix] = (
            f"CREATE INDEX IF NOT EXISTS {index_names[suffix]} ON {table}"
            f"{using} ({index.column}{opclass})"
        )
    return statements


def pgvector_table_ddl(table: str, dim: int) -> str:
    """CREATE TABLE of a chunk table (``table`` quoted already)."""
    width = max(len(c.name) for c in COLUMNS)
    columns = ",\n".join(f"    {c.name:<{width}} {pgvector_type(c, dim)}" for c in COLUMNS)
    columns += f",\n    {LEXICAL:<{width}} {LEXICAL_TYPE}"
    return f"CREATE TABLE IF NOT EXISTS {table} (\n{columns}\n)"


def pgvector_ddl(table: str, dim: int, index_names: dict[str, str]) -> list[str]:
    """CREATE statements of a chunk table and its indexes (``table`` and the index names
    must be valid identifiers already: callers quote nothing else)."""
    return [pgvector_table_ddl(table, dim), *pgvector_index_ddl(table, index_names).values()]


def pgvector_sql_file(table: str = "streamrag_chunks", dim: int = 384) -> str:
    """The documented schema file, sql/store/001_pgvector.sql."""
    names = {suffix: f"{table}_{suffix}" for suffix in INDEX_SUFFIXES}
    notes = "\n".join(f"--   {c.name}: {c.comment}" for c in COLUMNS)
    notes += f"\n--   {LEXICAL}: the text's words, for lexical search (hybrid mode)"
    return (
        "-- pgvector store schema, generated by `python -m streamrag.stores.schema` from\n"
        "-- streamrag/stores/schema.py, which PgvectorStore.ensure() uses at runtime: the\n"
        "-- dimension comes from the embedding model (384 for the bundled all-MiniLM-L6-v2)\n"
        "-- and the table name from store.table (one table per index generation).\n"
        "-- `streamrag migrate` does not apply this file.\n--\n" + notes + "\n\n"
        "CREATE EXTENSION IF NOT EXISTS vector;\n\n"
        + ";\n\n".join(pgvector_ddl(table, dim, names))
        + ";\n"
    )


if __name__ == "__main__":
    sys.stdout.write(pgvector_sql_file())
