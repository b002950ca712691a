"""Ingest job: documents (and CDC) topics -> chunk -> embed -> index.

Pipeline (one Flink job; every operator has a stable uid):

    Kafka source (documents and CDC topics, raw key/value + topic/partition/offset)
      -> normalize     record -> DocumentEvent, checked against every declared limit
      -> key by doc id
      -> chunk         clean, chunk, diff with doc state      -> `chunks` topic
      -> key by batch key (many documents per key)
      -> embed         event batches gathered in state, one model call per flush,
                       vectors reused by content hash, one store read per flush
      -> index         version-guarded upserts, then trims, per flush  -> `embeddings` topic
    each operator's dead letters                              -> `dead-letters` topic

Between chunk and embed a record is an *event batch*: the records of one document event;
between embed and index a *flush*: the event batches of many documents (streamrag.operators,
jobs.embedding.batching). Every operator has an error boundary (streamrag.boundary): a
record that fails for a reason of its own goes to the dead-letter topic with the stage, the
error and its origin, and the job goes on; a failure of the environment fails the task,
and Flink restarts it from the last checkpoint. When a flush fails as a whole for a
reason of its own, its events are retried one by one to dead-letter only the culprit.

Stage logic lives in jobs.chunking / jobs.embedding / jobs.indexing as plain Python;
the classes here only decode, call, encode and route errors.

Run locally: ``streamrag run`` (or ``python -m jobs.pipeline``); on a cluster:
``flink run -py jobs/pipeline.py -pyfs . -- --config streamrag.yaml``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from jobs.chunking.normalize import normalize_record
from jobs.chunking.planner import DocState
from jobs.chunking.stage import ChunkStage
from jobs.embedding.batching import batch_key
from jobs.embedding.embedder import Embedder
from jobs.indexing.apply import apply_records
from streamrag.config import Settings
from streamrag.flink import (
    END_OF_INPUT,
    INGEST_JOB,
    KEYED_ROW,
    add_kafka_sink,
    create_context,
    kafka_source,
    run_job_main,
)
from streamrag.kafka import ensure_topics
from streamrag.metrics import LatencyHistogram
from streamrag.models import load_configured, model_dimension, resolve_model
from streamrag.operators import (
    BATCH_ROW,
    DEAD_LETTERS,
    EVENT_ROW,
    FLUSH_ROW,
    GuardedFunction,
    batch_row,
    flush_row,
    preview,
    record_jsons,
    unbatch,
    unflush,
)
from streamrag.records import (
    ChunkRecord,
    DocumentEvent,
    EmbeddingRecord,
    EventBatch,
    Origin,
    event_json,
    events_from_json,
)
from streamrag.stores import open_store


class NormalizeRecords(GuardedFunction, ProcessFunction):
    """Kafka row -> (doc id, DocumentEvent JSON), checked against every limit; records that
    cannot be used -> dead letters. Heartbeats and CDC tombstones map to nothing."""

    stage = "normalize"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tables = dict(settings.cdc.tables)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)
        self._documents_in = runtime_context.get_metrics_group().counter("documents_in")

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        origin = Origin(row["topic"], row["partition"], row["offset"])
        try:
            event = normalize_record(row["k"], row["v"], origin, row["ts_ms"], self._tables)
            out = None if event is None else Row(doc_id=event.doc_id, event=event.to_json())
        except Exception as e:
            yield self.dead_letter(e, origin, preview(row["k"]), preview(row["v"]))
            return
        if out is not None:
            self._documents_in.inc()
            yield out


class ChunkDocuments(GuardedFunction, KeyedProcessFunction):
    """Per document: drop stale versions, chunk, emit changed chunks and delete markers.
    The state moves on only once the event's records are ready to go out."""

    stage = "chunk"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)
        self._stage = ChunkStage.for_model(
            self._settings.chunking, resolve_model(self._settings.embedding.model)
        )
        self._state = runtime_context.get_state(ValueStateDescriptor("doc", Types.STRING()))
        metrics = runtime_context.get_metrics_group()
        self._stale = metrics.counter("stale_events")
        self._chunks_in = metrics.counter("chunks_in")

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        event = DocumentEvent.from_json(row["event"])
        try:
            plan = self._stage.apply(DocState.from_json(self._state.value()), event)
            out = None
            if plan.records:
                out = batch_row(
                    event.doc_id, event.origin, plan.records, self._settings.kafka.chunks_topic
                )
        except Exception as e:
            yield self.dead_letter(e, event.origin, event.doc_id, preview(event.text))
            return
        if plan.stale:
            self._stale.inc()
            return
        assert plan.state is not None
        self._state.update(plan.state.to_json())
        if out is not None:
            self._chunks_in.inc(out["upserts"])
            yield out


