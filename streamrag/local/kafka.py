"""Kafka (a single-node KRaft broker) and Kafka Connect with Debezium, from the jars that
Maven resolved (``make jars``)."""

from __future__ import annotations

import base64
import secrets
import subprocess
import uuid
from pathlib import Path

import requests

from streamrag.config import KafkaSecurityConfig, Settings
from streamrag.local.service import (
    HOST,
    JavaService,
    StackError,
    jars_dir,
    port_open,
    show,
    work_dir,
    write_private,
)
from streamrag.local.tls import ensure_certificates
from streamrag.security import PROVIDER_CLASSES, java_kafka_properties, librdkafka_config

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"


MAX_BROKERS = 5


def broker_ports(settings: Settings, node: int) -> tuple[int, int]:
    """(client, controller) ports of broker ``node`` (1-based): node 1 has the configured
    ports, each further node the next two."""
    step = 2 * (node - 1)
    return settings.stack.kafka_port + step, settings.stack.kafka_controller_port + step


def bootstrap_servers(settings: Settings) -> str:
    """Every broker of the local stack, for clients that must survive losing one."""
    ports = [broker_ports(settings, n)[0] for n in range(1, settings.stack.brokers + 1)]
    return ",".join(f"{HOST}:{port}" for port in ports)


def brokers_file(settings: Settings) -> Path:
    """Where node 1 notes how many brokers the Kafka data was formatted for."""
    return work_dir(settings) / "kafka" / "brokers"


def formatted_brokers(settings: Settings) -> int | None:
    """How many brokers the stack's Kafka data was formatted for; None before the first
    start."""
    try:
        return int(brokers_file(settings).read_text().strip())
    except (OSError, ValueError):
        return None


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) on a stack of ``brokers``: 3 and 2 from
    three brokers on, so that one broker may die without a write being lost or refused."""
    factor = min(brokers, 3)
    return factor, max(factor - 1, 1)


# The secured stack's SCRAM users: the brokers among themselves, and every client of the
# project (the pipeline, the CLI, Kafka Connect).
ADMIN_USER = "admin"
CLIENT_USER = "streamrag"
SCRAM = "SCRAM-SHA-512"


def password_file(settings: Settings, user: str) -> Path:
    return settings.stack.secrets_dir / f"kafka-{user}.password"


def _password(settings: Settings, user: str) -> str:
    path = password_file(settings, user)
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))  # no newline: see streamrag.security
    return path.read_text(encoding="utf-8")


def client_security(settings: Settings) -> KafkaSecurityConfig:
    """How a client connects to this stack: plaintext, or with --secure SASL_SSL as user
    streamrag (password and CA from the work directory)."""
    if not settings.stack.secure:
        return KafkaSecurityConfig()
    return KafkaSecurityConfig(
        protocol="SASL_SSL",
        sasl_mechanism=SCRAM,
        username=CLIENT_USER,
        password_file=password_file(settings, CLIENT_USER),
        ca_file=settings.stack.tls_dir / "ca.crt",
    )


def secure_marker(settings: Settings) -> Path:
    """Present when the stack's Kafka data was formatted with SCRAM users (--secure)."""
    return work_dir(settings) / "kafka" / "secure"


