"""`streamrag serve` (HTTP API + MCP over streamable HTTP) and `streamrag mcp` (MCP over
stdio): the read side, streamrag.serve. The commands parse and start; tokens come from
--tokens-file, $STREAMRAG_TOKENS_FILE or $STREAMRAG_TOKENS, never from the config file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from streamrag.cli.context import settings_of
from streamrag.errors import UserError

app = typer.Typer()
TokensFile = Annotated[
    Path | None,
    typer.Option(
        "--tokens-file",
        help="Lines of '<tenant> <token>' (tenant * reads every tenant)."
        " Default: $STREAMRAG_TOKENS_FILE; $STREAMRAG_TOKENS adds 'tenant:token,...'.",
    ),
]


@app.command()
def serve(
    ctx: typer.Context,
    tokens_file: TokensFile = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port).")] = None,
) -> None:
    """Serve the index over HTTP: /v1/search, /v1/documents/{id}, /mcp, /docs."""
    import uvicorn

    from streamrag.serve.api import create_app
    from streamrag.serve.auth import TokenBook
    from streamrag.serve.index import ServingIndex

    settings = settings_of(ctx)
    if host is not None or port is not None:
        serve_cfg = settings.serve.model_copy(
            update={"host": host or settings.serve.host, "port": port or settings.serve.port}
        )
        settings = settings.model_copy(update={"serve": serve_cfg})
    tokens = TokenBook.load(tokens_file)
    app_ = create_app(ServingIndex(settings), tokens)
    typer.echo(
        f"streamrag serve: http://{settings.serve.host}:{settings.serve.port}"
        f" (docs at /docs, MCP at /mcp; {len(tokens)} token(s))",
        err=True,
    )
    try:
        uvicorn.run(
            app_,
            host=settings.serve.host,
            port=settings.serve.port,
            log_level="warning",
            access_log=False,
        )
    except SystemExit as e:  # uvicorn exits when it cannot bind
        raise UserError(
            f"cannot serve on {settings.serve.host}:{settings.serve.port}: is the port taken?"
            " (--port)"
        ) from e


@app.command()
def mcp(ctx: typer.Context, tokens_file: TokensFile = None) -> None:
    """Serve the MCP tools over stdio for an agent; $STREAMRAG_TOKEN says whose data."""
    import anyio

    from streamrag.serve.auth import TokenBook
    from streamrag.serve.index import ServingIndex
    from streamrag.serve.mcp import build_mcp
    from streamrag.serve.reader import Reader

    tokens = TokenBook.load(tokens_file)
    principal = tokens.verify(os.environ.get("STREAMRAG_TOKEN"))
    index = ServingIndex(settings_of(ctx))
    index.start()
    try:
        server = build_mcp(Reader(index), tokens, principal)
        anyio.run(server.run_stdio_async)
    finally:
        index.close()
