"""Kafka Connect REST client for declarative connector configs, and the CDC topics.

``apply`` PUTs a connector's whole config (create or update: idempotent); the other
calls wrap the REST lifecycle endpoints. Connection errors and 409 (the worker group is
rebalancing) are retried with backoff; every failure ends as a one-line ConnectError.

Connector files (``connect/*.json``) have the shape of ``POST /connectors``:
``{"name": ..., "config": {...}}``. Before sending, placeholders are replaced by the
environment variable of that name, else by the value from settings:
``${STREAMRAG_SECRETS_DIR}`` (``<stack.work_dir>/secrets``), ``${STREAMRAG_POSTGRES_PORT}``
(``stack.postgres_port``), ``${STREAMRAG_RECORD_BYTES}`` (the size limit of source
records, ``streamrag.limits``) and ``${STREAMRAG_CDC_TABLES}`` (the tables of the
``cdc.tables`` topics under the connector's ``topic.prefix``: the config is the one list),
``${STREAMRAG_PG_SSLMODE}`` and ``${STREAMRAG_PG_SSLROOTCERT}`` (on the secured local
stack ``verify-full`` and its CA, else empty). A key whose value is empty once filled in
is left out (the connector's default applies).
Passwords are never in the file: ``${file:<path>:password}`` is resolved by the
worker's file config provider, so not even the REST API shows the password.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import requests
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from streamrag.config import PROJECT_ROOT, Settings
from streamrag.errors import UserError
from streamrag.limits import DOCUMENT_RECORD_BYTES

DEFAULT_CONNECTOR_FILE = PROJECT_ROOT / "connect" / "postgres-source.json"
_PLACEHOLDER = re.compile(r"\$\{(STREAMRAG_[A-Z0-9_]+)\}")
_QUALIFIED = re.compile(r"\b(?:[a-z_$][\w$]*\.)+([A-Z][\w$]*(?:Exception|Error))")


class ConnectError(UserError):
    """A Kafka Connect request or connector that failed; the message is one line."""


class _Transient(ConnectError):
    """Worth retrying: the worker is unreachable or rebalancing."""


def connect_url(settings: Settings) -> str:
    return settings.cdc.connect_url or f"http://127.0.0.1:{settings.stack.connect_port}"


class ConnectRegistry:
    """Connectors of one Kafka Connect cluster, by name."""

    def __init__(self, url: str, timeout_s: float = 10.0, retry_s: float = 20.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout_s
        self._session = requests.Session()
        self._send = retry(
            retry=retry_if_exception_type(_Transient),
            reraise=True,
            wait=wait_exponential(multiplier=0.25, max=4),
            stop=stop_after_delay(retry_s),
        )(self._send_once)

    def apply(self, name: str, config: dict[str, Any]) -> bool:
        """Create or update the connector; True if it was created."""
        body = {k: str(v) for k, v in config.items() if k != "name"}
        return self._send("PUT", f"/connectors/{name}/config", name, json=body).status_code == 201

    def config(self, name: str) -> dict[str, str]:
        """The connector's config as the worker runs it (placeholders resolved by us,
        config-provider references such as passwords left as they are)."""
        config: dict[str, str] = self._send("GET", f"/connectors/{name}/config", name).json()
        return config

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self._send("GET", f"/connectors/{name}/status", name).json()
        return status

    def pause(self, name: str) -> None:
        self._send("PUT", f"/connectors/{name}/pause", name)

    def resume(self, name: str) -> None:
        self._send("PUT", f"/connectors/{name}/resume", name)

    def restart(self, name: str, include_tasks: bool = True, only_failed: bool = False) -> None:
        params = {
            "includeTasks": str(include_tasks).lower(),
            "onlyFailed": str(only_failed).lower(),
        }
        self._send("POST", f"/connectors/{name}/restart", name, params=params)

    def delete(self, name: str, missing_ok: bool = False) -> None:
        try:
            self._send("DELETE", f"/connectors/{name}", name)
        except ConnectError as e:
            if not (missing_ok and str(e).startswith("unknown connector")):
                raise

    def wait_running(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the connector and all its tasks are RUNNING; raise on FAILED."""
        deadline = time.monotonic() + timeout_s
        state = "unknown"
        while True:
            try:
                status = self.status(name)
            except ConnectError as e:
                if not str(e).startswith("unknown connector"):
                    raise
                status = None  # just created: the status topic has not caught up yet
            if status is not None:
                _raise_if_failed(name, status)
                tasks = status.get("tasks", [])
                if (
                    status["connector"]["state"] == "RUNNING"
                    and tasks
                    and all(t["state"] == "RUNNING" for t in tasks)
                ):
                    return status
                state = _describe(status)
            if time.monotonic() > deadline:
                raise ConnectError(
                    f"connector {name} not RUNNING after {timeout_s:.0f} s ({state})"
                )
            time.sleep(0.5)

    def close(self) -> None:
        self._session.close()

    def _send_once(self, method: str, path: str, name: str, **kwargs: Any) -> requests.Response:
        try:
            resp = self._session.request(method, self.url + path, timeout=self._timeout, **kwargs)
        except requests.ConnectionError as e:
            raise _Transient(f"Kafka Connect at {self.url} is not reachable") from e
        except requests.Timeout as e:
            raise _Transient(
                f"Kafka Connect at {self.url} did not answer in {self._timeout:.0f} s"
            ) from e
        if resp.ok:
            return resp
        message = _error_message(resp)
        if resp.status_code == 409:
            raise _Transient(f"Kafka Connect is rebalancing, try again: {message}")
        if resp.status_code == 404:
            raise ConnectError(f"unknown connector {name!r} at {self.url}")
        if resp.status_code == 400:
            raise ConnectError(f"invalid config for connector {name}: {_validation(message)}")
        first = message.splitlines()[0] if message else resp.reason
        raise ConnectError(f"Kafka Connect {method} {path} failed ({resp.status_code}): {first}")


