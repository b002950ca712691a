"""What a failure means for the record that met it: terminal, transient or unknown.

Every operator of the jobs sorts the errors it meets with :func:`classify` (DESIGN.md
invariant 5):

- **terminal**: a property of the record (a value no store column can hold, text a
  coder cannot carry, a document with nothing to index). Retrying cannot help: the
  record goes to the dead-letter topic with the reason, and the job goes on.
- **transient**: a property of the environment (a store or broker down, a timeout).
  It is retried; past the retries the task fails and Flink restarts it from the last
  checkpoint. A valid record is never dead-lettered for it.
- **unknown**: anything else. Treated as transient (when unsure, retry), but counted per
  record across restarts (:mod:`streamrag.boundary`): a record that fails the same way
  several restarts in a row is dead-lettered instead of blocking its partition forever.

The tables below are the whole classification: explicit types, never message text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

Disposition = Literal["terminal", "transient", "unknown"]


class UserError(Exception):
    """An expected failure (bad arguments or config, a service that is down); the message
    is one line for the user, which the CLI prints without a traceback."""


class Unreachable(UserError):
    """A service (Kafka, a store, Kafka Connect) that does not answer: the CLI adds how to
    start the local stack."""


class BadRecord(ValueError):
    """A record that cannot be used as it is; ``str(e)`` is the reason for the dead letters."""


class LimitExceeded(BadRecord):
    """A record that breaks one of the declared limits (:mod:`streamrag.limits`)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(f"{message} (limit {limit})")
        self.limit = limit


class TransientError(Exception):
    """A failure of the environment, raised by our own code (e.g. a store lookup gave up)."""


def _terminal_types() -> tuple[type[BaseException], ...]:
    import psycopg
    from pymilvus import exceptions as milvus

    return (
        BadRecord,
        UnicodeError,  # a coder that cannot carry the text (lone surrogates, bad bytes)
        RecursionError,  # pathological nesting
        # PostgreSQL: the value itself is wrong (data exception, class 22; program limit
        # exceeded, class 54: e.g. a key too large for a btree index row) or the client
        # refuses it (NUL in text).
        psycopg.errors.DataError,
        psycopg.errors.ProgramLimitExceeded,
        psycopg.errors.IntegrityError,
        # Milvus: the client or server rejects the row's values.
        milvus.ParamError,
        milvus.DataNotMatchException,
        milvus.DataTypeNotMatchException,
        milvus.PrimaryKeyException,
        milvus.FieldTypeException,
        milvus.FieldsTypeException,
    )


def _transient_types() -> tuple[type[BaseException], ...]:
    import psycopg
    import psycopg_pool
    from confluent_kafka import KafkaException
    from pymilvus import exceptions as milvus

    return (
        TransientError,
        ConnectionError,
        TimeoutError,
        psycopg.OperationalError,  # connection lost, server shutting down, cancelled
        psycopg_pool.PoolTimeout,
        KafkaException,
        milvus.MilvusUnavailableException,
        milvus.ConnectError,
        milvus.ConnectionNotExistException,
        milvus.CollectionNotExistException,  # a generation swap in flight; the retry sees it
    )


_TABLES: dict[str, tuple[type[BaseException], ...]] = {}


def _table(name: str) -> tuple[type[BaseException], ...]:
    # Built on first use: psycopg, pymilvus and confluent-kafka load only when needed.
    if name not in _TABLES:
        _TABLES[name] = _terminal_types() if name == "terminal" else _transient_types()
    return _TABLES[name]


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from (``raise X from e``), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# Milvus reports a rejected value with a plain MilvusException and a code: 5 is
# IllegalArgument; Milvus Lite 3.2 answers 6 for a value longer than its VARCHAR field;
# 1100 is the parameter-invalid code of Milvus 2.3 and later.
MILVUS_INVALID_INPUT = frozenset({5, 6, 1100})


def _milvus_rejected(error: BaseException) -> bool:
    from pymilvus import MilvusException

    return isinstance(error, MilvusException) and error.code in MILVUS_INVALID_INPUT


def classify(error: BaseException) -> Disposition:
    """Terminal, transient or unknown, judged by the first error in the cause chain that
    one of the tables knows (a StoreError raised from a psycopg DataError is terminal)."""
    for e in causes(error):
        if isinstance(e, _table("terminal")) or _milvus_rejected(e):
            return "terminal"
        if isinstance(e, _table("transient")):
            return "transient"
    return "unknown"


def describe(error: BaseException) -> str:
    """One line: the error's class and message (the root cause's class when they differ)."""
    chain = list(causes(error))
    root = chain[-1]
    message = " ".join(str(error).split()) or type(error).__name__
    name = type(error).__name__
    if root is not error and type(root).__name__ != name:
        name = f"{name} from {type(root).__name__}"
    return f"{name}: {message}"[:1000]
