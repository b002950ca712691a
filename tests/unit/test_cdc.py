"""Debezium change event -> DocumentEvent mapping, and the pure parts of the Connect client."""

from __future__ import annotations

import json

import pytest

from connect.registry import (
    DEFAULT_CONNECTOR_FILE,
    ConnectError,
    ConnectRegistry,
    _trace,
    _validation,
    load_connector_file,
)
from jobs.chunking.cdc import UNAVAILABLE, parse_cdc_record
from jobs.chunking.planner import DocState, is_stale
from streamrag.config import CdcTableConfig, load_settings
from streamrag.errors import BadRecord
from streamrag.records import Origin

ARTICLES = CdcTableConfig(
    id_columns=["id"],
    text_columns=["title", "body"],
    title_column="title",
    metadata_columns=["tags"],
    tenant_column="tenant",
    content_type="markdown",
)
FAQ = CdcTableConfig(
    id_columns=["tenant", "slug"],
    text_columns=["question", "answer"],
    title_column="question",
    tenant_column="tenant",
)
TOPIC = "cdc.kb.articles"


def article(id_=7, title="Compaction", body="Kafka keeps the latest record.", **extra):
    return {
        "id": id_,
        "tenant": "acme",
        "title": title,
        "body": body,
        "tags": ["kafka"],
        "updated_at": "2026-01-02T03:04:05Z",
        **extra,
    }


def envelope(op, after=None, before=None, lsn=1000, table="articles", **source):
    return {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": 1_700_000_000_999,
        "source": {
            "schema": "kb",
            "table": table,
            "lsn": lsn,
            "ts_ms": 1_700_000_000_000,
            "sequence": json.dumps([None, str(lsn)]),
            **source,
        },
    }


def parse(value, key=b'{"id":7}', table=ARTICLES, topic=TOPIC, offset=0):
    raw = value if value is None or isinstance(value, bytes) else json.dumps(value).encode()
    return parse_cdc_record(key, raw, Origin(topic, 0, offset), 42, table)


def bad(value, **kwargs) -> str:
    with pytest.raises(BadRecord) as err:
        parse(value, **kwargs)
    reason = str(err.value)
    assert reason and "\n" not in reason
    return reason


def test_snapshot_read_becomes_a_document_with_version_zero():
    event = parse(envelope("r", after=article(), lsn=5000))

    assert event.doc_id == "kb.articles:7"
    assert event.version == 0
    assert event.text == "Compaction\n\nKafka keeps the latest record."
    assert event.title == "Compaction"
    assert event.content_type == "markdown"
    assert event.metadata == {"tags": ["kafka"], "tenant": "acme"}
    assert event.source == "kb.articles"
    assert event.source_ts_ms == 1_700_000_000_000  # the commit time, not the record time
    assert not event.deleted


@pytest.mark.parametrize("op", ["c", "u"])
def test_streamed_change_version_is_the_lsn(op):
    event = parse(envelope(op, after=article(body="New body."), lsn=123_456_789))

    assert event.version == 123_456_789
    assert event.text == "Compaction\n\nNew body."


def test_a_transaction_straddling_the_snapshot_still_beats_the_snapshot_row():
    # The snapshot ran at LSN 5000; a transaction that wrote at 4000 committed after it.
    snapshot = parse(envelope("r", after=article(body="Old."), lsn=5000), offset=0)
    update = parse(envelope("u", after=article(body="New."), lsn=4000), offset=1)
    state = DocState(snapshot.version, origin=(TOPIC, 0, 0))

    assert not is_stale(state, update)
    assert is_stale(DocState(update.version, origin=(TOPIC, 0, 1)), snapshot)


def test_delete_with_key_only_before_is_a_deletion():
    event = parse(
        envelope("d", before={"id": 7, "tenant": None, "title": None, "body": None}, lsn=2000)
    )

    assert (event.doc_id, event.deleted, event.version, event.text) == (
        "kb.articles:7",
        True,
        2000,
        None,
    )


def test_delete_without_before_takes_the_id_from_the_key():
    event = parse(envelope("d", before=None, lsn=2000), key=b'{"id":7}')

    assert event.doc_id == "kb.articles:7" and event.deleted


def test_tombstone_is_skipped_but_a_keyless_one_is_bad():
    assert parse(None, key=b'{"id":7}') is None
    assert "tombstone" in bad(None, key=None)


def test_composite_key_joins_values_and_escapes_colons():
    row = {"tenant": "acme", "slug": "reset-password", "question": "How?", "answer": "Click."}
    event = parse(envelope("c", after=row, table="faq"), table=FAQ)
    assert event.doc_id == "kb.faq:acme:reset-password"
    assert event.metadata == {"tenant": "acme"}

    one = parse(envelope("c", after={**row, "tenant": "a:b", "slug": "c"}, table="faq"), table=FAQ)
    two = parse(envelope("c", after={**row, "tenant": "a", "slug": "b:c"}, table="faq"), table=FAQ)
    assert one.doc_id != two.doc_id


def test_null_text_column_is_left_out():
    event = parse(envelope("c", after=article(title=None)))

    assert event.text == "Kafka keeps the latest record."
    assert event.title is None


@pytest.mark.parametrize("title, body", [(None, None), ("", "  "), (None, "")])
def test_no_text_at_all_is_bad(title, body):
    assert "no text" in bad(envelope("c", after=article(title=title, body=body)))


def test_added_and_unknown_columns_are_ignored():
    event = parse(envelope("u", after=article(summary="new column", views=3)))

    assert "new column" not in event.text
    assert event.metadata == {"tags": ["kafka"], "tenant": "acme"}


