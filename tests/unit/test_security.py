"""The security sections and what each client gets from them (streamrag/security.py):
secrets are read from files or variables into memory, and reach the Java clients (the
Flink job graph, Kafka Connect's worker file) only as config-provider references."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from connect.registry import DEFAULT_CONNECTOR_FILE, load_connector_file
from streamrag.config import (
    ConfigError,
    KafkaSecurityConfig,
    MilvusConfig,
    PgvectorConfig,
    load_settings,
)
from streamrag.flink import security_options
from streamrag.local import stack
from streamrag.local.kafka import Connect, Kafka, client_security, password_file
from streamrag.local.tls import ensure_certificates
from streamrag.security import (
    FLINK_KAFKA_SHADED,
    java_kafka_properties,
    librdkafka_config,
    milvus_client_kwargs,
    pg_connect_kwargs,
    read_secret_file,
    secret_variables,
)

SECRET = "s3cr3t-Pa55word"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("STREAMRAG_"):
            monkeypatch.delenv(name)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka-user" / "password"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def scram(password_file: Path | None = None, **extra: object) -> KafkaSecurityConfig:
    return KafkaSecurityConfig(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username="streamrag",
        password_file=password_file,
        **extra,  # type: ignore[arg-type]
    )


def test_java_clients_get_references_never_the_password(secret_file: Path):
    props = java_kafka_properties(scram(secret_file, ca_file=Path("/ca/ca.crt")))

    assert not any(SECRET in v for v in props.values())
    assert props["sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required"
        f' username="streamrag" password="${{dir:{secret_file.parent}:password}}";'
    )
    assert props["config.providers"] == "dir"
    assert props["config.providers.dir.class"].endswith(".DirectoryConfigProvider")
    assert props["ssl.truststore.type"] == "PEM"
    assert props["ssl.truststore.location"] == "/ca/ca.crt"
    assert props["ssl.endpoint.identification.algorithm"] == "https"


def test_the_password_variable_is_named_not_read(monkeypatch):
    monkeypatch.setenv("STREAMRAG_KAFKA_PASSWORD", SECRET)
    props = java_kafka_properties(scram())

    assert 'password="${env:STREAMRAG_KAFKA_PASSWORD}"' in props["sasl.jaas.config"]
    assert props["config.providers"] == "env"
    assert SECRET not in str(props)


def test_a_mounted_secret_is_named_by_its_mount_path_not_the_symlinks_target(tmp_path: Path):
    """Kubernetes mounts a Secret's key as a symlink into a dated folder that differs per pod."""
    dated = tmp_path / "..2026_12_01_18_00_00.123" / "password"
    dated.parent.mkdir()
    dated.write_text(SECRET)
    mounted = tmp_path / "password"
    mounted.symlink_to(dated)

    props = java_kafka_properties(scram(mounted))

    assert f"${{dir:{tmp_path}:password}}" in props["sasl.jaas.config"]


def test_mutual_tls_reads_certificate_and_key_through_the_provider(tmp_path: Path):
    cert, key = tmp_path / "user.crt", tmp_path / "user.key"
    props = java_kafka_properties(
        KafkaSecurityConfig(protocol="SSL", cert_file=cert, key_file=key), FLINK_KAFKA_SHADED
    )

    assert props["ssl.keystore.type"] == "PEM"
    assert props["ssl.keystore.certificate.chain"] == f"${{dir:{tmp_path}:user.crt}}"
    assert props["ssl.keystore.key"] == f"${{dir:{tmp_path}:user.key}}"
    assert props["config.providers.dir.class"].startswith(FLINK_KAFKA_SHADED)
    assert "sasl.jaas.config" not in props


