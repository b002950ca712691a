"""Open-loop query latency of `streamrag serve` on a 200,000-chunk index, per store.

``python -m bench.openloop --store pgvector|milvus|milvus-server [--chunks N] [--reuse]
[--keep]`` prints progress lines and ends with one JSON line of figures, each key
prefixed with the store's label (``pgvector_query_store_p99_ms``,
``milvus_server_...``, ``milvus_lite_...``). The stores are the local stack's
(streamrag.local.stack.store_env: its PostgreSQL, its Milvus Lite server, its Milvus
server with the token file); `make bench` measures all three (bench/stores.py).

What is measured, and how:

  Open loop. bench/query.py's closed-loop clients each wait for an answer before they
  ask again, so a slow answer holds back the requests behind it, which are then never
  timed (coordinated omission): that measures throughput. Here request i is due at
  t0 + i / rate, as independent users' requests would be, and is sent at that time on a
  pool of threads large enough that a slow request never delays the next arrival. Its
  latency runs from when it was *due* to its answer, so a stall counts against every
  request that arrived during it. A run stops sending once more of its requests are
  (or, still running, will be) later than its limit than a p99 under that limit allows:
  100 ms in the max-rate search, 2 s at the fixed rate. The service cannot keep up then,
  and waiting out a growing backlog would only take time; its figures (over the requests
  sent, backlog included) are a lower bound, flagged ``stopped_early``. The client sends
  with http.client, one kept-alive connection per thread: requests cost three times the
  client CPU per query, which on a small machine the service under test loses.

  The index. ``--chunks`` chunks (default 200,000; documents of 50 one-section chunks
  made from samples/corpus as bench/scale.py makes them, so lexical search has real
  words; 8 tenants), embedded by the hashing model ``hash:384`` (no model cost: what is
  measured is the service and the store), written as the ingest job writes them: its
  chunk stage and Embedder make the EmbeddingRecords, which go through the store API
  (``ensure``, ``upsert`` in batches of 1,000) into a table/collection of its own,
  ``openloop_<chunks>`` (``load_s``, of which ``upsert_s`` in the store). A pgvector
  table is loaded without its search indexes, which are built afterwards in one pass, as
  a replay generation's are at its swap (``index_build_s``); a Milvus server seals and
  indexes its segments. Then the index settles (``settle_s``): a Milvus server's segments
  are compacted and the merged ones indexed, and the store's server must be quiet (under
  0.3 of a core in three 5 s windows in a row), so that the queries meet a settled index,
  not the load's aftermath. ``--reuse`` keeps an index of that name that holds exactly
  that many chunks; it is dropped at the end unless ``--keep``.

  The figures (20 queries/s unless said):
    direct_dense_p50_ms / p99, direct_hybrid_p50_ms: the store's own search from this
      process, one query at a time (what a query costs without the service);
    query_store_p50_ms / p99: dense queries over HTTP for 30 s (`streamrag serve` with
      embedding.model hash:384), with the rate answered, how late this client sent
      (send_lag_p99_ms, part of the latencies) and the service's and this client's CPU
      per query;
    hybrid_store_p50_ms / p99: the same in hybrid mode (null if the store has no
      lexical search);
    max_qps_p99_under_100ms: the highest rate whose dense p99 stays under 100 ms: 20, 40,
      80, 160 and 320 queries/s (15 s each) until one fails, then once halfway between the
      last that passed and it; 0 when 20/s fails, 320 when none fails (a lower bound).
  Query texts are windows of 6 to 12 words of the corpus's sentences, more distinct ones
  than the service's query-embedding cache holds, taken in turn over the whole bench, so
  no query is a cache hit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Any, Literal
from urllib.parse import urlsplit

import psutil

from bench.freshness import percentile
from bench.query import Service, serving
from bench.replay import build_replayed_indexes, ensure_for_bulk_load, wait_indexed
from bench.run import HASH_MODEL, LABELS, paragraphs
from bench.scale import CHUNKS_PER_DOC, scale_document, section_pool, store_cpu_s
from jobs.chunking.documents import parse_document_record
from jobs.chunking.stage import ChunkStage
from jobs.embedding.embedder import Embedder
from streamrag.config import (
    ConfigError,
    Settings,
    load_settings,
)
from streamrag.local.stack import STORES, store_env
from streamrag.models import encode, hash_dimension, load_model, resolve_model
from streamrag.records import ChunkRecord, DocumentEvent, EmbeddingRecord, Origin
from streamrag.retrieval import search_store
from streamrag.stores import open_store
from streamrag.stores.base import StoreError, VectorStore
from streamrag.stores.milvus import MilvusStore

Mode = Literal["dense", "hybrid"]
CHUNKS = 200_000
BATCH = 1_000  # chunks per upsert
TENANTS = 8
SOURCE = "documents"  # what the ingest job records as a documents-topic chunk's source
RATE = 20.0  # queries/s of the fixed-rate runs
WINDOW_S = 30.0
WARMUP_S = 3.0
STEPS = (20.0, 40.0, 80.0, 160.0, 320.0)  # queries/s of the max-rate search
STEP_S = 15.0
LIMIT_MS = 100.0  # the max-rate search's p99 bound
GIVE_UP_MS = 2_000.0  # a fixed-rate run whose p99 is sure to exceed this stops early
Q = 0.99
K = 5
MAX_IN_FLIGHT = 1_000  # the pool's threads (made as needed: idle ones are reused)
DIRECT_QUERIES, DIRECT_S = 200, 10.0  # direct store calls: at most this many, this long
# A request unanswered this long is a failure. Long: a run that stopped early waits for
# its backlog (a request timed out here would still hold the service in the next run).
REQUEST_TIMEOUT_S = 300.0


# --- the open loop ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One request, its times in seconds from the run's start."""

    index: int
    due_s: float  # when it was scheduled to arrive: index / rate
    started_s: float  # when a thread sent it
    finished_s: float
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        """From when it was due, not when it was sent: no coordinated omission."""
        return (self.finished_s - self.due_s) * 1000

    @property
    def send_lag_ms(self) -> float:
        return (self.started_s - self.due_s) * 1000


