"""Faults on a small multi-node cluster of its own (issue 14): three KRaft brokers with
topics replicated 3 times (min.insync.replicas 2), a Flink cluster with two TaskManagers,
the ingest job at parallelism 2, PostgreSQL and a Milvus Lite server, all on other ports
than the dev stack.

While a producer streams new documents, updates, unchanged re-sends and deletes into the
pipeline, one thing at a time is killed with SIGKILL: a broker, a TaskManager, the vector
store's server (down for 30 s), then after rescaling through savepoints. A ground-truth
model (doc id -> latest version -> expected chunks) says what the index must hold: after
each fault the index equals it exactly (nothing lost, nothing stale, no duplicate chunk id).

The model is the zero-cost ``hash:384`` embedder: these tests are about offsets, state,
replication and the stores; every other integration test runs the real model. Each fault
records how long the index took to equal the ground truth again after the fault ended
(``recovered_s``, shown in the test summary).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
from confluent_kafka.admin import AdminClient

from streamrag import generations
from streamrag.config import Settings, isolated_env
from streamrag.kafka import RecordProducer, ensure_topics
from streamrag.local import cluster, stack
from streamrag.local.kafka import Kafka, bootstrap_servers
from tests.integration.conftest import Pipeline, settings_with
from tests.integration.harness import (
    SENTENCE,
    embedded_per_chunk,
    expected_chunks,
    index_now,
    poll,
)

pytestmark = pytest.mark.faults

FLINK_REST = f"http://127.0.0.1:{cluster.REST_PORT}"
# Other ports than the dev stack's, so both run side by side.
PORTS = {
    "KAFKA_PORT": "29092",
    "KAFKA_CONTROLLER_PORT": "29093",
    "POSTGRES_PORT": "25432",
    "MILVUS_PORT": "29530",
    "CONNECT_PORT": "28083",
}
PG_DATABASE = "user=postgres dbname=streamrag"
OUTAGE_S = 30  # the store's server stays down this long


@dataclass
class FaultStack:
    settings: Settings
    env: dict[str, str]


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    work = tmp_path_factory.mktemp("fault-stack")
    env = {
        **os.environ,
        "STREAMRAG_STACK__WORK_DIR": str(work),
        "STREAMRAG_STACK__BROKERS": "3",
        **{f"STREAMRAG_STACK__{k}": v for k, v in PORTS.items()},
    }
    settings = settings_with(env)
    env["STREAMRAG_KAFKA__BOOTSTRAP"] = bootstrap_servers(settings)
    settings = settings_with(env)
    with pytest.MonkeyPatch.context() as mp:
        try:
            stack.up(settings, ["postgres", "kafka", "milvus"])
            # libpq in this process and in the TaskManagers' Python workers reads
            # PGPASSFILE: one file for the dev stack's PostgreSQL and this one's.
            both = work / "pgpass"
            both.write_text(
                Path(os.environ["PGPASSFILE"]).read_text()
                + (settings.stack.secrets_dir / "pgpass").read_text()
            )
            both.chmod(0o600)
            mp.setenv("PGPASSFILE", str(both))
            env["PGPASSFILE"] = str(both)
            cluster.up(settings, taskmanagers=2)
            yield FaultStack(settings, env)
        finally:
            with contextlib.suppress(cluster.ClusterError):
                cluster.down(settings)
            stack.down(settings, graceful=False)  # throwaway
        # Replacements of killed TaskManagers stop too (none would go on using a core).
        assert cluster.taskmanager_pids(settings) == []


def fault_pipeline(fs: FaultStack, store_kind: str, parallelism: int) -> Pipeline:
    prefix = f"f{os.urandom(4).hex()}"
    store = (
        {"STORE__URI": f"http://127.0.0.1:{PORTS['MILVUS_PORT']}"}
        if store_kind == "milvus"
        else {"STORE__DSN": f"host=127.0.0.1 port={PORTS['POSTGRES_PORT']} {PG_DATABASE}"}
    )
    env = {
        **fs.env,
        **isolated_env(
            prefix,
            STORE__KIND=store_kind,
            CDC__TABLES="{}",
            EMBEDDING__MODEL="hash:384",
            FLINK__PARALLELISM=str(parallelism),
            KAFKA__PARTITIONS="4",
            **store,
        ),
    }
    settings = settings_with(env)
    ensure_topics(settings)
    return Pipeline(env, settings)


# --- the ground truth and the traffic ---------------------------------------------------


@dataclass
class Traffic:
    """New documents, updates, unchanged re-sends and deletes, streamed by a thread at a
    steady rate; ``expected()`` is the index they must leave (doc id -> latest version ->
    its chunks)."""

    p: Pipeline
    rng: random.Random = field(default_factory=lambda: random.Random(14))
    latest: dict[str, dict | None] = field(default_factory=dict)  # None: deleted
    history: list[dict] = field(default_factory=list)  # every document version sent
    sent: int = 0

    def _document(self, doc_id: str, version: int) -> dict:
        parts = self.rng.randint(2, 6)
        text = "\n\n".join(
            f"## Part {i} of {doc_id}, v{version}\n\n{SENTENCE * self.rng.randint(1, 4)}"
            for i in range(parts)
        )
        return {"id": doc_id, "text": text, "content_type": "markdown", "version": version}

    def _next(self) -> tuple[str, dict | None]:
        alive = [d for d in self.latest.values() if d is not None]
        roll = self.rng.random()
        if len(alive) < 20 or roll < 0.4:
            doc = self._document(f"doc-{len(self.latest):05}", 1)
        elif roll < 0.75:
            old = self.rng.choice(alive)
            doc = self._document(old["id"], old["version"] + 1)
        elif roll < 0.9:
            doc = self.rng.choice(alive)  # the same version again: nothing may change
        else:
            doc_id = self.rng.choice(alive)["id"]
            self.latest[doc_id] = None
            return doc_id, None
        self.latest[doc["id"]] = doc
        self.history.append(doc)
        return doc["id"], doc

    @contextlib.contextmanager
    def streaming(self, per_s: float) -> Iterator[None]:
        """Send records at ``per_s`` until the block ends (then flush them all)."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            producer = RecordProducer(self.p.settings)
            try:
                while not stop.wait(1 / per_s):
                    doc_id, doc = self._next()
                    value = json.dumps(doc) if doc is not None else None
                    producer.send(self.p.settings.kafka.documents_topic, doc_id, value)
                    self.sent += 1
                producer.flush(120)
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(180)
        assert not errors, f"the producer failed: {errors[0]}"

    def chunks(self, doc: dict) -> dict[str, tuple]:
        return expected_chunks(self.p.settings, doc)

    def expected(self) -> dict[str, tuple]:
        return {
            k: v
            for doc in self.latest.values()
            if doc is not None
            for k, v in self.chunks(doc).items()
        }

    def describe(self, doc_id: str) -> str:
        """What was sent last for ``doc_id`` (for a failure message)."""
        if doc_id not in self.latest:
            return "never sent"
        doc = self.latest[doc_id]
        if doc is None:
            return "deleted"
        return f"version {doc['version']}, {len(self.chunks(doc))} chunks"

    def texts_per_chunk(self) -> dict[str, int]:
        """Chunk id -> how many different texts it had over every version sent."""
        texts: dict[str, set[str]] = {}
        for doc in self.history:
            for cid, (*_, text) in self.chunks(doc).items():
                texts.setdefault(cid, set()).add(text)
        return {cid: len(t) for cid, t in texts.items()}


