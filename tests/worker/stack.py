"""The worker tests' stack: settings on fast timers, a real database, real worker processes,
and rows for the inputs and jobs, as the API makes them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id
from app.db.migrate import upgrade
from app.db.models import Checkpoint, DatasetRow, Job, JobStatus
from app.db.session import make_engine, make_sessionmaker
from app.settings import Settings
from app.storage import open_storage
from tests.services import (
    WorkerProcess,
    wait_for,
    write_checkpoint,
    write_npz,
)


@dataclass
class Stack:
    settings: Settings
    factory: sessionmaker[Session]
    tmp: Path
    workers: list[WorkerProcess]

    def worker(self, python_path: tuple[Path, ...] = ()) -> WorkerProcess:
        log = self.tmp / f"worker{len(self.workers)}.log"
        w = WorkerProcess(self.settings, log, python_path).start()
        self.workers.append(w)
        return w

    def job(self, job_id: str) -> Job:
        with self.factory() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def wait_status(self, job_id: str, *statuses: JobStatus, timeout: float = 120) -> Job:
        wanted = {s.value for s in statuses}
        try:
            wait_for(lambda: self.job(job_id).status in wanted, timeout, f"job {statuses}")
        except AssertionError:
            logs = "\n".join(w.log() for w in self.workers)
            raise AssertionError(
                f"job is {self.job(job_id).status}; worker logs:\n{logs}"
            ) from None
        return self.job(job_id)


def fast_settings(tmp: Path, database_url: str, broker_url: str, **kw: Any) -> Settings:
    fast = {"heartbeat_s": 0.3, "stale_after_s": 3.0, "sweep_interval_s": 0.5}
    values: dict[str, Any] = {
        "storage_dir": tmp / "artifacts",
        "queue": f"test-{new_id('q')}",
        "device": "cpu",
        "progress_interval_s": 0.2,
        **fast,
        **kw,
    }
    return Settings(data_dir=tmp, database_url=database_url, broker_url=broker_url, **values)


def make_stack(settings: Settings, tmp: Path) -> Iterator[Stack]:
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    st = Stack(settings, make_sessionmaker(engine), tmp, [])
    try:
        yield st
    finally:
        for w in st.workers:
            w.stop()
        engine.dispose()


def add_inputs(st: Stack, classes: int = 3) -> tuple[str, str]:
    """Store a source checkpoint (``classes`` outputs) and a 4-class target dataset and make
    their rows, as an upload does."""
    storage = open_storage(st.settings)
    ckpt_id, ds_id = new_id("ckpt"), new_id("ds")
    src = write_checkpoint(st.tmp / "source.safetensors", classes=classes)
    data = write_npz(st.tmp / "target.npz", n_train=1024)
    src_sha = storage.put_file(f"checkpoints/{ckpt_id}/source.safetensors", src).sha256
    data_sha = storage.put_file(f"datasets/{ds_id}/target.npz", data).sha256
    with st.factory() as s, s.begin():
        s.add(
            Checkpoint(
                id=ckpt_id, owner="alice", filename="source.safetensors", arch="small-cnn",
                num_classes=classes, num_blocks=5, input_shape=[1, 8, 8], description={},
                sha256=src_sha, size=src.stat().st_size,
                storage_key=f"checkpoints/{ckpt_id}/source.safetensors",
            )
        )  # fmt: skip
        s.add(
            DatasetRow(
                id=ds_id, owner="alice", filename="target.npz", format="npz", num_classes=4,
                class_names=["0", "1", "2", "3"], train_size=1024, test_size=128,
                input_shape=[1, 8, 8], sha256=data_sha, size=data.stat().st_size,
                storage_key=f"datasets/{ds_id}/target.npz",
            )
        )  # fmt: skip
    return ckpt_id, ds_id


#: Each job kind's small, fast parameters; a test's own override them.
_FAST = {
    "transfer": {"method": "cartl", "k": 2, "epochs": 3, "batch_size": 64, "lr": 0.05,
                 "augment": "none", "audit_steps": 5, "audit_attacks": "fast"},
    "audit": {"attacks": "fast", "steps": 2, "limit": 32, "square_queries": 20},
}  # fmt: skip


def add_job(
    st: Stack, ckpt: str, ds: str, *, owner: str = "alice", kind: str = "transfer", **params: Any
) -> str:
    """A job row as the API makes it (not sent yet)."""
    job_id = new_id("job")
    with st.factory() as s, s.begin():
        s.add(
            Job(
                id=job_id, owner=owner, kind=kind, checkpoint_id=ckpt, dataset_id=ds,
                params={**_FAST.get(kind, {}), **params},
            )
        )  # fmt: skip
    return job_id


def add_audit_job(st: Stack, ckpt: str, ds: str, owner: str, **params: Any) -> str:
    """A short audit job of ``owner`` (a few seconds, most of it the pool process's start);
    the checkpoint must have the dataset's 4 classes."""
    return add_job(st, ckpt, ds, owner=owner, kind="audit", **params)


def request_cancel(st: Stack, job_id: str) -> None:
    """What ``POST /v1/jobs/{id}/cancel`` writes."""
    with st.factory() as s, s.begin():
        row = s.get(Job, job_id)
        assert row is not None
        row.cancel_requested = True


def embedded_stack(tmp: Path, **kw: Any) -> contextlib.AbstractContextManager[Stack]:
    """The embedded defaults (SQLite, kombu's SQL transport) with ``kw`` settings."""
    db = f"sqlite:///{tmp / 'cartl.sqlite'}"
    settings = fast_settings(tmp, db, f"sqla+sqlite:///{tmp / 'broker.sqlite'}", **kw)
    return contextlib.contextmanager(make_stack)(settings, tmp)
