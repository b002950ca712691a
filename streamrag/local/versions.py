"""Every version streamrag pins, read from its one place: ``pyproject.toml``.

Python packages are pinned in ``[project]``; the JVM artifacts that Maven resolves from
``pom.xml`` are pinned in ``[tool.streamrag.jvm]``. ``make jars`` runs Maven with the
``-D`` properties this module prints, and Flink's version is taken from the
``apache-flink`` pin itself, so PyFlink and the Kafka connector cannot drift apart.

    python -m streamrag.local.versions maven   # -Dkafka.version=... -Dflink.version=... ...

Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def python_pins() -> dict[str, str]:
    """Package name (extras dropped) -> exact version, runtime and dev dependencies."""
    project = _pyproject()["project"]
    pins = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, _, version = requirement.partition("==")
        pins[name.split("[")[0].strip()] = version.strip()
    return pins


def jvm_pins() -> dict[str, str]:
    return dict(_pyproject()["tool"]["streamrag"]["jvm"])


def maven_properties() -> dict[str, str]:
    """The ``<name>.version`` properties that pom.xml uses."""
    props = {f"{name}.version": version for name, version in jvm_pins().items()}
    props["flink.version"] = python_pins()["apache-flink"]
    return props


def main(argv: list[str]) -> int:
    if argv != ["maven"]:
        print("usage: python -m streamrag.versions maven", file=sys.stderr)
        return 2
    print(" ".join(f"-D{name}={value}" for name, value in sorted(maven_properties().items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
