"""Rebuild the index into a new generation, verify it against the log, swap it in.

- ``rematerialize``: a new generation from the embeddings topic (no model calls; the
  replay job), caught up with what arrived meanwhile, verified, then swapped in.
- ``full_replay``: the ingest job re-reads the source topics with a fresh consumer group
  into new topics ``<chunks>.g<N>`` and ``<embeddings>.g<N>`` and the new generation (new
  chunking rules or another model), verified against its own embeddings topic, swapped in.

A job runs as a subprocess (``python -m jobs.replay.job|jobs.pipeline --bounded``) with the
effective settings written to a temporary YAML file, while a progress bar polls the
generation's chunk count. A failure of the job or of the verification drops the new
generation and leaves the serving one serving. The CLI, the bench and the tests call
these functions; the CLI only parses and prints.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from jobs.indexing.apply import PendingWrites
from jobs.indexing.log import LogState, VerificationError, parse_embedding, verify
from streamrag import generations as gens
from streamrag.config import PROJECT_ROOT, MilvusConfig, Settings
from streamrag.errors import BadRecord
from streamrag.generations import Generation, GenerationError
from streamrag.kafka import delete_topics, end_offsets, ensure_topics, read_log
from streamrag.models import model_dimension, resolve_model
from streamrag.security import secret_variables
from streamrag.stores.base import VectorStore


class ReplayError(GenerationError):
    """A replay job that failed; the message is one line."""


def rematerialize(
    settings: Settings,
    swap: bool = True,
    progress: bool = True,
    before_verify: Callable[[VectorStore], None] | None = None,
) -> Generation:
    """A new generation from the embeddings topic: replay, catch up, verify, swap."""
    topic = settings.kafka.embeddings_topic
    ends = end_offsets(settings, topic)
    state = LogState()
    for m in read_log(settings, topic, None, ends):
        state.add_value(m.value)
    models = state.model_ids()
    if len(models) > 1:
        raise GenerationError(
            f"{topic} holds vectors of several models"
            f" ({', '.join(sorted(models))}): rebuild with `replay full`"
        )
    ref = resolve_model(settings.embedding.model)
    dim = state.dim() or model_dimension(ref)
    name = gens.create_generation(settings, next(iter(models), ref.model_id), dim)
    group = f"{settings.kafka.group_id}-replay-{name}-{uuid.uuid4().hex[:6]}"

    def work(store: VectorStore) -> None:
        nonlocal ends
        job = override_settings(settings, name, kafka={"group_id": group})
        run_job("jobs.replay.job", job, store, state.upserts, f"replay {name}", progress)
        ends = catch_up(settings, store, ends, state)
        if before_verify:
            before_verify(store)
        verify(store, state.expected())

    _build_verified(settings, name, work)
    if swap:
        gens.swap(settings, name)
        # Records the live job indexed into the old generation during verification.
        time.sleep(min(settings.flink.checkpoint_interval_ms / 1000, 5))
        with _open(settings, name) as store:
            catch_up(settings, store, ends, state)
    return _generation(settings, name)


def full_replay(
    settings: Settings, model: str | None = None, swap: bool = True, progress: bool = True
) -> Generation:
    """A new generation re-chunked and re-embedded from the source topics."""
    model = model or settings.embedding.model
    ref = resolve_model(model)
    name = gens.create_generation(settings, ref.model_id, model_dimension(ref))
    new = full_replay_settings(settings, name, model)
    estimate = _serving_count(settings)
    topic = new.kafka.embeddings_topic
    suffix = name.rpartition("__")[2]

    def work(store: VectorStore) -> None:
        created = ensure_topics(new)
        try:
            if sum(end_offsets(new, topic).values()) > 0:
                raise GenerationError(
                    f"topic {topic} already holds records (of an earlier"
                    " full replay?): delete it, then run again"
                )
            run_job("jobs.pipeline", new, store, estimate, f"full replay {name}", progress)
            state = LogState()
            for m in read_log(new, topic):
                state.add_value(m.value)
            if state.model_ids() - {ref.model_id}:
                raise GenerationError(f"{topic} holds vectors of other models than {ref.model_id}")
            verify(store, state.expected())
        except BaseException:
            _delete_topics(new, [t for t in created if t.endswith(f".{suffix}")])
            raise

    _build_verified(settings, name, work)
    if swap:
        gens.swap(settings, name)
    return _generation(settings, name)


def full_replay_settings(settings: Settings, name: str, model: str) -> Settings:
    """The settings of a full replay into generation ``name``: its own topics (suffixed
    with the generation) and consumer group, and ``model``."""
    suffix = name.rpartition("__")[2]
    k = settings.kafka
    kafka = {
        "group_id": f"{k.group_id}-replay-{name}-{uuid.uuid4().hex[:6]}",
        **{
            t: f"{getattr(k, t)}.{suffix}"
            for t in ("chunks_topic", "embeddings_topic", "dead_letter_topic")
        },
    }
    return override_settings(settings, name, kafka=kafka, embedding={"model": model})


def catch_up(
    settings: Settings, store: VectorStore, start: dict[int, int], state: LogState
) -> dict[int, int]:
    """Apply the embeddings records after ``start`` (upserts, then trims); returns the new
    end offsets. Idempotent: re-applying what the job already applied changes nothing."""
    topic = settings.kafka.embeddings_topic
    ends = end_offsets(settings, topic)
    pending = PendingWrites(store)
    for m in read_log(settings, topic, start, ends):
        state.add_value(m.value)
        with contextlib.suppress(BadRecord):  # counted by the state, skipped as the job does
            if (record := parse_embedding(m.value)) is not None:
                pending.add(record)
    pending.finish()
    return ends


def run_job(
    module: str,
    settings: Settings,
    store: VectorStore,
    total: int | None,
    desc: str,
    progress: bool = True,
    base_env: Mapping[str, str] | None = None,
) -> float:
    """Run ``python -m module --bounded`` with exactly ``settings`` (settings_file); the
    bar follows store.count(). Returns the wall time in seconds, startup included."""
    with settings_file(settings, base_env) as (config, env):
        log = config.with_name("job.log")
        start = time.monotonic()
        with (
            log.open("w") as err,
            tqdm(
                total=total or None, unit="chunk", desc=desc, disable=not progress, smoothing=0.1
            ) as bar,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(config), "--bounded"],
                env=env,
                cwd=PROJECT_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            while proc.poll() is None:
                time.sleep(1)
                _advance(bar, store)
            _advance(bar, store)
        if proc.returncode != 0:
            raise ReplayError(
                f"{desc}: the job failed (exit {proc.returncode}): "
                f"{_last_error(log.read_text(errors='replace'))}"
            )
        return time.monotonic() - start


@contextlib.contextmanager
def settings_file(
    settings: Settings, base_env: Mapping[str, str] | None = None
) -> Iterator[tuple[Path, dict[str, str]]]:
    """``settings`` as a YAML file, and the environment of a child process that reads
    exactly it: ``base_env`` (default os.environ) without its STREAMRAG_* variables but
    the secrets' (the file names them, never holds them). The file is gone on exit."""
    keep = secret_variables(settings)
    env = {
        k: v
        for k, v in (base_env or os.environ).items()
        if not k.startswith("STREAMRAG_") or k in keep
    }
    with tempfile.TemporaryDirectory(prefix="streamrag-settings-") as tmp:
        config = Path(tmp) / "settings.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")
        yield config, env


