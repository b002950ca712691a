"""The in-process Flink tier: each operator of the jobs driven by PyFlink local execution
on a small bounded source (no Kafka), asserting its main output and its dead letters.

Between the pure unit tests and the integration tests that run whole jobs against Kafka:
the operators' decode, call, encode and error routing, in a real Flink runtime. Stages
that read or write a vector store do so on Milvus Lite embedded in this process (a file:
no service, so in `make test-fast`) and on the local stack's PostgreSQL with pgvector
(the `services` tier).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyflink.common import Row, Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from streamrag.config import Settings, isolated_env
from streamrag.flink import create_context
from streamrag.operators import DEAD_LETTERS
from streamrag.records import DeadLetter
from tests.integration.conftest import (
    settings_with,
    stack,  # noqa: F401  (the real services)
)

# The JVM that PyFlink starts logs here, for tests that read what Flink did.
FLINK_LOG_DIR = Path(tempfile.mkdtemp(prefix="streamrag-flink-tier-"))
os.environ["FLINK_LOG_DIR"] = str(FLINK_LOG_DIR)

SOURCE_ROW = Types.ROW_NAMED(
    ["k", "v", "topic", "partition", "offset", "ts_ms"],
    [
        Types.PRIMITIVE_ARRAY(Types.BYTE()),
        Types.PRIMITIVE_ARRAY(Types.BYTE()),
        Types.STRING(),
        Types.INT(),
        Types.LONG(),
        Types.LONG(),
    ],
)
TAGGED = Types.ROW_NAMED(["tag", "value"], [Types.STRING(), Types.STRING()])


def source_row(
    key: str | None,
    value: bytes | str | None,
    offset: int,
    topic: str = "documents",
    ts_ms: int = 1_700_000_000_000,
) -> Row:
    if isinstance(value, str):
        value = value.encode()
    return Row(
        k=key.encode() if key is not None else None,
        v=value,
        topic=topic,
        partition=0,
        offset=offset,
        ts_ms=ts_ms,
    )


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """In local execution PyFlink runs the Python workers in this process ("loopback"),
    and they set variables (PYFLINK_GATEWAY_DISABLED, ...) that would break every later
    `streamrag` subprocess that inherits them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@dataclass
class Outputs:
    main: list[dict[str, str]]
    dead_letters: list[DeadLetter]


def _tag_main(row: Row) -> Row:
    return Row(tag="main", value=json.dumps(row.as_dict()))


def _tag_dead(row: Row) -> Row:
    return Row(tag="dead", value=row["v"])


def collect(main: DataStream, dead: Sequence[DataStream]) -> Outputs:
    """Run the job and return what ``main`` emitted and every dead letter."""
    tagged = main.map(_tag_main, output_type=TAGGED).union(
        *(d.map(_tag_dead, output_type=TAGGED) for d in dead)
    )
    out = Outputs([], [])
    with tagged.execute_and_collect() as results:
        for row in results:
            if row["tag"] == "main":
                out.main.append(json.loads(row["value"]))
            else:
                out.dead_letters.append(DeadLetter.from_json(row["value"]))
    return out


def side(stream: DataStream) -> DataStream:
    return stream.get_side_output(DEAD_LETTERS)


# The stores of this tier: Milvus Lite in a file of the test's own, and pgvector on the
# local stack (which makes the test one of the services tier).
STORES = ["milvus", pytest.param("pgvector", marks=pytest.mark.services)]


@pytest.fixture
def flink_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings of an isolated pipeline (its own collection/table), restarts allowed, the
    failure ledger in a fresh directory; Milvus is Milvus Lite in a file under tmp_path."""
    kind = getattr(request, "param", "milvus")
    if kind == "pgvector":
        request.getfixturevalue("stack")
    where = {"STORE__URI": str(tmp_path / "milvus.db")} if kind == "milvus" else {}
    env = isolated_env(
        f"f{uuid.uuid4().hex[:8]}",
        STORE__KIND=kind,
        CDC__TABLES="{}",
        FLINK__FAILURE_LEDGER_DIR=str(tmp_path / "failures"),
        FLINK__PARALLELISM="1",
        **where,
    )
    return settings_with(env)


def environment(settings: Settings) -> StreamExecutionEnvironment:
    return create_context(settings, "operator-test").env
