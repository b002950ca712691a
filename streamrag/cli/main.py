"""The `streamrag` command: local stack, topics, produce, run jobs, query.

Every expected failure (bad arguments, bad config, a service that is down) ends with
one line on stderr and exit code 1 or 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from streamrag.config import ConfigError, Settings, dump_settings, load_settings

# typer vendors click; its exception classes hang off the public ones.
ClickException = typer.BadParameter.__mro__[2]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Streaming RAG ingestion: Kafka + PyFlink -> Milvus / pgvector.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics of the pipeline.")
app.add_typer(topics_app, name="topics")

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
_state: dict[str, Any] = {}


def settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = load_settings(_state.get("config_path"))
    return _state["settings"]


@app.callback()
def _root(config: ConfigOption = None, verbose: bool = False) -> None:
    _state["config_path"] = config
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command("config")
def show_config() -> None:
    """Print the effective configuration (YAML)."""
    typer.echo(dump_settings(settings()), nl=False)


@topics_app.command("create")
def topics_create() -> None:
    """Create the pipeline's topics (compacted; idempotent)."""
    from streamrag.kafka import ensure_topics

    created = ensure_topics(settings())
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")


@app.command()
def produce(
    folder: Annotated[Path, typer.Argument(help="Folder of .md/.txt/.html files.")],
    prefix: Annotated[str, typer.Option(help="Prefix for the document ids.")] = "",
) -> None:
    """Push a folder of documents to the documents topic (key = doc id)."""
    from streamrag.produce import produce_folder

    n = produce_folder(settings(), folder, prefix)
    typer.echo(f"produced {n} documents to {settings().kafka.documents_topic}")


@app.command()
def run(
    bounded: Annotated[bool, typer.Option(
        help="Stop at the end of the topics as of the start (demo, tests).")] = False,
) -> None:
    """Run the ingest job with PyFlink local execution."""
    from jobs.pipeline import build
    from streamrag.kafka import ensure_topics

    ensure_topics(settings())
    build(settings(), bounded=bounded).execute("streamrag-ingest")


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many chunks.")] = 5,
    doc_id: Annotated[str | None, typer.Option(help="Only this document.")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source topic/table.")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="Metadata filter key=value.")] = None,
) -> None:
    """Search the index and print the top chunks with score, doc id and text span."""
    from streamrag.retrieval import Retriever, format_hit
    from streamrag.stores.base import Filters

    fields = {k_: v for k_, v in (("doc_id", doc_id), ("source", source)) if v is not None}
    # Checked before the model loads: a bad value fails at once, with one line.
    filters = Filters(fields, dict(_key_value(m) for m in meta or []))
    retriever = Retriever(settings())
    hits = retriever.search(text, k, filters)
    retriever.close()
    if not hits:
        typer.echo("no results")
    for rank, hit in enumerate(hits, 1):
        typer.echo(format_hit(rank, hit))


@app.command()
def migrate(
    dsn: Annotated[str | None, typer.Option(
        help="libpq DSN of the source database, password from PGPASSWORD/PGPASSFILE "
             "(default: the local stack's).")] = None,
) -> None:
    """Create the CDC source schema (sql/source/*.sql, idempotent)."""
    from streamrag.migrate import migrate as apply_migrations

    applied = apply_migrations(settings(), dsn)
    typer.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"--meta must be key=value, got {item!r}")
    return key, value


def _mount_command_groups() -> None:
    # Imported here, not at the top: `streamrag query` should not pay for every group.
    from connect.cli import app as connect_app
    from streamrag.cluster import app as cluster_app
    from streamrag.replay_cli import app as replay_app
    from streamrag.stack import app as stack_app

    app.add_typer(stack_app, name="stack",
                  help="Local services: Kafka, Connect, PostgreSQL, Milvus Lite.")
    app.add_typer(connect_app, name="connect",
                  help="Kafka Connect connectors: Debezium PostgreSQL -> CDC topics.")
    app.add_typer(cluster_app, name="cluster")
    app.add_typer(replay_app)  # the `generations` and `replay` command groups


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that end with one line for the user instead of a traceback."""
    from connect.registry import ConnectError
    from streamrag.cluster import ClusterError
    from streamrag.generations import GenerationError
    from streamrag.kafka import KafkaUnavailable
    from streamrag.migrate import MigrationError
    from streamrag.stack import StackError
    from streamrag.stores.base import StoreError

    return (ConfigError, KafkaUnavailable, StoreError, StackError, GenerationError,
            ConnectError, ClusterError, MigrationError, FileNotFoundError)


def main(argv: list[str] | None = None) -> None:
    _mount_command_groups()
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except ClickException as e:
        typer.echo(f"streamrag: error: {e.format_message()}", err=True)
        sys.exit(2)
    except _expected_errors() as e:
        typer.echo(f"streamrag: error: {e}", err=True)
        sys.exit(1)


def run_job_main(build: Callable[..., Any], argv: list[str] | None = None) -> None:
    """Entry point of a job module run by ``flink run -py`` or ``python -m``."""
    job = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @job.command()
    def _run(config: ConfigOption = None, bounded: bool = False) -> None:
        _state["config_path"] = config
        build(settings(), bounded=bounded).execute(getattr(build, "job_name", "streamrag"))

    try:
        job(args=argv, standalone_mode=False)
    except ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except _expected_errors() as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
