"""pgvector store: one PostgreSQL table per index, searched by cosine distance (HNSW).

The columns and DDL come from streamrag.stores.schema. The chunk id is the primary key,
so upsert (INSERT ... ON CONFLICT DO UPDATE) is idempotent; it never replaces a newer
version, and leaves an identical row (a replay) untouched, indexed_at_ms included, which
spares the HNSW index a rewrite. The password never comes from config: libpq reads
PGPASSWORD / PGPASSFILE.

The table name may also be a simple VIEW that serves one generation table
(streamrag.stores.pgvector_generations): PostgreSQL rewrites reads and writes on such a
view (auto-updatable, INSERT ... ON CONFLICT included) to the table, and a swap waits for
writes in flight, so writers follow it without reopening.

The table name is a validated identifier composed with ``sql.Identifier``; filter values
are always bound parameters. Metadata filters use jsonb containment (``metadata @> %s``),
so type and value must both match, as in Milvus (``"1"`` does not match ``1``).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Final, ParamSpec, TypeVar

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
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
from streamrag.records import EmbeddingRecord
from streamrag.security import pg_connect_kwargs
from streamrag.stores.base import (
    MAX_DOCUMENT_CHUNKS,
    Filters,
    SearchHit,
    StoredChunk,
    StoreError,
    StoreUnreachable,
    Trim,
    check_k,
)
from streamrag.stores.schema import (
    COLUMNS,
    CONTENT,
    INDEX_SUFFIXES,
    KEY,
    LEXICAL,
    LEXICAL_TYPE,
    PG_INDEXES,
    PG_TYPES,
    SCALARS,
    TEXT_SEARCH_CONFIG,
    VECTOR,
    column_values,
    pgvector_index_ddl,
    pgvector_table_ddl,
    pgvector_type,
    stored_chunk,
)

INDEXES_PENDING: Final = "streamrag: search indexes pending (built at swap)"
# A filter that matches at most this many rows is searched exactly (see search()).
EXACT_SCAN_ROWS = 20_000
# A lexical search ranks at most this many of the rows that match its words: ranking reads
# each match's text vector, and words found in most of a large table made a query rank most
# of it (up to 0.8 s at 200,000 chunks). The rows come as the text index finds them, not best
# first: past the cap a query's hits are the best of a sample of its matches.
LEXICAL_CANDIDATES = 2_000
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NAMES = [c.name for c in COLUMNS]
_READ = [KEY, *SCALARS]
_transient = retry(
    retry=retry_if_exception_type(psycopg.OperationalError),
    wait=wait_exponential(multiplier=0.2, max=5),
    stop=stop_after_attempt(6),
    reraise=True,
)
P = ParamSpec("P")
R = TypeVar("R")
Connection = psycopg.Connection[Any]


def one_line(fn: Callable[P, R]) -> Callable[P, R]:
    """Retry transient errors; what still fails becomes a one-line StoreError."""
    retried = _transient(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return retried(*args, **kwargs)
        except psycopg.Error as e:
            raise StoreError(f"pgvector {fn.__name__}: {e}".splitlines()[0]) from e

    return wrapper


class PgvectorStore:
    def __init__(self, config: PgvectorConfig, table: str | None = None) -> None:
        self.table = check_table_name(table or config.table)
        self._t = sql.Identifier(self.table)
        self._upsert_sql = _upsert_sql(self._t)
        self._write_connections = config.write_connections
        self._lexical = False
        self._pool = open_pool(config, self.table)

    @one_line
    def ensure(self, dim: int, search_indexes: bool = True) -> None:
        """The table and its indexes, if missing. A table created with
        ``search_indexes=False`` is marked as waiting for its search indexes (HNSW,
        metadata, lexical): a bulk load into a new generation runs several times faster
        without them, and ``build_search_indexes`` builds each in one pass afterwards (a
        swap does); until then ``ensure`` leaves them out too. The doc id index, which
        trims and document reads use, is always made."""
        with self.connection() as conn:
            # Serialize concurrent ensure() calls: CREATE ... IF NOT EXISTS can still race.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"streamrag:{self.table}"])
            stored = vector_dim(conn, self.table)
            if stored is not None and stored != dim:
                what = "view" if relkind(conn, self.table) == "v" else "table"
                raise StoreError(
                    f"{what} {self.table} holds {stored}-dim vectors, not {dim}:"
                    " use another table, or serve a generation built with this"
                    " model (streamrag generations)"
                )
            if relkind(conn, self.table) == "v":  # a generations view: its table exists
                return
            conn.execute(sql.SQL(pgvector_table_ddl(self._t.as_string(conn), dim)))
            pending = not search_indexes if stored is None else _indexes_pending(conn, self.table)
            if pending and stored is None:  # new: marked, for ensure() calls to come
                conn.execute(
                    sql.SQL("COMMENT ON TABLE {} IS {}").format(
                        self._t, sql.Literal(INDEXES_PENDING)
                    )
                )
            # A table made by an earlier version gets the columns added since (NULL in
            # its rows until they are written again; the lexical column is computed).
            added = [
                (column.name, pgvector_type(column, dim))
                for column in COLUMNS
                if column.kind not in ("key", "vector")
            ]
            for name, kind in [*added, (LEXICAL, LEXICAL_TYPE)]:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        self._t, sql.Identifier(name), sql.SQL(kind)
                    )
                )
            for suffix, statement in _index_ddl(conn, self.table).items():
                if not (pending and PG_INDEXES[suffix].search):
                    conn.execute(sql.SQL(statement))

    @one_line
    def upsert(
        self, records: Sequence[EmbeddingRecord], stored_versions: Mapping[str, int] | None = None
    ) -> None:
        """The batch in bulk: a binary COPY into a temporary table, then one set-based
        INSERT ... ON CONFLICT that keeps the version guard (the statement guards versions
        itself: stored_versions is not needed here). A large batch is split by chunk id
        (split_by_chunk) and its shares written over several connections at once; each
        share is one transaction, and a failed one fails the call (a retry writes every
        share again: an upsert applied twice changes nothing)."""
        if not records:
            return
        now = int(time.time() * 1000)
        shares = split_by_chunk(records, self._write_connections)
        if len(shares) == 1:
            self._upsert_share(records, now)
            return
        with ThreadPoolExecutor(len(shares), thread_name_prefix="pgvector-upsert") as pool:
            list(pool.map(lambda share: self._upsert_share(share, now), shares))

    def _upsert_share(self, records: Sequence[EmbeddingRecord], now: int) -> None:
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(_STAGING_DDL)
            with cur.copy(_COPY_SQL) as copy:
                copy.set_types(_STAGING_TYPES)
                for ordinal, record in enumerate(records):
                    copy.write_row((ordinal, *_row(record, now)))
            cur.execute(self._upsert_sql)

    @one_line
    def trim(self, trims: Sequence[Trim]) -> None:
        """Every trim in one statement: the rows of each document from its position on,
        of its version or older."""
        if not trims:
            return
        doc_ids, positions, versions = (list(column) for column in zip(*trims, strict=True))
        with self.connection() as conn:
            conn.execute(
                sql.SQL(
                    "DELETE FROM {t} USING unnest(%s::text[], %s::bigint[], %s::bigint[])"
                    " AS trim(doc_id, position, version) WHERE {t}.doc_id = trim.doc_id"
                    " AND {t}.position >= trim.position AND {t}.version <= trim.version"
                ).format(t=self._t),
                [doc_ids, positions, versions],
            )

    @one_line
    def delete(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            with self.connection() as conn:
                conn.execute(
                    sql.SQL("DELETE FROM {t} WHERE chunk_id = ANY(%s)").format(t=self._t),
                    [list(chunk_ids)],
                )

    @one_line
    def search(
        self, vector: Sequence[float], k: int, filters: Filters | None = None
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
        with self.connection() as conn:  # one transaction: set_config(..., true) holds
            if filtered and self._matches_at_most(conn, where, params):
                return self._search_exactly(conn, where, params)
            conn.execute(
                "SELECT set_config('hnsw.iterative_scan', 'strict_order', true),"
                " set_config('hnsw.ef_search', %s, true),"
                " set_config('hnsw.max_scan_tuples', '100000', true),"
                " set_config('hnsw.scan_mem_multiplier', '4', true)",
                [str(min(max(k, 40), 1000))],
            )
            rows = conn.execute(
                sql.SQL(
                    "SELECT 1 - ({e} <=> %(v)s), {cols} FROM {t} {where}"
                    " ORDER BY {e} <=> %(v)s LIMIT %(k)s"
                ).format(e=sql.Identifier(VECTOR), cols=_cols(_READ), t=self._t, where=where),
                params,
            ).fetchall()
            if filtered and len(rows) < k:
                return self._search_exactly(conn, where, params)
        return [SearchHit(float(row[0]), _stored(row[1:], _READ)) for row in rows]

    @one_line
    def lexical_search(self, text: str, k: int, filters: Filters | None = None) -> list[SearchHit]:
        """The k chunks that best match the words of ``text`` (full-text search, ranked by
        ts_rank_cd). English stop words of the query are left out (unless it has nothing
        else); chunks that hold all the other words come first, and only when fewer than
        k do, chunks that hold some of them are ranked too. The score is that rank, not a
        cosine."""
        if check_k(k) == 0:
            return []
        with self.connection() as conn:
            # Asked once per store while the answer is yes, not on every query.
            self._lexical = self._lexical or self._has_lexical(conn)
            if not self._lexical:
                raise StoreError(
                    f"{self.table} was built before lexical search: rebuild it into a new"
                    " generation (`streamrag replay full`) to use hybrid mode"
                )
            # An OR over every word ranked nearly every row of a 200,000-chunk table
            # ("the" was in 96 % of them): ~1 s a query. The AND of the words that carry
            # meaning is selective, and the GIN index finds its rows.
            hits = self._lexical_rows(conn, text, k, filters, "&")
            if len(hits) < k:
                hits = self._lexical_rows(conn, text, k, filters, "|")
        return hits

    def _lexical_rows(
        self, conn: Connection, text: str, k: int, filters: Filters | None, join: str
    ) -> list[SearchHit]:
        matches = sql.SQL("{lex} @@ q.query").format(lex=sql.Identifier(LEXICAL))
        where, params = _where(filters, matches)
        params.update(q=text, k=k, config=TEXT_SEARCH_CONFIG, join=join, cap=LEXICAL_CANDIDATES)
        rows = conn.execute(
            sql.SQL(
                # The query's words as the table's words are made (the same config), less
                # English stop words (an empty lexize), then ANDed or ORed; each word is
                # quoted as a lexeme by plainto_tsquery, so the text is never tsquery syntax.
                "WITH w AS (SELECT coalesce((SELECT string_agg(lexeme, ' ')"
                " FROM unnest(to_tsvector(%(config)s::regconfig, %(q)s))"
                " WHERE ts_lexize('english_stem', lexeme) <> '{{}}'), %(q)s) AS words),"
                " q AS (SELECT replace(plainto_tsquery(%(config)s::regconfig, w.words)::text,"
                " '&', %(join)s)::tsquery AS query FROM w),"
                # At most LEXICAL_CANDIDATES matches are ranked (MATERIALIZED: the planner
                # may not push the ranking's ORDER BY into the capped scan).
                " c AS MATERIALIZED (SELECT {lex}, {cols} FROM {t}, q {where} LIMIT %(cap)s)"
                " SELECT ts_rank_cd(c.{lex}, q.query), {ccols} FROM c, q"
                " ORDER BY 1 DESC, chunk_id LIMIT %(k)s"
            ).format(
                lex=sql.Identifier(LEXICAL),
                cols=_cols(_READ),
                ccols=sql.SQL(", ").join(sql.Identifier("c", n) for n in _READ),
                t=self._t,
                where=where,
            ),
            params,
        ).fetchall()
        return [SearchHit(float(row[0]), _stored(row[1:], _READ)) for row in rows]

    def _has_lexical(self, conn: Connection) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
            " AND NOT attisdropped",
            [self.table, LEXICAL],
        ).fetchone()
        return row is not None

    @one_line
    def document(self, doc_id: str, filters: Filters | None = None) -> list[StoredChunk]:
        where, params = _where(filters, sql.SQL("doc_id = %(doc)s"))
        params.update(doc=doc_id, cap=MAX_DOCUMENT_CHUNKS)
        with self.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT {cols} FROM {t} {where} ORDER BY position LIMIT %(cap)s").format(
                    cols=_cols(_READ), t=self._t, where=where
                ),
                params,
            ).fetchall()
        return [_stored(r, _READ) for r in rows]

    def _matches_at_most(
        self, conn: Connection, where: sql.Composable, params: dict[str, Any]
    ) -> bool:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {t} {where} LIMIT %(cap)s) m").format(
                t=self._t, where=where
            ),
            {**params, "cap": EXACT_SCAN_ROWS + 1},
        ).fetchone()
        return row is not None and int(row[0]) <= EXACT_SCAN_ROWS

    def _search_exactly(
        self, conn: Connection, where: sql.Composable, params: dict[str, Any]
    ) -> list[SearchHit]:
        # MATERIALIZED keeps the planner from ordering by the HNSW index: every matching
        # row's distance is computed, as an exact scan does.
        rows = conn.execute(
            sql.SQL(
                "WITH m AS MATERIALIZED (SELECT {e} <=> %(v)s AS d, {cols} FROM {t} {where})"
                " SELECT 1 - d, {cols} FROM m ORDER BY d, chunk_id LIMIT %(k)s"
            ).format(e=sql.Identifier(VECTOR), cols=_cols(_READ), t=self._t, where=where),
            params,
        ).fetchall()
        return [SearchHit(float(row[0]), _stored(row[1:], _READ)) for row in rows]

    @one_line
    def get(self, chunk_ids: Sequence[str], with_vectors: bool = False) -> list[StoredChunk]:
        if not chunk_ids:
            return []
        cols = _READ + ([VECTOR] if with_vectors else [])
        with self.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT {cols} FROM {t} WHERE chunk_id = ANY(%s)").format(
                    cols=_cols(cols), t=self._t
                ),
                [list(chunk_ids)],
            ).fetchall()
        order = {cid: i for i, cid in enumerate(chunk_ids)}
        return sorted((_stored(r, cols) for r in rows), key=lambda c: order[c.chunk_id])

    @one_line
    def doc_chunk_ids(self, doc_id: str) -> list[str]:
        with self.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT chunk_id FROM {t} WHERE doc_id = %s ORDER BY chunk_id").format(
                    t=self._t
                ),
                [doc_id],
            ).fetchall()
        return [str(r[0]) for r in rows]

    @one_line
    def count(self) -> int:
        with self.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self._t)).fetchone()
        return int(row[0]) if row else 0

    @one_line
    def all_ids(self) -> list[str]:
        with self.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT chunk_id FROM {t} ORDER BY chunk_id").format(t=self._t)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def flush(self) -> None:
        """Nothing to do: a committed write is visible to every later query."""

    @one_line
    def drop(self) -> None:
        """Drop this table (generations and their view: streamrag.generations.drop_all)."""
        with self.connection() as conn:
            if relkind(conn, self.table) == "v":
                raise StoreError(
                    f"{self.table} serves generations: drop them with"
                    " streamrag.generations.drop_all"
                )
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=self._t))

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection in a transaction that commits on exit."""
        with self._pool.connection() as conn:
            yield conn