class Kafka(JavaService):
    """One KRaft node (broker and controller). One node: a dynamic quorum formatted with
    --standalone; several (``stack.brokers``): a static quorum of all of them, formatted
    with one cluster id, and replicated internal and pipeline topics."""

    name = "kafka"
    port_keys = ("kafka_port", "kafka_controller_port")
    main_class = "kafka.Kafka"
    properties_name = "server.properties"
    quiet_loggers = {
        "kafka.request.logger": "WARN",
        "state.change.logger": "WARN",
        "org.apache.kafka.common.utils.AppInfoParser": "WARN",
    }

    def __init__(self, settings: Settings, node: int = 1) -> None:
        self.node = node
        if node > 1:
            self.name = f"kafka-{node}"
        super().__init__(settings)

    @property
    def ports(self) -> list[int]:
        return list(broker_ports(self.settings, self.node))

    def _cluster_id(self) -> str:
        """One id for every node of the cluster, kept next to node 1's data."""
        path = self.work / "kafka" / "cluster-id"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Kafka's own ids never start with "-" (its command line would read an option).
            cluster_id = "-"
            while cluster_id.startswith("-"):
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            path.write_text(cluster_id)
        return path.read_text().strip()

    def prepare(self) -> None:
        broker, controller = self.ports
        brokers = self.settings.stack.brokers
        factor, min_isr = replication(brokers)
        if brokers == 1:
            quorum = {"controller.quorum.bootstrap.servers": f"{HOST}:{controller}"}
        else:
            voters = ",".join(
                f"{n}@{HOST}:{broker_ports(self.settings, n)[1]}" for n in range(1, brokers + 1)
            )
            quorum = {"controller.quorum.voters": voters}
        data = self.home / "data"
        listener = "SASL_SSL" if self.settings.stack.secure else "PLAINTEXT"
        self.write_config(
            {
                "process.roles": "broker,controller",
                "node.id": self.node,
                **quorum,
                "listeners": f"{listener}://{HOST}:{broker},CONTROLLER://{HOST}:{controller}",
                "advertised.listeners": f"{listener}://{HOST}:{broker},CONTROLLER://{HOST}:{controller}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": listener,
                "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
                **self._security(),
                "log.dirs": data,
                "num.partitions": self.settings.kafka.partitions,
                "auto.create.topics.enable": "true",
                # Topics created without a factor (the pipeline's, Connect's) get these.
                "default.replication.factor": factor,
                "min.insync.replicas": min_isr,
                "offsets.topic.replication.factor": factor,
                "offsets.topic.num.partitions": 10,
                "transaction.state.log.replication.factor": factor,
                "transaction.state.log.min.isr": min_isr,
                "share.coordinator.state.topic.replication.factor": factor,
                "share.coordinator.state.topic.min.isr": min_isr,
                "log.cleaner.enable": "true",
                "group.initial.rebalance.delay.ms": 0,
            }
        )  # fmt: skip
        secure = self.settings.stack.secure
        if (data / "meta.properties").exists():
            if secure_marker(self.settings).exists() != secure:
                was = "secured (--secure)" if not secure else "plaintext"
                raise StackError(
                    f"the Kafka data in {show(self.work / 'kafka')} is of a {was} stack: start"
                    " it the same way, or use another work directory (STREAMRAG_STACK__WORK_DIR)"
                )
            formatted = formatted_brokers(self.settings) or 1
            if formatted != brokers:
                raise StackError(
                    f"the Kafka data in {show(self.work / 'kafka')} is of a {formatted}-broker"
                    f" stack: start it with --brokers {formatted}, or stop the stack and"
                    " remove the kafka* folders of the work directory to start over"
                )
            return
        data.mkdir(parents=True, exist_ok=True)
        standalone = ["--standalone"] if brokers == 1 else []
        users = []
        for user in (ADMIN_USER, CLIENT_USER) if secure else ():
            password = _password(self.settings, user)
            users += ["--add-scram", f"{SCRAM}=[name={user},password={password}]"]
        # The tool's arguments, SCRAM passwords among them, go in a private argument file
        # that the java launcher reads (`java @file`), never on a command line that any
        # local user can list; its report of the credentials stays out of the log.
        args = self.settings.stack.secrets_dir / f"{self.name}-format.args"
        write_private(args, "\n".join([
            "kafka.tools.StorageTool", "format", *standalone, *users,
            f"--cluster-id={self._cluster_id()}", "-c", str(self.properties),
        ]) + "\n")  # fmt: skip
        try:
            cmd = [*self.java_launcher(), f"@{args}"]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            args.unlink(missing_ok=True)
        report = "".join(
            "Bootstrap metadata: (not logged: it holds the SCRAM credentials)\n"
            if users and line.startswith("Bootstrap metadata:")
            else line
            for line in (result.stdout + result.stderr).splitlines(keepends=True)
        )
        with self.log.open("a", encoding="utf-8") as f:
            f.write(f"--- kafka storage format\n{report}")
        if result.returncode != 0:
            raise StackError(f"formatting kafka storage failed; see {show(self.log)}")
        if self.node == 1:
            brokers_file(self.settings).write_text(f"{brokers}\n")
            if secure:
                secure_marker(self.settings).write_text("SASL_SSL, SCRAM-SHA-512\n")

    def _security(self) -> dict[str, str]:
        """With --secure: TLS with the stack's certificate and SCRAM logins; the brokers
        talk to each other as user admin, whose password the file provider reads."""
        if not self.settings.stack.secure:
            return {}
        certs = ensure_certificates(self.settings.stack.tls_dir)
        _password(self.settings, ADMIN_USER)
        _password(self.settings, CLIENT_USER)
        admin = KafkaSecurityConfig(
            protocol="SASL_SSL",
            sasl_mechanism=SCRAM,
            username=ADMIN_USER,
            password_file=password_file(self.settings, ADMIN_USER),
        )
        client = java_kafka_properties(admin)
        return {
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config": client["sasl.jaas.config"],
            "config.providers": client["config.providers"],
            "config.providers.dir.class": client["config.providers.dir.class"],
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(certs.server_pem),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certs.ca),
            "ssl.endpoint.identification.algorithm": "https",
        }

    def ready(self) -> bool:
        if not port_open(self.ports[0]):
            return False
        from confluent_kafka.admin import AdminClient

        security = client_security(self.settings)
        config = {**librdkafka_config(self.address, security), "log_level": 0}
        admin = AdminClient(config)
        try:
            return bool(admin.list_topics(timeout=3).brokers)
        except Exception:
            return False


