"""``cartl submit`` and ``cartl jobs ...``: a client of a running server, through
:class:`app.client.Client`, with the server and key from ``--server``/``--key`` or
``CARTL_SERVER``/``CARTL_API_KEY``.

:func:`job_params` reads ``-p NAME=VALUE`` options with the library's option schema. The HTTP
client, progress bar and plotting are imported inside the commands, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli.options import add_upload_resize_options
from cartl_core.errors import CartlError

__all__ = ["DEFAULT_SERVER", "add_commands", "job_params"]

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("CARTL_SERVER", DEFAULT_SERVER),
        help=f"server URL [default: $CARTL_SERVER or {DEFAULT_SERVER}]",
    )
    p.add_argument(
        "--key", default=os.environ.get("CARTL_API_KEY"), help="API key [default: $CARTL_API_KEY]"
    )


def add_commands(sub: Any) -> None:
    """``submit`` and ``jobs list|get|watch|cancel|plot|report|download``."""
    p = sub.add_parser(
        "submit",
        help="upload inputs (or use uploaded ids) and start a job on a server",
        description="Start a job (pretrain, transfer, audit, compare, or another registered "
        "kind) on a running server. "
        "--checkpoint and --dataset take a local file (uploaded first) or an id from an "
        "earlier upload. Job parameters use the names of this CLI's options with underscores: "
        "-p method=cartl -p k=4 -p eps=8/255 -p audit_eps=0.01,0.03.",
    )
    p.add_argument("kind", choices=_kind_names(), help="the job to start")
    p.add_argument("--checkpoint", help="source / audited checkpoint: a file or an id")
    p.add_argument("--dataset", required=True, help="dataset: a file or an id")
    p.add_argument("--arch", help="architecture, when uploading plain weights")
    p.add_argument("--num-classes", type=int, help="classes, when uploading plain weights")
    add_upload_resize_options(p)
    p.add_argument(
        "-p",
        "--param",
        action=_ParamAction,
        default=[],
        metavar="NAME=VALUE",
        help="a job parameter, written as the option of the same name takes it (lists "
        "comma-separated); repeat for several",
    )
    p.add_argument("--idempotency-key", help="retrying with the same key returns the same job")
    p.add_argument("--watch", action="store_true", help="then follow it with a progress bar")
    _client_args(p)
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser(
        "jobs",
        help="list, follow, cancel and download jobs on a server",
        description="The jobs of this key on a running server: list them, show or follow one, "
        "cancel it, plot or report its results, download its weights.",
    )
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    q = jsub.add_parser(
        "list",
        help="your jobs, newest first",
        description="One line per job, newest first: its id, kind, status, creation time and "
        "robust accuracy ('!' marks a number with a note, such as one not fully audited).",
    )
    q.add_argument(
        "--status",
        choices=("queued", "running", "succeeded", "failed", "cancelled"),
        help="only the jobs in this state",
    )
    q.add_argument(
        "--kind",
        choices=_kind_names(),
        help="only the jobs of this kind",
    )
    q.add_argument("--limit", type=int, default=20, help="at most this many jobs [default: 20]")
    _client_args(q)
    q.set_defaults(func=_cmd_jobs_list)
    for name, helptext, description, func in (
        ("get", "a job as JSON", "Print the job as the server has it, as JSON: its status, "
         "parameters, inputs, progress, metrics and error.", _cmd_jobs_get),
        ("watch", "a live progress bar until the job ends", "Follow the job with a progress "
         "bar until it ends, then print its accuracy; a job that did not succeed is an error.",
         _cmd_jobs_watch),
        ("cancel", "stop a job (a running one stops at its next batch)", "Cancel the job: a "
         "queued one never runs, a running one stops at its next batch.", _cmd_jobs_cancel),
    ):  # fmt: skip
        q = jsub.add_parser(name, help=helptext, description=description)
        q.add_argument("id", help="the job's id, as submit and jobs list print it")
        _client_args(q)
        q.set_defaults(func=func)
    q = jsub.add_parser(
        "plot",
        help="a PNG: one job's training curves and audit, or several jobs side by side",
        description="With one job: loss and accuracy per epoch above its audit (clean and each "
        "attack of the main threat model). With several: their clean and robust accuracy side "
        "by side, e.g. a standard and a CARTL transfer of the same source. Needs matplotlib "
        "(cartl[plot]).",
    )
    q.add_argument("ids", nargs="+", metavar="ID", help="one job's id, or several")
    q.add_argument("-o", "--out", type=Path, required=True, help="output PNG")
    _client_args(q)
    q.set_defaults(func=_cmd_jobs_plot)
    q = jsub.add_parser(
        "report",
        help="the job's HTML report: charts, checks, inherited robustness, provenance",
        description="Write the job's report as one self-contained HTML page: its charts, the "
        "audit's checks, the robustness it inherited from its source, and its provenance.",
    )
    q.add_argument("id", help="the job's id")
    q.add_argument("-o", "--out", type=Path, required=True, help="output HTML file")
    _client_args(q)
    q.set_defaults(func=_cmd_jobs_report)
    q = jsub.add_parser(
        "download",
        help="the job's weights (self-describing safetensors)",
        description="Download the job's weights as a .safetensors file whose header describes "
        "the model (cartl inspect reads it); the download is checked against the server's "
        "sha256 and only kept when it matches.",
    )
    q.add_argument("id", help="the job's id")
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


def _name_value(text: str) -> tuple[str, str]:
    """``-p NAME=VALUE``'s name (dashes read as underscores) and value text."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise CartlError(f"-p takes NAME=VALUE (e.g. -p k=4); got {text!r}")
    return name, raw


