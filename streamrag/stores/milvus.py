"""Milvus store: Milvus Lite (the stack's local server, or a file path) or a Milvus server.

One collection per index; the chunk id is the primary key, so upsert is idempotent.
Filters are bound with ``filter_params`` (expression templates): values never become code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pymilvus import DataType, MilvusClient, MilvusException
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from streamrag.config import MilvusConfig
from streamrag.records import EmbeddingRecord
from streamrag.stores.base import Filters, SearchHit, StoredChunk, StoreError

_SCALARS = ["doc_id", "version", "position", "span_start", "span_end", "text", "content_hash",
            "source", "title", "metadata", "model_id", "source_ts_ms", "indexed_at_ms"]
_transient = retry(
    retry=retry_if_exception_type((MilvusException, ConnectionError)),
    wait=wait_exponential(multiplier=0.2, max=5),
    stop=stop_after_attempt(6),
    reraise=True,
)


class MilvusStore:
    def __init__(self, config: MilvusConfig, collection: str | None = None) -> None:
        self.collection = collection or config.collection
        token = config.token.get_secret_value() if config.token else ""
        try:
            self._client = _connect(config.uri, token)
        except Exception as e:  # pymilvus raises several types for "cannot connect"
            raise StoreError(f"cannot reach Milvus at {config.uri}: {e}".splitlines()[0]) from e

    def ensure(self, dim: int) -> None:
        if self._client.has_collection(self.collection):
            self._client.load_collection(self.collection)
            return
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("version", DataType.INT64)
        schema.add_field("position", DataType.INT64)
        schema.add_field("span_start", DataType.INT64)
        schema.add_field("span_end", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("source", DataType.VARCHAR, max_length=512)
        schema.add_field("title", DataType.VARCHAR, max_length=2048)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("model_id", DataType.VARCHAR, max_length=512)
        schema.add_field("source_ts_ms", DataType.INT64)
        schema.add_field("indexed_at_ms", DataType.INT64)
        index = self._client.prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
        self._client.create_collection(self.collection, schema=schema, index_params=index)
        self._client.load_collection(self.collection)

    @_transient
    def upsert(self, records: Sequence[EmbeddingRecord]) -> None:
        now = int(time.time() * 1000)
        self._client.upsert(self.collection, [_row(r, now) for r in records])

    @_transient
    def delete(self, chunk_ids: Sequence[str]) -> None:
        self._client.delete(self.collection, ids=list(chunk_ids))

    @_transient
    def search(self, vector: Sequence[float], k: int, filters: Filters | None = None
               ) -> list[SearchHit]:
        expr, params = _filter_expression(filters)
        result = self._client.search(
            self.collection, data=[list(vector)], limit=k, filter=expr,
            filter_params=params, output_fields=_SCALARS,
            search_params={"metric_type": "COSINE"},
        )
        return [SearchHit(float(hit["distance"]), _stored(hit["entity"], hit["id"]))
                for hit in result[0]]

    @_transient
    def get(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> list[StoredChunk]:
        if not chunk_ids:
            return []
        fields = _SCALARS + (["vector"] if with_vectors else [])
        rows = self._client.get(self.collection, ids=list(chunk_ids), output_fields=fields)
        return [_stored(row, row["chunk_id"]) for row in rows]

    @_transient
    def doc_chunk_ids(self, doc_id: str) -> list[str]:
        rows = self._client.query(self.collection, filter="doc_id == {doc_id}",
                                  filter_params={"doc_id": doc_id}, output_fields=["chunk_id"])
        return sorted(row["chunk_id"] for row in rows)

    @_transient
    def count(self) -> int:
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def all_ids(self) -> list[str]:
        ids: list[str] = []
        iterator = self._client.query_iterator(self.collection, batch_size=1000,
                                               filter="", output_fields=["chunk_id"])
        while batch := iterator.next():
            ids.extend(row["chunk_id"] for row in batch)
        iterator.close()
        return sorted(ids)

    def flush(self) -> None:
        self._client.flush(self.collection)

    def close(self) -> None:
        self._client.close()


@_transient
def _connect(uri: str, token: str) -> MilvusClient:
    return MilvusClient(uri=uri, token=token)


def _row(record: EmbeddingRecord, now_ms: int) -> dict[str, Any]:
    c = record.chunk
    return {
        "chunk_id": c.chunk_id, "vector": record.vector, "doc_id": c.doc_id,
        "version": c.version, "position": c.position, "span_start": c.start,
        "span_end": c.end, "text": c.text, "content_hash": c.content_hash,
        "source": c.source, "title": c.title or "", "metadata": c.metadata,
        "model_id": record.model_id, "source_ts_ms": c.source_ts_ms, "indexed_at_ms": now_ms,
    }


def _stored(row: dict[str, Any], chunk_id: str) -> StoredChunk:
    vector = row.get("vector")
    return StoredChunk(
        chunk_id=chunk_id, doc_id=row["doc_id"], version=row["version"],
        position=row["position"], start=row["span_start"], end=row["span_end"],
        text=row["text"], content_hash=row["content_hash"], source=row["source"],
        title=row["title"] or None, metadata=row["metadata"] or {}, model_id=row["model_id"],
        source_ts_ms=row["source_ts_ms"], indexed_at_ms=row["indexed_at_ms"],
        vector=[float(x) for x in vector] if vector is not None else None,
    )


def _filter_expression(filters: Filters | None) -> tuple[str, dict[str, Any]]:
    if filters is None:
        return "", {}
    clauses, params = [], {}
    for i, (name, value) in enumerate(sorted(filters.fields.items())):
        clauses.append(f"{name} == {{f{i}}}")
        params[f"f{i}"] = value
    for i, (key, value) in enumerate(sorted(filters.metadata.items())):
        clauses.append(f'metadata["{key}"] == {{m{i}}}')
        params[f"m{i}"] = value
    return " and ".join(clauses), params
