"""The ingest job end to end: documents topic -> PyFlink -> vector store, on both stores,
with DESIGN.md invariants 2, 4, 6 and 8.

One story per store, sent to the shared running job (tests/integration/live.py) in two
rounds: the first indexes documents of every kind of case, the second sends what changes
them (the same documents again, a shorter version, deletes, an older version, an edited
section) while a reader watches one document. Each test reads what the story left for its
own documents (every case has its own document ids). An older version that reaches a job
*without* the state that knew the newer one is tests/flink's (the store's version guard);
a bounded run's committed offsets are test_dead_letters'.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from jobs.chunking.cleaning import clean
from jobs.chunking.planner import chunk_id, content_hash
from jobs.chunking.stage import ChunkStage
from streamrag.config import Settings
from streamrag.models import BUNDLED_MODEL_ID, ModelTokenizer, resolve_model
from streamrag.records import EmbeddingRecord, model_input
from tests.integration.conftest import CLI, as_event
from tests.integration.live import LiveJob, Namespace

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

# What each case sends, by round. Document ids are the case's own (in the story's namespace).
EXACT = [doc("exact/a.md", 4), doc("exact/b.md", 2, "beta"), doc("exact/c.md", 1, "gamma")]
LONG, TOMBSTONED, FLAGGED = doc("upd/a", 5), doc("upd/b", 2, "beta"), doc("upd/c", 2, "gamma")
SHORTER = doc("upd/a", 2, "omega")
BLINK = doc("upd/e", 1)  # created and deleted within one millisecond
GOOD = doc("bad/z", 1)


def expected_ids(settings: Settings, document: dict) -> set[str]:
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    return {chunk_id(document["id"], i) for i in range(len(stage.spans(as_event(document))))}


def inside(ns: Namespace, document: dict) -> dict:
    """``document`` with its id in the namespace."""
    return {**document, "id": ns(document["id"])}


class Watcher(threading.Thread):
    """Reads one document's chunk ids in a loop while the second round updates it; records
    every read that missed one of ``ids`` (a reader must never see the document shrink)."""

    def __init__(self, live: LiveJob, doc_id: str, ids: set[str]) -> None:
        super().__init__(daemon=True)
        self.live, self.doc_id, self.ids = live, doc_id, ids
        self.missing: list[set[str]] = []
        self.reads = 0
        self.stop = threading.Event()

    def run(self) -> None:
        store = self.live.store()
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
    """The job, the story's namespace, and the index after the first round."""

    live: LiveJob
    ns: Namespace
    first: dict[str, dict[str, tuple]] = field(default_factory=dict)  # doc id -> chunks
    watcher: Watcher | None = None


def chunks_of(live: LiveJob, doc_ids: list[str]) -> dict[str, dict[str, tuple]]:
    store = live.store()
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


@pytest.fixture(scope="module")
def story(live: LiveJob) -> Iterator[Story]:
    ns = live.namespace("pipeline")
    # --- the first round
    live.produce_docs(inside(ns, d) for d in [*EXACT, LONG, TOMBSTONED, FLAGGED])
    live.produce([(ns("bad/x"), "this is not json"), (ns("bad/y"), json.dumps({"text": "no id"}))])
    live.produce_docs([inside(ns, GOOD)])
    live.produce_docs(
        [
            {"id": ns("ver/v"), "text": "Version ten of the text.", "version": 10},
            {"id": ns("ver/v"), "text": "Version five, late.", "version": 5},
        ]
    )
    edited = {"id": ns("inv/d"), "text": sections(6), "content_type": "markdown", "version": 1}
    live.produce_docs([edited])
    live.produce_docs(
        [
            {
                "id": ns("inv/t"),
                "text": TRACED,
                "content_type": "markdown",
                "title": "Guide",
                "metadata": {"tenant": "acme"},
                "version": 4,
            }
        ]
    )
    live.settle()
    watched = [ns(d["id"]) for d in EXACT] + [ns("upd/a"), ns("inv/d")]
    story = Story(live, ns, chunks_of(live, watched))

    # --- the second round, with a reader on "inv/d" all along
    story.watcher = Watcher(live, ns("inv/d"), set(story.first[ns("inv/d")]))
    story.watcher.start()
    live.produce_docs(inside(ns, d) for d in EXACT)  # the same again, newer record timestamps
    live.produce(
        [
            (ns("upd/a"), json.dumps(inside(ns, SHORTER))),
            (ns("upd/b"), None),
            (ns("upd/c"), json.dumps({"id": ns("upd/c"), "deleted": True})),
        ]
    )
    blink = inside(ns, BLINK)
    live.produce([(blink["id"], json.dumps(blink)), (blink["id"], None)], 1_700_000_000_000)
    live.produce_docs([{"id": ns("ver/v"), "text": "Version three, replayed.", "version": 3}])
    live.produce_docs([{**edited, "text": sections(6, edited=3), "version": 2}])
    try:
        live.settle()
    finally:
        story.watcher.stop.set()
        story.watcher.join()
    yield story


