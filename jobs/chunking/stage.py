"""Chunk stage logic: DocumentEvent + state -> ChunkRecords (Flink shell: jobs.pipeline)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from jobs.chunking.chunker import Chunker, Span, get_encoding
from jobs.chunking.cleaning import clean
from jobs.chunking.documents import BadRecord
from jobs.chunking.planner import ChunkPlan, DocState, is_stale, plan_document
from streamrag.config import ChunkingConfig
from streamrag.records import DocumentEvent

log = logging.getLogger(__name__)


class ChunkStage:
    """Cleans, chunks and diffs one document event against the document's state."""

    def __init__(
        self,
        config: ChunkingConfig,
        fits_model: Callable[[str], bool] | None = None,
        model_max_tokens: int | None = None,
    ) -> None:
        max_tokens = config.max_tokens
        if model_max_tokens is not None and max_tokens > model_max_tokens:
            log.warning(
                "chunking.max_tokens=%d exceeds the model's %d tokens: clamped to %d",
                max_tokens, model_max_tokens, model_max_tokens,
            )
            max_tokens = model_max_tokens
        self.max_document_chars = config.max_document_chars
        self.chunker = Chunker(
            get_encoding(config.encoding), max_tokens, config.overlap_tokens, fits_model
        )

    def spans(self, event: DocumentEvent) -> list[Span]:
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
        return self.chunker.split(cleaned)

    def apply(self, state: DocState | None, event: DocumentEvent) -> ChunkPlan:
        """The plan for ``event``; stale events are not even cleaned or chunked."""
        if is_stale(state, event):
            return ChunkPlan(state=state, records=[], stale=True)
        return plan_document(state, event, self.spans(event))
