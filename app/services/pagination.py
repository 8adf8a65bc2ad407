"""Keyset pagination over an owner's rows, newest first.

Ids start with their creation time in milliseconds (:func:`app.db.base.new_id`), so ordering by id
is ordering by creation, and "the rows after this one" is ``id < last id``: stable while rows are
added, and as fast on page 1000 as on page 1. The cursor is opaque to clients (base64 of the last
id); a cursor that does not decode is a 422 on ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import UnprocessableError
from app.services.ids import is_id

__all__ = ["Page", "decode_cursor", "encode_cursor", "paginate"]

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None


def encode_cursor(last_id: str) -> str:
    raw = json.dumps({"after": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        after = value["after"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise UnprocessableError.one(
            "cursor", "not a cursor from this API; pass next_cursor from the previous page"
        ) from None
    if not isinstance(after, str) or not is_id(after):
        raise UnprocessableError.one("cursor", "not a cursor from this API")
    return after


def paginate(
    session: Session,
    query: Select[T],
    id_column: InstrumentedAttribute[str],
    *,
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """One page of ``query`` (already filtered to the owner), newest first."""
    if cursor:
        query = query.where(id_column < decode_cursor(cursor))
    rows: list[Any] = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(getattr(rows[-1], id_column.key)) if more else None)
