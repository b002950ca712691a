"""`streamrag stack ...` and `streamrag cluster ...`: the local services and the local
Flink cluster (streamrag.local), for development, tests and the demo."""

from __future__ import annotations

from typing import Annotated

import typer

from streamrag.cli.context import echo_settled, settings_of
from streamrag.local import cluster, stack
from streamrag.local.kafka import MAX_BROKERS, bootstrap_servers
from streamrag.local.service import show

stack_app = typer.Typer(
    no_args_is_help=True, help="Local services: Kafka, Connect, PostgreSQL, Milvus Lite."
)
cluster_app = typer.Typer(no_args_is_help=True, help="Local standalone Flink cluster (flink run).")


@stack_app.command("up")
def stack_up(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None,
        typer.Argument(help=f"services to start (default all): {', '.join(stack.SERVICE_NAMES)}"),
    ] = None,
    brokers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_BROKERS,
            help="Kafka brokers (KRaft nodes); from 3 on topics are replicated 3 times with"
            " min.insync.replicas 2 [default: stack.brokers]",
        ),
    ] = None,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Kafka over SASL_SSL with SCRAM users and PostgreSQL over TLS only, with"
            " certificates of the stack's own CA [default: stack.secure]",
        ),
    ] = False,
) -> None:
    """Start services (idempotent) and wait until they are ready."""
    settings = settings_of(ctx)
    if brokers is not None:
        settings.stack.brokers = brokers
    settings.stack.secure = settings.stack.secure or secure
    stack.up(settings, services or None, echo=typer.echo)
    if settings.stack.secure:
        path = stack.client_config(settings)
        typer.echo(f"Clients of the secured stack: STREAMRAG_CONFIG={show(path)}")
    elif settings.stack.brokers > 1:
        typer.echo(f"Kafka clients: STREAMRAG_KAFKA__BOOTSTRAP={bootstrap_servers(settings)}")


@stack_app.command("down")
def stack_down(ctx: typer.Context) -> None:
    """Stop every service of the stack."""
    stack.down(settings_of(ctx), echo=typer.echo)


@stack_app.command("status")
def stack_status(ctx: typer.Context) -> None:
    """One line per service: name, up/down, address, pid."""
    services = stack.describe(settings_of(ctx))
    width = max((len(name) for name, *_ in services), default=0)
    for name, up, address, pid in services:
        typer.echo(f"{name:<{width}} {'up' if up else 'down':<5} {address:<23} pid {pid or '-'}")


@cluster_app.command("up")
def cluster_up(
    ctx: typer.Context,
    taskmanagers: Annotated[
        int,
        typer.Option(min=1, max=cluster.MAX_TASKMANAGERS, help="TaskManagers, 2 slots each."),
    ] = 1,
) -> None:
    """Start the local JobManager and TaskManagers (REST on 127.0.0.1:18081)."""
    cluster.up(settings_of(ctx), taskmanagers)
    typer.echo(f"Flink cluster up: http://127.0.0.1:{cluster.REST_PORT}")


@cluster_app.command("down")
def cluster_down(ctx: typer.Context) -> None:
    """Stop the local cluster."""
    cluster.down(settings_of(ctx))


@cluster_app.command("submit")
def cluster_submit(
    ctx: typer.Context,
    bounded: Annotated[bool, typer.Option(help="Stop at the end of the topics.")] = False,
    detached: Annotated[bool, typer.Option(help="Return once submitted.")] = False,
) -> None:
    """Submit the ingest job with `flink run -py jobs/pipeline.py`."""
    echo_settled(cluster.submit(settings_of(ctx), bounded, detached))


@cluster_app.command("savepoint")
def cluster_savepoint(ctx: typer.Context) -> None:
    """Take a savepoint of the running ingest job (it keeps running)."""
    typer.echo(f"savepoint: {cluster.savepoint(settings_of(ctx))}")


@cluster_app.command("upgrade")
def cluster_upgrade(
    ctx: typer.Context,
    parallelism: Annotated[
        int | None,
        typer.Option(
            min=1, max=128, help="Rescale to this parallelism [default: flink.parallelism]"
        ),
    ] = None,
) -> None:
    """Stop the running ingest job with a savepoint (drained: waiting batches are written
    first) and submit the current code from it, with its state (detached); `--parallelism`
    rescales it."""
    location, job_id = cluster.upgrade(settings_of(ctx), parallelism=parallelism)
    typer.echo(f"stopped with savepoint {location}")
    typer.echo(f"running job {job_id}, restored from it")
