"""The ``cartl`` command: the library's commands plus the service's.

Library: ``pretrain``, ``transfer``, ``audit``, ``compare``, ``demo``, ``inspect``, ``models`` (see
:mod:`cartl_core.cli`). Service: ``serve``, ``db upgrade``, ``keys create``. Client of a running
server: ``submit``, ``jobs list|get|watch|cancel|plot|report|download``, with the server and key
from ``--server``/``--key`` or ``CARTL_SERVER``/``CARTL_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cartl_core import cli as core_cli
from cartl_core.errors import CartlError

__all__ = ["main"]

DEFAULT_SERVER = "http://127.0.0.1:8000"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cartl",
        description="Adversarially robust transfer learning (CARTL, ICML 2021): pre-train a "
        "robust source, fine-tune it without losing robustness, audit the result; locally or "
        "as a service.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core_cli.add_commands(sub)
    _serve_commands(sub)
    _client_commands(sub)
    return parser


# ---------------------------------------------------------------------------- server side


def _serve_commands(sub: Any) -> None:
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
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dsub.add_parser("upgrade", help="apply the Alembic migrations (CARTL_DATABASE_URL)")
    up.add_argument("--revision", default="head", help="target revision [default: head]")
    up.set_defaults(func=_cmd_db_upgrade)

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
    from app.settings import apply_log_level
    from worker.recovery import requeue_dead_local

    settings, factory = _session_factory(create=True)
    apply_log_level(settings)
    # Jobs its previous run's worker held: resumed now, not after their heartbeat goes stale.
    for job_id in requeue_dead_local(factory):
        print(f"job {job_id}: its worker stopped with the last run; resuming it", flush=True)
    key = _first_key(factory)
    worker = None if args.no_worker else _start_worker(settings)
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
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            _stop_worker(worker)
    return 0


def _exit_quietly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _start_worker(settings: Any) -> subprocess.Popen[bytes]:
    """The same ``celery worker`` a team deployment runs, on the embedded broker."""
    env = dict(os.environ)
    env.update(
        CARTL_DATA_DIR=str(settings.data_dir.resolve()),
        CARTL_DATABASE_URL=settings.resolved_database_url,
        CARTL_BROKER_URL=settings.resolved_broker_url,
        CARTL_STORAGE_DIR=str(settings.resolved_storage_dir),
    )
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
           "-Q", settings.queue, "--concurrency", "1", "--loglevel", "INFO",
           "--without-gossip", "--without-mingle"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- client side


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("CARTL_SERVER", DEFAULT_SERVER),
        help=f"server URL [default: $CARTL_SERVER or {DEFAULT_SERVER}]",
    )
    p.add_argument(
        "--key", default=os.environ.get("CARTL_API_KEY"), help="API key [default: $CARTL_API_KEY]"
    )


def _client_commands(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="upload inputs (or use uploaded ids) and start a job on a server",
        description="Start a pretrain, transfer, audit or compare job on a running server. "
        "--checkpoint and --dataset take a local file (uploaded first) or an id from an "
        "earlier upload. Job parameters use the names of this CLI's options with underscores: "
        "-p method=cartl -p k=4 -p eps=8/255 -p audit_eps=0.01,0.03.",
    )
    p.add_argument("kind", choices=("pretrain", "transfer", "audit", "compare"))
    p.add_argument("--checkpoint", help="source / audited checkpoint: a file or an id")
    p.add_argument("--dataset", required=True, help="dataset: a file or an id")
    p.add_argument("--arch", help="architecture, when uploading plain weights")
    p.add_argument("--num-classes", type=int, help="classes, when uploading plain weights")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a job parameter, written as the option of the same name takes it (lists "
        "comma-separated); repeat for several",
    )
    p.add_argument("--idempotency-key", help="retrying with the same key returns the same job")
    p.add_argument("--watch", action="store_true", help="then follow it with a progress bar")
    _client_args(p)
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("jobs", help="list, follow, cancel and download jobs on a server")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    q = jsub.add_parser("list", help="your jobs, newest first")
    q.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    q.add_argument("--kind", choices=("pretrain", "transfer", "audit", "compare"))
    q.add_argument("--limit", type=int, default=20)
    _client_args(q)
    q.set_defaults(func=_cmd_jobs_list)
    for name, helptext, func in (
        ("get", "a job as JSON", _cmd_jobs_get),
        ("watch", "a live progress bar until the job ends", _cmd_jobs_watch),
        ("cancel", "stop a job (a running one stops at its next batch)", _cmd_jobs_cancel),
    ):
        q = jsub.add_parser(name, help=helptext)
        q.add_argument("id")
        _client_args(q)
        q.set_defaults(func=func)
    q = jsub.add_parser(
        "plot",
        help="a PNG: one job's training curves and audit, or several jobs side by side",
        description="With one job: loss and accuracy per epoch beside its audit (clean, PGD, "
        "FGSM, CW). With several: their clean and robust accuracy side by side, e.g. a "
        "standard and a CARTL transfer of the same source. Needs matplotlib (cartl[plot]).",
    )
    q.add_argument("ids", nargs="+", metavar="ID")
    q.add_argument("-o", "--out", type=Path, required=True, help="output PNG")
    _client_args(q)
    q.set_defaults(func=_cmd_jobs_plot)
    q = jsub.add_parser(
        "report",
        help="the job's HTML report: charts, checks, inherited robustness, provenance",
    )
    q.add_argument("id")
    q.add_argument("-o", "--out", type=Path, required=True, help="output HTML file")
    _client_args(q)
    q.set_defaults(func=_cmd_jobs_report)
    q = jsub.add_parser("download", help="the job's weights (self-describing safetensors)")
    q.add_argument("id")
    q.add_argument("-o", "--out", type=Path, required=True, help="output file")
    q.add_argument(
        "--candidate",
        default=None,
        metavar="NAME",
        help="a compare job: this candidate's weights instead of the chosen one's",
    )
    _client_args(q)
    q.set_defaults(func=_cmd_jobs_download)


def _client(args: argparse.Namespace) -> Any:
    from app.client import Client

    return Client(args.server, args.key)


def job_params(kind: str, texts: Sequence[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` options read as the ``cartl`` command's own options read them (the
    same schema, :mod:`cartl_core.options`): ``-p eps=8/255``, ``-p audit_eps=8/255,0.1``.

    Names may use dashes; the values become JSON values for the API.
    """
    from cartl_core.jobs import params_class
    from cartl_core.options import option_specs, parse_text

    specs = {spec.name: spec for spec in option_specs(params_class(kind))}
    params: dict[str, Any] = {}
    for text in texts:
        name, sep, raw = text.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise CartlError(f"-p {text!r}: write NAME=VALUE, e.g. -p k=4")
        spec = specs.get(name)
        if spec is None:
            raise CartlError(
                f"-p {name}: not a parameter of a {kind} job; known: {', '.join(sorted(specs))}"
            )
        try:
            value = parse_text(spec, raw)
        except ValueError as exc:
            raise CartlError(f"-p {name}: {exc}") from None
        params[name] = list(value) if isinstance(value, tuple) else value
    return params


