"""This machine's copies of the inputs jobs downloaded from a bucket, by content.

With a bucket, a job downloads its dataset and checkpoint into its scratch folder, and every
attempt and every other job of the same dataset would download it again: a team that runs a
compare, a transfer and three audits of one uploaded dataset fetches it five times per machine.
The cache keeps each downloaded input once per machine under its sha256 (the one the database
records for it) and hands a job a hard link to it (a copy where the scratch folder is on another
file system), so a job that finds its input here downloads nothing.

- A cached file is checked against its name before use (a file truncated by a full disk or
  damaged on it is downloaded again), and is read-only: a job cannot change it through its link.
- A download goes to a temporary name, is linked into the job's folder first, then renamed into
  the cache, so concurrent jobs on this machine (one per Celery pool process) never see half a
  file, and an eviction by another process cannot take a job's input from under it.
- Least recently used files go once the cache holds more than its limit (the file just added
  stays, even alone above it); temporary files a killed process left go after an hour.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.storage import sha256_file

__all__ = ["InputCache"]

log = logging.getLogger(__name__)

#: A temporary download older than this was left by a process that died.
_STALE_S = 3600.0


class InputCache:
    """Inputs by sha256 in ``root``, at most ``limit_bytes`` of them (see the module)."""

    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = root
        self.limit_bytes = limit_bytes

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def place(self, sha256: str, dest: Path, download: Callable[[Path], Path]) -> bool:
        """Put the input whose content hashes to ``sha256`` at ``dest``: from the cache where it
        is there and intact, else through ``download(path)`` (which checks the hash) and into
        the cache. Returns whether it came from the cache."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        cached = self._path(sha256)
        with contextlib.suppress(FileNotFoundError):
            _link(cached, dest)
            if sha256_file(dest) == sha256:
                # The eviction order: most recently used last.
                with contextlib.suppress(OSError):
                    os.utime(cached)
                return True
            log.warning("input cache: %s is damaged; downloading it again", cached)
            dest.unlink(missing_ok=True)
            cached.unlink(missing_ok=True)
        cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            download(tmp)
            tmp.chmod(0o444)
            _link(tmp, dest)
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
        self.evict(keep=cached)
        return False

    def evict(self, keep: Path | None = None) -> None:
        """Least recently used files out until the cache fits its limit."""
        now = time.time()
        entries: list[tuple[float, int, Path]] = []
        for path in self.root.glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if path.name.startswith(".tmp-"):
                    if now - stat.st_mtime > _STALE_S:
                        path.unlink(missing_ok=True)
                    continue
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("input cache: removed %s (least recently used)", path.name)


def _link(source: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``source`` (replacing it), or a copy across file systems."""
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, dest)
