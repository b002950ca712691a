"""What an index generation must hold, as a function of the embeddings log, and the
check that a generation holds exactly that (the replay verifies before it swaps).

The embeddings topic is the index's source of truth (DESIGN.md invariant 7): feed its
records in log order to :class:`LogState`, with the rules of jobs.indexing.apply, and
:meth:`LogState.expected` is the index a clean build gives; :func:`verify` compares a
store with it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from jobs.indexing.apply import Latest
from streamrag.errors import BadRecord, UserError
from streamrag.records import ChunkRecord, EmbeddingRecord
from streamrag.stores.base import VectorStore


class VerificationError(UserError):
    """A new generation differs from the log; the message says how."""


def parse_embedding(value: bytes | str | None) -> EmbeddingRecord | None:
    """An embeddings-topic value; None for a tombstone, BadRecord for anything unreadable."""
    if value is None:
        return None
    try:
        return EmbeddingRecord.from_dict(json.loads(value))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadRecord(f"not an embedding record: {type(e).__name__}: {e}"[:300]) from e


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Expected:
    """What the log says a generation holds for one chunk."""

    chunk_id: str
    doc_id: str
    version: int
    position: int
    content_hash: str
    text_digest: str
    model_id: str
    vector: npt.NDArray[np.float32]


class LogState:
    """The final state of an embeddings log. Feed records in log order; unreadable records
    are counted and left out, as the replay job leaves them out."""

    def __init__(self) -> None:
        self._latest: Latest[Expected] = Latest()
        self.records = 0
        self.unreadable = 0

    def add_value(self, value: bytes | str | None) -> None:
        """Add one record value as read from the topic."""
        try:
            self.add(parse_embedding(value))
        except BadRecord:
            self.records += 1
            self.unreadable += 1

    def add(self, record: EmbeddingRecord | None) -> None:
        self.records += 1
        if record is None:
            return
        c = record.chunk
        if c.op == "trim":
            self._latest.trim(c)
        elif record.vector is not None:
            self._latest.upsert(
                c,
                Expected(
                    c.chunk_id,
                    c.doc_id,
                    c.version,
                    c.position,
                    c.content_hash,
                    text_digest(c.text),
                    record.model_id,
                    np.asarray(record.vector, np.float32),
                ),
            )

    def trims(self) -> list[ChunkRecord]:
        """The latest trim of each document seen so far."""
        return self._latest.trims()

    @property
    def upserts(self) -> int:
        return self._latest.upsert_count

    def expected(self) -> dict[str, Expected]:
        return self._latest.final()

    def model_ids(self) -> set[str]:
        return {e.model_id for e in self.expected().values()}

    def dim(self) -> int | None:
        return next((len(e.vector) for e in self.expected().values()), None)


def expected_state(records: Iterable[EmbeddingRecord | None]) -> dict[str, Expected]:
    """The chunks a generation built from ``records`` (in log order) must hold."""
    state = LogState()
    for record in records:
        state.add(record)
    return state.expected()


# How many hits a verification's search with a stored vector asks for, and the cosine
# similarity from which its first hit counts as a near-duplicate of the chunk searched
# for (see verify).
PARITY_WIDE_K = 1000
NEAR_DUPLICATE_SCORE = 0.95


def verify(
    store: VectorStore, expected: dict[str, Expected], sample: int = 50, parity: int = 3
) -> None:
    """Raise VerificationError unless ``store`` holds exactly ``expected``: the same ids,
    per-document counts, versions, positions and texts, a sample of vectors within 1e-5,
    and searches with stored vectors that find those chunks (or, the index being
    approximate, a near-duplicate first) among the PARITY_WIDE_K nearest."""
    store.flush()
    ids = set(store.all_ids())
    missing, extra = sorted(expected.keys() - ids), sorted(ids - expected.keys())
    if missing or extra:
        raise VerificationError(
            f"{len(ids)} chunks indexed, {len(expected)} in the log: {len(missing)} missing"
            f"{_eg(missing)}, {len(extra)} not in the log{_eg(extra)}"
        )
    ordered = sorted(ids)
    stored = [c for i in range(0, len(ordered), 500) for c in store.get(ordered[i : i + 500])]
    want, got = Counter(e.doc_id for e in expected.values()), Counter(c.doc_id for c in stored)
    for doc in sorted(want.keys() | got.keys()):
        if want[doc] != got[doc]:
            raise VerificationError(f"document {doc}: {got[doc]} chunks, the log has {want[doc]}")
    for c in stored:
        e = expected[c.chunk_id]
        for what, have, should in [
            ("version", c.version, e.version),
            ("position", c.position, e.position),
            ("content hash", c.content_hash, e.content_hash),
            ("text", text_digest(c.text), e.text_digest),
            ("model", c.model_id, e.model_id),
        ]:
            if have != should:
                raise VerificationError(
                    f"chunk {c.chunk_id} of {c.doc_id}: {what} differs from the log"
                )
    picks = sorted(expected)[:: max(1, len(expected) // sample)][:sample]
    for c in store.get(picks, with_vectors=True):
        diff = float(np.max(np.abs(np.asarray(c.vector, np.float32) - expected[c.chunk_id].vector)))
        if diff > 1e-5:
            raise VerificationError(
                f"chunk {c.chunk_id}: vector differs from the log by {diff:.2g}"
            )
    for chunk_id in picks[:parity]:
        # The index is approximate: pgvector's HNSW (ef_search 40) missed a stored
        # vector's own chunk among 30,000 random vectors in a search for 5; among 200,000
        # chunks whose paragraphs recur (hundreds of neighbours above 0.95, the nearest at
        # 0.97 to 0.99) one was not found even in a search for 1,000, the graph reaching
        # its near-duplicates instead. So the search asks for PARITY_WIDE_K hits
        # (pgvector's ef_search 1,000): they must hold the chunk (its own vector scores
        # highest, so found is found first, ties aside), or begin with a near-duplicate of
        # it. An index built from other vectors, or that answers with anything else, fails.
        hits = store.search(expected[chunk_id].vector.tolist(), PARITY_WIDE_K)
        if chunk_id in {h.chunk.chunk_id for h in hits}:
            continue
        if not hits or hits[0].score < NEAR_DUPLICATE_SCORE:
            first = f"{hits[0].chunk.chunk_id} first, score {hits[0].score:.3f}" if hits else "none"
            raise VerificationError(
                f"a search with chunk {chunk_id}'s vector does not find it among the"
                f" {PARITY_WIDE_K} nearest, nor a near-duplicate of it (found {first})"
            )


def _eg(ids: list[str]) -> str:
    return f" (e.g. {ids[0]})" if ids else ""
