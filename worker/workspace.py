"""Where a job's files are while it runs, and how they reach artifact storage.

``cartl_core`` reads and writes local files: the dataset, the source checkpoint, the resumable
state (``state.pt``, rewritten after each epoch), the weights, a compare's candidates. On a
local folder (an NFS export included) the job works in the folder itself. With a bucket it works
in a scratch folder of its own on this machine: the inputs are downloaded there (and checked
against their recorded sha256), what an earlier attempt on any machine left in the bucket
(``jobs/ID/...``) is brought back, and a mirror thread copies every file the job rewrites to the
bucket within ``state_sync_s``, so a job killed here resumes on another machine from its last
copied epoch. The scratch folder goes when the job ends; nothing is written to the data folder.
A folder left by a killed process goes when the next job starts on this machine, whichever job
it was (a live job's folder holds a lock its process keeps).
Inputs come through this machine's :class:`~worker.input_cache.InputCache` where one is set, so
a machine downloads a dataset or checkpoint once, not once per job and attempt.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from app.storage import Storage, StoredFile, sha256_file
from worker.input_cache import InputCache

__all__ = ["Workspace", "open_workspace"]

log = logging.getLogger(__name__)


class Workspace:
    """A job's files in place, in a local folder storage."""

    def __init__(self, storage: Storage, job_id: str) -> None:
        self.storage = storage
        self.job_id = job_id
        self.prefix = f"jobs/{job_id}"

    def local(self, key: str) -> Path:
        """Where the job reads or writes ``key``."""
        return self.storage.path(key)

    def input(self, key: str, sha256: str | None) -> Path:
        """A stored input (a dataset, a checkpoint) as a local file."""
        return self.local(key)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def sync(self) -> None:
        """Everything the job wrote so far is in storage (it is already, here)."""

    def scrub(self, text: str) -> str:
        """``text`` without where the job's files are on this server (an error a user sees)."""
        return self.storage.scrub(text)

    def publish(self, key: str) -> StoredFile:
        """A result the job wrote to ``local(key)``, stored under ``key``."""
        return self.storage.put_file(key, self.local(key))

    def forget(self, key: str) -> None:
        """``key`` is not needed any more (the resumable state of a finished job)."""
        self.storage.delete(key)

    def discard(self, prefix: str) -> None:
        """What an unfinished job leaves under ``prefix`` goes."""
        self.storage.delete_prefix(prefix)


class MirroredWorkspace(Workspace):
    """A job's files in a scratch folder, mirrored to a bucket."""

    def __init__(
        self,
        storage: Storage,
        job_id: str,
        scratch: Path | None,
        sync_s: float,
        cache: InputCache | None = None,
    ) -> None:
        super().__init__(storage, job_id)
        self.cache = cache
        if scratch is not None:
            scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        # What an earlier attempt of this job left here when its process was killed (the bucket
        # has what it copied, which is what a resume starts from), and what any other job's
        # killed attempt left, whether or not that job resumed on this machine.
        for left in Path(scratch or tempfile.gettempdir()).glob("cartl-*-*"):
            if left.name.startswith(f"cartl-{job_id}-") or _abandoned(left):
                shutil.rmtree(left, ignore_errors=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"cartl-{job_id}-", dir=scratch))
        self._held = _hold(self.root)
        self.sync_s = sync_s
        self._sent: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._mirror, name=f"mirror-{job_id}", daemon=True)

    def local(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def input(self, key: str, sha256: str | None) -> Path:
        dest = self.local(key)
        if self.cache is None or sha256 is None:
            return self.storage.fetch(key, dest, sha256)
        if self.cache.place(sha256, dest, lambda path: self.storage.fetch(key, path, sha256)):
            log.info("job %s: %s from this machine's input cache", self.job_id, key)
        return dest

    def __enter__(self) -> MirroredWorkspace:
        self._bring_back()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        shutil.rmtree(self.root, ignore_errors=True)
        os.close(self._held)

    def _bring_back(self) -> None:
        """What an earlier attempt of this job copied to the bucket, as it left it."""
        for key in self.storage.keys(self.prefix):
            dest = self.local(key)
            self.storage.fetch(key, dest)
            stat = dest.stat()
            self._sent[dest] = (stat.st_mtime_ns, stat.st_size)
        if self._sent:
            log.info("job %s: resumes from %d stored file(s)", self.job_id, len(self._sent))

    def _mirror(self) -> None:
        while not self._stop.wait(self.sync_s):
            try:
                self.sync()
            except Exception:
                # The next round tries again; a job that ends here is only less resumable.
                log.warning("job %s: copying its state to the bucket failed", self.job_id,
                            exc_info=True)  # fmt: skip

    def sync(self) -> None:
        """Copy the job's files that changed since their last copy (a file being replaced is
        read whole: the training loop renames a finished file into place)."""
        with self._lock:
            folder = self.local(self.prefix)
            if not folder.is_dir():
                return
            for path in sorted(folder.rglob("*")):
                if not path.is_file() or path.name.startswith(".tmp") or path.suffix == ".tmp":
                    continue
                with contextlib.suppress(FileNotFoundError):  # replaced or removed meanwhile
                    stat = path.stat()
                    seen = (stat.st_mtime_ns, stat.st_size)
                    if self._sent.get(path) == seen:
                        continue
                    key = path.relative_to(self.root).as_posix()
                    self.storage.put_file(key, path)
                    self._sent[path] = seen

    def scrub(self, text: str) -> str:
        return super().scrub(text).replace(str(self.root), "<job folder>")

    def publish(self, key: str) -> StoredFile:
        self.sync()  # copies it, with the rest
        path = self.local(key)
        return StoredFile(path, path.stat().st_size, sha256_file(path), key)

    def forget(self, key: str) -> None:
        with self._lock:
            self.local(key).unlink(missing_ok=True)
            self._sent.pop(self.local(key), None)
            self.storage.delete(key)

    def discard(self, prefix: str) -> None:
        with self._lock:
            shutil.rmtree(self.local(prefix), ignore_errors=True)
            self.storage.delete_prefix(prefix)


#: A live job's scratch folder holds this file locked (flock): the kernel drops the lock when
#: the process dies, however it dies, so an unlocked one marks a folder nobody will come back to.
_HELD = ".held"


def _hold(folder: Path) -> int:
    """Lock ``folder`` as a live job's for as long as the returned descriptor stays open. Locked
    under a temporary name, then renamed, so no other process can see it unlocked."""
    pending = folder / f"{_HELD}.tmp"
    fd = os.open(pending, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    pending.rename(folder / _HELD)
    return fd


def _abandoned(folder: Path) -> bool:
    """Whether ``folder`` is a job's scratch folder whose process is gone (folders of other
    programs, which have no lock file, are never touched)."""
    try:
        fd = os.open(folder / _HELD, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def open_workspace(
    storage: Storage,
    job_id: str,
    scratch: Path | None = None,
    sync_s: float = 5.0,
    cache: InputCache | None = None,
) -> Workspace:
    if storage.is_local:
        return Workspace(storage, job_id)
    return MirroredWorkspace(storage, job_id, scratch, sync_s, cache)
