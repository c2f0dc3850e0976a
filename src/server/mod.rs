//! The HTTP edge: the public read-only API, token-protected queries and
//! administration, the embedded web viewer, health and metrics (axum).
//!
//! Everything served comes from the release store (noisy, immutable values
//! and their manifests), the ledger (costs) and the grid (public geometry).
//! No route reads the count store: the only way a count becomes a response
//! is through a release, which charges the ledger first.
//!
//! Release content never changes once written, so its responses carry a
//! strong `ETag` and `Cache-Control: public, max-age=31536000, immutable`;
//! the ledger, lists and health are `no-cache`. No request header goes
//! into a publicly cached answer: URLs written into one come from
//! `--public-url`, else from the request's `Host` in an answer sent
//! `private`; forwarded headers are never read. Errors are RFC 9457
//! problem+json documents whose `detail` says what to change. Connections
//! are served by [`conn`], with timeouts and a bound on their number.

mod admin;
mod conn;
mod data;
mod metrics;
mod releases;
mod rows;
mod signing;
mod views;
mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::policy::Policy;
use crate::privacy::ledger::{Ledger, LedgerUrl};
use crate::release::Releaser;
pub use conn::{BODY_PROGRESS_BYTES, ConnLimits};
pub use data::{ReleaseIndex, ReleaseSummary};

/// The OpenAPI document (hand-written; a test checks it names every route).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route as (method, path template): the router, the OpenAPI
/// document and the route tests are checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/datasets"),
    ("get", "/api/v1/datasets/{dataset}/area"),
    ("get", "/api/v1/releases"),
    ("get", "/api/v1/releases/{id}"),
    ("get", "/api/v1/releases/{id}/values"),
    ("get", "/api/v1/releases/{id}/series"),
    ("get", "/api/v1/releases/{id}/map.png"),
    ("get", "/api/v1/releases/{id}/tilejson.json"),
    ("get", "/api/v1/releases/{id}/tiles/{z}/{x}/{y}"),
    ("post", "/api/v1/releases/{id}/tile-url"),
    ("get", "/api/v1/ledger"),
    ("get", "/api/v1/ledger/releases"),
    ("get", "/api/v1/views/seasonality"),
    ("get", "/api/v1/views/event"),
    ("get", "/api/v1/views/flows"),
    ("get", "/api/v1/views/forecast"),
    ("get", "/api/v1/views/visitors"),
    ("get", "/api/v1/views/change"),
    ("post", "/api/v1/queries"),
    ("post", "/api/v1/admin/ingest"),
    ("post", "/api/v1/admin/publish"),
];

/// How the server is run.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// Origins allowed by CORS; `*` allows any; empty sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest uploaded delivery (bytes).
    pub max_upload_bytes: usize,
    /// Absolute base URL of the server as clients see it (`--public-url`):
    /// the only base written into publicly cacheable answers (TileJSON).
    /// Without it URLs follow the request's `Host` and those answers are
    /// `private`; forwarded headers are never read.
    pub public_url: Option<String>,
    /// The privacy ledger (`--ledger`): the data dir's SQLite file, or a
    /// PostgreSQL ledger shared with other instances.
    pub ledger: LedgerUrl,
    /// Timeouts and the bound on open connections.
    pub limits: ConnLimits,
}

impl ServeConfig {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            cors_origins: Vec::new(),
            max_upload_bytes: 512 << 20,
            public_url: None,
            ledger: LedgerUrl::in_data_dir(data_dir),
            limits: ConnLimits::default(),
        }
    }
}

/// Largest JSON body accepted outside uploads.
const MAX_JSON_BODY: usize = 64 << 10;

/// One dataset served: its policy, grid and releaser.
pub struct Dataset {
    pub releaser: Releaser,
    pub places: rows::Places,
}

