"""Prometheus metrics, in a registry per app (tests and several apps in one process never clash).

Job metrics are read from the database at scrape time, so every API replica reports the same
numbers and nothing is lost on restart: jobs by status, the queue depth (queued jobs), and a
histogram of the run time of finished jobs. Request counts and latencies are counted in process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job, JobStatus
from app.shared import FINISHED

__all__ = ["DURATION_BUCKETS", "JobsCollector", "ServiceMetrics"]

log = logging.getLogger(__name__)

DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 12 * 3600.0)
_FINISHED = sorted(FINISHED)


class ServiceMetrics:
    """The app's registry and its request metrics; :meth:`watch_jobs` adds the job metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cartl_http_requests",
            "HTTP requests handled, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cartl_http_request_duration_seconds",
            "Time to handle an HTTP request, by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self._jobs: JobsCollector | None = None

    def watch_jobs(self, factory: sessionmaker[Session]) -> None:
        self.unwatch_jobs()
        self._jobs = JobsCollector(factory)
        self.registry.register(self._jobs)

    def unwatch_jobs(self) -> None:
        if self._jobs is not None:
            self.registry.unregister(self._jobs)
            self._jobs = None


class JobsCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def describe(self) -> list[Metric]:
        # Describing without collecting keeps registration from querying the database.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cartl_database_up", "1 if the last scrape could read the jobs.")
        try:
            with self.factory() as session:
                counts, durations = _job_counts(session), _durations(session)
        except Exception as exc:
            log.warning("metrics: cannot read the jobs table: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("cartl_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        queued = counts.get(JobStatus.queued.value, 0)
        yield GaugeMetricFamily(
            "cartl_queue_depth", "Jobs waiting for a worker (status queued).", value=queued
        )
        yield durations


def _job_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: int(n) for status, n in rows}


def _seconds(session: Session) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return func.extract("epoch", Job.finished_at - Job.started_at)


def _durations(session: Session) -> HistogramMetricFamily:
    seconds = _seconds(session)
    le = [func.sum(case((seconds <= b, 1), else_=0)) for b in DURATION_BUCKETS]
    rows = session.execute(
        select(Job.kind, Job.status, func.count(), func.coalesce(func.sum(seconds), 0.0), *le)
        .where(
            Job.status.in_(_FINISHED),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .group_by(Job.kind, Job.status)
    ).all()
    family = HistogramMetricFamily(
        "cartl_job_duration_seconds",
        "Run time (start to finish) of finished jobs, by kind and final status.",
        labels=["kind", "status"],
    )
    for kind, status, count, total, *cumulative in rows:
        pairs = zip(DURATION_BUCKETS, cumulative, strict=True)
        buckets = [(str(b), int(n or 0)) for b, n in pairs]
        buckets.append(("+Inf", int(count)))
        family.add_metric([kind, status], buckets, float(total))
    return family
