// The map page: choose a public footfall release (day, resolution,
// release), step or play through its time bins, and draw its hexes on a
// Web Mercator canvas with the viridis scale, the study-area outline and
// landmarks. Optional basemap tiles only when the user sets a template.

import {
  api, apiUrl, setStatus, showError, el, setChildren,
  viridisCss, LOW_GREY, project, pointInPolygon,
  fmtInt, fmtNum, fmtRho, fmtEps, fmtDelta, fmtBinRange, fmtWindow,
  binName, binUnit, localMidnightUtc, daysBetween, addDays,
  pickDataset, showDatasetTitle, setToken, t, tn, tCode,
} from "/web/common.js";

const $ = (id) => document.getElementById(id);

const codeLabel = tCode;

/** A published value as a plain integer ("3645"): no grouping, so that what
 * the map shows reads exactly as in the CSV and GeoJSON downloads. */
const plain = (x) => (Number.isFinite(x) ? String(Math.round(x)) : "–");

const ui = {
  form: $("controls"),
  metric: $("metric"),
  segment: $("segment"),
  segmentField: $("segment-field"),
  tokenForm: $("token-form"),
  token: $("token"),
  audience: $("audience"),
  tokenForget: $("token-forget"),
  res: $("res"),
  date: $("date"),
  dayPrev: $("day-prev"),
  dayNext: $("day-next"),
  release: $("release"),
  slider: $("slider"),
  play: $("play"),
  playIcon: document.querySelector("#play .play-icon"),
  playText: document.querySelector("#play .play-text"),
  binLabel: $("bin-label"),
  canvas: $("map"),
  wrap: $("map-wrap"),
  tooltip: $("tooltip"),
  zoomIn: $("zoom-in"),
  zoomOut: $("zoom-out"),
  resetView: $("reset-view"),
  attribution: $("attribution"),
  legendTicks: $("legend-ticks"),
  legendUnit: $("legend-unit"),
  legendLowText: $("legend-low-text"),
  legendNote: $("legend-note"),
  privacy: $("privacy"),
  privacyDetail: $("privacy-detail"),
  csv: $("download-csv"),
  geojson: $("download-geojson"),
  png: $("download-png"),
  tilejson: $("tilejson"),
  allCsv: $("download-all-csv"),
  manifestLink: $("manifest-link"),
  topBody: $("top-body"),
  basemapForm: $("settings-form"),
  basemapUrl: $("basemap-url"),
  basemapClear: $("basemap-clear"),
  basemapMsg: $("basemap-msg"),
};

const ctx = ui.canvas.getContext("2d");

/** How long each bin shows while playing (ms). */
const PLAY_STEP_MS = 700;
/** Landmarks always named (highest weight first). */
const NAMED_LANDMARKS = 12;
const MAX_ZOOM = 18;
const BASEMAP_KEY = "hexflow.basemap-url";
/** Hexes no cell covers: near-white, distinct from the grey of "below threshold". */
const NO_COVERAGE = "#fafafa";
const BIN_ORDER = { "1h": 0, "1d": 1, "1w": 2, "1mo": 3 };
const BACKGROUND = "#f2f3ef";

const state = {
  ds: null,
  /** `footfall`, or `presence:<period>` (people per zone by period). */
  metric: "footfall",
  /** Presence: a segment, or `all` (the segments summed). */
  segment: "all",
  /** Whose releases are listed (other than public: with a token). */
  audience: "public",
  /** zone_id → name. */
  zoneNames: new Map(),
  tz: "UTC",
  /** Study area: polygons as rings of [u, v] world coordinates. */
  area: [],
  areaBox: null,
  /** Landmarks with world coordinates, highest weight first. */
  landmarks: [],
  /** Named zones: {id, name, polys (world rings), label [u, v]}. */
  zones: [],
  /** Per resolution: {total, first, last, lastHourly}. */
  spans: new Map(),
  releases: [],
  release: null,
  /** values?format=json&bin=0 of the release: unit, scale_max, threshold. */
  meta: null,
  manifest: null,
  bin: 0,
  /** Hexes of the shown bin: {id, value, ci95, low, binStart, rings, box, c, fill}. */
  hexes: [],
  features: [],
  /** release_id/bin → Promise of {hexes, features}. */
  binCache: new Map(),
  view: { u: 0.5, v: 0.5, z: 2 },
  fitZ: 2,
  size: { w: 0, h: 0, dpr: 1 },
  fitted: false,
  playing: false,
  playTimer: 0,
  binSeq: 0,
  listSeq: 0,
  releaseSeq: 0,
  /** The raster template drawn (from the typed template, or read from the
   * typed style URL), and the credit line its style or TileJSON gives. */
  basemap: "",
  basemapCredit: "",
  basemapSeq: 0,
  /** What is counted, in the policy's words ("devices"), from a release's unit. */
  unitName: "devices",
  tiles: new Map(),
  tileErrors: 0,
  /** The hex or zone a tap selected (in the URL as `sel`). */
  selected: null,
  /** The last fragment written, and what its history entry shows. */
  writtenHash: "",
  historyKey: "",
  /** While a fragment is applied, its history entry is rewritten, not added. */
  applying: false,
  /** The hex under the pointer / keyboard probe, and where. */
  hover: null,
  hoverAt: null,
  probe: false,
  drawQueued: false,
  initialHash: parseHash(),
};

// ------------------------------------------------------------ test hooks

const hooks = {
  ready: false,
  release: null,
  bin: null,
  features: [],
  /**
   * Viewport (client) coordinates of the centre of hex `hexId` in the
   * current bin, scrolling the map into view first when the point is off
   * screen; null when the hex is not drawn.
   */
  screenPointOfHex(hexId) {
    const h = state.hexes.find((x) => x.id === hexId);
    if (!h) return null;
    const [sx, sy] = toScreen(h.c[0], h.c[1]);
    let r = ui.canvas.getBoundingClientRect();
    const y = r.top + sy;
    if (y < 0 || y > window.innerHeight || r.left + sx < 0 || r.left + sx > window.innerWidth) {
      ui.canvas.scrollIntoView({ block: "center", inline: "nearest" });
      r = ui.canvas.getBoundingClientRect();
    }
    return { x: r.left + sx, y: r.top + sy };
  },
  /** Ids of the hexes drawn in the current bin. */
  hexes() {
    return state.hexes.map((h) => h.id);
  },
};
window.hexflow = hooks;

// ------------------------------------------------------------ URL state

function parseHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const out = {};
  if (/^\d{4}-\d{2}-\d{2}$/.test(p.get("date") || "")) out.date = p.get("date");
  if (/^\d{1,2}$/.test(p.get("res") || "")) out.res = Number(p.get("res"));
  if (p.get("release")) out.release = p.get("release");
  if (/^\d+$/.test(p.get("bin") || "")) out.bin = Number(p.get("bin"));
  if (/^(footfall|presence:[\w-]+)$/.test(p.get("show") || "")) out.metric = p.get("show");
  if (/^[\w-]+$/.test(p.get("who") || "")) out.segment = p.get("who");
  // The view: zoom and centre in Web Mercator world units (0–1).
  const z = Number(p.get("z"));
  const u = Number(p.get("u"));
  const v = Number(p.get("v"));
  if ([z, u, v].every(Number.isFinite) && p.get("z") !== null && u >= 0 && u <= 1 && v >= 0 && v <= 1) {
    out.view = { z: Math.min(MAX_ZOOM, Math.max(0, z)), u, v };
  }
  if (/^[\w-]{1,32}$/.test(p.get("sel") || "")) out.selected = p.get("sel");
  return out;
}

const isPresence = () => state.metric.startsWith("presence:");
const presencePeriod = () => state.metric.slice("presence:".length);

/** The page state as a URL fragment. */
function hashOf() {
  const p = new URLSearchParams({
    show: state.metric,
    date: ui.date.value,
    res: ui.res.value,
    release: state.release.release_id,
    bin: String(state.bin),
    z: state.view.z.toFixed(2),
    u: state.view.u.toFixed(6),
    v: state.view.v.toFixed(6),
  });
  if (isPresence()) p.set("who", state.segment);
  if (state.selected) p.set("sel", state.selected);
  return `#${p}`;
}

/**
 * Writes the state into the URL: a new history entry when the release or
 * day changes (so Back returns to the previous one), the same entry for a
 * new bin, view or selection (playing must not flood the history).
 */
function writeHash() {
  if (!state.release) return;
  const hash = hashOf();
  if (hash === location.hash) return;
  const key = `${state.release.release_id}|${ui.date.value}|${state.metric}|${state.segment}`;
  const url = `${location.pathname}${location.search}${hash}`;
  if (!state.applying && state.historyKey && state.historyKey !== key) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  state.historyKey = key;
  state.writtenHash = hash;
}

let viewHashTimer = 0;
/** The view in the URL, once panning or zooming pauses. */
function writeViewSoon() {
  clearTimeout(viewHashTimer);
  viewHashTimer = setTimeout(writeHash, 400);
}

/**
 * Applies a URL fragment the user typed, pasted, or went Back/Forward to:
 * every part of the state it names (show, who, resolution, day, release,
 * bin, view, selected hex).
 */
async function applyHash() {
  if (location.hash === state.writtenHash) return;
  state.applying = true;
  try {
    await applyHashNow();
  } finally {
    state.applying = false;
  }
}

