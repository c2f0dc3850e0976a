// The views page: seasonality of a zone, an event against its baseline,
// flows between zones and a forecast, all computed by the server from
// public releases (post-processing: no privacy budget is spent). Each
// section shows the server-rendered chart (format=png), tables from the
// JSON of the same endpoint, and the privacy statement of its `source`.

import {
  api, apiUrl, setStatus, showError, el, setChildren,
  fmtInt, fmtNum, fmtRho, fmtDelta, fmtLocalDay,
  pickDataset, showDatasetTitle, binUnit, t, tn, tCode, locale,
} from "/web/common.js";

const $ = (id) => document.getElementById(id);

/** Days standing out listed in the seasonality table. */
const TOP_STANDING = 15;

// ------------------------------------------------------------ words

/** `tn` with the count written in the page's locale ("12,345 days"). */
const count = (key, n, vars = {}) => tn(key, n, { ...vars, n: fmtInt(n) });

const label = tCode;

/** A key part of a free-form code ("United Kingdom" → "united_kingdom"). */
const slug = (code) => String(code).toLowerCase().normalize("NFD").replace(/[\u0300-\u036f]/g, "")
  .replace(/[^a-z0-9]+/g, "_").replace(/^_+|_+$/g, "");

/**
 * `t(key, vars)` as text and nodes: each `{name}` of `nodes` becomes that
 * node (the catalogue's text is never parsed as HTML).
 */
function tNodes(key, vars, nodes) {
  return t(key, vars).split(/(\{\w+\})/).filter(Boolean).map((part) => {
    const m = /^\{(\w+)\}$/.exec(part);
    return m && m[1] in nodes ? nodes[m[1]] : part;
  });
}

const utc = (opts) => new Intl.DateTimeFormat(locale, { ...opts, timeZone: "UTC" });
const monthFmt = utc({ month: "short" });
const monthYearFmt = utc({ month: "short", year: "numeric" });
const weekdayFmt = utc({ weekday: "long" });
const axisDayFmt = utc({ day: "numeric", month: "short" });
const axisDayYearFmt = utc({ day: "numeric", month: "short", year: "2-digit" });
const seriesList = new Intl.ListFormat(locale, { type: "conjunction" });

/** First letter up, for a name that starts a table cell ("janv." → "Janv."). */
const cap = (s) => (s ? s.charAt(0).toLocaleUpperCase(locale) + s.slice(1) : s);

/** Short name of month 1–12 ("Jan", "janv."). */
const monthShort = (m) => (m >= 1 && m <= 12 ? monthFmt.format(Date.UTC(2001, m - 1, 15)) : String(m));

/** "Jan 2025" of "2025-01" (a capital first letter unless `inText`). */
function monthOf(ym, inText = false) {
  const [y, m] = String(ym).split("-").map(Number);
  if (!Number.isFinite(y) || !(m >= 1 && m <= 12)) return String(ym);
  const s = monthYearFmt.format(Date.UTC(y, m - 1, 15));
  return inText ? s : cap(s);
}

/** "Monday" of the server's weekday code ("Mon"). */
const WEEKDAY_CODES = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
function weekdayName(code) {
  const i = WEEKDAY_CODES.indexOf(code);
  // 1 January 2024 was a Monday.
  return i < 0 ? String(code) : cap(weekdayFmt.format(Date.UTC(2024, 0, 1 + i)));
}

/** A segment's name in a sentence ("residents"), or its code. */
const segWord = (s) => label("views.segment", s);

/** A period of the presence policy as the server labels it ("night 00:00–06:00"). */
function periodText(p) {
  const text = String(p ?? "");
  const m = /^(\S+) (\d{1,2}:\d{2})–(\d{1,2}:\d{2})$/.exec(text);
  if (!m) return label("views.period", text);
  return t("views.period_label", { name: label("views.period", m[1]), from: m[2], to: m[3] });
}

/** An origin group's name ("United Kingdom" → "Royaume-Uni"), or the group as published. */
function originName(o) {
  const k = slug(o);
  const s = label("views.origin", k);
  return s === k ? String(o) : s;
}

const PER_BIN = { hour: "1h", day: "1d", week: "1w", month: "1mo" };
const perWord = (w) => (w in PER_BIN ? binUnit(PER_BIN[w]) : w);

/**
 * What a value counts as the server words it ("devices", "device-hours",
 * "device-15-minute intervals", "device-days"), in the page's language.
 */
function counted(what) {
  const stem = (n) => label("views.unitstem", n);
  let m;
  if ((m = /^(.+)-hours$/.exec(what))) return t("views.unit.hours", { name: stem(m[1]) });
  if ((m = /^(.+)-(\d+)-minute intervals$/.exec(what))) return t("views.unit.minutes", { name: stem(m[1]), minutes: m[2] });
  if ((m = /^(.+)-(\d+)-second intervals$/.exec(what))) return t("views.unit.seconds", { name: stem(m[1]), seconds: m[2] });
  if ((m = /^(.+)-days$/.exec(what))) return t("views.unit.days", { name: stem(m[1]) });
  return label("views.unitname", what);
}

/**
 * A value unit as the server writes it ("device-hours per zone per day",
 * "devices summed over the area per hour"), in the page's language: `full`
 * the whole unit, `short` what is counted ("device-hours"). A unit of
 * another form is shown as it comes.
 */
function unitOf(u) {
  const text = String(u ?? "");
  const key = (k) => label("views.unit.key", k);
  let m;
  if ((m = /^(.+) present per (\w+) per (\w+)$/.exec(text))) {
    const n = counted(m[1]);
    return { full: t("views.unit.present", { name: n, key: key(m[2]), per: perWord(m[3]) }), short: n };
  }
  if ((m = /^(.+) summed over the area per (\w+)$/.exec(text))) {
    const n = counted(m[1]);
    return { full: t("views.unit.area", { name: n, per: perWord(m[2]) }), short: n };
  }
  if (text === "trips summed over the period and hour band") {
    return { full: t("views.unit.trips_band"), short: t("views.unit.trips") };
  }
  if (text === "trips summed over the period (daily flows)") {
    return { full: t("views.unit.trips_daily"), short: t("views.unit.trips") };
  }
  if ((m = /^(.+) per (\w+) per (\w+)$/.exec(text))) {
    const n = counted(m[1]);
    return { full: t("views.unit.plain", { name: n, key: key(m[2]), per: perWord(m[3]) }), short: n };
  }
  return { full: text, short: text };
}

