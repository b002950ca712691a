"""The MCP server: tools ``search`` and ``get_document`` for agents, built with the
official MCP Python SDK. Over stdio (``streamrag mcp``) the process's token
($STREAMRAG_TOKEN) decides the tenant; mounted on the HTTP service (streamable HTTP at
/mcp) each request's bearer token does. Same limits, same tenant rules as the API: both
go through ``Reader``.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from streamrag.errors import UserError
from streamrag.serve.auth import Principal, TokenBook
from streamrag.serve.reader import FilterSpec, Reader

INSTRUCTIONS = (
    "Search the streamrag index of documents. `search` returns the chunks that best answer"
    " a query, each with its document id, title, section (heading path), page and character"
    " span for citing; `get_document` returns a document's chunks in order."
)


def build_mcp(reader: Reader, tokens: TokenBook, principal: Principal | None) -> MCPServer:
    """The MCP server. ``principal``: the fixed reader of a stdio server; None to take it
    from each HTTP request's bearer token."""
    server: MCPServer = MCPServer("streamrag", instructions=INSTRUCTIONS)

    def who(ctx: Context) -> Principal:
        if principal is not None:
            return principal
        headers = ctx.headers or {}
        try:
            return tokens.verify_header(headers.get("authorization"))
        except UserError as e:
            raise ToolError(str(e)) from None

    async def run(fn: Any, *args: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await anyio.to_thread.run_sync(fn, *args)
        except (UserError, LookupError) as e:
            raise ToolError(str(e).splitlines()[0]) from None
        return result

    @server.tool(
        description="Search the index: the k chunks that best answer `query`, with citations."
        " mode 'hybrid' adds lexical matching (exact identifiers, error codes, names)."
        " filters: {doc_id, source, metadata: {key: value}}, equality only."
    )
    async def search(
        query: str,
        ctx: Context,
        k: int = 5,
        filters: dict[str, Any] | None = None,
        mode: Literal["dense", "hybrid"] = "dense",
        include_text: bool = True,
    ) -> dict[str, Any]:
        reader_of = who(ctx)
        try:
            spec = FilterSpec.model_validate(filters or {})
        except ValidationError as e:
            first = e.errors()[0]
            raise ToolError(f"filters.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return await run(reader.search, reader_of, query, k, spec, mode, include_text)

    @server.tool(description="A document's chunks in order, with their versions.")
    async def get_document(doc_id: str, ctx: Context) -> dict[str, Any]:
        return await run(reader.document, who(ctx), doc_id)

    return server
