"""The pipeline on the secured local stack (issue 16): ``streamrag stack up --secure``.

A stack of its own on other ports: Kafka takes SASL_SSL only (SCRAM-SHA-512 users, a
certificate of the stack's CA), PostgreSQL TLS only, Kafka Connect and Debezium go
through both. Every client is the product's own, configured by the ``secure.yaml`` that
the stack writes (it names the files with the secrets, never the secrets):
`streamrag migrate`, `streamrag connect apply`, `streamrag produce`, `streamrag run` (the
Flink Kafka source and sinks, the stores), the Python readers below.

Shown here: the documents path and the CDC path end to end on pgvector, on Milvus Lite
and on the Milvus server (TLS and its token; without either it refuses the client); a
wrong password or an untrusted certificate, for Kafka and for PostgreSQL, ends the
command with one clear line, and nothing is consumed or written; no secret appears in
`streamrag config`, in the logs, in Kafka Connect's or Flink's REST API.

The model is the zero-cost ``hash:384`` embedder: these tests are about connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests
import yaml

from connect.registry import ConnectRegistry, connect_url
from streamrag.config import PROJECT_ROOT, MilvusConfig, Settings, isolated_env
from streamrag.kafka import TopicMissing, end_offsets, partition_lag, read_log
from streamrag.local import stack
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.local.kafka import ADMIN_USER, CLIENT_USER, password_file
from streamrag.local.tls import write_ca
from streamrag.status import find_job
from streamrag.stores import open_store
from streamrag.stores.base import StoreError
from tests.integration.conftest import CLI, settings_with

# Below Linux's ephemeral range (32768-60999): a port in it can be the local end of any
# outgoing connection of the suite at the moment the stack starts, and stack.up refuses a
# port in use (this module's setup failed in a CI run before any service started).
PORTS = {
    "KAFKA_PORT": "26092",
    "KAFKA_CONTROLLER_PORT": "26093",
    "POSTGRES_PORT": "26432",
    "MILVUS_PORT": "26530",
    "MILVUS_SERVER_PORT": "26540",  # and the 11 ports after it
    "CONNECT_PORT": "26083",
}
CORPUS = PROJECT_ROOT / "samples" / "corpus"
ARTICLES = [
    ("acme", "Rotating keys", "Rotate the signing keys every ninety days from the console."),
    ("acme", "Resetting a password", "Open the profile page and choose reset password."),
]


@dataclass
class Secured:
    work: Path
    config: Path  # the client config that `stack up --secure` wrote
    settings: Settings
    secrets: list[str]  # every password of the stack, to look for where none may be
    documents: int  # records in the documents topic
    cdc_rows: int
    groups: list[str]  # of the pipelines, whose checkpoints are removed at the end

    def env(self, **overrides: str) -> dict[str, str]:
        """A client process's environment: the secured stack's config, then overrides."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRAG_")}
        return {**clean, "STREAMRAG_CONFIG": str(self.config), **overrides}

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CLI, *args],
            env=env or self.env(),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{done.args}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    work = tmp_path_factory.mktemp("secure-stack")
    env = {
        "STREAMRAG_STACK__WORK_DIR": str(work),
        "STREAMRAG_STACK__SECURE": "true",
        **{f"STREAMRAG_STACK__{k}": v for k, v in PORTS.items()},
    }
    settings = settings_with(env)
    groups: list[str] = []
    try:
        stack.up(settings)
        config = stack.client_config(settings)
        client = settings_with({"STREAMRAG_CONFIG": str(config)})
        secured = Secured(work, config, client, [], 0, 0, groups)
        secured.secrets = [
            password_file(settings, user).read_text() for user in (ADMIN_USER, CLIENT_USER)
        ] + [
            (settings.stack.secrets_dir / name).read_text().strip()
            for name in ("postgres.password", "milvus-server.token")
        ]
        # The CDC source through TLS: the schema, Debezium's connector, two rows.
        ok(secured.cli("migrate"))
        ok(secured.cli("connect", "apply"))
        with psycopg.connect(stack.postgres_dsn(settings), autocommit=True) as conn:
            assert conn.info.pgconn.ssl_in_use
            for row in ARTICLES:
                conn.execute(
                    "INSERT INTO kb.articles (tenant, title, body) VALUES (%s, %s, %s)", row
                )
        secured.cdc_rows = len(ARTICLES)
        # The documents through SASL_SSL.
        assert "produced 10 documents" in ok(secured.cli("produce", str(CORPUS)))
        secured.documents = 10
        deadline = time.monotonic() + 90
        while len(list(read_log(secured.settings, "cdc.kb.articles", timeout_s=10))) < 2:
            assert time.monotonic() < deadline, "no Debezium events over the secured stack"
            time.sleep(0.5)
        yield secured
    finally:
        stack.down(settings, graceful=False)  # throwaway
        for group in secured.groups if "secured" in locals() else []:
            with contextlib.suppress(Exception):
                shutil.rmtree(
                    checkpoints_dir(
                        settings_with({"STREAMRAG_KAFKA__GROUP_ID": group}), bounded=False
                    ).parent
                )


