// The viewer's words: one catalogue per language (`/web/lang-en.json`,
// `/web/lang-fr.json`), chosen from `?lang=`, then the user's earlier
// choice (localStorage), then the browser's languages; English otherwise.
// Every text of the pages comes from here: HTML elements name their key in
// `data-i18n` (text) or `data-i18n-title`, `data-i18n-aria-label`,
// `data-i18n-placeholder`, `data-i18n-alt` (attributes), and scripts call
// `t(key, vars)`. What the server says (problem details, zone and landmark
// names) is shown as it comes.

/** The languages with a catalogue, in the switch's order. */
export const LANGS = { en: "English", fr: "Français" };
const STORE_KEY = "hexflow.lang";

function chooseLang() {
  const asked = new URLSearchParams(location.search).get("lang");
  if (asked && asked in LANGS) return asked;
  try {
    const saved = localStorage.getItem(STORE_KEY);
    if (saved && saved in LANGS) return saved;
  } catch {
    // storage refused (private mode, file://): fall through
  }
  for (const l of navigator.languages || [navigator.language || ""]) {
    const base = String(l).toLowerCase().split("-")[0];
    if (base in LANGS) return base;
  }
  return "en";
}

/** The page's language ("en" or "fr"). */
export const lang = chooseLang();
/** The locale of numbers and dates in that language. */
export const locale = lang === "fr" ? "fr-FR" : "en-GB";

async function load(l) {
  try {
    const resp = await fetch(`/web/lang-${l}.json`);
    if (resp.ok) return await resp.json();
  } catch {
    // unreachable server: keys are shown, the status line says why later
  }
  return {};
}

const catalogue = await load(lang);

/** Keys asked for that the catalogue lacks (a browser test reads it). */
export const missing = new Set();

/**
 * The text of `key` in the page's language, with `{name}` replaced by
 * `vars.name`. A key the catalogue lacks is shown as itself (and recorded
 * in `missing`), never as an empty string.
 */
export function t(key, vars = {}) {
  let s = catalogue[key];
  if (typeof s !== "string") {
    missing.add(key);
    s = key;
  }
  return s.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/**
 * The catalogue's name of a code the server sends (`prefix.code`, e.g.
 * `map.segment.tourist`), or the code itself: a policy may name segments,
 * periods or audiences that no catalogue knows, which is not a missing key.
 */
export function tCode(prefix, code) {
  const s = catalogue[`${prefix}.${code}`];
  return typeof s === "string" ? s : String(code);
}

const plural = new Intl.PluralRules(locale);

/** `t(key + ".one" | ".other", {n, …vars})` after the language's plural rule. */
export function tn(key, n, vars = {}) {
  const form = plural.select(n) === "one" ? "one" : "other";
  return t(`${key}.${form}`, { n, ...vars });
}

const ATTRS = ["title", "aria-label", "placeholder", "alt"];

/** Puts the catalogue's text into every `data-i18n*` element under `root`. */
export function applyI18n(root = document) {
  for (const e of root.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const a of ATTRS) {
    for (const e of root.querySelectorAll(`[data-i18n-${a}]`)) {
      e.setAttribute(a, t(e.getAttribute(`data-i18n-${a}`)));
    }
  }
}

/** Switching reloads the page in the other language; its state is in the URL. */
function wireSwitch() {
  const sel = document.getElementById("lang");
  if (!sel) return;
  sel.replaceChildren(
    ...Object.entries(LANGS).map(([code, name]) => {
      const o = document.createElement("option");
      o.value = code;
      // The code, short enough for one header line on a phone; the name
      // in the option's own language for screen readers and tooltips.
      o.textContent = code.toUpperCase();
      o.title = name;
      o.setAttribute("aria-label", name);
      o.lang = code;
      o.selected = code === lang;
      return o;
    }),
  );
  sel.addEventListener("change", () => {
    try {
      localStorage.setItem(STORE_KEY, sel.value);
    } catch {
      // not stored: `?lang=` below still carries it
    }
    const url = new URL(location.href);
    if (url.searchParams.has("lang")) url.searchParams.set("lang", sel.value);
    if (url.href === location.href) location.reload();
    else location.replace(url.href);
  });
}

document.documentElement.lang = lang;
applyI18n();
wireSwitch();
