"""CDC end to end: PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> PyFlink -> Milvus.

One module-wide source per run: the real sql/source DDL under a unique schema, its own
publication, slot, topic prefix and connector, all removed at the end. The ingest job runs
unbounded for the whole module, as in production; every test makes its changes in
PostgreSQL and waits until the index shows them (and the job dead-lettered nothing).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import string
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from connect.registry import (
    DEFAULT_CONNECTOR_FILE,
    ConnectError,
    ConnectRegistry,
    connect_url,
    load_connector_file,
)
from jobs.chunking.cdc import UNAVAILABLE, parse_cdc_record
from jobs.chunking.planner import DocState, chunk_id, is_stale
from jobs.chunking.stage import ChunkStage
from streamrag.config import PROJECT_ROOT, Settings
from streamrag.kafka import Message, TopicMissing, read_log
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.local.stack import postgres_dsn
from streamrag.migrate import apply_migrations, drop_replication_slot
from streamrag.models import resolve_model
from streamrag.records import DocumentEvent, Origin
from tests.integration.conftest import Pipeline, make_pipeline
from tests.integration.live import LiveJob

SMALL = "Log compaction keeps the latest record of every key. " * 4


def toast_body(chars: int = 9000) -> str:
    """Random words: pglz cannot compress them, so the value is stored out of line."""
    rng = random.Random(7)
    words = (
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(chars // 6)
    )
    return " ".join(words)


@dataclass
class Cdc:
    tag: str
    schema: str
    slot: str
    name: str
    config: dict[str, str]
    dsn: str
    registry: ConnectRegistry
    pipeline: Pipeline
    live: LiveJob | None = None

    def topic(self, table: str) -> str:
        return f"{self.config['topic.prefix']}.{self.schema}.{table}"

    def sql(self, statement: str, params: tuple = ()) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement.replace("{s}", self.schema), params or None)

    def events(self, table: str) -> list[tuple[dict, dict | None]]:
        return [
            (json.loads(m.key), json.loads(m.value) if m.value else None)
            for m in cdc_records(self.pipeline.settings, self.topic(table))
        ]

    def wait_for(self, table: str, done: Callable[[list], bool], timeout: float = 90) -> list:
        def ready() -> list | None:
            events = self.events(table)
            return events if done(events) else None

        return poll(ready, timeout, f"Debezium events in {table}")

    def until_indexed(self, check: Callable[[], object], timeout_s: float = 120) -> None:
        """Wait until ``check`` (assertions on the index) passes; then no record of the
        CDC topics may have been dead-lettered."""
        assert self.live is not None, "no job runs for this source"
        deadline = time.monotonic() + timeout_s
        while True:
            self.live.job.check_running()
            try:
                check()
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.live.settle()  # a checkpoint after: the dead-letter sink has flushed
        ours = {self.topic("articles"), self.topic("faq")}
        letters = [d for d in self.pipeline.dead_letters() if d["origin"]["topic"] in ours]
        assert letters == []


def cdc_records(settings: Settings, topic: str) -> list[Message]:
    """The records of a Debezium topic so far; none while Debezium has not created it."""
    try:
        return list(read_log(settings, topic, timeout_s=10))
    except TopicMissing:
        return []


def poll(check: Callable[[], object], timeout: float, what: str) -> object:
    """The first truthy result of ``check``, polled until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return result


def has(op: str, **key: object) -> Callable[[list], bool]:
    return lambda events: any(k == key and v and v["op"] == op for k, v in events)


def expected_chunks(settings: Settings, doc_id: str, text: str, content_type: str) -> list[str]:
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    event = DocumentEvent(
        doc_id=doc_id,
        version=1,
        source="t",
        origin=Origin("t", 0, 0),
        text=text,
        content_type=content_type,
    )
    return [span.text for span in stage.spans(event)]


def assert_indexed(cdc: Cdc, doc_id: str, text: str, content_type: str = "markdown") -> list:
    texts = expected_chunks(cdc.pipeline.settings, doc_id, text, content_type)
    store = cdc.pipeline.store()
    try:
        ids = [chunk_id(doc_id, i) for i in range(len(texts))]
        assert sorted(store.doc_chunk_ids(doc_id)) == sorted(ids)
        chunks = store.get(ids)
    finally:
        store.close()
    assert [c.text for c in chunks] == texts
    assert all(UNAVAILABLE not in c.text for c in chunks)
    return chunks


