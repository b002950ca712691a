"""parse_document_record: one documents-topic record -> DocumentEvent, or BadRecord."""

from __future__ import annotations

import json

import pytest

from jobs.chunking.documents import parse_document_record
from streamrag.errors import BadRecord
from streamrag.records import Origin

ORIGIN = Origin("documents", 1, 42)
TS = 1_700_000_000_000


def parse(value, key: bytes | None = b"guide/intro"):
    if isinstance(value, dict):
        value = json.dumps(value).encode()
    return parse_document_record(key, value, ORIGIN, TS)


def valid(**fields) -> dict:
    return {"id": "guide/intro", "text": "Hello world.", "version": 7, **fields}


def test_valid_record_becomes_an_event():
    ev = parse(valid(title="Intro", content_type="markdown", metadata={"lang": "en"}))

    assert (ev.doc_id, ev.version, ev.text, ev.deleted) == ("guide/intro", 7, "Hello world.", False)
    assert (ev.title, ev.content_type, ev.metadata) == ("Intro", "markdown", {"lang": "en"})
    assert (ev.source, ev.origin, ev.source_ts_ms) == ("documents", ORIGIN, TS)


def test_defaults_for_optional_fields():
    ev = parse({"id": "a", "text": "t"})

    assert (ev.title, ev.content_type, ev.metadata, ev.deleted) == (None, "text", {}, False)


def test_version_defaults_to_the_record_timestamp():
    assert parse({"id": "a", "text": "t"}).version == TS


def test_version_zero_is_kept():
    assert parse(valid(version=0)).version == 0


def test_not_json_is_rejected():
    with pytest.raises(BadRecord, match="not valid JSON"):
        parse(b"{not json")


def test_empty_value_is_rejected():
    with pytest.raises(BadRecord, match="not valid JSON"):
        parse(b"")


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object_is_rejected(value):
    with pytest.raises(BadRecord, match="JSON object"):
        parse(value)


@pytest.mark.parametrize("doc_id", [None, "", "   ", 5, ["a"]], ids=repr)
def test_missing_empty_or_non_string_id_is_rejected(doc_id):
    record = valid()
    if doc_id is None:
        del record["id"]
    else:
        record["id"] = doc_id

    with pytest.raises(BadRecord, match="'id'"):
        parse(record)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text", 123),
        ("version", "3"),
        ("version", True),
        ("version", 1.5),
        ("metadata", ["a", "b"]),
        ("title", 9),
        ("deleted", "yes"),
        ("content_type", 1),
    ],
)
def test_wrong_field_types_are_rejected_naming_the_field(field, value):
    with pytest.raises(BadRecord, match=f"'{field}'"):
        parse(valid(**{field: value}))


def test_negative_version_is_rejected():
    with pytest.raises(BadRecord, match="'version'"):
        parse(valid(version=-1))


def test_unknown_content_type_is_rejected():
    with pytest.raises(BadRecord, match="'content_type'"):
        parse(valid(content_type="docx"))


def test_a_pdf_carries_its_bytes_in_data():
    event = parse({"id": "m.pdf", "content_type": "pdf", "data": "JVBERi0="})

    assert (event.content_type, event.text) == ("pdf", "JVBERi0=")


def test_a_pdf_without_data_is_rejected():
    with pytest.raises(BadRecord, match="field 'data' is required"):
        parse({"id": "m.pdf", "content_type": "pdf", "text": "not the bytes"})


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_whitespace_text_is_rejected(text):
    with pytest.raises(BadRecord, match="'text'"):
        parse(valid(text=text))


def test_missing_text_is_rejected_unless_deleted():
    with pytest.raises(BadRecord, match="'text'"):
        parse({"id": "a", "version": 1})


def test_invalid_utf8_value_is_rejected():
    with pytest.raises(BadRecord, match="value is not valid UTF-8"):
        parse(b'{"id": "a", "text": "caf\xe9"}')


def test_invalid_utf8_key_is_rejected():
    with pytest.raises(BadRecord, match="key is not valid UTF-8"):
        parse(valid(), key=b"\xff\xfe")


def test_tombstone_with_key_is_a_delete_at_the_record_timestamp():
    ev = parse(None, key=b"guide/intro")

    assert (ev.doc_id, ev.deleted, ev.text, ev.version) == ("guide/intro", True, None, TS)
    assert ev.origin == ORIGIN


@pytest.mark.parametrize("key", [None, b""])
def test_tombstone_without_key_is_rejected(key):
    with pytest.raises(BadRecord, match="tombstone"):
        parse(None, key=key)


def test_unknown_extra_fields_are_ignored():
    ev = parse(valid(author="someone", tags=["x"], nested={"a": 1}))

    assert ev.doc_id == "guide/intro" and ev.text == "Hello world."


def test_deleted_true_without_text_is_a_delete():
    ev = parse({"id": "guide/intro", "deleted": True, "version": 9})

    assert (ev.deleted, ev.text, ev.version) == (True, None, 9)


def test_deleted_true_ignores_text():
    ev = parse(valid(deleted=True))

    assert ev.deleted and ev.text is None


def test_null_optional_fields_take_their_defaults():
    ev = parse(valid(title=None, metadata=None, version=None, content_type=None))

    assert (ev.title, ev.metadata, ev.version, ev.content_type) == (None, {}, TS, "text")


def test_non_ascii_text_survives():
    ev = parse(valid(text="naïve café — 日本語 😀"))

    assert ev.text == "naïve café — 日本語 😀"


def test_bad_record_is_a_value_error_with_a_reason():
    with pytest.raises(ValueError) as info:
        parse(b"[]")

    assert str(info.value)


def test_tenant_becomes_the_tenant_metadata_key():
    ev = parse(valid(tenant="acme", metadata={"lang": "en"}))

    assert ev.metadata == {"lang": "en", "tenant": "acme"}


def test_tenant_agreeing_with_metadata_is_kept():
    assert parse(valid(tenant="acme", metadata={"tenant": "acme"})).metadata == {"tenant": "acme"}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"tenant": "acme", "metadata": {"tenant": "other"}}, "differ"),
        ({"tenant": " "}, "field 'tenant' is empty"),
        ({"tenant": 7}, "field 'tenant' must be str"),
    ],
)
def test_bad_tenant_is_rejected(fields, reason):
    with pytest.raises(BadRecord, match=reason):
        parse(valid(**fields))
