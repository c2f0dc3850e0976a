//! `/metrics` in the Prometheus text format: requests by route and status,
//! a latency histogram per route, and the size of the release index.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Upper bounds of the latency buckets (s).
const BUCKETS_S: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Route {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS_S.len()],
    sum_s: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(String, String), Route>>,
    /// Requests waiting for a render permit.
    renders_waiting: std::sync::atomic::AtomicI64,
    /// Open connections and what closed them.
    pub connections: super::conn::ConnStats,
}

impl Metrics {
    pub fn render_waiting(&self, delta: i64) {
        self.renders_waiting
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Middleware: counts every request under its route template (never the
/// concrete path, so ids do not blow up the label set).
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Only known methods become labels: a client must not grow the label set.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "OPTIONS" | "PUT" | "DELETE" | "PATCH") => m.to_string(),
        _ => "other".to_string(),
    };
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let secs = t0.elapsed().as_secs_f64();
    let mut routes = state
        .metrics
        .routes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let r = routes.entry((method, route)).or_default();
    *r.by_status.entry(resp.status().as_u16()).or_default() += 1;
    for (i, b) in BUCKETS_S.iter().enumerate() {
        if secs <= *b {
            r.buckets[i] += 1;
        }
    }
    r.sum_s += secs;
    r.count += 1;
    resp
}

pub async fn render(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hexflow_http_requests_total HTTP requests by route and status."
    );
    let _ = writeln!(out, "# TYPE hexflow_http_requests_total counter");
    let routes = state
        .metrics
        .routes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((method, route), r) in routes.iter() {
        for (status, n) in &r.by_status {
            let _ = writeln!(
                out,
                "hexflow_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP hexflow_http_request_duration_seconds Time to answer, by route."
    );
    let _ = writeln!(out, "# TYPE hexflow_http_request_duration_seconds histogram");
    for ((method, route), r) in routes.iter() {
        let l = format!("method=\"{method}\",route=\"{route}\"");
        for (b, n) in BUCKETS_S.iter().zip(r.buckets) {
            let _ = writeln!(
                out,
                "hexflow_http_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "hexflow_http_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            r.count
        );
        let _ = writeln!(out, "hexflow_http_request_duration_seconds_sum{{{l}}} {}", r.sum_s);
        let _ = writeln!(out, "hexflow_http_request_duration_seconds_count{{{l}}} {}", r.count);
    }
    drop(routes);
    let releases = state.index.read().map(|i| i.len()).unwrap_or(0);
    metric(
        &mut out,
        "hexflow_releases",
        "gauge",
        "Releases stored and served.",
        releases,
    );
    let (entries, bytes) = state.bodies.size();
    metric(
        &mut out,
        "hexflow_body_cache_bytes",
        "gauge",
        "Bytes of immutable answers (maps, tiles, values) kept in memory.",
        bytes,
    );
    metric(
        &mut out,
        "hexflow_body_cache_limit_bytes",
        "gauge",
        "Most bytes the body cache keeps.",
        super::BODY_CACHE_BYTES,
    );
    metric(
        &mut out,
        "hexflow_body_cache_entries",
        "gauge",
        "Answers kept in the body cache.",
        entries,
    );
    let (releases_held, value_bytes) = state.cache.size();
    metric(
        &mut out,
        "hexflow_value_cache_bytes",
        "gauge",
        "Bytes of release values (with keys and hex outlines) kept in memory.",
        value_bytes,
    );
    metric(
        &mut out,
        "hexflow_value_cache_limit_bytes",
        "gauge",
        "Most bytes the value cache keeps (beyond the release in use).",
        super::data::CACHE_BYTES,
    );
    metric(
        &mut out,
        "hexflow_value_cache_releases",
        "gauge",
        "Releases kept in the value cache.",
        releases_held,
    );
    metric(
        &mut out,
        "hexflow_list_cache_bytes",
        "gauge",
        &format!(
            "Bytes of release lists and ledger answers kept (at most {} each).",
            super::LIST_CACHE_BYTES
        ),
        state.lists.bytes() + state.ledger_bodies.bytes(),
    );
    metric(
        &mut out,
        "hexflow_renders_in_flight",
        "gauge",
        "Images being drawn now (at most one per core).",
        super::render_permits() - state.renders.available_permits(),
    );
    metric(
        &mut out,
        "hexflow_renders_waiting",
        "gauge",
        "Requests queued for a render.",
        state.metrics.renders_waiting.load(std::sync::atomic::Ordering::Relaxed),
    );
    let c = &state.metrics.connections;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let now = |a: &std::sync::atomic::AtomicUsize| a.load(std::sync::atomic::Ordering::Relaxed);
    metric(
        &mut out,
        "hexflow_connections_open",
        "gauge",
        "Connections open now.",
        now(&c.open),
    );
    metric(
        &mut out,
        "hexflow_connections_peak",
        "gauge",
        "Most connections open at once.",
        now(&c.peak),
    );
    metric(
        &mut out,
        "hexflow_connections_limit",
        "gauge",
        "Most connections served at once (--max-connections); more wait to be accepted.",
        now(&c.limit),
    );
    metric(
        &mut out,
        "hexflow_connections_accepted_total",
        "counter",
        "Connections accepted.",
        load(&c.accepted),
    );
    let _ = writeln!(
        out,
        "# HELP hexflow_connections_timed_out_total Connections closed by a timeout: idle (no request), headers (too slow), body (too slow), write (answer not read)."
    );
    let _ = writeln!(out, "# TYPE hexflow_connections_timed_out_total counter");
    for (reason, n) in [
        ("idle", &c.idle_timeouts),
        ("headers", &c.header_timeouts),
        ("body", &c.body_timeouts),
        ("write", &c.write_timeouts),
    ] {
        let _ = writeln!(
            out,
            "hexflow_connections_timed_out_total{{reason=\"{reason}\"}} {}",
            load(n)
        );
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        out,
    )
        .into_response()
}

/// One unlabelled metric in Prometheus' text format: its help, its type
/// and its value.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}
