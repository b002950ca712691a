"""`make bench` replay figure: re-materialize the bench index from its embeddings topic.

``replay_figures(settings, env)`` is called by bench/run.py after its ingest run, with the
bench's settings (its topics and collection). It runs the replay job (jobs/replay/job.py,
bounded, parallelism 1, no model calls) from the embeddings topic into a scratch
collection/table next to the bench index, verifies it against the log, drops it and
returns the rates: ``replay_chunks_per_s`` over the whole job's wall time (JVM and Python
worker startup included, as an operator waits for it) and ``replay_steady_chunks_per_s``
between the first and the last write. Re-embedding rates come from the ingest figures.
"""

from __future__ import annotations

import uuid

from streamrag.config import Settings


def replay_figures(settings: Settings, env: dict[str, str]) -> dict[str, float | int]:
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
    target = f"{serving_name(settings)}_replay{tag}"
    job = override_settings(
        settings, target, kafka={"group_id": f"{settings.kafka.group_id}-replay{tag}"}
    )
    store = open_store(settings.store, target)
    try:
        store.ensure(dim)
        wall = run_job(
            "jobs.replay.job", job, store, state.upserts, "replay", progress=False, base_env=env
        )
        verify(store, state.expected())
        chunks = store.count()
        stamps = sorted(c.indexed_at_ms for c in store.get(store.all_ids()))
    finally:
        store.drop()
        store.close()
    return {
        "replay_records": state.records,
        "replay_chunks": chunks,
        "replay_wall_s": round(wall, 1),
        "replay_chunks_per_s": round(chunks / wall, 2),
        "replay_steady_chunks_per_s": round(steady_rate(stamps), 1),
    }


def steady_rate(stamps: list[int]) -> float:
    """Chunks a second once the job is up: the rows written after the first write, over the
    time from the first write to the last. Rows of one write share its stamp, so the first
    write's rows are not counted: they were read before the clock started."""
    stamps = sorted(stamps)
    later = sum(1 for t in stamps if t > stamps[0]) if stamps else 0
    seconds = (stamps[-1] - stamps[0]) / 1000 if stamps else 0
    return later / seconds if seconds > 0 else 0.0