def _error_message(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("message", "")).strip()
    except ValueError:
        return resp.text.strip()


def _validation(message: str) -> str:
    """'...contains the following 2 error(s):\\nA\\nB\\nYou can also find...' -> 'A; B'."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    errors = [ln for ln in lines[1:] if not ln.startswith("You can also find")]
    return "; ".join(errors or lines[:1])


def _raise_if_failed(name: str, status: dict[str, Any]) -> None:
    connector = status.get("connector", {})
    if connector.get("state") == "FAILED":
        raise ConnectError(f"connector {name} FAILED: {_trace(connector.get('trace'))}")
    for task in status.get("tasks", []):
        if task.get("state") == "FAILED":
            raise ConnectError(
                f"connector {name} task {task.get('id')} FAILED: {_trace(task.get('trace'))}"
            )


def _trace(trace: str | None) -> str:
    """A Java stack trace in one line: the exception and its root cause."""
    if not trace:
        return "no trace"
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    causes = [ln.removeprefix("Caused by: ") for ln in lines if ln.startswith("Caused by:")]
    summary = (
        lines[0] if not causes or causes[-1] == lines[0] else f"{lines[0]} (caused by {causes[-1]})"
    )
    return _QUALIFIED.sub(r"\1", summary)


def _describe(status: dict[str, Any]) -> str:
    tasks = ", ".join(f"{t['id']}: {t['state']}" for t in status.get("tasks", [])) or "none"
    return f"connector {status['connector']['state']}, tasks {tasks}"


def load_connector_file(path: str | Path, settings: Settings) -> tuple[str, dict[str, Any]]:
    """(name, config) of a connector file, placeholders filled in (see module doc)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConnectError(f"cannot read connector file {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ConnectError(
            f"connector file {path} is not valid JSON: {e.msg} (line {e.lineno})"
        ) from e
    if not (
        isinstance(data, dict)
        and isinstance(data.get("name"), str)
        and isinstance(data.get("config"), dict)
    ):
        raise ConnectError(f"connector file {path} must hold an object with name and config")
    values = _placeholder_values(settings, str(data["config"].get("topic.prefix", "")))

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ConnectError(f"{path}: unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    filled = {k: _PLACEHOLDER.sub(fill, str(v)) for k, v in data["config"].items()}
    return data["name"], {k: v for k, v in filled.items() if v != ""}


def _placeholder_values(settings: Settings, prefix: str) -> dict[str, str]:
    defaults = {
        "STREAMRAG_SECRETS_DIR": str(settings.stack.secrets_dir),
        "STREAMRAG_POSTGRES_PORT": str(settings.stack.postgres_port),
        "STREAMRAG_RECORD_BYTES": str(DOCUMENT_RECORD_BYTES.value),
        "STREAMRAG_CDC_TABLES": ",".join(cdc_tables(settings, prefix)),
        "STREAMRAG_PG_SSLMODE": "verify-full" if settings.stack.secure else "",
        "STREAMRAG_PG_SSLROOTCERT": (
            str(settings.stack.tls_dir / "ca.crt") if settings.stack.secure else ""
        ),
    }
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def cdc_tables(settings: Settings, prefix: str) -> list[str]:
    """``<schema>.<table>`` of each topic ``<prefix>.<schema>.<table>`` in ``cdc.tables``:
    the tables a connector with that topic prefix must capture, and no others."""
    return sorted(
        t.removeprefix(f"{prefix}.") for t in settings.cdc.tables if t.startswith(f"{prefix}.")
    )
