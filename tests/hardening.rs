//! Regression tests of the hardening issue: each test names what used to go
//! wrong (a count in a message, a body read before the token, a release
//! charged and never finished, …) and fails if it comes back. The real
//! binary and the real router, on the tiny fixture grid.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hexflow::privacy::ledger::Role;
use hexflow::server::{AppState, ServeConfig};
use polars::prelude::*;
use tower::ServiceExt;

const BIN: &str = env!("CARGO_BIN_EXE_hexflow");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn policy() -> String {
    fixture("tiny.toml").display().to_string()
}

fn run(data: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("HEXFLOW_FAILPOINT");
    if let Some(f) = failpoint {
        cmd.env("HEXFLOW_FAILPOINT", f);
    }
    cmd.output().expect("run hexflow")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(o)))
}

fn write_parquet(path: &Path, mut df: DataFrame) {
    let mut f = fs::File::create(path).expect("create");
    hexflow::table::write_parquet(&mut df, &mut f).expect("parquet");
}

fn app(data: &Path) -> Arc<AppState> {
    let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
    let mut config = ServeConfig::new(data);
    config.max_upload_bytes = 1 << 20;
    Arc::new(AppState::new(vec![policy], config).expect("state"))
}

fn token(data: &Path, role: Role) -> String {
    let mut ledger = hexflow::privacy::ledger::Ledger::open(&hexflow::privacy::ledger::LedgerUrl::in_data_dir(data))
        .expect("ledger");
    ledger.create_token(role.as_str(), role).expect("token")
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn send(state: &Arc<AppState>, req: Request<Body>) -> Answer {
    let resp = hexflow::server::router(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("ascii").to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn upload(state: &Arc<AppState>, token: &str, name: &str, body: Vec<u8>) -> Answer {
    send(
        state,
        Request::post(format!("/api/v1/admin/ingest?dataset=tiny&filename={name}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(body))
            .expect("request"),
    )
    .await
}

// ------------------------------------------------------ no count in a message

/// Distinctive counts: none of them may appear in any message.
const SECRETS: [&str; 6] = ["41357", "61463", "98765", "31337", "271828", "4200042"];

/// One delivery per rejection path, each carrying secret counts.
fn leaky_deliveries(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let t = "2025-03-12T01:00:00+01:00";
    let csv = |name: &str, content: String| {
        let p = dir.join(name);
        fs::write(&p, content).expect("write");
        p
    };
    let mut out = vec![
        // No header row: polars takes the first data row as the header.
        (
            "footfall without header",
            csv("noheader.csv", format!("A-1,{t},41357\nB-0,{t},61463\n")),
        ),
        (
            "flows without header",
            csv("noheader-flows.csv", format!("A-1,B-0,{t},98765\n")),
        ),
        // Columns swapped against the header: counts sit in cell_id.
        (
            "swapped columns",
            csv("swapped.csv", format!("devices,bin_start,cell_id\nA-1,{t},61463\n")),
        ),
        (
            "swapped flows",
            csv(
                "swapped-flows.csv",
                format!("trips,dest_cell_id,bin_start,origin_cell_id\nA-1,B-0,{t},31337\n"),
            ),
        ),
        // A header with one known name and data in the other fields.
        (
            "half a header",
            csv("half.csv", format!("cell_id,{t},41357\nA-1,{t},5\n")),
        ),
        (
            "extra column named like a count",
            csv("extra.csv", format!("cell_id,bin_start,devices,271828\nA-1,{t},5,6\n")),
        ),
        (
            "fraction",
            csv("fraction.csv", format!("cell_id,bin_start,devices\nA-1,{t},41357.5\n")),
        ),
        (
            "text count",
            csv("textcount.csv", format!("cell_id,bin_start,devices\nA-1,{t},x41357\n")),
        ),
        (
            "negative",
            csv("negative.csv", format!("cell_id,bin_start,devices\nA-1,{t},-61463\n")),
        ),
        (
            "count in the timestamp column",
            csv("time.csv", "cell_id,bin_start,devices\nA-1,98765,5\n".to_string()),
        ),
        (
            "duplicate",
            csv(
                "dup.csv",
                format!("cell_id,bin_start,devices\nA-1,{t},31337\nA-1,{t},98765\n"),
            ),
        ),
        (
            "ragged",
            csv("ragged.csv", format!("cell_id,bin_start,devices\nA-1,{t},5,41357\n")),
        ),
        (
            "unclosed quote",
            csv(
                "unclosed.csv",
                "cell_id,bin_start,devices\nA-1,\"2025-03-12T01:00:00+01:00,61463\n".to_string(),
            ),
        ),
    ];
    let p = dir.join("latin1.csv");
    let mut bytes = format!("cell_id,bin_start,devices\nA-\u{e9},{t},31337\n").into_bytes();
    bytes.retain(|b| *b != 0xC3);
    fs::write(&p, bytes).expect("write");
    out.push(("not UTF-8", p));
    // Parquet: swapped columns (integer cell ids are read as text ids).
    let p = dir.join("swapped.parquet");
    write_parquet(
        &p,
        df!("devices" => ["A-1"], "bin_start" => [t], "cell_id" => [61_463i64]).expect("df"),
    );
    out.push(("swapped Parquet", p));
    let p = dir.join("float.parquet");
    write_parquet(
        &p,
        df!("cell_id" => ["A-1"], "bin_start" => [t], "devices" => [41_357.5f64]).expect("df"),
    );
    out.push(("float count Parquet", p));
    let p = dir.join("damaged.parquet");
    let mut bytes = b"PAR1".to_vec();
    bytes.extend_from_slice(b"41357,61463,98765");
    fs::write(&p, bytes).expect("write");
    out.push(("damaged Parquet", p));
    out
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what}: the count {s} leaked into: {text}");
    }
}

#[test]
fn no_rejection_path_quotes_a_count_on_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let files = leaky_deliveries(dir.path());
    for (what, f) in &files {
        let f = f.display().to_string();
        let p = policy();
        for json_flag in [false, true] {
            let mut args = vec!["ingest", "--policy", &p, &f];
            if json_flag {
                args.push("--json");
            }
            let o = run(&data, &args, None);
            assert!(!o.status.success(), "{what} must be refused: {}", text(&o));
            assert_no_secret(what, &text(&o));
            // The message still says where: the file, and quarantine paths
            // relative to the data dir.
            assert!(text(&o).contains(Path::new(&f).file_name().and_then(|n| n.to_str()).expect("name")));
            assert!(!text(&o).contains(&data.display().to_string()), "{what}: {}", text(&o));
        }
    }
    // The raw values do reach the operator, in the quarantine file only.
    let q: String = fs::read_dir(data.join("quarantine/tiny"))
        .expect("quarantine")
        .flatten()
        .map(|e| fs::read_to_string(e.path()).expect("read"))
        .collect();
    assert!(q.contains("31337") && q.contains("61463"), "{q}");
}

/// Issue 23: with numeric cell ids, a re-delivery whose count and cell
/// columns are swapped passes validation (a count of 61463 is cell 61463),
/// and the "already stored" refusal quoted its key: `cell_id=61463`.
#[test]
fn a_swapped_re_delivery_with_numeric_cell_ids_names_no_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grid = dir.path().join("tiny");
    fs::create_dir(&grid).expect("grid dir");
    for f in fs::read_dir(fixture("tiny")).expect("fixture").flatten() {
        fs::copy(f.path(), grid.join(f.file_name())).expect("copy");
    }
    // Cell ids that are also the secret counts.
    let cells = fs::read_to_string(grid.join("cells.csv")).expect("cells");
    let cells = cells
        .replace("A-1,", "41357,")
        .replace("A-2,", "61463,")
        .replace("A-3,", "98765,")
        .replace("B-0,", "31337,");
    fs::write(grid.join("cells.csv"), cells).expect("cells");
    let policy = dir.path().join("policy.toml");
    fs::copy(fixture("tiny.toml"), &policy).expect("policy");
    let policy = policy.display().to_string();
    let data = dir.path().join("data");
    let t = "2025-03-12T01:00:00+01:00";
    let first = dir.path().join("first.csv");
    fs::write(&first, format!("cell_id,bin_start,devices\n41357,{t},7\n61463,{t},9\n")).expect("write");
    let o = run(
        &data,
        &["ingest", "--policy", &policy, &first.display().to_string()],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    // The same bin again, the operator's columns swapped: the counts
    // 61463 and 41357 land in cell_id and name real cells.
    let again = dir.path().join("again.csv");
    fs::write(
        &again,
        format!("devices,bin_start,cell_id\n41357,{t},61463\n61463,{t},41357\n"),
    )
    .expect("write");
    for json_flag in [false, true] {
        let mut args = vec!["ingest", "--policy", &policy];
        let again = again.display().to_string();
        args.push(&again);
        if json_flag {
            args.push("--json");
        }
        let o = run(&data, &args, None);
        assert!(!o.status.success(), "a stored bin must be refused: {}", text(&o));
        assert!(text(&o).contains("already stored"), "{}", text(&o));
        assert_no_secret("swapped re-delivery", &text(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rejection_path_quotes_a_count_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let state = app(&data);
    let admin = token(&data, Role::Admin);
    for (what, f) in leaky_deliveries(dir.path()) {
        let name = f.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        let a = upload(&state, &admin, &name, fs::read(&f).expect("read")).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {}", a.body);
        assert_eq!(a.content_type, "application/problem+json");
        assert_no_secret(what, &a.body);
        assert!(a.body.contains(&name), "{what}: {}", a.body);
        assert!(
            !a.body.contains(&data.display().to_string()) && !a.body.contains("uploads"),
            "{what}: server paths leaked: {}",
            a.body
        );
    }
}

/// Issue 23: one count above the plausibility maximum refused its whole
/// file, so whether a day was published hung on a threshold of a true
/// count. Such counts are now stored at the maximum (a 45-digit count, a
/// Parquet u64 of 2^63, a 7-digit count), the file and its day are kept,
/// and the warning counts rows without quoting a value.
#[test]
fn counts_above_the_maximum_are_stored_at_it_and_keep_their_day() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = policy();
    let files = [
        (
            "digits.csv",
            format!(
                "cell_id,bin_start,devices\nA-1,2025-03-12T01:00:00+01:00,{}\nB-0,2025-03-12T01:00:00+01:00,6\n",
                "9".repeat(45)
            ),
        ),
        (
            "huge.csv",
            "cell_id,bin_start,devices\nA-1,2025-03-13T01:00:00+01:00,4200042\nB-0,2025-03-13T01:00:00+01:00,6\n"
                .to_string(),
        ),
    ];
    let mut paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, content)| {
            let f = dir.path().join(name);
            fs::write(&f, content).expect("write");
            f
        })
        .collect();
    let f = dir.path().join("u64.parquet");
    write_parquet(
        &f,
        df!("cell_id" => ["A-1", "B-0"], "bin_start" => ["2025-03-14T01:00:00+01:00"; 2], "devices" => [1u64 << 63, 6])
            .expect("df"),
    );
    paths.push(f);
    for f in &paths {
        let f = f.to_str().expect("utf8");
        let o = run(&data, &["ingest", "--policy", &p, f], None);
        assert!(o.status.success(), "{f}: {}", text(&o));
        assert!(
            text(&o).contains("1 rows counted more than the policy's plausibility maximum"),
            "{}",
            text(&o)
        );
        assert_no_secret(f, &text(&o));
        assert!(!text(&o).contains("999999"), "{}", text(&o));
        assert!(!text(&o).contains(&(1u64 << 63).to_string()), "{}", text(&o));
    }
    // Each count is stored at the policy's maximum (200000), its day kept.
    let store = hexflow::store::CountStore::new(&data, "tiny");
    let catalog = store.catalog().expect("catalog");
    let days = hexflow::store::CountStore::days(&catalog, hexflow::store::Metric::Footfall);
    assert_eq!(days.len(), 3, "{days:?}");
    let stored: Vec<u32> = days
        .iter()
        .flat_map(|d| {
            let df = store
                .read_day(&catalog, hexflow::store::Metric::Footfall, *d)
                .expect("read")
                .expect("day");
            df.column("devices")
                .expect("devices")
                .u32()
                .expect("u32")
                .into_no_null_iter()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(stored.iter().filter(|v| **v == 200_000).count(), 3, "{stored:?}");
    assert_eq!(stored.iter().filter(|v| **v == 6).count(), 3, "{stored:?}");
}

#[test]
fn rejections_count_rows_not_values_and_read_big_and_blank_lines_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = policy();
    let t = "2025-03-12T01:00:00+01:00";
    // One row with two bad values among six rows: "1 of 6 rows".
    let mut s = String::from("cell_id,bin_start,devices\n");
    for c in ["A-1", "A-2", "A-3", "B-0", "C-1"] {
        s.push_str(&format!("{c},{t},5\n"));
    }
    s.push_str("NOPE,2025-03-12T01:30:00+01:00,-1\n");
    let f = dir.path().join("two-bad-values.csv");
    fs::write(&f, s).expect("write");
    let o = run(&data, &["ingest", "--policy", &p, f.to_str().expect("utf8")], None);
    assert!(text(&o).contains("1 of 6 rows rejected"), "{}", text(&o));
    // Trailing empty lines are fine in CSV.
    let f = dir.path().join("blank-tail.csv");
    fs::write(&f, format!("cell_id,bin_start,devices\nA-1,{t},5\nB-0,{t},6\n\n\n\n")).expect("write");
    let o = run(
        &data,
        &["ingest", "--policy", &p, "--json", f.to_str().expect("utf8")],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["files"][0]["rows"], 2);
}

#[test]
fn a_wholly_wrong_file_leaves_a_bounded_quarantine_file_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let rows = 25_000;
    let mut s = String::from("cell_id,bin_start,devices\n");
    for i in 0..rows {
        s.push_str(&format!("Z-{i},2025-03-12T01:00:00+01:00,5\n"));
    }
    let f = dir.path().join("all-wrong.csv");
    fs::write(&f, s).expect("write");
    let o = run(
        &data,
        &["ingest", "--policy", &policy(), "--json", f.to_str().expect("utf8")],
        None,
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains(&format!("{rows} of {rows} rows rejected")), "{t}");
    assert!(t.contains("first 10000 rejected rows are listed"), "{t}");
    let q = json(&o)["files"][0]["quarantine"].as_str().expect("path").to_string();
    assert!(q.starts_with("quarantine/tiny/"), "{q}");
    let df = hexflow::table::read_csv_as_strings(&data.join(q)).expect("csv");
    assert_eq!(df.height(), 10_001, "10,000 rows in full, then one count per reason");
    let count = df.column("count").expect("count").str().expect("str");
    assert_eq!(count.get(10_000), Some("15000"));
}

// ------------------------------------------------ budgets checked before charge

#[test]
fn budgets_outside_the_documented_range_are_refused_before_any_charge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = policy();
    let mut s = String::from("cell_id,bin_start,devices\n");
    for h in 0..24 {
        s.push_str(&format!("A-1,2025-03-12T{h:02}:00:00+01:00,{}\n", 10 + h));
    }
    let f = dir.path().join("day.csv");
    fs::write(&f, s).expect("write");
    assert!(
        run(&data, &["ingest", "--policy", &p, f.to_str().expect("utf8")], None)
            .status
            .success()
    );
    for budget in [
        ["--rho", "1e-320"],
        ["--rho", "1e-300"],
        ["--rho", "1e3"],
        ["--epsilon", "1e-9"],
    ] {
        let o = run(
            &data,
            &[
                "release",
                "--policy",
                &p,
                "--metric",
                "footfall",
                "--audience",
                "planners",
                "--res",
                "8",
                "--bin",
                "1d",
                "--from",
                "2025-03-12",
                "--to",
                "2025-03-12",
                budget[0],
                budget[1],
            ],
            None,
        );
        assert!(!o.status.success(), "{budget:?} must be refused");
        assert!(text(&o).contains("must be a number from"), "{budget:?}: {}", text(&o));
    }
    let l = json(&run(&data, &["ledger", "--policy", &p, "--json"], None));
    assert_eq!(
        l["releases"].as_array().map(Vec::len),
        Some(0),
        "nothing was charged: {l}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_budget_over_http_is_422_and_charges_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let state = app(&data);
    let planner = token(&data, Role::Planner);
    let spec = serde_json::json!({"dataset":"tiny","metric":"footfall","res":8,"bin":"1d",
        "from":"2025-03-12","to":"2025-03-12","rho":1e-320});
    let a = send(
        &state,
        Request::post("/api/v1/queries")
            .header(header::AUTHORIZATION, format!("bearer {planner}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(spec.to_string()))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(a.body.contains("rho must be a number from"), "{}", a.body);
    let mut ledger = hexflow::privacy::ledger::Ledger::open(&hexflow::privacy::ledger::LedgerUrl::in_data_dir(&data))
        .expect("ledger");
    assert!(ledger.releases("tiny").expect("releases").is_empty());
}

// ------------------------------------------------ nothing read before the token

/// A body that records whether anyone read it.
fn watched_body(read: Arc<AtomicBool>) -> Body {
    let chunks = futures_util::stream::iter(0..1).map(move |_| {
        read.store(true, Ordering::SeqCst);
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"cell_id,bin_start,devices\n"))
    });
    Body::from_stream(chunks)
}

use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_before_a_byte_of_body_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let state = app(&data);
    let planner = token(&data, Role::Planner);
    let admin = token(&data, Role::Admin);
    let cases = [
        (None, None, StatusCode::UNAUTHORIZED),
        (Some("hxf_wrong".to_string()), None, StatusCode::UNAUTHORIZED),
        (Some(planner), None, StatusCode::FORBIDDEN),
        (Some(admin.clone()), Some("3000000000"), StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (tok, length, expected) in cases {
        let read = Arc::new(AtomicBool::new(false));
        let mut r = Request::post("/api/v1/admin/ingest?dataset=tiny&filename=x.csv");
        if let Some(t) = &tok {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(l) = length {
            r = r.header(header::CONTENT_LENGTH, l);
        }
        let a = send(&state, r.body(watched_body(read.clone())).expect("request")).await;
        assert_eq!(a.status, expected, "{}", a.body);
        assert_eq!(a.content_type, "application/problem+json");
        assert!(!read.load(Ordering::SeqCst), "{expected}: the body was read");
    }
    // Without Content-Length, a body past the limit is cut off at the limit.
    let big = futures_util::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 64 << 10])));
    let a = send(
        &state,
        Request::post("/api/v1/admin/ingest?dataset=tiny&filename=big.csv")
            .header(header::AUTHORIZATION, format!("Bearer {admin}"))
            .body(Body::from_stream(big))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert!(a.body.contains("upload too large"), "{}", a.body);
    assert!(
        fs::read_dir(data.join("uploads")).map(|d| d.count()).unwrap_or(0) == 0,
        "a refused upload leaves nothing behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_long_uris_and_big_json_get_clear_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let state = app(&data);
    let admin = token(&data, Role::Admin);
    for name in [
        "a%00b.csv".to_string(),
        format!("{}.csv", "n".repeat(5000)),
        "a%0Ab.csv".into(),
    ] {
        let a = upload(&state, &admin, &name, b"cell_id,bin_start,devices\n".to_vec()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert_eq!(a.content_type, "application/problem+json");
    }
    let a = send(
        &state,
        Request::get(format!("/api/v1/releases?dataset={}", "x".repeat(62_000)))
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::URI_TOO_LONG);
    assert_eq!(a.content_type, "application/problem+json");
    let a = send(
        &state,
        Request::post("/api/v1/queries")
            .header(header::AUTHORIZATION, format!("Bearer {admin}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!("{{\"x\":\"{}\"}}", "y".repeat(100 << 10))))
            .expect("request"),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert!(a.body.contains("\"title\":\"body too large\""), "{}", a.body);
}

// ------------------------------------------- every charged release is finished

fn days_csv(days: std::ops::Range<u32>, base: u32) -> String {
    let mut s = String::from("cell_id,bin_start,devices\n");
    for d in days {
        for h in 0..24 {
            for c in ["A-1", "A-2", "A-3", "B-0", "C-1"] {
                s.push_str(&format!("{c},2025-03-{d:02}T{h:02}:00:00+01:00,{}\n", base + h));
            }
        }
    }
    s
}

#[test]
fn a_release_racing_a_correction_of_its_days_always_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = policy();
    let first = dir.path().join("week.csv");
    fs::write(&first, days_csv(2..9, 10)).expect("write");
    assert!(
        run(&data, &["ingest", "--policy", &p, first.to_str().expect("utf8")], None)
            .status
            .success()
    );
    let mut failures = Vec::new();
    for trial in 0..40u32 {
        // Each correction has new content (a new hash), so each replaces
        // every day of the window while the release reads it.
        let fix = dir.path().join(format!("fix-{trial}.csv"));
        fs::write(&fix, days_csv(2..9, 20 + trial)).expect("write");
        let rho = format!("{}", 0.001 + f64::from(trial) * 1e-6);
        let spawn = |args: &[&str]| {
            Command::new(BIN)
                .arg("--data-dir")
                .arg(&data)
                .args(args)
                .env_remove("HEXFLOW_FAILPOINT")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let release = spawn(&[
            "release",
            "--policy",
            &p,
            "--metric",
            "footfall",
            "--audience",
            "planners",
            "--res",
            "9",
            "--bin",
            "1h",
            "--from",
            "2025-03-02",
            "--to",
            "2025-03-08",
            "--rho",
            &rho,
        ]);
        let correction = spawn(&["ingest", "--policy", &p, "--correction", fix.to_str().expect("utf8")]);
        let (r, c) = (
            release.wait_with_output().expect("wait"),
            correction.wait_with_output().expect("wait"),
        );
        assert!(c.status.success(), "trial {trial}: correction failed: {}", text(&c));
        if !r.status.success() {
            failures.push(format!("trial {trial}: {}", text(&r)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 40 releases failed after their charge: {failures:?}",
        failures.len()
    );
    let l = json(&run(&data, &["ledger", "--policy", &p, "--json"], None));
    let states: Vec<&str> = l["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| r["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states.len(), 40);
    assert!(states.iter().all(|s| *s == "published"), "{states:?}");
}

#[test]
fn superseded_day_files_of_a_crashed_correction_are_removed_by_its_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = policy();
    let first = dir.path().join("week.csv");
    fs::write(&first, days_csv(2..9, 10)).expect("write");
    assert!(
        run(&data, &["ingest", "--policy", &p, first.to_str().expect("utf8")], None)
            .status
            .success()
    );
    let fix = dir.path().join("fix.csv");
    fs::write(&fix, days_csv(2..9, 50)).expect("write");
    let args = [
        "ingest",
        "--policy",
        &p,
        "--correction",
        "--json",
        fix.to_str().expect("utf8"),
    ];
    let crashed = run(&data, &args, Some("ingest:after-commit"));
    assert!(!crashed.status.success());
    // The week is in one month: one file per commit.
    let files = |data: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(data.join("store/tiny/footfall"))
            .expect("footfall")
            .flatten()
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        files(&data),
        ["g000001-2025-03.parquet", "g000002-2025-03.parquet"],
        "the crash left the superseded file"
    );
    let retry = run(&data, &args, None);
    assert!(retry.status.success(), "{}", text(&retry));
    assert_eq!(json(&retry)["files"][0]["status"], "already_ingested");
    assert_eq!(files(&data), ["g000002-2025-03.parquet"], "the correction's file only");
}

// --------------------------------------------------------- exact error bars

/// Draws `bins` independent releases of one truth through the release code
/// itself (`Releaser::noisy_footfall`) and checks each covered hex's error
/// bars against the truth.
///
/// The stated coverage of `estimate_ci95` is `Bar::coverage` (0.95, or more
/// where a lattice distribution jumps over 0.95). With 100,000 draws, the
/// empirical coverage of one hex has sd ≤ 0.00069, so ±0.005 is 7.2 sd:
/// false failure below 1e-12 per hex, below 1e-10 for the whole test.
fn check_coverage(
    placement: hexflow::privacy::sensitivity::Placement,
    budget: hexflow::privacy::mechanism::Budget,
    res: u8,
) -> (f64, f64) {
    use hexflow::privacy::{mechanism, sensitivity};
    const DRAWS: usize = 100_000;
    let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
    let dir = tempfile::tempdir().expect("tempdir");
    let releaser = hexflow::release::Releaser::new(policy, dir.path()).expect("releaser");
    let w = releaser.weights(res).expect("weights");
    let n_cells = w.cell_ids.len();
    let n_hex = w.keys.len();
    // Sensitivity of a daily bin; any public scale would do.
    let s = sensitivity::Sensitivity { l1: 4.0, l2: 2.0 };
    // Hex placement draws real-valued sums: priced for every covered hex of
    // every draw, as the release prices them.
    let covered_hexes = w
        .entries
        .iter()
        .filter(|e| e.weight > 0.0)
        .map(|e| e.hex)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let n_float = (placement == sensitivity::Placement::Hex).then_some(DRAWS * covered_hexes);
    let c = mechanism::calibrate(budget, &s, n_float).expect("calibrate");
    let bars = releaser.bars(hexflow::release::Unit::Hex, res, &w, placement, &c);
    // Truth: distinctive counts per cell, the same in every bin.
    let truth_cells: Vec<i64> = (0..n_cells as i64).map(|i| 3 + 17 * i).collect();
    let mut truth = vec![0.0f64; n_hex];
    for e in &w.entries {
        truth[e.hex as usize] += truth_cells[e.cell as usize] as f64 * e.weight;
    }
    let counts: Vec<i64> = (0..DRAWS).flat_map(|_| truth_cells.iter().copied()).collect();
    let noisy = hexflow::release::Releaser::noisy_footfall(&w, DRAWS, &counts, placement, &c, &bars).expect("noise");
    let (mut lowest, mut highest) = (1.0f64, 0.0f64);
    let mut covered = 0;
    for h in 0..n_hex {
        let bar = bars[h];
        if bar.sd == 0.0 {
            // No coverage: an exact 0 in every draw.
            assert!(
                (0..DRAWS).all(|b| noisy[b * n_hex + h] == 0.0),
                "hex {h} has no coverage but got noise"
            );
            continue;
        }
        covered += 1;
        let (mut est_in, mut value_in) = (0usize, 0usize);
        for b in 0..DRAWS {
            let x = noisy[b * n_hex + h];
            if (x - truth[h]).abs() <= (bar.half_width * 100.0).ceil() / 100.0 {
                est_in += 1;
            }
            // The published value: rounded, clamped at 0; its bar adds 0.5.
            let value = x.round().max(0.0);
            if (value - truth[h]).abs() <= ((bar.half_width + 0.5) * 100.0).ceil() / 100.0 {
                value_in += 1;
            }
        }
        let est = est_in as f64 / DRAWS as f64;
        let value = value_in as f64 / DRAWS as f64;
        assert!(bar.coverage >= 0.95, "hex {h}: {bar:?}");
        assert!(
            (est - bar.coverage).abs() <= 0.005,
            "{placement:?} {budget:?} hex {h}: estimate coverage {est} against stated {} ({bar:?})",
            bar.coverage
        );
        assert!(value >= 0.945, "hex {h}: the rounded value's bar covers only {value}");
        lowest = lowest.min(est);
        highest = highest.max(est);
        eprintln!(
            "{placement:?} {budget:?} res {res} hex {h}: stated {:.4}, estimate {est:.4}, value {value:.4}, weights {}",
            bar.coverage,
            w.entries.iter().filter(|e| e.hex as usize == h).count()
        );
    }
    assert!(covered > 0);
    (lowest, highest)
}

#[test]
fn error_bars_cover_what_they_state_under_every_placement_and_mechanism() {
    use hexflow::privacy::mechanism::Budget;
    use hexflow::privacy::sensitivity::Placement;
    for (placement, budget, res) in [
        (Placement::Cell, Budget::Rho(0.2), 8),
        (Placement::Cell, Budget::Epsilon(0.5), 8),
        (Placement::Hex, Budget::Rho(0.2), 7),
        (Placement::Hex, Budget::Epsilon(0.5), 7),
    ] {
        let (lo, hi) = check_coverage(placement, budget, res);
        eprintln!("{placement:?} {budget:?}: empirical coverage of estimate_ci95 {lo:.4}–{hi:.4}");
        if placement == Placement::Hex {
            // Continuous float noise: exactly 95 %.
            assert!((lo - 0.95).abs() <= 0.005 && (hi - 0.95).abs() <= 0.005, "{lo} {hi}");
        }
    }
}
