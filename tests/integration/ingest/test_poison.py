"""No single record stops the pipeline (DESIGN.md invariant 5), on both stores.

One poison record of every class seen to stop the job (values no store column holds, text
no coder carries, derived records too large for their topic, pathological nesting, text
the model cannot read), and more from every declared limit, produced between valid
documents and between versions of valid documents. The shared job runs with Flink's
restarts allowed, and must not need a single one: every valid document is indexed exactly as a
clean run gives, every poison record is in the dead letters with its stage and the limit
it broke, and versions never go backwards.
"""

from __future__ import annotations

import json

from jobs.chunking.planner import chunk_id
from jobs.chunking.stage import ChunkStage
from streamrag.models import resolve_model
from streamrag.records import DocumentEvent, Origin
from tests.integration.live import LiveJob, Namespace

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


def poison(ns: Namespace) -> list[tuple[str, bytes, str, str]]:
    """(kafka key, value, stage, what the reason names)"""
    return [
        (ns("long-id"), json.dumps({"id": "x" * 1500, "text": "t"}).encode(), "normalize",
         "doc_id_bytes=1024"),
        (ns("btree-id"), json.dumps({"id": "y" * 10_000, "text": "t"}).encode(), "normalize",
         "doc_id_bytes=1024"),
        as_record(good(ns("long-title"), "titles", title="T" * 3000))
        + ("normalize", "title_bytes"),
        as_record(good(ns("big-version"), "versions", version=2**64))
        + ("normalize", "version_max"),
        (ns("sur-text"), b'{"id": "' + ns("sur-text").encode() + b'", "text": "lone \\ud800"}',
         "normalize", "valid_unicode"),
        (ns("sur-id"), b'{"id": "sur\\udfff-id", "text": "t"}', "normalize", "valid_unicode"),
        raw(ns("sur-meta"), '"metadata": {"lang": "\\ud83d"}') + ("normalize", "valid_unicode"),
        (ns("nul-id"), json.dumps({"id": "nul\x00id", "text": "t"}).encode(), "normalize",
         "valid_unicode"),
        as_record(good(ns("nul-meta"), "nul", metadata={"k": "a\x00b"}))
        + ("normalize", "valid_unicode"),
        raw(ns("nan-meta"), '"metadata": {"score": NaN}') + ("normalize", "finite_numbers"),
        raw(ns("inf-meta"), '"metadata": {"score": -Infinity}') + ("normalize", "finite_numbers"),
        as_record(good(ns("big-meta"), "meta", metadata={"blob": "m" * 2_000_000}))
        + ("normalize", "metadata_bytes"),
        as_record(good(ns("int-meta"), "ints", metadata={"n": 2**70}))
        + ("normalize", "metadata_int64"),
        as_record(good(ns("deep-meta"), "deep", metadata={"d": json.loads("[" * 40 + "]" * 40)}))
        + ("normalize", "metadata_depth"),
        raw(ns("deep-json"), '"metadata": {"d": ' + "[" * 100_000 + "]" * 100_000 + "}")
        + ("normalize", "json_nesting"),
        as_record(
            {
                "id": ns("deep-md"),
                "content_type": "markdown",
                "text": "\n".join(">" * d + f" level {d}" for d in range(1, 90)),
            }
        )
        + ("chunk", "markdown_nesting"),
        as_record(
            {
                "id": ns("deep-html"),
                "content_type": "html",
                "text": "<div>" * 10_100 + "deep" + "</div>" * 10_100,
            }
        )
        + ("chunk", "html_depth"),
        as_record({"id": ns("one-word"), "text": "x" * 200_000}) + ("chunk", "no indexable text"),
    ]  # fmt: skip


def accepted(ns: Namespace) -> list[dict]:
    return [
        good(ns("plain-1"), "Compaction"),
        good(ns("plain-2"), "Checkpoints", metadata={"lang": "en", "n": 2**63 - 1}),
        good(ns("nul-title"), "Titles", title="Intro\x00duction"),
        {"id": ns("nul-text"), "text": "Before\x00after. " + PARAGRAPH},
        {
            "id": ns("cdata"),
            "content_type": "html",
            "text": f"<p>{PARAGRAPH}</p><![CDATA[hidden cdata words]]><p>Closing words.</p>",
        },
        {
            "id": ns("quotes-20"),
            "content_type": "markdown",
            "text": "\n".join(">" * d + f" quoted level {d}" for d in range(1, 21)),
        },
        {
            "id": ns("lists-10"),
            "content_type": "markdown",
            "text": "\n".join("  " * d + f"- list item {d}" for d in range(10)),
        },
        {
            "id": ns("some-junk"),
            "text": PARAGRAPH * 4 + "\n\n" + "z" * 4000 + "\n\n" + PARAGRAPH * 4,
        },
    ]


def test_poison_records_go_to_dead_letters_and_nothing_valid_is_lost(live: LiveJob):
    ns = live.namespace("poison")
    poisons, valid_docs = poison(ns), accepted(ns)
    ordered_v1, ordered_v3 = good(ns("ordered"), "Ordering"), good(ns("ordered"), "Ordering v3", 3)
    held_v1 = good(ns("held"), "Holding")
    records = [as_record(ordered_v1), as_record(held_v1)]
    for i, (key, value, _, _) in enumerate(poisons):
        records += [(key, value), as_record(valid_docs[i % len(valid_docs)])]
    records += [
        # A poison version between good ones, and a poison newest version.
        raw(ns("ordered"), '"version": 2, "metadata": {"x": NaN}'),
        as_record(ordered_v3),
        as_record(good(ns("held"), "Holding v2", 2, title="H" * 5000)),
    ]
    live.produce(records)
    live.settle()

    assert live.restarts() == 0, "the job restarted"
    letters = ns.dead_letters()
    by_key = {d["key"]: d for d in letters}
    for key, _, stage, reason in poisons:
        assert key in by_key, f"{key} is not in the dead letters"
        assert by_key[key]["stage"] == stage, (key, by_key[key])
        assert reason in by_key[key]["reason"], (key, by_key[key]["reason"])
        assert by_key[key]["origin"]["topic"] == live.settings.kafka.documents_topic
    ordered = [d for d in letters if d["key"] in (ns("ordered"), ns("held"))]
    assert sorted(d["key"] for d in ordered) == [ns("held"), ns("ordered")]
    assert len(letters) == len(poisons) + 2

    valid = [ordered_v3, held_v1, *valid_docs]
    versioned = {d["id"] for d in valid if "version" in d}
    assert index_of(ns, versioned) == expected_index(live.settings, valid)
    texts = {c.doc_id: c.text for c in ns.chunks()}
    titled = next(c for c in ns.chunks() if c.doc_id == ns("nul-title"))
    assert titled.title == "Intro duction"
    assert "hidden cdata" not in texts[ns("cdata")] and "\x00" not in texts[ns("nul-text")]
    quoted = " ".join(c.text for c in ns.chunks() if c.doc_id == ns("quotes-20"))
    assert "quoted level 20" in quoted


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


def index_of(ns: Namespace, versioned: set[str]) -> dict[str, tuple]:
    """The namespace's index as (doc id, version, position, text) per chunk; a version is
    None where the record had none (the record timestamp became the version)."""
    return {
        c.chunk_id: (c.doc_id, c.version if c.doc_id in versioned else None, c.position, c.text)
        for c in ns.chunks()
    }
