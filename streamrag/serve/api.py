"""The HTTP API (FastAPI): search with citations, a document's chunks, health, OpenAPI.

Every route but /healthz, /readyz and the OpenAPI docs needs a bearer token; the check
runs before anything else (a request without a token learns nothing, not even whether
its body was valid). Errors are one line: ``{"error": "..."}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from streamrag.errors import UserError
from streamrag.serve.auth import AuthError, Forbidden, Principal, TokenBook
from streamrag.serve.index import NotReady, ServingIndex
from streamrag.serve.reader import FilterSpec, Reader
from streamrag.stores.base import BadFilter, StoreError, Unsupported

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: StrictStr
    k: StrictInt = 5
    filters: FilterSpec = Field(default_factory=FilterSpec)
    mode: Literal["dense", "hybrid"] = "dense"
    include_text: StrictBool = True


class Span(BaseModel):
    start: int
    end: int


class ChunkOut(BaseModel):
    """A chunk with everything needed to cite it."""

    chunk_id: str
    doc_id: str
    title: str | None
    source: str
    heading_path: str
    page: int
    position: int
    span: Span  # characters in the cleaned text of the document
    version: int
    indexed_at: str  # ISO 8601, UTC
    indexed_at_ms: int
    source_ts_ms: int
    metadata: dict[str, Any]
    text: str | None = None


class Hit(ChunkOut):
    score: float
    rank: int


class SearchResponse(BaseModel):
    generation: int
    model_id: str
    mode: str
    took_ms: float
    hits: list[Hit]


class DocumentResponse(BaseModel):
    doc_id: str
    generation: int
    versions: list[int]
    chunks: list[ChunkOut]


# -- the application -------------------------------------------------------------------


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status, headers)


class RequireToken:
    """ASGI middleware: every path outside OPEN_PATHS needs a valid bearer token; the
    principal goes into the request scope for the routes."""

    def __init__(self, app: ASGIApp, tokens: TokenBook) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            principal = self.tokens.verify_header(headers.get("authorization"))
        except AuthError as e:
            response = error(401, str(e), **{"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def create_app(index: ServingIndex, tokens: TokenBook, mcp: bool = True) -> FastAPI:
    """The service. ``index`` is started and closed with the app's lifespan."""
    reader = Reader(index)
    mcp_app = None
    if mcp:
        from streamrag.serve.mcp import build_mcp

        server = build_mcp(reader, tokens, principal=None)
        mcp_app = server.streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=True,
            json_response=True,
            host=index.settings.serve.host,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        index.start()
        try:
            if mcp_app is not None:
                async with server.session_manager.run():
                    yield
            else:
                yield
        finally:
            index.close()

    app = FastAPI(
        title="streamrag",
        version="1",
        summary="Search the streamrag index, with citations",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return error(400, f"{where}: {first['msg']}")

    @app.exception_handler(Forbidden)
    async def forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return error(403, str(exc))

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return error(503, str(exc))

    @app.exception_handler(LookupError)
    async def not_found(_: Request, exc: LookupError) -> JSONResponse:
        return error(404, str(exc.args[0]) if exc.args else "not found")

    @app.exception_handler(BadFilter)
    async def bad_filter(_: Request, exc: BadFilter) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(Unsupported)
    async def unsupported(_: Request, exc: Unsupported) -> JSONResponse:
        return error(400, str(exc))  # e.g. hybrid mode on a Milvus server before 2.5

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        return error(503, str(exc))  # the store failed, or cannot do what was asked

    @app.exception_handler(UserError)
    async def bad_request(_: Request, exc: UserError) -> JSONResponse:
        return error(400, str(exc))

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        """Store reachable, serving generation known, its model loaded."""
        try:
            index.current()
        except NotReady as e:
            return error(503, str(e))
        if index.last_error:
            return error(503, index.last_error)
        return JSONResponse({"status": "ready"})

    def principal_of(request: Request) -> Principal:
        principal = request.scope.get("state", {}).get("principal")
        if not isinstance(principal, Principal):  # RequireToken always sets it
            raise AuthError("missing bearer token")
        return principal

    @app.post("/v1/search", response_model=SearchResponse, tags=["read"])
    def search(body: SearchRequest, request: Request) -> dict[str, Any]:
        """The k chunks nearest the query (``dense``), or dense and lexical results fused
        by reciprocal rank (``hybrid``), with what a citation needs."""
        return reader.search(
            principal_of(request), body.query, body.k, body.filters, body.mode, body.include_text
        )

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentResponse, tags=["read"])
    def document(doc_id: str, request: Request) -> dict[str, Any]:
        """A document's chunks in order, with their versions."""
        return reader.document(principal_of(request), doc_id)

    if mcp_app is not None:
        app.mount("/", mcp_app)  # /mcp: after the routes above, which match first
    app.add_middleware(RequireToken, tokens=tokens)
    return app
