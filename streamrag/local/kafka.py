"""Kafka (a single-node KRaft broker) and Kafka Connect with Debezium, from the jars that
Maven resolved (``make jars``)."""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

import requests

from streamrag.config import Settings
from streamrag.local.service import (
    HOST,
    JavaService,
    StackError,
    jars_dir,
    port_open,
    show,
    work_dir,
)

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
            path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
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
        self.write_config(
            {
                "process.roles": "broker,controller",
                "node.id": self.node,
                **quorum,
                "listeners": f"PLAINTEXT://{HOST}:{broker},CONTROLLER://{HOST}:{controller}",
                "advertised.listeners": f"PLAINTEXT://{HOST}:{broker},CONTROLLER://{HOST}:{controller}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
        if (data / "meta.properties").exists():
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
        cmd = self.java_command(
            "kafka.tools.StorageTool", "format", *standalone,
            "-t", self._cluster_id(), "-c", str(self.properties),
        )  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        with self.log.open("a", encoding="utf-8") as f:
            f.write(f"--- kafka storage format\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise StackError(f"formatting kafka storage failed; see {show(self.log)}")
        if self.node == 1:
            brokers_file(self.settings).write_text(f"{brokers}\n")

    def ready(self) -> bool:
        if not port_open(self.ports[0]):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address, "log_level": 0})
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
                "config.providers": "file,env",
                "config.providers.file.class":
                    "org.apache.kafka.common.config.provider.FileConfigProvider",
                "config.providers.env.class":
                    "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
            }
        )  # fmt: skip

    def ready(self) -> bool:
        try:
            # /health: the worker has joined its group and can take connector configs.
            if not requests.get(f"{self.address}/health", timeout=3).ok:
                return False
            resp = requests.get(f"{self.address}/connector-plugins", timeout=3)
            return resp.ok and any(p.get("class") == POSTGRES_CONNECTOR for p in resp.json())
        except (requests.RequestException, ValueError):
            return False
