"""The serving generation, with the model that built it, followed across swaps.

A background thread asks the store every ``serve.refresh_s`` which generation serves. When
it changes (a replay's swap, a rollback), the new generation's model is loaded first (if
it is another model), its collection/table opened, and only then does the service switch,
by replacing one reference. A request takes that reference once, at its start, so it
embeds and searches with one generation and its own model from start to end: no request
fails or mixes models during a switch. The generation it left stays open a while for the
requests still using it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from streamrag.config import Settings
from streamrag.errors import UserError
from streamrag.models import Encoder, encode
from streamrag.retrieval import model_for, model_missing, search_store
from streamrag.stores import open_catalog, open_store
from streamrag.stores.base import Filters, GenerationCatalog, SearchHit, StoredChunk, VectorStore

log = logging.getLogger(__name__)
Mode = Literal["dense", "hybrid"]
RETIRED_GRACE_S = 60.0  # how long a generation left behind stays open for requests in flight


class NotReady(UserError):
    """Nothing to serve yet (HTTP 503)."""


@dataclass(slots=True)
class Serving:
    """One generation as the service uses it."""

    generation: int
    name: str
    model_id: str
    store: VectorStore
    embed: Callable[[str], list[float]]


@dataclass(frozen=True, slots=True)
class SearchResult:
    generation: int
    model_id: str
    mode: Mode
    hits: list[SearchHit]


@dataclass(slots=True)
class _Retired:
    serving: Serving
    since: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Waiting:
    text: str
    vector: list[float] | None = None
    error: BaseException | None = None


class QueryEmbedder:
    """One model's query embeddings, batched across concurrent requests, with an LRU cache
    for repeated queries.

    Leader and followers: a request that finds the model idle encodes every query waiting
    (up to ``max_batch``) in one call; requests that arrive meanwhile wait, and the next
    one to find the model idle takes them all. On CPU one call of 8 short queries costs
    little more than one, so latency under concurrency stays near one call's, and a lone
    query is never held back by a timer."""

    def __init__(self, model: Encoder, cache_size: int, max_batch: int = 32) -> None:
        self._model = model
        self._size = cache_size
        self._max_batch = max_batch
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._turn = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._busy = False

    def __call__(self, text: str) -> list[float]:
        with self._cache_lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        mine = _Waiting(text)
        with self._turn:
            self._waiting.append(mine)
            while mine.vector is None and mine.error is None:
                if self._busy:
                    self._turn.wait()
                    continue
                self._busy = True
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                self._turn.release()
                try:
                    self._encode(batch)
                finally:
                    self._turn.acquire()
                    self._busy = False
                    self._turn.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.vector is not None
        return mine.vector

    def _encode(self, batch: list[_Waiting]) -> None:
        try:
            vectors = encode(self._model, [w.text for w in batch], batch_size=len(batch))
        except Exception as e:  # every waiting request gets the error
            for w in batch:
                w.error = e
            return
        for w, vector in zip(batch, vectors, strict=True):
            w.vector = vector
        if self._size:
            with self._cache_lock:
                for w, vector in zip(batch, vectors, strict=True):
                    self._cache[w.text] = vector
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)


class ServingIndex:
    def __init__(self, settings: Settings, load: Callable[[str], Encoder] | None = None):
        self.settings = settings
        self._load = load or self._load_model
        self._catalog: GenerationCatalog = open_catalog(settings.store)
        self._embedders: dict[str, QueryEmbedder] = {}
        self._current: Serving | None = None
        self._retired: list[_Retired] = []
        self._switch = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""

    # -- following the serving generation --------------------------------------------

    def refresh(self) -> Serving | None:
        """Look up the serving generation; switch to it when it changed."""
        with self._switch:
            try:
                gen = self._catalog.serving()
            except Exception as e:  # the store is down: keep serving what we have
                self.last_error = f"store unreachable: {e}".splitlines()[0]
                raise
            current = self._current
            if gen is None or (
                current and (current.generation, current.name) == (gen.number, gen.name)
            ):
                self.last_error = "" if gen else "nothing indexed yet"
                self._close_retired()
                return current
            embedder = self._embedder(gen.model_id)  # the slow part: before the switch
            store = open_store(self.settings.store, gen.name)
            self._current = Serving(gen.number, gen.name, gen.model_id, store, embedder)
            if current is not None:
                self._retired.append(_Retired(current))
                log.info(
                    "serving generation %s (%s) instead of %s",
                    gen.number,
                    gen.name,
                    current.generation,
                )
            self.last_error = ""
            self._close_retired()
            return self._current

    def start(self) -> None:
        """Refresh now (errors told, not raised), then every refresh_s in the background."""
        try:
            self.refresh()
        except Exception as e:
            log.warning("%s", str(e).splitlines()[0])
        self._thread = threading.Thread(target=self._follow, name="streamrag-serving", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.settings.serve.refresh_s):
            try:
                self.refresh()
            except Exception as e:  # told by readyz; the next round tries again
                log.debug("refresh failed: %s", e)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._switch:
            for s in [self._current, *(r.serving for r in self._retired)]:
                if s is not None:
                    s.store.close()
            self._current, self._retired = None, []
            self._catalog.close()

    def _close_retired(self) -> None:
        now = time.monotonic()
        keep = []
        for r in self._retired:
            if now - r.since > RETIRED_GRACE_S:
                r.serving.store.close()
            else:
                keep.append(r)
        self._retired = keep

    def _embedder(self, model_id: str) -> QueryEmbedder:
        if model_id not in self._embedders:
            model = self._load(model_id)
            self._embedders = {model_id: QueryEmbedder(model, self.settings.serve.query_cache)}
            # (one model held: the one serving; a rollback to another loads it again)
        return self._embedders[model_id]

    def _load_model(self, model_id: str) -> Encoder:
        from streamrag.models import load_configured

        ref = model_for(self.settings, model_id)
        try:
            return load_configured(ref, self.settings.embedding)[0]
        except Exception as e:  # the model is not installed here
            raise UserError(model_missing(self.settings, ref, e)) from None

    # -- reads ---------------------------------------------------------------------

    def current(self) -> Serving:
        current = self._current
        if current is None:
            raise NotReady(self.last_error or "no serving generation yet")
        return current

    def search(self, query: str, k: int, filters: Filters, mode: Mode = "dense") -> SearchResult:
        s = self.current()  # one generation and one model for the whole request
        vector = s.embed(query)
        hits = search_store(s.store, self.settings.serve, query, vector, k, filters, mode)
        return SearchResult(s.generation, s.model_id, mode, hits)

    def document(self, doc_id: str, filters: Filters) -> tuple[Serving, list[StoredChunk]]:
        s = self.current()
        return s, s.store.document(doc_id, filters)
