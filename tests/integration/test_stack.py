"""The local stack really runs: PostgreSQL+pgvector, Kafka, Connect+Debezium, Milvus Lite,
the Milvus server.

``up()`` is idempotent, so this brings the stack up if needed and leaves it running for
the other integration tests (``down`` is not tested here).
"""

from __future__ import annotations

import contextlib
import threading

import psutil
import psycopg
import pytest
import requests

from jobs.indexing.apply import apply_records
from streamrag.config import MilvusConfig, load_settings
from streamrag.local.milvus import MilvusServer
from streamrag.local.stack import (
    SERVICE_NAMES,
    down,
    pids,
    postgres_dsn,
    status,
    store_config,
    up,
)
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores import open_store
from streamrag.stores.base import StoreError, Trim
from streamrag.stores.milvus import MilvusStore
from tests.integration.conftest import settings_with


@pytest.fixture(scope="module")
def settings():
    s = load_settings()
    up(s)
    return s


def test_all_services_up(settings):
    # Every service but the secured stack's TLS door for PostgreSQL (stack up --secure).
    assert status(settings) == {name: True for name in SERVICE_NAMES if name != "postgres-tls"}


def test_second_up_changes_no_pid(settings):
    before = pids(settings)
    assert all(before.values())
    up(settings)
    assert pids(settings) == before


def test_postgres_has_pgvector_and_logical_wal(settings):
    with psycopg.connect(postgres_dsn(settings), connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        assert row is not None
        assert conn.execute("SHOW wal_level").fetchone()[0] == "logical"


def test_connect_lists_postgres_connector(settings):
    port = settings.stack.connect_port
    resp = requests.get(f"http://127.0.0.1:{port}/connector-plugins", timeout=10)
    resp.raise_for_status()
    classes = {plugin["class"] for plugin in resp.json()}
    assert "io.debezium.connector.postgresql.PostgresConnector" in classes


def test_a_missing_topic_is_one_clear_error_at_once(settings):
    import time

    from streamrag.kafka import TopicMissing, read_log

    start = time.monotonic()
    with pytest.raises(TopicMissing, match="topic no-such-topic-here does not exist"):
        list(read_log(settings, "no-such-topic-here"))
    assert time.monotonic() - start < 10  # not retried as if a leader were being elected


def test_milvus_lite_flushes_its_memtable_at_the_configured_budget(settings):
    # The running server got the budget (read once at its import: a restart applies a change).
    pid = pids(settings)["milvus"]
    env = psutil.Process(pid).environ()
    budget = int(settings.stack.milvus_memtable_mb * 2**20)
    assert env["MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES"] == str(budget)
    # ... and serves one request at a time (see the next test).
    assert "--max-workers 1" in " ".join(psutil.Process(pid).cmdline())


def test_milvus_lite_loses_no_trim_to_concurrent_writers(tmp_path):
    # Index instances write one Milvus Lite server at once (the job at parallelism 2 and
    # more). Milvus Lite 3.2 swaps its memtable for a new one at each flush before the
    # flushed rows are readable in a segment, with nothing between the swap and requests
    # served on other threads: a delete-by-filter in that moment finds neither, and a
    # deleted document stays in the index for good. The stack's server serves one
    # request at a time. Here four writers create and delete documents against a server
    # of the stack's making with a tiny memtable (a flush every few requests); with the
    # server's own 10 request threads this left deleted chunks in 6 of 7 runs.
    settings = settings_with(
        {
            "STREAMRAG_STACK__WORK_DIR": str(tmp_path),
            "STREAMRAG_STACK__MILVUS_PORT": "29641",
            "STREAMRAG_STACK__MILVUS_MEMTABLE_MB": "0.0625",
        }
    )
    errors: list[BaseException] = []

    def churn(config: MilvusConfig, writer: int) -> None:
        store = MilvusStore(config, "churn")
        try:
            for d in range(400):
                doc = f"w{writer}-{d}"
                chunks = [
                    EmbeddingRecord(
                        ChunkRecord(f"{doc}-{i}", doc, 1, "upsert", i, text=f"chunk {i}"),
                        "m",
                        [0.25] * 16,
                    )
                    for i in range(4)
                ]
                apply_records(store, chunks)
                store.trim([Trim(doc, 0, 1)])
        except BaseException as e:
            errors.append(e)
        finally:
            store.close()

    up(settings, ["milvus"])
    config = MilvusConfig(uri=f"http://127.0.0.1:{settings.stack.milvus_port}")
    try:
        with contextlib.closing(MilvusStore(config, "churn")) as first:
            first.ensure(16)
            threads = [threading.Thread(target=churn, args=(config, w)) for w in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors[0]
            left = first.all_ids()
        assert left == [], f"{len(left)} chunks of deleted documents left, e.g. {left[:4]}"
    finally:
        down(settings)


def test_the_milvus_server_lets_in_only_its_token_and_keeps_etcd_on_loopback(settings):
    config = store_config(settings, "milvus-server")
    assert isinstance(config, MilvusConfig)
    anonymous = config.model_copy(
        update={"security": config.security.model_copy(update={"token_file": None})}
    )
    with pytest.raises(StoreError, match="refused the token"):
        open_store(anonymous, "t_anonymous")
    store = open_store(config, "t_anonymous")
    try:
        assert store.server.version.startswith("v2.3")  # type: ignore[attr-defined]
    finally:
        store.close()
    # What the README says it opens: the proxy and the internal ports; etcd on loopback.
    pid = pids(settings)["milvus-server"]
    assert pid is not None
    listening = {
        c.laddr.port: c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    server = MilvusServer(settings)
    assert set(listening) <= set(server.ports)
    assert server.ports[0] in listening
    for key in ("etcd_port", "etcd_peer_port"):
        assert listening[server.port(key)] == "127.0.0.1"
