"""The jobs' histograms: Prometheus buckets from counters, and recent quantiles."""

from __future__ import annotations

import math

from streamrag.metrics import LatencyHistogram, RecentValues, bound_label, bucket_index


class FakeCounter:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, n: int = 1) -> None:
        self.count += n


class FakeGroup:
    """A Flink metric group as the operators see it: nested groups, counters, gauges."""

    def __init__(self, path: tuple[str, ...] = ()) -> None:
        self.path = path
        self.counters: dict[tuple[str, ...], FakeCounter] = {}
        self.gauges: dict[tuple[str, ...], object] = {}
        self.root = self

    def add_group(self, name: str, extra: str | None = None) -> FakeGroup:
        child = FakeGroup((*self.path, name, *([extra] if extra is not None else [])))
        child.root = self.root
        return child

    def counter(self, name: str) -> FakeCounter:
        return self.root.counters.setdefault((*self.path, name), FakeCounter())

    def gauge(self, name: str, fn: object) -> None:
        self.root.gauges[(*self.path, name)] = fn


def test_buckets_are_cumulative_as_prometheus_defines_them():
    group = FakeGroup()
    histogram = LatencyHistogram(group, "freshness_ms", bounds=(100, 1000))
    for value in (50, 100, 101, 5000):
        histogram.observe(value)

    buckets = {path[1]: c.count for path, c in group.counters.items() if path[0] == "le"}
    assert buckets == {"100": 2, "1000": 3, "+Inf": 4}
    assert group.counters[("freshness_ms_count",)].count == 4
    assert group.counters[("freshness_ms_sum",)].count == 50 + 100 + 101 + 5000


def test_the_bucket_of_a_value_is_the_first_bound_that_holds_it():
    bounds = [100, 1000, math.inf]
    assert [bucket_index(bounds, v) for v in (0, 100, 100.5, 1000, 1e9)] == [0, 0, 1, 1, 2]
    assert [bound_label(b) for b in (250, 0.5, math.inf)] == ["250", "0.5", "+Inf"]


def test_recent_quantiles_forget_what_is_older_than_the_window():
    now = [0.0]
    recent = RecentValues(window_s=60, clock=lambda: now[0])
    for value in range(1, 101):  # 1..100 at t=0
        recent.add(value)
    assert recent.quantile(0.5) == 50
    assert recent.quantile(0.99) == 99
    now[0] = 30
    recent.add(1000)
    assert recent.quantile(0.99) == 100  # 101 values: the 100th is still 100
    now[0] = 61  # the first hundred are older than the window
    assert recent.quantile(0.5) == 1000
    now[0] = 200
    assert recent.quantile(0.99) == 0.0


def test_the_quantile_gauges_report_the_recent_values():
    group = FakeGroup()
    histogram = LatencyHistogram(group, "store_write_ms")
    for value in (10, 20, 30, 4000):
        histogram.observe(value)
    p50, p99 = group.gauges[("store_write_ms_p50",)], group.gauges[("store_write_ms_p99",)]
    assert callable(p50) and callable(p99)
    assert (p50(), p99()) == (20, 4000)
