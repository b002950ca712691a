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


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamrag: error: "), done.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("command", ["serve", "mcp"])
def test_serve_without_tokens_says_where_they_come_from(command, monkeypatch):
    monkeypatch.delenv("STREAMRAG_TOKENS_FILE", raising=False)
    monkeypatch.delenv("STREAMRAG_TOKENS", raising=False)
    one_line_error(run(command), "no API tokens", "--tokens-file")


@pytest.mark.parametrize(
    ("content", "words"),
    [("acme short-one\n", ("shorter than 16",)), ("just-one-field\n", ("expected",))],
)
def test_serve_with_a_bad_tokens_file_is_one_line(tmp_path, content, words):
    path = tmp_path / "tokens"
    path.write_text(content)
    one_line_error(run("serve", "--tokens-file", str(path)), *words)


def test_mcp_with_an_unknown_token_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "tokens"
    path.write_text("acme acme-token-0123456789abcdef\n")
    monkeypatch.setenv("STREAMRAG_TOKEN", "not-a-known-token-0123")
    one_line_error(run("mcp", "--tokens-file", str(path)), "invalid bearer token")