def test_plaintext_adds_nothing_but_the_protocol():
    assert java_kafka_properties(KafkaSecurityConfig()) == {"security.protocol": "PLAINTEXT"}
    assert librdkafka_config("b:9092", KafkaSecurityConfig()) == {
        "bootstrap.servers": "b:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_the_flink_tables_name_the_shaded_classes_and_hold_no_secret(secret_file: Path):
    settings = load_settings(
        kafka__security={
            "protocol": "SASL_SSL",
            "username": "streamrag",
            "password_file": str(secret_file),
        }
    )
    options = security_options(settings)

    assert SECRET not in options
    assert f"'properties.sasl.jaas.config' = '{FLINK_KAFKA_SHADED}org.apache" in options
    assert "'properties.security.protocol' = 'SASL_SSL'," in options


def test_python_clients_read_the_password_into_memory(secret_file: Path):
    config = librdkafka_config("b:9093", scram(secret_file, ca_file=Path("/ca.crt")))

    assert config["sasl.password"] == SECRET
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert config["ssl.ca.location"] == "/ca.crt"


@pytest.mark.parametrize(
    ("content", "says"),
    [("", "is empty"), (SECRET + "\n", "whitespace"), (" " + SECRET, "whitespace")],
)
def test_a_secret_file_kafka_would_misread_is_one_clear_line(tmp_path: Path, content, says):
    path = tmp_path / "password"
    path.write_text(content)

    with pytest.raises(ConfigError, match=says) as err:
        read_secret_file(path, "Kafka password")
    assert "\n" not in str(err.value) and SECRET not in str(err.value)


def test_no_password_anywhere_is_one_clear_line():
    with pytest.raises(ConfigError, match="STREAMRAG_KAFKA_PASSWORD"):
        librdkafka_config("b:9093", scram())


@pytest.mark.parametrize(
    ("security", "says"),
    [
        ({"protocol": "SASL_SSL"}, "needs a username"),
        ({"protocol": "SSL", "cert_file": "/c"}, "both cert_file and key_file"),
        ({"protocol": "PLAINTEXT", "ca_file": "/ca"}, "need protocol SSL or SASL_SSL"),
        ({"protocol": "SASL_SSL", "username": 'a" b'}, "username"),
        ({"protocol": "TLS"}, "protocol"),
        ({"password": "inline"}, "password"),  # no field for a secret in the file
    ],
)
def test_inconsistent_kafka_security_is_one_clear_line(security, says):
    with pytest.raises(ConfigError, match=says) as err:
        load_settings(kafka__security=security)
    assert "\n" not in str(err.value)


def test_pgvector_security_becomes_libpq_parameters(tmp_path: Path):
    pw = tmp_path / "pgpassword"
    pw.write_text(SECRET)
    config = PgvectorConfig(
        security={  # type: ignore[arg-type]
            "sslmode": "verify-full",
            "root_cert_file": "/ca.crt",
            "cert_file": "/c.crt",
            "key_file": "/c.key",
            "password_file": str(pw),
        }
    )

    assert pg_connect_kwargs(config) == {
        "sslmode": "verify-full",
        "sslrootcert": "/ca.crt",
        "sslcert": "/c.crt",
        "sslkey": "/c.key",
        "password": SECRET,
    }
    assert pg_connect_kwargs(PgvectorConfig()) == {}


def test_milvus_tls_and_token(tmp_path: Path, monkeypatch):
    token = tmp_path / "token"
    token.write_text(SECRET)
    config = MilvusConfig(
        uri="https://milvus:19530",
        security={"ca_file": "/ca.crt", "server_name": "milvus.svc", "token_file": str(token)},  # type: ignore[arg-type]
    )
    assert milvus_client_kwargs(config) == {
        "uri": "https://milvus:19530",
        "token": SECRET,
        "secure": True,
        "server_pem_path": "/ca.crt",
        "server_name": "milvus.svc",
    }
    monkeypatch.setenv("STREAMRAG_MILVUS_TOKEN", "from-env")
    assert milvus_client_kwargs(MilvusConfig()) == {
        "uri": "http://127.0.0.1:19530",
        "token": "from-env",
    }


def test_the_secret_variables_survive_a_filtered_environment():
    settings = load_settings(kafka__security={"password_env": "KAFKA_PW"})
    assert secret_variables(settings) == {"KAFKA_PW"}  # pgvector: libpq's own variables
    milvus = load_settings(kafka__security={"password_env": "KAFKA_PW"}, store__kind="milvus")
    assert secret_variables(milvus) == {"KAFKA_PW", "STREAMRAG_MILVUS_TOKEN"}


# --- the secured local stack ------------------------------------------------------------


@pytest.fixture
def secure_settings(tmp_path: Path):
    return load_settings(stack__work_dir=str(tmp_path), stack__secure=True)


def test_the_secured_broker_takes_sasl_ssl_only_and_names_its_password(secure_settings):
    kafka = Kafka(secure_settings)
    kafka.write_config({"listeners": "x"})  # creates its folder
    props = kafka._security()

    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "${dir:" in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    admin_password = password_file(secure_settings, "admin").read_text()
    assert admin_password not in str(props)
    assert (
        (secure_settings.stack.tls_dir / "server.pem")
        .read_text()
        .startswith("-----BEGIN PRIVATE KEY-----")
    )


def test_connect_and_its_connectors_clients_authenticate(secure_settings, monkeypatch):
    ensure_certificates(secure_settings.stack.tls_dir)
    props = Connect(secure_settings)._security()

    for prefix in ("", "producer.", "consumer.", "admin."):
        assert props[f"{prefix}security.protocol"] == "SASL_SSL"
        assert "${dir:" in props[f"{prefix}sasl.jaas.config"]
    assert props["config.providers"] == "dir,env,file"
    assert "producer.config.providers" not in props
    plain = Connect(load_settings())._security()
    assert plain["config.providers"] == "env,file" and plain["security.protocol"] == "PLAINTEXT"


def test_the_client_config_of_the_secured_stack_loads_and_holds_no_secret(secure_settings):
    path = stack.client_config(secure_settings)
    password_file(secure_settings, "streamrag").parent.mkdir(parents=True, exist_ok=True)
    password_file(secure_settings, "streamrag").write_text(SECRET)

    assert client_security(secure_settings).password_file == password_file(
        secure_settings, "streamrag"
    )
    loaded = load_settings(path)
    assert SECRET not in path.read_text()
    assert loaded.kafka.security.protocol == "SASL_SSL"
    assert loaded.kafka.security.password_file == password_file(secure_settings, "streamrag")
    assert isinstance(loaded.store, PgvectorConfig)
    assert loaded.store.security.sslmode == "verify-full"
    assert yaml.safe_load(path.read_text())["stack"]["secure"] is True


def test_debezium_reaches_the_secured_stack_over_verified_tls(secure_settings):
    _, config = load_connector_file(DEFAULT_CONNECTOR_FILE, secure_settings)
    assert config["database.sslmode"] == "verify-full"
    assert config["database.sslrootcert"] == str(secure_settings.stack.tls_dir / "ca.crt")

    _, plain = load_connector_file(DEFAULT_CONNECTOR_FILE, load_settings())
    assert "database.sslmode" not in plain and "database.sslrootcert" not in plain