def caught_up(
    p: Pipeline, traffic: Traffic, job: str, what: str, heal: Callable[[], object] = lambda: None
) -> float:
    """Seconds until the index equals the ground truth; checks that nothing is doubled.
    ``heal`` runs every second meanwhile (what an orchestrator would do)."""
    want = traffic.expected()
    started = time.monotonic()
    deadline = started + 300
    while (have := index_now(p)) != want:
        job_alive(job)
        heal()
        if time.monotonic() > deadline:
            missing = sorted(want.keys() - have.keys())
            extra = sorted(have.keys() - want.keys())
            stale = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
            raise AssertionError(
                f"after {what} the index differs from the ground truth: {len(missing)} chunks"
                f" missing {missing[:3]}, {len(extra)} extra {extra[:3]}, {len(stale)} stale"
                f" {[(have[k][1], want[k][1]) for k in stale[:3]]}; extra chunks as"
                f" (doc, version, position) against the document sent last:"
                f" {[(*have[k][:3], traffic.describe(have[k][0])) for k in extra[:5]]};"
                f" dead letters: {[(d.get('stage'), d.get('error')) for d in p.dead_letters()][:3]}"
            )
        time.sleep(1)
    spent = time.monotonic() - started
    store = p.store()
    try:
        ids = store.all_ids()
    finally:
        store.close()
    assert len(ids) == len(set(ids)) == len(want), "a chunk id is stored twice"
    return spent


