// The CARTL dashboard: a client of the same REST API as the CLI. The key lives in this tab's
// session storage and goes out as "Authorization: Bearer" on each /v1 call; nothing else is
// stored. Views: sign-in, jobs, one job, new job, comparison (hash routes, so reloads and links
// keep their place).
"use strict";

const KEY = "cartl-api-key";
const LIVE = new Set(["queued", "running"]);
const POLL_MS = 2000;
const main = document.getElementById("main");
let timers = [];
let kindsCache = null;

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function key() { return sessionStorage.getItem(KEY); }

async function call(path, opts = {}) {
  const headers = { Authorization: `Bearer ${key()}`, ...(opts.headers || {}) };
  const response = await fetch(path, { ...opts, headers });
  if (response.status === 401 && path.startsWith("/v1/")) {
    sessionStorage.removeItem(KEY);
    route();
    throw new ApiError(401, { detail: "the API key was refused; sign in again" });
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, body);
  }
  return response;
}

async function getJson(path) { return (await call(path)).json(); }

async function postJson(path, body) {
  return (await call(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  })).json();
}

// ------------------------------------------------------------------ small helpers

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}

function acc(v) { return typeof v === "number" ? v.toFixed(4) : "–"; }
// The 95% Wilson interval of an accuracy over n samples: what results from before intervals
// get (newer ones carry it, computed by cartl_core.stats the same way).
function wilson(p, n) {
  if (typeof p !== "number" || !(n > 0)) return null;
  const z = 1.959963984540054, q = Math.round(p * n) / n;
  const centre = q + (z * z) / (2 * n);
  const spread = z * Math.sqrt((q * (1 - q)) / n + (z * z) / (4 * n * n));
  const scale = 1 + (z * z) / n;
  return [Math.max(0, (centre - spread) / scale), Math.min(1, (centre + spread) / scale)];
}
function intervalOf(v, interval, n) {
  return Array.isArray(interval) && interval.length === 2 ? interval : wilson(v, n);
}
// An accuracy and its 95% interval: "0.8100 (0.772–0.844)"; the accuracy alone without one.
function accCi(v, interval, n) {
  const iv = intervalOf(v, interval, n);
  if (typeof v !== "number" || !iv) return acc(v);
  return `${acc(v)} (${iv[0].toFixed(3)}–${iv[1].toFixed(3)})`;
}
// "; 95% interval 0.772–0.844", to follow a number that already has a bracket after it.
function ciSuffix(v, interval, n) {
  const iv = intervalOf(v, interval, n);
  return typeof v === "number" && iv ? `; 95% interval ${iv[0].toFixed(3)}–${iv[1].toFixed(3)}` : "";
}
function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
function seconds(s) {
  if (typeof s !== "number") return "";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function announce(text) { document.getElementById("announce").textContent = text; }
function every(ms, fn) { timers.push(setInterval(fn, ms)); }
// Interval and timeout ids share one pool: clearTimeout ends either kind.
function stopTimers() { timers.forEach(clearTimeout); timers = []; }

function statusCell(status) {
  return h("span", { class: `status status-${status}` }, status);
}

function progressText(job) {
  const p = job.progress || {};
  const parts = [];
  if (p.stage) parts.push(p.stage);
  if (p.candidate && p.candidates) parts.push(`candidate ${p.candidate}/${p.candidates}`);
  if (p.epoch && p.epochs) parts.push(`epoch ${p.epoch}/${p.epochs}`);
  if (p.attack) {
    const which = p.audit_attack && p.audit_attacks ? ` (attack ${p.audit_attack}/${p.audit_attacks})` : "";
    const within = typeof p.audit_fraction === "number" ? `, ${Math.round(100 * p.audit_fraction)}%` : "";
    parts.push(`${p.attack}${which}: ${p.audit_done}/${p.audit_total} images${within}`);
  } else if (typeof p.audit_estimate_s === "number") {
    parts.push(`audit estimate: at most ${seconds(p.audit_estimate_s)}`);
  }
  if (typeof p.fraction === "number") parts.push(`${Math.round(100 * p.fraction)}%`);
  if (LIVE.has(job.status) && typeof p.eta_s === "number") parts.push(`ETA ${seconds(p.eta_s)}`);
  return parts.join(" · ");
}

function progressCell(job) {
  const p = job.progress || {};
  const text = progressText(job);
  const bar = typeof p.fraction === "number"
    ? h("progress", { max: "1", value: String(p.fraction), "aria-label": `progress of ${job.id}` })
    : null;
  return h("div", {}, bar, " ", h("span", { class: "progress-text" }, text || "–"));
}

function showError(where, err) {
  where.replaceChildren(h("p", { class: "error", role: "alert" }, err.message || String(err)));
}

// ------------------------------------------------------------------ router

function route() {
  stopTimers();
  const signedIn = Boolean(key());
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn) return signIn();
  const hash = location.hash || "#/jobs";
  const [, view, arg] = hash.match(/^#\/([a-z]+)\/?(.*)$/) || [null, "jobs", ""];
  const views = { jobs: jobsView, job: jobView, new: newJobView, compare: compareView };
  (views[view] || jobsView)(decodeURIComponent(arg || ""));
}

window.addEventListener("hashchange", route);
document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "#/jobs";
  route();
});

