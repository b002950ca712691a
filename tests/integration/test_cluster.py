"""`flink run -py jobs/pipeline.py` on a standalone Flink cluster gives the same index, and
a bounded submit leaves its consumer group with nothing to read again."""

from __future__ import annotations

import os

from streamrag.config import load_settings
from streamrag.kafka import pending_records
from streamrag.local import cluster
from tests.integration.conftest import make_pipeline


def test_the_ingest_job_runs_with_flink_run_on_a_standalone_cluster(stack, monkeypatch):
    pipeline = make_pipeline(stack, "milvus")
    monkeypatch.setattr(os, "environ", pipeline.env)  # the submitted job reads the same config
    settings = load_settings()
    pipeline.produce_docs([{"id": "on-cluster", "text": "Submitted with flink run. " * 20}])

    cluster.up(settings)
    try:
        cluster.submit(settings, bounded=True)
    finally:
        cluster.down(settings)

    store = pipeline.store()
    assert len(store.doc_chunk_ids("on-cluster")) == 1
    # Its offsets are committed, by the job or after it (runstats.settle_offsets).
    assert pending_records(settings, settings.kafka.documents_topic, settings.kafka.group_id) == 0
    store.drop()
    store.close()
