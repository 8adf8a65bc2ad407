"""Hostile clients against a real server (uvicorn on a port, Postgres, Redis), over raw sockets:
what an in-process test client cannot do (stall a body, lie about its length, stream chunks).
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.live import Server, live_api
from tests.services import wait_for

pytestmark = pytest.mark.timeout(180)

BODY_TIMEOUT_S = 2.0
MAX_JSON_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 16 * 1024
MAX_WAITING = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "CARTL_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "CARTL_MAX_JSON_BYTES": str(MAX_JSON_BYTES),
        "CARTL_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "CARTL_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "CARTL_MAX_WAITING_CONNECTIONS": str(MAX_WAITING),
    }
    with live_api(tmp_path_factory.mktemp("live"), **env) as srv:
        yield srv


def _raw(
    srv: Server, head: str, body: bytes = b"", timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes, float]:
    """Send ``head`` (request line and headers, no blank line) and ``body``, then read the
    answer until the server closes or has sent its Content-Length; returns status, headers,
    body and the seconds the answer took."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        status, headers, rest = _read_head(sock)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, headers, rest, time.monotonic() - t0


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """An answer's status line and headers, and whatever of its body came with them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def _post_jobs(srv: Server, *extra: str, key: bool = True) -> str:
    lines = ["POST /v1/jobs HTTP/1.1", "Host: test", *extra]
    if key:
        lines.append(f"Authorization: Bearer {srv.key}")
    return "\n".join(lines)


def _stalled_upload(srv: Server) -> socket.socket:
    """An upload that sends its headers and 1 KB of a declared 10 MB body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    head = (
        "POST /v1/checkpoints HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {srv.key}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {10 * 1024**2}\r\n\r\n"
    )
    part = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="m.safetensors"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    sock.sendall(head.encode() + part + b"\0" * 1024)
    return sock


