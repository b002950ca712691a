"""apply_records and Filters: the store contract's pure logic."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from jobs.chunking.planner import chunk_id, trim_key
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.base import Filters, StoreError, apply_records


class RecordingStore:
    """Remembers every write call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def upsert(self, records: Sequence[EmbeddingRecord]) -> None:
        self.calls.append(("upsert", [(r.chunk.chunk_id, r.chunk.version) for r in records]))

    def trim(self, doc_id: str, from_position: int, below_version: int) -> None:
        self.calls.append(("trim", doc_id, from_position, below_version))

    def delete(self, chunk_ids: Sequence[str]) -> None:
        self.calls.append(("delete", list(chunk_ids)))


def up(doc: str, position: int, version: int = 1) -> EmbeddingRecord:
    chunk = ChunkRecord(chunk_id=chunk_id(doc, position), doc_id=doc, version=version,
                        op="upsert", position=position, text=f"{doc}{position}")
    return EmbeddingRecord(chunk, "m", [0.0, 1.0], embedded=True)


def trim(doc: str, position: int, version: int) -> EmbeddingRecord:
    chunk = ChunkRecord(chunk_id=trim_key(doc), doc_id=doc, version=version, op="trim",
                        position=position)
    return EmbeddingRecord(chunk, "m")


def cid(doc: str, position: int) -> str:
    return chunk_id(doc, position)


def test_consecutive_upserts_go_in_one_write():
    store = RecordingStore()

    apply_records(store, [up("d", 0), up("d", 1), up("e", 0)])

    assert store.calls == [("upsert", [(cid("d", 0), 1), (cid("d", 1), 1), (cid("e", 0), 1)])]


def test_upserts_are_written_before_the_trim_that_follows_them():
    store = RecordingStore()

    apply_records(store, [up("d", 0, 2), trim("d", 1, 2)])

    assert store.calls == [("upsert", [(cid("d", 0), 2)]), ("trim", "d", 1, 2)]


def test_order_is_kept_across_documents():
    store = RecordingStore()

    apply_records(store, [up("d", 0), trim("d", 1, 1), up("e", 0), trim("e", 1, 1)])

    assert [c[0] for c in store.calls] == ["upsert", "trim", "upsert", "trim"]
    assert store.calls[2] == ("upsert", [(cid("e", 0), 1)])


def test_a_delete_followed_by_a_recreate_stays_in_that_order():
    store = RecordingStore()

    apply_records(store, [up("d", 0, 1), trim("d", 0, 2), up("d", 0, 3)])

    assert store.calls == [
        ("upsert", [(cid("d", 0), 1)]),
        ("trim", "d", 0, 2),
        ("upsert", [(cid("d", 0), 3)]),
    ]


def test_a_repeated_chunk_id_in_one_write_keeps_only_its_last_record():
    store = RecordingStore()

    apply_records(store, [up("d", 0, 1), up("d", 1, 1), up("d", 0, 2)])

    assert store.calls == [("upsert", [(cid("d", 0), 2), (cid("d", 1), 1)])]


def test_consecutive_trims_are_each_applied():
    store = RecordingStore()

    apply_records(store, [trim("d", 0, 5), trim("e", 3, 6)])

    assert store.calls == [("trim", "d", 0, 5), ("trim", "e", 3, 6)]


def test_empty_batch_writes_nothing():
    store = RecordingStore()

    apply_records(store, [])

    assert store.calls == []


# Filters


def test_filters_accept_known_fields_and_identifier_metadata_keys():
    f = Filters(fields={"doc_id": "d", "source": "documents", "model_id": "m"},
                metadata={"lang": "en", "_tier2": 3, "public": True})

    assert f.fields["doc_id"] == "d" and f.metadata["lang"] == "en"


def test_filters_default_to_empty():
    assert Filters().fields == {} and Filters().metadata == {}


@pytest.mark.parametrize("name", ["text", "vector", "doc_id OR 1=1", ""])
def test_filters_reject_unknown_fields(name):
    with pytest.raises(StoreError, match="cannot filter"):
        Filters(fields={name: "x"})


@pytest.mark.parametrize(
    "key",
    ['a"] or 1==1 or ["x', "lang'; DROP TABLE chunks; --", "1abc", "a-b", "a.b", "", "x" * 65,
     "ünïcode"],
    ids=repr,
)
def test_filters_reject_metadata_keys_that_are_not_plain_identifiers(key):
    with pytest.raises(StoreError, match="plain identifier"):
        Filters(metadata={key: "v"})


def test_filters_accept_a_64_character_metadata_key():
    assert Filters(metadata={"k" * 64: 1}).metadata == {"k" * 64: 1}


def test_filters_reject_a_metadata_key_with_a_trailing_newline():
    with pytest.raises(StoreError, match="plain identifier"):
        Filters(metadata={"lang\n": "en"})


def test_rejected_metadata_key_is_quoted_in_a_one_line_message():
    with pytest.raises(StoreError) as err:
        Filters(metadata={'a"]\nor 1==1': 1})

    assert "\n" not in str(err.value)
