"""plan_document: deterministic ids, stale events, minimal upserts, then one trim marker.

Versions order events; equal versions are ordered by offset only within one partition.
"""

from __future__ import annotations

import uuid

from jobs.chunking.chunker import Span
from jobs.chunking.planner import (
    DocState,
    chunk_id,
    content_hash,
    is_stale,
    plan_document,
    trim_key,
)
from streamrag.records import ChunkRecord, DocumentEvent, Origin

TOPIC = "documents"


def spans_of(*texts: str) -> list[Span]:
    """Spans as the chunker would give them for ``"\\n\\n".join(texts)``."""
    spans, pos = [], 0
    for text in texts:
        spans.append(Span(pos, pos + len(text), text))
        pos += len(text) + 2
    return spans


def event(
    version: int,
    *,
    partition: int = 0,
    offset: int = 0,
    deleted: bool = False,
    title: str | None = None,
    doc_id: str = "guide/intro",
) -> DocumentEvent:
    return DocumentEvent(
        doc_id=doc_id,
        version=version,
        source=TOPIC,
        origin=Origin(TOPIC, partition, offset),
        text=None if deleted else "text",
        deleted=deleted,
        title=title,
    )


def upserts(records: list[ChunkRecord]) -> list[int]:
    return [r.position for r in records if r.op == "upsert"]


def applied(*steps: tuple[DocumentEvent, list[Span]]) -> DocState | None:
    state = None
    for ev, spans in steps:
        state = plan_document(state, ev, spans).state
    return state


# ids


def test_chunk_ids_are_deterministic_uuids():
    assert chunk_id("guide/intro", 3) == chunk_id("guide/intro", 3)
    assert uuid.UUID(chunk_id("guide/intro", 3)).version == 5


def test_chunk_ids_are_distinct_per_document_and_position():
    ids = {chunk_id(doc, pos) for doc in ("a", "b", "a/b", "") for pos in range(100)}

    assert len(ids) == 400


def test_trim_key_never_looks_like_a_chunk_id():
    assert trim_key("guide/intro") != chunk_id("guide/intro", 0)
    assert "guide/intro" in trim_key("guide/intro")


def test_content_hash_depends_only_on_text():
    assert content_hash("abc") == content_hash("abc") != content_hash("abd")


# first event, replays


def test_first_event_upserts_every_chunk_then_trims_beyond_its_end():
    spans = spans_of("alpha", "beta", "gamma")

    plan = plan_document(None, event(1), spans)

    assert not plan.stale
    assert upserts(plan.records) == [0, 1, 2]
    assert [r.chunk_id for r in plan.records[:3]] == [chunk_id("guide/intro", p) for p in range(3)]
    assert [r.text for r in plan.records[:3]] == ["alpha", "beta", "gamma"]
    assert (plan.records[-1].op, plan.records[-1].position) == ("trim", 3)
    assert plan.state.version == 1 and len(plan.state.fingerprints) == 3


def test_upserts_carry_span_offsets_hash_and_version():
    spans = spans_of("alpha", "beta")

    record = plan_document(None, event(7, title="Intro"), spans).records[1]

    assert (record.start, record.end, record.text) == (spans[1].start, spans[1].end, "beta")
    assert record.content_hash == content_hash("beta")
    assert (record.version, record.doc_id, record.title) == (7, "guide/intro", "Intro")


def test_same_event_again_is_stale_and_emits_nothing():
    spans = spans_of("alpha", "beta")
    state = applied((event(5, offset=10), spans))

    plan = plan_document(state, event(5, offset=10), spans)

    assert plan.stale
    assert plan.records == []
    assert plan.state == state


def test_newer_version_with_identical_text_emits_nothing_but_advances_the_version():
    spans = spans_of("alpha", "beta")
    state = applied((event(5), spans))

    plan = plan_document(state, event(6, offset=1), spans)

    assert not plan.stale
    assert plan.records == []
    assert plan.state.version == 6


# updates


def test_edit_upserts_only_changed_positions():
    state = applied((event(1), spans_of("alpha", "beta", "gamma", "delta")))

    plan = plan_document(state, event(2, offset=1), spans_of("alpha", "BETA", "gamma", "delta"))

    assert upserts(plan.records) == [1]
    assert plan.records[0].text == "BETA" and plan.records[0].version == 2


def test_shifted_offsets_count_as_a_change():
    state = applied((event(1), spans_of("alpha", "beta")))

    plan = plan_document(state, event(2, offset=1), spans_of("alpha!", "beta"))

    assert upserts(plan.records) == [0, 1]  # "beta" moved: its stored offsets are stale


def test_title_change_upserts_every_chunk():
    spans = spans_of("alpha", "beta")
    state = applied((event(1, title="Old"), spans))

    plan = plan_document(state, event(2, offset=1, title="New"), spans)

    assert upserts(plan.records) == [0, 1]