async function applyHashNow() {
  const h = parseHash();
  state.writtenHash = location.hash;
  if (h.view) {
    state.view = { ...h.view };
    state.fitted = true;
  }
  state.selected = h.selected || null;
  const metric = h.metric && [...ui.metric.options].some((o) => o.value === h.metric) ? h.metric : "footfall";
  const segment = h.segment || "all";
  if (metric !== state.metric || (metric !== "footfall" && segment !== state.segment)) {
    ui.metric.value = metric;
    if (h.date) ui.date.value = h.date;
    await changeMetric(metric, segment);
  }
  if (!isPresence() && h.res && [...ui.res.options].some((o) => o.value === String(h.res))) ui.res.value = String(h.res);
  const sameRelease = state.release && h.release === state.release.release_id && (!h.date || h.date === ui.date.value);
  if (sameRelease && Number.isInteger(h.bin) && h.bin !== state.bin) {
    await showBin(Math.min(h.bin, Number(ui.slider.max)));
  } else if (!sameRelease) {
    if (h.date) ui.date.value = h.date;
    await loadReleases(h.release, h.bin);
  } else {
    afterViewChange();
    showSelected();
  }
}
window.addEventListener("hashchange", () => applyHash().catch((e) => showError(e, t("map.err.link"))));
window.addEventListener("popstate", () => applyHash().catch((e) => showError(e, t("map.err.link"))));

/** The tooltip of the hex (or zone) named in the URL, when it is drawn. */
function showSelected() {
  if (!state.selected) return;
  const hx = state.hexes.find((h) => h.id === state.selected);
  if (!hx) return;
  const [x, y] = toScreen(hx.c[0], hx.c[1]);
  if (x < 0 || y < 0 || x > state.size.w || y > state.size.h) return;
  state.probe = false;
  updateHover(x, y);
}

// ------------------------------------------------------------ view maths

function scale() {
  return 256 * 2 ** state.view.z;
}

function toScreen(u, v) {
  const s = scale();
  return [(u - state.view.u) * s + state.size.w / 2, (v - state.view.v) * s + state.size.h / 2];
}

function fromScreen(x, y) {
  const s = scale();
  return [state.view.u + (x - state.size.w / 2) / s, state.view.v + (y - state.size.h / 2) / s];
}

function clampZoom(z) {
  return Math.min(MAX_ZOOM, Math.max(state.fitZ - 3, z));
}

/** Zooms by dz keeping screen point (x, y) fixed (default: the centre). */
function zoomBy(dz, x = state.size.w / 2, y = state.size.h / 2) {
  const [u, v] = fromScreen(x, y);
  state.view.z = clampZoom(state.view.z + dz);
  const s = scale();
  state.view.u = u - (x - state.size.w / 2) / s;
  state.view.v = v - (y - state.size.h / 2) / s;
  afterViewChange();
}

function panBy(dx, dy) {
  const s = scale();
  state.view.u -= dx / s;
  state.view.v -= dy / s;
  // Keep the study area reachable.
  if (state.areaBox) {
    const [u0, v0, u1, v1] = state.areaBox;
    state.view.u = Math.min(u1, Math.max(u0, state.view.u));
    state.view.v = Math.min(v1, Math.max(v0, state.view.v));
  }
  afterViewChange();
}

function afterViewChange() {
  if (state.probe) probeCentre();
  else if (state.hover && state.hoverAt) updateHover(state.hoverAt[0], state.hoverAt[1]);
  scheduleDraw();
  if (state.release) writeViewSoon();
}

/** Fits the study area (or the dataset's bbox) in the canvas. */
function fitView() {
  let box = state.areaBox;
  if (!box && state.ds && Array.isArray(state.ds.bbox)) {
    const [a, b, c, d] = state.ds.bbox;
    const [u0, v1] = project(a, b);
    const [u1, v0] = project(c, d);
    box = [u0, v0, u1, v1];
  }
  if (!box || !state.size.w || !state.size.h) return;
  const [u0, v0, u1, v1] = box;
  const pad = state.size.w < 500 ? 0.96 : 0.9;
  const zw = Math.log2((state.size.w * pad) / (Math.max(u1 - u0, 1e-9) * 256));
  const zh = Math.log2((state.size.h * pad) / (Math.max(v1 - v0, 1e-9) * 256));
  state.fitZ = Math.min(zw, zh);
  state.view = { u: (u0 + u1) / 2, v: (v0 + v1) / 2, z: Math.min(MAX_ZOOM, state.fitZ) };
  state.fitted = true;
  afterViewChange();
}

// ------------------------------------------------------------ canvas size

/**
 * The map's height: what the first screen has left below the controls (the
 * map, its legend and the time control in sight at once, on a phone too),
 * at least 260 px, at most 1100 px.
 */
function fitMapHeight() {
  const top = ui.canvas.getBoundingClientRect().top + window.scrollY;
  const h = Math.max(260, Math.min(1100, Math.floor(window.innerHeight - top - 10)));
  if (ui.canvas.style.height !== `${h}px`) ui.canvas.style.height = `${h}px`;
}

function resizeCanvas() {
  fitMapHeight();
  const r = ui.canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width));
  const h = Math.max(1, Math.round(r.height));
  if (w === state.size.w && h === state.size.h && dpr === state.size.dpr) return;
  state.size = { w, h, dpr };
  ui.canvas.width = Math.round(w * dpr);
  ui.canvas.height = Math.round(h * dpr);
  if (!state.fitted && (state.areaBox || state.ds)) fitView();
  drawNow();
}

// ------------------------------------------------------------ drawing

function scheduleDraw() {
  if (state.drawQueued) return;
  state.drawQueued = true;
  requestAnimationFrame(() => {
    state.drawQueued = false;
    drawNow();
  });
}

function tracePolygon(rings) {
  for (const ring of rings) {
    for (let i = 0; i < ring.length; i++) {
      const [x, y] = toScreen(ring[i][0], ring[i][1]);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    }
    ctx.closePath();
  }
}

function boxVisible(box) {
  const [x0, y0] = toScreen(box[0], box[1]);
  const [x1, y1] = toScreen(box[2], box[3]);
  return x1 >= 0 && y1 >= 0 && x0 <= state.size.w && y0 <= state.size.h;
}

function drawNow() {
  const { w, h, dpr } = state.size;
  if (!w || !h) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = BACKGROUND;
  ctx.fillRect(0, 0, w, h);
  if (state.basemap) drawTiles();
  drawHexes();
  drawZones();
  drawArea();
  const taken = drawLandmarks();
  drawZoneLabels(taken);
  drawHover();
}

/** The named zones' outlines (context: the districts people know). */
function drawZones() {
  if (!state.zones.length) return;
  ctx.beginPath();
  for (const z of state.zones) for (const poly of z.polys) tracePolygon(poly);
  ctx.setLineDash([5, 4]);
  ctx.lineWidth = 1.2;
  ctx.strokeStyle = "rgba(29,35,48,0.55)";
  ctx.stroke();
  ctx.setLineDash([]);
}

/** Zone names where they fit: never over a landmark, its label or another
 * zone's name; fewer when zoomed out. */
function drawZoneLabels(taken) {
  if (!state.zones.length) return;
  ctx.font = "italic 600 12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  ctx.textBaseline = "middle";
  for (const z of state.zones) {
    if (!z.label) continue;
    const [x, y] = toScreen(z.label[0], z.label[1]);
    const tw = ctx.measureText(z.name).width;
    const rect = [x - tw / 2 - 2, y - 8, x + tw / 2 + 2, y + 8];
    if (rect[0] < 0 || rect[1] < 0 || rect[2] > state.size.w || rect[3] > state.size.h) continue;
    if (taken.some((r) => rect[0] < r[2] && rect[2] > r[0] && rect[1] < r[3] && rect[3] > r[1])) continue;
    taken.push(rect);
    ctx.lineWidth = 3.5;
    ctx.lineJoin = "round";
    ctx.strokeStyle = "rgba(255,255,255,0.9)";
    ctx.strokeText(z.name, x - tw / 2, y);
    ctx.fillStyle = "#3a4150";
    ctx.fillText(z.name, x - tw / 2, y);
  }
}

function drawTiles() {
  const tz = Math.max(0, Math.min(19, Math.round(state.view.z)));
  const n = 2 ** tz;
  const tileSize = (256 * 2 ** state.view.z) / n;
  const [u0, v0] = fromScreen(0, 0);
  const [u1, v1] = fromScreen(state.size.w, state.size.h);
  const x0 = Math.max(0, Math.floor(u0 * n));
  const x1 = Math.min(n - 1, Math.floor(u1 * n));
  const y0 = Math.max(0, Math.floor(v0 * n));
  const y1 = Math.min(n - 1, Math.floor(v1 * n));
  if ((x1 - x0 + 1) * (y1 - y0 + 1) > 200) return;
  for (let x = x0; x <= x1; x++) {
    for (let y = y0; y <= y1; y++) {
      const img = tile(tz, x, y);
      if (!img || !img.complete || !img.naturalWidth) continue;
      const [sx, sy] = toScreen(x / n, y / n);
      ctx.drawImage(img, sx, sy, tileSize + 0.5, tileSize + 0.5);
    }
  }
}

function tile(z, x, y) {
  const url = state.basemap
    .replaceAll("{z}", z)
    .replaceAll("{x}", x)
    .replaceAll("{y}", y)
    .replaceAll("{-y}", 2 ** z - 1 - y)
    .replaceAll("{s}", "abc"[(x + y) % 3])
    .replaceAll("{r}", state.size.dpr > 1.5 ? "@2x" : "");
  let img = state.tiles.get(url);
  if (img) return img;
  if (state.tiles.size > 400) {
    // Forget the oldest tiles (Map keeps insertion order).
    const drop = [...state.tiles.keys()].slice(0, 200);
    for (const k of drop) state.tiles.delete(k);
  }
  img = new Image();
  img.decoding = "async";
  img.referrerPolicy = "no-referrer";
  img.onload = scheduleDraw;
  img.onerror = () => {
    state.tileErrors += 1;
    if (state.tileErrors === 3) {
      setStatus(t("map.basemap.tiles_fail", { host: hostOf(state.basemap) }), "error");
    }
  };
  img.src = url;
  state.tiles.set(url, img);
  return img;
}

