"""A small typed client for the streamrag HTTP API (``streamrag serve``).

    from streamrag.client import Client
    with Client("http://127.0.0.1:8300", token) as client:
        for hit in client.search("how do I replay the index?", k=3).hits:
            print(hit.score, hit.doc_id, hit.heading_path, hit.text)

It needs only ``requests``: an application that reads the index does not install the
pipeline's model or Flink. Errors from the service raise ``ApiError`` with its one-line
message and HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import requests

Mode = Literal["dense", "hybrid"]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str
    doc_id: str
    title: str | None
    source: str
    heading_path: str
    page: int
    position: int
    start: int
    end: int
    version: int
    indexed_at: str
    metadata: dict[str, Any]
    text: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return cls(
            chunk_id=data["chunk_id"],
            doc_id=data["doc_id"],
            title=data.get("title"),
            source=data["source"],
            heading_path=data.get("heading_path") or "",
            page=data.get("page") or 0,
            position=data["position"],
            start=data["span"]["start"],
            end=data["span"]["end"],
            version=data["version"],
            indexed_at=data["indexed_at"],
            metadata=data.get("metadata") or {},
            text=data.get("text"),
        )


@dataclass(frozen=True, slots=True)
class Hit(Chunk):
    score: float = 0.0
    rank: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hit:
        base = Chunk.from_json(data)
        return cls(
            **{f: getattr(base, f) for f in Chunk.__slots__}, score=data["score"], rank=data["rank"]
        )


@dataclass(frozen=True, slots=True)
class SearchResult:
    generation: int
    model_id: str
    mode: str
    took_ms: float
    hits: list[Hit] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str
    generation: int
    versions: list[int]
    chunks: list[Chunk]


class Client:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        doc_id: str | None = None,
        source: str | None = None,
        metadata: dict[str, str | int | bool] | None = None,
        mode: Mode = "dense",
        include_text: bool = True,
    ) -> SearchResult:
        filters: dict[str, Any] = {"metadata": metadata or {}}
        filters.update({n: v for n, v in (("doc_id", doc_id), ("source", source)) if v})
        body = {
            "query": query,
            "k": k,
            "filters": filters,
            "mode": mode,
            "include_text": include_text,
        }
        data = self._call("POST", "/v1/search", json=body)
        return SearchResult(
            generation=data["generation"],
            model_id=data["model_id"],
            mode=data["mode"],
            took_ms=data["took_ms"],
            hits=[Hit.from_json(h) for h in data["hits"]],
        )

    def document(self, doc_id: str) -> Document:
        data = self._call("GET", f"/v1/documents/{quote(doc_id, safe='')}")
        return Document(
            doc_id=data["doc_id"],
            generation=data["generation"],
            versions=data["versions"],
            chunks=[Chunk.from_json(c) for c in data["chunks"]],
        )

    def ready(self) -> bool:
        return self._http.get(f"{self.url}/readyz", timeout=self.timeout_s).status_code == 200

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        if response.status_code != 200:
            try:
                message = str(response.json().get("error", response.text))
            except ValueError:
                message = response.text[:200]
            raise ApiError(response.status_code, message)
        data: dict[str, Any] = response.json()
        return data

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
