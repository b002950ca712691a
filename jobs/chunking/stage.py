"""Chunk stage logic: DocumentEvent + state -> ChunkRecords (Flink shell: jobs.pipeline).

Clean (jobs.chunking.cleaning), chunk (jobs.chunking.chunker), keep the chunks worth
indexing, then diff with the document's state (jobs.chunking.planner). A chunk that the
model reads as (almost) only unknown word pieces (a 200,000-character "word", a run of
symbols the vocabulary lacks) would embed to the same vector as every other such chunk,
noise that no search finds: it is left out, and a document with nothing else is a bad
record. Metadata found in the document (Markdown front matter) joins the record's own,
which wins on a clash, and is held to the same limits.

Every chunk records the *chunker id*: a fingerprint of the chunking configuration and
the rules' version. Chunks of different ids come from different rules; rolling out new
rules is a full replay into a new generation (README: "Rolling out new chunking rules").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace

from jobs.chunking.chunker import Chunker, Span, get_encoding
from jobs.chunking.cleaning import clean
from jobs.chunking.planner import ChunkPlan, DocState, is_stale, plan_document
from streamrag.config import ChunkingConfig
from streamrag.errors import BadRecord
from streamrag.limits import CHUNK_TEXT_BYTES, check_metadata, clean_title, exceeded, utf8_size
from streamrag.models import ModelRef, ModelTokenizer, tokenizer_model
from streamrag.records import DocumentEvent, model_input

log = logging.getLogger(__name__)

# Word pieces of [CLS] and [SEP] that the model adds to every input.
SPECIAL_TOKENS = 2
# Bump when cleaning or chunking rules change what chunks they make from the same input.
RULES_VERSION = "2026-11-30.blocks"


class ChunkStage:
    """Cleans, chunks and diffs one document event against the document's state."""

    def __init__(
        self,
        config: ChunkingConfig,
        fits_model: Callable[[list[str]], list[bool]] | None = None,
        model_max_tokens: int | None = None,
        unknown_shares: Callable[[list[str]], list[float]] | None = None,
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
        self.config = config
        self._unknown_shares = unknown_shares or (lambda texts: [0.0] * len(texts))
        fits = fits_model or (lambda texts: [True] * len(texts))
        embed_heading = config.embed_heading
        self.chunker = Chunker(
            get_encoding(config.encoding),
            max_tokens,
            config.overlap_tokens,
            lambda chunks: fits([model_input(t, path, embed_heading) for t, path in chunks]),
            config.min_section_tokens,
        )
        self.chunker_id = chunker_id(config, max_tokens)

    @classmethod
    def for_model(cls, config: ChunkingConfig, model: ModelRef) -> ChunkStage:
        """The stage for chunks that ``model`` embeds: its tokenizer is the hard limit.
        tiktoken tokens are rarely smaller than word pieces, so the budget is clamped to
        the model's length less its special tokens."""
        tokenizer = ModelTokenizer(tokenizer_model(model))
        return cls(
            config,
            tokenizer.fit_all,
            tokenizer.max_length - SPECIAL_TOKENS,
            tokenizer.unknown_shares,
        )

    def prepare(self, event: DocumentEvent) -> tuple[DocumentEvent, list[Span]]:
        """The event with the metadata found in its document, and its chunks worth
        indexing."""
        if event.deleted or event.text is None:
            return event, []
        if len(event.text) > self.config.max_document_chars:
            raise BadRecord(
                f"document has {len(event.text)} characters, more than "
                f"chunking.max_document_chars={self.config.max_document_chars}"
            )
        cleaned = clean(event.text, event.content_type)
        if not cleaned.text:
            raise BadRecord("document has no text left after cleaning")
        if cleaned.metadata:
            event = _with_found_metadata(event, cleaned.metadata)
        spans = self.chunker.split(cleaned)
        shares = self._unknown_shares([s.text for s in spans])
        kept = [
            s
            for s, share in zip(spans, shares, strict=True)
            if share < self.config.max_unknown_share
        ]
        if not kept:
            raise BadRecord(
                f"document has no indexable text: its {len(spans)} chunks are (almost) only"
                " word pieces the model does not know (chunking.max_unknown_share="
                f"{self.config.max_unknown_share})"
            )
        for span in kept:
            size = utf8_size(span.text, "chunk text")
            if size > CHUNK_TEXT_BYTES.value:  # the token budget keeps chunks far smaller
                raise exceeded(CHUNK_TEXT_BYTES, f"a chunk has {size} bytes")
        return event, kept

    def spans(self, event: DocumentEvent) -> list[Span]:
        """The chunks of the event's document that are worth indexing."""
        return self.prepare(event)[1]

    def apply(self, state: DocState | None, event: DocumentEvent) -> ChunkPlan:
        """The plan for ``event``; stale events are not even cleaned or chunked."""
        if is_stale(state, event):
            return ChunkPlan(state=state, records=[], stale=True)
        event, spans = self.prepare(event)
        return plan_document(state, event, spans, self.chunker_id, self.config.embed_heading)


def chunker_id(config: ChunkingConfig, max_tokens: int) -> str:
    """A fingerprint of what decides the chunks of a document: the rules' version and the
    settings (the budget after clamping to the model)."""
    settings = {**config.model_dump(mode="json"), "max_tokens": max_tokens}
    settings.pop("max_document_chars", None)  # decides which documents, not their chunks
    data = json.dumps([RULES_VERSION, settings], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:12]


def _with_found_metadata(event: DocumentEvent, found: dict[str, object]) -> DocumentEvent:
    metadata = check_metadata({**found, **event.metadata})
    title = event.title
    if title is None and isinstance(found.get("title"), str):
        title = clean_title(str(found["title"]))
    return replace(event, metadata=metadata, title=title)
