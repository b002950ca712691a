-- pgvector store schema, as documentation: streamrag/stores/pgvector.py (PgvectorStore.ensure)
-- creates it at runtime, because the vector dimension comes from the embedding model
-- (384 for the bundled all-MiniLM-L6-v2) and the table name from store.table
-- (default streamrag_chunks; one table per index generation). `streamrag migrate` does
-- not apply this file. Keep it in step with pgvector.py.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS streamrag_chunks (
    chunk_id      text PRIMARY KEY,        -- uuid5(doc id, position): replays upsert in place
    embedding     vector(384) NOT NULL,
    doc_id        text,
    version       bigint,                  -- document version (CDC: LSN; snapshot: 0)
    position      int,                     -- chunk index within the document
    span_start    int,                     -- character span in the cleaned text
    span_end      int,
    text          text,
    content_hash  text,                    -- sha256 of the chunk text (32 hex chars)
    source        text,                    -- topic, or <schema>.<table> for CDC
    title         text,
    metadata      jsonb,                   -- filtered with containment: metadata @> '{...}'
    model_id      text,
    source_ts_ms  bigint,                  -- commit time at the source
    indexed_at_ms bigint
);

-- The index name is <table>_<suffix>; names over 63 bytes are shortened with a hash.
CREATE INDEX IF NOT EXISTS streamrag_chunks_doc_id ON streamrag_chunks (doc_id);
CREATE INDEX IF NOT EXISTS streamrag_chunks_hnsw
    ON streamrag_chunks USING hnsw (embedding vector_cosine_ops);

-- Upsert: never replaces a newer version, and leaves an identical row untouched
-- (indexed_at_ms included), sparing the HNSW index a rewrite:
--   INSERT INTO streamrag_chunks (chunk_id, embedding, doc_id, ..., indexed_at_ms)
--   VALUES (...)
--   ON CONFLICT (chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding, ...
--   WHERE streamrag_chunks.version <= EXCLUDED.version
--     AND (streamrag_chunks.embedding, ..., streamrag_chunks.source_ts_ms)
--         IS DISTINCT FROM (EXCLUDED.embedding, ..., EXCLUDED.source_ts_ms);
-- Trim (what an update made surplus, or a whole deleted document):
--   DELETE FROM streamrag_chunks WHERE doc_id = $1 AND position >= $2 AND version < $3;
-- Search: ORDER BY embedding <=> $query LIMIT k, with hnsw.iterative_scan = strict_order
-- so that filtered searches still return k rows in exact distance order.
