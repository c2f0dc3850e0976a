// Shared helpers of the hexflow viewer: API access, the status line, the
// colour scale, Web Mercator, time and number formatting, DOM building.
// No dependency, no request outside this origin. Words come from i18n.js.

import { t, locale } from "/web/i18n.js";

export { t, tn, tCode, lang, locale } from "/web/i18n.js";

/** An API failure, with the problem document's `detail` as its message. */
export class ApiError extends Error {
  constructor(message, status = 0, problem = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
  }
}

/**
 * GET `path` (same origin) and parse its JSON body. A non-2xx answer throws
 * an ApiError whose message is the problem+json `detail` (or its title, or
 * the HTTP status when the body is not a problem document).
 */
/** An API token typed into the page: kept in this module's memory only
 * (never stored), sent on every API request while set. */
let bearer = null;
export function setToken(token) {
  bearer = token && token.trim() ? token.trim() : null;
}
export const hasToken = () => bearer !== null;

export async function api(path, { signal } = {}) {
  let resp;
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  try {
    resp = await fetch(path, { headers, signal });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(t("common.unreachable", { path }));
  }
  if (!resp.ok) {
    let problem = null;
    try {
      problem = await resp.json();
    } catch {
      // not JSON: fall through to the status text
    }
    const msg =
      (problem && (problem.detail || problem.title)) ||
      t("common.http_error", { status: `${resp.status} ${resp.statusText || ""}`.trim(), path });
    throw new ApiError(msg, resp.status, problem);
  }
  try {
    return await resp.json();
  } catch {
    throw new ApiError(t("common.not_json", { path }), resp.status);
  }
}

