"""Dead letters: which ones a filter picks, how --since and addresses read, and what a
re-drive sends or skips (streamrag.deadletters, without Kafka)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamrag import deadletters as dl
from streamrag.kafka import Message
from streamrag.records import DeadLetter, Origin

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DOCS = "documents"


def entry(
    offset: int,
    reason: str = "document has 4905 characters, more than chunking.max_document_chars=2000",
    error: str = "BadRecord",
    stage: str = "chunk",
    origin: Origin | None = None,
    ts_ms: int = NOW_MS,
) -> dl.Entry:
    origin = origin or Origin(DOCS, 0, offset)
    return dl.Entry(0, offset, ts_ms, DeadLetter(stage, reason, origin, "doc", "{...", error))


def record(offset: int, key: bytes = b"doc", partition: int = 0, **headers: bytes) -> Message:
    value = f"value at {offset}".encode()
    return Message(DOCS, partition, offset, key, value, 1000 + offset, tuple(headers.items()))


def scan_of(*records: Message, end: int = 10) -> dl.SourceScan:
    """What scanning partition 0 of DOCS from its first record gives."""
    scan = dl.SourceScan(ends={(DOCS, 0): end, (DOCS, 1): end})
    for r in records:
        scan.add(r, wanted=True)
    return scan


# Selection --------------------------------------------------------------------------------


def test_reason_matches_text_of_the_reason_or_the_error_class_in_any_case():
    letter = entry(1, reason="title has 3000 bytes (limit title_bytes=2048)", error="LimitExceeded")
    assert dl.Selection(reason="TITLE_BYTES").matches(letter)
    assert dl.Selection(reason="limitexceeded").matches(letter)
    assert dl.Selection(reason="exceed").matches(letter)
    assert not dl.Selection(reason="max_document_chars").matches(letter)


def test_stage_and_since_narrow_the_selection():
    old, new = entry(1, ts_ms=NOW_MS - 3_600_000), entry(2, stage="normalize")
    recent = dl.Selection(since_ms=NOW_MS - 60_000)
    assert [e.offset for e in (old, new) if recent.matches(e)] == [2]
    assert not dl.Selection(stage="Chunk").matches(new)
    assert dl.Selection(stage="NORMALIZE", since_ms=NOW_MS).matches(new)
    assert dl.Selection().everything and not dl.Selection(stage="chunk").everything


# --since ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1W", timedelta(weeks=1)),
    ],
)
def test_since_as_a_duration_counts_back_from_now(text, back):
    assert dl.parse_since(text, NOW) == int((NOW - back).timestamp() * 1000)


def test_since_as_an_iso_time_keeps_its_offset_and_reads_local_time_without_one():
    assert dl.parse_since("2026-12-01T10:00:00Z", NOW) == NOW_MS - 2 * 3_600_000
    assert dl.parse_since("2026-12-01 11:00+00:00", NOW) == NOW_MS - 3_600_000
    local = datetime(2026, 11, 30, 9, 30).astimezone()
    assert dl.parse_since("2026-11-30T09:30", NOW) == int(local.timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "neither an ISO time"),
        ("30", "neither an ISO time"),
        ("2h ago", "neither an ISO time"),
        ("-5m", "neither an ISO time"),
        ("2027-01-01", "in the future"),
    ],
)
def test_since_that_is_no_time_says_what_it_takes(text, says):
    with pytest.raises(ValueError, match=says):
        dl.parse_since(text, NOW)


# Addresses and reasons ---------------------------------------------------------------------


def test_an_address_is_a_dead_letter_position_or_an_origin():
    assert dl.parse_address("1:42") == dl.Position(1, 42)
    assert dl.parse_address(" t1-documents/0/7 ") == Origin("t1-documents", 0, 7)
    for bad in ("1:", "a:1", "documents/0", "documents/x/1", "", "1:2:3"):
        with pytest.raises(ValueError, match="not an address"):
            dl.parse_address(bad)


def test_reasons_are_counted_without_their_particulars_but_with_the_limit():
    entries = [
        entry(1, reason="document has 4905 characters, more than chunking.max_document_chars=2000"),
        entry(
            2, reason="document has 20000 characters, more than chunking.max_document_chars=2000"
        ),
        entry(3, reason="title has 3000 bytes (limit title_bytes=2048)", stage="normalize"),
    ]
    counts = dl.reason_counts(entries)
    assert counts == {
        (
            "chunk",
            "BadRecord",
            "document has N characters, more than chunking.max_document_chars=2000",
        ): 2,
        ("normalize", "BadRecord", "title has N bytes (limit title_bytes=2048)"): 1,
    }


def test_a_record_that_holds_no_dead_letter_is_said_so():
    for value in (b"{oops", b"[1]", b'{"stage": "chunk"}', None):
        with pytest.raises(ValueError, match="0:3 is not a dead letter"):
            dl.entry_of(Message("dead-letters", 0, 3, None, value, 0))


# Re-drive plan ---------------------------------------------------------------------------


def plan(entries: list[dl.Entry], scan: dl.SourceScan) -> list[tuple[int, str]]:
    return [
        (d.entry.offset, "send" if d.record else d.why)
        for d in dl.plan_redrive(entries, scan, {DOCS})
    ]


def test_the_latest_record_of_its_key_is_sent_in_full():
    scan = scan_of(record(3), record(4, key=b"other"))
    (decision,) = dl.plan_redrive([entry(3)], scan, {DOCS})
    assert decision.record == record(3)  # the whole record from the source, not the preview


def test_a_record_with_a_newer_record_of_its_key_is_superseded():
    scan = scan_of(record(3), record(5, key=b"other"), record(7))
    assert plan([entry(3)], scan) == [(3, "superseded by documents/0/7, a newer record of its key")]


def test_a_record_re_driven_once_is_not_sent_again():
    first = dl.redrive_headers(record(3), entry(3), "dead-letters")
    copy = record(8, **{k: v for k, v in first if isinstance(v, bytes)})
    assert plan([entry(3)], scan_of(record(3), copy)) == [(3, "already re-driven as documents/0/8")]


def test_a_re_driven_copy_that_failed_again_can_be_re_driven():
    first = dl.redrive_headers(record(3), entry(3), "dead-letters")
    copy = record(8, **{k: v for k, v in first if isinstance(v, bytes)})
    again = entry(9, origin=Origin(DOCS, 0, 8), reason="markdown nesting")
    assert plan([entry(3), again], scan_of(record(3), copy)) == [
        (3, "already re-driven as documents/0/8"),
        (9, "send"),
    ]


def test_records_that_are_gone_or_elsewhere_are_skipped_with_the_reason():
    scan = scan_of(record(4), end=6)
    scan.missing_topics.add("gone")
    entries = [
        entry(2),  # offset below the end but not read: compacted away
        entry(6),
        entry(7, origin=Origin(DOCS, 5, 1)),
        entry(8, origin=Origin("gone", 0, 1)),
        entry(9, origin=Origin("t-chunks", 0, 1)),
        dl.Entry(0, 10, NOW_MS, DeadLetter("index", "r", None, None, None)),
        entry(11, origin=Origin(DOCS, 0, 4)),
        entry(12, origin=Origin(DOCS, 0, 4)),  # the same record dead-lettered twice
    ]
    scan.ends[("gone", 0)] = 0
    assert plan(entries, scan) == [
        (2, "compacted away: a newer record of its key superseded it"),
        (6, "documents/0/6 is past the end of its partition (6)"),
        (7, "topic documents has no partition 5"),
        (8, "gone is not a source topic of this configuration"),
        (9, "t-chunks is not a source topic of this configuration"),
        (10, "it names no origin record"),
        (11, "send"),
        (12, "same record as 0:11"),
    ]
    decisions = dl.plan_redrive([entry(8, origin=Origin("gone", 0, 1))], scan, {DOCS, "gone"})
    assert decisions[0].why == "topic gone does not exist"


def test_redrive_headers_keep_the_records_own_and_name_origin_and_dead_letter():
    original = record(8, trace=b"abc", **{"streamrag-origin-offset": b"3"})
    headers = dl.redrive_headers(original, entry(9), "t-dead-letters")
    assert headers == [
        ("trace", b"abc"),
        ("streamrag-origin-topic", b"documents"),
        ("streamrag-origin-partition", b"0"),
        ("streamrag-origin-offset", b"8"),
        ("streamrag-redrive", b"t-dead-letters:0:9"),
    ]
    copy = record(12, **{k: v for k, v in headers if isinstance(v, bytes)})
    assert dl.redrive_origin(copy) == Origin(DOCS, 0, 8)
    assert dl.redrive_origin(record(1)) is None


# The command line: bad arguments end with one line, before Kafka is asked anything -------


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["list", "--since", "yesterday"], 2, "neither an ISO time"),
        (["show", "12"], 2, "not an address"),
        (["redrive"], 1, "say which dead letters to re-drive"),
    ],
)
def test_bad_arguments_end_with_one_line(args, code, says):
    cli = str(Path(sys.executable).with_name("streamrag"))
    env = {**os.environ, "STREAMRAG_KAFKA__BOOTSTRAP": "127.0.0.1:9"}  # nothing listens
    done = subprocess.run(
        [cli, "dead-letters", *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == code
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("streamrag: error: ") and says in line
