"""The state a generation must hold, as a pure function of the embeddings log
(jobs.indexing.log)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.indexing.log import (
    NEAR_DUPLICATE_SCORE,
    PARITY_WIDE_K,
    LogState,
    VerificationError,
    expected_state,
    parse_embedding,
    text_digest,
    verify,
)
from streamrag.errors import BadRecord
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.base import SearchHit, StoredChunk
from streamrag.stores.schema import column_values, stored_chunk


def up(doc: str, pos: int, version: int, text: str = "t", model: str = "m") -> EmbeddingRecord:
    chunk = ChunkRecord(
        f"{doc}-{pos}", doc, version, "upsert", position=pos, text=text, content_hash=f"h-{text}"
    )
    return EmbeddingRecord(chunk, model, [float(pos), float(version), 1.0])


def trim(doc: str, from_pos: int, version: int) -> EmbeddingRecord:
    return EmbeddingRecord(ChunkRecord(f"trim:{doc}", doc, version, "trim", position=from_pos))


def test_latest_upsert_per_chunk_wins():
    state = expected_state([up("a", 0, 1, "old"), up("a", 0, 2, "new"), up("a", 1, 1)])
    assert sorted(state) == ["a-0", "a-1"]
    assert state["a-0"].version == 2
    assert state["a-0"].text_digest == text_digest("new")


def test_an_older_version_read_later_never_wins():
    state = expected_state([up("a", 0, 5, "new"), up("a", 0, 3, "late")])
    assert state["a-0"].version == 5 and state["a-0"].text_digest == text_digest("new")


def test_equal_versions_the_later_record_wins():
    state = expected_state([up("a", 0, 4, "first"), up("a", 0, 4, "second")])
    assert state["a-0"].text_digest == text_digest("second")


def test_a_shrinking_document_loses_its_surplus_chunks():
    log = [up("a", i, 1) for i in range(5)] + [up("a", i, 2) for i in range(2)] + [trim("a", 2, 2)]
    assert sorted(expected_state(log)) == ["a-0", "a-1"]


def test_trims_apply_after_all_upserts_whatever_the_order():
    # The trim sits in another partition and is read before the document's chunks.
    log = [trim("a", 2, 2)] + [up("a", i, 1) for i in range(4)] + [up("a", i, 2) for i in range(2)]
    assert sorted(expected_state(log)) == ["a-0", "a-1"]


def test_a_trim_keeps_newer_chunks():
    log = [up("a", 0, 1), up("a", 1, 3), up("a", 2, 1), trim("a", 0, 2)]
    assert sorted(expected_state(log)) == ["a-1"]


def test_a_trim_removes_chunks_of_its_own_version():
    # Insert and tombstone in the same millisecond: the delete (a trim from 0) wins.
    log = [up("a", 0, 5), up("a", 1, 5), trim("a", 0, 5)]
    assert expected_state(log) == {}
    # An update of the same version that shrank: the surplus position goes.
    log = [up("b", 0, 7), up("b", 1, 7), up("b", 2, 7), up("b", 0, 7, "new"), trim("b", 1, 7)]
    assert sorted(expected_state(log)) == ["b-0"]


def test_a_delete_is_a_trim_from_zero():
    log = [up("a", 0, 1), up("a", 1, 1), up("b", 0, 1), trim("a", 0, 2)]
    assert sorted(expected_state(log)) == ["b-0"]


def test_only_the_latest_trim_per_document_counts():
    # Deleted at v2, then re-created at v3 with one chunk: the v3 trim (from 1) decides.
    log = [up("a", 0, 1), up("a", 1, 1), trim("a", 0, 2), up("a", 0, 3), trim("a", 1, 3)]
    state = expected_state(log)
    assert sorted(state) == ["a-0"] and state["a-0"].version == 3


def test_an_older_trim_read_later_is_ignored():
    log = [up("a", 0, 3), trim("a", 1, 3), trim("a", 0, 2)]
    assert sorted(expected_state(log)) == ["a-0"]


def test_tombstones_and_unreadable_records_are_skipped_and_counted():
    state = LogState()
    for value in [
        None,
        b"not json",
        b'{"chunk": {}}',
        json.dumps({"x": 1}).encode(),
        up("a", 0, 1).to_json().encode(),
    ]:
        state.add_value(value)
    assert (state.records, state.unreadable) == (5, 3)
    assert sorted(state.expected()) == ["a-0"]


def test_a_tombstone_is_none_and_an_unreadable_record_an_error():
    assert parse_embedding(None) is None
    with pytest.raises(BadRecord, match="not an embedding record"):
        parse_embedding(b'{"chunk": {}}')


def test_model_ids_and_dimension():
    state = LogState()
    for r in [up("a", 0, 1, model="m1"), up("b", 0, 1, model="m2"), trim("b", 0, 2)]:
        state.add(r)
    assert state.model_ids() == {"m1"}  # b is deleted: its model does not count
    assert state.dim() == 3
    assert state.upserts == 2


def test_vectors_are_kept_as_float32():
    state = expected_state([up("a", 2, 7)])
    assert state["a-2"].vector.dtype.name == "float32"
    assert state["a-2"].vector.tolist() == [2.0, 7.0, 1.0]


class ApproximateIndex:
    """The reads of a store whose search is approximate: exact cosine ranking, except
    that ``missed`` chunks are found only by a search for ``found_from_k`` hits or more
    (None: never), as an HNSW search with a small ef can miss a vector's own chunk."""

    def __init__(self, records: list[EmbeddingRecord], missed: str, found_from_k: int | None):
        self._chunks = {r.chunk.chunk_id: stored_chunk(column_values(r, 0)) for r in records}
        self._missed, self._found_from_k = missed, found_from_k

    def flush(self) -> None:
        pass

    def all_ids(self) -> list[str]:
        return sorted(self._chunks)

    def get(self, ids: list[str], with_vectors: bool = False) -> list[StoredChunk]:
        return [self._chunks[i] for i in ids if i in self._chunks]

    def search(self, vector: list[float], k: int) -> list[SearchHit]:
        q = np.asarray(vector) / np.linalg.norm(vector)
        hits = []
        for c in self._chunks.values():
            if c.chunk_id == self._missed and (
                self._found_from_k is None or k < self._found_from_k
            ):
                continue
            v = np.asarray(c.vector) / np.linalg.norm(c.vector)
            hits.append(SearchHit(float(q @ v), c))
        return sorted(hits, key=lambda h: -h.score)[:k]


