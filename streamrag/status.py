"""`streamrag status`: one screen on the health of a pipeline, usable as a probe.

Each :class:`Check` is one line: what it looked at, whether it is fine and, when it is
not, what is wrong. Where it looks:

- services: the local stack's processes, as the command found them (when it is used);
- the ingest job: Flink's REST API on the local cluster (CLUSTER_REST_PORT), the ports of
  local runs (streamrag.flink.LOCAL_REST_PORTS) and any ``--flink-url``; the job is the
  ``streamrag-ingest`` job whose parameters carry this pipeline's consumer group. Uptime,
  restarts and the last completed checkpoint come from there, and so does the freshness:
  the index stage's ``freshness_ms_p50/p99`` gauges (last five minutes, streamrag.metrics);
- lag: per source topic and partition, end offset minus the group's committed offset;
- dead letters: the dead-letter topic, by stage and reason, and how many arrived lately;
- the index: the serving generation with its model, and the number of chunks.

The thresholds are options of the command; :meth:`Report.ok` is False when any check
failed, and the command then exits with 1.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

from streamrag.config import Settings
from streamrag.errors import UserError
from streamrag.flink import (
    CLUSTER_REST_PORT,
    GROUP_PARAMETER,
    INGEST_JOB,
    LOCAL_REST_PORTS,
    job_group,
)
from streamrag.kafka import TopicMissing, partition_lag
from streamrag.metrics import RECENT_WINDOW_S

# The window of the index stage's quantile gauges, as the lines say it.
WINDOW = f"{RECENT_WINDOW_S // 60} minutes"


@dataclass(frozen=True)
class Thresholds:
    freshness_p99_ms: float = 1500
    max_lag: int = 10_000
    dead_letter_window_s: float = 900
    # A checkpoint older than this many intervals (at least a minute) is a failure.
    checkpoint_intervals: int = 10


@dataclass
class Check:
    name: str
    ok: bool
    summary: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<13} {self.summary}"


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks]

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2)


@dataclass(frozen=True)
class FlinkJob:
    url: str
    job_id: str
    state: str
    start_ms: int


# (name, up, address, pid) of each service of the local stack (streamrag.local.stack).
Service = tuple[str, bool, str, int | None]


def report(
    settings: Settings,
    thresholds: Thresholds = Thresholds(),
    flink_urls: list[str] | None = None,
    services: list[Service] | None = None,
) -> Report:
    checks: list[Check] = service_checks(services or [])
    job = find_job(settings, flink_urls or [])
    checks += job_checks(settings, job, thresholds)
    checks += lag_checks(settings, thresholds)
    checks.append(dead_letter_check(settings, thresholds))
    checks += index_checks(settings)
    return Report(checks)


# --- services -------------------------------------------------------------------------


def service_checks(services: list[Service]) -> list[Check]:
    return [
        Check(
            name,
            up,
            f"up at {address}, pid {pid}"
            if up
            else f"down (expected at {address}; `streamrag stack up` starts it)",
            {"address": address, "pid": pid},
        )
        for name, up, address, pid in services
    ]


# --- the ingest job --------------------------------------------------------------------


def rest_urls(extra: list[str]) -> list[str]:
    first, _, last = LOCAL_REST_PORTS.partition("-")
    local = [f"http://127.0.0.1:{p}" for p in range(int(first), int(last or first) + 1)]
    return [*extra, f"http://127.0.0.1:{CLUSTER_REST_PORT}", *local]


def find_job(settings: Settings, flink_urls: list[str]) -> FlinkJob | None:
    """This pipeline's ingest job (not finished), on the first Flink REST API that has it."""
    group = job_group(settings)
    for url in rest_urls(flink_urls):
        for job in _jobs(url):
            config = _get(url, f"/jobs/{job['jid']}/config") or {}
            user = config.get("execution-config", {}).get("user-config", {})
            if user.get(GROUP_PARAMETER) == group:
                return FlinkJob(url, job["jid"], job["state"], int(job["start-time"]))
    return None


