"""The k8s manifests carry a config that the same validator accepts."""

import yaml

from streamrag.config import PROJECT_ROOT, MilvusConfig, load_settings


def test_the_configmap_holds_a_valid_streamrag_config(tmp_path):
    manifest = yaml.safe_load((PROJECT_ROOT / "k8s" / "configmap.yaml").read_text())
    config_file = tmp_path / "streamrag.yaml"
    config_file.write_text(manifest["data"]["streamrag.yaml"])

    settings = load_settings(config_file)

    assert isinstance(settings.store, MilvusConfig)
    assert settings.kafka.bootstrap.endswith(":9092")


def test_the_flink_deployment_runs_the_ingest_job_with_that_config():
    deployment = yaml.safe_load((PROJECT_ROOT / "k8s" / "flinkdeployment.yaml").read_text())
    args = deployment["spec"]["job"]["args"]
    env = deployment["spec"]["podTemplate"]["spec"]["containers"][0]["env"]

    assert args[:2] == ["-py", "/opt/streamrag/jobs/pipeline.py"]
    assert {"name": "STREAMRAG_CONFIG", "value": args[-1]} in env


def test_the_failure_ledger_lives_on_a_volume_of_the_task_managers(tmp_path):
    manifest = yaml.safe_load((PROJECT_ROOT / "k8s" / "configmap.yaml").read_text())
    config_file = tmp_path / "streamrag.yaml"
    config_file.write_text(manifest["data"]["streamrag.yaml"])
    ledger = str(load_settings(config_file).flink.failure_ledger_dir)
    deployment = yaml.safe_load((PROJECT_ROOT / "k8s" / "flinkdeployment.yaml").read_text())
    mounts = deployment["spec"]["podTemplate"]["spec"]["containers"][0]["volumeMounts"]

    assert ledger in [m["mountPath"] for m in mounts]


def test_upgrades_go_through_savepoints_in_durable_directories():
    deployment = yaml.safe_load((PROJECT_ROOT / "k8s" / "flinkdeployment.yaml").read_text())
    conf = deployment["spec"]["flinkConfiguration"]

    assert deployment["spec"]["job"]["upgradeMode"] == "savepoint"
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir"):
        assert conf[key].startswith(("s3://", "gs://", "abfs://", "hdfs://")), key
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == (
        "RETAIN_ON_CANCELLATION"
    )


def test_the_metrics_port_is_the_one_the_pod_monitor_scrapes():
    deployment = yaml.safe_load((PROJECT_ROOT / "k8s" / "flinkdeployment.yaml").read_text())
    monitor = yaml.safe_load((PROJECT_ROOT / "k8s" / "monitoring" / "podmonitor.yaml").read_text())
    pod = deployment["spec"]["podTemplate"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    port_name = monitor["spec"]["podMetricsEndpoints"][0]["port"]

    assert (
        str(ports[port_name])
        == deployment["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"]
    )
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