def pipeline_env(s: Secured, store: str) -> dict[str, str]:
    """An isolated pipeline (own group, index) over the stack's topics, on ``store``."""
    prefix = f"s{uuid.uuid4().hex[:8]}"
    s.groups.append(prefix)
    names = isolated_env(prefix, STORE__KIND=store, EMBEDDING__MODEL="hash:384")
    shared_topics = ("DOCUMENTS_TOPIC",)  # what the fixture produced to
    overrides = {k: v for k, v in names.items() if not k.endswith(shared_topics)}
    if store.startswith("milvus"):  # the file's store is pgvector: a file of its own
        data = yaml.safe_load(s.config.read_text())
        data["store"] = stack.store_config(s.settings, store).model_dump(
            mode="json", exclude_none=True
        )
        path = s.work / f"{prefix}.yaml"
        path.write_text(yaml.safe_dump(data))
        overrides = {k: v for k, v in overrides.items() if k != "STREAMRAG_STORE__KIND"}
        return {**s.env(**overrides), "STREAMRAG_CONFIG": str(path)}
    return s.env(**overrides)


def chunks_indexed(settings: Settings) -> int:
    store = open_store(settings.store)
    try:
        return store.count()
    finally:
        store.close()


def expect_indexed(s: Secured, env: dict[str, str]) -> Settings:
    settings = settings_with(env)
    assert chunks_indexed(settings) >= s.documents + s.cdc_rows  # each has chunks
    assert partition_lag(settings, settings.kafka.documents_topic, settings.kafka.group_id) == {
        p: 0 for p in end_offsets(settings, settings.kafka.documents_topic)
    }
    for topic in settings.cdc.tables:
        assert sum(partition_lag(settings, topic, settings.kafka.group_id).values()) == 0
    return settings


def test_documents_and_cdc_on_milvus(secured: Secured):
    env = pipeline_env(secured, "milvus")
    out = ok(secured.cli("run", "--bounded", env=env))
    assert f"{secured.documents + secured.cdc_rows} documents changed" in out, out
    assert "0 dead letters" in out
    expect_indexed(secured, env)


def test_documents_and_cdc_on_the_milvus_server_over_tls(secured: Secured):
    env = pipeline_env(secured, "milvus-server")
    settings = settings_with(env)
    assert settings.store.uri.startswith("https://")  # type: ignore[union-attr]
    out = ok(secured.cli("run", "--bounded", env=env))
    assert f"{secured.documents + secured.cdc_rows} documents changed" in out, out
    assert "0 dead letters" in out
    expect_indexed(secured, env)


@pytest.mark.parametrize("what", ["no token", "wrong token", "plaintext", "untrusted certificate"])
def test_the_milvus_server_refuses_what_lacks_its_token_or_its_tls(
    secured: Secured, what: str, tmp_path: Path
):
    good = stack.store_config(secured.settings, "milvus-server")
    assert isinstance(good, MilvusConfig)
    good = good.model_copy(update={"connect_timeout_s": 1.5})  # a refused handshake waits
    wrong = tmp_path / "wrong.token"
    wrong.write_text("root:not-the-password")
    untrusted = write_ca(tmp_path / "other-ca", "a CA the stack never used")
    security = good.security
    bad = {
        "no token": good.model_copy(
            update={"security": security.model_copy(update={"token_file": None})}
        ),
        "wrong token": good.model_copy(
            update={"security": security.model_copy(update={"token_file": wrong})}
        ),
        "plaintext": good.model_copy(
            update={
                "uri": good.uri.replace("https://", "http://"),
                "security": security.model_copy(update={"tls": False}),
            }
        ),
        "untrusted certificate": good.model_copy(
            update={"security": security.model_copy(update={"ca_file": untrusted})}
        ),
    }[what]
    with pytest.raises(StoreError) as refused:
        open_store(bad, "t_refused")
    assert "\n" not in str(refused.value)
    if what.endswith("token"):
        assert "refused the token" in str(refused.value)
    store = open_store(good, "t_refused")  # and the right one is let in
    try:
        assert store.server.version.startswith("v2.3")  # type: ignore[attr-defined]
    finally:
        store.close()


