"""Ingest job: documents (and CDC) topics -> chunk -> embed -> index.

Pipeline (one Flink job; every operator has a stable uid):

    Kafka source (documents and CDC topics, raw key/value + topic/partition/offset)
      -> normalize     record -> DocumentEvent, checked against every declared limit
      -> key by doc id
      -> chunk         clean, chunk, diff with doc state      -> `chunks` topic
      -> embed         one model call per document event, vectors reused by content hash
      -> index         version-guarded upsert, then trim      -> `embeddings` topic
    each operator's dead letters                              -> `dead-letters` topic

Between chunk, embed and index a record is a *batch*: the records of one document event
(streamrag.operators). Every operator has an error boundary (streamrag.boundary): a record
that fails for a reason of its own goes to the dead-letter topic with the stage, the error
and its origin, and the job goes on; a failure of the environment fails the task, and
Flink restarts it from the last checkpoint.

Stage logic lives in jobs.chunking / jobs.embedding / jobs.indexing as plain Python;
the classes here only decode, call, encode and route errors.

Run locally: ``streamrag run`` (or ``python -m jobs.pipeline``); on a cluster:
``flink run -py jobs/pipeline.py -pyfs . -- --config streamrag.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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
from pyflink.datastream.state import ValueStateDescriptor

from jobs.chunking.normalize import normalize_record
from jobs.chunking.planner import DocState
from jobs.chunking.stage import ChunkStage
from jobs.embedding.embedder import Embedder
from jobs.indexing.apply import apply_records
from streamrag.config import Settings
from streamrag.flink import KEYED_ROW, add_kafka_sink, create_context, kafka_source, run_job_main
from streamrag.kafka import ensure_topics
from streamrag.models import load_model, model_dimension, resolve_model
from streamrag.operators import (
    BATCH_ROW,
    DEAD_LETTERS,
    EVENT_ROW,
    GuardedFunction,
    batch_origin,
    batch_row,
    preview,
    unbatch,
)
from streamrag.records import ChunkRecord, DocumentEvent, EmbeddingRecord, Origin
from streamrag.stores import open_store
from streamrag.stores.base import stored_vectors


class NormalizeRecords(GuardedFunction, ProcessFunction):
    """Kafka row -> (doc id, DocumentEvent JSON), checked against every limit; records that
    cannot be used -> dead letters. Heartbeats and CDC tombstones map to nothing."""

    stage = "normalize"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tables = dict(settings.cdc.tables)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        origin = Origin(row["topic"], row["partition"], row["offset"])
        try:
            event = normalize_record(row["k"], row["v"], origin, row["ts_ms"], self._tables)
            out = None if event is None else Row(doc_id=event.doc_id, event=event.to_json())
        except Exception as e:
            yield self.dead_letter(e, origin, preview(row["k"]), preview(row["v"]))
            return
        if out is not None:
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
        self._stale = runtime_context.get_metrics_group().counter("stale_events")

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
            yield out


class EmbedChunks(GuardedFunction, ProcessFunction):
    """Chunk batch -> embedding batch; the model loads once per worker, in open().

    Vectors already in the index for the same (model, content hash) are reused."""

    stage = "embed"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)
        cfg = self._settings.embedding
        ref = resolve_model(cfg.model)
        self._embedder = Embedder(
            load_model(ref, cfg.torch_threads),
            ref.model_id,
            cfg.batch_size,
            cfg.cache_entries,
            self._settings.chunking.embed_heading,
        )
        self._store = open_store(self._settings.store)
        metrics = runtime_context.get_metrics_group()
        self._embedded, self._reused = metrics.counter("embedded"), metrics.counter("reused")

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        origin = batch_origin(row)
        try:
            chunks = [ChunkRecord.from_dict(r) for r in json.loads(row["records"])]
            records = self._embedder.embed(chunks, self._known_vectors(chunks))
            out = batch_row(row["doc_id"], origin, records, self._settings.kafka.embeddings_topic)
        except Exception as e:
            yield self.dead_letter(e, origin, row["doc_id"], None)
            return
        embedded = sum(r.embedded for r in records)
        self._embedded.inc(embedded)
        self._reused.inc(sum(r.chunk.op == "upsert" for r in records) - embedded)
        yield out

    def _known_vectors(self, chunks: Sequence[ChunkRecord]) -> dict[str, list[float]]:
        ids = [c.chunk_id for c in chunks if c.op == "upsert"]
        return stored_vectors(self._store, ids, self._embedder.model_id)

    def close(self) -> None:
        self._store.close()


class IndexEmbeddings(GuardedFunction, ProcessFunction):
    """Apply a batch of embedding records to the vector store, then pass it on."""

    stage = "index"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self.open_boundary(self._settings, runtime_context)
        self._store = open_store(self._settings.store)

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        try:
            apply_records(
                self._store, [EmbeddingRecord.from_dict(r) for r in json.loads(row["records"])]
            )
        except Exception as e:
            yield self.dead_letter(e, batch_origin(row), row["doc_id"], None)
            return
        yield row

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
    embeddings = (
        chunks.process(EmbedChunks(settings), output_type=BATCH_ROW).uid("embed").name("embed")
    )
    indexed = (
        embeddings.process(IndexEmbeddings(settings), output_type=BATCH_ROW)
        .uid("index")
        .name("index")
    )
    dead = events.get_side_output(DEAD_LETTERS).union(
        *(s.get_side_output(DEAD_LETTERS) for s in (chunks, embeddings, indexed))
    )
    return Stages(chunks, indexed, dead)


def build(settings: Settings, bounded: bool = False) -> StreamExecutionEnvironment:
    """Build the ingest job; returns the Flink environment to ``execute()``."""
    dim = model_dimension(resolve_model(settings.embedding.model))  # the model is here
    ctx = create_context(settings, "streamrag-ingest")
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
        out.indexed.flat_map(unbatch, output_type=KEYED_ROW)
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
    run_job_main(build, "streamrag-ingest", argv)


if __name__ == "__main__":
    main()
