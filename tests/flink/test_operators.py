"""Each operator of the ingest job in a real Flink runtime, on a bounded source."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pyflink.common import Row, Types
from pyflink.datastream import ProcessFunction, RuntimeContext

from jobs.chunking.planner import chunk_id
from jobs.pipeline import ChunkDocuments, EmbedChunks, IndexEmbeddings, NormalizeRecords
from streamrag import generations
from streamrag.config import Settings
from streamrag.flink import KEYED_ROW
from streamrag.models import model_dimension, resolve_model
from streamrag.operators import (
    BATCH_ROW,
    EVENT_ROW,
    FLUSH_ROW,
    GuardedFunction,
    batch_row,
    unbatch,
    unflush,
)
from streamrag.records import (
    ChunkRecord,
    DocumentEvent,
    EmbeddingRecord,
    Origin,
    events_from_json,
)
from streamrag.stores import open_store
from tests.flink.conftest import (
    FLINK_LOG_DIR,
    SOURCE_ROW,
    STORES,
    Outputs,
    collect,
    environment,
    side,
    source_row,
)

TEXT = "Log compaction keeps the latest record of every key in a topic. " * 8


def doc(doc_id: str, **fields: Any) -> str:
    return json.dumps({"id": doc_id, "text": TEXT, **fields})


def test_normalize_emits_events_and_dead_letters_what_breaks_a_limit(flink_settings: Settings):
    env = environment(flink_settings)
    rows = [
        source_row("good", doc("good", version=3), 0),
        source_row("broken", "{not json", 1),
        source_row("nan", '{"id": "nan", "text": "t", "metadata": {"x": NaN}}', 2),
        source_row("long", doc("x" * 2000), 3),
        source_row("gone", None, 4),
    ]
    normalized = env.from_collection(rows, type_info=SOURCE_ROW).process(
        NormalizeRecords(flink_settings), output_type=EVENT_ROW
    )

    out = collect(normalized, [side(normalized)])

    events = {r["doc_id"]: DocumentEvent.from_json(r["event"]) for r in out.main}
    assert events["good"].version == 3 and events["good"].origin == Origin("documents", 0, 0)
    assert events["gone"].deleted
    letters = {d.key: d for d in out.dead_letters}
    assert set(letters) == {"broken", "nan", "long"}
    assert all(d.stage == "normalize" and d.origin is not None for d in letters.values())
    assert "not valid JSON" in letters["broken"].reason
    assert "finite_numbers" in letters["nan"].reason
    assert "doc_id_bytes=1024" in letters["long"].reason and letters["long"].origin.offset == 3


def event_row(doc_id: str, version: int, offset: int, **fields: Any) -> Row:
    event = DocumentEvent(
        doc_id=doc_id,
        version=version,
        source="documents",
        origin=Origin("documents", 0, offset),
        **fields,
    )
    return Row(doc_id=doc_id, event=event.to_json())


def test_chunk_emits_changed_chunks_then_a_trim_and_drops_stale_events(flink_settings):
    env = environment(flink_settings)
    events = [
        event_row("a", 2, 0, text=TEXT),
        event_row("a", 1, 1, text="An older version, read later."),  # stale
        event_row("b", 1, 2, text="x" * 20_000),  # nothing the model can read
        event_row("c", 5, 3, deleted=True),
    ]
    chunks = (
        env.from_collection(events, type_info=EVENT_ROW)
        .key_by(lambda r: r["doc_id"], key_type=Types.STRING())
        .process(ChunkDocuments(flink_settings), output_type=BATCH_ROW)
    )
    records = chunks.flat_map(unbatch, output_type=KEYED_ROW)

    out = collect(records, [side(chunks)])

    by_doc: dict[str, list[dict[str, Any]]] = {}
    for row in out.main:
        record = json.loads(row["v"])
        assert row["k"] == record["chunk_id"]
        by_doc.setdefault(record["doc_id"], []).append(record)
    assert [r["op"] for r in by_doc["a"]] == ["upsert"] * (len(by_doc["a"]) - 1) + ["trim"]
    assert {r["version"] for r in by_doc["a"]} == {2}
    assert by_doc["a"][0]["chunk_id"] == chunk_id("a", 0)
    assert [(r["op"], r["position"]) for r in by_doc["c"]] == [("trim", 0)]
    assert "b" not in by_doc
    (letter,) = out.dead_letters
    assert (letter.stage, letter.key) == ("chunk", "b") and "no indexable text" in letter.reason


def embed_and_index(settings: Settings, batches: list[Row]) -> Outputs:
    """The embed stage (one batch key) then the index stage, on these batch rows."""
    embedded = (
        environment(settings)
        .from_collection(batches, type_info=BATCH_ROW)
        .key_by(lambda r: 0, key_type=Types.INT())
        .process(EmbedChunks(settings), output_type=FLUSH_ROW)
    )
    indexed = embedded.process(IndexEmbeddings(settings), output_type=FLUSH_ROW)
    return collect(indexed, [side(embedded), side(indexed)])


@pytest.mark.parametrize("flink_settings", STORES, indirect=True)
def test_embed_and_index_write_a_batch_and_dead_letter_one_the_store_rejects(flink_settings):
    model = resolve_model(flink_settings.embedding.model)
    store = open_store(flink_settings.store)
    store.ensure(model_dimension(model))
    good = [chunk("a", i, f"Chunk {i} about compacted topics.") for i in range(2)]
    # A doc id no store column holds: normalize would have stopped it; here it got past.
    # (10,000 characters that do not compress, for PostgreSQL's btree index.)
    huge = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(160))[:10_000]
    bad = [chunk(huge, 0, "An unstorable document.")]
    batches = [
        batch_row("a", Origin("documents", 0, 0), good, "chunks"),
        batch_row(huge, Origin("documents", 0, 1), bad, "chunks"),
    ]
    try:
        out = embed_and_index(flink_settings, batches)

        # Both events went through the model in one flush; the store refused the flush,
        # so the index stage wrote event by event and dead-lettered only the culprit.
        events = [e for row in out.main for e in events_from_json(row["events"])]
        assert [e.doc_id for e in events] == ["a"]
        records = [EmbeddingRecord.from_dict(r) for r in events[0].records]
        assert all(r.embedded and r.vector is not None and len(r.vector) == 384 for r in records)
        assert store.doc_chunk_ids("a") == sorted(chunk_id("a", i) for i in range(2))
        (letter,) = out.dead_letters
        assert letter.stage == "index" and letter.origin == Origin("documents", 0, 1)
        # pgvector's StoreError; pymilvus checks column lengths before sending a write.
        assert letter.error in ("StoreError", "ParamError")
        assert "maximum size" in letter.reason or "exceeds max length" in letter.reason
    finally:
        store.close()
        generations.drop_all(flink_settings)


@pytest.mark.parametrize("flink_settings", STORES, indirect=True)
def test_stages_without_state_never_let_an_older_version_overwrite_the_index(flink_settings):
    """DESIGN.md invariant 2 where no chunk state can help: a job started without state (a
    new deployment, a run after a crash without checkpoints) gets an older version of a
    document than the index holds. The store's version guard keeps the newer one."""
    store = open_store(flink_settings.store)
    store.ensure(model_dimension(resolve_model(flink_settings.embedding.model)))
    newer = dataclasses.replace(chunk("v", 0, "Version nine of the text."), version=9)
    store.upsert([EmbeddingRecord(newer, "model-a", [1.0] + [0.0] * 383)])
    store.flush()
    batches = [
        batch_row("v", Origin("documents", 0, 0), [chunk("v", 0, "Version one, late.")], "chunks"),
        batch_row("w", Origin("documents", 0, 1), [chunk("w", 0, "A new document.")], "chunks"),
    ]
    try:
        out = embed_and_index(flink_settings, batches)

        assert out.dead_letters == []
        (kept,) = store.get([chunk_id("v", 0)])
        assert (kept.text, kept.version) == ("Version nine of the text.", 9)
        (new,) = store.get([chunk_id("w", 0)])
        assert (new.text, new.version) == ("A new document.", 1)
    finally:
        store.close()
        generations.drop_all(flink_settings)


