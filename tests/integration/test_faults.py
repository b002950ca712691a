"""Every test that runs the ingest job on a Flink cluster (issues 14 and 35), on one small
multi-node stack of its own, started once for the module: three KRaft brokers with topics
replicated 3 times (min.insync.replicas 2), a standalone Flink cluster with two
TaskManagers, PostgreSQL and a Milvus Lite server, all on other ports than the dev stack.

- A bounded `flink run -py jobs/pipeline.py` (the file a FlinkDeployment runs) with the
  bundled model indexes its document and leaves its consumer group nothing to read.
- One job life on Milvus, at parallelism 2, through four faults in a row: the broker that
  leads a partition, the job's Python workers (their TaskManager lives), a TaskManager
  (replaced), the Milvus server down.
- One job life on pgvector: rescaling 2 -> 1 -> 2 with `streamrag cluster upgrade`
  mid-stream (savepoints: nothing lost, written twice or embedded again), PostgreSQL down,
  then a crash while a cross-document batch waits in Flink state.

While a producer streams new documents, updates, unchanged re-sends and deletes, a
ground-truth model (doc id -> latest version -> expected chunks) says what the index must
hold: after each fault it equals that exactly (nothing lost, nothing stale, no chunk id
twice). Each fault records how long the index took to equal the ground truth again after
the fault ended (``recovered_s``, shown in the test summary).

The job lives run the zero-cost ``hash:384`` embedder: they are about offsets, state,
replication and the stores. The bounded run, like every other integration test, runs the
real model.

The job's restart backoff (1 s doubling to 1 min, reset only after 10 quiet minutes:
streamrag.flink.restart_strategy) is not configurable, and each failover of a job doubles
the wait of the next: a job life takes the faults that fail over late, and a store
outage, which may fail over more than once, last.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
from confluent_kafka.admin import AdminClient

from jobs.chunking.planner import chunk_id
from streamrag import generations
from streamrag.config import Settings, isolated_env
from streamrag.kafka import RecordProducer, end_offsets, ensure_topics, pending_records
from streamrag.local import cluster, stack
from streamrag.local.kafka import Kafka, bootstrap_servers
from tests.integration.conftest import CLI, Pipeline, settings_with
from tests.integration.harness import (
    FLINK_REST,
    SENTENCE,
    chunk_records,
    completed_checkpoints,
    document,
    embedded_per_chunk,
    expected_chunks,
    expected_index,
    index_now,
    kill_python_workers,
    latest_checkpoint_triggered_ms,
    poll,
    restarts,
    restored_from,
)

pytestmark = pytest.mark.faults

# Other ports than the dev stack's, so both run side by side. (Not Flink's: a local
# cluster's REST port is fixed, streamrag.flink.CLUSTER_REST_PORT, so no other local
# cluster may run meanwhile.)
PORTS = {
    "KAFKA_PORT": "29092",
    "KAFKA_CONTROLLER_PORT": "29093",
    "POSTGRES_PORT": "25432",
    "MILVUS_PORT": "29530",
    "MILVUS_SERVER_PORT": "29540",  # and the 11 ports after it
    "CONNECT_PORT": "28083",
}
# A store's server stays down this long: twice what a write retries by itself (6 attempts,
# 0.2 s doubling: about 6 s), so writes retry through part of it and, if that is not
# enough, the job fails over for the rest, as in a longer outage.
OUTAGE_S = 12
PER_S = 10  # the traffic's records per second
# Every fault streams this long before it strikes, and this long after it ended: records
# in flight on both sides of it.
BEFORE_S = 2
AFTER_S = 4


@dataclass
class FaultStack:
    settings: Settings
    env: dict[str, str]


@pytest.fixture(scope="module")
def fault_stack(request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    # Not under pytest's basetemp: a pytest session that starts meanwhile (another run on
    # this machine) makes /tmp/pytest-of-<user> private again (mode 0700), and PostgreSQL,
    # which runs as an unprivileged user when the tests run as root, then loses its data
    # directory (PANIC). Kept when a test failed, for its logs.
    work = Path(tempfile.mkdtemp(prefix="streamrag-fault-stack-"))
    failed_before = request.session.testsfailed
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
            stack.up(settings, ["postgres", "kafka", "milvus", "milvus-server"])
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
        if request.session.testsfailed == failed_before:
            shutil.rmtree(work, ignore_errors=True)


def fault_pipeline(
    fs: FaultStack, store_kind: str, parallelism: int, model: str = "hash:384"
) -> Pipeline:
    prefix = f"f{os.urandom(4).hex()}"
    env = {
        **fs.env,
        **isolated_env(
            prefix,
            **stack.store_env(fs.settings, store_kind),
            CDC__TABLES="{}",
            EMBEDDING__MODEL=model,
            FLINK__PARALLELISM=str(parallelism),
            KAFKA__PARTITIONS="4",
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

    # (repr=False: a failure shows the traffic in a line, not every document sent.)
    p: Pipeline = field(repr=False)
    rng: random.Random = field(default_factory=lambda: random.Random(14), repr=False)
    latest: dict[str, dict | None] = field(default_factory=dict, repr=False)  # None: deleted
    history: list[dict] = field(default_factory=list, repr=False)  # every version sent
    sent: int = 0
    # (doc id, version) -> its chunks: a document version is chunked once here, not at
    # every look at the ground truth (a few hundred documents take seconds).
    _chunks: dict[tuple[str, int], dict[str, tuple]] = field(default_factory=dict, repr=False)

    def _document(self, doc_id: str, version: int) -> dict:
        parts = self.rng.randint(2, 6)
        text = "\n\n".join(
            f"## Part {i} of {doc_id}, v{version}\n\n{SENTENCE * self.rng.randint(1, 4)}"
            for i in range(parts)
        )
        return {"id": doc_id, "text": text, "content_type": "markdown", "version": version}

    def _alive(self) -> list[dict]:
        return [d for d in self.latest.values() if d is not None]

    def _next(self) -> tuple[str, dict | None]:
        alive = self._alive()
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
    def streaming(self, per_s: float = PER_S) -> Iterator[None]:
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

    def send(self, docs: list[dict]) -> None:
        """Send these documents (the stream stopped), as part of the ground truth."""
        for doc in docs:
            self.latest[doc["id"]] = doc
            self.history.append(doc)
        self.p.produce_docs(docs)
        self.sent += len(docs)

    def resend_unchanged(self) -> None:
        """Send the latest version of every live document again, unchanged."""
        docs = self._alive()
        self.p.produce_docs(docs)
        self.sent += len(docs)

    def chunks(self, doc: dict) -> dict[str, tuple]:
        key = (doc["id"], doc["version"])
        if key not in self._chunks:
            self._chunks[key] = expected_chunks(self.p.settings, doc)
        return self._chunks[key]

    def expected(self) -> dict[str, tuple]:
        return {k: v for doc in self._alive() for k, v in self.chunks(doc).items()}

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


# --- the job, the cluster and what is killed --------------------------------------------


def submit(p: Pipeline) -> str:
    """The job submitted (detached, unbounded) from the group's committed offsets, with
    empty state; its id."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "environ", p.env)  # flink run builds the job from it
        cluster.submit(p.settings, detached=True)
    return cluster.running_job()