@dataclass(frozen=True)
class OpenLoopResult:
    rate_per_s: float
    planned: int
    samples: list[Sample]  # in the order they finished
    stopped_early: bool = False

    @property
    def failures(self) -> list[str]:
        return [s.error for s in self.samples if s.error is not None]

    @property
    def latencies_ms(self) -> list[float]:
        return [s.latency_ms for s in self.samples if s.error is None]

    @property
    def p50_ms(self) -> float:
        return round(percentile(self.latencies_ms, 0.5), 1) if self.latencies_ms else math.nan

    @property
    def p99_ms(self) -> float:
        return round(percentile(self.latencies_ms, Q), 1) if self.latencies_ms else math.nan

    @property
    def achieved_per_s(self) -> float:
        """Answers a second, from the first arrival to the last answer."""
        done = [s.finished_s for s in self.samples if s.error is None]
        return round(len(done) / max(done), 1) if done and max(done) > 0 else 0.0

    @property
    def send_lag_p99_ms(self) -> float:
        """How late this client sent requests (its own lag, part of the latencies)."""
        lags = [s.send_lag_ms for s in self.samples]
        return round(percentile(lags, Q), 1) if lags else math.nan

    def summary(self) -> str:
        late = " STOPPED EARLY (cannot keep up)" if self.stopped_early else ""
        return (
            f"{self.rate_per_s:g}/s: p50 {self.p50_ms} ms, p99 {self.p99_ms} ms,"
            f" {self.achieved_per_s}/s answered, {len(self.samples)}/{self.planned} sent,"
            f" send lag p99 {self.send_lag_p99_ms} ms{late}"
        )


def late_allowance(planned: int, q: float = Q) -> int:
    """How many of ``planned`` latencies may reach a limit while their ``q`` percentile
    (bench.freshness.percentile) can still be under it: one more, and it cannot."""
    return planned - 1 - round(q * (planned - 1))


