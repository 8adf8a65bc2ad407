"""``cartl serve``, ``cartl db upgrade``, ``cartl storage check`` and ``cartl keys ...``: the
commands run beside the service's own database and storage.

``serve`` migrates, resumes the jobs its last run's worker held, prints the first admin key and
runs the API; its worker subprocess is :mod:`app.cli.supervisor`'s. The web server, database and
service modules are imported inside the commands, not here.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from app.cli.supervisor import end_leftover_worker, lock_data_dir, start_worker, stop_worker
from cartl_core.errors import CartlError

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """``serve``, ``db upgrade`` and ``keys create|list|revoke``."""
    p = sub.add_parser(
        "serve",
        help="run the API and a worker on the embedded defaults (SQLite, local storage)",
        description="Run the REST API and, unless --no-worker, one Celery worker on the "
        "settings from CARTL_* variables (by default everything under CARTL_DATA_DIR, "
        "./cartl-data: no Redis or Postgres needed). Migrates the database first; on the "
        "first start prints an admin key.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface [default: 127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port [default: 8000]")
    p.add_argument("--no-worker", action="store_true", help="run the API only")
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off: a polling client makes thousands of lines, and writing "
        "them costs the API its latency under load)",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dsub.add_parser("upgrade", help="apply the Alembic migrations (CARTL_DATABASE_URL)")
    up.add_argument("--revision", default="head", help="target revision [default: head]")
    up.set_defaults(func=_cmd_db_upgrade)

    p = sub.add_parser(
        "storage",
        help="artifact storage",
        description="The service's artifact storage: the folder (CARTL_STORAGE_DIR) or a bucket "
        "(CARTL_STORAGE_URL, with the AWS_* settings).",
    )
    ssub = p.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    check = ssub.add_parser(
        "check",
        help="check that the artifact storage takes a write (CARTL_STORAGE_URL or the folder)",
        description="Write and remove a probe in the artifact storage; exit 1 saying what is "
        "wrong. With a bucket, --create-bucket makes it when it is missing (a fresh MinIO).",
    )
    check.add_argument("--create-bucket", action="store_true", help="make a missing bucket")
    check.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep trying an endpoint that does not answer yet for this long [default: 0]",
    )
    check.set_defaults(func=_cmd_storage_check)

    p = sub.add_parser("keys", help="API keys")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = ksub.add_parser(
        "create", help="make a key; prints the key alone (it is stored hashed, shown once)"
    )
    create.add_argument("--name", required=True, help="owner name; keys of one name share data")
    create.add_argument("--admin", action="store_true", help="mark the key as an admin key")
    create.set_defaults(func=_cmd_keys_create)
    listing = ksub.add_parser("list", help="the keys: id, owner, created, revoked (no secrets)")
    listing.set_defaults(func=_cmd_keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key by its id (from `cartl keys list`)")
    revoke.add_argument("id")
    revoke.set_defaults(func=_cmd_keys_revoke)


def _session_factory(create: bool = False) -> Any:
    """Settings and a session factory on the configured database. Only ``create`` (``cartl
    serve``) may make the embedded data folder: a ``keys`` command run in the wrong directory
    would otherwise make an empty database there and hand out keys nobody's server knows."""
    from app.db.migrate import upgrade
    from app.db.session import (
        DamagedDatabaseError,
        check_integrity,
        make_engine,
        make_sessionmaker,
    )
    from app.settings import get_settings

    settings = get_settings()
    embedded = settings.database_url is None
    if embedded and not create and not (settings.data_dir / "cartl.sqlite").is_file():
        raise SystemExit(
            f"cartl: error: no CARTL database in {settings.data_dir.resolve()} (the data folder, "
            "CARTL_DATA_DIR): run this where `cartl serve` runs, or set CARTL_DATA_DIR or "
            "CARTL_DATABASE_URL to the server's"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        check_integrity(engine)  # before migrating: a damaged file is not touched
    except DamagedDatabaseError as exc:
        engine.dispose()
        raise SystemExit(f"cartl: error: {exc}") from None
    upgrade(settings.resolved_database_url)
    return settings, make_sessionmaker(engine)


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from app.db.migrate import upgrade
    from app.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, args.revision)
    print(f"database at revision {args.revision}", file=sys.stderr)
    return 0


