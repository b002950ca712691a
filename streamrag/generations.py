"""Generations of the index: collections/tables ``<name>__g<N>`` behind one serving name.

The configured ``store.collection`` / ``store.table`` is the *serving name*: readers and
the ingest job use only it. A replay builds generation N next to the serving one,
verifies it, then swaps the serving name to it atomically:

- Milvus: the serving name is an alias (``alter_alias``: one server-side operation; every
  request resolves the alias, so searches and the live writer follow it at once). The
  model id and timestamps are collection properties. Milvus Lite 3.2.2 cannot list
  collections (its ShowCollections reply fails), so generations are then found by
  probing ``<name>__g0..`` up to 16 numbers past the highest known one.
- pgvector: the serving name is a simple VIEW (``CREATE OR REPLACE VIEW`` in the same
  transaction that moves the serving flag in the ``streamrag_generations`` registry).
  PostgreSQL writes through a simple view, INSERT ... ON CONFLICT included, so the live
  writer follows a swap too.

Adoption: a serving name that is still a plain collection/table (made by the ingest job
before generations existed) is listed as generation 0 and stays untouched until the
first swap, which renames it to ``<name>__g0`` (no copy) and puts the alias/view in its
place. On pgvector rename and view are one transaction; on Milvus they are two calls a
few milliseconds apart, which the stores' retries ride over.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from streamrag.config import MilvusConfig, Settings
from streamrag.stores import open_store
from streamrag.stores.base import VectorStore

SUFFIX = re.compile(r"__g(\d+)$")
_P = "streamrag."  # Milvus collection property prefix
_REGISTRY_DDL = """CREATE TABLE IF NOT EXISTS streamrag_generations (
  name text NOT NULL, generation int NOT NULL, table_name text NOT NULL UNIQUE,
  model_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
  serving boolean NOT NULL DEFAULT false, served_at timestamptz,
  PRIMARY KEY (name, generation))"""
_MS = "(extract(epoch FROM {}) * 1000)::bigint"


class GenerationError(Exception):
    """A generation operation that cannot be done; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Generation:
    number: int
    name: str  # the collection/table that holds it
    model_id: str
    created_at_ms: int
    serving: bool
    served_at_ms: int = 0  # when it last became serving; 0: never served


def serving_name(settings: Settings) -> str:
    s = settings.store
    return s.collection if isinstance(s, MilvusConfig) else s.table


def generation_name(settings: Settings, number: int) -> str:
    return f"{serving_name(settings)}__g{number}"


def list_generations(settings: Settings) -> list[Generation]:
    with _backend(settings) as b:
        return sorted(b.list(), key=lambda g: g.number)


def serving(settings: Settings) -> Generation | None:
    with _backend(settings) as b:
        return b.serving()


def create_generation(settings: Settings, model_id: str, dim: int) -> str:
    """Create the next generation, empty, for vectors of ``model_id``; returns its name."""
    with _backend(settings) as b:
        number = max((g.number for g in b.list()), default=0) + 1
        name = generation_name(settings, number)
        b.create(number, name, model_id, dim)
        return name


def open_generation(settings: Settings, name: str) -> VectorStore:
    return open_store(settings.store, name)


def swap(settings: Settings, to: str | int) -> Generation:
    """Serve generation ``to`` (a number or a name); atomic for readers and writers."""
    with _backend(settings) as b:
        gens = b.list()
        target = next((g for g in gens if to in (g.number, g.name, f"g{g.number}")), None)
        if target is None:
            raise GenerationError(f"no generation {to} of {b.base}"
                                  f" (have: {', '.join(g.name for g in gens) or 'none'})")
        if not target.serving:
            b.swap(target)
        return b.serving() or target


def rollback(settings: Settings) -> Generation:
    """Serve again the generation that served before the current one (twice: back again).

    It holds what it held when it stopped serving: the live writer has written to the
    newer generation since; ``streamrag replay rematerialize`` rebuilds from the log."""
    before = [g for g in list_generations(settings) if not g.serving and g.served_at_ms > 0]
    if not before:
        raise GenerationError(f"{serving_name(settings)}: no previous generation to roll back to")
    return swap(settings, max(before, key=lambda g: g.served_at_ms).name)