function drawHexes() {
  if (!state.hexes.length) return;
  const outlines = scale() * (state.hexes[0].box[2] - state.hexes[0].box[0]) > 7;
  ctx.globalAlpha = state.basemap ? 0.78 : 1;
  for (const hx of state.hexes) {
    if (!boxVisible(hx.box)) continue;
    ctx.beginPath();
    tracePolygon(hx.rings);
    ctx.fillStyle = hx.fill;
    ctx.fill();
  }
  ctx.globalAlpha = 1;
  if (outlines) {
    ctx.beginPath();
    for (const hx of state.hexes) if (boxVisible(hx.box)) tracePolygon(hx.rings);
    ctx.strokeStyle = "rgba(255,255,255,0.55)";
    ctx.lineWidth = 0.6;
    ctx.lineJoin = "round";
    ctx.stroke();
  }
}

function drawArea() {
  if (!state.area.length) return;
  ctx.beginPath();
  for (const poly of state.area) tracePolygon(poly);
  ctx.lineJoin = "round";
  ctx.strokeStyle = "rgba(255,255,255,0.85)";
  ctx.lineWidth = 4;
  ctx.stroke();
  ctx.strokeStyle = "#1d2330";
  ctx.lineWidth = 1.8;
  ctx.stroke();
}

/** Landmarks and their labels; returns the screen boxes they took. */
function drawLandmarks() {
  if (!state.landmarks.length) return [];
  const showAll = state.view.z >= state.fitZ + 1.5;
  const list = showAll ? state.landmarks : state.landmarks.slice(0, NAMED_LANDMARKS);
  ctx.font = "600 12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  ctx.textBaseline = "middle";
  const placed = [];
  for (const [i, lm] of list.entries()) {
    const [x, y] = toScreen(lm.u, lm.v);
    if (x < -50 || y < -20 || x > state.size.w + 50 || y > state.size.h + 20) continue;
    ctx.beginPath();
    ctx.arc(x, y, i < NAMED_LANDMARKS ? 3.5 : 2.5, 0, Math.PI * 2);
    ctx.fillStyle = "#111";
    ctx.fill();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
    placed.push({ lm, x, y });
  }
  // Labels avoid every dot and the labels already placed (highest weight first).
  const taken = placed.map(({ x, y }) => [x - 4, y - 4, x + 4, y + 4]);
  for (const [j, { lm, x, y }] of placed.entries()) {
    const own = taken[j];
    const tw = ctx.measureText(lm.name).width;
    let rect = [x + 6, y - 8, x + 8 + tw, y + 8];
    let tx = x + 7;
    if (rect[2] > state.size.w) {
      rect = [x - 8 - tw, y - 8, x - 6, y + 8];
      tx = x - 7 - tw;
    }
    if (taken.some((r) => r !== own && rect[0] < r[2] && rect[2] > r[0] && rect[1] < r[3] && rect[3] > r[1])) continue;
    taken.push(rect);
    ctx.lineWidth = 3.5;
    ctx.strokeStyle = "rgba(255,255,255,0.92)";
    ctx.lineJoin = "round";
    ctx.strokeText(lm.name, tx, y);
    ctx.fillStyle = "#111";
    ctx.fillText(lm.name, tx, y);
  }
  return taken;
}

function drawHover() {
  if (state.hover) {
    ctx.beginPath();
    tracePolygon(state.hover.rings);
    ctx.lineWidth = 2.5;
    ctx.strokeStyle = "#000";
    ctx.stroke();
  }
  if (state.probe) {
    const x = state.size.w / 2;
    const y = state.size.h / 2;
    ctx.beginPath();
    ctx.moveTo(x - 9, y);
    ctx.lineTo(x + 9, y);
    ctx.moveTo(x, y - 9);
    ctx.lineTo(x, y + 9);
    ctx.lineWidth = 4;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#000";
    ctx.stroke();
  }
}

// ------------------------------------------------------------ hit testing & tooltip

function hexAt(x, y) {
  const [u, v] = fromScreen(x, y);
  for (const hx of state.hexes) {
    const b = hx.box;
    if (u < b[0] || u > b[2] || v < b[1] || v > b[3]) continue;
    if (pointInPolygon(u, v, hx.rings)) return hx;
  }
  return null;
}

// ------------------------------------------------------------ units

/**
 * A release's unit as the server words it (`release::value_unit`): what
 * is counted (the policy's `unit_name`, "devices" unless it says
 * otherwise), per hex or zone, per bin length.
 */
const UNIT_RE = /^(.+?)(?:-(hours|days|(\d+)-(minute|second) intervals))?( present)? per (hex|zone) per (hour|day|week|month)$/;
const PER_BIN = { hour: "1h", day: "1d", week: "1w", month: "1mo" };

/** What is counted, plural ("devices"), in the page's language when known. */
const countedMany = (name) => (name === "devices" ? t("map.unit.devices") : name);
/** What is counted, singular ("device"). */
const countedOne = (name) => (name === "device" ? t("map.unit.device") : name);

/** The unit `unit` (the server's English words) in the page's language;
 * as it comes when it is not in the server's usual form. */
function unitLabel(unit) {
  const m = UNIT_RE.exec(unit || "");
  if (!m) return unit || "";
  const [, name, kind, n, step, present, where, per] = m;
  const vars = {
    place: where === "hex" ? t("map.place.hex") : t("map.place.zone"),
    per: binUnit(PER_BIN[per]),
  };
  if (!present && !kind) return t("map.unit.count", { ...vars, name: countedMany(name) });
  if (!present && kind === "hours") return t("map.unit.hours", { ...vars, one: countedOne(name) });
  if (!present && step === "minute") return t("map.unit.minutes", { ...vars, one: countedOne(name), n });
  if (!present && step === "second") return t("map.unit.seconds", { ...vars, one: countedOne(name), n });
  if (present && !kind) return t("map.unit.present", { ...vars, name: countedMany(name) });
  if (present && kind === "days") return t("map.unit.days_present", { ...vars, one: countedOne(name) });
  return unit;
}

/** Learns what the dataset counts from a release's unit, and says it in
 * the "Show" picker ("Footfall (devices per hour)"). */
function learnUnitName(unit) {
  const m = UNIT_RE.exec(unit || "");
  if (!m) return;
  state.unitName = m[2] ? `${m[1]}s` : m[1];
  const footfall = [...ui.metric.options].find((o) => o.value === "footfall");
  if (footfall) footfall.textContent = t("map.metric.footfall_of", { name: countedMany(state.unitName) });
}

function unitText() {
  return state.meta && state.meta.unit ? unitLabel(state.meta.unit) : t("map.unit.fallback");
}

/** "hex 881f…" or "zone 1er arrondissement (13201)". */
function placeName(hx) {
  if (!hx.zone) return t("map.place.hex_id", { id: hx.id });
  const name = state.zoneNames.get(hx.id);
  return name && name !== hx.id ? `${name} (${hx.id})` : t("map.place.zone_id", { id: hx.id });
}

function tooltipText(hx) {
  const ci = plain(Math.round(hx.ci95));
  const place = placeName(hx);
  if (!hx.covered) {
    return t("map.tip.uncovered", { place, unit: countedOne(state.unitName.replace(/s$/, "")) });
  }
  if (hx.low) {
    return t("map.tip.low", { place, value: plain(hx.value), ci });
  }
  const vars = { place, value: plain(hx.value), ci, unit: unitText() };
  return isPresence() && state.segment !== "all"
    ? t("map.tip.value_who", { ...vars, who: codeLabel("map.segment", state.segment) })
    : t("map.tip.value", vars);
}

function updateHover(x, y) {
  const hx = hexAt(x, y);
  state.hoverAt = [x, y];
  if (!hx) {
    hideTooltip();
    return;
  }
  if (hx !== state.hover) {
    state.hover = hx;
    scheduleDraw();
  }
  ui.tooltip.textContent = tooltipText(hx);
  ui.tooltip.hidden = false;
  // Place beside the point, inside the map.
  const tw = ui.tooltip.offsetWidth;
  const th = ui.tooltip.offsetHeight;
  let left = x + 14;
  let top = y + 16;
  if (left + tw > state.size.w - 4) left = Math.max(4, x - tw - 14);
  if (top + th > state.size.h - 4) top = Math.max(4, y - th - 14);
  ui.tooltip.style.left = `${Math.round(left)}px`;
  ui.tooltip.style.top = `${Math.round(top)}px`;
}

function hideTooltip() {
  const had = state.hover;
  state.hover = null;
  state.hoverAt = null;
  ui.tooltip.hidden = true;
  ui.tooltip.textContent = "";
  if (had) scheduleDraw();
}

function probeCentre() {
  updateHover(state.size.w / 2, state.size.h / 2);
  if (!state.hover) {
    ui.tooltip.textContent = isPresence() ? t("map.tip.none_zone") : t("map.tip.none");
    ui.tooltip.hidden = false;
    ui.tooltip.style.left = `${Math.round(state.size.w / 2 + 14)}px`;
    ui.tooltip.style.top = `${Math.round(state.size.h / 2 + 14)}px`;
  }
}

