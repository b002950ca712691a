"""Flink glue shared by the jobs: environment, Kafka source and sink tables.

Kafka is read and written through Flink SQL tables with the ``raw`` format, because
they carry what the DataStream Kafka connector in Python cannot: the record key, null
values (tombstones) and the topic/partition/offset metadata for the dead-letter topic.
Between those edges the jobs are DataStream pipelines of plain-Python stage functions.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import site
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pyflink
import typer
from pyflink.common import Configuration, Types
from pyflink.datastream import CheckpointingMode, DataStream, StreamExecutionEnvironment
from pyflink.table import StatementSet, StreamTableEnvironment, Table

from streamrag.config import PROJECT_ROOT, ConfigError, Settings, load_settings
from streamrag.errors import UserError
from streamrag.security import FLINK_KAFKA_SHADED, java_kafka_properties

# The jobs' number of key groups: the most parallelism they can be rescaled to.
MAX_PARALLELISM = 128

PYFLINK_HOME = Path(pyflink.__file__).parent
# Flink plugins (the Prometheus reporter), one folder each, resolved by `make jars`. A
# cluster loads them from FLINK_PLUGINS_DIR; PyFlink's local execution does not look
# there, so the local JVM gets them on its classpath (local_lib_dir).
PLUGINS_DIR = PROJECT_ROOT / ".work" / "jars" / "plugins"


def local_lib_dir(plugins_dir: Path = PLUGINS_DIR) -> Path | None:
    """A lib folder for PyFlink's local JVM: links to PyFlink's own lib jars and to the
    plugins' jars (None without plugins). Named after its contents and made under a
    temporary name first, so that processes starting together never see it half made."""
    jars = sorted([*(PYFLINK_HOME / "lib").glob("*.jar"), *plugins_dir.glob("*/*.jar")])
    if not any(j.is_relative_to(plugins_dir) for j in jars):
        return None
    digest = hashlib.sha256("\n".join(map(str, jars)).encode()).hexdigest()[:12]
    target = plugins_dir.parent / f"flink-local-lib-{digest}"
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(dir=plugins_dir.parent, prefix=".flink-local-lib-"))
        for jar in jars:
            (staging / jar.name).symlink_to(jar)
        try:
            staging.rename(target)
        except OSError:  # made meanwhile by another process
            shutil.rmtree(staging, ignore_errors=True)
    return target


# PyFlink starts its JVM at the first Java object (an OutputTag at import of a job module,
# say), so its environment is set here, at import, unless already set. Its own search
# for FLINK_HOME would overwrite FLINK_LIB_DIR: FLINK_HOME is set too.
os.environ.setdefault("FLINK_HOME", str(PYFLINK_HOME))
os.environ.setdefault("FLINK_PLUGINS_DIR", str(PLUGINS_DIR))
if "FLINK_LIB_DIR" not in os.environ and (_lib := local_lib_dir()) is not None:
    os.environ["FLINK_LIB_DIR"] = str(_lib)

# The ingest job's name, on every Flink it runs on.
INGEST_JOB = "streamrag-ingest"
# REST port of the local cluster (`streamrag cluster up`), and the ports of local runs
# (`streamrag run`), of which the first free one is taken: where `streamrag status`
# looks for the job, which it knows by the consumer group among its parameters.
CLUSTER_REST_PORT = 18081
LOCAL_REST_PORTS = "18181-18190"
GROUP_PARAMETER = "streamrag.group_id"

# An event-time timer at this time fires only at the end of a bounded input (its final
# watermark; the jobs have no watermarks otherwise), and before the job ends: work left for
# the end of the input goes there, not into close(), which a bounded job may not wait for.
END_OF_INPUT = 2**63 - 1
# Rows on every Kafka sink: key and value as UTF-8 strings.
KEYED_ROW = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])


@dataclass(frozen=True)
class FlinkContext:
    env: StreamExecutionEnvironment
    t_env: StreamTableEnvironment


def local_jvm_args(settings: Settings, given: str) -> str:
    """JVM_ARGS for the JVM of a local run: ``given`` (the user's own) plus the heap and
    the JIT that ``flink`` asks for, each unless ``given`` already decides it."""
    args = given.split()
    heap = settings.flink.local_heap_mb
    if heap is not None and not any(a.startswith("-Xmx") for a in args):
        args.append(f"-Xmx{heap}m")
    # "Tiered": the user's -XX:TieredStopAtLevel=N or -XX:-TieredCompilation decides.
    if settings.flink.local_jit == "c1" and not any("Tiered" in a for a in args):
        args.append("-XX:TieredStopAtLevel=1")
    return " ".join(args)


def create_context(
    settings: Settings, job_name: str, options: Mapping[str, str] | None = None
) -> FlinkContext:
    """A streaming environment with checkpointing, the Python settings, the Kafka jar and
    the metrics reporter; ``options`` are further Flink options (local checkpoints)."""
    jars = sorted(Path(settings.flink.jars_dir).glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise ConfigError(
            f"no Flink Kafka connector jar in {settings.flink.jars_dir}: run `make jars`"
        )
    # Thread-mode Python runs embedded in the JVM that PyFlink starts from this process;
    # it only sees the venv (pemja, our packages) through PYTHONPATH. Process-mode
    # workers are started from the same environment and find the project the same way.
    # The local JVM (PyFlink's gateway) logs here instead of inside site-packages.
    os.environ.setdefault("FLINK_LOG_DIR", str(settings.stack.work_dir / "logs" / "flink-local"))
    paths = [str(PROJECT_ROOT), *site.getsitepackages()]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    # Read when PyFlink starts its local JVM (the next lines, in a local run).
    os.environ["JVM_ARGS"] = local_jvm_args(settings, os.environ.get("JVM_ARGS", ""))
    conf = Configuration()
    conf.set_string("pipeline.name", job_name)
    for key, value in restart_strategy(settings.flink.restart_attempts).items():
        conf.set_string(key, value)
    conf.set_string("pipeline.jars", ";".join(j.resolve().as_uri() for j in jars))
    conf.set_string("python.execution-mode", settings.flink.python_execution_mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("python.fn-execution.bundle.size", str(settings.flink.bundle_size))
    conf.set_string("python.fn-execution.bundle.time", str(settings.flink.bundle_time_ms))
    interval = f"{settings.flink.checkpoint_interval_ms} ms"
    conf.set_string("execution.checkpointing.interval", interval)
    conf.set_string("execution.checkpointing.checkpoints-after-tasks-finish", "true")
    # At the end of a bounded run the Kafka clients may still log while Flink closes the
    # job's class loader; the leak check then makes log4j print a stack trace to stdout
    # ("Trying to access closed classloader"). Nothing leaks across jobs in a process
    # that runs one job, so the check only adds that noise.
    conf.set_string("classloader.check-leaked-classloader", "false")
    conf.set_string("rest.bind-address", "127.0.0.1")
    conf.set_string("rest.address", "127.0.0.1")
    # A local run's REST API takes the first free port of this range (a cluster's own
    # configuration decides there); `streamrag status` looks for the job in it and finds
    # it by the consumer group among the job's parameters.
    conf.set_string("rest.bind-port", LOCAL_REST_PORTS)
    conf.set_string("pipeline.global-job-parameters", f"{GROUP_PARAMETER}:{job_group(settings)}")
    for key, value in {**reporter_options(settings), **(options or {})}.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(settings.flink.parallelism)
    # Fixed, so that state can be rescaled and jobs.embedding.batching maps its batch keys
    # to instances (it is what Flink picks by itself up to parallelism 85).
    env.set_max_parallelism(MAX_PARALLELISM)
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    return FlinkContext(env, StreamTableEnvironment.create(env))


def job_group(settings: Settings) -> str:
    """The consumer group as a job parameter and a folder name (any character but
    letters, digits and ``._-`` replaced: Flink's map syntax and paths need no quoting)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", settings.kafka.group_id)


def reporter_options(settings: Settings, processes: int = 1) -> dict[str, str]:
    """Flink's Prometheus reporter on ``flink.prometheus_port`` (none when unset); with
    several Flink processes on one host (a local cluster's JobManager and TaskManager),
    each takes the next free port of a range that starts there."""
    port = settings.flink.prometheus_port
    if port is None:
        return {}
    prefix = "metrics.reporter.prom."
    return {
        prefix + "factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        prefix + "port": str(port) if processes == 1 else f"{port}-{port + processes - 1}",
        # Label values as they are: a histogram's last bucket is le="+Inf", not "_Inf".
        prefix + "filterLabelValueCharacters": "false",
    }


def restart_strategy(attempts: int) -> dict[str, str]:
    """Flink options: restart from the last checkpoint with a backoff of 1 s doubling up to
    1 min; ``attempts`` restarts in a row before the job fails, a count that resets after
    10 minutes without a failure (a long life of occasional faults never uses it up).
    No restarts at all for 0 (a replay job, simply run again)."""
    if attempts == 0:
        return {"restart-strategy.type": "none"}
    prefix = "restart-strategy.exponential-delay."
    return {
        "restart-strategy.type": "exponential-delay",
        prefix + "initial-backoff": "1 s",
        prefix + "max-backoff": "1 min",
        prefix + "backoff-multiplier": "2.0",
        prefix + "reset-backoff-threshold": "10 min",
        prefix + "jitter-factor": "0.1",
        prefix + "attempts-before-reset-backoff": str(attempts),
    }


def security_options(settings: Settings) -> str:
    """kafka.security as options of a Kafka table (``'properties.<key>' = '<value>',``
    lines): the password and keys as config-provider references, resolved by the client
    in the TaskManager, so the job graph holds no secret (streamrag/security.py)."""
    props = java_kafka_properties(settings.kafka.security, FLINK_KAFKA_SHADED)
    return "".join(
        f"\n          'properties.{key}' = '{value.replace(chr(39), chr(39) * 2)}',"
        for key, value in props.items()
    )


def kafka_source(
    ctx: FlinkContext, settings: Settings, name: str, topics: list[str], bounded: bool
) -> DataStream:
    """Rows (k: bytes|None, v: bytes|None, topic, partition, offset, ts_ms) of ``topics``.

    ``bounded`` stops at the offsets that are latest when the job starts (tests, demo,
    replay); otherwise the source runs forever from the group's committed offsets.
    """
    bounded_opt = "'scan.bounded.mode' = 'latest-offset'," if bounded else ""
    ctx.t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {name} (
          k BYTES, v BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{";".join(topics)}',
          'properties.bootstrap.servers' = '{settings.kafka.bootstrap}',{security_options(settings)}
          'properties.group.id' = '{settings.kafka.group_id}',
          'properties.auto.offset.reset' = 'earliest',
          'properties.isolation.level' = 'read_committed',
          'scan.startup.mode' = 'group-offsets',
          {bounded_opt}
          'key.format' = 'raw', 'key.fields' = 'k',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY'
        )""")
    table: Table = ctx.t_env.sql_query(
        f"SELECT k, v, `topic`, `partition`, `offset`, "
        f"CAST(UNIX_TIMESTAMP(CAST(ts AS STRING)) AS BIGINT) * 1000 "
        f"+ CAST(EXTRACT(MILLISECOND FROM ts) AS BIGINT) AS ts_ms FROM {name}"
    )
    return ctx.t_env.to_data_stream(table)


def add_kafka_sink(
    ctx: FlinkContext,
    statements: StatementSet,
    settings: Settings,
    name: str,
    topic: str,
    stream: DataStream,
) -> None:
    """Write a stream of KEYED_ROW rows to ``topic`` (at least once; consumers are
    idempotent by key and version, so a replayed write changes nothing)."""
    ctx.t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {name} (k STRING, v STRING) WITH (
          'connector' = 'kafka',
          'topic' = '{topic}',
          'properties.bootstrap.servers' = '{settings.kafka.bootstrap}',{security_options(settings)}
          'properties.linger.ms' = '5',
          'properties.acks' = 'all',
          'sink.delivery-guarantee' = 'at-least-once',
          'key.format' = 'raw', 'key.fields' = 'k',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY'
        )""")
    statements.add_insert(name, ctx.t_env.from_data_stream(stream))


JobBuilder = Callable[[Settings, bool], StreamExecutionEnvironment]


def run_job_main(build: JobBuilder, job_name: str, argv: list[str] | None = None) -> None:
    """Entry point of a job module run by ``flink run -py`` or ``python -m``: options
    ``--config FILE`` and ``--bounded``; expected failures end with one line."""
    job = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @job.command()
    def _run(
        config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config.")] = None,
        bounded: Annotated[bool, typer.Option(help="Stop at the topics' end.")] = False,
    ) -> None:
        build(load_settings(config), bounded).execute(job_name)

    try:
        job(args=argv, standalone_mode=False)
    except typer.TyperException as e:  # bad arguments (click's usage errors)
        typer.echo(f"error: {usage_message(e)}", err=True)
        sys.exit(2)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


def usage_message(error: Exception) -> str:
    """The one-line message of a command-line usage error."""
    format_message = getattr(error, "format_message", None)
    return str(format_message() if callable(format_message) else error)
