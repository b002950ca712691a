"""The scale bench's pure parts: its corpus (deterministic, the chunk counts it claims),
the ratios and figures of its JSON line, and how it sizes a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.scale import (
    CHUNKS_PER_DOC,
    SizeFigures,
    checkpoint_sizes,
    figures,
    ratio,
    scale_corpus,
    scale_document,
    section_pool,
)
from jobs.chunking.documents import parse_document_record
from jobs.chunking.stage import ChunkStage
from streamrag.config import ChunkingConfig
from streamrag.models import resolve_model
from streamrag.records import Origin


@pytest.fixture(scope="module")
def stage() -> ChunkStage:
    return ChunkStage.for_model(ChunkingConfig(), resolve_model("hash:384"))


@pytest.fixture(scope="module")
def pool(stage: ChunkStage) -> list[str]:
    return section_pool(stage)


def chunk_texts(stage: ChunkStage, doc: dict[str, str]) -> list[str]:
    event = parse_document_record(
        doc["id"].encode(), json.dumps(doc).encode(), Origin("bench", 0, 0), 0
    )
    return [s.text for s in stage.spans(event)]


def test_the_corpus_is_deterministic_and_its_documents_distinct(pool: list[str]) -> None:
    assert len(pool) >= CHUNKS_PER_DOC // 2  # enough paragraphs to vary the documents
    docs = scale_corpus(40, pool)
    assert docs == scale_corpus(40, pool)
    assert len({d["id"] for d in docs}) == len({d["text"] for d in docs}) == 40
    assert scale_corpus(400, pool)[:40] == docs  # a larger size extends a smaller one


@pytest.mark.parametrize("d", [0, 1, 39, 399, 1999, 3999])
def test_every_document_is_the_chunks_it_claims(stage: ChunkStage, pool: list[str], d: int) -> None:
    assert len(chunk_texts(stage, scale_document(d, pool))) == CHUNKS_PER_DOC
    assert len(chunk_texts(stage, scale_document(d, pool, chunks=7))) == 7


def test_chunks_are_unique_across_documents(stage: ChunkStage, pool: list[str]) -> None:
    """The same paragraph recurs in other documents, but under a heading of its own: no
    chunk reuses another's vector, so every size embeds every chunk."""
    texts = [t for d in (0, 1, 2) for t in chunk_texts(stage, scale_document(d, pool))]
    assert len(set(texts)) == len(texts) == 3 * CHUNKS_PER_DOC


def test_ratio() -> None:
    assert ratio(425.0, 500.0) == 0.85
    assert ratio(3000.0, 1500.0) == 2.0
    assert ratio(1.0, 0.0) == 0.0


def size(docs: int, steady: float, rss: float, state: int) -> SizeFigures:
    """A size whose job took 20 s and 10 CPU-s of fixed cost, then ran at ``steady``
    chunks/s and 1.5 CPU-ms a chunk."""
    return SizeFigures(
        docs=docs,
        chunks=docs * CHUNKS_PER_DOC,
        wall_s=20.0 + docs * CHUNKS_PER_DOC / steady,
        cpu_s=10.0 + docs * CHUNKS_PER_DOC * 0.0015,
        steady_chunks_per_s=steady,
        peak_rss_mb=rss,
        peak_jvm_rss_mb=rss / 2,
        peak_python_rss_mb=rss / 2,
        checkpoint_bytes=state + 8000,
        state_bytes=state,
        store_write_p50_ms=250.0,
        store_write_p99_ms=600.0,
        store_write_ms_per_chunk=1.2,
        store_cpu_ms_per_chunk=0.6,
        replay_chunks_per_s=500.0,
        replay_steady_chunks_per_s=1000.0,
    )


