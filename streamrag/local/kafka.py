"""Kafka (a single-node KRaft broker) and Kafka Connect with Debezium, from the jars that
Maven resolved (``make jars``)."""

from __future__ import annotations

import base64
import subprocess
import uuid

import requests

from streamrag.local.service import HOST, JavaService, StackError, jars_dir, port_open, show

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"


class Kafka(JavaService):
    """Single-node KRaft broker+controller (dynamic quorum, formatted with --standalone)."""

    name = "kafka"
    port_keys = ("kafka_port", "kafka_controller_port")
    main_class = "kafka.Kafka"
    properties_name = "server.properties"
    quiet_loggers = {
        "kafka.request.logger": "WARN",
        "state.change.logger": "WARN",
        "org.apache.kafka.common.utils.AppInfoParser": "WARN",
    }

    def prepare(self) -> None:
        broker, controller = self.ports
        data = self.home / "data"
        self.write_config(
            {
                "process.roles": "broker,controller",
                "node.id": 1,
                "controller.quorum.bootstrap.servers": f"{HOST}:{controller}",
                "listeners": f"PLAINTEXT://{HOST}:{broker},CONTROLLER://{HOST}:{controller}",
                "advertised.listeners": f"PLAINTEXT://{HOST}:{broker},CONTROLLER://{HOST}:{controller}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "log.dirs": data,
                "num.partitions": self.settings.kafka.partitions,
                "auto.create.topics.enable": "true",
                "offsets.topic.replication.factor": 1,
                "offsets.topic.num.partitions": 10,
                "transaction.state.log.replication.factor": 1,
                "transaction.state.log.min.isr": 1,
                "share.coordinator.state.topic.replication.factor": 1,
                "share.coordinator.state.topic.min.isr": 1,
                "log.cleaner.enable": "true",
                "group.initial.rebalance.delay.ms": 0,
            }
        )
        if (data / "meta.properties").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cmd = self.java_command(
            "kafka.tools.StorageTool", "format", "--standalone",
            "-t", cluster_id, "-c", str(self.properties),
        )  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        with self.log.open("a", encoding="utf-8") as f:
            f.write(f"--- kafka storage format\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise StackError(f"formatting kafka storage failed; see {show(self.log)}")

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
                "bootstrap.servers": f"{HOST}:{self.settings.stack.kafka_port}",
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
                "config.storage.replication.factor": 1,
                "offset.storage.replication.factor": 1,
                "status.storage.replication.factor": 1,
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
