"""`streamrag demo` (what `make demo` runs): the whole mission in three steps, one or two
lines each, on the local stack.

1. documents: produce samples/corpus, run the ingest job (bounded), ask a question;
2. change data capture: register the Debezium connector, run the ingest job streaming,
   insert / update / delete a row of kb.articles and time each change from its commit
   until a search shows it;
3. replay: rebuild the index from the embeddings topic into a new generation (no model
   calls), list the generations, and check that the answers are the same.

Every step checks what it shows; the first that does not hold stops the demo with one
line (a UserError) and a non-zero exit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import typer

from connect.registry import (
    DEFAULT_CONNECTOR_FILE,
    ConnectRegistry,
    connect_url,
    load_connector_file,
)
from jobs.replay.driver import rematerialize
from streamrag import generations as gens
from streamrag.cli.context import settings_of
from streamrag.config import PROJECT_ROOT, Settings
from streamrag.errors import UserError
from streamrag.kafka import ensure_topics
from streamrag.local.stack import postgres_dsn
from streamrag.migrate import apply_migrations
from streamrag.produce import produce_folder
from streamrag.retrieval import Retriever
from streamrag.stores.base import Filters, SearchHit

app = typer.Typer()
CLI = str(Path(sys.executable).with_name("streamrag"))
CORPUS = PROJECT_ROOT / "samples" / "corpus"
QUESTION = "How does Kafka keep only the latest value for each key?"
CDC_QUESTION = "How do I upgrade the ingest job without downtime?"
CDC_TITLE = "Upgrading the ingest job"
CDC_BODY = (
    "To upgrade the ingest job without downtime, stop it with a savepoint, start the new"
    " version from that savepoint, and watch its lag until it has caught up."
)
CDC_UPDATE = (
    " Keep the old version's jar until the new one has run for a day: that is the rollback."
)
T = TypeVar("T")


class DemoFailed(UserError):
    """A demo step that did not show what it should."""


def say(line: str) -> None:
    typer.echo(line)


@app.command()
def demo(ctx: typer.Context) -> None:
    """Show the mission end to end: documents, CDC, replay (the stack must be up)."""
    settings = settings_of(ctx)
    say("streamrag demo: documents and PostgreSQL changes -> Kafka -> PyFlink -> index; replay")
    started = time.monotonic()
    say("\n[1/3] Documents")
    ensure_topics(settings)
    say("  " + produce_folder(settings, CORPUS).line())
    for line in run_job(["run", "--bounded"]):
        if line.startswith("read "):  # the run's summary (runstats.Summary.lines)
            say("  ingest job (bounded): " + line)
        elif line.startswith("  dead letters: "):
            say("  " + line)
    retriever = Retriever(settings)
    try:
        before = answer(retriever, QUESTION)
        if not before or "compaction" not in before[0].chunk.doc_id:
            raise DemoFailed(f"the question found no chunk of the compaction document: {before}")
        show(QUESTION, before[:2])

        say("\n[2/3] Change data capture: PostgreSQL -> Debezium -> Kafka -> PyFlink")
        cdc(settings, retriever)

        say("\n[3/3] Replay: rebuild the index from the Kafka log")
        took = time.monotonic()
        generation = rematerialize(settings, progress=False)
        say(
            f"  rebuilt generation g{generation.number} from the embeddings topic in"
            f" {time.monotonic() - took:.1f} s (no model calls), verified it and swapped to it"
        )
        for g in gens.list_generations(settings):
            say(f"  {'*' if g.serving else ' '} g{g.number:<3} {g.name:<36} {g.model_id}")
        after = answer(retriever, QUESTION)
        same = [h.chunk.chunk_id for h in after] == [h.chunk.chunk_id for h in before]
        if not same:
            raise DemoFailed("the rebuilt generation answers the question differently")
        top = after[0]
        say(f"  same answer from g{generation.number}: {top.chunk.doc_id} (score {top.score:.2f})")
    finally:
        retriever.close()
    say(
        f'\nDone in {time.monotonic() - started:.0f} s. Next: README sections "Using it",'
        ' "Serving RAG applications" (streamrag serve, MCP) and "Operations";'
        " stop the stack with `make stack-down`."
    )


def cdc(settings: Settings, retriever: Retriever) -> None:
    dsn = postgres_dsn(settings)
    apply_migrations(dsn)
    name, config = load_connector_file(DEFAULT_CONNECTOR_FILE, settings)
    registry = ConnectRegistry(connect_url(settings))
    try:
        registry.apply(name, config)
        registry.wait_running(name, 90)
    finally:
        registry.close()
    tables = ", ".join(settings.cdc.tables)
    log = settings.stack.work_dir / "logs" / "demo-ingest.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        job = subprocess.Popen([CLI, "run"], stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            up = wait_until_streaming(conn, retriever, job)
            say(f"  connector {name} RUNNING ({tables})")
            say(f"  ingest job streaming, up in {up:.1f} s (log: {log})")
            row = conn.execute(
                "INSERT INTO kb.articles (tenant, title, body) VALUES ('demo', %s, %s)"
                " RETURNING id",
                [CDC_TITLE, CDC_BODY],
            ).fetchone()
            assert row is not None
            doc_id = f"kb.articles:{row[0]}"
            committed = time.monotonic()
            hit = wait_for(
                lambda: first(retriever, CDC_QUESTION, doc_id),
                300,
                "the inserted row in the index",
                job,
            )
            took = time.monotonic() - committed
            say(f"  INSERT row {row[0]} -> searchable {took:.1f} s after commit")
            show(CDC_QUESTION, [hit])
            # The job was starting up for the first change; time one more on a running job.
            conn.execute(
                "UPDATE kb.articles SET body = body || %s WHERE id = %s", [CDC_UPDATE, row[0]]
            )
            committed = time.monotonic()
            wait_for(
                lambda: (
                    (h := first(retriever, CDC_QUESTION, doc_id)) and "rollback" in h.chunk.text
                ),
                120,
                "the updated text in the index",
                job,
            )
            took = time.monotonic() - committed
            say(f"  UPDATE -> the new text is searchable {took:.1f} s after commit")
            conn.execute("DELETE FROM kb.articles WHERE id = %s", [row[0]])
            committed = time.monotonic()
            wait_for(
                lambda: first(retriever, CDC_QUESTION, doc_id) is None, 120, "the row gone", job
            )
            say(
                f"  DELETE -> gone from the index {time.monotonic() - committed:.1f} s after commit"
            )
    finally:
        job.terminate()
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            job.kill()


def wait_until_streaming(
    conn: psycopg.Connection[tuple[object, ...]], retriever: Retriever, job: subprocess.Popen[bytes]
) -> float:
    """Seconds until the streaming job indexes a probe row (a kb.faq row, deleted after):
    the changes timed next then measure a running job, not its start-up."""
    started = time.monotonic()
    conn.execute(
        "INSERT INTO kb.faq (tenant, slug, question, answer) VALUES ('demo', 'probe', %s, %s)"
        " ON CONFLICT (tenant, slug) DO UPDATE SET answer = EXCLUDED.answer",
        ["Is the demo's ingest job up?", f"Yes, since {time.time():.0f}."],
    )
    wait_for(
        lambda: first(retriever, "Is the demo's ingest job up?", "kb.faq:demo:probe"),
        300,
        "the ingest job to start",
        job,
    )
    conn.execute("DELETE FROM kb.faq WHERE tenant = 'demo' AND slug = 'probe'")
    return time.monotonic() - started


def run_job(args: list[str]) -> list[str]:
    done = subprocess.run([CLI, *args], capture_output=True, text=True, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoFailed(f"streamrag {' '.join(args)} failed: {last}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def answer(retriever: Retriever, question: str) -> list[SearchHit]:
    return retriever.search(question, 3)


def first(retriever: Retriever, question: str, doc_id: str) -> SearchHit | None:
    hits = retriever.search(question, 1, Filters(fields={"doc_id": doc_id}))
    return hits[0] if hits else None


def wait_for(
    check: Callable[[], T | None], timeout_s: float, what: str, job: subprocess.Popen[bytes]
) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if job.poll() is not None:
            raise DemoFailed(f"the ingest job exited ({job.returncode}) before {what}: see its log")
        time.sleep(0.1)
    raise DemoFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")


def show(question: str, hits: list[SearchHit]) -> None:
    say(f"  Q: {question}")
    for rank, hit in enumerate(hits, 1):
        c = hit.chunk
        where = f" > {c.heading_path}" if c.heading_path else ""
        text = " ".join(c.text.split())
        text = text if len(text) <= 110 else text[:109] + "…"
        say(f"   {rank}. {c.doc_id}{where} (score {hit.score:.2f}): {text}")
