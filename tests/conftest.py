"""The suite's tiers, its workers and its time.

Tiers (README: Tests): a test is in the ``services`` tier when it needs the local stack's
real services: everything under tests/integration (which starts or uses them), and any
other test whose fixtures include ``stack``. The marker is given here, from what a test
uses, so that no test can forget it; ``pytest -m "not services"`` (``make test-fast``) is
the rest: the unit tests and the in-process Flink tier.

Workers: most of the suite's time is waiting (a JVM starting, a checkpoint, a service
coming back), so ``make test`` runs it on two workers (pytest-xdist, ``--dist
loadgroup``). Tests that share a fixture wider than a function, or a service that one of
them stops, form a group, which runs on one worker (``group_of``); the longest groups are
handed out first.

Time: a test whose setup, call and teardown take more than ``SLOW_S`` is named at the end
of the run, unless it is in a fault suite (marker ``faults``) or its docstring says why it
needs that long (a line that starts with ``Over 120 s:``). Nothing fails on time: the
machine is shared and its speed varies, so the list is for the reader of the run.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

SLOW_S = 120.0
JUSTIFIED = "Over 120 s:"
TESTS = Path(__file__).parent
INTEGRATION = TESTS / "integration"
FLINK = TESTS / "flink"
# Modules that use the dev stack's Kafka Connect worker while one of them kills it
# (test_cdc), that check the stack's processes (test_stack), or that expect every check
# of `streamrag status` but one to pass, Connect's included (test_operations): one worker.
DEV_CONNECT = frozenset({"test_cdc", "test_snapshot", "test_demo", "test_stack", "test_operations"})
# Groups by how long they take (longest first, measured), so that the longest start first
# and the short ones and the unit tests fill the gaps. Others come after these.
LONGEST_FIRST = ("test_faults", "ingest", "dev-connect", "test_secure")


def group_of(path: Path) -> str | None:
    """The worker group of a test module; None: any worker."""
    if path.parent == FLINK:
        return "flink"  # one JVM gateway per process, started by the first test
    if INTEGRATION not in path.parents:
        return None
    inner = path.relative_to(INTEGRATION).parts
    if len(inner) > 1:
        return inner[0]  # a package whose tests share a job (tests/integration/ingest)
    return "dev-connect" if path.stem in DEV_CONNECT else path.stem


def _rank(item: pytest.Item) -> tuple[int, int]:
    group = group_of(Path(item.path))
    if group in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(group))
    return (1, 0) if group is not None else (2, 0)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path)
        if "stack" in getattr(item, "fixturenames", ()) or INTEGRATION in path.parents:
            item.add_marker(pytest.mark.services)
        doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
        if any(line.strip().startswith(JUSTIFIED) for line in doc.splitlines()):
            item.add_marker(pytest.mark.slow_with_reason)


class _LongestFirst:
    """The items sorted by group rank, after pytest's own reordering (by fixture
    parameters): a hook of its own, since the markers above must come before -m."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items.sort(key=_rank)  # stable: within a rank, collection order


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_LongestFirst(), "streamrag-longest-first")


def scope_of(nodeid: str) -> str:
    """The unit of work that one worker runs whole: a test's group, else the test."""
    group = group_of(TESTS.parent / nodeid.partition("::")[0])
    return f"group:{group}" if group is not None else nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For ``--dist loadgroup``: xdist's own groups come from ``xdist_group`` markers, which
    it writes into the node ids, and pytest 9.2 no longer lets it (the marks are read but
    the ids stay as they were, so groups were split across workers). Ours come from the
    paths (``group_of``) and are handed out in collection order, the longest first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    config.option.loadscopereorder = False  # keep the order of the collection
    return ByGroup(config, log)


_durations: dict[str, float] = defaultdict(float)
_exempt: set[str] = set()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Reports come from the workers too (with their keywords): this runs where the
    # summary is written.
    _durations[report.nodeid] += report.duration
    if "faults" in report.keywords or "slow_with_reason" in report.keywords:
        _exempt.add(report.nodeid)


def unjustified_slow_tests(
    durations: dict[str, float], exempt: set[str]
) -> list[tuple[str, float]]:
    """Tests over SLOW_S that are neither in a fault suite nor say why in their docstring."""
    slow = [(n, s) for n, s in durations.items() if s > SLOW_S and n not in exempt]
    return sorted(slow, key=lambda pair: -pair[1])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Here, not in tests/integration/conftest.py: under xdist the controller, which writes
    # the summary, loads only this conftest.
    figures = [
        f"{report.nodeid.split('::')[-1]}: "
        + ", ".join(f"{name}={value}" for name, value in report.user_properties)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call" and getattr(report, "user_properties", None)
    ]
    if figures:  # what tests record with record_property (the fault tests' recoveries)
        terminalreporter.write_sep("-", "recorded figures")
        for line in figures:
            terminalreporter.write_line(line)
    slow = unjustified_slow_tests(_durations, _exempt)
    if slow:
        terminalreporter.write_sep("-", f"over {SLOW_S:.0f} s without a reason (a defect)")
        for nodeid, seconds in slow:
            terminalreporter.write_line(f"{seconds:7.1f}s {nodeid}")
