"""The summary that `streamrag run --bounded` ends with (streamrag.runstats)."""

from __future__ import annotations

from collections import Counter

from streamrag.produce import Produced
from streamrag.runstats import Summary, reason_kind


def test_the_summary_says_what_the_run_did():
    summary = Summary(
        records_read=12,
        wall_s=31.26,
        documents=11,
        embedded=90,
        reused=4,
        deleted=2,
        dead_letters=Counter({"normalize: value is not valid JSON": 1}),
    )
    assert summary.lines() == [
        "read 12 source records in 31.3 s: 11 documents changed, 90 chunks embedded, 4 reused,"
        " 2 documents deleted, 1 dead letters",
        "  dead letters: 1 x normalize: value is not valid JSON",
    ]


def test_reasons_are_grouped_without_their_particulars():
    assert reason_kind("record too large (20000000 bytes > 16777216)") == "record too large"
    assert reason_kind("x" * 300) == "x" * 100


def test_produce_says_what_it_skipped():
    done = Produced("docs", sent=3, skipped=Counter({"empty": 1, "not .md/.pdf": 2}))
    assert done.line() == "produced 3 documents to docs; skipped 3 files (1 empty, 2 not .md/.pdf)"
    assert Produced("docs", sent=1).line() == "produced 1 documents to docs; skipped 0 files"
