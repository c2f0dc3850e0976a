//! Router tests: every endpoint through `tower::ServiceExt::oneshot`, on a
//! data dir made by the real pipeline (simulate → ingest → publish) on the
//! tiny fixture grid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::NaiveDate;
use hexflow::privacy::ledger::Role;
use hexflow::server::{AppState, ROUTES, ServeConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn day(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

/// A data dir with three simulated days of the tiny grid, ingested and
/// published by the tiny policy's plan (hourly footfall, res 8).
struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    deliveries: Vec<PathBuf>,
}

fn build() -> Fixture {
    build_with("tiny.toml", "2025-03-05", 3)
}

/// Simulates 2025-03-03..=`to`, ingests it and runs the plan of `policy`.
fn build_with(policy: &str, to: &str, expected_new: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let policy = hexflow::policy::Policy::load(&fixture(policy)).expect("policy");
    let grid = policy.load_grid().expect("grid");
    let sim = dir.path().join("sim");
    hexflow::simulate::simulate(
        &grid,
        day("2025-03-03"),
        day(to),
        &sim,
        hexflow::simulate::Format::Csv,
        7,
        policy.spec.presence.as_ref(),
    )
    .expect("simulate");
    let mut deliveries: Vec<PathBuf> = std::fs::read_dir(&sim)
        .expect("sim dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    deliveries.sort();
    let ingestor = hexflow::ingest::Ingestor::new(policy.clone(), &data).expect("ingestor");
    for f in &deliveries {
        ingestor.ingest(f, Default::default()).expect("ingest");
    }
    let releaser = hexflow::release::Releaser::new(policy, &data).expect("releaser");
    let report = hexflow::release::publish::publish(&releaser, &data).expect("publish");
    assert_eq!(report.new, expected_new, "{report:?}");
    Fixture {
        _dir: dir,
        data,
        deliveries,
    }
}

fn state(data: &Path, cors: &[&str]) -> Arc<AppState> {
    state_with("tiny.toml", data, cors)
}

fn state_with(policy: &str, data: &Path, cors: &[&str]) -> Arc<AppState> {
    let policy = hexflow::policy::Policy::load(&fixture(policy)).expect("policy");
    let mut config = ServeConfig::new(data);
    config.cors_origins = cors.iter().map(|s| s.to_string()).collect();
    config.max_upload_bytes = 1 << 20;
    Arc::new(AppState::new(vec![policy], config).expect("state"))
}

/// The read-only fixture shared by tests that do not charge or ingest.
fn shared() -> &'static (Fixture, Arc<AppState>) {
    static F: OnceLock<(Fixture, Arc<AppState>)> = OnceLock::new();
    F.get_or_init(|| {
        let f = build();
        let s = state(&f.data, &[]);
        (f, s)
    })
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, h: header::HeaderName) -> String {
        self.headers
            .get(h)
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// A problem+json answer with `status`; returns its detail.
    fn problem(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header(header::CONTENT_TYPE), "application/problem+json");
        let p = self.json();
        assert_eq!(p["status"], status.as_u16());
        let detail = p["detail"].as_str().expect("detail").to_string();
        assert!(!detail.is_empty());
        detail
    }
}

