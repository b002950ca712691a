"""The local real-services stack: PostgreSQL+pgvector, Kafka (KRaft), Kafka Connect with
Debezium, and a Milvus Lite server, all as plain processes under ``<work_dir>``.

    streamrag stack up [SERVICES...]   # idempotent; default: all, in start order
    (the commands: streamrag/cli/local.py)
    streamrag stack status
    streamrag stack down

Layout: ``<work_dir>/<service>/`` (config + data), ``logs/<service>.log``,
``run/<service>.pid``, ``secrets/`` (generated PostgreSQL password, mode 0600).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import psutil
import yaml
from psycopg.conninfo import make_conninfo

from streamrag.config import MilvusConfig, PgvectorConfig, Settings
from streamrag.local.kafka import (
    Connect,
    Kafka,
    bootstrap_servers,
    client_security,
    formatted_brokers,
)
from streamrag.local.milvus import Milvus, MilvusServer
from streamrag.local.postgres import PG_DATABASE, PG_USER, Postgres, PostgresTls
from streamrag.local.service import (
    HOST,
    JavaService,
    Service,
    StackError,
    find_java,
    port_free,
    port_setting,
    show,
    work_dir,
)

__all__ = [
    "SERVICE_NAMES",
    "STORES",
    "StackError",
    "describe",
    "down",
    "pids",
    "postgres_dsn",
    "status",
    "store_config",
    "store_env",
    "up",
]

# In start order: a service's needs come before it.
SERVICES: dict[str, type[Service]] = {
    cls.name: cls for cls in (Postgres, PostgresTls, Kafka, Connect, Milvus, MilvusServer)
}
SERVICE_NAMES: tuple[str, ...] = tuple(SERVICES)


def _instances(settings: Settings, brokers: int | None = None) -> dict[str, Service]:
    """Every process of the stack by name, in start order: ``kafka`` is one process per
    broker (kafka, kafka-2, ...)."""
    out: dict[str, Service] = {}
    for name, cls in SERVICES.items():
        if cls is PostgresTls and not settings.stack.secure:
            continue  # only the secured stack has it
        if cls is Kafka:
            for node in range(1, (brokers or settings.stack.brokers) + 1):
                broker = Kafka(settings, node)
                out[broker.name] = broker
        else:
            out[name] = cls(settings)
    return out


def _known(settings: Settings) -> dict[str, Service]:
    """The processes to look for (status, stop): as many brokers as configured, or as the
    Kafka data was formatted for, whichever is more."""
    return _instances(settings, max(settings.stack.brokers, formatted_brokers(settings) or 1))


READY_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0

# Children started by this process, kept so they are reaped (no zombies, no warnings).
_children: dict[int, subprocess.Popen[bytes]] = {}


def postgres_dsn(settings: Settings, dbname: str = "streamrag") -> str:
    """libpq DSN for the stack's PostgreSQL, password included (read from the secrets dir)."""
    return Postgres(settings).dsn(dbname)


# The stack's vector stores by name: Milvus Lite's server, the Milvus standalone server,
# PostgreSQL with pgvector.
STORES: tuple[str, ...] = ("milvus", "milvus-server", "pgvector")


def store_config(settings: Settings, store: str) -> MilvusConfig | PgvectorConfig:
    """How a client reaches one of the stack's STORES (no password in it: the pgvector
    password comes from PGPASSFILE, the Milvus server's token from its file)."""
    if store == "milvus":
        return MilvusConfig(uri=f"http://{HOST}:{settings.stack.milvus_port}")
    if store == "milvus-server":
        return MilvusServer(settings).store_config()
    if store == "pgvector":
        return PgvectorConfig(
            dsn=make_conninfo(
                host=HOST, port=settings.stack.postgres_port, user=PG_USER, dbname=PG_DATABASE
            )
        )
    raise StackError(f"unknown store {store!r} (choose from {', '.join(STORES)})")


def store_env(settings: Settings, store: str) -> dict[str, str]:
    """``store_config`` as settings overrides (``STORE__KEY=value``, for isolated_env)."""
    config = store_config(settings, store)
    flat: dict[str, str] = {}

    def walk(prefix: str, values: dict[str, object]) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key.upper()}__", value)
            elif value is not None:
                flat[f"{prefix}{key.upper()}"] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )

    walk("STORE__", config.model_dump(mode="json", exclude_defaults=True))
    flat["STORE__KIND"] = config.kind
    return flat


# --- processes --------------------------------------------------------------------------