class _ParamAction(argparse.Action):
    """``-p``, appending each value; one without ``=`` is refused at once, in one line (left to
    argparse, ``-p epochs 2`` reads ``2`` as an unknown argument and prints the whole usage)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            _name_value(str(values))
        except CartlError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), values])


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
        name, raw = _name_value(text)
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


def _file_or_id(ref: str | None) -> Path | str | None:
    """``--checkpoint``/``--dataset``: an existing file (a Path, to upload) or an id (a str)."""
    from app.services.ids import is_id

    if ref is None or (is_id(ref) and not Path(ref).exists()):
        return ref
    if not Path(ref).is_file():
        # Not an id either (the server would only say so): a path mistyped, or a folder.
        raise CartlError(f"no such file: {ref}")
    return Path(ref)


def _resolve(client: Any, what: str, ref: Path | str | None, **form: Any) -> str | None:
    """The id to submit: ``ref`` itself, or the upload of a file (reused if uploaded before)."""
    if not isinstance(ref, Path):
        return ref
    earlier = client.find_upload(what, ref, **form)
    if earlier is not None:
        print(f"using {earlier['id']}: {ref} was uploaded before", file=sys.stderr)
        return str(earlier["id"])
    uploaded = client.upload(what, ref, **form)
    print(f"uploaded {ref} as {uploaded['id']}", file=sys.stderr)
    return str(uploaded["id"])


def _cmd_submit(args: argparse.Namespace) -> int:
    from cartl_core.jobs import parse_params

    params = job_params(args.kind, args.param)
    # The server checks them again; checking here first means a refused job uploads nothing.
    parse_params(args.kind, params)
    checkpoint_ref, dataset_ref = _file_or_id(args.checkpoint), _file_or_id(args.dataset)
    dataset_form = _dataset_form(args, dataset_ref)
    client = _client(args)
    form = {
        "arch": args.arch,
        "num_classes": None if args.num_classes is None else str(args.num_classes),
    }
    checkpoint = _resolve(client, "checkpoints", checkpoint_ref, **form)
    dataset = _resolve(client, "datasets", dataset_ref, **dataset_form)
    assert dataset is not None
    job = client.submit(args.kind, checkpoint, dataset, params, args.idempotency_key)
    print(job["id"])
    if args.watch:
        return _watch(client, job["id"])
    return 0


def _dataset_form(args: argparse.Namespace, ref: Path | str | None) -> dict[str, str | None]:
    """The dataset upload's resize fields; refused for a dataset already uploaded (an id),
    whose resize was fixed then."""
    size, method = args.dataset_resize, args.dataset_resize_method
    if size is None and method is None:
        return {}
    if not isinstance(ref, Path):
        raise CartlError(
            "--dataset-resize applies to a dataset file being uploaded; for an uploaded dataset "
            "give the job's own: -p resize=SIDE -p resize_method=METHOD"
        )
    if size is None:
        raise CartlError("--dataset-resize-method needs --dataset-resize (a side in pixels)")
    return {"resize": str(size), "resize_method": method}


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    page = _client(args).jobs(status=args.status, kind=args.kind, limit=args.limit)
    for job in page["items"]:
        metrics = job.get("metrics") or {}
        robust = metrics.get("robust_accuracy")
        # A number that means nothing (a constant classifier) or was not audited is marked.
        mark = " !" if metrics.get("headline_notes") else ""
        interval = metrics.get("robust_interval")
        ci = f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else ""
        print(
            f"{job['id']}  {job['kind']:<9} {job['status']:<10} "
            f"{job['created_at'][:19]}  robust {'-' if robust is None else f'{robust:.4f}'}"
            f"{ci}{mark}"
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
            f"robust accuracy {metrics['robust_accuracy']:.4f}{_how(metrics)}" + _intervals(metrics)
        )
        for note in metrics.get("headline_notes", []):
            print(f"  {note}")
    return 0


def _intervals(metrics: dict[str, Any]) -> str:
    """Both accuracies' 95% Wilson intervals, where the job recorded them."""
    clean, robust = metrics.get("clean_interval"), metrics.get("robust_interval")
    if not clean or not robust:
        return ""
    return (
        f"; {metrics.get('interval') or '95% Wilson intervals'}: clean "
        f"{clean[0]:.4f}-{clean[1]:.4f}, robust {robust[0]:.4f}-{robust[1]:.4f}"
    )


