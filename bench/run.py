"""`make bench`: speed and memory figures, ending with one JSON line.

Bench: build a corpus of 40 documents x ~50 chunks of ~200 tokens from samples/corpus
  -> raw (before): SentenceTransformer.encode on exactly those chunk texts (same batch
     size and torch threads as the job), in one call and in one call per document
  -> pipeline: produce to a fresh documents topic, run the ingest job (bounded, local
     PyFlink), until every chunk is in the index; RSS of the job's processes sampled
  -> raw (after): the same encode again; the reference is the median of before and after,
     and the run is flagged `noisy` when they differ by more than 15 %
  -> plumbing: the same ingest path with the hashing model (embedding.model hash:384, no
     model cost) on 8x the corpus: what the job costs without the model
  -> edit: change one paragraph of one 50-chunk document, run again, count model calls
  -> replay: re-materialize the index from the embeddings topic (bench/replay.py) and
     compare with re-embedding the same chunks (the ingest run above: same job code)
  -> query: `streamrag serve` on that index, 8 concurrent clients, dense and hybrid, then
     dense again while the job ingests 40 more documents (bench/query.py)
  -> freshness: PostgreSQL commit -> indexed through Debezium (bench/freshness.py), at 5
     and at 50 updates a second
  -> per store (pgvector, Milvus server, Milvus Lite): plumbing, replay, open-loop query
     latency (bench/stores.py)
  -> the scale curve of pgvector and the Milvus server at 2,000 and 200,000 chunks
     (bench/scale.py's two ends, about 25 minutes)

Figures are measured in one run so that ratios compare like with like on a noisy machine.
``--device cuda`` (`make bench-gpu`) runs the model on a GPU, in half precision; it stops
with a clear message when torch sees none. ``--device cpu`` runs the same bench on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

import psutil

from bench.cleanup import cleanup
from bench.freshness import freshness_figures
from bench.query import query_figures
from bench.replay import replay_figures, steady_rate
from jobs.chunking.cleaning import clean
from jobs.chunking.stage import ChunkStage
from streamrag.config import PROJECT_ROOT, Settings, isolated_env, load_settings
from streamrag.errors import UserError
from streamrag.kafka import ensure_topics, read_log, send_all
from streamrag.local.stack import STORES, store_env
from streamrag.models import load_model, pick_device, resolve_model
from streamrag.records import DocumentEvent, Origin
from streamrag.stores import open_store

DOCS, CHUNKS_PER_DOC, TORCH_THREADS = 40, 50, 2
PLUMBING_COPIES = 8  # the plumbing run ingests the corpus this many times (distinct ids)
NOISE_LIMIT = 0.15  # raw encode before vs after the pipeline: more apart flags the run
HASH_MODEL = "hash:384"
BenchDevice = Literal["cpu", "cuda"]  # the bench asks for one, never "auto"
# The stack's store that the default config names (the stack's PostgreSQL with pgvector):
# plumbing_chunks_per_s is measured into it.
DEFAULT_STORE = "pgvector"
# The figures' key prefix of each of the stack's stores.
LABELS = {"milvus": "milvus_lite", "milvus-server": "milvus_server", "pgvector": "pgvector"}
CLI = str(Path(sys.executable).with_name("streamrag"))
# The environment the bench started in: each phase runs in this plus its own overrides.
BASE_ENV = dict(os.environ)
# The settings of every phase so far (bench_settings): main() removes what they made
# (the phases that end cleanly remove theirs at once; this catches the rest).
PHASES: list[Settings] = []


def paragraphs() -> list[str]:
    """Paragraphs of the sample corpus, headings dropped (so chunks fill their budget)."""
    out = []
    for path in sorted((PROJECT_ROOT / "samples" / "corpus").iterdir()):
        kind = {".md": "markdown", ".html": "html"}.get(path.suffix, "text")
        text = clean(path.read_text(encoding="utf-8"), kind).text
        out += [p for p in text.split("\n\n") if len(p) > 200 and not p.startswith("#")]
    return out


def corpus(stage: ChunkStage) -> list[dict]:
    """DOCS documents of about CHUNKS_PER_DOC chunks; every paragraph made unique."""
    pool, docs, k = paragraphs(), [], 0
    for d in range(DOCS):
        parts: list[str] = []
        while True:
            parts.append(f"Note {d}.{len(parts)}: {pool[k % len(pool)]}")
            k += 1
            if len(parts) % 10 == 0 and len(spans(stage, "\n\n".join(parts))) >= CHUNKS_PER_DOC:
                break
        docs.append({"id": f"bench/doc-{d:03}", "text": "\n\n".join(parts)})
    return docs


def spans(stage: ChunkStage, text: str) -> list[str]:
    event = DocumentEvent(doc_id="x", version=1, source="b", origin=Origin("b", 0, 0), text=text)
    return [s.text for s in stage.spans(event)]


def raw_encode_rates(
    groups: list[list[str]], batch_size: int, device: BenchDevice = "cpu"
) -> tuple[float, float]:
    """Plain encode of all chunk texts in one call (sentence-transformers sorts them by
    length, so batches carry little padding), and one call per document: (chunks/s in one
    call, chunks/s per document)."""
    texts = [t for g in groups for t in g]
    model = load_model(resolve_model("bundled"), TORCH_THREADS, device)
    model.encode(texts[:64], batch_size=batch_size, normalize_embeddings=True)  # warm up
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    whole = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    for group in groups:
        model.encode(group, batch_size=batch_size, normalize_embeddings=True)
    return whole, len(texts) / (time.perf_counter() - start)


class RssSampler(threading.Thread):
    """Peak summed RSS of a process and all its descendants (JVM, Python workers)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak_mb, self.done = psutil.Process(pid), 0.0, False

    def run(self) -> None:
        while not self.done:
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.5)