def _resolve(client: Any, what: str, ref: str | None, **form: Any) -> str | None:
    if ref is None:
        return None
    path = Path(ref)
    if path.exists():
        uploaded = client.upload(what, path, **form)
        print(f"uploaded {path} as {uploaded['id']}", file=sys.stderr)
        return str(uploaded["id"])
    return ref


def _cmd_submit(args: argparse.Namespace) -> int:
    from cartl_core.jobs import parse_params

    params = job_params(args.kind, args.param)
    # The server checks them again; checking here first means a refused job uploads nothing.
    parse_params(args.kind, params)
    client = _client(args)
    form = {
        "arch": args.arch,
        "num_classes": None if args.num_classes is None else str(args.num_classes),
    }
    checkpoint = _resolve(client, "checkpoints", args.checkpoint, **form)
    dataset = _resolve(client, "datasets", args.dataset)
    assert dataset is not None
    job = client.submit(args.kind, checkpoint, dataset, params, args.idempotency_key)
    print(job["id"])
    if args.watch:
        return _watch(client, job["id"])
    return 0


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    page = _client(args).jobs(status=args.status, kind=args.kind, limit=args.limit)
    for job in page["items"]:
        robust = (job.get("metrics") or {}).get("robust_accuracy")
        print(
            f"{job['id']}  {job['kind']:<9} {job['status']:<10} "
            f"{job['created_at'][:19]}  robust {'-' if robust is None else f'{robust:.4f}'}"
        )
    return 0


