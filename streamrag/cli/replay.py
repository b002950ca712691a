"""`streamrag replay ...` and `streamrag generations ...`: rebuild the index into a new
generation (jobs.replay.driver), and serve, roll back or drop generations
(streamrag.generations). The commands parse and print; the work is the library's."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from jobs.replay.driver import full_replay, rematerialize
from streamrag import generations as gens
from streamrag.cli.context import settings_of

app = typer.Typer(no_args_is_help=True)
generations_app = typer.Typer(no_args_is_help=True, help="Generations of the index.")
replay_app = typer.Typer(no_args_is_help=True, help="Rebuild the index into a new generation.")
app.add_typer(generations_app, name="generations")
app.add_typer(replay_app, name="replay")


@generations_app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """The generations of the index; * marks the serving one."""
    found = gens.list_generations(settings_of(ctx))
    for g in found:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(g.created_at_ms / 1000))
            if g.created_at_ms
            else "-"
        )
        typer.echo(
            f"{'*' if g.serving else ' '} g{g.number:<3} {g.name:<40}"
            f" {g.model_id or '?':<45} chunker {g.chunker or '?':<12} {when}"
        )
    if not found:
        typer.echo(f"no index named {gens.serving_name(settings_of(ctx))} yet")


@generations_app.command("swap")
def swap_cmd(
    ctx: typer.Context, generation: Annotated[str, typer.Argument(help="gN, N or the name.")]
) -> None:
    """Serve another generation (atomic)."""
    to: str | int = int(generation) if generation.isdigit() else generation
    typer.echo(f"serving {gens.swap(settings_of(ctx), to).name}")


@generations_app.command("rollback")
def rollback_cmd(ctx: typer.Context) -> None:
    """Serve again the generation that served before the current one."""
    s = settings_of(ctx)
    current = gens.serving(s)
    g = gens.rollback(s)
    typer.echo(
        f"serving {g.name}\nnote: it lacks what was indexed while"
        f" {current.name if current else 'the other'} served; `streamrag replay"
        " rematerialize` rebuilds the index from the log"
    )


@generations_app.command("drop-old")
def drop_old_cmd(
    ctx: typer.Context, keep: Annotated[int, typer.Option(min=1, help="Newest to keep.")] = 2
) -> None:
    """Drop all but the newest generations (never the serving one)."""
    dropped = gens.drop_old(settings_of(ctx), keep)
    typer.echo(f"dropped: {', '.join(dropped)}" if dropped else "nothing to drop")


NoSwap = Annotated[bool, typer.Option("--no-swap", help="Build and verify only.")]


@replay_app.command("rematerialize")
def rematerialize_cmd(ctx: typer.Context, no_swap: NoSwap = False) -> None:
    """Rebuild from the embeddings topic (no model calls), verify, swap."""
    g = rematerialize(settings_of(ctx), swap=not no_swap)
    typer.echo(f"{g.name}: verified{', serving' if g.serving else ''} ({g.model_id})")


@replay_app.command("full")
def full_cmd(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option(help="Embedding model (name or path); default: embedding.model.")
    ] = None,
    no_swap: NoSwap = False,
) -> None:
    """Re-chunk and re-embed from the source topics into a new generation, verify, swap."""
    s = settings_of(ctx)
    g = full_replay(s, model, swap=not no_swap)
    suffix, k = g.name.rpartition("__")[2], s.kafka
    typer.echo(
        f"{g.name}: verified{', serving' if g.serving else ''} ({g.model_id})\n"
        "the ingest job must now run with the same model and topics, e.g. restart it"
        f" with STREAMRAG_EMBEDDING__MODEL={model or s.embedding.model}"
        f" STREAMRAG_KAFKA__CHUNKS_TOPIC={k.chunks_topic}.{suffix}"
        f" STREAMRAG_KAFKA__EMBEDDINGS_TOPIC={k.embeddings_topic}.{suffix}"
        f" STREAMRAG_KAFKA__DEAD_LETTER_TOPIC={k.dead_letter_topic}.{suffix}"
    )
