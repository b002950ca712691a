"""Batches across documents in front of the model: what a batch holds and where it goes.

The chunk stage emits one *event batch* per document event (its chunk records, in order:
streamrag.records.EventBatch).
The embed stage gathers event batches of many documents, in Flink keyed state, until
``embedding.max_batch_chunks`` chunks wait or ``embedding.max_wait_ms`` passed since the
first of them; then it embeds them all in one model call (sorted by length, so batches
carry little padding) and hands them to the index stage together. Because the waiting
batches are Flink state, a checkpoint taken while they wait holds them, and a restore
brings them back with their timer (jobs/pipeline.py, EmbedChunks).

Which batch an event waits in: every event of one document goes to the same *batch key*
(so a document's events stay in order), and the keys are chosen so that each parallel
instance of the embed stage owns exactly one (:func:`batch_keys`): batches are as large as
the traffic allows and no instance sits idle.
"""

from __future__ import annotations

import zlib

# The job's number of key groups, set explicitly (streamrag.flink.create_context) so that
# the key -> instance map below holds.
from streamrag.flink import MAX_PARALLELISM

ROW_HASH_OFFSET = 62  # org.apache.flink.types.Row.of(k).hashCode() - k, for an int k


def batch_key(doc_id: str, parallelism: int) -> int:
    """The batch key of a document's events (stable across runs and machines)."""
    keys = batch_keys(parallelism)
    return keys[zlib.crc32(doc_id.encode("utf-8", "surrogatepass")) % len(keys)]


def batch_keys(parallelism: int) -> list[int]:
    """One integer key per parallel instance: the smallest int that Flink routes to it."""
    found: dict[int, int] = {}
    key = 0
    while len(found) < parallelism:
        found.setdefault(instance_of(key, parallelism), key)
        key += 1
    return [found[i] for i in range(parallelism)]


def instance_of(key: int, parallelism: int) -> int:
    """The parallel instance that PyFlink's key_by sends an int key to: key group
    murmur(hashCode) % max parallelism, then the instance owning that key-group range
    (org.apache.flink.runtime.state.KeyGroupRangeAssignment). PyFlink keys by a one-field
    Row (KeyByKeySelector), whose hashCode is the int's value + 62 (RowKind INSERT)."""
    group = _murmur(key + ROW_HASH_OFFSET) % MAX_PARALLELISM
    return group * parallelism // MAX_PARALLELISM


def _murmur(code: int) -> int:
    """Flink's MathUtils.murmurHash(int), in 32-bit two's complement arithmetic."""

    def i32(x: int) -> int:
        x &= 0xFFFFFFFF
        return x - (1 << 32) if x & 0x80000000 else x

    def rotl(x: int, r: int) -> int:
        x &= 0xFFFFFFFF
        return i32((x << r) | (x >> (32 - r)))

    def ushr(x: int, r: int) -> int:
        return (x & 0xFFFFFFFF) >> r

    code = i32(code * 0xCC9E2D51)
    code = rotl(code, 15)
    code = i32(code * 0x1B873593)
    code = rotl(code, 13)
    code = i32(code * 5 + 0xE6546B64)
    code = i32(code ^ 4)
    # fmix (bitMix)
    code = i32(code ^ ushr(code, 16))
    code = i32(code * 0x85EBCA6B)
    code = i32(code ^ ushr(code, 13))
    code = i32(code * 0xC2B2AE35)
    code = i32(code ^ ushr(code, 16))
    if code >= 0:
        return code
    return -code if code != -(1 << 31) else 0
