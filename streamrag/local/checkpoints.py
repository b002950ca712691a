"""Durable checkpoints for `streamrag run` (PyFlink local execution).

A local job keeps its checkpoints under ``flink.checkpoints_dir/<consumer group>/<mode>``
(mode: ``streaming`` or ``bounded``), retained when the job is cancelled or dies. When
`streamrag run` starts again it restores the latest *completed* checkpoint there (a
``chk-N`` folder with its ``_metadata``): offsets and per-document state come back as
they were, so documents already processed are not chunked or looked up again. Flink
writes ``_metadata`` last, so a checkpoint cut short by a crash is never picked.

Why per mode: a bounded run's Kafka splits carry the end offsets it was started with,
and a streaming run's splits have none. Restoring one into the other would make a
bounded run never end (or a streaming one stop), so each resumes only its own kind.

A bounded run that finishes cleanly leaves no checkpoint: Flink discards a finished
job's checkpoints, but in the background, and the process may exit first, so
:meth:`Recovery.finished` removes them. The next run starts from the committed offsets,
as it should, instead of going over what the finished run did once more.
``--from-scratch`` deletes the folder first: the job starts from the committed offsets
with empty state (correct thanks to the version guard; only slower).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from streamrag.config import Settings
from streamrag.flink import job_group

_CHECKPOINT = re.compile(r"chk-(\d+)")


@dataclass(frozen=True)
class Recovery:
    """Where a local job checkpoints, and the checkpoint it restores (if any)."""

    directory: Path
    restore: Path | None

    def finished(self) -> None:
        """The run ended by itself (a bounded run): its checkpoints are spent."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def options(self) -> dict[str, str]:
        """Flink configuration for it."""
        options = {
            "execution.checkpointing.dir": self.directory.resolve().as_uri(),
            "execution.checkpointing.externalized-checkpoint-retention": ("RETAIN_ON_CANCELLATION"),
            "execution.checkpointing.num-retained": "2",
        }
        if self.restore is not None:
            options["execution.state-recovery.path"] = self.restore.resolve().as_uri()
        return options


def checkpoints_dir(settings: Settings, bounded: bool) -> Path:
    """The folder of one pipeline's (consumer group's) local checkpoints of one mode."""
    mode = "bounded" if bounded else "streaming"
    return settings.flink.checkpoints_dir / job_group(settings) / mode


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest completed checkpoint (``<job id>/chk-N`` with ``_metadata``) under
    ``directory``: the highest N of the job that wrote last."""
    found: list[tuple[float, int, Path]] = []
    for metadata in directory.glob("*/chk-*/_metadata"):
        match = _CHECKPOINT.fullmatch(metadata.parent.name)
        if match:
            found.append((metadata.stat().st_mtime, int(match.group(1)), metadata.parent))
    return max(found)[2] if found else None


def prepare(settings: Settings, bounded: bool, from_scratch: bool) -> Recovery:
    """The recovery of a local run: the checkpoint to restore, unless ``from_scratch``.
    Folders of older jobs are removed, keeping only the job holding that checkpoint (the
    new job's first checkpoint is a full one: it needs nothing older)."""
    directory = checkpoints_dir(settings, bounded)
    if from_scratch:
        shutil.rmtree(directory, ignore_errors=True)
    restore = latest_checkpoint(directory) if directory.is_dir() else None
    if directory.is_dir():
        for job in directory.iterdir():
            if job.is_dir() and (restore is None or job != restore.parent):
                shutil.rmtree(job, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    return Recovery(directory, restore)