def test_unavailable_toast_value_is_taken_from_before():
    before = article(body="The real, long body.")
    after = article(body=UNAVAILABLE, tags=[UNAVAILABLE])
    event = parse(envelope("u", after=after, before=before))

    assert event.text == "Compaction\n\nThe real, long body."
    assert UNAVAILABLE not in event.text
    assert event.metadata["tags"] == ["kafka"]


def test_unavailable_toast_value_without_before_is_bad_never_indexed():
    reason = bad(envelope("u", after=article(body=UNAVAILABLE), before=None))

    assert "'body'" in reason and "REPLICA IDENTITY FULL" in reason


def test_text_that_quotes_the_placeholder_is_real_text():
    body = f"Debezium writes {UNAVAILABLE} for unchanged TOASTed columns."
    assert parse(envelope("c", after=article(body=body))).text.endswith(body)


def test_heartbeat_topic_is_skipped():
    assert (
        parse(b'{"ts_ms": 1}', key=b'{"serverName":"cdc"}', topic="__debezium-heartbeat.cdc")
        is None
    )


@pytest.mark.parametrize(
    "value, reason",
    [
        (b'{"ts_ms": 1700000000000}', "no 'op'"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[1, 2]", "JSON object"),
        (envelope("t", after=None), "unsupported Debezium op 't'"),
        (envelope("c", after=None), "'after'"),
        (envelope("c", after=article(), lsn=None), "source.lsn"),
        (envelope("c", after=article(), lsn="0/16B3748"), "source.lsn"),
        ({"op": "c", "after": article()}, "'source'"),
        (envelope("c", after=article(id_=None)), "key column 'id'"),
        (envelope("c", after=article(body=42)), "text column 'body' must be a string"),
    ],
)
def test_garbage_is_a_bad_record_with_a_reason(value, reason):
    assert reason in bad(value)


def test_schema_wrapped_envelope_is_unwrapped():
    wrapped = {"schema": {"type": "struct"}, "payload": envelope("c", after=article())}

    assert parse(wrapped).doc_id == "kb.articles:7"


def test_default_config_maps_articles_and_faq(monkeypatch):
    monkeypatch.delenv("STREAMRAG_CDC__TABLES", raising=False)
    tables = load_settings().cdc.tables

    assert set(tables) == {"cdc.kb.articles", "cdc.kb.faq"}
    assert tables["cdc.kb.faq"].id_columns == ["tenant", "slug"]


def test_cdc_tables_from_the_environment(monkeypatch):
    table = {"id_columns": ["id"], "text_columns": ["body"]}
    monkeypatch.setenv("STREAMRAG_CDC__TABLES", json.dumps({"p.s.t": table}))

    assert list(load_settings().cdc.tables) == ["p.s.t"]


def test_connector_file_uses_the_file_provider_and_fills_placeholders(monkeypatch):
    monkeypatch.setenv("STREAMRAG_SECRETS_DIR", "/run/secrets/pg")
    name, config = load_connector_file(DEFAULT_CONNECTOR_FILE, load_settings())

    assert name == "streamrag-postgres"
    assert config["database.password"] == (
        "${file:/run/secrets/pg/connect-postgres.properties:password}"
    )
    assert config["database.port"].isdigit()
    assert (config["slot.name"], config["publication.name"], config["topic.prefix"]) == (
        "streamrag_slot",
        "streamrag_pub",
        "cdc",
    )
    assert config["publication.autocreate.mode"] == "disabled"


def test_validation_message_becomes_one_line():
    message = (
        "Connector configuration is invalid and contains the following 2 error(s):\n"
        "The 'database.user' value is invalid: A value is required\n"
        "Error while validating connector config: FATAL: password authentication failed\n"
        "You can also find the above list of errors at the endpoint `/validate`"
    )

    assert _validation(message) == (
        "The 'database.user' value is invalid: A value is required; "
        "Error while validating connector config: FATAL: password authentication failed"
    )


def test_java_trace_becomes_exception_and_root_cause():
    trace = (
        "org.apache.kafka.connect.errors.ConnectException: An exception occurred\n"
        "\tat io.debezium.Foo.bar(Foo.java:1)\n"
        "Caused by: org.postgresql.util.PSQLException: ERROR: publication missing\n"
        "\tat org.postgresql.Baz.q(Baz.java:2)\n"
    )

    assert _trace(trace) == (
        "ConnectException: An exception occurred "
        "(caused by PSQLException: ERROR: publication missing)"
    )


def test_unreachable_connect_is_one_clear_line():
    registry = ConnectRegistry("http://127.0.0.1:9", timeout_s=1, retry_s=0.3)
    with pytest.raises(ConnectError) as err:
        registry.status("anything")

    assert str(err.value) == "Kafka Connect at http://127.0.0.1:9 is not reachable"


def test_normalize_routes_cdc_topics_to_the_cdc_mapping():
    from jobs.chunking.normalize import normalize_record

    tables = load_settings().cdc.tables

    def run(topic, key, value):
        return normalize_record(key, value, Origin(topic, 0, 3), 5, tables)

    cdc = run(TOPIC, b'{"id":7}', json.dumps(envelope("c", after=article())).encode())
    assert cdc is not None and cdc.doc_id == "kb.articles:7"
    assert run(TOPIC, b'{"id":7}', None) is None  # tombstone: dropped, not a dead letter
    with pytest.raises(BadRecord, match="not valid JSON"):
        run(TOPIC, b"k", b"garbage")
    doc = run("documents", b"a", json.dumps({"id": "a", "text": "hello"}).encode())
    assert doc is not None and doc.doc_id == "a"


def test_placeholder_in_an_unused_column_does_not_matter():
    event = parse(envelope("u", after=article(notes=UNAVAILABLE), before=None))

    assert event.text == "Compaction\n\nKafka keeps the latest record."