def test_documents_and_cdc_on_pgvector_and_no_secret_in_flink(secured: Secured):
    """The job streams (not bounded) so that its Flink REST API can be read while it runs."""
    env = pipeline_env(secured, "pgvector")
    settings = settings_with(env)
    log = secured.work / f"{settings.kafka.group_id}.log"
    with log.open("w") as out:
        job = subprocess.Popen(
            [CLI, "run"], env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert job.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(Exception):
                indexed = chunks_indexed(settings) >= secured.documents + secured.cdc_rows
                if indexed and pending(settings) == 0:
                    break
            assert time.monotonic() < deadline, "the secured job did not index in time"
            time.sleep(1)
        flink = find_job(settings, [])
        assert flink is not None, "the running job is not in Flink's REST API"
        pages = [
            f"/jobs/{flink.job_id}",
            f"/jobs/{flink.job_id}/config",
            f"/jobs/{flink.job_id}/plan",
            f"/jobs/{flink.job_id}/checkpoints/config",
            "/jobmanager/config",
            "/jobmanager/environment",
            "/taskmanagers",
        ]
        shown = "".join(requests.get(flink.url + page, timeout=10).text for page in pages)
        assert flink.job_id in shown
        assert_no_secret(secured, shown, "Flink's REST API")
    finally:
        job.terminate()
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
    expect_indexed(secured, env)
    assert_no_secret(secured, log.read_text(errors="replace"), "the job's output")


def pending(settings: Settings) -> int:
    topics = [settings.kafka.documents_topic, *settings.cdc.tables]
    return sum(sum(partition_lag(settings, t, settings.kafka.group_id).values()) for t in topics)


def assert_no_secret(s: Secured, text: str, where: str) -> None:
    for secret in s.secrets:
        assert secret not in text, f"a password of the stack is in {where}"


def test_no_secret_in_config_logs_or_connect(secured: Secured):
    config = ok(secured.cli("config"))
    assert "password_file:" in config and "SASL_SSL" in config
    assert_no_secret(secured, config, "`streamrag config`")
    assert_no_secret(secured, secured.config.read_text(), "secure.yaml")
    registry = ConnectRegistry(connect_url(secured.settings))
    try:
        shown = json.dumps(registry.config("streamrag-postgres"))
        assert shown.count("verify-full") == 1  # Debezium reaches PostgreSQL over TLS
        assert_no_secret(secured, shown, "Kafka Connect's REST API")
    finally:
        registry.close()
    for path in (secured.work / "logs").rglob("*"):
        if path.is_file():
            assert_no_secret(secured, path.read_text(errors="replace"), str(path))
    # The SCRAM users were formatted from a private argument file, gone now, and the
    # format's report of their keys stayed out of the log.
    kafka_logs = "".join(p.read_text() for p in (secured.work / "logs").glob("kafka.log*"))
    assert "--- kafka storage format" in kafka_logs
    assert "Bootstrap metadata: (not logged" in kafka_logs and "storedKey" not in kafka_logs
    assert not list((secured.work / "secrets").glob("*.args"))
    for name in ("kafka", "connect"):  # the services' own config files
        properties = next((secured.work / name).glob("*.properties"))
        assert_no_secret(secured, properties.read_text(), str(properties))


@pytest.mark.parametrize(
    "what",
    ["kafka password", "kafka certificate", "postgres password", "postgres certificate"],
)
def test_refused_credentials_are_one_line_and_nothing_moves(
    secured: Secured, what: str, tmp_path: Path
):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    untrusted = write_ca(tmp_path / "other-ca", "a CA the stack never used")
    good = pipeline_env(secured, "pgvector")
    settings = settings_with(good)
    setting = {
        "kafka password": ("KAFKA__SECURITY__PASSWORD_FILE", wrong),
        "kafka certificate": ("KAFKA__SECURITY__CA_FILE", untrusted),
        "postgres password": ("STORE__SECURITY__PASSWORD_FILE", wrong),
        "postgres certificate": ("STORE__SECURITY__ROOT_CERT_FILE", untrusted),
    }[what]
    env = {**good, f"STREAMRAG_{setting[0]}": str(setting[1])}
    documents = end_offsets(settings, settings.kafka.documents_topic)

    runs = [secured.cli("run", "--bounded", env=env)]
    if what.startswith("kafka"):
        runs.append(secured.cli("produce", str(CORPUS), env=env))
    for done in runs:
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "refused" in lines[0], lines[0]
        assert ("certificate verify failed" if "certificate" in what else "auth") in lines[0]
    # Nothing consumed (the group committed nothing), nothing produced or written.
    assert end_offsets(settings, settings.kafka.documents_topic) == documents
    lag = partition_lag(settings, settings.kafka.documents_topic, settings.kafka.group_id)
    assert sum(lag.values()) == sum(documents.values())
    with contextlib.suppress(TopicMissing):
        assert sum(end_offsets(settings, settings.kafka.chunks_topic).values()) == 0
    with psycopg.connect(stack.postgres_dsn(secured.settings)) as conn:
        table = conn.execute("SELECT to_regclass(%s)", [settings.store.table]).fetchone()
    assert table == (None,)
