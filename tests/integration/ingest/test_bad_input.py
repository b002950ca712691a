"""Bad input: every case is indexed correctly or lands in the dead letters with a
reason, and the job keeps running (the shared job, on both stores). An older version
that reaches a job without state is tests/flink's (the store's version guard)."""

from __future__ import annotations

import json

from tests.integration.live import LiveJob

GOOD = "Streaming pipelines keep a search index fresh while the source keeps changing. "


def value(**fields: object) -> str:
    return json.dumps(fields)


def test_each_bad_input_is_indexed_or_dead_lettered_with_a_reason(live: LiveJob):
    ns = live.namespace("bad-input")
    nested = "<div>" * 3000 + "<p>Deeply nested paragraph about Kafka.</p>" + "</div>" * 3000
    over = live.settings.chunking.max_document_chars + 100_000  # 2,100,000 by default
    rejected = {
        "not-json": ("{oops", "not valid JSON"),
        "array": ("[1, 2]", "must be a JSON object"),
        "no-id": (value(text=GOOD), "'id'"),
        "empty-id": (value(id="  ", text=GOOD), "'id'"),
        "number-id": (value(id=7, text=GOOD), "'id'"),
        "text-type": (value(id=ns("text-type"), text=12), "'text' must be str"),
        "version-type": (
            value(id=ns("version-type"), text=GOOD, version="3"),
            "'version' must be int",
        ),
        "blank": (value(id=ns("blank"), text=" \n\t "), "empty or whitespace"),
        "bad-utf8": (
            b'{"id": "' + ns("bad-utf8").encode() + b'", "text": "caf\xe9"}',
            "not valid UTF-8",
        ),
        "ten-mb": (value(id=ns("ten-mb"), text="word " * 2_000_000), "max_document_chars"),
        "huge-word": (value(id=ns("huge-word"), text="x" * over), "max_document_chars"),
        # One 20,000-character word: the model reads every chunk of it as [UNK].
        "long-word": (value(id=ns("long-word"), text="y" * 20_000), "no indexable text"),
    }
    accepted = {
        "controls": "NUL\x00 and \x07 bell " + GOOD,
        "scripts": "Grüße 😀 مرحبا بالعالم שלום 你好 " + GOOD,
        "versioned": "Version ten text. " + GOOD,
    }
    live.produce(
        [(ns(k), v) for k, (v, _) in rejected.items()]
        + [(ns(k), value(id=ns(k), text=text)) for k, text in accepted.items() if k != "versioned"]
        + [
            (ns("nested"), value(id=ns("nested"), text=nested, content_type="html")),
            (ns("extra"), value(id=ns("extra"), text=GOOD, unknown_field={"x": 1})),
            (ns("versioned"), value(id=ns("versioned"), text=accepted["versioned"], version=10)),
            (ns("versioned"), value(id=ns("versioned"), text="Older five. " + GOOD, version=5)),
        ]
    )
    live.settle()

    letters = {d["key"]: d for d in ns.dead_letters()}
    assert set(letters) == {ns(k) for k in rejected}
    for key, (_, reason) in rejected.items():
        assert reason in letters[ns(key)]["reason"], (key, letters[ns(key)]["reason"])
        assert letters[ns(key)]["origin"]["topic"] == live.settings.kafka.documents_topic

    store = live.store()
    try:
        for doc_id in [*accepted, "nested", "extra"]:
            assert store.doc_chunk_ids(ns(doc_id)), f"{doc_id} was not indexed"
        (controls,) = store.get(store.doc_chunk_ids(ns("controls")))
        assert "\x00" not in controls.text and "\x07" not in controls.text
        (scripts,) = store.get(store.doc_chunk_ids(ns("scripts")))
        assert "😀" in scripts.text and "مرحبا" in scripts.text and "你好" in scripts.text
        assert "Deeply nested paragraph" in store.get(store.doc_chunk_ids(ns("nested")))[0].text
        (versioned,) = store.get(store.doc_chunk_ids(ns("versioned")))
        assert versioned.text.startswith("Version ten") and versioned.version == 10
    finally:
        store.close()
