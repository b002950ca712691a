"""Every manifest under k8s/ validates against the schema of its kind.

- Kubernetes' own kinds (Deployment, Service, StatefulSet, Job, RBAC, ...): the OpenAPI
  schemas of Kubernetes 1.37 that kubernetes-validate (PyPI) bundles, strict (no unknown
  fields).
- FlinkDeployment: the CRD that the Flink Kubernetes Operator's API jar ships
  (org.apache.flink:flink-kubernetes-operator-api, META-INF/fabric8; `make jars`, profile
  k8s-schemas). The newest on Maven Central is 1.10.0: operators from 1.13 on (the first
  to run Flink 2.2) are not published there. Its schema differs from 1.13's in one place
  that matters here, the enum of spec.flinkVersion, which ends at v1_20: the pinned Flink's
  version is added to it, nothing else is changed (1.13 and later also accept any YAML
  under flinkConfiguration, where 1.10 wants strings: these manifests satisfy both).
- Strimzi (Kafka, KafkaNodePool, KafkaTopic, KafkaConnect, KafkaConnector) and the
  Prometheus Operator (PodMonitor): Strimzi's API jar on Maven Central (io.strimzi:api)
  builds its CRDs in Java code and ships no schema files, so the schemas come from the npm
  packages @kubernetes-models/strimzi-kafka-operator (generated from Strimzi 0.49.0's and
  1.0.0's released CRDs) and @kubernetes-models/prometheus-operator, whose models validate
  with the CRDs' schemas compiled to code; Node.js runs them on the manifests.
- Not a manifest: k8s/milvus/values.yaml (Helm values; the chart has no values schema,
  tests/unit/test_k8s_stores.py checks its keys and cross-references) and the Prometheus
  rules and Grafana dashboard of k8s/monitoring (tests/integration/test_operations.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamrag.config import PROJECT_ROOT
from streamrag.local.versions import jvm_pins, python_pins

K8S = PROJECT_ROOT / "k8s"
KUBERNETES = "1.37.0"
JARS = PROJECT_ROOT / ".work" / "jars" / "k8s-schemas"
NPM = PROJECT_ROOT / ".work" / "npm" / "k8s-schemas"
# The kinds whose schemas come from the npm packages, by API group.
NPM_GROUPS = {
    "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
    "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
}
NOT_MANIFESTS = {K8S / "milvus" / "values.yaml", K8S / "monitoring" / "alerts.yaml"}


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path not in NOT_MANIFESTS:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    yield f"{path.relative_to(K8S)}: {doc['kind']} {doc['metadata']['name']}", doc


def by_kind(*kinds: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in manifests() if doc["kind"] in kinds]


def is_builtin(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group == "" or group.endswith(".k8s.io") or group in ("apps", "batch", "policy")


# Kubernetes' own kinds


def test_every_manifest_is_of_a_kind_with_a_schema_here():
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in manifests()}
    custom = {k for k in kinds if not is_builtin({"apiVersion": k[0]})}
    groups = {api.rpartition("/")[0] for api, _ in custom}

    assert groups <= {"flink.apache.org", *NPM_GROUPS}, groups
    assert len(kinds - custom) >= 8  # Namespace, ConfigMap, Deployment, Service, ...


@pytest.mark.parametrize(
    ("name", "doc"), [m for m in manifests() if is_builtin(m[1])], ids=lambda v: str(v)
)
def test_kubernetes_kinds_match_the_kubernetes_schema(name: str, doc: dict[str, Any]):
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_kubernetes_schema_rejects_what_kubernetes_would():
    (_, deployment) = by_kind("Deployment")[0]
    wrong_port = copy.deepcopy(deployment)
    wrong_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}

    for bad in (wrong_port, unknown):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES, strict=True)


# FlinkDeployment: the operator's CRD


@pytest.fixture(scope="module")
def flink_deployment_schema() -> dict[str, Any]:
    version = jvm_pins()["flink-kubernetes-operator"]
    jar = JARS / f"flink-kubernetes-operator-api-{version}.jar"
    assert jar.exists(), f"{jar} missing: run `make jars`"
    with zipfile.ZipFile(jar) as archive:
        crd = yaml.safe_load(
            archive.read("META-INF/fabric8/flinkdeployments.flink.apache.org-v1.yml")
        )
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    flink = "v" + "_".join(python_pins()["apache-flink"].split(".")[:2])
    enum = schema["properties"]["spec"]["properties"]["flinkVersion"]["enum"]
    assert flink not in enum  # when a newer API jar has it, drop this addition
    enum.append(flink)
    return schema


def test_the_flink_deployment_matches_the_operators_crd(flink_deployment_schema: dict[str, Any]):
    (_, deployment), *more = by_kind("FlinkDeployment")
    assert not more
    jsonschema.validate(deployment, flink_deployment_schema)


def test_the_crd_rejects_a_wrong_upgrade_mode_and_a_numeric_option(
    flink_deployment_schema: dict[str, Any],
):
    (_, deployment) = by_kind("FlinkDeployment")[0]
    mode = copy.deepcopy(deployment)
    mode["spec"]["job"]["upgradeMode"] = "checkpoint"
    number = copy.deepcopy(deployment)
    number["spec"]["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] = 2
    container = copy.deepcopy(deployment)
    container["spec"]["podTemplate"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"

    for bad in (mode, number, container):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, flink_deployment_schema)


# Strimzi and the Prometheus Operator: the npm packages' validators

VALIDATE_JS = """
import fs from "node:fs";
const docs = JSON.parse(fs.readFileSync(0, "utf8"));
const results = [];
for (const doc of docs) {
  const [group, version] = doc.apiVersion.split("/");
  const pkg = JSON.parse(process.argv[2])[group];
  const mod = await import(`${pkg}/${group}/${version}/${doc.kind}`);
  try { new mod[doc.kind](doc).validate(); results.push(null); }
  catch (e) { results.push(String(e.message)); }
}
console.log(JSON.stringify(results));
"""


@pytest.fixture(scope="module")
def npm_validate() -> Any:
    """A function from manifests to their errors (None: valid), by Node.js and the pinned
    npm packages (installed into .work/npm on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the CRD schemas of Strimzi"
    pins = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["streamrag"]["npm"]
    manifest = {"private": True, "type": "module", "dependencies": pins}
    NPM.mkdir(parents=True, exist_ok=True)
    package = NPM / "package.json"
    if not package.exists() or json.loads(package.read_text()) != manifest:
        package.write_text(json.dumps(manifest))
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--engine-strict=false",
            ],
            cwd=NPM,
            check=True,
            timeout=300,
        )
    script = NPM / "validate.mjs"
    script.write_text(VALIDATE_JS)

    def validate(docs: list[dict[str, Any]]) -> list[str | None]:
        done = subprocess.run(
            [node, str(script), json.dumps(NPM_GROUPS)],
            input=json.dumps(docs),
            capture_output=True,
            text=True,
            cwd=NPM,
            timeout=120,
            check=True,
        )
        return list(json.loads(done.stdout))

    return validate


def operator_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(n, d) for n, d in manifests() if d["apiVersion"].rpartition("/")[0] in NPM_GROUPS]


def test_strimzi_and_prometheus_operator_kinds_match_their_crds(npm_validate: Any):
    named = operator_manifests()
    errors = npm_validate([doc for _, doc in named])

    assert {doc["kind"] for _, doc in named} >= {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaConnect",
        "KafkaConnector",
        "PodMonitor",
    }
    assert {name: e for (name, _), e in zip(named, errors, strict=True) if e} == {}


def test_the_crd_validators_reject_what_the_operators_would(npm_validate: Any):
    kinds = {doc["kind"]: doc for _, doc in operator_manifests()}
    connect = copy.deepcopy(kinds["KafkaConnect"])
    del connect["spec"]["groupId"]  # required in v1
    topic = copy.deepcopy(kinds["KafkaTopic"])
    topic["spec"]["partitions"] = "six"
    listener = copy.deepcopy(kinds["Kafka"])
    listener["spec"]["kafka"]["listeners"][0]["type"] = "sideways"
    monitor = copy.deepcopy(kinds["PodMonitor"])
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "often"

    assert all(npm_validate([connect, topic, listener, monitor]))
