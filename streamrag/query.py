"""Retrieval for RAG applications: embed the query with the index's model, search, cite."""

from __future__ import annotations

from streamrag.config import Settings
from streamrag.stores import open_store
from streamrag.stores.base import Filters, SearchHit


class Retriever:
    """Loads the model once; ``search`` may then be called many times."""

    def __init__(self, settings: Settings) -> None:
        from jobs.embedding.embedder import Embedder
        from jobs.embedding.model import load_model, resolve_model

        ref = resolve_model(settings.embedding.model)
        self._embedder = Embedder(load_model(ref, settings.embedding.torch_threads), ref.model_id)
        self._store = open_store(settings.store)

    def search(self, text: str, k: int = 5, filters: Filters | None = None) -> list[SearchHit]:
        return self._store.search(self._embedder.embed_query(text), k, filters)

    def close(self) -> None:
        self._store.close()


def format_hit(rank: int, hit: SearchHit, width: int = 160) -> str:
    c = hit.chunk
    text = " ".join(c.text.split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return (f"{rank:>2}. score={hit.score:.3f}  doc={c.doc_id}  chunk#{c.position} "
            f"chars[{c.start}:{c.end}]  v{c.version}\n    {text}")
