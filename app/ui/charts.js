// Small SVG charts for the dashboard: lines, points and bars. No library: every series is told
// apart by colour *and* dash or marker shape, each chart has a title and a description for screen
// readers, and the numbers are always in a table beside it.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLOURS = ["#0b5cad", "#c4320a", "#116329", "#8250df", "#8a4600", "#1b7c83"];
  const DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 4", "10 4"];
  const MARKERS = ["circle", "square", "triangle", "diamond", "circle", "square"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function extent(values, zero) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (zero) lo = Math.min(lo, 0);
    if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    return [lo, hi];
  }

  // n steps from lo to hi; with `whole`, whole numbers only (epochs: there is no epoch 1.5).
  function ticks(lo, hi, n, whole) {
    if (whole) {
      const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
      const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
      const out = [];
      for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) out.push(t);
      return out;
    }
    const step = (hi - lo) / n;
    return Array.from({ length: n + 1 }, (_, i) => lo + i * step);
  }

  function fmt(v) {
    if (Number.isInteger(v)) return String(v);
    if (Math.abs(v) >= 100) return v.toFixed(0);
    if (Math.abs(v) >= 10) return v.toFixed(1);
    return v.toFixed(2).replace(/0$/, "");
  }

  function marker(g, kind, x, y, colour, size, filled) {
    const fill = filled ? colour : "#fff";
    const s = size;
    if (kind === "square") return el("rect", { x: x - s, y: y - s, width: 2 * s, height: 2 * s, fill, stroke: colour, "stroke-width": 1.5 }, g);
    if (kind === "triangle") return el("polygon", { points: `${x},${y - s * 1.2} ${x - s},${y + s} ${x + s},${y + s}`, fill, stroke: colour, "stroke-width": 1.5 }, g);
    if (kind === "diamond") return el("polygon", { points: `${x},${y - s * 1.3} ${x + s},${y} ${x},${y + s * 1.3} ${x - s},${y}`, fill, stroke: colour, "stroke-width": 1.5 }, g);
    return el("circle", { cx: x, cy: y, r: s, fill, stroke: colour, "stroke-width": 1.5 }, g);
  }

  // A frame with axes, grid and labels; returns {svg, x(v), y(v), plot}.
  function frame(opts) {
    const width = opts.width || 460, height = opts.height || 260;
    const m = { left: 48, right: 12, top: 12 + (opts.legendRows || 0) * 16, bottom: 38 };
    const svg = el("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    el("title", {}, svg).textContent = opts.title;
    el("desc", {}, svg).textContent = opts.description || opts.title;
    const [x0, x1] = opts.xDomain, [y0, y1] = opts.yDomain;
    const pw = width - m.left - m.right, ph = height - m.top - m.bottom;
    const x = (v) => m.left + ((v - x0) / (x1 - x0 || 1)) * pw;
    const y = (v) => m.top + ph - ((v - y0) / (y1 - y0 || 1)) * ph;
    for (const t of ticks(y0, y1, 4)) {
      el("line", { class: "grid", x1: m.left, x2: m.left + pw, y1: y(t), y2: y(t) }, svg);
      const label = el("text", { x: m.left - 6, y: y(t) + 4, "text-anchor": "end" }, svg);
      label.textContent = fmt(t);
    }
    if (!opts.categorical) {
      for (const t of ticks(x0, x1, Math.min(5, Math.max(1, Math.round(x1 - x0)) || 1), opts.xWhole)) {
        const label = el("text", { x: x(t), y: m.top + ph + 16, "text-anchor": "middle" }, svg);
        label.textContent = fmt(t);
      }
    }
    el("line", { class: "axis", x1: m.left, x2: m.left + pw, y1: m.top + ph, y2: m.top + ph }, svg);
    el("line", { class: "axis", x1: m.left, x2: m.left, y1: m.top, y2: m.top + ph }, svg);
    const xl = el("text", { x: m.left + pw / 2, y: height - 4, "text-anchor": "middle" }, svg);
    xl.textContent = opts.xLabel || "";
    return { svg, x, y, m, pw, ph, width };
  }

  function legend(svg, series, m, width) {
    let cx = m.left, row = 0;
    series.forEach((s, i) => {
      const w = 34 + 7 * s.name.length;
      if (cx + w > width - 8) { cx = m.left; row += 1; }
      const y = 10 + row * 16;
      el("line", { x1: cx, x2: cx + 22, y1: y, y2: y, stroke: COLOURS[i % 6], "stroke-width": 2, "stroke-dasharray": DASHES[i % 6] }, svg);
      marker(svg, MARKERS[i % 6], cx + 11, y, COLOURS[i % 6], 3, true);
      const t = el("text", { x: cx + 27, y: y + 4 }, svg);
      t.textContent = s.name;
      cx += w;
    });
  }

  function legendRows(series, width) {
    let cx = 48, rows = 1;
    for (const s of series) {
      const w = 34 + 7 * s.name.length;
      if (cx + w > width - 8) { cx = 48; rows += 1; }
      cx += w;
    }
    return series.length ? rows : 0;
  }

  // series: [{name, points: [[x, y], ...]}]
  function lines(opts) {
    const all = opts.series.flatMap((s) => s.points);
    const width = opts.width || 460;
    const f = frame({
      ...opts,
      width,
      legendRows: legendRows(opts.series, width),
      xDomain: extent(all.map((p) => p[0])),
      xWhole: all.every((p) => Number.isInteger(p[0])),
      yDomain: opts.yDomain || extent(all.map((p) => p[1]), opts.zero),
    });
    opts.series.forEach((s, i) => {
      const colour = COLOURS[i % 6];
      const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1]));
      if (pts.length > 1) {
        el("polyline", {
          points: pts.map((p) => `${f.x(p[0])},${f.y(p[1])}`).join(" "),
          fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": DASHES[i % 6],
        }, f.svg);
      }
      if (pts.length <= 30) pts.forEach((p) => marker(f.svg, MARKERS[i % 6], f.x(p[0]), f.y(p[1]), colour, 3, true));
    });
    legend(f.svg, opts.series, f.m, width);
    return f.svg;
  }

  // points: [{name, x, y, highlight}] drawn with their names; the highlighted one larger, filled
  // and named "(chosen)". Names of points that coincide are stacked, and names near the right
  // edge run leftwards, so none is hidden.
  // A 95% interval as a capped line from lo to hi at `at` across (vertical: along y).
  function whisker(svg, lo, hi, at, cap, colour, vertical) {
    const seg = [[lo, at, hi, at], [lo, at - cap, lo, at + cap], [hi, at - cap, hi, at + cap]];
    const d = seg.map(([a, b, c, e]) => (vertical ? `M${b},${a}L${e},${c}` : `M${a},${b}L${c},${e}`)).join("");
    return el("path", { d, stroke: colour, "stroke-width": 1, "stroke-opacity": 0.7, fill: "none", class: "whisker" }, svg);
  }

  // points: [{name, x, y, highlight, xErr, yErr}]; xErr/yErr, [lo, hi], are drawn as whiskers.
  function scatter(opts) {
    const width = opts.width || 460;
    const xs = opts.points.flatMap((p) => [p.x, ...(p.xErr || [])]);
    const ys = opts.points.flatMap((p) => [p.y, ...(p.yErr || [])]);
    const pad = (d) => [Math.max(0, d[0] - 0.05), Math.min(1, d[1] + 0.05)];
    const f = frame({ ...opts, width, xDomain: pad(extent(xs)), yDomain: pad(extent(ys)) });
    const taken = new Map();
    const ordered = [...opts.points].sort((a, b) => Number(Boolean(b.highlight)) - Number(Boolean(a.highlight)));
    ordered.forEach((p) => {
      const colour = p.highlight ? COLOURS[1] : COLOURS[0];
      const px = f.x(p.x), py = f.y(p.y);
      if (p.xErr) whisker(f.svg, f.x(p.xErr[0]), f.x(p.xErr[1]), py, 3, colour, false);
      if (p.yErr) whisker(f.svg, f.y(p.yErr[0]), f.y(p.yErr[1]), px, 3, colour, true);
      marker(f.svg, p.highlight ? "diamond" : "circle", px, py, colour, p.highlight ? 6 : 4, p.highlight);
      const spot = `${Math.round(px / 8)},${Math.round(py / 8)}`;
      const n = taken.get(spot) || 0;
      taken.set(spot, n + 1);
      const left = px > f.m.left + 0.6 * f.pw;
      const t = el("text", { x: left ? px - 9 : px + 9, y: py - 6 + 14 * n, "text-anchor": left ? "end" : "start" }, f.svg);
      t.textContent = p.highlight ? `${p.name} (chosen)` : p.name;
    });
    return f.svg;
  }

  // groups: [{name, values: [v per series], intervals: [[lo, hi] or null per series]}],
  // seriesNames: [...]; values in [0, 1]. An interval is drawn as a whisker over its bar.
  function bars(opts) {
    const width = opts.width || Math.max(360, 120 + opts.groups.length * 110);
    const series = opts.seriesNames.map((name) => ({ name }));
    const f = frame({
      ...opts, width, categorical: true, legendRows: legendRows(series, width),
      xDomain: [0, opts.groups.length], yDomain: [0, 1],
    });
    const gw = f.pw / opts.groups.length, bw = (gw * 0.7) / opts.seriesNames.length;
    opts.groups.forEach((g, gi) => {
      g.values.forEach((v, si) => {
        if (v === null || v === undefined) return;
        const x = f.m.left + gi * gw + gw * 0.15 + si * bw;
        el("rect", {
          x, y: f.y(v), width: bw - 2, height: f.y(0) - f.y(v),
          fill: si % 2 ? "#fff" : COLOURS[si % 6], stroke: COLOURS[si % 6], "stroke-width": 2,
          "stroke-dasharray": si % 2 ? "4 2" : "",
        }, f.svg);
        const ci = (g.intervals || [])[si];
        if (ci) whisker(f.svg, f.y(ci[0]), f.y(ci[1]), x + (bw - 2) / 2, Math.min(4, bw / 4), "#000", true);
        // The value is written above the bar, and above its interval.
        const top = ci ? Math.min(f.y(v), f.y(ci[1])) : f.y(v);
        const t = el("text", { x: x + (bw - 2) / 2, y: top - 3, "text-anchor": "middle" }, f.svg);
        t.textContent = v.toFixed(3);
      });
      const t = el("text", { x: f.m.left + gi * gw + gw / 2, y: f.m.top + f.ph + 16, "text-anchor": "middle" }, f.svg);
      t.textContent = g.name;
    });
    legend(f.svg, series, f.m, width);
    return f.svg;
  }

  return { lines, scatter, bars };
})();
