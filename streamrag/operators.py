"""Flink glue for the jobs' operators: rows between stages, dead letters, error boundary.

Between the chunk and embed operators a record is an *event batch*: the records of one
document event as one row (jobs.embedding.batching.EventBatch), so that a document's
upserts and trim stay together and in order. The embed operator gathers event batches of
many documents in Flink state and passes them on together (a *flush*: the events, and
the versions the store held for their chunks) to the index operator. Every record must
fit the topic it will be written to (streamrag.limits), which is checked when its batch
is made.

:class:`GuardedFunction` gives an operator its per-record error boundary
(streamrag.boundary): a record that fails for a reason of its own becomes a row on the
DEAD_LETTERS side output, and the job goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, RuntimeContext

from streamrag.boundary import ErrorBoundary, FailureLedger
from streamrag.config import Settings
from streamrag.errors import classify
from streamrag.flink import KEYED_ROW
from streamrag.limits import topic_record_size
from streamrag.records import (
    ChunkRecord,
    DeadLetter,
    EmbeddingRecord,
    EventBatch,
    Origin,
    event_json,
    events_from_json,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEAD_LETTERS = OutputTag("dead-letters", KEYED_ROW)
EVENT_ROW = Types.ROW_NAMED(["doc_id", "event"], [Types.STRING(), Types.STRING()])
# One document event's records: ``batch`` is EventBatch JSON.
BATCH_ROW = Types.ROW_NAMED(
    ["doc_id", "batch", "upserts"], [Types.STRING(), Types.STRING(), Types.INT()]
)
# Event batches of many documents: ``events`` is a JSON list of EventBatch, ``stored`` the
# versions the store held for their chunk ids when the embed stage read them.
FLUSH_ROW = Types.ROW_NAMED(["events", "stored"], [Types.STRING(), Types.STRING()])


def record_jsons(
    records: Sequence[ChunkRecord] | Sequence[EmbeddingRecord], topic: str
) -> list[str]:
    """The records' JSON, each checked to fit ``topic``."""
    values = [r.to_json() for r in records]
    for value in values:
        topic_record_size(value, f"a record for topic {topic}")
    return values


def batch_row(doc_id: str, origin: Origin, records: Sequence[ChunkRecord], topic: str) -> Row:
    """The chunk records of one document event as one row; each must fit ``topic``."""
    return Row(
        doc_id=doc_id,
        batch=event_json(doc_id, origin, record_jsons(records, topic)),
        upserts=sum(r.op == "upsert" for r in records),
    )


def flush_row(events: Sequence[str], stored_versions: dict[str, int]) -> Row:
    """Event batches (EventBatch JSON each) as one row, with the versions read for them."""
    return Row(
        events="[" + ",".join(events) + "]",
        stored=json.dumps(stored_versions, separators=(",", ":")),
    )


def unbatch(row: Row) -> Iterator[Row]:
    """A batch row -> one KEYED_ROW per record (key = chunk id), for the chunks topic."""
    yield from _keyed(EventBatch.from_json(row["batch"]).records)


def unflush(row: Row) -> Iterator[Row]:
    """A flush row -> one KEYED_ROW per record, in order, for the embeddings topic."""
    for event in events_from_json(row["events"]):
        yield from _keyed(event.records)


def _keyed(records: list[dict[str, Any]]) -> Iterator[Row]:
    for record in records:
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
        metrics = runtime_context.get_metrics_group()
        self._dead_letters = metrics.counter("dead_letters")
        # By stage and reason (the error's class: BadRecord, LimitExceeded, ...), as
        # labels: ..._operator_stage_reason_dead_letters{stage="chunk",reason="..."}.
        self._stage_metrics = metrics.add_group("stage", self.stage)
        self._by_reason: dict[str, Any] = {}

    def dead_letter(
        self, error: Exception, origin: Origin | None, key: str | None, value: str | None
    ) -> tuple[OutputTag, Row]:
        """The side-output row for a record that failed with ``error``, or re-raise it."""
        letter = self._boundary.dead_letter_for(error, origin, key, value)
        if letter is None:
            raise error
        self._dead_letters.inc()
        if letter.error not in self._by_reason:
            group = self._stage_metrics.add_group("reason", letter.error)
            self._by_reason[letter.error] = group.counter("dead_letters")
        self._by_reason[letter.error].inc()
        log.warning("%s: dead-lettered %s: %s", self.stage, origin, letter.reason)
        return DEAD_LETTERS, dead_letter_row(letter)

    def whole_or_each(
        self,
        events: list[EventBatch],
        whole: Callable[[list[EventBatch]], T],
        each: Callable[[EventBatch], T],
    ) -> Iterator[T | tuple[OutputTag, Row]]:
        """``whole(events)``; when that fails for a reason of the records (not of the
        environment), ``each(event)`` for every event, so that only the culprit goes to
        the dead letters and the events beside it flow on."""
        try:
            yield whole(events)
            return
        except Exception as e:
            if classify(e) == "transient" or len(events) == 1:
                yield self.dead_letter(e, events[0].origin, events[0].doc_id, None)
                return
        for event in events:
            try:
                yield each(event)
            except Exception as e:
                yield self.dead_letter(e, event.origin, event.doc_id, None)
