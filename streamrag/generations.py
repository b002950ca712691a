"""Generations of the index: the policy. Collections/tables ``<name>__g<N>`` serve behind
one serving name, the configured ``store.collection`` / ``store.table``.

Readers and the ingest job use only the serving name. A replay builds generation N next to
the serving one, verifies it, then swaps the serving name to it atomically; a rollback
serves again the generation that served before; drop-old keeps the newest few. How each
store does a swap atomically (Milvus aliases, pgvector views and a registry table) is the
store's part of the contract: ``streamrag.stores.base.GenerationCatalog``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from streamrag.config import MilvusConfig, Settings
from streamrag.errors import UserError
from streamrag.stores import open_catalog, open_store
from streamrag.stores.base import Generation, GenerationCatalog, VectorStore

__all__ = ["Generation", "GenerationError"]


class GenerationError(UserError):
    """A generation operation that cannot be done; the message is one line for the user."""


def serving_name(settings: Settings) -> str:
    s = settings.store
    return s.collection if isinstance(s, MilvusConfig) else s.table


def generation_name(settings: Settings, number: int) -> str:
    return f"{serving_name(settings)}__g{number}"


def list_generations(settings: Settings) -> list[Generation]:
    with _catalog(settings) as c:
        return sorted(c.generations(), key=lambda g: g.number)


def serving(settings: Settings) -> Generation | None:
    with _catalog(settings) as c:
        return c.serving()


def create_generation(settings: Settings, model_id: str, dim: int) -> str:
    """Create the next generation, empty, for vectors of ``model_id``; returns its name."""
    with _catalog(settings) as c:
        number = max((g.number for g in c.generations()), default=0) + 1
        name = generation_name(settings, number)
        c.create(number, name, model_id, dim)
        return name


def open_generation(settings: Settings, name: str) -> VectorStore:
    return open_store(settings.store, name)


def swap(settings: Settings, to: str | int) -> Generation:
    """Serve generation ``to`` (a number or a name); atomic for readers and writers."""
    with _catalog(settings) as c:
        gens = c.generations()
        target = next((g for g in gens if to in (g.number, g.name, f"g{g.number}")), None)
        if target is None:
            raise GenerationError(
                f"no generation {to} of {c.base}"
                f" (have: {', '.join(g.name for g in gens) or 'none'})"
            )
        if not target.serving:
            c.swap(target)
        return c.serving() or target


def rollback(settings: Settings) -> Generation:
    """Serve again the generation that served before the current one (twice: back again).

    It holds what it held when it stopped serving: the live writer has written to the
    newer generation since; ``streamrag replay rematerialize`` rebuilds from the log."""
    before = [g for g in list_generations(settings) if not g.serving and g.served_at_ms > 0]
    if not before:
        raise GenerationError(f"{serving_name(settings)}: no previous generation to roll back to")
    return swap(settings, max(before, key=lambda g: g.served_at_ms).name)


def drop_old(settings: Settings, keep: int = 2) -> list[str]:
    """Drop all but the ``keep`` newest generations; the serving one is always kept."""
    if keep < 1:
        raise GenerationError("keep must be at least 1")
    with _catalog(settings) as c:
        gens = sorted(c.generations(), key=lambda g: g.number, reverse=True)
        doomed = [g.name for g in gens[keep:] if not g.serving]
        for name in doomed:
            c.drop(name)
        return doomed


def drop_generation(settings: Settings, name: str) -> None:
    """Drop one generation (e.g. a replay that failed verification); never the serving one."""
    with _catalog(settings) as c:
        current = c.serving()
        if current is not None and current.name == name:
            raise GenerationError(f"{name} is serving: swap or roll back first")
        c.drop(name)


def drop_all(settings: Settings) -> None:
    """Drop the serving name and every generation (tests, teardown)."""
    with _catalog(settings) as c:
        c.drop_all()


@contextmanager
def _catalog(settings: Settings) -> Iterator[GenerationCatalog]:
    catalog = open_catalog(settings.store)
    try:
        yield catalog
    finally:
        catalog.close()