def test_verification_accepts_an_approximate_miss_that_a_wider_search_finds():
    records = [up("a", i, 1, text=f"t{i}") for i in range(6)]
    first = sorted(expected_state(records))[0]
    index = ApproximateIndex(records, missed=first, found_from_k=PARITY_WIDE_K)
    verify(index, expected_state(records), parity=1)


def test_verification_fails_when_no_search_finds_a_stored_vectors_chunk():
    records = [up("a", i, 1, text=f"t{i}") for i in range(6)]
    first = sorted(expected_state(records))[0]
    index = ApproximateIndex(records, missed=first, found_from_k=None)
    with pytest.raises(VerificationError, match=f"{first}'s vector does not find it among the"):
        verify(index, expected_state(records), parity=1)


def test_verification_accepts_a_near_duplicate_found_in_place_of_the_chunk():
    # HNSW can leave a vector among many near-duplicates unreachable: the search finds
    # a near-duplicate (cosine >= NEAR_DUPLICATE_SCORE), never the chunk itself.
    records = [up("a", 0, 1, text="t0"), up("a", 1, 1, text="t1")]
    twin = EmbeddingRecord(records[1].chunk, "m", [0.0, 1.0, 1.02])  # ~ a-0's [0, 1, 1]
    index = ApproximateIndex([records[0], twin], missed="a-0", found_from_k=None)
    assert NEAR_DUPLICATE_SCORE <= index.search([0.0, 1.0, 1.0], 1)[0].score < 1.0
    verify(index, expected_state([records[0], twin]), parity=1)