/// Shared state of the server.
pub struct AppState {
    pub config: ServeConfig,
    pub datasets: BTreeMap<String, Arc<Dataset>>,
    pub index: RwLock<ReleaseIndex>,
    cache: data::Cache,
    bodies: BodyCache,
    /// Release lists by (index version, audience, query).
    lists: ListCache,
    /// Ledger answers by (ledger version, index version, route and query).
    ledger_bodies: ListCache,
    /// Whether the ledger changed: a connection that asks, or (PostgreSQL)
    /// a listener that is told.
    ledger_watch: Arc<std::sync::Mutex<LedgerWatch>>,
    metrics: metrics::Metrics,
    /// Renders (maps, tiles, charts) at once: at most one per core, so that
    /// a client asking for many never-seen images queues behind them while
    /// cached answers keep flowing.
    renders: Arc<tokio::sync::Semaphore>,
    /// The key of signed tile URLs, read from the data dir on first use.
    tile_key: std::sync::OnceLock<Vec<u8>>,
    /// A publication running beside the server (the demo's first start):
    /// `/healthz` says how far it is, and the index follows it.
    pub publishing: std::sync::OnceLock<Arc<crate::release::publish::Progress>>,
    /// Set once the index has read what the publication made: only then
    /// does `/healthz` say it is done.
    publication_listed: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// The key signed tile URLs are checked with (read once, then held).
    fn tile_key(&self) -> Result<&[u8], Problem> {
        if let Some(k) = self.tile_key.get() {
            return Ok(k);
        }
        let k = signing::key(&self.config.data_dir)?;
        Ok(self.tile_key.get_or_init(|| k))
    }
}

