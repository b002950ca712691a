"""`make bench-scale`: how the ingest job's cost grows with the corpus (issue 14, item 3).

The model is the hashing embedder (`hash:384`, no model cost): on this CPU the real model
(~40 chunks/s) would take over 80 minutes for 200,000 chunks, and it costs the same per
chunk at any size. What grows with the data is the rest, which this measures: the
plumbing, the per-document state and the vector store.

For each store (``--stores``, default pgvector and the Milvus server, the stack's two real
stores; ``milvus`` is Milvus Lite) and at each size (``--docs``, default 40, 400 and 4,000
documents of 50 one-section chunks, Markdown made from samples/corpus: 2,000, 20,000 and
200,000 chunks), on fresh topics and a fresh collection or table (parallelism 1):

  -> produce the documents, run the ingest job (`streamrag run --bounded`), while it runs:
     - peak RSS of the job's processes (client, JVM, Python workers)
       and their CPU time, and the store server's CPU time (its processes and the
       children it reaped: PostgreSQL's backends);
     - the job's Prometheus endpoint (scraped every second; the last scrape before the end
       counts): ``store_write_ms`` p50/p99 (one flush's upserts and trims, the job's
       gauges over its last five minutes), and its sum and count;
     - the local checkpoints (`.work/checkpoints/<group>/bounded`, watched every 0.2 s:
       the bounded run removes them at its end): the last completed one holds the state of
       every document (the embed stage's waiting batches are empty by then), so its state
       files (all but ``_metadata``) / documents is the keyed state per document;
  -> chunks/s: by the index's write stamps (the steady rate, without start-up; the ratio
     compares these) and by wall time less the fixed cost (the same bounded job over one
     one-chunk document, measured before and after the sizes: the lesser, since noise only
     adds; none when the rest is under MIN_NET_S); the job's CPU per chunk likewise;
  -> replay: the index re-materialized from the embeddings topic (bench/replay.py);
  -> clean up: collection, topics, checkpoints.

Ends with one JSON line, per store: ``scale_<label>_<docs>_...`` per size,
``scale_<label>_throughput_ratio`` (steady chunks/s at the largest size / at the smallest),
``scale_<label>_rss_ratio`` (peak RSS, largest / smallest) and what was chosen; labels as in
bench/run.py (``pgvector``, ``milvus_server``). Milvus Lite's keys keep their names
from before the stores had labels: ``scale_<docs>_...``, ``scale_throughput_ratio``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.cleanup import cleanup
from bench.query import free_port
from bench.replay import replay_figures, steady_rate
from bench.run import HASH_MODEL, LABELS, bench_settings, paragraphs, start_bounded_run
from jobs.chunking.stage import ChunkStage
from streamrag.config import Settings, load_settings
from streamrag.kafka import ensure_topics, send_all
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.local.stack import STORES, pids, store_env
from streamrag.metrics import Samples, operator_total, scrape
from streamrag.models import resolve_model
from streamrag.stores import open_store

SIZES = (40, 400, 4000)  # documents; x CHUNKS_PER_DOC chunks
BENCH_SIZES = (40, 4000)  # `make bench`'s curve: its two ends, 2,000 and 200,000 chunks
# The stack's real stores (issue 36); Milvus Lite (`milvus`) on request.
DEFAULT_STORES = ("pgvector", "milvus-server")
CHUNKS_PER_DOC = 50
# A paragraph of this many cl100k tokens under its own heading is exactly one chunk: above
# chunking.min_section_tokens (40, no merge with a neighbour), below the 160-token budget
# with room for the heading (no split).
SECTION_TOKENS = (60, 140)
# Wall time less the fixed cost shorter than this is not a rate (the fixed cost's own
# noise here is +-10 s).
MIN_NET_S = 10.0
TARGET_THROUGHPUT = 0.85  # issue 14: within 15 % from the smallest to the largest size
MIB = 2**20


def section_pool(stage: ChunkStage) -> list[str]:
    """The sample corpus's paragraphs that make one chunk each under a heading."""
    low, high = SECTION_TOKENS
    return [p for p in paragraphs() if low <= stage.chunker.count_tokens(p) <= high]


