"""DESIGN.md invariant 1 under real crashes: after a crash and restore the
index equals what a clean run gives (no duplicate, no stale, no missing chunk).

Three waves of documents (new; shrunk or deleted; changed again), two SIGKILLs mid-wave:

1. On a Flink cluster (`flink run`, the local standalone one), the job's Python worker
   process dies after a checkpoint committed the first wave's offsets: Flink fails the
   task over and restores offsets and keyed state from that checkpoint (the failover is
   checked in Flink's REST API). In local execution Python runs inside the client
   process, so only a cluster has a worker to kill.
2. The whole local job dies (client, JVM, Python), as with a lost machine: a new job
   starts from the committed offsets without state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jobs.chunking.planner import chunk_id
from tests.integration.conftest import Pipeline
from tests.integration.harness import (
    Job,
    cluster_job,
    committed_offsets,
    completed_checkpoints,
    crash_mid_way,
    document,
    embedded_per_chunk,
    expected_index,
    flink_job,
    index_now,
    kill_task_manager_python_workers,
    poll,
    wave,
    without,
)


# One store: the crashes here are of the job (its Python worker, the whole local job);
# both stores' writes under crashes and outages are tests/integration/test_faults.py's
# (Milvus: four faults in one job's life; pgvector: rescaling and a PostgreSQL outage),
# and the batch-in-state crash below runs on pgvector.
@pytest.mark.parametrize("pipeline", ["milvus"], indirect=True)
def test_after_a_crash_and_restore_the_index_equals_a_clean_run(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Small cross-document batches, so that a wave is indexed in many writes and a crash
    # can land in the middle of it.
    pipeline.env["STREAMRAG_EMBEDDING__MAX_BATCH_CHUNKS"] = "16"
    monkeypatch.setattr(os, "environ", pipeline.env)  # flink run builds the job from it
    first = wave(1, parts=6, deleted=set())
    deleted = {"note-01", "note-03"}
    second = wave(2, parts=5, deleted=deleted)  # every note shrinks; two are deleted
    third = wave(3, parts=6, deleted=deleted)

    # 1. On the cluster, a Python worker dies: Flink restores offsets and keyed state.
    with cluster_job(pipeline.settings) as job_id:
        pipeline.produce_docs(first)
        poll(
            lambda: committed_offsets(pipeline.settings) == len(first),
            "a checkpoint after the first wave",
        )
        pipeline.produce_docs(second)
        pipeline.produce([(doc_id, None) for doc_id in sorted(deleted)])
        want = without(expected_index(pipeline.settings, first + second), deleted)
        crash_mid_way(pipeline, want, kill_task_manager_python_workers)
        poll(lambda: index_now(pipeline) == want, "the job to recover and catch up")
        assert flink_job(job_id)[0] == "RUNNING" and flink_job(job_id)[1] >= 1  # it failed over

    # 2. The whole local job dies; a new one, without state, goes on from committed offsets.
    job = Job.start(pipeline, tmp_path / "job.log")
    try:
        pipeline.produce_docs(third)
        want = without(expected_index(pipeline.settings, first + second + third), deleted)
        crash_mid_way(pipeline, want, job.kill, job.check_running)
    finally:
        job.kill()
    pipeline.run()
    assert index_now(pipeline) == want
    assert pipeline.dead_letters() == []


# One store: the batch waits in Flink state before any write, whatever the store
# (crashes during the stores' writes: the test above, and tests/integration/test_faults.py).
@pytest.mark.parametrize("pipeline", ["pgvector"], indirect=True)
def test_a_crash_while_a_cross_document_batch_waits_loses_and_duplicates_nothing(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
):
    """The embed stage holds chunks of many documents before one model call. They are
    Flink state: a checkpoint taken while they wait holds them (the source's offsets are
    committed past them), and a worker killed then must give them back on restore."""
    # The documents are sent once the job has completed a checkpoint (its Python workers
    # up). The checkpoint with them read waits for their first bundle through chunking:
    # over 20 s after that on a slow day here, so the batch waits 45 s.
    wait_ms = 45_000
    env = {
        **pipeline.env,
        "STREAMRAG_EMBEDDING__MAX_WAIT_MS": str(wait_ms),
        "STREAMRAG_EMBEDDING__MAX_BATCH_CHUNKS": "100000",  # only the timer flushes
    }
    monkeypatch.setattr(os, "environ", env)  # flink run builds the job from it
    docs = [document(n, 1, parts=3) for n in range(12)]
    want = expected_index(pipeline.settings, docs)

    with cluster_job(pipeline.settings) as job_id:
        poll(lambda: completed_checkpoints(job_id) > 0, "the job's first checkpoint")
        started = time.monotonic()
        pipeline.produce_docs(docs)
        poll(
            lambda: committed_offsets(pipeline.settings) == len(docs),
            "a checkpoint with the documents read",
            timeout_s=wait_ms / 1000,
        )
        assert index_now(pipeline) == {}, "the batch should still be waiting"
        assert time.monotonic() - started < wait_ms / 1000 - 3, "too slow to crash in time"
        kill_task_manager_python_workers()

        poll(lambda: index_now(pipeline) == want, "the restored batch to be indexed")
        assert flink_job(job_id)[1] >= 1  # it failed over
        # Each chunk went through the model once: the batch was neither lost nor doubled.
        assert embedded_per_chunk(pipeline.settings) == dict.fromkeys(want, 1)

        # A lone update in a batch that never fills is indexed when its wait is over.
        lone = document(0, 2, parts=1)
        pipeline.produce_docs([lone])
        want = expected_index(pipeline.settings, [*docs, lone])
        poll(lambda: index_now(pipeline) == want, "the lone update", timeout_s=wait_ms / 1000 + 60)
        store = pipeline.store()
        try:
            (chunk,) = store.get([chunk_id(lone["id"], 0)])
        finally:
            store.close()
        waited_ms = chunk.indexed_at_ms - chunk.source_ts_ms
        assert wait_ms <= waited_ms < wait_ms + 15_000
    assert pipeline.dead_letters() == []