class Connect(JavaService):
    """Kafka Connect distributed worker with the Debezium PostgreSQL plugin."""

    name = "connect"
    port_keys = ("connect_port",)
    needs = ("kafka",)
    main_class = "org.apache.kafka.connect.cli.ConnectDistributed"
    properties_name = "connect-distributed.properties"
    quiet_loggers = {
        "org.apache.kafka.common.utils.AppInfoParser": "WARN",
        "org.apache.kafka.connect.runtime.isolation": "WARN",
    }

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self.ports[0]}"

    def prepare(self) -> None:
        plugins = jars_dir(self.settings) / "debezium"
        if not any(plugins.glob("*/debezium-connector-postgres-*.jar")):
            raise StackError(f"Debezium plugin not found in {show(plugins)}; resolve it with Maven")
        port = self.ports[0]
        self.write_config(
            {
                "bootstrap.servers": bootstrap_servers(self.settings),
                "group.id": "streamrag-connect",
                "listeners": f"http://{HOST}:{port}",
                "rest.advertised.host.name": HOST,
                "rest.advertised.port": port,
                "key.converter": "org.apache.kafka.connect.json.JsonConverter",
                "value.converter": "org.apache.kafka.connect.json.JsonConverter",
                # Plain JSON payloads (no schema envelope); a connector may override this.
                "key.converter.schemas.enable": "false",
                "value.converter.schemas.enable": "false",
                "config.storage.topic": "_connect-configs",
                "offset.storage.topic": "_connect-offsets",
                "status.storage.topic": "_connect-status",
                # -1: the brokers' default.replication.factor (3 on a 3-broker stack).
                "config.storage.replication.factor": -1,
                "offset.storage.replication.factor": -1,
                "status.storage.replication.factor": -1,
                "offset.flush.interval.ms": 1000,
                # One worker: when it dies there is no other to wait for before its
                # connectors are assigned again (the default waits up to 5 minutes).
                "scheduled.rebalance.max.delay.ms": 0,
                "plugin.path": plugins,
                # Debezium ships ServiceLoader manifests: skip the slow reflective scan.
                "plugin.discovery": "service_load",
                **self._security(),
            }
        )  # fmt: skip

    def _security(self) -> dict[str, str]:
        """Config providers (connector configs name their passwords by file or variable),
        and with --secure the worker's clients (its own and its connectors': producer.,
        consumer., admin.) as user streamrag over SASL_SSL."""
        props = java_kafka_properties(client_security(self.settings))
        providers = {"file", "env", *props.pop("config.providers", "").split(",")} - {""}
        for key in [k for k in props if k.startswith("config.providers.")]:
            del props[key]
        clients = {
            f"{prefix}{k}": v
            for prefix in ("", "producer.", "consumer.", "admin.")
            for k, v in props.items()
        }
        return {
            **clients,
            "config.providers": ",".join(sorted(providers)),
            **{
                f"config.providers.{name}.class": PROVIDER_CLASSES[name]
                for name in sorted(providers)
            },
        }

    def ready(self) -> bool:
        try:
            # /health: the worker has joined its group and can take connector configs.
            if not requests.get(f"{self.address}/health", timeout=3).ok:
                return False
            resp = requests.get(f"{self.address}/connector-plugins", timeout=3)
            return resp.ok and any(p.get("class") == POSTGRES_CONNECTOR for p in resp.json())
        except (requests.RequestException, ValueError):
            return False
