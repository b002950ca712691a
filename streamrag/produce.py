"""`produce`: push a folder of .md/.txt/.html/.pdf files to the documents topic (key = doc
id). A PDF travels as its bytes, base64-encoded, in the record's ``data`` field."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streamrag.config import Settings
from streamrag.kafka import ensure_topics, send_all

CONTENT_TYPES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


@dataclass
class Produced:
    """What ``produce_folder`` did: records sent, and files skipped by reason."""

    topic: str
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"produced {self.sent} documents to {self.topic}; skipped {skipped} files" + (
            f" ({why})" if why else ""
        )


def document_records(
    folder: Path, prefix: str = "", skipped: Counter[str] | None = None
) -> Iterator[tuple[str, str]]:
    """(doc id, JSON value) per supported file under ``folder``; the doc id is the
    file's path relative to the folder, so producing the same folder twice is an update.
    Files that are not sent are counted in ``skipped`` by reason."""
    skipped = Counter() if skipped is None else skipped
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None:
            skipped[f"not {'/'.join(sorted(CONTENT_TYPES))}"] += 1
            continue
        if path.stat().st_size == 0:
            skipped["empty"] += 1
            continue
        doc_id = prefix + path.relative_to(folder).as_posix()
        if content_type == "pdf":
            content = {"data": base64.b64encode(path.read_bytes()).decode("ascii")}
        else:
            content = {"text": path.read_text(encoding="utf-8", errors="replace")}
        record = {
            "id": doc_id,
            **content,
            "content_type": content_type,
            "title": path.stem.replace("-", " ").replace("_", " "),
            "metadata": {"path": path.relative_to(folder).as_posix()},
        }
        yield doc_id, json.dumps(record)


def produce_folder(settings: Settings, folder: Path, prefix: str = "") -> Produced:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    ensure_topics(settings)
    done = Produced(settings.kafka.documents_topic)
    records = document_records(folder, prefix, done.skipped)
    done.sent = send_all(settings, settings.kafka.documents_topic, records)
    return done