def drop_old(settings: Settings, keep: int = 2) -> list[str]:
    """Drop all but the ``keep`` newest generations; the serving one is always kept."""
    if keep < 1:
        raise GenerationError("keep must be at least 1")
    with _backend(settings) as b:
        gens = sorted(b.list(), key=lambda g: g.number, reverse=True)
        doomed = [g.name for g in gens[keep:] if not g.serving]
        for name in doomed:
            b.drop(name)
        return doomed


def drop_generation(settings: Settings, name: str) -> None:
    """Drop one generation (e.g. a replay that failed verification); never the serving one."""
    with _backend(settings) as b:
        b.drop(name)


def drop_all(settings: Settings) -> None:
    """Drop the serving name and every generation (tests, teardown)."""
    with _backend(settings) as b:
        b.drop_all()


@contextmanager
def _backend(settings: Settings) -> Iterator[Any]:
    backend = _Milvus(settings) if isinstance(settings.store, MilvusConfig) else _Pg(settings)
    try:
        yield backend
    finally:
        backend.store.close()


def _number(base: str, name: str) -> int | None:
    m = SUFFIX.search(name)
    return int(m.group(1)) if m and name[: m.start()] == base else None


class _Milvus:
    def __init__(self, settings: Settings) -> None:
        from streamrag.stores.milvus import MilvusStore

        self.settings, self.base = settings, serving_name(settings)
        self.store = MilvusStore(settings.store)  # type: ignore[arg-type]

    def list(self) -> list[Generation]:
        target = self.store.resolve()
        names = self.store.collection_names(f"{self.base}__g")
        if names is None:
            names = self._probe(target)
        gens = [self._describe(n, target) for n in names if _number(self.base, n) is not None]
        if target == self.base:
            gens.append(self._plain())
        return gens

    def serving(self) -> Generation | None:
        target = self.store.resolve()
        if target is None:
            return None
        return self._plain() if target == self.base else self._describe(target, target)

    def create(self, number: int, name: str, model_id: str, dim: int) -> None:
        gen = open_generation(self.settings, name)
        try:
            gen.ensure(dim)
        finally:
            gen.close()
        self.store.set_properties(name, {_P + "model_id": model_id,
                                         _P + "created_at_ms": str(_now_ms())})

    def swap(self, target: Generation) -> None:
        if self.store.resolve() != self.base:
            self.store.point_alias(target.name)
        else:  # adopt the plain collection as generation 0, then alias the name
            g0 = f"{self.base}__g0"
            props = {_P + "model_id": self.store.sample_model_id(self.base) or "",
                     _P + "created_at_ms": "0", _P + "served_at_ms": "1"}
            self.store.set_properties(self.base, props)
            # Load the target before the rename: the name is unresolvable only between
            # the rename and the alias creation, two calls apart.
            self.store.load(target.name)
            self.store.rename_collection(self.base, g0)
            try:
                self.store.point_alias(target.name)
            except Exception:
                self.store.rename_collection(g0, self.base)
                raise
            self.store.load(g0)  # loaded, as after any swap: a rollback is instant
        self.store.set_properties(target.name, {_P + "served_at_ms": str(_now_ms())})

    def drop(self, name: str) -> None:
        if self.store.resolve() == name:
            raise GenerationError(f"{name} is serving: swap or roll back first")
        self.store.drop_collection(name)

    def drop_all(self) -> None:
        gens = self.list()
        if self.store.resolve() not in (None, self.base):
            self.store.drop_alias()
        for g in gens:
            self.store.drop_collection(g.name)

    def _probe(self, target: str | None) -> list[str]:
        found, n = [], 0
        high = _number(self.base, target or "") or 0
        while n <= high + 16:
            name = f"{self.base}__g{n}"
            if self.store.resolve(name) == name:
                found.append(name)
                high = max(high, n)
            n += 1
        return found

    def _describe(self, name: str, target: str | None) -> Generation:
        props = self.store.properties(name)
        model = props.get(_P + "model_id") or self.store.sample_model_id(name) or ""
        return Generation(_number(self.base, name) or 0, name, model,
                          int(props.get(_P + "created_at_ms", 0)), name == target,
                          int(props.get(_P + "served_at_ms", 0)))

    def _plain(self) -> Generation:
        return Generation(0, self.base, self.store.sample_model_id(self.base) or "", 0, True)


