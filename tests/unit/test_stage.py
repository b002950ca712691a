"""The chunk stage: clean, chunk, keep what is worth indexing, plan; ids of the rules."""

from __future__ import annotations

import pytest

from jobs.chunking.stage import ChunkStage, chunker_id
from streamrag.config import ChunkingConfig
from streamrag.errors import LimitExceeded
from streamrag.models import resolve_model
from streamrag.records import DocumentEvent, Origin, model_input

TEXT = "Compaction keeps the latest record of every key. " * 6


def stage(**config: object) -> ChunkStage:
    return ChunkStage.for_model(ChunkingConfig(**config), resolve_model("bundled"))


def event(text: str, **fields: object) -> DocumentEvent:
    return DocumentEvent(
        doc_id="d",
        version=1,
        source="s",
        origin=Origin("t", 0, 0),
        text=text,
        content_type="markdown",
        **fields,
    )


def test_front_matter_joins_the_metadata_and_the_record_wins_a_clash():
    md = f"---\ntitle: From the file\nlang: de\nteam: logs\n---\n# Retention\n\n{TEXT}"

    plan = stage().apply(None, event(md, metadata={"lang": "en"}))

    (chunk, _trim) = plan.records
    assert chunk.metadata == {"title": "From the file", "lang": "en", "team": "logs"}
    assert chunk.title == "From the file"


def test_front_matter_is_held_to_the_metadata_limits():
    md = f"---\nblob: {'x' * 70_000}\n---\n{TEXT}"

    with pytest.raises(LimitExceeded, match="metadata_bytes"):
        stage().apply(None, event(md))


def test_chunks_record_their_heading_path_and_the_rules_that_made_them():
    md = f"# Guide\n\n## Retention\n\n{TEXT}"
    s = stage()

    (chunk, _trim) = s.apply(None, event(md)).records

    assert chunk.heading_path == "Guide > Retention"
    assert chunk.chunker == s.chunker_id and len(s.chunker_id) == 12


def test_the_content_hash_is_of_what_the_model_is_given():
    md = f"# Guide\n\n## Retention\n\n{TEXT}"
    records = {
        mode: stage(embed_heading=mode).apply(None, event(md)).records[0]
        for mode in ("none", "section", "path")
    }

    assert len({r.text for r in records.values()}) == 1
    assert len({r.content_hash for r in records.values()}) == 3


def test_the_model_is_given_the_text_after_its_section_or_its_whole_path():
    path = "Guide > Retention"

    assert model_input("Body.", path, "none") == "Body."
    assert model_input("Body.", path, "section") == "Retention\n\nBody."
    assert model_input("Body.", path, "path") == "Guide > Retention\n\nBody."
    assert model_input("Body.", "", "path") == "Body."


def test_the_chunker_id_changes_with_every_setting_that_changes_chunks():
    base = chunker_id(ChunkingConfig(), 200)

    assert chunker_id(ChunkingConfig(), 200) == base
    assert chunker_id(ChunkingConfig(max_tokens=160), 160) != base
    assert chunker_id(ChunkingConfig(min_section_tokens=10), 200) != base
    assert chunker_id(ChunkingConfig(embed_heading="path"), 200) != base
    assert chunker_id(ChunkingConfig(max_document_chars=10), 200) == base  # which docs, not how
