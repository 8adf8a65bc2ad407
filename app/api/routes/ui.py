"""``/ui``: the web dashboard, a static page served by this app (no separate server, nothing
fetched from the internet).

The page itself needs no key: it holds no data. It asks for the API key, keeps it in the tab's
session storage and sends it as ``Authorization: Bearer`` on every ``/v1`` call, exactly as any
other client; no cookie is set, so a link from another site cannot act with it. The strict
content security policy (scripts, styles and connections only from this origin, no inline code)
is what makes a key in session storage safe from injected markup.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

__all__ = ["STATIC", "router"]

#: The page's files, shipped inside the package (so a wheel serves them too).
STATIC = Path(str(resources.files("app") / "ui"))

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}

#: Everything from this origin only, no inline script or style, no framing by other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/ui")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/ui/")
async def page_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("/")
async def root() -> RedirectResponse:
    # The server's address as a person types it: to the dashboard, not a 404. Temporary (307),
    # so a browser keeps asking should / ever answer something else.
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui/static/{name}")
async def asset(name: str) -> FileResponse:
    # A flat folder of known files: nothing outside it can be named.
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in _TYPES or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no file {name!r} in the dashboard")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=SECURITY_HEADERS)
