// The transparency page: ρ spent per day by audience against the caps
// (from the ledger), totals, every release charged, and the privacy model
// in plain words (from the dataset's published policy).

import {
  api, apiUrl, setStatus, showError, el, setChildren,
  OKABE_ITO, fmtInt, fmtNum, fmtRho, fmtEps, fmtDelta, epsilonBound,
  fmtLocalDay, fmtWindow, addDays, daysBetween, binName,
  pickDataset, showDatasetTitle, t, tn, tCode, locale,
} from "/web/common.js";

const $ = (id) => document.getElementById(id);

const ui = {
  canvas: $("spend-chart"),
  legend: $("chart-legend"),
  readout: $("chart-readout"),
  cards: $("totals-cards"),
  totalsBody: $("totals-body"),
  filter: $("audience-filter"),
  metricFilter: $("metric-filter"),
  unitFilter: $("unit-filter"),
  fromFilter: $("from-filter"),
  toFilter: $("to-filter"),
  count: $("release-count"),
  body: $("release-body"),
  more: $("show-more"),
  all: $("show-all"),
  model: $("model-body"),
};

const PAGE = 50;
const MORE = 200;
const EPS = 1e-9;
/** Average H3 hexagon areas (km²) by resolution, for the plain-words text. */
const H3_AREA_KM2 = { 5: 252.9, 6: 36.13, 7: 5.161, 8: 0.7373, 9: 0.1053, 10: 0.01504, 11: 0.002149 };

const label = tCode;
const audienceName = (a) => label("transparency.audience", a);
const metricName = (m) => label("transparency.metric", m);
/** "by segment", "by segment and origin" (from "segment,origin"). */
function byName(by) {
  const code = by.replace(/,/g, "_");
  const s = tCode("transparency.by", code);
  return s !== code ? s : t("transparency.by_other", { by });
}
/** "day period", or "{period} period" for a period the catalogue lacks. */
function periodName(period) {
  const s = tCode("transparency.period", period);
  return s !== period ? s : t("transparency.period_other", { period });
}

const state = {
  ds: null,
  ledger: null,
  rows: [],
  shown: PAGE,
  chart: null,
  cursor: -1,
};

// ------------------------------------------------------------ chart data

function chartData(ledger) {
  const caps = ledger.audience_caps_rho_per_day || {};
  const audiences = [...new Set([...Object.keys(caps), ...(ledger.days || []).map((d) => d.audience)])];
  const days = (ledger.days || []).map((d) => d.day).sort();
  if (!days.length) return { audiences, caps, days: [], series: {}, counts: {}, total: [] };
  const first = days[0];
  const n = daysBetween(first, days[days.length - 1]) + 1;
  const list = Array.from({ length: n }, (_, i) => addDays(first, i));
  const series = {};
  const counts = {};
  for (const a of audiences) {
    series[a] = new Array(n).fill(0);
    counts[a] = new Array(n).fill(0);
  }
  for (const d of ledger.days || []) {
    const i = daysBetween(first, d.day);
    if (i < 0 || i >= n) continue;
    series[d.audience][i] += Number(d.rho_spent) || 0;
    counts[d.audience][i] += Number(d.releases) || 0;
  }
  const total = list.map((_, i) => audiences.reduce((s, a) => s + series[a][i], 0));
  return { audiences, caps, days: list, series, counts, total };
}

function colourOf(i) {
  return OKABE_ITO[i % OKABE_ITO.length];
}