// ------------------------------------------------------------------ sign in

function signIn() {
  const error = h("p", { id: "signin-error", class: "error", role: "alert" });
  const input = h("input", {
    id: "api-key", type: "password", name: "key", autocomplete: "current-password",
    required: true, "aria-describedby": "api-key-help signin-error",
  });
  const form = h("form", { class: "signin", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await getJson("/v1/jobs?limit=1");
      if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
      route();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      error.textContent = err.status === 401 || err.status === undefined
        ? "That key was refused. Check it and try again." : err.message;
      if (!key()) { main.replaceChildren(form); input.focus(); }
    }
  } },
    h("h2", {}, "Sign in"),
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("small", { id: "api-key-help" },
        "The key from `cartl keys create` (or printed by `cartl serve` at first start). It stays in this tab only.")),
    h("p", {}, h("button", { type: "submit", class: "primary" }, "Sign in")),
    error);
  main.replaceChildren(form);
  input.focus();
}

// ------------------------------------------------------------------ jobs

function jobsView() {
  const params = new URLSearchParams(sessionStorage.getItem("cartl-filters") || "");
  const statusSel = h("select", { id: "filter-status" },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) =>
      h("option", { value: s, selected: params.get("status") === s }, s || "any")));
  const kindSel = h("select", { id: "filter-kind" },
    h("option", { value: "", selected: !params.get("kind") }, "any"));
  // The kinds are the server's registry's, as the new-job form's are.
  jobKinds().then((kinds) => kindSel.append(...kinds.map((k) =>
    h("option", { value: k.name, selected: params.get("kind") === k.name }, k.name)))).catch(() => {});
  const body = h("tbody");
  const note = h("p", { class: "muted", id: "jobs-note" });
  const compareButton = h("button", { type: "button", id: "compare-selected", onclick: () => {
    const ids = [...body.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
    location.hash = `#/compare/${ids.join(",")}`;
  } }, "Compare selected");
  const selected = new Set();

  // Every 2 s while a listed job is live, every 10 s otherwise (a new one may appear).
  async function poll() {
    const live = await load();
    timers.push(setTimeout(poll, live ? POLL_MS : 5 * POLL_MS));
  }

  async function load() {
    const q = new URLSearchParams({ limit: "50" });
    if (statusSel.value) q.set("status", statusSel.value);
    if (kindSel.value) q.set("kind", kindSel.value);
    sessionStorage.setItem("cartl-filters", q.toString());
    try {
      const page = await getJson(`/v1/jobs?${q}`);
      body.replaceChildren(...page.items.map((job) => jobRow(job, selected)));
      note.textContent = page.items.length ? `${page.items.length} job(s), updated ${new Date().toLocaleTimeString()}` : "No jobs match.";
      return page.items.some((job) => LIVE.has(job.status));
    } catch (err) {
      showError(note, err);
      return false;
    }
  }
  statusSel.addEventListener("change", load);
  kindSel.addEventListener("change", load);

  main.replaceChildren(
    h("h2", {}, "Jobs"),
    h("div", { class: "filters" },
      h("div", {}, h("label", { for: "filter-status" }, "Status"), statusSel),
      h("div", {}, h("label", { for: "filter-kind" }, "Kind"), kindSel),
      compareButton,
      h("a", { class: "button", href: "#/new" }, "New job")),
    h("table", { id: "jobs-table" },
      h("caption", { class: "visually-hidden" }, "Your jobs, newest first; updates while jobs run"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Select")),
        ...["Job", "Kind", "Status", "Progress", "Created"].map((t) => h("th", { scope: "col" }, t)),
        h("th", { scope: "col", class: "num" }, "Clean"),
        h("th", { scope: "col", class: "num" }, "Robust"))),
      body),
    note);
  poll();
}