def test_shrink_upserts_first_then_trims_the_surplus_positions():
    state = applied((event(1), spans_of("alpha", "beta", "gamma", "delta")))

    plan = plan_document(state, event(2, offset=1), spans_of("ALPHA", "beta"))

    assert [r.op for r in plan.records] == ["upsert", "trim"]
    assert upserts(plan.records) == [0]
    trim = plan.records[-1]
    assert (trim.chunk_id, trim.position, trim.version) == (trim_key("guide/intro"), 2, 2)
    assert len(plan.state.fingerprints) == 2


def test_shrink_without_other_changes_still_trims():
    state = applied((event(1), spans_of("alpha", "beta", "gamma")))

    plan = plan_document(state, event(2, offset=1), spans_of("alpha", "beta"))

    assert [(r.op, r.position) for r in plan.records] == [("trim", 2)]


def test_growth_upserts_only_the_new_positions():
    state = applied((event(1), spans_of("alpha", "beta")))

    plan = plan_document(state, event(2, offset=1), spans_of("alpha", "beta", "gamma"))

    assert upserts(plan.records) == [2]


# deletes


def test_delete_trims_from_position_zero_and_remembers_the_version():
    state = applied((event(1), spans_of("alpha", "beta", "gamma")))

    plan = plan_document(state, event(2, offset=1, deleted=True), [])

    assert [(r.op, r.position, r.version) for r in plan.records] == [("trim", 0, 2)]
    assert plan.state.deleted and plan.state.version == 2


def test_an_older_version_after_a_delete_is_stale():
    state = applied((event(1), spans_of("alpha")), (event(5, offset=1, deleted=True), []))

    plan = plan_document(state, event(3, offset=2), spans_of("resurrected?"))

    assert plan.stale and plan.records == []
    assert plan.state.deleted


def test_a_newer_version_after_a_delete_recreates_every_chunk():
    state = applied((event(1), spans_of("alpha", "beta")), (event(2, offset=1, deleted=True), []))

    plan = plan_document(state, event(3, offset=2), spans_of("alpha", "beta"))

    assert upserts(plan.records) == [0, 1]
    assert not plan.state.deleted


# offset tie-break for equal versions


def test_same_version_later_offset_same_partition_is_applied():
    state = applied((event(5, partition=0, offset=10), spans_of("first")))

    plan = plan_document(state, event(5, partition=0, offset=11), spans_of("second"))

    assert not plan.stale
    assert plan.records[0].text == "second"
    assert plan.state.origin == (TOPIC, 0, 11)


def test_same_version_lower_offset_is_stale():
    state = applied((event(5, partition=0, offset=10), spans_of("first")))

    plan = plan_document(state, event(5, partition=0, offset=9), spans_of("older"))

    assert plan.stale and plan.records == []


def test_same_version_from_another_partition_is_stale():
    state = applied((event(5, partition=0, offset=10), spans_of("first")))

    plan = plan_document(state, event(5, partition=1, offset=500), spans_of("other"))

    assert plan.stale and plan.records == []


def test_same_version_same_partition_number_of_another_topic_is_stale():
    state = applied((event(5, partition=0, offset=10), spans_of("first")))
    other = DocumentEvent(
        doc_id="guide/intro", version=5, source="cdc", origin=Origin("cdc", 0, 99), text="x"
    )

    assert is_stale(state, other)


def test_lower_version_is_stale_even_with_a_later_offset():
    state = applied((event(5, partition=0, offset=10), spans_of("first")))

    assert is_stale(state, event(4, partition=0, offset=11))


def test_same_version_is_stale_when_state_has_no_origin():
    state = DocState(version=5, fingerprints=["f"])

    assert is_stale(state, event(5, offset=11))
    assert not is_stale(state, event(6, offset=0))


def test_delete_with_same_version_later_offset_is_applied():
    state = applied((event(5, offset=10), spans_of("alpha")))

    plan = plan_document(state, event(5, offset=11, deleted=True), [])

    assert [(r.op, r.position) for r in plan.records] == [("trim", 0)]
    assert plan.state.deleted


# state serialization


def test_doc_state_round_trips_through_json_with_its_origin():
    state = applied((event(5, partition=1, offset=42), spans_of("alpha", "beta")))

    restored = DocState.from_json(state.to_json())

    assert restored == state
    assert is_stale(restored, event(5, partition=1, offset=42))
    assert not is_stale(restored, event(5, partition=1, offset=43))


def test_doc_state_from_empty_json_is_none():
    assert DocState.from_json(None) is None
    assert DocState.from_json("") is None


def test_chunk_record_round_trips_through_json():
    record = plan_document(None, event(3, title="Tïtle ✓"), spans_of("alpha")).records[0]

    assert ChunkRecord.from_json(record.to_json()) == record