/** A URL path with an encoded query string (undefined/null/"" values skipped). */
export function apiUrl(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// ---------------------------------------------------------------- status

/**
 * Shows `message` in `#status`. kind: "info" (loading, notes), "empty"
 * (nothing to show), "error". An empty message clears the line.
 */
export function setStatus(message, kind = "info") {
  const box = document.getElementById("status");
  if (!box) return;
  box.textContent = message || "";
  box.dataset.kind = message ? kind : "";
  box.hidden = !message;
}

/** Shows an error (an Error or a string) in `#status` and logs it. */
export function showError(err, context = "") {
  if (err && err.name === "AbortError") return;
  const msg = err instanceof Error ? err.message : String(err);
  // eslint-disable-next-line no-console
  console.error(context || "hexflow", err);
  setStatus(context ? `${context}: ${msg}` : msg, "error");
}

// ---------------------------------------------------------------- colours

/** Viridis anchors (matplotlib's, every 1/8). */
const VIRIDIS = [
  "#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c",
  "#28ae80", "#5ec962", "#addc30", "#fde725",
].map(hexToRgb);

/** Grey of values flagged `low` (below the display threshold): off the scale. */
export const LOW_GREY = "#c8c8c8";

/** Okabe–Ito, a palette readable with the common colour-vision deficiencies. */
export const OKABE_ITO = [
  "#0072B2", "#E69F00", "#009E73", "#CC79A7",
  "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

function hexToRgb(h) {
  const n = parseInt(h.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** Viridis at t ∈ [0, 1] (clamped) as [r, g, b]. */
export function viridis(t) {
  if (!Number.isFinite(t)) t = 0;
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * f));
}

/** Viridis at t as a CSS colour. */
export function viridisCss(t, alpha = 1) {
  const [r, g, b] = viridis(t);
  return alpha >= 1 ? `rgb(${r},${g},${b})` : `rgba(${r},${g},${b},${alpha})`;
}

// ---------------------------------------------------------------- mercator

/** Latitude limit of Web Mercator (°). */
export const MAX_LAT = 85.0511;

/**
 * Web Mercator world coordinates in [0, 1] (multiply by 256·2^z for the
 * pixel coordinates of zoom z): u = (lon+180)/360,
 * v = (1 − ln(tan φ + sec φ)/π)/2.
 */
export function project(lon, lat) {
  const phi = (Math.min(MAX_LAT, Math.max(-MAX_LAT, lat)) * Math.PI) / 180;
  return [
    (lon + 180) / 360,
    (1 - Math.log(Math.tan(phi) + 1 / Math.cos(phi)) / Math.PI) / 2,
  ];
}

/** The inverse of `project`: [lon, lat] of world coordinates (u, v). */
export function unproject(u, v) {
  const lon = u * 360 - 180;
  const lat = (Math.atan(Math.sinh(Math.PI * (1 - 2 * v))) * 180) / Math.PI;
  return [lon, lat];
}

/** Mercator pixel coordinates at zoom z (256-px tiles). */
export function mercatorPx(lon, lat, z) {
  const [u, v] = project(lon, lat);
  const size = 256 * 2 ** z;
  return { x: u * size, y: v * size };
}

/** Is point (x, y) inside the ring [[x, y], …] (even–odd rule)? */
export function pointInRing(x, y, ring) {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i];
    const [xj, yj] = ring[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** Is (x, y) inside a polygon given as rings (outer first, then holes)? */
export function pointInPolygon(x, y, rings) {
  if (!rings.length || !pointInRing(x, y, rings[0])) return false;
  for (let k = 1; k < rings.length; k++) if (pointInRing(x, y, rings[k])) return false;
  return true;
}

// ---------------------------------------------------------------- numbers

const intFmt = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });

/** A count with thousands separators ("12,345"). */
export function fmtInt(n) {
  return Number.isFinite(n) ? intFmt.format(n) : "–";
}

/** A number with at most `digits` decimals, trailing zeros dropped. */
export function fmtNum(x, digits = 2) {
  if (!Number.isFinite(x)) return "–";
  return new Intl.NumberFormat(locale, { maximumFractionDigits: digits }).format(x);
}

/** ρ as written ("0.1", "0.05", "0.0125"). */
export function fmtRho(rho) {
  if (!Number.isFinite(rho)) return "–";
  return new Intl.NumberFormat(locale, { maximumSignificantDigits: 4, useGrouping: false }).format(rho);
}

/** ε as written ("2.7", "6.18"). */
export function fmtEps(eps) {
  if (eps === null || eps === undefined) return "–";
  if (!Number.isFinite(eps)) return "∞";
  return fmtNum(eps, eps < 1 ? 3 : 2);
}

/** δ in scientific notation ("1e-7"). */
export function fmtDelta(delta) {
  if (!Number.isFinite(delta)) return "–";
  return Number(delta).toExponential().replace("e+", "e").replace(/\.0+e/, "e");
}

/**
 * Classical upper bound of ε at δ for ρ-zCDP: ε ≤ ρ + 2·√(ρ·ln(1/δ)).
 * (Releases carry OpenDP's tighter figure; this is used for caps only.)
 */
export function epsilonBound(rho, delta) {
  return rho + 2 * Math.sqrt(rho * Math.log(1 / delta));
}

// ---------------------------------------------------------------- time

/** Name of a bin length ("hourly"), or the length itself when unknown. */
export const binName = (bin) => (["1h", "1d", "1w", "1mo"].includes(bin) ? t(`common.bin.${bin}`) : bin);
/** Per what a value of that bin length is counted ("hour"). */
export const binUnit = (bin) => (["1h", "1d", "1w", "1mo"].includes(bin) ? t(`common.per.${bin}`) : bin);

const fmtCache = new Map();
function dtf(tz, opts) {
  const key = tz + JSON.stringify(opts);
  let f = fmtCache.get(key);
  if (!f) {
    f = new Intl.DateTimeFormat(locale, { ...opts, timeZone: tz });
    fmtCache.set(key, f);
  }
  return f;
}

function parts(date, tz, opts) {
  const out = {};
  for (const p of dtf(tz, opts).formatToParts(date)) out[p.type] = p.value;
  return out;
}

/** "Tue 4 Mar 2025" of `date` in `tz`. */
export function fmtLocalDay(date, tz) {
  const p = parts(date, tz, { weekday: "short", day: "numeric", month: "short", year: "numeric" });
  return `${p.weekday} ${p.day} ${p.month} ${p.year}`;
}

/** "08:00" of `date` in `tz`. */
export function fmtLocalTime(date, tz) {
  const p = parts(date, tz, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  return `${p.hour}:${p.minute}`;
}

/** "2025-03-04" (the local day of `date` in `tz`). */
export function localIsoDay(date, tz) {
  const p = parts(date, tz, { year: "numeric", month: "2-digit", day: "2-digit" });
  return `${p.year}-${p.month}-${p.day}`;
}

/** Offset of `tz` from UTC at instant `ms` (milliseconds, local − UTC). */
function tzOffsetMs(ms, tz) {
  const p = parts(new Date(ms), tz, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });
  const asUtc = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
  return asUtc - Math.floor(ms / 1000) * 1000;
}

/** The UTC instant (ms) of local midnight of `isoDay` ("2025-03-04") in `tz`. */
export function localMidnightUtc(isoDay, tz) {
  const [y, m, d] = isoDay.split("-").map(Number);
  const guess = Date.UTC(y, m - 1, d);
  let t = guess - tzOffsetMs(guess, tz);
  t = guess - tzOffsetMs(t, tz);
  return t;
}

/** Whole days from isoDay a to isoDay b. */
export function daysBetween(a, b) {
  const p = (s) => {
    const [y, m, d] = s.split("-").map(Number);
    return Date.UTC(y, m - 1, d);
  };
  return Math.round((p(b) - p(a)) / 86400000);
}

/** isoDay plus n days. */
export function addDays(isoDay, n) {
  const [y, m, d] = isoDay.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
}

/**
 * The local time range of a bin starting at `startIso` of length `bin`
 * ("1h", "1d", "1w", "1mo") in `tz`, e.g.
 * "Tue 4 Mar 2025, 08:00–09:00 Europe/Paris".
 */
/** The UTC offset of `date` in `tz`, "+02:00". */
export function fmtOffset(date, tz) {
  const name = new Intl.DateTimeFormat("en-GB", { timeZone: tz, timeZoneName: "longOffset" })
    .formatToParts(date)
    .find((p) => p.type === "timeZoneName");
  const m = /GMT([+-]\d{2}):?(\d{2})?/.exec(name ? name.value : "");
  return m ? `${m[1]}:${m[2] || "00"}` : "+00:00";
}

/** "HH:MM" plus `minutes`, on a 24-hour clock. */
function addClock(hhmm, minutes) {
  const [h, m] = hhmm.split(":").map(Number);
  const t = (((h * 60 + m + minutes) % 1440) + 1440) % 1440;
  return `${String(Math.floor(t / 60)).padStart(2, "0")}:${String(t % 60).padStart(2, "0")}`;
}

export function fmtBinRange(startIso, bin, tz) {
  const start = new Date(startIso);
  if (Number.isNaN(start.getTime())) return "";
  switch (bin) {
    case "1h": {
      // On a day the clocks change, each hour says its offset: the autumn
      // day has two hours from 02:00 (+02:00, then +01:00), the spring day
      // none from 02:00. An hour is shown in its start's offset.
      const day = localIsoDay(start, tz);
      const dayStart = new Date(localMidnightUtc(day, tz));
      const dayEnd = new Date(localMidnightUtc(addDays(day, 1), tz));
      const from = fmtLocalTime(start, tz);
      if (fmtOffset(dayStart, tz) !== fmtOffset(dayEnd, tz)) {
        return `${fmtLocalDay(start, tz)}, ${from}–${addClock(from, 60)} ${fmtOffset(start, tz)} ${tz}`;
      }
      const end = new Date(start.getTime() + 3600 * 1000);
      return `${fmtLocalDay(start, tz)}, ${from}–${fmtLocalTime(end, tz)} ${tz}`;
    }
    case "1d":
      return t("common.range.day", { day: fmtLocalDay(start, tz), tz });
    case "1w": {
      const day = localIsoDay(start, tz);
      const last = localMidnightUtc(addDays(day, 6), tz);
      return `${fmtLocalDay(start, tz)} – ${fmtLocalDay(new Date(last), tz)} ${tz}`;
    }
    case "1mo": {
      const p = parts(start, tz, { month: "long", year: "numeric" });
      return `${p.month} ${p.year} ${tz}`;
    }
    default:
      return t("common.range.from", { day: fmtLocalDay(start, tz), time: fmtLocalTime(start, tz), tz });
  }
}

/** "2025-03-04" or "2025-03-04 – 2025-03-10". */
export function fmtWindow(from, to) {
  return from === to ? from : `${from} – ${to}`;
}

// ---------------------------------------------------------------- DOM

/**
 * Builds an element: el("a", {href: "/x", class: "c"}, "text", child…).
 * Attributes with value false/null/undefined are skipped; text is never
 * parsed as HTML.
 */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** Replaces the children of `node`. */
export function setChildren(node, ...children) {
  node.replaceChildren();
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** The dataset to show: `?dataset=` when served, else the first one. */
export async function pickDataset() {
  const { datasets } = await api("/api/v1/datasets");
  if (!datasets || !datasets.length) {
    throw new ApiError(t("common.no_dataset"));
  }
  const wanted = new URLSearchParams(location.search).get("dataset");
  const ds = (wanted && datasets.find((d) => d.dataset === wanted)) || datasets[0];
  return { dataset: ds, all: datasets };
}

/** Fills the header's dataset title (`#dataset-title`). */
export function showDatasetTitle(ds) {
  const t = document.getElementById("dataset-title");
  if (t) t.textContent = ds.title || ds.dataset;
  if (ds.title && !document.title.endsWith(ds.title)) document.title = `${document.title} · ${ds.title}`;
}
