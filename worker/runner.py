"""One job, from its row to its results: claim, run ``cartl_core``, record the outcome.

A message is a turn, not an order: the job a worker runs is the one
:func:`app.services.job_states.next_job` picks when the worker is free (fair across owners),
unless the message's own job lost its worker, which is then taken over. Every job has sent one
message, so every waiting job gets a turn; a message whose turn finds nothing to do ends
without a job (:mod:`worker.tasks` ends it before it costs a process).

Every status change is a transition of :mod:`app.services.job_states`: the claim is a
conditional update, so a message delivered twice (a redelivery, a sweep) runs a job once.
While the job runs, a heartbeat thread stamps ``heartbeat_at`` and picks up cancel requests, so
the library's ``should_stop`` is a flag check, not a query per step. A job that has not
stopped ``cancel_grace_s`` after its cancel reached it is ended by the heartbeat thread, which
records it cancelled and ends the process (only in a pool process, whose message Celery then
hands back and the next turn drops). The resumable state lives in artifact storage
(``jobs/ID/state.pt``): a retry after a lost worker continues from the last finished epoch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Checkpoint, DatasetRow, Job, JobStatus
from app.db.session import database_problem, make_engine, make_sessionmaker
from app.services import job_states
from app.services.jobs import candidates_prefix
from app.services.recovery import local_worker_gone
from app.settings import Settings, get_settings
from app.storage import open_storage, problem_text, storage_problem
from worker.input_cache import InputCache
from worker.workspace import Workspace, open_workspace

if TYPE_CHECKING:
    from cartl_core.data import Resize

__all__ = ["execute", "turn_has_work"]

log = logging.getLogger(__name__)

#: How many times a turn tries the next fair job when other workers take the chosen one first.
_CLAIM_TRIES = 8

#: The exit status of a pool process ended to enforce a cancel (Celery logs it).
_CANCELLED_EXIT = 75


def execute(job_id: str, settings: Settings | None = None, *, hard_stop: bool = False) -> str:
    """Take the turn of ``job_id``'s message: run the job it names if that job lost its worker,
    else the next fair job, if any. Returns what happened (for the worker's log).
    ``hard_stop``: this process may be ended to enforce a cancel (a Celery pool process)."""
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        return _Run(job_id, settings, make_sessionmaker(engine), hard_stop=hard_stop).run()
    finally:
        engine.dispose()


def turn_has_work(job_id: str, settings: Settings | None = None) -> bool:
    """Whether the turn of ``job_id``'s message would run a job: the message's job lost its
    worker, or some job waits that :func:`app.services.job_states.next_job` would pick. Asked
    by the worker's main process (:mod:`worker.tasks`), so it is a few indexed queries on a
    pooled connection. Settles the message's job if its cancel was asked while it waited; a
    turn it drops goes through :func:`app.services.job_states.drop_turn`."""
    settings = settings or get_settings()
    try:
        with _main_factory(settings.resolved_database_url)() as s, s.begin():
            job_states.settle_cancelled(s, job_id)
            holder = s.scalar(
                select(Job.worker).where(Job.id == job_id, Job.status == JobStatus.running.value)
            )
            if holder is not None and (
                local_worker_gone(holder)
                or job_id in job_states.lost_jobs(s, settings.stale_after_s, job_id=job_id)
            ):
                return True
            if job_states.next_job(s, max_running_per_owner=settings.max_running_per_owner):
                return True
            job_states.drop_turn(s)
            return False
    except SQLAlchemyError:
        # The pool process will meet the same database and record why it cannot run.
        log.warning("message for job %s: could not check for work", job_id, exc_info=True)
        return True


def input_cache(settings: Settings) -> InputCache | None:
    """This machine's cache of downloaded inputs, where the settings keep one."""
    if settings.input_cache_bytes == 0:
        return None
    root = settings.input_cache_dir or Path(
        settings.scratch_dir or tempfile.gettempdir(), "cartl-inputs"
    )
    return InputCache(root, settings.input_cache_bytes)


@functools.cache
def _main_factory(url: str) -> sessionmaker[Session]:
    """The main process's one engine. A pool process is forked from it: it must not use, or
    close, the connections it inherits (they are the parent's), so it forgets them."""
    engine = make_engine(url)
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return make_sessionmaker(engine)


class _Run:
    def __init__(
        self,
        job_id: str,
        settings: Settings,
        factory: sessionmaker[Session],
        *,
        hard_stop: bool = False,
    ) -> None:
        self.message_job = job_id
        self.job_id = job_id
        self.hard_stop = hard_stop
        self.settings = settings
        self.factory = factory
        self.storage = open_storage(settings)
        # Replaced by the job's own when it runs (a bucket's needs a scratch folder).
        self.workspace = Workspace(self.storage, job_id)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.last_progress = 0.0
        self.first_fraction: float | None = None
        self.progress: dict[str, Any] = {}
        self.trace: dict[str, float] = {}
        self.estimate: dict[str, Any] | None = None

    # ------------------------------------------------------------------ claim and finish

    def _claim(self) -> Job | None:
        with self.factory() as s, s.begin():
            job_states.settle_cancelled(s, self.message_job)
            status, holder = s.execute(
                select(Job.status, Job.worker).where(Job.id == self.message_job)
            ).one_or_none() or (None, None)
            if status == JobStatus.running.value and job_states.claim(
                s,
                self.message_job,
                self.worker,
                stale_after_s=self.settings.stale_after_s,
                # The pool child that held it on this machine is gone (killed, out of memory) and
                # Celery handed the message back: no need to wait for the heartbeat to go stale.
                dead_holder=holder if local_worker_gone(holder) else None,
            ):
                return s.get(Job, self.message_job)
            # Another worker may take the chosen job first: then the next choice.
            for _ in range(_CLAIM_TRIES):
                chosen = job_states.next_job(
                    s, max_running_per_owner=self.settings.max_running_per_owner
                )
                if chosen is None:
                    job_states.drop_turn(s)  # taken meanwhile, or only capped owners wait
                    return None
                if job_states.claim(
                    s, chosen, self.worker, stale_after_s=self.settings.stale_after_s
                ):
                    self.job_id = chosen
                    return s.get(Job, chosen)
            return None

    def _finish(self, status: JobStatus, **values: Any) -> None:
        """Record the job's end. A database that cannot take the write (disk full, read-only)
        is tried again for up to ``stale_after_s``: space freed in that time gives the job its
        true end, instead of a requeue that would spend another attempt on the same failure."""
        deadline = time.monotonic() + self.settings.stale_after_s
        while True:
            try:
                with self.factory() as s, s.begin():
                    job_states.finish(s, self.job_id, self.worker, status, **values)
                return
            except SQLAlchemyError as exc:
                problem = database_problem(exc)
                if problem is None or time.monotonic() >= deadline:
                    raise
                log.error(
                    "job %s: the database is %s; cannot record the job's end yet, retrying",
                    self.job_id,
                    problem,
                )
                time.sleep(min(2.0, self.settings.heartbeat_s))

    # ------------------------------------------------------------------ the run

    def run(self) -> str:
        job = self._claim()
        if job is None:
            log.info("message for job %s: no job waits; nothing run", self.message_job)
            return "skipped"
        log.info(
            "job %s (turn of job %s's message): attempt %d on %s",
            self.job_id,
            self.message_job,
            job.attempts,
            self.worker,
        )
        if job.attempts > self.settings.max_attempts:
            self._finish(
                JobStatus.failed,
                error=f"gave up after {job.attempts - 1} attempts: the worker running it was "
                "lost each time (killed, or out of memory?)",
            )
            return "failed"
        beat = threading.Thread(
            target=self._heartbeat, name=f"heartbeat-{self.job_id}", daemon=True
        )
        beat.start()
        try:
            return self._run(job)
        finally:
            self.done.set()
            beat.join()

    def _run(self, job: Job) -> str:
        workspace = open_workspace(
            self.storage, job.id, self.settings.scratch_dir, self.settings.state_sync_s,
            input_cache(self.settings),
        )  # fmt: skip
        self.workspace = workspace
        try:
            with workspace:
                return self._run_in(job, workspace)
        except Exception as exc:
            # The workspace itself failed: the bucket could not be read or written.
            log.exception("job %s: its files could not be set up or stored", job.id)
            self._finish(JobStatus.failed, error=self._public_error(exc, str(exc)))
            with contextlib.suppress(Exception):
                self._clean_up_files()
            return "failed"

    def _run_in(self, job: Job, workspace: Workspace) -> str:
        from cartl_core import CancelledError, CartlError
        from cartl_core.jobs import describe_error, run_job
        from cartl_core.kinds import get_kind

        state_key = f"jobs/{job.id}/state.pt"
        weights_key = f"jobs/{job.id}/weights.safetensors"
        try:
            progress = self._progress_handlers[get_kind(job.kind).progress]
            dataset, checkpoint, resize = self._inputs(job, workspace)
            outcome = run_job(
                job.kind,
                job.params,  # checked once, there
                dataset_path=dataset,
                dataset_resize=resize,
                checkpoint_path=checkpoint,
                out_path=workspace.local(weights_key),
                state_path=workspace.local(state_key),
                device=self.settings.device,
                on_progress=progress,
                on_audit_progress=self._on_audit_progress,
                should_stop=self.cancel.is_set,
                on_epoch=self._on_epoch,  # for kinds whose progress is in epochs
                # Finished candidates stay there, so a retry after a lost worker reuses them.
                extra_dir=workspace.local(candidates_prefix(job.id)),
                processes=self.settings.job_processes,
            )
        except CancelledError:
            self._finish(JobStatus.cancelled, progress={**self.progress, "stage": "cancelled"})
            self._clean_up_files()
            log.info("job %s: cancelled", job.id)
            return "cancelled"
        except Exception as exc:
            if not isinstance(exc, CartlError):
                log.exception("job %s failed", job.id)
            self._finish(JobStatus.failed, error=self._public_error(exc, describe_error(exc)))
            self._clean_up_files()
            return "failed"
        _link_candidates(job.id, outcome.metrics)
        values: dict[str, Any] = {
            "metrics": outcome.metrics,
            "audit": outcome.audit,
            "progress": {**self.progress, "stage": "done", "fraction": 1.0, "eta_s": 0.0},
        }
        if outcome.history:
            values["history"] = outcome.history
        # Stored before the row says so: no row names a file that is not there.
        workspace.sync()
        if outcome.weights is not None:
            stored = workspace.publish(weights_key)
            values.update(
                weights_key=weights_key, weights_sha256=stored.sha256, weights_size=stored.size
            )
        self._finish(JobStatus.succeeded, **values)
        workspace.forget(state_key)
        log.info("job %s: succeeded %s", job.id, outcome.metrics.get("robust_accuracy"))
        return "succeeded"

    def _public_error(self, exc: BaseException, described: str) -> str:
        """The job's error as its owner sees it: storage trouble named as such (a retry cannot
        fix it; the operator must), and never a path on this server."""
        problem = storage_problem(exc)
        if problem == "full":
            return (
                "the artifact storage is full: the job could not write its files (nothing "
                "half-written was kept); submit it again once the operator has freed space"
            )
        if problem == "unwritable":
            return (
                "the artifact storage cannot be written (read-only, or no permission); the "
                "operator must fix it before the job can run"
            )
        if problem is not None:
            return (
                f"the artifact storage {problem_text(problem)}: the job could not read or write "
                "its files; the operator must fix it, then submit the job again"
            )
        database = database_problem(exc)
        if database == "full":
            return (
                "the service's database is full: the job could not record its progress; submit "
                "it again once the operator has freed space"
            )
        if database == "unwritable":
            return (
                "the service's database cannot be written (read-only); the operator must fix it "
                "before the job can run"
            )
        if isinstance(exc, SQLAlchemyError):
            # Never the statement or its parameters: the worker's log has them.
            return f"internal error: the service's database failed ({type(exc).__name__})"
        return self.workspace.scrub(described)

    def _clean_up_files(self) -> None:
        """What an unfinished job leaves: its resumable state, its extra files (a compare's
        candidates)."""
        self.workspace.forget(f"jobs/{self.job_id}/state.pt")
        self.workspace.discard(candidates_prefix(self.job_id))

    def _inputs(self, job: Job, workspace: Workspace) -> tuple[Path, Path | None, Resize | None]:
        """The dataset's file and the resize its upload asked for; the checkpoint's file."""
        from cartl_core import ConfigError
        from cartl_core.data import Resize

        with self.factory() as s:
            dataset = s.get(DatasetRow, job.dataset_id) if job.dataset_id else None
            ckpt = s.get(Checkpoint, job.checkpoint_id) if job.checkpoint_id else None
        if dataset is None:
            raise ConfigError("the job's dataset was deleted", field="dataset_id")
        if job.checkpoint_id and ckpt is None:
            raise ConfigError("the job's checkpoint was deleted", field="checkpoint_id")
        ckpt_path = workspace.input(ckpt.storage_key, ckpt.sha256) if ckpt is not None else None
        resize = None if dataset.resize is None else Resize(**dataset.resize)
        return workspace.input(dataset.storage_key, dataset.sha256), ckpt_path, resize

    # ------------------------------------------------------------------ reporting

    def _heartbeat(self) -> None:
        """Stamp ``heartbeat_at`` every ``heartbeat_s``, and look for a cancel request every
        ``cancel_poll_s`` (one indexed read): a cancel reaches the job within about a second,
        which then stops at its next step. One that has not stopped ``cancel_grace_s`` later is
        ended here (:meth:`_enforce_cancel`)."""
        poll = min(self.settings.cancel_poll_s, self.settings.heartbeat_s)
        last_beat = time.monotonic()
        cancelled_at: float | None = None
        while not self.done.wait(poll):
            grace = self.settings.cancel_grace_s
            if cancelled_at is not None and grace and time.monotonic() - cancelled_at >= grace:
                self._enforce_cancel(grace)
            try:
                with self.factory() as s, s.begin():
                    if time.monotonic() - last_beat >= self.settings.heartbeat_s:
                        job_states.heartbeat(s, self.job_id, self.worker)
                        last_beat = time.monotonic()
                    cancel = job_states.is_cancel_requested(s, self.job_id)
                if cancel and cancelled_at is None:
                    cancelled_at = time.monotonic()
                    self.cancel.set()
            except Exception:
                # A database blip must not kill the job; the next beat tries again.
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def _enforce_cancel(self, grace: float) -> None:
        """The job did not stop at a step within ``grace`` seconds of its cancel (a step that
        long, or a loop the library does not check in): record it cancelled, remove its
        unfinished files and end this process. Only a pool process is ended (``hard_stop``):
        Celery hands its message back, and the turn that message brings finds nothing to do."""
        if not self.hard_stop or self.done.is_set():
            return
        with self.factory() as s, s.begin():
            ended = job_states.finish(
                s,
                self.job_id,
                self.worker,
                JobStatus.cancelled,
                progress={**self.progress, "stage": "cancelled"},
                error=None,
            )
        if not ended:
            return  # it ended by itself meanwhile
        log.warning(
            "job %s: still running %g s after its cancel; cancelled and its process ended",
            self.job_id,
            grace,
        )
        self._clean_up_files()
        logging.shutdown()
        os._exit(_CANCELLED_EXIT)

    def _write_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < self.settings.progress_interval_s:
            return
        self.last_progress = now
        with self.factory() as s, s.begin():
            job_states.record_progress(s, self.job_id, self.worker, dict(self.progress))

    @functools.cached_property
    def _progress_handlers(self) -> dict[str, Any]:
        """Where each style of progress event (``JobKind.progress``) goes."""
        return {
            "epochs": self._on_progress,
            "candidates": self._on_compare_progress,
            "none": None,
        }

    def _on_progress(self, event: Any) -> None:
        fraction = float(event.fraction)
        if self.first_fraction is None:
            self.first_fraction = max(0.0, fraction - 1.0 / max(1, event.epochs * event.batches))
        done = fraction - self.first_fraction
        eta = event.elapsed_s * (1.0 - fraction) / done if done > 0 else None
        self.progress = {
            "stage": event.stage,
            "epoch": event.epoch + 1,
            "epochs": event.epochs,
            "batch": event.batch,
            "batches": event.batches,
            "fraction": round(fraction, 4),
            "eta_s": None if eta is None else round(eta, 1),
            "metrics": {k: round(v, 5) for k, v in self._with_trace(event.metrics).items()},
        }
        self._write_progress(force=event.batch == event.batches)

    def _on_compare_progress(self, event: Any) -> None:
        """Which candidate of how many, what it is doing, and the estimate made at the start."""
        fraction = float(event.fraction)
        if self.first_fraction is None:
            self.first_fraction = fraction
        done = fraction - self.first_fraction
        eta = event.elapsed_s * (1.0 - fraction) / done if done > 0 else None
        if event.estimate is not None:
            self.estimate = event.estimate.to_dict()
        self.progress = {
            "stage": event.stage,
            "candidate": event.candidate + 1,
            "candidates": event.candidates,
            "candidate_name": event.name,
            "fraction": round(fraction, 4),
            "eta_s": None if eta is None else round(eta, 1),
            "estimate": self.estimate,
        }
        if event.training is not None:
            t = event.training
            self.progress.update(
                epoch=t.epoch + 1,
                epochs=t.epochs,
                batch=t.batch,
                batches=t.batches,
                metrics={k: round(v, 5) for k, v in t.metrics.items()},
            )
        if event.attack is not None:
            self.progress.update(
                attack=event.attack, audit_done=event.done, audit_total=event.total
            )
        self._write_progress(force=event.stage in ("estimate", "candidate-done"))

    def _with_trace(self, metrics: dict[str, float]) -> dict[str, float]:
        """The robust trace arrives with each epoch's last event; keep showing the latest one
        (``trace_robust_accuracy`` ...) while the next epoch runs."""
        latest = {k: v for k, v in metrics.items() if k.startswith("trace_")}
        if latest:
            self.trace = latest
        return {**self.trace, **metrics}

    def _on_audit_progress(self, event: Any) -> None:
        """An :class:`~cartl_core.audit.AuditEvent`: the attack running (k of n), its samples and
        fraction, and the audit's ETA from its measured rates; the first carries the bound."""
        if event.estimate is not None:
            self.progress = {
                **self.progress,
                "stage": "audit",
                "audit_estimate_s": round(event.estimate.seconds_max, 1),
            }
            self._write_progress(force=True)
            return
        eta = event.eta_s
        whole = None if eta is None else event.elapsed_s + eta
        self.progress = {
            **self.progress,
            "stage": "audit",
            "attack": event.attack,
            "audit_attack": event.index,
            "audit_attacks": event.attacks,
            "audit_done": event.done,
            "audit_total": event.total,
            "audit_fraction": round(event.fraction, 4),
            "fraction": round(event.elapsed_s / whole, 4) if whole else None,
            "eta_s": None if eta is None else round(eta, 1),
        }
        self._write_progress(force=event.index == event.attacks and event.fraction >= 1)

    def _on_epoch(self, record: Any, _model: Any) -> None:
        with self.factory() as s, s.begin():
            job_states.record_epoch(s, self.job_id, self.worker, record.to_dict())


def _link_candidates(job_id: str, metrics: dict[str, Any]) -> None:
    """Candidate rows name their download, not a file on this worker's disk."""
    base = f"/v1/jobs/{job_id}/weights"
    for row in metrics.get("candidates", []):
        row.pop("path", None)
        row["weights"] = f"{base}?candidate={row['name']}"
    chosen = metrics.get("chosen")
    if isinstance(chosen, dict):
        chosen.pop("path", None)
        chosen["weights"] = base
