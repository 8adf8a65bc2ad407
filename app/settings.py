"""Service settings, read from ``CARTL_*`` environment variables (and a ``.env`` file).

Nothing reads the environment at import time: :func:`get_settings` builds the settings once per
process, and tests build their own :class:`Settings` and hand them in.
"""

from __future__ import annotations

import logging
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Every setting has a default that needs no server: SQLite, a local folder, an embedded
    broker in the same folder. A team deployment sets the database and broker URLs."""

    model_config = SettingsConfigDict(env_prefix="CARTL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("cartl-data"),
        description="Where the embedded defaults keep the database, broker and artifacts.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://cartl@db/cartl "
        "[default: sqlite:///DATA_DIR/cartl.sqlite]",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL, e.g. redis://redis:6379/0 "
        "[default: sqla+sqlite:///DATA_DIR/broker.sqlite, kombu's SQL transport]",
    )
    storage_dir: Path | None = Field(
        default=None,
        description="Artifact folder (uploads, weights, resumable state), shared by API and "
        "workers [default: DATA_DIR/artifacts]",
    )
    storage_url: str | None = Field(
        default=None,
        pattern=r"^s3://[^/]+(/.*)?$",
        description="An S3-compatible bucket for the artifacts instead of the folder, "
        "s3://bucket/prefix; endpoint, credentials and region from the AWS_* variables "
        "(AWS_ENDPOINT_URL for MinIO). Set, nothing of an artifact is written to DATA_DIR.",
    )
    storage_part_bytes: int = Field(
        default=16 * 1024**2,
        ge=5 * 1024**2,
        description="Multipart part size for a bucket (S3's least is 5 MiB): an upload holds "
        "about one part in memory.",
    )
    storage_downloads: Literal["proxy", "redirect"] = Field(
        default="proxy",
        description="With a bucket: 'redirect' answers a weights download with a 307 to a "
        "presigned URL (the bytes skip the API; clients must reach the bucket's endpoint), "
        "'proxy' streams them through the API.",
    )
    storage_presign_endpoint: str | None = Field(
        default=None,
        description="The bucket's endpoint as clients reach it, for presigned URLs, where it "
        "differs from AWS_ENDPOINT_URL (e.g. http://minio:9000 inside compose).",
    )
    presign_expires_s: int = Field(
        default=900, ge=60, le=7 * 24 * 3600, description="How long a presigned URL is valid."
    )
    scratch_dir: Path | None = Field(
        default=None,
        description="With a bucket: local room for a job's working copies and an upload's "
        "probe copy, removed when done [default: the system's temporary folder].",
    )
    input_cache_dir: Path | None = Field(
        default=None,
        description="With a bucket: where a worker machine keeps the inputs its jobs downloaded "
        "(datasets, checkpoints), by content, so it downloads each once [default: "
        "cartl-inputs in the scratch folder].",
    )
    input_cache_bytes: int = Field(
        default=20 * 1024**3,
        ge=0,
        description="With a bucket: the most the input cache keeps; least recently used inputs "
        "go first (0: no cache, every job downloads its inputs).",
    )
    state_sync_s: float = Field(
        default=5.0,
        gt=0,
        description="With a bucket: how often a running job's new resumable state is copied to "
        "it (a job resumes on another machine from the last copy).",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Largest accepted upload; larger gets 413."
    )
    max_extract_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="Largest total size a dataset archive may expand to (decompression bombs).",
    )
    upload_chunk_bytes: int = Field(default=1024**2, gt=0, description="Upload read size.")
    key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a valid API key is trusted without a lookup (a revoked key is "
        "refused within this time; 0 looks up every request).",
    )
    max_uploads_per_key: int = Field(
        default=4, ge=1, description="Uploads one API key may stream at once (429 beyond)."
    )
    max_json_bytes: int = Field(
        default=1024**2, gt=0, description="Largest JSON request body; larger gets 413."
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request body that sends nothing for this long is cut off (408).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must send each request's line and headers within this long "
        "of opening (or of its previous response), or is closed.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        description="A request line and headers still incomplete after this many bytes get 431.",
    )
    max_waiting_connections: int = Field(
        default=512,
        ge=1,
        description="Connections waiting for a request's headers (new or idle) held at once; a "
        "new one beyond closes the one waiting longest (bounds what idle sockets cost).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token Prometheus sends for /metrics (at least 16 characters); "
        "unset, /metrics answers no one (401).",
    )
    probe_timeout_s: float = Field(
        default=600.0, gt=0, description="Time limit for validating one upload."
    )
    queue: str = Field(default="gpu", description="Celery queue the jobs go to.")
    device: str = Field(default="auto", description="Worker device: auto, cpu, cuda, cuda:N.")
    job_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes a pre-training or transfer job runs on, data-parallel: the "
        "worker's GPUs cuda:0..N-1 (NCCL), or CPU processes (gloo); the numbers are one "
        "process's. Give the worker N GPUs.",
    )
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="How often a running job records that it is alive."
    )
    cancel_poll_s: float = Field(
        default=1.0, gt=0, description="How often a running job looks for a cancel request."
    )
    cancel_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="A job still running this long after its cancel reached it is recorded "
        "cancelled and its worker process is ended (Celery starts a fresh one); 0 never ends it.",
    )
    max_queued_per_owner: int = Field(
        default=200,
        ge=1,
        description="Jobs one owner may have waiting; a submission beyond gets 429 with "
        "Retry-After.",
    )
    max_running_per_owner: int = Field(
        default=0,
        ge=0,
        description="Jobs of one owner that run at once, however many workers are free "
        "(0: no cap). Free workers always go to the owner who has waited longest first.",
    )
    stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A running job silent this long is presumed lost and enqueued again.",
    )
    sweep_interval_s: float = Field(
        default=15.0, gt=0, description="How often lost or never-enqueued jobs are looked for."
    )
    reconcile_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="How often artifact folders with no database row (left by a crash between "
        "a file and its row) are removed, once older than an hour; 0 turns it off.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts before a job that keeps dying is marked failed."
    )
    progress_interval_s: float = Field(
        default=2.0, gt=0, description="Least time between progress writes of one job."
    )
    log_level: str = Field(default="INFO", description="Python log level.")
    run_sweeper: bool = Field(
        default=True,
        description="Run the re-enqueue sweeper inside the API process (turn off where another "
        "process runs it).",
    )
    readiness_timeout_s: float = Field(
        default=3.0, gt=0, description="Time /readyz gives the database and the broker each."
    )

    @field_validator(
        "storage_url", "storage_presign_endpoint", "scratch_dir", "input_cache_dir", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``CARTL_STORAGE_URL=`` (empty, as compose passes it to choose the folder) is unset."""
        return None if value == "" else value

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'cartl.sqlite').resolve()}"

    @cached_property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @cached_property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "artifacts").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()


#: The packages whose loggers ``CARTL_LOG_LEVEL`` sets.
LOGGERS = ("app", "worker", "cartl_core")


def apply_log_level(settings: Settings) -> None:
    """``CARTL_LOG_LEVEL`` for this process, whichever started it (``cartl serve``, uvicorn or a
    Celery worker): the project's loggers get the level, and the root logger a handler if the
    process has none yet (uvicorn configures only its own loggers)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(settings.log_level.upper())