def assert_gone(cdc: Cdc, doc_id: str) -> None:
    store = cdc.pipeline.store()
    assert store.doc_chunk_ids(doc_id) == []
    store.close()


def delete_topics(settings: Settings, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    for future in admin.delete_topics(topics).values():
        future.exception()  # waits; a topic that never existed is fine


def drop_slot(dsn: str, slot: str) -> None:
    assert drop_replication_slot(dsn, slot, timeout_s=30), f"slot {slot} stayed active"


@pytest.fixture(scope="module")
def cdc(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cdc]:
    tag = uuid.uuid4().hex[:8]
    schema, prefix, dsn = f"kb_{tag}", f"cdc_{tag}", postgres_dsn(stack)
    ddl = (PROJECT_ROOT / "sql/source/001_articles.sql").read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(re.sub(r"\bkb\b", schema, ddl).replace("streamrag_pub", f"pub_{tag}"))
    defaults = stack.cdc.tables
    tables = {
        f"{prefix}.{schema}.{t}": defaults[f"cdc.kb.{t}"].model_dump() for t in ("articles", "faq")
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAMRAG_CDC__TABLES", json.dumps(tables))
        pipeline = make_pipeline(stack, "milvus")
    _, config = load_connector_file(DEFAULT_CONNECTOR_FILE, stack)
    config.update(
        {
            "slot.name": f"slot_{tag}",
            "publication.name": f"pub_{tag}",
            "topic.prefix": prefix,
            "table.include.list": f"{schema}.articles,{schema}.faq",
        }
    )
    world = Cdc(
        tag,
        schema,
        f"slot_{tag}",
        f"streamrag-test-{tag}",
        config,
        dsn,
        ConnectRegistry(connect_url(stack)),
        pipeline,
    )
    world.sql(
        "INSERT INTO {s}.articles (id, tenant, title, body, tags) VALUES"
        " (1, 'acme', 'Compaction', %s, '{kafka}'), (2, 'acme', 'Big', %s, '{toast}'),"
        " (3, 'globex', 'Doomed', %s, '{}')",
        (SMALL, toast_body(), SMALL),
    )
    world.sql(
        "INSERT INTO {s}.faq VALUES ('acme', 'reset', 'How do I reset?', 'Click reset.'),"
        " ('acme', 'rotate', 'How do I rotate keys?', 'Use the console.')"
    )
    try:
        world.registry.apply(world.name, config)
        world.live = LiveJob.start(pipeline, tmp_path_factory.mktemp("cdc-job"))
        world.registry.wait_running(world.name, 60)
        yield world
        assert world.live.restarts() == 0, "the job restarted (see its log)"
    finally:
        if world.live is not None:
            world.live.stop()
            shutil.rmtree(checkpoints_dir(pipeline.settings, bounded=False).parent, True)
        world.registry.delete(world.name, missing_ok=True)
        drop_slot(dsn, world.slot)
        world.sql(f"DROP PUBLICATION IF EXISTS pub_{tag}; DROP SCHEMA IF EXISTS {{s}} CASCADE")
        delete_topics(stack, [*tables, f"__debezium-heartbeat.{prefix}"])
        world.registry.close()


def test_snapshot_indexes_existing_rows(cdc):
    cdc.wait_for("articles", lambda ev: sum(1 for _, v in ev if v and v["op"] == "r") == 3)
    cdc.wait_for("faq", has("r", tenant="acme", slug="rotate"))

    def snapshot_indexed() -> None:
        (chunk, *_) = assert_indexed(cdc, f"{cdc.schema}.articles:1", f"Compaction\n\n{SMALL}")
        assert chunk.source == f"{cdc.schema}.articles"
        assert chunk.metadata == {"tags": ["kafka"], "tenant": "acme"}
        assert chunk.version == 0 and chunk.title == "Compaction"
        assert_indexed(cdc, f"{cdc.schema}.articles:2", f"Big\n\n{toast_body()}")
        reset = "How do I reset?\n\nClick reset."
        assert_indexed(cdc, f"{cdc.schema}.faq:acme:reset", reset, "text")

    cdc.until_indexed(snapshot_indexed)


def test_insert_update_delete_propagate(cdc):
    new_body = "Debezium reads the write-ahead log. " * 30
    cdc.sql(
        "INSERT INTO {s}.articles (id, tenant, title, body) VALUES (10, 'acme', 'New', %s)",
        (new_body,),
    )
    cdc.sql("UPDATE {s}.articles SET body = 'Short now.' WHERE id = 1")
    cdc.sql("DELETE FROM {s}.articles WHERE id = 3")
    cdc.sql("INSERT INTO {s}.faq VALUES ('globex', 'sso', 'SSO?', NULL)")
    cdc.sql("UPDATE {s}.faq SET answer = 'Press the reset button.' WHERE slug = 'reset'")
    cdc.sql("DELETE FROM {s}.faq WHERE slug = 'rotate'")
    cdc.wait_for(
        "articles",
        lambda ev: has("c", id=10)(ev) and has("u", id=1)(ev) and (({"id": 3}, None) in ev),
    )  # the delete's tombstone comes last
    cdc.wait_for(
        "faq",
        lambda ev: (
            has("d", tenant="acme", slug="rotate")(ev) and has("c", tenant="globex", slug="sso")(ev)
        ),
    )

    def changes_indexed() -> None:
        (chunk,) = assert_indexed(cdc, f"{cdc.schema}.articles:1", "Compaction\n\nShort now.")
        assert chunk.version > 0  # the LSN of the update
        assert_indexed(cdc, f"{cdc.schema}.articles:10", f"New\n\n{new_body}")
        assert_gone(cdc, f"{cdc.schema}.articles:3")
        assert_indexed(cdc, f"{cdc.schema}.faq:globex:sso", "SSO?", "text")
        reset = "How do I reset?\n\nPress the reset button."
        assert_indexed(cdc, f"{cdc.schema}.faq:acme:reset", reset, "text")
        assert_gone(cdc, f"{cdc.schema}.faq:acme:rotate")

    cdc.until_indexed(changes_indexed)


def test_update_of_a_non_text_column_keeps_the_toasted_body(cdc):
    with psycopg.connect(cdc.dsn) as conn:  # the body really is stored out of line
        toast = conn.execute(
            "SELECT reltoastrelid::regclass FROM pg_class WHERE oid = %s::regclass",
            [f"{cdc.schema}.articles"],
        ).fetchone()[0]
        assert conn.execute(f"SELECT count(*) FROM {toast}").fetchone()[0] > 0
    cdc.sql("UPDATE {s}.articles SET tags = '{toast,updated}' WHERE id = 2")
    events = cdc.wait_for(
        "articles",
        lambda ev: any(
            k == {"id": 2} and v and v["op"] == "u" and "updated" in v["after"]["tags"]
            for k, v in ev
        ),
    )
    (update,) = [v for k, v in events if k == {"id": 2} and v and v["op"] == "u"]
    assert update["before"]["body"] == toast_body()  # what REPLICA IDENTITY FULL buys

    def body_kept() -> None:
        chunks = assert_indexed(cdc, f"{cdc.schema}.articles:2", f"Big\n\n{toast_body()}")
        assert {tuple(c.metadata["tags"]) for c in chunks} == {("toast", "updated")}

    cdc.until_indexed(body_kept)


def test_applying_the_connector_twice_is_harmless(cdc):
    assert cdc.registry.apply(cdc.name, cdc.config) is False  # updated in place, not created
    status = cdc.registry.wait_running(cdc.name, 60)
    assert len(status["tasks"]) == 1
    cdc.sql("INSERT INTO {s}.articles (id, tenant, title, body) VALUES (30, 'acme', 'T', 'B')")

    events = cdc.wait_for("articles", has("c", id=30))
    assert sum(1 for k, v in events if k == {"id": 1} and v and v["op"] == "r") == 1
    assert sum(1 for k, v in events if k == {"id": 30}) == 1


def test_restarted_connector_resumes_without_loss_or_duplicates(cdc):
    cdc.sql("INSERT INTO {s}.articles (id, tenant, title, body) VALUES (25, 'acme', 'T', 'B')")
    cdc.registry.restart(cdc.name, include_tasks=True)
    for i in range(20, 25):  # while the task stops and starts again
        cdc.sql(
            "INSERT INTO {s}.articles (id, tenant, title, body) VALUES (%s, 'acme', %s, %s)",
            (i, f"Doc {i}", f"Body of document {i}. " * 5),
        )
    cdc.sql("UPDATE {s}.articles SET title = 'Restarted' WHERE id = 25")
    cdc.registry.wait_running(cdc.name, 60)
    cdc.sql("INSERT INTO {s}.articles (id, tenant, title, body) VALUES (29, 'acme', 'S', 'End')")

    # Debezium emits in commit order: once the sentinel is there, so is any replay.
    events = cdc.wait_for("articles", has("c", id=29))
    for i in range(20, 25):
        assert sum(1 for k, v in events if k == {"id": i}) == 1
    assert sum(1 for k, v in events if v and v["after"] and v["after"]["title"] == "Restarted") == 1

    def all_indexed() -> None:
        for i in range(20, 25):
            body = f"Body of document {i}. " * 5
            assert_indexed(cdc, f"{cdc.schema}.articles:{i}", f"Doc {i}\n\n{body}")
        assert_indexed(cdc, f"{cdc.schema}.articles:25", "Restarted\n\nB")

    cdc.until_indexed(all_indexed)


def written_while_down(i: int) -> str:
    return f"Written while down {i}. " * 4


def test_a_killed_connect_worker_resumes_without_loss_or_regression(cdc, stack):
    from streamrag.local.stack import pids, up

    cdc.sql("INSERT INTO {s}.articles (id, tenant, title, body) VALUES (40, 'acme', 'T', 'B')")
    cdc.wait_for("articles", has("c", id=40))
    worker = psutil.Process(pids(stack)["connect"])
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    for i in range(41, 45):  # committed while no worker runs
        cdc.sql(
            "INSERT INTO {s}.articles (id, tenant, title, body) VALUES (%s, 'acme', %s, %s)",
            (i, f"Doc {i}", written_while_down(i)),
        )
    cdc.sql("UPDATE {s}.articles SET title = 'Updated while down' WHERE id = 40")
    up(stack, ["connect"])
    cdc.registry.wait_running(cdc.name, 120)
    cdc.sql("INSERT INTO {s}.articles (id, tenant, title, body) VALUES (49, 'acme', 'S', 'End')")

    events = cdc.wait_for("articles", has("c", id=49), timeout=180)
    for i in range(41, 45):  # none lost (a replay after the kill may repeat some)
        assert any(k == {"id": i} for k, _ in events), f"row {i} was lost"

    def none_lost_none_regressed() -> None:
        for i in range(41, 45):
            written = f"Doc {i}\n\n{written_while_down(i)}"
            assert_indexed(cdc, f"{cdc.schema}.articles:{i}", written)
        # A re-delivered older create of row 40 must not win over its later update.
        assert_indexed(cdc, f"{cdc.schema}.articles:40", "Updated while down\n\nB")

    cdc.until_indexed(none_lost_none_regressed)


def test_transaction_straddling_the_snapshot_is_not_lost(cdc):
    """Open across the slot's consistent point, a transaction commits after the snapshot
    but wrote *below* the snapshot's LSN; its update must still beat the snapshot row."""
    cdc.sql(
        "INSERT INTO {s}.faq VALUES ('s', 'a', 'A?', 'a0'), ('s', 'b', 'B?', 'b0'),"
        " ('s', 'c', 'C?', 'c0')"
    )
    name, slot, prefix = f"{cdc.name}-straddle", f"{cdc.slot}_straddle", f"straddle_{cdc.tag}"
    topic, key = f"{prefix}.{cdc.schema}.faq", {"tenant": "s", "slug": "c"}
    config = {
        **cdc.config,
        "slot.name": slot,
        "topic.prefix": prefix,
        "table.include.list": f"{cdc.schema}.faq",
    }
    control, *txs = (psycopg.connect(cdc.dsn, autocommit=i == 0) for i in range(4))

    def reads(topic: str, key: dict) -> list:
        return [
            m
            for m in cdc_records(cdc.pipeline.settings, topic)
            if m.value and json.loads(m.key) == key
        ]

    def update(tx: psycopg.Connection, slug: str) -> None:
        tx.execute(f"UPDATE {cdc.schema}.faq SET answer = %s WHERE slug = %s", [slug + "1", slug])

    def mark() -> None:  # an xl_running_xacts record moves the slot's snapshot builder on
        control.execute("SELECT pg_log_standby_snapshot()")

    try:
        update(txs[0], "a")  # slot creation waits for this transaction to end
        cdc.registry.apply(name, config)
        poll(
            lambda: control.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type ="
                " 'Lock' AND query LIKE 'CREATE_REPLICATION_SLOT%'"
            ).fetchone(),
            60,
            "the slot creation",
        )
        update(txs[1], "b")
        txs[0].commit()
        mark()  # full snapshot: transactions that start now are decoded whole
        update(txs[2], "c")  # the straddler: decoded, yet not in the exported snapshot
        txs[1].commit()
        mark()  # consistent point = the snapshot's LSN, with "c" still open
        cdc.registry.wait_running(name, 60)
        poll(lambda: reads(topic, key), 90, "the snapshot read")
        txs[2].commit()
        messages = poll(lambda: len(m := reads(topic, key)) == 2 and m, 90, "the update")
    finally:
        for conn in (control, *txs):
            conn.close()
        cdc.registry.delete(name, missing_ok=True)
        drop_slot(cdc.dsn, slot)
        delete_topics(cdc.pipeline.settings, [topic, f"__debezium-heartbeat.{prefix}"])
    table = cdc.pipeline.settings.cdc.tables[cdc.topic("faq")]
    snapshot, change = (
        parse_cdc_record(
            m.key, m.value, Origin(m.topic, m.partition, m.offset), m.timestamp_ms, table
        )
        for m in messages
    )
    raw = [json.loads(m.value) for m in messages]
    assert [r["after"]["answer"] for r in raw] == ["c0", "c1"]
    assert raw[1]["source"]["lsn"] < raw[0]["source"]["lsn"]  # the LSN really goes back
    state = DocState(
        snapshot.version,
        origin=(snapshot.origin.topic, snapshot.origin.partition, snapshot.origin.offset),
    )
    assert not is_stale(state, change)


def test_wrong_password_is_one_clear_line(cdc, tmp_path: Path):
    secret = tmp_path / "wrong.properties"
    secret.write_text("password=not-the-password\n")
    name = f"{cdc.name}-badpw"
    config = {
        **cdc.config,
        "slot.name": f"{cdc.slot}_badpw",
        "database.password": f"${{file:{secret}:password}}",
    }
    try:
        with pytest.raises(ConnectError) as err:
            cdc.registry.apply(name, config)  # Debezium validates the login on PUT
            cdc.registry.wait_running(name, 60)
    finally:
        cdc.registry.delete(name, missing_ok=True)
    message = str(err.value)
    assert "\n" not in message and "authentication failed" in message
    assert "not-the-password" not in message


def test_failed_task_is_reported_with_its_cause(cdc):
    name = f"{cdc.name}-nopub"
    config = {
        **cdc.config,
        "slot.name": f"{cdc.slot}_nopub",
        "publication.name": f"missing_{cdc.tag}",
    }
    try:
        cdc.registry.apply(name, config)
        with pytest.raises(ConnectError) as err:
            cdc.registry.wait_running(name, 60)
    finally:
        cdc.registry.delete(name, missing_ok=True)
        drop_slot(cdc.dsn, f"{cdc.slot}_nopub")
    message = str(err.value)
    assert "\n" not in message and "FAILED" in message and "ublication" in message


def test_migrate_applies_the_source_schema_once(stack):
    apply_migrations(postgres_dsn(stack))
    assert apply_migrations(postgres_dsn(stack)) == []
    with psycopg.connect(postgres_dsn(stack)) as conn:
        identities = dict(
            conn.execute(
                "SELECT relname, relreplident FROM pg_class WHERE relnamespace = 'kb'::regnamespace"
                " AND relkind = 'r'"
            ).fetchall()
        )
        published = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = 'streamrag_pub'"
            )
        }
    assert identities == {"articles": "f", "faq": "d", "debezium_signal": "d"}
    assert published == {"articles", "faq", "debezium_signal"}  # signals too (002)
