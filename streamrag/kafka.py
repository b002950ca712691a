"""Kafka plumbing: the pipeline's topics, a producer, and one reader of a topic's log.

Everything but the dead letters is compacted (DESIGN.md invariant 7): the latest record
of every key is kept forever, so the index can always be rebuilt from the log.
:func:`read_log` is the one way the project reads a topic back (replay, verification,
catch-up, tests, the bench): every record between two offsets, or an error; never a
partial log returned quietly.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from streamrag.config import Settings
from streamrag.errors import Unreachable, UserError
from streamrag.limits import DOCUMENT_RECORD_BYTES
from streamrag.quiet import LIBRDKAFKA
from streamrag.security import librdkafka_config


class KafkaUnavailable(Unreachable):
    """Kafka cannot be reached; the message is one line for the user."""


class KafkaRefused(UserError):
    """Kafka refused this client: its credentials, or a broker certificate it does not
    trust. Retrying cannot help; the message is one line for the user."""


# librdkafka's codes for "this client will never get in as it is configured".
_REFUSED = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})
_TRANSPORT = "Broker transport failure"
# How long one metadata request may wait before the error callbacks are served.
METADATA_SLICE_S = 0.5
_DETAIL = re.compile(r"^\S+://\S+: |^\S+/bootstrap: | \(after \d+ms in state \w+\)$")


def _raise_refused(settings: Settings) -> Callable[[KafkaError], None]:
    """An error_cb that raises KafkaRefused on an authentication or TLS failure. The
    client raises it from the next poll(), flush() or consume() (confluent-kafka passes
    a callback's exception on), so a client that cannot get in fails at once, in one line."""

    def error_cb(err: KafkaError) -> None:
        # A connection lost in the middle of the SASL handshake (a client closing while
        # its coordinator connection logs in, a broker restarting) is reported with the
        # same code, but the broker refused nothing: librdkafka reconnects.
        if err.code() in _REFUSED and _TRANSPORT not in err.str():
            what = _DETAIL.sub("", err.str())
            security = settings.kafka.security
            who = f" user {security.username}" if security.sasl else ""
            raise KafkaRefused(f"Kafka at {settings.kafka.bootstrap} refused{who}: {what}")

    return error_cb


def client_config(settings: Settings) -> dict[str, Any]:
    """The config every confluent-kafka client of the project starts from: the brokers,
    kafka.security, and the refusal check above."""
    config = librdkafka_config(settings.kafka.bootstrap, settings.kafka.security)
    config["error_cb"] = _raise_refused(settings)
    return config


def refused_or_unreachable(settings: Settings, e: KafkaException, client: Any) -> Exception:
    """What to raise when ``client`` failed with ``e``: KafkaRefused (raised from here,
    by the error callback) when Kafka refused it, else KafkaUnavailable."""
    client.poll(0.2)  # serves the error callbacks: raises KafkaRefused if refused
    return KafkaUnavailable(f"Kafka at {settings.kafka.bootstrap} is not reachable: {e}")


def list_topics(client: Any, topic: str | None = None, timeout_s: float = 10) -> Any:
    """The cluster's metadata (of ``topic``, else of all topics), asked for in short
    slices with the client's error callbacks served between them: a client that Kafka
    refuses fails at once with KafkaRefused, not after the whole timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            return client.list_topics(topic, timeout=max(min(METADATA_SLICE_S, left), 0.01))
        except KafkaException:
            client.poll(0)  # serves the error callbacks: raises KafkaRefused if refused
            if left <= METADATA_SLICE_S:
                raise


class TopicMissing(KafkaUnavailable):
    """The topic does not exist (yet: Debezium creates its topics with their first event)."""


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name -> config of every topic the pipeline reads or writes."""
    k = settings.kafka
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    # Source records may be large (documents; CDC updates carry the old and the new row):
    # the normalize and chunk steps dead-letter oversized ones with a reason, instead of
    # the broker rejecting them at the door. Derived records stay under 1 MB by the limits.
    large = {**compacted, "max.message.bytes": str(DOCUMENT_RECORD_BYTES.value)}
    topics = {t: compacted for t in (k.chunks_topic, k.embeddings_topic)}
    topics[k.documents_topic] = large
    topics[k.dead_letter_topic] = {"cleanup.policy": "delete", "retention.ms": str(30 * 86400_000)}
    # Debezium creates its topics with the first event; the job must find them at start.
    topics.update({t: large for t in settings.cdc.tables})
    return topics


def _unreachable_window_over(state: RetryCallState) -> bool:
    """Stop retrying once the settings' kafka.unreachable_retry_s have passed."""
    settings: Settings = state.args[0]
    return (state.seconds_since_start or 0) >= settings.kafka.unreachable_retry_s


@retry(
    retry=retry_if_exception_type(KafkaUnavailable),
    wait=wait_exponential(0.5, max=5),
    stop=_unreachable_window_over,
    reraise=True,
)
def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics of topic_configs (idempotent); returns the ones created."""
    admin = AdminClient(client_config(settings), logger=LIBRDKAFKA)
    try:
        existing = set(list_topics(admin, timeout_s=5).topics)
    except KafkaException as e:
        raise refused_or_unreachable(settings, e, admin) from e
    # Replication factor -1: the cluster's default.replication.factor (3 with
    # min.insync.replicas 2 on a 3-broker stack; producers write with acks=all).
    new = [
        NewTopic(name, settings.kafka.partitions, -1, config=config)
        for name, config in topic_configs(settings).items()
        if name not in existing
    ]
    for future in admin.create_topics(new).values() if new else []:
        try:
            future.result()
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    return [t.topic for t in new]


def delete_topics(settings: Settings, topics: list[str]) -> None:
    """Delete ``topics`` where they exist (best effort: e.g. what a run made)."""
    if not topics:
        return
    admin = AdminClient(client_config(settings), logger=LIBRDKAFKA)
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result()


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes | None], ...] = ()


Headers = list[tuple[str, str | bytes | None]]


class RecordProducer:
    """A confluent-kafka producer that waits for every record to be acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(
            {
                **client_config(settings),
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 60000,
                "message.max.bytes": DOCUMENT_RECORD_BYTES.value,
            },
            logger=LIBRDKAFKA,
        )
        self._errors: list[str] = []

    def send(
        self,
        topic: str,
        key: str | bytes | None,
        value: str | bytes | None,
        timestamp_ms: int = 0,
        partition: int = -1,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record; ``timestamp_ms`` 0 lets the client stamp it, ``partition``
        -1 lets the partitioner choose."""
        self._producer.produce(
            topic,
            key=key,
            value=value,
            timestamp=timestamp_ms,
            partition=partition,
            headers=headers or None,
            on_delivery=self._delivered,
        )
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60) -> None:
        if self._producer.flush(timeout_s) > 0:
            raise KafkaUnavailable("records not acknowledged by Kafka in time")
        if self._errors:
            raise KafkaUnavailable(f"Kafka rejected records: {self._errors[0]}")

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))


# A topic created a moment ago may have no partition leader yet: these pass. (An unknown
# topic is not among them: ensure_topics waits until its topics exist.)
# A partition's leader or a group's coordinator moving (a broker restarted): seconds at most.
_MOVING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def _transient(e: BaseException) -> bool:
    if not isinstance(e, KafkaException) or not isinstance(e.args[0], KafkaError):
        return False
    err: KafkaError = e.args[0]
    return err.code() in _MOVING or err.retriable()


# Retried with backoff while a leader or coordinator moves: seconds, so 30 s at most.
_while_moving = retry(
    retry=retry_if_exception(_transient),
    wait=wait_exponential(0.2, max=2),
    stop=stop_after_delay(30),
    reraise=True,
)


def end_offsets_of(consumer: Consumer, topic: str) -> dict[int, int]:
    """Partition -> end offset (high watermark) of ``topic``, retried with backoff while
    its partitions have no leader yet; KafkaUnavailable (one line) when it cannot be read."""
    try:
        return _end_offsets(consumer, topic)
    except KafkaException as e:
        consumer.poll(0.2)  # serves the error callbacks: raises KafkaRefused if refused
        raise KafkaUnavailable(f"cannot read the end offsets of {topic}: {e}") from e


@_while_moving
def _end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    meta = list_topics(consumer, topic, timeout_s=10).topics.get(topic)
    if meta is None or (
        meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    ):
        raise TopicMissing(f"topic {topic} does not exist")
    if meta.error is not None:
        raise KafkaException(meta.error)
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in meta.partitions
    }


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> end offset of ``topic`` now."""
    consumer = _consumer(settings)
    try:
        return end_offsets_of(consumer, topic)
    finally:
        consumer.close()


def read_log(
    settings: Settings,
    topic: str,
    start: dict[int, int] | None = None,
    end: dict[int, int] | None = None,
    timeout_s: float = 300,
) -> Iterator[Message]:
    """Every record of ``topic`` from ``start`` (default: the earliest offsets) up to
    ``end`` (default: the end offsets at call time). TopicMissing when the topic does not
    exist; KafkaUnavailable when the log cannot be read to ``end`` within ``timeout_s``."""
    consumer = _consumer(settings)
    try:
        end = end_offsets_of(consumer, topic) if end is None else end
        start = start or {}
        todo = {p for p, e in end.items() if e > start.get(p, 0)}
        if todo:
            consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"reading {topic} timed out after {timeout_s:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None:  # compaction or control records may leave the end unreachable
                done = consumer.position([TopicPartition(topic, p) for p in todo])
                todo -= {tp.partition for tp in done if tp.offset >= end[tp.partition]}
                continue
            p, offset = msg.partition(), msg.offset()
            if msg.error() or p is None or offset is None:
                continue
            if offset < end[p]:
                yield Message(
                    topic,
                    p,
                    offset,
                    msg.key(),
                    msg.value(),
                    msg.timestamp()[1],
                    _headers_of(msg),
                )
            if offset + 1 >= end[p]:
                todo.discard(p)
    finally:
        consumer.close()


def _headers_of(msg: KafkaMessage) -> tuple[tuple[str, bytes | None], ...]:
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, v.encode() if isinstance(v, str) else v) for k, v in pairs)


