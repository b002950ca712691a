"""The ingest job's restart strategy survives a long life of occasional faults: an
exponential backoff whose count starts again after a quiet spell, not a fixed budget of
restarts that a few faults spread over weeks would use up (issue 14, weakness (a))."""

from __future__ import annotations

import yaml

from jobs.replay.job import REPLAY_BUNDLE_SIZE, replay_settings
from streamrag.config import PROJECT_ROOT, Settings
from streamrag.flink import restart_strategy


def test_restarts_back_off_exponentially_and_the_count_resets_after_a_quiet_spell():
    options = restart_strategy(10)
    prefix = "restart-strategy.exponential-delay."

    assert options["restart-strategy.type"] == "exponential-delay"
    assert options[prefix + "attempts-before-reset-backoff"] == "10"
    assert options[prefix + "reset-backoff-threshold"] == "10 min"
    assert options[prefix + "initial-backoff"] == "1 s"
    assert options[prefix + "max-backoff"] == "1 min"


def test_no_restarts_at_all_for_zero_attempts():
    assert restart_strategy(0) == {"restart-strategy.type": "none"}


def test_the_kubernetes_deployment_leaves_the_strategy_to_the_job():
    deployment = yaml.safe_load((PROJECT_ROOT / "k8s" / "flinkdeployment.yaml").read_text())
    conf = deployment["spec"]["flinkConfiguration"]
    assert not [key for key in conf if key.startswith("restart-strategy")]


def test_the_replay_job_runs_one_applier_without_restarts_in_bulk_bundles():
    settings = Settings()
    flink = replay_settings(settings).flink

    assert (flink.parallelism, flink.restart_attempts) == (1, 0)
    assert flink.bundle_size == REPLAY_BUNDLE_SIZE > settings.flink.bundle_size
    assert replay_settings(settings).store == settings.store  # nothing else changes
