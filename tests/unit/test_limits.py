"""The limits a record must respect downstream, checked at the door (streamrag.limits)."""

from __future__ import annotations

import json

import pytest

from jobs.chunking.normalize import normalize_record
from streamrag import limits
from streamrag.errors import BadRecord, LimitExceeded
from streamrag.records import ChunkRecord, DocumentEvent, EmbeddingRecord, Origin

ORIGIN = Origin("documents", 0, 7)


def normalize(value: bytes | str, key: bytes = b"k"):
    if isinstance(value, str):
        value = value.encode()
    return normalize_record(key, value, ORIGIN, 1_700_000_000_000, {})


def doc(**fields: object) -> str:
    return json.dumps({"id": "a", "text": "Some text.", **fields})


def rejected(value: bytes | str) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        normalize(value)
    return info.value


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        (doc(id="x" * 1025), "doc_id_bytes=1024"),
        (doc(id="é" * 513), "doc_id_bytes=1024"),  # 1,026 bytes: the limit counts UTF-8 bytes
        (doc(id="x" * 10_000), "doc_id_bytes=1024"),
        (doc(title="t" * 2049), "title_bytes=2048"),
        (doc(version=2**63), "version_max"),
        (doc(version=2**64 + 5), "version_max"),
        (doc(metadata={"big": "m" * 70_000}), "metadata_bytes=65536"),
        (doc(metadata={"n": 2**70}), "metadata_int64"),
        (doc(metadata={"n": -(2**63) - 1}), "metadata_int64"),
        (doc(metadata={"d": json.loads("[" * 20 + "]" * 20)}), "metadata_depth=16"),
        (doc(metadata={"k": "a\x00b"}), "valid_unicode"),
        (doc(metadata={"a\x00": "b"}), "valid_unicode"),
        (doc(id="a\x00b"), "valid_unicode"),
        (doc(id="line\nbreak"), "valid_unicode"),
        ('{"id": "a", "text": "bad \\ud800 text"}', "valid_unicode"),
        ('{"id": "a\\udfff", "text": "t"}', "valid_unicode"),
        ('{"id": "a", "text": "t", "metadata": {"k": "\\ud83d"}}', "valid_unicode"),
        ('{"id": "a", "text": "t", "title": "\\ud800"}', "valid_unicode"),
        ('{"id": "a", "text": "t", "metadata": {"x": NaN}}', "finite_numbers"),
        ('{"id": "a", "text": "t", "metadata": {"x": -Infinity}}', "finite_numbers"),
        (
            '{"id": "a", "text": "t", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "json_nesting",
        ),
    ],
)
def test_a_record_that_breaks_a_limit_is_rejected_naming_it(value, limit):
    error = rejected(value)
    assert f"(limit {limit}" in str(error)
    assert isinstance(error, BadRecord)


def test_a_reason_never_carries_the_bad_characters_themselves():
    error = rejected('{"id": "a", "text": "t", "metadata": {"k\\ud800": 1}}')
    str(error).encode("utf-8")  # would raise on a lone surrogate


def test_values_at_the_limits_are_accepted():
    event = normalize(
        doc(
            id="x" * 1024,
            title="t" * 2048,
            version=2**63 - 1,
            metadata={
                "n": 2**63 - 1,
                "m": -(2**63),
                "f": 1.5,
                "deep": json.loads("[" * 14 + "]" * 14),
            },
        )
    )
    assert event is not None and event.version == 2**63 - 1


def test_control_characters_in_a_title_are_removed_not_rejected():
    event = normalize(doc(title="Intro\x00duction\t to\n Kafka "))
    assert event is not None and event.title == "Intro duction to Kafka"


def test_a_title_of_only_control_characters_becomes_none():
    event = normalize(doc(title="\x00\x07"))
    assert event is not None and event.title is None


def test_nul_in_text_passes_the_door_cleaning_removes_it():
    event = normalize(doc(text="before\x00after"))
    assert event is not None and event.text == "before\x00after"


def test_cdc_events_are_checked_too():
    from streamrag.config import CdcTableConfig

    table = CdcTableConfig(id_columns=["id"], text_columns=["body"])
    value = {
        "op": "c",
        "after": {"id": "x" * 2000, "body": "text"},
        "source": {"schema": "kb", "table": "t", "lsn": 5},
    }
    with pytest.raises(LimitExceeded, match="doc_id_bytes"):
        normalize_record(
            b"k", json.dumps(value).encode(), Origin("cdc.kb.t", 0, 1), 1, {"cdc.kb.t": table}
        )


def test_every_limit_has_a_unique_name_and_a_reason():
    names = [limit.name for limit in limits.ALL]
    assert len(names) == len(set(names))
    assert all(limit.why for limit in limits.ALL)


def test_records_derived_from_a_record_at_every_limit_fit_their_topics():
    # The largest chunk and embedding records a checked event can produce.
    chunk = ChunkRecord(
        chunk_id="0" * 36,
        doc_id="é" * 512,
        version=2**63 - 1,
        op="upsert",
        position=2**31,
        start=2**31,
        end=2**31,
        text="\u4e00" * (65_535 // 3),
        content_hash="h" * 32,
        source="s" * 512,
        title="t" * 2048,
        metadata={"m": "\u4e00" * (65_000 // 3)},
        source_ts_ms=2**62,
    )
    embedding = EmbeddingRecord(chunk, "m" * 512, [-1.2345678e-30] * 4096, embedded=True)
    for record in (chunk, embedding):
        limits.topic_record_size(record.to_json(), "record")


def test_an_oversized_derived_record_is_rejected_naming_the_topic_limit():
    with pytest.raises(LimitExceeded, match="topic_record_bytes"):
        limits.topic_record_size("x" * 1_000_001, "a chunk record")


def test_check_event_leaves_a_valid_event_untouched():
    event = DocumentEvent(
        doc_id="a",
        version=1,
        source="documents",
        origin=ORIGIN,
        text="t",
        title="T",
        metadata={"lang": "en"},
    )
    assert limits.check_event(event) is event