def test_chunks_land_exactly_once_and_replay_changes_nothing(story: Story):
    live, ns = story.live, story.ns
    expected = {ns(d["id"]): expected_ids(live.settings, inside(ns, d)) for d in EXACT}
    assert {d: set(story.first[d]) for d in expected} == expected
    assert chunks_of(live, list(expected)) == {d: story.first[d] for d in expected}

    # The embeddings topic carries binary float32 vectors; the store holds the same bits,
    # and `streamrag topics tail` shows them to a person as numbers.
    store = live.store()
    ids = sorted(set().union(*expected.values()))
    stored = {c.chunk_id: c.vector for c in store.get(ids, with_vectors=True)}
    every = store.all_ids()
    assert store.count() == len(every) == len(set(every))  # no chunk id twice, in any case
    store.close()
    assert len(stored) == len(ids)
    logged = {}
    for m in live.topic(live.settings.kafka.embeddings_topic):
        record = json.loads(m.value)
        assert "vector" not in record
        if record["chunk"]["op"] == "upsert" and record["chunk"]["doc_id"] in expected:
            assert isinstance(record["vector_f32"], str)  # (trim markers carry no vector)
            logged[record["chunk"]["chunk_id"]] = EmbeddingRecord.from_dict(record).vector
    assert stored.keys() == logged.keys()
    for cid, vector in stored.items():
        assert np.array_equal(np.asarray(vector, np.float32), np.asarray(logged[cid], np.float32))
    shown = subprocess.run(
        [CLI, "topics", "tail", "embeddings", "-n", "1000"],
        env=live.pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    upserts = [
        line
        for line in lines
        if line["value"]["chunk"]["op"] == "upsert" and line["value"]["chunk"]["doc_id"] in expected
    ]
    assert {line["key"] for line in upserts} == logged.keys()
    for line in upserts:  # (these documents' text never changed: one vector each)
        assert line["value"]["vector"] == logged[line["key"]]


def test_update_replaces_chunks_and_deletes_remove_them(story: Story):
    live, ns = story.live, story.ns
    assert set(story.first[ns("upd/a")]) == expected_ids(live.settings, inside(ns, LONG))
    store = live.store()
    try:
        new_ids = expected_ids(live.settings, inside(ns, SHORTER))
        assert sorted(store.doc_chunk_ids(ns("upd/a"))) == sorted(new_ids)
        assert all("omega" in c.text or "Part" not in c.text for c in store.get(sorted(new_ids)))
        assert store.doc_chunk_ids(ns("upd/b")) == []  # a tombstone
        assert store.doc_chunk_ids(ns("upd/c")) == []  # "deleted": true
        assert store.doc_chunk_ids(ns("upd/e")) == []  # equal versions, ordered by offset
    finally:
        store.close()


def test_bad_records_go_to_dead_letters_and_the_job_goes_on(story: Story):
    live, ns = story.live, story.ns
    letters = {d["key"]: d for d in ns.dead_letters()}
    assert set(letters) == {ns("bad/x"), ns("bad/y")}  # and nothing else of the whole story
    assert "not valid JSON" in letters[ns("bad/x")]["reason"]
    assert "'id'" in letters[ns("bad/y")]["reason"]
    for letter in letters.values():
        origin = letter["origin"]
        assert origin["topic"] == live.settings.kafka.documents_topic
        assert origin["partition"] >= 0 and origin["offset"] >= 0
    store = live.store()
    assert store.doc_chunk_ids(ns("bad/z")) != []
    store.close()


def test_versions_never_go_backwards(story: Story):
    store = story.live.store()
    (chunk,) = store.get(store.doc_chunk_ids(story.ns("ver/v")))
    assert (chunk.text, chunk.version) == ("Version ten of the text.", 10)
    store.close()


def test_an_update_neither_flickers_nor_re_embeds_unchanged_chunks(story: Story):
    live, ns, watcher = story.live, story.ns, story.watcher
    before = {cid: h for cid, (_, h, _) in story.first[ns("inv/d")].items()}
    assert len(before) == 6
    after = {cid: h for cid, (_, h, _) in chunks_of(live, [ns("inv/d")])[ns("inv/d")].items()}
    assert watcher is not None and watcher.reads > 0
    assert watcher.missing == []
    assert set(after) == set(before)
    assert [cid for cid in after if after[cid] != before[cid]] != []
    records = [json.loads(m.value) for m in live.topic(live.settings.kafka.embeddings_topic)]
    calls = [
        r
        for r in records
        if r["chunk"]["doc_id"] == ns("inv/d")
        and r["chunk"]["version"] == 2
        and r["chunk"]["op"] == "upsert"
        and r["embedded"]
    ]
    assert len(calls) == 1  # only the edited section went to the model


def test_every_stored_chunk_is_traceable_and_fits_the_model(story: Story):
    live, ns = story.live, story.ns
    store = live.store()
    chunks = sorted(store.get(store.doc_chunk_ids(ns("inv/t"))), key=lambda c: c.position)
    store.close()
    cleaned = clean(TRACED, "markdown").text
    fits = ModelTokenizer(resolve_model("bundled")).fits
    embed_heading = live.settings.chunking.embed_heading
    assert [c.position for c in chunks] == list(range(len(chunks))) and len(chunks) > 3
    for c in chunks:
        assert cleaned[c.start : c.end] == c.text
        assert c.content_hash == content_hash(model_input(c.text, c.heading_path, embed_heading))
        assert c.heading_path == "Guide" and c.chunker
        assert (c.doc_id, c.version, c.title) == (ns("inv/t"), 4, "Guide")
        assert c.metadata == {"tenant": "acme"}
        assert c.source == live.settings.kafka.documents_topic
        assert c.model_id == BUNDLED_MODEL_ID
        assert c.indexed_at_ms >= c.source_ts_ms > 0
        assert fits(model_input(c.text, c.heading_path, embed_heading))  # nothing truncated
