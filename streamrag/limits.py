"""Every limit a record must respect downstream, declared once and checked at the door.

The stores' DDL, the topic configs and the normalize step read these values, so a record
that would break a later step (a store column, a coder, a topic's size limit) is
dead-lettered at normalize, with a reason that names the limit, instead of failing a
write three operators later and stopping the job (DESIGN.md invariant 5).

Per field, the decision between rejecting and repairing:

- ``doc_id``: rejected when empty, longer than DOC_ID_BYTES, or holding control
  characters or lone surrogates. An id is an identity: repairing it would merge or split
  documents.
- ``title``: control characters (NUL included) are removed and whitespace runs folded,
  as cleaning does for text; rejected when longer than TITLE_BYTES after that.
- ``text``: NUL and other control characters are removed by cleaning (never indexed);
  lone surrogates (``"\\ud800"`` escapes: invalid Unicode, like invalid UTF-8 bytes)
  are rejected. Size: ``chunking.max_document_chars``.
- ``metadata``: rejected when it holds NUL, lone surrogates, NaN or infinities, integers
  outside int64, nesting deeper than METADATA_DEPTH, or more than METADATA_BYTES of JSON
  (it is copied into every chunk record, which must fit TOPIC_RECORD_BYTES).
- ``version``: rejected outside 0 .. 2**63 - 1 (int64 columns in both stores).
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Final

from streamrag.errors import LimitExceeded
from streamrag.records import DocumentEvent


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit; ``name`` appears in every dead-letter reason that it causes."""

    name: str
    value: int
    why: str

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


@dataclass(frozen=True, slots=True)
class Rule:
    """A named rule without a number (e.g. valid Unicode)."""

    name: str
    why: str

    def __str__(self) -> str:
        return self.name


DOC_ID_BYTES: Final = Limit(
    "doc_id_bytes",
    1024,
    "Milvus VARCHAR doc_id column; PostgreSQL's"
    " btree index on doc_id takes at most 2,704 bytes a row",
)
TITLE_BYTES: Final = Limit("title_bytes", 2048, "Milvus VARCHAR title column")
HEADING_PATH_BYTES: Final = Limit(
    "heading_path_bytes",
    8192,
    "Milvus VARCHAR heading_path column (headings are cut at 300 characters, so six levels fit)",
)
SOURCE_BYTES: Final = Limit("source_bytes", 512, "Milvus VARCHAR source column")
MODEL_ID_BYTES: Final = Limit("model_id_bytes", 512, "Milvus VARCHAR model_id column")
CHUNK_TEXT_BYTES: Final = Limit("chunk_text_bytes", 65_535, "Milvus VARCHAR text column")
VERSION_MAX: Final = Limit("version_max", 2**63 - 1, "int64 version columns in both stores")
METADATA_BYTES: Final = Limit(
    "metadata_bytes",
    65_536,
    "metadata is copied into every chunk and embedding record, which must fit the topic limit",
)
METADATA_DEPTH: Final = Limit("metadata_depth", 16, "JSON columns and filters stay shallow")
INT64: Final = Limit("metadata_int64", 2**63 - 1, "Milvus JSON numbers are int64 or double")
DOCUMENT_RECORD_BYTES: Final = Limit(
    "document_record_bytes", 16 * 2**20, "max.message.bytes of the documents topic"
)
TOPIC_RECORD_BYTES: Final = Limit(
    "topic_record_bytes",
    1_000_000,
    "chunks, embeddings and dead-letter records: Kafka's default 1 MiB, less headroom",
)
MARKDOWN_NESTING: Final = Limit(
    "markdown_nesting",
    64,
    "nesting levels of Markdown blocks (a list level counts two); deeper text would be dropped",
)
HTML_DEPTH: Final = Limit(
    "html_depth", 10_000, "nesting depth of HTML elements (real pages nest less than 100 deep)"
)
VALID_UNICODE: Final = Rule(
    "valid_unicode",
    "no lone surrogates anywhere (coders and"
    " stores reject them); no NUL or control characters in ids and"
    " metadata (PostgreSQL text and jsonb reject NUL)",
)
JSON_NESTING: Final = Rule(
    "json_nesting", "nesting that Python's JSON parser can read (about 1,000 levels)"
)
FINITE_NUMBERS: Final = Rule("finite_numbers", "JSON and jsonb hold finite numbers only")

