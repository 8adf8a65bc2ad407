"""The team deployment's edge: only the proxy faces the world, and its limits are the API's.

.ci/run checks the files' syntax with the tools themselves (``docker-compose config``, ``caddy
validate``); this checks what they say.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from app.api.uploads import _OVERHEAD
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CADDYFILE = (ROOT / "deploy" / "Caddyfile").read_text()


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _compose()["services"]
    return services


def _caddy_default(variable: str) -> str:
    """The default the Caddyfile gives ``{$VARIABLE:default}``."""
    found = re.findall(r"\{\$" + variable + r":([^}]*)\}", CADDYFILE)
    assert len(found) == 1, f"{variable} in deploy/Caddyfile: {found}"
    return str(found[0])


def test_only_the_proxy_is_published_beyond_this_machine() -> None:
    services = _services()
    for name, service in services.items():
        for port in service.get("ports", []):
            if name != "proxy":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "443:443" in services["proxy"]["ports"]
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in services["proxy"]["volumes"]
    assert "reverse_proxy api:8000" in CADDYFILE


def test_the_api_runs_the_guarded_protocol() -> None:
    command = _services()["api"]["command"]
    assert command[command.index("--http") + 1] == "app.api.protocol:HTTPProtocol"


def test_the_proxy_does_not_forward_metrics() -> None:
    assert re.search(r"^\s*respond /metrics 404$", CADDYFILE, re.MULTILINE)
    assert re.search(r"^\s*respond /metrics/\* 404$", CADDYFILE, re.MULTILINE)
    assert "CARTL_METRICS_TOKEN" in _compose()["x-cartl-env"]  # reaches the API when set


def test_the_proxy_limits_are_the_apis() -> None:
    settings = Settings(_env_file=None)
    assert float(_caddy_default("CARTL_HEADER_TIMEOUT_S")) == settings.header_timeout_s
    assert int(_caddy_default("CARTL_MAX_HEADER_BYTES")) == settings.max_header_bytes
    # The API refuses a multipart body longer than the file limit plus its framing allowance.
    assert int(_caddy_default("CARTL_PROXY_MAX_BODY_BYTES")) == (
        settings.max_upload_bytes + _OVERHEAD
    )
    # The API's per-chunk body timeout does the stall detection; no whole-body deadline cuts a
    # slow, legitimate upload at the edge.
    assert "read_body" not in re.sub(r"#.*", "", CADDYFILE)
