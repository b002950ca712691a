"""`streamrag status` without services: how checks read and decide the exit code."""

from __future__ import annotations

import json

from streamrag.status import Check, Report, _duration, rest_urls, service_checks


def test_one_line_per_check_and_a_failure_fails_the_report():
    report = Report([Check("kafka", True, "up"), Check("lag", False, "documents: 12 behind")])
    assert report.lines() == [
        "ok    kafka         up",
        "FAIL  lag           documents: 12 behind",
    ]
    assert not report.ok and Report([Check("kafka", True, "up")]).ok
    assert json.loads(report.to_json())["checks"][1] == {
        "name": "lag",
        "ok": False,
        "summary": "documents: 12 behind",
        "data": {},
    }


def test_a_service_that_is_down_says_how_to_start_it():
    up, down = service_checks(
        [("kafka", True, "127.0.0.1:19092", 42), ("milvus", False, "127.0.0.1:19530", None)]
    )
    assert up.ok and up.summary == "up at 127.0.0.1:19092, pid 42"
    assert not down.ok and "`streamrag stack up`" in down.summary


def test_the_job_is_looked_for_in_given_urls_first_then_the_local_ones():
    urls = rest_urls(["http://flink:8081"])
    assert urls[:2] == ["http://flink:8081", "http://127.0.0.1:18081"]
    assert urls[2] == "http://127.0.0.1:18181" and len(urls) == 12


def test_durations_read_like_a_person_would_say_them():
    assert [_duration(s) for s in (-3, 59, 119, 120, 7199, 7260)] == [
        "0 s",
        "59 s",
        "119 s",
        "2 min",
        "119 min",
        "2 h 1 min",
    ]