function canvasPoint(e) {
  const r = ui.canvas.getBoundingClientRect();
  return [e.clientX - r.left, e.clientY - r.top];
}

// ------------------------------------------------------------ pointer, wheel, keys

const pointers = new Map();
let drag = null;
let pinch = null;
let lastDragMoved = false;

ui.canvas.addEventListener("pointerdown", (e) => {
  if (e.pointerType === "mouse" && e.button !== 0) return;
  ui.canvas.setPointerCapture(e.pointerId);
  pointers.set(e.pointerId, canvasPoint(e));
  state.probe = false;
  if (pointers.size === 1) {
    const [x, y] = pointers.get(e.pointerId);
    drag = { x, y, lastX: x, lastY: y, moved: false, type: e.pointerType };
    pinch = null;
  } else if (pointers.size === 2) {
    const [a, b] = [...pointers.values()];
    pinch = { dist: Math.hypot(a[0] - b[0], a[1] - b[1]) || 1 };
    if (drag) drag.moved = true;
  }
});

ui.canvas.addEventListener("pointermove", (e) => {
  if (!pointers.has(e.pointerId)) return;
  const p = canvasPoint(e);
  pointers.set(e.pointerId, p);
  if (pointers.size >= 2 && pinch) {
    const [a, b] = [...pointers.values()];
    const dist = Math.hypot(a[0] - b[0], a[1] - b[1]) || 1;
    const mid = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
    zoomBy(Math.log2(dist / pinch.dist), mid[0], mid[1]);
    pinch.dist = dist;
    return;
  }
  if (!drag) return;
  const [x, y] = p;
  if (!drag.moved && Math.hypot(x - drag.x, y - drag.y) > 5) {
    drag.moved = true;
    ui.canvas.classList.add("dragging");
    hideTooltip();
  }
  if (drag.moved) {
    panBy(x - drag.lastX, y - drag.lastY);
    drag.lastX = x;
    drag.lastY = y;
  }
});

function endPointer(e) {
  if (!pointers.has(e.pointerId)) return;
  pointers.delete(e.pointerId);
  if (pointers.size < 2) pinch = null;
  if (pointers.size === 0 && drag) {
    lastDragMoved = drag.moved;
    if (!drag.moved && e.type === "pointerup") {
      // A tap (or click) shows the value under it and selects it (kept in
      // the URL, so a link opens on the same hex).
      const [x, y] = canvasPoint(e);
      updateHover(x, y);
      state.selected = state.hover ? state.hover.id : null;
      writeViewSoon();
    }
    drag = null;
    ui.canvas.classList.remove("dragging");
  }
}
ui.canvas.addEventListener("pointerup", endPointer);
ui.canvas.addEventListener("pointercancel", endPointer);

// Hover: mousemove (also what a tap sends as a compatibility event).
ui.canvas.addEventListener("mousemove", (e) => {
  if (drag && drag.moved) return;
  state.probe = false;
  const [x, y] = canvasPoint(e);
  updateHover(x, y);
});
ui.canvas.addEventListener("click", (e) => {
  if (lastDragMoved) {
    lastDragMoved = false;
    return;
  }
  const [x, y] = canvasPoint(e);
  updateHover(x, y);
});
ui.canvas.addEventListener("mouseleave", () => {
  if (!drag && !state.probe) hideTooltip();
});

ui.canvas.addEventListener(
  "wheel",
  (e) => {
    e.preventDefault();
    const [x, y] = canvasPoint(e);
    const lines = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    const dz = Math.max(-1, Math.min(1, (-e.deltaY * lines) / 300));
    zoomBy(dz, x, y);
  },
  { passive: false },
);

ui.canvas.addEventListener("keydown", (e) => {
  if (e.altKey || e.ctrlKey || e.metaKey) return;
  const step = (e.shiftKey ? 0.3 : 0.1) * Math.min(state.size.w, state.size.h);
  let handled = true;
  switch (e.key) {
    case "ArrowLeft": state.probe = true; panBy(step, 0); break;
    case "ArrowRight": state.probe = true; panBy(-step, 0); break;
    case "ArrowUp": state.probe = true; panBy(0, step); break;
    case "ArrowDown": state.probe = true; panBy(0, -step); break;
    case "+": case "=": zoomBy(0.5); break;
    case "-": case "_": zoomBy(-0.5); break;
    case "0": case "Home": fitView(); break;
    case "Enter": case " ": state.probe = true; probeCentre(); scheduleDraw(); break;
    case "Escape": state.probe = false; hideTooltip(); break;
    default: handled = false;
  }
  if (handled) e.preventDefault();
});
ui.canvas.addEventListener("blur", () => {
  if (state.probe) {
    state.probe = false;
    hideTooltip();
    scheduleDraw();
  }
});

ui.zoomIn.addEventListener("click", () => zoomBy(1));
ui.zoomOut.addEventListener("click", () => zoomBy(-1));
ui.resetView.addEventListener("click", () => {
  state.probe = false;
  hideTooltip();
  fitView();
});

new ResizeObserver(resizeCanvas).observe(ui.wrap);
window.addEventListener("resize", resizeCanvas);

// ------------------------------------------------------------ basemap

function hostOf(url) {
  try {
    return new URL(url.replace(/\{-?[a-z]\}/g, "0")).host;
  } catch {
    return url;
  }
}

const XYZ = ["{z}", "{x}", "{y}"];
/** A raster tile template names {z}, {x} and {y}; a URL naming none of
 * them is read as a MapLibre/Mapbox GL style (or a TileJSON). */
const isTemplate = (u) => XYZ.some((k) => u.includes(k)) || u.includes("{-y}");

/** Why `u` (what the user typed) cannot be a basemap, or "". */
function validBasemap(u) {
  if (!u) return "";
  if (!/^https:\/\//i.test(u)) return t("map.basemap.err.https");
  if (isTemplate(u)) {
    for (const k of XYZ) {
      if (!u.includes(k) && !(k === "{y}" && u.includes("{-y}"))) return t("map.basemap.err.xyz", { key: k });
    }
  }
  try {
    new URL(u.replace(/\{-?[a-z]\}/g, "0"));
  } catch {
    return t("map.basemap.err.invalid");
  }
  return "";
}

/** A basemap refused, with the reason to show. */
class BasemapError extends Error {}

/** The JSON document at https `url` (a style or a TileJSON). */
async function fetchDoc(url) {
  const host = hostOf(url);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 15000);
  let resp;
  try {
    // No cookie, no referrer: the tile server learns no more than it must.
    resp = await fetch(url, { signal: abort.signal, credentials: "omit", referrerPolicy: "no-referrer" });
  } catch {
    throw new BasemapError(t("map.basemap.err.fetch", { host }));
  } finally {
    clearTimeout(timer);
  }
  if (!resp.ok) throw new BasemapError(t("map.basemap.err.status", { host, status: resp.status }));
  try {
    return await resp.json();
  } catch {
    throw new BasemapError(t("map.basemap.err.json", { host }));
  }
}

/** Plain text of an attribution (styles and TileJSON give HTML). */
function creditText(html) {
  if (typeof html !== "string" || !html.trim()) return "";
  const doc = new DOMParser().parseFromString(html, "text/html");
  return (doc.body.textContent || "").replace(/\s+/g, " ").trim().slice(0, 300);
}

/** An absolute https raster template from a style's or TileJSON's tile
 * URL (relative to `base`), TMS rows turned into {-y}. */
