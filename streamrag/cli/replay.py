"""Rebuild the index into a new generation, verify it against the log, swap, roll back.

``streamrag replay rematerialize``: a new generation from the embeddings topic (no model
calls; jobs/replay.py), caught up with what arrived meanwhile, verified, then swapped in.
``streamrag replay full [--model M]``: the ingest job (jobs/pipeline.py) re-reads the
source topics with a fresh consumer group into new topics ``<chunks>.g<N>`` and
``<embeddings>.g<N>`` and the new generation (new chunking rules or another model),
verified against its own embeddings topic, then swapped in.
``streamrag generations list|swap|rollback|drop-old``: the generations of the index.

A job runs as a subprocess (``python -m jobs.replay|jobs.pipeline --bounded``) with the
effective settings written to a temporary YAML file, while a progress bar polls the
generation's chunk count. A failure of the job or of the verification drops the new
generation and leaves the serving one serving.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from streamrag import generations as gens
from streamrag.config import PROJECT_ROOT, MilvusConfig, Settings
from streamrag.generations import Generation, GenerationError
from streamrag.stores.base import VectorStore

app = typer.Typer(no_args_is_help=True)
generations_app = typer.Typer(no_args_is_help=True, help="Generations of the index.")
replay_app = typer.Typer(no_args_is_help=True, help="Rebuild the index into a new generation.")
app.add_typer(generations_app, name="generations")
app.add_typer(replay_app, name="replay")


class ReplayError(GenerationError):
    """A replay job that failed; the message is one line."""


def rematerialize(settings: Settings, swap: bool = True, progress: bool = True,
                  before_verify: Callable[[VectorStore], None] | None = None) -> Generation:
    """A new generation from the embeddings topic: replay, catch up, verify, swap."""
    from streamrag.models import model_dimension, resolve_model
    from jobs.replay import LogState, end_offsets, parse, read_log

    topic = settings.kafka.embeddings_topic
    ends = end_offsets(settings, topic)
    state = LogState()
    for m in read_log(settings, topic, None, ends):
        state.add(parse(m.value))
    models = state.model_ids()
    if len(models) > 1:
        raise GenerationError(f"{topic} holds vectors of several models"
                              f" ({', '.join(sorted(models))}): rebuild with `replay full`")
    ref = resolve_model(settings.embedding.model)
    dim = state.dim() or model_dimension(ref)
    name = gens.create_generation(settings, next(iter(models), ref.model_id), dim)
    group = f"{settings.kafka.group_id}-replay-{name}-{uuid.uuid4().hex[:6]}"

    def work(store: VectorStore) -> None:
        nonlocal ends
        job = override_settings(settings, name, kafka={"group_id": group})
        run_job("jobs.replay", job, store, state.upserts, f"replay {name}", progress)
        ends = catch_up(settings, store, ends, state)
        if before_verify:
            before_verify(store)
        _verify(store, state.expected())

    _build_verified(settings, name, work)
    if swap:
        gens.swap(settings, name)
        # Records the live job indexed into the old generation during verification.
        time.sleep(min(settings.flink.checkpoint_interval_ms / 1000, 5))
        with _open(settings, name) as store:
            catch_up(settings, store, ends, state)
    return _generation(settings, name)


def full_replay(settings: Settings, model: str | None = None, swap: bool = True,
                progress: bool = True) -> Generation:
    """A new generation re-chunked and re-embedded from the source topics."""
    from streamrag.models import model_dimension, resolve_model
    from jobs.replay import LogState, end_offsets, parse, read_log
    from streamrag.kafka import ensure_topics

    model = model or settings.embedding.model
    ref = resolve_model(model)
    name = gens.create_generation(settings, ref.model_id, model_dimension(ref))
    suffix = name.rpartition("__")[2]
    k = settings.kafka
    kafka = {"group_id": f"{k.group_id}-replay-{name}-{uuid.uuid4().hex[:6]}",
             **{t: f"{getattr(k, t)}.{suffix}"
                for t in ("chunks_topic", "embeddings_topic", "dead_letter_topic")}}
    new = override_settings(settings, name, kafka=kafka, embedding={"model": model})
    estimate = _serving_count(settings)
    topic = new.kafka.embeddings_topic

    def work(store: VectorStore) -> None:
        created = ensure_topics(new)
        try:
            if sum(end_offsets(new, topic).values()) > 0:
                raise GenerationError(f"topic {topic} already holds records (of an earlier"
                                      " full replay?): delete it, then run again")
            run_job("jobs.pipeline", new, store, estimate, f"full replay {name}", progress)
            state = LogState()
            for m in read_log(new, topic, None, end_offsets(new, topic)):
                state.add(parse(m.value))
            if state.model_ids() - {ref.model_id}:
                raise GenerationError(f"{topic} holds vectors of other models than"
                                      f" {ref.model_id}")
            _verify(store, state.expected())
        except BaseException:
            _delete_topics(new, [t for t in created if t.endswith(f".{suffix}")])
            raise

    _build_verified(settings, name, work)
    if swap:
        gens.swap(settings, name)
    return _generation(settings, name)


def catch_up(settings: Settings, store: VectorStore, start: dict[int, int],
             state: Any) -> dict[int, int]:
    """Apply the embeddings records after ``start`` (upserts, then trims); returns the new
    end offsets. Idempotent: re-applying what the job already applied changes nothing."""
    from jobs.replay import apply_in_phases, end_offsets, parse, read_log

    topic = settings.kafka.embeddings_topic
    ends = end_offsets(settings, topic)
    records = [r for m in read_log(settings, topic, start, ends) if (r := parse(m.value))]
    for record in records:
        state.add(record)
    apply_in_phases(store, records)
    return ends


def run_job(module: str, settings: Settings, store: VectorStore, total: int | None,
            desc: str, progress: bool = True, base_env: Mapping[str, str] | None = None
            ) -> float:
    """Run ``python -m module --bounded`` with exactly ``settings`` (a YAML file; the
    STREAMRAG_* variables of ``base_env``, default os.environ, are left out); the bar
    follows store.count(). Returns the wall time in seconds, startup included."""
    from tqdm import tqdm

    data = settings.model_dump(mode="json")
    env = {k: v for k, v in (base_env or os.environ).items() if not k.startswith("STREAMRAG_")}
    if isinstance(settings.store, MilvusConfig) and settings.store.token:
        data["store"]["token"] = None  # never written to a file: passed in the environment
        env["STREAMRAG_STORE__TOKEN"] = settings.store.token.get_secret_value()
    with tempfile.TemporaryDirectory(prefix="streamrag-replay-") as tmp:
        config, log = Path(tmp) / "settings.yaml", Path(tmp) / "job.log"
        config.write_text(yaml.safe_dump(data), encoding="utf-8")
        start = time.monotonic()
        with log.open("w") as err, tqdm(total=total or None, unit="chunk", desc=desc,
                                        disable=not progress, smoothing=0.1) as bar:
            proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(config),
                                     "--bounded"], env=env, cwd=PROJECT_ROOT,
                                    stdout=subprocess.DEVNULL, stderr=err)
            while proc.poll() is None:
                time.sleep(1)
                _advance(bar, store)
            _advance(bar, store)
        if proc.returncode != 0:
            raise ReplayError(f"{desc}: the job failed (exit {proc.returncode}): "
                              f"{_last_error(log.read_text(errors='replace'))}")
        return time.monotonic() - start


def _build_verified(settings: Settings, name: str, work: Callable[[VectorStore], None]) -> None:
    """Run ``work`` on the new generation; on failure drop it and say what still serves."""
    try:
        with _open(settings, name) as store:
            work(store)
    except GenerationError as e:
        _drop_quietly(settings, name)
        current = gens.serving(settings)
        raise type(e)(f"{name} not swapped in: {e}; dropped it,"
                      f" {current.name if current else 'nothing'} still serves") from None
    except BaseException:
        _drop_quietly(settings, name)
        raise


def _drop_quietly(settings: Settings, name: str) -> None:
    with contextlib.suppress(Exception):  # the original failure is what matters
        gens.drop_generation(settings, name)


def _verify(store: VectorStore, expected: Any) -> None:
    from jobs.replay import VerificationError, verify

    try:
        verify(store, expected)
    except VerificationError as e:
        raise VerificationError(f"verification failed: {e}") from None


def override_settings(settings: Settings, name: str, **sections: dict[str, Any]) -> Settings:
    """``settings`` with the store name and some keys changed (env variables ignored)."""
    key = "collection" if isinstance(settings.store, MilvusConfig) else "table"
    update: dict[str, Any] = {"store": settings.store.model_copy(update={key: name})}
    for section, values in sections.items():
        update[section] = getattr(settings, section).model_copy(update=values)
    return settings.model_copy(update=update)


def _open(settings: Settings, name: str) -> contextlib.closing[Any]:
    """A store on one generation, closed on exit."""
    return contextlib.closing(gens.open_generation(settings, name))


def _advance(bar: Any, store: VectorStore) -> None:
    with contextlib.suppress(Exception):  # not loaded yet: the next poll will tell
        bar.update(store.count() - bar.n)


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Error:" in ln or "Exception:" in ln]
    return ((hits or lines or ["no output"])[-1])[:400]


def _delete_topics(settings: Settings, topics: list[str]) -> None:
    """Delete topics that this replay created (empty before it), so a re-run starts clean."""
    from confluent_kafka.admin import AdminClient

    if topics:
        admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result()


def _serving_count(settings: Settings) -> int | None:
    try:
        with _open(settings, gens.serving_name(settings)) as store:
            return store.count()
    except Exception:
        return None


def _generation(settings: Settings, name: str) -> Generation:
    return next(g for g in gens.list_generations(settings) if g.name == name)


def _settings() -> Settings:
    from streamrag.cli import settings

    return settings()


@generations_app.command("list")
def list_cmd() -> None:
    """The generations of the index; * marks the serving one."""
    found = gens.list_generations(_settings())
    for g in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(g.created_at_ms / 1000)) \
            if g.created_at_ms else "-"
        typer.echo(f"{'*' if g.serving else ' '} g{g.number:<3} {g.name:<40}"
                   f" {g.model_id or '?':<45} {when}")
    if not found:
        typer.echo(f"no index named {gens.serving_name(_settings())} yet")


@generations_app.command("swap")
def swap_cmd(generation: Annotated[str, typer.Argument(help="gN, N or the name.")]) -> None:
    """Serve another generation (atomic)."""
    to: str | int = int(generation) if generation.isdigit() else generation
    typer.echo(f"serving {gens.swap(_settings(), to).name}")


@generations_app.command("rollback")
def rollback_cmd() -> None:
    """Serve again the generation that served before the current one."""
    s = _settings()
    current = gens.serving(s)
    g = gens.rollback(s)
    typer.echo(f"serving {g.name}\nnote: it lacks what was indexed while"
               f" {current.name if current else 'the other'} served; `streamrag replay"
               " rematerialize` rebuilds the index from the log")


@generations_app.command("drop-old")
def drop_old_cmd(keep: Annotated[int, typer.Option(min=1, help="Newest to keep.")] = 2) -> None:
    """Drop all but the newest generations (never the serving one)."""
    dropped = gens.drop_old(_settings(), keep)
    typer.echo(f"dropped: {', '.join(dropped)}" if dropped else "nothing to drop")


NoSwap = Annotated[bool, typer.Option("--no-swap", help="Build and verify only.")]


@replay_app.command("rematerialize")
def rematerialize_cmd(no_swap: NoSwap = False) -> None:
    """Rebuild from the embeddings topic (no model calls), verify, swap."""
    g = rematerialize(_settings(), swap=not no_swap)
    typer.echo(f"{g.name}: verified{', serving' if g.serving else ''} ({g.model_id})")


@replay_app.command("full")
def full_cmd(model: Annotated[str | None, typer.Option(
        help="Embedding model (name or path); default: embedding.model.")] = None,
        no_swap: NoSwap = False) -> None:
    """Re-chunk and re-embed from the source topics into a new generation, verify, swap."""
    s = _settings()
    g = full_replay(s, model, swap=not no_swap)
    suffix, k = g.name.rpartition("__")[2], s.kafka
    typer.echo(f"{g.name}: verified{', serving' if g.serving else ''} ({g.model_id})\n"
               "the ingest job must now run with the same model and topics, e.g. restart it"
               f" with STREAMRAG_EMBEDDING__MODEL={model or s.embedding.model}"
               f" STREAMRAG_KAFKA__CHUNKS_TOPIC={k.chunks_topic}.{suffix}"
               f" STREAMRAG_KAFKA__EMBEDDINGS_TOPIC={k.embeddings_topic}.{suffix}"
               f" STREAMRAG_KAFKA__DEAD_LETTER_TOPIC={k.dead_letter_topic}.{suffix}")

