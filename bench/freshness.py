"""PostgreSQL commit -> searchable latency through Debezium, Kafka and the ingest job.

Bench: a private copy of the sample schema (own publication, slot, topic prefix)
  -> the ingest job runs unbounded (as in production) with the Debezium connector
  -> ROWS rows are inserted and indexed (warm-up)
  -> each row is updated once, RATE updates a second (5, and 50 in a second run), with a
     one-chunk body
  -> latency of a row = indexed_at_ms - source_ts_ms (the commit time Debezium reports),
     both stored on the chunk itself, so no polling skews the figure.
  -> with ``scrape_metrics``, Flink's Prometheus reporter is scraped before the job stops:
     its freshness histogram and chunk counters must agree with what was written and with
     the index (``{label}_metrics_agree``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from pymilvus import MilvusException

from bench.cleanup import cleanup
from connect.registry import ConnectRegistry, connect_url, load_connector_file
from jobs.chunking.planner import chunk_id
from streamrag import generations
from streamrag.config import PROJECT_ROOT, CdcConfig, Settings, isolated_env, load_settings
from streamrag.kafka import delete_topics
from streamrag.local.stack import postgres_dsn
from streamrag.metrics import OPERATOR_PREFIX, operator_total, scrape
from streamrag.migrate import drop_replication_slot
from streamrag.stores import open_store
from streamrag.stores.base import StoreError

ROWS, RATE = 150, 5.0
METRICS_PORT = 19249
CONNECTOR_FILE = PROJECT_ROOT / "connect" / "postgres-source.json"
CLI = str(Path(sys.executable).with_name("streamrag"))


def body(i: int, round_: int) -> str:
    return (
        f"Article {i}, revision {round_}: the index must show this revision soon after "
        f"the commit, because readers of article {i} expect fresh answers."
    )


def wait_for(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"bench: timed out waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def freshness_figures(
    rate: float = RATE, rows: int = ROWS, label: str = "freshness", scrape_metrics: bool = False
) -> dict[str, float]:
    """Commit -> indexed latencies at ``rate`` updates a second, as ``{label}_p50_ms`` etc."""
    base = load_settings()
    tag = uuid.uuid4().hex[:8]
    schema, prefix, dsn = f"kbf_{tag}", f"cdcf_{tag}", postgres_dsn(base)
    ddl = (PROJECT_ROOT / "sql/source/001_articles.sql").read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(re.sub(r"\bkb\b", schema, ddl).replace("streamrag_pub", f"pub_{tag}"))
    # The sample schema's own mapping (the defaults): the caller's environment may have
    # overridden cdc.tables for its own isolated run (bench/run.py sets none).
    sample = CdcConfig().tables["cdc.kb.articles"]
    tables = {f"{prefix}.{schema}.articles": sample.model_dump()}
    env = {
        **os.environ,
        **isolated_env(
            f"fresh{tag}",
            CDC__TABLES=json.dumps(tables),
            FLINK__BUNDLE_TIME_MS="20",
            FLINK__BUNDLE_SIZE="10",
            **({"FLINK__PROMETHEUS_PORT": str(METRICS_PORT)} if scrape_metrics else {}),
        ),
    }
    os.environ.update(env)
    settings = load_settings()

    _, config = load_connector_file(CONNECTOR_FILE, settings)
    name = f"streamrag-fresh-{tag}"
    config.update(
        {
            "slot.name": f"slot_{tag}",
            "publication.name": f"pub_{tag}",
            "topic.prefix": prefix,
            "table.include.list": f"{schema}.articles",
            "poll.interval.ms": "20",
        }
    )
    registry = ConnectRegistry(connect_url(settings))
    conn = psycopg.connect(dsn, autocommit=True)
    job = None
    metrics: dict[str, float] = {}
    try:
        registry.apply(name, config)
        registry.wait_running(name, 60)
        job = subprocess.Popen(
            [CLI, "run"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {schema}.articles (id, tenant, title, body)"
                " VALUES (%s, 'acme', %s, %s)",
                [(i, f"Article {i}", body(i, 0)) for i in range(rows)],
            )
        store = open_store(settings.store)
        ids = [chunk_id(f"{schema}.articles:{i}", 0) for i in range(rows)]
        wait_for(
            lambda: _safe_count(settings, store, ids) == rows, 300, "the warm-up rows to be indexed"
        )

        start_all = time.monotonic()
        for i in range(rows):
            start = time.monotonic()
            conn.execute(
                f"UPDATE {schema}.articles SET body = %s, updated_at = now() WHERE id = %s",
                (body(i, 1), i),
            )
            time.sleep(max(0.0, 1 / rate - (time.monotonic() - start)))
        achieved = rows / (time.monotonic() - start_all)
        wait_for(
            lambda: all("revision 1" in c.text for c in store.get(ids)),
            120,
            "the updates to be indexed",
        )
        latencies = [c.indexed_at_ms - c.source_ts_ms for c in store.get(ids)]
        if scrape_metrics:
            metrics = metrics_figures(label, events=2 * rows, indexed=store.count())
        store.close()  # dropped by cleanup() below
    finally:
        if job is not None:
            job.terminate()
            job.wait(60)
        registry.delete(name, missing_ok=True)
        cleanup(settings)  # after the connector, which would make its topic again
        # and the connector's own heartbeat topic (Debezium's default name)
        delete_topics(settings, [f"__debezium-heartbeat.{prefix}"])
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"DROP PUBLICATION IF EXISTS pub_{tag}")
        conn.close()
        drop_replication_slot(dsn, f"slot_{tag}")
    return {
        **metrics,
        f"{label}_p50_ms": round(percentile(latencies, 0.5)),
        f"{label}_p99_ms": round(percentile(latencies, 0.99)),
        f"{label}_updates": len(latencies),
        f"{label}_updates_per_s": round(achieved, 1),
    }


def metrics_figures(label: str, events: int, indexed: int) -> dict[str, float]:
    """What the running job's Prometheus endpoint says, once it caught up: ``events``
    document events (an insert, then an update, of each row), each a freshness
    observation and one chunk written, over an index of ``indexed`` chunks."""
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    wait_for(
        lambda: operator_total(scrape(url), "freshness_ms_count") >= events,
        60,
        "the job's metrics to catch up",
    )
    samples = scrape(url)
    counted = operator_total(samples, "freshness_ms_count")
    written = operator_total(samples, "chunks_indexed")
    inf = sum(
        v
        for labels, v in samples.get(f"{OPERATOR_PREFIX}le_freshness_ms_bucket", [])
        if labels.get("le") == "+Inf"
    )
    return {
        f"{label}_metrics_freshness_count": counted,
        f"{label}_metrics_chunks_indexed": written,
        f"{label}_metrics_freshness_p99_ms": operator_total(samples, "freshness_ms_p99"),
        f"{label}_metrics_agree": counted == inf == written == events and indexed * 2 == events,
    }


def _safe_count(settings: Settings, store, ids: list[str]) -> int:  # type: ignore[no-untyped-def]
    if generations.serving(settings) is None:  # the job has not created it yet
        return 0
    try:
        return len(store.get(ids))
    except (StoreError, MilvusException):  # the collection appears with the first write
        return 0


if __name__ == "__main__":
    print(json.dumps(freshness_figures()))
