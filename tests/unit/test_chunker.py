"""Chunker: token-bounded, structure-first, exact spans of the cleaned text."""

from __future__ import annotations

import hashlib
import random

import pytest

from jobs.chunking.chunker import Chunker, get_encoding
from jobs.chunking.stage import ChunkStage
from streamrag.config import ChunkingConfig
from streamrag.errors import BadRecord
from streamrag.models import ModelTokenizer, resolve_model
from streamrag.records import DocumentEvent, Origin

ENC = get_encoding("cl100k_base")


def tokens(text: str) -> int:
    return len(ENC.encode_ordinary(text))


def prose(n_sentences: int, tag: str = "") -> str:
    return " ".join(
        f"Sentence {tag}{k} explains how a streaming pipeline keeps its index fresh."
        for k in range(n_sentences)
    )


def sections(n_sections: int = 6, n_paragraphs: int = 8, edit=None) -> str:
    parts = []
    for s in range(n_sections):
        parts.append(f"# Section {s}")
        for p in range(n_paragraphs):
            para = prose(2, tag=f"s{s}p{p}-")
            if edit and (s, p) == (n_sections // 2, n_paragraphs // 2):
                para = edit(para)
            parts.append(para)
    return "\n\n".join(parts)


def test_every_chunk_fits_max_tokens():
    text = sections()
    chunker = Chunker(ENC, max_tokens=64)

    spans = chunker.split(text)

    assert len(spans) > 5
    assert all(tokens(s.text) <= 64 for s in spans)


def test_span_text_is_exactly_the_cleaned_slice():
    text = sections() + "\n\nTrailing   paragraph with  odd spacing."

    spans = Chunker(ENC, max_tokens=50).split(text)

    assert spans
    assert all(text[s.start : s.end] == s.text for s in spans)


def test_spans_are_ordered_and_disjoint_without_overlap():
    spans = Chunker(ENC, max_tokens=40).split(sections())

    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_chunks_have_no_surrounding_whitespace():
    spans = Chunker(ENC, max_tokens=40).split(sections())

    assert all(s.text == s.text.strip() for s in spans)


def test_a_heading_always_starts_a_new_chunk():
    text = "# One\n\nShort text.\n\n## Two\n\nMore text.\n\n# Three\n\nEnd."
    heading_starts = [
        i for i in range(len(text)) if text.startswith("#", i) and (i == 0 or text[i - 1] == "\n")
    ]

    spans = Chunker(ENC, max_tokens=500).split(text)  # all of it would fit in one chunk

    assert [s.start for s in spans] == heading_starts
    assert not any("\n#" in s.text for s in spans)


def test_prefers_paragraph_breaks_over_sentence_breaks():
    paragraphs = [prose(3, tag=f"p{p}-") for p in range(4)]
    text = "\n\n".join(paragraphs)
    per_paragraph = max(tokens(p) for p in paragraphs)

    spans = Chunker(ENC, max_tokens=per_paragraph + 10).split(text)

    assert [s.text for s in spans] == paragraphs


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.replace("explains", "clearly explains", 1),
        lambda p: p + " An extra sentence makes this paragraph noticeably longer than before.",
        lambda p: p[:20],
    ],
    ids=["word", "append", "truncate"],
)
def test_a_paragraph_edit_in_the_middle_changes_at_most_two_chunks(edit):
    chunker = Chunker(ENC, max_tokens=100)
    before = [s.text for s in chunker.split(sections())]

    after = [s.text for s in chunker.split(sections(edit=edit))]

    assert len(before) > 10
    assert 1 <= len(set(after) - set(before)) <= 2
    assert len(set(before) - set(after)) <= 2


def test_a_megabyte_word_without_spaces_is_split_into_fitting_chunks():
    word = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(1_000_000 // 64))
    chunker = Chunker(ENC, max_tokens=200)

    spans = chunker.split(word)

    assert len(spans) > 100
    assert all(tokens(s.text) <= 200 for s in spans)
    assert "".join(s.text for s in spans) == word


def random_text(seed: int, pieces: list[str]) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(pieces) for _ in range(800))


EMOJI_AND_CJK = ["🚀", "✅", "😀", "🎉", "日本語", "テキスト", "word", "ok", ".", " "]
IDENTIFIERS = [
    "Kafka",
    "Stream",
    "Config",
    "Factory",
    "Impl",
    "_",
    ".",
    "/",
    "=",
    "0",
    "42",
    "x",
    "?",
    "&",
    "https://",
    "-",
    " ",
]


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param(EMOJI_AND_CJK, id="emoji"),
        pytest.param(IDENTIFIERS, id="identifiers"),
    ],
)
def test_chunks_of_random_text_fit_max_tokens_when_recounted(pieces):
    for seed in range(40):
        text = random_text(seed, pieces)

        spans = Chunker(ENC, max_tokens=50).split(text)

        assert "".join(s.text for s in spans).replace(" ", "") == text.replace(" ", "")
        assert all(tokens(s.text) <= 50 for s in spans), f"seed {seed}"


