"""The open-loop bench's logic (bench/openloop.py): arrivals keep their schedule whatever
earlier requests do, latency counts from the due time, a run that cannot keep up stops
early, the max-rate search, and the index's records are what the ingest job writes."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from bench.freshness import percentile
from bench.openloop import (
    MaxRate,
    OpenLoopResult,
    Queries,
    Sample,
    checked,
    late_allowance,
    max_rate,
    open_loop,
    query_texts,
    record_batches,
)


class FakeClock:
    """Time that passes only when the scheduler sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_slow_request_does_not_delay_the_arrivals_after_it():
    # Request 0 blocks until request 5 has been sent: a scheduler that waited for it (a
    # closed loop, or a pool too small) would never send request 5, and the wait would
    # time out.
    clock, fifth_sent = FakeClock(), threading.Event()
    blocked_until_fifth: list[bool] = []

    def call(i: int) -> None:
        if i == 0:
            blocked_until_fifth.append(fifth_sent.wait(timeout=10))
        if i == 5:
            fifth_sent.set()

    result = open_loop(call, rate_per_s=20, seconds=0.5, clock=clock, sleep=clock.sleep)

    assert blocked_until_fifth == [True]
    assert result.planned == 10 and not result.stopped_early and not result.failures
    by_index = sorted(result.samples, key=lambda s: s.index)
    assert [s.due_s for s in by_index] == pytest.approx([i / 20 for i in range(10)])
    # The scheduler slept only up to each due time: 9 gaps of 50 ms, none added for the
    # request that was still running.
    assert sum(clock.slept) == pytest.approx(0.45)
    # Request 0 ended after request 5 was due, and its latency says so.
    assert by_index[0].finished_s >= by_index[5].due_s
    assert by_index[0].latency_ms >= 250


def test_with_too_few_threads_the_wait_for_one_counts_in_the_latency():
    # One thread, and request 0 holds it until every request is due: the others wait in
    # the pool's queue, and that wait is part of their latency (the closed-loop error
    # would time them from when they were sent).
    clock, all_due = FakeClock(), threading.Event()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 0.45 - 1e-9:
            all_due.set()

    def call(i: int) -> None:
        if i == 0:
            assert all_due.wait(timeout=10)

    result = open_loop(call, 20, 0.5, workers=1, clock=clock, sleep=sleep)
    by_index = sorted(result.samples, key=lambda s: s.index)
    assert len(by_index) == 10 and not result.failures
    for s in by_index[1:]:
        assert s.started_s >= 0.45  # sent once request 0 let go of the thread
        assert s.latency_ms == pytest.approx(s.send_lag_ms + (s.finished_s - s.started_s) * 1000)
        assert s.latency_ms >= (0.45 - s.due_s) * 1000 - 1e-6
    assert by_index[1].latency_ms >= 400


def test_a_request_sent_late_is_timed_from_when_it_was_due():
    # Request 1 was due at 50 ms but sent at 300 ms (e.g. queued behind request 0): its
    # 10 ms of service do not hide the 250 ms it waited.
    samples = [
        Sample(0, due_s=0.0, started_s=0.0, finished_s=0.3),
        Sample(1, due_s=0.05, started_s=0.3, finished_s=0.31),
        Sample(2, due_s=0.10, started_s=0.31, finished_s=0.32),
        Sample(3, due_s=0.15, started_s=0.32, finished_s=0.33),
    ]
    result = OpenLoopResult(20, 4, samples)
    assert [round(s.latency_ms) for s in samples] == [300, 260, 220, 180]
    assert [round(s.send_lag_ms) for s in samples] == [0, 250, 210, 170]
    assert result.p50_ms == 260.0  # percentile(): the element at round(0.5 * 3) = 2
    assert result.p99_ms == 300.0
    assert result.achieved_per_s == round(4 / 0.33, 1)


def test_failures_are_kept_and_stop_the_bench_with_one_line():
    def call(i: int) -> None:
        if i == 2:
            raise RuntimeError("HTTP 503: store unreachable\ntraceback...")

    clock = FakeClock()
    result = open_loop(call, rate_per_s=10, seconds=0.5, clock=clock, sleep=clock.sleep)
    assert result.failures == ["HTTP 503: store unreachable"]
    assert len(result.latencies_ms) == 4  # failures have no latency
    with pytest.raises(SystemExit, match=r"^bench: 1 of 5 dense queries failed, e\.g\. HTTP 503"):
        checked(result, "dense")