def _jobs(url: str) -> Iterator[dict[str, Any]]:
    overview = _get(url, "/jobs/overview") or {}
    for job in overview.get("jobs", []):
        if job.get("name") == INGEST_JOB and job.get("state") not in ("FINISHED", "CANCELED"):
            yield job


def job_checks(settings: Settings, job: FlinkJob | None, thresholds: Thresholds) -> list[Check]:
    if job is None:
        return [
            Check(
                "ingest job",
                False,
                f"no {INGEST_JOB} job for consumer group {settings.kafka.group_id} "
                "(start it: `streamrag run`, or `streamrag cluster submit`)",
            )
        ]
    now_ms = time.time() * 1000
    restarts = _job_metric(job, "numRestarts")
    uptime_s = (now_ms - job.start_ms) / 1000
    data = {
        "url": job.url,
        "job_id": job.job_id,
        "state": job.state,
        "uptime_s": round(uptime_s),
        "restarts": restarts,
    }
    running = job.state == "RUNNING"
    summary = f"{job.state} at {job.url} (job {job.job_id[:8]}), up {_duration(uptime_s)}, " + (
        f"restarts {restarts}" if restarts is not None else "restarts not reported yet"
    )
    checks = [Check("ingest job", running, summary if running else f"{summary}: not RUNNING", data)]
    checks.append(_checkpoint_check(settings, job, thresholds, now_ms))
    checks.append(_freshness_check(job, thresholds))
    return checks


def _checkpoint_check(
    settings: Settings, job: FlinkJob, thresholds: Thresholds, now_ms: float
) -> Check:
    stats = _get(job.url, f"/jobs/{job.job_id}/checkpoints") or {}
    latest = (stats.get("latest") or {}).get("completed")
    allowed_s = max(
        60.0, thresholds.checkpoint_intervals * settings.flink.checkpoint_interval_ms / 1000
    )
    uptime_s = (now_ms - job.start_ms) / 1000
    if latest is None:
        ok = uptime_s < allowed_s
        return Check(
            "checkpoint", ok, "none completed yet" + ("" if ok else f" after {_duration(uptime_s)}")
        )
    age_s = (now_ms - latest["latest_ack_timestamp"]) / 1000
    counts = stats.get("counts", {})
    summary = (
        f"#{latest['id']} {_duration(age_s)} ago, {latest['state_size'] / 1024:.0f} KiB; "
        f"{counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed"
    )
    ok = age_s <= allowed_s
    data = {
        "id": latest["id"],
        "age_s": round(age_s, 1),
        "state_bytes": latest["state_size"],
        **counts,
    }
    return Check(
        "checkpoint", ok, summary if ok else f"{summary}: none for over {allowed_s:.0f} s", data
    )


def _freshness_check(job: FlinkJob, thresholds: Thresholds) -> Check:
    values = _operator_metrics(job, ("index.freshness_ms_p50", "index.freshness_ms_p99"))
    p50 = max(values.get("index.freshness_ms_p50", [0.0]))
    p99 = max(values.get("index.freshness_ms_p99", [0.0]))
    if p99 == 0:
        return Check("freshness", True, f"no document indexed in the last {WINDOW}", {})
    data = {"p50_ms": p50, "p99_ms": p99, "objective_p99_ms": thresholds.freshness_p99_ms}
    summary = f"p50 {p50:.0f} ms, p99 {p99:.0f} ms over the last {WINDOW}"
    ok = p99 <= thresholds.freshness_p99_ms
    return Check(
        "freshness",
        ok,
        summary if ok else f"{summary}: over the objective of {thresholds.freshness_p99_ms:.0f} ms",
        data,
    )


def _job_metric(job: FlinkJob, name: str) -> int | None:
    values = _get(job.url, f"/jobs/{job.job_id}/metrics", {"get": name}) or []
    for item in values:
        if item.get("id") == name:
            return int(float(item["value"]))
    return None


