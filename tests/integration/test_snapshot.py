"""Backfill without downtime: `streamrag connect snapshot` on the real stack.

One module-wide source, like test_cdc: sql/source/001 and 002 under a unique schema with
its own publication, slot, topic prefix and connector (chunks of 10 rows, so that a
backfill takes many chunks), all removed at the end. The ingest job runs bounded, again
after each step, on one consumer group: a job that keeps streaming, in steps.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from connect.registry import (
    DEFAULT_CONNECTOR_FILE,
    ConnectRegistry,
    connect_url,
    load_connector_file,
)
from connect.snapshot import (
    Connector,
    SnapshotError,
    TableName,
    notification_marks,
    request_snapshot,
    wait_for_snapshot,
)
from streamrag import generations
from streamrag.config import PROJECT_ROOT, Settings
from streamrag.kafka import end_offsets, ensure_topics, read_log
from streamrag.local.stack import postgres_dsn
from tests.integration.conftest import CLI, Pipeline, make_pipeline, settings_with
from tests.integration.test_cdc import Cdc, cdc_records, delete_topics, drop_slot, has, poll

ROWS = 120  # rows of the table added later: 12 chunks


class Source(Cdc):
    """test_cdc's private source (schema, slot, connector), with what these tests read."""

    def changes(self, table: str, start: dict[int, int] | None = None) -> list[dict]:
        settings = self.pipeline.settings
        return [
            {"key": json.loads(m.key), **json.loads(m.value)}
            for m in read_log(settings, self.topic(table), start=start, timeout_s=10)
            if m.value
        ]

    def run(self) -> str:
        """One bounded run of the ingest job: its summary line; no dead letters."""
        done = self.pipeline.run()
        ours = {self.topic("articles"), self.topic("docs")}
        letters = [d for d in self.pipeline.dead_letters() if d["origin"]["topic"] in ours]
        assert letters == []
        return next(ln for ln in done.stdout.splitlines() if ln.startswith("read "))

    def chunk_texts(self, doc_id: str) -> list[str]:
        return [text for text, _ in self.stored(doc_id)]

    def stored(self, doc_id: str) -> list[tuple[str, int]]:
        """(text, version) of each of the document's chunks in the index."""
        store = self.pipeline.store()
        try:
            return [(c.text, c.version) for c in store.get(sorted(store.doc_chunk_ids(doc_id)))]
        finally:
            store.close()


def source_ddl(schema: str, publication: str) -> str:
    files = sorted((PROJECT_ROOT / "sql/source").glob("*.sql"))
    ddl = "\n".join(f.read_text() for f in files)
    return re.sub(r"\bkb\b", schema, ddl).replace("streamrag_pub", publication)


def with_tables(pipeline: Pipeline, tables: dict[str, dict]) -> Pipeline:
    """The same pipeline (consumer group, topics, store) with these CDC topics: what a
    restart of the job with a new `cdc.tables` sees."""
    env = {**pipeline.env, "STREAMRAG_CDC__TABLES": json.dumps(tables)}
    settings = settings_with(env)
    ensure_topics(settings)
    return Pipeline(env, settings)