/// Renders drawn at once (see [`AppState`]).
fn render_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Errors of server start-up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Release(#[from] crate::release::ReleaseError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server stopped: {0}")]
    Io(#[from] std::io::Error),
    #[error("no dataset to serve: {0}")]
    NoDataset(String),
}

impl AppState {
    /// State for `policies` over `config.data_dir`; indexes the release store.
    pub fn new(policies: Vec<Policy>, config: ServeConfig) -> Result<Self, ServeError> {
        if policies.is_empty() {
            return Err(ServeError::NoDataset("no policy was given".into()));
        }
        let mut datasets = BTreeMap::new();
        for p in policies {
            let releaser = Releaser::new(p, &config.data_dir)?.with_ledger_url(config.ledger.clone())?;
            datasets.insert(
                releaser.policy.dataset().to_string(),
                Arc::new(Dataset {
                    places: rows::Places::of(&releaser.grid),
                    releaser,
                }),
            );
        }
        // Uploads are removed after their ingest; a crash mid-ingest left
        // a delivery's raw counts here, outside the store's bookkeeping.
        // Each upload's folder is named `<pid>-<n>`: a folder of a process
        // still running (another server, or this data dir's server while
        // `evaluate` starts) is its upload in flight, and stays.
        if let Ok(entries) = std::fs::read_dir(config.data_dir.join("uploads")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.split_once('-').map_or("", |x| x.0);
                let alive =
                    !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && Path::new("/proc").join(pid).exists();
                if alive {
                    continue;
                }
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        let index = ReleaseIndex::scan(&config.data_dir, datasets.keys());
        Ok(Self {
            config,
            datasets,
            index: RwLock::new(index),
            cache: data::Cache::default(),
            bodies: BodyCache::default(),
            lists: ListCache::default(),
            ledger_bodies: ListCache::default(),
            ledger_watch: Arc::default(),
            metrics: metrics::Metrics::default(),
            renders: Arc::new(tokio::sync::Semaphore::new(render_permits())),
            tile_key: std::sync::OnceLock::new(),
            publishing: std::sync::OnceLock::new(),
            publication_listed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn dataset(&self, name: &str) -> Result<&Arc<Dataset>, Problem> {
        self.datasets.get(name).ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown dataset",
                format!(
                    "no dataset {name:?} is served here (served: {})",
                    self.datasets.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// `?dataset=`, which may be left out when one dataset is served.
    fn pick(&self, name: Option<&String>) -> Result<&Arc<Dataset>, Problem> {
        match name {
            Some(n) => self.dataset(n),
            None if self.datasets.len() == 1 => self
                .datasets
                .values()
                .next()
                .ok_or_else(|| Problem::bad_request("no dataset")),
            None => Err(Problem::bad_request(format!(
                "several datasets are served; add ?dataset= (one of {})",
                self.datasets.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// A number that changes whenever any connection, of this process or
    /// another, has committed to the ledger since the last call
    /// (`Ledger::change_marker`, made monotonic here); `None` when the
    /// ledger cannot be asked, and then nothing is cached. Blocking: with
    /// PostgreSQL it is a round trip, unless the listener that this call
    /// starts is listening (then [`Self::pushed_ledger_version`] answers).
    fn ledger_version(&self) -> Option<u64> {
        let mut w = self
            .ledger_watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !w.listener && self.config.ledger.is_postgres() {
            w.listener = true;
            let watch = Arc::downgrade(&self.ledger_watch);
            let started = crate::privacy::db::listen_for_changes(&self.config.ledger, move |signal| {
                use crate::privacy::db::ChangeSignal;
                // The server is gone: the listener stops.
                let Some(watch) = watch.upgrade() else { return false };
                let mut w = watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match signal {
                    ChangeSignal::Quiet => {}
                    ChangeSignal::Changed => w.counter += 1,
                    // Either way what is cached may be stale: a new
                    // version, and a fresh read when asking again.
                    ChangeSignal::Listening | ChangeSignal::Lost => {
                        w.listening = signal == ChangeSignal::Listening;
                        w.last = None;
                        w.counter += 1;
                    }
                }
                true
            });
            if let Err(e) = started {
                tracing::warn!("ledger answers ask the ledger per request: {e}");
            }
        }
        if w.listening {
            return Some(w.counter);
        }
        if w.conn.is_none() {
            w.conn = Ledger::open(&self.config.ledger).ok();
        }
        let seen = match w.conn.as_mut()?.change_marker() {
            Ok(v) => v,
            Err(_) => {
                w.conn = None;
                return None;
            }
        };
        if w.last != Some(seen) {
            w.last = Some(seen);
            w.counter += 1;
        }
        Some(w.counter)
    }

    /// The ledger's version without asking it, when a listener is told of
    /// every change (PostgreSQL); `None` otherwise.
    fn pushed_ledger_version(&self) -> Option<u64> {
        let w = self
            .ledger_watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.listening.then_some(w.counter)
    }

    /// Re-reads the release store.
    fn reload_index(&self) {
        let index = ReleaseIndex::scan(&self.config.data_dir, self.datasets.keys());
        *self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner) = index;
    }

    /// Re-reads the release store after a publish or query of this process.
    pub fn refresh_index(&self) {
        self.reload_index();
        // What this process just charged is in the next ledger answer,
        // before the listener hears of it (a planner's question, then the
        // transparency page).
        let mut w = self
            .ledger_watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.last = None;
        w.counter += 1;
    }
}

/// Loads every policy of `policies_dir` (`*.toml`) whose dataset has data or
/// releases in `data_dir`; with none, every policy.
pub fn load_policies(policies_dir: &Path, data_dir: &Path) -> Result<Vec<Policy>, ServeError> {
    let mut all = Vec::new();
    let entries = std::fs::read_dir(policies_dir)
        .map_err(|e| ServeError::NoDataset(format!("cannot read {}: {e}", policies_dir.display())))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        match Policy::load(&p) {
            Ok(policy) => all.push(policy),
            Err(e) => tracing::warn!("skipping policy {}: {e}", p.display()),
        }
    }
    let with_data: Vec<Policy> = all
        .iter()
        .filter(|p| {
            data_dir.join("store").join(p.dataset()).exists() || data_dir.join("releases").join(p.dataset()).exists()
        })
        .cloned()
        .collect();
    Ok(if with_data.is_empty() { all } else { with_data })
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/datasets", get(releases::datasets))
        .route("/datasets/{dataset}/area", get(releases::area))
        .route("/releases", get(releases::list))
        .route("/releases/{id}", get(releases::manifest))
        .route("/releases/{id}/values", get(releases::values))
        .route("/releases/{id}/series", get(releases::series))
        .route("/releases/{id}/map.png", get(releases::map_png))
        .route("/releases/{id}/tilejson.json", get(releases::tilejson))
        .route("/releases/{id}/tiles/{z}/{x}/{y}", get(releases::tile))
        .route("/releases/{id}/tile-url", post(releases::tile_url))
        .route("/ledger", get(releases::ledger))
        .route("/ledger/releases", get(releases::ledger_releases))
        .route("/views/seasonality", get(views::seasonality))
        .route("/views/event", get(views::event))
        .route("/views/flows", get(views::flows))
        .route("/views/forecast", get(views::forecast))
        .route("/views/visitors", get(views::visitors))
        .route("/views/change", get(views::change))
        .route("/queries", post(admin::query))
        .route("/admin/publish", post(admin::publish))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        // Uploads are streamed to disk by the handler, which enforces
        // `max_upload_bytes` itself (after the token check).
        .route("/admin/ingest", post(admin::ingest));
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .route("/api/openapi.json", get(openapi))
        .nest("/api/v1", api.route("/openapi.json", get(openapi)))
        .merge(web::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), conn::slow_bodies))
        .layer(axum::middleware::from_fn(problems_only))
        .layer(axum::middleware::from_fn(uri_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track));
    if let Some(cors) = cors_layer(&state.config.cors_origins) {
        app = app.layer(cors);
    }
    // Outermost, so that it sees what `--cors-origin` decided.
    app.layer(axum::middleware::from_fn(public_release_cors))
        .with_state(state)
}

/// Public, immutable release content is safe to share with any page:
/// MapLibre, deck.gl or kepler.gl-by-URL load it without an administrator
/// having to name their origin. Only for requests without a token, answered
/// with success and not marked private; everything else (queries, admin,
/// views, the ledger) follows `--cors-origin`.
async fn public_release_cors(req: Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let release_route = path == "/api/v1/releases"
        || path.starts_with("/api/v1/releases/")
        || path == "/api/v1/datasets"
        || (path.starts_with("/api/v1/datasets/") && path.ends_with("/area"));
    let open = release_route
        && matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD)
        && !req.headers().contains_key(header::AUTHORIZATION);
    // A signed tile URL is its own credential: whoever holds it may load
    // it, from any page (MapLibre reads tiles with CORS).
    let signed = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("sig=")));
    let mut resp = next.run(req).await;
    let private = resp
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("private"));
    let ok = resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED;
    let open_content = resp.extensions().get::<OpenToAnyOrigin>().is_some();
    if open
        && ok
        && (!private || signed || open_content)
        && !resp.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("ETag"));
    }
    resp
}

/// Marks an answer `private` for another reason than its audience (a URL
/// made from the request's `Host`): still sent with CORS `*`.
#[derive(Debug, Clone, Copy)]
struct OpenToAnyOrigin;

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::HEAD,
                axum::http::Method::POST,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::IF_NONE_MATCH])
            .expose_headers([header::ETAG]),
    )
}

