"""What the API and the MCP tools both do for a request: check it against the limits,
scope it to the reader's tenant, read, and shape chunks for citing."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from streamrag.errors import UserError
from streamrag.limits import DOC_ID_BYTES
from streamrag.serve.auth import Principal
from streamrag.serve.index import ServingIndex
from streamrag.stores.base import Filters, SearchHit, StoredChunk


class FilterSpec(BaseModel):
    """Equality filters, ANDed. Values are values: they are bound, never parsed."""

    model_config = ConfigDict(extra="forbid")
    doc_id: StrictStr | None = None
    source: StrictStr | None = None
    metadata: dict[str, StrictStr | StrictInt | StrictBool] = Field(default_factory=dict)


def chunk_out(c: StoredChunk, include_text: bool = True) -> dict[str, Any]:
    return {
        "chunk_id": c.chunk_id,
        "doc_id": c.doc_id,
        "title": c.title,
        "source": c.source,
        "heading_path": c.heading_path,
        "page": c.page,
        "position": c.position,
        "span": {"start": c.start, "end": c.end},
        "version": c.version,
        "indexed_at": datetime.fromtimestamp(c.indexed_at_ms / 1000, UTC).isoformat(),
        "indexed_at_ms": c.indexed_at_ms,
        "source_ts_ms": c.source_ts_ms,
        "metadata": c.metadata,
        "text": c.text if include_text else None,
    }


def hit_out(rank: int, hit: SearchHit, include_text: bool) -> dict[str, Any]:
    return {**chunk_out(hit.chunk, include_text), "score": hit.score, "rank": rank}


class Reader:
    """What both the API and the MCP tools do for one principal: check the request
    against the limits, scope it to the tenant, and read."""

    def __init__(self, index: ServingIndex) -> None:
        self.index = index
        self.limits = index.settings.serve

    def search(
        self,
        principal: Principal,
        query: str,
        k: int,
        filters: FilterSpec,
        mode: Literal["dense", "hybrid"],
        include_text: bool,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if not query.strip():
            raise UserError("query is empty")
        if len(query) > self.limits.max_query_chars:
            raise UserError(
                f"query is {len(query)} characters long: at most {self.limits.max_query_chars}"
            )
        if not 1 <= k <= self.limits.max_k:
            raise UserError(f"k must be between 1 and {self.limits.max_k}, got {k}")
        scoped = principal.scope(self.filters(filters))
        result = self.index.search(query, k, scoped, mode)
        return {
            "generation": result.generation,
            "model_id": result.model_id,
            "mode": result.mode,
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
            "hits": [hit_out(i, h, include_text) for i, h in enumerate(result.hits, 1)],
        }

    def document(self, principal: Principal, doc_id: str) -> dict[str, Any]:
        if not doc_id or len(doc_id.encode("utf-8", "surrogatepass")) > DOC_ID_BYTES.value:
            raise UserError(f"doc id must be 1 to {DOC_ID_BYTES.value} bytes")
        serving, chunks = self.index.document(doc_id, principal.scope(Filters()))
        if not chunks:  # missing, or another tenant's: the same answer
            raise LookupError(f"no document {doc_id!r}")
        return {
            "doc_id": doc_id,
            "generation": serving.generation,
            "versions": sorted({c.version for c in chunks}),
            "chunks": [chunk_out(c) for c in chunks],
        }

    def filters(self, spec: FilterSpec) -> Filters:
        fields = {n: v for n, v in (("doc_id", spec.doc_id), ("source", spec.source)) if v}
        if len(fields) + len(spec.metadata) > self.limits.max_filters:
            raise UserError(f"at most {self.limits.max_filters} filters")
        return Filters(fields=fields, metadata=dict(spec.metadata))
