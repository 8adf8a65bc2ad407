"""Provenance: file hashes, the commit, and every job's outcome carrying them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.report import render_job_report
from cartl_core import create_model, save_checkpoint
from cartl_core import provenance as prov
from cartl_core.jobs import parse_params, run_job

from .test_jobs import _npz as _dataset

EPS = 8 / 255
#: An audit in a second on the CPU.
CHEAP_AUDIT = {
    "attacks": "fast",
    "apgd_steps": 2,
    "steps": 1,
    "check_samples": 8,
    "square_queries": 10,
}


def _npz(path: Path) -> Path:
    return _dataset(path, n_train=48, n_test=24)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_collect_hashes_the_files_and_records_the_run(tmp_path: Path) -> None:
    data = tmp_path / "d.bin"
    data.write_bytes(b"x" * 3_000_001)  # more than one read chunk
    folder = tmp_path / "images"
    folder.mkdir()
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    out = prov.collect(
        kind="audit",
        params={"seed": 5, "steps": 3},
        device="cpu",
        started=started,
        wall_seconds=1.23456,
        dataset_path=data,
        checkpoint_path=folder,
        attack_settings={"eps": [EPS]},
    )
    assert out["dataset"] == {"name": "d.bin", "sha256": _sha(data), "bytes": 3_000_001}
    assert out["checkpoint"] == {"name": "images", "sha256": None, "bytes": None}
    assert out["weights"] is None
    assert (out["seed"], out["device"], out["kind"]) == (5, "cpu", "audit")
    assert out["started_at"] == "2026-01-02T03:04:05+00:00"
    assert out["finished_at"] >= out["started_at"]
    assert out["wall_seconds"] == 1.235
    assert out["attack_settings"] == {"eps": [EPS]}
    assert out["cartl_version"] == prov.package_version()
    assert out["python"]
    assert out["torch"]


def test_the_commit_comes_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prov.COMMIT_ENV, "deadbeef")
    assert prov.git_commit() == "deadbeef"
    monkeypatch.delenv(prov.COMMIT_ENV)
    commit = prov.git_commit()  # this checkout's HEAD, or None outside one; never an error
    assert commit is None or len(commit.split("+")[0]) == 40


def test_source_summary_reads_a_checkpoint_header() -> None:
    description = {
        "model": {"arch": "small-cnn"},
        "training": {"method": "fdm"},
        "class_names": ["a", "b"],
        "metrics": {
            "clean_accuracy": 0.9,
            "robust_accuracy": 0.4,
            "audit": {"samples": 100, "config": {"eps": [EPS, 2 * EPS], "norm": "linf"}},
        },
    }
    summary = prov.source_summary(description)
    assert summary is not None
    assert (summary["arch"], summary["method"], summary["classes"]) == ("small-cnn", "fdm", 2)
    assert (summary["clean_accuracy"], summary["robust_accuracy"]) == (0.9, 0.4)
    assert (summary["eps"], summary["norm"], summary["samples"]) == (EPS, "linf", 100)
    assert prov.source_summary({"metrics": {}}) is None
    assert prov.source_summary(None) is None


def test_jobs_carry_their_provenance_and_a_transfer_its_source(tmp_path: Path) -> None:
    data = _npz(tmp_path / "d.npz")
    source = tmp_path / "src.safetensors"
    save_checkpoint(
        create_model("small-cnn", 3, in_channels=1, input_size=8),
        source,
        metrics={
            "clean_accuracy": 0.9,
            "robust_accuracy": 0.4,
            "audit": {"samples": 24, "config": {"eps": [EPS], "norm": "linf"}},
        },
    )
    audited = run_job(
        "audit",
        parse_params("audit", {"limit": 8, "seed": 4, **CHEAP_AUDIT}),
        dataset_path=data,
        checkpoint_path=source,
        device="cpu",
    )
    p = audited.provenance
    assert audited.metrics["provenance"] == p
    assert p["dataset"]["sha256"] == _sha(data)
    assert p["checkpoint"]["sha256"] == _sha(source)
    assert (p["seed"], p["device"], p["kind"]) == (4, "cpu", "audit")
    assert audited.audit is not None
    assert p["attack_settings"] == audited.audit["config"]
    assert p["wall_seconds"] > 0
    assert audited.source is None

    out = tmp_path / "tgt.safetensors"
    moved = run_job(
        "transfer",
        parse_params("transfer", {"k": 1, "epochs": 1, "batch_size": 16, "no_audit": True}),
        dataset_path=data,
        checkpoint_path=source,
        out_path=out,
        device="cpu",
    )
    assert moved.provenance["weights"]["sha256"] == _sha(out)
    assert moved.provenance["checkpoint"]["sha256"] == _sha(source)
    assert moved.provenance["attack_settings"] is None  # no audit
    assert moved.source is not None
    assert moved.metrics["source"] == moved.source
    assert (moved.source["clean_accuracy"], moved.source["robust_accuracy"]) == (0.9, 0.4)

    page = render_job_report(
        audit=moved.audit, history=moved.history, metrics=moved.metrics, title="transfer"
    )
    assert _sha(data) in page
    assert _sha(out) in page
    assert '<section id="inherited"' in page