function jobRow(job, selected) {
  const m = job.metrics || {};
  const box = h("input", { type: "checkbox", value: job.id, "aria-label": `select ${job.id}`, checked: selected.has(job.id),
    onchange: (e) => (e.target.checked ? selected.add(job.id) : selected.delete(job.id)) });
  return h("tr", { "data-job": job.id },
    h("td", {}, box),
    h("td", {}, h("a", { href: `#/job/${job.id}` }, job.id)),
    h("td", {}, job.kind),
    h("td", {}, statusCell(job.status)),
    h("td", {}, progressCell(job)),
    h("td", {}, when(job.created_at)),
    h("td", { class: "num" }, accCi(m.clean_accuracy, m.clean_interval, m.samples)),
    h("td", { class: "num" }, robustCell(m)));
}

// What must stand beside a robust accuracy wherever it is shown: why it means nothing (a
// constant or chance-level model, a randomised one), or that it was not audited.
function headlineNotes(m) {
  const notes = m.headline_notes || [];
  if (!notes.length) return null;
  return h("ul", { class: "headline-notes" }, notes.map((n) => h("li", { class: "warning" }, n)));
}

function robustCell(m) {
  const notes = m.headline_notes || [];
  const text = accCi(m.robust_accuracy, m.robust_interval, m.samples);
  if (!notes.length) return text;
  return h("span", { title: notes.join("; "), class: "warning" }, `${text} ⚠`);
}

// ------------------------------------------------------------------ one job

