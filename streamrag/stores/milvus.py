"""Milvus store: Milvus Lite (the stack's local server, or a file path) or a Milvus server.

One collection per index; the chunk id is the primary key, so upsert is idempotent.
Filter values are quoted by ``_literal`` (Milvus Lite 3.2 has no ``filter_params``
templates): a value can never end its string literal, so values never become code.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from pymilvus import DataType, MilvusClient, MilvusException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from streamrag.config import MilvusConfig
from streamrag.errors import classify
from streamrag.records import EmbeddingRecord
from streamrag.stores.base import Filters, SearchHit, StoredChunk, StoreError, check_k

_SCALARS = ["doc_id", "version", "position", "span_start", "span_end", "text", "content_hash",
            "source", "title", "metadata", "model_id", "source_ts_ms", "indexed_at_ms"]
# Retry what may pass (the server restarting, a swap in flight), never a rejected value.
_transient = retry(
    retry=retry_if_exception(lambda e: classify(e) != "terminal"),
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
        # Milvus has no conditional write; one reader-writer per document (Flink keys
        # by doc id) makes this read-then-write safe.
        stored = self._client.query(self.collection,
                                    filter=_ids_filter([r.chunk.chunk_id for r in records]),
                                    output_fields=["chunk_id", "version"])
        newer = {row["chunk_id"]: row["version"] for row in stored}
        now = int(time.time() * 1000)
        rows = [_row(r, now) for r in records
                if newer.get(r.chunk.chunk_id, -1) <= r.chunk.version]
        if rows:
            self._client.upsert(self.collection, rows)

    @_transient
    def trim(self, doc_id: str, from_position: int, up_to_version: int) -> None:
        self._client.delete(
            self.collection,
            filter=f"doc_id == {_literal(doc_id)} and position >= {_literal(from_position)}"
                   f" and version <= {_literal(up_to_version)}",
        )

    @_transient
    def delete(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            self._client.delete(self.collection, filter=_ids_filter(chunk_ids))

    def search(self, vector: Sequence[float], k: int, filters: Filters | None = None
               ) -> list[SearchHit]:
        if check_k(k) == 0:
            return []
        return self._search(vector, k, filters)

    @_transient
    def _search(self, vector: Sequence[float], k: int, filters: Filters | None
                ) -> list[SearchHit]:
        result = self._client.search(
            self.collection, data=[list(vector)], limit=k, filter=_filter_expression(filters),
            output_fields=_SCALARS,
            # HNSW's default ef (64) loses matches under selective filters (Milvus Lite
            # prunes during traversal): explore at least 256 candidates, and never < k.
            search_params={"metric_type": "COSINE", "params": {"ef": max(k, 256)}},
        )
        return [SearchHit(float(hit["distance"]), _stored(hit["entity"], hit["chunk_id"]))
                for hit in result[0]]

    @_transient
    def get(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> list[StoredChunk]:
        if not chunk_ids:
            return []
        fields = _SCALARS + (["vector"] if with_vectors else [])
        rows = self._client.query(self.collection, filter=_ids_filter(chunk_ids),
                                  output_fields=["chunk_id", *fields])
        return [_stored(row, row["chunk_id"]) for row in rows]

    @_transient
    def doc_chunk_ids(self, doc_id: str) -> list[str]:
        rows = self._client.query(self.collection, filter=f"doc_id == {_literal(doc_id)}",
                                  output_fields=["chunk_id"])
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

    def drop(self) -> None:
        self._client.drop_collection(self.collection)

    def close(self) -> None:
        self._client.close()

    # Generations (streamrag.generations): the configured name may be an alias that
    # serves one collection; every request resolves it on the server, so writers and
    # readers through the name follow an alias swap without reopening.

    @_transient
    def resolve(self, name: str | None = None) -> str | None:
        """The collection that ``name`` (default: this store's) serves: itself when it is
        a collection, the aliased collection when it is an alias, None when missing."""
        name = name or self.collection
        if not self._client.has_collection(name):
            return None
        return str(self._client.describe_collection(name)["collection_name"])

    @_transient
    def properties(self, name: str) -> dict[str, str]:
        props = self._client.describe_collection(name).get("properties") or {}
        return {str(k): str(v) for k, v in props.items()}

    @_transient
    def set_properties(self, name: str, properties: dict[str, str]) -> None:
        self._client.alter_collection_properties(name, properties=properties)

    @_transient
    def sample_model_id(self, name: str) -> str | None:
        self._client.load_collection(name)  # a renamed collection is released
        rows = self._client.query(name, filter="", output_fields=["model_id"], limit=1)
        return str(rows[0]["model_id"]) if rows else None

    def collection_names(self, prefix: str) -> list[str] | None:
        """Collections whose name starts with ``prefix``; None when the server cannot list
        them (Milvus Lite 3.2.2 fails ShowCollections with a protobuf mismatch)."""
        quiet = logging.getLogger("pymilvus.decorators")  # it logs the failure as an ERROR
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            names = self._client.list_collections()
        except MilvusException:
            return None
        finally:
            quiet.setLevel(level)
        return sorted(n for n in names if n.startswith(prefix))

    @_transient
    def point_alias(self, target: str) -> None:
        """Serve ``target`` under this store's name in one alias operation (loaded first,
        so no search ever hits a released collection)."""
        self._client.load_collection(target)
        if self.resolve() is None:
            self._client.create_alias(target, self.collection)
        else:
            self._client.alter_alias(target, self.collection)

    @_transient
    def load(self, name: str) -> None:
        self._client.load_collection(name)

    def rename_collection(self, old: str, new: str) -> None:
        """Rename (releases it in Milvus Lite: load it again before serving it)."""
        self._client.rename_collection(old, new)

    @_transient
    def drop_collection(self, name: str) -> None:
        self._client.drop_collection(name)

    @_transient
    def drop_alias(self) -> None:
        self._client.drop_alias(self.collection)


@_transient
def _connect(uri: str, token: str) -> MilvusClient:
    # pymilvus shares one connection per (uri, token) by default and close() removes it
    # for every client: one store's close() would cut off the others in this process
    # (a generation opened during a replay, a Retriever, the index writer).
    return MilvusClient(uri=uri, token=token, alias=f"streamrag-{uuid.uuid4().hex}")


def _ids_filter(chunk_ids: Sequence[str]) -> str:
    """``chunk_id in [...]`` with escaped literals: pymilvus's own ``ids=`` quotes ids
    into the expression without escaping them."""
    return f"chunk_id in [{', '.join(_literal(i) for i in chunk_ids)}]"


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


def _filter_expression(filters: Filters | None) -> str:
    if filters is None:
        return ""
    clauses = [f"{name} == {_literal(value)}" for name, value in sorted(filters.fields.items())]
    # Keys match METADATA_KEY (checked by Filters), so they cannot break out of ["..."].
    clauses += [f'metadata["{key}"] == {_literal(value)}'
                for key, value in sorted(filters.metadata.items())]
    return " and ".join(clauses)


def _literal(value: str | int | bool) -> str:
    """``value`` as an expression literal. In a string, backslash and double quote are
    escaped (and newlines, which the lexer rejects), so the only unescaped quote is the
    closing one: the value cannot end the literal early and inject an expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
                   .replace("\n", "\\n").replace("\r", "\\r"))
        return f'"{escaped}"'
    raise StoreError(f"cannot filter on a {type(value).__name__} value: use str, int or bool")
