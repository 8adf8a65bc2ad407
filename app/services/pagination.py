"""Keyset pagination over an owner's rows, newest first.

Ids start with their creation time in milliseconds (:func:`app.db.base.new_id`), so ordering by id
is ordering by creation, and "the rows after this one" is ``id < last id``: stable while rows are
added, and as fast on page 1000 as on page 1. The cursor is the last id of the previous page, so
its format is the ids' (``ID_PATTERN``, checked by the route) and every value of that format is a
valid cursor: the rows created before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

__all__ = ["Page", "paginate"]

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None


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
        query = query.where(id_column < cursor)
    rows: list[Any] = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, getattr(rows[-1], id_column.key) if more else None)
