"""A small client for the REST API, used by ``cartl submit`` and ``cartl jobs``."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from app.shared import FINISHED, UPLOAD_MATCHES
from cartl_core.errors import CartlError
from cartl_core.provenance import sha256_file

__all__ = ["Client", "ClientError"]


class ClientError(CartlError):
    """The server said no, or could not be reached; the message says which and why."""


class Client:
    def __init__(self, server: str, key: str | None, timeout: float = 60.0) -> None:
        if not key:
            raise ClientError("no API key: pass --key or set CARTL_API_KEY")
        self.server = server.rstrip("/")
        self.http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the server at {self.server}: {exc}") from None
        if response.is_error:
            raise ClientError(_problem(response))
        return response

    def upload(self, what: str, path: Path, **form: str | None) -> dict[str, Any]:
        """POST a checkpoint or dataset file (streamed from disk) and return its row; unless
        the owner uploaded the same bytes before (same sha256, asked first) with the same name
        and fields, whose row is returned then without sending the file."""
        if not path.is_file():
            raise ClientError(f"file not found: {path}")
        earlier = self.find_upload(what, path, **form)
        if earlier is not None:
            return earlier
        data = {k: v for k, v in form.items() if v is not None}
        with path.open("rb") as f:
            out: dict[str, Any] = self._call(
                "POST", f"/v1/{what}", files={"file": (path.name, f)}, data=data
            ).json()
        return out

    def find_upload(self, what: str, path: Path, **fields: str | None) -> dict[str, Any] | None:
        """The row of an earlier upload that this one would repeat, or None: the server's
        rows with the file's sha256, checked with the rule the server itself applies (a row
        that fails it, or a server that ignores ``sha256``, means uploading)."""
        form = {k: v for k, v in fields.items() if v is not None}
        matches = UPLOAD_MATCHES.get(what)
        if matches is None:
            return None
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
        page = self._call("GET", f"/v1/{what}", params={"sha256": digest, "limit": 100}).json()
        for row in page.get("items") or []:
            if row.get("sha256") == digest and matches(row, path.name, form):
                found: dict[str, Any] = row
                return found
        return None

    def submit(
        self,
        kind: str,
        checkpoint_id: str | None,
        dataset_id: str,
        params: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "kind": kind,
            "checkpoint_id": checkpoint_id,
            "dataset_id": dataset_id,
            "params": params,
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        out: dict[str, Any] = self._call("POST", "/v1/jobs", json=body, headers=headers).json()
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}").json()
        return out

    def jobs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        out: dict[str, Any] = self._call("GET", "/v1/jobs", params=params).json()
        return out

    def cancel(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call("POST", f"/v1/jobs/{job_id}/cancel").json()
        return out

    def metrics(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}/metrics").json()
        return out

    def report(self, job_id: str) -> str:
        """The job's HTML report page."""
        return self._call("GET", f"/v1/jobs/{job_id}/report").text

    def watch(
        self,
        job_id: str,
        interval: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; returns its final state."""
        for job in self._poll(job_id, interval):
            if on_update is not None:
                on_update(job)
            if job["status"] in FINISHED:
                return job
        raise AssertionError("unreachable")

    def _poll(self, job_id: str, interval: float) -> Iterator[dict[str, Any]]:
        while True:
            yield self.job(job_id)
            time.sleep(interval)

    def download(self, job_id: str, out: Path, candidate: str | None = None) -> int:
        """Stream the job's weights (a compare's ``candidate``'s if given) to ``out``
        (atomically); returns the byte count."""
        tmp = out.with_name(out.name + ".part")
        query = {} if candidate is None else {"candidate": candidate}
        try:
            # A bucket-backed server may redirect to a presigned URL: httpx drops the API key on
            # a redirect to another origin, and the checksum is the API's answer's.
            with self.http.stream(
                "GET", f"/v1/jobs/{job_id}/weights", params=query, follow_redirects=True
            ) as response:
                if response.is_error:
                    response.read()
                    raise ClientError(_problem(response))
                expected = next(
                    (
                        r.headers["X-Checksum-SHA256"]
                        for r in (*response.history, response)
                        if "X-Checksum-SHA256" in r.headers
                    ),
                    None,
                )
                digest = hashlib.sha256()
                size = 0
                with tmp.open("wb") as f:
                    for chunk in response.iter_bytes(1024**2):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise ClientError(f"download failed: {exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if expected is not None and digest.hexdigest() != expected.lower():
            # Damaged on the way or at rest: nothing that fails its checksum is left behind.
            tmp.unlink(missing_ok=True)
            raise ClientError(
                f"download of job {job_id}'s weights failed its checksum (got sha256 "
                f"{digest.hexdigest()}, the server recorded {expected}); nothing was written"
            )
        tmp.replace(out)
        return size


def _problem(response: httpx.Response) -> str:
    """The server's problem+json as one line: status, detail and any field errors."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"
    detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
    said = (
        f"{e.get('field')}: {e.get('message')}"
        for e in body.get("errors") or []
        if isinstance(e, dict)
    )
    # The detail already says the first field's error (a 422's "k: must be ..."): once is enough.
    fields = "; ".join(text for text in said if text not in detail)
    return f"HTTP {response.status_code}: {detail}" + (f" ({fields})" if fields else "")