def tail(settings: Settings, topic: str, count: int, timeout_s: float = 30) -> list[Message]:
    """The last ``count`` records of each partition of ``topic``, in offset order per
    partition (partitions one after the other)."""
    consumer = _consumer(settings)
    try:
        end = end_offsets_of(consumer, topic)
    finally:
        consumer.close()
    start = {p: max(0, e - count) for p, e in end.items()}
    return list(read_log(settings, topic, start, end, timeout_s))


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            **client_config(settings),
            "enable.auto.commit": False,
            "group.id": "streamrag-log-reader",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        },
        logger=LIBRDKAFKA,
    )


def send_all(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[str, str | bytes | None]],
    timestamp_ms: int = 0,
) -> int:
    producer = RecordProducer(settings)
    n = 0
    for key, value in records:
        producer.send(topic, key, value, timestamp_ms)
        n += 1
    producer.flush()
    return n


def pending_records(
    settings: Settings, topic: str, group_id: str, ends: dict[int, int] | None = None
) -> int:
    """Records of ``topic`` below its end offsets (``ends``, default: now) that consumer
    group ``group_id`` has not committed yet (from the earliest offset where it has
    committed nothing); 0 when the topic is missing (or ``ends`` is empty: it was)."""
    if ends == {}:
        return 0
    try:
        return sum(partition_lag(settings, topic, group_id, ends).values())
    except TopicMissing:
        return 0