def scale_document(d: int, pool: Sequence[str], chunks: int = CHUNKS_PER_DOC) -> dict[str, str]:
    """Document ``d``: ``chunks`` sections, each a heading that makes its chunk unique
    (no vector reuse between documents) over a paragraph of the pool, in turn."""
    sections = [f"## Note {d}.{k}\n\n{pool[(d * chunks + k) % len(pool)]}" for k in range(chunks)]
    return {
        "id": f"scale/doc-{d:05}",
        "title": f"Scale document {d}",
        "content_type": "markdown",
        "text": "\n\n".join(sections),
    }


def scale_corpus(
    docs: int, pool: Sequence[str], chunks: int = CHUNKS_PER_DOC
) -> list[dict[str, str]]:
    return [scale_document(d, pool, chunks) for d in range(docs)]


def ratio(largest: float, smallest: float) -> float:
    """largest / smallest, 0 when the smallest is 0 (nothing measured)."""
    return round(largest / smallest, 3) if smallest else 0.0


@dataclass
class SizeFigures:
    docs: int
    chunks: int
    wall_s: float
    cpu_s: float  # the job's processes
    steady_chunks_per_s: float  # by the index's write stamps
    peak_rss_mb: float
    peak_jvm_rss_mb: float  # the peaks of the JVM's and the Python processes' RSS
    peak_python_rss_mb: float
    checkpoint_bytes: int  # the last completed checkpoint, _metadata included
    state_bytes: int  # its state files
    store_write_p50_ms: float
    store_write_p99_ms: float
    store_write_ms_per_chunk: float  # the histogram's sum / chunks written
    store_cpu_ms_per_chunk: float  # the store server's processes
    replay_chunks_per_s: float
    replay_steady_chunks_per_s: float

    @property
    def state_bytes_per_doc(self) -> float:
        return self.state_bytes / self.docs if self.docs else 0.0


def net_rate(chunks: int, seconds: float, fixed_s: float) -> float | None:
    """Chunks/s over ``seconds`` less the fixed cost; None when what is left is too short
    to tell from the fixed cost's own noise (a small size on a busy machine)."""
    net = seconds - fixed_s
    return round(chunks / net, 1) if net >= MIN_NET_S else None


def per_chunk_ms(seconds: float, fixed_s: float, chunks: int) -> float | None:
    net = seconds - fixed_s
    return round(net * 1000 / chunks, 3) if net > 0 and chunks else None


def key_prefix(store: str) -> str:
    """``scale_<label>_`` of a store's keys; Milvus Lite's keys are ``scale_`` (their names
    from before the bench had a store per run)."""
    return "scale_" if store == "milvus" else f"scale_{LABELS[store]}_"


