"""Turn a document's raw text (plain, Markdown or HTML) into clean text.

The cleaned text is what chunk spans point into, so cleaning is deterministic:
the same input always gives the same text. Structure survives as blank lines between
blocks and ``#`` prefixes on headings, which the chunker uses as break points.

Nothing of the text is dropped silently: HTML is walked without recursion, in time
linear in its size however deep it nests (up to ``limits.HTML_DEPTH``); Markdown nested
deeper than ``limits.MARKDOWN_NESTING`` is rejected, because the parser would drop what
lies deeper. Comments, CDATA sections, declarations and processing instructions are not
text and are dropped.
"""

from __future__ import annotations

import re
import unicodedata

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PageElement, Tag
from markdown_it import MarkdownIt

from streamrag.limits import HTML_DEPTH, MARKDOWN_NESTING, exceeded

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "aside",
        "nav",
        "main",
        "blockquote",
        "pre",
        "ul",
        "ol",
        "li",
        "dl",
        "dt",
        "dd",
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "caption",
        "figure",
        "figcaption",
        "form",
        "fieldset",
        "details",
        "summary",
        "address",
        "hr",
        "br",
    }
)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_CELL_TAGS = frozenset({"td", "th"})
_DROP_TAGS = ("script", "style", "noscript", "template", "head", "svg")
_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# The parser stops nesting at maxNesting and drops what lies deeper: give it room past
# the limit, and reject a document that reaches the limit (see markdown_to_html).
_markdown = MarkdownIt("commonmark", {"maxNesting": MARKDOWN_NESTING.value + 2})


def clean(text: str, content_type: str = "text") -> str:
    """Clean ``text`` of the given content type ("text", "markdown" or "html")."""
    if content_type == "markdown":
        text = html_to_text(markdown_to_html(text))
    elif content_type == "html":
        text = html_to_text(text)
    return normalize(text)


def markdown_to_html(text: str) -> str:
    """CommonMark to HTML; LimitExceeded when the nesting reaches MARKDOWN_NESTING."""
    tokens = _markdown.parse(text)
    deepest = max((t.level for t in tokens), default=0)
    if deepest > MARKDOWN_NESTING.value:
        raise exceeded(MARKDOWN_NESTING, f"Markdown nests {deepest} levels deep")
    return str(_markdown.renderer.render(tokens, _markdown.options, {}))


def html_to_text(html: str) -> str:
    """Text of an HTML document: blocks on their own paragraphs, headings as ``# ...``."""
    soup = BeautifulSoup(html, "html.parser")
    out: list[str] = []
    # An explicit stack instead of recursion, and no edits of the tree (bs4's inserts
    # walk whole subtrees: quadratic on deep nesting). Entries: (node, depth, closing).
    stack: list[tuple[PageElement, int, bool]] = [(soup, 0, False)]
    while stack:
        node, depth, closing = stack.pop()
        if closing:
            out.append(_after(node))
        elif type(node) is NavigableString:  # not a Comment, CData, Doctype, ...
            out.append(str(node))
        elif isinstance(node, Tag) and node.name not in _DROP_TAGS:
            if depth > HTML_DEPTH.value:
                raise exceeded(HTML_DEPTH, f"HTML nests more than {HTML_DEPTH.value} deep")
            level = _HEADINGS.get(node.name)
            if level:  # one line, whatever the source's line breaks inside the heading
                out.append(f"\n\n{'#' * level} {' '.join(_text_of(node).split())}\n\n")
                continue
            if node.name in _BLOCK_TAGS:
                out.append("\n\n")
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in reversed(node.contents))
    return "".join(out)


def _after(node: PageElement) -> str:
    name = getattr(node, "name", None)
    if name in _BLOCK_TAGS:
        return "\n\n"
    return " " if name in _CELL_TAGS else ""


def _text_of(tag: Tag) -> str:
    """The plain text inside ``tag``, without scripts, styles and the like."""
    return "".join(
        str(s)
        for s in tag.descendants
        if type(s) is NavigableString
        and not any(p.name in _DROP_TAGS for p in s.parents if p is not tag)
    )


def normalize(text: str) -> str:
    """NFKC, no zero-width or control characters, tidy whitespace, blank-line blocks."""
    text = unicodedata.normalize("NFKC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.translate(_ZERO_WIDTH)
    text = (
        "".join(ch if ch == "\n" or unicodedata.category(ch) != "Cc" else " " for ch in text)
        if _has_control(text)
        else text
    )
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 and ch != "\n" or 127 <= ord(ch) < 160 for ch in text)
