"""Dead letters you can act on, on the real stack: documents dead-lettered under a strict
limit are re-driven after the limit is raised and get indexed; re-driving again sends
nothing, and a record sent twice anyway leaves the index as it was; a record superseded
before the re-drive is skipped and the newer version stays; a record that still fails is
dead-lettered again with its new reason. The CLI runs as the real `streamrag` command."""

from __future__ import annotations

import json
import subprocess
import time

from streamrag import deadletters as dl
from streamrag.config import PROJECT_ROOT
from streamrag.kafka import end_offsets, pending_records
from streamrag.stores.base import VectorStore
from tests.integration.conftest import CLI, Pipeline, make_pipeline

STRICT = {"STREAMRAG_CHUNKING__MAX_DOCUMENT_CHARS": "2000"}
LIMIT = "max_document_chars=2000"
PARAGRAPH = (
    "A dead letter keeps the reason a stage could not use a record, and where the whole "
    "record stays in its source topic, so that it can be sent again after a fix. "
)
GUIDE = "# On call\n\n" + "\n\n".join(f"Step {i}. {PARAGRAPH * 2}" for i in range(10))
DEEP = "\n".join(">" * d + f" level {d}" for d in range(1, 90))  # fails chunking when allowed
DAY_MS = 86_400_000


def cli(p: Pipeline, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [CLI, "dead-letters", *args],
        env={**p.env, **(env or {})},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def indexed(store: VectorStore, doc_id: str) -> list[tuple[str, int, str, str]]:
    chunks = store.get(store.doc_chunk_ids(doc_id))
    return sorted((c.chunk_id, c.version, c.content_hash, c.text) for c in chunks)


def test_dead_letters_are_re_driven_after_a_fix_once_and_never_over_newer_versions(stack):
    p = make_pipeline(stack, "milvus")
    docs = p.settings.kafka.documents_topic
    day_ago = int(time.time() * 1000) - DAY_MS
    # Without a version, a document's version is its record's time: a day ago here.
    p.produce(
        [("guide", json.dumps({"id": "guide", "text": GUIDE, "content_type": "markdown"}))], day_ago
    )
    p.produce_docs(
        [
            {"id": "deep", "text": DEEP, "content_type": "markdown"},
            {"id": "moved", "text": GUIDE, "version": 1},
            {"id": "moved", "text": "The newer, shorter version. " + PARAGRAPH, "version": 2},
            {"id": "short", "text": PARAGRAPH},
        ]
    )
    Pipeline({**p.env, **STRICT}, p.settings).run()
    # A finished bounded run leaves its group at the end of what it read: the next run
    # starts there (not from an older commit, which would read records twice).
    assert pending_records(p.settings, docs, p.settings.kafka.group_id) == 0

    store = p.store()
    assert indexed(store, "short") and not indexed(store, "guide") and not indexed(store, "deep")
    (newer,) = store.get(store.doc_chunk_ids("moved"))
    assert newer.version == 2

    listed = cli(p, "list", "--since", "10m")  # dead-lettered now, not when produced
    assert listed.startswith("TIME ") and listed.splitlines()[0].endswith("REASON")
    assert f"3 dead letters in {p.settings.kafka.dead_letter_topic}, by reason:" in listed
    counted = f"3  chunk     BadRecord        document has N characters, more than chunking.{LIMIT}"
    assert counted in listed
    by_key = {
        json.loads(line)["key"]: json.loads(line) for line in cli(p, "list", "--json").splitlines()
    }
    assert set(by_key) == {"guide", "deep", "moved"}
    shown = cli(p, "show", by_key["moved"]["at"])
    assert "redrive      would skip: superseded by" in shown and LIMIT in shown

    # The fix: the limit raised (the default). A dry run sends nothing.
    before = end_offsets(p.settings, docs)
    assert "would send 2, skip 1; nothing sent" in cli(
        p, "redrive", "-r", "MAX_DOCUMENT", "--dry-run"
    )
    assert end_offsets(p.settings, docs) == before
    out = cli(p, "redrive", "--reason", "max_document_chars", "--since", "1h")
    assert "sent 2, skipped 1: the pipeline reads" in out, out
    assert "a newer record of its key" in out

    copies = [m for m in p.topic(docs) if m.offset >= before[m.partition]]
    assert len(copies) == 2
    originals = {(m.partition, m.offset): m for m in p.topic(docs)}
    for copy in copies:
        origin = dl.redrive_origin(copy)
        assert origin is not None and origin.partition == copy.partition
        original = originals[(origin.partition, origin.offset)]
        assert (copy.key, copy.value, copy.timestamp_ms) == (
            original.key,
            original.value,
            original.timestamp_ms,
        )
        assert dict(copy.headers)["streamrag-redrive"].startswith(
            p.settings.kafka.dead_letter_topic.encode()
        )

    p.run()
    guide = indexed(store, "guide")
    assert len(guide) > 3 and {version for _, version, _, _ in guide} == {day_ago}
    assert [c.version for c in store.get(store.doc_chunk_ids("moved"))] == [2]
    # In the order of their origins (the copy sits after the original in its partition);
    # the dead-letter topic's own order spreads them over its partitions.
    again = sorted(
        (d for d in p.dead_letters() if d["key"] == "deep"), key=lambda d: d["origin"]["offset"]
    )
    assert [d["stage"] for d in again] == ["chunk", "chunk"]
    assert LIMIT in again[0]["reason"] and "markdown_nesting" in again[1]["reason"]
    assert again[1]["origin"]["offset"] >= before[again[1]["origin"]["partition"]]

    # Re-driving again: the originals were re-driven, the new failure is another reason.
    out = cli(p, "redrive", "--reason", "max_document_chars")
    assert out.count("already re-driven as") == 2 and "nothing sent, skipped 3" in out
    # Sent twice anyway (two people re-driving at once): the index stays as it was.
    (letter,) = [e for e in dl.read_entries(p.settings)[0] if e.letter.key == "guide"]
    assert letter.letter.origin is not None
    original = originals[(letter.letter.origin.partition, letter.letter.origin.offset)]
    assert dl.send_records(p.settings, [dl.Decision(letter, record=original)]) == 1
    p.run()
    assert indexed(store, "guide") == guide
    assert len(p.dead_letters()) == 4
    store.drop()
    store.close()
