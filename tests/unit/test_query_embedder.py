"""Query embeddings batched across concurrent requests (streamrag.serve.index.QueryEmbedder),
with a stand-in encoder that records its calls: pure logic, no model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from streamrag.serve.index import QueryEmbedder


class Encoder:
    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def encode(self, texts, *args, **kwargs):
        with self.lock:
            self.calls.append(list(texts))
        time.sleep(0.05)
        if self.fail_on in texts:
            raise RuntimeError("the model failed")
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)


def test_each_request_gets_its_own_vector_and_concurrent_ones_share_calls():
    encoder = Encoder()
    embed = QueryEmbedder(encoder, cache_size=0)  # type: ignore[arg-type]
    texts = [f"q{'x' * i}" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(embed, texts))
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == [float(len(text)), 1.0]  # (the stand-in does not normalize)
    assert sorted(t for call in encoder.calls for t in call) == sorted(texts)
    assert len(encoder.calls) < len(texts)  # batched: fewer model calls than requests


def test_a_lone_query_is_encoded_at_once():
    encoder = Encoder()
    embed = QueryEmbedder(encoder, cache_size=0)  # type: ignore[arg-type]
    started = time.perf_counter()
    embed("alone")
    assert time.perf_counter() - started < 0.5 and encoder.calls == [["alone"]]


def test_repeated_queries_come_from_the_cache():
    encoder = Encoder()
    embed = QueryEmbedder(encoder, cache_size=2)  # type: ignore[arg-type]
    first = embed("a")
    assert embed("a") == first and encoder.calls == [["a"]]
    embed("b")
    embed("c")  # "a" is the least recently used: evicted
    embed("a")
    assert encoder.calls == [["a"], ["b"], ["c"], ["a"]]


def test_a_failing_call_fails_its_requests_and_the_next_ones_still_run():
    encoder = Encoder(fail_on="bad")
    embed = QueryEmbedder(encoder, cache_size=0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="the model failed"):
        embed("bad")
    assert embed("good")[1] > 0
