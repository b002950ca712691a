"""The command line: expected failures end with one line and a non-zero exit, at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("streamrag"))


def run(*args: str | bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("option", [b"--doc-id", b"--source"])
def test_query_with_an_invalid_utf8_filter_fails_with_one_line(option):
    # Checked before the model loads or a store is contacted: no stack runs for unit tests.
    done = run("query", "what is compaction?", option, b"caf\xe9")

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "streamrag: error: filter "
        + option.decode()[2:].replace("-", "_")
        + ": the value is not valid Unicode ('caf\\udce9')"
    ]


def test_query_with_a_bad_metadata_key_fails_with_one_line():
    done = run("query", "q", "--meta", "a b=c")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