@pytest.mark.parametrize("planned", [1, 2, 50, 100, 101, 300, 599, 600, 4800])
def test_the_late_allowance_is_where_the_p99_crosses_the_limit(planned):
    allowed = late_allowance(planned)
    under = [10.0] * (planned - allowed) + [500.0] * allowed
    over = [10.0] * (planned - allowed - 1) + [500.0] * (allowed + 1)
    assert percentile(under, 0.99) < 100
    assert percentile(over, 0.99) >= 100


def test_a_run_that_cannot_keep_up_stops_early():
    # Every request takes a while (the fake clock runs ahead of them): by the time more
    # than the 2 late requests that 200 planned ones allow are 100 ms late, the run stops.
    clock, release = FakeClock(), threading.Event()

    def call(i: int) -> None:
        release.wait(timeout=0.5)

    result = open_loop(call, 20, 10, late_ms=100, clock=clock, sleep=clock.sleep)
    release.set()
    assert late_allowance(200) == 2
    assert result.stopped_early and result.planned == 200
    assert 4 <= len(result.samples) <= 10  # 3 late need 150 ms of requests in flight
    assert not result.failures


def test_without_a_limit_a_slow_run_is_measured_to_the_end():
    clock = FakeClock()
    result = open_loop(lambda i: None, 20, 1, clock=clock, sleep=clock.sleep)
    assert not result.stopped_early and len(result.samples) == 20


def fake_p99(ms_per_qps: float, seen: list[float]):
    def p99_at(rate: float) -> float:
        seen.append(rate)
        return rate * ms_per_qps

    return p99_at


def test_max_rate_steps_up_then_bisects_once_and_keeps_the_pass():
    seen: list[float] = []
    # p99 = 0.7 ms per query/s: 80/s passes (56), 160/s fails (112), 120/s passes (84).
    best = max_rate(fake_p99(0.7, seen))
    assert seen == [20, 40, 80, 160, 120]
    assert best == MaxRate(120, [(20, 14), (40, 28), (80, 56), (160, 112), (120, 84)])


def test_max_rate_keeps_the_last_step_when_the_bisection_fails():
    seen: list[float] = []
    # p99 = 1 ms per query/s: 120/s halfway is 120 ms, not under 100.
    assert max_rate(fake_p99(1.0, seen)).rate == 80
    assert seen == [20, 40, 80, 160, 120]


def test_max_rate_when_the_first_step_fails_or_none_does():
    seen: list[float] = []
    assert max_rate(fake_p99(10.0, seen)) == MaxRate(0, [(20, 200)])
    seen.clear()
    assert max_rate(fake_p99(0.1, seen)).rate == 320  # a lower bound: nothing failed
    assert seen == [20, 40, 80, 160, 320]


def test_a_run_that_stopped_early_fails_its_step():
    p99s = {20.0: 30.0, 40.0: None, 30.0: 90.0}
    best = max_rate(lambda rate: p99s[rate])
    assert best == MaxRate(30, [(20, 30), (40, None), (30, 90)])


def test_the_index_is_documents_of_50_chunks_with_tenants_and_hashing_vectors():
    from streamrag.config import load_settings

    settings = load_settings(embedding__model="hash:384")
    batches = list(record_batches(settings, 1_120))  # 22 documents of 50, one of 20
    records = [r for batch in batches for r in batch]
    assert [len(b) for b in batches] == [1_000, 120]  # whole documents, about BATCH
    assert len({r.chunk.chunk_id for r in records}) == 1_120
    per_doc = Counter(r.chunk.doc_id for r in records)
    assert sorted(per_doc.values()) == [20] + [50] * 22
    first = [r for r in records if r.chunk.doc_id == "scale/doc-00000"]
    assert [r.chunk.position for r in first] == list(range(50))
    assert {r.chunk.metadata["tenant"] for r in records} == {f"tenant-{d}" for d in range(8)}
    assert all(r.chunk.text.startswith("## Note ") for r in records)  # one section each
    assert all(r.model_id == "hash:384" and r.embedded for r in records)
    assert all(abs(sum(x * x for x in r.vector) - 1) < 1e-4 for r in records[:50])


def test_there_are_more_distinct_queries_than_the_service_caches():
    from streamrag.config import ServeConfig

    texts = query_texts()
    assert len(set(texts)) == len(texts) > 2 * ServeConfig().query_cache
    assert all(6 <= len(t.split()) <= 12 for t in texts)


def test_runs_take_the_query_texts_in_turn():
    queries = Queries(["a", "b", "c"])
    first, second = queries.block(2), queries.block(2)
    assert [first(i) for i in range(2)] == ["a", "b"]
    assert [second(i) for i in range(2)] == ["c", "a"]  # where the first run stopped
