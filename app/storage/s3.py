"""Artifact storage in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...).

``CARTL_STORAGE_URL=s3://bucket/prefix``; endpoint, credentials and region come from the standard
``AWS_*`` variables (``AWS_ENDPOINT_URL`` for MinIO or any endpoint that is not AWS's,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE``), read by boto3.

boto3 over obstore and s3fs: it is AWS's own client, reads every ``AWS_*`` variable and config
file the way the rest of a team's tooling does, exposes the multipart calls an upload streamed
from a request body needs (create, part, complete, abort) and presigns URLs; its errors carry
S3's error codes, which is what turns a fault into a clear problem. obstore is faster for bulk
transfers but has no part-by-part upload of a stream the caller feeds; s3fs adds an async layer
(aiobotocore) pinned to exact botocore versions.

Atomicity: an object appears whole at its key when its single PUT or its multipart upload's
completion succeeds, never before; a failed upload is aborted, so no part of it stays behind.
Objects this backend writes from a file record their sha256 in the object's metadata
(``x-amz-meta-sha256``); downloads check it against the row's (:meth:`S3Storage.info`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from app.storage.base import (
    ObjectInfo,
    Problem,
    Storage,
    StorageError,
    StoredFile,
    Tally,
    check_key,
    problem_text,
)
from cartl_core.provenance import sha256_file

__all__ = ["MIN_PART_BYTES", "S3Storage", "parse_s3_url"]

#: S3's smallest part (all but the last part of a multipart upload).
MIN_PART_BYTES = 5 * 1024**2

_T = TypeVar("_T")

#: S3 error codes, by what they say about the storage.
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "AllAccessDisabled",
    "403",
}
_UNAVAILABLE = {"ServiceUnavailable", "SlowDown", "InternalError", "503", "500"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix with a trailing ``/`` or empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"CARTL_STORAGE_URL must look like s3://bucket/prefix; got {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def classify(exc: BaseException) -> Problem | None:
    """What a botocore failure says about the storage (None: nothing; a bug or a missing key)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NO_BUCKET:
            return "no-bucket"
        if code in _DENIED:
            return "denied"
        if code in _UNAVAILABLE:
            return "unreachable"
        return None
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "denied"
    down = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
    if isinstance(exc, down):
        return "unreachable"
    return None


def _status(exc: BaseException) -> int | None:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) or None
    return None


