"""``GET /``: the server's bare address leads to the dashboard rather than a 404."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_the_root_redirects_to_the_dashboard(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code in (307, 308)
    assert r.headers["location"] == "/ui"
    followed = client.get("/")
    assert followed.status_code == 200
    assert followed.text == client.get("/ui").text
    # A page for people, not part of the API.
    assert "/" not in client.get("/openapi.json").json()["paths"]
