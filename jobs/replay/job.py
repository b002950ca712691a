"""Replay job: re-materialize an index generation from the embeddings topic, no model calls.

    Kafka source (embeddings topic, from the earliest offset: a fresh consumer group)
      -> apply       upserts written in batches as they come (version-guarded: the newest
                     per chunk id wins); the latest trim per document held back; at the
                     end of the input, the last batch of upserts, then the trims
                     (rules: jobs.indexing.apply)

The trims need one applier that sees the whole log: the job runs with parallelism 1
(which also leaves the other core to live ingestion), keyed by one constant so that a
timer can fire at the end of the input, and without restarts (held writes would be lost;
a failed replay is simply run again, see jobs.replay.driver). The end of the input is
the final watermark's timer, not close(): a bounded PyFlink job may end before close()
is through (a replay into pgvector lost the last 128 of 16,000 upserts that way).

Run: ``python -m jobs.replay.job --bounded`` with ``store.collection``/``table`` set to the
new generation and a fresh ``kafka.group_id`` (``streamrag replay rematerialize`` does it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext, StreamExecutionEnvironment

from jobs.indexing.apply import PendingWrites
from jobs.indexing.log import parse_embedding
from streamrag.config import Settings
from streamrag.errors import BadRecord
from streamrag.flink import END_OF_INPUT, create_context, kafka_source, run_job_main
from streamrag.stores import open_store

log = logging.getLogger(__name__)

# A replay is a bulk load: nobody waits for one record, so the Python worker takes records
# in bundles of this size (the ingest job's default is 100, for freshness). Measured on
# 30,000 records into pgvector: 2,800 writes/s with bundles of 100, 3,480 with 1,000,
# 3,900 with 5,000 (a bundle is ~17 MB of records); a background writer thread beside it
# gained nothing (the worker's own CPU is the bound, not the store's round trips).
REPLAY_BUNDLE_SIZE = 5000
REPLAY_BUNDLE_TIME_MS = 1000


class ApplyEmbeddings(KeyedProcessFunction):
    """Every embedding record into the generation's store; trims at the end of the input."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self._store = open_store(self._settings.store)
        # A new generation starts empty: then what this job wrote is all it holds, and the
        # version guard needs no read before each batch of upserts.
        fresh = self._store.count() == 0
        self._pending = PendingWrites(self._store, stored_versions={} if fresh else None)
        self._unreadable = runtime_context.get_metrics_group().counter("unreadable")
        self._armed = False

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[str]:
        if not self._armed:
            ctx.timer_service().register_event_time_timer(END_OF_INPUT)
            self._armed = True
        try:
            record = parse_embedding(row["v"])
        except BadRecord as e:  # LogState leaves it out too, so verification agrees
            self._unreadable.inc()
            log.warning("skipped %s/%s/%s: %s", row["topic"], row["partition"], row["offset"], e)
            record = None
        if record is not None:
            self._pending.add(record)
        yield from ()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[str]:
        self._pending.finish()
        self._store.flush()
        yield from ()

    def close(self) -> None:
        self._store.close()


def replay_settings(settings: Settings) -> Settings:
    """The replay job's settings: one applier (parallelism 1), no restarts (held writes
    would be lost), and bulk bundles."""
    flink = settings.flink.model_copy(
        update={
            "parallelism": 1,
            "restart_attempts": 0,
            "bundle_size": REPLAY_BUNDLE_SIZE,
            "bundle_time_ms": REPLAY_BUNDLE_TIME_MS,
        }
    )
    return settings.model_copy(update={"flink": flink})


def build(settings: Settings, bounded: bool = True) -> StreamExecutionEnvironment:
    """The replay job (always bounded: it stops at the end of the topic as of its start)."""
    settings = replay_settings(settings)
    ctx = create_context(settings, "streamrag-replay")
    raw = kafka_source(
        ctx, settings, "embedding_records", [settings.kafka.embeddings_topic], bounded=True
    )
    one_key = raw.key_by(lambda row: 0, key_type=Types.INT())
    one_key.process(ApplyEmbeddings(settings), output_type=Types.STRING()).uid("apply").name(
        "apply"
    ).print()
    return ctx.env


def main(argv: list[str] | None = None) -> None:
    run_job_main(build, "streamrag-replay", argv)


if __name__ == "__main__":
    main()
