"""The ingest job end to end: documents topic -> PyFlink -> vector store, on both stores."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from jobs.chunking.planner import chunk_id
from jobs.chunking.stage import ChunkStage
from streamrag.models import resolve_model
from streamrag.records import EmbeddingRecord
from tests.integration.conftest import CLI, as_event

pytestmark = pytest.mark.integration

PARAGRAPH = (
    "Kafka keeps the latest record for every key when log compaction is on. "
    "The cleaner thread rewrites old segments and drops records that a newer one "
    "with the same key has replaced. "
)


def doc(doc_id: str, paragraphs: int, word: str = "alpha", **extra: object) -> dict:
    text = "\n\n".join(f"## Part {i} {word}\n\n{PARAGRAPH * 3}" for i in range(paragraphs))
    return {"id": doc_id, "text": text, "content_type": "markdown", **extra}


def expected_ids(settings, document: dict) -> set[str]:
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    return {chunk_id(document["id"], i) for i in range(len(stage.spans(as_event(document))))}


def test_chunks_land_exactly_once_and_replay_changes_nothing(pipeline):
    docs = [doc("guide/a.md", 4), doc("guide/b.md", 2, "beta"), doc("guide/c.md", 1, "gamma")]
    expected = set().union(*(expected_ids(pipeline.settings, d) for d in docs))
    pipeline.produce_docs(docs)
    pipeline.run()

    store = pipeline.store()
    assert sorted(store.all_ids()) == sorted(expected)
    assert store.count() == len(expected)
    before = {c.chunk_id: (c.text, c.content_hash, c.position) for c in store.get(sorted(expected))}

    pipeline.produce_docs(docs)  # the same documents again, newer record timestamps
    pipeline.run()
    assert store.count() == len(expected)
    after = {c.chunk_id: (c.text, c.content_hash, c.position) for c in store.get(sorted(expected))}
    assert after == before

    # The embeddings topic carries binary float32 vectors; the store holds the same bits,
    # and `streamrag topics tail` shows them to a person as numbers.
    stored = {c.chunk_id: c.vector for c in store.get(sorted(expected), with_vectors=True)}
    store.close()
    logged = {}
    for m in pipeline.topic(pipeline.settings.kafka.embeddings_topic):
        record = json.loads(m.value)
        assert "vector" not in record
        if record["chunk"]["op"] == "upsert":  # (trim markers carry no vector)
            assert isinstance(record["vector_f32"], str)
            logged[record["chunk"]["chunk_id"]] = EmbeddingRecord.from_dict(record).vector
    assert logged.keys() == stored.keys()
    for cid, vector in stored.items():
        assert np.array_equal(np.asarray(vector, np.float32), np.asarray(logged[cid], np.float32))
    shown = subprocess.run(
        [CLI, "topics", "tail", "embeddings", "-n", "100"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    upserts = [line for line in lines if line["value"]["chunk"]["op"] == "upsert"]
    assert {line["key"] for line in upserts} == set(stored)
    for line in upserts:
        assert line["value"]["vector"] == logged[line["key"]]


def test_update_replaces_chunks_and_deletes_remove_them(pipeline):
    long_doc, tomb_doc, flag_doc = doc("a", 5), doc("b", 2, "beta"), doc("c", 2, "gamma")
    pipeline.produce_docs([long_doc, tomb_doc, flag_doc])
    pipeline.run()
    store = pipeline.store()
    old_ids = expected_ids(pipeline.settings, long_doc)
    assert sorted(store.doc_chunk_ids("a")) == sorted(old_ids)

    shorter = doc("a", 2, "omega")
    pipeline.produce(
        [("a", json.dumps(shorter)), ("b", None), ("c", json.dumps({"id": "c", "deleted": True}))]
    )
    # Created and deleted within one millisecond: equal versions, ordered by offset.
    pipeline.produce([("e", json.dumps(doc("e", 1))), ("e", None)], timestamp_ms=1_700_000_000_000)
    pipeline.run()

    new_ids = expected_ids(pipeline.settings, shorter)
    assert sorted(store.doc_chunk_ids("a")) == sorted(new_ids)
    assert all("omega" in c.text or "Part" not in c.text for c in store.get(sorted(new_ids)))
    assert store.doc_chunk_ids("b") == []
    assert store.doc_chunk_ids("c") == []
    assert store.doc_chunk_ids("e") == []
    assert store.count() == len(new_ids)
    store.close()


def test_bad_records_go_to_dead_letters_and_the_job_goes_on(pipeline):
    pipeline.produce(
        [
            ("x", "this is not json"),
            ("y", json.dumps({"text": "no id here"})),
            ("z", json.dumps(doc("z", 1))),
        ]
    )
    pipeline.run()

    letters = {d["key"]: d for d in pipeline.dead_letters()}
    assert set(letters) == {"x", "y"}
    assert "not valid JSON" in letters["x"]["reason"]
    assert "'id'" in letters["y"]["reason"]
    for letter in letters.values():
        origin = letter["origin"]
        assert origin["topic"] == pipeline.settings.kafka.documents_topic
        assert origin["partition"] >= 0 and origin["offset"] >= 0
    store = pipeline.store()
    assert store.doc_chunk_ids("z") != []
    store.close()
