"""Embedding stage logic: ChunkRecords -> EmbeddingRecords, batched, with a vector cache.

A chunk whose (model id, content hash) was embedded before reuses that vector
(``embedded=False``): from this worker's cache, or from ``known`` vectors the caller found
in the index (so a restarted job does not re-embed what is already indexed). Only the
rest go to the model, in one call, longest first: consecutive inputs of similar length
make forward passes with little padding (sentence-transformers sorts again inside a call;
the hashing model does not care). The chunks may come from many documents
(jobs.embedding.batching). Trim markers pass through untouched.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from streamrag.models import Encoder, encode
from streamrag.records import ChunkRecord, EmbeddingRecord, EmbedHeading, model_input


class Embedder:
    def __init__(
        self,
        encoder: Encoder,
        model_id: str,
        batch_size: int = 32,
        cache_entries: int = 50_000,
        embed_heading: EmbedHeading = "none",
    ) -> None:
        self._encoder = encoder
        self.model_id = model_id
        self._batch_size = batch_size
        # float32 arrays (1.5 KB for 384 dimensions, where a list of Python floats takes
        # 12 KB): every vector here is float32 already (the model's output, the stores'
        # columns), so nothing is rounded.
        self._cache: OrderedDict[str, array[float]] = OrderedDict()
        self._cache_entries = cache_entries
        self._embed_heading: EmbedHeading = embed_heading
        self.embedded = 0
        self.reused = 0

    def embed(
        self, chunks: Sequence[ChunkRecord], known: Mapping[str, list[float]] | None = None
    ) -> list[EmbeddingRecord]:
        """EmbeddingRecords for ``chunks``, in the same order; ``known`` maps content
        hashes to vectors of this model."""
        if known:
            self._remember(dict(known))
        missing = sorted(
            {
                c.content_hash: model_input(c.text, c.heading_path, self._embed_heading)
                for c in chunks
                if c.op == "upsert" and c.content_hash not in self._cache
            }.items(),
            key=lambda item: (-len(item[1]), item[0]),
        )
        fresh = dict(
            zip([h for h, _ in missing], self._encode([t for _, t in missing]), strict=True)
        )
        out = []
        for chunk in chunks:
            if chunk.op != "upsert":
                out.append(EmbeddingRecord(chunk=chunk, model_id=self.model_id))
                continue
            vector = fresh.get(chunk.content_hash)
            embedded = vector is not None
            if vector is None:
                vector = self._cache[chunk.content_hash].tolist()
                self._cache.move_to_end(chunk.content_hash)
            self.embedded += embedded
            self.reused += not embedded
            out.append(EmbeddingRecord(chunk, self.model_id, vector, embedded=embedded))
        self._remember(fresh)
        return out

    def _encode(self, texts: list[str]) -> list[list[float]]:
        return encode(self._encoder, texts, self._batch_size)

    def _remember(self, fresh: dict[str, list[float]]) -> None:
        self._cache.update((h, array("f", vector)) for h, vector in fresh.items())
        while len(self._cache) > max(self._cache_entries, len(fresh)):
            self._cache.popitem(last=False)