function niceStep(max, ticks = 5) {
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

// ------------------------------------------------------------ chart drawing

function layout(w) {
  const narrow = w < 560;
  return { left: narrow ? 46 : 58, right: narrow ? 12 : 150, top: 14, bottom: 46, narrow };
}

function drawChart() {
  const c = state.chart;
  const canvas = ui.canvas;
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width));
  const h = Math.max(1, Math.round(r.height));
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  const font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  ctx.font = font;
  if (!c || !c.days.length) {
    ctx.fillStyle = "#535b66";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(t("transparency.chart.empty"), w / 2, h / 2);
    return;
  }
  const L = layout(w);
  const pw = Math.max(10, w - L.left - L.right);
  const ph = Math.max(10, h - L.top - L.bottom);
  const capValues = [c.datasetCap, ...c.audiences.map((a) => c.caps[a])].filter(Number.isFinite);
  const ymax = Math.max(...capValues, ...c.total, 0.01) * 1.12;
  const step = niceStep(ymax, 6);
  const n = c.days.length;
  const X = (i) => L.left + (n === 1 ? pw / 2 : (i / (n - 1)) * pw);
  const Y = (v) => L.top + ph - (v / ymax) * ph;
  c.geom = { left: L.left, pw, n, X };

  // Grid and y axis.
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let v = 0; v <= ymax + EPS; v += step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.strokeStyle = v === 0 ? "#8a929c" : "#e6e8eb";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(L.left, y);
    ctx.lineTo(L.left + pw, y);
    ctx.stroke();
    ctx.fillStyle = "#3c434c";
    ctx.fillText(fmtRho(Number(v.toFixed(6))), L.left - 6, y);
  }
  ctx.save();
  ctx.translate(13, L.top + ph / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillStyle = "#1b1f24";
  ctx.fillText(t("transparency.chart.y_axis"), 0, 0);
  ctx.restore();

  // X axis ticks.
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillStyle = "#3c434c";
  const ticks = xTicks(c.days, pw);
  let lastRight = -Infinity;
  for (const { i, label } of ticks) {
    const x = Math.round(X(i)) + 0.5;
    ctx.strokeStyle = "#8a929c";
    ctx.beginPath();
    ctx.moveTo(x, L.top + ph);
    ctx.lineTo(x, L.top + ph + 4);
    ctx.stroke();
    const tw = ctx.measureText(label).width;
    if (x - tw / 2 > lastRight + 4 && x + tw / 2 <= w) {
      ctx.fillText(label, x, L.top + ph + 7);
      lastRight = x + tw / 2;
    }
  }
  ctx.fillStyle = "#1b1f24";
  ctx.fillText(t("transparency.chart.x_axis", { tz: c.timezone }), L.left + pw / 2, L.top + ph + 26);

  // Caps: translucent bands under a dashed line, so that a spend line that
  // reaches its cap (the public's plan spends all of it) stays visible on
  // top of the band instead of vanishing into a line of the same place.
  const capLabels = new Map();
  const capLine = (v, colour, who) => {
    if (!Number.isFinite(v)) return;
    const y = Math.round(Y(v)) + 0.5;
    ctx.setLineDash([]);
    ctx.globalAlpha = 0.16;
    ctx.fillStyle = colour;
    ctx.fillRect(L.left, y - 5, pw, 10);
    ctx.globalAlpha = 1;
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(L.left, y);
    ctx.lineTo(L.left + pw, y);
    ctx.stroke();
    const key = v.toFixed(9);
    if (!capLabels.has(key)) capLabels.set(key, { v, who: [] });
    capLabels.get(key).who.push(who);
  };
  c.audiences.forEach((a, k) => capLine(c.caps[a], colourOf(k), audienceName(a)));
  capLine(c.datasetCap, "#1b1f24", t("transparency.chart.cap_dataset"));
  ctx.setLineDash([]);
  if (!L.narrow) {
    // Two lines per cap value ("cap 0.2" / "planners, public"), top down.
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillStyle = "#1b1f24";
    let nextFree = -Infinity;
    const sorted = [...capLabels.values()].sort((a, b) => b.v - a.v);
    for (const { v, who } of sorted) {
      const y = Math.max(Y(v), nextFree);
      ctx.font = `600 ${font}`;
      fitText(ctx, t("transparency.chart.cap", { rho: fmtRho(v) }), L.left + pw + 6, y, L.right - 8);
      ctx.font = font;
      fitText(ctx, who.join(", "), L.left + pw + 6, y + 14, L.right - 8);
      nextFree = y + 32;
    }
  }

  // Lines: total (thin, dark), then each audience.
  const line = (values, colour, width, dots) => {
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.lineJoin = "round";
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(X(i), Y(v)) : ctx.moveTo(X(i), Y(v))));
    ctx.stroke();
    if (dots && n <= 45) {
      ctx.fillStyle = colour;
      values.forEach((v, i) => {
        ctx.beginPath();
        ctx.arc(X(i), Y(v), width + 0.5, 0, Math.PI * 2);
        ctx.fill();
      });
    }
  };
  // The total is a grey area under the audience lines; audience lines
  // narrow from first to last, so coinciding lines stay visible as stripes.
  if (c.audiences.length > 1) {
    ctx.beginPath();
    ctx.moveTo(X(0), Y(0));
    c.total.forEach((v, i) => ctx.lineTo(X(i), Y(v)));
    ctx.lineTo(X(n - 1), Y(0));
    ctx.closePath();
    ctx.fillStyle = "rgba(27,31,36,0.13)";
    ctx.fill();
    line(c.total, "rgba(27,31,36,0.45)", 1, false);
  }
  const A = c.audiences.length;
  const thin = n > 90 ? 1.25 : 1.75;
  const spread = n > 90 ? 1.5 : 2.5;
  c.audiences.forEach((a, k) => line(c.series[a], colourOf(k), A > 1 ? thin + (spread * (A - 1 - k)) / (A - 1) : thin + 0.75, true));

  // Cursor.
  if (state.cursor >= 0 && state.cursor < n) {
    const x = Math.round(X(state.cursor)) + 0.5;
    ctx.strokeStyle = "rgba(27,31,36,0.55)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x, L.top);
    ctx.lineTo(x, L.top + ph);
    ctx.stroke();
  }
}