/** The server's description of a seasonal baseline, in the page's language. */
function baselineText(text, weeks) {
  const m = /^mean of the same weekday (\d+) weeks before and after(, public holidays left out)?$/.exec(String(text ?? ""));
  if (m) return count(m[2] ? "views.season.baseline.holidays" : "views.season.baseline.plain", Number(m[1]));
  return text ? String(text) : count("views.season.baseline.plain", weeks);
}

/** The server's description of the forecast model, in the page's language. */
function modelText(text) {
  const m = /^level of the last (\d+) weeks × weekday factor × holiday factor \(× same week a year earlier when known\); interval adds DP noise variance to the residual variance$/
    .exec(String(text ?? ""));
  return m ? count("views.forecast.model.seasonal", Number(m[1])) : String(text ?? "");
}

const state = {
  ds: null,
  /** zone_id → name. */
  zoneNames: new Map(),
  delta: NaN,
  /** Section key → what is loading ("the seasonality of …"). */
  pending: new Map(),
  /** Section key → error line. */
  errors: new Map(),
  /** Section key → true once its first load ended (ok or not). */
  settled: new Set(),
};

/** Per section: its elements, request sequence and abort controller. */
const sections = {
  visitors: { label: t("views.section.visitors"), png: false },
  season: { label: t("views.section.season"), png: true },
  event: { label: t("views.section.event"), png: true },
  flows: { label: t("views.section.flows"), png: false },
  forecast: { label: t("views.section.forecast"), png: true },
};
for (const [key, sec] of Object.entries(sections)) {
  sec.key = key;
  sec.section = $(key === "season" ? "seasonality" : key);
  sec.form = $(`${key}-form`);
  sec.out = $(`${key}-out`);
  sec.privacy = $(`${key}-privacy`);
  sec.links = $(`${key}-links`);
  sec.img = $(`${key}-img`);
  sec.imgNote = $(`${key}-img-note`);
  sec.seq = 0;
  sec.ctrl = null;
  sec.pngUrl = null;
  sec.ok = false;
  // Shown in the section when its view cannot be loaded (the detail also goes to #status).
  sec.error = el("p", { class: "view-error", id: `${key}-error`, hidden: true });
  sec.out.before(sec.error);
  if (sec.img) wireImage(sec);
}

// ------------------------------------------------------------ formatting

/** A count, rounded ("12,345"). */
const n0 = (x) => fmtInt(Number.isFinite(x) ? Math.round(x) : NaN);

/** A signed count ("+1,234", "−56", "0"). */
function signed(x) {
  if (!Number.isFinite(x)) return "–";
  const r = Math.round(x);
  if (r === 0) return "0";
  return `${r > 0 ? "+" : "−"}${fmtInt(Math.abs(r))}`;
}

/** "12,345 ± 210". */
const pm = (v, ci) => `${n0(v)} ± ${n0(ci)}`;

/** ρ or ε with 2 decimals (more significant digits only when that would read 0). */
function fmt2(x) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "–";
  const v = Number(x);
  return v !== 0 && Math.abs(v) < 0.005 ? fmtRho(v) : fmtNum(v, 2);
}

/** "Sat 17 May 2025" of an ISO day ("2025-05-17"). */
function fmtDay(iso) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(String(iso))) return String(iso ?? "–");
  return fmtLocalDay(new Date(`${iso}T12:00:00Z`), "UTC");
}

/** "07:00" of an hour 0–24. */
const hh = (h) => `${String(h).padStart(2, "0")}:00`;

/** "8e arrondissement (13208)". */
function zoneLabel(id) {
  const name = state.zoneNames.get(id);
  return name ? `${name} (${id})` : t("views.zone.id", { id });
}

/** The zone's name alone ("8e arrondissement"), or "zone 13208". */
function zoneName(id) {
  return state.zoneNames.get(id) || t("views.zone.id", { id });
}

/**
 * "Computed from 365 public releases at ρ = 0.04 per day (ε = 1.1 at
 * δ = 1e-7); this view spent no privacy budget."
 */
function privacyLine(src) {
  if (!src) return "";
  const n = Number(src.releases) || 0;
  const eps = src.epsilon_per_day_of_source;
  const cost = Number(src.cost_of_this_view);
  const vars = {
    releases: count("views.privacy.releases", n),
    rho: fmt2(src.rho_per_day_of_source),
    eps: fmt2(eps),
    delta: fmtDelta(state.delta),
    cost: !cost ? t("views.privacy.free") : t("views.privacy.cost", { rho: fmt2(cost) }),
  };
  const key = eps === null || eps === undefined
    ? "views.privacy.text"
    : Number.isFinite(state.delta) ? "views.privacy.text_eps_delta" : "views.privacy.text_eps";
  return t(key, vars);
}

function numCell(text, extra = "") {
  return el("td", { class: extra ? `num ${extra}` : "num" }, text);
}

function emptyRow(cols, text) {
  return el("tr", {}, el("td", { colspan: cols, class: "note muted" }, text));
}

// ------------------------------------------------------------ status

/** The status line: every section's error, else what is loading, else nothing. */
function renderStatus() {
  if (state.errors.size) {
    setStatus([...state.errors.values()].join(" — "), "error");
  } else if (state.pending.size) {
    setStatus(t("views.status.loading", { what: [...state.pending.values()].join(", ") }), "info");
  } else {
    setStatus("");
  }
  if (state.pending.size) {
    document.body.dataset.state = "loading";
  } else {
    const all = Object.values(sections);
    document.body.dataset.state = all.some((s) => s.ok) || !all.some((s) => state.settled.has(s.key)) ? "ready" : "error";
  }
}

// ------------------------------------------------------------ charts

function wireImage(sec) {
  sec.img.addEventListener("load", () => {
    if (sec.img.getAttribute("src") !== sec.pngUrl) return;
    sec.img.hidden = false;
    sec.imgNote.hidden = true;
  });
  sec.img.addEventListener("error", () => {
    if (!sec.pngUrl || sec.img.getAttribute("src") !== sec.pngUrl) return;
    sec.img.hidden = true;
    if (sec.ok) {
      sec.imgNote.textContent = t("views.chart.failed");
      sec.imgNote.hidden = false;
    }
  });
}

function setChart(sec, url, alt) {
  if (!sec.img) return;
  sec.pngUrl = url;
  sec.img.alt = alt;
  sec.imgNote.hidden = true;
  if (sec.img.getAttribute("src") !== url) sec.img.src = url;
}