def open_loop(
    call: Callable[[int], None],
    rate_per_s: float,
    seconds: float,
    *,
    late_ms: float | None = None,
    workers: int = MAX_IN_FLIGHT,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> OpenLoopResult:
    """``call(i)`` for request i = 0, 1, ... at ``rate_per_s`` for ``seconds``: each is
    sent at its due time t0 + i / rate on a pool thread, whatever the requests before it
    are doing, and timed from that due time to its end. An exception from ``call`` is a
    failure (its first line kept). With ``late_ms``, the run stops sending once more
    requests are (or, still running, will be) at least that late than a p99 under
    ``late_ms`` allows. ``clock`` and ``sleep`` are for tests."""
    planned = max(1, round(rate_per_s * seconds))
    allowed = late_allowance(planned) if late_ms is not None else None
    lock = threading.Lock()
    samples: list[Sample] = []
    running: dict[int, float] = {}  # request -> due time, while it runs
    late_done = 0
    t0 = clock()

    def run(i: int, due: float) -> None:
        nonlocal late_done
        started, error = clock(), None
        try:
            call(i)
        except Exception as e:
            error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        finished = clock()
        with lock:
            del running[i]
            samples.append(Sample(i, due - t0, started - t0, finished - t0, error))
            if late_ms is not None and (finished - due) * 1000 >= late_ms:
                late_done += 1

    def too_late(now: float) -> bool:
        if allowed is None or late_ms is None:
            return False
        with lock:
            late = late_done + sum((now - due) * 1000 >= late_ms for due in running.values())
        return late > allowed

    stopped = False
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="open-loop") as pool:
        for i in range(planned):
            due = t0 + i / rate_per_s
            wait = due - clock()
            if wait > 0:
                sleep(wait)
            if too_late(clock()):
                stopped = True
                break
            with lock:
                running[i] = due
            pool.submit(run, i, due)
    return OpenLoopResult(rate_per_s, planned, samples, stopped)


def checked(result: OpenLoopResult, what: str) -> OpenLoopResult:
    """``result``, or the bench stops with one line when any of its requests failed."""
    if result.failures:
        raise SystemExit(
            f"bench: {len(result.failures)} of {len(result.samples)} {what} queries failed,"
            f" e.g. {result.failures[0]}"
        )
    return result


# --- the highest rate under a p99 bound ---------------------------------------------------


@dataclass(frozen=True)
class MaxRate:
    rate: float  # the highest rate that passed; 0: none did
    trials: list[tuple[float, float | None]]  # (rate, p99 ms; None: stopped early), in order


def max_rate(
    p99_at: Callable[[float], float | None],
    limit_ms: float = LIMIT_MS,
    steps: Sequence[float] = STEPS,
) -> MaxRate:
    """Step up through ``steps`` until a rate's p99 (``p99_at(rate)``; None when the run
    could not keep up) is not under ``limit_ms``, then try once halfway between the last
    rate that passed and the one that failed."""
    trials: list[tuple[float, float | None]] = []

    def passes(rate: float) -> bool:
        p99 = p99_at(rate)
        trials.append((rate, p99))
        return p99 is not None and p99 < limit_ms

    best = 0.0
    for rate in steps:
        if not passes(rate):
            if best:
                middle = (best + rate) / 2
                best = middle if passes(middle) else best
            return MaxRate(best, trials)
        best = rate
    return MaxRate(best, trials)


# --- the index ----------------------------------------------------------------------------


def index_name(chunks: int) -> str:
    return f"openloop_{chunks}"


def tenant(d: int) -> str:
    return f"tenant-{d % TENANTS}"


def document_events(pool: Sequence[str], chunks: int, ts: int) -> Iterator[DocumentEvent]:
    """The documents of bench/scale.py (one chunk per section, CHUNKS_PER_DOC a document,
    the last one the rest), each with a tenant, as the ingest job reads them off the
    documents topic (record timestamp ``ts``)."""
    for d in range(math.ceil(chunks / CHUNKS_PER_DOC)):
        doc = scale_document(d, pool, min(CHUNKS_PER_DOC, chunks - d * CHUNKS_PER_DOC))
        value = json.dumps({**doc, "tenant": tenant(d)}).encode()
        yield parse_document_record(doc["id"].encode(), value, Origin(SOURCE, 0, d), ts)


def record_batches(settings: Settings, chunks: int) -> Iterator[list[EmbeddingRecord]]:
    """The index's EmbeddingRecords, about BATCH at a time (whole documents): chunked by
    the ingest job's chunk stage, embedded by its Embedder with the hashing model."""
    ref = resolve_model(HASH_MODEL)
    stage = ChunkStage.for_model(settings.chunking, ref)
    embed_heading = settings.chunking.embed_heading
    embedder = Embedder(load_model(ref), ref.model_id, cache_entries=0, embed_heading=embed_heading)
    batch: list[ChunkRecord] = []
    for event in document_events(section_pool(stage), chunks, int(time.time() * 1000)):
        batch += [r for r in stage.apply(None, event).records if r.op == "upsert"]
        if len(batch) >= BATCH:
            yield embedder.embed(batch)
            batch = []
    if batch:
        yield embedder.embed(batch)


@dataclass(frozen=True)
class Loaded:
    reused: bool
    load_s: float = 0.0  # wall time of the load: making the records, upserts, flush
    upsert_s: float = 0.0  # of which in the store's upsert calls
    index_build_s: float = 0.0
    settle_s: float = 0.0  # then until the store server's background work was done


