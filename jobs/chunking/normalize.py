"""Normalize any source record into one DocumentEvent, checked against every limit.

A record of a topic in ``cdc.tables`` is a Debezium change event (jobs.chunking.cdc);
any other record is a documents-topic record (jobs.chunking.documents). Either way the
event is then held against ``streamrag.limits``, so that nothing a later step cannot
store, encode or send leaves this step: such a record raises BadRecord here, with a
reason naming the limit, and goes to the dead letters instead of failing the job.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobs.chunking.cdc import parse_cdc_record
from jobs.chunking.documents import parse_document_record
from streamrag.config import CdcTableConfig
from streamrag.limits import check_event
from streamrag.records import DocumentEvent, Origin


def normalize_record(
    key: bytes | None,
    value: bytes | None,
    origin: Origin,
    timestamp_ms: int,
    tables: Mapping[str, CdcTableConfig],
) -> DocumentEvent | None:
    """The checked DocumentEvent of one source record; None for records that carry no
    change (Debezium heartbeats and tombstones). Raises BadRecord with the reason."""
    table = tables.get(origin.topic)
    if table is None:
        event: DocumentEvent | None = parse_document_record(key, value, origin, timestamp_ms)
    else:
        event = parse_cdc_record(key, value, origin, timestamp_ms, table)
    return None if event is None else check_event(event)
