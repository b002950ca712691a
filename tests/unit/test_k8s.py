"""The k8s manifests carry a config that the same validator accepts."""

import yaml

from streamrag.config import PROJECT_ROOT, MilvusConfig, load_settings
from streamrag.flink import MAX_PARALLELISM
from streamrag.local.versions import python_pins


def test_the_configmap_holds_a_valid_streamrag_config(tmp_path):
    manifest = yaml.safe_load((PROJECT_ROOT / "k8s" / "configmap.yaml").read_text())
    config_file = tmp_path / "streamrag.yaml"
    config_file.write_text(manifest["data"]["streamrag.yaml"])

    settings = load_settings(config_file)

    assert isinstance(settings.store, MilvusConfig)
    # The secured cluster's TLS listener (k8s/strimzi; tests/unit/test_k8s_security.py).
    assert settings.kafka.bootstrap.endswith(":9093")
    assert settings.kafka.security.protocol == "SASL_SSL"


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


def flink_deployment() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "k8s" / "flinkdeployment.yaml").read_text())


def k8s_settings(tmp_path):
    manifest = yaml.safe_load((PROJECT_ROOT / "k8s" / "configmap.yaml").read_text())
    config_file = tmp_path / "streamrag.yaml"
    config_file.write_text(manifest["data"]["streamrag.yaml"])
    return load_settings(config_file)


def test_the_job_manager_is_highly_available_on_durable_storage():
    conf = flink_deployment()["spec"]["flinkConfiguration"]

    assert conf["high-availability.type"] == "kubernetes"
    assert conf["high-availability.storageDir"].startswith(("s3://", "gs://", "abfs://"))
    # Every s3:// path needs the S3 file system plugin of the same Flink.
    s3 = [v for v in conf.values() if str(v).startswith("s3://")]
    env = {
        e["name"]: e
        for e in flink_deployment()["spec"]["podTemplate"]["spec"]["containers"][0]["env"]
    }
    flink = python_pins()["apache-flink"]
    assert s3 and env["ENABLE_BUILT_IN_PLUGINS"]["value"] == f"flink-s3-fs-presto-{flink}.jar"


def test_the_service_account_may_do_what_native_kubernetes_and_ha_need():
    deployment = flink_deployment()
    docs = {
        d["kind"]: d
        for d in yaml.safe_load_all((PROJECT_ROOT / "k8s" / "flink-rbac.yaml").read_text())
    }
    namespace = deployment["metadata"]["namespace"]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in docs["Role"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }

    assert docs["ServiceAccount"]["metadata"]["name"] == deployment["spec"]["serviceAccount"]
    assert {d["metadata"]["namespace"] for d in docs.values()} == {namespace}
    # TaskManager pods, HA's leader and job metadata ConfigMaps, the JobManager Deployment.
    for needed in [("", "pods"), ("", "configmaps"), ("apps", "deployments")]:
        assert {"get", "watch", "create", "update", "delete"} <= granted[needed], needed
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert docs["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "flink", "namespace": namespace}
    ]


def test_the_job_runs_with_the_configs_parallelism_and_checkpoint_interval(tmp_path):
    settings = k8s_settings(tmp_path)
    spec = flink_deployment()["spec"]
    value, unit = spec["flinkConfiguration"]["execution.checkpointing.interval"].split()

    # The job sets both from the config; the operator sizes the TaskManagers by its own.
    assert spec["job"]["parallelism"] == settings.flink.parallelism
    assert int(value) * {"s": 1000, "ms": 1}[unit] == settings.flink.checkpoint_interval_ms
    assert settings.flink.parallelism <= MAX_PARALLELISM


def test_the_pipeline_and_its_monitoring_live_in_the_configs_namespace():
    config = yaml.safe_load((PROJECT_ROOT / "k8s" / "configmap.yaml").read_text())
    monitor = yaml.safe_load((PROJECT_ROOT / "k8s" / "monitoring" / "podmonitor.yaml").read_text())
    namespace = config["metadata"]["namespace"]
    volumes = flink_deployment()["spec"]["podTemplate"]["spec"]["volumes"]

    assert flink_deployment()["metadata"]["namespace"] == namespace
    assert monitor["metadata"]["namespace"] == namespace
    assert {"name": "config", "configMap": {"name": config["metadata"]["name"]}} in volumes
