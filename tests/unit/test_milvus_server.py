"""The Milvus server's pure rules: what a reported version can do, how the stack's stores
are named to a client, and the stack server's ports (no service started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamrag.config import Settings, load_settings
from streamrag.local.milvus import SERVER_PORTS, MilvusServer
from streamrag.local.stack import StackError, store_config, store_env
from streamrag.stores.milvus import ServerInfo


def stack_settings(work: Path, secure: bool = False) -> Settings:
    s = load_settings()
    s.stack.work_dir, s.stack.milvus_server_port, s.stack.secure = work, 29540, secure
    return s


@pytest.mark.parametrize(
    ("version", "full_text", "scalar_index"),
    [
        ("v2.3.5-lite", False, "Trie"),  # PyPI's milvus package
        ("v2.4.13", False, "INVERTED"),
        ("v2.5.4", True, "INVERTED"),
        ("2.6.0", True, "INVERTED"),
        ("milvus_lite-3.2.2", True, "INVERTED"),
        ("unknown", False, "Trie"),
    ],
)
def test_what_a_server_can_do_comes_from_its_version(version, full_text, scalar_index):
    info = ServerInfo(version)
    assert info.full_text is full_text
    assert info.scalar_index == scalar_index


def test_the_server_and_its_internal_ports_follow_its_one_setting(tmp_path: Path):
    server = MilvusServer(stack_settings(tmp_path))
    assert server.ports == list(range(29540, 29540 + 1 + len(SERVER_PORTS)))
    assert server.port("etcd_port") == 29541 and server.port("metrics_port") == 29551
    (server.home / "configs").mkdir(parents=True)
    etcd = yaml.safe_load(server._write_etcd_config().read_text())
    assert etcd["listen-client-urls"] == "http://127.0.0.1:29541"
    assert etcd["listen-peer-urls"] == "http://127.0.0.1:29542"


def test_the_stack_names_its_stores_to_clients(tmp_path: Path):
    settings = stack_settings(tmp_path)
    server = store_config(settings, "milvus-server")
    assert server.kind == "milvus" and server.uri == "http://localhost:29540"
    token = Path(server.security.token_file)  # type: ignore[union-attr, arg-type]
    assert token.read_text().startswith("root:") and token.stat().st_mode & 0o777 == 0o600
    env = store_env(settings, "milvus-server")
    assert env["STORE__KIND"] == "milvus" and env["STORE__URI"] == server.uri
    assert env["STORE__SECURITY__TOKEN_FILE"] == str(token)
    assert env["STORE__VECTOR_INDEX"] == "HNSW"
    assert store_env(settings, "pgvector")["STORE__KIND"] == "pgvector"
    secure = stack_settings(tmp_path, secure=True)
    tls = store_config(secure, "milvus-server")
    assert tls.uri.startswith("https://") and tls.security.tls  # type: ignore[union-attr]
    assert store_env(secure, "milvus-server")["STORE__SECURITY__TLS"] == "true"
    with pytest.raises(StackError, match="unknown store 'qdrant'"):
        store_config(settings, "qdrant")
