"""`streamrag connect ...`: declarative Kafka Connect connectors (Debezium CDC).

    streamrag connect apply [FILE]     # create or update from connect/postgres-source.json
    streamrag connect status NAME
    streamrag connect pause|resume|restart|delete NAME
    streamrag connect snapshot SCHEMA.TABLE [--filter SQL] [--wait]   # backfill, streaming on

Failures raise ConnectError (one line), which the main CLI prints without a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from connect.registry import (
    DEFAULT_CONNECTOR_FILE,
    ConnectRegistry,
    connect_url,
    load_connector_file,
)
from connect.snapshot import (
    Connector,
    SnapshotError,
    TableName,
    notification_marks,
    request_snapshot,
    wait_for_snapshot,
)
from streamrag.cli.context import settings_of
from streamrag.kafka import ensure_topics

app = typer.Typer(
    no_args_is_help=True, help="Kafka Connect connectors: Debezium PostgreSQL -> CDC topics."
)
Name = Annotated[str, typer.Argument(help="Connector name.")]


def _registry(ctx: typer.Context) -> ConnectRegistry:
    return ConnectRegistry(connect_url(settings_of(ctx)))


@app.command()
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Connector JSON: {name, config}.")] = (
        DEFAULT_CONNECTOR_FILE
    ),
    wait: Annotated[bool, typer.Option(help="Wait until connector and tasks run.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 60.0,
) -> None:
    """Create or update a connector from FILE (idempotent), placeholders filled in."""
    settings = settings_of(ctx)
    name, config = load_connector_file(file, settings)
    ensure_topics(settings)  # the CDC topics compacted, before Debezium would create them
    registry = _registry(ctx)
    created = registry.apply(name, config)
    typer.echo(f"{'created' if created else 'updated'} connector {name}")
    if wait:
        registry.wait_running(name, timeout)
        typer.echo(f"{name} is RUNNING")


@app.command()
def status(ctx: typer.Context, name: Name) -> None:
    """Print the connector's and its tasks' state (JSON)."""
    typer.echo(json.dumps(_registry(ctx).status(name), indent=2))


@app.command()
def pause(ctx: typer.Context, name: Name) -> None:
    """Pause the connector (its slot keeps WAL until it resumes)."""
    _registry(ctx).pause(name)
    typer.echo(f"pausing {name}")


@app.command()
def resume(ctx: typer.Context, name: Name) -> None:
    """Resume a paused connector."""
    _registry(ctx).resume(name)
    typer.echo(f"resuming {name}")


@app.command()
def restart(
    ctx: typer.Context,
    name: Name,
    only_failed: Annotated[bool, typer.Option(help="Restart only failed instances.")] = False,
) -> None:
    """Restart the connector and its tasks."""
    _registry(ctx).restart(name, include_tasks=True, only_failed=only_failed)
    typer.echo(f"restarting {name}")


@app.command()
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete the connector (its replication slot stays: drop it to release WAL)."""
    _registry(ctx).delete(name)
    typer.echo(f"deleted {name}")


@app.command()
def snapshot(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="The table to (re-)read: schema.table.")],
    where: Annotated[
        str | None,
        typer.Option("--filter", help="Read only the rows where this SQL condition holds."),
    ] = None,
    connector: Annotated[
        str | None, typer.Option(help="Connector name (default: connect/postgres-source.json's).")
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(help="libpq DSN of the source database (default: the local stack's)."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the connector has read it all.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 600.0,
) -> None:
    """Backfill TABLE with a Debezium incremental snapshot while streaming goes on.

    Sends an execute-snapshot signal through the signalling table: for a table just
    added to the connector, or rows that must be read again."""
    from streamrag.local.stack import postgres_dsn

    settings = settings_of(ctx)
    name = connector or load_connector_file(DEFAULT_CONNECTOR_FILE, settings)[0]
    target = TableName.parse(table)
    registry = _registry(ctx)
    running = Connector.of(name, registry.config(name))
    registry.wait_running(name, 30)  # a signal to a failed connector would wait unseen
    topic = running.notification_topic
    if wait and topic is None:
        raise SnapshotError(f"connector {name} sends no notifications (sink channel): no --wait")
    marks = notification_marks(settings, topic) if wait and topic else {}
    signal_id = request_snapshot(dsn or postgres_dsn(settings), running, target, where)
    rows = f" where {where.strip()}" if where else ""
    typer.echo(f"snapshot {signal_id}: {name} reads {target}{rows}, streaming goes on")
    if not (wait and topic):
        return
    started = time.monotonic()
    outcome = wait_for_snapshot(settings, topic, signal_id, marks, timeout)
    for scanned, (status_, count) in outcome.scans.items():
        typer.echo(f"  {scanned}: {status_}, {count} rows read")
    if outcome.state != "COMPLETED" or outcome.failures():
        raise SnapshotError(
            f"snapshot {signal_id} {outcome.state}: {'; '.join(outcome.failures()) or 'stopped'}"
            " (see the Connect worker's log)"
        )
    typer.echo(f"snapshot {signal_id} COMPLETED in {time.monotonic() - started:.1f} s")
