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
    ensure_cdc_topics,
    load_connector_file,
)
from streamrag.config import Settings

app = typer.Typer(no_args_is_help=True,
                  help="Kafka Connect connectors: Debezium PostgreSQL -> CDC topics.")
Name = Annotated[str, typer.Argument(help="Connector name.")]


def _settings() -> Settings:
    from streamrag.cli import settings  # the main CLI's settings (honours --config)

    return settings()


def _registry() -> ConnectRegistry:
    return ConnectRegistry(connect_url(_settings()))


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="Connector JSON: {name, config}.")] = (
        DEFAULT_CONNECTOR_FILE),
    wait: Annotated[bool, typer.Option(help="Wait until connector and tasks run.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 60.0,
) -> None:
    """Create or update a connector from FILE (idempotent), placeholders filled in."""
    settings = _settings()
    name, config = load_connector_file(file, settings)
    ensure_cdc_topics(settings)  # compacted before Debezium would auto-create them
    registry = _registry()
    created = registry.apply(name, config)
    typer.echo(f"{'created' if created else 'updated'} connector {name}")
    if wait:
        registry.wait_running(name, timeout)
        typer.echo(f"{name} is RUNNING")


@app.command()
def status(name: Name) -> None:
    """Print the connector's and its tasks' state (JSON)."""
    typer.echo(json.dumps(_registry().status(name), indent=2))


@app.command()
def pause(name: Name) -> None:
    """Pause the connector (its slot keeps WAL until it resumes)."""
    _registry().pause(name)
    typer.echo(f"pausing {name}")


@app.command()
def resume(name: Name) -> None:
    """Resume a paused connector."""
    _registry().resume(name)
    typer.echo(f"resuming {name}")


@app.command()
def restart(
    name: Name,
    only_failed: Annotated[bool, typer.Option(help="Restart only failed instances.")] = False,
) -> None:
    """Restart the connector and its tasks."""
    _registry().restart(name, include_tasks=True, only_failed=only_failed)
    typer.echo(f"restarting {name}")


@app.command()
def delete(name: Name) -> None:
    """Delete the connector (its replication slot stays: drop it to release WAL)."""
    _registry().delete(name)
    typer.echo(f"deleted {name}")
