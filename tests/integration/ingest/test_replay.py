"""Replay: rebuild the index from the embeddings topic into a new generation, verify, swap,
roll back; on both stores, with real Kafka, PyFlink and the stores.

The index rebuilt is the shared running job's (tests/integration/live.py), while that job
runs, as in production: the replays rebuild all of it, every other test's documents too.
This module adds 3 documents of its own (one updated so that a trim marker exists, one
deleted) and checks them by name.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from jobs.indexing.log import VerificationError
from jobs.replay.driver import full_replay, rematerialize
from streamrag import generations
from streamrag.config import Settings
from streamrag.generations import GenerationError
from streamrag.kafka import send_all
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.base import Filters, StoredChunk, VectorStore
from tests.integration.conftest import make_pipeline, rec, trim
from tests.integration.live import LiveJob, Namespace

PARAGRAPH = (
    "A compacted topic keeps the latest record of every key, so a consumer that "
    "starts from the earliest offset rebuilds the current state of every document. "
)


def doc(doc_id: str, parts: int, word: str, version: int) -> dict:
    text = "\n\n".join(f"## Part {i} {word}\n\n{PARAGRAPH * 3}" for i in range(parts))
    return {"id": doc_id, "text": text, "content_type": "markdown", "version": version}


@dataclass
class Ingested:
    live: LiveJob
    ns: Namespace


@pytest.fixture(scope="module")
def ingested(live: LiveJob) -> Ingested:
    ns = live.namespace("replay")
    live.produce_docs(
        [doc(ns("a"), 5, "alpha", 1), doc(ns("b"), 2, "beta", 1), doc(ns("c"), 2, "gamma", 1)]
    )
    live.produce([(ns("a"), json.dumps(doc(ns("a"), 2, "omega", 2))), (ns("c"), None)])
    live.settle()
    log = [json.loads(m.value)["chunk"] for m in live.topic(live.settings.kafka.embeddings_topic)]
    assert any(c["op"] == "trim" and c["doc_id"] == ns("a") and c["position"] > 0 for c in log)
    assert any(c["op"] == "trim" and c["doc_id"] == ns("c") and c["position"] == 0 for c in log)
    return Ingested(live, ns)


def snapshot(store: VectorStore) -> dict[str, StoredChunk]:
    return {c.chunk_id: c for c in store.get(store.all_ids(), with_vectors=True)}


def assert_same_index(got: dict[str, StoredChunk], want: dict[str, StoredChunk]) -> None:
    assert sorted(got) == sorted(want)
    for chunk_id, w in want.items():
        g = got[chunk_id]
        fields = (
            "doc_id",
            "version",
            "position",
            "start",
            "end",
            "text",
            "content_hash",
            "source",
            "title",
            "metadata",
            "model_id",
            "source_ts_ms",
        )
        assert {f: getattr(g, f) for f in fields} == {f: getattr(w, f) for f in fields}
        np.testing.assert_allclose(g.vector, w.vector, atol=1e-6)


def corrupt(store: VectorStore, chunk: StoredChunk, text: str) -> None:
    """Overwrite a chunk's text in place (same version: the store accepts it)."""
    c = chunk
    record = ChunkRecord(
        c.chunk_id,
        c.doc_id,
        c.version,
        "upsert",
        c.position,
        c.start,
        c.end,
        text,
        c.content_hash,
        c.source,
        c.title,
        c.metadata,
        c.source_ts_ms,
    )
    store.upsert([EmbeddingRecord(record, c.model_id, c.vector)])
    store.flush()


class Reader(threading.Thread):
    """Searches the serving name in a loop; records every result set (id, text)."""

    def __init__(self, store: VectorStore, vector: list[float]) -> None:
        super().__init__(daemon=True)
        self.store, self.vector = store, vector
        self.seen: list[frozenset[tuple[str, str]]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                hits = self.store.search(self.vector, 50)
                self.seen.append(frozenset((h.chunk.chunk_id, h.chunk.text) for h in hits))
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.02)


def result_set(settings: Settings, name: str, vector: list[float]) -> frozenset:
    store = generations.open_generation(settings, name)
    try:
        return frozenset((h.chunk.chunk_id, h.chunk.text) for h in store.search(vector, 50))
    finally:
        store.close()