async fn send(state: &Arc<AppState>, req: Request<Body>) -> Answer {
    let resp = hexflow::server::router(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Answer { status, headers, body }
}

async fn get(state: &Arc<AppState>, uri: &str) -> Answer {
    send(state, Request::get(uri).body(Body::empty()).expect("request")).await
}

async fn get_with(state: &Arc<AppState>, uri: &str, h: header::HeaderName, v: &str) -> Answer {
    send(
        state,
        Request::get(uri).header(h, v).body(Body::empty()).expect("request"),
    )
    .await
}

async fn post_json(state: &Arc<AppState>, uri: &str, token: Option<&str>, body: &Value) -> Answer {
    let mut r = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    send(state, r.body(Body::from(body.to_string())).expect("request")).await
}

async fn first_release(state: &Arc<AppState>) -> Value {
    let list = get(state, "/api/v1/releases?dataset=tiny").await.json();
    list["releases"][0].clone()
}

fn token(data: &Path, name: &str, role: Role) -> String {
    let mut ledger = hexflow::privacy::ledger::Ledger::open(&hexflow::privacy::ledger::LedgerUrl::in_data_dir(data))
        .expect("ledger");
    ledger.create_token(name, role).expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_every_route_exists() {
    let (_, state) = shared();
    let doc: Value = serde_json::from_str(hexflow::server::OPENAPI).expect("openapi is JSON");
    let mut described = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            if ["get", "post", "put", "delete", "patch", "head"].contains(&method.as_str()) {
                described.insert((method.clone(), path.clone()));
            }
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(described, routes);
    // Under /api and beside the routes it describes (/api/v1 was a 404).
    for at in ["/api/openapi.json", "/api/v1/openapi.json"] {
        let served = get(state, at).await;
        assert_eq!(served.status, StatusCode::OK, "{at}");
        assert_eq!(served.json(), doc, "{at}");
    }
    // Each listed route is matched by the router (the fallback answers
    // "no such endpoint" for anything else).
    let id = first_release(state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    for (method, path) in ROUTES {
        let uri = path
            .replace("{dataset}", "tiny")
            .replace("{id}", &id)
            .replace("{z}", "0")
            .replace("{x}", "0")
            .replace("{y}", "0.png");
        let m = if *method == "post" { Method::POST } else { Method::GET };
        let a = send(
            state,
            Request::builder().method(m).uri(&uri).body(Body::empty()).expect("r"),
        )
        .await;
        if a.header(header::CONTENT_TYPE) == "application/problem+json" {
            assert_ne!(a.json()["title"], "no such endpoint", "{method} {uri}");
        }
    }
    let wrong = send(
        state,
        Request::delete("/api/v1/releases").body(Body::empty()).expect("r"),
    )
    .await;
    assert!(wrong.problem(StatusCode::METHOD_NOT_ALLOWED).contains("DELETE"));
    let missing = get(state, "/api/v1/nothing-here").await;
    assert!(missing.problem(StatusCode::NOT_FOUND).contains("/api/openapi.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_are_listed_filtered_and_described_by_their_manifest() {
    let (f, state) = shared();
    let list = get(state, "/api/v1/releases").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.header(header::CACHE_CONTROL), "no-cache");
    let j = list.json();
    assert_eq!(j["total"], 3);
    let days: Vec<&str> = j["releases"]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["from"].as_str().expect("from"))
        .collect();
    assert_eq!(days, ["2025-03-03", "2025-03-04", "2025-03-05"]);
    let one = get(state, "/api/v1/releases?day=2025-03-04&metric=footfall&res=8&bin=1h")
        .await
        .json();
    assert_eq!(one["total"], 1);
    assert_eq!(get(state, "/api/v1/releases?res=9").await.json()["total"], 0);
    // A window: every release overlapping it.
    let two = get(state, "/api/v1/releases?from=2025-03-04&to=2025-03-05")
        .await
        .json();
    assert_eq!(two["total"], 2);
    assert_eq!(two["releases"][0]["from"], "2025-03-04");
    // A malformed parameter is told in terms of what it takes.
    let d = get(state, "/api/v1/releases?res=x")
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(d.contains("res must be an H3 resolution"), "{d}");
    let d = get(state, "/api/v1/releases?from=14/07/2025")
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(d.contains("from must be a date, YYYY-MM-DD"), "{d}");
    let r = &one["releases"][0];
    assert_eq!(r["audience"], "public");
    assert_eq!(r["bins"], 24);
    let id = r["release_id"].as_str().expect("id");
    let m = get(state, &format!("/api/v1/releases/{id}")).await;
    assert_eq!(m.status, StatusCode::OK);
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(f.data.join("releases/tiny").join(id).join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(m.json(), on_disk);
    assert!(m.json()["rho"].as_f64().expect("rho") > 0.0);
    // Failures say why.
    let d = get(state, "/api/v1/releases/r-00000000000000000000")
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(d.contains("r-00000000000000000000"), "{d}");
    get(state, "/api/v1/releases?limit=0")
        .await
        .problem(StatusCode::BAD_REQUEST);
    get(state, "/api/v1/releases?limit=100000")
        .await
        .problem(StatusCode::BAD_REQUEST);
    let d = get(state, "/api/v1/releases?dataset=paris")
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(d.contains("tiny"), "{d}");
    let d = get(state, "/api/v1/releases?colour=red")
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(d.contains("colour"), "{d}");
    get(state, "/api/v1/releases?day=yesterday")
        .await
        .problem(StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_come_in_four_formats_that_agree_with_the_stored_release() {
    let (f, state) = shared();
    let id = first_release(state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    let stored =
        hexflow::table::read_parquet(&f.data.join("releases/tiny").join(&id).join("values.parquet")).expect("values");
    let keys = stored.height() / 24;
    // JSON, bin 3.
    let j = get(state, &format!("/api/v1/releases/{id}/values?bin=3")).await;
    assert_eq!(j.status, StatusCode::OK);
    let raw = j.text();
    let j = j.json();
    let rows = j["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), keys);
    let stored_values: Vec<i64> = stored
        .column("value")
        .expect("value")
        .i64()
        .expect("i64")
        .into_no_null_iter()
        .collect();
    let json_values: Vec<i64> = rows.iter().map(|r| r["value"].as_i64().expect("value")).collect();
    assert_eq!(json_values, stored_values[3 * keys..4 * keys]);
    assert!(j["unit"].as_str().expect("unit").contains("per hour"));
    for r in rows {
        assert_eq!(r["hex_id"].as_str().expect("hex").len(), 15);
        assert!(r["ci95"].as_f64().expect("ci") >= 0.0);
    }
    // CSV: same rows.
    let csv = get(state, &format!("/api/v1/releases/{id}/values?format=csv&bin=3")).await;
    assert_eq!(csv.header(header::CONTENT_TYPE), "text/csv; charset=utf-8");
    assert!(csv.header(header::CONTENT_DISPOSITION).contains(".csv"));
    let text = csv.text();
    // RFC 4180: CRLF line ends.
    assert_eq!(text.matches("\r\n").count(), keys + 1, "CRLF line ends");
    let mut lines = text.lines();
    let header_line = "hex_id,lon,lat,bin_start,local_start,value,ci95,low,covered,estimate,estimate_ci95,noise_sd";
    assert_eq!(lines.next(), Some(header_line));
    // A JSON row holds the CSV's fields in the CSV's order.
    let first_row = &raw[raw.find("\"rows\":[{").expect("rows")..];
    let first_row = &first_row[..first_row.find('}').expect("row end")];
    let at: Vec<usize> = header_line
        .split(',')
        .map(|k| {
            first_row
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} in {first_row}"))
        })
        .collect();
    assert!(at.is_sorted(), "{first_row}");
    let rows_csv: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let csv_values: Vec<i64> = rows_csv.iter().map(|r| r[5].parse().expect("int")).collect();
    assert_eq!(csv_values, json_values);
    // The local start with its offset (Paris in March: +01:00), beside UTC.
    assert_eq!(rows_csv[0][3], "2025-03-03T02:00:00Z");
    assert_eq!(rows_csv[0][4], "2025-03-03T03:00:00+01:00");
    assert_eq!(rows[0]["local_start"], "2025-03-03T03:00:00+01:00");
    // GeoJSON: closed hexagon rings, RFC 7946 (lon, lat) inside the grid.
    let g = get(state, &format!("/api/v1/releases/{id}/values?format=geojson&bin=3")).await;
    assert_eq!(g.header(header::CONTENT_TYPE), "application/geo+json");
    let g = g.json();
    let features = g["features"].as_array().expect("features");
    assert_eq!(features.len(), keys);
    for (feat, v) in features.iter().zip(&json_values) {
        let ring = feat["geometry"]["coordinates"][0].as_array().expect("ring");
        assert_eq!(ring.len(), 7);
        assert_eq!(ring[0], ring[6]);
        let lon = ring[0][0].as_f64().expect("lon");
        let lat = ring[0][1].as_f64().expect("lat");
        assert!((5.0..6.0).contains(&lon) && (43.0..44.0).contains(&lat), "{lon} {lat}");
        assert_eq!(feat["properties"]["value"].as_i64(), Some(*v));
    }
    // Parquet, whole release: the stored table.
    let p = get(state, &format!("/api/v1/releases/{id}/values?format=parquet")).await;
    assert_eq!(p.header(header::CONTENT_TYPE), "application/vnd.apache.parquet");
    use polars::prelude::SerReader as _;
    // Plain types for every reader: text is `large_string` in the embedded
    // Arrow schema (decoded as an Arrow reader does), not `string_view`.
    {
        use base64::Engine as _;
        let meta = polars_parquet::read::read_metadata(&mut std::io::Cursor::new(&p.body)).expect("metadata");
        let encoded = meta
            .key_value_metadata()
            .iter()
            .flatten()
            .find(|kv| kv.key == "ARROW:schema")
            .and_then(|kv| kv.value.clone())
            .expect("an Arrow schema");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        let (schema, ..) = polars_arrow::io::ipc::read::deserialize_schema(&bytes[8..]).expect("schema");
        for (name, field) in schema.iter() {
            let t = format!("{:?}", field.dtype);
            assert!(!t.contains("View"), "{name}: {t}");
        }
        assert_eq!(
            format!("{:?}", schema.get("hex_id").expect("hex_id").dtype),
            "LargeUtf8"
        );
    }
    let df = polars::prelude::ParquetReader::new(std::io::Cursor::new(p.body))
        .finish()
        .expect("parquet");
    assert_eq!(df.height(), stored.height());
    assert_eq!(
        df.column("hex_id").expect("hex_id").dtype(),
        &polars::prelude::DataType::String
    );
    assert!(matches!(
        df.column("bin_start").expect("bin_start").dtype(),
        polars::prelude::DataType::Datetime(_, Some(_))
    ));
    let served: Vec<i64> = df
        .column("value")
        .expect("v")
        .i64()
        .expect("i64")
        .into_no_null_iter()
        .collect();
    assert_eq!(served, stored_values);
    // Refusals.
    let d = get(state, &format!("/api/v1/releases/{id}/values?bin=24"))
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(d.contains("24 bins"), "{d}");
    get(state, &format!("/api/v1/releases/{id}/values?format=xml"))
        .await
        .problem(StatusCode::BAD_REQUEST);
    let d = get(state, &format!("/api/v1/releases/{id}/values?bin=-1"))
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(d.contains("expected a bin number"), "{d}");
    // A bin by instant, local time or local date: the bin holding it.
    let rows_of = |v: Value| v["rows"].clone();
    let by_number = rows_of(get(state, &format!("/api/v1/releases/{id}/values?bin=3")).await.json());
    for asked in [
        "2025-03-03T03:00:00%2B01:00",
        "2025-03-03T02:59:59Z",
        "2025-03-03T03:30",
        "2025-03-03T03:00:00",
    ] {
        let by_time = get(state, &format!("/api/v1/releases/{id}/values?bin={asked}")).await;
        // (02:59:59 UTC is 03:59:59 in Paris: still bin 3.)
        assert_eq!(by_time.status, StatusCode::OK, "{asked}: {}", by_time.text());
        assert_eq!(rows_of(by_time.json()), by_number, "{asked}");
    }
    let midnight = get(state, &format!("/api/v1/releases/{id}/values?bin=2025-03-03"))
        .await
        .json();
    assert_eq!(
        rows_of(midnight),
        rows_of(get(state, &format!("/api/v1/releases/{id}/values?bin=0")).await.json())
    );
    // Fewer places: by hex ids, a bounding box, or a point and radius.
    let two: Vec<String> = by_number
        .as_array()
        .expect("rows")
        .iter()
        .take(2)
        .map(|r| r["hex_id"].as_str().expect("hex").to_string())
        .collect();
    let picked = get(
        state,
        &format!("/api/v1/releases/{id}/values?bin=3&hex={}", two.join(",")),
    )
    .await
    .json();
    let got: Vec<&str> = picked["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["hex_id"].as_str().expect("hex"))
        .collect();
    assert_eq!(got, two.iter().map(String::as_str).collect::<Vec<_>>());
    let near = get(
        state,
        &format!("/api/v1/releases/{id}/values?bin=3&near=5.385,43.29&radius_m=900"),
    )
    .await
    .json();
    let near_rows = near["rows"].as_array().expect("rows");
    assert!(
        !near_rows.is_empty() && near_rows.len() < keys,
        "{} of {keys}",
        near_rows.len()
    );
    for r in near_rows {
        use geo::Distance;
        let c = geo::Point::new(r["lon"].as_f64().expect("lon"), r["lat"].as_f64().expect("lat"));
        assert!(geo::Haversine.distance(geo::Point::new(5.385, 43.29), c) <= 900.0 + 1e-6);
    }
    let boxed = get(
        state,
        &format!("/api/v1/releases/{id}/values?bin=3&bbox=5.37,43.28,5.39,43.30&format=csv"),
    )
    .await
    .text();
    assert!(boxed.lines().count() > 1);
    get(
        state,
        &format!("/api/v1/releases/{id}/values?hex=8f1f8d4b29fffff&bbox=0,0,1,1"),
    )
    .await
    .problem(StatusCode::BAD_REQUEST);
    get(state, &format!("/api/v1/releases/{id}/values?hex=831f8dfffffffff"))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    get(state, &format!("/api/v1/releases/{id}/values?bbox=0,0,1,1"))
        .await
        .problem(StatusCode::NOT_FOUND);
    let late = get(state, &format!("/api/v1/releases/{id}/values?bin=2025-03-04T00:00"))
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(late.contains("after the release's last bin"), "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_content_is_immutable_and_cached_while_the_ledger_is_not() {
    let (_, state) = shared();
    let id = first_release(state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    let uri = format!("/api/v1/releases/{id}/values?format=csv&bin=0");
    let a = get(state, &uri).await;
    let etag = a.header(header::ETAG);
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    assert_eq!(a.header(header::CACHE_CONTROL), "public, max-age=31536000, immutable");
    assert_eq!(get(state, &uri).await.header(header::ETAG), etag, "stable");
    let other = get(state, &format!("/api/v1/releases/{id}/values?format=csv&bin=1")).await;
    assert_ne!(other.header(header::ETAG), etag);
    let again = get_with(state, &uri, header::IF_NONE_MATCH, &etag).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    let stale = get_with(state, &uri, header::IF_NONE_MATCH, "\"nope\"").await;
    assert_eq!(stale.status, StatusCode::OK);
    // PNG maps answer 304 too.
    let map = format!("/api/v1/releases/{id}/map.png?bin=0");
    let tag = get(state, &map).await.header(header::ETAG);
    assert_eq!(
        get_with(state, &map, header::IF_NONE_MATCH, &tag).await.status,
        StatusCode::NOT_MODIFIED
    );
    // HEAD: same headers, no body.
    let head = send(state, Request::head(&uri).body(Body::empty()).expect("r")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header(header::ETAG), etag);
    assert!(head.body.is_empty());
    for uri in [
        "/api/v1/ledger",
        "/api/v1/ledger/releases",
        "/healthz",
        "/api/v1/releases",
    ] {
        let a = get(state, uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        assert_eq!(a.header(header::CACHE_CONTROL), "no-cache", "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_add_values_and_their_independent_noise() {
    let (_, state) = shared();
    let id = first_release(state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    let all = get(state, &format!("/api/v1/releases/{id}/values")).await.json();
    let manifest = get(state, &format!("/api/v1/releases/{id}")).await.json();
    let rows = all["rows"].as_array().expect("rows");
    let hexes: Vec<String> = rows
        .iter()
        .take(3)
        .map(|r| r["hex_id"].as_str().expect("hex").to_string())
        .collect();
    let s = get(state, &format!("/api/v1/releases/{id}/series?hex={}", hexes.join(","))).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text());
    let s = s.json();
    let bins = s["bins"].as_array().expect("bins");
    assert_eq!(bins.len(), 24);
    let keys = rows.len() / 24;
    for (b, bin) in bins.iter().enumerate() {
        let part = &rows[b * keys..b * keys + 3];
        // The sum of the unbiased estimates (not of the clamped values).
        let sum: f64 = part.iter().map(|r| r["estimate"].as_f64().expect("v")).sum();
        assert!((bin["value"].as_f64().expect("v") - sum).abs() < 0.02, "{bin} vs {sum}");
        let sds: Vec<f64> = part.iter().map(|r| r["noise_sd"].as_f64().expect("sd")).collect();
        let sd = bin["ci95"].as_f64().expect("ci") / 1.959_963_984_540_054;
        let max = sds.iter().copied().fold(0.0, f64::max);
        let total: f64 = sds.iter().sum();
        // Whatever the placement: at least the largest part, at most the
        // sum of the parts (triangle inequality, non-negative weights).
        assert!(sd >= max - 0.01 && sd <= total + 0.01, "{sd} vs {sds:?}");
        if manifest["placement"] == "hex" {
            let rss = sds.iter().map(|c| c * c).sum::<f64>().sqrt();
            assert!((sd - rss).abs() < 0.01, "{sd} vs {rss}");
        }
    }
    get(state, &format!("/api/v1/releases/{id}/series"))
        .await
        .problem(StatusCode::BAD_REQUEST);
    let d = get(state, &format!("/api/v1/releases/{id}/series?hex=zzz"))
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(d.contains("zzz"), "{d}");
    // A valid H3 cell outside the release.
    let d = get(state, &format!("/api/v1/releases/{id}/series?hex=8a1f9a48a587fff"))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(d.contains("8a1f9a48a587fff"), "{d}");
    let many = vec![hexes[0].clone(); 3001].join(",");
    get(state, &format!("/api/v1/releases/{id}/series?hex={many}"))
        .await
        .problem(StatusCode::BAD_REQUEST);
}

fn decode_png(bytes: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
    // As a browser decodes it: a palette and its transparency expanded.
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_and_tiles_are_pngs_with_coloured_hexes() {
    let (_, state) = shared();
    let id = first_release(state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    let map = get(state, &format!("/api/v1/releases/{id}/map.png?bin=9&width=640")).await;
    assert_eq!(map.status, StatusCode::OK, "{}", map.text());
    assert_eq!(map.header(header::CONTENT_TYPE), "image/png");
    let (w, h, ct, px) = decode_png(&map.body);
    assert_eq!((w, ct), (640, png::ColorType::Rgb));
    assert!(h > 200);
    // Viridis hexes: pixels with blue well above red (the low half of the
    // scale) or green dominant (the high half) — not white, grey or black.
    let coloured = px
        .chunks_exact(3)
        .filter(|p| {
            let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
            (b - r > 40) || (g - r > 40 && g - b > 40)
        })
        .count();
    assert!(coloured > 2000, "{coloured} coloured pixels");
    // Widths are drawn in 160 px steps: a client cannot make the server
    // draw a new image per width (regression: every width drew). Widths
    // outside the documented 320..=2400 are refused (they were clamped).
    for w in [0, 1, 319, 2401, 99_999] {
        get(state, &format!("/api/v1/releases/{id}/map.png?width={w}"))
            .await
            .problem(StatusCode::BAD_REQUEST);
    }
    let widest = get(state, &format!("/api/v1/releases/{id}/map.png?width=2400")).await;
    assert_eq!(decode_png(&widest.body).0, hexflow::render::MAX_MAP_PX);
    let a = get(state, &format!("/api/v1/releases/{id}/map.png?bin=9&width=641")).await;
    let b = get(state, &format!("/api/v1/releases/{id}/map.png?bin=9&width=700")).await;
    assert_eq!(a.header(header::ETAG), b.header(header::ETAG));
    assert_eq!(a.header(header::ETAG), map.header(header::ETAG));
    let narrowest = get(state, &format!("/api/v1/releases/{id}/map.png?width=320")).await;
    assert_eq!(decode_png(&narrowest.body).0, 320);
    // The cache that holds them is bounded and shown in /metrics.
    let m = get(state, "/metrics").await.text();
    let gauge = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics: {m}"))
    };
    assert!(gauge("hexflow_body_cache_bytes") > 0.0);
    assert!(gauge("hexflow_body_cache_bytes") <= gauge("hexflow_body_cache_limit_bytes"));
    assert!(gauge("hexflow_body_cache_entries") >= 3.0);
    assert_eq!(gauge("hexflow_renders_waiting"), 0.0);

    // The tile over the tiny grid (Castellane, Marseille) at zoom 14.
    let tj = get(state, &format!("/api/v1/releases/{id}/tilejson.json?bin=9"))
        .await
        .json();
    assert_eq!(tj["tilejson"], "3.0.0");
    let template = tj["tiles"][0].as_str().expect("template");
    assert!(
        template.contains(&format!("/api/v1/releases/{id}/tiles/{{z}}/{{x}}/{{y}}.png?bin=9")),
        "{template}"
    );
    // Bounds hold every hex of the release: clients that respect them cut
    // no edge hex.
    let b: Vec<f64> = tj["bounds"]
        .as_array()
        .expect("bounds")
        .iter()
        .map(|x| x.as_f64().expect("f64"))
        .collect();
    let fc = get(state, &format!("/api/v1/releases/{id}/values?format=geojson&bin=9"))
        .await
        .json();
    let mut touches = [false; 4];
    for f in fc["features"].as_array().expect("features") {
        for p in f["geometry"]["coordinates"][0].as_array().expect("ring") {
            let (lon, lat) = (p[0].as_f64().expect("lon"), p[1].as_f64().expect("lat"));
            assert!(lon >= b[0] - 1e-9 && lat >= b[1] - 1e-9 && lon <= b[2] + 1e-9 && lat <= b[3] + 1e-9);
            for (k, edge) in [lon - b[0], lat - b[1], b[2] - lon, b[3] - lat].iter().enumerate() {
                touches[k] |= edge.abs() < 1e-9;
            }
        }
    }
    assert_eq!(touches, [true; 4], "the bounds are the hexes' extent, not larger");
    // Without --public-url the tile URLs name the request's own Host, and
    // the document is private: a shared cache must not hand one client's
    // Host to another. Forwarded headers change nothing.
    let tj_uri = format!("/api/v1/releases/{id}/tilejson.json?bin=9");
    let plain = send(
        state,
        Request::get(&tj_uri)
            .header(header::HOST, "maps.example.org:8080")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert!(
        plain.json()["tiles"][0]
            .as_str()
            .expect("url")
            .starts_with("http://maps.example.org:8080/api/v1/"),
        "{}",
        plain.text()
    );
    assert!(plain.header(header::CACHE_CONTROL).starts_with("private"));
    let poisoned = send(
        state,
        Request::get(&tj_uri)
            .header(header::HOST, "maps.example.org:8080")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header(header::FORWARDED, "for=192.0.2.1;proto=https;host=evil.example")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(poisoned.body, plain.body, "forwarded headers are never read");
    let (x, y) = hexflow::render::mercator_px(5.385, 43.29, 14.0);
    let (tx, ty) = ((x / 256.0) as u32, (y / 256.0) as u32);
    let tile = get(state, &format!("/api/v1/releases/{id}/tiles/14/{tx}/{ty}.png?bin=9")).await;
    assert_eq!(tile.status, StatusCode::OK, "{}", tile.text());
    let (w, h, ct, px) = decode_png(&tile.body);
    assert_eq!((w, h, ct), (256, 256, png::ColorType::Rgba));
    let opaque = px.chunks_exact(4).filter(|p| p[3] > 0).count();
    assert!(opaque > 1000, "{opaque}");
    // Far away (the Atlantic): fully transparent, and transparent pixels
    // carry no colour (a resampling client would blend it in).
    let far = get(state, &format!("/api/v1/releases/{id}/tiles/14/100/100.png?bin=9")).await;
    let (_, _, _, far_px) = decode_png(&far.body);
    assert!(far_px.chunks_exact(4).all(|p| p == [0, 0, 0, 0]));
    // No seam: pixels across the border of two neighbouring tiles, and a
    // tile's edge pixels with their inner neighbours, are as often equal as
    // two neighbouring pixels inside a tile (hex outlines cross both alike).
    let (_, _, _, right) = decode_png(
        &get(
            state,
            &format!("/api/v1/releases/{id}/tiles/14/{}/{ty}.png?bin=9", tx + 1),
        )
        .await
        .body,
    );
    let (_, _, _, below) = decode_png(
        &get(
            state,
            &format!("/api/v1/releases/{id}/tiles/14/{tx}/{}.png?bin=9", ty + 1),
        )
        .await
        .body,
    );
    fn at(img: &[u8], col: usize, row: usize) -> &[u8] {
        &img[(row * 256 + col) * 4..(row * 256 + col) * 4 + 4]
    }
    // Share of equal pixels among opaque pairs of columns (or rows).
    let equal = |a: &[u8], ca: usize, b: &[u8], cb: usize, cols: bool| {
        let pairs: Vec<(&[u8], &[u8])> = (0..256)
            .map(|k| {
                if cols {
                    (at(a, ca, k), at(b, cb, k))
                } else {
                    (at(a, k, ca), at(b, k, cb))
                }
            })
            .filter(|(p, q)| p[3] > 0 && q[3] > 0)
            .collect();
        assert!(pairs.len() > 40, "only {} opaque pairs", pairs.len());
        pairs.iter().filter(|(p, q)| p == q).count() as f64 / pairs.len() as f64
    };
    for (cols, next) in [(true, &right), (false, &below)] {
        let inside = equal(&px, 253, &px, 254, cols).min(equal(next, 1, next, 2, cols));
        let across = equal(&px, 255, next, 0, cols);
        let edges = equal(&px, 254, &px, 255, cols).min(equal(next, 0, next, 1, cols));
        let what = if cols { "columns" } else { "rows" };
        assert!(
            across >= inside - 0.05,
            "{what}: {across:.2} equal across the border vs {inside:.2} inside"
        );
        assert!(
            edges >= inside - 0.05,
            "{what}: {edges:.2} equal at the edges vs {inside:.2} inside"
        );
    }
    for cols in [true, false] {
        let (edge, inner) = (equal(&px, 0, &px, 1, cols), equal(&px, 1, &px, 2, cols));
        assert!(
            edge >= inner - 0.05,
            "first {}: {edge:.2} vs {inner:.2}",
            if cols { "columns" } else { "rows" }
        );
    }
    get(state, &format!("/api/v1/releases/{id}/tiles/30/0/0.png"))
        .await
        .problem(StatusCode::NOT_FOUND);
    get(state, &format!("/api/v1/releases/{id}/tiles/2/4/0.png"))
        .await
        .problem(StatusCode::NOT_FOUND);
    get(state, &format!("/api/v1/releases/{id}/tiles/2/1/1.jpg"))
        .await
        .problem(StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_shows_what_each_day_cost() {
    let (_, state) = shared();
    let l = get(state, "/api/v1/ledger?dataset=tiny").await.json();
    let days = l["days"].as_array().expect("days");
    assert_eq!(days.len(), 3);
    for d in days {
        assert_eq!(d["audience"], "public");
        assert!((d["rho_spent"].as_f64().expect("rho") - 0.2).abs() < 1e-6);
    }
    assert_eq!(l["audience_caps_rho_per_day"]["public"], 0.3);
    assert_eq!(l["dataset_cap_rho_per_day"], 1.0);
    let one = get(state, "/api/v1/ledger?from=2025-03-04&to=2025-03-04").await.json();
    assert_eq!(one["days"].as_array().expect("days").len(), 1);
    let r = get(state, "/api/v1/ledger/releases").await.json();
    assert_eq!(r["total"], 3);
    assert!(r["releases"][0]["epsilon"].as_f64().expect("eps") > 0.0);
    assert_eq!(r["releases"][0]["state"], "published");
    get(state, "/api/v1/ledger?dataset=nope")
        .await
        .problem(StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_queries_need_a_token_are_charged_once_and_respect_the_policy() {
    let f = build();
    let state = state(&f.data, &[]);
    let planner = token(&f.data, "transit", Role::Planner);
    let admin = token(&f.data, "ops", Role::Admin);
    let spec = json!({"dataset": "tiny", "metric": "footfall", "res": 9, "bin": "1h",
                      "from": "2025-03-04", "to": "2025-03-04", "rho": 0.1});
    let d = post_json(&state, "/api/v1/queries", None, &spec).await;
    assert_eq!(d.header(header::WWW_AUTHENTICATE), "Bearer");
    d.problem(StatusCode::UNAUTHORIZED);
    post_json(&state, "/api/v1/queries", Some("hxf_wrong"), &spec)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let spent = |state: &Arc<AppState>| {
        let state = state.clone();
        async move {
            let l = get(&state, "/api/v1/ledger").await.json();
            l["days"]
                .as_array()
                .expect("days")
                .iter()
                .filter(|d| d["audience"] == "planners")
                .map(|d| d["rho_spent"].as_f64().expect("rho"))
                .sum::<f64>()
        }
    };
    // The planners' list, cached until the index changes: a revalidation
    // is a 304 until the query below adds a release.
    let planners_list = "/api/v1/releases?audience=planners&dataset=tiny";
    let list_of = |state: &Arc<AppState>, etag: Option<String>| {
        let (state, planner) = (state.clone(), planner.clone());
        async move {
            let mut r = Request::get(planners_list).header(header::AUTHORIZATION, format!("Bearer {planner}"));
            if let Some(e) = etag {
                r = r.header(header::IF_NONE_MATCH, e);
            }
            send(&state, r.body(Body::empty()).expect("request")).await
        }
    };
    let before = list_of(&state, None).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text());
    let etag = before.header(header::ETAG).to_string();
    assert_eq!(
        list_of(&state, Some(etag.clone())).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        list_of(&state, None).await.body,
        before.body,
        "the cached list is the same list"
    );
    // Without a token, the cached planners' list is still refused.
    get(&state, planners_list).await.problem(StatusCode::UNAUTHORIZED);
    let first = post_json(&state, "/api/v1/queries", Some(&planner), &spec).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let first = first.json();
    let after = list_of(&state, Some(etag.clone())).await;
    assert_eq!(after.status, StatusCode::OK, "a new release makes a new list");
    assert_ne!(after.header(header::ETAG), etag);
    assert_eq!(
        after.json()["total"].as_u64(),
        before.json()["total"].as_u64().map(|n| n + 1),
        "the new release is listed"
    );
    assert_eq!(first["status"], "new");
    assert!((spent(&state).await - 0.1).abs() < 1e-6);
    // The same question: the stored answer, no second charge.
    let again = post_json(&state, "/api/v1/queries", Some(&admin), &spec).await;
    assert_eq!(again.status, StatusCode::OK);
    let again = again.json();
    assert_eq!(again["status"], "stored");
    assert_eq!(again["rho_charged"], 0.0);
    assert_eq!(again["release_id"], first["release_id"]);
    assert!((spent(&state).await - 0.1).abs() < 1e-6);
    // Its tiles for an image client: no token in the URL, a signed one.
    let pid = first["release_id"].as_str().expect("id").to_string();
    let (x, y) = hexflow::render::mercator_px(5.385, 43.29, 14.0);
    let tile_path = format!(
        "/api/v1/releases/{pid}/tiles/14/{}/{}.png",
        (x / 256.0) as u32,
        (y / 256.0) as u32
    );
    get(&state, &tile_path).await.problem(StatusCode::UNAUTHORIZED);
    post_json(&state, &format!("/api/v1/releases/{pid}/tile-url"), None, &json!({}))
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let signed = post_json(
        &state,
        &format!("/api/v1/releases/{pid}/tile-url?ttl_s=600"),
        Some(&planner),
        &json!({}),
    )
    .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.text());
    let template = signed.json()["tiles"].as_str().expect("tiles").to_string();
    assert!(!template.contains(&planner), "the token is never in the URL");
    let query = template.split_once('?').expect("query").1.to_string();
    let ok = get(&state, &format!("{tile_path}?{query}")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.header(header::CONTENT_TYPE), "image/png");
    assert!(ok.header(header::CACHE_CONTROL).starts_with("private"));
    // A changed expiry or signature, or another release: refused.
    let exp: i64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("exp="))
        .expect("exp")
        .parse()
        .expect("int");
    let later = query.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600));
    get(&state, &format!("{tile_path}?{later}"))
        .await
        .problem(StatusCode::FORBIDDEN);
    let flipped = if query.ends_with('0') {
        format!("{}1", &query[..query.len() - 1])
    } else {
        format!("{}0", &query[..query.len() - 1])
    };
    get(&state, &format!("{tile_path}?{flipped}"))
        .await
        .problem(StatusCode::FORBIDDEN);
    // Another bin of the same release: the signature covers the bin too.
    let bin: String = query
        .split('&')
        .find_map(|p| p.strip_prefix("bin="))
        .expect("bin")
        .to_string();
    let other_bin = if bin == "0" { "1" } else { "0" };
    for changed in [
        query.replace(&format!("bin={bin}"), &format!("bin={other_bin}")),
        query.replace(&format!("bin={bin}&"), ""),
    ] {
        get(&state, &format!("{tile_path}?{changed}"))
            .await
            .problem(StatusCode::FORBIDDEN);
    }
    post_json(
        &state,
        &format!("/api/v1/releases/{pid}/tile-url?ttl_s=999999"),
        Some(&planner),
        &json!({}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST);
    // The planners' release is not public.
    let id = first["release_id"].as_str().expect("id");
    assert_eq!(get(&state, "/api/v1/releases").await.json()["total"], 3);
    get(&state, &format!("/api/v1/releases/{id}"))
        .await
        .problem(StatusCode::UNAUTHORIZED);
    get(&state, "/api/v1/releases?audience=planners")
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let seen = get_with(
        &state,
        &format!("/api/v1/releases/{id}/values?bin=0"),
        header::AUTHORIZATION,
        &format!("Bearer {planner}"),
    )
    .await;
    assert_eq!(seen.status, StatusCode::OK);
    let listed = get_with(
        &state,
        "/api/v1/releases?audience=planners",
        header::AUTHORIZATION,
        &format!("Bearer {planner}"),
    )
    .await;
    assert_eq!(listed.json()["total"], 1);
    // Purpose limits, caps and sizes refuse before charging, and say why.
    let mut too_fine = spec.clone();
    too_fine["res"] = json!(10);
    let d = post_json(&state, "/api/v1/queries", Some(&planner), &too_fine).await;
    assert!(d.problem(StatusCode::UNPROCESSABLE_ENTITY).contains("resolution"));
    let mut greedy = spec.clone();
    greedy["rho"] = json!(0.45);
    greedy["res"] = json!(8);
    let d = post_json(&state, "/api/v1/queries", Some(&planner), &greedy).await;
    let d = d.problem(StatusCode::CONFLICT);
    assert!(d.contains("2025-03-04") && d.contains("left"), "{d}");
    let mut both = spec.clone();
    both["epsilon"] = json!(1.0);
    post_json(&state, "/api/v1/queries", Some(&planner), &both)
        .await
        .problem(StatusCode::BAD_REQUEST);
    let mut unknown = spec.clone();
    unknown["audience"] = json!("public");
    post_json(&state, "/api/v1/queries", Some(&planner), &unknown)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    let mut no_data = spec.clone();
    no_data["from"] = json!("2025-04-01");
    no_data["to"] = json!("2025-04-01");
    let d = post_json(&state, "/api/v1/queries", Some(&planner), &no_data).await;
    assert!(d.problem(StatusCode::UNPROCESSABLE_ENTITY).contains("no footfall data"));
    assert!((spent(&state).await - 0.1).abs() < 1e-6, "refusals cost nothing");
    // A query in ε is answered in ε (and its ρ = ε²/2).
    let mut in_eps = spec.clone();
    in_eps.as_object_mut().expect("object").remove("rho");
    in_eps["epsilon"] = json!(0.3);
    in_eps["res"] = json!(7);
    let e = post_json(&state, "/api/v1/queries", Some(&planner), &in_eps).await;
    assert_eq!(e.status, StatusCode::CREATED, "{}", e.text());
    let e = e.json();
    let eps = e["epsilon_charged"].as_f64().expect("epsilon_charged");
    assert!(eps > 0.29 && eps <= 0.3 + 1e-12, "{eps}");
    assert!((e["rho_charged"].as_f64().expect("rho") - eps * eps / 2.0).abs() < 1e-9);
    // A body over the limit.
    let huge = json!({"dataset": "x".repeat(100_000)});
    post_json(&state, "/api/v1/queries", Some(&planner), &huge)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE);
    // Planners may not administer.
    let d = send(
        &state,
        Request::post("/api/v1/admin/publish?dataset=tiny")
            .header(header::AUTHORIZATION, format!("Bearer {planner}"))
            .body(Body::empty())
            .expect("r"),
    )
    .await;
    assert!(d.problem(StatusCode::FORBIDDEN).contains("admin"));
}

async fn upload(state: &Arc<AppState>, token: &str, name: &str, body: Vec<u8>, extra: &str) -> Answer {
    send(
        state,
        Request::post(format!("/api/v1/admin/ingest?dataset=tiny&filename={name}{extra}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(body))
            .expect("r"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_upload_deliveries_and_run_the_plan() {
    let f = build();
    let state = state(&f.data, &[]);
    let admin = token(&f.data, "ops", Role::Admin);
    let before = hexflow::store::CountStore::new(&f.data, "tiny").snapshot();
    // A delivery already ingested: a no-op.
    let again = upload(
        &state,
        &admin,
        "footfall.csv",
        std::fs::read(&f.deliveries[0]).expect("read"),
        "",
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.json()["status"], "already_ingested");
    assert_eq!(again.json()["file"], "footfall.csv");
    // A malformed delivery: refused, named by its upload name, store intact.
    let bad = b"bin_start,cell_id,devices\n2025-03-06T10:00:00+01:00,A-1,-4\n".to_vec();
    let d = upload(&state, &admin, "march.csv", bad, "").await;
    let d = d.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(d.contains("march.csv") && !d.contains("uploads"), "{d}");
    assert_eq!(hexflow::store::CountStore::new(&f.data, "tiny").snapshot(), before);
    let d = upload(&state, &admin, "notes.txt", b"x".to_vec(), "").await;
    assert!(d.problem(StatusCode::BAD_REQUEST).contains(".csv"));
    // Too large for the configured limit (1 MiB here).
    upload(&state, &admin, "big.csv", vec![b'a'; 2 << 20], "")
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE);
    // A new day: ingested, then published by the plan.
    let good = (0..24)
        .map(|h| format!("2025-03-06T{h:02}:00:00+01:00,A-1,{}\n", 100 + h))
        .collect::<String>();
    let ok = upload(
        &state,
        &admin,
        "march-6.csv",
        format!("bin_start,cell_id,devices\n{good}").into_bytes(),
        "",
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text());
    assert_eq!(ok.json()["rows"], 24);
    let uploads: Vec<_> = std::fs::read_dir(f.data.join("uploads")).expect("uploads").collect();
    assert!(uploads.is_empty(), "uploads are removed after ingest");
    // One left by a crash mid-ingest (its process is gone: no pid is this
    // high) is removed when a server starts; one of a live process (an
    // upload in flight in another server on this data dir) stays.
    std::fs::write(
        f.data.join("uploads/4294967-abc-left.csv"),
        "bin_start,cell_id,devices\n",
    )
    .expect("write");
    let live = f.data.join(format!("uploads/{}-999", std::process::id()));
    std::fs::create_dir_all(&live).expect("mkdir");
    let _restarted = self::state(&f.data, &[]);
    let left: Vec<_> = std::fs::read_dir(f.data.join("uploads"))
        .expect("uploads")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left, vec![live.clone()], "only the live process's upload stays");
    std::fs::remove_dir_all(&live).expect("rmdir");
    let p = send(
        &state,
        Request::post("/api/v1/admin/publish?dataset=tiny")
            .header(header::AUTHORIZATION, format!("Bearer {admin}"))
            .body(Body::empty())
            .expect("r"),
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text());
    assert_eq!(p.json()["new"], 1);
    assert_eq!(get(&state, "/api/v1/releases").await.json()["total"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_cors_and_the_viewer() {
    let (f, state) = shared();
    let h = get(state, "/healthz").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json()["status"], "ok");
    get(state, "/api/v1/releases").await;
    let id = first_release(state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    get(state, &format!("/api/v1/releases/{id}/values?bin=0")).await;
    let m = get(state, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    let text = m.text();
    assert!(
        text.contains(
            "hexflow_http_requests_total{method=\"GET\",route=\"/api/v1/releases/{id}/values\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("hexflow_releases 3"), "{text}");
    assert!(!text.contains(&id), "route templates, not ids, label the metrics");
    // CORS: public release content is open to any page by default (map
    // clients load it by URL); the rest is off unless configured.
    for uri in [
        "/api/v1/releases".to_string(),
        "/api/v1/datasets".to_string(),
        format!("/api/v1/releases/{id}"),
        format!("/api/v1/releases/{id}/values?bin=0"),
        format!("/api/v1/releases/{id}/tilejson.json"),
    ] {
        let a = get_with(state, &uri, header::ORIGIN, "https://maps.example.org").await;
        assert_eq!(a.header(header::ACCESS_CONTROL_ALLOW_ORIGIN), "*", "{uri}");
    }
    for uri in ["/api/v1/ledger", "/api/v1/views/flows", "/healthz"] {
        let a = get_with(state, uri, header::ORIGIN, "https://maps.example.org").await;
        assert!(a.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(), "{uri}");
    }
    // A request with a token is never answered for any origin.
    let with_token = get_with(state, "/api/v1/releases", header::AUTHORIZATION, "Bearer hxf_nope").await;
    assert!(with_token.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let open = self::state(&f.data, &["https://maps.example.org"]);
    let ok = get_with(&open, "/api/v1/ledger", header::ORIGIN, "https://maps.example.org").await;
    assert_eq!(
        ok.header(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "https://maps.example.org"
    );
    let other = get_with(&open, "/api/v1/ledger", header::ORIGIN, "https://evil.example").await;
    assert!(other.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    // The configured origin keeps its own answer on release routes (one header).
    let mine = get_with(&open, "/api/v1/releases", header::ORIGIN, "https://maps.example.org").await;
    assert_eq!(
        mine.headers.get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN).iter().count(),
        1
    );
    // The viewer.
    let page = get(state, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header(header::CONTENT_TYPE).starts_with("text/html"));
    assert!(page.text().contains("id=\"map\""));
    assert!(
        page.header(header::CONTENT_SECURITY_POLICY)
            .contains("default-src 'self'")
    );
    let v = get(state, "/views").await;
    assert!(v.text().contains("/web/views.js"), "{}", v.text());
    let t = get(state, "/transparency").await;
    assert!(t.text().contains("/web/transparency.js"));
    let js = get(state, "/web/map.js").await;
    assert_eq!(js.header(header::CONTENT_TYPE), "text/javascript; charset=utf-8");
    get(state, "/web/secret.txt").await.problem(StatusCode::NOT_FOUND);
    // A name that is not UTF-8 once decoded: a problem, like every error
    // (it was axum's text/plain).
    get(state, "/web/%C0%AE%C0%AE%2F")
        .await
        .problem(StatusCode::BAD_REQUEST);
}

#[test]
fn no_route_reads_the_count_store() {
    // The server answers from releases, the ledger and the grid only; a
    // count-store reader in the HTTP layer would be a path for raw counts.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    for e in std::fs::read_dir(&dir).expect("src/server") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "rs") {
            let src = std::fs::read_to_string(&path).expect("read");
            for forbidden in ["CountStore", "read_day", "read_range", "deliveries"] {
                assert!(!src.contains(forbidden), "{} uses {forbidden}", path.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_releases_are_keyed_by_the_grids_named_zones() {
    let f = build();
    let state = state(&f.data, &[]);
    let planner = token(&f.data, "tourism-office", Role::Planner);
    let spec = json!({"dataset": "tiny", "metric": "footfall", "unit": "zone", "bin": "1d",
                      "from": "2025-03-03", "to": "2025-03-05", "rho": 0.05});
    let a = post_json(&state, "/api/v1/queries", Some(&planner), &spec).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let id = a.json()["release_id"].as_str().expect("id").to_string();
    let auth = format!("Bearer {planner}");
    let v = get_with(
        &state,
        &format!("/api/v1/releases/{id}/values"),
        header::AUTHORIZATION,
        &auth,
    )
    .await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text());
    let rows = v.json()["rows"].as_array().expect("rows").clone();
    assert_eq!(rows.len(), 2 * 3, "two zones × three days");
    let zones: BTreeSet<&str> = rows.iter().map(|r| r["zone_id"].as_str().expect("zone")).collect();
    assert_eq!(zones, BTreeSet::from(["E", "W"]));
    let g = get_with(
        &state,
        &format!("/api/v1/releases/{id}/values?format=geojson&bin=0"),
        header::AUTHORIZATION,
        &auth,
    )
    .await
    .json();
    assert_eq!(g["features"][0]["geometry"]["type"], "MultiPolygon");
    // The area names its zones, each with a label point inside it.
    let area = get(&state, "/api/v1/datasets/tiny/area").await.json();
    let zones: Vec<&Value> = area["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter(|f| f["properties"]["kind"] == "zone")
        .collect();
    assert_eq!(zones.len(), 2);
    for z in zones {
        let name = z["properties"]["name"].as_str().expect("name");
        assert!(name == "West" || name == "East", "{name}");
        let p = &z["properties"]["label_point"];
        let (lon, lat) = (p[0].as_f64().expect("lon"), p[1].as_f64().expect("lat"));
        let ring = z["geometry"]["coordinates"][0][0].as_array().expect("ring");
        let xs: Vec<f64> = ring.iter().map(|c| c[0].as_f64().expect("x")).collect();
        let ys: Vec<f64> = ring.iter().map(|c| c[1].as_f64().expect("y")).collect();
        let inside = |v: f64, a: &[f64]| {
            a.iter().cloned().fold(f64::MAX, f64::min) < v && v < a.iter().cloned().fold(f64::MIN, f64::max)
        };
        assert!(inside(lon, &xs) && inside(lat, &ys), "{name}: label outside its box");
    }
    // Flows between the zones: 2 × 2 pairs per day.
    let mut flows = spec.clone();
    flows["metric"] = json!("flows");
    let fl = post_json(&state, "/api/v1/queries", Some(&planner), &flows).await;
    assert_eq!(fl.status, StatusCode::CREATED, "{}", fl.text());
    let fid = fl.json()["release_id"].as_str().expect("id").to_string();
    let csv = get_with(
        &state,
        &format!("/api/v1/releases/{fid}/values?format=csv&bin=0"),
        header::AUTHORIZATION,
        &auth,
    )
    .await
    .text();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "origin,dest,origin_name,dest_name,origin_lon,origin_lat,dest_lon,dest_lat,bin_start,local_start,local_date,value,ci95,low,covered,estimate,estimate_ci95,noise_sd"
    );
    assert_eq!(lines.len(), 5);
    // Names and centroids for arc layers; the local date of a daily bin.
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(&first[..4], &["W", "W", "West", "West"]);
    let lon: f64 = first[4].parse().expect("lon");
    assert!((5.37..5.385).contains(&lon), "{lon}");
    assert_eq!(first[10], "2025-03-03");
    // A flow within one zone has no line: a Point at its centre.
    let gj = get_with(
        &state,
        &format!("/api/v1/releases/{fid}/values?format=geojson&bin=0"),
        header::AUTHORIZATION,
        &auth,
    )
    .await
    .json();
    for f in gj["features"].as_array().expect("features") {
        let same = f["properties"]["origin"] == f["properties"]["dest"];
        let kind = f["geometry"]["type"].as_str().expect("type");
        assert_eq!(kind, if same { "Point" } else { "LineString" }, "{f}");
    }
    // A resolution with zones is a contradiction, said so.
    let mut both = spec.clone();
    both["res"] = json!(8);
    let d = post_json(&state, "/api/v1/queries", Some(&planner), &both).await;
    assert!(d.problem(StatusCode::UNPROCESSABLE_ENTITY).contains("res 0"));
    // Maps are for hexes.
    get_with(
        &state,
        &format!("/api/v1/releases/{id}/map.png"),
        header::AUTHORIZATION,
        &auth,
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_and_change_views_add_up_the_presence_releases_and_cost_nothing() {
    let f = build_with("tiny-zones.toml", "2025-04-06", 35 * 5);
    let state = state_with("tiny-zones.toml", &f.data, &[]);
    let spent_before = get(&state, "/api/v1/ledger").await.json()["total_rho_by_audience"].clone();
    // The published values themselves, read as any client would.
    let list = get(&state, "/api/v1/releases?dataset=tiny&metric=presence&limit=500")
        .await
        .json();
    let releases = list["releases"].as_array().expect("releases");
    assert_eq!(releases.len(), 35 * 2);
    // (day, period, zone, segment) → (estimate, noise_sd, people)
    type Key = (String, String, String, String);
    let mut published: std::collections::BTreeMap<Key, (f64, f64, Option<f64>)> = Default::default();
    for r in releases {
        let id = r["release_id"].as_str().expect("id");
        let v = get(&state, &format!("/api/v1/releases/{id}/values")).await.json();
        for row in v["rows"].as_array().expect("rows") {
            let day = row["bin_start"].as_str().expect("bin");
            let local = chrono::DateTime::parse_from_rfc3339(day)
                .expect("rfc3339")
                .with_timezone(&chrono_tz::Europe::Paris)
                .date_naive()
                .to_string();
            published.insert(
                (
                    local,
                    row["period"].as_str().expect("period").into(),
                    row["zone_id"].as_str().expect("zone").into(),
                    row["segment"].as_str().expect("segment").into(),
                ),
                (
                    row["estimate"].as_f64().expect("estimate"),
                    row["noise_sd"].as_f64().expect("sd"),
                    row["people"].as_f64(),
                ),
            );
        }
    }
    let v = get(&state, "/api/v1/views/visitors?zone=W").await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text());
    let v = v.json();
    assert_eq!(v["segments"], json!(["resident", "tourist", "excursionist"]));
    let daily = v["daily"].as_array().expect("daily");
    assert_eq!(daily.len(), 35);
    let d0 = &daily[0];
    let day0 = d0["day"].as_str().expect("day").to_string();
    let key = |p: &str, z: &str, s: &str| (day0.clone(), p.to_string(), z.to_string(), s.to_string());
    let (est, sd, people) = published[&key("day", "W", "tourist")];
    let tourist = &d0["segments"][1];
    assert!((tourist["devices"].as_f64().expect("d") - est).abs() < 1e-3);
    assert!((tourist["devices_ci95"].as_f64().expect("ci") - 1.959_963_984_540_054 * sd).abs() < 1e-3);
    // Tourists have a public factor of 0.25: people = devices / 0.25.
    assert!((tourist["people"].as_f64().expect("people") - est / 0.25).abs() < 1e-2);
    assert!((people.expect("published people") - est / 0.25).abs() < 1e-2);
    // Excursionists have no factor, so neither has the day's total.
    assert!(d0["segments"][2]["people"].is_null() && d0["total"]["people"].is_null());
    // Nights of March: tourists' night presence in W summed over March days.
    let march = v["monthly"]
        .as_array()
        .expect("monthly")
        .iter()
        .find(|m| m["month"] == "2025-03")
        .expect("March");
    let (nights, var): (f64, f64) = published
        .iter()
        .filter(|((d, p, z, s), _)| d.starts_with("2025-03") && p == "night" && z == "W" && s == "tourist")
        .fold((0.0, 0.0), |(a, b), (_, (e, sd, _))| (a + e, b + sd * sd));
    assert_eq!(march["days"], 29);
    assert!((march["nights"]["devices"].as_f64().expect("n") - nights).abs() < 1e-2);
    assert!((march["nights"]["devices_ci95"].as_f64().expect("ci") - 1.959_963_984_540_054 * var.sqrt()).abs() < 1e-3);
    // No monthly origins release in this plan: no origins, said by an empty list.
    assert_eq!(march["top_origins"], json!([]));
    // Every zone summed: W + E (zone draws are independent under zone placement).
    let all = get(&state, "/api/v1/views/visitors").await.json();
    let sum: f64 = ["W", "E"].iter().map(|z| published[&key("day", z, "resident")].0).sum();
    assert!((all["daily"][0]["segments"][0]["devices"].as_f64().expect("d") - sum).abs() < 1e-2);
    assert_eq!(all["zone"], "all");

    // Change against the median of the same weekday in the first 2 weeks.
    let c = get(
        &state,
        "/api/v1/views/change?zone=W&baseline_from=2025-03-03&baseline_to=2025-03-16&segment=resident",
    )
    .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text());
    let c = c.json();
    let days = c["days"].as_array().expect("days");
    assert_eq!(days.len(), 35 - 14);
    for d in days {
        let (v, b) = (d["value"].as_f64().expect("v"), d["baseline"].as_f64().expect("b"));
        assert_eq!(d["baseline_days"], 2);
        assert!((d["change_pct"].as_f64().expect("pct") - 100.0 * (v / b - 1.0)).abs() < 1e-9);
        assert!(d["change_pct_ci95"].as_f64().expect("ci") > 0.0);
    }
    // The baseline of the first Monday after it: the median (= mean of
    // two) of the two Mondays in the window.
    let monday = |d: &str| published[&(d.to_string(), "day".into(), "W".into(), "resident".into())].0;
    let b = 0.5 * (monday("2025-03-03") + monday("2025-03-10"));
    assert!((days[0]["baseline"].as_f64().expect("b") - b).abs() < 1e-2);
    // Refusals: an unknown segment, a baseline without data.
    assert_eq!(
        get(
            &state,
            "/api/v1/views/change?baseline_from=2025-03-03&baseline_to=2025-03-16&segment=alien"
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    let none = get(
        &state,
        "/api/v1/views/change?baseline_from=2024-01-01&baseline_to=2024-01-31",
    )
    .await;
    assert_eq!(none.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", none.text());
    // Post-processing: nothing was charged.
    assert_eq!(
        get(&state, "/api/v1/ledger").await.json()["total_rho_by_audience"],
        spent_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_computed_from_public_releases_and_cost_nothing() {
    // Five weeks: hourly hex footfall, daily zone footfall, hourly zone flows.
    let f = build_with("tiny-zones.toml", "2025-04-06", 35 * 5);
    let state = state_with("tiny-zones.toml", &f.data, &[]);
    let spent_before = get(&state, "/api/v1/ledger").await.json()["total_rho_by_audience"].clone();

    let s = get(&state, "/api/v1/views/seasonality?zone=W").await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text());
    let s = s.json();
    let daily = s["daily"].as_array().expect("daily");
    assert_eq!(daily.len(), 35);
    assert!(daily.iter().all(|d| d["ci95"].as_f64().expect("ci") > 0.0));
    let wd = s["weekday_profile"].as_array().expect("profile");
    assert_eq!(wd.len(), 7);
    assert_eq!(wd[0]["days"], 5);
    // The mean of five days has the error of five independent noises.
    let mondays: Vec<&Value> = daily
        .iter()
        .filter(|d| day(d["day"].as_str().expect("day")).format("%a").to_string() == "Mon")
        .collect();
    let mean = mondays.iter().map(|d| d["value"].as_f64().expect("v")).sum::<f64>() / 5.0;
    assert!((wd[0]["mean"].as_f64().expect("mean") - mean).abs() < 1e-9);
    assert_eq!(s["source"]["cost_of_this_view"], 0.0);

    let e = get(&state, "/api/v1/views/event?zone=E&date=2025-04-02&weeks=3").await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.text());
    // Identical inputs, identical bytes (regression: a float sum over a
    // HashMap differed in the last bit between calls).
    let site_a = h3o::LatLng::new(43.29, 5.385)
        .expect("latlng")
        .to_cell(h3o::Resolution::Eight);
    let by_hex = format!("/api/v1/views/event?hex={site_a}&date=2025-04-02&weeks=3");
    let first_hex = get(&state, &by_hex).await;
    assert_eq!(first_hex.status, StatusCode::OK, "{}", first_hex.text());
    for _ in 0..5 {
        let again = get(&state, "/api/v1/views/event?zone=E&date=2025-04-02&weeks=3").await;
        assert_eq!(again.body, e.body, "the event view is not byte-identical across calls");
        assert_eq!(get(&state, &by_hex).await.body, first_hex.body);
    }
    let e = e.json();
    assert_eq!(e["baseline_days"], 3);
    let hours = e["hours"].as_array().expect("hours");
    assert_eq!(hours.len(), 24);
    for h in hours {
        let (v, b, x) = (
            h["value"].as_f64().expect("v"),
            h["baseline"].as_f64().expect("b"),
            h["excess"].as_f64().expect("x"),
        );
        assert!((v - b - x).abs() < 1e-9);
        assert!(h["excess_ci95"].as_f64().expect("ci") >= h["ci95"].as_f64().expect("ci") - 1e-9);
    }

    let fl = get(
        &state,
        "/api/v1/views/flows?from=2025-03-03&to=2025-03-09&hours=7-9&weekdays=true",
    )
    .await;
    assert_eq!(fl.status, StatusCode::OK, "{}", fl.text());
    let fl = fl.json();
    assert_eq!(fl["bins_used"], 5 * 2, "five weekdays × two hours");
    assert_eq!(fl["bin"], "1h");
    let totals = fl["totals"].as_array().expect("totals");
    assert_eq!(totals.len(), 2);
    let out: f64 = totals.iter().map(|t| t["out"].as_f64().expect("out")).sum();
    let inn: f64 = totals.iter().map(|t| t["in"].as_f64().expect("in")).sum();
    assert!((out - inn).abs() < 1e-9, "every trip leaves one zone and enters one");
    let largest = fl["largest"].as_array().expect("largest");
    assert_eq!(largest.len(), 4);
    assert!(largest[0]["trips"].as_f64() >= largest[3]["trips"].as_f64());

    let fc = get(&state, "/api/v1/views/forecast?zone=W&days=14").await;
    assert_eq!(fc.status, StatusCode::OK, "{}", fc.text());
    let fc = fc.json();
    let days = fc["forecast"]["days"].as_array().expect("days");
    assert_eq!(days.len(), 14);
    assert_eq!(days[0]["day"], "2025-04-07");
    for d in days {
        let (lo, v, hi) = (
            d["lo"].as_f64().expect("lo"),
            d["value"].as_f64().expect("v"),
            d["hi"].as_f64().expect("hi"),
        );
        assert!(lo <= v && v <= hi && hi > lo, "{d}");
    }
    assert!(fc["forecast"]["backtest"]["mae_seasonal_naive"].as_f64().is_some());

    // The same views as charts.
    for uri in [
        "/api/v1/views/seasonality?zone=W&format=png",
        "/api/v1/views/forecast?zone=W&format=png",
        "/api/v1/views/event?zone=E&date=2025-04-02&format=png",
    ] {
        let png = get(&state, uri).await;
        assert_eq!(png.header(header::CONTENT_TYPE), "image/png", "{uri}: {}", png.text());
        let (w, _, _, px) = decode_png(&png.body);
        assert_eq!(w, 1000);
        // The Okabe-Ito blue or orange line is drawn.
        let line = px
            .chunks_exact(3)
            .filter(|p| (p[0], p[1], p[2]) == (0, 114, 178) || (p[0], p[1], p[2]) == (230, 159, 0))
            .count();
        assert!(line > 200, "{uri}: {line} line pixels");
    }
    get(&state, "/api/v1/views/seasonality?zone=W&format=svg")
        .await
        .problem(StatusCode::BAD_REQUEST);
    let zones = get(&state, "/api/v1/datasets").await.json()["datasets"][0]["zones"].clone();
    assert_eq!(zones.as_array().map(Vec::len), Some(2));

    // Failures say what is missing; none of this spent budget.
    get(&state, "/api/v1/views/seasonality?zone=NOPE")
        .await
        .problem(StatusCode::NOT_FOUND);
    let d = get(&state, "/api/v1/views/flows?from=2024-01-01&to=2024-01-31")
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(d.contains("flows"), "{d}");
    get(&state, "/api/v1/views/flows?from=2025-03-03&to=2025-03-09&hours=9-7")
        .await
        .problem(StatusCode::BAD_REQUEST);
    get(&state, "/api/v1/views/event?date=2025-04-02")
        .await
        .problem(StatusCode::BAD_REQUEST);
    let spent_after = get(&state, "/api/v1/ledger").await.json()["total_rho_by_audience"].clone();
    assert_eq!(spent_before, spent_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_queries_at_once_make_one_release_charged_once() {
    let f = build();
    let state = state(&f.data, &[]);
    let planner = token(&f.data, "double-click", Role::Planner);
    let spec = json!({"dataset": "tiny", "metric": "footfall", "res": 9, "bin": "1h",
                      "from": "2025-03-03", "to": "2025-03-05", "rho": 0.05});
    let answers = futures_join(&state, &planner, &spec, 6).await;
    let ids: BTreeSet<String> = answers
        .iter()
        .map(|a| a.json()["release_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 1);
    let new = answers.iter().filter(|a| a.json()["status"] == "new").count();
    assert_eq!(new, 1, "exactly one request draws noise");
    let charged: f64 = answers
        .iter()
        .map(|a| a.json()["rho_charged"].as_f64().expect("rho"))
        .sum();
    assert!((charged - 0.05).abs() < 1e-9, "{charged}");
    let l = get(&state, "/api/v1/ledger").await.json();
    let planners: f64 = l["days"]
        .as_array()
        .expect("days")
        .iter()
        .filter(|d| d["audience"] == "planners")
        .map(|d| d["rho_spent"].as_f64().expect("rho"))
        .sum();
    assert!((planners - 3.0 * 0.05).abs() < 1e-6, "{planners}");
    // The stored release is whole and readable, privately cached only.
    let id = ids.into_iter().next().expect("id");
    let v = get_with(
        &state,
        &format!("/api/v1/releases/{id}/values?format=csv"),
        header::AUTHORIZATION,
        &format!("Bearer {planner}"),
    )
    .await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text());
    assert!(
        v.header(header::CACHE_CONTROL).starts_with("private"),
        "{}",
        v.header(header::CACHE_CONTROL)
    );
    assert_eq!(v.header(header::VARY), "Authorization");
    let public = first_release(&state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    let p = get(&state, &format!("/api/v1/releases/{public}/values?format=csv")).await;
    assert!(p.header(header::CACHE_CONTROL).starts_with("public"));
    // A date far in the future is refused, not a crash.
    let mut far = spec.clone();
    far["from"] = json!("+262142-12-31");
    far["to"] = json!("+262142-12-31");
    post_json(&state, "/api/v1/queries", Some(&planner), &far)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    // Unknown methods do not grow the metrics' label set.
    for m in ["XM1", "XM2"] {
        send(
            &state,
            Request::builder()
                .method(m)
                .uri("/nothing")
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    }
    let metrics = get(&state, "/metrics").await.text();
    assert!(
        !metrics.contains("XM1") && metrics.contains("method=\"other\""),
        "{metrics}"
    );
}

async fn futures_join(state: &Arc<AppState>, token: &str, spec: &Value, n: usize) -> Vec<Answer> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (state, token, spec) = (state.clone(), token.to_string(), spec.clone());
            tokio::spawn(async move { post_json(&state, "/api/v1/queries", Some(&token), &spec).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let a = t.await.expect("task");
        assert!(
            a.status == StatusCode::CREATED || a.status == StatusCode::OK,
            "{}",
            a.text()
        );
        out.push(a);
    }
    out
}

/// The OpenAPI document's schema for `status` and `content_type` of the
/// operation `(method, template)`, with the document's components around it
/// so that its `$ref`s resolve; `None` for a body without a JSON schema.
fn documented(
    doc: &Value,
    method: &str,
    template: &str,
    status: u16,
    content_type: &str,
) -> Result<Option<Value>, String> {
    let op = &doc["paths"][template][method];
    if op.is_null() {
        return Err(format!("{method} {template} is not documented"));
    }
    let mut resp = op["responses"][status.to_string()].clone();
    if resp.is_null() {
        resp = op["responses"]["default"].clone();
    }
    if resp.is_null() {
        return Err(format!("{method} {template}: status {status} is not documented"));
    }
    if let Some(r) = resp["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or_default();
        resp = doc["components"]["responses"][name].clone();
    }
    let content = &resp["content"];
    if content.is_null() || content.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(None);
    }
    let Some(media) = content.get(content_type) else {
        return Err(format!(
            "{method} {template} {status}: content type {content_type} not documented (documented: {:?})",
            content.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>())
        ));
    };
    let Some(schema) = media.get("schema") else {
        return Ok(None);
    };
    Ok(Some(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/$defs/answer",
        "$defs": {"answer": schema},
        "components": doc["components"],
    })))
}

/// Headers the document gives a schema for must match it when sent.
fn documented_headers(doc: &Value, method: &str, template: &str, a: &Answer) -> Result<(), String> {
    let resp = &doc["paths"][template][method]["responses"][a.status.as_u16().to_string()];
    let Some(headers) = resp["headers"].as_object() else {
        return Ok(());
    };
    for (name, h) in headers {
        let h = match h["$ref"].as_str() {
            Some(r) => &doc["components"]["headers"][r.rsplit('/').next().unwrap_or_default()],
            None => h,
        };
        let Ok(hn) = header::HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        let sent = a.header(hn);
        if sent.is_empty() || h["schema"].is_null() {
            continue;
        }
        let v = jsonschema::draft202012::new(&h["schema"]).map_err(|e| e.to_string())?;
        if !v.is_valid(&Value::String(sent.clone())) {
            return Err(format!("header {name}: {sent:?} does not match {}", h["schema"]));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_every_route_matches_the_openapi_document() {
    // Real answers, success and failure, of every route: their status and
    // content type must be documented and their JSON must validate against
    // the documented schema (regression: the document and the server drifted).
    let f = build_with("tiny-zones.toml", "2025-04-06", 35 * 5);
    let state = state_with("tiny-zones.toml", &f.data, &[]);
    let doc: Value = serde_json::from_str(hexflow::server::OPENAPI).expect("openapi");
    let admin = token(&f.data, "ops", Role::Admin);
    let planner = token(&f.data, "transit", Role::Planner);
    let list = get(&state, "/api/v1/releases?dataset=tiny&limit=500").await.json();
    let pick = |pred: &dyn Fn(&Value) -> bool| -> String {
        list["releases"]
            .as_array()
            .expect("releases")
            .iter()
            .find(|r| pred(r))
            .and_then(|r| r["release_id"].as_str())
            .expect("a release of that kind")
            .to_string()
    };
    let hex = pick(&|r| r["unit"] == "hex" && r["metric"] == "footfall");
    let zone = pick(&|r| r["unit"] == "zone" && r["metric"] == "footfall");
    let flows = pick(&|r| r["metric"] == "flows");
    let presence = pick(&|r| r["metric"] == "presence");
    let site_a = h3o::LatLng::new(43.29, 5.385)
        .expect("latlng")
        .to_cell(h3o::Resolution::Eight);
    let (x, y) = hexflow::render::mercator_px(5.385, 43.29, 14.0);
    let tile = format!("14/{}/{}.png", (x / 256.0) as u32, (y / 256.0) as u32);
    let query = json!({"dataset":"tiny","metric":"footfall","res":9,"bin":"1h","from":"2025-03-20","to":"2025-03-20","rho":0.01});
    let zone_query = json!({"dataset":"tiny","metric":"flows","unit":"zone","bin":"1d","from":"2025-03-21","to":"2025-03-21","rho":0.01});
    let bad_query = json!({"dataset":"tiny","metric":"footfall","res":9,"bin":"1h","from":"2025-03-20","to":"2025-03-20","rho":1e-320});
    let delivery = std::fs::read(&f.deliveries[0]).expect("delivery");
    type Case<'a> = (&'a str, &'a str, String, Option<&'a str>, Option<Vec<u8>>);
    let cases: Vec<Case> = vec![
        ("get", "/healthz", "/healthz".into(), None, None),
        ("get", "/metrics", "/metrics".into(), None, None),
        ("get", "/api/openapi.json", "/api/openapi.json".into(), None, None),
        ("get", "/api/v1/openapi.json", "/api/v1/openapi.json".into(), None, None),
        ("get", "/api/v1/datasets", "/api/v1/datasets".into(), None, None),
        (
            "get",
            "/api/v1/datasets/{dataset}/area",
            "/api/v1/datasets/tiny/area".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/datasets/{dataset}/area",
            "/api/v1/datasets/nope/area".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases",
            "/api/v1/releases?dataset=tiny&metric=flows".into(),
            None,
            None,
        ),
        ("get", "/api/v1/releases", "/api/v1/releases?res=x".into(), None, None),
        (
            "get",
            "/api/v1/releases/{id}",
            format!("/api/v1/releases/{hex}"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}",
            format!("/api/v1/releases/{zone}"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}",
            "/api/v1/releases/r-00000000000000000000".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{hex}/values?bin=3"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{hex}/values?format=geojson&bin=3"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{hex}/values?format=csv&bin=3"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{hex}/values?format=parquet"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{zone}/values"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{presence}/values"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}",
            format!("/api/v1/releases/{presence}"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{zone}/values?format=geojson"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{flows}/values?bin=8"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{flows}/values?format=geojson&bin=8"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/values",
            format!("/api/v1/releases/{hex}/values?bin=99"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/series",
            format!("/api/v1/releases/{hex}/series?hex={site_a}"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/series",
            format!("/api/v1/releases/{hex}/series?hex=zz"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/map.png",
            format!("/api/v1/releases/{hex}/map.png?bin=2&width=480"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/map.png",
            format!("/api/v1/releases/{zone}/map.png"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/tilejson.json",
            format!("/api/v1/releases/{hex}/tilejson.json"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/tiles/{z}/{x}/{y}",
            format!("/api/v1/releases/{hex}/tiles/{tile}"),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/releases/{id}/tiles/{z}/{x}/{y}",
            format!("/api/v1/releases/{hex}/tiles/40/0/0.png"),
            None,
            None,
        ),
        (
            "post",
            "/api/v1/releases/{id}/tile-url",
            format!("/api/v1/releases/{hex}/tile-url"),
            None,
            Some(Vec::new()),
        ),
        (
            "post",
            "/api/v1/releases/{id}/tile-url",
            "/api/v1/releases/r-00000000000000000000/tile-url".into(),
            None,
            Some(Vec::new()),
        ),
        ("get", "/api/v1/ledger", "/api/v1/ledger".into(), None, None),
        (
            "get",
            "/api/v1/ledger/releases",
            "/api/v1/ledger/releases".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/seasonality",
            "/api/v1/views/seasonality?zone=W".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/seasonality",
            "/api/v1/views/seasonality?zone=W&format=png".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/seasonality",
            "/api/v1/views/seasonality?zone=nowhere".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/event",
            "/api/v1/views/event?zone=E&date=2025-04-02&weeks=3".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/event",
            format!("/api/v1/views/event?hex={site_a}&date=2025-04-02&weeks=3"),
            None,
            None,
        ),
        // A resolution the grid does not offer: 422, documented (it was not).
        (
            "get",
            "/api/v1/views/event",
            "/api/v1/views/event?zone=E&date=2025-04-02&res=12".into(),
            None,
            None,
        ),
        ("get", "/api/v1/views/flows", "/api/v1/views/flows".into(), None, None),
        (
            "get",
            "/api/v1/views/flows",
            "/api/v1/views/flows?from=2025-03-03&to=2025-03-30&hours=7-9".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/flows",
            "/api/v1/views/flows?from=2025-03-03&to=2025-03-09&format=png".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/forecast",
            "/api/v1/views/forecast?zone=W&days=7".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/visitors",
            "/api/v1/views/visitors?zone=W".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/visitors",
            "/api/v1/views/visitors?top=0".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/visitors",
            "/api/v1/views/visitors?zone=nowhere".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/change",
            "/api/v1/views/change?zone=E&baseline_from=2025-03-03&baseline_to=2025-03-16".into(),
            None,
            None,
        ),
        (
            "get",
            "/api/v1/views/change",
            "/api/v1/views/change?baseline_from=2024-01-01&baseline_to=2024-01-31".into(),
            None,
            None,
        ),
        (
            "post",
            "/api/v1/queries",
            "/api/v1/queries".into(),
            Some(&planner),
            Some(query.to_string().into_bytes()),
        ),
        (
            "post",
            "/api/v1/queries",
            "/api/v1/queries".into(),
            Some(&planner),
            Some(query.to_string().into_bytes()),
        ),
        (
            "post",
            "/api/v1/queries",
            "/api/v1/queries".into(),
            Some(&planner),
            Some(zone_query.to_string().into_bytes()),
        ),
        (
            "post",
            "/api/v1/queries",
            "/api/v1/queries".into(),
            Some(&planner),
            Some(bad_query.to_string().into_bytes()),
        ),
        (
            "post",
            "/api/v1/queries",
            "/api/v1/queries".into(),
            None,
            Some(query.to_string().into_bytes()),
        ),
        (
            "post",
            "/api/v1/admin/ingest",
            "/api/v1/admin/ingest?dataset=tiny&filename=a.csv".into(),
            Some(&admin),
            Some(delivery),
        ),
        (
            "post",
            "/api/v1/admin/ingest",
            "/api/v1/admin/ingest?dataset=tiny&filename=b.csv".into(),
            Some(&admin),
            Some(b"cell_id,bin_start,devices\nA-1,x,1\n".to_vec()),
        ),
        (
            "post",
            "/api/v1/admin/ingest",
            "/api/v1/admin/ingest?dataset=tiny&filename=b.csv".into(),
            Some(&planner),
            Some(b"x".to_vec()),
        ),
        (
            "post",
            "/api/v1/admin/publish",
            "/api/v1/admin/publish?dataset=tiny".into(),
            Some(&admin),
            None,
        ),
    ];
    let mut covered = BTreeSet::new();
    let mut problems = Vec::new();
    for (method, template, uri, tok, body) in cases {
        let mut r = Request::builder().method(method.to_uppercase().as_str()).uri(&uri);
        if let Some(t) = tok {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if method == "post" && template == "/api/v1/queries" {
            r = r.header(header::CONTENT_TYPE, "application/json");
        }
        let a = send(
            &state,
            r.body(body.map(Body::from).unwrap_or_else(Body::empty))
                .expect("request"),
        )
        .await;
        covered.insert((method, template));
        let ct = a.header(header::CONTENT_TYPE);
        let ct = ct.split(';').next().unwrap_or_default().trim().to_string();
        let schema = match documented(&doc, method, template, a.status.as_u16(), &ct) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{uri}: {e}"));
                continue;
            }
        };
        if let Err(e) = documented_headers(&doc, method, template, &a) {
            problems.push(format!("{uri}: {e}"));
        }
        if let Some(schema) = schema
            && ct.contains("json")
        {
            let body: Value = serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{uri}: not JSON ({e})"));
            let v = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{uri}: bad schema: {e}"));
            for e in v.iter_errors(&body) {
                problems.push(format!("{uri} ({}): {} at {}", a.status, e, e.instance_path()));
            }
        }
    }
    let all: BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    assert_eq!(covered, all, "every route must be exercised");
    assert!(
        problems.is_empty(),
        "{} answers disagree with the OpenAPI document:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_beside_the_server_is_listed_as_it_goes_and_said_in_healthz() {
    use hexflow::release::publish::{Progress, publish_with};
    use std::sync::atomic::Ordering;
    let f = build();
    // The plan again: everything is stored, and the progress says so.
    let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
    let releaser = hexflow::release::Releaser::new(policy, &f.data).expect("releaser");
    let again = Progress::default();
    let report = publish_with(&releaser, &f.data, &again).expect("publish");
    assert_eq!(report.stored, 3, "{report:?}");
    assert_eq!(again.total.load(Ordering::Relaxed), 3);
    assert_eq!(again.done.load(Ordering::Relaxed), 3);
    assert!(again.finished.load(Ordering::Relaxed));

    let state = state(&f.data, &[]);
    let progress = Arc::new(Progress::default());
    progress.total.store(5, Ordering::Relaxed);
    progress.done.store(2, Ordering::Relaxed);
    tokio::spawn(hexflow::server::follow_publication(state.clone(), progress.clone()));
    let listed = |state: Arc<AppState>| async move {
        get(&state, "/api/v1/releases?dataset=tiny").await.json()["total"]
            .as_u64()
            .expect("total")
    };
    let before = listed(state.clone()).await;
    // `/healthz` says how far; wait for the follower to have started.
    let mut health = Value::Null;
    for _ in 0..400 {
        health = get(&state, "/healthz").await.json();
        if !health["publishing"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(health["publishing"], json!({"done": 2, "total": 5}), "{health}");
    // A release made by the publication (here: another process's releaser)
    // is listed without a restart.
    let spec = hexflow::release::ReleaseSpec {
        dataset: "tiny".into(),
        audience: "public".into(),
        metric: hexflow::store::Metric::Footfall,
        unit: hexflow::release::Unit::Hex,
        res: 8,
        bin: hexflow::privacy::Bin::Day,
        period: None,
        by: None,
        from: day("2025-03-04"),
        to: day("2025-03-04"),
        budget: hexflow::privacy::mechanism::Budget::Rho(0.01),
    };
    let first = spec.clone();
    let made = tokio::task::spawn_blocking(move || releaser.release(&first, day("2025-03-20")))
        .await
        .expect("join")
        .expect("release");
    assert_eq!(made.status, hexflow::release::Status::New);
    let mut now = before;
    for _ in 0..400 {
        now = listed(state.clone()).await;
        if now > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(now, before + 1, "the new release is listed while the plan runs");
    // The plan's last release, and at once its end.
    let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
    let releaser = hexflow::release::Releaser::new(policy, &f.data).expect("releaser");
    let last = hexflow::release::ReleaseSpec {
        from: day("2025-03-05"),
        to: day("2025-03-05"),
        ..spec
    };
    let made = tokio::task::spawn_blocking(move || releaser.release(&last, day("2025-03-20")))
        .await
        .expect("join")
        .expect("release");
    assert_eq!(made.status, hexflow::release::Status::New);
    progress.finished.store(true, Ordering::Relaxed);
    // Done: `/healthz` says nothing of a publication any more, and not
    // before the list holds everything the plan made (regression: it said
    // done up to a second before the last releases were listed, and a
    // viewer reloading then missed them).
    for _ in 0..400 {
        health = get(&state, "/healthz").await.json();
        if health["publishing"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(health["publishing"].is_null(), "{health}");
    assert_eq!(listed(state.clone()).await, before + 2, "{health}");
    assert_eq!(health["releases"].as_u64(), Some(before + 2), "{health}");
}

/// Every public GET answer, asked plainly and with forwarded headers (and
/// another Host): an answer that changes with them is never `public`, and
/// none names the forwarded host (issue 23: a TileJSON cached publicly for
/// a year followed `X-Forwarded-Host`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_varies_with_request_headers_is_never_publicly_cached() {
    let (f, shared_state) = shared();
    let mut with_url = ServeConfig::new(&f.data);
    with_url.public_url = Some("https://maps.example.org".into());
    let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
    let configured = Arc::new(AppState::new(vec![policy], with_url).expect("state"));
    let id = first_release(shared_state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    let (x, y) = hexflow::render::mercator_px(5.385, 43.29, 14.0);
    let uris = [
        "/api/openapi.json".to_string(),
        "/api/v1/openapi.json".into(),
        "/api/v1/datasets".into(),
        "/api/v1/datasets/tiny/area".into(),
        "/api/v1/releases".into(),
        format!("/api/v1/releases/{id}"),
        format!("/api/v1/releases/{id}/values?bin=3"),
        format!("/api/v1/releases/{id}/values?bin=3&format=geojson"),
        format!(
            "/api/v1/releases/{id}/series?hex={}",
            h3o::LatLng::new(43.29, 5.385)
                .expect("latlng")
                .to_cell(h3o::Resolution::Eight)
        ),
        format!("/api/v1/releases/{id}/tilejson.json?bin=3"),
        format!("/api/v1/releases/{id}/map.png?bin=3&width=320"),
        format!(
            "/api/v1/releases/{id}/tiles/14/{}/{}.png?bin=3",
            (x / 256.0) as u32,
            (y / 256.0) as u32
        ),
        "/api/v1/ledger".into(),
        "/api/v1/ledger/releases".into(),
        "/".into(),
        "/web/map.js".into(),
    ];
    let ask = |state: &Arc<AppState>, uri: &str, host: &str, forwarded: bool| {
        let mut r = Request::get(uri).header(header::HOST, host);
        if forwarded {
            r = r
                .header("x-forwarded-host", "evil.example")
                .header("x-forwarded-proto", "https")
                .header(header::FORWARDED, "for=192.0.2.1;proto=https;host=evil.example");
        }
        let state = state.clone();
        let req = r.body(Body::empty()).expect("request");
        async move { send(&state, req).await }
    };
    let mut checked = 0;
    for state in [shared_state, &configured] {
        for uri in &uris {
            let plain = ask(state, uri, "hexflow.local", false).await;
            assert!(plain.status.is_success(), "{uri}: {}", plain.text());
            let cc = plain.header(header::CACHE_CONTROL);
            for (host, forwarded) in [("hexflow.local", true), ("other.example:81", false)] {
                let other = ask(state, uri, host, forwarded).await;
                assert_eq!(other.status, plain.status, "{uri}");
                assert!(!other.text().contains("evil.example"), "{uri} names a forwarded host");
                if other.body != plain.body || other.header(header::CACHE_CONTROL) != cc {
                    for a in [&plain, &other] {
                        let cc = a.header(header::CACHE_CONTROL);
                        assert!(
                            !cc.contains("public") && (cc.contains("private") || cc.contains("no-store")),
                            "{uri} varies with the request's headers but is sent {cc:?}"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 2 * uris.len());
    // With --public-url the TileJSON is public, the same for everyone,
    // and says the configured URL; without it, private and the Host's.
    let uri = format!("/api/v1/releases/{id}/tilejson.json?bin=3");
    let a = ask(&configured, &uri, "hexflow.local", true).await;
    assert!(a.header(header::CACHE_CONTROL).starts_with("public"));
    assert!(
        a.json()["tiles"][0]
            .as_str()
            .expect("tiles")
            .starts_with(&format!("https://maps.example.org/api/v1/releases/{id}/tiles/")),
        "{}",
        a.text()
    );
    let b = ask(shared_state, &uri, "hexflow.local", true).await;
    assert!(b.header(header::CACHE_CONTROL).starts_with("private"));
    assert!(
        b.json()["tiles"][0]
            .as_str()
            .expect("tiles")
            .starts_with("http://hexflow.local/api/v1/"),
        "{}",
        b.text()
    );
    // Private for its URLs only: any page may still load it.
    let cors = get_with(shared_state, &uri, header::ORIGIN, "https://maps.example.org").await;
    assert_eq!(cors.header(header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
}

/// Each bounded integer or number query parameter of the document, just
/// outside its bounds, is refused with a 400 problem (schemathesis found
/// `offset=4294967296`, `top=501` and `width=0` accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_outside_their_documented_bounds_are_refused() {
    let (_, state) = shared();
    let doc: Value = serde_json::from_str(hexflow::server::OPENAPI).expect("openapi");
    let id = first_release(state).await["release_id"]
        .as_str()
        .expect("id")
        .to_string();
    let params = doc["components"]["parameters"].as_object().expect("parameters").clone();
    let mut tried = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("ops") {
            let Some(list) = op["parameters"].as_array() else {
                continue;
            };
            for p in list {
                let p = match p["$ref"].as_str() {
                    Some(r) => &params[r.rsplit('/').next().expect("name")],
                    None => p,
                };
                if p["in"] != "query" {
                    continue;
                }
                let (name, schema) = (p["name"].as_str().expect("name"), &p["schema"]);
                let mut outside = Vec::new();
                let integer = schema["type"] == "integer";
                if let Some(min) = schema["minimum"].as_f64() {
                    outside.push(if integer {
                        format!("{}", min as i64 - 1)
                    } else {
                        format!("{}", min - 0.5)
                    });
                }
                if let Some(min) = schema["exclusiveMinimum"].as_f64() {
                    outside.push(format!("{min}"));
                }
                if let Some(max) = schema["maximum"].as_f64() {
                    outside.push(if integer {
                        format!("{}", max as u64 + 1)
                    } else {
                        format!("{}", max + 0.5)
                    });
                }
                for v in outside {
                    // The other parameters a route needs to get as far as
                    // this one.
                    let needs = match path.as_str() {
                        "/api/v1/releases/{id}/values" if name == "radius_m" => "near=5.385,43.29&",
                        "/api/v1/views/seasonality" | "/api/v1/views/forecast" => "zone=E&",
                        "/api/v1/views/event" => "zone=E&date=2025-03-05&",
                        _ => "",
                    };
                    let uri = format!("{}?{needs}{name}={v}", path.replace("{id}", &id));
                    let m = if method == "post" { Method::POST } else { Method::GET };
                    let a = send(
                        state,
                        Request::builder()
                            .method(m)
                            .uri(&uri)
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Body::from("{}"))
                            .expect("request"),
                    )
                    .await;
                    // 401: a token route refuses before reading its query.
                    if a.status != StatusCode::UNAUTHORIZED {
                        let detail = a.problem(StatusCode::BAD_REQUEST);
                        assert!(detail.contains(name), "{uri}: {detail}");
                    }
                    tried.push(uri);
                }
            }
        }
    }
    for must in ["offset=4294967296", "top=501", "width=319", "res=16", "limit=5001"] {
        assert!(tried.iter().any(|u| u.contains(must)), "{must} not tried: {tried:?}");
    }
}
