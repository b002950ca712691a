"""Backfills without downtime: Debezium incremental snapshots through the signalling table.

    check the request -> insert an execute-snapshot signal -> (optionally) wait for the
    connector's COMPLETED notification

The connector reads the signal from its stream (the signalling table is in its
publication, ``sql/source/002_signals.sql``), then reads the table in primary-key chunks
between streamed changes: streaming goes on, and a row changed while its chunk is open is
sent as the change, not as the stale read. Snapshot rows arrive as ``op: "r"`` events on
the table's usual topic, so the CDC mapping treats them as snapshot reads (version 0: they
never overwrite a document that a streamed change has updated, see jobs/chunking/cdc.py).

Everything is checked before the signal is sent, each failure one line (SnapshotError):
the table name, that the connector captures the table and reads this database, that the
table and the signalling table are in its publication, that the table has a primary key
(Debezium chunks by it) and that the filter is valid SQL for the table (EXPLAIN in a
read-only transaction). The filter is the operator's own SQL by design; it reaches
Debezium as data, parenthesized, because Debezium appends it to its chunk query's
``WHERE`` with a bare ``AND`` (``a OR b`` would otherwise escape the chunk bounds).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from streamrag.config import Settings
from streamrag.errors import UserError
from streamrag.kafka import Message, TopicMissing, end_offsets, read_log

SIGNAL_TYPE = "execute-snapshot"
INCREMENTAL = "Incremental Snapshot"  # aggregate_type of Debezium's notifications
FINAL_STATES = frozenset({"COMPLETED", "ABORTED"})
GOOD_SCANS = frozenset({"SUCCEEDED", "EMPTY"})
# Unquoted identifiers only: such a name means the same to PostgreSQL, to Debezium's
# table filters and (its one "." matching itself) as a data-collection pattern.
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE = re.compile(rf"({_IDENT})\.({_IDENT})")


class SnapshotError(UserError):
    """A snapshot that cannot be requested or did not finish; the message is one line."""


@dataclass(frozen=True, slots=True)
class TableName:
    schema: str
    table: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        match = _TABLE.fullmatch(text)
        if match is None:
            raise SnapshotError(
                f"table must be schema.table (letters, digits, _), got {text[:100]!r}"
            )
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"

    def sql(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


@dataclass(frozen=True, slots=True)
class Connector:
    """What a snapshot request needs from a connector's running config."""

    name: str
    config: dict[str, str]
    signal_table: TableName
    publication: str
    dbname: str

    @classmethod
    def of(cls, name: str, config: dict[str, str]) -> Connector:
        channels = _listed(config.get("signal.enabled.channels", "source"))
        signal = config.get("signal.data.collection", "").strip()
        if "source" not in channels or not signal:
            raise SnapshotError(
                f"connector {name} has no signalling table (signal.data.collection, source"
                " channel): run `streamrag migrate`, then `streamrag connect apply`"
            )
        return cls(
            name=name,
            config=config,
            signal_table=TableName.parse(signal),
            publication=config.get("publication.name", "dbz_publication"),
            dbname=config.get("database.dbname", ""),
        )

    def captures(self, table: TableName) -> bool:
        """Whether Debezium's table filters (regular expressions) select ``table``."""
        include = _listed(self.config.get("table.include.list", ""))
        if include:
            return _any_match(include, str(table))
        if _any_match(_listed(self.config.get("table.exclude.list", "")), str(table)):
            return False
        schemas = _listed(self.config.get("schema.include.list", ""))
        if schemas:
            return _any_match(schemas, table.schema)
        return not _any_match(_listed(self.config.get("schema.exclude.list", "")), table.schema)

    @property
    def notification_topic(self) -> str | None:
        if "sink" not in _listed(self.config.get("notification.enabled.channels", "")):
            return None
        return self.config.get("notification.sink.topic.name") or None


def _listed(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _any_match(patterns: Iterable[str], name: str) -> bool:
    try:
        return any(re.fullmatch(p, name, re.IGNORECASE) for p in patterns)
    except re.error as e:
        raise SnapshotError(f"the connector's table filters are not valid patterns: {e}") from e


def signal_data(table: TableName, condition: str | None) -> dict[str, Any]:
    """The ``data`` of an execute-snapshot signal: an incremental snapshot of ``table``,
    only of the rows where ``condition`` (SQL) holds, if given."""
    data: dict[str, Any] = {"data-collections": [str(table)], "type": "incremental"}
    if condition is not None:
        data["additional-conditions"] = [
            {"data-collection": str(table), "filter": f"({check_condition(condition)})"}
        ]
    return data


def check_condition(condition: str) -> str:
    """The filter, stripped; a SnapshotError for one that cannot be a SQL condition."""
    text = condition.strip()
    if not text:
        raise SnapshotError("--filter is empty: leave it out to re-read the whole table")
    if "\x00" in text:
        raise SnapshotError("--filter contains a NUL character")
    return text


def request_snapshot(
    dsn: str, connector: Connector, table: TableName, condition: str | None = None
) -> str:
    """Check the request against the database, insert the signal; returns its id."""
    if not connector.captures(table):
        raise SnapshotError(
            f"connector {connector.name} does not capture {table} (table.include.list is"
            f" {connector.config.get('table.include.list', '')!r}): add its topic to"
            " cdc.tables, then `streamrag connect apply`"
        )
    data = signal_data(table, condition)
    signal_id = str(uuid.uuid4())
    try:
        with psycopg.connect(dsn, connect_timeout=10, options="-c statement_timeout=10s") as conn:
            conn.read_only = True
            _check_database(conn, connector, table, condition)
            conn.rollback()
            conn.read_only = False
            conn.execute(
                sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, %s, %s)").format(
                    connector.signal_table.sql()
                ),
                [signal_id, SIGNAL_TYPE, json.dumps(data)],
            )
    except psycopg.OperationalError as e:
        raise SnapshotError(f"cannot reach PostgreSQL: {_first_line(e)}") from e
    except psycopg.Error as e:
        raise SnapshotError(f"cannot send the signal: {_first_line(e)}") from e
    return signal_id