def check_table_name(name: str) -> str:
    if not TABLE_NAME.fullmatch(name):  # match() would let "t\n" through
        raise StoreError(f"table name {name!r} must match {TABLE_NAME.pattern}")
    return name


def open_pool(config: PgvectorConfig, name: str) -> ConnectionPool[Connection]:
    """A connection pool, opened once PostgreSQL answers (one-line StoreError if not)."""
    try:
        params = conninfo_to_dict(config.dsn)
        conninfo = make_conninfo(config.dsn, **pg_connect_kwargs(config))
    except psycopg.Error as e:
        raise StoreError(f"invalid PostgreSQL dsn: {e}".splitlines()[0]) from e
    where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
    pool: ConnectionPool[Connection] = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=config.pool_max,
        kwargs={"connect_timeout": 10},
        configure=_configure,
        timeout=30,
        open=False,
        name=f"streamrag-{name}",
    )
    try:
        # Retried with backoff for unreachable_retry_s, and tells why it failed.
        _probe.retry_with(stop=stop_after_delay(config.unreachable_retry_s))(conninfo)
        pool.open(wait=True, timeout=config.unreachable_retry_s)
    except psycopg.Error as e:
        pool.close()
        if refused(e):
            raise StoreError(f"PostgreSQL at {where} refused the connection: {_first(e)}") from e
        raise StoreUnreachable(f"cannot reach PostgreSQL at {where}: {_first(e)}") from e
    return pool


