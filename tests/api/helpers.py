"""Assertions shared by the API tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

#: The test apps' CARTL_METRICS_TOKEN, and the header that sends it.
METRICS_TOKEN = "metrics-token-for-tests"
METRICS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:cartl:problem:")
    assert body["title"]
    assert body["detail"]
    assert "Traceback" not in response.text
    return body


def fields(body: dict[str, Any]) -> dict[str, str]:
    """``field -> message`` of a 422 problem."""
    return {e["field"]: e["message"] for e in body["errors"]}


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def row_count(db: sessionmaker[Session], table: str) -> int:
    with db() as session:
        return int(session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def upload(
    client: Any,
    path: str,
    headers: dict[str, str],
    filename: str,
    content: bytes,
    **data: str,
) -> httpx.Response:
    response: httpx.Response = client.post(
        path,
        headers=headers,
        files={"file": (filename, content, "application/octet-stream")},
        data=data or None,
    )
    return response
