"""Turn a document (plain text, Markdown, HTML or PDF) into clean text and its blocks.

The cleaned text is what chunk spans point into, so cleaning is deterministic: the same
input always gives the same text. Each reader (markdown.py, html.py, pdf.py; plain text
here) yields blocks; blocks.py normalizes and joins them. What a reader keeps or drops:

- plain text: paragraphs at blank lines, nothing else is structure;
- Markdown: parsed; headings, code and front matter as the parser sees them;
- HTML: the main content, boilerplate dropped by rule, code kept exactly;
- PDF: the text layer, page by page.

Nothing of the main text is dropped silently: a document past a nesting limit is
rejected, never cut.
"""

from __future__ import annotations

import re

from jobs.chunking.blocks import Cleaned, RawBlock, assemble
from jobs.chunking.html import html_blocks
from jobs.chunking.markdown import markdown_blocks
from jobs.chunking.pdf import pdf_blocks

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")


def clean(text: str, content_type: str = "text") -> Cleaned:
    """Clean ``text`` of the given content type ("text", "markdown", "html" or "pdf",
    the last one base64-encoded)."""
    if content_type == "markdown":
        blocks, metadata = markdown_blocks(text)
        return assemble(blocks, metadata)
    if content_type == "html":
        return assemble(html_blocks(text))
    if content_type == "pdf":
        return assemble(pdf_blocks(text))
    return assemble(text_blocks(text))


def text_blocks(text: str) -> list[RawBlock]:
    """Plain text: a paragraph per run of lines between blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [RawBlock("text", p) for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
