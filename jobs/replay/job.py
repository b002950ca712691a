"""Replay job: re-materialize an index generation from the embeddings topic, no model calls.

    Kafka source (embeddings topic, from the earliest offset: a fresh consumer group)
      -> apply       upserts as they come (batched, version-guarded: the newest per chunk
                     id wins); trim markers held back, the latest per document
                     -> at the end of the input, every held trim

Trims are keyed by document and may sit in another partition than the document's chunks;
a trim only deletes positions >= n up to its version (its own event never upserts there),
so applying the latest trim of each document after all upserts gives the same final state
as the live stream did. That needs one applier:
the job runs with parallelism 1 (which also leaves the other cores to live ingestion),
and without restarts (buffered records would be lost; a failed replay is simply re-run).

The same rules, as a pure function of the log, give the state that a generation must
hold (``LogState``); ``verify`` compares a generation with it.

Run: ``python -m jobs.replay --bounded`` with ``store.collection``/``table`` set to the
new generation and a fresh ``kafka.group_id`` (``streamrag replay rematerialize`` does it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from pyflink.common import Row, Types
from pyflink.datastream import FlatMapFunction, RuntimeContext

from streamrag.config import Settings
from streamrag.flink import create_context, kafka_source
from streamrag.generations import GenerationError
from streamrag.kafka import KafkaUnavailable, Message, end_offsets_of
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores import open_store
from streamrag.stores.base import VectorStore, apply_records

BATCH = 256


class VerificationError(GenerationError):
    """A new generation differs from the log; the message says how."""


def parse(value: bytes | str | None) -> EmbeddingRecord | None:
    """An embeddings-topic value, or None for a tombstone or an unreadable record."""
    if value is None:
        return None
    try:
        return EmbeddingRecord.from_dict(json.loads(value))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def supersedes(new: ChunkRecord, old: ChunkRecord | None) -> bool:
    """The store's rule for a record read after ``old`` with the same key: versions never
    go back, an equal version (a re-run) wins."""
    return old is None or new.version >= old.version


def trimmed(chunk: ChunkRecord | Expected, trim: ChunkRecord | None) -> bool:
    """The store's trim rule: positions >= the trim's, versions up to the trim's."""
    return trim is not None and chunk.position >= trim.position and chunk.version <= trim.version


@dataclass(frozen=True, slots=True)
class Expected:
    """What the log says a generation holds for one chunk."""

    chunk_id: str
    doc_id: str
    version: int
    position: int
    content_hash: str
    text_digest: str
    model_id: str
    vector: np.ndarray


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class LogState:
    """The final state of an embeddings log: the newest upsert per chunk id, minus what the
    latest trim of its document removes. Feed records in log order."""

    def __init__(self) -> None:
        self._upserts: dict[str, Expected] = {}
        self._trims: dict[str, ChunkRecord] = {}
        self.records = 0

    def add(self, record: EmbeddingRecord | None) -> None:
        self.records += 1
        if record is None:
            return
        c = record.chunk
        if c.op == "trim":
            if supersedes(c, self._trims.get(c.doc_id)):
                self._trims[c.doc_id] = c
            return
        old = self._upserts.get(c.chunk_id)
        if record.vector is not None and (old is None or c.version >= old.version):
            self._upserts[c.chunk_id] = Expected(
                c.chunk_id, c.doc_id, c.version, c.position, c.content_hash,
                text_digest(c.text), record.model_id, np.asarray(record.vector, np.float32))

    @property
    def upserts(self) -> int:
        return len(self._upserts)

    def expected(self) -> dict[str, Expected]:
        return {i: e for i, e in self._upserts.items()
                if not trimmed(e, self._trims.get(e.doc_id))}

    def model_ids(self) -> set[str]:
        return {e.model_id for e in self.expected().values()}

    def dim(self) -> int | None:
        return next((len(e.vector) for e in self._upserts.values()), None)


def expected_state(records: Iterable[EmbeddingRecord | None]) -> dict[str, Expected]:
    """The chunks a generation built from ``records`` (in log order) must hold."""
    state = LogState()
    for record in records:
        state.add(record)
    return state.expected()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = _consumer(settings)
    try:
        return end_offsets_of(consumer, topic)
    finally:
        consumer.close()


def read_log(settings: Settings, topic: str, start: dict[int, int] | None,
             end: dict[int, int], timeout_s: float = 900) -> Iterator[Message]:
    """Records of ``topic`` from ``start`` (default: the earliest) up to ``end``; raises
    KafkaUnavailable rather than return a partial log."""
    start = start or {}
    todo = {p for p, e in end.items() if e > start.get(p, 0)}
    if not todo:
        return
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"reading {topic} timed out after {timeout_s:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None:  # compaction or control records may leave the end unreachable
                done = consumer.position([TopicPartition(topic, p) for p in todo])
                todo -= {tp.partition for tp in done if tp.offset >= end[tp.partition]}
                continue
            if msg.error():
                continue
            p = msg.partition()
            if msg.offset() < end[p]:
                yield Message(topic, p, msg.offset(), msg.key(), msg.value(), msg.timestamp()[1])
            if msg.offset() + 1 >= end[p]:
                todo.discard(p)
    finally:
        consumer.close()


