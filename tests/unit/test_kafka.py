"""Which Kafka errors are worth a retry: a new topic's leader election passes, the rest not
(a missing topic is said at once: tests/integration/test_stack.py)."""

from confluent_kafka import KafkaError, KafkaException

from streamrag.kafka import _transient


def test_a_partition_without_a_leader_yet_is_retried():
    for code in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE):
        assert _transient(KafkaException(KafkaError(code)))


def test_other_errors_are_not_retried():
    assert not _transient(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not _transient(KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))
    assert not _transient(ValueError("not Kafka"))
