"""pgvector store: one PostgreSQL table per index, searched by cosine distance (HNSW).

The chunk id is the primary key, so upsert (INSERT ... ON CONFLICT DO UPDATE) is
idempotent; it never replaces a newer version, and leaves an identical row (a replay)
untouched, indexed_at_ms included, which spares the HNSW index a rewrite.
The password never comes from config: libpq reads PGPASSWORD / PGPASSFILE.
Generations (streamrag.generations): the configured table name may be a simple VIEW
that serves one generation table. PostgreSQL rewrites reads and writes on such a view
(auto-updatable, INSERT ... ON CONFLICT included) to the table, and a swap (CREATE OR
REPLACE VIEW) waits for writes in flight: writers follow it without reopening.
The table name is a validated identifier composed with ``sql.Identifier``; filter values
are always bound parameters. Metadata filters use jsonb containment (``metadata @> %s``),
so type and value must both match, as in Milvus (``"1"`` does not match ``1``).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from streamrag.config import PgvectorConfig
from streamrag.errors import BadRecord
from streamrag.records import EmbeddingRecord
from streamrag.stores.base import Filters, SearchHit, StoredChunk, StoreError, check_k

# A filter that matches at most this many rows is searched exactly (see search()).
EXACT_SCAN_ROWS = 20_000
REGISTRY = "streamrag_generations"  # generations of each served name, see streamrag.generations
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SCALARS = ["doc_id", "version", "position", "span_start", "span_end", "text", "content_hash",
            "source", "title", "metadata", "model_id", "source_ts_ms", "indexed_at_ms"]
_COLUMNS = ["chunk_id", "embedding", *_SCALARS]
_transient = retry(retry=retry_if_exception_type(psycopg.OperationalError),
                   wait=wait_exponential(multiplier=0.2, max=5), stop=stop_after_attempt(6),
                   reraise=True)
F = TypeVar("F", bound=Callable[..., Any])


def _one_line(fn: F) -> F:
    """Retry transient errors; what still fails becomes a one-line StoreError."""
    retried = _transient(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return retried(*args, **kwargs)
        except psycopg.Error as e:
            raise StoreError(f"pgvector {fn.__name__}: {e}".splitlines()[0]) from e

    return wrapper  # type: ignore[return-value]


class PgvectorStore:
    def __init__(self, config: PgvectorConfig, table: str | None = None) -> None:
        self.table = table or config.table
        if not TABLE_NAME.fullmatch(self.table):  # match() would let "t\n" through
            raise StoreError(f"table name {self.table!r} must match {TABLE_NAME.pattern}")
        self._t = sql.Identifier(self.table)
        self._upsert_sql = _upsert_sql(self._t)
        try:
            params = conninfo_to_dict(config.dsn)
        except psycopg.Error as e:
            raise StoreError(f"invalid PostgreSQL dsn: {e}".splitlines()[0]) from e
        where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
        self._pool = ConnectionPool(config.dsn, min_size=1, max_size=config.pool_max,
                                    kwargs={"connect_timeout": 10}, configure=_configure,
                                    timeout=30, open=False, name=f"streamrag-{self.table}")
        try:
            _probe(config.dsn)  # retried with backoff for ~20 s, and tells why it failed
            self._pool.open(wait=True, timeout=20)
        except psycopg.Error as e:
            self._pool.close()
            raise StoreError(f"cannot reach PostgreSQL at {where}: {e}".splitlines()[0]) from e

    @_one_line
    def ensure(self, dim: int) -> None:
        with self._pool.connection() as conn:
            # Serialize concurrent ensure() calls: CREATE ... IF NOT EXISTS can still race.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"streamrag:{self.table}"])
            if _relkind(conn, self.table) == "v":  # a generations view: the table exists
                _check_dim(conn, self.table, dim)
                return
            row = conn.execute(
                "SELECT (SELECT atttypmod FROM pg_attribute WHERE attrelid = r AND attname ="
                " 'embedding' AND NOT attisdropped) FROM to_regclass(%s) r WHERE r IS NOT NULL",
                [self.table]).fetchone()
            if row is not None and row[0] != dim:  # the table exists: its dim must match
                raise StoreError(f"table {self.table} holds {row[0]}-dim vectors, not {dim}:"
                                 " use another table or re-index with the same model")
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {t} (chunk_id text PRIMARY KEY,"
                " embedding vector({dim}) NOT NULL, doc_id text, version bigint, position int,"
                " span_start int, span_end int, text text, content_hash text, source text,"
                " title text, metadata jsonb, model_id text, source_ts_ms bigint,"
                " indexed_at_ms bigint)").format(t=self._t, dim=sql.Literal(int(dim))))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (doc_id)").format(
                i=_index_name(self.table, "doc_id"), t=self._t))
            conn.execute(sql.SQL(
                "CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (embedding vector_cosine_ops)"
            ).format(i=_index_name(self.table, "hnsw"), t=self._t))
            # Metadata filters (metadata @> ...) find their rows without a full scan.
            conn.execute(sql.SQL(
                "CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (metadata jsonb_path_ops)"
            ).format(i=_index_name(self.table, "metadata"), t=self._t))

    @_one_line
    def upsert(self, records: Sequence[EmbeddingRecord]) -> None:
        if not records:
            return
        now = int(time.time() * 1000)
        rows = [_row(r, now) for r in records]
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(self._upsert_sql, rows)  # pipelined; HNSW upkeep dominates

    @_one_line
    def trim(self, doc_id: str, from_position: int, up_to_version: int) -> None:
        with self._pool.connection() as conn:
            conn.execute(sql.SQL("DELETE FROM {t} WHERE doc_id = %s AND position >= %s AND"
                                 " version <= %s").format(t=self._t),
                         [doc_id, from_position, up_to_version])

    @_one_line
    def delete(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            with self._pool.connection() as conn:
                conn.execute(sql.SQL("DELETE FROM {t} WHERE chunk_id = ANY(%s)").format(
                    t=self._t), [list(chunk_ids)])

    @_one_line
    def search(self, vector: Sequence[float], k: int, filters: Filters | None = None
               ) -> list[SearchHit]:
        """The k nearest chunks that match ``filters``. A filter that matches at most
        EXACT_SCAN_ROWS rows is searched exactly: an HNSW scan that must skip past the
        rows the filter excludes gives up after hnsw.max_scan_tuples or its memory, and
        returned nothing at all for matches far from the query. Broader filters use the
        index, and fall back to the exact scan if it still found fewer than k."""
        if check_k(k) == 0:
            return []
        filtered = filters is not None and not filters.empty
        where, params = _where(filters)
        params.update(v=np.asarray(vector, dtype=np.float32), k=k)
        with self._pool.connection() as conn:  # one transaction: set_config(.., true) holds
            if filtered and self._matches_at_most(conn, where, params):
                return self._search_exactly(conn, where, params)
            conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true),"
                         " set_config('hnsw.ef_search', %s, true),"
                         " set_config('hnsw.max_scan_tuples', '100000', true),"
                         " set_config('hnsw.scan_mem_multiplier', '4', true)",
                         [str(min(max(k, 40), 1000))])
            rows = conn.execute(sql.SQL(
                "SELECT 1 - (embedding <=> %(v)s), {cols} FROM {t} {where}"
                " ORDER BY embedding <=> %(v)s LIMIT %(k)s").format(
                cols=_cols(["chunk_id", *_SCALARS]), t=self._t, where=where), params).fetchall()
            if filtered and len(rows) < k:
                return self._search_exactly(conn, where, params)
        return [SearchHit(float(row[0]), _stored(row[1:])) for row in rows]

    def _matches_at_most(self, conn: psycopg.Connection[Any], where: sql.Composable,
                         params: dict[str, Any]) -> bool:
        row = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {t} {where}"
                                   " LIMIT %(cap)s) m").format(t=self._t, where=where),
                           {**params, "cap": EXACT_SCAN_ROWS + 1}).fetchone()
        return row is not None and int(row[0]) <= EXACT_SCAN_ROWS

    def _search_exactly(self, conn: psycopg.Connection[Any], where: sql.Composable,
                        params: dict[str, Any]) -> list[SearchHit]:
        # MATERIALIZED keeps the planner from ordering by the HNSW index: every matching
        # row's distance is computed, as an exact scan does.
        rows = conn.execute(sql.SQL(
            "WITH m AS MATERIALIZED (SELECT embedding <=> %(v)s AS d, {cols} FROM {t} {where})"
            " SELECT 1 - d, {cols} FROM m ORDER BY d, chunk_id LIMIT %(k)s").format(
            cols=_cols(["chunk_id", *_SCALARS]), t=self._t, where=where), params).fetchall()
        return [SearchHit(float(row[0]), _stored(row[1:])) for row in rows]

    @_one_line
    def get(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> list[StoredChunk]:
        if not chunk_ids:
            return []
        cols = ["chunk_id", *_SCALARS] + (["embedding"] if with_vectors else [])
        with self._pool.connection() as conn:
            rows = conn.execute(sql.SQL("SELECT {cols} FROM {t} WHERE chunk_id = ANY(%s)").format(
                cols=_cols(cols), t=self._t), [list(chunk_ids)]).fetchall()
        order = {cid: i for i, cid in enumerate(chunk_ids)}
        return sorted((_stored(r) for r in rows), key=lambda c: order[c.chunk_id])

    @_one_line
    def doc_chunk_ids(self, doc_id: str) -> list[str]:
        with self._pool.connection() as conn:
            rows = conn.execute(sql.SQL("SELECT chunk_id FROM {t} WHERE doc_id = %s ORDER BY"
                                        " chunk_id").format(t=self._t), [doc_id]).fetchall()
        return [r[0] for r in rows]

    @_one_line
    def count(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self._t)).fetchone()
        return int(row[0]) if row else 0

    @_one_line
    def all_ids(self) -> list[str]:
        with self._pool.connection() as conn:
            rows = conn.execute(sql.SQL("SELECT chunk_id FROM {t} ORDER BY chunk_id").format(
                t=self._t)).fetchall()
        return [r[0] for r in rows]

    def flush(self) -> None:
        """Nothing to do: a committed write is visible to every later query."""

    @_one_line
    def drop(self) -> None:
        """Drop the table; for a generations view, the view and all its generations."""
        with self._pool.connection() as conn:
            if _relkind(conn, self.table) != "v":
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=self._t))
                return
            rows = conn.execute(f"DELETE FROM {REGISTRY} WHERE name = %s RETURNING table_name",
                                [self.table]).fetchall()
            conn.execute(sql.SQL("DROP VIEW {t}").format(t=self._t))
            for (table,) in rows:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=sql.Identifier(table)))

    def close(self) -> None:
        self._pool.close()

    def connection(self) -> Any:
        """A pooled connection (context manager; commits on exit) for streamrag.generations."""
        return self._pool.connection()


@retry(retry=retry_if_exception_type(psycopg.OperationalError), reraise=True,
       wait=wait_exponential(multiplier=0.2, max=3), stop=stop_after_delay(20))
def _probe(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        if TypeInfo.fetch(conn, "vector") is None:
            raise StoreError(f"the vector extension is not installed in database {conn.info.dbname}"
                             ": run CREATE EXTENSION vector")


def _relkind(conn: psycopg.Connection[Any], name: str) -> str | None:
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                       [name]).fetchone()
    return str(row[0]) if row else None


def _check_dim(conn: psycopg.Connection[Any], view: str, dim: int) -> None:
    """A view's column keeps its table's vector(n) type: n must be ``dim``."""
    row = conn.execute("SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                       " AND attname = 'embedding' AND NOT attisdropped", [view]).fetchone()
    if row is None or row[0] != dim:
        raise StoreError(f"view {view} serves {row[0] if row else 'no'}-dim vectors, not {dim}:"
                         " serve a generation built with this model (streamrag generations)")


def _configure(conn: psycopg.Connection[Any]) -> None:
    register_vector(conn)
    conn.commit()  # the pool wants connections back idle, not inside the type lookup's txn


def _upsert_sql(t: sql.Identifier) -> sql.Composed:
    content = [sql.Identifier(c) for c in _COLUMNS[1:-1]]  # all but chunk_id, indexed_at_ms
    return sql.SQL(
        "INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT (chunk_id) DO UPDATE SET {sets}"
        " WHERE {t}.version <= EXCLUDED.version AND ({old}) IS DISTINCT FROM ({new})").format(
        t=t, cols=_cols(_COLUMNS), vals=sql.SQL(", ").join(sql.Placeholder() * len(_COLUMNS)),
        sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                                for c in _COLUMNS[1:]),
        old=sql.SQL(", ").join(sql.SQL("{t}.{c}").format(t=t, c=c) for c in content),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{c}").format(c=c) for c in content))


def _index_name(table: str, suffix: str) -> sql.Identifier:
    name = f"{table}_{suffix}"
    if len(name) > 63:  # PostgreSQL would truncate it silently, and truncations can collide
        name = f"{table[:48]}_{hashlib.sha1(table.encode()).hexdigest()[:6]}_{suffix}"
    return sql.Identifier(name)


def _cols(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def _where(filters: Filters | None) -> tuple[sql.Composable, dict[str, Any]]:
    if filters is None or filters.empty:
        return sql.SQL(""), {}
    clauses: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for i, (name, value) in enumerate(sorted(filters.fields.items())):
        clauses.append(sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(f"f{i}")))
        params[f"f{i}"] = value
    if filters.metadata:
        clauses.append(sql.SQL("metadata @> %(m)s"))
        params["m"] = Jsonb(dict(filters.metadata))
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses), params


def _row(record: EmbeddingRecord, now_ms: int) -> tuple[Any, ...]:
    c = record.chunk
    if record.vector is None:
        raise BadRecord(f"chunk {c.chunk_id} has no vector: cannot upsert it")
    return (c.chunk_id, np.asarray(record.vector, dtype=np.float32), c.doc_id, c.version,
            c.position, c.start, c.end, c.text, c.content_hash, c.source, c.title,
            Jsonb(c.metadata), record.model_id, c.source_ts_ms, now_ms)


def _stored(row: Sequence[Any]) -> StoredChunk:
    vector = row[14] if len(row) > 14 else None
    return StoredChunk(
        chunk_id=row[0], doc_id=row[1], version=row[2], position=row[3], start=row[4],
        end=row[5], text=row[6], content_hash=row[7], source=row[8], title=row[9] or None,
        metadata=row[10] or {}, model_id=row[11], source_ts_ms=row[12], indexed_at_ms=row[13],
        vector=[float(x) for x in vector.to_list()] if vector is not None else None,
    )
