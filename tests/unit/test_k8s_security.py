"""The manifests of the secured Kafka cluster hold together: the KafkaUsers of
k8s/strimzi/users.yaml, the listener of kafka.yaml, the Secrets the FlinkDeployment mounts
where the ConfigMaps' kafka.security names its files, Connect's authentication, the users'
ACLs (against what the job, the CLI and Connect really use), and no literal secret in any
manifest.

Each check is a function that returns what is wrong; the tests assert that it finds
nothing in the manifests and that it finds a planted mistake."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from jobs.replay.driver import full_replay_settings
from streamrag.config import PROJECT_ROOT, Settings, load_settings
from streamrag.kafka import topic_configs

K8S = PROJECT_ROOT / "k8s"
CONFIGMAPS = ["configmap.yaml", "pgvector/configmap.yaml"]
# Not manifests, but their values are checked for secrets too.
HELM_VALUES = K8S / "milvus" / "values.yaml"
# How the User Operator names a KafkaUser's Secret and its password key, and the Secret of
# the cluster CA's certificate (Strimzi's documented names).
USER_PASSWORD_KEY = "password"
CA_KEY = "ca.crt"
# The authentication of a KafkaUser <-> that of a listener (both Strimzi's names) and the
# client settings it asks for.
SASL_MECHANISMS = {"scram-sha-512": "SCRAM-SHA-512"}


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def one(name: str, kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs(name) if d["kind"] == kind]
    return found


def settings_of(name: str, tmp_path: Path) -> Settings:
    path = tmp_path / name.replace("/", "-")
    path.write_text(one(name, "ConfigMap")["data"]["streamrag.yaml"])
    return load_settings(path)


def kafka() -> dict[str, Any]:
    return one("strimzi/kafka.yaml", "Kafka")


def users() -> dict[str, dict[str, Any]]:
    return {u["metadata"]["name"]: u for u in docs("strimzi/users.yaml")}


def ca_secret() -> str:
    return f"{kafka()['metadata']['name']}-cluster-ca-cert"


def copy_commands() -> dict[tuple[str, str], tuple[str, str, str]]:
    """The Secret copies that users.yaml documents: (namespace, name, key) of the copy,
    read from (namespace, name, key) of Strimzi's Secret."""
    lines = [
        line.removeprefix("#").strip()
        for line in (K8S / "strimzi" / "users.yaml").read_text().splitlines()
        if line.startswith("#")
    ]
    text = re.sub(r"\s*\\\n\s*", " ", "\n".join(lines))
    found = re.findall(
        r"kubectl -n (\S+) create secret generic (\S+) --from-file=([\w.-]+)=<\(kubectl"
        r" -n (\S+) get secret (\S+) -o jsonpath='\{\.data\.([\w.\\-]+)\}' \| base64 -d\)"
        r" --dry-run=client -o yaml \| kubectl apply -f -",
        text,
    )
    return {
        (ns, name, key): (src_ns, src, src_key.replace("\\.", "."))
        for ns, name, key, src_ns, src, src_key in found
    }


# (a) The files of kafka.security are the mounted Secrets of the user and the cluster CA