function fitText(ctx, text, x, y, maxW) {
  let t = text;
  while (t.length > 4 && ctx.measureText(t).width > maxW) t = `${t.slice(0, -2)}…`;
  ctx.fillText(t, x, y);
}

/** Tick positions and labels for the day axis. */
function xTicks(days, pw) {
  const n = days.length;
  const out = [];
  if (n <= 14 && pw / n > 44) {
    days.forEach((d, i) => out.push({ i, label: shortDay(d) }));
    return out;
  }
  if (n >= 60) {
    let firstLabel = true;
    days.forEach((d, i) => {
      if (d.endsWith("-01") || i === 0) {
        const date = new Date(`${d}T12:00:00Z`);
        const text = (firstLabel || d.slice(5, 7) === "01" ? MONTH_YEAR : MONTH).format(date);
        if (i === 0 && !d.endsWith("-01")) {
          out.push({ i, label: shortDay(d) });
        } else {
          out.push({ i, label: text });
        }
        firstLabel = false;
      }
    });
    return out;
  }
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / 70))));
  for (let i = 0; i < n; i += every) out.push({ i, label: shortDay(days[i]) });
  return out;
}

/** Month names and days of the axis, in the page's language ("4 Mar", "4 mars"). */
const MONTH = new Intl.DateTimeFormat(locale, { month: "short", timeZone: "UTC" });
const MONTH_YEAR = new Intl.DateTimeFormat(locale, { month: "short", year: "numeric", timeZone: "UTC" });
const DAY_MONTH = new Intl.DateTimeFormat(locale, { day: "numeric", month: "short", timeZone: "UTC" });

function shortDay(d) {
  return DAY_MONTH.format(new Date(`${d}T12:00:00Z`));
}

// ------------------------------------------------------------ chart legend & readout

function renderLegend(c) {
  const items = c.audiences.map((a, k) =>
    el("li", {},
      el("span", { class: `key-line c${k % OKABE_ITO.length}`, "aria-hidden": "true" }),
      el("span", { class: "label" }, t("transparency.legend.audience", { audience: audienceName(a), cap: fmtRho(c.caps[a]) }))));
  if (c.audiences.length > 1) {
    items.push(el("li", {},
      el("span", { class: "key-area", "aria-hidden": "true" }),
      el("span", { class: "label" }, t("transparency.legend.total"))));
  }
  items.push(el("li", {},
    el("span", { class: "key-line key-dash c-total", "aria-hidden": "true" }),
    el("span", { class: "label" }, t("transparency.legend.dataset_cap", { cap: fmtRho(c.datasetCap) }))));
  setChildren(ui.legend, items);
}