class EmbedChunks(GuardedFunction, KeyedProcessFunction):
    """Event batches of many documents -> one model call -> one flush to the index stage.

    Keyed by batch key (jobs.embedding.batching): the waiting event batches are Flink
    list state, so a checkpoint holds them and a restore brings them back (and their timer:
    see process_element); nothing is lost or reordered. A flush happens when
    ``embedding.max_batch_chunks`` upserts wait, ``embedding.max_wait_ms`` after the
    first of them arrived (a processing-time timer), or at the end of a bounded input
    (an event-time timer that only the final watermark reaches). One store read per
    flush finds reusable vectors (same model, same content hash) and the stored versions
    that the index stage's guard needs. The model loads once per worker, in open()."""

    stage = "embed"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)
        cfg = self._settings.embedding
        ref = resolve_model(cfg.model)
        encoder, batch_size = load_configured(ref, cfg)
        self._embedder = Embedder(
            encoder,
            ref.model_id,
            batch_size,
            cfg.cache_entries,
            self._settings.chunking.embed_heading,
        )
        self._store = open_store(self._settings.store)
        self._armed: set[Any] = set()  # batch keys this instance registered a timer for
        self._waiting = runtime_context.get_list_state(
            ListStateDescriptor("waiting", Types.STRING())
        )
        self._waiting_chunks = runtime_context.get_state(
            ValueStateDescriptor("waiting_chunks", Types.INT())
        )

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        self._waiting.add(row["batch"])
        before = self._waiting_chunks.value() or 0
        waiting = before + max(1, row["upserts"])
        if waiting >= self._settings.embedding.max_batch_chunks:
            yield from self._flush()
            return
        self._waiting_chunks.update(waiting)
        key = ctx.get_current_key()
        if before == 0 or key not in self._armed:
            # Also once per key in this instance's life: after a restore, the timer of a
            # restored batch was seen missing in PyFlink's process mode (a TaskManager
            # lost mid-stream; that batch then waited until max_batch_chunks came), so
            # the first event after a restore arms it again. An earlier timer that does
            # fire only flushes early.
            timers = ctx.timer_service()
            timers.register_processing_time_timer(
                timers.current_processing_time() + self._settings.embedding.max_wait_ms
            )
            timers.register_event_time_timer(END_OF_INPUT)
            self._armed.add(key)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        events = [EventBatch.from_json(raw) for raw in self._waiting.get()]
        self._waiting.clear()
        self._waiting_chunks.clear()
        if not events:
            return
        yield from self.whole_or_each(events, self._embed, lambda event: self._embed([event]))

    def _embed(self, events: list[EventBatch]) -> Row:
        chunks = [[ChunkRecord.from_dict(r) for r in e.records] for e in events]
        ids = [c.chunk_id for batch in chunks for c in batch if c.op == "upsert"]
        stored = self._store.get(ids, with_vectors=True) if ids else []
        model = self._embedder.model_id
        known = {
            s.content_hash: s.vector for s in stored if s.model_id == model and s.vector is not None
        }
        records = self._embedder.embed([c for batch in chunks for c in batch], known)
        topic = self._settings.kafka.embeddings_topic
        out, at = [], 0
        for event, batch in zip(events, chunks, strict=True):
            mine = records[at : at + len(batch)]
            at += len(batch)
            out.append(event_json(event.doc_id, event.origin, record_jsons(mine, topic)))
        return flush_row(out, {s.chunk_id: s.version for s in stored})

    def close(self) -> None:
        self._store.close()


