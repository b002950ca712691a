"""`make bench` replay figures: re-materialize the bench index from its embeddings topic.

``replay_figures(settings, env)`` is called by bench/run.py after its ingest run, with the
bench's settings (its topics and store). It runs the replay job (jobs/replay/job.py,
bounded, parallelism 1, no model calls) from the embeddings topic into a scratch
collection/table, built as a replay's new generation is: a pgvector table loaded without
its search indexes, which are built after the load (`replay_index_build_s`); a Milvus
server's collection flushed (sealed) and indexed. It verifies the result against the log,
and returns the rates: ``replay_chunks_per_s`` over the whole job's wall time (JVM and
Python worker startup included, as an operator waits for it) and
``replay_steady_chunks_per_s`` from the first write to the last, and
``replay_searchable_chunks_per_s`` over that time plus the index build's: from the first
write until the new index is searchable through its indexes.
``store`` replays into another of the stack's stores (bench/stores.py); ``then`` runs on
the scratch index before it is dropped (the per-store query figures). Re-embedding rates
come from the ingest figures.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamrag.config import MilvusConfig, PgvectorConfig, Settings
from streamrag.stores.base import VectorStore
from streamrag.stores.schema import VECTOR

if TYPE_CHECKING:
    from streamrag.stores.milvus import MilvusStore

# A Milvus server builds a sealed segment's index in the background: how long to wait.
INDEX_WAIT_S = 600


def replay_figures(
    settings: Settings,
    env: dict[str, str],
    store: MilvusConfig | PgvectorConfig | None = None,
    then: Callable[[Settings], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from jobs.indexing.log import LogState, verify
    from jobs.replay.driver import override_settings, run_job
    from streamrag.generations import serving_name
    from streamrag.kafka import read_log
    from streamrag.stores import open_store

    topic = settings.kafka.embeddings_topic
    state = LogState()
    for m in read_log(settings, topic):
        state.add_value(m.value)
    dim = state.dim()
    if dim is None:
        raise SystemExit(f"bench: {topic} holds no embeddings to replay")
    tag = uuid.uuid4().hex[:6]
    if store is not None:
        settings = settings.model_copy(update={"store": store})
    target = f"{serving_name(settings)}_replay{tag}"
    job = override_settings(
        settings, target, kafka={"group_id": f"{settings.kafka.group_id}-replay{tag}"}
    )
    scratch = open_store(job.store, target)
    extra: dict[str, Any] = {}
    try:
        ensure_for_bulk_load(scratch, dim)
        wall = run_job(
            "jobs.replay.job", job, scratch, state.upserts, "replay", progress=False, base_env=env
        )
        build_s = build_replayed_indexes(scratch, job.store)
        verify(scratch, state.expected())
        chunks = scratch.count()
        stamps = sorted(c.indexed_at_ms for c in scratch.get(scratch.all_ids()))
        if then is not None:
            extra = then(job)
    finally:
        scratch.drop()
        scratch.close()
    steady = steady_rate(stamps)
    searchable = chunks / (chunks / steady + build_s) if steady > 0 else 0.0
    return {
        "replay_records": state.records,
        "replay_chunks": chunks,
        "replay_wall_s": round(wall, 1),
        "replay_chunks_per_s": round(chunks / wall, 2),
        "replay_index_build_s": round(build_s, 2),
        "replay_steady_chunks_per_s": round(steady, 1),
        "replay_searchable_chunks_per_s": round(searchable, 1),
        **extra,
    }


def ensure_for_bulk_load(store: VectorStore, dim: int) -> None:
    """A new generation's table/collection: pgvector's without its search indexes."""
    from streamrag.stores.pgvector import PgvectorStore

    if isinstance(store, PgvectorStore):
        store.ensure(dim, search_indexes=False)
    else:
        store.ensure(dim)


def build_replayed_indexes(store: VectorStore, config: MilvusConfig | PgvectorConfig) -> float:
    """Seconds to make the loaded rows searchable through their indexes: pgvector's
    search indexes built in one pass (as a swap does); a Milvus server's segments sealed
    and indexed; nothing for Milvus Lite (FLAT)."""
    from streamrag.stores.milvus import MilvusStore
    from streamrag.stores.pgvector import PgvectorStore, build_search_indexes

    started = time.perf_counter()
    if isinstance(store, PgvectorStore) and isinstance(config, PgvectorConfig):
        with store.connection() as conn:
            build_search_indexes(conn, store.table, config.index_build_memory_mb)
    elif isinstance(store, MilvusStore) and not store.server.lite:
        store.client.flush(store.collection)  # seal what is still growing
        wait_indexed(store)
    return time.perf_counter() - started


def wait_indexed(store: MilvusStore) -> None:
    """Until a Milvus server has indexed every sealed row of the store's collection
    (nothing pending, and every row in an indexed segment: a segment that compaction has
    just made is briefly neither)."""
    deadline = time.monotonic() + INDEX_WAIT_S
    while True:
        index = store.client.describe_index(store.collection, VECTOR)
        pending = int(index.get("pending_index_rows", 0))
        if pending == 0 and int(index.get("indexed_rows", 0)) >= int(index.get("total_rows", 0)):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: Milvus did not index {store.collection} in time")
        time.sleep(0.1)


def steady_rate(stamps: list[int]) -> float:
    """Chunks a second once the job is up: the rows written after the first write, over the
    time from the first write to the last. Rows of one write share its stamp, so the first
    write's rows are not counted: they were read before the clock started."""
    stamps = sorted(stamps)
    later = sum(1 for t in stamps if t > stamps[0]) if stamps else 0
    seconds = (stamps[-1] - stamps[0]) / 1000 if stamps else 0
    return later / seconds if seconds > 0 else 0.0