/// Serves `state` on `addr` until Ctrl-C; `on_ready` gets the bound address
/// (useful with port 0).
pub async fn serve(
    state: Arc<AppState>,
    addr: SocketAddr,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    on_ready(listener.local_addr()?);
    serve_until(state, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Serves `state` on `listener` until `shutdown` completes, with the
/// timeouts and the connection bound of `state.config.limits` (see
/// [`conn`]); the answers in flight finish first.
pub async fn serve_until(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = router(state.clone());
    let follower = tokio::spawn(follow_ledger(state.clone()));
    let served = conn::serve_connections(state, app, listener, shutdown).await;
    follower.abort();
    served?;
    Ok(())
}

/// Lists what any process or machine publishes on the same data dir and
/// ledger (a nightly `publish`, `hexflow release`, workers, a second
/// server): every second the ledger's version is read (SQLite's
/// `data_version`, PostgreSQL's change counter or what its listener was
/// told), and a change re-reads the release store. A release is stored
/// before the ledger marks it published, so the commit that marks it finds
/// it on disk; the version is read before the store, so a change during
/// the read is seen at the next tick. `/healthz` and every list follow.
async fn follow_ledger(state: Arc<AppState>) {
    let mut seen = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let s = state.clone();
        let Ok(Some(version)) = tokio::task::spawn_blocking(move || s.ledger_version()).await else {
            continue;
        };
        if seen != Some(version) {
            seen = Some(version);
            let s = state.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload_index()).await;
        }
    }
}

/// While `progress` runs, re-reads the release store every second, so that
/// what a publication beside the server makes is listed as it comes (the
/// newest days first); a last read when it ends.
pub async fn follow_publication(state: Arc<AppState>, progress: Arc<crate::release::publish::Progress>) {
    use std::sync::atomic::Ordering;
    let _ = state.publishing.set(progress.clone());
    let every = std::time::Duration::from_secs(1);
    let mut read_at = tokio::time::Instant::now();
    loop {
        // The end is looked for ten times a second, so that a plan with
        // nothing left to do (a restart) is over at once, not in a second.
        tokio::time::sleep(every / 10).await;
        let done = progress.finished.load(Ordering::Relaxed);
        if !done && read_at.elapsed() < every {
            continue;
        }
        read_at = tokio::time::Instant::now();
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.refresh_index()).await;
        if done {
            state.publication_listed.store(true, Ordering::Release);
            break;
        }
    }
}

