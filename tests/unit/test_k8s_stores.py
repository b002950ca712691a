"""The stores and the retrieval service on Kubernetes agree with the config the pipeline
reads (k8s/configmap.yaml, k8s/pgvector/configmap.yaml), with the connector and with each
other: service names and ports, secrets, probes on endpoints the service has.

Milvus comes from its Helm chart (k8s/milvus/values.yaml): the chart has no values schema,
so its keys are checked here; the manifests' schemas are in test_k8s_schemas.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamrag.config import PROJECT_ROOT, MilvusConfig, PgvectorConfig, Settings, load_settings
from streamrag.serve.api import OPEN_PATHS
from streamrag.serve.auth import TOKENS_FILE_ENV

K8S = PROJECT_ROOT / "k8s"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def one(name: str, kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs(name) if d["kind"] == kind]
    return found


def config_text(name: str) -> str:
    text: str = one(name, "ConfigMap")["data"]["streamrag.yaml"]
    return text


def settings_of(name: str, tmp_path: Path) -> Settings:
    path = tmp_path / name.replace("/", "-")
    path.write_text(config_text(name))
    return load_settings(path)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_refs() -> set[tuple[str, str]]:
    """(secret, key) of every secretKeyRef and secret volume in the manifests and values."""
    found: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if ref:
                found.add((ref["name"], ref["key"]))
            if "secretName" in node and "items" in node:
                found.update((node["secretName"], item["key"]) for item in node["items"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc)
    return found


# Milvus


def test_milvus_is_the_helm_release_the_config_names_with_auth_on(tmp_path: Path):
    values = yaml.safe_load((K8S / "milvus" / "values.yaml").read_text())
    store = settings_of("configmap.yaml", tmp_path).store
    assert isinstance(store, MilvusConfig)
    user = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    extra = env_of({"env": values["standalone"]["extraEnv"]})

    assert store.uri == f"http://{values['fullnameOverride']}.milvus:{values['service']['port']}"
    assert values["cluster"]["enabled"] is False  # standalone: extraEnv of `standalone`
    assert user["common"]["security"]["authorizationEnabled"] is True
    # Passwords only from Secrets: none in the values, which become the chart's config.
    assert values["minio"]["accessKey"] == values["minio"]["secretKey"] == ""
    minio_secret = values["minio"]["existingSecret"]
    assert extra["MINIO_ACCESSKEYID"]["valueFrom"]["secretKeyRef"] == {
        "name": minio_secret,
        "key": "accesskey",
    }
    assert extra["MINIO_SECRETACCESSKEY"]["valueFrom"]["secretKeyRef"]["name"] == minio_secret
    assert "secretKeyRef" in extra["COMMON_SECURITY_DEFAULTROOTPASSWORD"]["valueFrom"]
    # The token comes from the environment (a Secret): no file, no literal in the config.
    assert store.security.token_file is None
    assert not re.search(r"^\s*token\s*:", config_text("configmap.yaml"), re.MULTILINE)


def test_the_job_and_the_service_get_the_milvus_token_from_a_secret(tmp_path: Path):
    store = settings_of("configmap.yaml", tmp_path).store
    assert isinstance(store, MilvusConfig)
    job = one("flinkdeployment.yaml", "FlinkDeployment")["spec"]["podTemplate"]["spec"]
    service = one("retrieval.yaml", "Deployment")["spec"]["template"]["spec"]
    for container in (job["containers"][0], service["containers"][0]):
        env = env_of(container)
        # The variable that store.security.token_env names (streamrag/security.py).
        token = env[store.security.token_env]
        assert store.security.token_env == "STREAMRAG_MILVUS_TOKEN"
        assert token["valueFrom"]["secretKeyRef"] == {
            "name": "streamrag-secrets",
            "key": "milvus-token",
            "optional": True,
        }
        assert "value" not in token
        # The old override of store.token, a field no more: the config would refuse it.
        assert "STREAMRAG_STORE__TOKEN" not in env
        assert "valueFrom" in env["PGPASSWORD"]
    assert "token" not in MilvusConfig.model_fields


# pgvector


def test_the_pgvector_config_differs_from_the_milvus_one_in_the_store_only(tmp_path: Path):
    milvus = settings_of("configmap.yaml", tmp_path)
    pgvector = settings_of("pgvector/configmap.yaml", tmp_path)
    assert isinstance(pgvector.store, PgvectorConfig)

    assert pgvector.model_dump(exclude={"store"}) == milvus.model_dump(exclude={"store"})
    assert (
        one("pgvector/configmap.yaml", "ConfigMap")["metadata"]
        == one("configmap.yaml", "ConfigMap")["metadata"]
    )


def test_postgres_serves_the_dsn_the_connector_and_the_migration_use(tmp_path: Path):
    store = settings_of("pgvector/configmap.yaml", tmp_path).store
    assert isinstance(store, PgvectorConfig)
    dsn = dict(item.split("=", 1) for item in store.dsn.split())
    service = one("pgvector/postgres.yaml", "Service")
    statefulset = one("pgvector/postgres.yaml", "StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    connector = one("strimzi/connect.yaml", "KafkaConnector")["spec"]["config"]
    job = one("pgvector/postgres.yaml", "Job")["spec"]["template"]["spec"]["containers"][0]

    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}"
    assert dsn["host"] == connector["database.hostname"] == host
    assert dsn["port"] == connector["database.port"] == str(service["spec"]["ports"][0]["port"])
    assert dsn["dbname"] == connector["database.dbname"] == env["POSTGRES_DB"]["value"]
    assert dsn["user"] == connector["database.user"] == env["POSTGRES_USER"]["value"]
    assert (
        service["spec"]["selector"].items()
        <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    )
    assert "wal_level=logical" in container["args"]  # Debezium's pgoutput
    assert job["command"][1:3] == ["migrate", "--dsn"] and job["command"][3] == store.dsn
    # The one password: the database's, the connector's (by the provider) and libpq's.
    password = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert env_of(job)["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == password
    assert (
        connector["database.password"]
        == f"${{secrets:streamrag/{password['name']}:{password['key']}}}"
    )


def test_postgres_creates_the_vector_extension_at_first_start():
    init = one("pgvector/postgres.yaml", "ConfigMap")
    mounts = one("pgvector/postgres.yaml", "StatefulSet")["spec"]["template"]["spec"]
    (volume,) = [
        v
        for v in mounts["volumes"]
        if v.get("configMap", {}).get("name") == init["metadata"]["name"]
    ]
    (mount,) = [m for m in mounts["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]

    assert mount["mountPath"] == "/docker-entrypoint-initdb.d"
    assert any("CREATE EXTENSION IF NOT EXISTS vector" in sql for sql in init["data"].values())


# The retrieval service


def test_the_retrieval_service_listens_where_the_config_and_the_service_say(tmp_path: Path):
    settings = settings_of("configmap.yaml", tmp_path)
    deployment = one("retrieval.yaml", "Deployment")
    service = one("retrieval.yaml", "Service")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = service["spec"]["ports"]

    assert container["command"][1:] == ["serve"]
    assert settings.serve.host == "0.0.0.0" and ports[port["targetPort"]] == settings.serve.port
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert env_of(container)["STREAMRAG_CONFIG"]["value"].startswith(
        next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    )


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_the_probes_ask_open_endpoints_of_the_service(probe: str):
    container = one("retrieval.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    get = container[probe]["httpGet"]

    assert get["path"] in OPEN_PATHS and get["path"] in {"/healthz", "/readyz"}
    assert get["port"] in {p["name"] for p in container["ports"]}
    if probe == "readinessProbe":
        assert get["path"] == "/readyz"  # store, generation and model, not just the process


def test_the_api_tokens_come_from_a_mounted_secret_never_from_the_config():
    pod = one("retrieval.yaml", "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    tokens_file = env_of(container)[TOKENS_FILE_ENV]["value"]
    (mount,) = [
        m for m in container["volumeMounts"] if tokens_file.startswith(m["mountPath"] + "/")
    ]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = volume["secret"]["items"]

    assert tokens_file == f"{mount['mountPath']}/{item['path']}"
    assert "STREAMRAG_TOKENS" not in env_of(container)
    config = one("configmap.yaml", "ConfigMap")["data"]["streamrag.yaml"]
    assert not re.search(r"^\s*tokens?\w*:", config, re.MULTILINE)


def test_every_secret_the_manifests_read_is_one_the_guide_creates():
    readme = (PROJECT_ROOT / "README.md").read_text()
    guide = readme[readme.index("## Deploying on Kubernetes") : readme.index("## Configuration")]
    # And the copies into namespace streamrag of the Secrets Strimzi makes (the Kafka
    # user's password, the cluster CA's certificate) that k8s/strimzi/users.yaml documents.
    users = (K8S / "strimzi" / "users.yaml").read_text()
    guide += re.sub(r"\s*\\\n#\s*", " ", users)
    created = {
        (name, key)
        for name, keys in re.findall(
            r"kubectl -n \S+ create secret generic (\S+)((?: --from-\S+)+)", guide
        )
        for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", keys)
    }

    assert secret_refs() and secret_refs() <= created, secret_refs() - created
