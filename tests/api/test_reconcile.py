"""Artifact storage reconciled with the database (app/services/recovery.py): folders with no row
go once they are old enough, rows with no file are reported, nothing young or owned is touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id
from app.db.models import Job, JobStatus
from app.services.recovery import reconcile_storage
from app.storage import LocalStorage
from tests.api.test_jobs import add_checkpoint, add_dataset


def _folder(storage: LocalStorage, key: str, age_s: float) -> Path:
    path = storage.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    then = time.time() - age_s
    for p in (path, path.parent):
        os.utime(p, (then, then))
    return path.parent


def test_old_orphans_go_owned_and_young_folders_stay_missing_files_are_named(
    db: sessionmaker[Session], tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "artifacts")
    day = 24 * 3600.0
    ckpt = add_checkpoint(db)
    _folder(storage, f"checkpoints/{ckpt}/m.safetensors", day)
    gone = add_dataset(db)  # its file was never written (or was removed by a failed delete)
    job_id = new_id("job")
    with db() as s, s.begin():
        s.add(Job(id=job_id, owner="alice", kind="audit", status=JobStatus.succeeded.value,
                  params={}, progress={}, history=[]))  # fmt: skip
    _folder(storage, f"jobs/{job_id}/weights.safetensors", day)
    orphan = _folder(storage, f"checkpoints/{new_id('ckpt')}/m.safetensors", day)
    orphan_job = _folder(storage, f"jobs/{new_id('job')}/state.pt", day)
    streaming = _folder(storage, f"datasets/{new_id('ds')}/big.npz", day)
    os.utime(streaming / "big.npz")  # an upload still being written: its file is fresh

    result = reconcile_storage(db, storage)

    assert sorted(result.removed) == sorted(
        [f"checkpoints/{orphan.name}", f"jobs/{orphan_job.name}"]
    )
    assert not orphan.exists()
    assert not orphan_job.exists()
    assert storage.path(f"checkpoints/{ckpt}/m.safetensors").exists()
    assert storage.path(f"jobs/{job_id}/weights.safetensors").exists()
    assert streaming.exists()
    assert result.missing == [gone]
    assert reconcile_storage(db, storage).removed == []  # nothing left to do


def test_the_sweeper_reconciles_at_start(db: sessionmaker[Session], tmp_path: Path) -> None:
    from app.services.recovery import Sweeper
    from app.settings import Settings
    from tests.services import wait_for

    settings = Settings(_env_file=None, data_dir=tmp_path, storage_dir=tmp_path / "artifacts",
                        sweep_interval_s=0.2)  # fmt: skip
    orphan = _folder(LocalStorage(settings.resolved_storage_dir), "datasets/ds_x/d.npz", 7200)
    sweeper = Sweeper(settings, db).start()
    try:
        wait_for(lambda: not orphan.exists(), 10, "the sweeper to remove the orphan")
    finally:
        sweeper.stop()
