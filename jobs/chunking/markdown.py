"""Markdown to blocks: parsed (CommonMark, by markdown-it), never pattern-matched.

Headings are what the parser says they are (ATX ``#`` followed by a space, or setext);
fenced and indented code are code blocks; the rest is read as the HTML the parser
renders. A YAML front matter block (``---`` on the first line, up to the next ``---`` or
``...``) is metadata, not text. Markdown nested deeper than ``limits.MARKDOWN_NESTING``
is rejected: the parser would silently drop what lies deeper.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from markdown_it import MarkdownIt

from jobs.chunking.blocks import RawBlock
from jobs.chunking.html import html_blocks
from streamrag.errors import BadRecord
from streamrag.limits import MARKDOWN_NESTING, exceeded

# The parser stops nesting at maxNesting and drops what lies deeper: give it room past the
# limit, and reject a document that reaches the limit.
_markdown = MarkdownIt("commonmark", {"maxNesting": MARKDOWN_NESTING.value + 2})
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)


def markdown_blocks(text: str) -> tuple[list[RawBlock], dict[str, Any]]:
    """The blocks of a Markdown document, and its front matter as metadata."""
    body, metadata = split_front_matter(text)
    return html_blocks(markdown_to_html(body)), metadata


def split_front_matter(text: str) -> tuple[str, dict[str, Any]]:
    """(the text after the front matter, the front matter as a mapping)."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return text, {}
    try:
        data = yaml.safe_load(match.group(1) or "")
    except yaml.YAMLError as e:
        raise BadRecord(f"front matter is not valid YAML: {e}".splitlines()[0]) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRecord("front matter must be a YAML mapping")
    return text[match.end() :], {str(k): _plain(v) for k, v in data.items()}


def markdown_to_html(text: str) -> str:
    """CommonMark to HTML; LimitExceeded when the nesting reaches MARKDOWN_NESTING."""
    tokens = _markdown.parse(text)
    deepest = max((t.level for t in tokens), default=0)
    if deepest > MARKDOWN_NESTING.value:
        raise exceeded(MARKDOWN_NESTING, f"Markdown nests {deepest} levels deep")
    return str(_markdown.renderer.render(tokens, _markdown.options, {}))


def _plain(value: Any) -> Any:
    """YAML values as JSON values (dates as ISO strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