def upgrade(p: Pipeline, parallelism: int | None = None, **config: str) -> str:
    """`streamrag cluster upgrade [--parallelism N]` as an operator runs it, with the
    pipeline's config and ``config`` overrides (STREAMRAG_ names without the prefix): the
    job stops with a savepoint and the current code goes on from it. Checks what the CLI
    says and that the new job restored that savepoint; returns the new job's id."""
    env = {**p.env, **{f"STREAMRAG_{k}": v for k, v in config.items()}}
    args = ["--parallelism", str(parallelism)] if parallelism is not None else []
    old = cluster.running_job()
    done = subprocess.run(
        [CLI, "cluster", "upgrade", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped with savepoint" in done.stdout
    job = cluster.running_job()
    assert job != old and f"running job {job}" in done.stdout
    # Flink reports the restore once the job's checkpoint coordinator made it.
    poll(lambda: restored_from(job) is not None, "the restore of the savepoint", timeout_s=30)
    restored = restored_from(job)
    assert restored is not None and restored["is_savepoint"] is True
    assert Path(restored["external_path"]).name in done.stdout  # the one it stopped with
    return job


def cancel(job: str) -> None:
    """Cancel the job if the cluster still answers (a failed test may have lost it)."""
    with contextlib.suppress(requests.RequestException):
        requests.patch(f"{FLINK_REST}/jobs/{job}", params={"mode": "cancel"}, timeout=10)


def job_alive(job: str) -> None:
    state = requests.get(f"{FLINK_REST}/jobs/{job}", timeout=10).json()["state"]
    assert state not in {"FAILED", "CANCELED", "FINISHED"}, f"the job is {state}"


def vertex_parallelism(job: str) -> set[int]:
    vertices = requests.get(f"{FLINK_REST}/jobs/{job}", timeout=10).json()["vertices"]
    return {v["parallelism"] for v in vertices}


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
    fault: Callable[[], object],
    heal: Callable[[], object] = lambda: None,
) -> float:
    """Stream BEFORE_S, run ``fault``, stream AFTER_S more with ``heal`` every second;
    returns when the fault ended (time.monotonic())."""
    with traffic.streaming():
        time.sleep(BEFORE_S)
        fault()
        fault_ended = time.monotonic()
        end = fault_ended + AFTER_S
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
    heal: Callable[[], object] = lambda: None,
) -> None:
    """Stream with ``fault`` in the middle; then the index must equal the ground truth.
    Records ``recovered_s:<name>``: from the end of the fault (the service back, the
    process killed) to the index equal to the ground truth, the rest of the stream
    included."""
    fault_ended = during(traffic, fault, heal)
    caught_up(p, traffic, job, name, heal)
    record(props, f"recovered_s:{name}", time.monotonic() - fault_ended)


