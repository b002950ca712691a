"""A local standalone Flink session cluster from the PyFlink wheel, for `flink run`.

`streamrag cluster up` writes a Flink config under <work_dir>/flink-conf (loopback only,
2 slots, this venv's Python for the workers, checkpoints and savepoints kept in the work
directory) and starts a JobManager and a TaskManager; `streamrag cluster submit` runs
`flink run -py jobs/pipeline.py` against it: the same job file that a Kubernetes
FlinkDeployment runs.

Upgrades keep the job's state: `streamrag cluster savepoint` takes a savepoint of the
running ingest job, `streamrag cluster upgrade` stops it with a savepoint and submits the
current code from it (every operator has a uid, so its state finds its way back). This is
what the Flink Kubernetes operator does with ``upgradeMode: savepoint``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from streamrag.config import PROJECT_ROOT, Settings
from streamrag.errors import UserError
from streamrag.flink import (
    CLUSTER_REST_PORT,
    INGEST_JOB,
    PLUGINS_DIR,
    PYFLINK_HOME,
    reporter_options,
)
from streamrag.runstats import mark, settle_offsets

REST_PORT = CLUSTER_REST_PORT
MAX_TASKMANAGERS = 4
REST_URL = f"http://127.0.0.1:{REST_PORT}"


class ClusterError(UserError):
    """The local Flink cluster cannot do what was asked; one line for the user."""


def conf_dir(settings: Settings) -> Path:
    return Path(settings.stack.work_dir) / "flink-conf"


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "FLINK_HOME": str(PYFLINK_HOME),
        # The cluster's own lib (the local JVM's adds the plugins: they load from
        # FLINK_PLUGINS_DIR here, each in a class loader of its own).
        "FLINK_LIB_DIR": str(PYFLINK_HOME / "lib"),
        "FLINK_PLUGINS_DIR": str(PLUGINS_DIR),
        "FLINK_CONF_DIR": str(conf_dir(settings)),
        "FLINK_LOG_DIR": str(Path(settings.stack.work_dir) / "logs" / "flink"),
    }


def write_conf(settings: Settings, taskmanagers: int = 1) -> Path:
    target = conf_dir(settings)
    shutil.copytree(PYFLINK_HOME / "conf", target, dirs_exist_ok=True)
    config = yaml.safe_load((PYFLINK_HOME / "conf" / "config.yaml").read_text())
    config["rest"] = {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": REST_PORT}
    config["jobmanager"]["bind-host"] = config["jobmanager"]["rpc"]["address"] = "127.0.0.1"
    config["taskmanager"].update(
        {
            "bind-host": "127.0.0.1",
            "host": "127.0.0.1",
            "numberOfTaskSlots": 2,
            "memory": {"process": {"size": "4g"}},
        }
    )
    config["python"] = {"executable": sys.executable, "client": {"executable": sys.executable}}
    # A lost TaskManager is noticed within seconds (the default waits 50 s), and a job
    # of parallelism 2 gets a slot on each TaskManager, not both on the first.
    config["heartbeat"] = {"interval": 2000, "timeout": 15000}
    if taskmanagers > 1:
        config["taskmanager"]["load-balance"] = {"mode": "SLOTS"}
    for key, value in reporter_options(settings, processes=1 + taskmanagers).items():
        config[key] = value
    config.update(durable_state_options(settings))
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


def savepoints_dir(settings: Settings) -> Path:
    return (Path(settings.stack.work_dir) / "savepoints").resolve()


def durable_state_options(settings: Settings) -> dict[str, str]:
    """Checkpoints (kept when a job is cancelled) and savepoints in the work directory."""
    work = Path(settings.stack.work_dir).resolve()
    return {
        "execution.checkpointing.dir": (work / "flink-cluster" / "checkpoints").as_uri(),
        "execution.checkpointing.savepoint-dir": savepoints_dir(settings).as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
    }


def _script(settings: Settings, name: str, *args: str) -> None:
    done = subprocess.run(
        ["bash", str(PYFLINK_HOME / "bin" / name), *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise ClusterError(f"{name} failed: {(done.stderr or done.stdout).strip()[:300]}")


def up(settings: Settings, taskmanagers: int = 1) -> None:
    """A JobManager and ``taskmanagers`` TaskManagers (2 slots each)."""
    if not 1 <= taskmanagers <= MAX_TASKMANAGERS:
        raise ClusterError(f"--taskmanagers must be 1 to {MAX_TASKMANAGERS}, not {taskmanagers}")
    write_conf(settings, taskmanagers)
    Path(_env(settings)["FLINK_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
    _script(settings, "start-cluster.sh")
    for _ in range(taskmanagers - 1):
        start_taskmanager(settings)
    wait_for_taskmanagers(taskmanagers)


def start_taskmanager(settings: Settings) -> None:
    """One more TaskManager for the running cluster (or one that replaces a lost one)."""
    _script(settings, "taskmanager.sh", "start")


def ensure_taskmanagers(settings: Settings, count: int) -> int:
    """Start TaskManagers until ``count`` run, as Kubernetes replaces a lost pod; returns
    how many were started. (When one TaskManager is lost, PyFlink 2.2's Python runner can
    take a second one down with it: "Reference count must not be negative" while its tasks
    are cancelled.)"""
    missing = max(count - len(taskmanager_pids(settings)), 0)
    for _ in range(missing):
        start_taskmanager(settings)
    return missing


def taskmanager_pids(settings: Settings) -> list[int]:
    """The TaskManager JVMs of this cluster (by its config directory)."""
    marker = f"--configDir {conf_dir(settings)}"
    found = []
    for proc in psutil.process_iter():
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "TaskManagerRunner" in cmdline and marker in cmdline:
            found.append(proc.pid)
    return found


def wait_for_taskmanagers(count: int, timeout_s: float = 120) -> None:
    """Until ``count`` TaskManagers are registered with the JobManager."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if len(_rest("GET", "/taskmanagers")["taskmanagers"]) >= count:
                return
        except ClusterError:  # the JobManager's REST API is not up yet
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"fewer than {count} TaskManagers after {timeout_s:.0f} s")
        time.sleep(0.5)


