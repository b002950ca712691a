"""Ingest job: documents (and CDC) topics -> chunk -> embed -> index.

Pipeline (one Flink job; every operator has a stable uid):

    Kafka source (documents topic, raw key/value + topic/partition/offset)
      -> normalize     record -> DocumentEvent, checked against every declared limit
      -> key by doc id
      -> chunk         clean, chunk, diff with doc state      -> `chunks` topic
      -> embed         one model call per document event, vectors reused by content hash
      -> index         version-guarded upsert, then trim      -> `embeddings` topic

Between chunk, embed and index a record is a *batch*: the records of one document
event, as a JSON list. A batch is one element to Flink, so there is no buffered state
to lose at a checkpoint, and a document's upserts and trim stay together and in order.

Every operator has an error boundary (streamrag.boundary): a record that fails for a
reason of its own goes to the dead-letter topic with the stage, the error and its origin,
and the job goes on; a failure of the environment fails the task, and Flink restarts it
from the last checkpoint.

Stage logic lives in jobs.chunking / jobs.embedding / jobs.indexing as plain Python;
the classes here only decode, call, encode and route errors.

Run locally: ``streamrag run`` (or ``python -m jobs.pipeline``); on a cluster:
``flink run -py jobs/pipeline.py -pyfs . -- --config streamrag.yaml``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from connect.registry import ensure_cdc_topics
from jobs.chunking.normalize import normalize_record
from jobs.chunking.planner import DocState
from jobs.chunking.stage import ChunkStage
from jobs.embedding.embedder import Embedder
from streamrag.models import load_model, model_dimension, resolve_model
from jobs.indexing.writer import IndexWriter
from streamrag.boundary import ErrorBoundary, FailureLedger
from streamrag.config import Settings
from streamrag.flink import KEYED_ROW, add_kafka_sink, create_context, kafka_source
from streamrag.limits import topic_record_size
from streamrag.records import ChunkRecord, DeadLetter, DocumentEvent, EmbeddingRecord, Origin

log = logging.getLogger(__name__)

DEAD_LETTERS = OutputTag("dead-letters", KEYED_ROW)
EVENT_ROW = Types.ROW_NAMED(["doc_id", "event"], [Types.STRING(), Types.STRING()])
BATCH_ROW = Types.ROW_NAMED(["doc_id", "origin", "records"],
                            [Types.STRING(), Types.STRING(), Types.STRING()])


def batch_row(doc_id: str, origin: Origin, records: list[ChunkRecord] | list[EmbeddingRecord],
              topic: str) -> Row:
    """The records of one document event as one row; each record must fit ``topic``."""
    values = [r.to_json() for r in records]
    for value in values:
        topic_record_size(value, f"a record for topic {topic}")
    return Row(doc_id=doc_id, origin=json.dumps([origin.topic, origin.partition, origin.offset]),
               records="[" + ",".join(values) + "]")


def batch_origin(row: Row) -> Origin:
    topic, partition, offset = json.loads(row["origin"])
    return Origin(topic, partition, offset)


def unbatch(row: Row) -> Iterator[Row]:
    """A batch row -> one KEYED_ROW per record (key = chunk id), for the topics."""
    for record in json.loads(row["records"]):
        chunk = record.get("chunk", record)
        yield Row(k=chunk["chunk_id"], v=json.dumps(record, ensure_ascii=False,
                                                    separators=(",", ":")))


def dead_letter_row(letter: DeadLetter) -> Row:
    origin = letter.origin
    where = f"{origin.topic}/{origin.partition}/{origin.offset}" if origin else letter.stage
    return Row(k=where, v=letter.to_json())


class _Guarded:
    """The per-record error boundary of a stage (streamrag.boundary): terminal errors
    become dead letters, transient ones fail the task, unknown ones are counted."""

    stage = ""

    def _open_boundary(self, settings: Settings, runtime_context: RuntimeContext) -> None:
        flink = settings.flink
        self._boundary = ErrorBoundary(self.stage, FailureLedger(flink.failure_ledger_dir),
                                       flink.poison_after_failures)
        self._dead_letters = runtime_context.get_metrics_group().counter("dead_letters")

    def _dead_letter(self, error: Exception, origin: Origin | None, key: str | None,
                     value: str | None) -> tuple[OutputTag, Row]:
        """The side-output row for a record that failed with ``error``, or re-raise it."""
        letter = self._boundary.dead_letter_for(error, origin, key, value)
        if letter is None:
            raise error
        self._dead_letters.inc()
        log.warning("%s: dead-lettered %s: %s", self.stage, origin, letter.reason)
        return DEAD_LETTERS, dead_letter_row(letter)


class NormalizeRecords(_Guarded, ProcessFunction):
    """Kafka row -> (doc id, DocumentEvent JSON), checked against every limit; records that
    cannot be used -> dead letters. Heartbeats and CDC tombstones map to nothing."""

    stage = "normalize"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tables = dict(settings.cdc.tables)

    def open(self, runtime_context: RuntimeContext) -> None:
        self._open_boundary(self._settings, runtime_context)

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        origin = Origin(row["topic"], row["partition"], row["offset"])
        try:
            event = normalize_record(row["k"], row["v"], origin, row["ts_ms"], self._tables)
            out = None if event is None else Row(doc_id=event.doc_id, event=event.to_json())
        except Exception as e:
            yield self._dead_letter(e, origin, _preview(row["k"]), _preview(row["v"]))
            return
        if out is not None:
            yield out


class ChunkDocuments(_Guarded, KeyedProcessFunction):
    """Per document: drop stale versions, chunk, emit changed chunks and delete markers.
    The state moves on only once the event's records are ready to go out."""

    stage = "chunk"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._open_boundary(self._settings, runtime_context)
        self._stage = ChunkStage.for_model(self._settings.chunking,
                                           resolve_model(self._settings.embedding.model))
        self._state = runtime_context.get_state(ValueStateDescriptor("doc", Types.STRING()))
        self._stale = runtime_context.get_metrics_group().counter("stale_events")

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        event = DocumentEvent.from_json(row["event"])
        try:
            plan = self._stage.apply(DocState.from_json(self._state.value()), event)
            out = None
            if plan.records:
                out = batch_row(event.doc_id, event.origin, plan.records,
                                self._settings.kafka.chunks_topic)
        except Exception as e:
            yield self._dead_letter(e, event.origin, event.doc_id, _preview(event.text))
            return
        if plan.stale:
            self._stale.inc()
            return
        assert plan.state is not None
        self._state.update(plan.state.to_json())
        if out is not None:
            yield out