/// How long `/healthz` waits for the ledger's answer before saying it is
/// unavailable.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    use std::sync::atomic::Ordering;
    // Windows of the plan done so far while a publication runs beside the
    // server; null otherwise. Read before the count: once it says done,
    // the count holds every release the plan made.
    let publishing = state
        .publishing
        .get()
        .filter(|_| !state.publication_listed.load(Ordering::Acquire))
        .map(|p| {
            serde_json::json!({
                "done": p.done.load(Ordering::Relaxed),
                "total": p.total.load(Ordering::Relaxed),
            })
        });
    let releases = state.index.read().map(|i| i.len()).unwrap_or(0);
    // The ledger must answer: without it nothing can be charged or shown
    // (stored releases still are). Asked with a deadline, so that an
    // unreachable ledger is reported at once, not after its timeouts.
    let url = state.config.ledger.clone();
    let ledger = blocking(move || Ok(crate::privacy::db::probe(&url, HEALTH_WAIT).is_ok()))
        .await
        .unwrap_or(false);
    let status = if ledger {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ledger { "ok" } else { "ledger unavailable" },
        "datasets": state.datasets.keys().collect::<Vec<_>>(),
        "releases": releases,
        "publishing": publishing,
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, no_cache(), axum::Json(body)).into_response()
}

async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        OPENAPI,
    )
        .into_response()
}

async fn not_found(req: Request) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such endpoint",
        format!(
            "{} {} is not an endpoint of hexflow; the API is described at /api/openapi.json",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        format!(
            "{} is not allowed on {}; the API is described at /api/openapi.json",
            req.method(),
            req.uri().path()
        ),
    )
}

/// `Cache-Control: no-cache` for answers that change (ledger, lists, health).
fn no_cache() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))]
}

/// Serialised release lists of one version of the release index: the list
/// changes only when the index does (a publish, a query), so thousands of
/// clients polling it cost one serialisation per version and query.
#[derive(Default)]
struct ListCache {
    inner: std::sync::Mutex<ListCacheInner>,
}

#[derive(Default)]
struct ListCacheInner {
    version: u64,
    bodies: std::collections::HashMap<String, axum::body::Bytes>,
    bytes: usize,
}

/// Bytes a cache counts for an entry beside its body: the key, and the
/// map's and queue's slots with the allocations' headers (measured
/// ~100–150 bytes; counted high).
const ENTRY_OVERHEAD_BYTES: usize = 192;

/// A body without spare capacity, so that what caches count (its length)
/// is what it holds: a `Vec` grown by doubling can hold twice its length,
/// and `Bytes` keeps all of it.
fn tight(mut v: Vec<u8>) -> axum::body::Bytes {
    v.shrink_to_fit();
    axum::body::Bytes::from(v)
}

/// See [`AppState::ledger_version`].
#[derive(Default)]
struct LedgerWatch {
    conn: Option<Ledger>,
    last: Option<i64>,
    counter: u64,
    /// The PostgreSQL listener was started (once per server).
    listener: bool,
    /// It is listening: `counter` moves at every change, no read needed.
    listening: bool,
}

/// Most bytes of lists (or ledger answers) kept per index version: past
/// it, further queries are answered without being kept.
pub const LIST_CACHE_BYTES: usize = 32 << 20;

impl ListCache {
    fn get(&self, version: u64, key: &str) -> Option<axum::body::Bytes> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (inner.version == version)
            .then(|| inner.bodies.get(key).cloned())
            .flatten()
    }

    fn put(&self, version: u64, key: String, body: axum::body::Bytes) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.version != version {
            // A newer index: every list of the old one is stale.
            if inner.version > version {
                return;
            }
            *inner = ListCacheInner {
                version,
                ..ListCacheInner::default()
            };
        }
        let cost = body.len() + key.len() + ENTRY_OVERHEAD_BYTES;
        if inner.bytes + cost <= LIST_CACHE_BYTES && !inner.bodies.contains_key(&key) {
            inner.bytes += cost;
            inner.bodies.insert(key, body);
        }
    }

    /// Bytes held now.
    fn bytes(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .bytes
    }
}

