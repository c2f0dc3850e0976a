//! Integration tests: the real `hexflow` binary on the tiny fixture grid.
//!
//! Each test works in its own temporary data dir. Bad-input tests check
//! three things: the exit code, a message that names the problem and where
//! it is, and a count store that is byte-for-byte what it was before.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_hexflow");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, content).expect("write fixture");
        p
    }

    fn run(&self, args: &[&str], failpoint: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir").arg(self.data()).args(args);
        cmd.env_remove("HEXFLOW_FAILPOINT");
        if let Some(f) = failpoint {
            cmd.env("HEXFLOW_FAILPOINT", f);
        }
        cmd.output().expect("run hexflow")
    }

    fn hexflow(&self, args: &[&str]) -> Output {
        self.run(args, None)
    }

    fn ingest(&self, files: &[&Path], extra: &[&str]) -> Output {
        let policy = fixture("tiny.toml");
        let mut args = vec!["ingest", "--policy", policy.to_str().expect("utf8"), "--json"];
        args.extend_from_slice(extra);
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        args.extend(files.iter().map(String::as_str));
        self.hexflow(&args)
    }

    /// Every file of the tiny dataset's store (the lock file excepted).
    fn store(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        hexflow::store::CountStore::new(&self.data(), "tiny").snapshot()
    }

    /// Simulates `grid` over `from..=to` into `<tmp>/sim` and returns it.
    fn simulate(&self, grid: &Path, from: &str, to: &str) -> PathBuf {
        let out = self.path("sim");
        let o = self.hexflow(&[
            "simulate",
            "--grid",
            grid.to_str().expect("utf8"),
            "--from",
            from,
            "--to",
            to,
            "--out",
            out.to_str().expect("utf8"),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    }

    fn catalog(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.data().join("store/tiny/catalog.json")).expect("catalog")).expect("json")
    }
}