def holds(store: VectorStore, chunks: int) -> bool:
    with contextlib.suppress(StoreError):
        return store.count() == chunks
    return False


def load_index(settings: Settings, name: str, chunks: int, reuse: bool, kind: str) -> Loaded:
    store = open_store(settings.store, name)
    try:
        dim = hash_dimension(HASH_MODEL)
        ensure_for_bulk_load(store, dim)
        if reuse and holds(store, chunks):
            build_replayed_indexes(store, settings.store)  # a run stopped before them: built now
            return Loaded(reused=True, settle_s=settle(settings, store, kind))
        store.drop()
        ensure_for_bulk_load(store, dim)
        started, written, upsert_s = time.perf_counter(), 0, 0.0
        for batch in record_batches(settings, chunks):
            call = time.perf_counter()
            store.upsert(batch, stored_versions={})  # a new index: nothing is stored
            upsert_s += time.perf_counter() - call
            written += len(batch)
            if written % 20_000 < len(batch) or written == chunks:
                rate = written / (time.perf_counter() - started)
                print(f"load: {written:,} chunks, {rate:,.0f} chunks/s", flush=True)
        store.flush()
        load_s = time.perf_counter() - started
        index_s = build_replayed_indexes(store, settings.store)
        if (count := store.count()) != chunks:
            raise SystemExit(f"bench: {name} holds {count} chunks after the load, not {chunks}")
        return Loaded(False, load_s, upsert_s, index_s, settle(settings, store, kind))
    finally:
        store.close()


# The store's server is settled once it uses less than QUIET_CPU of a core in each of
# QUIET_WINDOWS windows of QUIET_S in a row (a single window once passed while a Milvus
# server still had work queued: that run's p99 was 80.6 ms at 20 queries/s, not 11.4).
QUIET_CPU = 0.3
QUIET_S = 5.0
QUIET_WINDOWS = 3
SETTLE_TIMEOUT_S = 600.0


def settle(settings: Settings, store: VectorStore, kind: str) -> float:
    """Seconds until the store's server (``kind``: one of the stack's STORES) has finished
    the background work that a bulk load leaves: the queries measure a settled index, as
    a long-running one is. A Milvus server merges the load's segments (a compaction, asked
    for here rather than left to its own schedule, where it fell in the middle of one
    run's queries: p99 94 ms, against 13 ms once done) and indexes the merged ones; then
    the store's server processes must be quiet (PostgreSQL's autovacuum included)."""
    started = time.perf_counter()
    if isinstance(store, MilvusStore) and not store.server.lite:
        job = store.client.compact(store.collection)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while store.client.get_compaction_state(job) != "Completed":
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: Milvus did not compact {store.collection} in time")
            time.sleep(0.5)
        wait_indexed(store)
    quiet = 0
    while quiet < QUIET_WINDOWS and time.perf_counter() - started < SETTLE_TIMEOUT_S:
        before = store_cpu_s(settings, kind)
        time.sleep(QUIET_S)
        quiet = quiet + 1 if store_cpu_s(settings, kind) - before < QUIET_CPU * QUIET_S else 0
    if quiet < QUIET_WINDOWS:
        print("index: the store's server stayed busy; measuring anyway", flush=True)
    seconds = time.perf_counter() - started
    print(f"index: settled in {seconds:.1f} s", flush=True)
    return seconds


def drop_index(settings: Settings, name: str) -> None:
    store = open_store(settings.store, name)
    try:
        store.drop()
    finally:
        store.close()


# --- queries ------------------------------------------------------------------------------


