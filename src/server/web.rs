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
            get(|Path(name): Path<String>, h: HeaderMap| async move { file(&name, &h) }),
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
    // from that directory, so an edit shows on reload without a rebuild.
    let from_disk = std::env::var_os("HEXFLOW_WEB_DIR")
        .and_then(|dir| std::fs::read_to_string(std::path::Path::new(&dir).join(name)).ok());
    let body: String = from_disk.unwrap_or_else(|| (*body).to_owned());
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
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return (StatusCode::NOT_MODIFIED, base).into_response();
    }
    (base, [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))], body).into_response()
}
