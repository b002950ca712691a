"""One contract, three stores: Milvus Lite (the stack's server of it), the Milvus standalone
server, and pgvector.

Every test runs against each of these real services, in its own collection/table, which is
dropped afterwards. No mocks.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
import uuid
import zlib
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from jobs.indexing.apply import apply_records
from jobs.indexing.log import expected_state
from streamrag import generations
from streamrag.config import PgvectorConfig, Settings, load_settings
from streamrag.local.stack import STORES, store_config
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores import milvus as milvus_store
from streamrag.stores import open_store
from streamrag.stores import pgvector as pgvector_store
from streamrag.stores.base import (
    MAX_K,
    Filters,
    SearchHit,
    StoreError,
    Trim,
    Unsupported,
    VectorStore,
)
from tests.integration.conftest import DIM, rec, trim, vec

INJECTIONS = ['x" or doc_id != "', "x' OR '1'='1", 'x\\" or true or \\"', "x') OR 1=1 --"]


@pytest.fixture(scope="module")
def settings() -> Settings:
    s = load_settings()
    # libpq reads the password from here; PgvectorConfig.dsn never holds it.
    os.environ.setdefault("PGPASSFILE", str(s.stack.secrets_dir / "pgpass"))
    return s


def _opened(kind: str, settings: Settings) -> Iterator[VectorStore]:
    s = open_store(store_config(settings, kind), f"t_{uuid.uuid4().hex[:8]}")
    s.ensure(DIM)
    try:
        yield s
    finally:
        s.drop()
        s.close()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[VectorStore]:
    yield from _opened(request.param, settings)


# The stores with full-text search: Milvus 2.3 (the stack's server) has no BM25 function.
@pytest.fixture(params=["milvus", "pgvector"])
def text_store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[VectorStore]:
    yield from _opened(request.param, settings)


def write(store: VectorStore, records: list[EmbeddingRecord]) -> None:
    apply_records(store, records)
    store.flush()


def without_time(chunks: list) -> dict:
    return {c.chunk_id: dataclasses.replace(c, indexed_at_ms=0) for c in chunks}


def test_ensure_twice_is_harmless(store):
    store.ensure(DIM)
    write(store, [rec(0)])
    store.ensure(DIM)
    assert store.count() == 1


def test_upsert_counts_and_ids(store):
    records = [rec(i) for i in range(25)]
    write(store, records)
    assert store.count() == 25
    assert store.all_ids() == sorted(r.chunk.chunk_id for r in records)
    assert store.doc_chunk_ids("d1") == sorted(r.chunk.chunk_id for r in records)
    assert store.doc_chunk_ids("nope") == []


def test_upsert_is_idempotent(store):
    records = [rec(i) for i in range(10)]
    write(store, records)
    before = without_time(store.get(store.all_ids(), with_vectors=True))
    write(store, records)
    assert store.count() == 10
    assert without_time(store.get(store.all_ids(), with_vectors=True)) == before


def test_get_of_more_ids_than_a_page_returns_every_chunk_in_the_order_asked(store, monkeypatch):
    # A Milvus server refused 200,000 ids in one query (its result size limit): get()
    # asks in pages; three ids a page here.
    monkeypatch.setattr(milvus_store, "GET_PAGE", 3)
    write(store, [rec(i) for i in range(8)])
    asked = ["d1-7", "d1-0", "missing", "d1-5", "d1-2", "d1-6", "d1-1", "d1-3", "d1-4"]
    got = store.get(asked, with_vectors=True)
    assert [c.chunk_id for c in got] == [a for a in asked if a != "missing"]
    assert all(c.vector is not None and len(c.vector) == DIM for c in got)


def test_upsert_replaces_text_and_skips_older_versions(store):
    write(store, [rec(0), rec(1)])
    write(store, [rec(0, version=2, text="new text"), rec(1, text="same version, new text")])
    got = {c.chunk_id: c for c in store.get(["d1-0", "d1-1"])}
    assert (got["d1-0"].text, got["d1-0"].version) == ("new text", 2)
    assert got["d1-1"].text == "same version, new text"
    write(store, [rec(0, version=1, text="stale")])  # a replayed older version loses
    assert store.get(["d1-0"])[0].text == "new text"


def test_delete_and_missing_delete(store):
    write(store, [rec(i) for i in range(5)])
    store.delete(["d1-1", "d1-3"])
    store.delete(["does-not-exist"])
    store.flush()
    assert store.all_ids() == ["d1-0", "d1-2", "d1-4"]
    assert store.get(["d1-1", "d1-3", "does-not-exist"]) == []


def test_apply_records_update_then_trim_keeps_only_new(store):
    write(store, [rec(0, doc="a"), rec(1, doc="a"), rec(2, doc="a"), rec(0, doc="b")])
    # Doc a shrinks to one chunk at version 2: upsert it, then trim from position 1.
    write(store, [rec(0, doc="a", version=2, text="a v2"), trim("a", 1, 2)])
    assert store.doc_chunk_ids("a") == ["a-0"]
    assert store.get(["a-0"])[0].text == "a v2"
    assert store.doc_chunk_ids("b") == ["b-0"]  # other documents untouched


def test_apply_records_trim_then_upsert_keeps_chunk(store):
    write(store, [rec(0, doc="a"), rec(1, doc="a")])
    write(store, [trim("a", 0, 2), rec(0, doc="a", version=3)])  # deleted, then re-created
    assert store.doc_chunk_ids("a") == ["a-0"]
    assert store.get(["a-0"])[0].version == 3


def test_applying_a_log_in_any_partition_order_gives_its_expected_state(store):
    # Trims are keyed by document, chunks by chunk id: they may be read in any order.
    log = [
        trim("a", 2, 2),
        rec(0, doc="a"),
        rec(1, doc="a"),
        rec(2, doc="a"),
        rec(0, doc="a", version=2),
        rec(1, doc="a", version=2),
        rec(0, doc="b"),
        trim("b", 0, 3),
        rec(0, doc="c"),
        rec(0, doc="c", text="re"),
        rec(0, doc="d", version=4),
        rec(1, doc="d", version=4),
        trim("d", 0, 4),
    ]
    write(store, log)
    assert store.all_ids() == sorted(expected_state(log)) == ["a-0", "a-1", "c-0"]


def test_trim_spares_newer_versions_and_deletes_whole_doc(store):
    write(store, [rec(0, doc="a", version=3), rec(1, doc="a", version=3)])
    write(store, [trim("a", 0, 2)])  # a late trim from version 2 spares version 3
    assert store.doc_chunk_ids("a") == ["a-0", "a-1"]
    write(store, [trim("a", 0, 4)])  # the document was deleted at version 4
    assert store.doc_chunk_ids("a") == []
    assert store.count() == 0


def test_search_nearest_first_with_own_score(store):
    records = [rec(i) for i in range(30)]
    write(store, records)
    for target in (records[0], records[17]):
        hits = store.search(target.vector, k=5)
        assert len(hits) == 5
        assert hits[0].chunk.chunk_id == target.chunk.chunk_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(store.search(records[3].vector, k=1)) == 1
    assert len(store.search(records[3].vector, k=100)) == 30


def test_filters_restrict_results(store):
    write(store, [rec(i, doc="a") for i in range(6)] + [rec(i, doc="b") for i in range(6)])
    query = rec(0, doc="a").vector
    by_doc = store.search(query, k=20, filters=Filters(fields={"doc_id": "b"}))
    assert {h.chunk.doc_id for h in by_doc} == {"b"} and len(by_doc) == 6
    by_source = store.search(query, k=20, filters=Filters(fields={"source": "src-a"}))
    assert {h.chunk.doc_id for h in by_source} == {"a"} and len(by_source) == 6
    by_model = store.search(query, k=20, filters=Filters(fields={"model_id": "model-a"}))
    assert len(by_model) == 12
    by_int = store.search(query, k=20, filters=Filters(metadata={"n": 3}))
    assert sorted(h.chunk.chunk_id for h in by_int) == ["a-3", "b-3"]
    by_bool = store.search(
        query, k=20, filters=Filters(fields={"doc_id": "a"}, metadata={"even": True})
    )
    assert sorted(h.chunk.chunk_id for h in by_bool) == ["a-0", "a-2", "a-4"]
    by_str = store.search(query, k=20, filters=Filters(metadata={"lang": "en"}))
    assert len(by_str) == 12
    assert store.search(query, k=20, filters=Filters(metadata={"lang": "fr"})) == []


def test_selective_filters_find_every_match_in_an_indexed_collection(store):
    # Two flushed batches: Milvus searches two indexed segments, where HNSW with its
    # default ef (64) used to drop filtered matches (182 of 200 here).
    for batch in range(2):
        write(
            store,
            [rec(i, doc=f"doc{i % 10}", cid=f"c{batch}-{i}", n=i, lang="en") for i in range(1000)],
        )
    query = rec(0, doc="doc0").vector
    hits = store.search(query, k=10, filters=Filters(metadata={"n": 777}))
    assert sorted(h.chunk.chunk_id for h in hits) == ["c0-777", "c1-777"]
    hits = store.search(query, k=300, filters=Filters(fields={"doc_id": "doc3"}))
    assert len(hits) == 200 and {h.chunk.doc_id for h in hits} == {"doc3"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


# --- filtered search equals an exact scan ---------------------------------------------
#
# A cluster of rare rows sits opposite the query, behind 29,925 closer rows: an HNSW scan
# that skips the rows the filter excludes gives up after hnsw.max_scan_tuples (20,000)
# before it meets one. pgvector returned nothing here (and, on smaller tables, nothing
# once PostgreSQL switched a long-lived connection's statement to a generic plan).

WIDE_DIM, WIDE_ROWS, RARE_EVERY = 32, 30_000, 400


@dataclasses.dataclass
class Wide:
    store: VectorStore
    vectors: np.ndarray  # row i is chunk f"w{i}"
    rare: np.ndarray  # bool per row: metadata tier == "rare", doc id "rare-doc"
    query: list[float]


@pytest.fixture(scope="module", params=STORES)
def wide(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Wide]:
    rng = np.random.default_rng(7)
    far = rng.normal(size=WIDE_DIM)
    vectors = rng.normal(size=(WIDE_ROWS, WIDE_DIM))
    rare = np.arange(WIDE_ROWS) % RARE_EVERY == 0
    vectors[rare] = vectors[rare] * 0.1 - far * 3
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    store = open_store(store_config(settings, request.param), f"t_{uuid.uuid4().hex[:8]}")
    store.ensure(WIDE_DIM)
    try:
        for start in range(0, WIDE_ROWS, 4000):
            store.upsert(
                [
                    _wide_record(i, vectors[i], bool(rare[i]))
                    for i in range(start, min(start + 4000, WIDE_ROWS))
                ]
            )
        store.flush()
        yield Wide(store, vectors, rare, (far / np.linalg.norm(far)).tolist())
    finally:
        store.drop()
        store.close()


def _wide_record(i: int, vector: np.ndarray, rare: bool) -> EmbeddingRecord:
    chunk = ChunkRecord(
        chunk_id=f"w{i}",
        doc_id="rare-doc" if rare else f"doc{i % 97}",
        version=1,
        op="upsert",
        position=i,
        text=f"row {i}",
        content_hash=f"h{i}",
        source="wide",
        metadata={"tier": "rare" if rare else "common", "n": i % 5},
    )
    return EmbeddingRecord(chunk, "model-a", vector.tolist())


def assert_exact(w: Wide, hits: list[SearchHit], mask: np.ndarray, k: int) -> None:
    """``hits`` are what an exact scan over the rows in ``mask`` returns (rows whose
    scores tie within float error may trade places)."""
    exact = w.vectors @ np.asarray(w.query, np.float32)
    rows = [int(h.chunk.chunk_id[1:]) for h in hits]
    assert len(hits) == min(k, int(mask.sum())) and len(set(rows)) == len(rows)
    assert all(mask[i] for i in rows), "a hit does not match the filter"
    np.testing.assert_allclose([h.score for h in hits], exact[rows], atol=1e-4)
    assert all(a.score >= b.score - 1e-6 for a, b in itertools.pairwise(hits))
    kth_best = np.sort(exact[mask])[::-1][len(hits) - 1]
    assert all(exact[i] >= kth_best - 1e-4 for i in rows), "a nearer match was skipped"


def test_selective_filter_far_from_the_query_equals_an_exact_scan_on_every_call(wide):
    assert wide.rare.sum() < 100  # k is larger than the matches
    for _ in range(12):  # past PostgreSQL's switch to generic plans (after 5 executions)
        hits = wide.store.search(wide.query, k=100, filters=Filters(metadata={"tier": "rare"}))
        assert_exact(wide, hits, wide.rare, 100)
    hits = wide.store.search(wide.query, k=10, filters=Filters(fields={"doc_id": "rare-doc"}))
    assert_exact(wide, hits, wide.rare, 10)


def test_combined_filters_equal_an_exact_scan(wide):
    mask = wide.rare & (np.arange(WIDE_ROWS) % 5 == 0)
    for _ in range(8):
        hits = wide.store.search(
            wide.query,
            k=7,
            filters=Filters(fields={"doc_id": "rare-doc"}, metadata={"tier": "rare", "n": 0}),
        )
        assert_exact(wide, hits, mask, 7)


def test_broad_filter_finds_k_nearest_matches(wide):
    hits = wide.store.search(wide.query, k=20, filters=Filters(metadata={"tier": "common"}))
    assert len(hits) == 20 and {h.chunk.metadata["tier"] for h in hits} == {"common"}
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("k", [0, -1])
def test_k_of_zero_or_less_finds_nothing_at_once(store, k):
    write(store, [rec(i) for i in range(3)])
    start = time.monotonic()
    assert store.search(vec(1), k=k) == []
    assert store.search(vec(1), k=k, filters=Filters(metadata={"lang": "en"})) == []
    assert time.monotonic() - start < 1


def test_k_beyond_the_limit_is_one_clear_error(store):
    with pytest.raises(StoreError, match="k must be at most"):
        store.search(vec(1), k=MAX_K + 1)


@pytest.mark.parametrize("value", ["\ud800", "caf\udce9", "a\x00b"])
def test_filter_values_that_cannot_be_valid_fail_at_once(value):
    start = time.monotonic()
    with pytest.raises(StoreError, match="filter"):
        Filters(fields={"doc_id": value})
    with pytest.raises(StoreError, match="filter"):
        Filters(metadata={"lang": value})
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("value", [1.5, None, ["en"], {"x": 1}, 2**70])
def test_filter_values_of_other_types_fail_at_once(value):
    with pytest.raises(StoreError, match="filter"):
        Filters(metadata={"lang": value})


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_in_filter_values_matches_nothing(store, value):
    # Chunk ids are UUIDs in the pipeline; here a plain one. pymilvus quotes ids for
    # get/delete without escaping, so the ids themselves must not hold quotes.
    write(store, [rec(i) for i in range(4)] + [rec(0, doc=value, cid="odd-0")])
    query = rec(0).vector
    assert store.search(query, k=10, filters=Filters(fields={"doc_id": value + "?"})) == []
    assert store.search(query, k=10, filters=Filters(fields={"source": value})) == []
    assert store.search(query, k=10, filters=Filters(metadata={"lang": value})) == []
    store.trim([Trim(value + "?", 0, 99)])
    store.flush()
    assert store.count() == 5
    # The odd string is just a value: it finds exactly its own document.
    hits = store.search(query, k=10, filters=Filters(fields={"doc_id": value}))
    assert [h.chunk.doc_id for h in hits] == [value]
    assert store.doc_chunk_ids(value) == ["odd-0"]


@pytest.mark.parametrize("key", ['lang"] or true or metadata["x', "a b", "1abc", "x;--", ""])
def test_invalid_metadata_key_raises(store, key):
    with pytest.raises(StoreError):
        store.search(vec(0), k=3, filters=Filters(metadata={key: "en"}))


def test_invalid_filter_field_raises():
    with pytest.raises(StoreError):
        Filters(fields={"text": "x"})


LEXICAL_TEXTS = [
    "Connections to the broker fail when the listener is misconfigured.",
    "The error ERR_CONN_4711 means the upstream closed the socket early.",
    "Checkpoints are written to durable storage at a fixed interval.",
    "Replay rebuilds the index from the embeddings topic.",
]


def test_lexical_search_finds_an_exact_identifier(text_store):
    write(text_store, [rec(i, text=t) for i, t in enumerate(LEXICAL_TEXTS)])
    hits = text_store.lexical_search("ERR_CONN_4711", k=2)
    assert hits and hits[0].chunk.position == 1
    assert all(h.score > 0 for h in hits)


def test_lexical_search_ranks_more_matching_words_first(text_store):
    write(text_store, [rec(i, text=t) for i, t in enumerate(LEXICAL_TEXTS)])
    hits = text_store.lexical_search("replay the index from embeddings", k=4)
    assert hits[0].chunk.position == 3
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_lexical_search_honours_filters(text_store):
    write(
        text_store,
        [rec(i, doc="a", text=t, tenant="a") for i, t in enumerate(LEXICAL_TEXTS)]
        + [rec(i, doc="b", text=t, tenant="b") for i, t in enumerate(LEXICAL_TEXTS)],
    )
    hits = text_store.lexical_search(
        "ERR_CONN_4711 socket", k=10, filters=Filters(metadata={"tenant": "b"})
    )
    assert hits and {h.chunk.doc_id for h in hits} == {"b"}
    assert text_store.lexical_search("checkpoints", k=0) == []


def test_lexical_search_is_not_swayed_by_stop_words(text_store):
    texts = [
        "The cat sat on the mat, and the dog sat by the door of the house.",
        "The and the of the a the an the to the in the it the is the.",
        "Checkpoints of a job are taken by the coordinator.",
    ]
    write(text_store, [rec(i, text=t) for i, t in enumerate(texts)])
    hits = text_store.lexical_search("what are the checkpoints of the job", k=2)
    assert hits[0].chunk.position == 2
    # A query of stop words alone still searches them.
    assert text_store.lexical_search("the of the", k=1)


@pytest.fixture
def pg_store(settings: Settings) -> Iterator[VectorStore]:
    yield from _opened("pgvector", settings)


def test_pgvector_ranks_at_most_its_candidate_cap_of_a_query_s_matches(pg_store, monkeypatch):
    # Words in most of a 200,000-chunk table made one query rank most of it (~0.8 s);
    # at most LEXICAL_CANDIDATES matches are ranked, here 4 of 12.
    monkeypatch.setattr(pgvector_store, "LEXICAL_CANDIDATES", 4)
    write(pg_store, [rec(i, text=f"checkpoint barrier number {i}") for i in range(12)])
    hits = pg_store.lexical_search("checkpoint barrier", k=10)
    assert len(hits) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # the filter applies before the cap: the rows ranked are the filter's
    write(pg_store, [rec(0, doc="other", text="checkpoint barrier", tenant="t")])
    hits = pg_store.lexical_search("checkpoint barrier", 10, Filters(metadata={"tenant": "t"}))
    assert [h.chunk.doc_id for h in hits] == ["other"]


@pytest.mark.parametrize("text", [*INJECTIONS, "a & b | !c", "'':*", "\\", "-- ;", "<->"])
def test_lexical_query_text_is_only_words(text_store, text):
    write(text_store, [rec(i, text=t, tenant="a") for i, t in enumerate(LEXICAL_TEXTS)])
    hits = text_store.lexical_search(text, k=10, filters=Filters(metadata={"tenant": "z"}))
    assert hits == []  # no error, and the filter still holds
    text_store.lexical_search(text, k=10)  # and unfiltered it is just a search


def test_milvus_server_without_full_text_refuses_lexical_search_naming_the_version(settings):
    store = open_store(store_config(settings, "milvus-server"), f"t_{uuid.uuid4().hex[:8]}")
    try:
        store.ensure(DIM)
        write(store, [rec(0, text="checkpoint barriers")])
        with pytest.raises(Unsupported, match=r"needs Milvus 2\.5 or later.* is v2\.3\.5") as e:
            store.lexical_search("checkpoint", k=5)
        assert "\n" not in str(e.value)
        assert store.search(rec(0).vector, k=1)[0].chunk.text == "checkpoint barriers"
    finally:
        store.drop()
        store.close()


def test_document_reads_chunks_in_position_order(store):
    write(store, [rec(i, doc="d", tenant="a") for i in (3, 0, 2, 1)] + [rec(0, doc="e")])
    chunks = store.document("d")
    assert [c.position for c in chunks] == [0, 1, 2, 3]
    assert {c.doc_id for c in chunks} == {"d"}
    assert len(store.document("d", Filters(metadata={"tenant": "a"}))) == 4
    assert store.document("d", Filters(metadata={"tenant": "b"})) == []
    assert store.document("missing") == []


def test_stored_chunk_round_trips(store):
    record = rec(
        3, doc="doc/ü", text="ünïcödé \"quoted\" 'single' \\ back\nline", lang="de", n=7, flag=False
    )
    before = int(time.time() * 1000) - 1000
    write(store, [record])
    [chunk] = store.get([record.chunk.chunk_id], with_vectors=True)
    c = record.chunk
    assert (
        chunk.chunk_id,
        chunk.doc_id,
        chunk.version,
        chunk.position,
        chunk.start,
        chunk.end,
    ) == (c.chunk_id, c.doc_id, c.version, c.position, c.start, c.end)
    assert (chunk.text, chunk.content_hash, chunk.source, chunk.title) == (
        c.text,
        c.content_hash,
        c.source,
        c.title,
    )
    assert chunk.metadata == {"lang": "de", "n": 7, "flag": False}
    assert (chunk.model_id, chunk.source_ts_ms) == ("model-a", c.source_ts_ms)
    assert chunk.indexed_at_ms > before
    assert chunk.vector is not None
    np.testing.assert_allclose(chunk.vector, record.vector, atol=1e-5)
    [plain] = store.get([record.chunk.chunk_id])
    assert plain.vector is None
    [hit] = store.search(record.vector, k=1)
    assert dataclasses.replace(hit.chunk, vector=None) == plain


# --- Milvus only ------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["FLAT", "HNSW"])
def test_milvus_many_flushed_segments_keep_search_and_trims_exact(settings, index):
    # The stack's Milvus Lite flushes its memtable into a segment every ~1 MiB
    # (stack.milvus_memtable_mb): 3,000 chunks written in batches land in many segments.
    # Filtered searches and trims must see every row of every segment.
    config = store_config(settings, "milvus").model_copy(update={"vector_index": index})
    store = open_store(config, f"t_{uuid.uuid4().hex[:8]}")
    store.ensure(DIM)
    try:
        assert store.client.describe_index(store.collection, "embedding")["index_type"] == index
        for start in range(0, 3000, 250):
            apply_records(
                store,
                [
                    rec(i, doc=f"doc{i % 30}", cid=f"c{i}", n=i % 100)
                    for i in range(start, start + 250)
                ],
            )
        assert store.count() == 3000
        query = rec(0, doc="doc0").vector
        hits = store.search(query, k=100, filters=Filters(metadata={"n": 42}))
        assert sorted(h.chunk.chunk_id for h in hits) == sorted(
            f"c{i}" for i in range(42, 3000, 100)
        )
        hits = store.search(query, k=200, filters=Filters(fields={"doc_id": "doc7"}))
        assert len(hits) == 100 and {h.chunk.doc_id for h in hits} == {"doc7"}
        # doc7's chunks sit at positions 7, 37, ...: keep those below 1,500.
        store.trim([Trim("doc7", 1500, 1)])
        store.flush()
        assert store.doc_chunk_ids("doc7") == sorted(f"c{i}" for i in range(7, 1500, 30))
        assert store.count() == 3000 - 50
    finally:
        store.drop()
        store.close()


# --- pgvector only ----------------------------------------------------------------------


@pytest.fixture
def pg_config(settings: Settings) -> PgvectorConfig:
    return store_config(settings, "pgvector")  # type: ignore[return-value]


def test_pgvector_rejects_another_dim(pg_config):
    store = open_store(pg_config, f"t_{uuid.uuid4().hex[:8]}")
    try:
        store.ensure(DIM)
        with pytest.raises(StoreError, match="384-dim"):
            store.ensure(768)
    finally:
        store.drop()
        store.close()


@pytest.mark.parametrize("name", ["Bad", "t; drop table x", "1t", 'a"b', "x" * 64, "t_x\n"])
def test_pgvector_rejects_bad_table_names(pg_config, name):
    with pytest.raises(StoreError, match="table name"):
        open_store(pg_config, name)


def test_pgvector_unreachable_fails_in_bounded_time():
    start = time.monotonic()
    config = PgvectorConfig(
        dsn="host=127.0.0.1 port=1 user=postgres dbname=x", unreachable_retry_s=2
    )
    with pytest.raises(StoreError, match="cannot reach PostgreSQL at 127.0.0.1:1"):
        open_store(config, "t_x")
    assert time.monotonic() - start < 15  # the window set (2 s), not the default (20 s)


def test_pgvector_bulk_upsert_keeps_the_newest_of_a_batch_and_the_guard(pg_config):
    """One batch written in bulk (COPY, then one INSERT ... ON CONFLICT) holding a chunk id
    more than once: the newest version wins, of equal versions the last in the batch (as
    row-by-row writes gave); a stored newer version still refuses an older one, and an
    identical row is left alone (its write time kept)."""
    store = open_store(pg_config, f"t_{uuid.uuid4().hex[:8]}")
    try:
        store.ensure(DIM)
        store.upsert([rec(0, version=3, text="kept"), rec(1, text="stored")])
        (before,) = store.get(["d1-1"])
        time.sleep(0.01)  # a rewrite would change indexed_at_ms
        store.upsert(
            [
                rec(0, version=2, text="older than stored"),
                rec(1, text="stored"),  # identical: untouched
                rec(2, version=1, text="first"),
                rec(2, version=5, text="newest"),
                rec(2, version=4, text="newer than first, older than newest"),
                rec(3, version=7, text="equal, earlier"),
                rec(3, version=7, text="equal, last"),
            ]
        )
        got = {c.chunk_id: (c.version, c.text) for c in store.get(store.all_ids())}
        assert got == {
            "d1-0": (3, "kept"),
            "d1-1": (1, "stored"),
            "d1-2": (5, "newest"),
            "d1-3": (7, "equal, last"),
        }
        (after,) = store.get(["d1-1"])
        assert after.indexed_at_ms == before.indexed_at_ms
        # Trims in one statement: each document's own positions and versions.
        store.upsert([rec(i, doc="d2", version=2) for i in range(4)])
        store.trim([Trim("d1", 2, 6), Trim("d2", 1, 1), Trim("d2", 3, 2)])
        assert store.all_ids() == ["d1-0", "d1-1", "d1-3", "d2-0", "d2-1", "d2-2"]
    finally:
        store.drop()
        store.close()


def test_pgvector_generation_loads_without_search_indexes_and_its_swap_builds_them(settings):
    """A new generation is filled in bulk, then indexed in one pass: until its swap it has
    only the primary key and the doc id index (trims), also after the job's own ensure();
    the swap builds HNSW, metadata and lexical, once, and searches find through them."""
    table = f"t_{uuid.uuid4().hex[:8]}"
    config = store_config(settings, "pgvector").model_copy(update={"table": table})
    s = settings.model_copy(update={"store": config})

    def indexes() -> set[tuple[str, str]]:
        with psycopg.connect(config.dsn) as conn:
            rows = conn.execute(
                "SELECT a.attname, am.amname FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                " JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname = %s",
                [name],
            ).fetchall()
        return set(rows)

    try:
        name = generations.create_generation(s, "m", DIM)
        store = open_store(config, name)
        try:
            store.ensure(DIM)  # what the job does at its start: still no search index
            assert indexes() == {("chunk_id", "btree"), ("doc_id", "btree")}
            write(store, [rec(i) for i in range(50)])
        finally:
            store.close()
        generations.swap(s, name)
        built = {
            ("chunk_id", "btree"),
            ("doc_id", "btree"),
            ("embedding", "hnsw"),
            ("metadata", "gin"),
            ("text_lexical", "gin"),
        }
        assert indexes() == built
        served = open_store(config)
        try:
            served.ensure(DIM)
            generations.swap(s, name)  # again: nothing built twice
            assert indexes() == built
            assert served.search(vec(zlib.crc32(b"d1/7")), k=1)[0].chunk.chunk_id == "d1-7"
        finally:
            served.close()
    finally:
        generations.drop_all(s)
