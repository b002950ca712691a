"""What every service of the local stack is: paths, ports, the Service and JavaService
bases (config files, command, readiness probe). The services themselves: kafka.py,
postgres.py, milvus.py; process handling (pid files, start, stop): stack.py.
Everything is derived from ``settings.stack``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

from streamrag.config import PROJECT_ROOT, Settings
from streamrag.errors import UserError
from streamrag.local.versions import MIN_JAVA, command_output, java_major

HOST = "127.0.0.1"


class StackError(UserError):
    """A problem with the local stack; the message is one line for the user."""


# --- paths ------------------------------------------------------------------------------


def work_dir(settings: Settings) -> Path:
    return Path(settings.stack.work_dir).resolve()


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


def write_private(path: Path, text: str) -> None:
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
    """The java to run services with ($JAVA_HOME's, else PATH's), checked to be 17+."""
    java_home = os.environ.get("JAVA_HOME")
    found: str | None = None
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        found = str(Path(java_home) / "bin" / "java")
    found = found or shutil.which("java")
    if not found:
        raise StackError(f"java not found: install Java {MIN_JAVA}+ or set JAVA_HOME")
    major = java_major(command_output([found, "-version"]))
    if major is None or major < MIN_JAVA:
        raise StackError(
            f"java at {found} is version {major or 'unknown'}: Java {MIN_JAVA}+ is needed"
            " (install it and set JAVA_HOME or put it first on PATH)"
        )
    return found


def port_setting(settings: Settings, port: int) -> str:
    """The name of the stack setting that holds ``port`` (for messages)."""
    for name, value in settings.stack.model_dump().items():
        if name.endswith("_port") and value == port:
            return name.upper()
    return "<SERVICE>_PORT"


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
        return [*self.java_launcher(), main_class, *args]

    def java_launcher(self) -> list[str]:
        """``java`` and its options, up to the main class."""
        return [
            find_java(),
            "-Xms128m",
            "-Xmx512m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.xml'}",
            "-cp",
            self.classpath(),
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