def _check_database(
    conn: psycopg.Connection[Any], connector: Connector, table: TableName, condition: str | None
) -> None:
    row = conn.execute("SELECT current_database()").fetchone()
    dbname = str(row[0]) if row else "?"
    if connector.dbname and dbname != connector.dbname:
        raise SnapshotError(
            f"connector {connector.name} reads database {connector.dbname!r}, the DSN"
            f" points at {dbname!r}"
        )
    for name in (table, connector.signal_table):
        if not _exists(conn, name):
            raise SnapshotError(f"table {name} does not exist in database {dbname!r}")
        if not _published(conn, connector.publication, name):
            raise SnapshotError(
                f"table {name} is not in publication {connector.publication}: add it"
                f" (ALTER PUBLICATION {connector.publication} ADD TABLE {name}) in a migration"
            )
    if not _has_primary_key(conn, table):
        raise SnapshotError(f"table {table} has no primary key: Debezium reads it in key order")
    if condition is not None:
        _explain(conn, table, check_condition(condition))


def _exists(conn: psycopg.Connection[Any], table: TableName) -> bool:
    found = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        [table.schema, table.table],
    ).fetchone()
    return found is not None


def _published(conn: psycopg.Connection[Any], publication: str, table: TableName) -> bool:
    found = conn.execute(
        "SELECT 1 FROM pg_publication_tables"
        " WHERE pubname = %s AND schemaname = %s AND tablename = %s",
        [publication, table.schema, table.table],
    ).fetchone()
    return found is not None


def _has_primary_key(conn: psycopg.Connection[Any], table: TableName) -> bool:
    found = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary",
        [table.schema, table.table],
    ).fetchone()
    return found is not None


def _explain(conn: psycopg.Connection[Any], table: TableName, condition: str) -> None:
    """Plan (never run) the filter on the table, read-only, as one prepared statement:
    a typo fails here in one line instead of in the connector's log."""
    query = sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(table.sql(), sql.SQL(condition))
    try:
        conn.execute(query, prepare=True)
    except (psycopg.ProgrammingError, psycopg.DataError) as e:  # syntax, columns, types
        raise SnapshotError(
            f"--filter is not a valid condition on {table}: {_first_line(e)}"
        ) from e


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@dataclass(slots=True)
class Outcome:
    """How a snapshot ended: COMPLETED or ABORTED, and each table's scan."""

    state: str
    scans: dict[str, tuple[str, int]] = field(default_factory=dict)  # table -> (status, rows)

    def failures(self) -> list[str]:
        return [f"{t}: {s}" for t, (s, _) in self.scans.items() if s not in GOOD_SCANS]


def notification_marks(settings: Settings, topic: str) -> dict[int, int]:
    """Where the notification topic ends now (nothing yet: the start)."""
    try:
        return end_offsets(settings, topic)
    except TopicMissing:
        return {}


def wait_for_snapshot(
    settings: Settings, topic: str, signal_id: str, start: dict[int, int], timeout_s: float
) -> Outcome:
    """Follow the connector's notifications (from ``start``) until the snapshot that
    ``signal_id`` started is COMPLETED or ABORTED."""
    deadline = time.monotonic() + timeout_s
    position, outcome = dict(start), Outcome("RUNNING")
    while True:
        try:
            messages = list(read_log(settings, topic, start=position, timeout_s=30))
        except TopicMissing:
            messages = []
        for message in messages:
            position[message.partition] = message.offset + 1
            _note(outcome, _notification(message, signal_id))
            if outcome.state in FINAL_STATES:
                return outcome
        if time.monotonic() > deadline:
            raise SnapshotError(
                f"snapshot {signal_id} has not finished after {timeout_s:.0f} s; it goes on"
                f" in the connector (its notifications: topic {topic})"
            )
        time.sleep(1.0)


def _notification(message: Message, signal_id: str) -> dict[str, Any] | None:
    try:
        value = json.loads(message.value or b"null")
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("aggregate_type") != INCREMENTAL:
        return None
    return value if value.get("id") == signal_id else None


def _note(outcome: Outcome, notification: dict[str, Any] | None) -> None:
    if notification is None:
        return
    kind, extra = notification.get("type"), notification.get("additional_data") or {}
    if kind == "TABLE_SCAN_COMPLETED":
        rows = str(extra.get("total_rows_scanned", "0"))
        table = str(extra.get("scanned_collection", "?"))
        outcome.scans[table] = (str(extra.get("status", "?")), int(rows) if rows.isdigit() else 0)
    elif kind in FINAL_STATES:
        outcome.state = str(kind)