@pytest.mark.parametrize(("max_chunks", "flushes"), [(1000, 1), (3, 2), (1, 5)])
def test_embed_gathers_events_of_many_documents_and_keeps_their_order(
    flink_settings, max_chunks: int, flushes: int
):
    # No timer can fire in a run this short (max_wait_ms is long): the flushes come from
    # max_batch_chunks, and the last from the end of the input.
    embedding = flink_settings.embedding.model_copy(
        update={"model": "hash:32", "max_batch_chunks": max_chunks, "max_wait_ms": 600_000}
    )
    settings = flink_settings.model_copy(update={"embedding": embedding})
    store = open_store(settings.store)
    store.ensure(32)
    docs = ["a", "b", "c", "a", "d"]  # "a" twice: its second event must come after its first
    batches = [
        batch_row(d, Origin("documents", 0, i), [chunk(d, 0, f"{d} version {i}")], "chunks")
        for i, d in enumerate(docs)
    ]
    try:
        env = environment(settings)
        embedded = (
            env.from_collection(batches, type_info=BATCH_ROW)
            .key_by(lambda r: 0, key_type=Types.INT())
            .process(EmbedChunks(settings), output_type=FLUSH_ROW)
        )

        out = collect(embedded, [side(embedded)])

        topic_rows = [k for row in out.main for k in unflush(Row(**row))]  # as the sink sees
        assert [json.loads(r["v"])["chunk"]["text"] for r in topic_rows] == [
            f"{d} version {i}" for i, d in enumerate(docs)
        ]
        assert all(r["k"] == json.loads(r["v"])["chunk"]["chunk_id"] for r in topic_rows)
        assert len(out.main) == flushes
        assert out.dead_letters == []
    finally:
        store.close()
        generations.drop_all(settings)


