"""What a bounded run did, read back from what it wrote: the embeddings topic (one record
per chunk written, flagged when the model embedded it, and one per document trim) and the
dead-letter topic, from their end offsets at the start of the run; the source records it
had to read from the consumer group's committed offsets. ``streamrag run --bounded`` ends
with this summary."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from streamrag.config import Settings
from streamrag.kafka import (
    TopicMissing,
    commit_at_least,
    end_offsets,
    pending_records,
    read_log,
)


@dataclass(frozen=True, slots=True)
class Marks:
    started: float
    embeddings: dict[int, int]
    dead_letters: dict[int, int]
    to_read: int
    sources: dict[str, dict[int, int]]  # topic -> partition -> end offset


@dataclass(slots=True)
class Summary:
    records_read: int
    wall_s: float
    documents: int = 0
    embedded: int = 0
    reused: int = 0
    deleted: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [
            f"read {self.records_read} source records in {self.wall_s:.1f} s:"
            f" {self.documents} documents changed, {self.embedded} chunks embedded,"
            f" {self.reused} reused, {self.deleted} documents deleted,"
            f" {sum(self.dead_letters.values())} dead letters"
        ]
        out += [f"  dead letters: {n} x {reason}" for reason, n in self.dead_letters.most_common()]
        return out


def source_topics(settings: Settings) -> list[str]:
    return [settings.kafka.documents_topic, *settings.cdc.tables]


def mark(settings: Settings) -> Marks:
    """Where the topics stand before a run."""
    sources = {t: _ends(settings, t) for t in source_topics(settings)}
    group = settings.kafka.group_id
    return Marks(
        started=time.monotonic(),
        embeddings=_ends(settings, settings.kafka.embeddings_topic),
        dead_letters=_ends(settings, settings.kafka.dead_letter_topic),
        to_read=sum(pending_records(settings, t, group, ends) for t, ends in sources.items()),
        sources=sources,
    )


def settle_offsets(settings: Settings, marks: Marks) -> dict[str, dict[int, int]]:
    """After a bounded run that started fresh (no checkpoint restored) and finished: commit
    the source offsets it started below, where the job's own commit did not land.

    Flink's Kafka source commits offsets when a checkpoint completes, asynchronously; the
    one after a bounded job's last records can be lost when the job ends before the
    broker answers (seen in CI: the next run read 41 records again). Nothing is lost
    either way, the version guard makes a re-read harmless, but it costs a re-embed and
    makes the next summary wrong. The job read at least up to these marks (its end
    offsets are the latest when it starts, after them), so they are safe to commit. Not
    after a restored run: its end offsets are those of the run it resumes, maybe below."""
    moved = {}
    for topic, ends in marks.sources.items():
        done = commit_at_least(settings, settings.kafka.group_id, topic, ends)
        if done:
            moved[topic] = done
    return moved


def summarize(settings: Settings, marks: Marks) -> Summary:
    summary = Summary(marks.to_read, time.monotonic() - marks.started)
    docs: set[str] = set()
    for m in read_log(settings, settings.kafka.embeddings_topic, start=marks.embeddings):
        if not m.value:
            continue
        record = json.loads(m.value)
        chunk = record.get("chunk", {})
        docs.add(str(chunk.get("doc_id")))
        if chunk.get("op") == "trim":
            # Every document event ends with a trim of the positions past its last chunk;
            # from position 0, it deletes the document.
            summary.deleted += chunk.get("position") == 0
        elif record.get("embedded"):
            summary.embedded += 1
        else:
            summary.reused += 1
    summary.documents = len(docs)
    for m in read_log(settings, settings.kafka.dead_letter_topic, start=marks.dead_letters):
        if m.value:
            letter = json.loads(m.value)
            summary.dead_letters[
                f"{letter.get('stage')}: {reason_kind(letter.get('reason', ''))}"
            ] += 1
    return summary


def reason_kind(reason: str) -> str:
    """A reason without its particulars (offsets, sizes, values), to group by."""
    return reason.split(" (", 1)[0][:100]


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    try:
        return end_offsets(settings, topic)
    except TopicMissing:
        return {}