def _how(metrics: dict[str, Any]) -> str:
    """Which attacks the robust accuracy comes from, as every number shown says."""
    attacks = ", ".join(metrics.get("ensemble_attacks") or [])
    if not attacks:
        return ""
    precision = metrics.get("precision")
    return f" ({metrics.get('ensemble')}: {attacks}{f'; {precision}' if precision else ''})"


def _cmd_jobs_plot(args: argparse.Namespace) -> int:
    from app.report import plot_audit, plot_comparison, plot_training

    client = _client(args)
    if len(args.ids) == 1:
        job, metrics = client.job(args.ids[0]), client.metrics(args.ids[0])
        history, audit = metrics.get("history") or [], metrics.get("audit")
        if history:
            plot_training(history, args.out, title=_label(job), audit=audit)
        elif audit:
            plot_audit(audit, args.out)
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
        plot_comparison(rows, args.out, robust_label=f"robust ({', '.join(sorted(ensembles))})")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _kind_names() -> list[str]:
    """The job kinds this client knows (its registry, whose parameters ``-p`` is checked
    against); the server says which it runs."""
    from cartl_core.kinds import job_kinds

    return [kind.name for kind in job_kinds()]


def _label(job: dict[str, Any]) -> str:
    p = job.get("params") or {}
    if job["kind"] == "transfer":
        return f"transfer {p.get('method')} k={p.get('k')}"
    if job["kind"] == "pretrain":
        return f"pretrain {p.get('arch')} lambda={p.get('fdm_lambda')}"
    if job["kind"] == "compare":
        chosen = (job.get("metrics") or {}).get("chosen") or {}
        return f"compare: {chosen.get('name', 'no choice yet')}"
    return str(job["kind"])


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
