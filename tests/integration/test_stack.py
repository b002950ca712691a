"""The local stack really runs: PostgreSQL+pgvector, Kafka, Connect+Debezium, Milvus Lite.

``up()`` is idempotent, so this brings the stack up if needed and leaves it running for
the other integration tests (``down`` is not tested here).
"""

from __future__ import annotations

import psutil
import psycopg
import pytest
import requests

from streamrag.config import load_settings
from streamrag.local.stack import SERVICE_NAMES, pids, postgres_dsn, status, up

pytestmark = pytest.mark.integration


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