def figures(
    sizes: list[SizeFigures],
    fixed_s: list[float],
    fixed_cpu_s: list[float],
    store: str = "milvus",
) -> dict[str, object]:
    """The JSON figures of one store: per size, then the ratios of the largest size to the
    smallest. The fixed cost is the least of its measurements (noise only adds to it)."""
    fixed, fixed_cpu = min(fixed_s, default=0.0), min(fixed_cpu_s, default=0.0)
    k = key_prefix(store)
    out: dict[str, object] = {
        k + "model": HASH_MODEL,
        k + "store": store,
        k + "parallelism": 1,
        k + "docs": [s.docs for s in sizes],
        k + "chunks": [s.chunks for s in sizes],
        k + "chunks_per_doc": CHUNKS_PER_DOC,
        k + "fixed_cost_job_s": [round(f, 1) for f in fixed_s],
        k + "fixed_cost_cpu_s": [round(f, 1) for f in fixed_cpu_s],
    }
    wall_rates = [net_rate(s.chunks, s.wall_s, fixed) for s in sizes]
    for s, wall_rate in zip(sizes, wall_rates, strict=True):
        p = f"{k}{s.docs}_"
        out |= {
            p + "chunks": s.chunks,
            p + "wall_s": round(s.wall_s, 1),
            p + "chunks_per_s": wall_rate,
            p + "steady_chunks_per_s": round(s.steady_chunks_per_s, 1),
            p + "peak_rss_mb": round(s.peak_rss_mb),
            p + "peak_jvm_rss_mb": round(s.peak_jvm_rss_mb),
            p + "peak_python_rss_mb": round(s.peak_python_rss_mb),
            p + "checkpoint_bytes": s.checkpoint_bytes,
            p + "state_bytes_per_doc": round(s.state_bytes_per_doc),
            p + "store_write_p50_ms": s.store_write_p50_ms,
            p + "store_write_p99_ms": s.store_write_p99_ms,
            p + "store_write_ms_per_chunk": round(s.store_write_ms_per_chunk, 3),
            p + "job_cpu_ms_per_chunk": per_chunk_ms(s.cpu_s, fixed_cpu, s.chunks),
            p + "store_cpu_ms_per_chunk": round(s.store_cpu_ms_per_chunk, 3),
            p + "replay_chunks_per_s": s.replay_chunks_per_s,
            p + "replay_steady_chunks_per_s": s.replay_steady_chunks_per_s,
        }
    if sizes:
        small, large = sizes[0], sizes[-1]
        growth_mb = large.peak_rss_mb - small.peak_rss_mb
        state_mb = (large.state_bytes - small.state_bytes) / MIB
        out |= {
            k + "throughput_ratio": ratio(large.steady_chunks_per_s, small.steady_chunks_per_s),
            # by wall rates, from the smallest size that has one
            k + "wall_throughput_ratio": ratio(
                wall_rates[-1] or 0.0, next((r for r in wall_rates if r), 0.0)
            ),
            k + "rss_ratio": ratio(large.peak_rss_mb, small.peak_rss_mb),
            k + "rss_growth_mb": round(growth_mb),
            k + "state_growth_mb": round(state_mb, 1),
            k + "rss_growth_beyond_state_mb": round(growth_mb - state_mb),
            k + "state_per_doc_ratio": ratio(large.state_bytes_per_doc, small.state_bytes_per_doc),
            k + "replay_ratio": ratio(
                large.replay_steady_chunks_per_s, small.replay_steady_chunks_per_s
            ),
        }
        out[k + "throughput_target_met"] = (
            ratio(large.steady_chunks_per_s, small.steady_chunks_per_s) >= TARGET_THROUGHPUT
        )
    return out


# --- measuring one run --------------------------------------------------------------------


def tree_cpu_s(root: psutil.Process) -> dict[int, float]:
    """CPU seconds (user + system) of a process and its descendants, by pid."""
    out: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
    return out


def tree_rss_mb(root: psutil.Process) -> dict[str, float]:
    """RSS (MiB) of a process and its descendants, summed by kind: the JVM and Python."""
    out = {"jvm": 0.0, "python": 0.0}
    with contextlib.suppress(psutil.Error):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                kind = "jvm" if p.name() == "java" else "python"
                out[kind] += p.memory_info().rss / MIB
    return out


def checkpoint_sizes(directory: Path) -> dict[Path, tuple[int, int]]:
    """Completed checkpoints (``<job>/chk-N`` with ``_metadata``): (all bytes, state bytes
    without ``_metadata``)."""
    out: dict[Path, tuple[int, int]] = {}
    for metadata in directory.glob("*/chk-*/_metadata"):
        with contextlib.suppress(OSError):
            files = [f for f in metadata.parent.rglob("*") if f.is_file()]
            total = sum(f.stat().st_size for f in files)
            out[metadata.parent] = (total, total - metadata.stat().st_size)
    return out


