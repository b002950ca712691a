"""Bad input: every case is indexed correctly or lands in the dead letters with a
reason, and the job keeps running (one job run for all cases)."""

from __future__ import annotations

import json

from tests.integration.conftest import make_pipeline

GOOD = "Streaming pipelines keep a search index fresh while the source keeps changing. "


def value(**fields: object) -> str:
    return json.dumps(fields)


def test_each_bad_input_is_indexed_or_dead_lettered_with_a_reason(stack, monkeypatch):
    monkeypatch.setenv("STREAMRAG_CHUNKING__MAX_DOCUMENT_CHARS", "500000")
    p = make_pipeline(stack, "milvus")
    nested = "<div>" * 3000 + "<p>Deeply nested paragraph about Kafka.</p>" + "</div>" * 3000
    rejected = {
        "not-json": ("not-json", "{oops", "not valid JSON"),
        "array": ("array", "[1, 2]", "must be a JSON object"),
        "no-id": ("no-id", value(text=GOOD), "'id'"),
        "empty-id": ("empty-id", value(id="  ", text=GOOD), "'id'"),
        "number-id": ("number-id", value(id=7, text=GOOD), "'id'"),
        "text-type": ("text-type", value(id="text-type", text=12), "'text' must be str"),
        "version-type": (
            "version-type",
            value(id="version-type", text=GOOD, version="3"),
            "'version' must be int",
        ),
        "blank": ("blank", value(id="blank", text=" \n\t "), "empty or whitespace"),
        "bad-utf8": ("bad-utf8", b'{"id": "bad-utf8", "text": "caf\xe9"}', "not valid UTF-8"),
        "ten-mb": ("ten-mb", value(id="ten-mb", text="word " * 2_000_000), "max_document_chars"),
        "mb-word": ("mb-word", value(id="mb-word", text="x" * 1_000_000), "max_document_chars"),
        # One 20,000-character word: the model reads every chunk of it as [UNK].
        "long-word": ("long-word", value(id="long-word", text="y" * 20_000), "no indexable text"),
    }
    accepted = {
        "controls": value(id="controls", text="NUL\x00 and \x07 bell " + GOOD),
        "nested": value(id="nested", text=nested, content_type="html"),
        "scripts": value(id="scripts", text="Grüße 😀 مرحبا بالعالم שלום 你好 " + GOOD),
        "extra": value(id="extra", text=GOOD, unknown_field={"x": 1}),
        "versioned": value(id="versioned", text="Version ten text. " + GOOD, version=10),
    }
    p.produce(
        [(k, v) for k, v, _ in rejected.values()]
        + list(accepted.items())
        + [("versioned", value(id="versioned", text="Older five. " + GOOD, version=5))]
    )
    p.run()

    letters = {d["key"]: d for d in p.dead_letters()}
    assert set(letters) == set(rejected)
    for key, (_, _, reason) in rejected.items():
        assert reason in letters[key]["reason"], (key, letters[key]["reason"])
        assert letters[key]["origin"]["topic"] == p.settings.kafka.documents_topic

    store = p.store()
    for doc_id in accepted:
        assert store.doc_chunk_ids(doc_id), f"{doc_id} was not indexed"
    (controls,) = store.get(store.doc_chunk_ids("controls"))
    assert "\x00" not in controls.text and "\x07" not in controls.text
    (scripts,) = store.get(store.doc_chunk_ids("scripts"))
    assert "😀" in scripts.text and "مرحبا" in scripts.text and "你好" in scripts.text
    assert "Deeply nested paragraph" in store.get(store.doc_chunk_ids("nested"))[0].text

    # An older version arriving later, in a job without the first job's state: ignored.
    p.produce([("versioned", value(id="versioned", text="Older three. " + GOOD, version=3))])
    p.run()
    (versioned,) = store.get(store.doc_chunk_ids("versioned"))
    assert versioned.text.startswith("Version ten") and versioned.version == 10
    store.drop()
    store.close()
