"""Which Kafka errors are worth a retry: a new topic's leader election or a group's
coordinator moving passes, the rest not
(a missing topic is said at once: tests/integration/test_stack.py); which errors mean Kafka
refused the client (tests/integration/test_secure.py shows them from a real broker)."""

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamrag.config import Settings
from streamrag.kafka import KafkaRefused, _raise_refused, _transient


def test_a_partition_without_a_leader_yet_is_retried():
    for code in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE):
        assert _transient(KafkaException(KafkaError(code)))


def test_a_group_coordinator_moving_after_a_broker_restart_is_retried():
    # Seen in CI: committed() right after the fault suite restarted a broker.
    moving = (
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    )
    for code in moving:
        assert _transient(KafkaException(KafkaError(code)))


def test_other_errors_are_not_retried():
    assert not _transient(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not _transient(KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))
    assert not _transient(ValueError("not Kafka"))


def test_a_refused_login_or_certificate_raises_one_line():
    error_cb = _raise_refused(Settings())
    refusals = [
        (
            KafkaError._AUTHENTICATION,
            "sasl_ssl://127.0.0.1:39092/bootstrap: SASL authentication"
            " error: Authentication failed during authentication due to invalid credentials with"
            " SASL mechanism SCRAM-SHA-512 (after 5ms in state AUTH_REQ)",
        ),
        (
            KafkaError._SSL,
            "ssl://127.0.0.1:39093/bootstrap: SSL handshake failed: certificate"
            " verify failed (after 3ms in state SSL_HANDSHAKE)",
        ),
    ]
    for code, text in refusals:
        with pytest.raises(KafkaRefused) as err:
            error_cb(KafkaError(code, text))
        assert "\n" not in str(err.value) and "after" not in str(err.value)


def test_a_connection_lost_during_the_login_is_not_a_refusal():
    # Seen in CI: a consumer closing while its coordinator connection was logging in.
    error_cb = _raise_refused(Settings())
    error_cb(
        KafkaError(
            KafkaError._AUTHENTICATION,
            "GroupCoordinator: SASL SCRAM-SHA-512 mechanism handshake failed: Local: Broker"
            " transport failure: broker's supported mechanisms: (n/a) (after 0ms in state DOWN)",
        )
    )
    error_cb(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/bootstrap: Connection refused"))
