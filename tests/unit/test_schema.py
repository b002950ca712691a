"""One declaration of the chunk columns (streamrag.stores.schema) for both stores."""

from __future__ import annotations

from streamrag import limits
from streamrag.config import PROJECT_ROOT
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.schema import COLUMNS, column_values, pgvector_sql_file, stored_chunk


def test_the_documented_pgvector_schema_is_the_generated_one():
    # Regenerate with: python -m streamrag.stores.schema > sql/store/001_pgvector.sql
    assert (PROJECT_ROOT / "sql" / "store" / "001_pgvector.sql").read_text() == pgvector_sql_file()


def test_varchar_columns_hold_what_the_limits_let_through():
    sizes = {c.name: c.max_bytes for c in COLUMNS}
    assert sizes["doc_id"] == limits.DOC_ID_BYTES.value
    assert sizes["title"] == limits.TITLE_BYTES.value
    assert sizes["source"] == limits.SOURCE_BYTES.value
    assert sizes["text"] == limits.CHUNK_TEXT_BYTES.value
    assert sizes["model_id"] == limits.MODEL_ID_BYTES.value


def test_a_record_round_trips_through_the_column_mapping():
    chunk = ChunkRecord(
        chunk_id="c",
        doc_id="d",
        version=3,
        op="upsert",
        position=1,
        start=5,
        end=9,
        text="text",
        content_hash="h",
        source="s",
        title=None,
        metadata={"a": 1},
        source_ts_ms=7,
    )
    values = column_values(EmbeddingRecord(chunk, "m", [0.5, 0.5]), indexed_at_ms=11)

    assert set(values) == {c.name for c in COLUMNS}
    stored = stored_chunk(values)
    assert (
        stored.chunk_id,
        stored.doc_id,
        stored.version,
        stored.position,
        stored.start,
        stored.end,
        stored.title,
        stored.metadata,
        stored.vector,
        stored.indexed_at_ms,
    ) == ("c", "d", 3, 1, 5, 9, None, {"a": 1}, [0.5, 0.5], 11)