def _operator_metrics(job: FlinkJob, suffixes: tuple[str, ...]) -> dict[str, list[float]]:
    """The values of operator metrics whose id (``<subtask>.<operator>.<name>``) ends
    with one of ``suffixes``, per suffix, across every vertex and subtask."""
    found: dict[str, list[float]] = {}
    detail = _get(job.url, f"/jobs/{job.job_id}") or {}
    for vertex in detail.get("vertices", []):
        path = f"/jobs/{job.job_id}/vertices/{vertex['id']}/metrics"
        ids = [m["id"] for m in _get(job.url, path) or [] if m["id"].endswith(suffixes)]
        if not ids:
            continue
        for item in _get(job.url, path, {"get": ",".join(ids)}) or []:
            suffix = next(s for s in suffixes if item["id"].endswith(s))
            found.setdefault(suffix, []).append(float(item["value"]))
    return found


def _get(url: str, path: str, params: dict[str, str] | None = None) -> Any:
    """A Flink REST answer, or None when nothing answers there."""
    try:
        resp = requests.get(url + path, params=params, timeout=5)
    except requests.RequestException:
        return None
    if resp.status_code != 200:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


# --- lag --------------------------------------------------------------------------------


def lag_checks(settings: Settings, thresholds: Thresholds) -> list[Check]:
    checks = []
    for topic in [settings.kafka.documents_topic, *settings.cdc.tables]:
        try:
            lag = partition_lag(settings, topic, settings.kafka.group_id)
        except TopicMissing:
            checks.append(Check("lag", True, f"{topic}: no such topic yet", {"topic": topic}))
            continue
        except UserError as e:  # Kafka unreachable: a probe says so, it does not stop
            checks.append(Check("lag", False, f"{topic}: {e}", {"topic": topic}))
            continue
        total = sum(lag.values())
        parts = " ".join(f"p{p}={n}" for p, n in sorted(lag.items()))
        ok = total <= thresholds.max_lag
        summary = f"{topic}: {total} records behind ({parts})"
        if not ok:
            summary += f": over {thresholds.max_lag}"
        checks.append(
            Check("lag", ok, summary, {"topic": topic, "partitions": lag, "total": total})
        )
    return checks


# --- dead letters -------------------------------------------------------------------------


def dead_letter_check(settings: Settings, thresholds: Thresholds) -> Check:
    from streamrag.deadletters import read_entries

    try:
        entries, unreadable = read_entries(settings)
    except UserError as e:  # Kafka unreachable
        return Check("dead letters", False, f"cannot read them: {e}")
    since_ms = time.time() * 1000 - thresholds.dead_letter_window_s * 1000
    by_reason = Counter(f"{e.letter.stage}/{e.letter.error}" for e in entries)
    if unreadable:
        by_reason["unreadable"] = len(unreadable)
    recent = sum(e.timestamp_ms >= since_ms for e in entries)
    total = sum(by_reason.values())
    if total == 0:
        return Check("dead letters", True, "none", {"total": 0})
    reasons = ", ".join(f"{r} {n}" for r, n in by_reason.most_common())
    window = _duration(thresholds.dead_letter_window_s)
    summary = f"{total} ({reasons}); {recent} in the last {window}"
    ok = recent == 0
    if not ok:
        summary += ": see `streamrag dead-letters list`"
    data = {"total": total, "recent": recent, "by_reason": dict(by_reason)}
    return Check("dead letters", ok, summary, data)


# --- the index ----------------------------------------------------------------------------


def index_checks(settings: Settings) -> list[Check]:
    from streamrag import generations
    from streamrag.stores import open_store

    try:
        current = generations.serving(settings)
        store = open_store(settings.store)
        try:
            count = store.count()
        finally:
            store.close()
    except UserError as e:
        return [Check("index", False, f"cannot read the index: {e}")]
    name = generations.serving_name(settings)
    if current is None:
        summary = f"{name}: {count} chunks (no generations: the ingest job's own collection)"
        return [Check("index", True, summary, {"name": name, "chunks": count})]
    summary = f"{name} -> {current.name} (model {current.model_id}): {count} chunks"
    data = {"name": name, "generation": current.name, "model": current.model_id, "chunks": count}
    return [Check("index", True, summary, data)]


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
