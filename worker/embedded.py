"""``cartl serve``'s worker: ``python -m worker.embedded --parent-fd N CELERY-WORKER-ARGS``.

The Celery worker a team deployment runs, plus one thing: it watches the read end ``N`` of a
pipe whose write end only the server holds. When the server ends, however it ends (SIGKILL
included), the read returns end of file and this process group (the worker and its pool
process, with the job it runs) is ended at once, so no worker outlives its server and a
restarted server never finds a second one running jobs on the same device. The job resumes
from its last saved epoch when the server starts again.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--parent-fd":
        raise SystemExit("usage: python -m worker.embedded --parent-fd N [celery worker options]")
    fd = int(argv[1])
    threading.Thread(target=_watch, args=(fd,), name="cartl-parent-watch", daemon=True).start()
    from worker.celery_app import celery_app

    celery_app.worker_main(["worker", *argv[2:]])


def _watch(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    log.warning("cartl serve has ended; its worker ends too")
    os.killpg(os.getpgrp(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1:])
