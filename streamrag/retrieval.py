"""Retrieval for RAG applications: embed the query with the index's model, search, cite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamrag.config import Settings
from streamrag.generations import GenerationError, serving
from streamrag.models import encode
from streamrag.stores import open_store
from streamrag.stores.base import Filters, SearchHit

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
        from streamrag.models import load_model

        ref = serving_model(settings)
        try:
            model = load_model(ref, settings.embedding.torch_threads)
        except Exception as e:  # OSError, ValueError, HF errors: the model is not here
            raise GenerationError(
                f"the serving index was built with model {ref.model_id!r}, which cannot be"
                f" loaded here ({type(e).__name__}): set embedding.model to its name or path,"
                " or serve another generation"
            ) from None
        self._model = model
        self.model_id = ref.model_id  # the model that embeds the queries: the serving one's
        self._store = open_store(settings.store)

    def search(self, text: str, k: int = 5, filters: Filters | None = None) -> list[SearchHit]:
        return self._store.search(encode(self._model, [text])[0], k, filters)

    def close(self) -> None:
        self._store.close()


def serving_model(settings: Settings) -> ModelRef:
    """The model that the serving generation was built with (by its recorded id); the
    configured model when the index records none (empty, or not built yet)."""
    from streamrag.models import BUNDLED, BUNDLED_MODEL_ID, resolve_model

    configured = resolve_model(settings.embedding.model)
    current = serving(settings)
    model_id = current.model_id if current else ""
    if not model_id or model_id == configured.model_id:
        return configured
    if model_id == BUNDLED_MODEL_ID:
        return resolve_model(BUNDLED)
    return resolve_model(model_id)  # a sentence-transformers name or path, loaded offline


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