@pytest.fixture(scope="module")
def source(stack: Settings) -> Iterator[Source]:
    tag = uuid.uuid4().hex[:8]
    schema, prefix, dsn = f"kb_{tag}", f"snap_{tag}", postgres_dsn(stack)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(source_ddl(schema, f"pub_{tag}"))
    articles = stack.cdc.tables["cdc.kb.articles"].model_dump()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAMRAG_CDC__TABLES", json.dumps({f"{prefix}.{schema}.articles": articles}))
        pipeline = make_pipeline(stack, "milvus")
    name, config = load_connector_file(DEFAULT_CONNECTOR_FILE, stack)
    config.update(
        {
            "slot.name": f"slot_{tag}",
            "publication.name": f"pub_{tag}",
            "topic.prefix": prefix,
            "table.include.list": f"{schema}.articles",
            "signal.data.collection": f"{schema}.debezium_signal",
            "notification.sink.topic.name": f"__debezium-notification.{prefix}",
            "incremental.snapshot.chunk.size": "10",
        }
    )
    world = Source(
        tag,
        schema,
        f"slot_{tag}",
        f"{name}-snap-{tag}",
        config,
        dsn,
        ConnectRegistry(connect_url(stack)),
        pipeline,
    )
    world.sql(
        "INSERT INTO {s}.articles (id, tenant, title, body) VALUES"
        " (1, 'acme', 'Compaction', 'Log compaction keeps the latest record of every key.'),"
        " (2, 'acme', 'Offsets', 'Consumers commit offsets.'),"
        " (3, 'globex', 'Slots', 'A replication slot keeps WAL.'),"
        " (4, 'globex', 'Signals', 'Debezium reads signals from a table.'),"
        " (5, 'acme', 'Chunks', 'Snapshots read a table in chunks.')"
    )
    try:
        world.registry.apply(world.name, config)
        world.registry.wait_running(world.name, 60)
        yield world
    finally:
        world.registry.delete(world.name, missing_ok=True)
        drop_slot(dsn, f"slot_{tag}")
        world.sql(f"DROP PUBLICATION IF EXISTS pub_{tag}; DROP SCHEMA IF EXISTS {{s}} CASCADE")
        topics = [f"{prefix}.{schema}.{t}" for t in ("articles", "docs")]
        extra = [f"__debezium-heartbeat.{prefix}", f"__debezium-notification.{prefix}"]
        delete_topics(stack, [*topics, *extra])
        world.registry.close()
        generations.drop_all(pipeline.settings)


def doc_text(i: int) -> str:
    return f"Backfilled document {i} explains incremental snapshots."


