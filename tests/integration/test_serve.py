"""The read side on the real stack, both stores: `streamrag serve` (uvicorn in a thread,
real HTTP), its MCP tools through the SDK's own client, the typed client and the
LangChain retriever. The index is written through the store contract with the bundled
model's real vectors; the ingest path that writes it is tested elsewhere.

Tenants: acme and globex hold documents of the same shape, so any leak would show.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import requests

from streamrag import generations
from streamrag.config import Settings
from streamrag.models import BUNDLED_MODEL_ID, encode, load_model, resolve_model
from streamrag.records import ChunkRecord, EmbeddingRecord, model_input
from streamrag.stores import open_store
from tests.integration.conftest import CLI, make_pipeline

TOKENS = {
    "*": "all-tenants-token-0123456789",
    "acme": "acme-token-0123456789abcdef",
    "globex": "globex-token-0123456789abcdef",
}
REASONS = [
    "the broker closed the socket",
    "the TLS handshake timed out",
    "DNS lookup failed",
    "the peer reset the connection",
    "the pool had no free connection",
    "the proxy refused the request",
    "the certificate expired",
    "the listener was not bound",
    "too many open files",
    "the route to the host was lost",
    "the server sent an unexpected frame",
    "keep-alive probes went unanswered",
]
GUIDE = [
    ("Replay", "A full replay rebuilds the index into a new generation from the embeddings topic."),
    ("Checkpoints", "Checkpoints store the job's state so that a restart resumes where it was."),
    ("Dead letters", "Records that cannot be processed go to the dead-letter topic with a reason."),
]
IDENTIFIER = "ERR_CONN_4733"  # dense search ranks its chunk low among the other codes


def corpus(tenant: str) -> list[ChunkRecord]:
    """A guide and an error catalogue for ``tenant`` (ids prefixed with it)."""
    chunks = []
    for i, (heading, text) in enumerate(GUIDE):
        chunks.append(chunk(f"{tenant}/guide", i, text, f"Guide > {heading}", tenant))
    for i, code in enumerate(range(4700, 4772, 3)):
        text = f"Connection error ERR_CONN_{code}: {REASONS[i % len(REASONS)]}; the client retries."
        chunks.append(chunk(f"{tenant}/errors", i, text, "Errors", tenant))
    return chunks


def chunk(doc: str, position: int, text: str, heading: str, tenant: str) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=f"{doc}#{position}",
        doc_id=doc,
        version=3,
        op="upsert",
        position=position,
        start=100 * position,
        end=100 * position + len(text),
        text=text,
        content_hash=f"{doc}#{position}",
        source="documents",
        title=doc.split("/")[1].title(),
        metadata={"tenant": tenant, "lang": "en"},
        source_ts_ms=1_700_000_000_000,
        heading_path=heading,
        page=0,
    )


def embedded(chunks: list[ChunkRecord], model_path: str, model_id: str) -> list[EmbeddingRecord]:
    from streamrag.models import ModelRef

    model = load_model(ModelRef(model_path, model_id))
    vectors = encode(model, [model_input(c.text, c.heading_path, "section") for c in chunks])
    return [EmbeddingRecord(c, model_id, v) for c, v in zip(chunks, vectors, strict=True)]


@dataclass
class Served:
    url: str
    settings: Settings
    env: dict[str, str]

    def post(self, body: dict, token: str | None = TOKENS["*"]) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(f"{self.url}/v1/search", json=body, headers=headers, timeout=60)

    def get(self, path: str, token: str | None = TOKENS["*"]) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + path, headers=headers, timeout=60)

    def search(self, query: str, token: str = TOKENS["*"], **body) -> dict:
        response = self.post({"query": query, **body}, token)
        assert response.status_code == 200, response.text
        return response.json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["milvus", "pgvector"])
def served(request: pytest.FixtureRequest, stack: Settings, tmp_path_factory) -> Iterator[Served]:
    import uvicorn

    from streamrag.serve.api import create_app
    from streamrag.serve.auth import TokenBook
    from streamrag.serve.index import ServingIndex

    pipeline = make_pipeline(stack, request.param)
    settings = pipeline.settings
    settings = settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"refresh_s": 0.2})}
    )
    bundled = resolve_model("bundled")
    name = generations.create_generation(settings, BUNDLED_MODEL_ID, 384)
    generations.swap(settings, name)
    store = open_store(settings.store, name)
    store.upsert(embedded(corpus("acme") + corpus("globex"), bundled.path, BUNDLED_MODEL_ID))
    store.flush()
    store.close()

    tokens_file = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens_file.write_text("".join(f"{t} {v}\n" for t, v in TOKENS.items()))
    port = free_port()
    app = create_app(ServingIndex(settings), TokenBook.load(tokens_file, env={}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.1)
    env = {**pipeline.env, "STREAMRAG_TOKENS_FILE": str(tokens_file)}
    try:
        yield Served(f"http://127.0.0.1:{port}", settings, env)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        generations.drop_all(settings)


# -- search and documents -------------------------------------------------------------


def test_search_returns_cited_hits(served):
    got = served.search(
        "how do I rebuild the index from the log?", k=3, filters={"metadata": {"tenant": "acme"}}
    )
    assert got["mode"] == "dense" and got["model_id"] == BUNDLED_MODEL_ID
    top = got["hits"][0]
    assert (top["doc_id"], top["position"]) == ("acme/guide", 0)
    assert top["heading_path"] == "Guide > Replay" and top["title"] == "Guide"
    assert top["span"] == {"start": 0, "end": len(top["text"])} and top["version"] == 3
    assert top["indexed_at"].startswith("20") and top["indexed_at_ms"] > 0
    assert top["source"] == "documents" and top["rank"] == 1 and 0 < top["score"] <= 1
    assert [h["rank"] for h in got["hits"]] == [1, 2, 3]


def test_include_text_false_leaves_the_text_out(served):
    got = served.search("checkpoints", k=2, include_text=False)
    assert got["hits"] and all(h["text"] is None for h in got["hits"])


def test_document_returns_its_chunks_in_order(served):
    response = served.get("/v1/documents/acme/errors")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["doc_id"] == "acme/errors" and doc["versions"] == [3]
    assert [c["position"] for c in doc["chunks"]] == list(range(24))
    assert served.get("/v1/documents/nope").status_code == 404


def test_hybrid_finds_an_exact_identifier_that_dense_ranks_low(served):
    body = {"k": 24, "filters": {"metadata": {"tenant": "acme"}}}
    dense = served.search(IDENTIFIER, mode="dense", **body)["hits"]
    hybrid = served.search(IDENTIFIER, mode="hybrid", **body)["hits"]
    rank = [IDENTIFIER in h["text"] for h in dense].index(True) + 1
    assert rank > 3, f"dense search already ranks it {rank}: the test shows nothing"
    assert IDENTIFIER in hybrid[0]["text"]
    assert {h["doc_id"] for h in hybrid} <= {"acme/errors", "acme/guide"}


def test_health_and_openapi_need_no_token(served):
    assert served.get("/healthz", token=None).json() == {"status": "ok"}
    ready = served.get("/readyz", token=None)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    spec = served.get("/openapi.json", token=None).json()
    assert {"/v1/search", "/v1/documents/{doc_id}"} <= set(spec["paths"])


# -- tokens and tenants ----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong-token-0123456789", TOKENS["acme"] + "x"])
def test_no_valid_token_is_401_and_tells_nothing(served, token):
    for response in (
        served.post({"query": "replay"}, token=token),
        served.post({"query": ""}, token=token),  # not even that the body is bad
        served.get("/v1/documents/acme/guide", token=token),
        requests.post(f"{served.url}/mcp", json={}, headers={}, timeout=30),
    ):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert set(response.json()) == {"error"} and "acme" not in response.text


@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_a_tenant_token_sees_only_its_tenant(served, tenant):
    token = TOKENS[tenant]
    other = "globex" if tenant == "acme" else "acme"
    for query in ["replay the index", IDENTIFIER, "connection error", "tenant " + other]:
        for mode in ("dense", "hybrid"):
            hits = served.search(query, token, k=100, mode=mode)["hits"]
            assert hits and {h["metadata"]["tenant"] for h in hits} == {tenant}
    # Another tenant's document: not found, exactly like a missing one.
    assert served.get(f"/v1/documents/{other}/guide", token).status_code == 404
    assert served.get(f"/v1/documents/{tenant}/guide", token).status_code == 200
    hits = served.search("replay", token, filters={"doc_id": f"{other}/guide"})["hits"]
    assert hits == []


@pytest.mark.parametrize(
    "filters",
    [
        {"metadata": {"tenant": "globex"}},
        {"metadata": {"tenant": "acme"}},
        {"metadata": {"tenant": "*"}},
    ],
)
def test_a_tenant_token_cannot_filter_on_tenant(served, filters):
    response = served.post({"query": "replay", "filters": filters}, TOKENS["acme"])
    assert response.status_code == 403 and "tenant" in response.json()["error"]


def test_the_all_tenants_token_sees_both(served):
    hits = served.search("replay the index", k=100)["hits"]
    assert {h["metadata"]["tenant"] for h in hits} == {"acme", "globex"}


# -- bad input: a clear 4xx, one line, nothing of another tenant ------------------------

BAD = [
    ({"query": ""}, 400, "query is empty"),
    ({"query": "   "}, 400, "query is empty"),
    ({"query": "x" * 100_000}, 400, "at most"),
    ({"query": "q", "k": 0}, 400, "k must be between"),
    ({"query": "q", "k": -1}, 400, "k must be between"),
    ({"query": "q", "k": 10**6}, 400, "k must be between"),
    ({"query": "q", "k": "5"}, 400, "k"),
    ({"query": 5}, 400, "query"),
    ({"query": "q", "mode": "sparse"}, 400, "mode"),
    ({"query": "q", "extra": 1}, 400, "extra"),
    ({"query": "q", "filters": {"text": "x"}}, 400, "filters.text"),
    ({"query": "q", "filters": {"doc_id": 5}}, 400, "filters.doc_id"),
    ({"query": "q", "filters": {"metadata": {"lang": 1.5}}}, 400, "filters.metadata.lang"),
    ({"query": "q", "filters": {"metadata": {"lang": ["en"]}}}, 400, "filters.metadata.lang"),
    ({"query": "q", "filters": {"metadata": {"lang": None}}}, 400, "filters.metadata.lang"),
    (
        {"query": "q", "filters": {"metadata": {'lang"] or true or metadata["x': "en"}}},
        400,
        "plain identifier",
    ),
    ({"query": "q", "filters": {"metadata": {"$.tenant": "acme"}}}, 400, "plain identifier"),
    ({"query": "q", "filters": {"metadata": {"a b": "x"}}}, 400, "plain identifier"),
    ({"query": "q", "filters": {"metadata": {f"k{i}": i for i in range(40)}}}, 400, "at most"),
    ({"query": "q", "filters": {"metadata": {"n": 2**70}}}, 400, "n"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_requests_get_one_clear_line(served, body, status, message):
    for token in (TOKENS["*"], TOKENS["acme"]):
        response = served.post(body, token)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert message in error and "\n" not in error and "Traceback" not in response.text


@pytest.mark.parametrize(
    "value",
    ['x" or doc_id != "', "x' OR '1'='1", "acme/guide' --", 'x\\" or true or \\"', "or 1==1", "/*"],
)
def test_filter_values_are_values(served, value):
    for filters in ({"doc_id": value}, {"source": value}, {"metadata": {"lang": value}}):
        for mode in ("dense", "hybrid"):
            got = served.search("replay", TOKENS["acme"], mode=mode, filters=filters)
            assert got["hits"] == []
    # As query text, the same strings are words to look for, scoped as always.
    hits = served.search(value, TOKENS["acme"], mode="hybrid", k=100)["hits"]
    assert {h["metadata"]["tenant"] for h in hits} <= {"acme"}


# -- the MCP tools, through the SDK's own client ----------------------------------------


def mcp_call(served: Served, token: str, tool: str, args: dict) -> tuple[bool, dict | str]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def call() -> tuple[bool, dict | str]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with (
            http,
            Client(streamable_http_client(f"{served.url}/mcp", http_client=http)) as client,
        ):
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"search", "get_document"} <= tools
            result = await client.call_tool(tool, args)
            if result.is_error:
                return False, result.content[0].text  # type: ignore[union-attr]
            return True, result.structured_content

    return anyio.run(call)


def test_mcp_search_over_http_is_tenant_scoped(served):
    ok, got = mcp_call(
        served, TOKENS["globex"], "search", {"query": IDENTIFIER, "k": 50, "mode": "hybrid"}
    )
    assert ok, got
    assert IDENTIFIER in got["hits"][0]["text"]
    assert {h["metadata"]["tenant"] for h in got["hits"]} == {"globex"}
    assert got["hits"][0]["heading_path"] == "Errors"


def test_mcp_get_document_and_errors_over_http(served):
    ok, doc = mcp_call(served, TOKENS["acme"], "get_document", {"doc_id": "acme/guide"})
    assert ok and [c["position"] for c in doc["chunks"]] == [0, 1, 2]
    ok, error = mcp_call(served, TOKENS["acme"], "get_document", {"doc_id": "globex/guide"})
    assert not ok and "no document" in error
    ok, error = mcp_call(
        served,
        TOKENS["acme"],
        "search",
        {"query": "q", "filters": {"metadata": {"tenant": "globex"}}},
    )
    assert not ok and "tenant" in error
    ok, error = mcp_call(served, TOKENS["acme"], "search", {"query": "q", "k": 0})
    assert not ok and "k must be between" in error


def test_mcp_over_stdio(served):
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=CLI,
        args=["mcp"],
        env={**served.env, "STREAMRAG_TOKEN": TOKENS["acme"], "HF_HUB_OFFLINE": "1"},
        cwd=str(Path(__file__).parents[2]),
    )

    async def call():
        async with Client(params) as client:
            return await client.call_tool("search", {"query": "replay the index", "k": 50})

    result = anyio.run(call)
    assert not result.is_error, result.content
    hits = result.structured_content["hits"]
    assert hits[0]["doc_id"] == "acme/guide"
    assert {h["metadata"]["tenant"] for h in hits} == {"acme"}


# -- the typed client and the LangChain retriever ----------------------------------------


def test_python_client(served):
    from streamrag.client import ApiError, Client

    with Client(served.url, TOKENS["acme"]) as client:
        result = client.search("what happens to records that cannot be processed?", k=2)
        assert result.hits[0].doc_id == "acme/guide" and result.hits[0].position == 2
        assert result.hits[0].heading_path == "Guide > Dead letters"
        doc = client.document("acme/guide")
        assert [c.position for c in doc.chunks] == [0, 1, 2] and doc.versions == [3]
        with pytest.raises(ApiError) as e:
            client.search("q", k=0)
        assert e.value.status == 400 and "k must be between" in e.value.message
    with Client(served.url, "bad-token-0123456789") as client, pytest.raises(ApiError) as e:
        client.search("q")
    assert e.value.status == 401


def test_langchain_retriever(served):
    from streamrag.integrations.langchain import StreamragRetriever

    retriever = StreamragRetriever(url=served.url, token=TOKENS["globex"], k=3, mode="hybrid")
    docs = retriever.invoke(IDENTIFIER)
    assert IDENTIFIER in docs[0].page_content
    assert docs[0].metadata["doc_id"] == "globex/errors"
    assert {d.metadata["metadata_tenant"] for d in docs} == {"globex"}


# -- following the serving generation --------------------------------------------------


def test_swap_and_rollback_under_concurrent_requests(served, second_model):
    settings = served.settings
    first = generations.serving(settings)
    chunks = corpus("acme") + corpus("globex")
    name = generations.create_generation(settings, second_model, 384)
    store = open_store(settings.store, name)
    store.upsert(embedded(chunks, second_model, second_model))
    store.flush()
    store.close()
    probe = chunks[1]  # its exact model input as the query: a top score near 1 only
    query = model_input(probe.text, probe.heading_path, "section")  # with the same model

    results: list[tuple[int, str, float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(
                    f"{served.url}/v1/search",
                    json={"query": query, "k": 1},
                    headers={"Authorization": f"Bearer {TOKENS['*']}"},
                    timeout=60,
                )
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                got = r.json()
                hit = got["hits"][0]
                results.append((got["generation"], got["model_id"], hit["score"], hit["chunk_id"]))
            except Exception as e:  # a refused or broken connection is a failure too
                failures.append(repr(e))

    def served_generation(number: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if results and results[-1][0] == number:
                return
            time.sleep(0.2)
        raise AssertionError(f"generation {number} was not served within {timeout_s} s")

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(client)
        try:
            time.sleep(1)
            swapped = generations.swap(settings, name)
            served_generation(swapped.number)
            back = generations.rollback(settings)
            assert back.number == first.number
            served_generation(first.number)
            time.sleep(0.5)
        finally:
            stop.set()
    assert failures == []
    by_generation = {g for g, *_ in results}
    assert by_generation == {first.number, swapped.number}
    models = {first.number: BUNDLED_MODEL_ID, swapped.number: second_model}
    for generation, model_id, score, chunk_id in results:
        # Embedded and searched with one model: the probe finds itself, nearly exactly.
        assert model_id == models[generation]
        assert chunk_id == probe.chunk_id and score > 0.99, (generation, model_id, score)
    print(json.dumps({"requests": len(results), "failed": len(failures)}), file=sys.stderr)