/// Bodies of immutable answers by ETag, so that the same bytes are never
/// serialised or rendered twice (release content cannot change).
#[derive(Default)]
struct BodyCache {
    inner: std::sync::Mutex<BodyCacheInner>,
}

#[derive(Default)]
struct BodyCacheInner {
    bodies: std::collections::HashMap<String, (axum::body::Bytes, &'static str)>,
    order: std::collections::VecDeque<String>,
    /// Bodies, keys (held twice) and [`ENTRY_OVERHEAD_BYTES`] each.
    bytes: usize,
}

/// Most bytes kept by the body cache (oldest entries leave first).
const BODY_CACHE_BYTES: usize = 256 << 20;

/// What the body cache counts for an entry.
fn body_cost(etag: &str, body: &axum::body::Bytes) -> usize {
    body.len() + 2 * etag.len() + ENTRY_OVERHEAD_BYTES
}

impl BodyCache {
    /// (entries, bytes) held now.
    fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (inner.bodies.len(), inner.bytes)
    }

    fn get(&self, etag: &str) -> Option<(axum::body::Bytes, &'static str)> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.bodies.get(etag).cloned()
    }

    fn put(&self, etag: String, body: axum::body::Bytes, content_type: &'static str) {
        if body.len() > BODY_CACHE_BYTES / 8 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.bodies.contains_key(&etag) {
            return;
        }
        inner.bytes += body_cost(&etag, &body);
        inner.order.push_back(etag.clone());
        inner.bodies.insert(etag, (body, content_type));
        while inner.bytes > BODY_CACHE_BYTES {
            let Some(old) = inner.order.pop_front() else { break };
            if let Some((b, _)) = inner.bodies.remove(&old) {
                inner.bytes -= body_cost(&old, &b);
            }
        }
    }
}

fn etag_of(parts: &[&str]) -> String {
    let mut all: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    all.push(env!("CARGO_PKG_VERSION").as_bytes());
    format!("\"{}\"", &crate::util::sha256_parts(all)[..32])
}

fn immutable_headers(etag: &str, public: bool) -> [(header::HeaderName, HeaderValue); 3] {
    [
        (
            header::ETAG,
            HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"\"")),
        ),
        (
            header::CACHE_CONTROL,
            // A release for a token-holding audience must never be served
            // from a shared cache to someone else.
            HeaderValue::from_static(if public {
                "public, max-age=31536000, immutable"
            } else {
                "private, max-age=31536000, immutable"
            }),
        ),
        (header::VARY, HeaderValue::from_static("Authorization")),
    ]
}

/// Does the request's `If-None-Match` (a list, or `*`) name `etag`?
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// A 304 when the client has the answer named by `parts`, or the answer
/// from the body cache; `None` when it must be computed.
fn cached(state: &AppState, headers: &HeaderMap, parts: &[&str], public: bool) -> Option<Response> {
    let etag = etag_of(parts);
    if etag_matches(headers, &etag) {
        return Some((StatusCode::NOT_MODIFIED, immutable_headers(&etag, public)).into_response());
    }
    let (body, content_type) = state.bodies.get(&etag)?;
    Some(
        (
            immutable_headers(&etag, public),
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response(),
    )
}

/// An immutable answer: strong ETag from `parts`, 304 when the client has
/// it, a year of caching, and the body computed at most once per process.
fn immutable(
    state: &AppState,
    headers: &HeaderMap,
    (parts, public): (&[&str], bool),
    content_type: &'static str,
    body: impl FnOnce() -> Result<Vec<u8>, Problem>,
) -> Response {
    if let Some(r) = cached(state, headers, parts, public) {
        return r;
    }
    match body() {
        Ok(bytes) => {
            let etag = etag_of(parts);
            let bytes = tight(bytes);
            state.bodies.put(etag.clone(), bytes.clone(), content_type);
            (
                immutable_headers(&etag, public),
                [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
                bytes,
            )
                .into_response()
        }
        Err(p) => p.into_response(),
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://hexflow.example/problems/{}", title.replace(' ', "-")),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", detail)
    }

    /// A ledger failure: 503 when the ledger is away (a refused or lost
    /// connection, a timeout), so that clients retry instead of reading a
    /// fault of the server; any other ledger error is internal.
    fn ledger(context: &str, e: crate::privacy::ledger::LedgerError) -> Self {
        match &e {
            crate::privacy::ledger::LedgerError::Db(db) if db.is_transient() => {
                tracing::warn!("{context}: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ledger unavailable",
                    format!(
                        "{context}: the privacy ledger does not answer; published releases are still served, try again shortly"
                    ),
                )
            }
            _ => Self::internal(context, e),
        }
    }

    /// An internal failure: logged in full, answered without internals.
    fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            format!("{context} failed; the server log has the cause"),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (status, headers, body).into_response()
    }
}

impl From<axum::extract::rejection::QueryRejection> for Problem {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Problem::bad_request(query_problem(&e.body_text()))
    }
}

