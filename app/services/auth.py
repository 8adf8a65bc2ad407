"""API keys: made by ``cartl keys create``, stored as a sha256 of the secret, looked up by hash.

A key is ``cartl_`` plus 256 random bits, so a fast unsalted hash is enough: it cannot be
brute-forced, and looking it up by hash needs no per-row work. The key's ``name`` is the owner of
everything made with it.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import ApiKey
from app.errors import NotFoundError, UnauthorizedError

__all__ = [
    "KEY_PREFIX",
    "MISSING_KEY",
    "authenticate",
    "bearer_secret",
    "create_key",
    "hash_key",
    "revoke_key",
]

KEY_PREFIX = "cartl_"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(session: Session, name: str, admin: bool = False) -> str:
    """Add a key for owner ``name`` and return its secret (shown once, never stored)."""
    name = name.strip()
    if not name:
        raise ValueError("a key needs a non-empty name")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=new_id("key"), name=name, key_hash=hash_key(secret), admin=admin))
    session.flush()
    return secret


def revoke_key(session: Session, key_id: str) -> None:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"no API key with id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()


MISSING_KEY = (
    "missing API key: send the header 'Authorization: Bearer <key>' "
    "(make a key with `cartl keys create --name NAME`)"
)


def bearer_secret(authorization: str) -> str | None:
    """The key in an ``Authorization: Bearer KEY`` header value, or None."""
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return secret.strip() or None


def authenticate(session: Session, secret: str | None) -> ApiKey:
    """The live key whose secret is ``secret``; :class:`UnauthorizedError` otherwise."""
    if not secret:
        raise UnauthorizedError(MISSING_KEY)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if key is None or key.revoked_at is not None:
        raise UnauthorizedError("invalid or revoked API key")
    return key
