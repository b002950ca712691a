"""The security sections of the config, turned into what each client takes.

One place decides how the project connects to a secured Kafka, PostgreSQL or Milvus:

- :func:`librdkafka_config` for the Python Kafka clients (confluent-kafka: the CLI, the
  replay's readers, status, the bench): the password is read here, into memory only;
- :func:`java_kafka_properties` for the Java clients (the Flink Kafka source and sinks,
  the Kafka Connect worker and its connectors' clients). Secrets never appear in these
  properties: the password and the client key are *references* that Kafka's own config
  providers resolve in the process that connects (``${dir:/mounted/secret:password}``
  reads a file, ``${env:NAME}`` a variable), so Flink's job graph, its REST API and web UI,
  and Connect's worker file hold no secret, only where to find it;
- :func:`pg_connect_kwargs` and :func:`milvus_client_kwargs` for the stores.

A secret file holds the secret and nothing else: no trailing newline, which Kafka's
providers would keep as part of the password (a mounted Kubernetes Secret is such a file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from streamrag.config import (
    ConfigError,
    KafkaSecurityConfig,
    MilvusConfig,
    PgvectorConfig,
    Settings,
)

# Where flink-sql-connector-kafka shades the Kafka client: class names in its properties
# (login modules, config providers) must carry this prefix.
FLINK_KAFKA_SHADED = "org.apache.flink.kafka.shaded."

_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
PROVIDER_CLASSES = {
    "dir": "org.apache.kafka.common.config.provider.DirectoryConfigProvider",
    "env": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
    "file": "org.apache.kafka.common.config.provider.FileConfigProvider",
}
_REFERENCE = re.compile(r"\$\{(\w+):")


def read_secret_file(path: Path, what: str) -> str:
    """The content of a secret file, checked to be usable by every client."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the {what} file {path}: {e.strerror}") from e
    if not text:
        raise ConfigError(f"the {what} file {path} is empty")
    if text != text.strip():
        raise ConfigError(
            f"the {what} file {path} ends (or starts) with whitespace, which Kafka's Java"
            " clients would take as part of the secret: write it without (printf '%s')"
        )
    return text


def _secret(path: Path | None, env: str, what: str, setting: str) -> str:
    if path is not None:
        return read_secret_file(path, what)
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"no {what}: set {setting}_file, or the environment variable {env}")
    return value


def kafka_password(security: KafkaSecurityConfig) -> str:
    return _secret(
        security.password_file, security.password_env, "Kafka password", "kafka.security.password"
    )


def librdkafka_config(bootstrap: str, security: KafkaSecurityConfig) -> dict[str, Any]:
    """bootstrap.servers and the security settings for a confluent-kafka client."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": security.protocol,
    }
    if security.sasl:
        config["sasl.mechanisms"] = security.sasl_mechanism
        config["sasl.username"] = security.username
        config["sasl.password"] = kafka_password(security)
    if security.tls:
        if security.ca_file is not None:
            config["ssl.ca.location"] = str(security.ca_file)
        if security.cert_file is not None and security.key_file is not None:
            config["ssl.certificate.location"] = str(security.cert_file)
            config["ssl.key.location"] = str(security.key_file)
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if security.endpoint_identification else "none"
        )
    return config


def _file_reference(path: Path) -> str:
    """``${dir:<folder>:<name>}``: DirectoryConfigProvider reads the file's content."""
    # absolute(), not resolve(): a mounted Kubernetes Secret is a symlink into a dated
    # folder that differs between pods and changes when the Secret does.
    path = path.absolute()
    return f"${{dir:{path.parent}:{path.name}}}"


def java_kafka_properties(security: KafkaSecurityConfig, class_prefix: str = "") -> dict[str, str]:
    """The Java Kafka clients' security properties, secrets as config-provider references.

    ``class_prefix`` is prepended to Kafka class names: FLINK_KAFKA_SHADED for the Flink
    connector, nothing for Kafka Connect."""
    props: dict[str, str] = {"security.protocol": security.protocol}
    if security.sasl:
        password = (
            _file_reference(security.password_file)
            if security.password_file is not None
            else f"${{env:{security.password_env}}}"
        )
        module = class_prefix + _LOGIN_MODULES[security.sasl_mechanism]
        props["sasl.mechanism"] = security.sasl_mechanism
        props["sasl.jaas.config"] = (
            f'{module} required username="{security.username}" password="{password}";'
        )
    if security.tls:
        if security.ca_file is not None:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(security.ca_file.absolute())
        if security.cert_file is not None and security.key_file is not None:
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.certificate.chain"] = _file_reference(security.cert_file)
            props["ssl.keystore.key"] = _file_reference(security.key_file)
        props["ssl.endpoint.identification.algorithm"] = (
            "https" if security.endpoint_identification else ""
        )
    used = sorted({m.group(1) for v in props.values() for m in _REFERENCE.finditer(v)})
    if used:
        props["config.providers"] = ",".join(used)
        for name in used:
            props[f"config.providers.{name}.class"] = class_prefix + PROVIDER_CLASSES[name]
    return props


def pg_connect_kwargs(config: PgvectorConfig) -> dict[str, str]:
    """libpq parameters of ``store.security``, added to the DSN's (the password read from
    its file: in memory only)."""
    security = config.security
    kwargs: dict[str, str] = {}
    if security.sslmode is not None:
        kwargs["sslmode"] = security.sslmode
    if security.root_cert_file is not None:
        kwargs["sslrootcert"] = str(security.root_cert_file)
    if security.cert_file is not None and security.key_file is not None:
        kwargs["sslcert"] = str(security.cert_file)
        kwargs["sslkey"] = str(security.key_file)
    if security.password_file is not None:
        kwargs["password"] = read_secret_file(security.password_file, "PostgreSQL password")
    return kwargs


def milvus_token(config: MilvusConfig) -> str:
    """The Milvus token from its file or environment variable; "" when there is none."""
    security = config.security
    if security.token_file is not None:
        return read_secret_file(security.token_file, "Milvus token")
    return os.environ.get(security.token_env, "")


def milvus_client_kwargs(config: MilvusConfig) -> dict[str, Any]:
    """Keyword arguments of pymilvus' MilvusClient for ``store``: uri, token and TLS."""
    security = config.security
    kwargs: dict[str, Any] = {"uri": config.uri, "token": milvus_token(config)}
    if security.tls or config.uri.startswith("https://"):
        kwargs["secure"] = True
        if security.ca_file is not None:
            kwargs["server_pem_path"] = str(security.ca_file)
        if security.server_name:
            kwargs["server_name"] = security.server_name
    return kwargs


def secret_variables(settings: Settings) -> set[str]:
    """The environment variables that the config names as holding secrets (a process
    started with a filtered environment must keep them)."""
    names = {settings.kafka.security.password_env}
    if isinstance(settings.store, MilvusConfig):
        names.add(settings.store.security.token_env)
    return names
