"""Flink glue for the jobs' operators: rows between stages, dead letters, error boundary.

Between the chunk, embed and index operators a record is a *batch*: the records of one
document event as one row (doc id, origin, records as a JSON list). A batch is one element
to Flink, so nothing sits in an operator buffer at a checkpoint, and a document's upserts
and trim stay together and in order. Every record of a batch must fit the topic it will
be written to (streamrag.limits), which is checked when the batch is made.

:class:`GuardedFunction` gives an operator its per-record error boundary
(streamrag.boundary): a record that fails for a reason of its own becomes a row on the
DEAD_LETTERS side output, and the job goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, RuntimeContext

from streamrag.boundary import ErrorBoundary, FailureLedger
from streamrag.config import Settings
from streamrag.flink import KEYED_ROW
from streamrag.limits import topic_record_size
from streamrag.records import ChunkRecord, DeadLetter, EmbeddingRecord, Origin

log = logging.getLogger(__name__)

DEAD_LETTERS = OutputTag("dead-letters", KEYED_ROW)
EVENT_ROW = Types.ROW_NAMED(["doc_id", "event"], [Types.STRING(), Types.STRING()])
BATCH_ROW = Types.ROW_NAMED(
    ["doc_id", "origin", "records"], [Types.STRING(), Types.STRING(), Types.STRING()]
)


def batch_row(
    doc_id: str,
    origin: Origin,
    records: Sequence[ChunkRecord] | Sequence[EmbeddingRecord],
    topic: str,
) -> Row:
    """The records of one document event as one row; each record must fit ``topic``."""
    values = [r.to_json() for r in records]
    for value in values:
        topic_record_size(value, f"a record for topic {topic}")
    return Row(
        doc_id=doc_id,
        origin=json.dumps([origin.topic, origin.partition, origin.offset]),
        records="[" + ",".join(values) + "]",
    )


def batch_origin(row: Row) -> Origin:
    topic, partition, offset = json.loads(row["origin"])
    return Origin(str(topic), int(partition), int(offset))


def unbatch(row: Row) -> Iterator[Row]:
    """A batch row -> one KEYED_ROW per record (key = chunk id), for the topics."""
    for record in json.loads(row["records"]):
        chunk = record.get("chunk", record)
        yield Row(
            k=chunk["chunk_id"], v=json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        )


def dead_letter_row(letter: DeadLetter) -> Row:
    origin = letter.origin
    where = f"{origin.topic}/{origin.partition}/{origin.offset}" if origin else letter.stage
    return Row(k=where, v=letter.to_json())


def preview(value: bytes | str | None, limit: int = 2000) -> str | None:
    """The start of a key or value, as text, for a dead letter."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value[:limit].decode("utf-8", errors="replace")
    return value[:limit]


class GuardedFunction:
    """Mixin for an operator with a per-record error boundary: terminal errors become
    dead letters, transient ones fail the task, unknown ones are counted across restarts."""

    stage = ""

    def open_boundary(self, settings: Settings, runtime_context: RuntimeContext) -> None:
        flink = settings.flink
        self._boundary = ErrorBoundary(
            self.stage, FailureLedger(flink.failure_ledger_dir), flink.poison_after_failures
        )
        self._dead_letters = runtime_context.get_metrics_group().counter("dead_letters")

    def dead_letter(
        self, error: Exception, origin: Origin | None, key: str | None, value: str | None
    ) -> tuple[OutputTag, Row]:
        """The side-output row for a record that failed with ``error``, or re-raise it."""
        letter = self._boundary.dead_letter_for(error, origin, key, value)
        if letter is None:
            raise error
        self._dead_letters.inc()
        log.warning("%s: dead-lettered %s: %s", self.stage, origin, letter.reason)
        return DEAD_LETTERS, dead_letter_row(letter)
