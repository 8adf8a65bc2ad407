"""The dashboard in a real browser: Debian's chromium driven by Playwright against a live
``cartl serve`` (embedded defaults, its own Celery worker running real jobs).

Screenshots go to ``$CARTL_TEST_ARTIFACTS/ui`` (default: the test's temporary folder); the two
pictures in docs/service.md (``docs/ui-job.png``, also in the README, and ``docs/ui-compare.png``)
are ``ui-job.png`` and ``ui-compare.png`` from there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import ROOT, free_port, unavailable, wait_for, write_npz

pytestmark = pytest.mark.timeout(600)

#: The browser is the system's (apt: chromium); nothing may download one.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Served:
    url: str
    key: str
    artifacts: Path
    jobs: dict[str, str]
    files: dict[str, Path]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def job(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers).json()
        return out

    def wait_done(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        wait_for(lambda: self.job(job_id)["status"] not in ("queued", "running"), timeout,
                 f"job {job_id} to finish")  # fmt: skip
        job = self.job(job_id)
        assert job["status"] == "succeeded", job
        return job


def _submit(srv: Served, kind: str, ckpt: str | None, ds: str, **params: Any) -> str:
    body = {"kind": kind, "checkpoint_id": ckpt, "dataset_id": ds, "params": params}
    r = httpx.post(f"{srv.url}/v1/jobs", json=body, headers=srv.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ui")
    artifacts = Path(os.environ.get("CARTL_TEST_ARTIFACTS") or tmp / "artifacts") / "ui"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTL_")}
    env.update(CARTL_DATA_DIR=str(tmp / "data"), CARTL_DEVICE="cpu", OMP_NUM_THREADS="1",
               CARTL_PROGRESS_INTERVAL_S="0.2")  # fmt: skip
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        found: list[str] = []

        def key_printed() -> bool:
            text = (tmp / "serve.log").read_text()
            found[:] = re.findall(r"admin API key \(shown once, keep it\): (\S+)", text)
            return bool(found)

        wait_for(key_printed, 120, "cartl serve to print its key")
        srv = Served(f"http://127.0.0.1:{port}", found[0], artifacts, {}, {})
        wait_for(lambda: _answers(f"{srv.url}/healthz"), 60, "the API")
        data = write_npz(tmp / "target.npz", classes=3, n_train=192, n_test=48)
        with data.open("rb") as f:
            ds = httpx.post(f"{srv.url}/v1/datasets", headers=srv.headers,
                            files={"file": ("target.npz", f)}).json()["id"]  # fmt: skip
        # A robust source first (a random one transfers nothing worth a screenshot), made by
        # the service itself and uploaded back as a checkpoint, as a user would.
        pre = _submit(srv, "pretrain", None, ds, arch="small-cnn", epochs=8, batch_size=32,
                      eps=0.1, steps=2, audit_attacks="fast", trace_samples=16)  # fmt: skip
        srv.wait_done(pre)
        weights = httpx.get(f"{srv.url}/v1/jobs/{pre}/weights", headers=srv.headers).content
        ckpt = httpx.post(f"{srv.url}/v1/checkpoints", headers=srv.headers,
                          files={"file": ("source.safetensors", weights)}).json()["id"]  # fmt: skip
        common = {"epochs": 4, "batch_size": 32, "audit_attacks": "fast", "trace_samples": 16,
                  "audit_eps": 0.1}  # fmt: skip
        srv.jobs.update(checkpoint=ckpt, dataset=ds)
        srv.jobs["standard"] = _submit(srv, "transfer", ckpt, ds, method="standard", **common)
        srv.jobs["cartl"] = _submit(srv, "transfer", ckpt, ds, method="cartl", **common)
        srv.jobs["compare"] = _submit(srv, "compare", ckpt, ds, eps=0.1, k=[2], epochs=3,
                                      methods=["standard", "cartl"], max_candidates=2,
                                      batch_size=32, audit_attacks="fast")  # fmt: skip
        srv.jobs["unaudited"] = _submit(srv, "compare", ckpt, ds, eps=0.1, k=[2], epochs=2,
                                        methods=["standard"], batch_size=32,
                                        no_audit=True)  # fmt: skip
        srv.files.update(source=tmp / "source.safetensors", data=data)
        srv.files["source"].write_bytes(weights)
        # Long enough to watch, then cancelled from the page.
        srv.jobs["long"] = _submit(srv, "pretrain", None, ds, arch="small-cnn", epochs=5000,
                                   batch_size=16, steps=1, eps=0.1, no_audit=True,
                                   trace_samples=0)  # fmt: skip
        yield srv
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        unavailable("Debian's chromium is not installed (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # Refused requests (the 422 the form test provokes) are logged as errors too: only
    # script errors and what the content security policy blocked count here.
    pg.on("console", lambda msg: errors.append(msg.text) if "Refused" in msg.text else None)
    yield pg
    context.close()
    assert errors == []


def _shot(page: Any, served: Served, name: str) -> Path:
    path = served.artifacts / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_the_navigation_shows_only_when_signed_in(browser: Any, served: Served) -> None:
    context = browser.new_context()  # a tab of its own: signed out, whatever ran before
    try:
        pg = context.new_page()
        pg.goto(f"{served.url}/")  # the server's address as typed: the dashboard
        assert pg.url == f"{served.url}/ui"
        nav = pg.locator("#nav")
        pg.get_by_label("API key").wait_for()
        assert not nav.is_visible()
        assert not pg.get_by_role("button", name="Sign out").is_visible()
        pg.get_by_label("API key").fill(served.key)
        pg.get_by_label("API key").press("Enter")
        pg.get_by_role("button", name="Sign out").wait_for()
        assert nav.is_visible()
        pg.get_by_role("button", name="Sign out").click()
        pg.get_by_label("API key").wait_for()
        assert not nav.is_visible()
    finally:
        context.close()


def test_a_wrong_key_is_refused_and_the_right_one_signs_in_with_enter(
    page: Any, served: Served
) -> None:
    page.goto(f"{served.url}/ui")
    page.get_by_label("API key").fill("cartl_not-a-key")
    page.get_by_label("API key").press("Enter")
    page.get_by_role("alert").filter(has_text="That key was refused").wait_for()
    page.get_by_label("API key").fill(served.key)
    page.get_by_label("API key").press("Enter")
    page.locator("#jobs-table tbody tr").first.wait_for()
    assert page.get_by_role("heading", name="Jobs").is_visible()
    assert _unlabelled(page) == []
    # The key is in this tab's session storage, never in the address bar or a cookie.
    assert served.key not in page.url
    assert page.context.cookies() == []
    stored = page.evaluate("sessionStorage.getItem('cartl-api-key')")
    assert stored == served.key
    # The filters narrow the list.
    page.get_by_label("Kind").select_option("pretrain")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#jobs-table tbody tr')]"
        ".every(r => r.children[2].textContent === 'pretrain')"
    )
    page.get_by_label("Kind").select_option("")


def test_a_finished_job_shows_its_curves_audit_and_downloads_its_weights(
    page: Any, served: Served
) -> None:
    job_id = served.jobs["cartl"]
    job = served.wait_done(job_id)
    page.goto(f"{served.url}/ui#/job/{job_id}")
    page.locator("#audit-checks").wait_for()
    assert page.locator("#curves figure").count() >= 2
    assert "succeeded" in page.locator("#job-facts").inner_text()
    checks = page.locator("#audit-checks tbody tr")
    assert checks.count() >= 3
    assert page.locator("#audit-attacks tbody tr").count() >= 2
    robust = f"{job['metrics']['robust_accuracy']:.4f}"
    assert robust in page.locator("#job-facts").inner_text()
    with page.expect_download() as info:
        page.get_by_role("button", name="Download weights").click()
    got = Path(info.value.path()).read_bytes()
    head = httpx.head(f"{served.url}/v1/jobs/{job_id}/weights", headers=served.headers)
    expected = (
        head.headers.get("X-Checksum-SHA256")
        or httpx.get(f"{served.url}/v1/jobs/{job_id}/weights", headers=served.headers).headers[
            "X-Checksum-SHA256"
        ]
    )
    assert hashlib.sha256(got).hexdigest() == expected
    page.locator("#download-done").filter(has_text="checked").wait_for()
    _shot(page, served, "ui-job.png")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download HTML report").click()
    report = Path(info.value.path()).read_text()
    assert report.lstrip().lower().startswith("<!doctype html")
    assert robust in report


def _unlabelled(page: Any) -> list[str]:
    """Form controls a screen reader could not name."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.textContent.trim())
            .map(e => e.outerHTML.slice(0, 80))"""
    )
    return found


def test_two_jobs_side_by_side(page: Any, served: Served) -> None:
    a, b = served.jobs["standard"], served.jobs["cartl"]
    served.wait_done(a)
    served.wait_done(b)
    page.goto(f"{served.url}/ui#/jobs")
    page.get_by_label(f"select {a}").check()
    page.get_by_label(f"select {b}").check()
    page.get_by_role("button", name="Compare selected").click()
    page.locator("#compare-table").wait_for()
    rows = page.locator("#compare-table tbody tr")
    assert rows.count() == 2
    text = page.locator("#compare-table").inner_text()
    assert "standard" in text
    assert "cartl" in text
    assert page.locator("#compare-chart svg").count() == 1
    # Clean and robust accuracy of each job, each with its 95% interval as a whisker.
    assert page.locator("#compare-chart svg path.whisker").count() == 4
    assert page.locator("svg.chart").count() >= 3  # the bars, loss and accuracy curves
    _shot(page, served, "ui-compare.png")


def test_a_compare_job_marks_its_choice_and_offers_every_candidate(
    page: Any, served: Served
) -> None:
    job_id = served.jobs["compare"]
    served.wait_done(job_id)
    metrics = httpx.get(f"{served.url}/v1/jobs/{job_id}/metrics", headers=served.headers).json()
    page.goto(f"{served.url}/ui#/job/{job_id}")
    table = page.locator("#candidates-table")
    table.wait_for()
    assert table.locator("tbody tr").count() == len(metrics["candidates"]) == 2
    chosen = table.locator("tbody tr", has_text="chosen")
    assert chosen.count() == 1
    assert metrics["chosen"] in chosen.inner_text()
    # Each row shows its measured cost (device-seconds of training and validation audit).
    first = metrics["candidates"][0]
    assert first["cost_seconds"] > 0
    row = table.locator("tbody tr", has_text=first["name"])
    assert f"{first['cost_seconds']:.1f} s" in row.inner_text()
    # In the chart the chosen one is named as such, not only drawn in another colour.
    labels = page.locator("#candidates svg text").all_text_contents()
    assert f"{metrics['chosen']} (chosen)" in labels
    # Each candidate's validation intervals are drawn as whiskers, one across and one up.
    assert all(c["val_clean_interval"] and c["val_robust_interval"] for c in metrics["candidates"])
    assert page.locator("#candidates svg path.whisker").count() == 2 * len(metrics["candidates"])
    other = next(c["name"] for c in metrics["candidates"] if c["name"] != metrics["chosen"])
    with page.expect_download() as info:
        table.locator("tbody tr", has_text=other).get_by_role("button", name="download").click()
    got = hashlib.sha256(Path(info.value.path()).read_bytes()).hexdigest()
    expected = httpx.get(f"{served.url}/v1/jobs/{job_id}/weights", params={"candidate": other},
                         headers=served.headers).headers["X-Checksum-SHA256"]  # fmt: skip
    assert got == expected
    _shot(page, served, "ui-compare-job.png")


def test_a_number_without_its_full_audit_says_so_beside_it(page: Any, served: Served) -> None:
    job_id = served.jobs["unaudited"]
    job = served.wait_done(job_id)
    assert job["metrics"]["audited"] is False
    note = job["metrics"]["headline_notes"][0]
    assert note.startswith("not audited")
    page.goto(f"{served.url}/ui#/job/{job_id}")
    facts = page.locator("#job-facts")
    facts.locator(".headline-notes").filter(has_text="not audited").wait_for()
    assert f"{job['metrics']['robust_accuracy']:.4f} (fast: apgd-ce, apgd-t" in facts.inner_text()
    # In the list too: the number carries a mark whose title is the note.
    page.goto(f"{served.url}/ui#/jobs")
    row = page.locator("#jobs-table tbody tr", has_text=job_id)
    row.wait_for()
    assert row.locator(f'[title="{note}"]').count() == 1


def test_a_running_job_updates_live_and_cancels(page: Any, served: Served) -> None:
    job_id = served.jobs["long"]
    wait_for(lambda: (served.job(job_id)["progress"] or {}).get("epoch"), 300,
             "the long job to report an epoch")  # fmt: skip
    page.goto(f"{served.url}/ui#/job/{job_id}")
    progress = page.locator("#job-progress .progress-text")
    progress.filter(has_text="epoch").wait_for()
    first = progress.inner_text()
    page.wait_for_function(
        "t => document.querySelector('#job-progress .progress-text').textContent !== t",
        arg=first,
        timeout=60_000,
    )
    assert progress.inner_text() != first
    page.get_by_role("button", name="Cancel job").click()
    page.locator("#job-facts").filter(has_text="cancelled").wait_for(timeout=60_000)
    assert served.job(job_id)["status"] == "cancelled"


def test_the_form_shows_a_refused_parameter_beside_its_field_then_starts_the_job(
    page: Any, served: Served
) -> None:
    page.goto(f"{served.url}/ui#/new")
    page.get_by_label("Job kind").select_option("audit")
    page.locator("#param-steps").wait_for()
    assert _unlabelled(page) == []
    # Fields and defaults come from the API's schema.
    assert page.locator("#param-steps").get_attribute("placeholder") == "20"
    # Files chosen on this machine are uploaded by the page (the same bytes as the earlier
    # uploads: the server answers with those rows and stores nothing twice).
    page.locator("#checkpoint-file").set_input_files(str(served.files["source"]))
    page.locator("#dataset-file").set_input_files(str(served.files["data"]))
    # A number's range comes from the schema too: the browser holds it before sending anything.
    steps = page.locator("#param-steps")
    assert (steps.get_attribute("type"), steps.get_attribute("min")) == ("number", "1")
    assert steps.get_attribute("max") == "10000"
    steps.fill("0")
    assert steps.evaluate("e => e.validity.rangeUnderflow")
    # What only the server can judge comes back beside its field.
    steps.fill("2")
    page.locator("#param-limit").fill("8")
    page.locator("#param-attacks").fill("magic")
    page.get_by_role("button", name="Start job").click()
    page.locator("#param-attacks-error").filter(has_text=re.compile(r"\S")).wait_for()
    assert page.url.endswith("#/new")
    _shot(page, served, "ui-form-error.png")
    page.locator("#param-attacks").fill("fast")
    page.locator("#param-eps").fill("0.05, 1/10")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(re.compile(r"#/job/job_"))
    job_id = page.url.rsplit("/", 1)[1]
    job = served.job(job_id)
    assert (job["kind"], job["params"]["steps"], job["params"]["limit"]) == ("audit", 2, 8)
    assert job["params"]["eps"] == [0.05, 0.1]
    assert (job["checkpoint_id"], job["dataset_id"]) == (
        served.jobs["checkpoint"],
        served.jobs["dataset"],
    )
    for what in ("checkpoints", "datasets"):
        rows = httpx.get(f"{served.url}/v1/{what}", headers=served.headers).json()["items"]
        assert len(rows) == 1, what
    # Keyboard only: the page can be walked with Tab to its actions.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement !== document.body")


def test_a_dataset_uploaded_from_the_form_is_resized_as_asked(page: Any, served: Served) -> None:
    page.goto(f"{served.url}/ui#/new")
    page.get_by_label("Job kind").select_option("audit")
    page.locator("#param-steps").wait_for()
    assert _unlabelled(page) == []
    page.locator("#checkpoint-id").select_option(served.jobs["checkpoint"])
    page.locator("#dataset-file").set_input_files(str(served.files["data"]))
    resize = page.get_by_label("Resize the dataset's images to a side of (px, upload only)")
    # The server's bounds, held by the browser before anything is sent.
    assert (resize.get_attribute("min"), resize.get_attribute("max")) == ("8", "1024")
    resize.fill("4")
    assert resize.evaluate("e => e.validity.rangeUnderflow")
    resize.fill("16")
    page.get_by_label("resized by").select_option("nearest")
    page.locator("#param-steps").fill("2")
    page.locator("#param-limit").fill("8")
    page.locator("#param-attacks").fill("fast")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_url(re.compile(r"#/job/job_"))
    job = served.job(page.url.rsplit("/", 1)[1])
    # The same bytes with a resize are another dataset: the 8-px upload is untouched.
    assert job["dataset_id"] != served.jobs["dataset"]
    ds = httpx.get(f"{served.url}/v1/datasets/{job['dataset_id']}", headers=served.headers)
    assert ds.status_code == 200, ds.text
    summary = ds.json()
    assert summary["resize"] == {"size": 16, "method": "nearest"}
    assert summary["input_shape"] == [1, 16, 16]


def test_the_page_is_served_with_a_strict_policy_and_no_outside_assets(served: Served) -> None:
    r = httpx.get(f"{served.url}/ui")
    assert r.status_code == 200
    policy = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    for name in re.findall(r'(?:src|href)="([^"#]+)"', r.text):
        assert name.startswith("/"), name  # nothing from another origin
        assert httpx.get(f"{served.url}{name}").status_code == 200, name
    assert httpx.get(f"{served.url}/ui/static/..%2Fapi.py").status_code == 404
    assert httpx.get(f"{served.url}/ui/static/nope.js").status_code == 404
