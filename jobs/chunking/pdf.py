"""PDF to blocks: the text layer, page by page (pypdf; no OCR).

The record carries the PDF's bytes base64-encoded. Each page's text is split into
paragraphs at blank lines; every block remembers its page (1-based), so that a hit can
cite it. The outline (bookmarks), when there is one, gives headings: each entry becomes a
heading block at the top of the page it points to. A PDF that cannot be read, is
encrypted, or has no text layer at all is a bad record, with that reason.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from typing import Any

from jobs.chunking.blocks import RawBlock
from streamrag.errors import BadRecord

log = logging.getLogger(__name__)


def pdf_blocks(data: str) -> list[RawBlock]:
    """The blocks of a base64-encoded PDF."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRecord(f"PDF content is not valid base64: {e}") from e
    quiet = logging.getLogger("pypdf")  # it logs every repair of a damaged file
    level, quiet.level = quiet.level, logging.ERROR
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            raise BadRecord("PDF is encrypted: decrypt it before ingesting it")
        pages = [page.extract_text() or "" for page in reader.pages]
        outline = _outline(reader)
    except BadRecord:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise BadRecord(f"PDF cannot be read: {type(e).__name__}: {e}".splitlines()[0]) from e
    finally:
        quiet.level = level
    if not any(page.strip() for page in pages):
        raise BadRecord(f"PDF has no text layer ({len(pages)} pages of images?): no OCR here")
    blocks: list[RawBlock] = []
    for number, text in enumerate(pages, start=1):
        for title, depth in outline.get(number, []):
            blocks.append(RawBlock("heading", title, level=min(depth, 6), page=number))
        for paragraph in text.replace("\r\n", "\n").split("\n\n"):
            if paragraph.strip():
                blocks.append(RawBlock("text", paragraph, page=number))
    return blocks


def _outline(reader: Any) -> dict[int, list[tuple[str, int]]]:
    """Page number -> [(title, depth)] of the outline entries that point to it."""
    out: dict[int, list[tuple[str, int]]] = {}

    def visit(items: list[Any], depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                visit(item, depth + 1)
                continue
            try:
                page = reader.get_destination_page_number(item) + 1
            except Exception:  # a dangling bookmark: skip it, the text is what counts
                continue
            out.setdefault(page, []).append((str(item.title), depth))

    try:
        visit(reader.outline, 1)
    except Exception as e:  # an unreadable outline: the pages still are
        log.debug("PDF outline unreadable: %s", e)
    return out