def test_rematerialize_rebuilds_verifies_and_swaps_without_a_gap(ingested: Ingested):
    settings, ns = ingested.live.settings, ingested.ns
    live = ingested.live.store()
    before = generations.serving(settings)
    assert before is not None
    want = snapshot(live)
    ours = {i: c for i, c in want.items() if c.doc_id.startswith(ns.prefix)}
    assert {c.doc_id for c in ours.values()} == {ns("a"), ns("b")}
    victim = ours[sorted(ours)[0]]
    corrupt(live, victim, "CORRUPTED " + victim.text)  # the serving index has gone bad

    reader = Reader(live, victim.vector)
    reader.start()
    try:
        new = rematerialize(settings, progress=False)
        assert new.serving and new.name != before.name
        assert new.model_id == victim.model_id
        assert_same_index(snapshot(live), want)  # the serving name now shows the rebuild

        names = [g.name for g in generations.list_generations(settings)]
        old = next(n for n in names if n != new.name)
        bad, good = (result_set(settings, n, victim.vector) for n in (old, new.name))
        assert bad != good and any(t.startswith("CORRUPTED") for _, t in bad)

        for expected in (old, new.name, old):  # rollback, swap back, rollback
            if expected == old:
                assert generations.rollback(settings).name == old
            else:
                assert generations.swap(settings, new.name).name == new.name
            time.sleep(0.5)
            assert generations.serving(settings).name == expected
        assert generations.swap(settings, new.name).serving
    finally:
        reader.stop.set()
        reader.join(10)
        live.close()
    assert reader.errors == []
    assert len(reader.seen) > 10
    assert all(seen in (bad, good) for seen in reader.seen), "an empty or mixed result set"
    assert bad in reader.seen and good in reader.seen


def test_failed_verification_leaves_the_old_generation_serving(ingested: Ingested):
    settings = ingested.live.settings
    before = generations.serving(settings)
    names_before = [g.name for g in generations.list_generations(settings)]

    def tamper(store: VectorStore) -> None:
        chunk = store.get([store.all_ids()[0]], with_vectors=True)[0]
        corrupt(store, chunk, "tampered")

    with pytest.raises(VerificationError) as failure:
        rematerialize(settings, progress=False, before_verify=tamper)
    message = str(failure.value)
    assert "\n" not in message
    assert "verification failed" in message and "text differs from the log" in message
    assert f"{before.name} still serves" in message
    assert generations.serving(settings) == before
    assert [g.name for g in generations.list_generations(settings)] == names_before


def test_retriever_uses_the_serving_generations_model(ingested: Ingested):
    from streamrag.models import BUNDLED_MODEL_ID
    from streamrag.retrieval import Retriever, serving_model

    settings = ingested.live.settings
    assert serving_model(settings).model_id == BUNDLED_MODEL_ID
    retriever = Retriever(settings)
    assert retriever.search("compacted topic latest record", 3)
    retriever.close()

    unknown = generations.create_generation(settings, "example/not-installed-model", 384)
    generations.swap(settings, unknown)
    try:
        assert generations.serving(settings).model_id == "example/not-installed-model"
        with pytest.raises(GenerationError, match="example/not-installed-model"):
            Retriever(settings)  # never embeds queries with another model than the index's
    finally:
        generations.rollback(settings)
        generations.drop_generation(settings, unknown)
    assert generations.serving(settings).model_id == BUNDLED_MODEL_ID


