"""One ingest job per store, running unbounded while many tests feed it.

A job's start (JVM, Python worker, model) is most of what a bounded run of a few documents
costs, so the tests of what the job does with records share one running job per store
(``live`` in tests/integration/ingest/conftest.py). Each test works in a namespace of its
own: its document ids (and Kafka keys) start with the namespace's prefix, and it reads
back only its own chunks and dead letters.

``settle()`` is how a test knows the job is through with what it sent: a fence document
goes to every partition of the documents topic; each partition is read in order, so once
every fence is indexed, every record sent before it has been indexed or dead-lettered.
The dead-letter sink flushes on checkpoints: once a checkpoint triggered after that has
completed, its barrier has passed the sink behind every dead letter of those records, so
they can be read. (The group's committed offsets would say the same, but the Kafka source
commits them a few checkpoints late: waiting for them cost ~9 s per settle.)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streamrag import generations
from streamrag.config import Settings
from streamrag.kafka import Message, RecordProducer
from streamrag.status import FlinkJob, find_job
from streamrag.stores.base import StoredChunk, VectorStore
from tests.integration.conftest import Pipeline
from tests.integration.harness import Job, latest_checkpoint_triggered_ms, poll
from tests.integration.harness import restarts as flink_restarts

FENCE_PREFIX = "~fence/"
# The first settle waits for the job's start too (JVM, Python worker, model).
START_TIMEOUT_S = 300


@dataclass
class LiveJob:
    """The ingest job (``streamrag run``, unbounded) on one pipeline of its own."""

    pipeline: Pipeline
    job: Job
    _fences: int = 0
    _flink: FlinkJob | None = None

    @classmethod
    def start(cls, pipeline: Pipeline, log_dir: Path) -> LiveJob:
        pipeline.env["FLINK_LOG_DIR"] = str(log_dir)
        live = cls(pipeline, Job.start(pipeline, log_dir / "job.out"))
        live.settle(START_TIMEOUT_S)
        return live

    @property
    def settings(self) -> Settings:
        return self.pipeline.settings

    def namespace(self, name: str) -> Namespace:
        """A fresh namespace: ids that no other test (or run of this one) uses."""
        return Namespace(self, f"{name}-{uuid.uuid4().hex[:6]}/")

    def produce(self, records: Iterable[tuple[str, str | bytes | None]], ts_ms: int = 0) -> None:
        self.pipeline.produce(list(records), ts_ms)

    def produce_docs(self, docs: Iterable[dict]) -> None:
        self.pipeline.produce_docs(list(docs))

    def store(self) -> VectorStore:
        return self.pipeline.store()

    def topic(self, name: str) -> list[Message]:
        return self.pipeline.topic(name)

    def settle(self, timeout_s: float = 120) -> None:
        """Return once the job has handled every record sent so far (see the module doc)."""
        self._fences += 1
        settings = self.settings
        fences = {f"{FENCE_PREFIX}{self._fences}-p{p}": p for p in range(settings.kafka.partitions)}
        producer = RecordProducer(settings)
        for doc_id, partition in fences.items():
            value = json.dumps({"id": doc_id, "text": f"Fence {doc_id} of the test run."})
            producer.send(settings.kafka.documents_topic, doc_id, value, partition=partition)
        producer.flush()
        alive = self.job.check_running
        poll(lambda: self._all_indexed(fences), "the fences indexed", alive, timeout_s)
        fenced_ms = time.time() * 1000
        poll(
            lambda: latest_checkpoint_triggered_ms(self.flink.job_id, self.flink.url) > fenced_ms,
            "a checkpoint after them",
            alive,
            60,
        )

    def restarts(self) -> int:
        """How many times Flink has restarted the job's tasks."""
        return flink_restarts(self.flink.job_id, self.flink.url)

    def stop(self) -> None:
        self.job.kill()
        generations.drop_all(self.settings)

    @property
    def flink(self) -> FlinkJob:
        """The job in Flink's REST API (looked up once)."""
        if self._flink is None:
            self._flink = find_job(self.settings, [])
            assert self._flink is not None, "the job is in no local Flink REST API"
        return self._flink

    def _all_indexed(self, doc_ids: Iterable[str]) -> bool:
        if generations.serving(self.settings) is None:  # the job has not made its index yet
            return False
        store = self.store()
        try:
            return all(store.doc_chunk_ids(d) for d in doc_ids)
        finally:
            store.close()


@dataclass
class Namespace:
    """A test's own document ids in a shared job: ``ns("a")`` is the id of its "a"."""

    live: LiveJob
    prefix: str

    def __call__(self, doc_id: str) -> str:
        return self.prefix + doc_id

    def chunks(self) -> list[StoredChunk]:
        """Every chunk of this namespace's documents in the index."""
        store = self.live.store()
        try:
            return [c for c in store.get(store.all_ids()) if c.doc_id.startswith(self.prefix)]
        finally:
            store.close()

    def dead_letters(self) -> list[dict]:
        """The dead letters of the records this namespace sent (by their Kafka key)."""
        letters = self.live.pipeline.dead_letters()
        return [d for d in letters if (d.get("key") or "").startswith(self.prefix)]
