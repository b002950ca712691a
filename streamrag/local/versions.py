"""Every version streamrag pins, read from its one place: ``pyproject.toml``.

Python packages are pinned in ``[project]``; the JVM artifacts that Maven resolves from
``pom.xml`` are pinned in ``[tool.streamrag.jvm]``. ``make jars`` runs Maven with the
``-D`` properties this module prints, and Flink's version is taken from the
``apache-flink`` pin itself, so PyFlink and the Kafka connector cannot drift apart.

    python -m streamrag.local.versions maven   # -Dkafka.version=... -Dflink.version=... ...

Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
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


# The oldest tools that build and run the stack: Kafka 4 and Flink 2 need Java 17;
# maven-dependency-plugin 3.8 needs Maven 3.6.3.
MIN_JAVA = 17
MIN_MAVEN = (3, 6, 3)


def tool_problems() -> list[str]:
    """One line per missing or too old tool (Java, Maven), saying what to do."""
    problems = []
    java = shutil.which("java")
    if java is None:
        problems.append(f"java not found: install Java {MIN_JAVA}+ (e.g. openjdk-17-jdk)")
    else:
        major = java_major(command_output([java, "-version"]))
        if major is None or major < MIN_JAVA:
            problems.append(
                f"java at {java} is version {major or 'unknown'}: Java {MIN_JAVA}+ is needed"
                " (install it and put it first on PATH)"
            )
    mvn = shutil.which("mvn")
    want = ".".join(map(str, MIN_MAVEN))
    if mvn is None:
        problems.append(f"mvn not found: install Maven {want}+ (e.g. the maven package)")
    else:
        found = maven_version(command_output([mvn, "--version"]))
        if found is None or found < MIN_MAVEN:
            shown = ".".join(map(str, found)) if found else "unknown"
            problems.append(f"mvn at {mvn} is version {shown}: Maven {want}+ is needed")
    return problems


def java_major(version_output: str) -> int | None:
    """17 from 'openjdk version "17.0.9"', 8 from 'java version "1.8.0_392"'."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def maven_version(version_output: str) -> tuple[int, ...] | None:
    match = re.search(r"Apache Maven (\d+)\.(\d+)\.(\d+)", version_output)
    return tuple(int(g) for g in match.groups()) if match else None


def command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def main(argv: list[str]) -> int:
    if argv == ["tools"]:
        problems = tool_problems()
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 1 if problems else 0
    if argv != ["maven"]:
        print("usage: python -m streamrag.local.versions maven|tools", file=sys.stderr)
        return 2
    print(" ".join(f"-D{name}={value}" for name, value in sorted(maven_properties().items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