class IndexEmbeddings(GuardedFunction, ProcessFunction):
    """Apply a flush (embedding records of many documents) to the vector store: its
    upserts in batches, version-guarded, then its trims in one call; then pass it on.

    Metrics: ``chunks_indexed`` (upserts written), of which ``chunks_embedded`` went
    through the model and ``chunks_reused`` took a stored vector; ``store_write_ms`` (one
    flush's writes) and ``freshness_ms`` (per document event: from the source's commit,
    or the record's time, to its last write in the index), both histograms
    (streamrag.metrics). They are counted here, not in the embed stage: PyFlink's
    process mode drops what a function's timer callback adds to a metric, and the embed
    stage flushes from its timers."""

    stage = "index"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)
        self._store = open_store(self._settings.store)
        metrics = runtime_context.get_metrics_group()
        self._chunks_indexed = metrics.counter("chunks_indexed")
        self._chunks_embedded = metrics.counter("chunks_embedded")
        self._chunks_reused = metrics.counter("chunks_reused")
        self._write_ms = LatencyHistogram(metrics, "store_write_ms")
        self._freshness_ms = LatencyHistogram(metrics, "freshness_ms")

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        stored = json.loads(row["stored"])

        def whole(events: list[EventBatch]) -> Row:
            self._apply(events, stored)
            return row

        def each(event: EventBatch) -> Row:
            # The whole flush may have written part of itself (a later version of this
            # document, say): the versions read before it are stale, let the store read.
            self._apply([event], None)
            return flush_row([event.to_json()], stored)

        yield from self.whole_or_each(events_from_json(row["events"]), whole, each)

    def _apply(self, events: list[EventBatch], stored: dict[str, int] | None) -> None:
        per_event = [[EmbeddingRecord.from_dict(r) for r in e.records] for e in events]
        records = [r for mine in per_event for r in mine]
        started = time.monotonic()
        apply_records(self._store, records, stored)
        self._write_ms.observe((time.monotonic() - started) * 1000)
        upserts = sum(r.chunk.op == "upsert" for r in records)
        embedded = sum(r.embedded for r in records)
        self._chunks_indexed.inc(upserts)
        self._chunks_embedded.inc(embedded)
        self._chunks_reused.inc(upserts - embedded)
        now_ms = time.time() * 1000
        for mine in per_event:
            committed = max((r.chunk.source_ts_ms for r in mine), default=0)
            if committed > 0:
                self._freshness_ms.observe(now_ms - committed)

    def close(self) -> None:
        self._store.close()


@dataclass(frozen=True)
class Stages:
    """The operators' outputs: what goes to the chunks and embeddings topics, and the
    dead letters of every operator."""

    chunks: DataStream
    indexed: DataStream
    dead_letters: DataStream


def stages(settings: Settings, raw: DataStream) -> Stages:
    """normalize -> chunk -> embed -> index on a stream of source rows (k, v, topic,
    partition, offset, ts_ms); the index stage's store must exist (see build)."""
    events = (
        raw.process(NormalizeRecords(settings), output_type=EVENT_ROW)
        .uid("normalize")
        .name("normalize")
    )
    chunks = (
        events.key_by(lambda r: r["doc_id"], key_type=Types.STRING())
        .process(ChunkDocuments(settings), output_type=BATCH_ROW)
        .uid("chunk")
        .name("chunk")
    )
    parallelism = settings.flink.parallelism
    embeddings = (
        chunks.key_by(lambda r: batch_key(r["doc_id"], parallelism), key_type=Types.INT())
        .process(EmbedChunks(settings), output_type=FLUSH_ROW)
        .uid("embed")
        .name("embed")
    )
    indexed = (
        embeddings.process(IndexEmbeddings(settings), output_type=FLUSH_ROW)
        .uid("index")
        .name("index")
    )
    dead = events.get_side_output(DEAD_LETTERS).union(
        *(s.get_side_output(DEAD_LETTERS) for s in (chunks, embeddings, indexed))
    )
    return Stages(chunks, indexed, dead)


def build(
    settings: Settings, bounded: bool = False, options: Mapping[str, str] | None = None
) -> StreamExecutionEnvironment:
    """Build the ingest job; returns the Flink environment to ``execute()``. ``options``:
    further Flink options (`streamrag run` passes its local checkpoints)."""
    dim = model_dimension(resolve_model(settings.embedding.model))  # the model is here
    ctx = create_context(settings, INGEST_JOB, options)
    # The Kafka source fails on a missing topic, and Debezium creates its topics only
    # once the connector runs: create them (compacted) so the job can start first.
    ensure_topics(settings)
    store = open_store(settings.store)
    try:  # once, here: the operators only read and write
        store.ensure(dim)
    finally:
        store.close()
    topics = [settings.kafka.documents_topic, *settings.cdc.tables]
    out = stages(settings, kafka_source(ctx, settings, "source_records", topics, bounded))

    statements = ctx.t_env.create_statement_set()
    chunk_rows = (
        out.chunks.flat_map(unbatch, output_type=KEYED_ROW)
        .uid("chunk-records")
        .name("chunk-records")
    )
    embedding_rows = (
        out.indexed.flat_map(unflush, output_type=KEYED_ROW)
        .uid("embedding-records")
        .name("embedding-records")
    )
    add_kafka_sink(
        ctx, statements, settings, "chunks_sink", settings.kafka.chunks_topic, chunk_rows
    )
    add_kafka_sink(
        ctx,
        statements,
        settings,
        "embeddings_sink",
        settings.kafka.embeddings_topic,
        embedding_rows,
    )
    add_kafka_sink(
        ctx,
        statements,
        settings,
        "dead_letters_sink",
        settings.kafka.dead_letter_topic,
        out.dead_letters,
    )
    statements.attach_as_datastream()
    return ctx.env


def main(argv: list[str] | None = None) -> None:
    run_job_main(build, INGEST_JOB, argv)


if __name__ == "__main__":
    main()
