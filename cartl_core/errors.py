"""Errors raised by cartl_core.

Every error a user can cause derives from :class:`CartlError`, and its message says what to fix,
so front ends (the CLI, the REST API) can show it as it is::

    CartlError
    ├── ConfigError            an option is out of range or inconsistent with the model or data
    ├── ArchitectureError      unknown architecture, or a model that cannot be split into blocks
    ├── DataError              a dataset that cannot be read or fails validation
    │   └── UnsafeArchiveError     an archive with path traversal, links, or that is too large
    ├── CheckpointError        a checkpoint that cannot be read or does not fit the architecture
    │   └── UnsafeCheckpointError  a pickle that would run code when loaded (refused, nothing ran)
    └── CancelledError         ``should_stop`` asked a long run to stop
"""

from __future__ import annotations

__all__ = [
    "ArchitectureError",
    "CancelledError",
    "CartlError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "UnsafeArchiveError",
    "UnsafeCheckpointError",
]


class CartlError(Exception):
    """Base of every error cartl_core raises on purpose."""


class ConfigError(CartlError, ValueError):
    """An option is out of range or does not fit the model or the data."""

    def __init__(
        self, message: str, *, field: str | None = None, more: tuple[ConfigError, ...] = ()
    ) -> None:
        super().__init__(message)
        self.field = field
        #: Other parameters found wrong in the same check (each one named), for an answer that
        #: lists them all.
        self.more = more


class ArchitectureError(CartlError, ValueError):
    """Unknown architecture name, or a model that cannot be split into blocks."""


class DataError(CartlError, ValueError):
    """A dataset that cannot be read or fails validation."""


class UnsafeArchiveError(DataError):
    """An archive holding path traversal, links, special files, or too much data."""


class CheckpointError(CartlError, ValueError):
    """A checkpoint that cannot be read or does not fit the requested architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would import or call code when loaded; it was refused before anything ran."""


class CancelledError(CartlError):
    """A long run stopped because the caller's ``should_stop`` returned true."""
