"""Kafka plumbing for the CLI and tests: topics, a producer, reading a topic to its end."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from streamrag.config import Settings

MAX_MESSAGE_BYTES = 16 * 2**20


class KafkaUnavailable(Exception):
    """Kafka cannot be reached; the message is one line for the user."""


class TopicMissing(KafkaUnavailable):
    """The topic does not exist (yet: Debezium creates its topics with their first event)."""


# The log is the source of truth (DESIGN.md invariant 7): everything but the dead
# letters is compacted, so the latest record of every key is kept forever.
def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    k = settings.kafka
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    topics = {t: compacted for t in (k.chunks_topic, k.embeddings_topic)}
    # Documents may be large; the chunk stage sends oversized ones to the dead letters
    # with a reason instead of the broker rejecting them at the door.
    topics[k.documents_topic] = {**compacted, "max.message.bytes": str(MAX_MESSAGE_BYTES)}
    topics[k.dead_letter_topic] = {"cleanup.policy": "delete", "retention.ms": str(30 * 86400_000)}
    return topics


@retry(retry=retry_if_exception_type(KafkaUnavailable), wait=wait_exponential(0.5, max=5),
       stop=stop_after_delay(30), reraise=True)
def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics (idempotent); returns the ones created."""
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    try:
        existing = set(admin.list_topics(timeout=5).topics)
    except KafkaException as e:
        raise KafkaUnavailable(f"Kafka at {settings.kafka.bootstrap} is not reachable: {e}") from e
    new = [NewTopic(name, settings.kafka.partitions, 1, config=config)
           for name, config in topic_configs(settings).items() if name not in existing]
    for future in (admin.create_topics(new).values() if new else []):
        try:
            future.result()
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    return [t.topic for t in new]


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class RecordProducer:
    """A confluent-kafka producer that waits for every record to be acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer({
            "bootstrap.servers": settings.kafka.bootstrap, "enable.idempotence": True,
            "linger.ms": 5, "message.timeout.ms": 60000, "message.max.bytes": MAX_MESSAGE_BYTES,
        })
        self._errors: list[str] = []

    def send(self, topic: str, key: str | bytes | None, value: str | bytes | None,
             timestamp_ms: int = 0) -> None:
        """Queue one record; ``timestamp_ms`` 0 lets the client stamp it."""
        self._producer.produce(topic, key=key, value=value, timestamp=timestamp_ms,
                               on_delivery=self._delivered)
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
_LEADER_ELECTION = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION,
                              KafkaError.LEADER_NOT_AVAILABLE})


def _transient(e: BaseException) -> bool:
    if not isinstance(e, KafkaException) or not isinstance(e.args[0], KafkaError):
        return False
    err: KafkaError = e.args[0]
    return err.code() in _LEADER_ELECTION or err.retriable()


def end_offsets_of(consumer: Consumer, topic: str) -> dict[int, int]:
    """Partition -> end offset (high watermark) of ``topic``, retried with backoff while
    its partitions have no leader yet; KafkaUnavailable (one line) when it cannot be read."""
    try:
        return _end_offsets(consumer, topic)
    except KafkaException as e:
        raise KafkaUnavailable(f"cannot read the end offsets of {topic}: {e}") from e


@retry(retry=retry_if_exception(_transient), wait=wait_exponential(0.2, max=2),
       stop=stop_after_delay(30), reraise=True)
def _end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or (meta.error is not None
                        and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise TopicMissing(f"topic {topic} does not exist")
    if meta.error is not None:
        raise KafkaException(meta.error)
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions}


def read_topic(settings: Settings, topic: str, timeout_s: float = 30) -> Iterator[Message]:
    """Every record of ``topic`` from the earliest offset up to the end at call time."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap,
                         "group.id": "streamrag-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        ends = end_offsets_of(consumer, topic)
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            if msg.offset() < ends[msg.partition()]:
                yield Message(topic, msg.partition(), msg.offset(), msg.key(), msg.value(),
                              msg.timestamp()[1])
            if msg.offset() + 1 >= ends[msg.partition()]:
                todo.discard(msg.partition())
    finally:
        consumer.close()


def send_all(settings: Settings, topic: str, records: Iterable[tuple[str, str | bytes | None]],
             timestamp_ms: int = 0) -> int:
    producer = RecordProducer(settings)
    n = 0
    for key, value in records:
        producer.send(topic, key, value, timestamp_ms)
        n += 1
    producer.flush()
    return n
