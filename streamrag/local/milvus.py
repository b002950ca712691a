"""The Milvus Lite server (the milvus-lite wheel), bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from streamrag.local.service import HOST, Service, port_open

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

        # pymilvus logs every failed RPC at ERROR; a probe that fails is not an error.
        pymilvus_log = logging.getLogger("pymilvus")
        level, pymilvus_log.level = pymilvus_log.level, logging.CRITICAL
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
        finally:
            pymilvus_log.level = level
