"""Query figures for `make bench`: `streamrag serve` on the bench's index, 8 concurrent
clients posting to /v1/search, dense and hybrid, with the ingest job idle and again
while it ingests. Latency is measured at the client (HTTP included)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.freshness import percentile
from streamrag.config import PROJECT_ROOT

CLI = str(Path(sys.executable).with_name("streamrag"))
CLIENTS = 8
WINDOW_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(url: str, token: str, queries: list[str], mode: str, seconds: float) -> dict[str, float]:
    """CLIENTS threads posting queries for ``seconds``: latency p50/p99 (ms) and qps."""
    latencies: list[float] = []
    failures: list[str] = []
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        i = offset
        while time.monotonic() < stop:
            body = {"query": queries[i % len(queries)], "k": 5, "mode": mode}
            i += CLIENTS
            started = time.perf_counter()
            r = session.post(f"{url}/v1/search", json=body, timeout=60)
            latencies.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                failures.append(r.text[:200])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise SystemExit(f"bench: {len(failures)} queries failed, e.g. {failures[0]}")
    return {
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "qps": round(len(latencies) / elapsed, 1),
    }


@dataclass(frozen=True)
class Service:
    """A running `streamrag serve`: its address, a token that reads every tenant, and
    its process (e.g. for its CPU time)."""

    url: str
    token: str
    process: subprocess.Popen[str]


@contextmanager
def serving(env: dict[str, str]) -> Iterator[Service]:
    """`streamrag serve` on the index that ``env`` names, on a free port, ready when
    entered and stopped on exit."""
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text(f"* {token}\n")
        server = subprocess.Popen(
            [CLI, "serve", "--port", str(port), "--tokens-file", str(tokens)],
            env={**env, "HF_HUB_OFFLINE": "1"},
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, server)
            yield Service(url, token, server)
        finally:
            server.terminate()
            server.wait(timeout=30)


def query_figures(
    env: dict[str, str], queries: list[str], ingest: Callable[[], None]
) -> dict[str, float]:
    """Serve the index that ``env`` names; measure idle, then while ``ingest()`` runs."""
    with serving(env) as service:
        url, token = service.url, service.token
        load(url, token, queries[:50], "dense", 3)  # warm up: model, pools, caches
        dense = load(url, token, queries, "dense", WINDOW_S)
        print(f"query (idle, dense):  {dense}", flush=True)
        hybrid = load(url, token, queries, "hybrid", WINDOW_S)
        print(f"query (idle, hybrid): {hybrid}", flush=True)
        job = threading.Thread(target=ingest)
        job.start()
        time.sleep(20)  # the job's JVM and model are up: it is encoding now
        busy = load(url, token, queries, "dense", WINDOW_S)
        print(f"query (during ingest, dense): {busy}", flush=True)
        job.join()
    return {
        "query_p50_ms": dense["p50_ms"],
        "query_p99_ms": dense["p99_ms"],
        "query_qps": dense["qps"],
        "hybrid_query_p50_ms": hybrid["p50_ms"],
        "hybrid_query_p99_ms": hybrid["p99_ms"],
        "hybrid_query_qps": hybrid["qps"],
        "query_p99_during_ingest_ms": busy["p99_ms"],
        "query_qps_during_ingest": busy["qps"],
    }


def wait_ready(url: str, server: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = server.stderr.read() if server.stderr else ""
            raise SystemExit(f"bench: streamrag serve exited:\n{err[-2000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit("bench: streamrag serve did not become ready")