def query_texts() -> list[str]:
    """Distinct windows of 6, 9 and 12 words of the corpus's sentences, interleaved so
    that texts in turn come from different sentences."""
    sentences = [
        s.split()
        for p in paragraphs()
        for s in re.split(r"(?<=[.!?])\s+", p)
        if len(s.split()) >= 6
    ]
    windows = [
        [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        for n in (6, 9, 12)
        for words in sentences
    ]
    interleaved = [w[j] for j in range(max(map(len, windows))) for w in windows if j < len(w)]
    return list(dict.fromkeys(interleaved))


class Queries:
    """Query texts taken in turn across every run of the bench."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts, self.taken = list(texts), 0

    def block(self, n: int) -> Callable[[int], str]:
        """The text of request i of a run of ``n`` requests."""
        base, self.taken = self.taken, self.taken + n
        return lambda i: self.texts[(base + i) % len(self.texts)]


class QueryFailed(Exception):
    pass


def searcher(service: Service, text_of: Callable[[int], str], mode: Mode) -> Callable[[int], None]:
    """POST /v1/search of request i's text, on one kept-alive connection per pool thread."""
    local = threading.local()
    address = urlsplit(service.url)
    headers = {"Authorization": f"Bearer {service.token}", "Content-Type": "application/json"}

    def post(body: bytes, fresh: bool) -> tuple[int, bytes]:
        if fresh or getattr(local, "conn", None) is None:
            local.conn = HTTPConnection(address.netloc, timeout=REQUEST_TIMEOUT_S)
        local.conn.request("POST", "/v1/search", body=body, headers=headers)
        response = local.conn.getresponse()
        return response.status, response.read()

    def call(i: int) -> None:
        body = json.dumps({"query": text_of(i), "k": K, "mode": mode}).encode()
        try:
            status, answer = post(body, fresh=False)
        except ConnectionError:  # the server closed an idle one (RemoteDisconnected)
            status, answer = post(body, fresh=True)
        if status != 200:
            raise QueryFailed(f"HTTP {status}: {answer[:200].decode(errors='replace')}")

    return call


def run_at(
    service: Service,
    queries: Queries,
    mode: Mode,
    rate: float,
    seconds: float,
    late_ms: float | None = None,
) -> OpenLoopResult:
    planned = max(1, round(rate * seconds))
    call = searcher(service, queries.block(planned), mode)
    return checked(open_loop(call, rate, seconds, late_ms=late_ms), mode)


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def direct_figures(settings: Settings, name: str, queries: Queries) -> dict[str, float | None]:
    """The store's own search from this process, one query at a time (no service): p50
    and p99 ms of dense, p50 of hybrid (search_store, as the service fuses them)."""
    model = load_model(resolve_model(HASH_MODEL))
    store = open_store(settings.store, name)

    def timed(mode: Mode) -> list[float]:
        text_of, out = queries.block(DIRECT_QUERIES), []
        deadline = time.monotonic() + DIRECT_S
        for i in range(DIRECT_QUERIES):
            text = text_of(i)
            started = time.perf_counter()
            vector = encode(model, [text])[0]
            search_store(store, settings.serve, text, vector, K, None, mode)
            out.append((time.perf_counter() - started) * 1000)
            if time.monotonic() > deadline:
                break
        return out

    try:
        dense = timed("dense")
        try:
            hybrid: float | None = round(percentile(timed("hybrid"), 0.5), 1)
        except StoreError as e:  # no lexical search in this store
            print(f"direct hybrid: not supported: {e}", flush=True)
            hybrid = None
    finally:
        store.close()
    figures: dict[str, float | None] = {
        "direct_dense_p50_ms": round(percentile(dense, 0.5), 1),
        "direct_dense_p99_ms": round(percentile(dense, Q), 1),
        "direct_hybrid_p50_ms": hybrid,
    }
    print(f"direct store calls (one at a time): {figures}", flush=True)
    return figures


def hybrid_supported(service: Service, queries: Queries) -> bool:
    """One hybrid query: False (and why, on a progress line) when the service refuses it."""
    try:
        searcher(service, queries.block(1), "hybrid")(0)
    except QueryFailed as e:
        print(f"hybrid: not supported here: {e}", flush=True)
        return False
    return True


def served_figures(service: Service, queries: Queries) -> dict[str, Any]:
    """The open-loop figures over HTTP (see the module doc)."""
    server = psutil.Process(service.process.pid)
    run_at(service, queries, "dense", RATE, WARMUP_S, GIVE_UP_MS)  # warm up: pools, code
    server_before, client_before = cpu_s(server), time.process_time()
    dense = run_at(service, queries, "dense", RATE, WINDOW_S, GIVE_UP_MS)
    server_ms = (cpu_s(server) - server_before) * 1000 / len(dense.samples)
    client_ms = (time.process_time() - client_before) * 1000 / len(dense.samples)
    print(
        f"dense {dense.summary()}; CPU per query: service {server_ms:.1f} ms,"
        f" this client {client_ms:.1f} ms",
        flush=True,
    )
    figures: dict[str, Any] = {
        "query_store_p50_ms": dense.p50_ms,
        "query_store_p99_ms": dense.p99_ms,
        "query_store_answered_per_s": dense.achieved_per_s,
        "query_store_stopped_early": dense.stopped_early,
        "query_store_send_lag_p99_ms": dense.send_lag_p99_ms,
        "serve_cpu_ms_per_query": round(server_ms, 2),
        "client_cpu_ms_per_query": round(client_ms, 2),
    }
    hybrid = None
    if hybrid_supported(service, queries):
        hybrid = run_at(service, queries, "hybrid", RATE, WINDOW_S, GIVE_UP_MS)
        print(f"hybrid {hybrid.summary()}", flush=True)
    figures |= {
        "hybrid_store_p50_ms": hybrid.p50_ms if hybrid else None,
        "hybrid_store_p99_ms": hybrid.p99_ms if hybrid else None,
        "hybrid_store_stopped_early": hybrid.stopped_early if hybrid else None,
    }

    def p99_at(rate: float) -> float | None:
        if rate == RATE:  # measured above, over a longer window
            result = dense
        else:
            result = run_at(service, queries, "dense", rate, STEP_S, LIMIT_MS)
            print(f"max-rate step: dense {result.summary()}", flush=True)
        return None if result.stopped_early else result.p99_ms

    best = max_rate(p99_at)
    return figures | {
        "max_qps_p99_under_100ms": best.rate,
        "max_qps_is_lower_bound": best.rate == STEPS[-1],  # no step failed
        "max_qps_trials": [[rate, p99] for rate, p99 in best.trials],
    }


# --- the bench ------------------------------------------------------------------------------


def bench_env(store: str, name: str) -> dict[str, str]:
    """The environment overrides that make the settings (and the service) use ``name`` in
    one of the stack's stores (streamrag.local.stack.STORES) with the hashing model."""
    overrides = {**store_env(load_settings(), store), "EMBEDDING__MODEL": HASH_MODEL}
    overrides["STORE__TABLE" if store == "pgvector" else "STORE__COLLECTION"] = name
    return {"HF_HUB_OFFLINE": "1", **{f"STREAMRAG_{k}": v for k, v in overrides.items()}}


def store_figures(
    store: str, chunks: int = CHUNKS, reuse: bool = False, keep: bool = False
) -> dict[str, Any]:
    """The open-loop figures of one of the stack's stores, keys prefixed with its label."""
    label = LABELS[store]
    name = index_name(chunks)
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("STREAMRAG_STORE__")]:
        del os.environ[key]  # a caller's store settings (bench/run.py's phase)
    os.environ.update(bench_env(store, name))
    try:
        settings = load_settings()
        print(f"open loop [{label}]: index {name}, {chunks:,} chunks of {HASH_MODEL}", flush=True)
        figures = _measure(settings, store, name, chunks, reuse, keep)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {f"{label}_{key}": value for key, value in figures.items()}