function rasterTemplate(tileUrl, base, scheme) {
  if (typeof tileUrl !== "string") return null;
  let abs;
  try {
    abs = new URL(tileUrl, base).href;
  } catch {
    return null;
  }
  // new URL() percent-encodes the braces of the placeholders.
  abs = abs.replace(/%7B/gi, "{").replace(/%7D/gi, "}");
  if (scheme === "tms") abs = abs.replaceAll("{y}", "{-y}");
  if (!/^https:\/\//i.test(abs) || !abs.includes("{z}") || !abs.includes("{x}") || !/\{-?y\}/.test(abs)) return null;
  return abs;
}

/** The raster template of a TileJSON document, or a refusal. */
function fromTileJson(tj, base, host) {
  const tiles = Array.isArray(tj.tiles) ? tj.tiles : [];
  if (Array.isArray(tj.vector_layers) || /^(pbf|mvt)$/i.test(String(tj.format || ""))) {
    throw new BasemapError(t("map.basemap.err.vector", { host }));
  }
  const template = rasterTemplate(tiles[0], base, tj.scheme);
  if (!template) throw new BasemapError(t("map.basemap.err.tiles", { host }));
  return { template, credit: creditText(tj.attribution) };
}

/**
 * What the typed basemap draws: a raster template as typed, or the first
 * raster source of the style (or TileJSON) at that URL, with its credit.
 * Vector sources are refused: no vector renderer is loaded, by design.
 */
async function resolveBasemap(input) {
  if (!input || isTemplate(input)) return { template: input, credit: "" };
  const host = hostOf(input);
  const doc = await fetchDoc(input);
  if (!doc || typeof doc !== "object") throw new BasemapError(t("map.basemap.err.not_style", { host }));
  // A TileJSON given directly.
  if (Array.isArray(doc.tiles) && !doc.sources) return fromTileJson(doc, input, host);
  if (!doc.sources || typeof doc.sources !== "object") throw new BasemapError(t("map.basemap.err.not_style", { host }));
  const sources = Object.values(doc.sources).filter((x) => x && typeof x === "object");
  const raster = sources.find((x) => x.type === "raster");
  if (!raster) {
    throw new BasemapError(sources.some((x) => x.type === "vector")
      ? t("map.basemap.err.vector", { host })
      : t("map.basemap.err.no_raster", { host }));
  }
  if (Array.isArray(raster.tiles) && raster.tiles.length) {
    const template = rasterTemplate(raster.tiles[0], input, raster.scheme);
    if (!template) throw new BasemapError(t("map.basemap.err.tiles", { host }));
    return { template, credit: creditText(raster.attribution) };
  }
  if (typeof raster.url === "string") {
    let tjUrl;
    try {
      tjUrl = new URL(raster.url, input).href;
    } catch {
      tjUrl = "";
    }
    if (!/^https:\/\//i.test(tjUrl)) throw new BasemapError(t("map.basemap.err.tiles", { host }));
    const tj = await fetchDoc(tjUrl);
    const out = fromTileJson(tj || {}, tjUrl, hostOf(tjUrl));
    return { ...out, credit: creditText(raster.attribution) || out.credit };
  }
  throw new BasemapError(t("map.basemap.err.tiles", { host }));
}

/** The line under the settings: what the basemap setting came to. */
function basemapMessage(text, kind = "info") {
  ui.basemapMsg.textContent = text || "";
  ui.basemapMsg.dataset.kind = kind;
  ui.basemapMsg.hidden = !text;
}

function storeBasemap(input) {
  try {
    if (input) localStorage.setItem(BASEMAP_KEY, input);
    else localStorage.removeItem(BASEMAP_KEY);
  } catch {
    // storage disabled: the setting lasts for this page only
  }
}

/** Draws raster tiles from `template` (none when empty). */
function setBasemap(template, credit = "") {
  state.basemap = template;
  state.basemapCredit = credit;
  state.tiles.clear();
  state.tileErrors = 0;
  const host = hostOf(template);
  ui.attribution.textContent = !template
    ? t("map.attribution.none")
    : credit
      ? t("map.attribution.credit", { credit, host })
      : t("map.attribution.basemap", { host });
  scheduleDraw();
}

/**
 * Applies what the user typed (a template or a style URL): resolves a
 * style first. Returns the message to show, or throws a BasemapError.
 */
async function applyBasemap(input) {
  const seq = ++state.basemapSeq;
  const err = validBasemap(input);
  if (err) throw new BasemapError(err);
  if (input && !isTemplate(input)) basemapMessage(t("map.basemap.reading", { host: hostOf(input) }));
  const { template, credit } = await resolveBasemap(input);
  if (seq !== state.basemapSeq) return null;
  setBasemap(template, credit);
  if (!template) {
    basemapMessage("");
    return t("map.basemap.off");
  }
  const msg = input === template
    ? t("map.basemap.on", { host: hostOf(template) })
    : t("map.basemap.on_style", { style: hostOf(input), host: hostOf(template) });
  basemapMessage(input === template ? "" : msg);
  return msg;
}

ui.basemapForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = ui.basemapUrl.value.trim();
  try {
    const msg = await applyBasemap(input);
    if (msg === null) return;
    ui.basemapUrl.removeAttribute("aria-invalid");
    storeBasemap(input);
    setStatus(msg, "info");
  } catch (err) {
    if (!(err instanceof BasemapError)) throw err;
    const msg = t("map.basemap.not_set", { reason: err.message });
    basemapMessage(msg, "error");
    setStatus(msg, "error");
    ui.basemapUrl.setAttribute("aria-invalid", "true");
    ui.basemapUrl.focus();
  }
});
ui.basemapClear.addEventListener("click", () => {
  state.basemapSeq++;
  ui.basemapUrl.value = "";
  ui.basemapUrl.removeAttribute("aria-invalid");
  storeBasemap("");
  setBasemap("");
  basemapMessage("");
  setStatus(t("map.basemap.off_clear"), "info");
});

/** The stored setting (as the user typed it), a style resolved anew. */
function initBasemap() {
  let input = "";
  try {
    input = localStorage.getItem(BASEMAP_KEY) || "";
  } catch {
    input = "";
  }
  if (validBasemap(input)) input = "";
  ui.basemapUrl.value = input;
  setBasemap("");
  if (!input) return;
  applyBasemap(input).catch((err) => {
    if (!(err instanceof BasemapError)) throw err;
    basemapMessage(t("map.basemap.not_set", { reason: err.message }), "error");
    ui.basemapUrl.setAttribute("aria-invalid", "true");
  });
}

// ------------------------------------------------------------ study area

async function loadArea(dataset) {
  const fc = await api(`/api/v1/datasets/${encodeURIComponent(dataset)}/area`);
  const area = [];
  const landmarks = [];
  const zones = [];
  for (const f of fc.features || []) {
    const p = f.properties || {};
    const g = f.geometry;
    if (!g) continue;
    if (p.kind === "study-area") {
      const polys = g.type === "MultiPolygon" ? g.coordinates : g.type === "Polygon" ? [g.coordinates] : [];
      for (const poly of polys) area.push(poly.map((ring) => ring.map(([lon, lat]) => project(lon, lat))));
    } else if (p.kind === "zone") {
      const polys = g.type === "MultiPolygon" ? g.coordinates : g.type === "Polygon" ? [g.coordinates] : [];
      const label = Array.isArray(p.label_point) ? project(p.label_point[0], p.label_point[1]) : null;
      zones.push({
        id: String(p.zone_id),
        name: p.name || String(p.zone_id),
        polys: polys.map((poly) => poly.map((ring) => ring.map(([lon, lat]) => project(lon, lat)))),
        label,
      });
    } else if (p.kind === "landmark" && g.type === "Point") {
      const [u, v] = project(g.coordinates[0], g.coordinates[1]);
      landmarks.push({ name: p.name || "", kind: p.landmark_kind, weight: Number(p.weight) || 0, u, v });
    }
  }
  landmarks.sort((a, b) => b.weight - a.weight);
  state.area = area;
  state.landmarks = landmarks;
  state.zones = zones;
  for (const z of zones) if (!state.zoneNames.has(z.id)) state.zoneNames.set(z.id, z.name);
  if (area.length) {
    const box = [Infinity, Infinity, -Infinity, -Infinity];
    for (const poly of area) {
      for (const [u, v] of poly[0]) {
        box[0] = Math.min(box[0], u);
        box[1] = Math.min(box[1], v);
        box[2] = Math.max(box[2], u);
        box[3] = Math.max(box[3], v);
      }
    }
    state.areaBox = box;
  }
}

// ------------------------------------------------------------ releases

function releasesUrl(params) {
  const what = isPresence() ? { metric: "presence", unit: "zone" } : { metric: "footfall" };
  return apiUrl("/api/v1/releases", { dataset: state.ds.dataset, audience: state.audience, ...what, ...params });
}

/** Whether a listed release is what the "Show" picker asks for. */
function shown(r) {
  if (!isPresence()) return r.metric === "footfall";
  // People by segment (or not split): origins are for the views page.
  return r.metric === "presence" && r.period === presencePeriod() && r.by !== "segment,origin";
}

/** First and last published day at `res` (any zone for presence) and the
 * last hourly day, for the current "Show" picker and audience. */
async function spanOf(resArg) {
  const res = isPresence() ? undefined : resArg;
  const key = `${state.audience}|${state.metric}|${res ?? "zones"}`;
  if (state.spans.has(key)) return state.spans.get(key);
  const first = await api(releasesUrl({ res, limit: 1 }));
  const span = { total: first.total, first: null, last: null, lastHourly: null };
  if (first.total > 0) {
    span.first = first.releases[0].from;
    const [last, hourly] = await Promise.all([
      api(releasesUrl({ res, limit: 1, offset: first.total - 1 })),
      api(releasesUrl({ res, bin: "1h", limit: 1 })),
    ]);
    span.last = last.releases[0] ? last.releases[0].to : span.first;
    if (hourly.total > 0) {
      const h = hourly.total === 1 ? hourly : await api(releasesUrl({ res, bin: "1h", limit: 1, offset: hourly.total - 1 }));
      span.lastHourly = h.releases[0] ? h.releases[0].to : null;
    }
  }
  state.spans.set(key, span);
  return span;
}

function releaseLabel(r) {
  const vars = { bin: binName(r.bin), window: fmtWindow(r.from, r.to) };
  if (r.metric === "presence") {
    return t("map.release.presence", { ...vars, period: codeLabel("map.period", r.period) });
  }
  return t("map.release.footfall", { ...vars, res: r.res });
}

function setDateRange(span) {
  ui.date.min = span && span.first ? span.first : "";
  ui.date.max = span && span.last ? span.last : "";
}

