"""The suite's tiers and its time.

Tiers (README: Tests): a test is in the ``services`` tier when it needs the local stack's
real services: everything under tests/integration (which starts or uses them), and any
other test whose fixtures include ``stack``. The marker is given here, from what a test
uses, so that no test can forget it; ``pytest -m "not services"`` (``make test-fast``) is
the rest: the unit tests and the in-process Flink tier.

Time: a test whose setup, call and teardown take more than ``SLOW_S`` is named at the end
of the run, unless it is in a fault suite (marker ``faults``) or its docstring says why it
needs that long (a line that starts with ``Over 120 s:``). Nothing fails on time: the
machine is shared and its speed varies, so the list is for the reader of the run.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

SLOW_S = 120.0
JUSTIFIED = "Over 120 s:"
INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses_stack = "stack" in getattr(item, "fixturenames", ())
        if uses_stack or INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.services)


_durations: dict[str, float] = defaultdict(float)
_items: dict[str, pytest.Item] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] += report.duration


def pytest_collection_finish(session: pytest.Session) -> None:
    _items.update({item.nodeid: item for item in session.items})


def unjustified_slow_tests(
    durations: dict[str, float], items: dict[str, pytest.Item]
) -> list[tuple[str, float]]:
    """Tests over SLOW_S that are neither in a fault suite nor say why in their docstring."""
    slow = []
    for nodeid, seconds in durations.items():
        item = items.get(nodeid)
        if seconds <= SLOW_S or item is None or item.get_closest_marker("faults"):
            continue
        doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
        if not any(line.strip().startswith(JUSTIFIED) for line in doc.splitlines()):
            slow.append((nodeid, seconds))
    return sorted(slow, key=lambda pair: -pair[1])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    slow = unjustified_slow_tests(_durations, _items)
    if slow:
        terminalreporter.write_sep("-", f"over {SLOW_S:.0f} s without a reason (a defect)")
        for nodeid, seconds in slow:
            terminalreporter.write_line(f"{seconds:7.1f}s {nodeid}")