# Wrong credentials or an untrusted certificate: retrying cannot help.
_REFUSALS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "certificate verify failed",
    "SSL error",
    "TLS is required",  # the secured local stack's TLS door (streamrag/local/pgtls.py)
)


def refused(e: BaseException) -> bool:
    """Whether PostgreSQL (or its TLS) refused this client, rather than being away."""
    return isinstance(e, psycopg.OperationalError) and (
        getattr(e, "sqlstate", None) in ("28P01", "28000")
        or any(text in str(e) for text in _REFUSALS)
    )


def _first(e: BaseException) -> str:
    """The line of a libpq error that says what happened (it adds the address first)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = [ln for ln in lines if "FATAL:" in ln or "SSL" in ln]
    return (detail or lines or [type(e).__name__])[0]


@retry(
    retry=lambda state: (
        state.outcome is not None
        and isinstance(state.outcome.exception(), psycopg.OperationalError)
        and not refused(state.outcome.exception())
    ),
    reraise=True,
    wait=wait_exponential(multiplier=0.2, max=3),
    stop=stop_after_delay(PgvectorConfig.model_fields["unreachable_retry_s"].default),
)
def _probe(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        if TypeInfo.fetch(conn, "vector") is None:
            raise StoreError(
                f"the vector extension is not installed in database {conn.info.dbname}"
                ": run CREATE EXTENSION vector"
            )


def relkind(conn: Connection, name: str) -> str | None:
    """'r' for a table, 'v' for a view, None when ``name`` does not exist."""
    row = conn.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [name]
    ).fetchone()
    return str(row[0]) if row else None


def vector_dim(conn: Connection, name: str) -> int | None:
    """The n of the vector(n) column of a table or view; None when it does not exist."""
    row = conn.execute(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attname = %s AND NOT attisdropped",
        [name, VECTOR],
    ).fetchone()
    return int(row[0]) if row else None


def build_search_indexes(conn: Connection, table: str, memory_mb: int) -> None:
    """The search indexes that a chunk table still lacks, each built in one pass with
    ``memory_mb`` of maintenance_work_mem, in the connection's transaction; then the
    table is no longer marked as waiting for them. Idempotent, and an index already there
    under another name (a table adopted as generation 0 keeps its first name's indexes)
    is not built twice."""
    present = _indexed(conn, table)
    conn.execute(
        sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(f"{memory_mb}MB"))
    )
    for suffix, statement in _index_ddl(conn, table).items():
        index = PG_INDEXES[suffix]
        if (index.column, index.method) not in present:
            conn.execute(sql.SQL(statement))
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(sql.Identifier(table)))


def _index_ddl(conn: Connection, table: str) -> dict[str, str]:
    names = {s: index_name(table, s).as_string(conn) for s in INDEX_SUFFIXES}
    return pgvector_index_ddl(sql.Identifier(table).as_string(conn), names)


def _indexes_pending(conn: Connection, table: str) -> bool:
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [table]).fetchone()
    return row is not None and row[0] == INDEXES_PENDING


def _indexed(conn: Connection, table: str) -> set[tuple[str, str]]:
    """(column, access method) of the table's single-column indexes."""
    rows = conn.execute(
        "SELECT a.attname, am.amname FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = to_regclass(%s) AND i.indnatts = 1",
        [table],
    ).fetchall()
    return {(name, method) for name, method in rows}


def index_name(table: str, suffix: str) -> sql.Identifier:
    name = f"{table}_{suffix}"
    if len(name) > 63:  # PostgreSQL would truncate it silently, and truncations can collide
        name = f"{table[:48]}_{hashlib.sha1(table.encode()).hexdigest()[:6]}_{suffix}"
    return sql.Identifier(name)


def _configure(conn: Connection) -> None:
    register_vector(conn)
    conn.commit()  # the pool wants connections back idle, not inside the type lookup's txn


def _cols(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


# A batch of upserts is copied into this session's staging table (emptied at commit), in
# pgvector's binary form (float32, no decimal text), with its place in the batch.
_STAGING_NAME = "streamrag_upsert_staging"
_STAGING = sql.Identifier(_STAGING_NAME)
_STAGING_TYPES = ["bigint", *(PG_TYPES[c.kind] for c in COLUMNS)]
# Made once per session (a DO block: CREATE ... IF NOT EXISTS would send a notice each time).
_STAGING_DDL = sql.SQL(
    "DO $$ BEGIN IF to_regclass('pg_temp.{name}') IS NULL THEN"
    " CREATE TEMPORARY TABLE {s} (ordinal bigint, {cols}) ON COMMIT DELETE ROWS;"
    " END IF; END $$"
).format(
    name=sql.SQL(_STAGING_NAME),  # a constant of ours
    s=_STAGING,
    cols=sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(PG_TYPES[c.kind])) for c in COLUMNS
    ),
)
_COPY_SQL = sql.SQL("COPY {s} (ordinal, {cols}) FROM STDIN (FORMAT BINARY)").format(
    s=_STAGING, cols=_cols(_NAMES)
)