function jobView(id) {
  const head = h("div");
  const live = h("div", { id: "job-progress", "aria-live": "polite" });
  const actions = h("div", { class: "actions" });
  const curves = h("section", { id: "curves" });
  const audit = h("section", { id: "audit" });
  const compare = h("section", { id: "candidates" });
  const provenance = h("section", { id: "provenance" });
  const message = h("div", { role: "status" });
  main.replaceChildren(h("h2", {}, "Job ", h("code", {}, id)), head, live, actions, message, curves, compare, audit, provenance);
  let last = null;
  let metricsShownFor = null;

  async function refresh() {
    let job;
    try {
      job = await getJson(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      stopTimers();
      return showError(head, err);
    }
    head.replaceChildren(jobFacts(job));
    live.replaceChildren(h("h3", {}, "Progress"), progressCell(job));
    if (!last || last.status !== job.status) actions.replaceChildren(...jobActions(job, message));
    const stamp = `${job.status}:${(job.progress || {}).epoch}:${(job.progress || {}).stage}`;
    if (job.status !== "queued" && stamp !== metricsShownFor) {
      metricsShownFor = stamp;
      try {
        const metrics = await getJson(`/v1/jobs/${encodeURIComponent(id)}/metrics`);
        renderCurves(curves, [{ name: id, history: metrics.history }]);
        renderAudit(audit, metrics.audit);
        renderCandidates(compare, job, metrics);
      } catch (err) {
        if (err.status !== 409) showError(curves, err);
      }
    }
    renderProvenance(provenance, job);
    if (last && last.status !== job.status) announce(`job ${id} is ${job.status}`);
    last = job;
    if (!LIVE.has(job.status)) stopTimers();
  }
  refresh();
  every(POLL_MS, refresh);
}

function jobFacts(job) {
  const m = job.metrics || {};
  const facts = [
    ["Kind", job.kind], ["Status", statusCell(job.status)], ["Created", when(job.created_at)],
    ["Started", when(job.started_at)], ["Finished", when(job.finished_at)], ["Attempts", String(job.attempts)],
  ];
  if (job.checkpoint_id) facts.push(["Checkpoint", job.checkpoint_id]);
  if (job.dataset_id) facts.push(["Dataset", job.dataset_id]);
  if (m.clean_accuracy !== undefined) facts.push(["Clean accuracy", accCi(m.clean_accuracy, m.clean_interval, m.samples)]);
  if (m.robust_accuracy !== undefined) {
    const precision = m.precision ? `, ${m.precision}` : "";
    const how = m.ensemble ? ` (${m.ensemble}: ${(m.ensemble_attacks || []).join(", ")}, per-sample worst case${precision})` : "";
    facts.push(["Robust accuracy", h("span", {}, `${acc(m.robust_accuracy)}${how}${ciSuffix(m.robust_accuracy, m.robust_interval, m.samples)}`, headlineNotes(m))]);
  }
  if (m.samples) facts.push(["Intervals", m.interval || `95% Wilson interval, n = ${m.samples}`]);
  if (job.error) facts.push(["Error", h("span", { class: "error" }, job.error)]);
  if (job.cancel_requested && LIVE.has(job.status)) facts.push(["Cancel", "requested; it stops at its next batch"]);
  return h("dl", { class: "facts panel", id: "job-facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function jobActions(job, message) {
  const out = [];
  // A kind that makes weights links them (the registry says which: links.weights is null otherwise).
  if (job.status === "succeeded" && job.links.weights) {
    out.push(h("button", { type: "button", id: "download-weights", class: "primary",
      onclick: () => download(job.links.weights, `${job.id}.safetensors`, message) }, "Download weights"));
  }
  if (job.status !== "queued") {
    out.push(h("button", { type: "button", id: "download-report",
      onclick: () => download(`/v1/jobs/${job.id}/report`, `${job.id}-report.html`, message) }, "Download HTML report"));
  }
  if (LIVE.has(job.status)) {
    out.push(h("button", { type: "button", id: "cancel-job", class: "danger", onclick: async (e) => {
      e.target.disabled = true;
      try {
        await postJson(`/v1/jobs/${job.id}/cancel`, {});
        message.replaceChildren(h("p", {}, "Cancel requested."));
      } catch (err) { showError(message, err); e.target.disabled = false; }
    } }, "Cancel job"));
  }
  return out;
}

async function sha256Hex(blob) {
  if (!(window.crypto && crypto.subtle)) return null; // not a secure context: cannot check here
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Downloads go through fetch (the key is a header, never in a URL), are checked against the
// server's X-Checksum-SHA256 when it sends one, then saved under the server's file name.
async function download(path, fallbackName, message) {
  message.replaceChildren(h("p", {}, "Downloading…"));
  try {
    const response = await call(path);
    const blob = await response.blob();
    const expected = response.headers.get("X-Checksum-SHA256");
    let checked = "";
    if (expected) {
      const got = await sha256Hex(blob);
      if (got !== null && got !== expected) {
        throw new Error(`the download does not match its checksum (${got} vs ${expected}); nothing was saved`);
      }
      checked = got === null ? "" : `, sha256 ${got} checked`;
    }
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = (disposition.match(/filename="?([^";]+)"?/) || [null, fallbackName])[1];
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    message.replaceChildren(h("p", { id: "download-done" }, `Saved ${name} (${blob.size} bytes${checked}).`));
  } catch (err) {
    showError(message, err);
  }
}

// ------------------------------------------------------------------ curves, audit, candidates

const CURVES = [
  { title: "Training loss", keys: ["loss"], zero: true },
  { title: "Accuracy", keys: ["train_accuracy", "trace_clean_accuracy", "trace_robust_accuracy", "test_accuracy"], domain: [0, 1] },
];

// runs: [{name, history}]: one chart per quantity, one line per run (and per key).
function renderCurves(where, runs) {
  const charts = [];
  for (const c of CURVES) {
    const series = [];
    for (const run of runs) {
      for (const k of c.keys) {
        const points = (run.history || []).filter((r) => typeof r[k] === "number").map((r) => [r.epoch, r[k]]);
        if (points.length) series.push({ name: runs.length > 1 ? `${run.name} ${k}` : k, points });
      }
    }
    if (!series.length) continue;
    const svg = Charts.lines({ title: c.title, series, xLabel: "epoch", zero: c.zero, yDomain: c.domain, width: runs.length > 1 ? 560 : 460 });
    charts.push(h("figure", {}, h("figcaption", {}, c.title), svg));
  }
  const rows = runs.flatMap((run) => (run.history || []).map((r) => h("tr", {},
    runs.length > 1 ? h("td", {}, run.name) : null,
    h("td", { class: "num" }, String(r.epoch)),
    h("td", { class: "num" }, typeof r.loss === "number" ? r.loss.toFixed(4) : "–"),
    h("td", { class: "num" }, acc(r.train_accuracy)),
    h("td", { class: "num" }, acc(r.trace_clean_accuracy)),
    h("td", { class: "num" }, acc(r.trace_robust_accuracy)),
    h("td", { class: "num" }, typeof r.lr === "number" ? r.lr.toPrecision(3) : "–"))));
  if (!charts.length) return where.replaceChildren();
  where.replaceChildren(
    h("h3", {}, "Per-epoch curves"),
    h("div", { class: "charts" }, charts),
    h("details", {}, h("summary", {}, "The numbers"),
      h("table", {}, h("thead", {}, h("tr", {},
        runs.length > 1 ? h("th", { scope: "col" }, "Job") : null,
        ...["Epoch", "Loss", "Train acc.", "Trace clean", "Trace robust", "LR"].map((t) => h("th", { scope: "col", class: "num" }, t)))),
      h("tbody", {}, rows))));
}

function renderAudit(where, audit) {
  if (!audit) return where.replaceChildren();
  const attacks = (audit.attacks || []).map((a) => h("tr", {},
    h("td", {}, a.name), h("td", {}, a.role), h("td", { class: "num" }, a.eps.toFixed(4)),
    h("td", { class: "num" }, String(a.queries ?? a.steps)), h("td", { class: "num" }, String(a.samples)),
    h("td", { class: "num" }, acc(a.accuracy)), h("td", { class: "num" }, a.seconds.toFixed(1))));
  const checks = (audit.checks || []).map((c) => {
    const verdict = c.passed === true ? ["ok", "check-ok"] : c.passed === false ? ["WARNING", "check-warning"] : ["skipped", "check-skipped"];
    return h("tr", {}, h("td", {}, c.name), h("td", { class: verdict[1] }, verdict[0]), h("td", {}, c.detail), h("td", {}, c.meaning || ""));
  });
  const byEps = (audit.by_eps || []).filter((p) => typeof p.robust_accuracy === "number");
  const mainEps = byEps.filter((p) => !p.subset);
  const epsChart = byEps.length > 1 ? h("figure", {}, h("figcaption", {}, `Robust accuracy against eps (${audit.norm})`),
    Charts.lines({ title: "Robust accuracy against eps", xLabel: `eps (${audit.norm})`, yDomain: [0, 1],
      series: [{ name: "robust accuracy", points: (mainEps.length > 1 ? mainEps : byEps).map((p) => [p.eps, p.robust_accuracy]).sort((a, b) => a[0] - b[0]) }] })) : null;
  const perClass = audit.per_class || [];
  const classChart = perClass.length ? h("figure", {}, h("figcaption", {}, "Per class"),
    Charts.bars({ title: "Clean and robust accuracy per class", seriesNames: ["clean", "robust"],
      groups: perClass.map((c) => ({ name: c.name, values: [c.clean_accuracy, c.robust_accuracy] })) })) : null;
  where.replaceChildren(
    h("h3", {}, "Audit"),
    h("p", {}, `Clean ${accCi(audit.clean_accuracy, audit.clean_interval, audit.samples)} · robust ${accCi(audit.robust_accuracy, audit.robust_interval, audit.samples)} at ${audit.norm} eps ${Number(audit.eps).toFixed(4)} ` +
      `(${audit.ensemble}: ${(audit.ensemble_attacks || []).join(", ")}; per-sample worst case over ${audit.samples} samples; ${audit.precision || "fp32"}; in brackets: 95% Wilson intervals)`),
    headlineNotes(audit),
    (audit.notes || []).length ? h("ul", { class: "audit-notes" }, audit.notes.map((n) => h("li", {}, n))) : null,
    h("table", { id: "audit-attacks" }, h("caption", {}, "Attacks (ensemble members show the accuracy left after each, in sequence)"),
      h("thead", {}, h("tr", {}, ...["Attack", "Role", "eps", "Steps / queries", "Samples", "Accuracy", "Seconds"].map((t, i) => h("th", { scope: "col", class: i > 1 ? "num" : null }, t)))),
      h("tbody", {}, attacks)),
    h("table", { id: "audit-checks" }, h("caption", {}, "Sanity checks: a warning means the robust number may be too high"),
      h("thead", {}, h("tr", {}, ...["Check", "Verdict", "Detail", "What it means"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, checks)),
    h("div", { class: "charts" }, epsChart, classChart),
    perClass.length ? h("details", {}, h("summary", {}, "Per-class numbers"),
      h("table", {}, h("thead", {}, h("tr", {}, ...["Class", "Samples", "Clean", "Robust"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, perClass.map((c) => h("tr", {}, h("td", {}, c.name), h("td", { class: "num" }, String(c.samples)),
          h("td", { class: "num" }, accCi(c.clean_accuracy, c.clean_interval, c.samples)),
          h("td", { class: "num" }, accCi(c.robust_accuracy, c.robust_interval, c.samples))))))) : null);
}

function renderCandidates(where, job, metrics) {
  const rows = metrics.candidates || [];
  if (!rows.length) return where.replaceChildren(); // only kinds with candidates have rows
  const message = h("div", { role: "status" });
  const chart = Charts.scatter({
    title: "Candidates: validation clean (across) against validation robust accuracy (up)", xLabel: "validation clean accuracy (up: validation robust accuracy)",
    points: rows.map((r) => ({ name: r.name, x: r.val_clean, y: r.val_robust, highlight: r.name === metrics.chosen,
      xErr: r.val_clean_interval, yErr: r.val_robust_interval })),
  });
  where.replaceChildren(
    h("h3", {}, "Candidates"),
    h("figure", {}, h("figcaption", {}, `Validation clean against robust accuracy (chosen: ${metrics.chosen || "–"})`), chart),
    selectionNote(metrics.selection || (job.metrics || {}).selection || {}, metrics.chosen),
    h("table", { id: "candidates-table" },
      h("caption", {}, "Cost: measured device-seconds of each candidate's training and validation audit" + costDevices(rows)),
      h("thead", {}, h("tr", {}, ...["Candidate", "Chosen", "Val. clean", "Val. robust", "Test clean", "Test robust", "Cost", "Weights"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", {},
        h("td", {}, r.name), h("td", {}, r.name === metrics.chosen ? "chosen" : ""),
        ...["val_clean", "val_robust", "test_clean", "test_robust"].map((key) =>
          h("td", { class: "num" }, accCi(r[key], r[`${key}_interval`], r[`${key.split("_")[0]}_samples`]))),
        h("td", { class: "num" }, costText(r)),
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => download(`/v1/jobs/${job.id}/weights?candidate=${encodeURIComponent(r.name)}`, `${r.name}.safetensors`, message) }, "download")))))),
    message);
}

// How the choice was made: its reason, the rule, its confidence and the validation size.
function selectionNote(sel, chosen) {
  if (!sel.rule) return null;
  const level = typeof sel.confidence === "number" ? `${Math.round(sel.confidence * 100)}% confidence, ` : "";
  const reason = sel.reason ? h("p", { id: "selection-reason" }, h("strong", {}, "Chosen: "), sel.reason) : h("p", {}, `Chosen: ${chosen || "–"}`);
  return h("div", { id: "selection" }, reason,
    h("p", {}, `Rule (${level}${sel.val_samples} validation images; in brackets below: 95% Wilson intervals): ${sel.rule}`));
}

// A candidate's measured cost; rows from before costs were measured show their total time.
function costText(r) {
  const s = typeof r.cost_seconds === "number" && r.cost_seconds > 0 ? r.cost_seconds : r.seconds;
  return typeof s === "number" ? `${s.toFixed(1)} s` : "–";
}
function costDevices(rows) {
  const devices = [...new Set(rows.map((r) => r.device).filter(Boolean))];
  return devices.length ? ` (on ${devices.join(", ")})` : "";
}

function renderProvenance(where, job) {
  const p = (job.metrics || {}).provenance;
  if (!p) return where.replaceChildren();
  where.replaceChildren(h("h3", {}, "Provenance"),
    h("details", {}, h("summary", {}, "Where these numbers came from (code, inputs, settings, device)"),
      h("pre", {}, JSON.stringify(p, null, 2))));
}

// ------------------------------------------------------------------ new job

// The server's job kinds (its registry), each with its params' JSON schema.
async function jobKinds() {
  if (!kindsCache) kindsCache = await getJson("/v1/job-kinds");
  return kindsCache;
}

function fieldKind(prop) {
  const options = prop.anyOf || [prop];
  const enums = options.flatMap((o) => o.enum || (o.const !== undefined ? [o.const] : []));
  if (enums.length) return { type: "enum", values: enums };
  const types = options.map((o) => o.type).filter((t) => t && t !== "null");
  if (types.includes("array")) {
    const item = options.find((o) => o.type === "array").items || {};
    return { type: "array", item: item.type || (item.enum ? "string" : "number"), values: item.enum };
  }
  // A number's range, for the browser; one that may also be written as text (a fraction such as
  // 8/255) keeps a text box, which has no range.
  const number = options.find((o) => o.type === "integer" || o.type === "number");
  if (!number || types.includes("string")) return { type: types[0] || "string" };
  return { type: number.type, min: number.minimum ?? number.exclusiveMinimum, max: number.maximum ?? number.exclusiveMaximum, range: true };
}

function paramField(name, prop) {
  const kind = fieldKind(prop);
  const id = `param-${name}`;
  const help = h("small", { id: `${id}-help` }, prop.description || "");
  const error = h("span", { id: `${id}-error`, class: "error", "data-field": `params.${name}` });
  let input;
  if (kind.type === "boolean") {
    input = h("input", { id, name, type: "checkbox", checked: prop.default === true, "aria-describedby": `${id}-help ${id}-error` });
  } else if (kind.type === "enum") {
    input = h("select", { id, name, "aria-describedby": `${id}-help ${id}-error` },
      h("option", { value: "" }, prop.default === undefined || prop.default === null ? "(default)" : `(default: ${prop.default})`),
      kind.values.filter((v) => v !== null).map((v) => h("option", { value: String(v) }, String(v))));
  } else {
    const shown = prop.default === undefined || prop.default === null ? "" : Array.isArray(prop.default) ? prop.default.join(",") : String(prop.default);
    // An exclusive bound (lr above 0) becomes the browser's inclusive one: the server names the edge.
    const range = kind.range ? { type: "number", min: kind.min, max: kind.max, step: kind.type === "integer" ? "1" : "any" } : { type: "text" };
    input = h("input", { id, name, ...range, inputmode: kind.type === "string" ? null : "decimal", placeholder: shown, "aria-describedby": `${id}-help ${id}-error` });
  }
  input.dataset.kind = JSON.stringify(kind);
  return h("div", { class: "field" }, h("label", { for: id }, name), input, help, error);
}

function readValue(input) {
  const kind = JSON.parse(input.dataset.kind);
  if (kind.type === "boolean") return input.checked ? true : undefined;
  const text = input.value.trim();
  if (!text) return undefined;
  const scalar = (t, type) => {
    if (type === "integer" && /^-?\d+$/.test(t)) return Number(t);
    if (type === "number" && t !== "" && !isNaN(Number(t))) return Number(t);
    return t; // fractions such as 8/255 go as text; anything else the server names
  };
  if (kind.type === "array") return text.replace(/^\[|\]$/g, "").split(",").map((s) => s.trim()).filter(Boolean).map((s) => scalar(s, kind.item));
  if (kind.type === "enum") return text;
  return scalar(text, kind.type);
}

async function newJobView() {
  const kinds = await jobKinds();
  const kindSel = h("select", { id: "job-kind", name: "kind" },
    kinds.map((k) => h("option", { value: k.name, selected: k.name === "transfer", title: k.summary }, k.name)));
  const params = h("div", { class: "form-grid", id: "params" });
  const formError = h("div", { id: "form-error", role: "alert" });
  const [checkpoints, datasets] = await Promise.all([
    getJson("/v1/checkpoints?limit=100").catch(() => ({ items: [] })),
    getJson("/v1/datasets?limit=100").catch(() => ({ items: [] })),
  ]);
  const pick = (what, items, label) => h("div", { class: "field" },
    h("label", { for: `${what}-id` }, `${label}: an earlier upload`),
    h("select", { id: `${what}-id` }, h("option", { value: "" }, "(none: upload a file below)"),
      items.map((r) => h("option", { value: r.id }, `${r.filename} (${r.id})`))),
    h("label", { for: `${what}-file` }, `or a file to upload`),
    h("input", { id: `${what}-file`, type: "file" }),
    h("span", { class: "error", "data-field": `${what}_id` }));
  const archField = h("div", { class: "field" }, h("label", { for: "upload-arch" }, "Architecture of plain weights (upload only)"),
    h("input", { id: "upload-arch", type: "text", placeholder: "e.g. small-cnn" }));
  // A folder of images of several sizes, or a source trained at another resolution, needs the
  // dataset resized once at upload; every job then reads it that way.
  const resizeField = h("div", { class: "field" },
    h("label", { for: "upload-resize" }, "Resize the dataset's images to a side of (px, upload only)"),
    h("input", { id: "upload-resize", type: "number", min: "8", max: "1024", step: "1", placeholder: "as they are" }),
    h("label", { for: "upload-resize-method" }, "resized by"),
    h("select", { id: "upload-resize-method" },
      ["bilinear", "bicubic", "nearest", "area"].map((m) => h("option", { value: m }, m))),
    h("span", { class: "error", "data-field": "upload.resize" }));

  async function showParams() {
    const schema = kinds.find((k) => k.name === kindSel.value).params_schema;
    params.replaceChildren(...Object.entries(schema.properties).map(([name, prop]) => paramField(name, prop)));
  }
  kindSel.addEventListener("change", showParams);

  const submit = h("button", { type: "submit", class: "primary", id: "submit-job" }, "Start job");
  const form = h("form", { id: "new-job", onsubmit: async (e) => {
    e.preventDefault();
    submit.disabled = true;
    form.querySelectorAll(".error").forEach((n) => (n.textContent = ""));
    formError.replaceChildren();
    try {
      const body = { kind: kindSel.value, params: {} };
      for (const input of params.querySelectorAll("input, select")) {
        const v = readValue(input);
        if (v !== undefined) body.params[input.name] = v;
      }
      for (const what of ["checkpoint", "dataset"]) {
        const file = document.getElementById(`${what}-file`).files[0];
        let id = document.getElementById(`${what}-id`).value || null;
        if (file) id = await upload(what, file);
        if (id) body[`${what}_id`] = id;
      }
      const job = await postJson("/v1/jobs", body);
      location.hash = `#/job/${job.id}`;
    } catch (err) {
      showFieldErrors(form, formError, err);
    } finally {
      submit.disabled = false;
    }
  } },
    h("fieldset", {}, h("legend", {}, "Kind"), h("div", { class: "field" }, h("label", { for: "job-kind" }, "Job kind"), kindSel)),
    h("fieldset", {}, h("legend", {}, "Inputs"), h("div", { class: "form-grid" },
      pick("checkpoint", checkpoints.items, "Checkpoint (source, or the model to audit)"),
      pick("dataset", datasets.items, "Dataset"), archField, resizeField)),
    h("fieldset", {}, h("legend", {}, "Parameters (empty: the default shown)"), params),
    formError, submit);
  main.replaceChildren(h("h2", {}, "New job"), form);
  await showParams();
}

async function upload(what, file) {
  const data = new FormData();
  data.append("file", file, file.name);
  const arch = document.getElementById("upload-arch").value.trim();
  if (what === "checkpoint" && arch) data.append("arch", arch);
  const resize = document.getElementById("upload-resize").value.trim();
  if (what === "dataset" && resize) {
    data.append("resize", resize);
    data.append("resize_method", document.getElementById("upload-resize-method").value);
  }
  try {
    const row = await (await call(`/v1/${what}s`, { method: "POST", body: data })).json();
    return row.id;
  } catch (err) {
    // An upload's field errors name "file" or "arch": say which upload they belong to.
    err.uploadOf = what;
    throw err;
  }
}

function showFieldErrors(form, formError, err) {
  const errors = (err.body && err.body.errors) || [];
  const unplaced = [];
  for (const e of errors) {
    // A refused resize shows beside the resize; the upload's other errors beside its file.
    const resize = err.uploadOf === "dataset" && e.field.startsWith("resize");
    const field = resize ? "upload.resize"
      : err.uploadOf && !e.field.startsWith("params.") ? `${err.uploadOf}_id` : e.field;
    const slot = form.querySelector(`.error[data-field="${CSS.escape(field)}"]`);
    if (slot) slot.textContent = e.message;
    else unplaced.push(`${e.field}: ${e.message}`);
  }
  const what = err.uploadOf ? `The ${err.uploadOf} upload was refused: ` : "";
  formError.replaceChildren(h("p", { class: "error" }, `${what}${err.message}`),
    unplaced.length ? h("ul", {}, unplaced.map((t) => h("li", { class: "error" }, t))) : null);
  const first = form.querySelector(".error:not(:empty)");
  if (first) {
    const input = first.parentElement.querySelector("input, select");
    if (input) input.focus();
  }
}

// ------------------------------------------------------------------ comparison

async function compareView(arg) {
  const ids = arg.split(",").map((s) => s.trim()).filter(Boolean);
  if (ids.length < 2) {
    main.replaceChildren(h("h2", {}, "Compare jobs"),
      h("p", {}, "Tick two or more jobs on the ", h("a", { href: "#/jobs" }, "jobs page"), " and press Compare selected."));
    return;
  }
  main.replaceChildren(h("h2", {}, `Compare ${ids.length} jobs`), h("p", { role: "status" }, "Loading…"));
  try {
    const runs = await Promise.all(ids.map(async (id) => {
      const job = await getJson(`/v1/jobs/${encodeURIComponent(id)}`);
      let metrics = { history: [] };
      if (job.status !== "queued") metrics = await getJson(`/v1/jobs/${encodeURIComponent(id)}/metrics`).catch(() => ({ history: [] }));
      return { job, metrics, name: id };
    }));
    // Charts name each job by its method (or kind) and the end of its id: full ids do not fit.
    const label = (r) => `${(r.job.params || {}).method || r.job.kind} …${r.name.slice(-5)}`;
    const curves = h("section");
    renderCurves(curves, runs.map((r) => ({ name: label(r), history: r.metrics.history })));
    main.replaceChildren(
      h("h2", {}, `Compare ${ids.length} jobs`),
      h("table", { id: "compare-table" },
        h("thead", {}, h("tr", {}, ...["Job", "Kind", "Method", "Status", "Clean", "Robust", "Robust by"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, runs.map((r) => {
          const m = r.job.metrics || {};
          return h("tr", {}, h("td", {}, h("a", { href: `#/job/${r.name}` }, r.name)), h("td", {}, r.job.kind),
            h("td", {}, (r.job.params || {}).method || "–"), h("td", {}, statusCell(r.job.status)),
            h("td", { class: "num" }, accCi(m.clean_accuracy, m.clean_interval, m.samples)), h("td", { class: "num" }, robustCell(m)),
            h("td", {}, m.ensemble ? `${m.ensemble} (${(m.ensemble_attacks || []).join(", ")})` : "–"));
        }))),
      h("figure", { id: "compare-chart" }, h("figcaption", {}, "Clean and robust accuracy"),
        Charts.bars({ title: "Clean and robust accuracy per job", seriesNames: ["clean", "robust"],
          groups: runs.map((r) => {
            const m = r.job.metrics || {};
            return { name: label(r), values: [m.clean_accuracy ?? null, m.robust_accuracy ?? null],
              intervals: [m.clean_interval || null, m.robust_interval || null] };
          }) })),
      curves);
  } catch (err) {
    showError(main, err);
  }
}

route();