def start_bounded_run(env: dict[str, str]) -> subprocess.Popen[str]:
    """`streamrag run --bounded` with ``env``; its stderr is kept for a failure's message."""
    return subprocess.Popen(
        [CLI, "run", "--bounded"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_job(env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one bounded ingest run."""
    start = time.perf_counter()
    proc = start_bounded_run(env)
    sampler = RssSampler(proc.pid)
    sampler.start()
    _, err = proc.communicate(timeout=3600)
    sampler.done = True
    if proc.returncode != 0:
        raise SystemExit(f"bench: the ingest job failed:\n{err[-2000:]}")
    return time.perf_counter() - start, sampler.peak_mb


def use_env(env: dict[str, str]) -> None:
    """Make ``env`` the whole environment (load_settings and the jobs read it)."""
    os.environ.clear()
    os.environ.update(env)


def bench_settings(device: BenchDevice, **overrides: str) -> tuple[Settings, dict[str, str]]:
    """Settings of one bench phase, with topics and collection/table of its own, and its
    environment, which becomes the process's: nothing of an earlier phase remains."""
    env = {
        **BASE_ENV,
        **isolated_env(
            f"bench{uuid.uuid4().hex[:8]}",
            FLINK__PARALLELISM="1",
            EMBEDDING__TORCH_THREADS=str(TORCH_THREADS),
            EMBEDDING__DEVICE=device,
            CDC__TABLES="{}",
            **overrides,
        ),
    }
    use_env(env)
    settings = load_settings()
    PHASES.append(settings)
    return settings, env


def ingest_rate(
    settings: Settings, env: dict[str, str], docs: list[dict]
) -> tuple[float, float, float]:
    """Produce ``docs`` and run the ingest job on them: (wall s, chunks/s by the index's
    write stamps, peak RSS MB)."""
    ensure_topics(settings)
    send_all(settings, settings.kafka.documents_topic, [(d["id"], json.dumps(d)) for d in docs])
    wall, peak_mb = run_job(env)
    store = open_store(settings.store)
    try:
        stamped = steady_rate([c.indexed_at_ms for c in store.get(store.all_ids())])
    finally:
        store.close()
    return wall, stamped, peak_mb


def fixed_cost_wall(device: BenchDevice, model: str, **overrides: str) -> float:
    """Wall seconds of the same bounded job over one one-chunk document: start-up (JVM,
    Python workers), the model's load, the first flush's wait and shutdown, which a run's
    wall time less this leaves out. Over empty topics the operators never open, so the
    model would not even load (6 to 7 s of the run's wall time here)."""
    settings, env = bench_settings(device, EMBEDDING__MODEL=model, **overrides)
    ensure_topics(settings)
    one = {"id": "bench/idle", "text": "One short paragraph, so that every operator opens."}
    send_all(settings, settings.kafka.documents_topic, [(one["id"], json.dumps(one))])
    wall, _ = run_job(env)
    cleanup(settings)
    return wall


def plumbing_rate(
    device: BenchDevice, docs: list[dict], want: int, store: str
) -> tuple[float, float]:
    """Chunks/s of the ingest path with the hashing model (no model cost) into one of the
    stack's stores (streamrag.local.stack.STORES): by wall time less the one-document
    job's, and by the index's write stamps."""
    where = store_env(load_settings(), store)
    idle = fixed_cost_wall(device, HASH_MODEL, **where)
    settings, env = bench_settings(device, EMBEDDING__MODEL=HASH_MODEL, **where)
    more = [{**d, "id": f"copy{n}/{d['id']}"} for n in range(PLUMBING_COPIES) for d in docs]
    wall, stamped, _ = ingest_rate(settings, env, more)
    index = open_store(settings.store)
    count = index.count()
    index.close()
    cleanup(settings)
    if count != want * PLUMBING_COPIES:
        raise SystemExit(f"bench: plumbing index holds {count}, expected {want * PLUMBING_COPIES}")
    return count / max(wall - idle, 1e-3), stamped


def main(argv: list[str] | None = None) -> None:
    try:
        measure(argv)
    finally:
        for settings in PHASES:
            cleanup(settings)


def measure(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    device: BenchDevice = parser.parse_args(argv).device
    if device == "cuda":
        try:
            pick_device("cuda")
        except UserError as e:
            raise SystemExit(
                f"bench-gpu: {e}; nothing measured (`make bench-gpu DEVICE=cpu` runs it on the CPU)"
            ) from None
    settings, env = bench_settings(device)
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    docs = corpus(stage)
    groups = [spans(stage, d["text"]) for d in docs]
    texts = [t for g in groups for t in g]
    tokens = sum(stage.chunker.count_tokens(t) for t in texts) / len(texts)
    print(
        f"corpus: {len(docs)} documents, {len(texts)} chunks, {tokens:.0f} tokens/chunk", flush=True
    )
    batch = settings.embedding.batch_size_on(device)

    raw_before, raw_per_doc = raw_encode_rates(groups, batch, device)
    print(
        f"raw encode (before): {raw_before:.1f} chunks/s in one call,"
        f" {raw_per_doc:.1f} per document",
        flush=True,
    )

    idle = fixed_cost_wall(device, settings.embedding.model)
    use_env(env)  # back to the main bench's settings
    wall, stamped, peak_mb = ingest_rate(settings, env, docs)
    steady = len(texts) / max(wall - idle, 1e-3)
    store = open_store(settings.store)
    count = store.count()
    if count != len(texts):
        raise SystemExit(f"bench: index holds {count} chunks, expected {len(texts)}")
    print(
        f"pipeline: {wall:.1f} s wall ({idle:.1f} s for a one-document job), {steady:.1f} chunks/s"
        f" ({stamped:.1f} by write stamps), peak RSS {peak_mb:.0f} MB",
        flush=True,
    )
    raw_after, _ = raw_encode_rates(groups, batch, device)
    raw = statistics.median([raw_before, raw_after])
    noisy = abs(raw_after - raw_before) / max(raw_before, raw_after) > NOISE_LIMIT
    print(
        f"raw encode (after): {raw_after:.1f} chunks/s; reference {raw:.1f}"
        + (" (NOISY)" if noisy else ""),
        flush=True,
    )

    # Into each of the stack's stores; the default's is plumbing_chunks_per_s.
    plumbing_by_store, plumbing_stamped = plumbing_rates(device, docs, len(texts))
    use_env(env)  # back to the main bench's settings
    plumbing, plumbing_pg = plumbing_by_store[DEFAULT_STORE], plumbing_by_store["pgvector"]

    edited = dict(docs[0])
    paras = edited["text"].split("\n\n")
    paras[len(paras) // 2] += " This sentence was added by an edit."
    edited["text"] = "\n\n".join(paras)
    embedded_before = count_embedded(settings)
    send_all(settings, settings.kafka.documents_topic, [(edited["id"], json.dumps(edited))])
    run_job(env)
    edit_embedded = count_embedded(settings) - embedded_before
    replay = replay_figures(settings, env)

    def ingest_more() -> None:  # new documents: the job chunks and embeds all of them
        more = [{**d, "id": f"more/{d['id']}"} for d in docs]
        send_all(settings, settings.kafka.documents_topic, [(d["id"], json.dumps(d)) for d in more])
        run_job(env)

    queries = [t.split(". ")[0][:200] for t in texts[:: max(1, len(texts) // 400)]]
    query = query_figures(env, queries, ingest_more)
    store.close()  # main() drops it with the other phases' leftovers

    figures = {
        "device": device,
        "chunks": len(texts),
        "tokens_per_chunk": round(tokens),
        "raw_encode_before_chunks_per_s": round(raw_before, 2),
        "raw_encode_after_chunks_per_s": round(raw_after, 2),
        "raw_encode_chunks_per_s": round(raw, 2),  # the reference: median of before and after
        "noisy": noisy,
        # wall time less a one-document job's (start-up, model load, shutdown)
        "pipeline_chunks_per_s": round(steady, 2),
        "pipeline_fixed_cost_job_s": round(idle, 1),
        # by the index's write stamps: flushes reach the index stage in bursts (a Python
        # bundle's output leaves when the bundle ends), which inflates this figure
        "pipeline_stamped_chunks_per_s": round(stamped, 2),
        "pipeline_vs_raw": round(steady / raw, 3),
        "raw_encode_per_doc_chunks_per_s": round(raw_per_doc, 2),
        "pipeline_vs_raw_per_doc": round(steady / raw_per_doc, 3),
        "pipeline_wall_s": round(wall, 1),
        "pipeline_end_to_end_chunks_per_s": round(len(texts) / wall, 2),
        "plumbing_chunks_per_s": round(plumbing, 1),
        "plumbing_stamped_chunks_per_s": round(plumbing_stamped, 1),
        "plumbing_parallelism": 1,
        "plumbing_pgvector_chunks_per_s": round(plumbing_pg, 1),
        "edit_embedded_chunks": edit_embedded,
        "peak_rss_mb": round(peak_mb),
        **replay,
        "reembed_chunks_per_s": round(steady, 2),
        # Both rates with the job up; wall rates, startup included, are above.
        "replay_vs_reembed": round(replay["replay_steady_chunks_per_s"] / steady, 1),
        "replay_vs_reembed_wall": round(replay["replay_chunks_per_s"] / (len(texts) / wall), 1),
        **query,
    }
    print(f"figures so far: {json.dumps(figures)}", flush=True)
    figures.update(freshness_figures(scrape_metrics=True))
    print(f"figures so far: {json.dumps(figures)}", flush=True)
    figures.update(freshness_figures(rate=50.0, rows=500, label="freshness_50"))
    print(f"figures so far: {json.dumps(figures)}", flush=True)
    use_env(env)
    from bench.stores import per_store_figures  # it imports this module

    figures.update(per_store_figures(settings, env, plumbing_by_store, queries))
    print(f"figures so far: {json.dumps(figures)}", flush=True)
    from bench.scale import BENCH_SIZES, DEFAULT_STORES, curves  # it imports this module

    figures.update(curves(DEFAULT_STORES, BENCH_SIZES))
    print(json.dumps(figures))


def plumbing_rates(
    device: BenchDevice, docs: list[dict], want: int
) -> tuple[dict[str, float], float]:
    """plumbing_rate into each of the stack's stores; and the default store's rate by
    write stamps."""
    rates: dict[str, float] = {}
    stamped = 0.0
    for store in STORES:
        rates[store], by_stamps = plumbing_rate(device, docs, want, store)
        if store == DEFAULT_STORE:
            stamped = by_stamps
        print(
            f"plumbing (model {HASH_MODEL}) into {store}: {rates[store]:.0f} chunks/s"
            f" ({by_stamps:.0f} by write stamps)",
            flush=True,
        )
    return rates, stamped


def stores_only(chunks: int) -> dict[str, object]:
    """bench/stores.py alone: the corpus ingested once with the real model (the embeddings
    topic that the stores replay), the plumbing runs, then every store's figures."""
    settings, env = bench_settings("cpu")
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    docs = corpus(stage)
    texts = [t for d in docs for t in spans(stage, d["text"])]
    ingest_rate(settings, env, docs)
    plumbing, _ = plumbing_rates("cpu", docs, len(texts))
    use_env(env)
    queries = [t.split(". ")[0][:200] for t in texts[:: max(1, len(texts) // 400)]]
    from bench.stores import per_store_figures  # it imports this module

    return dict(per_store_figures(settings, env, plumbing, queries, chunks))


def count_embedded(settings: Settings) -> int:
    """Model calls recorded in the embeddings topic (records with embedded=true)."""
    return sum(
        json.loads(m.value).get("embedded", False)
        for m in read_log(settings, settings.kafka.embeddings_topic, timeout_s=60)
        if m.value
    )


if __name__ == "__main__":
    main()
