"""A dataset uploaded with a resize is read resized by the worker's jobs; the job's own resize
replaces it. In process (``worker.runner.execute``, as a pool process runs a turn), on SQLite:
the broker plays no part in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from app.db.models import DatasetRow, JobStatus
from app.storage import LocalStorage
from cartl_core import read_description
from tests.worker.stack import add_inputs, add_job, fast_settings, make_stack
from worker.runner import execute

pytestmark = pytest.mark.timeout(240)

_FAST: dict[str, Any] = {
    "method": "standard",
    "k": 1,
    "epochs": 1,
    "trace_samples": 0,
    "no_audit": True,
}


def test_a_job_reads_the_dataset_as_its_upload_resized_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cartl.sqlite'}"
    settings = fast_settings(tmp_path, db, f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    for stack in make_stack(settings, tmp_path):
        ckpt, ds = add_inputs(stack)  # an 8-px source, an 8-px target
        with stack.factory() as s, s.begin():
            s.execute(
                update(DatasetRow)
                .where(DatasetRow.id == ds)
                .values(resize={"size": 12, "method": "nearest"}, input_shape=[1, 12, 12])
            )
        storage = LocalStorage(settings.resolved_storage_dir)
        cases: tuple[tuple[dict[str, Any], int, int | None], ...] = (
            ({}, 12, 8),
            ({"resize": 10}, 10, 8),
            ({"resize": True}, 8, None),
        )
        for params, side, stem in cases:
            job_id = add_job(stack, ckpt, ds, **_FAST, **params)
            assert execute(job_id, settings) == "succeeded"
            job = stack.job(job_id)
            assert job.status == JobStatus.succeeded.value, job.error
            description = read_description(storage.path(str(job.weights_key)))
            assert description is not None
            assert description["input_shape"] == [1, side, side]
            assert description["model"]["stem_size"] == stem
