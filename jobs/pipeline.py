"""Ingest job: documents (and CDC) topics -> chunk -> embed -> index.

Pipeline (one Flink job; every operator has a stable uid):

    Kafka source (documents topic, raw key/value + topic/partition/offset)
      -> normalize     record -> DocumentEvent              bad record -> dead letters
      -> key by doc id
      -> chunk         clean, chunk, diff with doc state      -> `chunks` topic
      -> embed         one model call per document event, vectors reused by content hash
      -> index         version-guarded upsert, then trim      -> `embeddings` topic

Between chunk, embed and index a record is a *batch*: the records of one document
event, as a JSON list. A batch is one element to Flink, so there is no buffered state
to lose at a checkpoint, and a document's upserts and trim stay together and in order.

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
from pyflink.datastream import (
    KeyedProcessFunction,
    MapFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ValueStateDescriptor

from connect.registry import ensure_cdc_topics
from jobs.chunking.cdc import parse_cdc_record
from jobs.chunking.documents import BadRecord, parse_document_record
from jobs.chunking.planner import DocState
from jobs.chunking.stage import ChunkStage
from jobs.embedding.embedder import Embedder
from jobs.embedding.model import load_model, model_dimension, model_fit_checker, resolve_model
from jobs.indexing.writer import IndexWriter
from streamrag.config import CdcConfig, Settings
from streamrag.flink import KEYED_ROW, add_kafka_sink, create_context, kafka_source
from streamrag.records import ChunkRecord, DeadLetter, DocumentEvent, EmbeddingRecord, Origin

log = logging.getLogger(__name__)

DEAD_LETTERS = OutputTag("dead-letters", KEYED_ROW)
EVENT_ROW = Types.ROW_NAMED(["doc_id", "event"], [Types.STRING(), Types.STRING()])
BATCH_ROW = Types.ROW_NAMED(["doc_id", "records"], [Types.STRING(), Types.STRING()])


def batch_row(doc_id: str, records: list[ChunkRecord] | list[EmbeddingRecord]) -> Row:
    return Row(doc_id=doc_id, records="[" + ",".join(r.to_json() for r in records) + "]")


def unbatch(row: Row) -> Iterator[Row]:
    """A batch row -> one KEYED_ROW per record (key = chunk id), for the topics."""
    for record in json.loads(row["records"]):
        chunk = record.get("chunk", record)
        yield Row(k=chunk["chunk_id"], v=json.dumps(record, ensure_ascii=False,
                                                    separators=(",", ":")))


def dead_letter_row(stage: str, reason: str, origin: Origin | None,
                    key: str | None, value: str | None) -> Row:
    letter = DeadLetter(stage=stage, reason=reason, origin=origin, key=key, value=value)
    where = f"{origin.topic}/{origin.partition}/{origin.offset}" if origin else stage
    return Row(k=where, v=letter.to_json())


class NormalizeRecords(ProcessFunction):
    """Kafka row -> (doc id, DocumentEvent JSON); unusable records -> dead letters.

    Rows of a topic in ``cdc.tables`` are Debezium change events, mapped by that table's
    config; heartbeats and tombstones map to nothing. Other rows are documents."""

    def __init__(self, cdc: CdcConfig) -> None:
        self._tables = dict(cdc.tables)

    def process_element(self, row: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        origin = Origin(row["topic"], row["partition"], row["offset"])
        table = self._tables.get(origin.topic)
        try:
            if table is None:
                event = parse_document_record(row["k"], row["v"], origin, row["ts_ms"])
            else:
                event = parse_cdc_record(row["k"], row["v"], origin, row["ts_ms"], table)
        except BadRecord as e:
            yield DEAD_LETTERS, dead_letter_row(
                "normalize", str(e), origin, _preview(row["k"]), _preview(row["v"]))
            return
        if event is not None:
            yield Row(doc_id=event.doc_id, event=event.to_json())


class ChunkDocuments(KeyedProcessFunction):
    """Per document: drop stale versions, chunk, emit changed chunks and delete markers."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        fits, max_len = model_fit_checker(resolve_model(self._settings.embedding.model))
        # Two word pieces go to [CLS] and [SEP]; tiktoken tokens are rarely smaller.
        self._stage = ChunkStage(self._settings.chunking, fits, model_max_tokens=max_len - 2)
        self._state = runtime_context.get_state(ValueStateDescriptor("doc", Types.STRING()))
        metrics = runtime_context.get_metrics_group()
        self._stale = metrics.counter("stale_events")

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        event = DocumentEvent.from_json(row["event"])
        try:
            plan = self._stage.apply(DocState.from_json(self._state.value()), event)
        except BadRecord as e:
            yield DEAD_LETTERS, dead_letter_row(
                "chunk", str(e), event.origin, event.doc_id, _preview(event.text))
            return
        if plan.stale:
            self._stale.inc()
            return
        assert plan.state is not None
        self._state.update(plan.state.to_json())
        if plan.records:
            yield batch_row(event.doc_id, plan.records)


class EmbedChunks(MapFunction):
    """Chunk JSON -> embedding JSON; the model loads once per worker, in open().

    Vectors already in the index for the same (model, content hash) are reused."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        cfg = self._settings.embedding
        ref = resolve_model(cfg.model)
        model = load_model(ref, cfg.torch_threads)
        self._embedder = Embedder(model, ref.model_id, cfg.batch_size, cfg.cache_entries)
        self._model_id = ref.model_id
        self._index = IndexWriter.open(self._settings.store, model_dimension(ref))
        metrics = runtime_context.get_metrics_group()
        self._embedded, self._reused = metrics.counter("embedded"), metrics.counter("reused")

    def map(self, row: Row) -> Row:
        chunks = [ChunkRecord.from_dict(r) for r in json.loads(row["records"])]
        records = self._embedder.embed(chunks, self._index.known_vectors(chunks, self._model_id))
        embedded = sum(r.embedded for r in records)
        self._embedded.inc(embedded)
        self._reused.inc(sum(r.chunk.op == "upsert" for r in records) - embedded)
        return batch_row(row["doc_id"], records)

    def close(self) -> None:
        self._index.close()


class IndexEmbeddings(MapFunction):
    """Apply each embedding record to the vector store, then pass it on to the topic."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        dim = model_dimension(resolve_model(self._settings.embedding.model))
        self._writer = IndexWriter.open(self._settings.store, dim)

    def map(self, row: Row) -> Row:
        self._writer.apply([EmbeddingRecord.from_dict(r) for r in json.loads(row["records"])])
        return row

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
    events = raw.process(NormalizeRecords(settings.cdc), output_type=EVENT_ROW) \
        .uid("normalize").name("normalize")
    chunks = events.key_by(lambda r: r["doc_id"], key_type=Types.STRING()) \
        .process(ChunkDocuments(settings), output_type=BATCH_ROW).uid("chunk").name("chunk")
    embeddings = chunks.map(EmbedChunks(settings), output_type=BATCH_ROW) \
        .uid("embed").name("embed")
    indexed = embeddings.map(IndexEmbeddings(settings), output_type=BATCH_ROW) \
        .uid("index").name("index")
    dead = events.get_side_output(DEAD_LETTERS).union(chunks.get_side_output(DEAD_LETTERS))

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