function readout(i) {
  const c = state.chart;
  if (!c || !c.days.length) return;
  state.cursor = Math.max(0, Math.min(c.days.length - 1, i));
  const k = state.cursor;
  const day = c.days[k];
  const parts = c.audiences.map((a) => {
    const n = c.counts[a][k];
    const vars = { audience: audienceName(a), rho: fmtRho(c.series[a][k]) };
    return n ? tn("transparency.readout.audience_releases", n, { ...vars, n: fmtInt(n) }) : t("transparency.readout.audience", vars);
  });
  const date = new Date(`${day}T12:00:00Z`);
  ui.readout.textContent = t("transparency.readout.day", {
    day: fmtLocalDay(date, "UTC"),
    parts: parts.join(", "),
    total: fmtRho(c.total[k]),
    cap: fmtRho(c.datasetCap),
  });
  drawChart();
}

ui.canvas.addEventListener("mousemove", (e) => {
  const c = state.chart;
  if (!c || !c.geom) return;
  const r = ui.canvas.getBoundingClientRect();
  const x = e.clientX - r.left;
  const { left, pw, n } = c.geom;
  const i = n === 1 ? 0 : Math.round(((x - left) / pw) * (n - 1));
  readout(i);
});
ui.canvas.addEventListener("keydown", (e) => {
  const c = state.chart;
  if (!c || !c.days.length) return;
  const n = c.days.length;
  const cur = state.cursor < 0 ? n - 1 : state.cursor;
  const moves = { ArrowLeft: -1, ArrowRight: 1, PageUp: -30, PageDown: 30 };
  let next = null;
  if (e.key in moves) next = cur + moves[e.key] * (e.shiftKey ? 7 : 1);
  else if (e.key === "Home") next = 0;
  else if (e.key === "End") next = n - 1;
  if (next === null) return;
  e.preventDefault();
  readout(next);
});
ui.canvas.addEventListener("focus", () => {
  if (state.cursor < 0 && state.chart && state.chart.days.length) readout(state.chart.days.length - 1);
});

new ResizeObserver(() => drawChart()).observe(ui.canvas);

// ------------------------------------------------------------ totals

function card(big, what) {
  return el("div", { class: "card" }, el("div", { class: "big" }, big), el("div", { class: "what" }, what));
}