def secret_file_problems(
    settings: Settings, deployment: dict[str, Any], copies: dict[Any, Any]
) -> list[str]:
    """Why the job's pods would not find kafka.security's password_file and ca_file, or
    would find other Secrets than KafkaUser <username>'s password and the cluster CA."""
    security = settings.kafka.security
    problems = []
    user = users().get(security.username or "")
    if user is None:
        problems.append(f"no KafkaUser {security.username}")
    spec = deployment["spec"]
    pod = spec["podTemplate"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    namespace = deployment["metadata"]["namespace"]
    kafka_ns = kafka()["metadata"]["namespace"]
    # The pod template is the JobManager's and the TaskManagers': neither replaces it.
    for role in ("jobManager", "taskManager"):
        if "podTemplate" in spec[role]:
            problems.append(f"{role} has a pod template of its own")
    wanted = {
        "password_file": (security.password_file, security.username, USER_PASSWORD_KEY),
        "ca_file": (security.ca_file, ca_secret(), CA_KEY),
    }
    # A client certificate and key (a TLS KafkaUser's user.crt, user.key) would need
    # their own mounts and checks here.
    files = {name for name, value in security if isinstance(value, Path)}
    problems.extend(f"kafka.security.{f} is not checked" for f in sorted(files - set(wanted)))
    for setting, (path, source, source_key) in wanted.items():
        if path is None:
            problems.append(f"kafka.security.{setting} is not set")
            continue
        file = PurePosixPath(path)
        mounts = [
            m
            for m in container.get("volumeMounts", [])
            if file.parent == PurePosixPath(m["mountPath"])
        ]
        if len(mounts) != 1:
            problems.append(f"{setting} {file}: {len(mounts)} volume mounts at its folder")
            continue
        (mount,) = mounts
        if mount.get("readOnly") is not True or mount.get("subPath"):
            problems.append(f"{setting}: the mount {mount['name']} is not a read-only folder")
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            problems.append(f"{setting}: volume {mount['name']} is not a Secret")
            continue
        items = {i["path"]: i["key"] for i in secret.get("items", [])}
        key = items.get(file.name)
        if key is None:
            problems.append(f"{setting}: Secret {secret['secretName']} maps no key to {file.name}")
            continue
        if secret.get("optional"):
            problems.append(f"{setting}: Secret {secret['secretName']} is optional")
        copied_from = copies.get((namespace, secret["secretName"], key))
        if copied_from != (kafka_ns, source, source_key):
            problems.append(
                f"{setting}: {namespace}/{secret['secretName']}:{key} is not documented as a"
                f" copy of {kafka_ns}/{source}:{source_key} (users.yaml): {copied_from}"
            )
    return problems


@pytest.mark.parametrize("configmap", CONFIGMAPS)
def test_the_kafka_secret_files_are_the_mounted_secrets_of_the_user_and_the_ca(
    configmap: str, tmp_path: Path
):
    settings = settings_of(configmap, tmp_path)
    deployment = one("flinkdeployment.yaml", "FlinkDeployment")

    assert copy_commands(), "users.yaml documents no Secret copy"
    assert secret_file_problems(settings, deployment, copy_commands()) == []
    # The same names on both sides of the copy: the Secret in namespace streamrag is the
    # one of the KafkaUser, not a look-alike.
    assert {(name, key) for (_, name, key), (_, src, src_key) in copy_commands().items()} == {
        (settings.kafka.security.username, USER_PASSWORD_KEY),
        (ca_secret(), CA_KEY),
    }


def test_a_wrong_mount_or_name_is_found(tmp_path: Path):
    settings = settings_of("configmap.yaml", tmp_path)
    good = one("flinkdeployment.yaml", "FlinkDeployment")
    copies = copy_commands()

    def pod(d: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = d["spec"]["podTemplate"]["spec"]
        return spec

    def volume(d: dict[str, Any], secret: str) -> dict[str, Any]:
        (found,) = [v for v in pod(d)["volumes"] if v.get("secret", {}).get("secretName") == secret]
        return found

    wrong_name = copy.deepcopy(good)
    volume(wrong_name, "streamrag")["secret"]["secretName"] = "streamrag-connect"
    wrong_key = copy.deepcopy(good)
    volume(wrong_key, ca_secret())["secret"]["items"][0]["key"] = "ca.p12"
    wrong_file = copy.deepcopy(good)
    volume(wrong_file, "streamrag")["secret"]["items"][0]["path"] = "pass"
    unmounted = copy.deepcopy(good)
    pod(unmounted)["containers"][0]["volumeMounts"] = [
        m for m in pod(unmounted)["containers"][0]["volumeMounts"] if "kafka-ca" not in m["name"]
    ]
    writable = copy.deepcopy(good)
    for m in pod(writable)["containers"][0]["volumeMounts"]:
        m.pop("readOnly", None)
    own_template = copy.deepcopy(good)
    own_template["spec"]["taskManager"]["podTemplate"] = {"spec": {"containers": []}}
    other_user = settings.model_copy(deep=True)
    other_user.kafka.security.username = "streamrag-connect"
    client_cert = settings.model_copy(deep=True)
    client_cert.kafka.security.cert_file = Path("/etc/streamrag/kafka-user/user.crt")

    for deployment in (wrong_name, wrong_key, wrong_file, unmounted, writable, own_template):
        assert secret_file_problems(settings, deployment, copies)
    assert secret_file_problems(other_user, good, copies)
    assert secret_file_problems(client_cert, good, copies)
    assert secret_file_problems(settings, good, {})


def test_the_job_reads_the_kafka_password_from_the_file_not_the_environment(tmp_path: Path):
    security = settings_of("configmap.yaml", tmp_path).kafka.security
    pod = one("flinkdeployment.yaml", "FlinkDeployment")["spec"]["podTemplate"]["spec"]
    env = {e["name"] for e in pod["containers"][0].get("env", [])}

    # password_file wins over password_env; no second copy of the secret in the env.
    assert security.password_file is not None
    assert security.password_env not in env


# (b) Connect authenticates as KafkaUser streamrag-connect, trusting the cluster CA


def test_connect_authenticates_as_its_kafka_user_and_trusts_the_cluster_ca():
    connect = one("strimzi/connect.yaml", "KafkaConnect")
    auth = connect["spec"]["authentication"]
    user = users()["streamrag-connect"]
    (trusted,) = connect["spec"]["tls"]["trustedCertificates"]

    assert connect["metadata"]["namespace"] == user["metadata"]["namespace"]
    assert auth["username"] == user["metadata"]["name"]
    assert auth["type"] == user["spec"]["authentication"]["type"]
    # The Secret the User Operator makes of the user: its name, key `password`.
    assert auth["passwordSecret"] == {
        "secretName": user["metadata"]["name"],
        "password": USER_PASSWORD_KEY,
    }
    assert trusted["secretName"] == ca_secret()
    assert trusted.get("certificate") == CA_KEY or PurePosixPath(CA_KEY).match(trusted["pattern"])
    # The job's user and Connect's are two.
    assert set(users()) == {"streamrag", "streamrag-connect"}


# (c) Every user authenticates in a way the cluster's listeners accept


def test_the_users_authenticate_as_the_secured_listener_accepts(tmp_path: Path):
    cluster = kafka()
    listeners = cluster["spec"]["kafka"]["listeners"]
    accepted = {lst["authentication"]["type"] for lst in listeners if "authentication" in lst}
    security = settings_of("configmap.yaml", tmp_path).kafka.security

    # Secured: every listener is TLS and authenticates its clients.
    assert listeners and all(lst["tls"] and "authentication" in lst for lst in listeners)
    for name, user in users().items():
        assert user["metadata"]["namespace"] == cluster["metadata"]["namespace"], name
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]
        assert user["spec"]["authentication"]["type"] in accepted, name
    job_user = users()[security.username or ""]["spec"]["authentication"]["type"]
    assert security.protocol == "SASL_SSL"
    assert SASL_MECHANISMS[job_user] == security.sasl_mechanism


# The ACLs: what the job, the CLI, the replays and Connect use, and no more than that

IMPLIED = {"Describe": {"Read", "Write", "Delete", "Alter"}, "DescribeConfigs": {"AlterConfigs"}}


def allowed(user: dict[str, Any], kind: str, name: str, operation: str) -> bool:
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        if acl.get("type", "allow") != "allow" or resource["type"] != kind:
            continue
        if resource.get("patternType", "literal") == "prefix":
            match = name.startswith(resource["name"])
        else:
            match = resource["name"] in (name, "*")
        ops = set(acl["operations"])
        if match and ("All" in ops or operation in ops or ops & IMPLIED.get(operation, set())):
            return True
    return False


def literal_group_ids() -> set[str]:
    """Consumer groups that the project's own code names ("group.id": "...")."""
    found = set()
    for path in (PROJECT_ROOT / "streamrag").rglob("*.py"):
        if "local" not in path.relative_to(PROJECT_ROOT).parts:
            found.update(re.findall(r'"group\.id":\s*"([\w.-]+)"', path.read_text()))
    return found


def test_the_cluster_authorizes_and_the_users_have_only_allow_acls_on_named_resources():
    assert kafka()["spec"]["kafka"]["authorization"]["type"] == "simple"
    for name, user in users().items():
        acls = user["spec"]["authorization"]["acls"]
        assert user["spec"]["authorization"]["type"] == "simple", name
        assert acls, name
        for acl in acls:
            assert acl.get("type", "allow") == "allow", name
            assert acl["resource"]["type"] in ("topic", "group"), name
            assert acl["resource"]["name"] not in ("", "*"), name
            assert "All" not in acl["operations"], name


@pytest.mark.parametrize("configmap", CONFIGMAPS)
def test_the_job_user_may_use_the_pipelines_topics_and_groups(configmap: str, tmp_path: Path):
    settings = settings_of(configmap, tmp_path)
    user = users()[settings.kafka.security.username or ""]
    replay = full_replay_settings(settings, f"{settings.store.kind}__g7", "bundled")
    topics = set(topic_configs(settings))
    replay_topics = set(topic_configs(replay)) - topics
    groups = {settings.kafka.group_id, replay.kafka.group_id, *literal_group_ids()}

    assert {t["spec"]["topicName"] for t in docs("strimzi/topics.yaml")} <= topics
    assert "streamrag-log-reader" in groups
    assert len(replay_topics) == 3
    for topic in topics:
        for op in ("Describe", "DescribeConfigs", "Read", "Write"):
            assert allowed(user, "topic", topic, op), (topic, op)
        # Created by the Topic Operator (topics.yaml), never by the job or the CLI.
        assert not allowed(user, "topic", topic, "Create"), topic
        assert not allowed(user, "topic", topic, "Delete"), topic
    for topic in replay_topics:  # `replay full` creates them and deletes them on failure
        for op in ("Create", "Delete", "Describe", "Read", "Write"):
            assert allowed(user, "topic", topic, op), (topic, op)
    for group in groups:
        assert allowed(user, "group", group, "Read"), group
    # Not Connect's.
    connect = one("strimzi/connect.yaml", "KafkaConnect")["spec"]
    assert not allowed(user, "group", connect["groupId"], "Read")
    assert not allowed(user, "topic", connect["configStorageTopic"], "Read")


def test_the_connect_user_may_use_connects_and_debeziums_topics():
    user = users()["streamrag-connect"]
    connect = one("strimzi/connect.yaml", "KafkaConnect")["spec"]
    config = one("strimzi/connect.yaml", "KafkaConnector")["spec"]["config"]
    prefix = config["topic.prefix"]
    tables = [f"{prefix}.{t}" for t in config["table.include.list"].split(",")]
    written = [
        *tables,
        config["notification.sink.topic.name"],
        # Debezium's heartbeat topic: topic.heartbeat.prefix (its default) and topic.prefix.
        f"{config.get('topic.heartbeat.prefix', '__debezium-heartbeat')}.{prefix}",
    ]

    assert allowed(user, "group", connect["groupId"], "Read")
    for key in ("offsetStorageTopic", "configStorageTopic", "statusStorageTopic"):
        for op in ("Create", "Describe", "DescribeConfigs", "Read", "Write"):
            assert allowed(user, "topic", connect[key], op), (key, op)
    for topic in written:  # created by Connect when missing (topic.creation.default.*)
        for op in ("Create", "Describe", "Write"):
            assert allowed(user, "topic", topic, op), (topic, op)
    # Not the pipeline's own topics nor its group.
    assert not allowed(user, "topic", "embeddings", "Write")
    assert not allowed(user, "group", "streamrag-pipeline", "Read")


def test_the_acl_check_is_not_vacuous():
    user = users()["streamrag"]
    no_group = copy.deepcopy(user)
    no_group["spec"]["authorization"]["acls"] = [
        a for a in no_group["spec"]["authorization"]["acls"] if a["resource"]["type"] != "group"
    ]

    assert allowed(user, "group", "streamrag-pipeline", "Read")
    assert not allowed(no_group, "group", "streamrag-pipeline", "Read")
    assert not allowed(user, "topic", "documents-other", "Read")  # literal, not a prefix
    assert allowed(user, "topic", "documents", "Describe")


# (d) No literal secret in any manifest

# Keys whose value would be a secret if it were not a reference to one.
SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|credential|access.?key|api.?key|jaas", re.I)
# Values that look like secrets whatever their key.
SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----"  # PEM
    r"|\beyJ[\w-]{10,}\.[\w-]{10,}"  # a JWT
    r"|password\s*=\s*\"[^\"$]"  # a JAAS line with a literal password
    r"|://[^/\s:@]+:[^/\s@$]+@",  # credentials in a URL
    re.I,
)
# Keys whose value names a Secret or a key of one (not the secret itself).
NAME_KEYS = {"secretName", "existingSecret", "key"}
# A reference: a file, an environment variable's name, a config provider's ${...}, a class.
REFERENCE = re.compile(
    r"/\S*|[A-Z_][A-Z0-9_]*|\$\{\w+:[^}]+\}|[a-z]+(\.[a-z]\w*)+\.[A-Z]\w*", re.ASCII
)


def walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, value) of every scalar, YAML text inside strings parsed as such (the
    ConfigMaps' streamrag.yaml, Helm's extraConfigFiles)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for value in node:
            yield from walk(value, path)
    elif isinstance(node, str) and "\n" in node:
        try:
            inner = yaml.safe_load(node)
        except yaml.YAMLError:
            inner = None
        if isinstance(inner, dict | list):
            yield from walk(inner, path)
        else:
            yield path, node
    else:
        yield path, node


def literal_secrets(doc: dict[str, Any]) -> list[str]:
    found = []
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        found.append(f"Secret {doc['metadata']['name']} with its data")
    for path, value in walk(doc):
        if not isinstance(value, str) or not value:
            continue
        where = ".".join(path)
        if SECRET_VALUE.search(value):
            found.append(f"{where}: a secret-looking value")
        elif path and SECRET_KEY.search(path[-1]) and path[-1] not in NAME_KEYS:
            # passwordSecret: {secretName, password: <the key of the Secret>}
            names_a_key = len(path) > 1 and path[-2].endswith("Secret")
            if not names_a_key and not REFERENCE.fullmatch(value):
                found.append(f"{where}: {value!r} is not a file, variable or reference")
    return found


def all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield str(path.relative_to(K8S)), doc


def test_no_manifest_holds_a_literal_secret():
    named = list(all_documents())

    assert len(named) > 20 and any(name == "milvus/values.yaml" for name, _ in named)
    assert {name: s for name, doc in named if (s := literal_secrets(doc))} == {}


