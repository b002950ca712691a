"""The layers of the code, held against its imports (every import, at any depth).

    streamrag.cli      the command line: may import everything below
    streamrag.serve    the read side (HTTP API, MCP): on the core
    streamrag.local    dev tooling (local stack, local Flink cluster, version pins)
    jobs, connect      the stages and jobs; Kafka Connect connectors
    streamrag          the runtime core: config, records, limits, errors, Flink glue,
                       Kafka, stores, generations, retrieval

A layer imports only layers below it (the tooling and the jobs are side by side: neither
imports the other), and no module imports itself back through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from streamrag.config import PROJECT_ROOT

PACKAGES = ("streamrag", "jobs", "connect")


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "streamrag" and len(parts) > 1 and parts[1] in ("cli", "local", "serve"):
        return parts[1]
    return "core" if module.startswith("streamrag") else module.split(".")[0]


# What each layer may import, besides itself.
ALLOWED = {
    "core": set(),
    "jobs": {"core"},
    "connect": {"core"},
    "local": {"core"},
    "serve": {"core"},
    "cli": {"core", "jobs", "connect", "local", "serve"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules that ``path`` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out


GRAPH = {name: imports(path, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_own_layer_and_the_layers_below(module):
    mine = layer(module)
    wrong = sorted(i for i in GRAPH[module] if layer(i) not in ALLOWED[mine] | {mine})
    assert wrong == [], f"{module} ({mine}) imports {wrong}"


def test_no_module_imports_itself_back_through_others():
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen and not start.startswith(nxt + ".") and nxt != start:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    # A package and its own modules (streamrag -> streamrag.x) do not count as a circle.
    circles = [c for m in GRAPH if (c := cycle_from(m)) and not _package_only(c)]
    assert circles == [], f"import circle: {' -> '.join(circles[0])}"


def _package_only(cycle: list[str]) -> bool:
    return all(a.startswith(b) or b.startswith(a) for a, b in zip(cycle, cycle[1:], strict=False))


def test_the_layers_are_what_the_tree_shows():
    assert {layer(m) for m in GRAPH} == set(ALLOWED)