def commit_at_least(
    settings: Settings, group_id: str, topic: str, offsets: dict[int, int]
) -> dict[int, int]:
    """Move ``group_id``'s committed offsets of ``topic`` forward to ``offsets`` where they
    are behind (never back); the partitions moved, with their new offsets."""
    if not offsets:
        return {}
    group = _group_consumer(settings, group_id)
    try:
        committed = _committed(group, topic, offsets)
        behind = {
            tp.partition: offsets[tp.partition]
            for tp in committed
            if offsets[tp.partition] > max(tp.offset, 0)  # (nothing committed: negative)
        }
        if behind:
            moved = [TopicPartition(topic, p, o) for p, o in behind.items()]
            group.commit(offsets=moved, asynchronous=False)
        return behind
    except KafkaException as e:
        raise refused_or_unreachable(settings, e, group) from e
    finally:
        group.close()


@_while_moving
def _committed(group: Consumer, topic: str, partitions: Iterable[int]) -> list[TopicPartition]:
    """``group``'s committed offsets of ``topic``'s ``partitions``, retried with backoff
    while its coordinator moves (a broker restarted)."""
    return group.committed([TopicPartition(topic, p) for p in partitions], timeout=10)


def _group_consumer(settings: Settings, group_id: str) -> Consumer:
    """A client of ``group_id`` that reads and commits its offsets, never subscribes."""
    return Consumer(
        {**client_config(settings), "group.id": group_id, "enable.auto.commit": False},
        logger=LIBRDKAFKA,
    )


def partition_lag(
    settings: Settings, topic: str, group_id: str, ends: dict[int, int] | None = None
) -> dict[int, int]:
    """Per partition of ``topic``: its end offset (``ends``, default: now) minus what
    ``group_id`` committed (all of the partition's records while the group has committed
    nothing there). TopicMissing when there is no such topic."""
    consumer = _consumer(settings)
    try:
        ends = end_offsets_of(consumer, topic) if ends is None else ends
        group = _group_consumer(settings, group_id)
        try:
            committed = _committed(group, topic, ends)
        finally:
            group.close()
        lag = {}
        for tp in committed:
            start = tp.offset
            if start < 0:  # nothing committed: the job starts at the earliest offset
                start = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), 10)[0]
            lag[tp.partition] = max(ends[tp.partition] - start, 0)
        return lag
    except KafkaException as e:
        raise KafkaUnavailable(f"cannot read the offsets of {topic}: {e}") from e
    finally:
        consumer.close()
