"""Quiet by default: third-party notices and progress bars stay out of the project's own
output unless ``--verbose``.

- librdkafka's notices (e.g. "Failed to acquire idempotence PID ... Coordinator load in
  progress" while a fresh broker elects its coordinator) and its connection failures go
  through the Python logger ``streamrag.librdkafka`` (every client in streamrag.kafka
  passes it), silenced: a client that cannot connect raises the reason in one line;
- the "Loading weights" bars of transformers and huggingface_hub are switched off by
  their environment variables, which the Flink Python workers inherit too;
- pymilvus's warnings (e.g. "failed to get mvccTs from milvus server") and its own
  error lines before every exception it raises are silenced: the project reports the
  error itself, in one line.
"""

from __future__ import annotations

import logging
import os

LIBRDKAFKA = logging.getLogger("streamrag.librdkafka")
NOISY_LOGGERS = ("pymilvus", "streamrag.librdkafka", "transformers", "sentence_transformers")
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_third_parties(verbose: bool = False) -> None:
    """Silence the libraries' notices (``verbose``: let them through at INFO)."""
    if verbose:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # pymilvus logs every failed call at ERROR with its own handlers before raising it
    # (configured when it is imported: import it first); the project reports the error
    # itself, in one line.
    import pymilvus  # noqa: F401

    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # librdkafka logs each failed connection attempt (many a second) at ERROR; the
    # project raises the reason itself, in one line (streamrag.kafka).
    LIBRDKAFKA.setLevel(logging.CRITICAL)
