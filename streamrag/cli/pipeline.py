"""`streamrag config|topics|produce|run|query|migrate`: the pipeline's own commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamrag.cli.context import echo_settled, settings_of
from streamrag.config import dump_settings

app = typer.Typer()
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics of the pipeline.")
app.add_typer(topics_app, name="topics")


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective configuration (YAML)."""
    typer.echo(dump_settings(settings_of(ctx)), nl=False)


@topics_app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create the pipeline's topics (compacted; idempotent)."""
    from streamrag.kafka import ensure_topics

    created = ensure_topics(settings_of(ctx))
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")


TOPIC_NAMES = ("documents", "chunks", "embeddings", "dead-letters")


@topics_app.command("tail")
def topics_tail(
    ctx: typer.Context,
    topic: Annotated[
        str, typer.Argument(help=f"{' | '.join(TOPIC_NAMES)}, or any topic's own name.")
    ],
    count: Annotated[int, typer.Option("-n", min=1, help="Records per partition.")] = 5,
) -> None:
    """Print the last records of a topic, one JSON line each, with binary vectors decoded
    to numbers (the embeddings topic carries them as base64 float32)."""
    import json

    from streamrag.kafka import tail
    from streamrag.records import readable

    settings = settings_of(ctx)
    k = settings.kafka
    names = dict(
        zip(
            TOPIC_NAMES,
            (k.documents_topic, k.chunks_topic, k.embeddings_topic, k.dead_letter_topic),
            strict=True,
        )
    )
    name = names.get(topic, topic)
    for m in tail(settings, name, count):
        value = None if m.value is None else m.value.decode("utf-8", "replace")
        try:
            shown = None if value is None else json.loads(readable(value))
        except ValueError:
            shown = value
        key = None if m.key is None else m.key.decode("utf-8", "replace")
        line = {"partition": m.partition, "offset": m.offset, "key": key, "value": shown}
        typer.echo(json.dumps(line, ensure_ascii=False))


@app.command()
def produce(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Folder of .md/.txt/.html files.")],
    prefix: Annotated[str, typer.Option(help="Prefix for the document ids.")] = "",
) -> None:
    """Push a folder of documents to the documents topic (key = doc id)."""
    from streamrag.produce import produce_folder

    typer.echo(produce_folder(settings_of(ctx), folder, prefix).line())


@app.command()
def run(
    ctx: typer.Context,
    bounded: Annotated[
        bool, typer.Option(help="Stop at the end of the topics as of the start (demo, tests).")
    ] = False,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="Ignore (and delete) the local checkpoints: start from the committed "
            "offsets with empty state.",
        ),
    ] = False,
) -> None:
    """Run the ingest job with PyFlink local execution; --bounded ends with a summary.
    Checkpoints stay in the work directory: started again after a crash, the job resumes
    from the latest completed one, with its state."""
    from jobs.pipeline import build
    from streamrag.flink import INGEST_JOB
    from streamrag.local.checkpoints import prepare
    from streamrag.models import import_in_background, model_dimension, resolve_model
    from streamrag.runstats import mark, settle_offsets, summarize

    settings = settings_of(ctx)
    ref = resolve_model(settings.embedding.model)
    model_dimension(ref)  # installed? before any service
    marks = mark(settings) if bounded else None
    recovery = prepare(settings, bounded, from_scratch)
    if recovery.restore is not None:
        typer.echo(f"resuming from checkpoint {recovery.restore}", err=True)
    env = build(settings, bounded, recovery.options())
    # The Python workers run in this process: their imports overlap the JVM's start
    # (not the job's planning before it: Flink's planner failed with them in flight).
    import_in_background(ref)
    env.execute(INGEST_JOB)
    recovery.finished()  # returns only when a bounded run reached its end
    if marks is not None:
        if recovery.restore is None:
            echo_settled(settle_offsets(settings, marks))
        for line in summarize(settings, marks).lines():
            typer.echo(line)


@app.command()
def query(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many chunks.")] = 5,
    doc_id: Annotated[str | None, typer.Option(help="Only this document.")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source topic/table.")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="Metadata filter key=value.")] = None,
    hybrid: Annotated[
        bool, typer.Option("--hybrid", help="Fuse with lexical search (exact words, codes).")
    ] = False,
) -> None:
    """Search the index and print the top chunks with score, doc id and text span."""
    from streamrag.retrieval import Retriever, format_hit
    from streamrag.stores.base import Filters

    fields = {k_: v for k_, v in (("doc_id", doc_id), ("source", source)) if v is not None}
    # Checked before the model loads: a bad value fails at once, with one line.
    filters = Filters(fields, dict(_key_value(m) for m in meta or []))
    retriever = Retriever(settings_of(ctx))
    try:
        hits = retriever.search(text, k, filters, mode="hybrid" if hybrid else "dense")
    finally:
        retriever.close()
    if not hits:
        typer.echo("no results")
    for rank, hit in enumerate(hits, 1):
        typer.echo(format_hit(rank, hit))


@app.command()
def migrate(
    ctx: typer.Context,
    dsn: Annotated[
        str | None,
        typer.Option(
            help="libpq DSN of the source database, password from PGPASSWORD/PGPASSFILE "
            "(default: the local stack's)."
        ),
    ] = None,
) -> None:
    """Create the CDC source schema (sql/source/*.sql, idempotent)."""
    from streamrag.local.stack import postgres_dsn
    from streamrag.migrate import apply_migrations

    applied = apply_migrations(dsn or postgres_dsn(settings_of(ctx)))
    typer.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"--meta must be key=value, got {item!r}")
    return key, value
