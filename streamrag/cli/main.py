"""The `streamrag` command, on top of every other layer.

    streamrag [--config FILE] [--verbose] COMMAND
      config | topics create | produce | run | query | migrate      (pipeline.py)
      replay rematerialize|full | generations list|swap|rollback|drop-old  (replay.py)
      serve | mcp                                                    (serve.py)
      demo                                                           (demo.py)
      status                                                         (status.py)
      connect apply|status|pause|resume|restart|delete               (connect.py)
      dead-letters list|show|redrive                                 (deadletters.py)
      stack up|down|status | cluster up|down|submit|savepoint|upgrade  (local.py)

Commands parse, call the library and print; the settings reach them through the click
context (context.py). Every expected failure (bad arguments, bad config, a service that
is down: a UserError) ends with one line on stderr and exit code 1 or 2, never a
traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from streamrag.cli import connect, deadletters, demo, local, pipeline, replay, serve, status
from streamrag.cli.context import CliState
from streamrag.errors import Unreachable, UserError
from streamrag.flink import usage_message
from streamrag.quiet import quiet_third_parties

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Streaming RAG ingestion: Kafka + PyFlink -> Milvus / pgvector.",
)
app.add_typer(pipeline.app)  # config, topics, produce, run, query, migrate
app.add_typer(replay.app)  # the `replay` and `generations` groups
app.add_typer(serve.app)  # serve, mcp
app.add_typer(demo.app)  # demo
app.add_typer(status.app)  # status
app.add_typer(connect.app, name="connect")
app.add_typer(deadletters.app, name="dead-letters")
app.add_typer(local.stack_app, name="stack")
app.add_typer(local.cluster_app, name="cluster")


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    verbose: Annotated[bool, typer.Option(help="Log what the libraries do.")] = False,
) -> None:
    ctx.obj = CliState(config, verbose)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_third_parties(verbose)


def main(argv: list[str] | None = None) -> None:
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as e:  # bad arguments
        typer.echo(f"streamrag: error: {usage_message(e)}", err=True)
        sys.exit(2)
    except Unreachable as e:
        hint = "is it running? The local stack starts with `streamrag stack up`"
        typer.echo(f"streamrag: error: {e} ({hint})", err=True)
        sys.exit(1)
    except (UserError, FileNotFoundError) as e:
        typer.echo(f"streamrag: error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
