"""What a newcomer hits in the first hour gets one line that says what to do, and a
non-zero exit: a taken port, Java or Maven missing or too old, the stack not running, an
unknown store kind, a model that is not installed. (`query` before anything is indexed
needs a store: tests/integration/test_demo.py.) No service is started here."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrag.config import PROJECT_ROOT
from streamrag.local.versions import java_major, maven_version
from streamrag.produce import document_records

CLI = str(Path(sys.executable).with_name("streamrag"))


def run(*args: str, env: dict[str, str] | None = None, timeout: int = 120):
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=PROJECT_ROOT,
    )


def one_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_a_taken_port_names_the_setting_to_change(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "stack",
            "up",
            "postgres",
            env={
                "STREAMRAG_STACK__WORK_DIR": str(tmp_path),
                "STREAMRAG_STACK__POSTGRES_PORT": str(port),
            },
        )
    one_line(done, f"port {port} (postgres) is already in use", "STREAMRAG_STACK__POSTGRES_PORT")


def fake_tool(folder: Path, name: str, output: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{output}' >&2\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def check_tools(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamrag.local.versions", "tools"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        cwd=PROJECT_ROOT,
        timeout=60,
    )


def test_missing_java_and_maven_say_what_to_install(tmp_path):
    done = check_tools(str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: java not found: install Java 17+ (e.g. openjdk-17-jdk)",
        "error: mvn not found: install Maven 3.6.3+ (e.g. the maven package)",
    ]


def test_too_old_java_and_maven_say_what_is_needed(tmp_path):
    fake_tool(tmp_path, "java", 'openjdk version "11.0.21" 2023-10-17')
    fake_tool(tmp_path, "mvn", "Apache Maven 3.3.9 (bb52d8502b132ec0a5a3f4c09453c07478323dc5)")
    lines = check_tools(str(tmp_path)).stderr.splitlines()
    assert lines == [
        f"error: java at {tmp_path}/java is version 11: Java 17+ is needed"
        " (install it and put it first on PATH)",
        f"error: mvn at {tmp_path}/mvn is version 3.3.9: Maven 3.6.3+ is needed",
    ]


def test_the_stack_refuses_an_old_java(tmp_path):
    fake_tool(tmp_path, "java", 'java version "1.8.0_392"')
    done = run(
        "stack",
        "up",
        "kafka",
        env={
            "JAVA_HOME": "",
            "PATH": f"{tmp_path}:{os.environ['PATH']}",
            "STREAMRAG_STACK__WORK_DIR": str(tmp_path / "work"),
        },
    )
    one_line(done, "is version 8: Java 17+ is needed")


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.9" 2023-10-17', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("nothing", None),
    ],
)
def test_java_versions_are_read(output, major):
    assert java_major(output) == major


def test_maven_versions_are_read():
    assert maven_version("Apache Maven 3.9.9 (8e8579a9e76f7d015ee5ec7bfcdc97d260186937)") == (
        3,
        9,
        9,
    )
    assert maven_version("mvn: command not found") is None


def test_a_service_that_is_down_says_how_to_start_the_stack():
    # It is retried with backoff first: for 1 s here, 30 s by default.
    env = {"STREAMRAG_KAFKA__BOOTSTRAP": "127.0.0.1:1", "STREAMRAG_KAFKA__UNREACHABLE_RETRY_S": "1"}
    started = time.monotonic()
    done = run("topics", "create", env=env)
    one_line(done, "Kafka at 127.0.0.1:1 is not reachable", "streamrag stack up")
    assert time.monotonic() - started < 25  # the window set, not the default


def test_an_unknown_store_kind_lists_the_kinds():
    line = one_line(run("query", "q", env={"STREAMRAG_STORE__KIND": "qdrant"}))
    assert line == (
        "streamrag: error: invalid config: store.kind must be one of 'milvus', 'pgvector',"
        " got 'qdrant'"
    )


def test_a_model_that_is_not_installed_is_one_line_before_any_service():
    done = run("run", "--bounded", env={"STREAMRAG_EMBEDDING__MODEL": "no-such/model"}, timeout=60)
    one_line(done, "model 'no-such/model' is not installed here", "'bundled'")


def test_produce_counts_skipped_files(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\ntext")
    (tmp_path / "b.png").write_bytes(b"\x89PNG")
    (tmp_path / "c.txt").write_text("")
    from collections import Counter

    skipped: Counter[str] = Counter()
    records = list(document_records(tmp_path, skipped=skipped))
    assert [doc_id for doc_id, _ in records] == ["a.md"]
    assert sum(skipped.values()) == 2 and skipped["empty"] == 1
