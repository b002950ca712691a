"""The stack's two Milvus servers: Milvus Lite (the milvus-lite wheel, pure Python, bound to
127.0.0.1, no users) and the Milvus standalone server (PyPI's ``milvus`` package: Go and
C++, users on, TLS on the secured stack; see the README for the ports it opens)."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any, Final

import yaml

from streamrag.config import MilvusConfig, MilvusSecurityConfig
from streamrag.local.service import HOST, Service, port_open, write_private
from streamrag.local.tls import ensure_certificates
from streamrag.security import milvus_client_kwargs

# Milvus Lite 3.2 serves requests on a pool of threads (10 by default), but its collections
# are not safe for concurrent use: a flush swaps the memtable for an empty one before the
# flushed rows are readable in a segment, and a delete-by-filter (our trims) or a query on
# another thread in that moment sees neither, so a deleted document can stay in the index
# for good (tests/integration/test_stack.py). One request thread serializes them; the
# server is pure Python under one GIL, so little concurrency is lost.
REQUEST_THREADS = 1


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
            "--max-workers", str(REQUEST_THREADS),
        ]  # fmt: skip

    def popen_kwargs(self) -> dict[str, Any]:
        budget = int(self.settings.stack.milvus_memtable_mb * 2**20)
        env = {**os.environ, "MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES": str(budget)}
        return {**super().popen_kwargs(), "env": env}

    def ready(self) -> bool:
        if not port_open(self.ports[0]):
            return False
        from pymilvus import MilvusClient

        from streamrag.stores.milvus import quiet

        with quiet():
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


# --- the Milvus standalone server -------------------------------------------------------

# The server's internal ports, each at milvus_server_port + its place here (the proxy,
# which clients talk to, is milvus_server_port itself). The `_port` keys of the `milvus`
# package's config template, the embedded etcd's peer port and the metrics port.
SERVER_PORTS: Final = (
    "etcd_port",
    "etcd_peer_port",  # not in the template: the embedded etcd's own config (etcd.yaml)
    "root_coord_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
    "metrics_port",  # not in the template: the METRICS_PORT variable (/healthz too)
)
_NOT_IN_TEMPLATE: Final = ("etcd_peer_port", "metrics_port")
# The address each component tells the others (the template leaves it empty: "the first
# unicastable address"). It does not change what they listen on: see the README.
_COMPONENTS: Final = (
    "rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode",
)  # fmt: skip
ROOT_USER = "root"
DEFAULT_ROOT_PASSWORD = "Milvus"  # what a new Milvus server lets root in with


class MilvusServer(Service):
    """The Milvus standalone server (Go and C++, embedded etcd, local storage) that PyPI's
    ``milvus`` package ships, run as a plain process. Users are on (root's password is
    generated on first start into ``secrets/milvus-server.token``), TLS on the secured
    stack."""

    name = "milvus-server"
    port_keys = ("milvus_server_port",)

    @property
    def ports(self) -> list[int]:
        proxy = self.settings.stack.milvus_server_port
        return [proxy, *(proxy + n for n in range(1, len(SERVER_PORTS) + 1))]

    def port(self, key: str) -> int:
        """The port of one of SERVER_PORTS."""
        return self.ports[1 + SERVER_PORTS.index(key)]

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "milvus"

    @property
    def marker(self) -> str:
        return str(self.binary)

    @property
    def token_file(self) -> Path:
        """``root:<password>``: the token of store.security.token_file."""
        return self.settings.stack.secrets_dir / "milvus-server.token"

    def token(self) -> str:
        if not self.token_file.exists():
            write_private(self.token_file, f"{ROOT_USER}:{secrets.token_urlsafe(24)}")
        return self.token_file.read_text(encoding="utf-8").strip()

    def store_config(self) -> MilvusConfig:
        """How clients reach this server: its proxy, the token file, TLS on the secured
        stack (checked against the stack's CA, for the name ``localhost``)."""
        self.token()
        secure = self.settings.stack.secure
        return MilvusConfig(
            uri=f"{'https' if secure else 'http'}://localhost:{self.ports[0]}",
            vector_index="HNSW",
            security=MilvusSecurityConfig(
                tls=secure,
                ca_file=self.settings.stack.tls_dir / "ca.crt" if secure else None,
                token_file=self.token_file,
            ),
        )

    def prepare(self) -> None:
        from milvus import MilvusServerConfig, _initialize_data_files

        self.home.mkdir(parents=True, exist_ok=True)
        self.token()
        # The package's template filled in (configs/milvus.yaml), without its resolve():
        # that binds each port without SO_REUSEADDR, so a restart fails on TIME_WAIT.
        template = MilvusServerConfig(data_dir=str(self.home))
        template.resolve_storage()
        template.set("proxy_port", self.ports[0])
        for key in SERVER_PORTS:
            if key not in _NOT_IN_TEMPLATE:
                template.set(key, self.port(key))
        template.write_config()
        path = self.home / "configs" / "milvus.yaml"
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["etcd"]["config"] = {"path": str(self._write_etcd_config())}
        for component in _COMPONENTS:
            config[component]["ip"] = HOST
        config["common"]["gracefulStopTimeout"] = 10  # the template's 1800 s outlives a stop
        # A Strong read waits for the next time tick: 0.17-0.38 s at the template's 200 ms,
        # 0.04-0.08 s at 50 ms.
        config["proxy"]["timeTickInterval"] = 50
        config["common"]["security"]["authorizationEnabled"] = True
        if self.settings.stack.secure:
            certs = ensure_certificates(self.settings.stack.tls_dir)
            config["common"]["security"]["tlsMode"] = 1  # the server shows its certificate
            config["tls"] = {
                "serverPemPath": str(certs.server_cert),
                "serverKeyPath": str(certs.server_key),
                "caPemPath": str(certs.ca),
            }
        header = "# Written by streamrag.stack from the milvus package's template, at each start.\n"
        path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        _initialize_data_files(str(self.home))  # unpacks the binaries once (checksummed)

    def _write_etcd_config(self) -> Path:
        """The embedded etcd on 127.0.0.1 and the stack's ports (its defaults: 2379/2380)."""
        client = f"http://{HOST}:{self.port('etcd_port')}"
        peer = f"http://{HOST}:{self.port('etcd_peer_port')}"
        etcd = {
            "name": "streamrag",
            "listen-client-urls": client,
            "advertise-client-urls": client,
            "listen-peer-urls": peer,
            "initial-advertise-peer-urls": peer,
            "initial-cluster": f"streamrag={peer}",
        }
        path = self.home / "configs" / "etcd.yaml"
        path.write_text(yaml.safe_dump(etcd), encoding="utf-8")
        return path

    def command(self) -> list[str]:
        return [str(self.binary), "run", "standalone"]

    def popen_kwargs(self) -> dict[str, Any]:
        libs = str(self.binary.parent)
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.port("metrics_port")),
            "MILVUS_RUN_DIR": str(self.home / "run"),
            "LD_LIBRARY_PATH": ":".join(p for p in (libs, os.environ.get("LD_LIBRARY_PATH")) if p),
        }
        return {"cwd": self.home, "env": env}

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{HOST}:{self.port('metrics_port')}/healthz", timeout=2
            ):
                return True
        except OSError:
            return False

    def after_ready(self) -> None:
        """Give root the generated password (a new server lets root in with the default
        one): from then on the token file is the only way in."""
        from pymilvus import MilvusClient

        from streamrag.stores.milvus import quiet, refused_token

        kwargs = milvus_client_kwargs(self.store_config())
        user, password = self.token().split(":", 1)
        with quiet():
            try:
                MilvusClient(**kwargs, timeout=10).close()
                return
            except Exception as e:
                if not refused_token(e):
                    raise
            client = MilvusClient(**{**kwargs, "token": f"{user}:{DEFAULT_ROOT_PASSWORD}"})
            try:
                client.update_password(user, DEFAULT_ROOT_PASSWORD, password)
            finally:
                client.close()