def _reap() -> None:
    """Collect the children of ours that died (killed from outside): a zombie still owns
    its pid, and PostgreSQL refuses to start while the pid in its lock file exists."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            del _children[pid]


def _pid_file(svc: Service) -> Path:
    return svc.work / "run" / f"{svc.name}.pid"


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_ours(proc: psutil.Process, svc: Service) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE and svc.marker in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _find_pid(svc: Service) -> int | None:
    """Pid of the service's running process, from its pid file or else by command line."""
    pid_file = _pid_file(svc)
    try:
        pid = int(pid_file.read_text().strip())
        if psutil.pid_exists(pid) and _is_ours(psutil.Process(pid), svc):
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    for proc in psutil.process_iter():
        if proc.pid == os.getpid() or not _is_ours(proc, svc):
            continue
        try:
            parent = proc.parent()
            if parent is not None and _is_ours(parent, svc):  # a postgres backend: we want
                # the postmaster
                continue
        except (psutil.Error, AttributeError):
            pass
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{proc.pid}\n")
        return proc.pid
    pid_file.unlink(missing_ok=True)  # stale
    return None


def _new_log(svc: Service) -> None:
    """Start a fresh log for this run, keeping the previous one as ``<name>.log.1``."""
    svc.log.parent.mkdir(parents=True, exist_ok=True)
    if svc.log.exists() and svc.log.stat().st_size > 0:
        svc.log.replace(svc.log.with_name(svc.log.name + ".1"))


def _spawn(svc: Service) -> int:
    cmd = svc.command()
    with svc.log.open("ab") as log:
        log.write(f"--- {datetime.now():%Y-%m-%d %H:%M:%S} starting {svc.name}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **svc.popen_kwargs(),
            )
        except OSError as e:
            raise StackError(f"cannot start {svc.name}: {e}") from e
    _children[proc.pid] = proc
    pid_file = _pid_file(svc)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def _start(svc: Service) -> int:
    """Prepare and spawn a service; returns its pid (it may not be ready yet)."""
    _new_log(svc)
    try:
        svc.prepare()
    except (OSError, subprocess.SubprocessError) as e:
        raise StackError(f"cannot prepare {svc.name}: {e}; see {show(svc.log)}") from e
    return _spawn(svc)


def _wait_ready(svc: Service, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid):
            raise StackError(f"{svc.name} exited during startup; see {show(svc.log)}")
        if svc.ready():
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"{svc.name} did not become ready in {timeout:.0f} s; see {show(svc.log)}"
            )
        time.sleep(0.5)


def _after_ready(svc: Service) -> None:
    try:
        svc.after_ready()
    except StackError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StackError(f"{svc.name} setup failed: {first}") from e


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop(svc: Service, pid: int, timeout: float = STOP_TIMEOUT, graceful: bool = True) -> None:
    """Graceful stop, then SIGKILL to the whole process group (its own session)."""
    if not graceful:
        timeout = 0
    with suppress(OSError, subprocess.SubprocessError):
        if graceful:
            svc.graceful_stop(pid)
    if not _wait_gone(pid, timeout):
        try:
            os.killpg(pid, signal.SIGKILL)  # started with start_new_session: pgid == pid
        except OSError:
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)
    with suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # leftovers of the group, if any
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(timeout=5)
    _pid_file(svc).unlink(missing_ok=True)


@contextmanager
def _lock(settings: Settings) -> Iterator[None]:
    path = work_dir(settings) / "run" / "stack.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _selected(services: list[str] | None) -> list[str]:
    wanted = set(services or SERVICE_NAMES)
    unknown = sorted(wanted - set(SERVICE_NAMES))
    if unknown:
        raise StackError(f"unknown service {unknown[0]!r} (choose from {', '.join(SERVICE_NAMES)})")
    for name in list(wanted):  # add what they need (one level is enough here)
        wanted.update(SERVICES[name].needs)
    if "postgres" in wanted:  # its TLS door on the secured stack (else not started)
        wanted.add(PostgresTls.name)
    return [name for name in SERVICE_NAMES if name in wanted]


# --- public API -------------------------------------------------------------------------


