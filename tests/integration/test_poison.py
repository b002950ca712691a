"""No single record stops the pipeline (DESIGN.md invariant 5), on both stores.

One poison record of every class seen to stop the job (values no store column holds, text
no coder carries, derived records too large for their topic, pathological nesting, text
the model cannot read), and more from every declared limit, produced between valid
documents and between versions of valid documents. The job runs with Flink's restarts
allowed, and must not need a single one: every valid document is indexed exactly as a
clean run gives, every poison record is in the dead letters with its stage and the limit
it broke, and versions never go backwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.chunking.planner import chunk_id
from jobs.chunking.stage import ChunkStage
from streamrag.models import resolve_model
from streamrag.records import DocumentEvent, Origin
from tests.integration.conftest import make_pipeline

PARAGRAPH = (
    "Log compaction keeps the latest record of every key, so a topic can serve as "
    "the source of truth for a table that changes. "
)


def good(doc_id: str, topic: str, version: int = 1, **extra: object) -> dict:
    text = f"# {topic}\n\n" + "\n\n".join(f"{topic} part {i}. {PARAGRAPH * 3}" for i in range(3))
    return {"id": doc_id, "text": text, "content_type": "markdown", "version": version, **extra}


def raw(doc_id: str, fields: str) -> tuple[str, bytes]:
    """A record whose JSON holds what json.dumps would not write (escapes, NaN)."""
    return doc_id, f'{{"id": "{doc_id}", "text": "Plain text.", {fields}}}'.encode()


def as_record(doc: dict) -> tuple[str, bytes]:
    return doc["id"], json.dumps(doc).encode()


# (kafka key, value, stage, what the reason names)
POISON = [
    (
        "long-id",
        json.dumps({"id": "x" * 1500, "text": "t"}).encode(),
        "normalize",
        "doc_id_bytes=1024",
    ),
    (
        "btree-id",
        json.dumps({"id": "y" * 10_000, "text": "t"}).encode(),
        "normalize",
        "doc_id_bytes=1024",
    ),
    as_record(good("long-title", "titles", title="T" * 3000)) + ("normalize", "title_bytes"),
    as_record(good("big-version", "versions", version=2**64)) + ("normalize", "version_max"),
    (
        "sur-text",
        b'{"id": "sur-text", "text": "lone \\ud800 surrogate"}',
        "normalize",
        "valid_unicode",
    ),
    ("sur-id", b'{"id": "sur\\udfff-id", "text": "t"}', "normalize", "valid_unicode"),
    raw("sur-meta", '"metadata": {"lang": "\\ud83d"}') + ("normalize", "valid_unicode"),
    ("nul-id", json.dumps({"id": "nul\x00id", "text": "t"}).encode(), "normalize", "valid_unicode"),
    as_record(good("nul-meta", "nul", metadata={"k": "a\x00b"})) + ("normalize", "valid_unicode"),
    raw("nan-meta", '"metadata": {"score": NaN}') + ("normalize", "finite_numbers"),
    raw("inf-meta", '"metadata": {"score": -Infinity}') + ("normalize", "finite_numbers"),
    as_record(good("big-meta", "meta", metadata={"blob": "m" * 2_000_000}))
    + ("normalize", "metadata_bytes"),
    as_record(good("int-meta", "ints", metadata={"n": 2**70})) + ("normalize", "metadata_int64"),
    as_record(good("deep-meta", "deep", metadata={"d": json.loads("[" * 40 + "]" * 40)}))
    + ("normalize", "metadata_depth"),
    raw("deep-json", '"metadata": {"d": ' + "[" * 100_000 + "]" * 100_000 + "}")
    + ("normalize", "json_nesting"),
    as_record(
        {
            "id": "deep-md",
            "content_type": "markdown",
            "text": "\n".join(">" * d + f" level {d}" for d in range(1, 90)),
        }
    )
    + ("chunk", "markdown_nesting"),
    as_record(
        {
            "id": "deep-html",
            "content_type": "html",
            "text": "<div>" * 10_100 + "deep" + "</div>" * 10_100,
        }
    )
    + ("chunk", "html_depth"),
    as_record({"id": "one-word", "text": "x" * 200_000}) + ("chunk", "no indexable text"),
]

ACCEPTED = [
    good("plain-1", "Compaction"),
    good("plain-2", "Checkpoints", metadata={"lang": "en", "n": 2**63 - 1}),
    good("nul-title", "Titles", title="Intro\x00duction"),
    {"id": "nul-text", "text": "Before\x00after. " + PARAGRAPH},
    {
        "id": "cdata",
        "content_type": "html",
        "text": f"<p>{PARAGRAPH}</p><![CDATA[hidden cdata words]]><p>Closing words.</p>",
    },
    {
        "id": "quotes-20",
        "content_type": "markdown",
        "text": "\n".join(">" * d + f" quoted level {d}" for d in range(1, 21)),
    },
    {
        "id": "lists-10",
        "content_type": "markdown",
        "text": "\n".join("  " * d + f"- list item {d}" for d in range(10)),
    },
    {"id": "some-junk", "text": PARAGRAPH * 4 + "\n\n" + "z" * 4000 + "\n\n" + PARAGRAPH * 4},
]


@pytest.mark.parametrize("store_kind", ["milvus", "pgvector"])
def test_poison_records_go_to_dead_letters_and_nothing_valid_is_lost(
    stack, store_kind, tmp_path: Path
):
    p = make_pipeline(stack, store_kind)
    p.env["FLINK_LOG_DIR"] = str(tmp_path)  # to read the job's own log afterwards
    ordered_v1, ordered_v3 = good("ordered", "Ordering"), good("ordered", "Ordering v3", 3)
    held_v1 = good("held", "Holding")
    records = [as_record(ordered_v1), as_record(held_v1)]
    for i, (key, value, _, _) in enumerate(POISON):
        records += [(key, value), as_record(ACCEPTED[i % len(ACCEPTED)])]
    records += [
        # A poison version between good ones, and a poison newest version.
        raw("ordered", '"version": 2, "metadata": {"x": NaN}'),
        as_record(ordered_v3),
        as_record(good("held", "Holding v2", 2, title="H" * 5000)),
    ]
    p.produce(records)
    p.run()

    log = "\n".join(f.read_text() for f in tmp_path.glob("*.log"))
    assert "switched from state RUNNING to FINISHED" in log
    restarts = [ln for ln in log.splitlines() if "RESTARTING" in ln]
    assert restarts == [], f"the job restarted: {restarts[0]}"

    letters = [json.loads(m.value) for m in p.topic(p.settings.kafka.dead_letter_topic)]
    by_key = {d["key"]: d for d in letters}
    for key, _, stage, reason in POISON:
        assert key in by_key, f"{key} is not in the dead letters"
        assert by_key[key]["stage"] == stage, (key, by_key[key])
        assert reason in by_key[key]["reason"], (key, by_key[key]["reason"])
        assert by_key[key]["origin"]["topic"] == p.settings.kafka.documents_topic
    ordered = [d for d in letters if d["key"] in ("ordered", "held")]
    assert sorted(d["key"] for d in ordered) == ["held", "ordered"]
    assert len(letters) == len(POISON) + 2

    valid = [ordered_v3, held_v1, *ACCEPTED]
    assert index_of(p) == expected_index(p.settings, valid)
    store = p.store()
    try:
        (titled,) = store.get(store.doc_chunk_ids("nul-title")[:1])
        assert titled.title == "Intro duction"
        texts = {c.doc_id: c.text for c in store.get(store.all_ids())}
        assert "hidden cdata" not in texts["cdata"] and "\x00" not in texts["nul-text"]
        assert "quoted level 20" in " ".join(
            c.text for c in store.get(store.doc_chunk_ids("quotes-20"))
        )
    finally:
        store.close()


def expected_index(settings, docs: list[dict]) -> dict[str, tuple]:
    stage = ChunkStage.for_model(settings.chunking, resolve_model(settings.embedding.model))
    out = {}
    for d in docs:
        event = DocumentEvent(
            doc_id=d["id"],
            version=d.get("version", 0),
            source="t",
            origin=Origin("t", 0, 0),
            text=d["text"],
            content_type=d.get("content_type", "text"),
        )
        for i, span in enumerate(stage.spans(event)):
            out[chunk_id(d["id"], i)] = (d["id"], d.get("version"), i, span.text)
    return out


def index_of(p) -> dict[str, tuple]:
    """The index as (doc id, version, position, text) per chunk; a version is None where
    the record had none (the record timestamp became the version)."""
    versioned = {d["id"] for d in [*ACCEPTED] if "version" in d} | {"ordered", "held"}
    store = p.store()
    try:
        return {
            c.chunk_id: (c.doc_id, c.version if c.doc_id in versioned else None, c.position, c.text)
            for c in store.get(store.all_ids())
        }
    finally:
        store.close()