class EmbedChunks(_Guarded, ProcessFunction):
    """Chunk batch -> embedding batch; the model loads once per worker, in open().

    Vectors already in the index for the same (model, content hash) are reused."""

    stage = "embed"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._open_boundary(self._settings, runtime_context)
        cfg = self._settings.embedding
        ref = resolve_model(cfg.model)
        model = load_model(ref, cfg.torch_threads)
        self._embedder = Embedder(model, ref.model_id, cfg.batch_size, cfg.cache_entries)
        self._model_id = ref.model_id
        self._index = IndexWriter.open(self._settings.store, model_dimension(ref))
        metrics = runtime_context.get_metrics_group()
        self._embedded, self._reused = metrics.counter("embedded"), metrics.counter("reused")

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        origin = batch_origin(row)
        try:
            chunks = [ChunkRecord.from_dict(r) for r in json.loads(row["records"])]
            known = self._index.known_vectors(chunks, self._model_id)
            records = self._embedder.embed(chunks, known)
            out = batch_row(row["doc_id"], origin, records, self._settings.kafka.embeddings_topic)
        except Exception as e:
            yield self._dead_letter(e, origin, row["doc_id"], None)
            return
        embedded = sum(r.embedded for r in records)
        self._embedded.inc(embedded)
        self._reused.inc(sum(r.chunk.op == "upsert" for r in records) - embedded)
        yield out

    def close(self) -> None:
        self._index.close()


class IndexEmbeddings(_Guarded, ProcessFunction):
    """Apply a batch of embedding records to the vector store, then pass it on."""

    stage = "index"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._open_boundary(self._settings, runtime_context)
        dim = model_dimension(resolve_model(self._settings.embedding.model))
        self._writer = IndexWriter.open(self._settings.store, dim)

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        try:
            self._writer.apply([EmbeddingRecord.from_dict(r) for r in json.loads(row["records"])])
        except Exception as e:
            yield self._dead_letter(e, batch_origin(row), row["doc_id"], None)
            return
        yield row

    def close(self) -> None:
        self._writer.close()


def build(settings: Settings, bounded: bool = False, job_name: str = "streamrag-ingest") -> Any:
    """Build the ingest job; returns the Flink environment to ``execute()``."""
    ctx = create_context(settings, job_name)
    # The Kafka source fails on a missing topic, and Debezium creates its topics only
    # once the connector runs: create them (compacted) so the job can start first.
    ensure_cdc_topics(settings)
    topics = [settings.kafka.documents_topic, *settings.cdc.tables]
    raw = kafka_source(ctx, settings, "source_records", topics, bounded)
    events = raw.process(NormalizeRecords(settings), output_type=EVENT_ROW) \
        .uid("normalize").name("normalize")
    chunks = events.key_by(lambda r: r["doc_id"], key_type=Types.STRING()) \
        .process(ChunkDocuments(settings), output_type=BATCH_ROW).uid("chunk").name("chunk")
    embeddings = chunks.process(EmbedChunks(settings), output_type=BATCH_ROW) \
        .uid("embed").name("embed")
    indexed = embeddings.process(IndexEmbeddings(settings), output_type=BATCH_ROW) \
        .uid("index").name("index")
    dead = events.get_side_output(DEAD_LETTERS).union(
        *(stage.get_side_output(DEAD_LETTERS) for stage in (chunks, embeddings, indexed)))

    statements = ctx.t_env.create_statement_set()
    chunk_rows = chunks.flat_map(unbatch, output_type=KEYED_ROW).uid("chunk-records") \
        .name("chunk-records")
    embedding_rows = indexed.flat_map(unbatch, output_type=KEYED_ROW) \
        .uid("embedding-records").name("embedding-records")
    add_kafka_sink(ctx, statements, settings, "chunks_sink", settings.kafka.chunks_topic,
                   chunk_rows)
    add_kafka_sink(ctx, statements, settings, "embeddings_sink",
                   settings.kafka.embeddings_topic, embedding_rows)
    add_kafka_sink(ctx, statements, settings, "dead_letters_sink",
                   settings.kafka.dead_letter_topic, dead)
    statements.attach_as_datastream()
    return ctx.env


def _preview(value: bytes | str | None, limit: int = 2000) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value[:limit].decode("utf-8", errors="replace")
    return value[:limit]


def main(argv: list[str] | None = None) -> None:
    from streamrag.cli import run_job_main

    run_job_main(build, argv)


if __name__ == "__main__":
    main()



