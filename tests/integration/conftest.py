"""Integration fixtures: the real local stack and an isolated pipeline per test.

Each test gets its own topics, consumer group and collection/table, so tests never see
each other's records. Jobs run as `streamrag run --bounded` subprocesses: real PyFlink
local execution that stops at the end of the topics.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from jobs.chunking.documents import parse_document_record
from streamrag import generations
from streamrag.config import PROJECT_ROOT, Settings, isolated_env, load_settings
from streamrag.kafka import Message, ensure_topics, read_log, send_all
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.local.stack import STORES, store_env
from streamrag.records import ChunkRecord, DocumentEvent, EmbeddingRecord, Origin
from streamrag.stores import open_store
from streamrag.stores.base import VectorStore

CLI = str(Path(sys.executable).with_name("streamrag"))
# The vectors of the records below: the bundled model's dimension.
DIM = 384


@pytest.fixture(scope="session")
def stack() -> Settings:
    from streamrag.local.stack import up

    settings = load_settings()
    up(settings)
    os.environ.setdefault("PGPASSFILE", str(settings.stack.secrets_dir / "pgpass"))
    return settings


def as_event(d: dict) -> DocumentEvent:
    """The DocumentEvent that the job's parser makes of this documents-topic record."""
    return parse_document_record(d["id"].encode(), json.dumps(d).encode(), Origin("t", 0, 0), 0)


def settings_with(env: dict[str, str]) -> Settings:
    """The settings that a process with these environment variables loads."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Pipeline:
    """One isolated pipeline: its env overrides, settings and helpers."""

    env: dict[str, str]
    settings: Settings

    def produce(self, records: list[tuple[str, str | bytes | None]], timestamp_ms: int = 0) -> None:
        send_all(self.settings, self.settings.kafka.documents_topic, records, timestamp_ms)

    def produce_docs(self, docs: list[dict]) -> None:
        self.produce([(d["id"], json.dumps(d)) for d in docs])

    def run(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [CLI, "run", "--bounded", *args],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"job failed:\n{done.stderr[-3000:]}"
        return done

    def topic(self, name: str) -> list[Message]:
        return list(read_log(self.settings, name, timeout_s=20))

    def dead_letters(self) -> list[dict]:
        return [json.loads(m.value) for m in self.topic(self.settings.kafka.dead_letter_topic)]

    def store(self) -> VectorStore:
        return open_store(self.settings.store)


def make_pipeline(stack: Settings, store: str) -> Pipeline:
    """A pipeline of its own on one of the stack's stores (streamrag.local.stack.STORES)."""
    # No CDC topics unless the test maps some: a connector on the dev stack must not leak in.
    cdc = os.environ.get("STREAMRAG_CDC__TABLES", "{}")
    env = {
        **os.environ,
        **isolated_env(f"t{uuid.uuid4().hex[:8]}", **store_env(stack, store), CDC__TABLES=cdc),
    }
    settings = settings_with(env)  # the same overrides as the job reads
    ensure_topics(settings)
    return Pipeline(env, settings)


@pytest.fixture(params=STORES)
def pipeline(request: pytest.FixtureRequest, stack: Settings) -> Iterator[Pipeline]:
    p = make_pipeline(stack, request.param)
    yield p
    generations.drop_all(p.settings)
    # What `streamrag run` keeps to resume after a crash (streamrag.local.checkpoints).
    shutil.rmtree(checkpoints_dir(p.settings, bounded=False).parent, ignore_errors=True)


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second offline model: the bundled MiniLM weights with max pooling instead of mean
    pooling, saved as a local sentence-transformers model. Same size, other vectors."""
    from sentence_transformers import SentenceTransformer, models

    from streamrag.models import load_model, resolve_model

    transformer = load_model(resolve_model("bundled"))[0]
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="max")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    path = tmp_path_factory.mktemp("models") / "minilm-max-pooling"
    model.save(str(path))
    return str(path)


# Embedding records as the embed stage writes them: unit vectors, seeded by chunk.
def vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def rec(
    i: int,
    doc: str = "d1",
    version: int = 1,
    text: str | None = None,
    cid: str | None = None,
    **meta: str | int | bool,
) -> EmbeddingRecord:
    chunk = ChunkRecord(
        chunk_id=cid or f"{doc}-{i}",
        doc_id=doc,
        version=version,
        op="upsert",
        position=i,
        start=10 * i,
        end=10 * i + 9,
        text=text if text is not None else f"chunk {i} of {doc}",
        content_hash=f"h{i}",
        source=f"src-{doc}",
        title=f"Title {doc}",
        metadata=meta or {"lang": "en", "n": i, "even": i % 2 == 0},
        source_ts_ms=1_700_000_000_000 + i,
    )
    seed = zlib.crc32(f"{doc}/{i}".encode())
    return EmbeddingRecord(chunk=chunk, model_id="model-a", vector=vec(seed))


def trim(doc: str, from_position: int, below_version: int) -> EmbeddingRecord:
    return EmbeddingRecord(
        ChunkRecord(
            chunk_id=f"trim:{doc}",
            doc_id=doc,
            version=below_version,
            op="trim",
            position=from_position,
        )
    )