def test_a_flood_of_stalled_uploads_locks_nobody_out(server: Server) -> None:
    """15 stalled uploads from one key: 4 (CARTL_MAX_UPLOADS_PER_KEY) are let in and cut off
    after the body timeout, the rest are told to come back; nobody else waits for any of it."""
    socks = [_stalled_upload(server) for _ in range(15)]
    try:
        time.sleep(0.5)  # every upload has reached the server and holds what it holds
        other = {"Authorization": f"Bearer {server.other_key}"}
        t0 = time.monotonic()
        for _ in range(10):
            r = httpx.get(f"{server.url}/v1/jobs", headers=other, timeout=10)
            assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 5
        # The same key's own reads are not blocked either: uploads hold no database connection.
        mine = httpx.get(
            f"{server.url}/v1/checkpoints",
            headers={"Authorization": f"Bearer {server.key}"},
            timeout=10,
        )
        assert mine.status_code == 200, mine.text
        answers = [_read_head(sock)[:2] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    statuses = sorted(status for status, _ in answers)
    assert statuses == [408] * 4 + [429] * 11, statuses
    assert all(h.get("retry-after") == "5" for status, h in answers if status == 429)
    # Once the stalled ones are gone, the key may upload again (a 4xx about the file, not 429).
    r = httpx.post(
        f"{server.url}/v1/checkpoints",
        headers={"Authorization": f"Bearer {server.key}"},
        files={"file": ("m.safetensors", b"not a checkpoint")},
        timeout=60,
    )
    assert r.status_code == 422, r.text


def test_a_stalled_json_body_is_cut_off(server: Server) -> None:
    head = _post_jobs(server, "Content-Type: application/json", "Content-Length: 5000")
    status, _, body, took = _raw(server, head, b'{"kind": "au')
    assert status == 408
    assert "stalled" in json.loads(body)["detail"]
    assert BODY_TIMEOUT_S <= took < BODY_TIMEOUT_S + 10


def test_an_oversized_body_is_413_from_its_length_alone(server: Server) -> None:
    head = _post_jobs(server, "Content-Type: application/json", f"Content-Length: {10**9}")
    status, _, body, took = _raw(server, head)  # nothing of the gigabyte is sent
    assert status == 413
    assert "CARTL_MAX_JSON_BYTES" in json.loads(body)["detail"]
    assert took < 5


def test_an_oversized_chunked_body_is_413_once_it_passes_the_limit(server: Server) -> None:
    head = _post_jobs(server, "Content-Type: application/json", "Transfer-Encoding: chunked")
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    status, _, answer, _ = _raw(server, head, body)
    assert status == 413
    assert json.loads(answer)["status"] == 413


def test_the_key_comes_before_the_body(server: Server) -> None:
    bad = b'{"kind": '
    length = f"Content-Length: {len(bad)}"
    no_key = _post_jobs(server, "Content-Type: application/json", length, key=False)
    status, headers, _, _ = _raw(server, no_key, bad)
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    wrong = no_key + "\nAuthorization: Bearer cartl_not_a_key"
    assert _raw(server, wrong, bad)[0] == 401
    assert _raw(server, _post_jobs(server, "Content-Type: application/json", length), bad)[0] == 422


def test_a_body_that_is_not_json_is_415(server: Server) -> None:
    text = b"kind=audit"
    head = _post_jobs(server, "Content-Type: text/plain", f"Content-Length: {len(text)}")
    status, _, body, _ = _raw(server, head, text)
    assert status == 415
    assert "application/json" in json.loads(body)["detail"]
    wrong_key = _post_jobs(server, "Content-Type: text/plain", f"Content-Length: {len(text)}",
                           key=False) + "\nAuthorization: Bearer cartl_not_a_key"  # fmt: skip
    assert _raw(server, wrong_key, text)[0] == 401


def test_a_poll_survives_the_database_dropping_every_connection(server: Server) -> None:
    """What a Postgres restart does to the API's pooled connections: the status read (which
    does not ping before use) retries once on a fresh connection instead of failing."""
    import sqlalchemy as sa

    from app.db.base import new_id
    from app.db.models import Job
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(server.database_url)
    try:
        job_id = new_id("job")
        with make_sessionmaker(engine)() as s, s.begin():
            s.add(Job(id=job_id, owner="alice", kind="audit", status="queued", params={},
                      progress={}, history=[]))  # fmt: skip
        url = f"{server.url}/v1/jobs/{job_id}"
        before = [httpx.get(url, headers=server.headers()) for _ in range(20)]
        assert {r.status_code for r in before} == {200}
        with engine.begin() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert killed >= 1
        after = [httpx.get(url, headers=server.headers()) for _ in range(20)]
        assert [r.status_code for r in after] == [200] * 20, after[0].text
        assert after[0].json() == before[0].json()
    finally:
        engine.dispose()


# Request heads that never finish (slowloris): what uvicorn alone holds open for ever.
PARTIAL_HEAD = b"GET /v1/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bear"


def _connect(srv: Server, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    if first:
        sock.sendall(first)
    return sock


def _until_closed(sock: socket.socket, t0: float) -> tuple[bytes, float]:
    """What the server sent before it closed ``sock``, and when (seconds after ``t0``)."""
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - t0


def _is_closed(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    try:
        return bool(readable) and sock.recv(4096, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def _open_fds(srv: Server) -> int:
    return len(os.listdir(f"/proc/{srv.pid}/fd"))


def test_connections_that_never_finish_their_headers_are_closed(server: Server) -> None:
    t0 = time.monotonic()
    silent = [_connect(server) for _ in range(10)]
    partial = [_connect(server, PARTIAL_HEAD) for _ in range(20)]
    try:
        for _ in range(5):  # everyone else is served meanwhile
            r = httpx.get(f"{server.url}/v1/jobs", headers=server.headers(), timeout=10)
            assert r.status_code == 200, r.text
        answers = [_until_closed(sock, t0) for sock in silent + partial]
    finally:
        for sock in silent + partial:
            sock.close()
    closed_at = [t for _, t in answers]
    assert min(closed_at) >= HEADER_TIMEOUT_S - 0.05
    assert max(closed_at) < HEADER_TIMEOUT_S + 3, closed_at
    assert [data for data, _ in answers[:10]] == [b""] * 10  # nothing sent: closed quietly
    assert all(data.startswith(b"HTTP/1.1 408 ") for data, _ in answers[10:])


def test_a_head_sent_a_byte_at_a_time_is_cut_off_all_the_same(server: Server) -> None:
    sock = _connect(server, b"GET /healthz HTTP/1.1\r\n")
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < HEADER_TIMEOUT_S + 10:
            readable, _, _ = select.select([sock], [], [], 0.25)
            if readable:
                break
            sock.sendall(b"X")  # keeps resetting uvicorn's own keep-alive timer
        answer, took = _until_closed(sock, t0)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert took < HEADER_TIMEOUT_S + 2


def test_a_head_too_long_is_431_before_it_ends(server: Server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Filler: " + b"a" * MAX_HEADER_BYTES
    sock = _connect(server, head)
    try:
        answer, took = _until_closed(sock, time.monotonic())
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert took < 2


def test_a_flood_of_idle_connections_holds_a_bounded_number(server: Server) -> None:
    """Three times CARTL_MAX_WAITING_CONNECTIONS unfinished heads: the server keeps the newest
    ones, closing the rest at once, so its descriptors stay bounded; a newcomer still gets in."""
    before = _open_fds(server)
    socks = [_connect(server, PARTIAL_HEAD) for _ in range(3 * MAX_WAITING)]
    try:
        time.sleep(0.5)  # every one accepted
        held = [sock for sock in socks if not _is_closed(sock)]
        assert len(held) == MAX_WAITING
        assert _open_fds(server) <= before + MAX_WAITING + 5
        r = httpx.get(f"{server.url}/healthz", timeout=5)
        assert r.status_code == 200
        # The newest are the ones held (the newcomer closed the oldest of them).
        assert held == socks[-len(held) :]
        t0 = time.monotonic()
        assert all(_until_closed(sock, t0)[1] < HEADER_TIMEOUT_S + 3 for sock in held)
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: _open_fds(server) <= before + 2, 10, "the held connections to be closed")