def started(fs: FaultStack, store_kind: str) -> tuple[Pipeline, Traffic, str]:
    """The job at parallelism 2, submitted, with a few seconds of traffic indexed."""
    p = fault_pipeline(fs, store_kind, parallelism=2)
    traffic = Traffic(p)
    job = submit(p)
    with traffic.streaming():
        time.sleep(3)
    caught_up(p, traffic, job, "the start")
    return p, traffic, job


# --- the tests --------------------------------------------------------------------------


def test_a_bounded_flink_run_on_the_cluster_indexes_and_commits_its_offsets(
    fault_stack: FaultStack,
):
    """`flink run -py jobs/pipeline.py --bounded` on the standalone cluster, with the
    bundled model: the index holds what a clean run gives (the document's one chunk), and
    the consumer group has nothing left to read (its offsets committed by the job or
    settled after it: streamrag.runstats.settle_offsets)."""
    p = fault_pipeline(fault_stack, "milvus", parallelism=1, model="bundled")
    doc = {"id": "on-cluster", "text": "Submitted with flink run. " * 20, "version": 1}
    p.produce_docs([doc])
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "environ", p.env)  # the submitted job reads the same config
            cluster.submit(p.settings, bounded=True)
        assert index_now(p) == expected_index(p.settings, [doc])
        store = p.store()
        try:
            assert len(store.doc_chunk_ids("on-cluster")) == 1
        finally:
            store.close()
        kafka = p.settings.kafka
        assert pending_records(p.settings, kafka.documents_topic, kafka.group_id) == 0
    finally:
        generations.drop_all(p.settings)