function dropChart(sec) {
  if (!sec.img) return;
  sec.pngUrl = null;
  sec.img.hidden = true;
  sec.img.removeAttribute("src");
  sec.imgNote.hidden = true;
}

function setLinks(sec, jsonUrl, pngUrl) {
  const parts = [
    `${t("views.links.data")} `,
    el("a", { href: jsonUrl, target: "_blank", rel: "noopener" }, "JSON"),
  ];
  if (pngUrl) parts.push(" · ", el("a", { href: pngUrl, target: "_blank", rel: "noopener" }, t("views.links.png")));
  setChildren(sec.links, parts);
}

// ------------------------------------------------------------ loading

/**
 * Loads one section: `params` (without dataset/format) on `path`, the chart
 * when the section has one, then `render(json)`. A newer load of the same
 * section aborts and supersedes the older one.
 */
async function load(sec, { path, params, what, render }) {
  if (sec.ctrl) sec.ctrl.abort();
  const ctrl = new AbortController();
  sec.ctrl = ctrl;
  const seq = ++sec.seq;
  const q = { dataset: state.ds.dataset, ...params };
  const jsonUrl = apiUrl(path, q);
  const pngUrl = sec.png ? apiUrl(path, { ...q, format: "png" }) : null;

  state.errors.delete(sec.key);
  state.pending.set(sec.key, what);
  sec.section.dataset.state = "loading";
  sec.out.setAttribute("aria-busy", "true");
  sec.out.classList.add("is-loading");
  renderStatus();
  // Charts are drawn in the page from the JSON (SVG, readable on a phone);
  // the server's PNG of the same view stays as an export link.

  try {
    const data = await api(jsonUrl, { signal: ctrl.signal });
    if (seq !== sec.seq) return;
    render(data);
    sec.ok = true;
    sec.error.hidden = true;
    sec.out.hidden = false;
    sec.privacy.textContent = privacyLine(data.source);
    setLinks(sec, jsonUrl, pngUrl);
    sec.section.dataset.state = "ready";
  } catch (e) {
    if (seq !== sec.seq || (e && e.name === "AbortError")) return;
    sec.ok = false;
    dropChart(sec);
    sec.out.hidden = true;
    const message = e instanceof Error ? e.message : String(e);
    sec.error.textContent = t("views.error.nothing", { message });
    sec.error.hidden = false;
    sec.section.dataset.state = "error";
    state.errors.set(sec.key, t("views.error.section", { section: sec.label, message }));
    showError(e, sec.label);
  } finally {
    if (seq === sec.seq) {
      sec.ctrl = null;
      state.pending.delete(sec.key);
      state.settled.add(sec.key);
      sec.out.setAttribute("aria-busy", "false");
      sec.out.classList.remove("is-loading");
      renderStatus();
    }
  }
}

/** Submits on Enter and on the Update button; native validation first. */
function onSubmit(sec, run, check = null) {
  sec.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (check) check();
    if (!sec.form.reportValidity()) return;
    run();
  });
}

/** An integer input's value clamped to its min/max (the default when empty). */
function intOf(input, fallback) {
  const v = Math.round(Number(input.value));
  if (!input.value || !Number.isFinite(v)) return fallback;
  return Math.min(Number(input.max), Math.max(Number(input.min), v));
}

// ------------------------------------------------------------ 1. seasonality

const season = {
  zone: $("season-zone"),
  weeks: $("season-weeks"),
  weekdayUnit: $("season-weekday-unit"),
  weekdayBody: $("season-weekday-body"),
  monthsHead: $("season-months-head"),
  monthsBody: $("season-months-body"),
  standingNote: $("season-standing-note"),
  standing: $("season-standing"),
  standingBody: $("season-standing-body"),
};

function loadSeasonality() {
  const zone = season.zone.value;
  const weeks = intOf(season.weeks, 4);
  return load(sections.season, {
    path: "/api/v1/views/seasonality",
    params: { zone, weeks },
    what: t("views.load.season", { zone: zoneName(zone) }),
    render: (d) => renderSeasonality(d, weeks),
  });
}

function renderSeasonality(d, weeks) {
  const daily = d.daily || [];
  const unit = unitOf(d.unit || "devices per zone per day").full;
  const zone = d.zone;
  drawChart("season", [
    {
      label: t("views.season.series", { zone: zoneName(zone) }),
      colour: "#0072B2",
      points: daily.map((p) => ({ x: dayX(p.day), y: p.value, lo: p.value - p.ci95, hi: p.value + p.ci95 })),
    },
  ], xDay, daily.map((p) => p.ci95), unit);

  // Chart description from the data it draws.
  if (daily.length) {
    const vals = daily.map((p) => p.value).filter(Number.isFinite);
    const hi = daily.reduce((a, p) => (p.value > a.value ? p : a), daily[0]);
    sections.season.img.alt = t("views.season.alt", {
      zone: zoneLabel(zone),
      from: fmtDay(daily[0].day),
      to: fmtDay(daily[daily.length - 1].day),
      days: count("views.n.day", daily.length),
      min: n0(Math.min(...vals)),
      max: n0(Math.max(...vals)),
      unit,
      peak: fmtDay(hi.day),
    });
  }

  // Weekday profile.
  season.weekdayUnit.textContent = `(${unit})`;
  const wk = d.weekday_profile || [];
  setChildren(
    season.weekdayBody,
    wk.length
      ? wk.map((w) => el("tr", {},
        el("th", { scope: "row" }, weekdayName(w.weekday)),
        numCell(n0(w.mean)),
        numCell(n0(w.ci95)),
        numCell(Number.isFinite(w.days) ? fmtInt(w.days) : "–")))
      : emptyRow(4, t("views.season.no_day")),
  );

  // Months, one column per year.
  const byYear = d.months_by_year || {};
  const years = Object.keys(byYear).sort();
  const months = [...new Set(years.flatMap((y) => (byYear[y] || []).map((m) => m.month)))].sort((a, b) => a - b);
  const cell = new Map();
  for (const y of years) for (const m of byYear[y] || []) cell.set(`${y}-${m.month}`, m);
  setChildren(
    season.monthsHead,
    el("tr", {},
      el("th", { scope: "col" }, t("views.col.month")),
      years.map((y) => el("th", { scope: "col", class: "num" }, y))),
  );
  setChildren(
    season.monthsBody,
    months.length
      ? months.map((m) => el("tr", {},
        el("th", { scope: "row" }, cap(monthShort(m))),
        years.map((y) => {
          const c = cell.get(`${y}-${m}`);
          if (!c) return numCell("–", "muted");
          const full = new Date(Date.UTC(Number(y), m, 0)).getUTCDate();
          const partial = Number.isFinite(c.days) && c.days < full;
          return numCell([
            pm(c.mean, c.ci95),
            partial ? el("span", { class: "cell-note" }, ` (${count("views.n.day", c.days)})`) : null,
          ]);
        })))
      : emptyRow(Math.max(2, years.length + 1), t("views.season.no_month")),
  );

  // Days standing out, largest relative to their error bar first.
  const ratio = (e) => Math.abs(e.excess) / (e.ci95 > 0 ? e.ci95 : Number.MIN_VALUE);
  const out = (d.standing_out || []).filter((e) => e.stands_out !== false).slice().sort((a, b) => ratio(b) - ratio(a));
  const top = out.slice(0, TOP_STANDING);
  const baseline = baselineText(d.baseline, weeks);
  const total = count("views.n.published_day", daily.length);
  season.standingNote.textContent = !out.length
    ? t("views.season.standing.none", { baseline })
    : out.length > top.length
      ? count("views.season.standing.top", out.length, { total, baseline, top: fmtInt(top.length) })
      : count("views.season.standing.all", out.length, { total, baseline });
  season.standing.hidden = !top.length;
  setChildren(
    season.standingBody,
    top.map((e) => el("tr", {},
      el("th", { scope: "row" }, fmtDay(e.day)),
      numCell(n0(e.value)),
      numCell(n0(e.baseline)),
      numCell(signed(e.excess), e.excess >= 0 ? "pos" : "neg"),
      numCell(n0(e.ci95)),
      numCell(e.ci95 > 0 ? `${fmtNum(ratio(e), 1)}×` : "–"))),
  );
}

