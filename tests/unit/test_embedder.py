"""Embedder: one batched model call for new content, cached vectors for known content."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from jobs.chunking.planner import chunk_id, content_hash, trim_key
from jobs.embedding.embedder import Embedder
from streamrag.models import (
    ModelRef,
    ModelTokenizer,
    encode,
    max_seq_length,
    model_dimension,
    resolve_model,
)
from streamrag.records import ChunkRecord, EmbeddingRecord

MODEL = "test-model"


class FakeEncoder:
    """Records every encode call; the vector of a text is [len(text), number of 'a's]."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.kwargs: list[dict] = []

    def encode(self, sentences: list[str], **kwargs: object) -> Sequence[Sequence[float]]:
        self.calls.append(list(sentences))
        self.kwargs.append(kwargs)
        return [[float(len(s)), float(s.count("a"))] for s in sentences]


def chunk(text: str, position: int = 0, doc: str = "d") -> ChunkRecord:
    return ChunkRecord(
        chunk_id=chunk_id(doc, position),
        doc_id=doc,
        version=1,
        op="upsert",
        position=position,
        text=text,
        content_hash=content_hash(text),
    )


def trim(doc: str = "d", position: int = 0) -> ChunkRecord:
    return ChunkRecord(chunk_id=trim_key(doc), doc_id=doc, version=2, op="trim", position=position)


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


def test_new_chunks_are_embedded_in_one_call_in_input_order(encoder):
    embedder = Embedder(encoder, MODEL, batch_size=8)

    out = embedder.embed([chunk("bb", 0), chunk("a", 1), chunk("ccc", 2)])

    assert len(encoder.calls) == 1
    assert sorted(encoder.calls[0]) == ["a", "bb", "ccc"]
    assert [r.vector for r in out] == [[2.0, 0.0], [1.0, 1.0], [3.0, 0.0]]
    assert [r.chunk.position for r in out] == [0, 1, 2]
    assert all(r.embedded and r.model_id == MODEL for r in out)


def test_model_is_asked_for_normalized_vectors_in_configured_batches(encoder):
    Embedder(encoder, MODEL, batch_size=8).embed([chunk("x")])

    assert encoder.kwargs[0]["normalize_embeddings"] is True
    assert encoder.kwargs[0]["batch_size"] == 8


def test_duplicate_texts_in_one_batch_are_encoded_once(encoder):
    embedder = Embedder(encoder, MODEL)

    out = embedder.embed([chunk("same", 0, "d1"), chunk("same", 0, "d2")])

    assert encoder.calls == [["same"]]
    assert out[0].vector == out[1].vector


def test_known_content_is_reused_without_calling_the_model(encoder):
    embedder = Embedder(encoder, MODEL)
    first = embedder.embed([chunk("alpha")])

    again = embedder.embed([chunk("alpha", 5, "other")])

    assert len(encoder.calls) == 1
    assert again[0].vector == first[0].vector
    assert again[0].embedded is False
    assert (embedder.embedded, embedder.reused) == (1, 1)


def test_only_new_content_goes_to_the_model(encoder):
    embedder = Embedder(encoder, MODEL)
    embedder.embed([chunk("alpha", 0), chunk("beta", 1)])

    out = embedder.embed([chunk("alpha", 0), chunk("BETA", 1)])

    assert encoder.calls[-1] == ["BETA"]
    assert [r.embedded for r in out] == [False, True]


def test_trim_markers_pass_through_without_a_model_call(encoder):
    embedder = Embedder(encoder, MODEL)

    out = embedder.embed([trim()])

    assert encoder.calls == []
    assert out == [EmbeddingRecord(chunk=trim(), model_id=MODEL)]
    assert out[0].vector is None


def test_trim_keeps_its_place_after_the_upserts(encoder):
    out = Embedder(encoder, MODEL).embed([chunk("a", 0), trim(position=1)])

    assert [r.chunk.op for r in out] == ["upsert", "trim"]


def test_vectors_passed_as_known_are_used_instead_of_the_model(encoder):
    embedder = Embedder(encoder, MODEL)

    out = embedder.embed([chunk("alpha")], known={content_hash("alpha"): [0.5, 0.5]})

    assert encoder.calls == []
    assert out[0].vector == [0.5, 0.5] and out[0].embedded is False


