"""Generations on pgvector: tables ``<name>__g<N>`` behind a VIEW named ``<name>``.

The registry table ``streamrag_generations`` records each generation's number, table,
model id and times, and which one serves. A swap is one transaction: it moves the serving
flag and replaces the view (``CREATE OR REPLACE VIEW``), so readers and the live writer,
which only use the view, follow it at once. A serving name that is still a plain table
(made before generations existed) is generation 0 until the first swap renames it to
``<name>__g0``, in the same transaction. Policy (numbering, verify-then-swap, rollback)
is streamrag.generations'; this module only does what it is told, atomically.
"""

from __future__ import annotations

from psycopg import sql

from streamrag.config import PgvectorConfig
from streamrag.stores.base import Generation, StoreError
from streamrag.stores.pgvector import (
    Connection,
    PgvectorStore,
    build_search_indexes,
    check_table_name,
    one_line,
    open_pool,
    relkind,
)

REGISTRY = "streamrag_generations"
_REGISTRY_DDL = f"""CREATE TABLE IF NOT EXISTS {REGISTRY} (
  name text NOT NULL, generation int NOT NULL, table_name text NOT NULL UNIQUE,
  model_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
  serving boolean NOT NULL DEFAULT false, served_at timestamptz,
  PRIMARY KEY (name, generation))"""
_MS = "(extract(epoch FROM {}) * 1000)::bigint"


class PgvectorGenerations:
    """The generations of one serving name (see the module doc)."""

    def __init__(self, config: PgvectorConfig) -> None:
        self._config = config
        self.base = check_table_name(config.table)
        self._pool = open_pool(config, f"{self.base}-generations")

    @one_line
    def generations(self) -> list[Generation]:
        with self._pool.connection() as conn:
            gens = [
                Generation(int(n), str(t), str(m), int(c), bool(s), int(sv), _sample(conn, t)[1])
                for n, t, m, c, s, sv in self._rows(conn)
            ]
            if relkind(conn, self.base) == "r":
                model, chunker = _sample(conn, self.base)
                gens.append(Generation(0, self.base, model, 0, True, chunker=chunker))
        return gens

    def serving(self) -> Generation | None:
        return next((g for g in self.generations() if g.serving), None)

    def create(self, number: int, name: str, model_id: str, dim: int) -> None:
        self._register(number, name, model_id)
        table = PgvectorStore(self._config, name)
        try:
            # Filled in bulk before it serves: its search indexes come at its swap, built
            # in one pass over the loaded rows.
            table.ensure(dim, search_indexes=False)
        except Exception:
            self._unregister(name)
            raise
        finally:
            table.close()

    @one_line
    def swap(self, target: Generation) -> None:
        # In a transaction before the swap's: writers wait for its lock, not for a build.
        with self._pool.connection() as conn:
            build_search_indexes(conn, target.name, self._config.index_build_memory_mb)
        with self._pool.connection() as conn:  # one transaction: all or nothing
            _lock(conn)
            if relkind(conn, self.base) == "r":  # adopt the plain table as generation 0
                g0 = f"{self.base}__g0"
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        sql.Identifier(self.base), sql.Identifier(g0)
                    )
                )
                conn.execute(
                    f"INSERT INTO {REGISTRY} (name, generation, table_name, model_id,"
                    " created_at, served_at) VALUES (%s, 0, %s, %s, to_timestamp(0),"
                    " to_timestamp(0.001))",
                    [self.base, g0, _sample(conn, g0)[0]],
                )
            conn.execute(
                f"UPDATE {REGISTRY} SET serving = false WHERE name = %s AND serving", [self.base]
            )
            conn.execute(
                f"UPDATE {REGISTRY} SET serving = true, served_at = clock_timestamp()"
                " WHERE name = %s AND table_name = %s",
                [self.base, target.name],
            )
            conn.execute(
                sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT * FROM {}").format(
                    sql.Identifier(self.base), sql.Identifier(target.name)
                )
            )

    @one_line
    def drop(self, name: str) -> None:
        with self._pool.connection() as conn:
            _lock(conn)
            row = conn.execute(
                f"DELETE FROM {REGISTRY} WHERE name = %s AND table_name = %s RETURNING serving",
                [self.base, name],
            ).fetchone()
            if row is None or row[0]:  # raising rolls the transaction back
                raise StoreError(
                    f"{name} is serving: swap or roll back first"
                    if row
                    else f"{name} is no generation of {self.base}"
                )
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))

    @one_line
    def drop_all(self) -> None:
        with self._pool.connection() as conn:
            _lock(conn)
            if relkind(conn, self.base) == "v":
                conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(self.base)))
            tables = [
                str(t)
                for (t,) in conn.execute(
                    f"DELETE FROM {REGISTRY} WHERE name = %s RETURNING table_name", [self.base]
                ).fetchall()
            ]
            for table in [*tables, self.base]:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))

    def close(self) -> None:
        self._pool.close()

    @one_line
    def _register(self, number: int, name: str, model_id: str) -> None:
        with self._pool.connection() as conn:
            _lock(conn)
            conn.execute(
                f"INSERT INTO {REGISTRY} (name, generation, table_name, model_id)"
                " VALUES (%s, %s, %s, %s)",
                [self.base, number, name, model_id],
            )

    @one_line
    def _unregister(self, name: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(f"DELETE FROM {REGISTRY} WHERE table_name = %s", [name])

    def _rows(self, conn: Connection) -> list[tuple[int, str, str, int, bool, int]]:
        if relkind(conn, REGISTRY) is None:
            return []
        rows = conn.execute(
            f"SELECT generation, table_name, model_id, {_MS.format('created_at')}, serving,"
            f" coalesce({_MS.format('served_at')}, 0) FROM {REGISTRY}"
            " WHERE name = %s ORDER BY generation",
            [self.base],
        ).fetchall()
        return [(int(n), str(t), str(m), int(c), bool(s), int(sv)) for n, t, m, c, s, sv in rows]


def _lock(conn: Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('streamrag:generations'))")
    conn.execute(_REGISTRY_DDL)


def _sample(conn: Connection, table: str) -> tuple[str, str]:
    """(model id, chunker id) of one chunk of a table; empty when it has none (or is
    gone: a registry row of a dropped table)."""
    if relkind(conn, table) is None:
        return "", ""
    row = conn.execute(
        sql.SQL("SELECT model_id, chunker FROM {} LIMIT 1").format(sql.Identifier(table))
    ).fetchone()
    return (str(row[0]), str(row[1] or "")) if row else ("", "")
