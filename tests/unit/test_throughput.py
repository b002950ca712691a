"""Issue 12's pure parts: binary vectors on the wire, the hashing model, the batch keys
that spread documents over the embed stage's instances, and the device choice."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from jobs.embedding.batching import batch_key, batch_keys, instance_of
from jobs.embedding.embedder import Embedder
from streamrag.config import EmbeddingConfig
from streamrag.errors import UserError
from streamrag.models import (
    HashingEncoder,
    encode,
    load_model,
    model_dimension,
    pick_device,
    resolve_model,
    tokenizer_model,
)
from streamrag.records import (
    ChunkRecord,
    EmbeddingRecord,
    EventBatch,
    Origin,
    event_json,
    events_from_json,
    readable,
)


def record(vector: list[float] | None) -> EmbeddingRecord:
    chunk = ChunkRecord("d#0", "d", 3, "upsert", 0, 0, 5, "héllo", "h1")
    return EmbeddingRecord(chunk, "m", vector, embedded=True)


def test_binary_vectors_round_trip_exactly():
    rng = np.random.default_rng(7)
    values = rng.standard_normal(384).astype(np.float32).tolist()
    values += [0.0, -0.0, 1e-40, -3.4028234663852886e38, 1 / 3]
    values = np.asarray(values, dtype=np.float32).tolist()  # what a model gives: float32
    back = EmbeddingRecord.from_json(record(values).to_json())
    # bit for bit: the float32 bytes are what the model produced
    assert struct.pack(f"<{len(values)}f", *back.vector) == struct.pack(f"<{len(values)}f", *values)
    assert back == record(values)


def test_binary_vectors_are_much_smaller_than_decimal_text():
    values = np.random.default_rng(1).standard_normal(384).astype(np.float32).tolist()
    as_binary = record(values).to_json()
    as_text = json.dumps(values)
    assert len(as_binary) < len(as_text) / 2
    assert '"vector_f32":' in as_binary and '"vector"' not in as_binary


def test_records_written_with_decimal_vectors_still_read():
    data = json.loads(record([0.5, 0.25]).to_json())
    del data["vector_f32"]
    data["vector"] = [0.5, 0.25]
    assert EmbeddingRecord.from_dict(data).vector == [0.5, 0.25]


def test_trim_markers_carry_no_vector():
    assert json.loads(record(None).to_json())["vector_f32"] is None
    assert EmbeddingRecord.from_json(record(None).to_json()).vector is None


def test_a_person_reads_the_vector_as_numbers():
    shown = json.loads(readable(record([0.5, -2.0]).to_json()))
    assert shown["vector"] == [0.5, -2.0] and "vector_f32" not in shown
    assert readable("not json") == "not json"
    assert readable('{"doc_id": "x"}') == '{"doc_id": "x"}'


def test_a_broken_binary_vector_is_an_error_not_garbage():
    data = json.loads(record([1.0]).to_json())
    data["vector_f32"] = "AAA"  # 2 bytes: not a float32 array
    with pytest.raises(ValueError):
        EmbeddingRecord.from_dict(data)


def test_event_batches_keep_records_and_origin_in_order():
    records = [json.dumps({"chunk_id": f"d#{i}", "op": "upsert"}) for i in range(3)]
    raw = event_json("d/ü", Origin("docs", 2, 41), records)
    batch = EventBatch.from_json(raw)
    assert batch == EventBatch("d/ü", Origin("docs", 2, 41), [json.loads(r) for r in records])
    assert batch.upserts == 3
    assert events_from_json("[" + raw + "," + batch.to_json() + "]") == [batch, batch]


# Flink 2.2.1's KeyGroupRangeAssignment.assignKeyToParallelOperator(Row.of(k), 128, p)
# for k = 0..19, printed by a Java program against the pinned flink-dist jar (PyFlink's
# key_by keys by a one-field Row).
FLINK_INSTANCES = {
    1: [0] * 20,
    2: [0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
    3: [0, 1, 2, 2, 0, 0, 2, 0, 1, 2, 1, 0, 0, 0, 1, 1, 1, 2, 2, 0],
    4: [1, 1, 3, 3, 0, 0, 3, 0, 2, 3, 1, 1, 1, 1, 1, 1, 1, 3, 3, 0],
}


@pytest.mark.parametrize("parallelism", sorted(FLINK_INSTANCES))
def test_batch_keys_land_where_flink_sends_them(parallelism: int):
    assert [instance_of(k, parallelism) for k in range(20)] == FLINK_INSTANCES[parallelism]


@pytest.mark.parametrize("parallelism", [1, 2, 3, 4, 8, 16, 64])
def test_each_embed_instance_owns_exactly_one_batch_key(parallelism: int):
    keys = batch_keys(parallelism)
    assert sorted(instance_of(k, parallelism) for k in keys) == list(range(parallelism))


def test_a_documents_events_always_share_a_batch_key_and_documents_spread():
    docs = [f"doc-{i}" for i in range(400)]
    assert all(batch_key(d, 4) == batch_key(d, 4) for d in docs)
    per_key: dict[int, int] = {}
    for d in docs:
        per_key[batch_key(d, 4)] = per_key.get(batch_key(d, 4), 0) + 1
    assert len(per_key) == 4 and min(per_key.values()) > 60


def test_the_hashing_model_is_deterministic_unit_length_and_knows_words():
    ref = resolve_model("hash:64")
    assert ref.hashing and model_dimension(ref) == 64
    assert tokenizer_model(ref) == resolve_model("bundled")  # the same chunks as the default
    model = load_model(ref)
    texts = ["Flink checkpoints state", "flink CHECKPOINTS state!", "Milvus stores vectors", ""]
    a, b, c, empty = (np.asarray(v) for v in encode(model, texts))
    assert np.allclose([np.linalg.norm(v) for v in (a, b, c, empty)], 1.0, atol=1e-6)
    assert np.array_equal(a, b)  # same words
    assert float(a @ c) < 0.9
    assert encode(HashingEncoder(64), texts) == encode(model, texts)


@pytest.mark.parametrize("name", ["hash:", "hash:0", "hash:x", "hash:99999999"])
def test_a_bad_hashing_model_is_one_line(name: str):
    with pytest.raises(UserError, match="hash:DIM"):
        resolve_model(name)


def test_the_embedder_sends_the_longest_inputs_first_in_one_call():
    seen: list[list[str]] = []

    class Recording(HashingEncoder):
        def encode(self, inputs, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(list(inputs))
            return super().encode(inputs, *args, **kwargs)

    chunks = [
        ChunkRecord(f"{d}#0", d, 1, "upsert", 0, 0, 0, text, f"h-{d}")
        for d, text in [("a", "short"), ("b", "a much longer text"), ("c", "middle one")]
    ]
    records = Embedder(Recording(16), "hash:16").embed(chunks)
    assert seen == [["a much longer text", "middle one", "short"]]
    assert [r.chunk.doc_id for r in records] == ["a", "b", "c"]  # order of the input


def test_devices_and_batch_sizes():
    assert pick_device("cpu") == "cpu"
    import torch

    if not torch.cuda.is_available():
        assert pick_device("auto") == "cpu"
        with pytest.raises(UserError, match="no CUDA GPU"):
            pick_device("cuda")
    cfg = EmbeddingConfig(batch_size=16, cuda_batch_size=512)
    assert cfg.batch_size_on("cpu") == 16 and cfg.batch_size_on("cuda") == 512
    assert EmbeddingConfig().device == "auto" and EmbeddingConfig().model == "bundled"