/** Reloads the release list for the chosen day and resolution. */
async function loadReleases(preferId, preferBin, sameKindAs) {
  const seq = ++state.listSeq;
  const res = isPresence() ? undefined : Number(ui.res.value);
  const day = ui.date.value;
  stopPlay();
  if (!day || !/^\d{4}-\d{2}-\d{2}$/.test(day)) {
    setChildren(ui.release);
    showEmpty(t("map.status.choose_day"));
    return;
  }
  setStatus(t("map.status.loading_day", { day }), "info");
  let list;
  let span;
  try {
    [list, span] = await Promise.all([api(releasesUrl({ res, day, limit: 500 })), spanOf(res)]);
  } catch (e) {
    if (seq === state.listSeq) {
      showError(e, t("map.err.list"));
      showEmpty(null);
    }
    return;
  }
  if (seq !== state.listSeq) return;
  setDateRange(span);
  const releases = (list.releases || [])
    .filter(shown)
    .sort((a, b) => (BIN_ORDER[a.bin] ?? 9) - (BIN_ORDER[b.bin] ?? 9) || a.from.localeCompare(b.from));
  state.releases = releases;
  const labels = new Map();
  for (const r of releases) labels.set(releaseLabel(r), (labels.get(releaseLabel(r)) || 0) + 1);
  setChildren(
    ui.release,
    releases.map((r) => {
      const label = releaseLabel(r);
      return el("option", { value: r.release_id }, labels.get(label) > 1 ? `${label} · ${r.release_id}` : label);
    }),
  );
  ui.release.disabled = releases.length === 0;
  if (!releases.length) {
    const vars = {
      day,
      audience: codeLabel("map.audience", state.audience),
      period: isPresence() ? codeLabel("map.period", presencePeriod()) : "",
      res,
      window: span && span.first ? fmtWindow(span.first, span.last) : "",
    };
    const covered = span && span.first;
    const msg = isPresence()
      ? covered ? t("map.status.none_presence_range", vars) : t("map.status.none_presence_never", vars)
      : covered ? t("map.status.none_footfall_range", vars) : t("map.status.none_footfall_never", vars);
    setStatus(msg, "empty");
    showEmpty(null);
    return;
  }
  // Playback across days keeps the kind of release (bin, resolution).
  const sameKind = sameKindAs
    ? releases.find((r) => r.bin === sameKindAs.bin && r.res === sameKindAs.res && r.unit === sameKindAs.unit && r.from === ui.date.value)
    : null;
  const chosen =
    releases.find((r) => r.release_id === preferId) ||
    sameKind ||
    releases.find((r) => r.bin === "1h") ||
    releases[0];
  ui.release.value = chosen.release_id;
  // A bin asked without a release (`#bin=2`) applies to the release shown.
  const bin = chosen.release_id === preferId || !preferId ? preferBin : undefined;
  await selectRelease(chosen, bin);
}

/** Clears the map to the study area only (no release shown). */
function showEmpty(message) {
  state.releaseSeq++;
  state.binSeq++;
  state.release = null;
  state.meta = null;
  state.manifest = null;
  state.hexes = [];
  state.features = [];
  hooks.ready = false;
  hooks.release = null;
  hooks.bin = null;
  hooks.features = [];
  document.body.dataset.state = "empty";
  delete document.body.dataset.bin;
  hideTooltip();
  ui.slider.disabled = true;
  ui.slider.max = "0";
  ui.slider.value = "0";
  ui.play.disabled = true;
  ui.binLabel.textContent = "–";
  setChildren(ui.privacy, "–");
  setChildren(ui.privacyDetail);
  setChildren(ui.legendTicks);
  setChildren(ui.topBody);
  ui.legendUnit.textContent = "";
  ui.legendNote.textContent = "";
  setLinks(null);
  ui.canvas.setAttribute("aria-label", t("map.canvas.empty"));
  if (message) setStatus(message, "empty");
  drawNow();
}

/** The first bin of `release` on local day `day` (multi-day windows). */
function firstBinOfDay(release, day) {
  if (!day || day <= release.from || day > release.to) return 0;
  if (release.bin === "1d") return Math.min(release.bins - 1, daysBetween(release.from, day));
  if (release.bin === "1h") {
    const k = Math.round((localMidnightUtc(day, state.tz) - localMidnightUtc(release.from, state.tz)) / 3600000);
    return Math.min(release.bins - 1, Math.max(0, k));
  }
  return 0;
}

async function selectRelease(summary, wantedBin) {
  const seq = ++state.releaseSeq;
  stopPlay();
  hideTooltip();
  state.release = summary;
  state.meta = null;
  state.manifest = null;
  hooks.ready = false;
  hooks.release = summary;
  hooks.bin = null;
  document.body.dataset.state = "loading";
  delete document.body.dataset.bin;
  setStatus(t("map.status.loading_release", { release: releaseLabel(summary) }), "info");
  const id = encodeURIComponent(summary.release_id);
  const manifestUrl = `/api/v1/releases/${id}`;
  renderPrivacy(summary, null);
  let meta;
  try {
    [meta] = await Promise.all([
      api(`${manifestUrl}/values?format=json&bin=0`),
      api(manifestUrl)
        .then((m) => {
          if (seq === state.releaseSeq) {
            state.manifest = m;
            renderPrivacy(summary, m);
          }
        })
        .catch(() => {
          // The manifest only enriches the privacy line; the link stays.
        }),
    ]);
  } catch (e) {
    if (seq === state.releaseSeq) {
      showEmpty(null);
      showError(e, t("map.err.release"));
      document.body.dataset.state = "error";
    }
    return;
  }
  if (seq !== state.releaseSeq) return;
  state.meta = meta;
  learnUnitName(meta.unit);
  if (meta.timezone) state.tz = meta.timezone;
  const bins = Math.max(1, summary.bins || (meta.bins ? meta.bins.length : 1));
  ui.slider.max = String(bins - 1);
  ui.slider.disabled = bins <= 1;
  ui.play.disabled = bins <= 1;
  renderLegend(meta);
  let k = Number.isInteger(wantedBin) && wantedBin >= 0 && wantedBin < bins ? wantedBin : firstBinOfDay(summary, ui.date.value);
  await showBin(k);
}

// ------------------------------------------------------------ bins

/**
 * Presence features (one per zone and segment) as one feature per zone:
 * the chosen segment, or every segment summed (sums of unbiased
 * estimates; independent noises, so the bars add in quadrature).
 */
function presenceFeatures(features, segment, threshold) {
  const byZone = new Map();
  for (const f of features) {
    const p = f.properties || {};
    if (segment !== "all" && p.segment !== segment) continue;
    const z = byZone.get(p.zone_id) || { f, est: 0, var: 0, covered: false };
    z.est += Number(p.estimate);
    z.var += Number(p.estimate_ci95) ** 2;
    z.covered = z.covered || Boolean(p.covered);
    byZone.set(p.zone_id, z);
  }
  return [...byZone.values()].map((z) => ({
    type: "Feature",
    geometry: z.f.geometry,
    properties: {
      ...z.f.properties,
      segment,
      value: Math.max(0, Math.round(z.est)),
      estimate: z.est,
      ci95: Math.sqrt(z.var) + 0.5,
      covered: z.covered,
      low: z.covered && Number.isFinite(threshold) && z.est < threshold,
    },
  }));
}

function parseBin(fc) {
  const hexes = [];
  const features = isPresence()
    ? presenceFeatures(fc.features || [], state.segment, state.meta && state.meta.display_threshold)
    : fc.features || [];
  for (const f of features) {
    const p = f.properties || {};
    const g = f.geometry;
    const id = p.hex_id || p.zone_id;
    if (!g || !id) continue;
    const polys = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
    for (const poly of polys) {
      const rings = poly.map((ring) => ring.map(([lon, lat]) => project(lon, lat)));
      const outer = rings[0];
      if (!outer || outer.length < 3) continue;
      const box = [Infinity, Infinity, -Infinity, -Infinity];
      let cu = 0;
      let cv = 0;
      // The closing vertex repeats the first: leave it out of the centre.
      const n = outer.length > 3 && outer[0][0] === outer[outer.length - 1][0] && outer[0][1] === outer[outer.length - 1][1]
        ? outer.length - 1
        : outer.length;
      for (let i = 0; i < outer.length; i++) {
        const [u, v] = outer[i];
        box[0] = Math.min(box[0], u);
        box[1] = Math.min(box[1], v);
        box[2] = Math.max(box[2], u);
        box[3] = Math.max(box[3], v);
        if (i < n) {
          cu += u;
          cv += v;
        }
      }
      hexes.push({
        id: String(id),
        zone: !p.hex_id,
        value: Number(p.value),
        ci95: Number(p.ci95),
        low: Boolean(p.low),
        // Releases older than the `covered` column: a zero bar meant no coverage.
        covered: p.covered === undefined ? Number(p.ci95) > 0 : Boolean(p.covered),
        binStart: p.bin_start,
        rings,
        box,
        c: [cu / n, cv / n],
        fill: LOW_GREY,
      });
    }
  }
  return { hexes, features };
}

function fetchBin(release, k) {
  const key = `${release.release_id}/${k}/${state.segment}`;
  let p = state.binCache.get(key);
  if (!p) {
    p = api(`/api/v1/releases/${encodeURIComponent(release.release_id)}/values?format=geojson&bin=${k}`).then(parseBin);
    state.binCache.set(key, p);
    p.catch(() => state.binCache.delete(key));
    if (state.binCache.size > 200) state.binCache.delete(state.binCache.keys().next().value);
  }
  return p;
}