@pytest.mark.parametrize(
    ("file", "kind", "plant"),
    [
        ("strimzi/connect.yaml", "KafkaConnector", ("spec", "config", "database.password")),
        ("strimzi/connect.yaml", "KafkaConnect", ("spec", "config", "sasl.jaas.config")),
        ("flinkdeployment.yaml", "FlinkDeployment", ("spec", "flinkConfiguration", "s3.secret")),
        ("milvus/values.yaml", None, ("minio", "secretKey")),
    ],
)
def test_a_planted_literal_secret_is_found(file: str, kind: str | None, plant: tuple[str, ...]):
    (doc,) = [d for n, d in all_documents() if n == file and (kind is None or d["kind"] == kind)]
    doc = copy.deepcopy(doc)
    node = doc
    for key in plant[:-1]:
        node = node[key]
    node[plant[-1]] = "hunter2-Xy7"
    jaas = copy.deepcopy(doc)
    node = jaas
    for key in plant[:-1]:
        node = node[key]
    node[plant[-1]] = 'ScramLoginModule required username="u" password="hunter2";'
    config = copy.deepcopy(one("configmap.yaml", "ConfigMap"))
    config["data"]["streamrag.yaml"] += "token: hunter2\n"

    assert literal_secrets(doc)
    assert literal_secrets(jaas)
    assert literal_secrets(config)
