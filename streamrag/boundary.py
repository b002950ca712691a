"""The per-record error boundary of every operator, and the ledger that counts failures.

An operator hands each error it meets while processing one record to
:meth:`ErrorBoundary.dead_letter_for`; the answer is a dead letter to emit (the job goes on)
or ``None``, and then the operator re-raises: the task fails and Flink restarts it from
the last checkpoint. What decides is :func:`streamrag.errors.classify`:

- terminal: dead-lettered at once, with the stage, the error's class and message;
- transient: re-raised, always: the environment is at fault, never the record;
- unknown: re-raised, and counted in the :class:`FailureLedger`. A record that fails the
  same way (same stage, same error class) ``poison_after`` times in a row is
  dead-lettered instead, so that it cannot block its partition forever.

How failures are counted: Flink restores keyed state from the checkpoint before the
failure, so a count kept in state would be rolled back with it. The ledger keeps one
small file per failing record (stage + topic/partition/offset) in a directory
(``flink.failure_ledger_dir``) that outlives the task: the local work directory, or on
Kubernetes a volume mounted at that path. Entries older than a day are forgotten, so
"in a row" means within a day of restarts. If a restart lands on a machine that cannot
see the directory, counting starts again there: slower to give up, never wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from streamrag.errors import BadRecord, classify, describe
from streamrag.records import DeadLetter, Origin

log = logging.getLogger(__name__)

LEDGER_TTL_S = 86_400


@dataclass(frozen=True, slots=True)
class Failure:
    """What the ledger knows of one record's failures."""

    error: str  # the error's class name
    count: int
    last_ms: int


class FailureLedger:
    """Consecutive failures per (stage, record origin), in files that survive restarts."""

    def __init__(self, directory: Path, ttl_s: float = LEDGER_TTL_S) -> None:
        self._dir = directory
        self._ttl_ms = int(ttl_s * 1000)

    def count(self, stage: str, origin: Origin, error: BaseException) -> int:
        """Record one more failure of the record at ``origin``; returns how many times in a
        row it has failed with this class of error (1 when the class changed)."""
        path = self._path(stage, origin)
        now = _now_ms()
        name = type(error).__name__
        before = self._read(path)
        fresh = before is None or before.error != name or now - before.last_ms > self._ttl_ms
        failure = Failure(name, 1 if fresh or before is None else before.count + 1, now)
        self._write(path, failure, stage, origin)
        return failure.count

    def forget(self, stage: str, origin: Origin) -> None:
        self._path(stage, origin).unlink(missing_ok=True)

    def _path(self, stage: str, origin: Origin) -> Path:
        key = f"{stage}\x1f{origin.topic}\x1f{origin.partition}\x1f{origin.offset}"
        return self._dir / f"{stage}-{hashlib.sha1(key.encode()).hexdigest()[:24]}.json"

    def _read(self, path: Path) -> Failure | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Failure(str(data["error"]), int(data["count"]), int(data["last_ms"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing, or torn by a crash mid-write: count from here

    def _write(self, path: Path, failure: Failure, stage: str, origin: Origin) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        body = {
            "error": failure.error,
            "count": failure.count,
            "last_ms": failure.last_ms,
            "stage": stage,
            "origin": [origin.topic, origin.partition, origin.offset],
        }
        # Write and rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self._dir, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f)
        os.replace(tmp, path)


class ErrorBoundary:
    """Turns one record's error into a dead letter, or says to re-raise it."""

    def __init__(self, stage: str, ledger: FailureLedger, poison_after: int) -> None:
        self.stage = stage
        self._ledger = ledger
        self._poison_after = poison_after

    def dead_letter_for(
        self, error: BaseException, origin: Origin | None, key: str | None, value: str | None
    ) -> DeadLetter | None:
        """The dead letter for a record that failed with ``error``; None: re-raise it."""
        kind = classify(error)
        if kind == "transient":
            return None
        if kind == "unknown":
            if origin is None:
                return None
            failures = self._ledger.count(self.stage, origin, error)
            if failures < self._poison_after:
                log.warning(
                    "%s: record %s failed (%d of %d before it is dead-lettered): %s",
                    self.stage,
                    origin,
                    failures,
                    self._poison_after,
                    describe(error),
                )
                return None
            self._ledger.forget(self.stage, origin)
            reason = f"failed {failures} times in a row: {describe(error)}"
        else:
            reason = str(error) if isinstance(error, BadRecord) else describe(error)
        return DeadLetter(
            stage=self.stage,
            reason=reason,
            error=type(error).__name__,
            origin=origin,
            key=key,
            value=value,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