async function showBin(k) {
  const release = state.release;
  if (!release) return;
  const seq = ++state.binSeq;
  state.bin = k;
  ui.slider.value = String(k);
  let data;
  try {
    data = await fetchBin(release, k);
  } catch (e) {
    if (seq === state.binSeq) {
      stopPlay();
      // Keep the slider on the bin that is drawn.
      if (hooks.bin !== null && release === state.release) {
        state.bin = hooks.bin;
        ui.slider.value = String(hooks.bin);
      }
      showError(e, t("map.err.bin", { k }));
    }
    return;
  }
  if (seq !== state.binSeq || release !== state.release) return;
  let max = state.meta && state.meta.scale_max > 0 ? state.meta.scale_max : 1;
  if (isPresence()) {
    // The release's scale spans every segment; the map shows one segment
    // or their sum: scale on what is drawn.
    const vals = data.hexes.filter((h) => h.covered && !h.low).map((h) => h.value);
    max = Math.max(1, ...vals);
    renderLegend({ ...state.meta, scale_max: max });
  }
  for (const hx of data.hexes) {
    hx.fill = !hx.covered ? NO_COVERAGE : hx.low ? LOW_GREY : viridisCss(hx.value / max);
  }
  state.hexes = data.hexes;
  state.features = data.features;
  if (state.hover) {
    // Keep the tooltip on the same place with the new bin's value.
    const at = state.hoverAt;
    state.hover = null;
    if (state.probe) probeCentre();
    else if (at) updateHover(at[0], at[1]);
  }
  drawNow();

  const label = data.hexes.length ? fmtBinRange(data.hexes[0].binStart, release.bin, state.tz) : t("map.bin.n", { k });
  ui.binLabel.textContent = label;
  ui.slider.setAttribute("aria-valuetext", label);
  renderSummary(label);
  renderTop();
  setLinks(release, k);
  if (!state.playing) {
    const dropped = data.hexes.length === 0 ? (isPresence() ? t("map.status.no_zones") : t("map.status.no_hexes")) : "";
    setStatus(dropped, "empty");
  }
  hooks.release = release;
  hooks.bin = k;
  hooks.features = data.features;
  hooks.ready = true;
  document.body.dataset.state = "ready";
  document.body.dataset.bin = String(k);
  showSelected();
  writeHash();
  if (state.playing) {
    const bins = Number(ui.slider.max) + 1;
    fetchBin(release, (k + 1) % bins).catch(() => {});
    schedulePlayStep();
  }
}

// ------------------------------------------------------------ play

/**
 * The next step of playback: the next bin, and after the release's last
 * bin the first bin of the next day's release of the same kind (a planner
 * watches a week, not one day); after the last published day, back to the
 * first bin.
 */
function schedulePlayStep() {
  clearTimeout(state.playTimer);
  state.playTimer = setTimeout(async () => {
    if (!state.playing || !state.release) return;
    const bins = Number(ui.slider.max) + 1;
    if (state.bin + 1 < bins) {
      showBin(state.bin + 1);
      return;
    }
    const next = addDays(state.release.to, 1);
    if (ui.date.max && next > ui.date.max) {
      showBin(0);
      return;
    }
    const kind = state.release;
    ui.date.value = next;
    await loadReleases(undefined, 0, kind);
    startPlay();
  }, PLAY_STEP_MS);
}

function startPlay() {
  if (!state.release || ui.play.disabled) return;
  state.playing = true;
  ui.play.setAttribute("aria-pressed", "true");
  ui.playIcon.textContent = "❚❚";
  ui.playText.textContent = t("map.pause");
  setStatus("", "info");
  schedulePlayStep();
}

function stopPlay() {
  state.playing = false;
  clearTimeout(state.playTimer);
  ui.play.setAttribute("aria-pressed", "false");
  ui.playIcon.textContent = "▶";
  ui.playText.textContent = t("map.play");
}

ui.play.addEventListener("click", () => (state.playing ? stopPlay() : startPlay()));

ui.slider.addEventListener("input", () => {
  stopPlay();
  showBin(Number(ui.slider.value));
});

// ------------------------------------------------------------ panels

function renderLegend(meta) {
  const max = meta.scale_max > 0 ? meta.scale_max : 0;
  const digits = max >= 20 ? 0 : 1;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const v = f * max;
    const text = digits ? fmtNum(v, 1) : plain(Math.round(v));
    return el("span", { class: "tick" }, f === 1 && max > 0 ? `${text}+` : text);
  });
  setChildren(ui.legendTicks, ticks);
  const unit = unitLabel(meta.unit);
  ui.legendUnit.textContent = unit;
  $("map-legend-max").textContent = max > 0 ? `${digits ? fmtNum(max, 1) : plain(max)}+` : "–";
  $("map-legend-unit").textContent = unit;
  const thr = meta.display_threshold;
  ui.legendLowText.textContent = Number.isFinite(thr)
    ? t("map.legend.low_thr", { threshold: fmtNum(thr, 1) })
    : t("map.legend.low");
  ui.legendNote.textContent = max <= 0
    ? t("map.legend.none_above")
    : isPresence()
      ? t("map.legend.presence_top", { max: plain(max) })
      : t("map.legend.footfall_top", { max: digits ? fmtNum(max, 1) : plain(max) });
}

function mechanismText(m) {
  const mech = String(m.mechanism || "").toLowerCase().replace(/_/g, "");
  const place = String(m.placement || "").toLowerCase();
  const parts = [];
  if (mech === "gaussianzcdp") parts.push(t("map.mech.gaussian"));
  else if (mech === "laplacepure") parts.push(t("map.mech.laplace"));
  else if (m.mechanism) parts.push(String(m.mechanism));
  if (place === "cell") parts.push(t("map.mech.cell"));
  else if (place === "hex") parts.push(t("map.mech.hex"));
  return parts.join(", ");
}

function renderPrivacy(s, m) {
  const id = encodeURIComponent(s.release_id);
  const pure = m && String(m.mechanism || "").toLowerCase().replace(/_/g, "") === "laplacepure";
  const cost = pure
    ? t("map.privacy.cost_pure", { eps: fmtEps(s.epsilon) })
    : t("map.privacy.cost_zcdp", { rho: fmtRho(s.rho), eps: fmtEps(s.epsilon), delta: fmtDelta(s.delta) });
  setChildren(
    ui.privacy,
    el("strong", {}, t("map.privacy.lead")),
    " ",
    t("map.privacy.body"),
    el("br"),
    t("map.privacy.symbols", { cost }),
    " · ",
    el("a", { href: "/transparency" }, t("map.privacy.spent")),
    " · ",
    el("a", { href: `/api/v1/releases/${id}`, target: "_blank", rel: "noopener" }, t("map.privacy.manifest")),
  );
  if (!m) {
    setChildren(ui.privacyDetail);
    return;
  }
  const days = Array.isArray(m.days_charged) ? m.days_charged.length : null;
  const b = m.bounds || {};
  const bits = [
    mechanismText(m),
    days !== null ? tn("map.privacy.days", days) : null,
    m.privacy_unit
      ? m.privacy_unit === "device-day" ? t("map.privacy.unit_device_day") : t("map.privacy.unit", { unit: m.privacy_unit })
      : null,
    Number.isFinite(b.max_cells_per_bin)
      ? t("map.privacy.bounds", { cells: b.max_cells_per_bin, bins: b.max_bins_per_day })
      : null,
    m.hexflow_version ? `hexflow ${m.hexflow_version}` : null,
    m.opendp_version ? `OpenDP ${m.opendp_version}` : null,
  ].filter(Boolean);
  setChildren(ui.privacyDetail, t("map.privacy.detail", { list: bits.join(" · ") }));
}

function renderSummary(binText) {
  const shown = state.hexes.filter((h) => h.covered && !h.low);
  const low = state.hexes.filter((h) => h.covered && h.low).length;
  const uncovered = state.hexes.filter((h) => !h.covered).length;
  let top = null;
  for (const h of shown) if (!top || h.value > top.value) top = h;
  const n = state.hexes.length;
  const parts = [
    isPresence()
      ? tn("map.summary.presence", n, {
        bin: binText,
        period: codeLabel("map.period", presencePeriod()),
        who: state.segment === "all" ? t("map.segment.all") : codeLabel("map.segment", state.segment),
      })
      : tn("map.summary.footfall", n, { bin: binText }),
  ];
  if (top) {
    parts.push(t("map.summary.highest", {
      value: plain(top.value), ci: plain(Math.round(top.ci95)), unit: unitText(), place: placeName(top),
    }));
  }
  if (low) parts.push(tn("map.summary.low", low));
  if (uncovered) parts.push(tn("map.summary.uncovered", uncovered));
  ui.canvas.setAttribute("aria-label", isPresence()
    ? t("map.summary.end_zones", { summary: parts.join("; ") })
    : t("map.summary.end_hexes", { summary: parts.join("; ") }));
}

/** "near Vieux-Port · 1er arrondissement": the landmark nearest a hex's
 * centre (within 1.5 km) and the zone holding it. */
function whereIs(hx) {
  const [u, v] = hx.c;
  // World units to metres at this latitude (Web Mercator).
  const lat = Math.atan(Math.sinh(Math.PI * (1 - 2 * v)));
  const metres = 40075016.7 * Math.cos(lat);
  let best = null;
  for (const lm of state.landmarks) {
    const d = Math.hypot(lm.u - u, lm.v - v) * metres;
    if (d < 1500 && (!best || d < best.d)) best = { name: lm.name, d };
  }
  const zone = state.zones.find((z) => z.polys.some((p) => pointInPolygon(u, v, p)));
  return [best ? t("map.top.near", { name: best.name }) : null, zone ? zone.name : null].filter(Boolean).join(" · ");
}

function renderTop() {
  $("top-h").textContent = isPresence() ? t("map.top.h_zones") : t("map.top.h");
  const rows = state.hexes
    .filter((h) => h.covered && !h.low)
    .sort((a, b) => b.value - a.value)
    .slice(0, 10)
    .map((h) =>
      el("tr", {},
        h.zone
          ? el("td", {}, placeName(h))
          : el("td", {}, whereIs(h) || "–", " ", el("span", { class: "mono muted small" }, h.id)),
        el("td", { class: "num" }, plain(h.value)),
        el("td", { class: "num" }, `± ${plain(Math.round(h.ci95))}`)));
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: "3" }, isPresence() ? t("map.top.empty_zones") : t("map.top.empty"))));
  }
  setChildren(ui.topBody, rows);
}

