"""PDF: the text layer page by page, pages kept for citations; what cannot be read is a
bad record with the reason."""

from __future__ import annotations

import base64

import pytest

from jobs.chunking.cleaning import clean
from jobs.chunking.stage import ChunkStage
from streamrag.config import ChunkingConfig
from streamrag.errors import BadRecord
from streamrag.models import resolve_model
from streamrag.records import DocumentEvent, Origin
from tests.pdfs import encrypted_pdf, pdf_with_text, pdf_without_text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_each_block_remembers_its_page():
    data = pdf_with_text(["Kafka keeps records.", "Compaction keeps the latest."])

    cleaned = clean(b64(data), "pdf")

    assert cleaned.text == "Kafka keeps records.\n\nCompaction keeps the latest."
    assert [b.page for b in cleaned.blocks] == [1, 2]


def test_the_outline_gives_headings_at_the_top_of_their_pages():
    data = pdf_with_text(["Records.", "Latest."], outline=[("Logs", 0), ("Compaction", 1)])

    cleaned = clean(b64(data), "pdf")

    assert cleaned.text == "# Logs\n\nRecords.\n\n# Compaction\n\nLatest."


def test_chunks_cite_their_page_and_section():
    pages = [" ".join(f"Page {p} sentence {i} about logs." for i in range(60)) for p in (1, 2)]
    data = pdf_with_text(pages, outline=[("Logs", 0), ("More logs", 1)])
    stage = ChunkStage.for_model(ChunkingConfig(), resolve_model("bundled"))
    event = DocumentEvent(
        doc_id="m.pdf",
        version=1,
        source="s",
        origin=Origin("t", 0, 0),
        text=b64(data),
        content_type="pdf",
    )

    spans = stage.spans(event)

    assert {s.page for s in spans} == {1, 2}
    assert all((s.page, s.heading_path) in {(1, "Logs"), (2, "More logs")} for s in spans)
    assert all(f"Page {s.page} " in s.text for s in spans)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (pdf_without_text(), "no text layer"),
        (encrypted_pdf(), "encrypted"),
        (b"%PDF-1.7\n1 0 obj broken", "cannot be read"),
        (b"plain bytes, not a PDF", "cannot be read"),
    ],
    ids=["scanned", "encrypted", "truncated", "not-a-pdf"],
)
def test_a_pdf_that_cannot_be_read_is_a_bad_record_with_the_reason(data, reason):
    with pytest.raises(BadRecord, match=reason):
        clean(b64(data), "pdf")


def test_data_that_is_not_base64_is_a_bad_record():
    with pytest.raises(BadRecord, match="base64"):
        clean("not base64 at all!", "pdf")