def override_settings(settings: Settings, name: str, **sections: dict[str, Any]) -> Settings:
    """``settings`` with the store name and some keys changed (env variables ignored)."""
    key = "collection" if isinstance(settings.store, MilvusConfig) else "table"
    update: dict[str, Any] = {"store": settings.store.model_copy(update={key: name})}
    for section, values in sections.items():
        update[section] = getattr(settings, section).model_copy(update=values)
    return settings.model_copy(update=update)


def _build_verified(settings: Settings, name: str, work: Callable[[VectorStore], None]) -> None:
    """Run ``work`` on the new generation; on failure drop it and say what still serves."""
    try:
        with _open(settings, name) as store:
            work(store)
    except GenerationError as e:
        _drop_quietly(settings, name)
        current = gens.serving(settings)
        raise type(e)(
            f"{name} not swapped in: {e}; dropped it,"
            f" {current.name if current else 'nothing'} still serves"
        ) from None
    except VerificationError as e:
        _drop_quietly(settings, name)
        current = gens.serving(settings)
        raise VerificationError(
            f"{name} not swapped in: verification failed: {e}; dropped"
            f" it, {current.name if current else 'nothing'} still serves"
        ) from None
    except BaseException:
        _drop_quietly(settings, name)
        raise


def _drop_quietly(settings: Settings, name: str) -> None:
    with contextlib.suppress(Exception):  # the original failure is what matters
        gens.drop_generation(settings, name)


@contextlib.contextmanager
def _open(settings: Settings, name: str) -> Iterator[VectorStore]:
    """A store on one generation, closed on exit."""
    store = gens.open_generation(settings, name)
    try:
        yield store
    finally:
        store.close()


def _advance(bar: tqdm[Any], store: VectorStore) -> None:
    with contextlib.suppress(Exception):  # not loaded yet: the next poll will tell
        bar.update(store.count() - bar.n)


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Error:" in ln or "Exception:" in ln]
    return ((hits or lines or ["no output"])[-1])[:400]


def _delete_topics(settings: Settings, topics: list[str]) -> None:
    """Delete topics that this replay created (empty before it), so a re-run starts clean."""
    delete_topics(settings, topics)


def _serving_count(settings: Settings) -> int | None:
    try:
        with _open(settings, gens.serving_name(settings)) as store:
            return store.count()
    except Exception:
        return None


def _generation(settings: Settings, name: str) -> Generation:
    return next(g for g in gens.list_generations(settings) if g.name == name)