def test_cache_is_bounded_and_evicts_the_least_recently_used(encoder):
    embedder = Embedder(encoder, MODEL, cache_entries=2)
    embedder.embed([chunk("a")])
    embedder.embed([chunk("b")])
    embedder.embed([chunk("a")])  # touch "a": "b" is now the oldest
    embedder.embed([chunk("c")])  # evicts "b"

    embedder.embed([chunk("a")])
    embedder.embed([chunk("b")])

    assert encoder.calls == [["a"], ["b"], ["c"], ["b"]]


def test_cached_vectors_come_back_exactly_and_take_four_bytes_a_dimension(encoder):
    import random
    import sys

    import numpy as np

    rng = random.Random(3)
    vector = [float(x) for x in np.asarray([rng.uniform(-1, 1) for _ in range(384)], "float32")]
    embedder = Embedder(encoder, MODEL)
    embedder.embed([chunk("alpha")], known={content_hash("alpha"): vector})

    (record,) = embedder.embed([chunk("alpha", 3, "other")])

    assert record.vector == vector and record.embedded is False and encoder.calls == []
    cached = embedder._cache[content_hash("alpha")]
    assert sys.getsizeof(cached) < 384 * 4 + 128  # a list of floats: about 12 KB


def test_empty_batch_does_not_call_the_model(encoder):
    assert Embedder(encoder, MODEL).embed([]) == []
    assert encoder.calls == []


def test_encode_gives_one_vector_per_text(encoder):
    assert encode(encoder, ["aa?"]) == [[3.0, 2.0]]
    assert encoder.calls == [["aa?"]]


def test_embedding_record_round_trips_through_json(encoder):
    record = Embedder(encoder, MODEL).embed([chunk("alpha")])[0]

    assert EmbeddingRecord.from_json(record.to_json()) == record


# the bundled model's files (no torch needed)


def test_bundled_model_has_384_dimensions_and_256_word_pieces():
    ref = resolve_model("bundled")
    tokenizer = ModelTokenizer(ref)
    fits, max_len = tokenizer.fits, tokenizer.max_length

    assert ref.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert model_dimension(ref) == 384
    assert max_len == 256
    assert fits("short text")
    assert not fits("word " * 300)


def saved_model(root: Path, modules: dict[str, dict]) -> ModelRef:
    """The module configs of a saved sentence-transformers model (no weights needed)."""
    entries = [{"idx": 0, "name": "0", "path": "", "type": "Transformer"}]
    for i, (path, config) in enumerate(modules.items(), start=1):
        (root / path).mkdir()
        (root / path / "config.json").write_text(json.dumps(config))
        entries.append({"idx": i, "name": str(i), "path": path, "type": path.split("_")[1]})
    (root / "modules.json").write_text(json.dumps(entries))
    return ModelRef(str(root), "saved")


def test_dimension_of_models_saved_by_old_and_new_sentence_transformers(tmp_path: Path):
    old, new, dense = (tmp_path / n for n in ("old", "new", "dense"))
    for d in (old, new, dense):
        d.mkdir()
    assert (
        model_dimension(saved_model(old, {"1_Pooling": {"word_embedding_dimension": 384}})) == 384
    )
    assert model_dimension(saved_model(new, {"1_Pooling": {"embedding_dimension": 768}})) == 768
    assert (
        model_dimension(
            saved_model(
                dense, {"1_Pooling": {"embedding_dimension": 384}, "2_Dense": {"out_features": 128}}
            )
        )
        == 128
    )


def test_max_seq_length_of_old_and_new_saves(tmp_path: Path):
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    (old / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    (new / "sentence_bert_config.json").write_text(json.dumps({"transformer_task": "x"}))
    (new / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 384}))

    assert max_seq_length(old) == 256
    assert max_seq_length(new) == 384
    (new / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert max_seq_length(new) == 512  # "no limit" from the tokenizer: the model's limit


def test_fit_checker_counts_special_tokens():
    tokenizer = ModelTokenizer(resolve_model("bundled"))
    fits, max_len = tokenizer.fits, tokenizer.max_length

    assert fits("a " * (max_len - 2))  # [CLS] + 254 pieces + [SEP] = 256
    assert not fits("a " * (max_len - 1))


def test_other_model_names_resolve_to_themselves():
    ref = resolve_model("/models/custom")

    assert (ref.path, ref.model_id) == ("/models/custom", "/models/custom")
