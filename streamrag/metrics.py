"""The jobs' own metrics, on top of Flink's metric groups (exported by Flink's reporters).

Flink's Python API has counters, meters, gauges and a distribution, but no histogram
that a Prometheus server can aggregate. :class:`LatencyHistogram` builds one from
counters, the way Prometheus defines it: one cumulative counter per upper bound, in a
key/value group ``le`` (so the bound becomes the ``le`` label), with ``_count`` and
``_sum`` beside it. With Flink's Prometheus reporter a histogram named ``freshness_ms``
on the index operator reads:

    flink_taskmanager_job_task_operator_le_freshness_ms_bucket{le="1000",...}
    flink_taskmanager_job_task_operator_freshness_ms_count{...}
    flink_taskmanager_job_task_operator_freshness_ms_sum{...}

so that ``histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))`` works. Two
gauges, ``<name>_p50`` and ``<name>_p99``, give the quantiles of the last
``window_s`` seconds in the job itself, for `streamrag status` and the Flink web UI.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

# The gauges' window: the quantiles of the last five minutes.
RECENT_WINDOW_S = 300
# Flink's Prometheus reporter names an operator's metric <this prefix><metric name>.
OPERATOR_PREFIX = "flink_taskmanager_job_task_operator_"

# Upper bounds (ms) of the latency histograms: around the freshness objective (1.5 s at
# 5 updates/s) finely, then coarsely up to five minutes.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    50,
    100,
    250,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    10_000,
    30_000,
    60_000,
    300_000,
)


def bucket_index(bounds: Sequence[float], value: float) -> int:
    """The first bucket whose upper bound holds ``value`` (len(bounds): only +Inf)."""
    return bisect.bisect_left(bounds, value)


def bound_label(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it ("250", "+Inf")."""
    if math.isinf(bound):
        return "+Inf"
    return str(int(bound)) if float(bound).is_integer() else str(bound)


class RecentValues:
    """The values observed in the last ``window_s`` seconds (at most ``limit`` of them,
    the newest), with their quantiles."""

    def __init__(
        self,
        window_s: float = RECENT_WINDOW_S,
        limit: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._values: deque[tuple[float, float]] = deque(maxlen=limit)
        self._clock = clock

    def add(self, value: float) -> None:
        self._values.append((self._clock(), value))

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (nearest rank) of the recent values; 0 when there are none."""
        horizon = self._clock() - self._window_s
        while self._values and self._values[0][0] < horizon:
            self._values.popleft()
        if not self._values:
            return 0.0
        ordered = sorted(v for _, v in self._values)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class LatencyHistogram:
    """A Prometheus-style histogram of latencies (ms) on a Flink metric group."""

    def __init__(
        self,
        group: Any,
        name: str,
        bounds: Sequence[float] = LATENCY_BUCKETS_MS,
        window_s: float = RECENT_WINDOW_S,
    ) -> None:
        self._bounds = [*bounds, math.inf]
        self._buckets = [
            group.add_group("le", bound_label(b)).counter(f"{name}_bucket") for b in self._bounds
        ]
        self._count = group.counter(f"{name}_count")
        self._sum = group.counter(f"{name}_sum")
        self.recent = RecentValues(window_s)
        group.gauge(f"{name}_p50", lambda: int(self.recent.quantile(0.50)))
        group.gauge(f"{name}_p99", lambda: int(self.recent.quantile(0.99)))

    def observe(self, value_ms: float) -> None:
        value_ms = max(0.0, value_ms)
        for bucket in self._buckets[bucket_index(self._bounds, value_ms) :]:
            bucket.inc()
        self._count.inc()
        self._sum.inc(round(value_ms))
        self.recent.add(value_ms)


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, timeout_s: float = 10) -> Samples:
    """The samples a Prometheus endpoint serves, by name (tests, bench, status tools)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=timeout_s).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples


def operator_total(samples: Samples, name: str) -> float:
    """The sum over every operator instance of one of the jobs' metrics, as Flink's
    Prometheus reporter names it (``flink_taskmanager_job_task_operator_<name>``)."""
    return sum(v for _, v in samples.get(OPERATOR_PREFIX + name, []))