class Watch(threading.Thread):
    """While a job runs: its completed checkpoints, the last scrape of its metrics and
    the CPU seconds of its processes (the last seen of each, so that exited workers
    count)."""

    def __init__(self, pid: int, checkpoints: Path, metrics_url: str) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.checkpoints, self.metrics_url = checkpoints, metrics_url
        self.seen: dict[Path, tuple[int, int]] = {}
        self.order: list[Path] = []  # in the order they completed
        self.samples: Samples = {}
        self.cpu: dict[int, float] = {}
        self.peak_mb: dict[str, float] = {"jvm": 0.0, "python": 0.0}  # peak RSS by kind
        self.peak_total_mb = 0.0  # peak of the sum (the kinds peak at different times)
        self.done = False

    def run(self) -> None:
        last_scrape = 0.0
        while not self.done:
            for path, size in checkpoint_sizes(self.checkpoints).items():
                if path not in self.seen:
                    self.order.append(path)
                self.seen[path] = size
            self.cpu |= tree_cpu_s(self.root)
            rss = tree_rss_mb(self.root)
            for kind, mb in rss.items():
                self.peak_mb[kind] = max(self.peak_mb.get(kind, 0.0), mb)
            self.peak_total_mb = max(self.peak_total_mb, sum(rss.values()))
            if time.monotonic() - last_scrape >= 1.0:
                last_scrape = time.monotonic()
                with contextlib.suppress(Exception):
                    samples = scrape(self.metrics_url, timeout_s=2)
                    if operator_total(samples, "store_write_ms_count") > 0:
                        self.samples = samples
            time.sleep(0.2)

    def last_checkpoint(self) -> tuple[int, int]:
        return self.seen[self.order[-1]] if self.order else (0, 0)


@dataclass
class JobRun:
    wall_s: float
    peak_rss_mb: float
    peak_rss_by_kind_mb: dict[str, float]
    cpu_s: float
    store_cpu_s: float
    checkpoint: tuple[int, int]
    samples: Samples


# The stack's service that serves each store.
STORE_SERVICE = {"milvus": "milvus", "milvus-server": "milvus-server", "pgvector": "postgres"}


def store_cpu_s(settings: Settings, store: str) -> float:
    """CPU seconds of the store's server so far: its processes, and the children it has
    reaped (PostgreSQL's backend of a connection that closed)."""
    pid = pids(settings).get(STORE_SERVICE[store])
    if not pid:
        return 0.0
    root = psutil.Process(pid)
    reaped = root.cpu_times()
    return sum(tree_cpu_s(root).values()) + reaped.children_user + reaped.children_system


def run_watched(settings: Settings, env: dict[str, str], store: str) -> JobRun:
    """One bounded ingest run, watched."""
    port = settings.flink.prometheus_port
    store_before = store_cpu_s(settings, store)
    start = time.perf_counter()
    proc = start_bounded_run(env)
    watch = Watch(
        proc.pid, checkpoints_dir(settings, bounded=True), f"http://127.0.0.1:{port}/metrics"
    )
    watch.start()
    _, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - start
    watch.done = True
    watch.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench-scale: the ingest job failed:\n{err[-2000:]}")
    return JobRun(
        wall,
        watch.peak_total_mb,
        watch.peak_mb,
        sum(watch.cpu.values()),
        store_cpu_s(settings, store) - store_before,
        watch.last_checkpoint(),
        watch.samples,
    )


def phase(docs: list[dict[str, str]], store: str) -> tuple[Settings, dict[str, str], JobRun]:
    """Fresh topics and collection or table in ``store``, ``docs`` produced, one watched
    bounded run."""
    settings, env = bench_settings(
        "cpu",
        EMBEDDING__MODEL=HASH_MODEL,
        FLINK__PROMETHEUS_PORT=str(free_port()),
        **store_env(load_settings(), store),
    )
    try:
        ensure_topics(settings)
        send_all(settings, settings.kafka.documents_topic, [(d["id"], json.dumps(d)) for d in docs])
        return settings, env, run_watched(settings, env, store)
    except BaseException:  # the job failed (or the bench was stopped): leave nothing behind
        cleanup(settings)
        raise


def fixed_cost(store: str) -> tuple[float, float]:
    """Wall and CPU seconds of the bounded job over one one-chunk document: start-up (JVM,
    Python workers) and shutdown, which the rates leave out."""
    one = {"id": "scale/idle", "text": "One short paragraph, so that every operator opens."}
    settings, _, run = phase([one], store)
    cleanup(settings)
    return run.wall_s, run.cpu_s


