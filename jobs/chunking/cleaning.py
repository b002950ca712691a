"""Turn a document's raw text (plain, Markdown or HTML) into clean text.

The cleaned text is what chunk spans point into, so cleaning is deterministic:
the same input always gives the same text. Structure survives as blank lines between
blocks and ``#`` prefixes on headings, which the chunker uses as break points.
"""

from __future__ import annotations

import re
import unicodedata

from bs4 import BeautifulSoup, NavigableString, Tag
from markdown_it import MarkdownIt

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "header", "footer", "aside", "nav", "main", "blockquote",
    "pre", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr",
    "caption", "figure", "figcaption", "form", "fieldset", "details", "summary", "address",
    "hr", "br",
})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_CELL_TAGS = frozenset({"td", "th"})
_DROP_TAGS = ("script", "style", "noscript", "template", "head", "svg")
_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_markdown = MarkdownIt("commonmark")


def clean(text: str, content_type: str = "text") -> str:
    """Clean ``text`` of the given content type ("text", "markdown" or "html")."""
    if content_type == "markdown":
        text = html_to_text(_markdown.render(text))
    elif content_type == "html":
        text = html_to_text(text)
    return normalize(text)


def html_to_text(html: str) -> str:
    """Text of an HTML document: blocks on their own paragraphs, headings as ``# ...``."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if not isinstance(tag, Tag):
            continue
        level = _HEADINGS.get(tag.name)
        if level:  # one line, whatever the source's line breaks inside the heading
            heading = " ".join(tag.get_text().split())
            tag.clear()
            tag.append(NavigableString("#" * level + " " + heading))
        elif tag.name in _CELL_TAGS:
            tag.insert_after(NavigableString(" "))
        if level or tag.name in _BLOCK_TAGS:
            tag.insert_before(NavigableString("\n\n"))
            tag.insert_after(NavigableString("\n\n"))
    return soup.get_text()


def normalize(text: str) -> str:
    """NFKC, no zero-width or control characters, tidy whitespace, blank-line blocks."""
    text = unicodedata.normalize("NFKC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.translate(_ZERO_WIDTH)
    text = "".join(
        ch if ch == "\n" or unicodedata.category(ch) != "Cc" else " " for ch in text
    ) if _has_control(text) else text
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 and ch != "\n" or 127 <= ord(ch) < 160 for ch in text)