def _cmd_storage_check(args: argparse.Namespace) -> int:
    import time

    from app.settings import get_settings
    from app.storage import open_storage
    from app.storage.s3 import S3Storage

    storage = open_storage(get_settings())
    deadline = time.monotonic() + args.wait
    while True:
        verdict = storage.check()
        if verdict.startswith("unreachable") and time.monotonic() < deadline:
            time.sleep(1.0)
            continue
        if verdict.startswith("no-bucket") and args.create_bucket:
            assert isinstance(storage, S3Storage)
            storage.create_bucket()
            print(f"created the bucket {storage.bucket}", file=sys.stderr)
            verdict = storage.check()
        break
    if verdict != "ok":
        raise SystemExit(f"cartl: error: the artifact storage {storage.location}: {verdict}")
    print(f"artifact storage {storage.location}: ok", file=sys.stderr)
    return 0


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from app.db.session import transaction
    from app.services.auth import create_key

    if not args.name.strip():
        raise CartlError("--name must not be empty: it names the owner of what the key creates")
    _, factory = _session_factory()
    with transaction(factory) as session:
        key = create_key(session, args.name, admin=args.admin)
    print(key)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from app.db.models import ApiKey

    _, factory = _session_factory()
    with factory() as session:
        for key in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            admin = " admin" if key.admin else ""
            print(f"{key.id}  {key.name:<20} {key.created_at:%Y-%m-%d %H:%M}  {state}{admin}")
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from app.db.session import transaction
    from app.errors import NotFoundError
    from app.services.auth import revoke_key

    _, factory = _session_factory()
    try:
        with transaction(factory) as session:
            revoke_key(session, args.id)
    except NotFoundError as exc:
        raise CartlError(f"{exc}; `cartl keys list` shows the ids") from None
    print(f"revoked {args.id}", file=sys.stderr)
    return 0


def _first_key(factory: Any) -> str | None:
    """On a database without keys, make the admin key (shown once)."""
    from sqlalchemy import func, select

    from app.db.models import ApiKey
    from app.db.session import transaction
    from app.services.auth import create_key

    with transaction(factory) as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        return create_key(session, "admin", admin=True)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.services.recovery import requeue_dead_local
    from app.settings import apply_log_level

    settings, factory = _session_factory(create=True)
    apply_log_level(settings)
    lock = lock_data_dir(settings.data_dir)  # held until this process ends
    # A worker an earlier server left running would run jobs beside the new one's.
    leftover = end_leftover_worker(settings.data_dir)
    if leftover is not None:
        print(f"ended the worker (process {leftover}) a previous `cartl serve` left", flush=True)
    # Jobs its previous run's worker held: resumed now, not after their heartbeat goes stale.
    for job_id in requeue_dead_local(factory):
        print(f"job {job_id}: its worker stopped with the last run; resuming it", flush=True)
    key = _first_key(factory)
    worker = None if args.no_worker else start_worker(settings)
    url = f"http://{args.host}:{args.port}"
    print(f"CARTL serving at {url} (OpenAPI docs at {url}/docs)", flush=True)
    print(f"data in {settings.data_dir.resolve()}", flush=True)
    if key is not None:
        print(f"admin API key (shown once, keep it): {key}", flush=True)
        print(f"  export CARTL_SERVER={url} CARTL_API_KEY={key}", flush=True)
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down; turning them into a normal exit
    # here lets the worker below be stopped instead of outliving the server.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=args.access_log,
            # The standard library's loop, not uvloop: under a poll flood uvloop let some
            # requests wait ~0.5 s (p99 450-530 ms against 29-47 ms, same rate; measured with
            # bench/service_speed.py).
            loop="asyncio",
            # Deadlines and limits on request heads, a cap on idle connections (the module says).
            http="app.api.protocol:HTTPProtocol",
        )
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            stop_worker(worker, settings.data_dir)
        lock.close()
    return 0


def _exit_quietly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)
