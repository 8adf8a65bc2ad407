"""`cartl jobs download` checks what it received against the server's X-Checksum-SHA256.

The server refuses to send weights that fail their recorded sha256 (tests/api/test_jobs.py);
this covers damage on the way: a real HTTP server whose bytes do not match its header.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.services import ROOT

GOOD = b"safetensors bytes as the server recorded them"


class _Weights(BaseHTTPRequestHandler):
    body = GOOD
    checksum = hashlib.sha256(GOOD).hexdigest()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("X-Checksum-SHA256", self.checksum)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Weights)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _download(server: ThreadingHTTPServer, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env["CARTL_SERVER"] = f"http://127.0.0.1:{server.server_address[1]}"
    env["CARTL_API_KEY"] = "cartl_test"
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "download", "job_1", "-o", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_download_that_matches_its_checksum_is_written(
    server: ThreadingHTTPServer, tmp_path: Path
) -> None:
    out = tmp_path / "w.safetensors"
    done = _download(server, out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == GOOD


def test_a_damaged_download_is_removed_and_fails(
    server: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Weights, "body", b"X" + GOOD[1:])
    out = tmp_path / "w.safetensors"
    done = _download(server, out)
    assert done.returncode != 0
    message = done.stderr.strip()
    assert "checksum" in message
    assert len(message.splitlines()) == 1, message
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .part
