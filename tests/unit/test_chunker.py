"""Chunker: token-bounded, section-shaped, exact spans of the cleaned text."""

from __future__ import annotations

import hashlib
import random

import pytest

from jobs.chunking.chunker import Chunker, Span, get_encoding, token_starts
from jobs.chunking.cleaning import clean
from jobs.chunking.stage import ChunkStage
from streamrag.config import ChunkingConfig
from streamrag.errors import BadRecord
from streamrag.models import ModelTokenizer, resolve_model
from streamrag.records import DocumentEvent, Origin

ENC = get_encoding("cl100k_base")


def split(text: str, kind: str = "markdown", **options) -> list[Span]:
    """The chunks of ``text`` cleaned as ``kind`` (Markdown: ``#`` lines are headings)."""
    return Chunker(ENC, **options).split(clean(text, kind))


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
    spans = split(text, max_tokens=64)

    assert len(spans) > 5
    assert all(tokens(s.text) <= 64 for s in spans)


def test_span_text_is_exactly_the_cleaned_slice():
    text = sections() + "\n\nTrailing   paragraph with  odd spacing."

    cleaned = clean(text, "markdown")

    spans = Chunker(ENC, max_tokens=50).split(cleaned)

    assert spans
    assert all(cleaned.text[s.start : s.end] == s.text for s in spans)


def test_spans_are_ordered_and_disjoint_without_overlap():
    spans = split(sections(), max_tokens=40)

    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_chunks_have_no_surrounding_whitespace():
    spans = split(sections(), max_tokens=40)

    assert all(s.text == s.text.strip() for s in spans)


def test_a_heading_always_starts_a_new_chunk():
    text = "# One\n\nShort text.\n\n## Two\n\nMore text.\n\n# Three\n\nEnd."
    heading_starts = [
        i for i in range(len(text)) if text.startswith("#", i) and (i == 0 or text[i - 1] == "\n")
    ]

    spans = split(text, max_tokens=500)  # all of it would fit in one chunk

    assert [s.start for s in spans] == heading_starts
    assert not any("\n#" in s.text for s in spans)


def test_prefers_paragraph_breaks_over_sentence_breaks():
    paragraphs = [prose(3, tag=f"p{p}-") for p in range(4)]
    text = "\n\n".join(paragraphs)
    per_paragraph = max(tokens(p) for p in paragraphs)

    spans = split(text, max_tokens=per_paragraph + 10)

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
    before = [s.text for s in split(sections(), max_tokens=100, min_section_tokens=40)]

    after = [s.text for s in split(sections(edit=edit), max_tokens=100, min_section_tokens=40)]

    assert len(before) > 10
    assert 1 <= len(set(after) - set(before)) <= 2
    assert len(set(before) - set(after)) <= 2