# A batch is split only into shares of at least this many rows: below it, a connection's
# round trips cost more than what another core takes off the share.
MIN_SHARE_ROWS: Final = 64


def split_by_chunk(
    records: Sequence[EmbeddingRecord], most: int
) -> list[Sequence[EmbeddingRecord]]:
    """``records`` in at most ``most`` shares of at least MIN_SHARE_ROWS, by chunk id: every
    record of a chunk lands in the same share, in the batch's order (of two equal versions,
    the later one still wins), so shares written at once never touch the same row."""
    n = max(1, min(most, len(records) // MIN_SHARE_ROWS))
    if n == 1:
        return [records]
    shares: list[list[EmbeddingRecord]] = [[] for _ in range(n)]
    for record in records:  # hash(): the same share for a chunk id within this call
        shares[hash(record.chunk.chunk_id) % n].append(record)
    return [share for share in shares if share]


def _upsert_sql(t: sql.Identifier) -> sql.Composed:
    """From the staging table, one row per chunk id (the newest version; of equal ones,
    the last in the batch, as when the rows were written one by one), in key order (two
    writers lock rows in the same order); a stored row is replaced only by one at least
    as new, and an identical one is left alone."""
    content = [sql.Identifier(c) for c in CONTENT]
    return sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM {s}"
        " ORDER BY {key}, version DESC, ordinal DESC"
        " ON CONFLICT ({key}) DO UPDATE SET {sets}"
        " WHERE {t}.version <= EXCLUDED.version AND ({old}) IS DISTINCT FROM ({new})"
    ).format(
        t=t,
        s=_STAGING,
        cols=_cols(_NAMES),
        key=sql.Identifier(KEY),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in _NAMES if c != KEY
        ),
        old=sql.SQL(", ").join(sql.SQL("{t}.{c}").format(t=t, c=c) for c in content),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{c}").format(c=c) for c in content),
    )


