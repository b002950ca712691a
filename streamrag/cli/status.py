"""`streamrag status`: the pipeline's health on one screen, and a probe (exit code 1 when
something is wrong). The checks are in streamrag.status."""

from __future__ import annotations

from typing import Annotated

import typer

from streamrag.cli.context import settings_of

app = typer.Typer()


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    flink_url: Annotated[
        list[str] | None,
        typer.Option(help="A Flink REST API to look for the job in (besides the local ones)."),
    ] = None,
    services: Annotated[
        bool, typer.Option(help="Check the local stack's services (off for remote ones).")
    ] = True,
    freshness_p99_ms: Annotated[
        float, typer.Option(min=1, help="Objective for the freshness p99 (ms).")
    ] = 1500,
    max_lag: Annotated[int, typer.Option(min=0, help="Most records behind per topic.")] = 10_000,
    dead_letter_window: Annotated[
        float, typer.Option(min=1, help="Dead letters newer than this (minutes) fail.")
    ] = 15,
) -> None:
    """Services, the ingest job (where, uptime, restarts, last checkpoint), freshness,
    lag per source topic, dead letters by reason, the serving generation and index size.
    Exits with 1 when any line says FAIL."""
    from streamrag.local.stack import describe
    from streamrag.status import Thresholds, report

    settings = settings_of(ctx)
    thresholds = Thresholds(freshness_p99_ms, max_lag, dead_letter_window * 60)
    found = describe(settings) if services else None
    result = report(settings, thresholds, flink_url or [], found)
    if as_json:
        typer.echo(result.to_json())
    else:
        for line in result.lines():
            typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)
