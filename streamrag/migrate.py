"""Apply the CDC source schema: ``sql/source/*.sql`` in name order, each file once.

Every file is idempotent on its own (IF NOT EXISTS, OR REPLACE, DO blocks), so a file
that failed half-way can simply run again. ``streamrag_migrations`` records each applied
file with a checksum: a file edited after it was applied is refused, not silently
skipped (add a new numbered file instead). An advisory lock serializes concurrent runs.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import psycopg

from streamrag.config import PROJECT_ROOT
from streamrag.errors import UserError

SOURCE_DIR = PROJECT_ROOT / "sql" / "source"
_LOCK_KEY = "streamrag_migrations"


class MigrationError(UserError):
    """The schema could not be applied; the message is one line for the user."""


def apply_migrations(dsn: str, directory: Path = SOURCE_DIR) -> list[str]:
    """Apply the ``*.sql`` files of ``directory`` not yet recorded; returns their names."""
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise MigrationError(f"no .sql files in {directory}")
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return _apply(conn, files)
    except psycopg.Error as e:
        raise MigrationError(f"migration failed: {e}".splitlines()[0]) from e


def _apply(conn: psycopg.Connection[Any], files: list[Path]) -> list[str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS streamrag_migrations (name text PRIMARY KEY,"
        " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    conn.commit()
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [_LOCK_KEY])
    done = {
        str(name): str(checksum)
        for name, checksum in conn.execute(
            "SELECT name, checksum FROM streamrag_migrations"
        ).fetchall()
    }
    applied = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if path.name in done:
            if done[path.name] != checksum:
                raise MigrationError(
                    f"{path.name} changed after it was applied: "
                    "add a new numbered file instead of editing it"
                )
            continue
        try:
            conn.execute(text.encode())  # no parameters: may hold several statements
        except psycopg.Error as e:
            raise MigrationError(f"{path.name}: {e}".splitlines()[0]) from e
        conn.execute(
            "INSERT INTO streamrag_migrations (name, checksum) VALUES (%s, %s)",
            [path.name, checksum],
        )
        applied.append(path.name)
    conn.commit()  # all files and their records at once, and the lock is released
    return applied


def drop_replication_slot(dsn: str, slot: str, timeout_s: float = 30) -> bool:
    """Drop a deleted connector's replication slot (a kept slot makes PostgreSQL retain
    WAL forever). Waits while the slot is still active; returns False if it stays so."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]
            ).fetchone()
            if row is None:
                return True
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