def test_one_milvus_job_life_through_four_faults(
    fault_stack: FaultStack, record_property: Callable[[str, object], None]
):
    """One job on the Milvus server at parallelism 2 while the traffic streams; after each
    fault the index equals the ground truth: the broker that leads a partition (killed,
    back later); the job's Python workers killed while their TaskManager lives (Flink fails
    the task over and restores offsets and keyed state from the checkpoint); a TaskManager
    killed and replaced; the Milvus server killed and started again OUTAGE_S later. The
    same job all along, within its restart budget, and no dead letter."""
    fs = fault_stack
    p, traffic, job = started(fs, "milvus-server")
    try:
        # 1. The broker that leads documents partition 0 dies; it comes back later.
        fault_phase(record_property, "broker", p, traffic, job, lambda: kill_leading_broker(fs, p))
        record(record_property, "restarts_after_broker", restarts(job))
        stack.up(fs.settings, ["kafka"])
        poll(lambda: fully_replicated(p), "the broker back in every ISR", timeout_s=120)

        # 2. The job's Python workers die, their TaskManager lives: the task fails over.
        # (In local execution Python runs inside the client: only a cluster has them.)
        before, taskmanagers = restarts(job), cluster.taskmanager_pids(fs.settings)
        fault_phase(
            record_property,
            "python_workers",
            p,
            traffic,
            job,
            lambda: kill_python_workers(fs.settings),
        )
        assert restarts(job) > before, "the job did not fail over"
        assert cluster.taskmanager_pids(fs.settings) == taskmanagers, "a TaskManager died"

        # 3. A TaskManager dies, and is replaced 5 s later (as Kubernetes replaces a pod;
        # so is any other that dies meanwhile): the job restarts from its checkpoint.
        before = restarts(job)
        replace = replacing_taskmanagers(fs, after_s=5)
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

        # 4. The Milvus server is down: writes retry, the job fails over at worst.
        fault_phase(record_property, "milvus_server", p, traffic, job, outage(fs, "milvus-server"))

        assert cluster.running_job() == job  # the same job all along, never resubmitted
        record(record_property, "restarts", restarts(job))
        record(record_property, "records_sent", traffic.sent)
        assert p.dead_letters() == []
    finally:
        cancel(job)
        generations.drop_all(p.settings)


def test_a_milvus_lite_job_rides_over_its_server_down(
    fault_stack: FaultStack, record_property: Callable[[str, object], None]
):
    """The Milvus fault on Milvus Lite's server (killed, started again OUTAGE_S later):
    its collections come back released, and the store loads them again before it retries;
    the index equals the ground truth, the same job all along, no dead letter."""
    fs = fault_stack
    p, traffic, job = started(fs, "milvus")
    try:
        fault_phase(record_property, "milvus_lite", p, traffic, job, outage(fs, "milvus"))
        assert cluster.running_job() == job
        assert p.dead_letters() == []
    finally:
        cancel(job)
        generations.drop_all(p.settings)


# How long a cross-document batch waits for more chunks in the last phase of the pgvector
# life (flushed only by its timer): long enough to see a checkpoint hold the batch and
# crash the job before the batch goes out; short, since the phase waits it out twice (the
# restored batch, then a lone update). With the job warm, the documents are chunked 1 to
# 2 s after they are sent, and the next checkpoint (every 2 s) holds them: ~5 s in all,
# which leaves 10 s in hand on a slow day.
BATCH_WAIT_MS = 15_000