function renderTotals(c, ledger, rows) {
  const delta = ledger.delta;
  const daysWith = c.total.filter((v) => v > EPS).length;
  let peak = 0;
  let peakDay = null;
  c.total.forEach((v, i) => {
    if (v > peak + EPS) {
      peak = v;
      peakDay = c.days[i];
    }
  });
  const atDatasetCap = c.total.filter((v) => v >= c.datasetCap - EPS).length;
  setChildren(ui.cards, [
    card(fmtInt(rows.length), tn("transparency.card.releases", rows.length, { n: fmtInt(rows.length) })),
    card(
      fmtInt(daysWith),
      c.days.length
        ? tn("transparency.card.days_window", daysWith, {
          n: fmtInt(daysWith),
          window: fmtWindow(c.days[0], c.days[c.days.length - 1]),
        })
        : tn("transparency.card.days", daysWith, { n: fmtInt(daysWith) }),
    ),
    card(
      `ρ ${fmtRho(peak)}`,
      peakDay
        ? tn("transparency.card.peak", atDatasetCap, {
          n: fmtInt(atDatasetCap),
          day: peakDay,
          pct: fmtNum((100 * peak) / c.datasetCap, 0),
        })
        : t("transparency.card.peak_none"),
    ),
    card(
      `ρ ${fmtRho(c.datasetCap)}`,
      t("transparency.card.dataset_cap", { eps: fmtEps(epsilonBound(c.datasetCap, delta)), delta: fmtDelta(delta) }),
    ),
  ]);

  const releasesBy = {};
  for (const r of rows) releasesBy[r.audience] = (releasesBy[r.audience] || 0) + 1;
  const totals = ledger.total_rho_by_audience || {};
  const trs = c.audiences.map((a) => {
    const s = c.series[a] || [];
    const cap = c.caps[a];
    const charged = s.filter((v) => v > EPS).length;
    const atCap = Number.isFinite(cap) ? s.filter((v) => v >= cap - EPS).length : 0;
    const top = s.length ? Math.max(...s) : 0;
    const total = Number.isFinite(totals[a]) ? totals[a] : s.reduce((x, y) => x + y, 0);
    return el("tr", {},
      el("th", { scope: "row" }, audienceName(a)),
      el("td", { class: "num" }, Number.isFinite(cap) ? fmtRho(cap) : "–"),
      el("td", { class: "num" }, fmtInt(charged)),
      el("td", { class: "num" }, fmtInt(atCap)),
      el("td", { class: "num" }, fmtRho(top)),
      el("td", { class: "num" }, fmtNum(total, 3)),
      el("td", { class: "num" }, fmtInt(releasesBy[a] || 0)));
  });
  if (!trs.length) trs.push(el("tr", {}, el("td", { colspan: "7" }, t("transparency.totals.none"))));
  trs.push(el("tr", {},
    el("td", { colspan: "7", class: "muted note" }, t("transparency.totals.note"))));
  setChildren(ui.totalsBody, trs);
}

// ------------------------------------------------------------ release table

function fmtCharged(s) {
  if (!s) return "–";
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return s;
  return d.toISOString().slice(0, 16).replace("T", " ");
}

function releaseRow(r) {
  const spec = r.spec || {};
  const what = [
    spec.metric ? metricName(spec.metric) : "?",
    spec.unit === "zone" ? t("transparency.what.zones") : Number.isFinite(spec.res) ? t("transparency.what.res", { res: spec.res }) : null,
    spec.bin ? t("transparency.what.bin", { bin: binName(spec.bin) }) : null,
    spec.period ? periodName(spec.period) : null,
    spec.by && spec.by !== "none" ? byName(spec.by) : null,
  ].filter(Boolean).join(" · ");
  const isPublic = r.audience === "public" && r.state === "published";
  const id = isPublic
    ? el("a", { href: `/api/v1/releases/${encodeURIComponent(r.release_id)}`, class: "mono" }, r.release_id)
    : el("span", { class: "mono", title: t("transparency.release.not_public") }, r.release_id);
  const stateText = r.state ? label("transparency.state", r.state) : "–";
  return el("tr", {},
    el("td", {}, spec.from ? fmtWindow(spec.from, spec.to || spec.from) : "–"),
    el("td", {}, audienceName(r.audience)),
    el("td", {}, what),
    el("td", { class: "num" }, fmtRho(Number(r.rho))),
    el("td", { class: "num" }, r.epsilon === null || r.epsilon === undefined ? "–" : fmtEps(Number(r.epsilon))),
    el("td", { class: "num" }, fmtInt(Number(r.days))),
    el("td", { class: r.state === "charged" ? "state-charged" : "" }, stateText),
    el("td", {}, fmtCharged(r.charged_at)),
    el("td", {}, id));
}

/** The rows the filters keep: audience, metric, unit and a window of days
 * (a release is kept when its window overlaps it). */
function filteredRows() {
  const a = ui.filter.value;
  const m = ui.metricFilter.value;
  const u = ui.unitFilter.value;
  const from = ui.fromFilter.value;
  const to = ui.toFilter.value;
  return state.rows.filter((r) => {
    const spec = r.spec || {};
    const unit = spec.unit || "hex";
    return (!a || r.audience === a)
      && (!m || spec.metric === m)
      && (!u || unit === u)
      && (!from || !spec.to || spec.to >= from)
      && (!to || !spec.from || spec.from <= to);
  });
}

