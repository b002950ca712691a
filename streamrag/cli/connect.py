"""`streamrag connect ...`: declarative Kafka Connect connectors (Debezium CDC).

    streamrag connect apply [FILE]     # create or update from connect/postgres-source.json
    streamrag connect status NAME
    streamrag connect pause|resume|restart|delete NAME

Failures raise ConnectError (one line), which the main CLI prints without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from connect.registry import (
    DEFAULT_CONNECTOR_FILE,
    ConnectRegistry,
    connect_url,
    load_connector_file,
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
