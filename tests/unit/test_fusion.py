"""Reciprocal rank fusion of dense and lexical results (streamrag.retrieval.fuse)."""

from __future__ import annotations

import pytest

from streamrag.retrieval import fuse, tied_ranks
from streamrag.stores.base import SearchHit, StoredChunk


def hit(cid: str, score: float) -> SearchHit:
    chunk = StoredChunk(cid, "d", 1, 0, 0, 1, cid, "h", "s", None, {}, "m", 0, 0)
    return SearchHit(score, chunk)


def ids(hits: list[SearchHit]) -> list[str]:
    return [h.chunk.chunk_id for h in hits]


@pytest.mark.parametrize(
    ("scores", "ranks"),
    [
        ([], []),
        ([0.9], [1]),
        ([0.9, 0.5, 0.5, 0.1], [1, 2.5, 2.5, 4]),
        ([1, 1, 1], [2, 2, 2]),
        ([3, 2, 1], [1, 2, 3]),
    ],
)
def test_tied_scores_share_their_average_rank(scores, ranks):
    assert tied_ranks(scores) == ranks


def test_a_chunk_in_both_rankings_beats_chunks_in_one():
    dense = [hit("a", 0.9), hit("b", 0.8), hit("c", 0.7)]
    lexical = [hit("c", 5.0), hit("d", 4.0)]
    fused = fuse([dense, lexical], k=4, rrf_k=60)
    assert ids(fused) == ["c", "a", "b", "d"]  # b and d tie: the smaller id first
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)


def test_fusion_is_deterministic_and_cut_at_k():
    dense = [hit("b", 0.9), hit("a", 0.8)]
    lexical = [hit("a", 2.0), hit("b", 1.0)]  # a and b tie: the smaller id first
    assert ids(fuse([dense, lexical], k=1)) == ["a"]
    assert fuse([dense, lexical], k=0) == []
    assert ids(fuse([dense, []], k=5)) == ["b", "a"]


def test_a_top_lexical_hit_beats_dense_hits_that_only_tie_lexically():
    # The exact identifier: lexical rank 1, dense rank 10; every other chunk matched a
    # common word equally (one tie) - a tie must not rank them above it.
    dense = [hit(f"c{i}", 1 - i / 100) for i in range(24)]
    lexical = [hit("c9", 3.0)] + [hit(f"c{i}", 1.0) for i in range(24) if i != 9]
    assert ids(fuse([dense, lexical], k=1)) == ["c9"]