function renderReleases() {
  const rows = filteredRows();
  const shown = rows.slice(0, state.shown);
  const trs = shown.map(releaseRow);
  if (!trs.length) {
    const none = state.rows.length ? "transparency.releases.none_filtered" : "transparency.releases.none";
    trs.push(el("tr", {}, el("td", { colspan: "9" }, t(none))));
  }
  setChildren(ui.body, trs);
  ui.count.textContent = rows.length
    ? t("transparency.releases.count", { shown: fmtInt(shown.length), total: fmtInt(rows.length) })
    : "";
  const rest = rows.length - shown.length;
  ui.more.hidden = rest <= 0;
  ui.all.hidden = rest <= MORE;
  const more = Math.min(MORE, Math.max(0, rest));
  ui.more.textContent = tn("transparency.releases.show_more", more, { n: fmtInt(more) });
  ui.all.textContent = tn("transparency.releases.show_all", rows.length, { n: fmtInt(rows.length) });
}

ui.more.addEventListener("click", () => {
  const first = state.shown;
  state.shown += MORE;
  renderReleases();
  focusRow(first);
});
ui.all.addEventListener("click", () => {
  const first = state.shown;
  state.shown = Infinity;
  renderReleases();
  focusRow(first);
});
for (const f of [ui.filter, ui.metricFilter, ui.unitFilter, ui.fromFilter, ui.toFilter]) {
  f.addEventListener("change", () => {
    state.shown = PAGE;
    renderReleases();
  });
}

/** Keeps keyboard users in place: focus the first newly shown row. */
function focusRow(i) {
  const tr = ui.body.children[i];
  if (!tr) return;
  tr.tabIndex = -1;
  tr.focus();
}

// ------------------------------------------------------------ plain words

function p(...children) {
  return el("p", {}, ...children);
}

function renderModel(ds) {
  const pr = ds.privacy || {};
  const b = pr.bounds || {};
  const delta = pr.delta;
  const cap = pr.rho_per_day_cap;
  const tz = ds.timezone || "UTC";
  const thr = pr.display_threshold;
  const audiences = Object.entries(ds.audiences || {});
  const plan = Array.isArray(ds.publication) ? ds.publication : [];
  const d = fmtDelta(delta);

  const audienceItems = audiences.map(([name, a]) => {
    const area = H3_AREA_KM2[a.finest_res];
    return el("li", {},
      el("strong", {}, audienceName(name)),
      t("transparency.model.audience_limits", {
        rho: fmtRho(a.rho_per_day),
        eps: fmtEps(epsilonBound(a.rho_per_day, delta)),
        delta: d,
        res: a.finest_res,
        area: area ? t("transparency.model.area", { km2: fmtNum(area, area < 1 ? 2 : 1) }) : "",
        bin: label("transparency.model.bin_spoken", a.shortest_bin),
        delay: tn("transparency.model.delay", a.min_delay_days, { n: fmtInt(a.min_delay_days) }),
      }));
  });
  const planItems = plan.map((x) => {
    const vars = { bin: binName(x.bin), metric: metricName(x.metric), res: x.res, rho: fmtRho(x.rho) };
    let key = x.unit === "zone" ? "transparency.model.plan.zone" : "transparency.model.plan.hex";
    if (x.period) {
      vars.period = periodName(x.period);
      if (x.by && x.by !== "none") {
        key += "_period_by";
        vars.by = byName(x.by);
      } else {
        key += "_period";
      }
    }
    return el("li", {}, t(key, vars));
  });

  const blocks = [
    el("h3", {}, t("transparency.model.who.h")),
    p(t("transparency.model.who.p", { tz })),

    el("h3", {}, t("transparency.model.bounds.h")),
    p(t("transparency.model.bounds.intro")),
    el("ul", {},
      el("li", {}, tn("transparency.model.bounds.cells", b.max_cells_per_bin, { n: fmtInt(b.max_cells_per_bin) })),
      el("li", {}, tn("transparency.model.bounds.bins", b.max_bins_per_day, { n: fmtInt(b.max_bins_per_day) })),
      el("li", {}, tn("transparency.model.bounds.trips", b.max_trips_per_day, { n: fmtInt(b.max_trips_per_day) }))),
    p(t("transparency.model.bounds.broken")),

    el("h3", {}, t("transparency.model.rho.h")),
    p(t("transparency.model.rho.p1_before_e", { delta: d }), el("sup", {}, "ε"), t("transparency.model.rho.p1_after_e")),
    p(t("transparency.model.rho.p2", { rho: fmtRho(cap), eps: fmtEps(epsilonBound(cap, delta)), delta: d })),

    el("h3", {}, t("transparency.model.caps.h")),
    p(t("transparency.model.caps.p", { rho: fmtRho(cap) })),
    el("ul", {}, audienceItems),
    planItems.length ? p(t("transparency.model.plan.intro")) : null,
    planItems.length ? el("ul", {}, planItems) : null,

    el("h3", {}, t("transparency.model.noise.h")),
    p(Number.isFinite(thr)
      ? t("transparency.model.noise.p_threshold", { thr: fmtNum(thr, 1) })
      : t("transparency.model.noise.p")),

    el("h3", {}, t("transparency.model.refuses.h")),
    el("ul", {},
      el("li", {}, t("transparency.model.refuses.raw")),
      el("li", {}, t("transparency.model.refuses.fresh_noise")),
      el("li", {}, t("transparency.model.refuses.finer")),
      el("li", {}, t("transparency.model.refuses.cap")),
      el("li", {}, t("transparency.model.refuses.grid"))),
  ];
  setChildren(ui.model, blocks);
}

