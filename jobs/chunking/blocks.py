"""Cleaned text as a sequence of blocks: headings, paragraphs and code.

Every reader (plain text, Markdown, HTML, PDF) turns a document into blocks; this module
normalizes each block by its kind and joins them with blank lines into the *cleaned text*
that chunk spans point into. The blocks keep what the text alone would lose: which lines
are headings (and their level), which are code, and on which page a block stood. The
chunker breaks on block boundaries and never guesses structure from the text, so a ``#``
line inside a code listing is never a heading.

- heading: one line, ``#`` x level, a space, the heading text (whitespace folded);
- text: NFKC, no zero-width or control characters, runs of spaces folded, lines stripped;
- code: lines and indentation exactly as given (tabs too), control characters removed,
  blank lines at both ends dropped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["heading", "text", "code"]

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{2,}")
# Control characters (Unicode category Cc) but the line feed; code keeps its tabs too.
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_CODE_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HEADING_CHARS = 300  # a longer "heading" is cut: it names a section, it is not one


@dataclass(frozen=True, slots=True)
class RawBlock:
    """A block as a reader found it, before normalization."""

    kind: Kind
    text: str
    level: int = 0  # headings: 1..6
    page: int = 0  # PDF pages: 1-based; 0 when the document has no pages


@dataclass(frozen=True, slots=True)
class Block:
    """A block of the cleaned text: ``cleaned.text[start:end]``."""

    kind: Kind
    start: int
    end: int
    level: int = 0
    page: int = 0
    title: str = ""  # headings: the heading's text without the ``#`` marks


@dataclass(frozen=True, slots=True)
class Cleaned:
    """A document's cleaned text and its blocks, plus metadata found in the document
    itself (Markdown front matter)."""

    text: str
    blocks: tuple[Block, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


def assemble(raw: list[RawBlock], metadata: dict[str, Any] | None = None) -> Cleaned:
    """Normalize each block by its kind and join them with blank lines; empty blocks go."""
    parts: list[str] = []
    blocks: list[Block] = []
    pos = 0
    for block in raw:
        text, title = _normalized(block)
        if not text:
            continue
        if parts:
            parts.append("\n\n")
            pos += 2
        parts.append(text)
        blocks.append(Block(block.kind, pos, pos + len(text), block.level, block.page, title))
        pos += len(text)
    return Cleaned("".join(parts), tuple(blocks), metadata or {})


def normalize_text(text: str) -> str:
    """Prose: NFKC, no zero-width or control characters, tidy whitespace, no blank lines."""
    text = _prepare(text, keep_tabs=False)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n", text).strip()


def normalize_code(text: str) -> str:
    """Code: every line and its indentation kept; control characters and the blank lines
    at both ends removed, line ends unified. No NFKC: it would rewrite code."""
    text = _prepare(text, keep_tabs=True, nfkc=False)
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _normalized(block: RawBlock) -> tuple[str, str]:
    if block.kind == "code":
        return normalize_code(block.text), ""
    if block.kind == "heading":
        title = " ".join(normalize_text(block.text).split())[:HEADING_CHARS]
        return (f"{'#' * block.level} {title}" if title else ""), title
    return normalize_text(block.text), ""


def _prepare(text: str, keep_tabs: bool, nfkc: bool = True) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = text.translate(_ZERO_WIDTH)
    return (_CODE_CONTROLS if keep_tabs else _CONTROLS).sub(" ", text)