def apply_in_phases(store: VectorStore, records: Sequence[EmbeddingRecord]) -> None:
    """Apply a slice of the log: every upsert, then the latest trim of each document."""
    upserts: dict[str, EmbeddingRecord] = {}
    trims: dict[str, EmbeddingRecord] = {}
    for r in records:
        held = upserts if r.chunk.op == "upsert" else trims
        key = r.chunk.chunk_id if r.chunk.op == "upsert" else r.chunk.doc_id
        if supersedes(r.chunk, held[key].chunk if key in held else None):
            held[key] = r
    apply_records(store, list(upserts.values()))
    apply_records(store, [trims[d] for d in sorted(trims)])


def verify(store: VectorStore, expected: dict[str, Expected], sample: int = 50,
           parity: int = 3) -> None:
    """Raise VerificationError unless ``store`` holds exactly ``expected``: the same ids,
    per-document counts, versions, positions and texts, a sample of vectors within 1e-5,
    and searches with stored vectors that find those chunks first."""
    store.flush()
    ids = set(store.all_ids())
    missing, extra = sorted(expected.keys() - ids), sorted(ids - expected.keys())
    if missing or extra:
        raise VerificationError(
            f"{len(ids)} chunks indexed, {len(expected)} in the log: {len(missing)} missing"
            f"{_eg(missing)}, {len(extra)} not in the log{_eg(extra)}")
    stored = [c for i in range(0, len(ids), 500) for c in store.get(sorted(ids)[i:i + 500])]
    want, got = Counter(e.doc_id for e in expected.values()), Counter(c.doc_id for c in stored)
    for doc in sorted(want.keys() | got.keys()):
        if want[doc] != got[doc]:
            raise VerificationError(f"document {doc}: {got[doc]} chunks, the log has {want[doc]}")
    for c in stored:
        e = expected[c.chunk_id]
        for what, have, should in [("version", c.version, e.version),
                                   ("position", c.position, e.position),
                                   ("content hash", c.content_hash, e.content_hash),
                                   ("text", text_digest(c.text), e.text_digest),
                                   ("model", c.model_id, e.model_id)]:
            if have != should:
                raise VerificationError(f"chunk {c.chunk_id} of {c.doc_id}: {what} differs"
                                        " from the log")
    picks = sorted(expected)[:: max(1, len(expected) // sample)][:sample]
    for c in store.get(picks, with_vectors=True):
        want = expected[c.chunk_id].vector
        diff = float(np.max(np.abs(np.asarray(c.vector, np.float32) - want)))
        if diff > 1e-5:
            raise VerificationError(f"chunk {c.chunk_id}: vector differs from the log by"
                                    f" {diff:.2g}")
    for chunk_id in picks[:parity]:
        hits = store.search(expected[chunk_id].vector.tolist(), 5)
        top = [h.chunk.chunk_id for h in hits if hits and h.score >= hits[0].score - 1e-4]
        if chunk_id not in top:
            raise VerificationError(f"a search with chunk {chunk_id}'s vector does not find it"
                                    f" first (found {top[:1]})")


def _eg(ids: list[str]) -> str:
    return f" (e.g. {ids[0]})" if ids else ""


def _consumer(settings: Settings) -> Consumer:
    return Consumer({"bootstrap.servers": settings.kafka.bootstrap, "enable.auto.commit": False,
                     "group.id": "streamrag-replay-reader", "auto.offset.reset": "earliest",
                     "isolation.level": "read_committed"})


class ApplyEmbeddings(FlatMapFunction):
    """Upserts in batches as they come; the latest trim per document at the end."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._store = open_store(self._settings.store)
        self._upserts: dict[str, EmbeddingRecord] = {}
        self._trims: dict[str, EmbeddingRecord] = {}
        self._skipped = runtime_context.get_metrics_group().counter("unreadable")

    def flat_map(self, row: Row) -> Iterator[str]:
        record = parse(row["v"])
        if record is None:
            self._skipped.inc()
        elif record.chunk.op == "trim":
            old = self._trims.get(record.chunk.doc_id)
            if supersedes(record.chunk, old.chunk if old else None):
                self._trims[record.chunk.doc_id] = record
        elif record.vector is not None:
            old = self._upserts.get(record.chunk.chunk_id)
            if supersedes(record.chunk, old.chunk if old else None):
                self._upserts[record.chunk.chunk_id] = record
            if len(self._upserts) >= BATCH:
                apply_records(self._store, list(self._upserts.values()))
                self._upserts.clear()
        yield from ()

    def close(self) -> None:
        apply_records(self._store, list(self._upserts.values()))
        apply_records(self._store, [self._trims[d] for d in sorted(self._trims)])
        self._store.flush()
        self._store.close()


def build(settings: Settings, bounded: bool = True, job_name: str = "streamrag-replay") -> object:
    """The replay job (always bounded: it stops at the end of the topic as of its start)."""
    flink = settings.flink.model_copy(update={"parallelism": 1, "restart_attempts": 0})
    settings = settings.model_copy(update={"flink": flink})
    ctx = create_context(settings, job_name)
    raw = kafka_source(ctx, settings, "embedding_records", [settings.kafka.embeddings_topic],
                       bounded=True)
    raw.flat_map(ApplyEmbeddings(settings), output_type=Types.STRING()) \
        .uid("apply").name("apply").print()
    return ctx.env


build.job_name = "streamrag-replay"  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    from streamrag.cli import run_job_main

    run_job_main(build, argv)


if __name__ == "__main__":
    main()