// ------------------------------------------------------------ 2. event

const evUi = {
  date: $("event-date"),
  zone: $("event-zone"),
  weeks: $("event-weeks"),
  summary: $("event-summary"),
  detail: $("event-detail"),
  hoursNote: $("event-hours-note"),
  hours: $("event-hours"),
  hoursBody: $("event-hours-body"),
};

function loadEvent() {
  const date = evUi.date.value;
  const zone = evUi.zone.value;
  const weeks = intOf(evUi.weeks, 4);
  return load(sections.event, {
    path: "/api/v1/views/event",
    params: { date, zone, weeks },
    what: t("views.load.event", { zone: zoneName(zone), date }),
    render: (d) => renderEvent(d, zone),
  });
}

function renderEvent(d, zone) {
  const hourly = d.hours || [];
  // The unit of an hourly value as the server words it (the releases' own
  // bin and counting unit); "devices" only when an older server says none.
  const unit = unitOf(d.unit || "devices summed over the area per hour");
  drawChart("event", [
    {
      label: d.date || t("views.event.series.day"),
      colour: "#D55E00",
      points: hourly.map((h) => ({ x: h.hour + 0.5, y: h.value, lo: h.value - h.ci95, hi: h.value + h.ci95 })),
    },
    {
      label: count("views.event.series.baseline", Number(d.baseline_days) || 0),
      colour: "#0072B2",
      dashed: true,
      points: hourly.map((h) => ({ x: h.hour + 0.5, y: h.baseline, lo: h.baseline - h.baseline_ci95, hi: h.baseline + h.baseline_ci95 })),
    },
  ], (x) => `${String(Math.floor(x)).padStart(2, "0")}:00`, hourly.map((h) => h.ci95), unit.full);
  const tot = d.day_total || {};
  const hours = d.hours || [];
  const base = Number(d.baseline_days) || 0;
  const stands = Math.abs(tot.excess) > tot.excess_ci95;

  // Chart description.
  if (hours.length) {
    const peak = hours.reduce((a, h) => (h.excess > a.excess ? h : a), hours[0]);
    sections.event.img.alt = t("views.event.alt", {
      zone: zoneLabel(zone),
      day: fmtDay(d.date),
      weeks: count("views.n.earlier_week", base),
      from: hh(peak.hour),
      to: hh(peak.hour + 1),
      value: n0(peak.value),
      baseline: n0(peak.baseline),
    });
  }

  setChildren(
    evUi.summary,
    el("strong", {}, t("views.event.summary.excess", { excess: signed(tot.excess), ci: n0(tot.excess_ci95), unit: unit.short })),
    " ",
    count(stands ? "views.event.summary.stands" : "views.event.summary.within", base),
  );
  const hexes = Number(d.hexes) || 0;
  evUi.detail.textContent = t(hexes ? "views.event.detail.hexes" : "views.event.detail", {
    day: fmtDay(d.date),
    zone: zoneLabel(zone),
    hexes: count("views.n.hex", hexes),
    value: pm(tot.value, tot.ci95),
    baseline: pm(tot.baseline, tot.baseline_ci95),
    unit: unit.full,
    hours: count("views.n.hour", hours.length),
  });

  const out = hours.filter((h) => h.stands_out).sort((a, b) => a.hour - b.hour);
  evUi.hoursNote.textContent = out.length
    ? count("views.event.hours.some", out.length, { total: fmtInt(hours.length) })
    : t("views.event.hours.none");
  evUi.hours.hidden = !out.length;
  setChildren(
    evUi.hoursBody,
    out.map((h) => el("tr", {},
      el("th", { scope: "row" }, `${hh(h.hour)}–${hh(h.hour + 1)}`),
      numCell(n0(h.value)),
      numCell(n0(h.ci95)),
      numCell(n0(h.baseline)),
      numCell(n0(h.baseline_ci95)),
      numCell(signed(h.excess), h.excess >= 0 ? "pos" : "neg"),
      numCell(n0(h.excess_ci95)))),
  );
}

// ------------------------------------------------------------ 3. flows

const flows = {
  from: $("flows-from"),
  to: $("flows-to"),
  hours: $("flows-hours"),
  weekdays: $("flows-weekdays"),
  summary: $("flows-summary"),
  unit: $("flows-unit"),
  largestBody: $("flows-largest-body"),
  totalsBody: $("flows-totals-body"),
};

function loadFlows() {
  const from = flows.from.value;
  const to = flows.to.value;
  return load(sections.flows, {
    path: "/api/v1/views/flows",
    params: { from, to, hours: flows.hours.value, weekdays: flows.weekdays.checked ? "true" : "false", top: 20 },
    what: t("views.load.flows", { from, to }),
    render: renderFlows,
  });
}