def _cmd_jobs_get(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).job(args.id), indent=2))
    return 0


def _cmd_jobs_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.id)
    print(f"{job['id']}: {job['status']}" + (" (stopping)" if job.get("cancel_requested") else ""))
    return 0


def _cmd_jobs_watch(args: argparse.Namespace) -> int:
    return _watch(_client(args), args.id)


def _watch(client: Any, job_id: str) -> int:
    from tqdm import tqdm

    with tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}") as bar:

        def show(job: dict[str, Any]) -> None:
            p = job.get("progress") or {}
            stage = p.get("stage") or job["status"]
            epoch = f" epoch {p['epoch']}/{p['epochs']}" if p.get("epochs") else ""
            if p.get("candidates"):
                epoch = f" candidate {p['candidate']}/{p['candidates']}{epoch}"
            bar.set_description(f"{job['status']}: {stage}{epoch}")
            bar.n = round(100 * float(p.get("fraction") or 0.0), 1)
            eta = p.get("eta_s")
            bar.set_postfix_str("" if eta is None else f"ETA {eta:.0f}s", refresh=True)

        job = client.watch(job_id, on_update=show)
    if job["status"] != "succeeded":
        raise CartlError(f"job {job_id} {job['status']}: {job.get('error') or 'no error recorded'}")
    metrics = job.get("metrics") or {}
    if isinstance(metrics.get("chosen"), dict):
        print(f"chosen: {metrics['chosen'].get('reason', metrics['chosen'].get('name'))}")
    if "robust_accuracy" in metrics:
        print(
            f"clean accuracy {metrics['clean_accuracy']:.4f}, "
            f"robust accuracy {metrics['robust_accuracy']:.4f}"
        )
    return 0


def _cmd_jobs_plot(args: argparse.Namespace) -> int:
    from cartl_core import plots
    from cartl_core.audit import AuditReport
    from cartl_core.training.loop import EpochRecord

    client = _client(args)
    if len(args.ids) == 1:
        job, metrics = client.job(args.ids[0]), client.metrics(args.ids[0])
        history = [EpochRecord.from_dict(h) for h in metrics.get("history") or []]
        report = AuditReport.from_dict(metrics["audit"]) if metrics.get("audit") else None
        if history:
            plots.plot_training(history, args.out, title=_label(job), report=report)
        elif report is not None:
            plots.plot_audit(report, args.out)
        else:
            raise CartlError(f"job {job['id']} has no metrics yet ({job['status']})")
    else:
        rows = []
        ensembles: set[str] = set()
        for job_id in args.ids:
            job = client.job(job_id)
            m = job.get("metrics") or {}
            if "robust_accuracy" not in m:
                raise CartlError(f"job {job_id} has no audit to compare ({job['status']})")
            # Each job's own threat model and ensemble under its bars: jobs audited at
            # different radii are not comparable, and the chart must say so.
            threat = f"{m.get('norm') or 'linf'} eps {m['eps']:g}" if m.get("eps") else ""
            label = "\n".join(filter(None, [_label(job), job_id[-6:], threat]))
            rows.append((label, m["clean_accuracy"], m["robust_accuracy"]))
            ensembles.add(str(m.get("ensemble") or "pgd"))
        plots.plot_comparison(
            rows, args.out, robust_label=f"robust ({', '.join(sorted(ensembles))})"
        )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _label(job: dict[str, Any]) -> str:
    p = job.get("params") or {}
    if job["kind"] == "transfer":
        return f"transfer {p.get('method')} k={p.get('k')}"
    if job["kind"] == "pretrain":
        return f"pretrain {p.get('arch')} lambda={p.get('fdm_lambda')}"
    if job["kind"] == "compare":
        chosen = (job.get("metrics") or {}).get("chosen") or {}
        return f"compare: {chosen.get('name', 'no choice yet')}"
    return "audit"


def _cmd_jobs_report(args: argparse.Namespace) -> int:
    page = _client(args).report(args.id)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cmd_jobs_download(args: argparse.Namespace) -> int:
    size = _client(args).download(args.id, args.out, candidate=args.candidate)
    print(f"wrote {args.out} ({size} bytes)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return core_cli.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
