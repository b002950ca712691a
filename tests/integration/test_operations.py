"""Operating the pipeline (issue 13), on the real stack:

- the metrics that Flink's Prometheus reporter serves for a running job agree with the
  index (freshness histogram, chunks, dead letters by reason), and the shipped alert
  rules and Grafana dashboard parse and name only metrics of that scrape;
- `streamrag status` reports the job, its lag, dead letters and the index, and fails as
  a probe when something is wrong;
- a local job killed outright resumes from its latest checkpoint, with its state: it
  chunks nothing again that it had processed;
- a local job killed mid-wave and followed by a job without state (from the committed
  offsets) leaves the index a clean run gives;
(Upgrades and rescaling through savepoints on a cluster: tests/integration/test_faults.py.)
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import promql_parser
import yaml

from streamrag import generations
from streamrag.config import PROJECT_ROOT, Settings
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.metrics import OPERATOR_PREFIX as OPERATOR
from streamrag.metrics import Samples, operator_total
from streamrag.metrics import scrape as read_metrics
from tests.integration.conftest import CLI, Pipeline, make_pipeline
from tests.integration.harness import (
    Job,
    chunk_records,
    crash_mid_way,
    document,
    expected_index,
    index_now,
    poll,
    without,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    return read_metrics(f"http://127.0.0.1:{port}/metrics")


def total(samples: Samples, name: str) -> float:
    return operator_total(samples, name)


def metric_names(expr: str) -> set[str]:
    promql_parser.parse(expr)  # raises on a malformed expression
    return set(re.findall(r"\bflink_[A-Za-z0-9_]+", expr))


def shipped_expressions() -> list[str]:
    monitoring = PROJECT_ROOT / "k8s" / "monitoring"
    rules = yaml.safe_load((monitoring / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((monitoring / "dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return exprs


# The first documents of a job wait for its start (the model loads, the first bundles):
# the freshness objective here is loose, the check itself is what is tested.
LOOSE = ["--freshness-p99-ms", "600000"]


def status(p: Pipeline) -> tuple[int, dict]:
    done = subprocess.run(
        [CLI, "status", "--json", *LOOSE], env=p.env, capture_output=True, text=True, timeout=120
    )
    return done.returncode, json.loads(done.stdout)


def check(report: dict, name: str) -> dict:
    (found,) = [c for c in report["checks"] if c["name"] == name]
    return dict(found)


def test_one_local_job_life_metrics_a_kill_a_resume_and_a_crash_without_state(
    stack: Settings, tmp_path: Path
):
    """Three local job lives in a row, on one pipeline (what a person on call sees):

    1. The job's metrics agree with the index; the shipped alert rules and dashboard name
       only scraped metrics; `streamrag status` reports the job, lag, dead letters and the
       index, and fails as a probe on the dead letter; killed after a checkpoint, the probe
       says the job is gone.
    2. Started again, the job resumes from that checkpoint with its state: it chunks
       nothing again that it had processed, not even a document sent again unchanged.
    3. Killed mid-wave (some but not all of a wave of changes indexed), and followed by a
       job without state (a bounded run from the committed offsets), the index equals what
       a clean run gives (DESIGN.md invariant 1).

    Over 120 s: three job starts (~30 s each here), which are the subject."""
    p = make_pipeline(stack, "pgvector")
    p.env["STREAMRAG_FLINK__PROMETHEUS_PORT"] = str(free_port())
    # Small cross-document batches in small Python bundles: a wave is indexed in many
    # writes spread over its embedding, so that a crash can land in the middle of it. (A
    # bundle's output leaves the Python worker when the bundle ends: with the default
    # bundles, a wave's batches can reach the index within a fraction of a second, and
    # a busy machine's poll missed the middle of it.)
    p.env["STREAMRAG_EMBEDDING__MAX_BATCH_CHUNKS"] = "16"
    p.env["STREAMRAG_FLINK__BUNDLE_SIZE"] = "4"
    first = [document(n, 1, parts=3) for n in range(8)]
    try:
        job = Job.start(p, tmp_path / "first.log")
        try:
            metrics_and_status_agree_with_the_index(p, job, first)
        finally:
            job.kill()  # SIGKILL to the client, its JVM and its Python workers
        code, report = status(p)  # without its job, the probe says so
        job_check = check(report, "ingest job")
        assert (
            code == 1 and not job_check["ok"] and "no streamrag-ingest job" in job_check["summary"]
        )

        chunked_first = Counter(r["doc_id"] for r in chunk_records(p.settings))
        job = Job.start(p, tmp_path / "second.log")
        try:
            later = resumed_with_state_chunks_nothing_again(p, job, first, chunked_first)
            want = crash_mid_wave(p, job, first + later)
        finally:
            job.kill()
        p.run()  # a job without state: bounded, from the group's committed offsets
        assert index_now(p) == want
        assert {d["key"] for d in p.dead_letters()} == {"broken"}
    finally:
        shutil.rmtree(checkpoints_dir(p.settings, bounded=False).parent, ignore_errors=True)
        generations.drop_all(p.settings)


def metrics_and_status_agree_with_the_index(p: Pipeline, job: Job, docs: list[dict]) -> None:
    """Life 1: documents and a broken record in, then an older version (stale)."""
    port = int(p.env["STREAMRAG_FLINK__PROMETHEUS_PORT"])
    want = expected_index(p.settings, docs)
    p.produce_docs(docs)
    p.produce([("broken", "{not json")])
    poll(lambda: index_now(p) == want, "the documents indexed", job.check_running)
    p.produce_docs([document(0, 0, parts=3)])  # older than what is indexed: stale
    # Python metrics reach the reporter when a bundle ends: wait until they caught up.
    poll(
        lambda: total(scrape(port), "stale_events") == 1,
        "the metrics to catch up",
        job.check_running,
        timeout_s=60,
    )
    samples = scrape(port)

    # The counters agree with the index and with what was produced.
    assert total(samples, "documents_in") == len(docs) + 1  # the broken record is none
    assert total(samples, "chunks_indexed") == len(want)
    assert total(samples, "chunks_in") == len(want)
    assert total(samples, "chunks_embedded") + total(samples, "chunks_reused") == len(want)
    (letters,) = samples[OPERATOR + "stage_reason_dead_letters"]
    assert (letters[0]["stage"], letters[0]["reason"], letters[1]) == (
        "normalize",
        "BadRecord",
        1,
    )
    # The freshness histogram: one observation per document event, cumulative buckets.
    assert total(samples, "freshness_ms_count") == len(docs)
    buckets = {
        labels["le"]: value for labels, value in samples[OPERATOR + "le_freshness_ms_bucket"]
    }
    assert buckets["+Inf"] == len(docs)
    ordered = sorted(buckets.items(), key=lambda kv: float(kv[0]))
    assert [v for _, v in ordered] == sorted(v for _, v in ordered)
    assert total(samples, "le_store_write_ms_bucket") > 0
    # Kafka: what the source has not read, and offsets per partition.
    assert OPERATOR + "pendingRecords" in samples
    partitions = {
        labels["partition"]
        for labels, _ in samples[OPERATOR + "KafkaSourceReader_topic_partition_committedOffset"]
    }
    assert partitions == {str(n) for n in range(p.settings.kafka.partitions)}

    # The shipped alert rules and dashboard parse and name only scraped metrics.
    named = set().union(*(metric_names(e) for e in shipped_expressions()))
    assert named and named <= set(samples), named - set(samples)

    # streamrag status: all is well but the dead letter, which makes the probe fail.
    poll(
        lambda: check(status(p)[1], "lag")["data"]["total"] == 0,
        "the offsets to be committed",
        job.check_running,
        timeout_s=60,
    )
    code, report = status(p)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and report["ok"] is False
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["dead letters"]
    assert checks["ingest job"]["data"]["state"] == "RUNNING"
    assert checks["checkpoint"]["data"]["id"] >= 1
    assert checks["dead letters"]["data"]["by_reason"] == {"normalize/BadRecord": 1}
    assert checks["index"]["data"]["chunks"] == len(want)
    assert 0 < checks["freshness"]["data"]["p99_ms"] < 60_000
    human = subprocess.run(
        [CLI, "status", *LOOSE], env=p.env, capture_output=True, text=True, timeout=120
    )
    assert human.returncode == 1
    assert re.search(r"^FAIL +dead letters +1 \(normalize/BadRecord 1\)", human.stdout, re.M)
    assert re.search(r"^ok +ingest job +RUNNING", human.stdout, re.M)
    # The lag is 0: a checkpoint after everything above completed; the kill comes after it.


def resumed_with_state_chunks_nothing_again(
    p: Pipeline, job: Job, first: list[dict], chunked_first: Counter[str]
) -> list[dict]:
    """Life 2: documents sent while the job was down, one of the first again unchanged;
    ``job`` resumes from the checkpoint of life 1. Returns the new documents."""
    second = [document(n, 1, parts=3) for n in range(8, 12)]
    p.produce_docs([*second, first[0]])
    want = expected_index(p.settings, first + second)
    poll(lambda: index_now(p) == want, "the restarted job to catch up", job.check_running)
    expected_records = len(expected_index(p.settings, second)) + len(second)  # + trims
    poll(
        lambda: len(chunk_records(p.settings)) >= sum(chunked_first.values()) + expected_records,
        "the chunk records of the new documents",
        job.check_running,
        timeout_s=60,
    )
    assert "resuming from checkpoint" in job.log.read_text()
    chunked = Counter(r["doc_id"] for r in chunk_records(p.settings))
    # Nothing of the first documents was chunked again, not even the one sent again: the
    # restored state knew it unchanged. (A job without state would chunk it anew.)
    assert {d: chunked[d] for d in chunked_first} == dict(chunked_first)
    return second


def crash_mid_wave(p: Pipeline, job: Job, docs: list[dict]) -> dict[str, tuple]:
    """Life 3: a wave of changes (every note shrinks or grows, two are deleted), and the
    whole job killed once some but not all of it is indexed. Returns the index a clean
    run of everything gives."""
    deleted = {"note-01", "note-03"}
    changes = [document(n, 2, parts=4 + n % 3) for n in range(40)]  # ~200 chunks
    changes = [d for d in changes if d["id"] not in deleted]
    p.produce_docs(changes)
    p.produce([(doc_id, None) for doc_id in sorted(deleted)])
    want = without(expected_index(p.settings, docs + changes), deleted)
    crash_mid_way(p, want, job.kill, job.check_running)
    return want