/** The "to" day may not precede the "from" day. */
function checkFlowDates() {
  const bad = flows.from.value && flows.to.value && flows.to.value < flows.from.value;
  flows.to.setCustomValidity(bad ? t("views.flows.invalid_range") : "");
  if (bad) flows.to.setAttribute("aria-invalid", "true");
  else flows.to.removeAttribute("aria-invalid");
}

function flowBar(f, max) {
  const pct = (x) => `${Math.max(0, Math.min(100, (x / max) * 100)).toFixed(2)}%`;
  const fill = el("span", { class: "flow-bar-fill" });
  fill.style.width = pct(f.trips);
  const err = el("span", { class: "flow-bar-err" });
  const lo = Math.max(0, f.trips - f.ci95);
  err.style.left = pct(lo);
  err.style.width = pct(f.trips + f.ci95 - lo);
  return el("div", { class: "flow-bar", "aria-hidden": "true" }, fill, err);
}

function renderFlows(d) {
  const [h0, h1] = Array.isArray(d.hours) ? d.hours : [0, 24];
  const bins = Number(d.bins_used ?? d.hourly_bins_used) || 0;
  setChildren(
    flows.summary,
    t(d.weekdays_only ? "views.flows.summary.weekdays" : "views.flows.summary.every_day", {
      from: fmtDay(d.from),
      to: fmtDay(d.to),
      hours: `${hh(h0)}–${hh(h1)}`,
    }),
    " ",
    bins
      ? count(d.bin === "1d" ? "views.flows.summary.days" : "views.flows.summary.bins", bins)
      : el("strong", {}, t("views.flows.summary.none")),
  );
  flows.unit.textContent = `(${unitOf(d.unit || "trips summed over the period and hour band").full})`;

  const largest = d.largest || [];
  const max = Math.max(1, ...largest.map((f) => (f.trips || 0) + (f.ci95 || 0)));
  setChildren(
    flows.largestBody,
    largest.length
      ? largest.map((f, i) => el("tr", {},
        numCell(String(i + 1), "rank muted"),
        el("th", { scope: "row", class: "flow-pair" },
          el("span", { class: "flow-names" },
            f.origin === f.dest
              ? tNodes("views.flows.within", {}, { zone: el("span", { title: f.origin }, f.origin_name || f.origin) })
              : [el("span", { title: f.origin }, f.origin_name || f.origin), " → ", el("span", { title: f.dest }, f.dest_name || f.dest)]),
          flowBar(f, max)),
        numCell(n0(f.trips)),
        numCell(n0(f.ci95))))
      : emptyRow(4, t("views.flows.no_flow")),
  );

  setChildren($("flows-map"), flowMap(largest));

  const totals = d.totals || [];
  setChildren(
    flows.totalsBody,
    totals.length
      ? totals.map((z) => el("tr", {},
        el("th", { scope: "row" }, z.name && z.name !== z.zone ? `${z.name} (${z.zone})` : String(z.zone)),
        numCell(n0(z.out)),
        numCell(n0(z.out_ci95)),
        numCell(n0(z.in)),
        numCell(n0(z.in_ci95))))
      : emptyRow(5, t("views.flows.no_zone")),
  );
}

/**
 * The largest flows as a map: zone outlines from the dataset's area, an
 * arc per flow bending to the right of travel, width by trips (up to 14 px),
 * an arrowhead at the destination; a ring for trips within a zone.
 */