// ------------------------------------------------------------ start

async function start() {
  const { dataset } = await pickDataset();
  state.ds = dataset;
  showDatasetTitle(dataset);
  renderModel(dataset);
  const q = { dataset: dataset.dataset };
  for (const a of document.querySelectorAll(".site-footer a[href^='/api/v1/']")) {
    a.href = apiUrl(a.getAttribute("href").split("?")[0], q);
  }
  setStatus(t("transparency.status.loading_ledger"), "info");
  const [ledger, list] = await Promise.all([
    api(apiUrl("/api/v1/ledger", q)),
    api(apiUrl("/api/v1/ledger/releases", q)),
  ]);
  state.ledger = ledger;
  const c = chartData(ledger);
  c.datasetCap = Number(ledger.dataset_cap_rho_per_day);
  c.timezone = dataset.timezone || "UTC";
  state.chart = c;
  renderLegend(c);
  drawChart();
  ui.canvas.setAttribute(
    "aria-label",
    c.days.length
      ? t("transparency.chart.aria_days", {
        from: c.days[0],
        to: c.days[c.days.length - 1],
        audiences: c.audiences.map(audienceName).join(", "),
        peak: fmtRho(Math.max(...c.total)),
        cap: fmtRho(c.datasetCap),
      })
      : t("transparency.chart.aria_empty"),
  );

  state.rows = (list.releases || []).slice().sort((a, b) =>
    String(b.charged_at).localeCompare(String(a.charged_at)) || String(b.release_id).localeCompare(String(a.release_id)));
  const auds = [...new Set([...c.audiences, ...state.rows.map((r) => r.audience)])];
  setChildren(ui.filter, el("option", { value: "" }, t("transparency.filter.audience_all")),
    auds.map((a) => el("option", { value: a }, audienceName(a))));
  const metrics = [...new Set(state.rows.map((r) => (r.spec || {}).metric).filter(Boolean))]
    .map((m) => [m, metricName(m)])
    .sort((x, y) => x[1].localeCompare(y[1], locale));
  setChildren(ui.metricFilter, el("option", { value: "" }, t("transparency.filter.metric_all")),
    metrics.map(([m, name]) => el("option", { value: m }, name)));
  renderTotals(c, ledger, state.rows);
  renderReleases();
  setStatus(c.days.length ? "" : t("transparency.status.empty"), "empty");
  document.body.dataset.state = "ready";
}

start().catch((e) => {
  showError(e, t("transparency.status.error"));
  document.body.dataset.state = "error";
});
