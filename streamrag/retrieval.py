"""Retrieval for RAG applications: embed the query with the index's model, search, cite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from streamrag.config import ServeConfig, Settings
from streamrag.errors import UserError
from streamrag.generations import GenerationError, serving, serving_name
from streamrag.models import encode
from streamrag.stores import open_store
from streamrag.stores.base import Filters, SearchHit, VectorStore

if TYPE_CHECKING:
    from streamrag.models import ModelRef


class Retriever:
    """Loads the model once; ``search`` may then be called many times.

    Queries are embedded with the model that built the serving generation (its recorded
    model id), which may differ from ``embedding.model`` after a model migration. A
    Retriever reads that id when it is created: re-create it after swapping to a
    generation of another model.
    """

    def __init__(self, settings: Settings) -> None:
        from streamrag.models import load_configured

        current = serving(settings)
        if current is None:
            raise NothingIndexed(
                f"nothing is indexed in {serving_name(settings)} yet: produce documents and"
                " run the ingest job first (`streamrag produce DIR`, `streamrag run --bounded`)"
            )
        ref = model_for(settings, current.model_id)
        try:
            model, _ = load_configured(ref, settings.embedding)
        except Exception as e:  # OSError, ValueError, HF errors: the model is not here
            raise GenerationError(model_missing(settings, ref, e)) from None
        self._model = model
        self.model_id = ref.model_id  # the model that embeds the queries: the serving one's
        self._store = open_store(settings.store)
        self._serve = settings.serve

    def search(
        self,
        text: str,
        k: int = 5,
        filters: Filters | None = None,
        mode: Literal["dense", "hybrid"] = "dense",
    ) -> list[SearchHit]:
        vector = encode(self._model, [text])[0]
        return search_store(self._store, self._serve, text, vector, k, filters, mode)

    def close(self) -> None:
        self._store.close()


class NothingIndexed(UserError):
    """The serving name holds no index yet."""


def model_missing(settings: Settings, ref: ModelRef, error: Exception) -> str:
    """One line on a model that cannot be loaded here."""
    why = f"{type(error).__name__}"
    if ref.model_id == settings.embedding.model or ref.path == settings.embedding.model:
        return (
            f"model {ref.model_id!r} (embedding.model) is not installed here ({why}): use"
            " 'bundled' or the path of a sentence-transformers model on this machine"
        )
    return (
        f"the serving index was built with model {ref.model_id!r}, which cannot be loaded"
        f" here ({why}): install it, or serve another generation"
    )


def serving_model(settings: Settings) -> ModelRef:
    """The model that the serving generation was built with (by its recorded id); the
    configured model when the index records none (empty, or not built yet)."""
    current = serving(settings)
    return model_for(settings, current.model_id if current else "")


def model_for(settings: Settings, model_id: str) -> ModelRef:
    """The model recorded as ``model_id`` by a generation: the configured one when the ids
    agree (or none is recorded), else the bundled one or a name/path loaded offline."""
    from streamrag.models import BUNDLED, BUNDLED_MODEL_ID, resolve_model

    configured = resolve_model(settings.embedding.model)
    if not model_id or model_id == configured.model_id:
        return configured
    if model_id == BUNDLED_MODEL_ID:
        return resolve_model(BUNDLED)
    return resolve_model(model_id)  # a sentence-transformers name or path, loaded offline


def search_store(
    store: VectorStore,
    serve: ServeConfig,
    text: str,
    vector: Sequence[float],
    k: int,
    filters: Filters | None,
    mode: Literal["dense", "hybrid"],
) -> list[SearchHit]:
    """The k chunks nearest ``vector`` (``text`` embedded); ``hybrid``: the dense and the
    lexical search's best ``serve.hybrid_candidates`` fused by reciprocal rank."""
    if mode == "dense":
        return store.search(vector, k, filters)
    n = max(k, serve.hybrid_candidates)
    dense = store.search(vector, n, filters)
    return fuse([dense, store.lexical_search(text, n, filters)], k, serve.rrf_k)


def fuse(rankings: Sequence[Sequence[SearchHit]], k: int, rrf_k: int = 60) -> list[SearchHit]:
    """Reciprocal rank fusion: a chunk scores the sum of 1 / (rrf_k + rank) over the
    rankings it appears in, so agreeing rankings lift it and no ranking's own score scale
    matters. Hits of one ranking with equal scores share their average rank (a tie says
    nothing about order: lexical ranks often tie). Ties in the fused score go to the
    smaller chunk id, so the result is deterministic."""
    scores: dict[str, float] = {}
    chunks: dict[str, SearchHit] = {}
    for ranking in rankings:
        for rank, hit in zip(tied_ranks([h.score for h in ranking]), ranking, strict=True):
            cid = hit.chunk.chunk_id
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (rrf_k + rank)
            chunks.setdefault(cid, hit)
    best = sorted(scores, key=lambda cid: (-scores[cid], cid))[: max(k, 0)]
    return [SearchHit(scores[cid], chunks[cid].chunk) for cid in best]


def tied_ranks(scores: Sequence[float]) -> list[float]:
    """Ranks from 1 of scores given best first; a run of equal scores shares the average
    of its ranks ([0.9, 0.5, 0.5, 0.1] -> [1, 2.5, 2.5, 4])."""
    ranks: list[float] = []
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and scores[end + 1] == scores[start]:
            end += 1
        ranks += [(start + end) / 2 + 1] * (end - start + 1)
        start = end + 1
    return ranks


def format_hit(rank: int, hit: SearchHit, width: int = 160) -> str:
    """A hit as a citation: score, document, where in it (section, page, characters),
    version, and the start of the text."""
    c = hit.chunk
    text = " ".join(c.text.split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    where = [f"chunk#{c.position}", f"chars[{c.start}:{c.end}]"]
    if c.page:
        where.insert(0, f"page {c.page}")
    section = f"\n    section: {c.heading_path}" if c.heading_path else ""
    return (
        f"{rank:>2}. score={hit.score:.3f}  doc={c.doc_id}  {'  '.join(where)}  v{c.version}"
        f"{section}\n    {text}"
    )