function flowMap(largest) {
  const zones = state.zoneShapes || [];
  const W = Math.max(300, Math.round($("flows-map").clientWidth || 900));
  const root = svg("svg", { "aria-hidden": "true" });
  if (!zones.length) return root;
  // Equirectangular at the area's latitude: fine at a city's scale.
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const z of zones) for (const ring of z.rings) for (const [x, y] of ring) {
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
  const pad = 12;
  const scale = (W - 2 * pad) / Math.max(1e-9, (x1 - x0) * k);
  const H = Math.round((y1 - y0) * scale + 2 * pad);
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.setAttribute("width", W);
  root.setAttribute("height", H);
  const P = ([x, y]) => [pad + (x - x0) * k * scale, pad + (y1 - y) * scale];
  const defs = svg("defs");
  defs.append(svg("marker", { id: "flow-head", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 4, markerHeight: 4, orient: "auto-start-reverse" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#0b5cad" })));
  root.append(defs);
  for (const z of zones) {
    const d = z.rings.map((ring) => `M${ring.map((p) => P(p).map((v) => v.toFixed(1)).join(",")).join("L")}Z`).join(" ");
    root.append(svg("path", { d, fill: "#f1f2f4", stroke: "#9aa1ab", "stroke-width": 1 }));
  }
  const centre = new Map(zones.map((z) => [z.id, P(z.label)]));
  const max = Math.max(1, ...largest.map((f) => f.trips || 0));
  // Smallest first, so the largest are on top.
  for (const f of [...largest].sort((a, b) => a.trips - b.trips)) {
    const a = centre.get(f.origin);
    const b = centre.get(f.dest);
    if (!a || !b || !(f.trips > 0)) continue;
    const w = 1 + (13 * f.trips) / max;
    const title = svg("title");
    title.textContent = t("views.flows.arc", {
      from: f.origin_name || f.origin,
      to: f.dest_name || f.dest,
      trips: n0(f.trips),
      ci: n0(f.ci95),
    });
    if (f.origin === f.dest) {
      root.append(svg("circle", { cx: a[0], cy: a[1], r: 6 + w, fill: "none", stroke: "#0b5cad", "stroke-opacity": 0.7, "stroke-width": Math.min(w, 6) }, title));
      continue;
    }
    const [dx, dy] = [b[0] - a[0], b[1] - a[1]];
    const c = [(a[0] + b[0]) / 2 - 0.18 * dy, (a[1] + b[1]) / 2 + 0.18 * dx];
    root.append(svg("path", {
      d: `M${a[0].toFixed(1)},${a[1].toFixed(1)} Q${c[0].toFixed(1)},${c[1].toFixed(1)} ${b[0].toFixed(1)},${b[1].toFixed(1)}`,
      fill: "none", stroke: "#0b5cad", "stroke-opacity": 0.75, "stroke-width": w.toFixed(1), "stroke-linecap": "round",
      "marker-end": "url(#flow-head)",
    }, title));
  }
  return root;
}

// ------------------------------------------------------------ 4. forecast

const forecast = {
  zone: $("forecast-zone"),
  days: $("forecast-days"),
  backtest: $("forecast-backtest"),
  model: $("forecast-model"),
  unit: $("forecast-unit"),
  body: $("forecast-body"),
};

function loadForecast() {
  const zone = forecast.zone.value;
  const days = intOf(forecast.days, 14);
  return load(sections.forecast, {
    path: "/api/v1/views/forecast",
    params: { zone, days },
    what: t("views.load.forecast", { zone: zoneName(zone) }),
    render: (d) => renderForecast(d, zone),
  });
}

function renderForecast(d, zone) {
  const f = d.forecast || {};
  const days = f.days || [];
  const unitInfo = unitOf(d.unit || "devices per zone per day");
  const unit = unitInfo.full;
  drawChart("forecast", [
    {
      label: t("views.forecast.series.published"),
      colour: "#0072B2",
      points: (d.recent || []).map((p) => ({ x: dayX(p.day), y: p.value, lo: p.value - p.ci95, hi: p.value + p.ci95 })),
    },
    {
      label: t("views.forecast.series.forecast"),
      colour: "#E69F00",
      dashed: true,
      points: days.map((p) => ({ x: dayX(p.day), y: p.value, lo: p.lo, hi: p.hi })),
    },
  ], xDay, (d.recent || []).map((p) => p.ci95), unit);
  const recent = d.recent || [];

  if (days.length) {
    sections.forecast.img.alt = t(recent.length ? "views.forecast.alt_recent" : "views.forecast.alt", {
      zone: zoneLabel(zone),
      recent: count("views.n.published_day", recent.length),
      recent_from: recent.length ? fmtDay(recent[0].day) : "",
      recent_to: recent.length ? fmtDay(recent[recent.length - 1].day) : "",
      from: fmtDay(days[0].day),
      to: fmtDay(days[days.length - 1].day),
      min: n0(Math.min(...days.map((x) => x.value))),
      max: n0(Math.max(...days.map((x) => x.value))),
      unit,
    });
  }

  forecast.unit.textContent = `(${unit})`;
  setChildren(
    forecast.body,
    days.length
      ? days.map((x) => el("tr", { class: x.holiday ? "is-holiday" : null },
        el("th", { scope: "row" }, fmtDay(x.day)),
        numCell(n0(x.value)),
        numCell(`${n0(x.lo)} – ${n0(x.hi)}`),
        el("td", {}, x.holiday ? t("views.forecast.holiday") : "")))
      : emptyRow(4, t("views.forecast.none")),
  );

  forecast.model.textContent = f.model ? t("views.forecast.model", { model: modelText(f.model) }) : "";

  const b = f.backtest;
  if (b && Number(b.days_scored) > 0) {
    const better = b.mae_model < b.mae_seasonal_naive;
    setChildren(
      forecast.backtest,
      el("strong", {}, t("views.forecast.backtest.h")),
      " ",
      t(better ? "views.forecast.backtest.better" : "views.forecast.backtest.worse", {
        forecasts: count("views.n.forecast_made", Number(b.origins) || 0),
        scored: count("views.n.day_scored", Number(b.days_scored) || 0),
        horizon: count("views.n.day", Number(b.horizon_days) || 0),
        mae: n0(b.mae_model),
        naive: n0(b.mae_seasonal_naive),
        // The error is in the unit of the daily values it is measured on.
        unit: unitInfo.short,
        coverage: fmtNum(100 * b.coverage95, 0),
      }),
    );
  } else {
    forecast.backtest.textContent = t("views.forecast.backtest.none");
  }
}

// ------------------------------------------------------------ 0. visitors

const visitorsUi = {
  zone: $("visitors-zone"),
  measure: $("visitors-measure"),
  summary: $("visitors-summary"),
  chart: $("visitors-chart"),
  legend: $("visitors-legend"),
  unit: $("visitors-unit"),
  monthsBody: $("visitors-months-body"),
  originsMonth: $("visitors-origins-month"),
  originsBody: $("visitors-origins-body"),
  last: null,
};

/** Colour-blind-safe colours of the segments (Okabe–Ito), in the policy's order. */
const SEGMENT_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"];

/** The figure in the chosen measure: people where published, else devices. */
function measured(f) {
  const people = visitorsUi.measure.value === "people" && f && f.people !== null && f.people !== undefined;
  return people
    ? { v: f.people, ci: f.people_ci95, people: true }
    : { v: f ? f.devices : NaN, ci: f ? f.devices_ci95 : NaN, people: false };
}

function loadVisitors() {
  const zone = visitorsUi.zone.value;
  const params = zone ? { zone } : {};
  return load(sections.visitors, {
    path: "/api/v1/views/visitors",
    params,
    what: zone ? t("views.load.visitors", { zone: zoneName(zone) }) : t("views.load.visitors_all"),
    render: (d) => {
      visitorsUi.last = d;
      renderVisitors(d);
    },
  });
}

/**
 * A line chart with 95 % bands, drawn at the container's width: `series`
 * of {label, colour, points: [{x, y, lo, hi}]} (x numeric), `xLabel(x)` for
 * the axis. A band is never thinner than 3 px, so that a narrow error bar
 * is still seen; the caption says how wide the bars are.
 */
function lineChart(container, series, xLabel) {
  const W = Math.max(300, Math.round(container.clientWidth || 1000));
  const H = Math.round(Math.min(360, Math.max(220, W * 0.36)));
  const L = 64, R = 10, T = 10, B = 28;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, "aria-hidden": "true" });
  const all = series.flatMap((s) => s.points);
  if (!all.length) return root;
  const xs = all.map((p) => p.x);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const top = Math.max(1, ...all.map((p) => p.hi));
  const X = (x) => L + ((W - L - R) * (x - x0)) / Math.max(1e-9, x1 - x0);
  const Y = (y) => T + (H - T - B) * (1 - Math.max(0, y) / top);
  for (const v of [0, top / 2, top]) {
    root.append(svg("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: "#d4d8dd", "stroke-width": 1 }));
    const tx = svg("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end", "font-size": 12, fill: "#333" });
    tx.textContent = compact(v);
    root.append(tx);
  }
  // As many date labels as fit ("18 nov. 25" is longer than "18 Nov 25").
  const ticks = Math.max(2, Math.min(6, Math.floor((W - L - R) / 100)));
  for (let k = 0; k <= ticks; k++) {
    const x = x0 + ((x1 - x0) * k) / ticks;
    const tx = svg("text", { x: X(x), y: H - 8, "font-size": 12, fill: "#333", "text-anchor": k === 0 ? "start" : k === ticks ? "end" : "middle" });
    tx.textContent = xLabel(x);
    root.append(tx);
  }
  for (const s of series) {
    const pts = s.points;
    if (!pts.length) continue;
    // The band: y ± its bar, at least 3 px tall.
    const up = pts.map((p) => [X(p.x), Math.min(Y(p.hi), Y(p.y) - 1.5)]);
    const down = pts.map((p) => [X(p.x), Math.max(Y(p.lo), Y(p.y) + 1.5)]).reverse();
    root.append(svg("polygon", { points: [...up, ...down].map((q) => q.map((v) => v.toFixed(1)).join(",")).join(" "), fill: s.colour, opacity: 0.28 }));
    root.append(svg("polyline", {
      points: pts.map((p) => `${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join(" "),
      fill: "none", stroke: s.colour, "stroke-width": 1.8, "stroke-dasharray": s.dashed ? "6 4" : null,
    }));
  }
  return root;
}

/** Draws a view's chart into `#<key>-svg` with its legend and what its
 * bands mean (the median bar, said in numbers: at a district's scale the
 * bands are thin because the noise is small). */
function drawChart(key, series, xLabel, bars, unit) {
  const box = $(`${key}-svg`);
  if (!box) return;
  const sorted = bars.filter(Number.isFinite).sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
  box.replaceChildren(lineChart(box, series, xLabel));
  box.setAttribute("aria-label", t("views.chart.label", { series: seriesList.format(series.map((s) => s.label)), unit, median: n0(median) }));
  const legend = box.nextElementSibling && box.nextElementSibling.classList.contains("chart-legend")
    ? box.nextElementSibling
    : box.insertAdjacentElement("afterend", el("p", { class: "muted chart-legend" }));
  setChildren(legend, chartLegend(series, t("views.chart.legend", { unit, median: n0(median) })));
}

/** A legend for `lineChart`: a swatch and label per series. */
function chartLegend(series, note) {
  // One element per entry (the legend wraps as a flex row): a swatch stays
  // with its label.
  const items = series.map((s) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = s.colour;
    return el("span", {}, sw, ` ${s.label}`);
  });
  return [...items, el("span", {}, note)];
}

const dayX = (iso) => Date.parse(`${iso}T12:00:00Z`) / 86400000;
const xDay = (x) => (x > 0 ? axisDayYearFmt : axisDayFmt).format(Math.round(x) * 86400000);

/** "1.12 M", "84.3 k", "950": axis labels that fit their margin. */
function compact(v) {
  if (v >= 1e6) return `${fmtNum(v / 1e6, 2)} M`;
  if (v >= 1e4) return `${fmtNum(v / 1e3, 1)} k`;
  return n0(v);
}

/** A count for display: the unbiased estimate can be slightly negative
 * (noise around a true 0); a table shows it as 0, sums keep the estimate. */
const shownCount = (x) => n0(Math.max(0, x));

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  for (const k of kids) e.append(k);
  return e;
}

/** Stacked daily segments as an SVG chart that scales with the page. */
function visitorsChart(d) {
  const days = d.daily || [];
  const segs = d.segments || [];
  // Drawn at the container's own width, so text stays readable on a phone.
  const W = Math.max(300, Math.round(visitorsUi.chart.clientWidth || 1000));
  const H = Math.round(Math.min(340, Math.max(200, W * 0.32)));
  const L = 64, R = 10, T = 10, B = 28;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, "aria-hidden": "true" });
  if (!days.length) return root;
  const stacks = days.map((x) => {
    let acc = 0;
    return segs.map((s) => {
      const f = (x.segments || []).find((y) => y.segment === s);
      const v = Math.max(0, measured(f).v || 0);
      const lo = acc;
      acc += v;
      return [lo, acc];
    });
  });
  const top = Math.max(1, ...stacks.map((st) => (st.length ? st[st.length - 1][1] : 0)));
  const x = (i) => L + ((W - L - R) * (i + 0.5)) / days.length;
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (let k = segs.length - 1; k >= 0; k--) {
    const upper = stacks.map((st, i) => `${x(i).toFixed(1)},${y(st[k][1]).toFixed(1)}`);
    const lower = stacks.map((st, i) => `${x(i).toFixed(1)},${y(st[k][0]).toFixed(1)}`).reverse();
    root.append(svg("polygon", { points: [...upper, ...lower].join(" "), fill: SEGMENT_COLOURS[k % SEGMENT_COLOURS.length], opacity: 0.85 }));
  }
  // Axis: 0, the top and month starts.
  for (const v of [0, top / 2, top]) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#c8ccd2", "stroke-width": 1 }));
    const tx = svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 13, fill: "#333" });
    tx.textContent = compact(v);
    root.append(tx);
  }
  // Month starts, each far enough from the one before to be read ("févr.").
  let lastLabel = -Infinity;
  days.forEach((dd, i) => {
    if ((dd.day.endsWith("-01") || i === 0) && x(i) - lastLabel >= 46) {
      lastLabel = x(i);
      const tx = svg("text", { x: x(i), y: H - 8, "font-size": 13, fill: "#333" });
      const m = Number(dd.day.slice(5, 7));
      tx.textContent = m >= 1 && m <= 12 ? monthShort(m) : dd.day;
      root.append(tx);
    }
  });
  return root;
}

function renderVisitors(d) {
  const days = d.daily || [];
  const segs = d.segments || [];
  const anyPeople = days.some((x) => x.total && x.total.people !== null);
  // What a device figure counts, after the view's own unit ("devices").
  const devices = unitOf(d.unit || "devices present per zone per day").short;
  const unitWord = visitorsUi.measure.value === "people" ? t("views.visitors.unit.people", { devices }) : devices;
  visitorsUi.unit.textContent = d.night_period
    ? t("views.visitors.caption.night", { unit: unitWord, period: periodText(d.night_period) })
    : t("views.visitors.caption.no_night", { unit: unitWord });
  setChildren(visitorsUi.chart, visitorsChart(d));
  const where = d.zone === "all" ? t("views.zone.every") : zoneLabel(d.zone);
  const dayPeriod = periodText(d.day_period);
  visitorsUi.chart.setAttribute(
    "aria-label",
    days.length
      ? t("views.visitors.chart_label", {
        where,
        period: dayPeriod,
        from: fmtDay(days[0].day),
        to: fmtDay(days[days.length - 1].day),
        segments: segs.map(segWord).join(", "),
      })
      : t("views.visitors.no_day"),
  );
  const swatch = (k) => {
    const e = el("span", { class: "swatch" });
    e.style.background = SEGMENT_COLOURS[k % SEGMENT_COLOURS.length];
    return e;
  };
  setChildren(
    visitorsUi.legend,
    ...segs.flatMap((s, k) => [swatch(k), ` ${segWord(s)}  `]),
    t("views.visitors.legend", { period: dayPeriod, unit: unitWord }),
  );
  const last = days[days.length - 1];
  if (last) {
    const parts = (last.segments || []).map((f) => {
      const m = measured(f);
      return t("views.visitors.summary.part", { value: pm(m.v, m.ci), segment: segWord(f.segment) });
    });
    visitorsUi.summary.textContent = t("views.visitors.summary", { day: fmtDay(last.day), where, parts: parts.join(", ") }) +
      (anyPeople || visitorsUi.measure.value === "devices" ? "" : ` ${t("views.visitors.no_factor", { unit: devices })}`);
  } else {
    visitorsUi.summary.textContent = t("views.visitors.no_day");
  }
  const months = d.monthly || [];
  setChildren(
    visitorsUi.monthsBody,
    months.length
      ? months.map((m) => {
        const n = measured(m.nights);
        const v = measured(m.day_visitors);
        const yoy = m.year_over_year;
        const yoyText = yoy && yoy.nights_change_pct !== null
          ? t("views.visitors.yoy", {
            change: `${yoy.nights_change_pct >= 0 ? "+" : "−"}${fmtNum(Math.abs(yoy.nights_change_pct), 1)}`,
            ci: fmtNum(yoy.nights_change_pct_ci95, 1),
          })
          : "–";
        return el("tr", {},
          el("th", { scope: "row" }, monthOf(m.month)),
          numCell(fmtInt(m.days)),
          numCell(n0(n.v)), numCell(n0(n.ci)),
          numCell(n0(v.v)), numCell(n0(v.ci)),
          numCell(yoyText));
      })
      : emptyRow(7, t("views.visitors.no_month")),
  );
  // Origins of the latest month that has them.
  const withOrigins = months.filter((m) => (m.top_origins || []).length);
  const om = withOrigins[withOrigins.length - 1];
  if (!om) {
    visitorsUi.originsMonth.textContent = t("views.visitors.origins.none");
    setChildren(visitorsUi.originsBody, emptyRow(5, t("views.visitors.origins.later")));
    return;
  }
  visitorsUi.originsMonth.textContent = t("views.visitors.origins.month", { month: monthOf(om.month, true), period: dayPeriod });
  const max = Math.max(1, ...om.top_origins.map((o) => measured(o).v + measured(o).ci));
  setChildren(
    visitorsUi.originsBody,
    om.top_origins.map((o, i) => {
      const m = measured(o);
      return el("tr", {},
        numCell(String(i + 1), "rank"),
        el("td", { class: "flow-pair" }, el("span", { class: "flow-names" }, originName(o.origin)), flowBar({ trips: m.v, ci95: m.ci }, max)),
        numCell(shownCount(measured(o.tourists).v)),
        numCell(shownCount(measured(o.excursionists).v)),
        numCell(pm(m.v, m.ci)));
    }),
  );
}

// ------------------------------------------------------------ start

function fillZones(zones) {
  const opts = () => zones.map((z) => el("option", { value: z.zone_id }, z.name ? `${z.name} (${z.zone_id})` : z.zone_id));
  const wanted = zones[0].zone_id;
  setChildren(visitorsUi.zone, el("option", { value: "" }, t("views.zone.all")), ...opts());
  visitorsUi.zone.value = "";
  for (const select of [season.zone, evUi.zone, forecast.zone]) {
    setChildren(select, opts());
    select.value = wanted;
  }
}

async function start() {
  setStatus(t("views.status.dataset"), "info");
  const { dataset } = await pickDataset();
  state.ds = dataset;
  showDatasetTitle(dataset);
  state.delta = Number(dataset.privacy && dataset.privacy.delta);
  const zones = Array.isArray(dataset.zones) ? dataset.zones.filter((z) => z && z.zone_id) : [];
  for (const z of zones) state.zoneNames.set(z.zone_id, z.name || z.zone_id);
  // Zone outlines and label points for the flow map (public geometry).
  try {
    const area = await api(`/api/v1/datasets/${encodeURIComponent(dataset.dataset)}/area`);
    state.zoneShapes = (area.features || [])
      .filter((f) => f.properties && f.properties.kind === "zone" && Array.isArray(f.properties.label_point))
      .map((f) => ({
        id: String(f.properties.zone_id),
        label: f.properties.label_point,
        rings: (f.geometry.type === "MultiPolygon" ? f.geometry.coordinates : [f.geometry.coordinates]).map((poly) => poly[0]),
      }));
  } catch {
    state.zoneShapes = [];
  }

  onSubmit(sections.flows, loadFlows, checkFlowDates);
  flows.from.addEventListener("input", checkFlowDates);
  flows.to.addEventListener("input", checkFlowDates);

  const loads = [];
  if (zones.length) {
    fillZones(zones);
    onSubmit(sections.visitors, loadVisitors);
    // The measure redraws what is loaded; no new request.
    visitorsUi.measure.addEventListener("change", () => {
      if (visitorsUi.last) renderVisitors(visitorsUi.last);
    });
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => visitorsUi.last && setChildren(visitorsUi.chart, visitorsChart(visitorsUi.last)), 150);
    });
    onSubmit(sections.season, loadSeasonality);
    onSubmit(sections.event, loadEvent);
    onSubmit(sections.forecast, loadForecast);
    loads.push(loadVisitors(), loadSeasonality(), loadEvent());
  } else {
    for (const key of ["visitors", "season", "event", "forecast"]) {
      const sec = sections[key];
      for (const c of sec.form.elements) c.disabled = true;
      sec.out.hidden = true;
      sec.error.textContent = t("views.error.no_zones");
      sec.error.hidden = false;
      state.settled.add(key);
    }
  }
  loads.push(loadFlows());
  if (zones.length) loads.push(loadForecast());
  await Promise.all(loads);
}

start().catch((e) => {
  showError(e, t("views.error.start"));
  document.body.dataset.state = "error";
});