def up(
    settings: Settings,
    services: list[str] | None = None,
    *,
    timeout: float = READY_TIMEOUT,
    echo: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Start the given services (default all, plus what they need) and wait until ready.

    Healthy running services are left alone. Returns seconds spent per service.
    Raises StackError with a one-line message.
    """
    say = echo or (lambda _msg: None)
    _reap()
    names = _selected(services)
    svcs = {n: svc for n, svc in _instances(settings).items() if type(svc).name in names}
    spent: dict[str, float] = {}
    width = max((len(n) for n in svcs), default=0)  # names line up, "postgres-tls" too
    with _lock(settings):
        running = {name: _find_pid(svc) for name, svc in svcs.items()}
        to_start = [svc for name, svc in svcs.items() if running[name] is None]
        if any(isinstance(svc, JavaService) for svc in to_start):
            find_java()
        for svc in to_start:
            for port in svc.ports:
                if not port_free(port):
                    raise StackError(
                        f"port {port} ({svc.name}) is already in use by another process:"
                        f" stop that process, or give {svc.name} another port"
                        f" (stack.*_port, e.g. STREAMRAG_STACK__{port_setting(settings, port)}=...)"
                    )
        # The processes of one kind (the brokers of a quorum) start together, then each
        # is waited for: a node of a 3-node quorum is not ready before another one is up.
        for kind in names:
            group = [svc for svc in svcs.values() if type(svc).name == kind]
            started = time.monotonic()
            fresh = {svc.name: _start(svc) for svc in group if running[svc.name] is None}
            running.update(fresh)
            for svc in group:
                pid = running[svc.name]
                assert pid is not None
                try:
                    _wait_ready(svc, pid, timeout)
                    _after_ready(svc)
                except BaseException:
                    for name, fresh_pid in fresh.items():
                        _stop(svcs[name], fresh_pid, timeout=10)
                    raise
                spent[svc.name] = time.monotonic() - started
                how = "started in" if svc.name in fresh else "already running, ready in"
                say(f"{svc.name:<{width}} {how} {spent[svc.name]:.1f} s  {svc.address}  pid {pid}")
    return spent


def client_config(settings: Settings) -> Path:
    """Write ``<work_dir>/secure.yaml``: how clients connect to the secured stack (Kafka
    over SASL_SSL as user streamrag, pgvector over TLS), naming the files that hold the
    secrets, never the secrets. Milvus Lite has no TLS: it listens on 127.0.0.1 only."""
    security = client_security(settings)
    config = {
        "stack": settings.stack.model_dump(mode="json", include={"work_dir", "secure"}),
        "kafka": {
            "bootstrap": bootstrap_servers(settings),
            "security": security.model_dump(mode="json", exclude_none=True),
        },
        "store": {
            "kind": "pgvector",
            "dsn": make_conninfo(
                host=HOST, port=settings.stack.postgres_port, user=PG_USER, dbname=PG_DATABASE
            ),
            "security": {
                "sslmode": "verify-full",
                "root_cert_file": str(settings.stack.tls_dir / "ca.crt"),
                "password_file": str(settings.stack.secrets_dir / "postgres.password"),
            },
        },
    }
    ports = settings.stack.model_dump(mode="json", exclude_defaults=True)
    config["stack"].update({k: v for k, v in ports.items() if k.endswith("_port")})
    path = work_dir(settings) / "secure.yaml"
    header = (
        "# Written by `streamrag stack up --secure`: the clients of the secured stack use it"
        " (STREAMRAG_CONFIG). No secrets: it names the files that hold them.\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def down(
    settings: Settings, *, echo: Callable[[str], None] | None = None, graceful: bool = True
) -> None:
    """Stop every service of the stack (reverse start order); no process of ours is left.
    ``graceful=False`` kills them at once: for a throwaway stack (tests), whose data may
    be left unusable."""
    say = echo or (lambda _msg: None)

    def stop(svc: Service) -> bool:
        stopped = 0
        while (pid := _find_pid(svc)) is not None:
            if stopped == 3:
                raise StackError(f"cannot stop {svc.name} (pid {pid}); see {show(svc.log)}")
            _stop(svc, pid, graceful=graceful)
            stopped += 1
        return stopped > 0

    with _lock(settings):
        known = _known(settings)
        width = max((len(n) for n in known), default=0)
        # The processes of one kind stop together: the last brokers of a quorum would
        # otherwise each wait for the ones already gone (up to STOP_TIMEOUT apiece).
        for kind in reversed(SERVICE_NAMES):
            group = [svc for svc in known.values() if type(svc).name == kind]
            with ThreadPoolExecutor(max_workers=max(len(group), 1)) as pool:
                results = list(pool.map(stop, group))
            for svc, stopped in zip(group, results, strict=True):
                say(f"{svc.name:<{width}} {'stopped' if stopped else 'not running'}")


def _probe(svc: Service) -> bool:
    try:
        return svc.ready()
    except StackError:
        return False


def pids(settings: Settings) -> dict[str, int | None]:
    """Pid of each service's main process, None when not running."""
    return {name: _find_pid(svc) for name, svc in _known(settings).items()}


def describe(settings: Settings) -> list[tuple[str, bool, str, int | None]]:
    """(name, up, address, pid) of each service, in start order."""
    out = []
    for name, svc in _known(settings).items():
        pid = _find_pid(svc)
        out.append((name, pid is not None and _probe(svc), svc.address, pid))
    return out


def status(settings: Settings) -> dict[str, bool]:
    """Whether each service is running and answering."""
    return {name: up for name, up, _address, _pid in describe(settings)}
