"""Small PDFs for tests, written with pypdf: pages of text (with an outline), a page with
a drawing and no text, an encrypted file."""

from __future__ import annotations

import io
from collections.abc import Sequence

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject


def pdf_with_text(pages: Sequence[str], outline: Sequence[tuple[str, int]] = ()) -> bytes:
    """A PDF whose page i shows ``pages[i]`` (one text line a line, in Helvetica), and an
    outline entry (title, page index) for each of ``outline``."""
    writer = PdfWriter()
    font = writer._add_object(  # noqa: SLF001  (pypdf has no public way to add a font)
        DictionaryObject({
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        })
    )  # fmt: skip
    for text in pages:
        ops = ["BT", "/F1 11 Tf", "72 740 Td", "14 TL"]
        ops += [f"({_escape(line)}) Tj T*" for line in text.split("\n")]
        ops.append("ET")
        _page(writer, "\n".join(ops), DictionaryObject({NameObject("/F1"): font}))
    for title, index in outline:
        writer.add_outline_item(title=title, page_number=index)
    return _written(writer)


def pdf_without_text(pages: int = 2) -> bytes:
    """A PDF of pages with a drawing and no text layer (a scan, say)."""
    writer = PdfWriter()
    for _ in range(pages):
        _page(writer, "0 0 m 200 200 l S", DictionaryObject())
    return _written(writer)


def encrypted_pdf() -> bytes:
    writer = PdfWriter()
    _page(writer, "0 0 m 10 10 l S", DictionaryObject())
    writer.encrypt("secret")
    return _written(writer)


def _page(writer: PdfWriter, content: str, fonts: DictionaryObject) -> None:
    page = writer.add_blank_page(612, 792)
    stream = DecodedStreamObject()
    stream.set_data(content.encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(stream)  # noqa: SLF001
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})


def _written(writer: PdfWriter) -> bytes:
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
