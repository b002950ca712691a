"""Which local checkpoint `streamrag run` resumes from, and what it cleans up."""

from __future__ import annotations

import os
from pathlib import Path

from streamrag.config import load_settings
from streamrag.local.checkpoints import checkpoints_dir, latest_checkpoint, prepare


def completed(job: Path, n: int, mtime: float) -> Path:
    chk = job / f"chk-{n}"
    chk.mkdir(parents=True)
    (chk / "_metadata").write_bytes(b"x")
    os.utime(chk / "_metadata", (mtime, mtime))
    return chk


def test_the_latest_completed_checkpoint_of_the_job_that_wrote_last(tmp_path):
    old_job, new_job = tmp_path / "a", tmp_path / "b"
    completed(old_job, 90, mtime=1000)
    completed(new_job, 3, mtime=2000)
    want = completed(new_job, 4, mtime=2001)
    (new_job / "chk-5").mkdir()  # cut short by a crash: no _metadata yet

    assert latest_checkpoint(tmp_path) == want
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_prepare_keeps_only_the_job_to_restore_and_from_scratch_forgets_all(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMRAG_FLINK__CHECKPOINTS_DIR", str(tmp_path))
    monkeypatch.setenv("STREAMRAG_KAFKA__GROUP_ID", "g/1")
    settings = load_settings()
    directory = checkpoints_dir(settings, bounded=False)
    assert directory == tmp_path / "g_1" / "streaming"
    completed(directory / "old", 7, mtime=1000)
    keep = completed(directory / "new", 2, mtime=2000)

    recovery = prepare(settings, bounded=False, from_scratch=False)
    assert recovery.restore == keep
    assert sorted(p.name for p in directory.iterdir()) == ["new"]
    assert recovery.options()["execution.state-recovery.path"] == keep.resolve().as_uri()
    # A bounded run never resumes a streaming run's checkpoint (its splits have no end).
    assert prepare(settings, bounded=True, from_scratch=False).restore is None

    fresh = prepare(settings, bounded=False, from_scratch=True)
    assert fresh.restore is None and list(directory.iterdir()) == []
    assert "execution.state-recovery.path" not in fresh.options()


def test_a_finished_run_leaves_no_checkpoint_to_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMRAG_FLINK__CHECKPOINTS_DIR", str(tmp_path))
    settings = load_settings()
    recovery = prepare(settings, bounded=True, from_scratch=False)
    completed(recovery.directory / "job", 3, mtime=1000)  # not yet discarded by Flink

    recovery.finished()
    assert prepare(settings, bounded=True, from_scratch=False).restore is None