def _measure(
    settings: Settings, kind: str, name: str, chunks: int, reuse: bool, keep: bool
) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = load_index(settings, name, chunks, reuse, kind)
    if loaded.reused:
        print(f"index: reused {name} ({chunks:,} chunks)", flush=True)
    else:
        print(
            f"index: loaded in {loaded.load_s:.1f} s ({loaded.upsert_s:.1f} s in upserts),"
            f" search indexes built in {loaded.index_build_s:.1f} s",
            flush=True,
        )
    try:
        queries = Queries(query_texts())
        figures: dict[str, Any] = {
            "chunks": chunks,
            "index": name,
            "index_reused": loaded.reused,
            "load_s": round(loaded.load_s, 1),
            "upsert_s": round(loaded.upsert_s, 1),
            "index_build_s": round(loaded.index_build_s, 1),
            "settle_s": round(loaded.settle_s, 1),
        }
        if settings.store.kind == "milvus":
            figures["vector_index"] = settings.store.vector_index
        figures |= direct_figures(settings, name, queries)
        with serving(dict(os.environ)) as service:
            figures |= served_figures(service, queries)
        figures["bench_s"] = round(time.perf_counter() - started, 1)
    finally:
        if not keep:
            drop_index(settings, name)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.openloop", description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=STORES, required=True)
    parser.add_argument("--chunks", type=int, default=CHUNKS, help="default %(default)s")
    parser.add_argument("--reuse", action="store_true", help="keep an index of that size")
    parser.add_argument("--keep", action="store_true", help="do not drop the index at the end")
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    try:
        figures = store_figures(args.store, args.chunks, args.reuse, args.keep)
    except ConfigError as e:
        raise SystemExit(f"bench: {e}") from None
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
