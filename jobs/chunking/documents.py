"""Normalize a record of the documents topic into a DocumentEvent.

Wire format (value, UTF-8 JSON object; key = doc id):
    {"id": "guide/intro", "text": "...", "version": 7, "title": "...",
     "content_type": "text" | "markdown" | "html", "metadata": {...}, "tenant": "acme",
     "deleted": false}
    {"id": "manual.pdf", "content_type": "pdf", "data": "<the PDF's bytes, base64>", ...}

- ``version`` is optional: without it the record's timestamp (ms) is the version.
- A tombstone (key with null value) or ``"deleted": true`` deletes the document.
- ``tenant`` is optional: it becomes the ``tenant`` metadata key, which the read side
  (streamrag.serve) scopes tenant-bound tokens by. Doc ids are global, not per tenant:
  tenants that may reuse ids need them prefixed (``acme/intro``).
- Unknown fields are ignored; anything else malformed raises BadRecord with the reason.
  NaN and infinities are not JSON and are rejected; so is nesting deeper than Python's
  parser allows. The limits that later steps need are checked by ``streamrag.limits``.
"""

from __future__ import annotations

import json
from typing import Any

from streamrag.errors import BadRecord
from streamrag.limits import FINITE_NUMBERS, JSON_NESTING, exceeded
from streamrag.records import DocumentEvent, Origin

CONTENT_TYPES = frozenset({"text", "markdown", "html", "pdf"})


def decode_utf8(raw: bytes | None, what: str) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(f"{what} is not valid UTF-8 (byte {e.start})") from e


def parse_document_record(
    key: bytes | None, value: bytes | None, origin: Origin, timestamp_ms: int
) -> DocumentEvent:
    """Map one documents-topic record to a DocumentEvent, or raise BadRecord."""
    key_text = decode_utf8(key, "key")
    if value is None:
        if not key_text:
            raise BadRecord("tombstone without a key: no document to delete")
        return DocumentEvent(
            doc_id=key_text,
            version=timestamp_ms,
            source=origin.topic,
            origin=origin,
            deleted=True,
            source_ts_ms=timestamp_ms,
        )
    data = load_json(decode_utf8(value, "value") or "")
    if not isinstance(data, dict):
        raise BadRecord(f"value must be a JSON object, got {type(data).__name__}")
    return _event_from_object(data, origin, timestamp_ms)


def load_json(text: str) -> Any:
    """Parse a record value; BadRecord for anything that is not plain, finite JSON."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise BadRecord(f"value is not valid JSON: {e.msg} at char {e.pos}") from e
    except RecursionError:
        raise exceeded(JSON_NESTING, "value nests JSON deeper than the parser allows") from None


def _no_constant(name: str) -> Any:
    raise exceeded(FINITE_NUMBERS, f"value holds {name}, which is not JSON")


def _event_from_object(data: dict[str, Any], origin: Origin, timestamp_ms: int) -> DocumentEvent:
    doc_id = data.get("id")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise BadRecord("field 'id' must be a non-empty string")
    deleted = _typed(data, "deleted", bool, False)
    version = _typed(data, "version", int, timestamp_ms)
    if isinstance(version, bool) or version < 0:
        raise BadRecord("field 'version' must be a non-negative integer")
    title = _typed(data, "title", str, None)
    metadata = _typed(data, "metadata", dict, {})
    tenant = _typed(data, "tenant", str, None)
    if tenant is not None:
        if not tenant.strip():
            raise BadRecord("field 'tenant' is empty or whitespace only")
        if metadata.get("tenant", tenant) != tenant:
            raise BadRecord("field 'tenant' and metadata.tenant differ: give one of them")
        metadata = {**metadata, "tenant": tenant}
    content_type = _typed(data, "content_type", str, "text")
    if content_type not in CONTENT_TYPES:
        raise BadRecord(f"field 'content_type' must be one of {sorted(CONTENT_TYPES)}")
    text = None
    if not deleted:
        field = "data" if content_type == "pdf" else "text"  # a PDF's bytes, base64
        text = _typed(data, field, str, None)
        if text is None:
            raise BadRecord(f"field '{field}' is required unless 'deleted' is true")
        if not text.strip():
            raise BadRecord(f"field '{field}' is empty or whitespace only")
    return DocumentEvent(
        doc_id=doc_id,
        version=version,
        source=origin.topic,
        origin=origin,
        text=text,
        deleted=deleted,
        title=title,
        content_type=content_type,
        metadata=metadata,
        source_ts_ms=timestamp_ms,
    )


def _typed(data: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRecord(f"field '{name}' must be {kind.__name__}, got {type(value).__name__}")
    return value
