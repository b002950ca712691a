"""`streamrag connect snapshot`: the signal, the checks before it, the wait after it."""

from __future__ import annotations

import json
import re

import pytest

from connect.registry import DEFAULT_CONNECTOR_FILE
from connect.snapshot import (
    Connector,
    SnapshotError,
    TableName,
    request_snapshot,
    signal_data,
    wait_for_snapshot,
)
from jobs.chunking.cdc import parse_cdc_record
from streamrag.config import PROJECT_ROOT, CdcTableConfig, Settings
from streamrag.kafka import Message
from streamrag.records import Origin

CONFIG = {
    "table.include.list": "kb.articles,kb.faq,shop\\.order_.*",
    "signal.data.collection": "kb.debezium_signal",
    "publication.name": "streamrag_pub",
    "database.dbname": "streamrag",
    "notification.enabled.channels": "sink",
    "notification.sink.topic.name": "__debezium-notification.cdc",
}
CONNECTOR = Connector.of("streamrag-postgres", CONFIG)


@pytest.mark.parametrize("text", ["kb.articles", "KB.Articles", "_a.b_2"])
def test_schema_dot_table_names_parse(text):
    assert str(TableName.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "articles",
        "kb.articles; DROP TABLE kb.faq",
        'kb."articles"',
        "db.kb.articles",
        "kb.articles--",
        "kb.art icles",
        "1kb.articles",
        "kb.",
        "",
        "kb.artícles",
        "kb.a\x00",
        "kb." + "a" * 64,
    ],
)
def test_anything_else_is_one_clear_line(text):
    with pytest.raises(SnapshotError, match="table must be schema.table") as err:
        TableName.parse(text)
    assert "\n" not in str(err.value)


def test_a_signal_asks_for_an_incremental_snapshot_of_the_table():
    assert signal_data(TableName("kb", "docs"), None) == {
        "data-collections": ["kb.docs"],
        "type": "incremental",
    }


def test_a_filter_goes_as_data_and_in_parentheses():
    # Debezium appends it to its chunk query with a bare AND: `a OR b` would escape the
    # chunk's key bounds without them.
    data = signal_data(TableName("kb", "faq"), "  tenant = 'acme' OR slug = 'x'\n")
    assert data["additional-conditions"] == [
        {"data-collection": "kb.faq", "filter": "(tenant = 'acme' OR slug = 'x')"}
    ]
    assert json.loads(json.dumps(data)) == data  # what goes into the signal's data column


@pytest.mark.parametrize(
    ("where", "words"), [("", "is empty"), (" \n", "is empty"), ("a\x00", "NUL")]
)
def test_an_empty_or_nul_filter_is_refused(where, words):
    with pytest.raises(SnapshotError, match=words):
        signal_data(TableName("kb", "faq"), where)


@pytest.mark.parametrize(
    ("table", "captured"),
    [
        ("kb.articles", True),
        ("KB.FAQ", True),  # Debezium's filters ignore case
        ("shop.order_2026", True),
        ("kb.articlesX", False),  # patterns match whole names
        ("kb.debezium_signal", False),  # the signal table is no data table
        ("public.articles", False),
    ],
)
def test_only_tables_the_connector_captures_can_be_snapshotted(table, captured):
    assert CONNECTOR.captures(TableName.parse(table)) is captured


def test_without_an_include_list_the_schema_and_exclude_lists_decide():
    connector = Connector.of(
        "c",
        {
            "signal.data.collection": "kb.debezium_signal",
            "schema.include.list": "kb",
            "table.exclude.list": "kb\\.secret.*",
        },
    )
    assert connector.captures(TableName("kb", "faq"))
    assert not connector.captures(TableName("kb", "secrets"))
    assert not connector.captures(TableName("other", "faq"))


def test_a_connector_without_signalling_says_how_to_get_it():
    with pytest.raises(SnapshotError, match="streamrag migrate.*connect apply"):
        Connector.of("old", {"table.include.list": "kb.articles"})
    with pytest.raises(SnapshotError, match="no signalling table"):
        Connector.of("kafka-only", {**CONFIG, "signal.enabled.channels": "kafka"})


def test_the_connector_file_signals_through_the_migrated_table():
    config = json.loads(DEFAULT_CONNECTOR_FILE.read_text())["config"]
    connector = Connector.of("streamrag-postgres", config)
    assert str(connector.signal_table) == "kb.debezium_signal"
    assert connector.publication == "streamrag_pub"
    assert connector.notification_topic == "__debezium-notification.cdc"
    assert config["incremental.snapshot.watermarking.strategy"] == "insert_delete"
    migration = (PROJECT_ROOT / "sql/source/002_signals.sql").read_text()
    assert "CREATE TABLE IF NOT EXISTS kb.debezium_signal" in migration
    assert "ALTER PUBLICATION streamrag_pub ADD TABLE kb.debezium_signal" in migration
    # Its filter transform drops the signalling table's events, and nothing else
    # (Kafka's TopicNameMatches matches the whole topic name, as fullmatch does).
    assert config["transforms.dropSignals.predicate"] == "signalTable"
    pattern = config["predicates.signalTable.pattern"]
    assert re.fullmatch(pattern, "cdc.kb.debezium_signal")
    for topic in ("cdc.kb.articles", "cdc.kb.faq", "__debezium-heartbeat.cdc"):
        assert not re.fullmatch(pattern, topic)