/// A query-string error in terms of what the parameter takes, not of the
/// parser ("invalid digit found in string").
fn query_problem(text: &str) -> String {
    let msg = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    let expected = |field: &str| -> Option<&'static str> {
        Some(match field {
            "res" => "an H3 resolution, a whole number from 0 to 15",
            "from" | "to" | "day" | "date" | "baseline_from" | "baseline_to" => "a date, YYYY-MM-DD",
            "limit" | "offset" | "weeks" | "days" | "top" | "width" => "a whole number",
            "metric" => "footfall, flows or presence",
            "unit" => "hex or zone",
            "bin" => "1h, 1d, 1w or 1mo (a release list) or a bin number, instant or local time (a release's values)",
            "format" => "json, csv, geojson or parquet (png for views)",
            "weekdays" | "correction" => "true or false",
            _ => return None,
        })
    };
    match msg.split_once(": ") {
        Some((field, _)) if expected(field).is_some() => {
            format!(
                "query parameter {field} must be {}",
                expected(field).unwrap_or_default()
            )
        }
        _ => format!("query string: {msg}"),
    }
}

impl From<axum::extract::rejection::PathRejection> for Problem {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        Problem::bad_request(format!("path: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::JsonRejection> for Problem {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        let title = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "body too large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported media type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable body",
            _ => "bad request",
        };
        let detail = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => format!("JSON bodies are at most {MAX_JSON_BODY} bytes"),
            _ => format!("JSON body: {}", e.body_text()),
        };
        Problem::new(e.status(), title, detail)
    }
}

/// Every error is a problem document: an error answer of another type
/// (a rejection axum or tower-http answered in text) is rewritten as one,
/// its text as the detail (a 5xx's only in the log).
async fn problems_only(req: Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    // Problems, and JSON documents a handler chose to send with an error
    // status (`/healthz`'s 503 says which part is away), stay as they are.
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == b"application/problem+json" || v.starts_with(b"application/json")
    });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let reason = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let problem = if status.is_server_error() {
        // Its status kept (a 503 is not a 500), its text only in the log.
        tracing::error!("{reason}: {}", if text.is_empty() { &reason } else { &text });
        Problem::new(status, &reason, format!("{reason}; the server log has the cause"))
    } else {
        let detail = if text.is_empty() { reason.clone() } else { text };
        Problem::new(status, &reason, detail)
    };
    let mut out = problem.into_response();
    for h in [
        header::ALLOW,
        header::WWW_AUTHENTICATE,
        header::RETRY_AFTER,
        header::VARY,
    ] {
        if let Some(v) = parts.headers.get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    out
}

/// Longest request target (path and query) answered; longer ones get a
/// problem+json 414 (hyper itself answers 414 without a body past 64 KiB;
/// a series of 3,000 hexes needs 48 KiB).
pub const MAX_URI_BYTES: usize = 60 << 10;

async fn uri_limit(req: Request, next: axum::middleware::Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri too long",
            format!("the request target is {len} bytes; at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Draws an image off the async workers, at most one per core at a time
/// (waiting requests are counted in `/metrics`); the permit is held until
/// the drawing ends, whatever the client does meanwhile.
async fn rendering<T: Send + 'static>(
    state: &AppState,
    draw: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    state.metrics.render_waiting(1);
    let permit = state.renders.clone().acquire_owned().await;
    state.metrics.render_waiting(-1);
    let permit = permit.map_err(|e| Problem::internal("render queue", e))?;
    blocking(move || {
        let _permit = permit;
        draw()
    })
    .await
}

/// Runs blocking work (SQLite, Parquet, noise) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Problem> + Send + 'static) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal("a worker", e))?
}
