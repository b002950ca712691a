"""The read side for RAG applications: an HTTP API (``streamrag serve``) and an MCP server
(``streamrag mcp``, and mounted on the HTTP service), on the same stores and generation
rules as the ingest side.

    auth.py    bearer tokens, each bound to one tenant or to all; tenant scoping of filters
    index.py   the serving generation with its model, followed across swaps; dense and
               hybrid (reciprocal rank fusion) search
    api.py     the FastAPI application: /v1/search, /v1/documents/{id}, health, OpenAPI
    mcp.py     the MCP tools ``search`` and ``get_document``
"""
