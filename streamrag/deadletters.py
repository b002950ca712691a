"""Dead letters you can act on: read them, select them, and re-drive their records.

The dead-letter topic holds one :class:`~streamrag.records.DeadLetter` per record a stage
could not use (its key is the origin, "topic/partition/offset"); the whole record stays in
its source topic at that origin. Re-driving sends that record again, as it was (key,
value, timestamp, headers), to the same topic and partition, with headers that name the
record it copies and the dead letter it answers (``streamrag-origin-*``,
``streamrag-redrive``). The pipeline then reads it like any new record: if it fails again,
it is dead-lettered again, with its new reason.

Re-driving changes nothing twice, and never brings an old version back:

- a record whose key has a later record in its partition was superseded (by a newer
  version, or by an earlier re-drive of the same record): it is skipped, saying by what.
  Sending it again would make the older record the latest of its key, which is what
  compaction keeps and a replay rebuilds from (DESIGN.md invariant 7);
- a record that compaction removed was superseded too, for the same reason;
- a record sent keeps its timestamp, so also its version when the producer gave none: the
  stages' version guards ignore it where a newer version got there first (invariant 2).

Pure: :class:`Selection`, :func:`parse_since`, :func:`parse_address`, :func:`reason_group`,
:func:`plan_redrive`. Kafka I/O: :func:`read_entries`, :func:`read_entry`,
:func:`scan_sources`, :func:`send_records`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from streamrag.config import Settings
from streamrag.kafka import (
    Headers,
    Message,
    RecordProducer,
    TopicMissing,
    end_offsets,
    read_log,
)
from streamrag.records import DeadLetter, Origin

HEADER_PREFIX = "streamrag-"
ORIGIN_HEADERS = ("streamrag-origin-topic", "streamrag-origin-partition", "streamrag-origin-offset")
REDRIVE_HEADER = "streamrag-redrive"

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(?:\d+[smhdw])+", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Entry:
    """One dead letter, and where it sits in the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int
    letter: DeadLetter

    @property
    def address(self) -> str:
        """``partition:offset`` in the dead-letter topic: what ``show`` takes."""
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Position:
    """A dead letter's place in the dead-letter topic."""

    partition: int
    offset: int