# --- the job and what is killed ---------------------------------------------------------


def submit(p: Pipeline, savepoint: str | None = None) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "environ", p.env)  # flink run builds the job from it
        cluster.submit(p.settings, detached=True, savepoint=savepoint)
    return cluster.running_job()


def job_alive(job: str) -> None:
    state = requests.get(f"{FLINK_REST}/jobs/{job}", timeout=10).json()["state"]
    assert state not in {"FAILED", "CANCELED", "FINISHED"}, f"the job is {state}"


def vertex_parallelism(job: str) -> set[int]:
    vertices = requests.get(f"{FLINK_REST}/jobs/{job}", timeout=10).json()["vertices"]
    return {v["parallelism"] for v in vertices}


def restarts(job: str) -> int:
    history = requests.get(f"{FLINK_REST}/jobs/{job}/exceptions", timeout=10).json()
    return len(history["exceptionHistory"]["entries"])


def kill_group(pid: int) -> None:
    """SIGKILL a service and what it started (its own session), as a lost machine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def outage(fs: FaultStack, service: str) -> Callable[[], None]:
    """A fault: the service SIGKILLed, started again OUTAGE_S seconds later."""

    def fault() -> None:
        pid = stack.pids(fs.settings)[service]
        assert pid is not None, f"{service} is not running"
        kill_group(pid)
        time.sleep(OUTAGE_S)
        stack.up(fs.settings, [service])

    return fault


def kill_leading_broker(fs: FaultStack, p: Pipeline) -> int:
    """SIGKILL the broker that leads partition 0 of the documents topic; its node id."""
    admin = AdminClient({"bootstrap.servers": p.settings.kafka.bootstrap})
    topic = admin.list_topics(p.settings.kafka.documents_topic, timeout=10)
    leader = topic.topics[p.settings.kafka.documents_topic].partitions[0].leader
    pid = stack.pids(fs.settings)[Kafka(fs.settings, leader).name]
    assert pid is not None
    kill_group(pid)
    return int(leader)


def fully_replicated(p: Pipeline) -> bool:
    admin = AdminClient({"bootstrap.servers": p.settings.kafka.bootstrap})
    topics = admin.list_topics(timeout=10).topics
    return all(
        len(part.isrs) == 3
        for name in (p.settings.kafka.documents_topic, p.settings.kafka.chunks_topic)
        for part in topics[name].partitions.values()
    )


def kill_taskmanager(fs: FaultStack) -> None:
    """SIGKILL one TaskManager JVM and its Python workers."""
    tm = psutil.Process(cluster.taskmanager_pids(fs.settings)[0])
    doomed = [tm, *tm.children(recursive=True)]
    for proc in doomed:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)


def replacing_taskmanagers(fs: FaultStack, after_s: float) -> Callable[[], object]:
    """A heal step: from ``after_s`` seconds on, start TaskManagers until two run."""
    start = time.monotonic()

    def heal() -> None:
        if time.monotonic() - start >= after_s:
            cluster.ensure_taskmanagers(fs.settings, 2)

    return heal


def during(
    traffic: Traffic,
    seconds: float,
    fault_at: float,
    fault: Callable[[], object],
    heal: Callable[[], object] = lambda: None,
) -> float:
    """Stream for ``seconds``, with ``fault`` run ``fault_at`` seconds in and ``heal``
    every second after it; returns when the fault ended (time.monotonic())."""
    with traffic.streaming(per_s=10):
        time.sleep(fault_at)
        fault()
        fault_ended = time.monotonic()
        end = time.monotonic() + seconds - fault_at
        while time.monotonic() < end:
            time.sleep(1)
            heal()
    return fault_ended


def record(props: Callable[[str, object], None], name: str, value: float) -> None:
    props(name, round(value, 1))


def fault_phase(
    props: Callable[[str, object], None],
    name: str,
    p: Pipeline,
    traffic: Traffic,
    job: str,
    fault: Callable[[], object],
    seconds: float = 10,
    heal: Callable[[], object] = lambda: None,
) -> None:
    """Stream with ``fault`` 3 s in; then the index must equal the ground truth. Records
    ``recovered_s:<name>``: from the end of the fault (the service back, the TaskManager
    killed) to the index equal to the ground truth, the rest of the stream included."""
    fault_ended = during(traffic, seconds, 3, fault, heal)
    caught_up(p, traffic, job, name, heal)
    record(props, f"recovered_s:{name}", time.monotonic() - fault_ended)


def started(fs: FaultStack, store_kind: str) -> tuple[Pipeline, Traffic, str]:
    """The job at parallelism 2, submitted, with 5 s of traffic indexed."""
    p = fault_pipeline(fs, store_kind, parallelism=2)
    traffic = Traffic(p)
    job = submit(p)
    with traffic.streaming(per_s=10):
        time.sleep(5)
    caught_up(p, traffic, job, "the start")
    return p, traffic, job


# --- the tests --------------------------------------------------------------------------


def test_four_faults_in_one_job_life_leave_the_index_equal_to_ground_truth(
    fault_stack: FaultStack, record_property: Callable[[str, object], None]
):
    fs = fault_stack
    p, traffic, job = started(fs, "milvus")
    try:
        # 1. The broker that leads documents partition 0 dies; it comes back later.
        fault_phase(record_property, "broker", p, traffic, job, lambda: kill_leading_broker(fs, p))
        record(record_property, "restarts_after_broker", restarts(job))
        stack.up(fs.settings, ["kafka"])
        poll(lambda: fully_replicated(p), "the broker back in every ISR", timeout_s=120)

        # 2. A TaskManager dies, and is replaced 5 s later (as Kubernetes replaces a pod;
        # so is any other that dies meanwhile): the job restarts from its checkpoint.
        before = restarts(job)
        replace = replacing_taskmanagers(fs, after_s=8)
        fault_phase(
            record_property,
            "taskmanager",
            p,
            traffic,
            job,
            lambda: kill_taskmanager(fs),
            heal=replace,
        )
        assert restarts(job) > before, "the job did not fail over"

        # 3. The Milvus server is down for 30 s: writes retry, the job fails over at worst.
        down = outage(fs, "milvus")
        fault_phase(record_property, "milvus", p, traffic, job, down, OUTAGE_S + 6)

        # 4. A TaskManager dies again: a fourth fault in the same job's life.
        replace = replacing_taskmanagers(fs, after_s=8)
        fault_phase(
            record_property,
            "taskmanager_2",
            p,
            traffic,
            job,
            lambda: kill_taskmanager(fs),
            heal=replace,
        )

        assert cluster.running_job() == job  # the same job all along, never resubmitted
        record(record_property, "restarts", restarts(job))
        record(record_property, "records_sent", traffic.sent)
        assert p.dead_letters() == []
    finally:
        requests.patch(f"{FLINK_REST}/jobs/{job}", params={"mode": "cancel"}, timeout=10)
        generations.drop_all(p.settings)


def test_rescaling_through_savepoints_and_a_postgres_outage(
    fault_stack: FaultStack, record_property: Callable[[str, object], None]
):
    fs = fault_stack
    p, traffic, job = started(fs, "pgvector")
    try:
        # 2 -> 1 -> 2 with `streamrag cluster upgrade --parallelism N`: per-document
        # state moves with its keys at each rescale.
        for step, parallelism in (("to_1", 1), ("to_2", 2)):
            began = time.monotonic()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(os, "environ", p.env)  # flink run builds the job from it
                _savepoint, job = cluster.upgrade(fs.settings, parallelism=parallelism)
            assert vertex_parallelism(job) == {parallelism}
            record(record_property, f"rescale_s:{step}", time.monotonic() - began)
            with traffic.streaming(per_s=10):
                time.sleep(6)
            caught_up(p, traffic, job, step)

        # Nothing went through the model twice for the same text: what is already embedded
        # moved with the keys (no failover so far, so nothing was replayed either).
        texts = traffic.texts_per_chunk()
        embedded = embedded_per_chunk(p.settings)
        twice = {cid: n for cid, n in embedded.items() if n > texts[cid]}
        assert not twice, f"re-embedded without a change: {sorted(twice)[:5]}"

        # PostgreSQL down for 30 s: writes retry, the job fails over at worst.
        down = outage(fs, "postgres")
        fault_phase(record_property, "postgres", p, traffic, job, down, OUTAGE_S + 6)
        assert p.dead_letters() == []
    finally:
        requests.patch(f"{FLINK_REST}/jobs/{job}", params={"mode": "cancel"}, timeout=10)
        generations.drop_all(p.settings)
