"""Shapes shared by every endpoint: problem details (RFC 9457) and cursor pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["FieldErrorOut", "Page", "Problem", "UtcDateTime"]

T = TypeVar("T")


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time the service stores is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: A timestamp, always with its UTC offset (SQLite forgets it).
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


class FieldErrorOut(BaseModel):
    field: str = Field(description="Dotted path of the invalid input, e.g. `params.k` or `file`.")
    message: str = Field(description="What is wrong and what would be accepted.")


class Problem(BaseModel):
    """Every error response: `application/problem+json` (RFC 9457)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:cartl:problem:validation-error",
                    "title": "Validation Error",
                    "status": 422,
                    "detail": "params.k: must be between 1 and 5 (the model's block count)",
                    "errors": [
                        {
                            "field": "params.k",
                            "message": "must be between 1 and 5 (the model's block count)",
                        }
                    ],
                }
            ]
        },
    )

    type: str = Field(description="A URI naming the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong in this case, and what to fix.")
    errors: list[FieldErrorOut] | None = Field(
        default=None,
        description="Per-field problems (422 only): the first per field, at most 20 fields.",
    )
    errors_omitted: int | None = Field(
        default=None, description="How many more fields had problems than `errors` lists."
    )


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