def measure(n_docs: int, pool: Sequence[str], store: str) -> SizeFigures:
    docs = scale_corpus(n_docs, pool)
    want = n_docs * CHUNKS_PER_DOC
    settings, env, run = phase(docs, store)
    try:
        store = open_store(settings.store)
        try:
            count = store.count()
            stamps = [c.indexed_at_ms for c in store.get(store.all_ids())]
        finally:
            store.close()
        if count != want:
            raise SystemExit(f"bench-scale: the index holds {count} chunks, expected {want}")
        replay = replay_figures(settings, env)
    finally:
        cleanup(settings)
    s = run.samples
    written = operator_total(s, "chunks_indexed") or want
    return SizeFigures(
        docs=n_docs,
        chunks=want,
        wall_s=run.wall_s,
        cpu_s=run.cpu_s,
        steady_chunks_per_s=steady_rate(stamps),
        peak_rss_mb=run.peak_rss_mb,
        peak_jvm_rss_mb=run.peak_rss_by_kind_mb["jvm"],
        peak_python_rss_mb=run.peak_rss_by_kind_mb["python"],
        checkpoint_bytes=run.checkpoint[0],
        state_bytes=run.checkpoint[1],
        store_write_p50_ms=operator_total(s, "store_write_ms_p50"),
        store_write_p99_ms=operator_total(s, "store_write_ms_p99"),
        store_write_ms_per_chunk=operator_total(s, "store_write_ms_sum") / written,
        store_cpu_ms_per_chunk=run.store_cpu_s * 1000 / want,
        replay_chunks_per_s=float(replay["replay_chunks_per_s"]),
        replay_steady_chunks_per_s=float(replay["replay_steady_chunks_per_s"]),
    )


def store_curve(store: str, sizes: Sequence[int], pool: Sequence[str]) -> dict[str, object]:
    """One store's curve: the fixed cost, every size, the fixed cost again."""
    print(f"[{store}] sizes {sizes} documents x {CHUNKS_PER_DOC} chunks", flush=True)
    fixed = [fixed_cost(store)]
    print(
        f"[{store}] fixed cost (one-document job): {fixed[0][0]:.1f} s, {fixed[0][1]:.1f} CPU-s",
        flush=True,
    )
    measured: list[SizeFigures] = []
    for n in sizes:
        measured.append(measure(n, pool, store))
        print(f"[{store}] size {n}: {json.dumps(asdict(measured[-1]))}", flush=True)
    fixed.append(fixed_cost(store))
    print(f"[{store}] fixed cost again: {fixed[1][0]:.1f} s, {fixed[1][1]:.1f} CPU-s", flush=True)
    out = figures(measured, [w for w, _ in fixed], [c for _, c in fixed], store)
    print(f"[{store}] {json.dumps(out)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--docs",
        default=",".join(map(str, SIZES)),
        help="comma-separated corpus sizes in documents (default %(default)s)",
    )
    parser.add_argument(
        "--stores",
        default=",".join(DEFAULT_STORES),
        help=f"comma-separated stores of the stack, from {', '.join(STORES)}"
        " (default %(default)s; milvus is Milvus Lite)",
    )
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in stores if s not in STORES]
    if unknown or not stores:
        parser.error(f"unknown store {unknown[0]!r}" if unknown else "no store given")
    try:
        sizes = sorted(int(n) for n in args.docs.split(","))
    except ValueError:
        parser.error(f"--docs takes numbers of documents, not {args.docs!r}")
    print(json.dumps(curves(stores, sizes)))


def curves(stores: Sequence[str], sizes: Sequence[int]) -> dict[str, object]:
    """Every store's curve at ``sizes`` (documents), one after the other."""
    settings, _ = bench_settings("cpu", EMBEDDING__MODEL=HASH_MODEL)
    pool = section_pool(ChunkStage.for_model(settings.chunking, resolve_model(HASH_MODEL)))
    print(
        f"scale curve: model {HASH_MODEL} (no model cost: the plumbing, state and store),"
        f" parallelism 1; stores {list(stores)}",
        flush=True,
    )
    out: dict[str, object] = {}
    for store in stores:
        out |= store_curve(store, sorted(sizes), pool)
    return out


if __name__ == "__main__":
    main()
