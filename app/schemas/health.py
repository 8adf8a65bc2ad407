"""Health and readiness responses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Health", "Readiness"]


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
            ]
        }
    )

    status: str
    checks: dict[str, str] = Field(description="Each dependency: ok, or what failed.")
