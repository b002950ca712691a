"""What a bench phase leaves behind, removed: its collection or table, its topics (the
pipeline's four and the CDC topics it names) and its local checkpoints. Each phase has
its own names (streamrag.config.isolated_env), so repeated benches would otherwise pile
them up in the broker and under .work/checkpoints."""

from __future__ import annotations

import contextlib
import shutil

from streamrag import kafka
from streamrag.config import Settings
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.stores import open_store


def cleanup(settings: Settings) -> None:
    """Best effort: a phase that failed halfway may have made only some of these."""
    with contextlib.suppress(Exception):
        store = open_store(settings.store)
        try:
            store.drop()
        finally:
            store.close()
    with contextlib.suppress(Exception):
        kafka.delete_topics(settings, list(kafka.topic_configs(settings)))
    shutil.rmtree(checkpoints_dir(settings, bounded=True).parent, ignore_errors=True)
