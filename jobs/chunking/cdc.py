"""Map a Debezium change event (PostgreSQL, JSON without schema) to a DocumentEvent.

Value: ``{"before": row|null, "after": row|null, "op": "r"|"c"|"u"|"d",
"source": {"schema", "table", "lsn", "sequence", "ts_ms", ...}, "ts_ms": ...}``; a
``{"schema": ..., "payload": ...}`` wrapper (converter schemas on) is unwrapped.

- doc id ``<schema>.<table>:<key>``; a composite key joins its values with ":" (each
  value's ":" and "%" escaped, so ``("a:b", "c")`` and ``("a", "b:c")`` stay apart).
- text: the configured text columns joined by blank lines, NULL columns left out.
- metadata: the metadata columns plus ``tenant``; unknown or added columns are ignored.

Versions (DESIGN.md invariant 2) must grow with every change of a row:

- Streamed changes (c/u/d): ``source.lsn``. Per row this grows in commit order: a
  transaction can only write a row after the previous writer committed (row locks,
  unique-index waits), so its change record comes later in the WAL.
- Snapshot reads (r): version 0, *not* the snapshot LSN (an incremental snapshot's
  reads, `streamrag connect snapshot`, carry no LSN at all). A transaction in flight when
  the snapshot was taken writes before the snapshot LSN but commits after it; its change
  is streamed with an LSN *below* the snapshot's, so with the snapshot LSN as version
  that real update would be dropped as stale. Every streamed change beats 0. The cost: a
  later re-snapshot (new connector, lost slot) cannot overwrite a document the pipeline
  already holds; recover from those by replaying into a new index generation.
- Tombstones (null value) are skipped: the preceding "d" event already deleted the
  document with its LSN, and a tombstone has no LSN to give a delete a safe version.
- Unchanged TOASTed values arrive as ``__debezium_unavailable_value``; the old value
  from ``before`` (REPLICA IDENTITY FULL) is used instead, and without one the record is
  rejected: the placeholder is never indexed as text.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from jobs.chunking.documents import decode_utf8, load_json
from streamrag.config import CdcTableConfig
from streamrag.errors import BadRecord
from streamrag.records import DocumentEvent, Origin

UNAVAILABLE = "__debezium_unavailable_value"
HEARTBEAT_TOPIC_PREFIX = "__debezium-heartbeat"
SNAPSHOT_VERSION = 0
_UPSERT_OPS = frozenset({"r", "c", "u"})


def parse_cdc_record(
    key: bytes | None,
    value: bytes | None,
    origin: Origin,
    timestamp_ms: int,
    table: CdcTableConfig,
) -> DocumentEvent | None:
    """The DocumentEvent of one Debezium record; None for heartbeats and tombstones.

    Raises BadRecord (with the reason) for anything that is not a usable change event.
    """
    if origin.topic.startswith(HEARTBEAT_TOPIC_PREFIX):
        return None  # liveness only, not data
    if value is None:
        if not key:
            raise BadRecord("tombstone without a key")
        return None  # Debezium's compaction marker after a "d" event, see module doc
    envelope = _envelope(value)
    op = envelope.get("op")
    if op not in _UPSERT_OPS and op != "d":
        raise BadRecord(f"unsupported Debezium op {op!r} (expected r, c, u or d)")
    source = _source(envelope, streamed=op != "r")
    doc_id = _doc_id(source, _key_row(key, envelope, op), table)
    version = SNAPSHOT_VERSION if op == "r" else int(source["lsn"])
    event = DocumentEvent(
        doc_id=doc_id,
        version=version,
        deleted=op == "d",
        source=f"{source['schema']}.{source['table']}",
        origin=origin,
        source_ts_ms=_commit_ms(source, envelope, timestamp_ms),
    )
    if op == "d":
        return event
    after = _row(envelope, "after")
    before = envelope.get("before")
    old: dict[str, Any] = before if isinstance(before, dict) else {}
    row = {name: _resolve(name, after, old) for name in _used_columns(table) if name in after}
    return replace(
        event,
        text=_text(row, table),
        title=_title(row, table),
        content_type=table.content_type,
        metadata=_metadata(row, table),
    )


def _envelope(value: bytes) -> dict[str, Any]:
    data = load_json(decode_utf8(value, "value") or "")
    if isinstance(data, dict) and "payload" in data and "schema" in data:
        data = data["payload"]  # JsonConverter with schemas.enable=true
    if not isinstance(data, dict):
        raise BadRecord(f"value must be a JSON object, got {type(data).__name__}")
    if "op" not in data:
        raise BadRecord("not a Debezium change event: no 'op' field (heartbeat or other record?)")
    return data


def _source(envelope: dict[str, Any], streamed: bool) -> dict[str, Any]:
    source = envelope.get("source")
    if not isinstance(source, dict):
        raise BadRecord("Debezium event has no 'source' object")
    for name in ("schema", "table"):
        if not isinstance(source.get(name), str) or not source[name]:
            raise BadRecord(f"Debezium event has no source.{name}")
    lsn = source.get("lsn")
    if streamed and (not isinstance(lsn, int) or isinstance(lsn, bool) or lsn < 0):
        raise BadRecord(f"source.lsn must be a non-negative integer, got {lsn!r}")
    return source


def _row(envelope: dict[str, Any], side: str) -> dict[str, Any]:
    row = envelope.get(side)
    if not isinstance(row, dict):
        raise BadRecord(f"op {envelope['op']!r} without an '{side}' row")
    return row


def _key_row(key: bytes | None, envelope: dict[str, Any], op: str) -> dict[str, Any]:
    """Where the key columns are: the row, else (REPLICA IDENTITY NOTHING) the Kafka key."""
    row = envelope.get("before" if op == "d" else "after")
    if isinstance(row, dict):
        return row
    if op != "d":
        raise BadRecord(f"op {op!r} without an 'after' row")
    try:
        data = json.loads(decode_utf8(key, "key") or "")
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise BadRecord("delete without a 'before' row or a JSON key: no document to delete")
    return data.get("payload", data) if "schema" in data else data


def _doc_id(source: dict[str, Any], row: dict[str, Any], table: CdcTableConfig) -> str:
    values = []
    for name in table.id_columns:
        value = row.get(name)
        if value is None or value == UNAVAILABLE or isinstance(value, dict | list):
            raise BadRecord(f"key column {name!r} is missing or not a scalar")
        values.append(str(value))
    if len(values) > 1:
        values = [v.replace("%", "%25").replace(":", "%3A") for v in values]
    return f"{source['schema']}.{source['table']}:{':'.join(values)}"


def _used_columns(table: CdcTableConfig) -> set[str]:
    named = [table.title_column, table.tenant_column]
    return {*table.text_columns, *table.metadata_columns, *(n for n in named if n)}


def _resolve(name: str, after: dict[str, Any], before: dict[str, Any]) -> Any:
    """A column's new value, with an unchanged TOASTed value taken from ``before``."""
    value = after[name]
    if not _unavailable(value):
        return value
    old = before.get(name)
    if old is None or _unavailable(old):
        raise BadRecord(
            f"column {name!r} is an unchanged TOASTed value that Debezium did not send; "
            "set REPLICA IDENTITY FULL on the table so 'before' carries it"
        )
    return old


