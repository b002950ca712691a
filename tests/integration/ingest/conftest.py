"""The tests of what the ingest job does with records share one running job per store.

``live`` is package-scoped and parametrized by store, so pytest runs every test of this
package against the Milvus job, stops it, then against the pgvector job: one job start per
store for all of them, and one job running at a time. Each test sends its records in a
namespace of its own (tests/integration/live.py) and waits with ``live.settle()``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from streamrag.config import Settings
from streamrag.local.checkpoints import checkpoints_dir
from streamrag.local.stack import STORES
from tests.integration.conftest import make_pipeline
from tests.integration.live import LiveJob


@pytest.fixture(scope="package", params=STORES)
def live(
    request: pytest.FixtureRequest, stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveJob]:
    pipeline = make_pipeline(stack, request.param)
    job = LiveJob.start(pipeline, tmp_path_factory.mktemp(f"live-{request.param}"))
    try:
        yield job
        # The job never needed a restart while the tests fed it (no record may stop it).
        assert job.restarts() == 0, "the shared job restarted (see its log)"
    finally:
        job.stop()
        shutil.rmtree(checkpoints_dir(pipeline.settings, bounded=False).parent, ignore_errors=True)
