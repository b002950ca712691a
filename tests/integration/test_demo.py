"""The first hour: `streamrag demo` (what `make demo` runs) shows all three parts with the
project's own lines only, and `query` before anything is indexed says what to do.

The demo runs on its own topics, consumer group and collection; the CDC part uses the
sample schema kb.* and the default connector, as a user's demo does."""

from __future__ import annotations

import os
import re
import subprocess
import uuid

import pytest

from streamrag import generations
from streamrag.config import PROJECT_ROOT, Settings, isolated_env
from tests.integration.conftest import CLI, settings_with

# Third-party noise that must not reach the demo's output.
NOISE = [
    "Failed to acquire idempotence PID",
    "Coordinator load in progress",
    "Loading weights",
    "mvccTs",
    "Traceback",
    "[ERROR]",
    "WARNING",
    "it/s]",
]


@pytest.fixture
def demo_env(stack: Settings):
    env = {**os.environ, **isolated_env(f"demo{uuid.uuid4().hex[:8]}")}
    env.pop("STREAMRAG_CDC__TABLES", None)  # the demo's CDC step reads the sample tables
    settings = settings_with(env)
    yield env
    generations.drop_all(settings)


def test_the_demo_tells_the_whole_story_in_its_own_words(demo_env):
    done = subprocess.run(
        [CLI, "demo"], env=demo_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for noise in NOISE:
        assert noise not in out, f"third-party noise in the demo's output: {noise}"
    expected = [
        r"\[1/3\] Documents",
        r"produced 10 documents to \S+; skipped 0 files",
        # The CDC topics' earlier events (other demos on this stack) are read too.
        r"ingest job \(bounded\): read \d+ source records in [\d.]+ s: \d+ documents changed,"
        r" \d+ chunks embedded, \d+ reused, \d+ documents deleted, 0 dead letters",
        r"1\. kafka-log-compaction\.md",
        r"\[2/3\] Change data capture",
        r"connector streamrag-postgres RUNNING",
        r"ingest job streaming, up in [\d.]+ s",
        r"INSERT row \d+ -> searchable [\d.]+ s after commit",
        r"kb\.articles:\d+ .*upgrade the ingest job without downtime",
        r"UPDATE -> the new text is searchable [\d.]+ s after commit",
        r"DELETE -> gone from the index [\d.]+ s after commit",
        r"\[3/3\] Replay",
        r"rebuilt generation g\d+ from the embeddings topic in [\d.]+ s \(no model calls\)",
        r"\* g\d+",
        r"same answer from g\d+: kafka-log-compaction\.md",
        r"Done in \d+ s\. Next: README",
    ]
    for pattern in expected:
        assert re.search(pattern, out), f"missing from the demo's output: {pattern}\n{out}"
    assert len(done.stdout.splitlines()) < 40  # a screen, not a log


def test_query_before_anything_is_indexed_says_how_to_index(demo_env):
    done = subprocess.run(
        [CLI, "query", "anything"], env=demo_env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing is indexed in" in lines[0]
    assert "streamrag run --bounded" in lines[0]