def test_one_pgvector_job_life_rescaled_through_savepoints_then_an_outage_and_a_crash(
    fault_stack: FaultStack, record_property: Callable[[str, object], None]
):
    """One job on pgvector while the traffic streams, the index equal to the ground truth
    after each step:

    - rescaled 2 -> 1 -> 2 with `streamrag cluster upgrade --parallelism N` mid-stream
      (stop with savepoint, restore): state moves with its keys, so documents sent again
      unchanged are not chunked again, no record of the chunks topic is lost or written
      twice, and nothing goes through the model twice for the same text;
    - PostgreSQL down for OUTAGE_S: writes retry, the job fails over at worst;
    - upgraded to batches that only their timer flushes, then a crash while a batch of a
      dozen documents waits in Flink state (their offsets checkpointed past them): the
      restore gives it back, each chunk goes through the model once, and a lone update
      is indexed when its wait is over, not before."""
    fs = fault_stack
    p, traffic, job = started(fs, "pgvector")
    jobs = [job]
    try:
        # 2 -> 1 -> 2, each upgrade while records flow; then every live document is sent
        # again unchanged: with its state, the chunk stage emits nothing for them.
        for step, parallelism in (("to_1", 1), ("to_2", 2)):
            with traffic.streaming():
                time.sleep(BEFORE_S)
                began = time.monotonic()
                job = upgrade(p, parallelism)
                record(record_property, f"rescale_s:{step}", time.monotonic() - began)
                time.sleep(AFTER_S)
            jobs.append(job)
            assert vertex_parallelism(job) == {parallelism}
            traffic.resend_unchanged()
            caught_up(p, traffic, job, step)

        # No failover so far, so nothing was read twice: each record of the chunks topic
        # was written once. A job without state would chunk a re-sent document again
        # (the same chunk ids, version and op once more).
        assert [restarts(j) for j in jobs] == [0, 0, 0], "a job failed over"
        written = Counter((r["chunk_id"], r["version"], r["op"]) for r in chunk_records(p.settings))
        twice = [key for key, n in written.items() if n > 1]
        assert not twice, f"written twice to the chunks topic: {twice[:5]}"
        # Each text went through the model once: what is embedded moved with the keys;
        # every new text was embedded, none again without a change.
        texts = traffic.texts_per_chunk()
        embedded = embedded_per_chunk(p.settings)
        differ = {
            cid: (embedded.get(cid, 0), n) for cid, n in texts.items() if embedded.get(cid, 0) != n
        }
        assert not differ, f"embedded (times, texts) per chunk: {sorted(differ.items())[:5]}"

        # PostgreSQL down: writes retry, the job fails over at worst.
        fault_phase(record_property, "postgres", p, traffic, job, outage(fs, "postgres"))
        assert p.dead_letters() == []

        # A batch of a dozen new documents waits in Flink state, and the Python workers
        # die: the checkpoint that holds their offsets holds the batch too.
        job = upgrade(
            p,
            EMBEDDING__MAX_WAIT_MS=str(BATCH_WAIT_MS),
            EMBEDDING__MAX_BATCH_CHUNKS="100000",  # only the timer flushes
        )
        notes = [document(n, 1, parts=3) for n in range(12)]
        note_chunks = {cid for d in notes for cid in traffic.chunks(d)}  # before the clock
        poll(lambda: completed_checkpoints(job) > 0, "the job's first checkpoint (workers up)")
        before = end_offsets(p.settings, p.settings.kafka.chunks_topic)
        sent = time.monotonic()
        traffic.send(notes)

        def chunked() -> set[str]:  # the documents whose event (its trim last) was chunked
            return {r["doc_id"] for r in chunk_records(p.settings, before) if r["op"] == "trim"}

        # Chunked: their events are in the embed stage's state; the next checkpoint that
        # completes holds them (the group's committed offsets would say so ~10 s later).
        ids = {d["id"] for d in notes}
        poll(lambda: ids <= chunked(), "the documents chunked", timeout_s=BATCH_WAIT_MS / 1000)
        chunked_ms = time.time() * 1000
        poll(
            lambda: latest_checkpoint_triggered_ms(job) > chunked_ms,
            "a checkpoint with the waiting batch",
            timeout_s=BATCH_WAIT_MS / 1000,
        )
        checkpointed_s = time.monotonic() - sent
        record(record_property, "checkpointed_s", checkpointed_s)
        assert note_chunks.isdisjoint(index_now(p)), "the batch should still be waiting"
        assert checkpointed_s < BATCH_WAIT_MS / 1000 - 3, "too slow to crash in time"
        before = restarts(job)
        kill_python_workers(fs.settings)
        caught_up(p, traffic, job, "the crash with a batch waiting")
        assert restarts(job) > before, "the job did not fail over"
        # Each of their chunks went through the model once: neither lost nor doubled.
        embedded = embedded_per_chunk(p.settings)
        assert {cid: embedded.get(cid, 0) for cid in note_chunks} == dict.fromkeys(note_chunks, 1)

        # A lone update, in a batch that never fills, is indexed when its wait is over.
        lone = document(0, 2, parts=1)
        traffic.send([lone])
        caught_up(p, traffic, job, "the lone update")
        store = p.store()
        try:
            (chunk,) = store.get([chunk_id(lone["id"], 0)])
        finally:
            store.close()
        waited_ms = chunk.indexed_at_ms - chunk.source_ts_ms
        record(record_property, "lone_update_waited_s", waited_ms / 1000)
        assert BATCH_WAIT_MS <= waited_ms < BATCH_WAIT_MS + 15_000
        assert p.dead_letters() == []
    finally:
        cancel(job)
        generations.drop_all(p.settings)
