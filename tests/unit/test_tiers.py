"""The suite's own rules (tests/conftest.py): which tests the fast tier leaves out, and
which tests one xdist worker must run together."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import TESTS, scope_of


def collected(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout


def test_the_fast_tier_leaves_out_every_test_that_needs_services():
    # The markers must be given before -m deselects: given after, "not services" ran the
    # whole suite and started the stack.
    code, out = collected("-m", "not services", "tests/integration", "tests/flink")
    assert code == 0, out
    ids = [line for line in out.splitlines() if "::" in line]
    assert ids and all(i.startswith("tests/flink/") for i in ids), ids
    assert not [i for i in ids if "[pgvector]" in i], "the Flink tier's pgvector needs the stack"
    code, out = collected("-m", "services", "tests/integration")
    assert code == 0 and "tests/integration/test_faults.py::" in out, out


def test_tests_that_share_a_job_or_a_service_are_one_unit_of_work():
    ingest = "tests/integration/ingest/{}.py::test_x[milvus]"
    assert scope_of(ingest.format("test_pipeline")) == scope_of(ingest.format("test_replay"))
    dev_connect = {scope_of(f"tests/integration/{m}.py::t") for m in ("test_cdc", "test_demo")}
    assert dev_connect == {scope_of("tests/integration/test_operations.py::t")}
    assert scope_of("tests/flink/test_operators.py::a") == scope_of("tests/flink/test_job.py::b")
    assert scope_of("tests/integration/test_faults.py::a") == scope_of(
        "tests/integration/test_faults.py::b"
    )
    # Anything else is a unit of its own, so that short tests fill the workers' gaps.
    assert scope_of("tests/unit/test_chunking.py::a") != scope_of("tests/unit/test_chunking.py::b")
