"""What the integration tests drive and compare with: the ingest job as a process (local,
unbounded) or on the local standalone cluster, the processes to kill, and the index a
clean run gives against the index now.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from jobs.chunking.planner import chunk_id
from jobs.chunking.stage import ChunkStage
from streamrag import generations
from streamrag.config import PROJECT_ROOT, Settings
from streamrag.kafka import read_log
from streamrag.local import cluster
from streamrag.models import resolve_model
from tests.integration.conftest import CLI, Pipeline, as_event

FLINK_REST = f"http://127.0.0.1:{cluster.REST_PORT}"

SENTENCE = (
    "Checkpoint barriers flow with the records, so the offsets and the keyed state "
    "of one checkpoint describe the same point of the stream. "
)


def document(n: int, version: int, parts: int) -> dict:
    text = "\n\n".join(
        f"## Part {i} of note {n}, v{version}\n\n{SENTENCE * 4}" for i in range(parts)
    )
    return {"id": f"note-{n:02}", "text": text, "content_type": "markdown", "version": version}


def expected_index(settings: Settings, docs: list[dict]) -> dict[str, tuple]:
    """What a clean run leaves for the latest version of each document."""
    latest: dict[str, dict] = {}
    for d in docs:
        if d["version"] >= latest.get(d["id"], d)["version"]:
            latest[d["id"]] = d
    return {k: v for d in latest.values() for k, v in expected_chunks(settings, d).items()}


def expected_chunks(settings: Settings, d: dict) -> dict[str, tuple]:
    """Chunk id -> (doc id, version, position, text) of one document version."""
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    event = as_event(d)
    return {
        chunk_id(d["id"], i): (d["id"], d["version"], i, span.text)
        for i, span in enumerate(stage.spans(event))
    }


def index_now(p: Pipeline) -> dict[str, tuple]:
    if generations.serving(p.settings) is None:  # the job has not created the index yet
        return {}
    store = p.store()
    try:
        return {
            c.chunk_id: (c.doc_id, c.version, c.position, c.text)
            for c in store.get(store.all_ids())
        }
    finally:
        store.close()


@dataclass
class Job:
    """The ingest job, unbounded as in production, with its output in ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, p: Pipeline, log: Path) -> Job:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [CLI, "run"],
                env=p.env,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(proc, log)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def kill(self) -> None:
        """SIGKILL to the client, the JVM and the Python workers."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in self.processes():
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the local job ended:\n{tail}")


def poll(
    condition: Callable[[], bool],
    what: str,
    check: Callable[[], None] = lambda: None,
    timeout_s: float = 300,
    interval_s: float = 0.3,
) -> None:
    """Wait for ``condition``; ``check`` fails early when the job has died meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        check()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval_s)


def crash_mid_way(
    p: Pipeline,
    want: dict[str, tuple],
    kill: Callable[[], None],
    check: Callable[[], None] = lambda: None,
) -> None:
    """Once some but not all chunks of ``want`` are in the index, ``kill`` (part of) the job.
    Progress is read with one store kept open, every 0.1 s: a wave takes seconds."""
    store = p.store()
    try:

        def done() -> int:
            stored = store.get(list(want))
            return len(
                want.items()
                & {c.chunk_id: (c.doc_id, c.version, c.position, c.text) for c in stored}.items()
            )

        poll(lambda: done() > 0, "the first chunks of the wave", check, interval_s=0.1)
        assert done() < len(want), "the wave was indexed before the crash: make it larger"
    finally:
        store.close()
    kill()


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return list(process.children(recursive=True))
    except psutil.Error:  # gone, or a zombie of an earlier worker
        return []


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # a zombie or a process that just ended
        return ""


# Flink REST reads of a job: on the local cluster by default, or at ``url`` (a local
# `streamrag run` serves its own, streamrag.flink.LOCAL_REST_PORTS).


def _checkpoints(job_id: str, url: str) -> dict:
    return dict(requests.get(f"{url}/jobs/{job_id}/checkpoints", timeout=10).json())


def completed_checkpoints(job_id: str, url: str = FLINK_REST) -> int:
    """How many checkpoints the job has completed."""
    return int(_checkpoints(job_id, url)["counts"]["completed"])


def latest_checkpoint_triggered_ms(job_id: str, url: str = FLINK_REST) -> int:
    """When the job's latest completed checkpoint was triggered (epoch ms; 0: none yet)."""
    latest = (_checkpoints(job_id, url).get("latest") or {}).get("completed") or {}
    return int(latest.get("trigger_timestamp", 0))


def restored_from(job_id: str, url: str = FLINK_REST) -> dict | None:
    """What the job restored its state from (the latest restored checkpoint or savepoint,
    with ``is_savepoint``), or None: it started empty."""
    return (_checkpoints(job_id, url).get("latest") or {}).get("restored")


def restarts(job_id: str, url: str = FLINK_REST) -> int:
    """How many times the job failed over (its exception history)."""
    history = requests.get(f"{url}/jobs/{job_id}/exceptions", timeout=10).json()
    return len(history["exceptionHistory"]["entries"])


def without(index: dict[str, tuple], doc_ids: set[str]) -> dict[str, tuple]:
    return {k: v for k, v in index.items() if v[0] not in doc_ids}


def embedded_per_chunk(settings: Settings) -> dict[str, int]:
    """How many times each chunk id went through the model, by the embeddings topic."""
    counts: dict[str, int] = {}
    for m in read_log(settings, settings.kafka.embeddings_topic, timeout_s=60):
        record = json.loads(m.value) if m.value else {}
        if record.get("embedded"):
            cid = record["chunk"]["chunk_id"]
            counts[cid] = counts.get(cid, 0) + 1
    return counts


def kill_python_workers(settings: Settings) -> list[int]:
    """SIGKILL the job's Python worker processes under this cluster's TaskManagers (found
    by its config directory), which live on; returns the pids killed."""
    workers: list[psutil.Process] = []
    for pid in cluster.taskmanager_pids(settings):
        with contextlib.suppress(psutil.Error):  # a TaskManager that just ended
            tm = psutil.Process(pid)
            workers += [c for c in _children(tm) if "pyflink.fn_execution" in _cmdline(c)]
    assert workers, "no Python worker process under the cluster's TaskManagers"
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            worker.send_signal(signal.SIGKILL)
    return [w.pid for w in workers]


def chunk_records(settings: Settings, start: dict[int, int] | None = None) -> list[dict]:
    """The records of the chunks topic (upserts and trims; from ``start``, offsets by
    partition, else from the beginning), tombstones left out."""
    log = read_log(settings, settings.kafka.chunks_topic, start=start, timeout_s=60)
    return [json.loads(m.value) for m in log if m.value]
