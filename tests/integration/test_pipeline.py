"""The ingest job end to end: documents topic -> PyFlink -> vector store, on both stores,
with DESIGN.md invariants 2, 4, 6 and 8.

One story per store, in two runs of the real job (``streamrag run --bounded``): the first
run indexes documents of every kind of case, the second sends what changes them (the same
documents again, a shorter version, deletes, an older version, an edited section) while a
reader watches one document. Each test reads what the story left for its own documents
(every case has its own document ids), so one job start serves them all: a job start is
most of an integration test's time here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from jobs.chunking.cleaning import clean
from jobs.chunking.planner import chunk_id, content_hash
from jobs.chunking.stage import ChunkStage
from streamrag import generations
from streamrag.config import Settings
from streamrag.kafka import pending_records
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.models import BUNDLED_MODEL_ID, ModelTokenizer, resolve_model
from streamrag.records import EmbeddingRecord, model_input
from tests.integration.conftest import CLI, Pipeline, as_event, make_pipeline

PARAGRAPH = (
    "Kafka keeps the latest record for every key when log compaction is on. "
    "The cleaner thread rewrites old segments and drops records that a newer one "
    "with the same key has replaced. "
)


def doc(doc_id: str, paragraphs: int, word: str = "alpha", **extra: object) -> dict:
    text = "\n\n".join(f"## Part {i} {word}\n\n{PARAGRAPH * 3}" for i in range(paragraphs))
    return {"id": doc_id, "text": text, "content_type": "markdown", **extra}


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


TRACED = "# Guide\n\n" + "\n\n".join(
    f"Paragraph {i}: Flink checkpoints store Kafka offsets with keyed state; "
    f"identifiers like kafka.consumer.max_poll_records_{i} and 0x{i:08x} are dense. " * 6
    for i in range(12)
)

# What each case sends, by run. Document ids are the case's own.
EXACT = [doc("exact/a.md", 4), doc("exact/b.md", 2, "beta"), doc("exact/c.md", 1, "gamma")]
LONG, TOMBSTONED, FLAGGED = doc("upd/a", 5), doc("upd/b", 2, "beta"), doc("upd/c", 2, "gamma")
SHORTER = doc("upd/a", 2, "omega")
BLINK = doc("upd/e", 1)  # created and deleted within one millisecond
GOOD = doc("bad/z", 1)


def expected_ids(settings: Settings, document: dict) -> set[str]:
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    return {chunk_id(document["id"], i) for i in range(len(stage.spans(as_event(document))))}


class Watcher(threading.Thread):
    """Reads one document's chunk ids in a loop while the second run updates it; records
    every read that missed one of ``ids`` (a reader must never see the document shrink)."""

    def __init__(self, p: Pipeline, doc_id: str, ids: set[str]) -> None:
        super().__init__(daemon=True)
        self.p, self.doc_id, self.ids = p, doc_id, ids
        self.missing: list[set[str]] = []
        self.reads = 0
        self.stop = threading.Event()

    def run(self) -> None:
        store = self.p.store()
        try:
            while not self.stop.is_set():
                missing = self.ids - set(store.doc_chunk_ids(self.doc_id))
                self.reads += 1
                if missing:
                    self.missing.append(missing)
        finally:
            store.close()


@dataclass
class Story:
    """The pipeline, and what the tests compare with: the index after the first run."""

    p: Pipeline
    first: dict[str, dict[str, tuple]] = field(default_factory=dict)  # doc id -> chunks
    watcher: Watcher | None = None


def chunks_of(p: Pipeline, doc_ids: list[str]) -> dict[str, dict[str, tuple]]:
    store = p.store()
    try:
        return {
            d: {
                c.chunk_id: (c.text, c.content_hash, c.position)
                for c in store.get(store.doc_chunk_ids(d))
            }
            for d in doc_ids
        }
    finally:
        store.close()


@pytest.fixture(scope="module", params=["milvus", "pgvector"])
def story(request: pytest.FixtureRequest, stack: Settings) -> Iterator[Story]:
    p = make_pipeline(stack, request.param)
    # --- the first run
    p.produce_docs(EXACT)
    p.produce_docs([LONG, TOMBSTONED, FLAGGED])
    p.produce([("bad/x", "this is not json"), ("bad/y", json.dumps({"text": "no id here"}))])
    p.produce_docs([GOOD])
    p.produce_docs(
        [
            {"id": "ver/v", "text": "Version ten of the text.", "version": 10},
            {"id": "ver/v", "text": "Version five, late.", "version": 5},
        ]
    )
    p.produce_docs([{"id": "inv/d", "text": sections(6), "content_type": "markdown", "version": 1}])
    p.produce_docs(
        [
            {
                "id": "inv/t",
                "text": TRACED,
                "content_type": "markdown",
                "title": "Guide",
                "metadata": {"tenant": "acme"},
                "version": 4,
            }
        ]
    )
    p.run()
    # A finished bounded run leaves its group at the end of what it read: the next run
    # starts there (not from an older commit, which would read records twice).
    assert (
        pending_records(p.settings, p.settings.kafka.documents_topic, p.settings.kafka.group_id)
        == 0
    )
    story = Story(p, chunks_of(p, [d["id"] for d in EXACT] + ["upd/a", "inv/d"]))

    # --- the second run, with a reader on "inv/d" all along
    story.watcher = Watcher(p, "inv/d", set(story.first["inv/d"]))
    story.watcher.start()
    p.produce_docs(EXACT)  # the same documents again, newer record timestamps
    p.produce(
        [
            ("upd/a", json.dumps(SHORTER)),
            ("upd/b", None),
            ("upd/c", json.dumps({"id": "upd/c", "deleted": True})),
        ]
    )
    p.produce([("upd/e", json.dumps(BLINK)), ("upd/e", None)], timestamp_ms=1_700_000_000_000)
    # A later job without the first job's state gets an even older version.
    p.produce_docs([{"id": "ver/v", "text": "Version three, replayed.", "version": 3}])
    p.produce_docs(
        [{"id": "inv/d", "text": sections(6, edited=3), "content_type": "markdown", "version": 2}]
    )
    try:
        p.run()
    finally:
        story.watcher.stop.set()
        story.watcher.join()
    yield story
    generations.drop_all(p.settings)
    shutil.rmtree(checkpoints_dir(p.settings, bounded=False).parent, ignore_errors=True)


def test_chunks_land_exactly_once_and_replay_changes_nothing(story: Story):
    p = story.p
    expected = {d["id"]: expected_ids(p.settings, d) for d in EXACT}
    assert {d: set(story.first[d]) for d in expected} == expected
    assert chunks_of(p, list(expected)) == {d: story.first[d] for d in expected}

    # The embeddings topic carries binary float32 vectors; the store holds the same bits,
    # and `streamrag topics tail` shows them to a person as numbers.
    store = p.store()
    ids = sorted(set().union(*expected.values()))
    stored = {c.chunk_id: c.vector for c in store.get(ids, with_vectors=True)}
    every = store.all_ids()
    assert store.count() == len(every) == len(set(every))  # no chunk id twice, in any case
    store.close()
    assert len(stored) == len(ids)
    logged = {}
    for m in p.topic(p.settings.kafka.embeddings_topic):
        record = json.loads(m.value)
        assert "vector" not in record
        if record["chunk"]["op"] == "upsert":  # (trim markers carry no vector)
            assert isinstance(record["vector_f32"], str)
            logged[record["chunk"]["chunk_id"]] = EmbeddingRecord.from_dict(record).vector
    assert stored.keys() <= logged.keys()
    for cid, vector in stored.items():
        assert np.array_equal(np.asarray(vector, np.float32), np.asarray(logged[cid], np.float32))
    shown = subprocess.run(
        [CLI, "topics", "tail", "embeddings", "-n", "1000"],
        env=p.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    upserts = [line for line in lines if line["value"]["chunk"]["op"] == "upsert"]
    assert {line["key"] for line in upserts} == logged.keys()
    for line in upserts:
        if line["key"] in stored:  # (these documents' text never changed: one vector each)
            assert line["value"]["vector"] == logged[line["key"]]


def test_update_replaces_chunks_and_deletes_remove_them(story: Story):
    p = story.p
    assert set(story.first["upd/a"]) == expected_ids(p.settings, LONG)
    store = p.store()
    try:
        new_ids = expected_ids(p.settings, SHORTER)
        assert sorted(store.doc_chunk_ids("upd/a")) == sorted(new_ids)
        assert all("omega" in c.text or "Part" not in c.text for c in store.get(sorted(new_ids)))
        assert store.doc_chunk_ids("upd/b") == []  # a tombstone
        assert store.doc_chunk_ids("upd/c") == []  # "deleted": true
        assert store.doc_chunk_ids("upd/e") == []  # equal versions, ordered by offset
    finally:
        store.close()


def test_bad_records_go_to_dead_letters_and_the_job_goes_on(story: Story):
    p = story.p
    letters = {d["key"]: d for d in p.dead_letters()}
    assert set(letters) == {"bad/x", "bad/y"}  # and nothing else of the whole story
    assert "not valid JSON" in letters["bad/x"]["reason"]
    assert "'id'" in letters["bad/y"]["reason"]
    for letter in letters.values():
        origin = letter["origin"]
        assert origin["topic"] == p.settings.kafka.documents_topic
        assert origin["partition"] >= 0 and origin["offset"] >= 0
    store = p.store()
    assert store.doc_chunk_ids("bad/z") != []
    store.close()


def test_versions_never_go_backwards(story: Story):
    store = story.p.store()
    (chunk,) = store.get(store.doc_chunk_ids("ver/v"))
    assert (chunk.text, chunk.version) == ("Version ten of the text.", 10)
    store.close()


def test_an_update_neither_flickers_nor_re_embeds_unchanged_chunks(story: Story):
    p, watcher = story.p, story.watcher
    before = {cid: h for cid, (_, h, _) in story.first["inv/d"].items()}
    assert len(before) == 6
    after = {cid: h for cid, (_, h, _) in chunks_of(p, ["inv/d"])["inv/d"].items()}
    assert watcher is not None and watcher.reads > 0
    assert watcher.missing == []
    assert set(after) == set(before)
    assert [cid for cid in after if after[cid] != before[cid]] != []
    records = [json.loads(m.value) for m in p.topic(p.settings.kafka.embeddings_topic)]
    calls = [
        r
        for r in records
        if r["chunk"]["doc_id"] == "inv/d"
        and r["chunk"]["version"] == 2
        and r["chunk"]["op"] == "upsert"
        and r["embedded"]
    ]
    assert len(calls) == 1  # only the edited section went to the model


def test_every_stored_chunk_is_traceable_and_fits_the_model(story: Story):
    p = story.p
    store = p.store()
    chunks = sorted(store.get(store.doc_chunk_ids("inv/t")), key=lambda c: c.position)
    store.close()
    cleaned = clean(TRACED, "markdown").text
    fits = ModelTokenizer(resolve_model("bundled")).fits
    embed_heading = p.settings.chunking.embed_heading
    assert [c.position for c in chunks] == list(range(len(chunks))) and len(chunks) > 3
    for c in chunks:
        assert cleaned[c.start : c.end] == c.text
        assert c.content_hash == content_hash(model_input(c.text, c.heading_path, embed_heading))
        assert c.heading_path == "Guide" and c.chunker
        assert (c.doc_id, c.version, c.title) == ("inv/t", 4, "Guide")
        assert c.metadata == {"tenant": "acme"}
        assert c.source == p.settings.kafka.documents_topic
        assert c.model_id == BUNDLED_MODEL_ID
        assert c.indexed_at_ms >= c.source_ts_ms > 0
        assert fits(model_input(c.text, c.heading_path, embed_heading))  # nothing truncated