def down(settings: Settings) -> None:
    """Stop the cluster, every TaskManager included: Flink's scripts stop the ones their
    pid file lists, which misses a TaskManager started to replace a lost one (its
    predecessor's pid is still listed), and such a one would go on running."""
    _script(settings, "stop-cluster.sh")
    left = []
    for pid in taskmanager_pids(settings):
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            left.append(proc)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(left, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue


def submit(
    settings: Settings,
    bounded: bool = False,
    detached: bool = False,
    savepoint: str | None = None,
    parallelism: int | None = None,
) -> dict[str, dict[int, int]]:
    """`flink run [-s SAVEPOINT] -py jobs/pipeline.py [--bounded]` against the local
    cluster; ``parallelism`` overrides ``flink.parallelism`` (the job sets its own).

    A bounded job that ran attached from the group's offsets (no savepoint) and finished
    then has its source offsets settled as `streamrag run --bounded` does
    (streamrag.runstats.settle_offsets): returns the partitions moved, per topic."""
    marks = mark(settings) if bounded and not detached and savepoint is None else None
    # The wheel keeps flink-python in opt/, off the session cluster's classpath: ship it.
    (python_jar,) = (PYFLINK_HOME / "opt").glob("flink-python-*.jar")
    cmd = [
        "bash",
        str(PYFLINK_HOME / "bin" / "flink"),
        "run",
        "-m",
        f"127.0.0.1:{REST_PORT}",
        "-C",
        python_jar.as_uri(),
        *(["-d"] if detached else []),
        *(["-s", savepoint] if savepoint else []),
        "-py",
        str(PROJECT_ROOT / "jobs" / "pipeline.py"),
        *(["--bounded"] if bounded else []),
    ]
    env = _env(settings)
    if parallelism is not None:
        env["STREAMRAG_FLINK__PARALLELISM"] = str(parallelism)
    done = subprocess.run(
        cmd, env=env, cwd=PROJECT_ROOT, text=True, capture_output=True, timeout=3600
    )
    if done.returncode != 0:
        lines = (done.stderr + done.stdout).splitlines()
        causes = [line for line in lines if line.startswith("Caused by:")] or lines[-1:]
        raise ClusterError(f"flink run failed: {(causes or ['no output'])[-1][:300]}")
    return settle_offsets(settings, marks) if marks is not None else {}


def running_job(name: str = INGEST_JOB) -> str:
    """The id of the one RUNNING job called ``name`` on the local cluster."""
    jobs = _rest("GET", "/jobs/overview")["jobs"]
    running = [j["jid"] for j in jobs if j["name"] == name and j["state"] == "RUNNING"]
    if len(running) != 1:
        raise ClusterError(
            f"expected one running {name} job on the local cluster, found {len(running)}"
        )
    return str(running[0])


def savepoint(settings: Settings, job_id: str | None = None, timeout_s: float = 300) -> str:
    """Take a savepoint of the running ingest job (it goes on); returns its path."""
    job = job_id or running_job()
    body = {"target-directory": savepoints_dir(settings).as_uri(), "cancel-job": False}
    trigger = _rest("POST", f"/jobs/{job}/savepoints", json=body)["request-id"]
    return _savepoint_location(job, trigger, timeout_s)


def stop_with_savepoint(
    settings: Settings, job_id: str | None = None, timeout_s: float = 300
) -> str:
    """Stop the running ingest job with a savepoint (no records after it are processed,
    the sinks flush); returns the savepoint's path.

    Drained: the final watermark fires the embed stage's end-of-input timers first, so the
    batches waiting in its state are embedded and written before the savepoint and none is
    carried over. A carried-over batch waits under a batch key of the old parallelism; at
    another parallelism no event comes to that key again, and its restored timer was seen
    not to fire (PyFlink's process mode): the batch waited for good, and once a later
    rescale brought the key back it was written after newer versions and deletes of its
    documents (deleted documents came back). The job has no other event-time logic, so
    the drained savepoint resumes it exactly."""
    job = job_id or running_job()
    body = {"targetDirectory": savepoints_dir(settings).as_uri(), "drain": True}
    trigger = _rest("POST", f"/jobs/{job}/stop", json=body)["request-id"]
    location = _savepoint_location(job, trigger, timeout_s)
    _wait_for_state(job, {"FINISHED", "CANCELED"}, timeout_s)
    return location


def upgrade(
    settings: Settings,
    timeout_s: float = 300,
    parallelism: int | None = None,
) -> tuple[str, str]:
    """Stop the ingest job with a savepoint and submit the current code from it
    (detached), at another ``parallelism`` if given (keyed state is redistributed by key
    group); returns (savepoint path, new job id)."""
    location = stop_with_savepoint(settings, timeout_s=timeout_s)
    submit(settings, detached=True, savepoint=location, parallelism=parallelism)
    return location, running_job()


def _savepoint_location(job: str, trigger: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _rest("GET", f"/jobs/{job}/savepoints/{trigger}")
        if status["status"]["id"] == "COMPLETED":
            operation = status.get("operation") or {}
            if "failure-cause" in operation:
                cause = operation["failure-cause"].get("stack-trace", "").splitlines()
                raise ClusterError(f"savepoint failed: {(cause or ['unknown cause'])[0][:300]}")
            return str(operation["location"])
        time.sleep(0.5)
    raise ClusterError(f"savepoint of job {job} not done after {timeout_s:.0f} s")


def _wait_for_state(job: str, states: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (state := _rest("GET", f"/jobs/{job}")["state"]) not in states:
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job} is {state} after {timeout_s:.0f} s")
        time.sleep(0.5)


def _rest(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        resp = requests.request(method, REST_URL + path, timeout=30, **kwargs)
    except requests.ConnectionError as e:
        raise ClusterError(
            f"the local Flink cluster is not reachable at {REST_URL} "
            "(start it with `streamrag cluster up`)"
        ) from e
    if resp.status_code >= 400:
        try:
            errors = resp.json().get("errors", [])
        except ValueError:
            errors = [resp.text]
        raise ClusterError(
            f"Flink REST {method} {path}: {resp.status_code} {(errors or [''])[0][:300]}"
        )
    result: dict[str, Any] = resp.json()
    return result