class _Pg:
    def __init__(self, settings: Settings) -> None:
        from streamrag.stores.pgvector import PgvectorStore

        self.settings, self.base = settings, serving_name(settings)
        self.store = PgvectorStore(settings.store)  # type: ignore[arg-type]

    def list(self) -> list[Generation]:
        with self.store.connection() as conn:
            gens = [Generation(*row) for row in self._rows(conn)]
            if self._kind(conn) == "r":
                gens.append(Generation(0, self.base, self._sample(conn), 0, True))
        return gens

    def serving(self) -> Generation | None:
        return next((g for g in self.list() if g.serving), None)

    def create(self, number: int, name: str, model_id: str, dim: int) -> None:
        with self.store.connection() as conn:
            self._lock(conn)
            conn.execute("INSERT INTO streamrag_generations (name, generation, table_name,"
                         " model_id) VALUES (%s, %s, %s, %s)", [self.base, number, name, model_id])
        gen = open_generation(self.settings, name)
        try:
            gen.ensure(dim)
        except Exception:
            with self.store.connection() as conn:
                conn.execute("DELETE FROM streamrag_generations WHERE table_name = %s", [name])
            raise
        finally:
            gen.close()

    def swap(self, target: Generation) -> None:
        from psycopg import sql

        with self.store.connection() as conn:  # one transaction: all or nothing
            self._lock(conn)
            if self._kind(conn) == "r":  # adopt the plain table as generation 0
                g0 = f"{self.base}__g0"
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(self.base), sql.Identifier(g0)))
                conn.execute("INSERT INTO streamrag_generations (name, generation, table_name,"
                             " model_id, created_at, served_at) VALUES (%s, 0, %s, %s,"
                             " to_timestamp(0), to_timestamp(0.001))",
                             [self.base, g0, self._sample(conn, g0)])
            conn.execute("UPDATE streamrag_generations SET serving = false WHERE name = %s"
                         " AND serving", [self.base])
            conn.execute("UPDATE streamrag_generations SET serving = true, served_at ="
                         " clock_timestamp() WHERE name = %s AND table_name = %s",
                         [self.base, target.name])
            conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT * FROM {}").format(
                sql.Identifier(self.base), sql.Identifier(target.name)))

    def drop(self, name: str) -> None:
        from psycopg import sql

        with self.store.connection() as conn:
            self._lock(conn)
            row = conn.execute("DELETE FROM streamrag_generations WHERE name = %s AND"
                               " table_name = %s RETURNING serving", [self.base, name]).fetchone()
            if row is None or row[0]:  # raising rolls the transaction back
                raise GenerationError(f"{name} is serving: swap or roll back first" if row
                                      else f"{name} is no generation of {self.base}")
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))

    def drop_all(self) -> None:
        self.store.drop()  # the view and every generation, or the plain table

    def _lock(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('streamrag:generations'))")
        conn.execute(_REGISTRY_DDL)

    def _kind(self, conn: Any) -> str | None:
        row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                           [self.base]).fetchone()
        return str(row[0]) if row else None

    def _rows(self, conn: Any) -> list[tuple[Any, ...]]:
        if conn.execute("SELECT to_regclass('streamrag_generations')").fetchone()[0] is None:
            return []
        return conn.execute(
            f"SELECT generation, table_name, model_id, {_MS.format('created_at')}, serving,"
            f" coalesce({_MS.format('served_at')}, 0) FROM streamrag_generations"
            " WHERE name = %s ORDER BY generation", [self.base]).fetchall()

    def _sample(self, conn: Any, table: str | None = None) -> str:
        from psycopg import sql

        row = conn.execute(sql.SQL("SELECT model_id FROM {} LIMIT 1").format(
            sql.Identifier(table or self.base))).fetchone()
        return str(row[0]) if row else ""


def _now_ms() -> int:
    return int(time.time() * 1000)