def test_an_uncaptured_table_is_refused_before_the_database_is_asked():
    with pytest.raises(SnapshotError, match="does not capture kb.orders.*cdc.tables"):
        request_snapshot("host=127.0.0.1 port=1", CONNECTOR, TableName("kb", "orders"))


def test_a_database_that_is_down_is_one_line():
    with pytest.raises(SnapshotError, match="cannot reach PostgreSQL") as err:
        request_snapshot(
            "host=127.0.0.1 port=1 dbname=streamrag user=postgres connect_timeout=2",
            CONNECTOR,
            TableName("kb", "faq"),
        )
    assert "\n" not in str(err.value)


def notification(signal_id: str, kind: str, offset: int, **extra: str) -> Message:
    value = {
        "id": signal_id,
        "aggregate_type": "Incremental Snapshot",
        "type": kind,
        "additional_data": {"connector_name": "cdc", **extra},
        "timestamp": 1,
    }
    key = json.dumps({"id": signal_id}).encode()
    return Message("n", 0, offset, key, json.dumps(value).encode(), 1)


def test_the_wait_follows_the_notifications_of_its_own_signal(monkeypatch):
    log = [
        notification("other", "COMPLETED", 0),
        notification("s1", "STARTED", 1, data_collections="kb.faq"),
        Message("n", 0, 2, None, b"not json", 1),
        notification(
            "s1",
            "TABLE_SCAN_COMPLETED",
            3,
            scanned_collection="kb.faq",
            total_rows_scanned="42",
            status="SUCCEEDED",
        ),
        notification("s1", "COMPLETED", 4),
    ]
    reads: list[dict[int, int]] = []

    def read_log(settings, topic, start=None, timeout_s=30):  # two more records each time
        reads.append(dict(start or {}))
        return iter([m for m in log[: 2 * len(reads)] if m.offset >= reads[-1].get(0, 0)])

    monkeypatch.setattr("connect.snapshot.read_log", read_log)
    monkeypatch.setattr("connect.snapshot.time.sleep", lambda s: None)
    outcome = wait_for_snapshot(Settings(), "n", "s1", {}, timeout_s=60)
    assert outcome.state == "COMPLETED"
    assert outcome.scans == {"kb.faq": ("SUCCEEDED", 42)}
    assert outcome.failures() == []
    assert reads[1:] == [{0: 2}, {0: 4}]  # each poll goes on where the last one ended


def test_a_bad_filter_ends_the_wait_with_the_scan_status(monkeypatch):
    log = [
        notification(
            "s1",
            "TABLE_SCAN_COMPLETED",
            0,
            scanned_collection="kb.faq",
            total_rows_scanned="0",
            status="SQL_EXCEPTION",
        ),
        notification("s1", "COMPLETED", 1),
    ]
    monkeypatch.setattr("connect.snapshot.read_log", lambda *a, **k: iter(log))
    outcome = wait_for_snapshot(Settings(), "n", "s1", {}, timeout_s=60)
    assert outcome.failures() == ["kb.faq: SQL_EXCEPTION"]


def test_a_snapshot_that_does_not_finish_in_time_is_one_line(monkeypatch):
    monkeypatch.setattr("connect.snapshot.read_log", lambda *a, **k: iter([]))
    monkeypatch.setattr("connect.snapshot.time.sleep", lambda s: None)
    with pytest.raises(SnapshotError, match="has not finished after 0 s; it goes on"):
        wait_for_snapshot(Settings(), "n", "s1", {}, timeout_s=0)


def test_incremental_snapshot_reads_have_no_lsn_and_are_version_0():
    # What Debezium 3.6 sends for a row of `streamrag connect snapshot`: source.lsn null.
    value = {
        "before": None,
        "after": {"id": 7, "title": "T", "body": "Backfilled."},
        "op": "r",
        "source": {"schema": "kb", "table": "docs", "lsn": None, "snapshot": "incremental"},
        "ts_ms": 1,
    }
    table = CdcTableConfig(id_columns=["id"], text_columns=["body"], title_column="title")
    event = parse_cdc_record(
        b'{"id":7}', json.dumps(value).encode(), Origin("cdc.kb.docs", 0, 5), 1, table
    )
    assert event is not None
    assert (event.doc_id, event.version, event.text) == ("kb.docs:7", 0, "Backfilled.")
