//! The web viewer: static files from `web/`, compiled into the binary (no
//! build step, no CDN, no request leaves the page's origin).

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AppState, Problem};

/// (name, content type, bytes) of every file of the viewer.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "transparency.html",
        "text/html; charset=utf-8",
        include_str!("../../web/transparency.html"),
    ),
    (
        "views.html",
        "text/html; charset=utf-8",
        include_str!("../../web/views.html"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/views.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/common.js"),
    ),
    (
        "map.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/map.js"),
    ),
    (
        "transparency.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/transparency.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/i18n.js"),
    ),
    (
        "lang-en.json",
        "application/json",
        include_str!("../../web/lang-en.json"),
    ),
    (
        "lang-fr.json",
        "application/json",
        include_str!("../../web/lang-fr.json"),
    ),
];

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { file("index.html", &h) }))
        .route(
            "/transparency",
            get(|h: HeaderMap| async move { file("transparency.html", &h) }),
        )
        .route("/views", get(|h: HeaderMap| async move { file("views.html", &h) }))
        .route(
            "/web/{file}",
            get(
                |name: Result<Path<String>, axum::extract::rejection::PathRejection>, h: HeaderMap| async move {
                    // A name that is not UTF-8 once decoded (`%C0%AE`): a
                    // problem like any other bad path, not axum's text.
                    match name {
                        Ok(Path(name)) => file(&name, &h),
                        Err(e) => Problem::from(e).into_response(),
                    }
                },
            ),
        )
}

fn file(name: &str, headers: &HeaderMap) -> Response {
    let Some((_, ctype, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "no such file",
            format!("the viewer has no file {name:?}"),
        )
        .into_response();
    };
    // For work on the viewer: HEXFLOW_WEB_DIR serves the same file names
    // from that directory, so an edit shows on reload without a rebuild;
    // otherwise the compiled-in bytes, not copied.
    static WEB_DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let from_disk = WEB_DIR
        .get_or_init(|| std::env::var_os("HEXFLOW_WEB_DIR").map(Into::into))
        .as_ref()
        .and_then(|dir| std::fs::read_to_string(dir.join(name)).ok());
    let body: std::borrow::Cow<'static, str> = from_disk.map_or(std::borrow::Cow::Borrowed(*body), Into::into);
    // The files change only with the binary: revalidate, then 304.
    let etag = format!("\"{}\"", &crate::util::sha256_parts([body.as_bytes()])[..32]);
    let base = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            // No request may leave the origin, except the basemap a user
            // sets in the map's settings: its tiles (img-src) and, for a
            // style URL, the style document (connect-src), https only.
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data: https:; style-src 'self'; script-src 'self'; connect-src 'self' https:",
            ),
        ),
    ];
    if super::etag_matches(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, base).into_response();
    }
    (base, [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))], body).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::FILES;

    fn catalogue(lang: &str) -> BTreeMap<String, String> {
        let (_, _, text) = FILES
            .iter()
            .find(|(n, _, _)| *n == format!("lang-{lang}.json"))
            .expect("catalogue is served");
        serde_json::from_str(text).expect("catalogue is a flat JSON object of strings")
    }

    /// `{name}` placeholders of a catalogue text.
    fn placeholders(s: &str) -> BTreeSet<&str> {
        s.split('{')
            .skip(1)
            .filter_map(|p| p.split_once('}').map(|(name, _)| name))
            .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .collect()
    }

    /// Literal keys the pages ask for: `t("k"`, `tn("k"` (k.one and
    /// k.other) in scripts, `data-i18n…="k"` in pages. Keys built at run
    /// time are covered by the browser test, which fails on any miss.
    fn keys_used() -> BTreeSet<(String, &'static str)> {
        let mut keys = BTreeSet::new();
        for (name, _, text) in FILES {
            if name.ends_with(".js") {
                for (call, forms) in [("t(", &[""][..]), ("tn(", &[".one", ".other"][..])] {
                    for (at, _) in text.match_indices(call) {
                        let before = text[..at].chars().next_back();
                        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                            continue;
                        }
                        let rest = &text[at + call.len()..];
                        let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                            continue;
                        };
                        let key = &rest[1..rest[1..].find(q).map_or(0, |e| e + 1)];
                        for f in forms {
                            keys.insert((format!("{key}{f}"), *name));
                        }
                    }
                }
            } else if name.ends_with(".html") {
                for (at, _) in text.match_indices("data-i18n") {
                    let rest = &text[at..];
                    let Some((attr, value)) = rest.split_once("=\"") else {
                        continue;
                    };
                    if attr.contains(char::is_whitespace) || attr.contains('>') {
                        continue;
                    }
                    let key = value.split('"').next().unwrap_or_default();
                    keys.insert((key.to_owned(), *name));
                }
            }
        }
        keys
    }

    #[test]
    fn both_catalogues_have_every_key_the_pages_use_with_the_same_placeholders() {
        let (en, fr) = (catalogue("en"), catalogue("fr"));
        let only_en: Vec<_> = en.keys().filter(|k| !fr.contains_key(*k)).collect();
        let only_fr: Vec<_> = fr.keys().filter(|k| !en.contains_key(*k)).collect();
        assert!(only_en.is_empty(), "keys without a French text: {only_en:?}");
        assert!(only_fr.is_empty(), "keys without an English text: {only_fr:?}");
        for (key, text_en) in &en {
            let text_fr = &fr[key];
            assert!(
                !text_en.trim().is_empty() && !text_fr.trim().is_empty(),
                "{key} is empty in a catalogue"
            );
            assert_eq!(
                placeholders(text_en),
                placeholders(text_fr),
                "{key} has other placeholders in French than in English"
            );
        }
        let used = keys_used();
        assert!(used.len() > 40, "the key scan found only {} keys", used.len());
        let missing: Vec<_> = used.iter().filter(|(k, _)| !en.contains_key(k)).collect();
        assert!(missing.is_empty(), "keys used but in no catalogue: {missing:?}");
    }
}
