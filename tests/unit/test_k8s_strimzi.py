"""The Strimzi manifests (k8s/strimzi) agree with the pipeline's own sources of truth:
the topics with `streamrag topics create`, the KafkaConnector with
connect/postgres-source.json, the versions with pyproject.toml, and the names and ports
with each other and with k8s/configmap.yaml.

No Kubernetes cluster runs here. This checks structure and cross-references; the CRD
schemas themselves are checked in tests/unit/test_k8s_schemas.py (Strimzi's API jar on
Maven Central, io.strimzi:api, builds its CRDs in Java code and ships no schema files: the
schemas come from an npm package generated from Strimzi's released CRDs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamrag.config import PROJECT_ROOT, Settings, load_settings
from streamrag.kafka import topic_configs
from streamrag.limits import DOCUMENT_RECORD_BYTES
from streamrag.local.versions import jvm_pins

STRIMZI = PROJECT_ROOT / "k8s" / "strimzi"
# Kafka 4.3 needs Strimzi 1.1 or newer, which serves only v1 (1.0 removed v1beta2).
API = "kafka.strimzi.io/v1"
# Connector keys whose value belongs to a deployment (the local file has placeholders or
# loopback values there); every other key must be the file's own.
DEPLOYMENT_KEYS = {
    "database.hostname",
    "database.sslmode",
    "database.port",
    "database.password",
    "table.include.list",
    "producer.override.max.request.size",
    "topic.creation.default.max.message.bytes",
    "topic.creation.default.partitions",
    "topic.creation.default.replication.factor",
}


def resources(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((STRIMZI / name).read_text()) if d]


def one(name: str, kind: str) -> dict[str, Any]:
    (found,) = [d for d in resources(name) if d["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def k8s_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    manifest = yaml.safe_load((PROJECT_ROOT / "k8s" / "configmap.yaml").read_text())
    path: Path = tmp_path_factory.mktemp("k8s") / "streamrag.yaml"
    path.write_text(manifest["data"]["streamrag.yaml"])
    return load_settings(path)


def test_every_resource_is_a_strimzi_resource_of_one_cluster():
    kafka = one("kafka.yaml", "Kafka")
    for name in ("kafka.yaml", "topics.yaml", "users.yaml", "connect.yaml"):  # not RBAC
        for doc in resources(name):
            assert doc["apiVersion"] == API
            assert doc["metadata"]["namespace"] == kafka["metadata"]["namespace"]
    labelled = [*resources("topics.yaml"), *resources("users.yaml")]
    for doc in [*labelled, one("kafka.yaml", "KafkaNodePool")]:
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]


def test_the_cluster_is_kraft_with_node_pools_and_three_replicas():
    kafka, pool = one("kafka.yaml", "Kafka"), one("kafka.yaml", "KafkaNodePool")
    # v1: KRaft and node pools always; the v1beta2 annotations that enabled them are gone.
    assert not kafka["metadata"].get("annotations")
    assert "zookeeper" not in kafka["spec"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert (
        pool["spec"]["replicas"] >= kafka["spec"]["kafka"]["config"]["default.replication.factor"]
    )
    assert kafka["spec"]["kafka"]["version"] == jvm_pins()["kafka"]


def test_the_job_bootstraps_from_the_listener_of_its_security(k8s_settings: Settings):
    kafka = one("kafka.yaml", "Kafka")
    security = k8s_settings.kafka.security
    meta = kafka["metadata"]
    (listener,) = [
        lst
        for lst in kafka["spec"]["kafka"]["listeners"]
        if k8s_settings.kafka.bootstrap
        == f"{meta['name']}-kafka-bootstrap.{meta['namespace']}:{lst['port']}"
    ]

    # TLS on both sides, and SCRAM-SHA-512 the listener's authentication and the client's.
    assert listener["tls"] is security.tls is True
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert security.sasl and security.sasl_mechanism == "SCRAM-SHA-512"


def test_the_topics_are_those_of_topics_create_with_the_same_settings(k8s_settings: Settings):
    topics = {t["spec"]["topicName"]: t["spec"] for t in resources("topics.yaml")}
    want = topic_configs(k8s_settings)

    assert set(topics) == set(want)
    for name, config in want.items():
        spec = topics[name]
        assert spec["partitions"] == k8s_settings.kafka.partitions, name
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == "2", name
        assert {k: v for k, v in spec["config"].items() if k != "min.insync.replicas"} == config


def test_connect_builds_the_pinned_debezium_and_reaches_the_tls_listener():
    connect = one("connect.yaml", "KafkaConnect")
    kafka = one("kafka.yaml", "Kafka")
    (plugin,) = connect["spec"]["build"]["plugins"]
    (artifact,) = plugin["artifacts"]
    tls = [lst for lst in kafka["spec"]["kafka"]["listeners"] if lst["tls"]]
    meta = kafka["metadata"]

    assert (artifact["group"], artifact["artifact"]) == (
        "io.debezium",
        "debezium-connector-postgres",
    )
    assert artifact["version"] == jvm_pins()["debezium"]
    assert connect["spec"]["version"] == jvm_pins()["kafka"]
    assert connect["spec"]["bootstrapServers"] == (
        f"{meta['name']}-kafka-bootstrap.{meta['namespace']}:{tls[0]['port']}"
    )
    assert connect["metadata"]["annotations"]["strimzi.io/use-connector-resources"] == "true"
    # v1 names Connect's group and internal topics in the spec, not in its config.
    spec = connect["spec"]
    internal = [spec[k] for k in ("offsetStorageTopic", "configStorageTopic", "statusStorageTopic")]
    assert len(set(internal)) == 3 and all(t.startswith(spec["groupId"]) for t in internal)
    assert not {"group.id", "offset.storage.topic"} & set(spec["config"])


def test_connect_may_read_the_one_secret_its_connector_names():
    connect = one("connect.yaml", "KafkaConnect")
    connector = one("connect.yaml", "KafkaConnector")
    rbac = {d["kind"]: d for d in resources("connect-rbac.yaml")}
    # ${secrets:<namespace>/<secret>:<key>}
    ref = connector["spec"]["config"]["database.password"].removeprefix("${secrets:")
    namespace, _, rest = ref.partition("/")
    secret = rest.split(":")[0]
    (rule,) = rbac["Role"]["rules"]
    (subject,) = rbac["RoleBinding"]["subjects"]

    assert rbac["Role"]["metadata"]["namespace"] == namespace
    assert rbac["RoleBinding"]["metadata"]["namespace"] == namespace
    assert rule["resources"] == ["secrets"] and rule["resourceNames"] == [secret]
    assert rule["verbs"] == ["get"]
    assert rbac["RoleBinding"]["roleRef"]["name"] == rbac["Role"]["metadata"]["name"]
    assert subject == {
        "kind": "ServiceAccount",
        "name": f"{connect['metadata']['name']}-connect",
        "namespace": connect["metadata"]["namespace"],
    }


def test_the_connector_is_the_connector_file_with_this_deployments_values(
    k8s_settings: Settings,
):
    source = json.loads((PROJECT_ROOT / "connect" / "postgres-source.json").read_text())
    connector = one("connect.yaml", "KafkaConnector")
    connect = one("connect.yaml", "KafkaConnect")
    spec, file_config = connector["spec"], dict(source["config"])

    assert connector["metadata"]["name"] == source["name"]
    assert connector["metadata"]["labels"]["strimzi.io/cluster"] == connect["metadata"]["name"]
    assert spec["class"] == file_config.pop("connector.class")
    assert str(spec["tasksMax"]) == file_config.pop("tasks.max")
    # The secured local stack's CA: empty elsewhere, so left out (connect/registry.py).
    assert file_config.pop("database.sslrootcert") == "${STREAMRAG_PG_SSLROOTCERT}"
    assert set(spec["config"]) == set(file_config)
    for key, value in file_config.items():
        if key not in DEPLOYMENT_KEYS:
            assert spec["config"][key] == value, key
    deployed = {k: spec["config"][k] for k in DEPLOYMENT_KEYS}
    assert not any("${STREAMRAG_" in v or "${file:" in v for v in deployed.values())
    # The password from a Secret through Strimzi's provider, never a literal.
    assert deployed["database.password"].startswith("${secrets:")
    provider = connect["spec"]["config"]["config.providers.secrets.class"]
    assert provider == "io.strimzi.kafka.KubernetesSecretConfigProvider"
    tables = {t.removeprefix(f"{file_config['topic.prefix']}.") for t in k8s_settings.cdc.tables}
    assert set(deployed["table.include.list"].split(",")) == tables
    assert deployed["producer.override.max.request.size"] == str(DOCUMENT_RECORD_BYTES.value)
    assert deployed["topic.creation.default.partitions"] == str(k8s_settings.kafka.partitions)