def test_a_megabyte_word_without_spaces_is_split_into_fitting_chunks():
    word = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(1_000_000 // 64))
    spans = split(word, "text", max_tokens=200)

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

        spans = split(text, "text", max_tokens=50)

        assert "".join(s.text for s in spans).replace(" ", "") == text.replace(" ", "")
        assert all(tokens(s.text) <= 50 for s in spans), f"seed {seed}"


def test_a_heading_is_not_left_alone_when_its_section_is_long():
    text = f"# Title\n\n{prose(30)}"

    spans = split(text, max_tokens=100)

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
    assert not all(fits(s.text) for s in split(text, "text", max_tokens=250))  # a real risk

    spans = split(
        text, "text", max_tokens=250, fits_model=lambda chunks: [fits(c) for c, _ in chunks]
    )

    assert model_max == 256
    assert spans and all(fits(s.text) for s in spans)
    assert all(text[s.start : s.end] == s.text for s in spans)


def test_overlap_makes_consecutive_chunks_share_text():
    text = prose(40)

    spans = split(text, max_tokens=60, overlap_tokens=10)

    assert len(spans) > 3
    assert all(b.start < a.end for a, b in zip(spans, spans[1:], strict=False))
    assert all(a.start < b.start and a.end < b.end for a, b in zip(spans, spans[1:], strict=False))


def test_overlap_keeps_every_chunk_ending_after_the_previous_one():
    text = "\n\n".join(prose(n, tag=f"p{p}-") for p, n in enumerate([5, 3, 6, 2, 4, 5, 3]))

    spans = split(text, max_tokens=100, overlap_tokens=40)

    assert all(a.end < b.end for a, b in zip(spans, spans[1:], strict=False))
    assert len(spans) <= 2 * tokens(text) // (100 - 40)


def test_largest_allowed_overlap_never_repeats_a_chunk_end():
    text = "\n\n".join(f"Part {p}\n\n" + prose(4 + p % 3, tag=f"p{p}-") for p in range(8))

    spans = split(text, max_tokens=100, overlap_tokens=49)

    assert all(a.end < b.end for a, b in zip(spans, spans[1:], strict=False))


def test_overlap_does_not_cross_a_heading():
    text = f"# A\n\n{prose(3)}\n\n# B\n\n{prose(3)}"

    spans = split(text, max_tokens=200, overlap_tokens=20)

    assert [s.text.splitlines()[0] for s in spans] == ["# A", "# B"]
    assert spans[0].end <= spans[1].start


def test_overlap_of_half_max_tokens_or_more_is_rejected():
    with pytest.raises(ValueError, match="overlap"):
        Chunker(ENC, max_tokens=100, overlap_tokens=50)


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \n"])
def test_empty_or_whitespace_text_gives_no_chunks(text):
    assert split(text, "text", max_tokens=50) == []


def test_splitting_is_deterministic():
    text = sections()
    assert split(text, max_tokens=70) == split(text, max_tokens=70)


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


# Sections shape chunks.


def test_a_tiny_section_merges_with_its_neighbour_under_the_same_parent():
    text = (
        f"# Guide\n\n## Short\n\nOne line.\n\n## Long\n\n{prose(12)}"
        f"\n\n# Next chapter\n\n{prose(3)}"
    )

    spans = split(text, max_tokens=400, min_section_tokens=40)

    assert [s.text.split("\n")[0] for s in spans] == ["# Guide", "# Next chapter"]
    assert "## Short\n\nOne line.\n\n## Long" in spans[0].text


def test_a_section_long_enough_starts_its_own_chunk():
    text = f"# A\n\n{prose(4)}\n\n## B\n\n{prose(4)}"

    spans = split(text, max_tokens=400, min_section_tokens=40)

    assert [s.text.split("\n")[0] for s in spans] == ["# A", "## B"]


def test_a_tiny_section_does_not_merge_into_the_next_chapter():
    text = f"# One\n\n## Tiny\n\nA line.\n\n# Two\n\n{prose(4)}"

    spans = split(text, max_tokens=400, min_section_tokens=40)

    assert [s.text.split("\n")[0] for s in spans] == ["# One", "# Two"]


def test_a_heading_never_ends_a_chunk():
    text = "\n\n".join(f"## Part {i}\n\n{prose(9, tag=f'{i}-')}" for i in range(12))

    spans = split(text, max_tokens=90, min_section_tokens=40)

    assert len(spans) >= 24  # every part is split
    assert not any(s.text.split("\n")[-1].startswith("#") for s in spans)


def test_no_tiny_piece_is_left_before_the_next_heading():
    text = f"# A\n\n{prose(9)}\n\n# B\n\n{prose(9)}"  # each section a little over budget

    spans = split(text, max_tokens=100, min_section_tokens=40)

    assert min(tokens(s.text) for s in spans) >= 40


def test_every_chunk_carries_its_heading_path():
    text = f"# Guide\n\n{prose(3)}\n\n## Install\n\n{prose(3)}\n\n### Linux\n\n{prose(3)}"

    spans = split(text, max_tokens=60)

    assert [s.heading_path for s in spans] == [
        "Guide",
        "Guide > Install",
        "Guide > Install > Linux",
    ]


def test_code_is_split_only_at_line_ends():
    code = "\n".join(f"    value_{i} = compute(value_{i - 1}, factor={i})" for i in range(60))
    text = f"# Code\n\n```python\n{code}\n```"
    cleaned = clean(text, "markdown")

    spans = Chunker(ENC, max_tokens=80).split(cleaned)

    assert len(spans) > 3
    code_lines = set(code.split("\n"))
    for span in spans[1:]:
        assert all(line in code_lines for line in cleaned.text[span.start : span.end].split("\n"))


def test_a_code_line_longer_than_the_budget_is_still_split():
    text = "```\n" + "x = [" + ", ".join(str(i) for i in range(400)) + "]\n```"

    spans = split(text, max_tokens=60)

    assert len(spans) > 5 and all(tokens(s.text) <= 60 for s in spans)


def test_the_model_fit_check_is_asked_in_batches_and_once_per_chunk_that_fits():
    calls: list[list[tuple[str, str]]] = []

    def fits(chunks: list[tuple[str, str]]) -> list[bool]:
        calls.append(chunks)
        return [True] * len(chunks)

    spans = split(prose(400), "text", max_tokens=100, fits_model=fits)

    asked = [text for batch in calls for text, _ in batch]
    assert sorted(asked) == sorted(s.text for s in spans)  # each chunk once, nothing more
    assert len(calls) <= len(spans) / 4  # plans of 8, 16, ... 64 chunks


def test_a_misfit_in_a_batch_is_cut_shorter_and_the_chunks_after_it_planned_again():
    text = prose(300)
    limit = 350  # characters: the "model" keeps less than the token budget gives

    spans = split(
        text, "text", max_tokens=100, fits_model=lambda cs: [len(c) <= limit for c, _ in cs]
    )
    unlimited = split(text, "text", max_tokens=100)

    assert all(len(s.text) <= limit for s in spans)
    assert len(spans) > len(unlimited)
    assert all(text[s.start : s.end] == s.text for s in spans)
    # nothing lost: the chunks cover every sentence, in order
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    covered = " ".join(s.text for s in spans)
    assert all(f"Sentence {k} " in covered for k in range(300))


def test_the_model_fit_check_sees_the_heading_path_it_will_be_given():
    seen: list[tuple[str, str]] = []

    def fits(chunks: list[tuple[str, str]]) -> list[bool]:
        seen.extend(chunks)
        return [True] * len(chunks)

    split(f"# Guide\n\n## Part\n\n{prose(2)}", max_tokens=200, fits_model=fits)

    assert seen and all(path == "Guide > Part" or path == "Guide" for _, path in seen)


@pytest.mark.parametrize(
    "text",
    [
        "plain ASCII text, with punctuation.\n\nAnd a second paragraph.",
        "héllo wörld — “quotes” and 中文字符 in one line",
        "😀😀😀 emoji that tiktoken splits inside a character 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "e\u0301 combining accents, \U0001f600x",
        "a",
        "",
    ],
)
def test_token_starts_equal_tiktokens_own_offsets(text):
    enc = get_encoding("cl100k_base")
    tokens = enc.encode_ordinary(text)
    assert token_starts(enc, tokens, text) == enc.decode_with_offsets(tokens)[1]
