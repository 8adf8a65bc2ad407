"""The ``cartl`` command: the library's commands plus the service's.

Library: ``pretrain``, ``transfer``, ``audit``, ``compare``, ``demo``, ``inspect``, ``models`` (see
:mod:`.library`). Service: ``serve``, ``db upgrade``, ``keys create`` (:mod:`.server`, which
runs the worker through :mod:`.supervisor`). Client of a running server: ``submit``, ``jobs
list|get|watch|cancel|plot|report|download`` (:mod:`.remote`), with the server and key from
``--server``/``--key`` or ``CARTL_SERVER``/``CARTL_API_KEY``.

This package only builds the parser and runs it; each command module imports what its commands
need when they run, so ``cartl --help`` starts without the web server, database or queue.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from app.cli import library as core_cli
from app.cli import remote, server
from app.cli.remote import job_params

__all__ = ["job_params", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cartl",
        description="Adversarially robust transfer learning (CARTL, ICML 2021): pre-train a "
        "robust source, fine-tune it without losing robustness, audit the result; locally or "
        "as a service.",
    )
    core_cli.add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core_cli.add_commands(sub)
    server.add_commands(sub)
    remote.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func.__module__ == server.__name__:
        # The service's own commands: the database, broker file and artifacts they (and the
        # worker `serve` starts) create are the service user's alone. Not the library's or the
        # client's commands: their outputs are the user's ordinary files.
        from app.storage import keep_files_private

        keep_files_private()
    return core_cli.run(args)
