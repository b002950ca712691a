"""Real documents through Kafka and PyFlink, on both stores: a generated HTML page (its
navigation, table of contents and code listing) and a PDF; the query output cites the
section and the page (the library's Retriever and `streamrag query`, each restricted to the
test's own document)."""

from __future__ import annotations

import base64
import json
import subprocess

from streamrag.config import PROJECT_ROOT
from streamrag.retrieval import Retriever
from streamrag.stores.base import Filters
from tests.integration.conftest import CLI
from tests.integration.live import LiveJob, Namespace
from tests.pdfs import pdf_with_text

PAGE = """<!DOCTYPE html><html><head><title>Retention</title></head><body>
<div class="navheader"><a accesskey="p" href="a.html">Prev</a> <a href="i.html">Up</a>
<a accesskey="n" href="c.html">Next</a></div>
<div class="document"><div class="body" role="main">
<section id="storage"><h1>Storage<a class="headerlink" href="#storage">¶</a></h1>
<nav class="contents local"><ul><li><a href="#ret">Retention windows</a></li></ul></nav>
<p>Brokers keep records in segment files on disk. A partition is a directory of such
files, written one at a time; the active segment takes new records, and closed segments
are only read. Index files beside each segment map offsets and times to positions.</p>
<section id="ret"><h2>Retention windows</h2>
<p>Each topic sets how long the brokers keep a closed segment: seven days unless
retention.ms says otherwise. Expired segments are deleted by a background thread that
wakes up every five minutes.</p>
<pre>
# retention for one topic
kafka-configs --alter --entity-type topics \\
    --add-config retention.ms=86400000
</pre></section></section></div></div>
<div class="navfooter">Prev | Up | Home | Next</div></body></html>"""

MANUAL = [
    "Installing the agent takes two commands on every host of the cluster. The first\n"
    "downloads the package from the internal mirror, the second registers the host with\n"
    "the control plane and starts the service under its own system user.",
    "The agent rotates its log files at midnight and keeps fourteen of them. Older files\n"
    "are compressed and removed; the current file is never truncated while it is open,\n"
    "so a tail that follows it never misses a line across the rotation.",
]


def query(live: LiveJob, text: str, doc_id: str) -> str:
    done = subprocess.run(
        [CLI, "query", text, "-k", "1", "--doc-id", doc_id],
        env=live.pipeline.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_html_and_pdf_are_indexed_with_their_sections_and_pages(live: LiveJob):
    ns: Namespace = live.namespace("documents")
    page, manual = ns("guide/retention.html"), ns("manual.pdf")
    pdf = pdf_with_text(MANUAL, outline=[("Installation", 0), ("Log files", 1)])
    live.produce([
        (page, json.dumps({"id": page, "text": PAGE, "content_type": "html"})),
        (manual, json.dumps({"id": manual, "content_type": "pdf",
                             "data": base64.b64encode(pdf).decode("ascii")})),
    ])  # fmt: skip
    live.settle()

    assert ns.dead_letters() == []
    chunks = ns.chunks()
    html = [c for c in chunks if c.doc_id == page]
    assert html and not any("Prev" in c.text or "¶" in c.text for c in html)
    assert any("    --add-config retention.ms=86400000" in c.text for c in html)  # indented
    assert {c.page for c in chunks if c.doc_id == manual} == {1, 2}

    retriever = Retriever(live.settings)
    try:
        (found,) = retriever.search(
            "How long do brokers keep closed segments?", 1, Filters(fields={"doc_id": page})
        )
    finally:
        retriever.close()
    assert found.chunk.heading_path == "Storage > Retention windows"
    hit = query(live, "When are the agent's log files rotated?", manual)
    assert f"doc={manual}" in hit and "page 2" in hit and "section: Log files" in hit