def test_a_heading_is_not_left_alone_when_its_section_is_long():
    text = f"# Title\n\n{prose(30)}"

    spans = Chunker(ENC, max_tokens=100).split(text)

    assert spans[0].text.startswith("# Title\n\nSentence 0")
    assert tokens(spans[0].text) > 50


def test_dense_technical_text_fits_the_bundled_models_word_pieces():
    tokenizer = ModelTokenizer(resolve_model("bundled"))
    fits, model_max = tokenizer.fits, tokenizer.max_length
    lines = [
        f"kafka.broker.{i}: log.cleaner.dedupe.buffer.size=0x"
        f"{hashlib.md5(str(i).encode()).hexdigest()[:12]} offset={i * 7919} lsn=0/{i * 104729:X}"
        for i in range(200)
    ]
    text = "\n".join(lines)
    assert not all(fits(s.text) for s in Chunker(ENC, 250).split(text))  # the risk is real

    spans = Chunker(ENC, max_tokens=250, fits_model=fits).split(text)

    assert model_max == 256
    assert spans and all(fits(s.text) for s in spans)
    assert all(text[s.start : s.end] == s.text for s in spans)


def test_overlap_makes_consecutive_chunks_share_text():
    text = prose(40)

    spans = Chunker(ENC, max_tokens=60, overlap_tokens=10).split(text)

    assert len(spans) > 3
    assert all(b.start < a.end for a, b in zip(spans, spans[1:], strict=False))
    assert all(a.start < b.start and a.end < b.end for a, b in zip(spans, spans[1:], strict=False))


def test_overlap_keeps_every_chunk_ending_after_the_previous_one():
    text = "\n\n".join(prose(n, tag=f"p{p}-") for p, n in enumerate([5, 3, 6, 2, 4, 5, 3]))

    spans = Chunker(ENC, max_tokens=100, overlap_tokens=40).split(text)

    assert all(a.end < b.end for a, b in zip(spans, spans[1:], strict=False))
    assert len(spans) <= 2 * tokens(text) // (100 - 40)


def test_largest_allowed_overlap_never_repeats_a_chunk_end():
    text = "\n\n".join(f"Part {p}\n\n" + prose(4 + p % 3, tag=f"p{p}-") for p in range(8))

    spans = Chunker(ENC, max_tokens=100, overlap_tokens=49).split(text)

    assert all(a.end < b.end for a, b in zip(spans, spans[1:], strict=False))


def test_overlap_does_not_cross_a_heading():
    text = f"# A\n\n{prose(3)}\n\n# B\n\n{prose(3)}"

    spans = Chunker(ENC, max_tokens=200, overlap_tokens=20).split(text)

    assert [s.text.splitlines()[0] for s in spans] == ["# A", "# B"]
    assert spans[0].end <= spans[1].start


def test_overlap_of_half_max_tokens_or_more_is_rejected():
    with pytest.raises(ValueError, match="overlap"):
        Chunker(ENC, max_tokens=100, overlap_tokens=50)


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \n"])
def test_empty_or_whitespace_text_gives_no_chunks(text):
    assert Chunker(ENC, max_tokens=50).split(text) == []


def test_splitting_is_deterministic():
    text = sections()
    chunker = Chunker(ENC, max_tokens=70)

    assert chunker.split(text) == Chunker(ENC, max_tokens=70).split(text)


def test_count_tokens_uses_the_encoding():
    assert Chunker(ENC, max_tokens=50).count_tokens("hello world") == tokens("hello world")


def _event(text: str) -> DocumentEvent:
    return DocumentEvent(doc_id="d", version=1, source="s", origin=Origin("t", 0, 0), text=text)


def test_chunks_the_model_reads_as_unknown_are_left_out():
    stage = ChunkStage.for_model(ChunkingConfig(), resolve_model("bundled"))
    good = "Kafka keeps the latest record for every key when compaction is on. " * 12

    spans = stage.spans(_event(good + "\n\n" + "y" * 3000 + "\n\n" + good))

    assert spans and all("yyyy" not in s.text for s in spans)
    assert sum("Kafka keeps" in s.text for s in spans) >= 2


def test_a_document_of_only_unknown_word_pieces_is_a_bad_record():
    stage = ChunkStage.for_model(ChunkingConfig(), resolve_model("bundled"))

    with pytest.raises(BadRecord, match="no indexable text"):
        stage.spans(_event("x" * 200_000))


def test_a_few_unknown_symbols_do_not_drop_a_chunk():
    stage = ChunkStage.for_model(ChunkingConfig(), resolve_model("bundled"))

    (span,) = stage.spans(_event("Deploys went fine 🚀 and the index is fresh 😀."))

    assert "🚀" in span.text