/// A Parquet file written by hexflow, read with hexflow's own reader.
fn read_parquet(path: &Path) -> polars::prelude::DataFrame {
    hexflow::table::read_parquet(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

const HEADER: &str = "cell_id,bin_start,devices\n";

/// A valid day of footfall for two cells, hours `from..to` of 2025-03-12.
fn good_rows(from: u32, to: u32) -> String {
    let mut s = String::from(HEADER);
    for h in from..to {
        for (c, v) in [("A-1", 10 + h), ("B-0", 20 + h)] {
            s.push_str(&format!("{c},2025-03-12T{h:02}:00:00+01:00,{v}\n"));
        }
    }
    s
}

#[test]
fn a_good_delivery_lands_and_a_repeat_is_a_no_op() {
    let env = Env::new();
    let f = env.write("day.csv", &good_rows(0, 24));
    let out = env.ingest(&[&f], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j = json(&out);
    assert_eq!(j["ingested"], 1);
    assert_eq!(j["files"][0]["rows"], 48);
    assert_eq!(j["files"][0]["metric"], "footfall");
    assert_eq!(j["files"][0]["first_day"], "2025-03-12");
    let before = env.store();
    assert!(before.keys().any(|p| p.ends_with("footfall/g000001-2025-03.parquet")));

    let again = env.ingest(&[&f], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(json(&again)["files"][0]["status"], "already_ingested");
    assert_eq!(env.store(), before, "a repeated delivery must not touch the store");
}

/// One bad-input case: the file is refused with `reason` at `line`, the
/// quarantine lists it, and the store is unchanged.
fn assert_refused(env: &Env, name: &str, content: &str, line: usize, column: &str, reason: &str) {
    let before = env.store();
    let f = env.write(name, content);
    let out = env.ingest(&[&f], &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{name} should be refused");
    assert!(err.contains(name), "{name}: message should name the file: {err}");
    assert!(err.contains(reason), "{name}: expected {reason:?} in {err}");
    assert!(err.contains("nothing was stored"), "{err}");
    assert_eq!(env.store(), before, "{name}: the store changed");
    let j = json(&out);
    let q = env
        .data()
        .join(j["files"][0]["quarantine"].as_str().expect("quarantine path"));
    let q = fs::read_to_string(q).expect("quarantine file");
    let expected = format!("\n{line},{column},");
    assert!(
        q.contains(&expected),
        "{name}: quarantine should list line {line} column {column}: {q}"
    );
}

#[test]
fn every_bad_row_is_refused_with_its_line_column_and_reason() {
    let env = Env::new();
    // A stored day first, so "unchanged" is checked against real content.
    let base = env.write("base.csv", &good_rows(0, 24));
    assert!(env.ingest(&[&base], &[]).status.success());
    let row = |cell: &str, bin: &str, v: &str| format!("{HEADER}A-1,2025-03-13T00:00:00+01:00,5\n{cell},{bin},{v}\n");
    let t = "2025-03-13T01:00:00+01:00";
    let cases: [(&str, String, &str, &str); 9] = [
        (
            "unknown.csv",
            row("Z-9", t, "5"),
            "cell_id",
            "unknown cell id (not in the catalogue",
        ),
        ("negative.csv", row("A-1", t, "-3"), "devices", "negative count"),
        ("fraction.csv", row("A-1", t, "2.5"), "devices", "not a whole number"),
        ("text.csv", row("A-1", t, "many"), "devices", "not a number"),
        (
            "naive.csv",
            row("A-1", "2025-03-13T01:00:00", "5"),
            "bin_start",
            "no UTC offset",
        ),
        (
            "garbled.csv",
            row("A-1", "13/03/2025 01h", "5"),
            "bin_start",
            "not an RFC 3339 timestamp",
        ),
        (
            "misaligned.csv",
            row("A-1", "2025-03-13T01:30:00+01:00", "5"),
            "bin_start",
            "not aligned",
        ),
        (
            "future.csv",
            row("A-1", "2099-01-01T00:00:00+01:00", "5"),
            "bin_start",
            "in the future",
        ),
        (
            "ancient.csv",
            row("A-1", "2019-06-01T00:00:00+02:00", "5"),
            "bin_start",
            "before the earliest plausible day",
        ),
    ];
    for (name, content, column, reason) in &cases {
        assert_refused(&env, name, content, 3, column, reason);
    }
    // A duplicate (cell, bin) inside one file.
    let dup = format!("{HEADER}A-1,{t},5\nB-0,{t},5\nA-1,{t},6\n");
    assert_refused(&env, "dup.csv", &dup, 4, "cell_id+bin_start", "duplicate of line 2");
    // Flows go through the same checks, destination included.
    let flows = format!("origin_cell_id,dest_cell_id,bin_start,trips\nA-1,B-0,{t},4\nA-1,NOPE,{t},2\n");
    assert_refused(
        &env,
        "flows.csv",
        &flows,
        3,
        "dest_cell_id",
        "unknown cell id (not in the catalogue",
    );
}

#[test]
fn a_file_with_one_bad_row_among_many_lands_nothing() {
    let env = Env::new();
    let mut content = good_rows(0, 24);
    content.push_str("A-1,2025-03-12T25:00:00+01:00,4\n");
    let f = env.write("mostly-good.csv", &content);
    let out = env.ingest(&[&f], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("1 of 49 rows rejected"), "{}", stderr(&out));
    assert!(env.store().is_empty(), "no partial day may land");
}

#[test]
fn schema_problems_are_named() {
    let env = Env::new();
    let cases = [
        ("missing.csv", "cell_id,devices\nA-1,3\n", "the header is not footfall"),
        (
            "extra.csv",
            "cell_id,bin_start,devices,imsi\nA-1,2025-03-12T00:00:00+01:00,3,x\n",
            "field 4 of the header is not a column of a footfall file",
        ),
        ("empty.csv", "cell_id,bin_start,devices\n", "no rows"),
        (
            "ragged.csv",
            "cell_id,bin_start,devices\nA-1,2025-03-12T00:00:00+01:00,3,7,8\n",
            "cannot be read as CSV",
        ),
        (
            "unclosed.csv",
            "cell_id,bin_start,devices\nA-1,\"2025-03-12T00:00:00+01:00,77777\n",
            "a quoted field is not closed",
        ),
    ];
    for (name, content, reason) in cases {
        let f = env.write(name, content);
        let out = env.ingest(&[&f], &[]);
        assert!(!out.status.success(), "{name}");
        let err = stderr(&out);
        assert!(err.contains(name) && err.contains(reason), "{name}: {err}");
        // Regression: polars' parse errors quote the offending field, which
        // can be a raw count; they must never reach the message.
        assert!(
            !err.contains("77777") && !err.contains("7,8"),
            "{name}: the file's content leaked: {err}"
        );
    }
    assert!(env.store().is_empty());
}

#[test]
fn a_second_delivery_for_a_stored_bin_needs_the_correction_flag() {
    let env = Env::new();
    let f = env.write("day.csv", &good_rows(0, 24));
    assert!(env.ingest(&[&f], &[]).status.success());
    let before = env.store();
    let fix = env.write(
        "fix.csv",
        &format!("{HEADER}A-1,2025-03-12T08:00:00+01:00,99\nA-1,2025-03-12T09:00:00+01:00,98\n"),
    );
    let refused = env.ingest(&[&fix], &[]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("2 footfall rows are already stored") && err.contains("--correction"),
        "{err}"
    );
    assert!(!err.contains("99"), "an error message must not carry a count: {err}");
    assert_eq!(env.store(), before);

    let fixed = env.ingest(&[&fix], &["--correction"]);
    assert!(fixed.status.success(), "{}", stderr(&fixed));
    assert_eq!(json(&fixed)["files"][0]["rows_replaced"], 2);
    let catalog = env.catalog();
    let last = &catalog["deliveries"][1];
    assert_eq!(last["correction"], true);
    assert_eq!(last["replaced_rows"], 2);
    // The day still has 48 rows: two replaced, none added.
    let store = env.hexflow(&[
        "store",
        "--policy",
        fixture("tiny.toml").to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(json(&store)["metrics"][0]["rows"], 48);
}

#[test]
fn a_crash_before_the_commit_leaves_the_store_as_it_was() {
    let env = Env::new();
    let f = env.write("day.csv", &good_rows(0, 12));
    assert!(env.ingest(&[&f], &[]).status.success());
    let before = env.store();

    let g = env.write("next.csv", &good_rows(12, 24));
    let policy = fixture("tiny.toml");
    let args = [
        "ingest",
        "--policy",
        policy.to_str().expect("utf8"),
        g.to_str().expect("utf8"),
    ];
    let crashed = env.run(&args, Some("ingest:after-partitions"));
    assert!(!crashed.status.success(), "the failpoint must kill the process");
    assert!(stderr(&crashed).contains("failpoint"));
    assert_eq!(
        env.catalog(),
        serde_json::from_slice::<serde_json::Value>(&before[&env.data().join("store/tiny/catalog.json")])
            .expect("json")
    );
    // The orphaned day file is there but unreferenced; the next writer
    // removes it, whatever it ingests.
    assert_ne!(env.store(), before);
    let retry = env.ingest(&[&g], &[]);
    assert!(retry.status.success(), "{}", stderr(&retry));
    let after = env.store();
    assert_eq!(after.len(), 2, "catalog + one day file: {:?}", after.keys());
    let store = env.hexflow(&["store", "--policy", policy.to_str().expect("utf8"), "--json"]);
    assert_eq!(json(&store)["metrics"][0]["rows"], 48);
}

#[test]
fn a_crash_after_the_commit_keeps_the_delivery_and_cleans_up_later() {
    let env = Env::new();
    let f = env.write("day.csv", &good_rows(0, 12));
    assert!(env.ingest(&[&f], &[]).status.success());
    let g = env.write("next.csv", &good_rows(12, 24));
    let policy = fixture("tiny.toml");
    let args = [
        "ingest",
        "--policy",
        policy.to_str().expect("utf8"),
        g.to_str().expect("utf8"),
    ];
    assert!(!env.run(&args, Some("ingest:after-commit")).status.success());
    // Committed: a retry is a no-op...
    let retry = env.ingest(&[&g], &[]);
    assert_eq!(json(&retry)["files"][0]["status"], "already_ingested");
    // ...and the superseded generation is gone after the next writer.
    let h = env.write("other.csv", &format!("{HEADER}A-1,2025-03-13T00:00:00+01:00,1\n"));
    assert!(env.ingest(&[&h], &[]).status.success());
    // The first generation's file held only the day the crashed commit
    // replaced; the next commit's file holds the 13th.
    let files: Vec<String> = env
        .store()
        .into_keys()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
        .collect();
    assert_eq!(files, ["g000002-2025-03.parquet", "g000003-2025-03.parquet"]);
}

#[test]
fn daylight_saving_days_have_23_and_25_bins() {
    let env = Env::new();
    let mut s = String::from(HEADER);
    // Every UTC hour from 2025-03-29 23:00Z (local midnight of the 30th)
    // for 23 hours, then the 25 UTC hours of 2025-10-26 local.
    for h in 0..23 {
        let t = chrono_like(2025, 3, 29, 23, h);
        s.push_str(&format!("A-1,{t},1\n"));
    }
    for h in 0..25 {
        let t = chrono_like(2025, 10, 25, 22, h);
        s.push_str(&format!("A-1,{t},1\n"));
    }
    let f = env.write("dst.csv", &s);
    let out = env.ingest(&[&f], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["files"][0]["days"], 2);
    let catalog = env.catalog();
    let days: Vec<&String> = catalog["partitions"]["footfall"]
        .as_object()
        .expect("footfall days")
        .keys()
        .collect();
    assert_eq!(days, ["2025-03-30", "2025-10-26"]);
    // One file per month of the delivery.
    let files: Vec<PathBuf> = env
        .store()
        .into_keys()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
}

/// `hours` after the given UTC time, as RFC 3339 in UTC.
fn chrono_like(y: i32, m: u32, d: u32, h: u32, plus_h: u32) -> String {
    let start = chrono::NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|d| d.and_hms_opt(h, 0, 0))
        .expect("date");
    (start + chrono::Duration::hours(plus_h.into()))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[test]
fn simulated_parquet_and_csv_deliveries_ingest_and_are_deterministic() {
    let env = Env::new();
    let grid = fixture("tiny");
    let g = grid.to_str().expect("utf8");
    let sim = |out: &str, format: &str| {
        let o = env.hexflow(&[
            "simulate",
            "--grid",
            g,
            "--from",
            "2025-03-29",
            "--to",
            "2025-04-02",
            "--out",
            out,
            "--format",
            format,
            "--seed",
            "5",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        json(&o)
    };
    let a = sim(env.path("a").to_str().expect("utf8"), "parquet");
    let b = sim(env.path("b").to_str().expect("utf8"), "parquet");
    let c = sim(env.path("c").to_str().expect("utf8"), "csv");
    // 6 cells × (24×4 + 23) hours: the DST day has 23 bins.
    assert_eq!(a["footfall_rows"], 6 * (24 * 4 + 23));
    for name in ["footfall-2025-03.parquet", "flows-2025-04.parquet", "events.json"] {
        assert_eq!(
            fs::read(env.path("a").join(name)).expect("a"),
            fs::read(env.path("b").join(name)).expect("b"),
            "{name}"
        );
    }
    assert_eq!(a["flows_rows"], b["flows_rows"]);
    assert_eq!(a["flows_rows"], c["flows_rows"]);

    let files: Vec<PathBuf> = ["footfall-2025-03", "footfall-2025-04", "flows-2025-03", "flows-2025-04"]
        .iter()
        .map(|n| env.path("a").join(format!("{n}.parquet")))
        .collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = env.ingest(&refs, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["ingested"], 4);
    // The same counts as CSV are a different file but the same bins.
    let csv = env.path("c").join("footfall-2025-03.csv");
    let dup = env.ingest(&[&csv], &[]);
    assert!(!dup.status.success());
    assert!(stderr(&dup).contains("already stored"), "{}", stderr(&dup));
}

#[test]
fn parquet_type_problems_are_schema_errors() {
    use polars::prelude::*;
    let env = Env::new();
    let write = |name: &str, mut df: DataFrame| {
        let p = env.path(name);
        let f = fs::File::create(&p).expect("create");
        ParquetWriter::new(f).finish(&mut df).expect("parquet");
        p
    };
    let naive = Int64Chunked::from_vec("bin_start".into(), vec![1_741_734_000_000_000])
        .into_datetime(TimeUnit::Microseconds, None)
        .into_series();
    let df = DataFrame::new_infer_height(vec![
        Series::new("cell_id".into(), ["A-1"]).into(),
        naive.into(),
        Series::new("devices".into(), [3i64]).into(),
    ])
    .expect("df");
    let p = write("naive.parquet", df);
    let out = env.ingest(&[&p], &[]);
    assert!(stderr(&out).contains("timestamp without time zone"), "{}", stderr(&out));

    let df =
        df!("cell_id" => ["A-1"], "bin_start" => ["2025-03-12T00:00:00+01:00"], "devices" => [3.0f64]).expect("df");
    let p = write("float.parquet", df);
    let out = env.ingest(&[&p], &[]);
    assert!(
        stderr(&out).contains("cannot read as a whole-number count"),
        "{}",
        stderr(&out)
    );

    let aware = Int64Chunked::from_vec("bin_start".into(), vec![1_741_734_000_000_000])
        .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
        .into_series();
    let df = DataFrame::new_infer_height(vec![
        Series::new("cell_id".into(), ["A-1"]).into(),
        aware.into(),
        Series::new("devices".into(), [3u32]).into(),
    ])
    .expect("df");
    let p = write("aware.parquet", df);
    let out = env.ingest(&[&p], &[]);
    assert!(out.status.success(), "a tz-aware timestamp is fine: {}", stderr(&out));
    assert_eq!(json(&out)["files"][0]["first_day"], "2025-03-12");
    assert!(!env.store().is_empty());
}

#[test]
fn grid_build_reports_weights_and_reuses_its_cache_until_the_catalogue_changes() {
    let env = Env::new();
    let grid = env.path("grid");
    fs::create_dir_all(&grid).expect("mkdir");
    for f in ["grid.toml", "area.geojson", "cells.csv", "landmarks.csv"] {
        fs::copy(fixture("tiny").join(f), grid.join(f)).expect("copy");
    }
    let g = grid.to_str().expect("utf8");
    let first = env.hexflow(&["grid", "build", "--grid", g, "--res", "9", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let s = json(&first);
    assert_eq!(s["cells"], 6);
    assert_eq!(s["cells_outside"], serde_json::json!(["FAR-1"]));
    assert_eq!(s["cells_with_weights"], 5);
    assert_eq!(s["cached"], false);
    assert!(s["max_row_sum_error"].as_f64().expect("f64") < 1e-9);
    assert!(s["max_area_gap"].as_f64().expect("f64") < 1e-6);
    let l2 = &s["l2_norm_per_cell"];
    assert!(l2["min"].as_f64().expect("f64") > 0.0 && l2["max"].as_f64().expect("f64") <= 1.0);
    assert!(s["hexes_per_cell"]["max"].as_f64().expect("f64") > 1.0);

    let second = env.hexflow(&["grid", "build", "--grid", g, "--res", "9", "--json"]);
    assert_eq!(json(&second)["cached"], true);
    assert_eq!(json(&second)["hexes_in_area"], s["hexes_in_area"]);

    let cells = fs::read_to_string(grid.join("cells.csv"))
        .expect("read")
        .replace(",600\n", ",650\n");
    fs::write(grid.join("cells.csv"), cells).expect("write");
    let third = env.hexflow(&["grid", "build", "--grid", g, "--res", "9", "--json"]);
    assert_eq!(json(&third)["cached"], false, "a changed catalogue must rebuild");

    let bad = env.hexflow(&["grid", "build", "--grid", g, "--res", "12"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("resolution 12 is not offered by grid tiny"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn grid_and_policy_errors_say_where() {
    let env = Env::new();
    let grid = env.path("grid");
    fs::create_dir_all(&grid).expect("mkdir");
    for f in ["grid.toml", "area.geojson", "cells.csv"] {
        fs::copy(fixture("tiny").join(f), grid.join(f)).expect("copy");
    }
    let g = grid.to_str().expect("utf8");
    fs::write(
        grid.join("cells.csv"),
        "cell_id,site_id,lat,lon,azimuth_deg,beamwidth_deg,range_m\nA-1,A,43.29,5.38,400,,600\n",
    )
    .expect("write");
    let out = env.hexflow(&["grid", "build", "--grid", g, "--res", "8"]);
    let err = stderr(&out);
    assert!(
        err.contains("cells.csv, line 2, column azimuth_deg") && err.contains("outside [0, 360]"),
        "{err}"
    );

    let p = env.write("typo.toml", "dataset = \"x\"\ngrid = \"grid\"\n[ingest]\nmax_devices_per_cell_bin = 5\nmax_trips_per_pair_bin = 5\nearliest_day = \"2020-01-01\"\nmax_devics = 3\n");
    let f = env.write("x.csv", HEADER);
    let out = env.hexflow(&[
        "ingest",
        "--policy",
        p.to_str().expect("utf8"),
        f.to_str().expect("utf8"),
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("typo.toml") && err.contains("max_devics"),
        "{err}"
    );
}

#[test]
fn concurrent_ingests_of_one_day_both_land() {
    // Two processes adding different cells of the same day race for the
    // store: the lock serialises them, and the second merges with the first.
    let env = Env::new();
    let a = env.write("a.csv", &good_rows(0, 24).replace("B-0", "A-2"));
    let b = env.write("b.csv", &good_rows(0, 24).replace("A-1", "A-3"));
    let policy = fixture("tiny.toml");
    let spawn = |f: &Path| {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(env.data())
            .args(["ingest", "--policy", policy.to_str().expect("utf8")])
            .arg(f)
            .spawn()
            .expect("spawn")
    };
    let (mut pa, mut pb) = (spawn(&a), spawn(&b));
    assert!(pa.wait().expect("wait").success());
    assert!(pb.wait().expect("wait").success());
    let store = env.hexflow(&["store", "--policy", policy.to_str().expect("utf8"), "--json"]);
    let j = json(&store);
    assert_eq!(j["deliveries"], 2);
    assert_eq!(j["metrics"][0]["rows"], 96);
    assert_eq!(j["metrics"][0]["days"], 1);
}

// ---------------------------------------------------------------- releases

/// A full day (2025-03-12) of footfall for the five cells in the area, with
/// a distinctive count in one cell.
fn ingest_day(env: &Env) {
    let mut s = String::from(HEADER);
    for h in 0..24 {
        for (c, v) in [
            ("A-1", 123_457),
            ("A-2", 40 + h),
            ("A-3", 50),
            ("B-0", 60 + h),
            ("C-1", 70),
        ] {
            s.push_str(&format!("{c},2025-03-12T{h:02}:00:00+01:00,{v}\n"));
        }
    }
    let f = env.write("release-day.csv", &s);
    let out = env.ingest(&[&f], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn release(env: &Env, extra: &[&str], failpoint: Option<&str>) -> Output {
    let policy = fixture("tiny.toml");
    let mut args = vec![
        "release",
        "--policy",
        policy.to_str().expect("utf8"),
        "--metric",
        "footfall",
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(env.data())
        .args(&args)
        .env("HEXFLOW_LOG", "trace")
        .env_remove("HEXFLOW_FAILPOINT");
    if let Some(f) = failpoint {
        cmd.env("HEXFLOW_FAILPOINT", f);
    }
    cmd.output().expect("run")
}

fn ledger(env: &Env) -> serde_json::Value {
    let policy = fixture("tiny.toml");
    let out = env.hexflow(&["ledger", "--policy", policy.to_str().expect("utf8"), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out)
}

fn spent(env: &Env, audience: &str) -> f64 {
    ledger(env)["days"]
        .as_array()
        .expect("days")
        .iter()
        .filter(|d| d["audience"] == audience)
        .map(|d| d["rho_spent"].as_f64().expect("f64"))
        .sum()
}

const DAY: [&str; 4] = ["--from", "2025-03-12", "--to", "2025-03-12"];

#[test]
fn a_release_costs_what_opendp_says_once_and_publishes_its_terms() {
    let env = Env::new();
    ingest_day(&env);
    let args = [
        &["--audience", "planners", "--res", "8", "--bin", "1h", "--rho", "0.1"][..],
        &DAY[..],
    ]
    .concat();
    let out = release(&env, &args, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = json(&out);
    assert_eq!(o["status"], "new");
    let m = &o["manifest"];
    let rho = m["rho"].as_f64().expect("rho");
    assert!(rho <= 0.1 && rho > 0.0999, "{rho}");
    assert_eq!(m["days_charged"], serde_json::json!(["2025-03-12"]));
    assert_eq!(m["bins"], 24);
    assert_eq!(m["privacy_unit"], "device-day");
    assert_eq!(m["bounds"]["max_bins_per_day"], 4);
    assert!(m["epsilon"].as_f64().expect("eps") > rho);
    let e = &m["expected_total_squared_error"];
    let chosen = if m["placement"] == "cell" {
        e["cell"].as_f64()
    } else {
        e["hex"].as_f64()
    }
    .expect("err");
    assert!(chosen <= e["hex"].as_f64().expect("hex") && chosen <= e["cell"].as_f64().expect("cell"));
    // Values: every public hex × 24 bins, ids as 15-character strings.
    let dir = PathBuf::from(o["dir"].as_str().expect("dir"));
    let df = read_parquet(&dir.join("values.parquet"));
    assert_eq!(df.height() as u64, m["values"].as_u64().expect("n"));
    let ids = df.column("hex_id").expect("hex_id").str().expect("str").clone();
    assert!(ids.iter().all(|s| s.is_some_and(|s| s.len() == 15)));
    // Hexes no cell covers are exactly 0 ± 0; every other one has an error bar.
    let ci = df.column("ci95").expect("ci95").f64().expect("f64").clone();
    assert!(ci.iter().all(|x| x.is_some_and(|x| x >= 0.0)));
    assert!(ci.iter().filter(|x| x.is_some_and(|x| x > 0.0)).count() >= 24);

    // The same question again: stored answer, no new charge.
    let again = release(&env, &args, None);
    assert_eq!(json(&again)["status"], "stored");
    assert!((spent(&env, "planners") - rho).abs() < 1e-9);

    // Nothing printed, logged or written names the raw count.
    let manifest = fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    for text in [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
        manifest,
    ] {
        assert!(!text.contains("123457"), "a raw count leaked: {text}");
    }
}

#[test]
fn purpose_limits_and_caps_refuse_and_say_what_is_left() {
    let env = Env::new();
    ingest_day(&env);
    let cases: [(&[&str], &str); 5] = [
        (
            &["--audience", "public", "--res", "9", "--bin", "1h", "--rho", "0.1"],
            "may use resolutions up to 8",
        ),
        (
            &["--audience", "tourism", "--res", "8", "--bin", "1h", "--rho", "0.1"],
            "bins of 1d or longer",
        ),
        (
            &["--audience", "mayor", "--res", "8", "--bin", "1h", "--rho", "0.1"],
            "unknown audience \"mayor\"",
        ),
        (
            &["--audience", "planners", "--res", "8", "--bin", "1w", "--rho", "0.1"],
            "--from must be a Monday",
        ),
        (
            &["--audience", "planners", "--res", "8", "--bin", "1h", "--rho=-1"],
            "rho must be a number from 1e-9 to 100",
        ),
    ];
    for (args, reason) in cases {
        let out = release(&env, &[args, &DAY[..]].concat(), None);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(reason), "{args:?}: {}", stderr(&out));
    }
    // Too recent: the tourism office waits three days.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .date_naive()
        .to_string();
    let out = release(
        &env,
        &[
            "--audience",
            "tourism",
            "--res",
            "8",
            "--bin",
            "1d",
            "--rho",
            "0.1",
            "--from",
            &yesterday,
            "--to",
            &yesterday,
        ],
        None,
    );
    assert!(stderr(&out).contains("only 3 days after it"), "{}", stderr(&out));
    // No data.
    let out = release(
        &env,
        &[
            "--audience",
            "planners",
            "--res",
            "8",
            "--bin",
            "1d",
            "--rho",
            "0.1",
            "--from",
            "2025-03-13",
            "--to",
            "2025-03-13",
        ],
        None,
    );
    assert!(
        stderr(&out).contains("no footfall data stored for 1 day(s)"),
        "{}",
        stderr(&out)
    );
    // Caps: planners have 0.5 per day.
    let first = release(
        &env,
        &[
            &["--audience", "planners", "--res", "8", "--bin", "1h", "--rho", "0.3"][..],
            &DAY[..],
        ]
        .concat(),
        None,
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let second = release(
        &env,
        &[
            &["--audience", "planners", "--res", "9", "--bin", "1h", "--rho", "0.3"][..],
            &DAY[..],
        ]
        .concat(),
        None,
    );
    let err = stderr(&second);
    assert!(
        !second.status.success() && err.contains("audience planners has 0.200000 ρ left") && err.contains("2025-03-12"),
        "{err}"
    );
    assert!(spent(&env, "planners") <= 0.5);
    assert!(
        env.data().join("releases/tiny").read_dir().expect("dir").count() == 1,
        "a refused release stores nothing"
    );
}

#[test]
fn a_published_release_whose_files_vanished_is_never_redrawn() {
    let env = Env::new();
    ingest_day(&env);
    let args = [
        &["--audience", "planners", "--res", "8", "--bin", "1d", "--rho", "0.1"][..],
        &DAY[..],
    ]
    .concat();
    let first = release(&env, &args, None);
    assert!(first.status.success(), "{}", stderr(&first));
    fs::remove_dir_all(json(&first)["dir"].as_str().expect("dir")).expect("rm");
    let again = release(&env, &args, None);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("published but its files are missing"),
        "{}",
        stderr(&again)
    );
    assert!((spent(&env, "planners") - 0.1).abs() < 1e-6);
}

#[test]
fn publish_runs_the_plan_once() {
    let env = Env::new();
    ingest_day(&env);
    let policy = fixture("tiny.toml");
    let p = policy.to_str().expect("utf8");
    let first = env.hexflow(&["publish", "--policy", p, "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(json(&first)["new"], 1);
    let second = env.hexflow(&["publish", "--policy", p, "--json"]);
    assert_eq!(json(&second)["new"], 0);
    assert_eq!(json(&second)["stored"], 1);
    assert!((spent(&env, "public") - 0.2).abs() < 1e-6);
}

#[test]
fn a_flows_release_has_a_noisy_value_for_every_zone_pair() {
    let env = Env::new();
    let out_dir = env.simulate(&fixture("tiny"), "2025-03-10", "2025-03-11");
    let flows = out_dir.join("flows-2025-03.parquet");
    assert!(env.ingest(&[&flows], &[]).status.success());
    let policy = fixture("tiny.toml");
    let out = env.hexflow(&[
        "release",
        "--policy",
        policy.to_str().expect("utf8"),
        "--audience",
        "planners",
        "--metric",
        "flows",
        "--res",
        "7",
        "--bin",
        "1d",
        "--from",
        "2025-03-10",
        "--to",
        "2025-03-11",
        "--epsilon",
        "0.5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = json(&out);
    let m = &o["manifest"];
    assert_eq!(m["mechanism"], "laplace_pure");
    // Pure ε is charged as its zCDP equivalent ε²/2.
    assert!((m["rho"].as_f64().expect("rho") - 0.125).abs() < 1e-3);
    let keys = m["keys"].as_u64().expect("keys");
    let zones = (keys as f64).sqrt() as u64;
    assert_eq!(
        zones * zones,
        keys,
        "all origin × destination pairs of the public zone set"
    );
    assert_eq!(m["values"].as_u64().expect("n"), keys * 2);
    // Zones finer than res 7 are refused for flows.
    let fine = env.hexflow(&[
        "release",
        "--policy",
        policy.to_str().expect("utf8"),
        "--audience",
        "planners",
        "--metric",
        "flows",
        "--res",
        "8",
        "--bin",
        "1d",
        "--from",
        "2025-03-10",
        "--to",
        "2025-03-11",
        "--rho",
        "0.1",
    ]);
    assert!(stderr(&fine).contains("resolution 7 or coarser"), "{}", stderr(&fine));
}

#[test]
fn coarse_hexes_over_many_cells_put_the_noise_on_the_hexes() {
    // Marseille at res 6: ~12 hexes fed by 834 cells. Noise on each hex
    // sum beats noise on every cell spread over the hexes.
    let env = Env::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sim_dir = env.simulate(&root.join("grids/marseille"), "2025-06-02", "2025-06-02");
    let policy = root.join("privacy-budgets/marseille.toml");
    let p = policy.to_str().expect("utf8");
    let foot = sim_dir.join("footfall-2025-06.parquet");
    let ing = env.hexflow(&["ingest", "--policy", p, foot.to_str().expect("utf8")]);
    assert!(ing.status.success(), "{}", stderr(&ing));
    let out = env.hexflow(&[
        "release",
        "--policy",
        p,
        "--audience",
        "planners",
        "--metric",
        "footfall",
        "--res",
        "6",
        "--bin",
        "1d",
        "--from",
        "2025-06-02",
        "--to",
        "2025-06-02",
        "--rho",
        "0.05",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = &json(&out)["manifest"];
    assert_eq!(m["placement"], "hex");
    let e = &m["expected_total_squared_error"];
    assert!(e["hex"].as_f64().expect("hex") < e["cell"].as_f64().expect("cell"));
    // Hex placement: every covered value carries the same Gaussian error
    // bar (1.96 σ for the estimate, + 0.5 for the rounded value); hexes no
    // cell covers carry none.
    let sd = m["noise_sd"].as_f64().expect("sd");
    let dir = PathBuf::from(json(&out)["dir"].as_str().expect("dir"));
    let df = read_parquet(&dir.join("values.parquet"));
    let ci = df.column("estimate_ci95").expect("ci95").f64().expect("f64").clone();
    let ci_value = df.column("ci95").expect("ci95").f64().expect("f64").clone();
    let covered = df.column("covered").expect("covered").bool().expect("bool").clone();
    assert!(covered.iter().any(|c| c == Some(true)));
    for ((c, cv), cov) in ci.iter().zip(ci_value.iter()).zip(covered.iter()) {
        let (c, cv) = (c.expect("ci"), cv.expect("ci"));
        if cov == Some(true) {
            assert!((c - 1.96 * sd).abs() < 0.011, "{c} vs {}", 1.96 * sd);
            assert!((cv - c - 0.5).abs() < 0.011, "{cv} vs {c}");
        } else {
            assert_eq!((c, cv), (0.0, 0.0));
        }
    }
}

#[test]
fn published_error_bars_match_the_noise_actually_added() {
    // A week of known counts, released hourly with cell placement: the
    // standardised errors (estimate − truth) / noise_sd, both as published,
    // must have mean ≈ 0 and mean square ≈ 1 over independent draws
    // (one hex per cell per bin). Each bound is 6 standard errors wide, so
    // a correct release fails with probability < 1e-8.
    let env = Env::new();
    let mut s = String::from(HEADER);
    let count = |c: usize, d: u32, h: u32| 1_000 + 37 * c as u32 + 5 * d + h;
    let cells = ["A-1", "A-2", "A-3", "B-0", "C-1"];
    for d in 10..17u32 {
        for h in 0..24u32 {
            for (ci, c) in cells.iter().enumerate() {
                s.push_str(&format!("{c},2025-03-{d:02}T{h:02}:00:00+01:00,{}\n", count(ci, d, h)));
            }
        }
    }
    let f = env.write("week.csv", &s);
    assert!(env.ingest(&[&f], &[]).status.success());
    let out = release(
        &env,
        &[
            "--audience",
            "planners",
            "--res",
            "9",
            "--bin",
            "1h",
            "--rho",
            "0.05",
            "--from",
            "2025-03-10",
            "--to",
            "2025-03-16",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let o = json(&out);
    assert_eq!(o["manifest"]["placement"], "cell");
    let values = read_parquet(&PathBuf::from(o["dir"].as_str().expect("dir")).join("values.parquet"));
    let cache = fs::read_dir(env.data().join("grids/tiny"))
        .expect("cache")
        .flatten()
        .next()
        .expect("key dir")
        .path();
    let w = read_parquet(&cache.join("weights-r9.parquet"));
    // Truth per (hex, bin): Σ_c W_ch x_c, with bins in file order.
    let mut weights: std::collections::HashMap<String, Vec<(usize, f64)>> = std::collections::HashMap::new();
    let (wc, wh, ww) = (
        w.column("cell_id").expect("c").str().expect("s").clone(),
        w.column("hex_id").expect("h").str().expect("s").clone(),
        w.column("weight").expect("w").f64().expect("f").clone(),
    );
    for ((c, h), x) in wc.iter().zip(wh.iter()).zip(ww.iter()) {
        let ci = cells.iter().position(|k| Some(*k) == c).expect("cell");
        weights
            .entry(h.expect("h").to_string())
            .or_default()
            .push((ci, x.expect("w")));
    }
    let hex = values.column("hex_id").expect("h").str().expect("s").clone();
    let val = values.column("estimate").expect("v").f64().expect("f").clone();
    let noise_sd = values.column("noise_sd").expect("c").f64().expect("f").clone();
    let keys = o["manifest"]["keys"].as_u64().expect("keys") as usize;
    // One hex per cell, fed by that cell alone (its largest such piece):
    // the errors of these hexes are independent draws.
    let mut chosen: std::collections::HashMap<usize, (&str, f64)> = std::collections::HashMap::new();
    for (h, ws) in &weights {
        if let [(ci, x)] = ws.as_slice()
            && chosen.get(ci).is_none_or(|(_, best)| x > best)
        {
            chosen.insert(*ci, (h.as_str(), *x));
        }
    }
    let chosen: std::collections::HashSet<&str> = chosen.values().map(|(h, _)| *h).collect();
    let mut z = Vec::new();
    for i in 0..values.height() {
        let (Some(h), Some(v), Some(sd)) = (hex.get(i), val.get(i), noise_sd.get(i)) else {
            continue;
        };
        if !chosen.contains(h) {
            continue;
        }
        let ws = &weights[h];
        let bin = i / keys;
        let (d, hour) = (10 + (bin / 24) as u32, (bin % 24) as u32);
        let truth: f64 = ws.iter().map(|(ci, x)| x * f64::from(count(*ci, d, hour))).sum();
        // The unrounded estimate and the published sd of its noise.
        z.push((v - truth) / sd);
    }
    let n = z.len() as f64;
    assert!(n >= 7.0 * 24.0 * 3.0, "{n}");
    let mean = z.iter().sum::<f64>() / n;
    let ms = z.iter().map(|x| x * x).sum::<f64>() / n;
    assert!(mean.abs() < 6.0 / n.sqrt(), "mean {mean}");
    // ci95 is published to 0.01: allow 2 % on the variance for that.
    assert!((ms - 1.0).abs() < 6.0 * (2.0 / n).sqrt() + 0.02, "mean square {ms}");
}

/// Issue 23: evaluate reads raw counts for its truth, and its only guard
/// was two marker files anyone could create. It now runs only where every
/// stored delivery is a file a simulation wrote, by the SHA-256s that
/// `simulate` lists in its marker.
#[test]
fn evaluate_refuses_a_store_holding_any_delivery_no_simulation_wrote() {
    let env = Env::new();
    let policy = fixture("tiny.toml");
    let policy = policy.to_str().expect("utf8");
    let deliveries = env.data().join("deliveries/tiny");
    fs::create_dir_all(&deliveries).expect("mkdir");
    // A real operator's file, and the two markers faked beside it.
    let real = env.write("operator.csv", &good_rows(0, 3));
    assert!(env.ingest(&[&real], &[]).status.success());
    fs::write(deliveries.join("simulated-2025-03-12-2025-03-12.json"), "{}").expect("write");
    fs::write(deliveries.join("events.json"), "{\"matches\":[]}").expect("write");
    let o = env.hexflow(&["evaluate", "--policy", policy]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("listing its files' hashes"), "{}", stderr(&o));

    // A genuine simulation's marker does not cover the operator's file.
    let sim = env.simulate(&fixture("tiny"), "2025-03-10", "2025-03-11");
    let marker = sim.join("simulated-v2-2025-03-10-2025-03-11.json");
    let listed: serde_json::Value = serde_json::from_slice(&fs::read(&marker).expect("marker")).expect("json");
    let files = listed["files"].as_array().expect("files");
    assert!(!files.is_empty());
    for f in files {
        let path = Path::new(f["path"].as_str().expect("path"));
        let bytes = fs::read(path).expect("simulated file");
        use sha2::Digest;
        let hex: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(f["sha256"], hex, "{}", path.display());
    }
    fs::copy(&marker, deliveries.join("simulated-v2-2025-03-10-2025-03-11.json")).expect("copy");
    let footfall = sim.join("footfall-2025-03.parquet");
    assert!(env.ingest(&[&footfall], &[]).status.success());
    let o = env.hexflow(&["evaluate", "--policy", policy]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("operator.csv") && stderr(&o).contains("no simulation marker lists"),
        "{}",
        stderr(&o)
    );
}

/// Issue 23: `publish --json` counted a multi-day release's ρ once though
/// the ledger charges it on every day of its window (32.44 against 33.6 on
/// the demo). What publish says it spent is what the ledger holds.
#[test]
fn publish_reports_the_rho_the_ledger_charged_for_multi_day_windows() {
    let env = Env::new();
    // Monday 10 to Sunday 16 March: one whole week.
    let sim = env.simulate(&fixture("tiny"), "2025-03-10", "2025-03-16");
    assert!(
        env.ingest(&[&sim.join("footfall-2025-03.parquet")], &[])
            .status
            .success()
    );
    let text = fs::read_to_string(fixture("tiny.toml")).expect("policy");
    let text = text.replace(
        "grid = \"tiny\"",
        &format!("grid = {:?}", fixture("tiny").display().to_string()),
    ) + "\n[[publication]]\nmetric = \"footfall\"\nres = 7\nbin = \"1w\"\nrho = 0.05\n";
    let policy = env.write("weekly.toml", &text);
    let out = env.hexflow(&["publish", "--policy", policy.to_str().expect("utf8"), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["new"], 8, "{report}");
    let reported = report["rho_spent"].as_f64().expect("rho_spent");
    // 7 daily releases at 0.2 and one weekly at 0.05 on each of 7 days.
    assert!((reported - (7.0 * 0.2 + 7.0 * 0.05)).abs() < 1e-6, "{reported}");
    assert!((reported - spent(&env, "public")).abs() < 1e-6, "{reported}");
}

/// Issue 23: a plan item beyond the public's purpose limits (a res-15 item
/// on the demo) loaded, then made every `publish` exit 1. It is refused
/// when the policy loads, with the item and the limit.
#[test]
fn a_plan_item_beyond_the_publics_purpose_limits_is_refused_at_load() {
    let env = Env::new();
    let text = fs::read_to_string(fixture("tiny.toml")).expect("policy").replace(
        "grid = \"tiny\"",
        &format!("grid = {:?}", fixture("tiny").display().to_string()),
    );
    for (item, reason) in [
        (
            "res = 9\nbin = \"1h\"",
            "publication[1].res = 9 is finer than the public may see",
        ),
        (
            "res = 15\nbin = \"1d\"",
            "publication[1].res = 15 is finer than the public may see",
        ),
        (
            "unit = \"zone\"\nres = 7\nbin = \"1d\"",
            "a zone release has no resolution",
        ),
    ] {
        let policy = env.write(
            "plan.toml",
            &format!("{text}\n[[publication]]\nmetric = \"footfall\"\n{item}\nrho = 0.05\n"),
        );
        let out = env.hexflow(&["ledger", "--policy", policy.to_str().expect("utf8")]);
        assert!(!out.status.success(), "{item}: loaded");
        assert!(stderr(&out).contains(reason), "{item}: {}", stderr(&out));
    }
}