ALL: Final = (
    DOC_ID_BYTES,
    TITLE_BYTES,
    HEADING_PATH_BYTES,
    SOURCE_BYTES,
    MODEL_ID_BYTES,
    CHUNK_TEXT_BYTES,
    VERSION_MAX,
    METADATA_BYTES,
    METADATA_DEPTH,
    INT64,
    DOCUMENT_RECORD_BYTES,
    TOPIC_RECORD_BYTES,
    MARKDOWN_NESTING,
    HTML_DEPTH,
    VALID_UNICODE,
    JSON_NESTING,
    FINITE_NUMBERS,
)


def exceeded(limit: Limit | Rule, message: str) -> LimitExceeded:
    """The error for a record that breaks ``limit``; its reason names the limit."""
    return LimitExceeded(str(limit), message)


def utf8_size(text: str, what: str) -> int:
    """Bytes of ``text`` in UTF-8; LimitExceeded for a lone surrogate (not valid Unicode)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise exceeded(
            VALID_UNICODE,
            f"{what} holds a lone surrogate {text[e.start]!a} at"
            f" character {e.start}: not valid Unicode",
        ) from None


def check_doc_id(doc_id: str) -> str:
    size = utf8_size(doc_id, "doc id")
    if size > DOC_ID_BYTES.value:
        raise exceeded(DOC_ID_BYTES, f"doc id has {size} bytes")
    bad = next((c for c in doc_id if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise exceeded(VALID_UNICODE, f"doc id holds the control character {bad!a}")
    return doc_id


def check_version(version: int) -> int:
    if not 0 <= version <= VERSION_MAX.value:
        raise exceeded(VERSION_MAX, f"version {version} is outside 0 .. 2**63 - 1")
    return version


def clean_title(title: str | None) -> str | None:
    """The title without control characters or runs of whitespace; None when empty."""
    if title is None:
        return None
    utf8_size(title, "title")
    title = " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in title).split())
    size = utf8_size(title, "title")
    if size > TITLE_BYTES.value:
        raise exceeded(TITLE_BYTES, f"title has {size} bytes")
    return title or None


def check_source(source: str) -> str:
    size = utf8_size(source, "source")
    if size > SOURCE_BYTES.value:
        raise exceeded(SOURCE_BYTES, f"source name has {size} bytes")
    return source


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` unchanged, or LimitExceeded naming the first value no store can hold."""
    _check_json_value(metadata, "metadata", 1)
    try:
        size = len(json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (ValueError, TypeError) as e:  # not JSON data at all (an object built in code)
        raise exceeded(VALID_UNICODE, f"metadata cannot be written as JSON: {e}") from None
    if size > METADATA_BYTES.value:
        raise exceeded(METADATA_BYTES, f"metadata has {size} bytes of JSON")
    return metadata


def _check_json_value(value: Any, path: str, depth: int) -> None:
    if depth > METADATA_DEPTH.value:
        raise exceeded(
            METADATA_DEPTH, f"{_shown(path)} nests more than {METADATA_DEPTH.value} levels deep"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_string(key, f"a key of {path}")
            _check_json_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        _check_string(value, path)
    elif (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (not -INT64.value - 1 <= value <= INT64.value)
    ):
        raise exceeded(INT64, f"{_shown(path)} is an integer outside int64")
    elif isinstance(value, float) and not math.isfinite(value):
        raise exceeded(
            FINITE_NUMBERS,
            f"{_shown(path)} is {value}, which JSON and PostgreSQL's jsonb cannot hold",
        )


def _check_string(text: str, what: str) -> None:
    utf8_size(text, _shown(what))
    if "\x00" in text:
        raise exceeded(
            VALID_UNICODE,
            f"{_shown(what)} holds a NUL character, which PostgreSQL text and jsonb cannot store",
        )


def _shown(path: str) -> str:
    """A field path for a reason: ASCII (no surrogates or NULs in messages), short."""
    shown = ascii(path)[1:-1]
    return shown if len(shown) <= 120 else shown[:119] + "..."


def topic_record_size(value: str, what: str) -> int:
    """Size of a record value for a derived topic; LimitExceeded past TOPIC_RECORD_BYTES."""
    size = utf8_size(value, what)
    if size > TOPIC_RECORD_BYTES.value:
        raise exceeded(TOPIC_RECORD_BYTES, f"{what} of {size} bytes")
    return size


def check_event(event: DocumentEvent) -> DocumentEvent:
    """``event`` with its title repaired, or LimitExceeded naming the limit it breaks."""
    check_doc_id(event.doc_id)
    check_version(event.version)
    check_source(event.source)
    if event.text is not None:
        utf8_size(event.text, "text")
    check_metadata(event.metadata)
    title = clean_title(event.title)
    return event if title == event.title else replace(event, title=title)
