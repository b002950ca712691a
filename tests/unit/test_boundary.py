"""Terminal, transient or unknown (streamrag.errors), and the error boundary that acts on
it (streamrag.boundary): dead-letter at once, re-raise, or count across restarts."""

from __future__ import annotations

import json

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from pymilvus.exceptions import (
    DataNotMatchException,
    MilvusException,
    MilvusUnavailableException,
    ParamError,
)

from streamrag.boundary import ErrorBoundary, FailureLedger
from streamrag.errors import BadRecord, LimitExceeded, TransientError, classify, describe
from streamrag.records import DeadLetter, Origin
from streamrag.stores.base import StoreError

ORIGIN = Origin("documents", 1, 42)


def raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as e:
            raise outer from e
    except Exception as e:
        return e


@pytest.mark.parametrize(
    "error",
    [
        BadRecord("no id"),
        LimitExceeded("doc_id_bytes=1024", "doc id has 2000 bytes"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        RecursionError("maximum recursion depth exceeded"),
        psycopg.errors.NumericValueOutOfRange("bigint out of range"),
        psycopg.errors.ProgramLimitExceeded("index row size exceeds btree version 4 maximum"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        DataNotMatchException(message="field doc_id: value too long"),
        ParamError(message="invalid param"),
        MilvusException(code=6, message="VARCHAR field 'doc_id' value length 1025 exceeds 1024"),
        raised_from(
            StoreError("pgvector upsert: bigint out of range"),
            psycopg.errors.NumericValueOutOfRange("bigint out of range"),
        ),
    ],
)
def test_errors_of_the_record_are_terminal(error):
    assert classify(error) == "terminal"


@pytest.mark.parametrize(
    "error",
    [
        TransientError("store lookup gave up"),
        ConnectionRefusedError("connection refused"),
        TimeoutError("timed out"),
        psycopg.OperationalError("connection to server failed"),
        MilvusUnavailableException(message="server unavailable"),
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
        raised_from(StoreError("cannot reach PostgreSQL"), psycopg.OperationalError("refused")),
    ],
)
def test_errors_of_the_environment_are_transient(error):
    assert classify(error) == "transient"


@pytest.mark.parametrize(
    "error", [KeyError("x"), TypeError("bad"), RuntimeError("?"), StoreError("something odd")]
)
def test_anything_else_is_unknown(error):
    assert classify(error) == "unknown"


def test_describe_names_the_class_and_the_root_cause_in_one_line():
    error = raised_from(
        StoreError("pgvector upsert:\nbigint out of range"),
        psycopg.errors.NumericValueOutOfRange("bigint"),
    )
    assert describe(error) == (
        "StoreError from NumericValueOutOfRange: pgvector upsert: bigint out of range"
    )


def boundary(tmp_path, poison_after: int = 3) -> ErrorBoundary:
    return ErrorBoundary("index", FailureLedger(tmp_path / "ledger"), poison_after)


def test_a_terminal_error_is_dead_lettered_at_once_with_stage_class_and_reason(tmp_path):
    letter = boundary(tmp_path).dead_letter_for(
        LimitExceeded("title_bytes=2048", "title has 3000 bytes"), ORIGIN, "doc", "{...}"
    )
    assert letter == DeadLetter(
        stage="index",
        reason="title has 3000 bytes (limit title_bytes=2048)",
        origin=ORIGIN,
        key="doc",
        value="{...}",
        error="LimitExceeded",
    )


def test_a_transient_error_is_never_dead_lettered(tmp_path):
    b = boundary(tmp_path, poison_after=1)
    for _ in range(5):
        assert b.dead_letter_for(psycopg.OperationalError("down"), ORIGIN, "doc", None) is None
    assert not (tmp_path / "ledger").exists()  # not even counted


def test_an_unknown_error_is_dead_lettered_after_failing_the_same_way_in_a_row(tmp_path):
    # Each call is one attempt of the task (a fresh boundary, as after a restart).
    attempts = [
        boundary(tmp_path).dead_letter_for(KeyError("x"), ORIGIN, "doc", None) for _ in range(3)
    ]
    assert attempts[:2] == [None, None]
    letter = attempts[2]
    assert letter is not None and letter.error == "KeyError"
    assert letter.reason == "failed 3 times in a row: KeyError: 'x'"
    assert list((tmp_path / "ledger").iterdir()) == []  # forgotten once dead-lettered


def test_a_different_error_starts_the_count_again(tmp_path):
    b = boundary(tmp_path)
    assert b.dead_letter_for(KeyError("x"), ORIGIN, "doc", None) is None
    assert b.dead_letter_for(KeyError("x"), ORIGIN, "doc", None) is None
    assert b.dead_letter_for(TypeError("y"), ORIGIN, "doc", None) is None
    assert b.dead_letter_for(TypeError("y"), ORIGIN, "doc", None) is None
    assert b.dead_letter_for(TypeError("y"), ORIGIN, "doc", None) is not None


def test_failures_are_counted_per_record_and_stage(tmp_path):
    ledger = FailureLedger(tmp_path)
    other = Origin("documents", 1, 43)
    assert [ledger.count("index", ORIGIN, KeyError()) for _ in range(2)] == [1, 2]
    assert ledger.count("index", other, KeyError()) == 1
    assert ledger.count("embed", ORIGIN, KeyError()) == 1


def test_old_failures_are_forgotten(tmp_path):
    ledger = FailureLedger(tmp_path, ttl_s=0)
    ledger.count("index", ORIGIN, KeyError())
    path = next(tmp_path.iterdir())
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "last_ms": data["last_ms"] - 10}))
    assert ledger.count("index", ORIGIN, KeyError()) == 1


def test_a_torn_ledger_entry_counts_from_one(tmp_path):
    ledger = FailureLedger(tmp_path)
    ledger.count("index", ORIGIN, KeyError())
    next(tmp_path.iterdir()).write_text('{"error": "KeyE')
    assert ledger.count("index", ORIGIN, KeyError()) == 1


def test_an_unknown_error_without_an_origin_is_re_raised(tmp_path):
    assert boundary(tmp_path, poison_after=1).dead_letter_for(KeyError(), None, "d", None) is None


def test_a_dead_letter_with_lone_surrogates_is_still_valid_utf8():
    letter = DeadLetter(
        stage="normalize", reason="bad", origin=ORIGIN, key="k\ud800", value="v\udcff"
    )
    raw = letter.to_json().encode("utf-8")
    assert DeadLetter.from_json(raw) == letter