def test_added_table_is_backfilled_while_streaming_goes_on(source: Source):
    poll(lambda: has("r", id=5)(_pairs(source, "articles")), 90, "the initial snapshot")
    source.run()

    # A migration adds a table with rows, the connector and the job learn of it.
    source.sql(
        "CREATE TABLE {s}.docs (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL);"
        " INSERT INTO {s}.docs SELECT i, 'Doc ' || i,"
        " 'Backfilled document ' || i || ' explains incremental snapshots.'"
        f" FROM generate_series(1, {ROWS}) i;"
        f" ALTER PUBLICATION pub_{source.tag} ADD TABLE {{s}}.docs"
    )
    source.config["table.include.list"] += f",{source.schema}.docs"
    source.registry.apply(source.name, source.config)
    source.registry.wait_running(source.name, 60)
    docs = {"id_columns": ["id"], "text_columns": ["body"], "title_column": "title"}
    tables = {
        **json.loads(source.pipeline.env["STREAMRAG_CDC__TABLES"]),
        source.topic("docs"): docs,
    }
    source.pipeline = with_tables(source.pipeline, tables)

    # Streaming goes on during the backfill: kb.articles changes all along, and a docs
    # row changes while its chunk may be open or still ahead.
    stop, titles = threading.Event(), []

    def keep_updating() -> None:
        while not stop.is_set():
            titles.append(f"Live {len(titles)}")
            source.sql("UPDATE {s}.articles SET title = %s WHERE id = 1", (titles[-1],))
            stop.wait(0.05)

    updater = threading.Thread(target=keep_updating)
    updater.start()
    try:
        source.sql("UPDATE {s}.docs SET body = 'Changed during the backfill.' WHERE id = 100")
        done = subprocess.run(
            [CLI, "connect", "snapshot", f"{source.schema}.docs"]
            + ["--connector", source.name, "--wait", "--timeout", "120"],
            env=source.pipeline.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop.set()
        updater.join()
    assert done.returncode == 0, done.stderr
    assert f"{source.schema}.docs: SUCCEEDED, {ROWS} rows read" in done.stdout
    assert "COMPLETED" in done.stdout

    poll(lambda: _has_title(source, titles[-1]), 60, "the last update of kb.articles")
    reads = [e for e in source.changes("docs") if e["op"] == "r"]
    assert sorted(e["key"]["id"] for e in reads) == list(range(1, ROWS + 1))
    assert {e["source"]["snapshot"] for e in reads} == {"incremental"}
    # Streamed changes were interleaved with the snapshot's chunks, not held back.
    first, last = min(e["ts_ms"] for e in reads), max(e["ts_ms"] for e in reads)
    updates = [e["ts_ms"] for e in source.changes("articles") if e["op"] == "u"]
    assert any(first < ts < last for ts in updates), (first, last, updates)
    # The signalling table's own events never reach Kafka (the connector's filter).
    assert cdc_records(source.pipeline.settings, source.topic("debezium_signal")) == []

    summary = source.run()
    assert f"{ROWS + 1} documents changed" in summary, summary  # 120 docs + articles:1
    for i in (1, 57, ROWS):
        assert source.chunk_texts(f"{source.schema}.docs:{i}") == [doc_text(i)]
    changed = source.chunk_texts(f"{source.schema}.docs:100")
    assert changed == ["Changed during the backfill."]
    assert source.chunk_texts(f"{source.schema}.articles:1")[0].startswith(titles[-1])


def test_filtered_reread_re_emits_only_matching_rows_and_re_embeds_nothing(source: Source):
    ids = [f"{source.schema}.articles:{i}" for i in range(1, 6)]
    before = {doc_id: source.stored(doc_id) for doc_id in ids}
    assert before[ids[0]][0][1] > 0  # row 1 was updated: its version is an LSN
    start = end_offsets(source.pipeline.settings, source.topic("articles"))
    connector = Connector.of(source.name, source.registry.config(source.name))
    topic = connector.notification_topic
    assert topic is not None
    marks = notification_marks(source.pipeline.settings, topic)
    articles = TableName(source.schema, "articles")
    # OR on purpose: the filter must stay inside the chunk bounds (it is parenthesized).
    where = "tenant = 'globex' OR id IN (1, 2)"
    signal_id = request_snapshot(source.dsn, connector, articles, where)
    outcome = wait_for_snapshot(source.pipeline.settings, topic, signal_id, marks, 120)
    assert outcome.state == "COMPLETED"
    assert outcome.scans == {str(articles): ("SUCCEEDED", 4)}

    reread = source.changes("articles", start)
    assert sorted(e["key"]["id"] for e in reread) == [1, 2, 3, 4]  # not 5
    assert {e["op"] for e in reread} == {"r"}
    summary = source.run()
    # A bounded run starts with empty chunk state, so the reads reach the embed stage;
    # it finds every vector in the store, and the index stage's version guard keeps row
    # 1's streamed update (an LSN) over its re-read (version 0). Nothing moves.
    assert " 0 chunks embedded" in summary, summary
    assert {doc_id: source.stored(doc_id) for doc_id in ids} == before


@pytest.mark.parametrize(
    ("table", "where", "words"),
    [
        ("nope", None, "does not capture"),
        ("articles", "no_such_column = 1", "not a valid condition"),
        ("articles", "id = ", "not a valid condition"),
        ("articles", "id = 'one'", "not a valid condition"),
        ("articles", "  ", "--filter is empty"),
    ],
)
def test_bad_requests_are_one_line_and_send_nothing(source: Source, table, where, words):
    connector = Connector.of(source.name, source.registry.config(source.name))
    before = signals(source)
    with pytest.raises(SnapshotError) as err:
        request_snapshot(source.dsn, connector, TableName(source.schema, table), where)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert signals(source) == before


def signals(source: Source) -> int:
    with psycopg.connect(source.dsn) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {source.schema}.debezium_signal WHERE type = 'execute-snapshot'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_cli_says_what_is_wrong_in_one_line(source: Source):
    done = subprocess.run(
        [CLI, "connect", "snapshot", f"{source.schema}.articles;drop", "--connector", source.name],
        env=source.pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("streamrag: error: table must be schema.table")
    assert done.stderr.count("\n") == 1


def _pairs(source: Source, table: str) -> list:
    return [
        (json.loads(m.key), json.loads(m.value) if m.value else None)
        for m in cdc_records(source.pipeline.settings, source.topic(table))
    ]


def _has_title(source: Source, title: str) -> bool:
    return any(e["op"] == "u" and e["after"]["title"] == title for e in source.changes("articles"))
