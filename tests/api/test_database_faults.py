"""A database that cannot take writes, for real: SQLite on a tmpfs that fills up or turns
read-only, and a Postgres database set read-only. Readiness says so, and a job whose database
fills up mid-run ends ``failed`` with a plain reason after one attempt, leaving no files behind
(mounting needs root, which CI has; elsewhere the tmpfs tests skip)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.db.base import new_id
from app.db.migrate import upgrade
from app.db.models import DatasetRow, Job, JobStatus
from app.db.session import database_problem, make_engine, make_sessionmaker
from app.services.health import check_database
from app.settings import Settings
from app.storage import LocalStorage, sha256_file
from tests.services import postgres_database, remount, tmpfs, wait_for, write_npz

pytestmark = pytest.mark.timeout(240)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; returns the filler to delete."""
    filler = disk / "filler"
    # The suppress is outermost: closing a file on a full disk raises too.
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
        while True:
            f.write(bytes(1024**2))
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as f:
        while True:
            f.write(bytes(512))
    return filler


def test_readyz_database_check_sees_read_only_and_full_sqlite(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "db", "128m") as disk:
        url = f"sqlite:///{disk / 'cartl.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        try:
            assert check_database(engine) == "ok"
            engine.dispose()  # a mount with files open for writing cannot turn read-only
            remount(disk, "ro")
            try:
                assert check_database(engine) == "cannot be written (read-only)"
            finally:
                remount(disk, "rw")
            engine.dispose()
            assert check_database(engine) == "ok"
            filler = _fill(disk)
            state = check_database(engine)
            assert state.startswith(("cannot be written (full)", "nearly full")), state
            filler.unlink()
            assert check_database(engine) == "ok"
        finally:
            engine.dispose()


def test_readyz_database_check_sees_a_read_only_postgres() -> None:
    with postgres_database() as url:
        upgrade(url)
        name = sa.make_url(url).database
        admin = make_engine(url)
        try:
            assert check_database(admin) == "ok"
            with admin.begin() as conn:
                conn.execute(
                    sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
                )
            fresh = make_engine(url)
            try:
                assert check_database(fresh) == "cannot be written (read-only)"
            finally:
                fresh.dispose()
        finally:
            admin.dispose()


def test_not_migrated_is_named() -> None:
    with postgres_database() as url:
        engine = make_engine(url)
        try:
            assert check_database(engine) == "not migrated (run cartl db upgrade)"
        finally:
            engine.dispose()


def test_what_the_databases_say_when_they_cannot_write_is_read(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "db", "1m") as disk:
        engine = sa.create_engine(f"sqlite:///{disk / 'x.sqlite'}")
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE t (x BLOB)"))
            with pytest.raises(sa.exc.OperationalError) as info:
                _insert_until_full(engine)
            assert database_problem(info.value) == "full"
        finally:
            engine.dispose()
    assert database_problem(ValueError("no")) is None


def _insert_until_full(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for _ in range(100):
            conn.execute(sa.text("INSERT INTO t VALUES (zeroblob(100000))"))


def test_a_job_whose_database_fills_up_fails_once_and_says_why(tmp_path: Path) -> None:
    """The disk under SQLite fills while a pre-training runs: the progress write fails, the job
    stops, and once space is back (within ``stale_after_s``) it is recorded ``failed`` with a
    plain reason, on its first attempt, with no state files left."""
    from worker.runner import execute

    storage_dir = tmp_path / "artifacts"
    with tmpfs(tmp_path / "db", "128m") as disk:
        url = f"sqlite:///{disk / 'cartl.sqlite'}"
        upgrade(url)
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path,
            database_url=url,
            storage_dir=storage_dir,
            device="cpu",
            heartbeat_s=0.5,
            cancel_poll_s=0.5,
            progress_interval_s=0.05,
            stale_after_s=60,
        )
        storage = LocalStorage(storage_dir)
        data = write_npz(tmp_path / "d.npz", classes=3, n_train=256, n_test=64)
        key = "datasets/d.npz"
        storage.path(key).parent.mkdir(parents=True, exist_ok=True)
        storage.path(key).write_bytes(data.read_bytes())
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        job_id = new_id("job")
        with factory() as s, s.begin():
            s.add(
                DatasetRow(
                    id=new_id("ds"), owner="o", filename="d.npz", format="npz", num_classes=3,
                    class_names=[], train_size=256, test_size=64, input_shape=[1, 8, 8],
                    sha256=sha256_file(data), size=data.stat().st_size, storage_key=key,
                )
            )  # fmt: skip
            s.flush()
            dataset_id = s.scalar(sa.select(DatasetRow.id))
            s.add(
                Job(
                    id=job_id, owner="o", kind="pretrain", status=JobStatus.queued.value,
                    dataset_id=dataset_id, progress={}, history=[],
                    params={"arch": "small-cnn", "epochs": 200, "batch_size": 32, "eps": 0.1,
                            "steps": 1, "trace_samples": 0, "no_audit": True},
                )
            )  # fmt: skip

        def status() -> tuple[str, dict[str, object]]:
            with factory() as s:
                job = s.get(Job, job_id)
                assert job is not None
                return job.status, job.progress

        outcome: list[str] = []
        runner = threading.Thread(target=lambda: outcome.append(execute(job_id, settings)))
        runner.start()
        try:
            wait_for(lambda: status()[1].get("epoch"), 120, "the job to report an epoch")
            filler = _fill(disk)
            time.sleep(3)  # the job meets the full disk and waits to record its end
            filler.unlink()
        finally:
            runner.join(120)
        assert outcome == ["failed"]
        with factory() as s:
            job = s.get(Job, job_id)
            assert job is not None
            assert (job.status, job.attempts) == ("failed", 1)
            assert job.error is not None
            assert job.error.startswith("the service's database is full"), job.error
            assert "INSERT" not in job.error
            assert "UPDATE" not in job.error
        engine.dispose()
    assert [p.name for p in storage_dir.rglob("*") if p.is_file()] == ["d.npz"]
