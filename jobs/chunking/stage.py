"""Chunk stage logic: DocumentEvent + state -> ChunkRecords (Flink shell: jobs.pipeline).

Clean, chunk, then keep the chunks worth indexing: a chunk that the model reads as
(almost) only unknown word pieces (a 200,000-character "word", a run of symbols the
vocabulary lacks) would embed to the same vector as every other such chunk, noise that
no search finds; it is left out, and a document with nothing else is a bad record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from jobs.chunking.chunker import Chunker, Span, get_encoding
from jobs.chunking.cleaning import clean
from jobs.chunking.planner import ChunkPlan, DocState, is_stale, plan_document
from streamrag.config import ChunkingConfig
from streamrag.errors import BadRecord
from streamrag.limits import CHUNK_TEXT_BYTES, exceeded, utf8_size
from streamrag.models import ModelRef, ModelTokenizer
from streamrag.records import DocumentEvent

log = logging.getLogger(__name__)

# Word pieces of [CLS] and [SEP] that the model adds to every input.
SPECIAL_TOKENS = 2


class ChunkStage:
    """Cleans, chunks and diffs one document event against the document's state."""

    def __init__(
        self,
        config: ChunkingConfig,
        fits_model: Callable[[str], bool] | None = None,
        model_max_tokens: int | None = None,
        unknown_share: Callable[[str], float] | None = None,
    ) -> None:
        max_tokens = config.max_tokens
        if model_max_tokens is not None and max_tokens > model_max_tokens:
            log.warning(
                "chunking.max_tokens=%d exceeds the model's %d tokens: clamped to %d",
                max_tokens,
                model_max_tokens,
                model_max_tokens,
            )
            max_tokens = model_max_tokens
        self.max_document_chars = config.max_document_chars
        self.max_unknown_share = config.max_unknown_share
        self._unknown_share = unknown_share or (lambda _text: 0.0)
        self.chunker = Chunker(
            get_encoding(config.encoding), max_tokens, config.overlap_tokens, fits_model
        )

    @classmethod
    def for_model(cls, config: ChunkingConfig, model: ModelRef) -> ChunkStage:
        """The stage for chunks that ``model`` embeds: its tokenizer is the hard limit.
        tiktoken tokens are rarely smaller than word pieces, so the budget is clamped to
        the model's length less its special tokens."""
        tokenizer = ModelTokenizer(model)
        return cls(
            config, tokenizer.fits, tokenizer.max_length - SPECIAL_TOKENS, tokenizer.unknown_share
        )

    def spans(self, event: DocumentEvent) -> list[Span]:
        """The chunks of the event's cleaned text that are worth indexing."""
        if event.deleted or event.text is None:
            return []
        if len(event.text) > self.max_document_chars:
            raise BadRecord(
                f"document has {len(event.text)} characters, more than "
                f"chunking.max_document_chars={self.max_document_chars}"
            )
        cleaned = clean(event.text, event.content_type)
        if not cleaned:
            raise BadRecord("document has no text left after cleaning")
        spans = self.chunker.split(cleaned)
        kept = [s for s in spans if self._unknown_share(s.text) < self.max_unknown_share]
        if not kept:
            raise BadRecord(
                f"document has no indexable text: its {len(spans)} chunks are (almost) only"
                " word pieces the model does not know (chunking.max_unknown_share="
                f"{self.max_unknown_share})"
            )
        for span in kept:
            size = utf8_size(span.text, "chunk text")
            if size > CHUNK_TEXT_BYTES.value:  # the token budget keeps chunks far smaller
                raise exceeded(CHUNK_TEXT_BYTES, f"a chunk has {size} bytes")
        return kept

    def apply(self, state: DocState | None, event: DocumentEvent) -> ChunkPlan:
        """The plan for ``event``; stale events are not even cleaned or chunked."""
        if is_stale(state, event):
            return ChunkPlan(state=state, records=[], stale=True)
        return plan_document(state, event, self.spans(event))
