"""Generations on Milvus: collections ``<name>__g<N>`` behind an alias named ``<name>``.

A swap is one ``alter_alias`` (a server-side operation: every request resolves the alias,
so searches and the live writer follow it at once). The model id and times of a
generation are collection properties. Milvus Lite 3.2.2 cannot list collections (its
ShowCollections reply fails), so generations are then found by probing ``<name>__g0..``
up to 16 numbers past the highest known one.

A serving name that is still a plain collection (made before generations existed) is
generation 0 until the first swap renames it to ``<name>__g0`` (no copy) and puts the
alias in its place: two calls a few milliseconds apart, which the stores' retries ride
over. Policy (numbering, verify-then-swap, rollback) is streamrag.generations'.
"""

from __future__ import annotations

import re
import time

from pymilvus import MilvusException

from streamrag.config import MilvusConfig
from streamrag.stores.base import Generation, StoreError
from streamrag.stores.milvus import MilvusStore, quiet, transient

_P = "streamrag."  # collection property prefix
_SUFFIX = re.compile(r"__g(\d+)$")


class MilvusGenerations:
    """The generations of one serving name (see the module doc)."""

    def __init__(self, config: MilvusConfig) -> None:
        self._config = config
        self.base = config.collection
        self._client = MilvusStore(config).client

    def generations(self) -> list[Generation]:
        target = self._resolve(self.base)
        names = self._collection_names()
        if names is None:
            names = self._probe(target)
        gens = [self._describe(n, target) for n in names if self._number(n) is not None]
        if target == self.base:
            gens.append(self._plain())
        return gens

    def serving(self) -> Generation | None:
        target = self._resolve(self.base)
        if target is None:
            return None
        return self._plain() if target == self.base else self._describe(target, target)

    @transient
    def create(self, number: int, name: str, model_id: str, dim: int) -> None:
        collection = MilvusStore(self._config, name)
        try:
            collection.ensure(dim)
        finally:
            collection.close()
        self._client.alter_collection_properties(
            name, properties={_P + "model_id": model_id, _P + "created_at_ms": str(_now_ms())}
        )

    def swap(self, target: Generation) -> None:
        if self._resolve(self.base) != self.base:
            self._point_alias(target.name)
        else:  # adopt the plain collection as generation 0, then alias the name
            g0 = f"{self.base}__g0"
            self._client.alter_collection_properties(
                self.base,
                properties={
                    _P + "model_id": self._sample_model(self.base),
                    _P + "created_at_ms": "0",
                    _P + "served_at_ms": "1",
                },
            )
            # Load the target before the rename: the name is unresolvable only between
            # the rename and the alias creation, two calls apart.
            self._client.load_collection(target.name)
            self._client.rename_collection(self.base, g0)
            try:
                self._point_alias(target.name)
            except Exception:
                self._client.rename_collection(g0, self.base)
                raise
            self._client.load_collection(g0)  # loaded, as after any swap: rollback is instant
        self._client.alter_collection_properties(
            target.name, properties={_P + "served_at_ms": str(_now_ms())}
        )

    @transient
    def drop(self, name: str) -> None:
        if self._resolve(self.base) == name:
            raise StoreError(f"{name} is serving: swap or roll back first")
        self._client.drop_collection(name)

    @transient
    def drop_all(self) -> None:
        gens = self.generations()
        if self._resolve(self.base) not in (None, self.base):
            self._client.drop_alias(self.base)
        for g in gens:
            self._client.drop_collection(g.name)

    def close(self) -> None:
        self._client.close()

    @transient
    def _resolve(self, name: str) -> str | None:
        """The collection that ``name`` serves: itself when it is a collection, the
        aliased collection when it is an alias, None when missing."""
        if not self._client.has_collection(name):
            return None
        return str(self._client.describe_collection(name)["collection_name"])

    @transient
    def _point_alias(self, target: str) -> None:
        """Serve ``target`` under the base name in one alias operation (loaded first, so
        no search ever hits a released collection)."""
        self._client.load_collection(target)
        if self._resolve(self.base) is None:
            self._client.create_alias(target, self.base)
        else:
            self._client.alter_alias(target, self.base)

    def _collection_names(self) -> list[str] | None:
        """Collections of this base; None when the server cannot list them."""
        try:
            with quiet():
                names = self._client.list_collections()
        except MilvusException:
            return None
        return sorted(n for n in names if n.startswith(f"{self.base}__g"))

    def _probe(self, target: str | None) -> list[str]:
        found, n = [], 0
        high = self._number(target or "") or 0
        while n <= high + 16:
            name = f"{self.base}__g{n}"
            if self._resolve(name) == name:
                found.append(name)
                high = max(high, n)
            n += 1
        return found

    def _number(self, name: str) -> int | None:
        m = _SUFFIX.search(name)
        return int(m.group(1)) if m and name[: m.start()] == self.base else None

    @transient
    def _describe(self, name: str, target: str | None) -> Generation:
        props = self._client.describe_collection(name).get("properties") or {}
        props = {str(k): str(v) for k, v in props.items()}
        model, chunker = self._sample(name)
        return Generation(
            self._number(name) or 0,
            name,
            props.get(_P + "model_id") or model,
            int(props.get(_P + "created_at_ms", 0)),
            name == target,
            int(props.get(_P + "served_at_ms", 0)),
            chunker,
        )

    def _plain(self) -> Generation:
        model, chunker = self._sample(self.base)
        return Generation(0, self.base, model, 0, True, chunker=chunker)

    def _sample_model(self, name: str) -> str:
        return self._sample(name)[0]

    @transient
    def _sample(self, name: str) -> tuple[str, str]:
        """(model id, chunker id) of one chunk of a collection; empty when it has none."""
        self._client.load_collection(name)  # a renamed collection is released
        rows = self._client.query(name, filter="", output_fields=["model_id", "chunker"], limit=1)
        return (str(rows[0]["model_id"]), str(rows[0]["chunker"])) if rows else ("", "")


def _now_ms() -> int:
    return int(time.time() * 1000)