def _where(
    filters: Filters | None, *extra: sql.Composable
) -> tuple[sql.Composable, dict[str, Any]]:
    """The WHERE clause of ``filters`` (values bound as parameters) and ``extra`` clauses."""
    clauses: list[sql.Composable] = list(extra)
    params: dict[str, Any] = {}
    if filters is not None:
        for i, (name, value) in enumerate(sorted(filters.fields.items())):
            clauses.append(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(f"f{i}"))
            )
            params[f"f{i}"] = value
        if filters.metadata:
            clauses.append(sql.SQL("metadata @> %(m)s"))
            params["m"] = Jsonb(dict(filters.metadata))
    if not clauses:
        return sql.SQL(""), params
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses), params


def _row(record: EmbeddingRecord, now_ms: int) -> tuple[Any, ...]:
    values = column_values(record, now_ms)
    values[VECTOR] = np.asarray(values[VECTOR], dtype=np.float32)
    values["metadata"] = Jsonb(values["metadata"])
    return tuple(values[name] for name in _NAMES)


def _stored(row: Sequence[Any], names: Sequence[str]) -> StoredChunk:
    values = dict(zip(names, row, strict=True))
    if values.get(VECTOR) is not None:
        values[VECTOR] = values[VECTOR].to_list()
    return stored_chunk(values)
