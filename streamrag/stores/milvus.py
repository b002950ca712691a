"""Milvus store: Milvus Lite (the stack's local server, or a file path) or a Milvus server.

One collection per index, its fields from streamrag.stores.schema; the chunk id is the
primary key, so upsert is idempotent. The collection name may also be an alias that
serves one generation (streamrag.stores.milvus_generations): every request resolves it on
the server, so readers and writers follow a swap without reopening.

Servers: Milvus Lite 3.2 and Milvus 2.5+ have full-text search (a BM25 function over the
text), hence hybrid mode; Milvus 2.3 and 2.4 have not, so their collections go without it
and a lexical search is refused in one line naming the version it needs (``ServerInfo``).

Consistency: a store's reads see its own process's writes at once (Milvus's Session level,
which pymilvus tracks per process and collection); its first read after it opens, and
after ``flush()``, waits for everything written before it by anyone (Strong), so a job
that restarts, or a verification after another process wrote, reads the index as it is.
A Strong read waits for the server's next time tick (0.04-0.08 s on the stack's server,
whose tick is 50 ms; 0.17-0.38 s at Milvus's default 200 ms).

Filter values are quoted by ``literal`` (Milvus Lite 3.2 has no ``filter_params``
templates): a value can never end its string literal, so values never become code.
Failed requests are retried unless the error is terminal (a rejected value); before a
retry the collection is loaded again, since a restarted server serves it "released".
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import numpy as np
from pymilvus import DataType, Function, FunctionType, MilvusClient
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from streamrag.config import MilvusConfig
from streamrag.errors import classify
from streamrag.records import EmbeddingRecord
from streamrag.security import milvus_client_kwargs
from streamrag.stores.base import (
    MAX_DOCUMENT_CHUNKS,
    Filters,
    SearchHit,
    StoredChunk,
    StoreError,
    StoreUnreachable,
    Trim,
    Unsupported,
    check_k,
)
from streamrag.stores.schema import (
    COLUMNS,
    KEY,
    LEXICAL,
    SCALARS,
    VECTOR,
    column_values,
    stored_chunk,
)

_TYPES: Final = {
    "key": DataType.VARCHAR,
    "varchar": DataType.VARCHAR,
    "int64": DataType.INT64,
    "json": DataType.JSON,
    "vector": DataType.FLOAT_VECTOR,
}
log = logging.getLogger(__name__)
# Trims per delete expression: one round trip for a batch's documents, expressions short.
TRIMS_PER_DELETE = 100
# A filtered search short of hits is completed exactly when at most this many rows match.
EXACT_SCAN_ROWS = 16_384
# Keys per page of all_ids().
ID_PAGE = 10_000
# Chunks per query of get(): a server refuses a result over its size limit (200,000 chunks
# at once: "query results exceed the limit size"), and the id list is the expression.
GET_PAGE = 1_000
# A new collection's indexes are built at once (it is empty); a server this slow is down.
INDEX_BUILD_TIMEOUT_S = 60


def _reload_before_retry(state: RetryCallState) -> None:
    store = state.args[0] if state.args else None
    if isinstance(store, MilvusStore):
        store.reload()


_F = TypeVar("_F", bound=Callable[..., Any])


def _retrying(final: Callable[[BaseException], bool]) -> Callable[[_F], _F]:
    """Retry what may pass (the server restarting, a swap in flight), never what ``final``
    says no retry will change."""
    decorator = retry(
        retry=retry_if_exception(lambda e: not final(e)),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_attempt(6),
        before_sleep=_reload_before_retry,
        reraise=True,
    )
    return cast("Callable[[_F], _F]", decorator)  # tenacity's wrapper keeps the signature


transient = _retrying(lambda e: classify(e) == "terminal")  # never a rejected value


@dataclass(frozen=True)
class ServerInfo:
    """What a Milvus server can do, from the version it reports."""

    version: str  # as reported: "v2.3.5-lite" (the `milvus` package), "milvus_lite-3.2.2"

    @property
    def lite(self) -> bool:
        return self.version.startswith("milvus_lite")

    @property
    def release(self) -> tuple[int, int]:
        """(major, minor) of a Milvus server; (0, 0) when unknown."""
        found = re.match(r"v?(\d+)\.(\d+)", self.version)
        return (int(found[1]), int(found[2])) if found else (0, 0)

    @property
    def full_text(self) -> bool:
        """The BM25 function and sparse vectors (hybrid mode): Milvus 2.5+, Milvus Lite."""
        return self.lite or self.release >= (2, 5)

    @property
    def scalar_index(self) -> str:
        """The index for the doc id: INVERTED from Milvus 2.4 (and Lite), Trie before."""
        return "INVERTED" if self.lite or self.release >= (2, 4) else "Trie"


class MilvusStore:
    def __init__(self, config: MilvusConfig, collection: str | None = None) -> None:
        self.collection = collection or config.collection
        self._uri = config.uri
        self._vector_index = config.vector_index
        self._has_lexical = False
        self._strong_read = True  # the first read after opening (see the module doc)
        # The collection's description, which a column-wise write is checked against:
        # read once, not on every write; forgotten before a retry (reload).
        self._described: dict[str, Any] | None = None
        try:
            self._client = _connect(config)
            self.server = ServerInfo(str(self._client.get_server_version()))
        except Exception as e:  # pymilvus raises several types for "cannot connect"
            if refused_token(e):
                raise StoreError(
                    f"Milvus at {config.uri} refused the token (auth failed): check"
                    f" store.security.token_file or ${config.security.token_env}"
                ) from e
            raise StoreUnreachable(
                f"cannot reach Milvus at {config.uri}: {e}".splitlines()[0]
            ) from e

    @property
    def client(self) -> MilvusClient:
        return self._client

    def ensure(self, dim: int) -> None:
        """Create the collection (fields from the schema) if missing, and load it."""
        if self._client.has_collection(self.collection):
            fields = {
                f["name"] for f in self._client.describe_collection(self.collection)["fields"]
            }
            missing = sorted({c.name for c in COLUMNS} - fields)
            if missing:
                raise StoreError(
                    f"collection {self.collection} lacks the fields {', '.join(missing)} of"
                    " this version: rebuild the index into a new generation (`streamrag"
                    " replay full`) or use another collection"
                )
            self._client.load_collection(self.collection)
            return
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        for column in COLUMNS:
            if column.kind == "vector":
                schema.add_field(column.name, _TYPES[column.kind], dim=dim)
            elif column.max_bytes is not None:
                # The text is analysed (split into words) for the BM25 function.
                analysed = column.name == "text" and self.server.full_text
                schema.add_field(
                    column.name,
                    _TYPES[column.kind],
                    max_length=column.max_bytes,
                    is_primary=column.kind == "key",
                    **({"enable_analyzer": True} if analysed else {}),
                )
            else:
                schema.add_field(column.name, _TYPES[column.kind])
        if self.server.full_text:
            schema.add_field(LEXICAL, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name="text_bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["text"],
                    output_field_names=[LEXICAL],
                )
            )
        self._client.create_collection(self.collection, schema=schema)
        # HNSW's graph: Milvus 2.5 defaults to these; Milvus 2.3 requires them.
        graph = {"params": {"M": 16, "efConstruction": 200}} if self._vector_index == "HNSW" else {}
        self._create_index(VECTOR, index_type=self._vector_index, metric_type="COSINE", **graph)
        if self.server.full_text:
            self._create_index(LEXICAL, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        # Trims, document() and doc_chunk_ids() filter on the document id (the index
        # serves sealed segments: Milvus Lite seals only at a flush, see the README).
        self._create_index("doc_id", index_type=self.server.scalar_index)
        self._client.load_collection(self.collection)

    def _create_index(self, field: str, **params: Any) -> None:
        """Index ``field`` and wait until it is built. (pymilvus's own wait, sync=True,
        sleeps 0.5 s before its first look, for every index: 1.5 s for each new collection,
        whose indexes are built at once as it is empty.)"""
        index = self._client.prepare_index_params()
        index.add_index(field_name=field, **params)
        self._client.create_index(self.collection, index, sync=False)  # the request only
        deadline = time.monotonic() + INDEX_BUILD_TIMEOUT_S
        while True:
            described = self._client.describe_index(self.collection, field)
            if described.get("state") == "Finished":
                return
            if described.get("state") == "Failed":
                reason = described.get("index_state_fail_reason", "")
                raise StoreError(f"Milvus could not index {self.collection}.{field}: {reason}")
            if time.monotonic() > deadline:
                raise StoreUnreachable(f"Milvus did not index {self.collection}.{field} in time")
            time.sleep(0.02)

    def reload(self) -> None:
        """Load the collection again (a restarted server serves it released); quiet when
        the server is still down, as the retry that follows will tell."""
        self._described = None
        self._strong_read = True  # a restarted server: read what is there
        with quiet():
            try:
                self._client.load_collection(self.collection)
            except Exception as e:  # anything: the retried call reports what is wrong
                log.debug("reloading %s failed: %s", self.collection, e)

    @transient
    def upsert(
        self, records: Sequence[EmbeddingRecord], stored_versions: Mapping[str, int] | None = None
    ) -> None:
        # Milvus has no conditional write; one reader-writer per document (Flink keys
        # by doc id) makes this read-then-write safe.
        if not records:
            return
        if stored_versions is None:
            stored = self._client.query(
                self.collection,
                filter=_ids_filter([r.chunk.chunk_id for r in records]),
                output_fields=[KEY, "version"],
                consistency_level=self._read_level(),
            )
            stored_versions = {row[KEY]: row["version"] for row in stored}
        now = int(time.time() * 1000)
        rows = [
            column_values(r, now)
            for r in records
            if stored_versions.get(r.chunk.chunk_id, -1) <= r.chunk.version
        ]
        if rows:
            # Column-wise: MilvusClient.upsert takes rows and pymilvus 2.5 checks each
            # string of a row character by character (0.36 ms of client CPU per chunk, as
            # much as the server's write); the connection's own upsert takes columns by
            # field name and checks each string once (0.10 ms).
            columns = [
                {"name": c.name, "type": _TYPES[c.kind], "values": [row[c.name] for row in rows]}
                for c in COLUMNS
            ]
            connection = self._client._get_connection()
            if self._described is None:
                self._described = connection.describe_collection(self.collection)
            connection.upsert(self.collection, columns, schema=self._described)

    @transient
    def trim(self, trims: Sequence[Trim]) -> None:
        for start in range(0, len(trims), TRIMS_PER_DELETE):
            self._client.delete(
                self.collection,
                filter=" or ".join(
                    f"(doc_id == {literal(t.doc_id)} and position >= {literal(t.from_position)}"
                    f" and version <= {literal(t.up_to_version)})"
                    for t in trims[start : start + TRIMS_PER_DELETE]
                ),
            )

    @transient
    def delete(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            self._client.delete(self.collection, filter=_ids_filter(chunk_ids))

    def search(
        self, vector: Sequence[float], k: int, filters: Filters | None = None
    ) -> list[SearchHit]:
        if check_k(k) == 0:
            return []
        return self._search(vector, k, filters)

    @transient
    def _search(self, vector: Sequence[float], k: int, filters: Filters | None) -> list[SearchHit]:
        hits = self._ann_search(vector, k, filters)
        if filters is not None and len(hits) < k and self._vector_index != "FLAT":
            # HNSW under a selective filter may stop short of rows that match: Milvus 2.3
            # finds none of 75 matching rows of 30,000 when they lie far from the query.
            # Fewer hits than asked while more rows match: scan those rows exactly.
            where = _filter_expression(filters)
            matching = self._count(where)
            if len(hits) < matching <= EXACT_SCAN_ROWS:
                return self._exact_search(vector, k, where)
        return hits

    def _exact_search(self, vector: Sequence[float], k: int, where: str) -> list[SearchHit]:
        rows = self._client.query(
            self.collection,
            filter=where,
            output_fields=[KEY, *SCALARS, VECTOR],
            limit=EXACT_SCAN_ROWS,
            consistency_level=self._read_level(),
        )
        if not rows:
            return []
        matrix = np.asarray([row[VECTOR] for row in rows], dtype=np.float32)
        query = np.asarray(vector, dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
        scores = (matrix @ query) / np.where(norms == 0, 1.0, norms)
        best = np.argsort(-scores, kind="stable")[:k]
        return [SearchHit(float(scores[i]), stored_chunk({**rows[i], VECTOR: None})) for i in best]

    def _count(self, where: str) -> int:
        rows = self._client.query(
            self.collection,
            filter=where,
            output_fields=["count(*)"],
            consistency_level=self._read_level(),
        )
        return int(rows[0]["count(*)"])

    def _ann_search(
        self, vector: Sequence[float], k: int, filters: Filters | None
    ) -> list[SearchHit]:
        result = self._client.search(
            self.collection,
            data=[list(vector)],
            limit=k,
            filter=_filter_expression(filters),
            output_fields=list(SCALARS),
            consistency_level=self._read_level(),
            # HNSW's default ef (64) loses matches under selective filters (Milvus Lite
            # prunes during traversal): explore at least 256 candidates, and never < k.
            search_params={"metric_type": "COSINE", "params": {"ef": max(k, 256)}},
        )
        return [SearchHit(float(hit["distance"]), _hit_chunk(hit)) for hit in result[0]]

    def lexical_search(self, text: str, k: int, filters: Filters | None = None) -> list[SearchHit]:
        """BM25 over the analysed text (Milvus's full-text search)."""
        if check_k(k) == 0:
            return []
        # Asked once per store while the answer is yes (a collection never loses a field),
        # not on every query.
        if not self._has_lexical:
            self._has_lexical = LEXICAL in {f["name"] for f in self._describe()["fields"]}
        if not self._has_lexical and not self.server.full_text:
            raise Unsupported(
                f"hybrid search needs Milvus 2.5 or later (its BM25 function); the server at"
                f" {self._uri} is {self.server.version}: use dense mode, or pgvector"
            )
        if not self._has_lexical:
            raise StoreError(
                f"collection {self.collection} was built before lexical search: rebuild it"
                " into a new generation (`streamrag replay full`) to use hybrid mode"
            )
        return self._lexical_search(text, k, filters)

    @transient
    def _describe(self) -> dict[str, Any]:
        return dict(self._client.describe_collection(self.collection))

    @transient
    def _lexical_search(self, text: str, k: int, filters: Filters | None) -> list[SearchHit]:
        result = self._client.search(
            self.collection,
            data=[text],
            anns_field=LEXICAL,
            limit=k,
            filter=_filter_expression(filters),
            output_fields=list(SCALARS),
            search_params={"metric_type": "BM25"},
            consistency_level=self._read_level(),
        )
        # Milvus Lite reports BM25 scores negated (best first all the same): keep the size.
        return [SearchHit(abs(float(hit["distance"])), _hit_chunk(hit)) for hit in result[0]]

    @transient
    def document(self, doc_id: str, filters: Filters | None = None) -> list[StoredChunk]:
        where = " and ".join(
            e for e in (f"doc_id == {literal(doc_id)}", _filter_expression(filters)) if e
        )
        rows = self._client.query(
            self.collection,
            filter=where,
            output_fields=[KEY, *SCALARS],
            limit=MAX_DOCUMENT_CHUNKS,
            consistency_level=self._read_level(),
        )
        return sorted((stored_chunk(row) for row in rows), key=lambda c: c.position)

    def get(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> list[StoredChunk]:
        """The stored chunks of ``chunk_ids`` (those that exist), in that order; asked in
        pages of GET_PAGE ids."""
        rows = [
            row
            for i in range(0, len(chunk_ids), GET_PAGE)
            for row in self._get_page(chunk_ids[i : i + GET_PAGE], with_vectors)
        ]
        order = {cid: i for i, cid in enumerate(chunk_ids)}
        return sorted((stored_chunk(row) for row in rows), key=lambda c: order[c.chunk_id])

    @transient
    def _get_page(self, chunk_ids: Sequence[str], with_vectors: bool) -> list[dict[str, Any]]:
        fields = [KEY, *SCALARS, *([VECTOR] if with_vectors else [])]
        return list(
            self._client.query(
                self.collection,
                filter=_ids_filter(chunk_ids),
                output_fields=fields,
                consistency_level=self._read_level(),
            )
        )

    @transient
    def doc_chunk_ids(self, doc_id: str) -> list[str]:
        rows = self._client.query(
            self.collection,
            filter=f"doc_id == {literal(doc_id)}",
            output_fields=[KEY],
            consistency_level=self._read_level(),
        )
        return sorted(str(row[KEY]) for row in rows)

    @transient
    def count(self) -> int:
        return self._count("")

    @transient
    def all_ids(self) -> list[str]:
        if self.server.lite:
            return self._all_ids_iterated()
        # Pages in key order, each after the last key of the one before (what pymilvus's
        # query_iterator does, but it reads at a client-side timestamp on Milvus 2.3,
        # which does not report one: it saw none or stale rows there). Milvus Lite's
        # pages are not the lowest keys: there the iterator is right.
        ids: list[str] = []
        while True:
            after = f"{KEY} > {literal(ids[-1])}" if ids else ""
            rows = self._client.query(
                self.collection,
                filter=after,
                output_fields=[KEY],
                limit=ID_PAGE,
                consistency_level=self._read_level(),
            )
            page = sorted(str(row[KEY]) for row in rows)
            ids.extend(page)
            if len(page) < ID_PAGE:
                return ids

    def _all_ids_iterated(self) -> list[str]:
        ids: list[str] = []
        iterator = self._client.query_iterator(
            self.collection, batch_size=1000, filter="", output_fields=[KEY]
        )
        while batch := iterator.next():
            ids.extend(str(row[KEY]) for row in batch)
        iterator.close()
        return sorted(ids)

    def flush(self) -> None:
        """Make every write so far visible to the next read. Milvus Lite seals its memtable
        into a segment (its searches of unsealed rows are slow); a server needs no flush
        for that (a server's flush waits ~3 s to persist segments it would persist anyway):
        its next read is Strong."""
        if self.server.lite:
            self._client.flush(self.collection)
        self._strong_read = True

    def _read_level(self) -> str:
        """Strong for the first read after opening or flushing, then Session (module doc)."""
        if self._strong_read:
            self._strong_read = False
            return "Strong"
        return "Session"

    def drop(self) -> None:
        self._client.drop_collection(self.collection)

    def close(self) -> None:
        self._client.close()


@_retrying(lambda e: classify(e) == "terminal" or refused_token(e))
def _connect(config: MilvusConfig) -> MilvusClient:
    # pymilvus shares one connection per (uri, token) by default and close() removes it
    # for every client: one store's close() would cut off the others in this process
    # (a generation opened during a replay, a Retriever, the index writer).
    return MilvusClient(
        **milvus_client_kwargs(config),
        timeout=config.connect_timeout_s,
        alias=f"streamrag-{uuid.uuid4().hex}",
    )


def _hit_chunk(hit: Mapping[str, Any]) -> StoredChunk:
    """A search hit's chunk; Milvus before 2.4 names the primary key ``id`` in hits."""
    return stored_chunk({**hit["entity"], KEY: hit[KEY] if KEY in hit else hit["id"]})


def _ids_filter(chunk_ids: Sequence[str]) -> str:
    """``chunk_id in [...]`` with escaped literals: pymilvus's own ``ids=`` quotes ids
    into the expression without escaping them."""
    return f"{KEY} in [{', '.join(literal(i) for i in chunk_ids)}]"


def _filter_expression(filters: Filters | None) -> str:
    if filters is None:
        return ""
    clauses = [f"{name} == {literal(value)}" for name, value in sorted(filters.fields.items())]
    # Keys match METADATA_KEY (checked by Filters), so they cannot break out of ["..."].
    clauses += [
        f'metadata["{key}"] == {literal(value)}' for key, value in sorted(filters.metadata.items())
    ]
    return " and ".join(clauses)


def literal(value: str | int | bool) -> str:
    """``value`` as an expression literal. In a string, backslash and double quote are
    escaped (and newlines, which the lexer rejects), so the only unescaped quote is the
    closing one: the value cannot end the literal early and inject an expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
        return f'"{escaped}"'
    raise StoreError(f"cannot filter on a {type(value).__name__} value: use str, int or bool")


# pymilvus's loggers that have a level of their own (the others inherit it): the RPC
# handlers' (pymilvus.decorators, ...) and MilvusClient's (a connection that failed).
_PYMILVUS_LOGGERS: Final = ("pymilvus", "pymilvus.milvus_client")


@contextmanager
def quiet() -> Iterator[None]:
    """pymilvus logs every failed request as an ERROR before raising it: hush that where
    the failure is expected and handled (a retry, a probe)."""
    loggers = [logging.getLogger(name) for name in _PYMILVUS_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def refused_token(error: BaseException) -> bool:
    """The server refused the client's token (gRPC's UNAUTHENTICATED status, which pymilvus
    leaves in the message's later lines): no retry will change that."""
    return "UNAUTHENTICATED" in str(error)