function setLink(a, href, name) {
  if (href) {
    a.href = href;
    a.removeAttribute("aria-disabled");
    if (name !== undefined && a.hasAttribute("download")) a.setAttribute("download", name);
  } else {
    a.removeAttribute("href");
    a.setAttribute("aria-disabled", "true");
  }
}

function setLinks(release, k) {
  if (!release) {
    for (const a of [ui.csv, ui.geojson, ui.png, ui.tilejson, ui.allCsv, ui.manifestLink]) setLink(a, null);
    return;
  }
  const base = `/api/v1/releases/${encodeURIComponent(release.release_id)}`;
  setLink(ui.csv, `${base}/values?format=csv&bin=${k}`, `${release.release_id}-${k}.csv`);
  setLink(ui.geojson, `${base}/values?format=geojson&bin=${k}`, `${release.release_id}-${k}.geojson`);
  // Maps and tiles draw hex footfall only.
  const hexMap = release.metric === "footfall";
  setLink(ui.png, hexMap ? `${base}/map.png?bin=${k}` : null);
  setLink(ui.tilejson, hexMap ? `${base}/tilejson.json?bin=${k}` : null);
  setLink(ui.allCsv, `${base}/values?format=csv`, `${release.release_id}-all.csv`);
  setLink(ui.manifestLink, base);
}

// ------------------------------------------------------------ controls

ui.form.addEventListener("submit", (e) => e.preventDefault());
ui.date.addEventListener("change", () => loadReleases());
ui.res.addEventListener("change", () => loadReleases());

/** The "Show" picker: footfall on hexes, or people per zone by period. */
async function changeMetric(metric, segment) {
  state.metric = metric;
  const presence = isPresence();
  ui.segmentField.hidden = !presence;
  if (presence) {
    state.segment = [...ui.segment.options].some((o) => o.value === segment) ? segment : "all";
    ui.segment.value = state.segment;
  }
  ui.res.disabled = presence;
  state.binCache.clear();
  const span = await spanOf(Number(ui.res.value));
  setDateRange(span);
  if (!ui.date.value || (span.last && ui.date.value > span.last) || (span.first && ui.date.value < span.first)) {
    ui.date.value = span.last || ui.date.value;
  }
  await loadReleases();
}
ui.metric.addEventListener("change", () => changeMetric(ui.metric.value, state.segment));
ui.segment.addEventListener("change", () => {
  state.segment = ui.segment.value;
  if (state.release) selectRelease(state.release, state.bin);
});

// A token reaches its audience's releases; it lives in memory only.
ui.tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(ui.token.value);
  state.audience = ui.token.value.trim() ? ui.audience.value : "public";
  if (!ui.token.value.trim()) ui.audience.value = "public";
  state.spans.clear();
  state.binCache.clear();
  changeMetric(state.metric, state.segment).catch((err) => showError(err, t("map.err.list")));
});
ui.tokenForget.addEventListener("click", () => {
  setToken(null);
  ui.token.value = "";
  ui.audience.value = "public";
  state.audience = "public";
  state.spans.clear();
  state.binCache.clear();
  changeMetric(state.metric, state.segment).catch((err) => showError(err, t("map.err.list")));
});
ui.release.addEventListener("change", () => {
  const r = state.releases.find((x) => x.release_id === ui.release.value);
  if (r) selectRelease(r);
});

// ------------------------------------------------------------ start

/** Average H3 hexagon areas (km²) by resolution. */
const H3_AREA_KM2 = { 5: 252.9, 6: 36.13, 7: 5.161, 8: 0.7373, 9: 0.1053, 10: 0.01504 };

function resLabel(r) {
  const a = H3_AREA_KM2[r];
  return a ? t("map.res.option", { res: r, area: fmtNum(a, a < 1 ? 2 : 1) }) : String(r);
}

async function start() {
  initBasemap();
  setStatus(t("map.loading"), "info");
  const { dataset } = await pickDataset();
  state.ds = dataset;
  state.tz = dataset.timezone || "UTC";
  // What the operator counts, from the dataset (a release's unit says it too).
  if (dataset.unit_name) {
    state.unitName = dataset.unit_name;
    const footfall = [...ui.metric.options].find((o) => o.value === "footfall");
    if (footfall) footfall.textContent = t("map.metric.footfall_of", { name: countedMany(state.unitName) });
  }
  showDatasetTitle(dataset);
  const areaP = loadArea(dataset.dataset).catch((e) => showError(e, t("map.err.area")));
  for (const z of Array.isArray(dataset.zones) ? dataset.zones : []) state.zoneNames.set(z.zone_id, z.name || z.zone_id);
  // People per zone, by period, where the policy publishes presence.
  const presence = dataset.presence;
  const planned = new Set((dataset.publication || []).filter((p) => p.metric === "presence").map((p) => p.period));
  if (presence && presence.periods) {
    for (const [name, b] of Object.entries(presence.periods)) {
      if (!planned.has(name)) continue;
      ui.metric.append(el("option", { value: `presence:${name}` },
        t("map.metric.presence", { period: codeLabel("map.period", name), from: b.from, to: b.to })));
    }
    for (const s of presence.segments || []) ui.segment.append(el("option", { value: s }, codeLabel("map.segment", s)));
  }
  // The audiences of this policy, whatever they are called.
  const audiences = Object.keys(dataset.audiences || {});
  if (audiences.length) setChildren(ui.audience, audiences.map((a) => el("option", { value: a }, codeLabel("map.audience", a))));
  ui.audience.value = "public";
  ui.metric.disabled = ui.metric.options.length < 2;

  // Resolutions with public footfall releases.
  const resolutions = Array.isArray(dataset.resolutions) ? dataset.resolutions : [];
  const counts = await Promise.all(
    resolutions.map((r) =>
      api(releasesUrl({ res: r, limit: 1 })).then((x) => x.total, () => 0)),
  );
  const available = resolutions.filter((_, i) => counts[i] > 0);
  // Start on the coarsest resolution published hourly (else the coarsest
  // published at all): what this dataset's plan makes, not Marseille's.
  const hourlyCounts = await Promise.all(
    available.map((r) =>
      api(releasesUrl({ res: r, bin: "1h", limit: 1 })).then((x) => x.total, () => 0)),
  );
  const hourly = available.filter((_, i) => hourlyCounts[i] > 0);
  await areaP;
  state.fitted = false;
  resizeCanvas();
  fitView();
  if (state.initialHash.view) {
    state.view = { ...state.initialHash.view };
    afterViewChange();
  }
  state.selected = state.initialHash.selected || null;
  if (!available.length) {
    setChildren(ui.res, el("option", { value: "" }, t("map.res.none")));
    ui.res.disabled = true;
    // A dataset that publishes people per zone but no hex footfall opens
    // on people.
    const people = [...ui.metric.options].find((o) => o.value.startsWith("presence:"));
    if (people) {
      const wanted = [...ui.metric.options].some((o) => o.value === state.initialHash.metric) ? state.initialHash.metric : people.value;
      ui.metric.value = wanted;
      await changeMetric(wanted, state.initialHash.segment || "all");
      return;
    }
    ui.release.disabled = true;
    showEmpty(t("map.status.no_footfall"));
    return;
  }
  setChildren(ui.res, available.map((r) => el("option", { value: String(r) }, resLabel(r))));
  const wantRes = available.includes(state.initialHash.res) ? state.initialHash.res
    : (hourly.length ? Math.min(...hourly) : Math.min(...available));
  ui.res.value = String(wantRes);
  const span = await spanOf(wantRes);
  setDateRange(span);
  ui.date.value = state.initialHash.date || span.lastHourly || span.last || "";
  const wanted = state.initialHash.metric;
  if (wanted && wanted !== "footfall" && [...ui.metric.options].some((o) => o.value === wanted)) {
    ui.metric.value = wanted;
    state.metric = wanted;
    ui.segmentField.hidden = false;
    ui.res.disabled = true;
    if ([...ui.segment.options].some((o) => o.value === state.initialHash.segment)) {
      state.segment = state.initialHash.segment;
      ui.segment.value = state.segment;
    }
  }
  await loadReleases(state.initialHash.release, state.initialHash.bin);
}

start().catch((e) => {
  showError(e, t("map.err.start"));
  document.body.dataset.state = "error";
});
watchPublishing(null);

/**
 * While the server publishes its plan beside serving (a demo's first
 * start, newest days first), says how far it is; a page that found no
 * release to show reloads once the plan is done, and every day's list is
 * read afresh on each change of day.
 */
async function watchPublishing(seenAtStart) {
  let h;
  try {
    h = await api("/healthz");
  } catch {
    return;
  }
  const box = $("publishing");
  const releases = Number(h.releases) || 0;
  const start = seenAtStart === null ? releases : seenAtStart;
  if (!h.publishing) {
    box.hidden = true;
    if (seenAtStart !== null && document.body.dataset.state === "empty") location.reload();
    return;
  }
  box.textContent = t("map.publishing", { done: fmtInt(h.publishing.done), total: fmtInt(h.publishing.total) });
  box.hidden = false;
  // Lists cached for the page (date range, resolutions) are stale now.
  state.spans.clear();
  setTimeout(() => watchPublishing(start), 2000);
}

function stepDay(n) {
  if (!ui.date.value) return;
  const next = addDays(ui.date.value, n);
  if ((ui.date.min && next < ui.date.min) || (ui.date.max && next > ui.date.max)) return;
  ui.date.value = next;
  loadReleases();
}
ui.dayPrev.addEventListener("click", () => stepDay(-1));
ui.dayNext.addEventListener("click", () => stepDay(1));