def test_a_full_replay_with_another_model_switches_searches_to_it(
    ingested: Ingested, second_model: str
):
    """Re-chunked from the documents topic through new topics, re-embedded by another
    model, verified and swapped in: searches then use that model."""
    from streamrag.models import ModelRef, ModelTokenizer, load_model
    from streamrag.records import model_input
    from streamrag.retrieval import Retriever

    settings, ns = ingested.live.settings, ingested.ns
    before = generations.serving(settings)
    live = ingested.live.store()
    old = snapshot(live)
    new = full_replay(settings, model=second_model, progress=False)
    try:
        assert new.serving and new.model_id == second_model != before.model_id
        got = snapshot(live)  # the serving name now shows the new model's generation
        assert sorted(got) == sorted(old)
        assert {i: c.text for i, c in got.items()} == {i: c.text for i, c in old.items()}
        assert {c.model_id for c in got.values()} == {second_model}
        # It went through topics of its own, named after the generation.
        suffix = new.name.rpartition("__")[2]
        topic = f"{settings.kafka.embeddings_topic}.{suffix}"
        replayed = {json.loads(m.value)["chunk"]["doc_id"] for m in ingested.live.topic(topic)}
        assert {ns("a"), ns("b")} <= replayed
        probe = got[sorted(i for i, c in got.items() if c.doc_id == ns("a"))[0]]
        model = load_model(ModelRef(second_model, second_model))
        assert (
            ModelTokenizer(ModelRef(second_model, second_model)).max_length == model.max_seq_length
        )
        given = model_input(probe.text, probe.heading_path, settings.chunking.embed_heading)
        want = model.encode([given], normalize_embeddings=True)[0]
        np.testing.assert_allclose(probe.vector, want, atol=1e-4)  # re-embedded by it
        assert not np.allclose(probe.vector, old[probe.chunk_id].vector, atol=1e-2)

        retriever = Retriever(settings)
        assert retriever.model_id == second_model  # queries use the index's model
        (hit,) = retriever.search(given, 1, Filters(fields={"doc_id": ns("a")}))
        assert hit.chunk.chunk_id == probe.chunk_id and hit.score > 0.99
        retriever.close()
    finally:
        generations.rollback(settings)
        live.close()
    assert generations.serving(settings).number == before.number  # g0 is renamed at a swap
    retriever = Retriever(settings)
    assert retriever.model_id == before.model_id
    retriever.close()


def test_a_replay_writes_its_last_partial_batch_and_trims_before_the_job_ends(stack: Settings):
    """1,023 upserts (3 full batches of 256 and 255 more) and a deleted document: the job
    writes what it holds at the end of its input. When that was left to the operator's
    close(), the bounded job ended before it was through, and a replay into pgvector
    (slow enough to show it) lost the last 255 upserts every time."""
    p = make_pipeline(stack, "pgvector")
    docs = [f"d{i // 50}" for i in range(1_023)]
    records = [(doc, rec(i % 50, doc=doc).to_json()) for i, doc in enumerate(docs)]
    records.append(("d3", trim("d3", 0, 2).to_json()))  # d3 deleted at version 2
    send_all(p.settings, p.settings.kafka.embeddings_topic, records)
    try:
        new = rematerialize(p.settings, progress=False)  # verifies against the log
        store = generations.open_generation(p.settings, new.name)
        try:
            ids = set(store.all_ids())
        finally:
            store.close()
        assert new.serving and new.model_id == "model-a" and len(ids) == 1_023 - 50
        assert "d20-22" in ids and not any(i.startswith("d3-") for i in ids)
    finally:
        generations.drop_all(p.settings)


def test_drop_old_keeps_the_serving_generation(ingested: Ingested):
    settings = ingested.live.settings
    serving = generations.serving(settings)
    extra = generations.create_generation(settings, serving.model_id, 384)
    dropped = generations.drop_old(settings, keep=1)
    left = [g.name for g in generations.list_generations(settings)]
    assert serving.name in left and extra in left and serving.name not in dropped
    assert len(left) == 2


def test_catch_up_and_verify_rebuild_from_the_log_without_flink(ingested: Ingested):
    from jobs.indexing.log import LogState, verify
    from jobs.replay.driver import catch_up

    settings = ingested.live.settings
    name = generations.create_generation(settings, "m", 384)
    store = generations.open_generation(settings, name)
    try:
        state = LogState()
        ends = catch_up(settings, store, {}, state)  # the whole log, upserts then trims
        assert sum(ends.values()) == state.records > 0
        verify(store, state.expected())
        assert sorted(store.all_ids()) == sorted(state.expected())
        assert catch_up(settings, store, ends, state) == ends  # nothing new: no change
    finally:
        store.close()
        generations.drop_generation(settings, name)


def test_the_ingest_job_writes_to_the_serving_generation_after_a_swap(ingested: Ingested):
    """The running job, started before the swaps of this module, writes through the serving
    name (a Milvus alias, a pgvector view): what it indexes now lands in the generation
    that serves, and in no other."""
    live, ns = ingested.live, ingested.ns
    serving = generations.serving(live.settings)
    others = [g.name for g in generations.list_generations(live.settings) if not g.serving]
    assert others, "this module's replays left no other generation"
    live.produce_docs([doc(ns("d"), 1, "delta", 1)])
    live.settle()
    store = generations.open_generation(live.settings, serving.name)
    assert store.doc_chunk_ids(ns("d")) != []
    store.close()
    for name in others:
        store = generations.open_generation(live.settings, name)
        assert store.doc_chunk_ids(ns("d")) == []
        store.close()