def _unavailable(value: Any) -> bool:
    # Whole-value match: an article *about* Debezium may quote the placeholder.
    return bool(value == UNAVAILABLE or value == [UNAVAILABLE])


def _text(row: dict[str, Any], table: CdcTableConfig) -> str:
    parts = []
    for name in table.text_columns:
        value = row.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRecord(f"text column {name!r} must be a string, got {type(value).__name__}")
        if value.strip():
            parts.append(value)
    if not parts:
        raise BadRecord(f"no text: columns {table.text_columns} are all NULL or empty")
    return "\n\n".join(parts)


def _title(row: dict[str, Any], table: CdcTableConfig) -> str | None:
    title = row.get(table.title_column) if table.title_column else None
    return title if isinstance(title, str) and title.strip() else None


def _metadata(row: dict[str, Any], table: CdcTableConfig) -> dict[str, Any]:
    meta = {name: row[name] for name in table.metadata_columns if name in row}
    if table.tenant_column and row.get(table.tenant_column) is not None:
        meta["tenant"] = row[table.tenant_column]
    return meta


def _commit_ms(source: dict[str, Any], envelope: dict[str, Any], fallback: int) -> int:
    for ts in (source.get("ts_ms"), envelope.get("ts_ms")):
        if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0:
            return ts
    return fallback