class S3Storage(Storage):
    """A bucket (and a prefix in it) as the artifact storage.

    ``scratch``: the local folder for the copies an upload is probed from (removed with
    :meth:`release`); never the data folder. ``part_bytes``: the multipart part size, which is
    also about what an upload holds in memory. ``presign_endpoint``: the endpoint clients
    reach, when it is not the one the service uses (a MinIO that the API reaches as
    ``http://minio:9000`` and users as ``https://files.example.org``).
    """

    def __init__(
        self,
        url: str,
        *,
        scratch: Path | None = None,
        part_bytes: int = 16 * 1024**2,
        presign_endpoint: str | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = f"s3://{self.bucket}/{self.prefix}"
        self.scratch = scratch
        if scratch is not None:
            scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.part_bytes = max(MIN_PART_BYTES, part_bytes)
        self._client = _client(None)
        self._presign_client = _client(presign_endpoint) if presign_endpoint else self._client

    # ---------------------------------------------------------------- helpers

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key).as_posix()

    def _folder(self, prefix: str) -> str:
        return self.prefix + check_key(prefix).as_posix() + "/"

    def _call(self, what: str, fn: Callable[..., _T], **kw: Any) -> _T:
        """``fn(**kw)``, with a failure that says something about the storage raised as a
        :class:`StorageError` naming ``what`` was being done."""
        try:
            return fn(**kw)
        except Exception as exc:
            problem = classify(exc)
            if problem is None:
                raise
            raise StorageError(problem, f"{what} ({self.location}): {exc}") from exc

    # ---------------------------------------------------------------- reads

    def info(self, key: str) -> ObjectInfo | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _status(exc) == 404:
                # A HEAD has no body to tell a missing key from a missing bucket: ask.
                self._find_bucket()
                return None
            problem = classify(exc)
            if problem is None:
                raise
            raise StorageError(problem, f"read {key} ({self.location}): {exc}") from exc
        sha = head.get("Metadata", {}).get("sha256")
        return ObjectInfo(int(head["ContentLength"]), sha)

    def _find_bucket(self) -> None:
        """Raise the :class:`StorageError` that says so if the bucket is not there."""
        try:
            self._call("find the bucket", self._client.head_bucket, Bucket=self.bucket)
        except Exception as exc:
            if _status(exc) == 404:
                raise StorageError("no-bucket", f"{self.location}: {exc}") from exc
            raise

    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> Path:
        """Download to a temporary name beside ``dest``, hashing, then rename."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                for chunk in self.read_chunks(key):
                    digest.update(chunk)
                    f.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ValueError(
                    f"{key} fails its recorded sha256 (stored {digest.hexdigest()}, recorded "
                    f"{sha256})"
                )
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def read_chunks(self, key: str, chunk_bytes: int = 1024**2) -> Iterator[bytes]:
        response = self._call(
            f"read {key}", self._client.get_object, Bucket=self.bucket, Key=self._key(key)
        )
        body = response["Body"]
        try:
            while True:
                try:
                    chunk = body.read(chunk_bytes)
                except Exception as exc:
                    problem = classify(exc) or "unreachable"
                    raise StorageError(problem, f"read {key} ({self.location}): {exc}") from exc
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def download_url(self, key: str, filename: str, expires_s: int) -> str | None:
        url: str = self._presign_client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=expires_s,
        )
        return url

    def _list(self, operation: str, entries: str, prefix: str) -> list[dict[str, Any]]:
        """Every entry of a paginated listing under the full key ``prefix``: the objects
        (``list_objects_v2``, ``Contents``) or the multipart uploads under way
        (``list_multipart_uploads``, ``Uploads``)."""
        pages = self._client.get_paginator(operation).paginate(Bucket=self.bucket, Prefix=prefix)
        return self._call(f"list {prefix}", lambda: [e for p in pages for e in p.get(entries, [])])

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        return self._list("list_objects_v2", "Contents", prefix)

    def _uploads(self, prefix: str) -> list[dict[str, Any]]:
        return self._list("list_multipart_uploads", "Uploads", prefix)

    def keys(self, prefix: str) -> list[str]:
        listed = self._objects(self._folder(prefix))
        return sorted(o["Key"][len(self.prefix) :] for o in listed)

    def folders(self, folder: str) -> dict[str, float]:
        base = self._folder(folder)
        newest: dict[str, float] = {}
        for obj in self._objects(base):
            name = obj["Key"][len(base) :].split("/", 1)[0]
            when = obj["LastModified"].timestamp()
            newest[name] = max(newest.get(name, 0.0), when)
        # A multipart upload under way is a write too: its folder is not an orphan yet.
        for upload in self._uploads(base):
            name = upload["Key"][len(base) :].split("/", 1)[0]
            newest[name] = max(newest.get(name, 0.0), time.time())
        return newest

    # ---------------------------------------------------------------- writes

    async def _acall(self, what: str, fn: Callable[..., _T], **kw: Any) -> _T:
        """:meth:`_call` in a worker thread: boto3 blocks."""
        return await anyio.to_thread.run_sync(functools.partial(self._call, what, fn, **kw))

    async def write_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, limit: int
    ) -> StoredFile:
        """Parts of ``part_bytes`` go up as they arrive (a small upload is one PUT), and the
        bytes are spooled to a local copy for the probe: memory holds about one part."""
        full, what = self._key(key), f"write {key}"
        spool_dir = Path(tempfile.mkdtemp(prefix="cartl-upload-", dir=self.scratch))
        spool = spool_dir / PurePosixPath(key).name
        tally = Tally(limit)
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        target = {"Bucket": self.bucket, "Key": full}

        async def send_part() -> None:
            nonlocal upload_id
            if upload_id is None:
                created = await self._acall(what, self._client.create_multipart_upload, **target)
                upload_id = str(created["UploadId"])
            number, body = len(parts) + 1, bytes(buffer[: self.part_bytes])
            del buffer[: self.part_bytes]
            sent = await self._acall(what, self._client.upload_part, **target,
                                     UploadId=upload_id, PartNumber=number, Body=body)  # fmt: skip
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})

        try:
            with spool.open("wb") as f:
                async for chunk in chunks:
                    tally.add(chunk)
                    f.write(chunk)
                    buffer += chunk
                    while len(buffer) >= self.part_bytes:
                        await send_part()
            if upload_id is None:
                await self._acall(what, self._client.put_object, **target, Body=bytes(buffer),
                                  Metadata={"sha256": tally.sha256})  # fmt: skip
            else:
                if buffer:
                    await send_part()
                await self._acall(what, self._client.complete_multipart_upload, **target,
                                  UploadId=upload_id, MultipartUpload={"Parts": parts})  # fmt: skip
        except BaseException:
            if upload_id is not None:
                # Shielded: a client that went away cancels this task, and the abort must still
                # run, or the parts stay in the bucket (invisible, but paid for).
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._abort, full, upload_id)
            shutil.rmtree(spool_dir, ignore_errors=True)
            raise
        return StoredFile(spool, tally.size, tally.sha256, key)

    def _abort(self, full: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)

    def release(self, stored: StoredFile) -> None:
        if stored.path.parent.name.startswith("cartl-upload-"):
            shutil.rmtree(stored.path.parent, ignore_errors=True)

    def put_file(self, key: str, src: Path, sha256: str | None = None) -> StoredFile:
        """One PUT, or a multipart upload of ``part_bytes`` parts (boto3's transfer manager,
        which aborts on failure); the sha256 goes into the object's metadata."""
        from boto3.s3.transfer import TransferConfig

        sha = sha256 or sha256_file(src)
        config = TransferConfig(
            multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes
        )
        self._call(
            f"write {key}",
            self._client.upload_file,
            Filename=str(src),
            Bucket=self.bucket,
            Key=self._key(key),
            ExtraArgs={"Metadata": {"sha256": sha}},
            Config=config,
        )
        return StoredFile(src, src.stat().st_size, sha, key)

    def delete(self, key: str) -> None:
        self._call(
            f"delete {key}", self._client.delete_object, Bucket=self.bucket, Key=self._key(key)
        )

    def delete_prefix(self, prefix: str) -> None:
        with contextlib.suppress(Exception):
            self.remove_prefix(prefix)

    def remove_prefix(self, prefix: str) -> None:
        base = self._folder(prefix)
        keys = [o["Key"] for o in self._objects(base)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            answer = self._call(
                f"delete {prefix}",
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(
                    "denied" if first.get("Code") == "AccessDenied" else "unreachable",
                    f"delete {prefix} ({self.location}): {first.get('Key')}: "
                    f"{first.get('Message')}",
                )
        for upload in self._uploads(base):
            self._abort(upload["Key"], upload["UploadId"])

    def abort_stale_uploads(self, older_than_s: float) -> int:
        """Multipart uploads begun more than ``older_than_s`` ago (a process killed in the
        middle of one): their parts are invisible but take space."""
        now = time.time()
        stale = [
            u for u in self._uploads(self.prefix) if now - u["Initiated"].timestamp() > older_than_s
        ]
        for upload in stale:
            self._abort(upload["Key"], upload["UploadId"])
        return len(stale)

    def create_bucket(self) -> None:
        """Make the bucket (``cartl storage check --create-bucket``, for a fresh MinIO)."""
        region = self._client.meta.region_name
        kw: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._call("create the bucket", self._client.create_bucket, **kw)

    def check(self) -> str:
        """A probe object written and removed: the bucket is there, takes writes from these
        credentials, and answers."""
        probe = f"{self.prefix}.ready-{os.getpid()}-{threading.get_ident()}"
        try:
            self._call("probe", self._client.put_object, Bucket=self.bucket, Key=probe, Body=b"ok")
            self._call("probe", self._client.delete_object, Bucket=self.bucket, Key=probe)
        except StorageError as exc:
            return f"{exc.problem}: {problem_text(exc.problem)}"
        except Exception as exc:
            return f"cannot be written ({type(exc).__name__})"
        return "ok"


def _client(endpoint: str | None) -> Any:
    """An S3 client from the ``AWS_*`` settings. Retries in boto3's standard mode (3 tries,
    backoff) so a blip is not an error; a short connect timeout so an endpoint that is down is
    said within seconds. Path-style addressing on a custom endpoint: MinIO and most others do
    not serve ``bucket.host`` names."""
    import boto3
    from botocore.config import Config

    custom = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path" if custom else "auto"},
        # Checksums only where S3 requires them: MinIO and older S3 clones refuse the newer
        # default trailers on some calls.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
