"""A local standalone Flink session cluster from the PyFlink wheel, for `flink run`.

`streamrag cluster up` writes a Flink config under <work_dir>/flink-conf (loopback only,
2 slots, this venv's Python for the workers) and starts a JobManager and a TaskManager;
`streamrag cluster submit` runs `flink run -py jobs/pipeline.py` against it: the same job
file that a Kubernetes FlinkDeployment runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyflink
import yaml

from streamrag.config import PROJECT_ROOT, Settings
from streamrag.errors import UserError

PYFLINK_HOME = Path(pyflink.__file__).parent
REST_PORT = 18081


class ClusterError(UserError):
    """The local Flink cluster cannot do what was asked; one line for the user."""


def conf_dir(settings: Settings) -> Path:
    return Path(settings.stack.work_dir) / "flink-conf"


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "FLINK_HOME": str(PYFLINK_HOME),
        "FLINK_CONF_DIR": str(conf_dir(settings)),
        "FLINK_LOG_DIR": str(Path(settings.stack.work_dir) / "logs" / "flink"),
    }


def write_conf(settings: Settings) -> Path:
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
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


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


def up(settings: Settings) -> None:
    write_conf(settings)
    Path(_env(settings)["FLINK_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
    _script(settings, "start-cluster.sh")


def down(settings: Settings) -> None:
    _script(settings, "stop-cluster.sh")


def submit(settings: Settings, job_args: list[str], detached: bool = False) -> None:
    """`flink run -py jobs/pipeline.py [job args]` against the local cluster."""
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
        "-py",
        str(PROJECT_ROOT / "jobs" / "pipeline.py"),
        *job_args,
    ]
    done = subprocess.run(
        cmd, env=_env(settings), cwd=PROJECT_ROOT, text=True, capture_output=True, timeout=3600
    )
    if done.returncode != 0:
        lines = (done.stderr + done.stdout).splitlines()
        causes = [line for line in lines if line.startswith("Caused by:")] or lines[-1:]
        raise ClusterError(f"flink run failed: {(causes or ['no output'])[-1][:300]}")
