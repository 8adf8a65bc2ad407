"""The service's tables: API keys, uploaded checkpoints and datasets, and jobs.

Every user-made row carries ``owner`` (the name of the key that made it); queries filter on it,
so another owner's row is simply not found.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, utcnow
from app.status import JobStatus

__all__ = ["ApiKey", "Checkpoint", "DatasetRow", "Job", "JobStatus"]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    # sha256 of the secret: keys are 256 random bits, so a fast hash cannot be brute-forced.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_owner_id", "owner", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    arch: Mapped[str] = mapped_column(String(100))
    num_classes: Mapped[int] = mapped_column(Integer)
    num_blocks: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[Any]]
    description: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_id", "owner", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(40))
    num_classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[Any]]
    train_size: Mapped[int] = mapped_column(Integer)
    test_size: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[Any]]
    #: ``{"size": 32, "method": "bilinear"}``: the upload asked for its images to be resized,
    #: which every load of the file then does (``input_shape`` is after it); None: as they are.
    resize: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_id", "owner", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
        # When an owner was last served: the fair dispatch's question (job_states.next_job).
        Index("ix_jobs_owner_started_at", "owner", "started_at"),
        Index("ix_jobs_owner_finished_at", "owner", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    #: A registered kind's name (:mod:`cartl_core.kinds`; at most 20 characters).
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued.value)
    checkpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL"), default=None
    )
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None
    )
    params: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    history: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    audit: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    weights_key: Mapped[str | None] = mapped_column(String(300), default=None)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    weights_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
