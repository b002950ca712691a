"""The index stage's rules (jobs.indexing.apply): what reaches a store, in which order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jobs.chunking.planner import chunk_id, trim_key
from jobs.indexing.apply import Latest, PendingWrites, apply_records, supersedes, trimmed
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.base import Trim


class RecordingStore:
    """Remembers every write call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.versions_given: list[dict[str, int] | None] = []

    def upsert(
        self, records: Sequence[EmbeddingRecord], stored_versions: Mapping[str, int] | None = None
    ) -> None:
        self.calls.append(("upsert", [(r.chunk.chunk_id, r.chunk.version) for r in records]))
        self.versions_given.append(None if stored_versions is None else dict(stored_versions))

    def trim(self, trims: Sequence[Trim]) -> None:
        self.calls.append(("trim", [tuple(t) for t in trims]))

    def delete(self, chunk_ids: Sequence[str]) -> None:
        self.calls.append(("delete", list(chunk_ids)))


def up(doc: str, position: int, version: int = 1) -> EmbeddingRecord:
    chunk = ChunkRecord(
        chunk_id=chunk_id(doc, position),
        doc_id=doc,
        version=version,
        op="upsert",
        position=position,
        text=f"{doc}{position}",
    )
    return EmbeddingRecord(chunk, "m", [0.0, 1.0], embedded=True)


def trim(doc: str, position: int, version: int) -> EmbeddingRecord:
    chunk = ChunkRecord(
        chunk_id=trim_key(doc), doc_id=doc, version=version, op="trim", position=position
    )
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

    assert store.calls == [("upsert", [(cid("d", 0), 2)]), ("trim", [("d", 1, 2)])]


def test_upserts_of_several_documents_go_first_then_each_documents_trim():
    store = RecordingStore()

    apply_records(store, [up("d", 0), trim("d", 1, 1), up("e", 0), trim("e", 1, 1)])

    assert store.calls == [
        ("upsert", [(cid("d", 0), 1), (cid("e", 0), 1)]),
        ("trim", [("d", 1, 1), ("e", 1, 1)]),  # one call for all of them
    ]


def test_a_delete_followed_by_a_recreate_leaves_the_recreated_chunk():
    # The trim of the delete (v2) goes last but only removes versions up to 2: the
    # re-created chunk (v3) stays, as it did when they were written in log order.
    store = RecordingStore()

    apply_records(store, [up("d", 0, 1), trim("d", 0, 2), up("d", 0, 3)])

    assert store.calls == [("upsert", [(cid("d", 0), 3)]), ("trim", [("d", 0, 2)])]


def test_only_the_latest_trim_of_a_document_is_written():
    store = RecordingStore()

    apply_records(store, [trim("d", 0, 2), up("d", 0, 3), trim("d", 1, 3), trim("d", 0, 1)])

    assert store.calls == [("upsert", [(cid("d", 0), 3)]), ("trim", [("d", 1, 3)])]


def test_versions_never_go_back_and_equal_versions_win():
    old, new = up("d", 0, 2).chunk, up("d", 0, 3).chunk
    assert supersedes(new, old) and not supersedes(old, new)
    assert supersedes(old, old) and supersedes(old, None)


def test_a_trim_removes_positions_past_it_up_to_its_version():
    marker = trim("d", 2, 5).chunk
    assert trimmed(up("d", 2, 5).chunk, marker) and trimmed(up("d", 7, 1).chunk, marker)
    assert not trimmed(up("d", 1, 1).chunk, marker) and not trimmed(up("d", 3, 6).chunk, marker)
    assert not trimmed(up("d", 3, 1).chunk, None)


def test_latest_keeps_any_item_by_its_chunks_place():
    latest: Latest[str] = Latest()
    latest.upsert(up("d", 0, 1).chunk, "first")
    latest.upsert(up("d", 0, 2).chunk, "second")
    latest.upsert(up("d", 1, 2).chunk, "surplus")
    latest.trim(trim("d", 1, 2).chunk)

    assert latest.final() == {cid("d", 0): "second"}


def test_a_repeated_chunk_id_in_one_write_keeps_only_its_last_record():
    store = RecordingStore()

    apply_records(store, [up("d", 0, 1), up("d", 1, 1), up("d", 0, 2)])

    assert store.calls == [("upsert", [(cid("d", 0), 2), (cid("d", 1), 1)])]


def test_consecutive_trims_are_each_applied_in_one_call():
    store = RecordingStore()

    apply_records(store, [trim("d", 0, 5), trim("e", 3, 6)])

    assert store.calls == [("trim", [("d", 0, 5), ("e", 3, 6)])]


def test_empty_batch_writes_nothing():
    store = RecordingStore()

    apply_records(store, [])

    assert store.calls == []


def test_stored_versions_read_once_are_handed_on_and_kept_up_to_date_across_writes():
    # The embed stage reads the stored versions once per flush; the store needs no read
    # of its own, and a later write of the same flush knows what the earlier one wrote.
    store = RecordingStore()
    pending = PendingWrites(store, batch=2, stored_versions={cid("d", 0): 4})
    for record in [up("d", 0, 5), up("d", 1, 5), up("e", 0, 6)]:
        pending.add(record)
    pending.finish()

    assert store.calls == [
        ("upsert", [(cid("d", 0), 5), (cid("d", 1), 5)]),
        ("upsert", [(cid("e", 0), 6)]),
    ]
    assert store.versions_given == [{cid("d", 0): 4}, {cid("d", 0): 5, cid("d", 1): 5}]


def test_without_stored_versions_the_store_reads_them_itself():
    store = RecordingStore()
    apply_records(store, [up("d", 0)])
    assert store.versions_given == [None]