def entry_of(message: Message) -> Entry:
    """The dead letter of a dead-letter topic record; ValueError when it holds none."""
    try:
        letter = DeadLetter.from_json(message.value or b"")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{message.partition}:{message.offset} is not a dead letter: {e}") from e
    return Entry(message.partition, message.offset, message.timestamp_ms, letter)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters: ``reason`` in the reason or the error class (any case), the
    stage (any case), dead-lettered at or after ``since_ms``. None: any."""

    reason: str | None = None
    stage: str | None = None
    since_ms: int | None = None

    @property
    def everything(self) -> bool:
        return self.reason is None and self.stage is None and self.since_ms is None

    def matches(self, entry: Entry) -> bool:
        letter = entry.letter
        if self.stage is not None and letter.stage.casefold() != self.stage.casefold():
            return False
        if self.since_ms is not None and entry.timestamp_ms < self.since_ms:
            return False
        if self.reason is not None:
            needle = self.reason.casefold()
            return needle in letter.reason.casefold() or needle in letter.error.casefold()
        return True


def parse_since(text: str, now: datetime | None = None) -> int:
    """Milliseconds since the epoch of ``text``: an ISO time (local time unless it names
    its offset) or a duration back from ``now`` (``30m``, ``2h``, ``1d``, ``1h30m``; s m h
    d w). ValueError with a one-line message otherwise, or when it lies in the future."""
    now = now or datetime.now(UTC)
    spec = text.strip()
    if _DURATION.fullmatch(spec):
        seconds = sum(int(n) * _UNIT_SECONDS[u.lower()] for n, u in _DURATION_PART.findall(spec))
        return int(now.timestamp() * 1000) - seconds * 1000
    try:
        when = datetime.fromisoformat(spec)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO time (2026-12-01T09:30, 2026-12-01 09:30:00+00:00)"
            " nor a duration (30m, 2h, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a time without offset is local time, as a person means it
    if when > now:
        raise ValueError(f"{text!r} is in the future")
    return int(when.timestamp() * 1000)


def parse_address(text: str) -> Position | Origin:
    """A dead letter's address: ``P:O`` (its partition and offset in the dead-letter
    topic) or ``TOPIC/P/O`` (its origin, the dead letter's key). ValueError otherwise."""
    spec = text.strip()
    if m := re.fullmatch(r"(\d+):(\d+)", spec):
        return Position(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"([A-Za-z0-9._-]+)/(\d+)/(\d+)", spec):
        return Origin(m[1], int(m[2]), int(m[3]))
    raise ValueError(
        f"{text!r} is not an address: P:O (partition:offset in the dead-letter topic, as"
        " `list` shows) or TOPIC/P/O (the origin of the record)"
    )


def reason_group(reason: str) -> str:
    """A reason without its particulars (sizes, offsets; not the limits it names), to
    count dead letters by."""
    return re.sub(r"(?<![=\w])\d+", "N", " ".join(reason.split()))


def reason_counts(entries: Iterable[Entry]) -> Counter[tuple[str, str, str]]:
    """(stage, error class, reason group) -> how many of ``entries``."""
    return Counter((e.letter.stage, e.letter.error, reason_group(e.letter.reason)) for e in entries)


def where(m: Message | Origin) -> str:
    return f"{m.topic}/{m.partition}/{m.offset}"


@dataclass(slots=True)
class SourceScan:
    """What one read of source partitions found: the records at the wanted offsets, in
    full; the last record of every key (its value dropped); each partition's end."""

    records: dict[Origin, Message] = field(default_factory=dict)
    last_of_key: dict[tuple[str, int, bytes | None], Message] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    missing_topics: set[str] = field(default_factory=set)

    def add(self, message: Message, wanted: bool) -> None:
        if wanted:
            self.records[Origin(message.topic, message.partition, message.offset)] = message
        key = (message.topic, message.partition, message.key)
        self.last_of_key[key] = replace(message, value=None)


@dataclass(frozen=True, slots=True)
class Decision:
    """What re-driving does with one dead letter: send ``record``, or skip it (``why``)."""

    entry: Entry
    record: Message | None = None
    why: str = ""


def redrive_origin(message: Message) -> Origin | None:
    """The record that ``message`` is a re-drive of, from its headers; None: not one."""
    values = dict(message.headers)
    try:
        topic, partition, offset = (values[h] for h in ORIGIN_HEADERS)
        if topic is None or partition is None or offset is None:
            return None
        return Origin(topic.decode(), int(partition), int(offset))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def plan_redrive(entries: Sequence[Entry], scan: SourceScan, sources: set[str]) -> list[Decision]:
    """For each dead letter: its record to send, or why not (the rules of the module
    docstring). One decision per dead letter; a record dead-lettered twice is sent once.
    ``sources``: the source topics of the pipeline, the only topics re-driven to."""
    first: dict[Origin, Entry] = {}
    decisions = []
    for entry in entries:
        origin = entry.letter.origin
        if origin is None:
            decisions.append(Decision(entry, why="it names no origin record"))
        elif origin in first:
            decisions.append(Decision(entry, why=f"same record as {first[origin].address}"))
        else:
            first[origin] = entry
            decisions.append(_decide(entry, origin, scan, sources))
    return decisions


def _decide(entry: Entry, origin: Origin, scan: SourceScan, sources: set[str]) -> Decision:
    if origin.topic not in sources:
        return Decision(entry, why=f"{origin.topic} is not a source topic of this configuration")
    if origin.topic in scan.missing_topics:
        return Decision(entry, why=f"topic {origin.topic} does not exist")
    record = scan.records.get(origin)
    if record is None:
        end = scan.ends.get((origin.topic, origin.partition))
        if end is None:
            return Decision(entry, why=f"topic {origin.topic} has no partition {origin.partition}")
        if origin.offset >= end:
            return Decision(entry, why=f"{where(origin)} is past the end of its partition ({end})")
        return Decision(entry, why="compacted away: a newer record of its key superseded it")
    last = scan.last_of_key[(record.topic, record.partition, record.key)]
    if last.offset > record.offset:
        if redrive_origin(last) == origin:
            return Decision(entry, why=f"already re-driven as {where(last)}")
        return Decision(entry, why=f"superseded by {where(last)}, a newer record of its key")
    return Decision(entry, record=record)


def redrive_headers(record: Message, entry: Entry, dead_letter_topic: str) -> Headers:
    """The record's own headers (but earlier re-drive ones), and the re-drive's."""
    kept = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
    ours = (record.topic, str(record.partition), str(record.offset))
    return [
        *kept,
        *((name, value.encode()) for name, value in zip(ORIGIN_HEADERS, ours, strict=True)),
        (REDRIVE_HEADER, f"{dead_letter_topic}:{entry.address}".encode()),
    ]


# Kafka I/O -------------------------------------------------------------------------------


def read_entries(settings: Settings) -> tuple[list[Entry], list[str]]:
    """Every dead letter of the dead-letter topic, oldest first, and what could not be
    read as one (a line each). No topic (no job has run yet): none."""
    entries, unreadable = [], []
    try:
        log = list(read_log(settings, settings.kafka.dead_letter_topic, timeout_s=60))
    except TopicMissing:
        log = []
    for m in log:
        try:
            entries.append(entry_of(m))
        except ValueError as e:
            unreadable.append(str(e))
    entries.sort(key=lambda e: (e.timestamp_ms, e.partition, e.offset))
    return entries, unreadable


def read_entry(settings: Settings, at: Position) -> Entry | None:
    """The dead letter at ``at`` in the dead-letter topic; None when there is none."""
    topic = settings.kafka.dead_letter_topic
    try:
        end = end_offsets(settings, topic).get(at.partition)
    except TopicMissing:
        return None
    if end is None or at.offset >= end:
        return None
    found = list(
        read_log(settings, topic, {at.partition: at.offset}, {at.partition: at.offset + 1})
    )
    return entry_of(found[0]) if found and found[0].offset == at.offset else None


def scan_sources(settings: Settings, origins: Iterable[Origin]) -> SourceScan:
    """Read each source partition that holds one of ``origins``, from the first of them to
    its end (one pass, whatever the number of dead letters)."""
    wanted = set(origins)
    starts: dict[str, dict[int, int]] = {}
    for o in wanted:
        first = starts.setdefault(o.topic, {})
        first[o.partition] = min(o.offset, first.get(o.partition, o.offset))
    scan = SourceScan()
    for topic, first in starts.items():
        try:
            ends = end_offsets(settings, topic)
        except TopicMissing:
            scan.missing_topics.add(topic)
            continue
        scan.ends.update({(topic, p): e for p, e in ends.items()})
        todo = {p: s for p, s in first.items() if p in ends and s < ends[p]}
        if todo:
            end = {p: ends[p] for p in todo}
            for m in read_log(settings, topic, todo, end, timeout_s=300):
                scan.add(m, Origin(topic, m.partition, m.offset) in wanted)
    return scan


def send_records(settings: Settings, decisions: Iterable[Decision]) -> int:
    """Send the records of the decisions that have one, each to its own topic and
    partition with its timestamp and the re-drive headers; returns how many."""
    producer = RecordProducer(settings)
    sent = 0
    for d in decisions:
        if d.record is None:
            continue
        r = d.record
        headers = redrive_headers(r, d.entry, settings.kafka.dead_letter_topic)
        producer.send(r.topic, r.key, r.value, max(r.timestamp_ms, 0), r.partition, headers)
        sent += 1
    producer.flush()
    return sent
