"""DESIGN.md invariants 2, 4, 6 and 8 against real Kafka + PyFlink, on both stores."""

from __future__ import annotations

import json
import threading

import pytest

from jobs.chunking.cleaning import clean
from jobs.chunking.planner import content_hash
from streamrag.models import BUNDLED_MODEL_ID, ModelTokenizer, resolve_model
from streamrag.records import model_input

pytestmark = pytest.mark.integration


def sections(n: int, edited: int | None = None) -> str:
    out = []
    for i in range(n):
        body = (
            f"Section {i} explains how stage {i} of the pipeline hands records on. "
            "Every record carries its version, and the index keeps the newest one. "
        ) * 4
        if i == edited:
            body += "This paragraph was edited to say something new about checkpoints."
        out.append(f"## Section {i}\n\n{body}")
    return "\n\n".join(out)


def embedded_records(pipeline, doc_id: str, version: int) -> list[dict]:
    topic = pipeline.settings.kafka.embeddings_topic
    records = [json.loads(m.value) for m in pipeline.topic(topic)]
    return [
        r
        for r in records
        if r["chunk"]["doc_id"] == doc_id
        and r["chunk"]["version"] == version
        and r["chunk"]["op"] == "upsert"
    ]


def test_versions_never_go_backwards(pipeline):
    pipeline.produce_docs(
        [
            {"id": "v", "text": "Version ten of the text.", "version": 10},
            {"id": "v", "text": "Version five, late.", "version": 5},
        ]
    )
    pipeline.run()
    # A later job without the first job's state gets an even older version.
    pipeline.produce_docs([{"id": "v", "text": "Version three, replayed.", "version": 3}])
    pipeline.run()

    store = pipeline.store()
    (chunk,) = store.get(store.doc_chunk_ids("v"))
    assert (chunk.text, chunk.version) == ("Version ten of the text.", 10)
    store.close()


def test_an_update_neither_flickers_nor_re_embeds_unchanged_chunks(pipeline):
    pipeline.produce_docs(
        [{"id": "d", "text": sections(6), "content_type": "markdown", "version": 1}]
    )
    pipeline.run()
    store = pipeline.store()
    before = {c.chunk_id: c.content_hash for c in store.get(store.doc_chunk_ids("d"))}
    assert len(before) == 6

    seen_missing: list[set[str]] = []
    stop = threading.Event()

    def watch() -> None:  # a reader during the update never misses a chunk of "d"
        watcher = pipeline.store()
        while not stop.is_set():
            missing = set(before) - set(watcher.doc_chunk_ids("d"))
            if missing:
                seen_missing.append(missing)
        watcher.close()

    reader = threading.Thread(target=watch)
    reader.start()
    pipeline.produce_docs(
        [{"id": "d", "text": sections(6, edited=3), "content_type": "markdown", "version": 2}]
    )
    pipeline.run()
    stop.set()
    reader.join()

    after = {c.chunk_id: c.content_hash for c in store.get(store.doc_chunk_ids("d"))}
    assert seen_missing == []
    assert set(after) == set(before)
    assert [cid for cid in after if after[cid] != before[cid]] != []
    calls = [r for r in embedded_records(pipeline, "d", 2) if r["embedded"]]
    assert len(calls) == 1  # only the edited section went to the model
    store.close()


def test_every_stored_chunk_is_traceable_and_fits_the_model(pipeline):
    text = "# Guide\n\n" + "\n\n".join(
        f"Paragraph {i}: Flink checkpoints store Kafka offsets with keyed state; "
        f"identifiers like kafka.consumer.max_poll_records_{i} and 0x{i:08x} are dense. " * 6
        for i in range(12)
    )
    pipeline.produce_docs(
        [
            {
                "id": "t",
                "text": text,
                "content_type": "markdown",
                "title": "Guide",
                "metadata": {"tenant": "acme"},
                "version": 4,
            }
        ]
    )
    pipeline.run()

    store = pipeline.store()
    chunks = sorted(store.get(store.doc_chunk_ids("t")), key=lambda c: c.position)
    cleaned = clean(text, "markdown").text
    fits = ModelTokenizer(resolve_model("bundled")).fits
    embed_heading = pipeline.settings.chunking.embed_heading
    assert [c.position for c in chunks] == list(range(len(chunks))) and len(chunks) > 3
    for c in chunks:
        assert cleaned[c.start : c.end] == c.text
        assert c.content_hash == content_hash(model_input(c.text, c.heading_path, embed_heading))
        assert c.heading_path == "Guide" and c.chunker
        assert (c.doc_id, c.version, c.title) == ("t", 4, "Guide")
        assert c.metadata == {"tenant": "acme"}
        assert c.source == pipeline.settings.kafka.documents_topic
        assert c.model_id == BUNDLED_MODEL_ID
        assert c.indexed_at_ms >= c.source_ts_ms > 0
        assert fits(model_input(c.text, c.heading_path, embed_heading))  # nothing truncated
    store.close()