def chunk(doc_id: str, position: int, text: str) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=chunk_id(doc_id, position),
        doc_id=doc_id,
        version=1,
        op="upsert",
        position=position,
        text=text,
        content_hash=f"h{text}",
        source="documents",
    )


class FailsOnPoison(GuardedFunction, ProcessFunction):
    """Passes rows on; fails with an error no table classifies on the row keyed poison."""

    stage = "test"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        origin = Origin(row["topic"], row["partition"], row["offset"])
        try:
            if row["k"] == b"poison":
                raise KeyError("boom")
        except Exception as e:
            yield self.dead_letter(e, origin, "poison", None)
            return
        yield Row(k=bytes(row["k"]).decode(), v="ok")


def test_a_record_that_fails_the_same_way_across_restarts_is_dead_lettered(flink_settings):
    settings = flink_settings.model_copy(
        update={
            "flink": flink_settings.flink.model_copy(
                update={"restart_attempts": 5, "poison_after_failures": 3}
            )
        }
    )
    env = environment(settings)
    rows = [source_row("first", "1", 0), source_row("poison", "2", 1), source_row("last", "3", 2)]
    passed = env.from_collection(rows, type_info=SOURCE_ROW).process(
        FailsOnPoison(settings), output_type=KEYED_ROW
    )

    out = collect(passed, [side(passed)])

    assert {r["k"] for r in out.main} == {"first", "last"}
    (letter,) = out.dead_letters
    assert letter.reason == "failed 3 times in a row: KeyError: 'boom'"
    assert letter.origin == Origin("documents", 0, 1) and letter.stage == "test"
    log = "\n".join(f.read_text() for f in FLINK_LOG_DIR.glob("*.log"))
    assert log.count("switched from state RUNNING to RESTARTING") >= 2
    assert list(settings.flink.failure_ledger_dir.iterdir()) == []  # forgotten once sent
