"""pgvector's parallel upserts (streamrag.stores.pgvector.split_by_chunk): how a batch is
shared out over connections so that shares written at once never touch the same row."""

from __future__ import annotations

import pytest

from streamrag.config import ConfigError, load_settings
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.pgvector import MIN_SHARE_ROWS, split_by_chunk


def record(chunk: str, text: str = "t") -> EmbeddingRecord:
    return EmbeddingRecord(ChunkRecord(chunk, "d", 1, "upsert", text=text), "m", [1.0])


def test_a_small_batch_stays_whole():
    batch = [record(f"c{i}") for i in range(2 * MIN_SHARE_ROWS - 1)]
    assert split_by_chunk(batch, 4) == [batch]


def test_one_connection_keeps_the_batch_whole():
    batch = [record(f"c{i}") for i in range(1000)]
    assert split_by_chunk(batch, 1) == [batch]


def test_every_record_of_a_chunk_lands_in_one_share_in_the_batchs_order():
    batch = [record(f"c{i % 300}", text=f"v{i}") for i in range(900)]  # each chunk 3 times
    shares = split_by_chunk(batch, 2)

    assert len(shares) == 2 and sum(len(s) for s in shares) == len(batch)
    owner: dict[str, int] = {}
    for n, share in enumerate(shares):
        for r in share:
            assert owner.setdefault(r.chunk.chunk_id, n) == n
        texts = [r.chunk.text for r in share]
        assert texts == sorted(texts, key=lambda t: int(t[1:]))  # batch order kept
    assert min(len(s) for s in shares) > len(batch) / 4  # shared out, not all in one


def test_no_share_is_smaller_than_the_minimum_asked_for():
    batch = [record(f"c{i}") for i in range(3 * MIN_SHARE_ROWS)]
    assert len(split_by_chunk(batch, 8)) <= 3


def test_more_write_connections_than_the_pool_is_a_config_error(monkeypatch):
    monkeypatch.setenv("STREAMRAG_STORE__WRITE_CONNECTIONS", "5")
    monkeypatch.setenv("STREAMRAG_STORE__POOL_MAX", "4")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "write_connections (5) must not exceed pool_max (4)" in str(err.value)
    assert "\n" not in str(err.value)
