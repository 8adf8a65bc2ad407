"""What ids and other short identifiers may look like.

Checked before any query: a value that cannot be an id (too long, odd characters, a NUL byte
that PostgreSQL would refuse) is simply not found, instead of reaching the database as an error.
"""

from __future__ import annotations

import re

__all__ = ["ARCH_PATTERN", "ID_PATTERN", "KEY_PATTERN", "is_id"]

ID_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"
#: Idempotency keys: visible ASCII, as in a UUID or a request id.
KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
#: Architecture names: small-cnn, wrn-34-10, torchvision:resnet50.
ARCH_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"

_ID = re.compile(ID_PATTERN)


def is_id(value: str) -> bool:
    return _ID.match(value) is not None