def test_figures_compare_the_largest_size_with_the_smallest() -> None:
    small, middle = size(400, 500.0, 1500.0, 400 * 1100), size(800, 480.0, 1600.0, 800 * 1100)
    large = size(4000, 400.0, 2000.0, 4000 * 1100 + 2**20)
    out = figures([small, middle, large], [20.0, 27.0], [10.0, 12.0])
    assert out["scale_docs"] == [400, 800, 4000]
    assert out["scale_chunks"] == [20000, 40000, 200000]
    assert out["scale_fixed_cost_job_s"] == [20.0, 27.0]
    assert out["scale_4000_steady_chunks_per_s"] == 400.0
    assert out["scale_4000_chunks_per_s"] == 400.0  # the fixed cost: the lesser (20 s)
    assert out["scale_4000_job_cpu_ms_per_chunk"] == 1.5
    assert out["scale_400_state_bytes_per_doc"] == 1100
    assert out["scale_throughput_ratio"] == 0.8
    assert out["scale_wall_throughput_ratio"] == 0.8
    assert out["scale_rss_ratio"] == 1.333
    assert out["scale_rss_growth_mb"] == 500
    # the state grew by (4000 - 400) x 1100 bytes + 1 MiB = 4.78 MiB
    assert out["scale_state_growth_mb"] == 4.8
    assert out["scale_rss_growth_beyond_state_mb"] == 495
    assert out["scale_throughput_target_met"] is False
    two = figures([small, size(800, 450.0, 1500.0, 0)], [20.0], [10.0])
    assert two["scale_throughput_ratio"] == 0.9
    assert two["scale_throughput_target_met"] is True


def test_each_store_has_keys_of_its_own_and_milvus_lite_keeps_the_old_names() -> None:
    sizes = [size(40, 500.0, 1500.0, 0), size(4000, 450.0, 1600.0, 0)]
    pg = figures(sizes, [20.0], [10.0], "pgvector")
    server = figures(sizes, [20.0], [10.0], "milvus-server")
    lite = figures(sizes, [20.0], [10.0], "milvus")
    assert pg["scale_pgvector_store"] == "pgvector"
    assert pg["scale_pgvector_throughput_ratio"] == 0.9
    assert pg["scale_pgvector_4000_store_cpu_ms_per_chunk"] == 0.6
    assert server["scale_milvus_server_throughput_ratio"] == 0.9
    assert lite["scale_throughput_ratio"] == 0.9
    assert lite["scale_store"] == "milvus"
    # one bench line holds them all: no key of one store is another's
    assert not set(pg) & set(server) and not set(pg) & set(lite) and not set(server) & set(lite)


def test_no_wall_rate_when_the_run_is_hardly_longer_than_the_fixed_cost() -> None:
    out = figures([size(40, 500.0, 1500.0, 0)], [30.0], [10.0])
    assert out["scale_40_chunks_per_s"] is None  # 24 s of wall time, 30 s fixed
    assert out["scale_40_job_cpu_ms_per_chunk"] == 1.5
    assert out["scale_40_steady_chunks_per_s"] == 500.0
    # the wall ratio then starts at the smallest size with a wall rate (40 has 4 s left)
    out = figures(
        [size(40, 500.0, 1500.0, 0), *[size(n, 400.0, 1500.0, 0) for n in (400, 4000)]],
        [20.0],
        [10.0],
    )
    assert out["scale_40_chunks_per_s"] is None
    assert out["scale_throughput_ratio"] == 0.8
    assert out["scale_wall_throughput_ratio"] == 1.0


def test_a_checkpoint_counts_once_complete_and_its_state_without_metadata(
    tmp_path: Path,
) -> None:
    done = tmp_path / "job1" / "chk-3"
    done.mkdir(parents=True)
    (done / "state-a").write_bytes(b"x" * 1000)
    (done / "_metadata").write_bytes(b"m" * 100)
    partial = tmp_path / "job1" / "chk-4"  # _metadata is written last: not complete yet
    partial.mkdir()
    (partial / "state-b").write_bytes(b"x" * 2000)
    assert checkpoint_sizes(tmp_path) == {done: (1100, 1000)}
