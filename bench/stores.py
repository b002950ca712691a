"""`make bench` figures per store: the local stack's pgvector, Milvus server and Milvus Lite.

For each store, after bench/run.py's main figures (which use the configured default):

  plumbing_<label>_chunks_per_s   the ingest path with the hashing model into that store
                                  (bench/run.py's plumbing run, the same corpus x 8)
  <label>_replay_...              the bench's embeddings topic replayed into a new index
                                  there, built and verified (bench/replay.py)
  <label>_query_p50_ms / p99      `streamrag serve` with the real model on that replayed
                                  bench index, open loop at 10 queries/s (bench/openloop.py)
  <label>_query_store_p99_ms ...  the 200,000-chunk hashing-model index: dense and hybrid
                                  at 20 queries/s, the highest rate with p99 < 100 ms
                                  (bench/openloop.py)

Labels: ``pgvector``, ``milvus_server``, ``milvus_lite``. ``python -m bench.stores``
measures only this section (its own ingest run with the real model makes the embeddings
topic to replay) and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench import openloop
from bench.query import serving
from bench.replay import replay_figures
from bench.run import LABELS
from jobs.replay.driver import settings_file
from streamrag.config import Settings
from streamrag.local.stack import store_config

# Milvus Lite, the slowest by far at 200,000 chunks, last.
ORDER = ("pgvector", "milvus-server", "milvus")
QUERY_RATE = 10.0  # queries/s with the real model (issue 36)
QUERY_WINDOW_S = 30.0


def real_model_queries(settings: Settings, texts: list[str]) -> dict[str, Any]:
    """Open loop at QUERY_RATE through `streamrag serve` on ``settings``' index (the
    service reads exactly those settings, as the replay job does)."""
    with settings_file(settings) as (config, env):
        env |= {"STREAMRAG_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}
        queries = openloop.Queries(texts)
        with serving(env) as service:
            openloop.run_at(service, queries, "dense", QUERY_RATE, 3, openloop.GIVE_UP_MS)
            result = openloop.run_at(
                service, queries, "dense", QUERY_RATE, QUERY_WINDOW_S, openloop.GIVE_UP_MS
            )
    print(f"query (real model, {QUERY_RATE:.0f}/s open loop): {result.summary()}", flush=True)
    return {
        "query_p50_ms": result.p50_ms,
        "query_p99_ms": result.p99_ms,
        "query_stopped_early": result.stopped_early,
    }


def per_store_figures(
    settings: Settings,
    env: dict[str, str],
    plumbing: dict[str, float],
    texts: list[str],
    chunks: int = openloop.CHUNKS,
) -> dict[str, Any]:
    """Every store's figures; ``settings``/``env``: the main bench's (its embeddings
    topic); ``plumbing``: the plumbing rate of each store, already measured."""
    figures: dict[str, Any] = {}
    for store in ORDER:
        label = LABELS[store]
        figures[f"plumbing_{label}_chunks_per_s"] = round(plumbing[store], 1)
        config = store_config(settings, store)
        replay = replay_figures(
            settings, env, config, then=lambda job: real_model_queries(job, texts)
        )
        print(f"replay and queries [{label}]: {replay}", flush=True)
        figures |= {f"{label}_{key}": value for key, value in replay.items()}
        figures |= openloop.store_figures(store, chunks)
        print(f"figures so far: {json.dumps(figures)}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> None:
    from bench import run
    from bench.cleanup import cleanup

    parser = argparse.ArgumentParser(prog="bench.stores", description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=openloop.CHUNKS, help="default %(default)s")
    args = parser.parse_args(argv)
    try:
        figures = run.stores_only(args.chunks)
    finally:
        for phase in run.PHASES:
            cleanup(phase)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
