//! The ledger's invariants on both backends, with the real binary: the
//! data dir's SQLite file and a PostgreSQL database of a real server
//! (`HEXFLOW_TEST_PG`, started by `scripts/test`; without it these tests
//! fail with the instruction). Races of processes, crashes at every step of
//! a release, workers sharing a plan with one of them killed mid-job, and
//! two API servers answering planners from one ledger; on PostgreSQL also
//! outages (a proxy the test cuts), a lost release-lock session, and TLS
//! against a throwaway TLS-only cluster (`initdb`, as `scripts/test`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_hexflow");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn policy() -> String {
    fixture("tiny.toml").display().to_string()
}

/// A data dir and the ledger it charges: `None` for its SQLite file, or
/// the URL of a new PostgreSQL database.
struct Env {
    dir: tempfile::TempDir,
    ledger: Option<String>,
}

impl Env {
    /// One environment per backend.
    fn both() -> Vec<Env> {
        let pg = hexflow::privacy::db::scratch_database(&hexflow::privacy::db::test_server(), "hexflow_it")
            .expect("a scratch PostgreSQL database");
        [None, Some(pg)]
            .into_iter()
            .map(|ledger| Env {
                dir: tempfile::tempdir().expect("tmp"),
                ledger,
            })
            .collect()
    }

    fn name(&self) -> &'static str {
        if self.ledger.is_some() { "postgres" } else { "sqlite" }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data-dir")
            .arg(self.data())
            .args(args)
            .env_remove("HEXFLOW_FAILPOINT")
            .env_remove("HEXFLOW_FAILPOINT_ONCE")
            .env_remove("HEXFLOW_LEDGER");
        if let Some(url) = &self.ledger {
            c.env("HEXFLOW_LEDGER", url);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run hexflow")
    }

    /// Footfall of the tiny grid for `days` days from 2025-03-01.
    fn ingest_days(&self, days: u32) {
        let mut s = String::from("cell_id,bin_start,devices\n");
        for d in 1..=days {
            for h in 0..24 {
                for (c, v) in [
                    ("A-1", 900 + d),
                    ("A-2", 40 + h),
                    ("A-3", 50),
                    ("B-0", 60 + h),
                    ("C-1", 70),
                ] {
                    s.push_str(&format!("{c},2025-03-{d:02}T{h:02}:00:00+01:00,{v}\n"));
                }
            }
        }
        let f = self.dir.path().join("days.csv");
        fs::write(&f, s).expect("write");
        let out = self.run(&["ingest", "--policy", &policy(), f.to_str().expect("utf8")]);
        assert!(out.status.success(), "{}: {}", self.name(), text(&out));
    }

    fn ledger_json(&self) -> Value {
        let out = self.run(&["ledger", "--policy", &policy(), "--json"]);
        assert!(out.status.success(), "{}: {}", self.name(), text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// ρ spent per (audience, day).
    fn spent(&self) -> BTreeMap<(String, String), f64> {
        self.ledger_json()["days"]
            .as_array()
            .expect("days")
            .iter()
            .map(|d| {
                (
                    (
                        d["audience"].as_str().expect("audience").to_string(),
                        d["day"].as_str().expect("day").to_string(),
                    ),
                    d["rho_spent"].as_f64().expect("rho"),
                )
            })
            .collect()
    }

    /// Whole releases in the store, or (`partial`) half-written ones,
    /// whose directories start with a dot until they are complete.
    fn releases_dir_entries(&self, partial: bool) -> usize {
        fs::read_dir(self.data().join("releases/tiny"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with('.') == partial)
                    .count()
            })
            .unwrap_or(0)
    }

    fn release_args(audience: &str, rho: &str, day: &str) -> Vec<String> {
        [
            "release",
            "--policy",
            &policy(),
            "--metric",
            "footfall",
            "--audience",
            audience,
            "--res",
            "8",
            "--bin",
            "1d",
            "--rho",
            rho,
            "--from",
            day,
            "--to",
            day,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn racing_processes_never_overspend_and_an_identical_spec_is_charged_once() {
    for env in Env::both() {
        env.ingest_days(1);
        // Planners have 0.5 ρ a day; releases of ~0.12 ρ: exactly 4 fit.
        let racers: Vec<Child> = (0..8)
            .map(|i| {
                let args = Env::release_args("planners", &format!("{}", 0.12 + i as f64 * 1e-6), "2025-03-01");
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                env.cmd(&args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        let outs: Vec<Output> = racers
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait"))
            .collect();
        // Every loser lost to the cap, not to a lock, a connection or a
        // serialization error.
        for out in outs.iter().filter(|o| !o.status.success()) {
            assert!(
                text(out).contains("budget"),
                "{}: a racer failed for another reason: {}",
                env.name(),
                text(out)
            );
        }
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 4, "{}", env.name());
        // Eight identical tourism requests at once: one charge, one draw.
        let same: Vec<Child> = (0..8)
            .map(|_| {
                let args = Env::release_args("tourism", "0.1", "2025-03-01");
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                env.cmd(&args).stdout(Stdio::piped()).spawn().expect("spawn")
            })
            .collect();
        let answers: Vec<Value> = same
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().expect("wait");
                assert!(out.status.success(), "{}: {}", env.name(), text(&out));
                serde_json::from_slice(&out.stdout).expect("json")
            })
            .collect();
        let ids: BTreeSet<&str> = answers
            .iter()
            .map(|a| a["manifest"]["release_id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids.len(), 1, "{}: {ids:?}", env.name());
        let new = answers.iter().filter(|a| a["status"] == "new").count();
        assert_eq!(new, 1, "{}: exactly one of the identical requests draws", env.name());
        let spent = env.spent();
        let planners = spent[&("planners".to_string(), "2025-03-01".to_string())];
        assert!(planners <= 0.5 && planners > 0.48, "{}: {planners}", env.name());
        let tourism = spent[&("tourism".to_string(), "2025-03-01".to_string())];
        assert!((tourism - 0.1).abs() < 1e-6, "{}: {tourism}", env.name());
    }
}

#[test]
fn a_crash_at_any_step_is_finished_without_a_second_charge() {
    for point in [
        "release:after-charge",
        "release:before-noise",
        "release:values-written",
        "release:after-store",
    ] {
        for env in Env::both() {
            env.ingest_days(1);
            let args = Env::release_args("planners", "0.2", "2025-03-01");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let crashed = env.cmd(&args).env("HEXFLOW_FAILPOINT", point).output().expect("run");
            assert!(!crashed.status.success(), "{point} {}", env.name());
            let charged: f64 = env.spent().values().sum();
            assert!(
                (charged - 0.2).abs() < 1e-6,
                "{point} {}: the charge is committed before the crash: {charged}",
                env.name()
            );
            assert_eq!(
                env.releases_dir_entries(false),
                usize::from(point == "release:after-store"),
                "{point} {}: only whole releases are visible",
                env.name()
            );
            let retry = env.run(&args);
            assert!(retry.status.success(), "{point} {}: {}", env.name(), text(&retry));
            let status: Value = serde_json::from_slice(&retry.stdout).expect("json");
            assert!(
                status["status"] == "finished" || status["status"] == "stored",
                "{point} {}: {status}",
                env.name()
            );
            let after: f64 = env.spent().values().sum();
            assert!((after - charged).abs() < 1e-12, "{point} {}: charged again", env.name());
            assert_eq!(
                env.ledger_json()["releases"][0]["state"],
                "published",
                "{point} {}",
                env.name()
            );
            // No half-written copy of noisy values survives a retry.
            assert_eq!(env.releases_dir_entries(true), 0, "{point} {}", env.name());
        }
    }
}

/// A stored release is answered without its release lock: on PostgreSQL
/// that lock is a server session of its own per release, and a restart's
/// plan of 2,202 stored releases spent 5.9 s opening them. Here the lock
/// is held by this test while the same release is asked again.
#[test]
fn a_stored_release_is_answered_while_its_lock_is_held() {
    use hexflow::privacy::ledger::{LedgerUrl, ReleaseLock};
    for env in Env::both() {
        env.ingest_days(1);
        let args = Env::release_args("planners", "0.1", "2025-03-01");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let made = env.run(&args);
        assert!(made.status.success(), "{}: {}", env.name(), text(&made));
        let made: Value = serde_json::from_slice(&made.stdout).expect("json");
        assert_eq!(made["status"], "new", "{}", env.name());
        let id = made["manifest"]["release_id"].as_str().expect("id");
        // The stripe of the id, as the releaser picks it: its last 4 hex
        // digits modulo 64.
        let stripe = u32::from_str_radix(&id[id.len() - 4..], 16).expect("hex") % 64;
        let name = format!("releases-tiny-{stripe:02}");
        let url = match &env.ledger {
            Some(pg) => LedgerUrl::Postgres(pg.clone()),
            None => LedgerUrl::in_data_dir(&env.data()),
        };
        let lock_file = env.data().join("locks").join(format!("{name}.lock"));
        let held = ReleaseLock::acquire(&url, &lock_file, &name).expect("lock");
        let mut again = env.cmd(&args).stdout(Stdio::piped()).spawn().expect("run");
        // A deadlock guard, not a speed bound: the old path waited for
        // the lock forever.
        let mut waited = Duration::ZERO;
        while again.try_wait().expect("wait").is_none() {
            assert!(
                waited < Duration::from_secs(120),
                "{}: a stored release waited on its lock",
                env.name()
            );
            std::thread::sleep(Duration::from_millis(50));
            waited += Duration::from_millis(50);
        }
        let out = again.wait_with_output().expect("output");
        assert!(out.status.success(), "{}: {}", env.name(), text(&out));
        let again: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(again["status"], "stored", "{}", env.name());
        assert_eq!(again["manifest"]["release_id"], id, "{}", env.name());
        drop(held);
    }
}

#[test]
fn workers_share_the_plan_and_a_killed_worker_is_taken_over() {
    for env in Env::both() {
        env.ingest_days(6);
        // One worker aborts mid-job, after the charge and before the noise
        // (as kill -9 would: no destructor runs); the job is taken over
        // once its 2-second lease ends.
        let once = env.dir.path().join("failpoint-fired");
        let out = env
            .cmd(&[
                "publish",
                "--policy",
                &policy(),
                "--workers",
                "2",
                "--lease-s",
                "2",
                "--json",
            ])
            .env("HEXFLOW_FAILPOINT", "release:before-noise")
            .env("HEXFLOW_FAILPOINT_ONCE", &once)
            .output()
            .expect("publish");
        assert!(out.status.success(), "{}: {}", env.name(), text(&out));
        assert!(once.exists(), "{}: the failpoint never fired", env.name());
        let report: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["new"], 6, "{}: {report}", env.name());
        assert_eq!(report["refused"], json!([]), "{}", env.name());
        // Each day charged once, each release published once.
        let spent = env.spent();
        assert_eq!(spent.len(), 6, "{}: {spent:?}", env.name());
        for (k, rho) in &spent {
            assert!((rho - 0.2).abs() < 1e-6, "{} {k:?}: {rho}", env.name());
        }
        let releases = env.ledger_json()["releases"].as_array().expect("releases").clone();
        assert_eq!(releases.len(), 6, "{}", env.name());
        assert!(releases.iter().all(|r| r["state"] == "published"), "{}", env.name());
        assert_eq!(env.releases_dir_entries(false), 6, "{}", env.name());
        // A second run, one process with a claim loop per core, finds
        // everything stored and charges nothing.
        let again = env.run(&["publish", "--policy", &policy(), "--workers", "1", "--json"]);
        assert!(again.status.success(), "{}: {}", env.name(), text(&again));
        let again: Value = serde_json::from_slice(&again.stdout).expect("json");
        assert_eq!(
            (again["new"].as_u64(), again["stored"].as_u64()),
            (Some(0), Some(6)),
            "{}",
            env.name()
        );
        assert_eq!(env.spent(), spent, "{}", env.name());
    }
}

#[test]
fn a_data_dir_keeps_the_ledger_it_was_charged_to() {
    let envs = Env::both();
    let pg = envs[1].ledger.clone().expect("pg");
    // Charged to PostgreSQL: the SQLite default is refused, with the way out.
    let bound = &envs[1];
    bound.ingest_days(1);
    let args = Env::release_args("planners", "0.1", "2025-03-01");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(bound.run(&args).status.success());
    let plain = Command::new(BIN)
        .arg("--data-dir")
        .arg(bound.data())
        .args(["ledger", "--policy", &policy()])
        .env_remove("HEXFLOW_LEDGER")
        .output()
        .expect("run");
    assert!(!plain.status.success());
    assert!(text(&plain).contains("pass --ledger"), "{}", text(&plain));
    // So is any other SQLite file: a fresh one would see no spending.
    let elsewhere = format!("sqlite:{}", bound.dir.path().join("elsewhere.sqlite").display());
    let other = bound
        .cmd(&args)
        .env("HEXFLOW_LEDGER", &elsewhere)
        .output()
        .expect("run");
    assert!(!other.status.success());
    assert!(text(&other).contains("pass --ledger"), "{}", text(&other));
    // Charged to SQLite: a PostgreSQL ledger that would not count those
    // charges is refused.
    let local = &envs[0];
    local.ingest_days(1);
    assert!(local.run(&args).status.success());
    let moved = local.cmd(&args).env("HEXFLOW_LEDGER", &pg).output().expect("run");
    assert!(!moved.status.success());
    assert!(text(&moved).contains("would not count them"), "{}", text(&moved));
    let elsewhere = format!("sqlite:{}", local.dir.path().join("elsewhere.sqlite").display());
    let moved = local
        .cmd(&args)
        .env("HEXFLOW_LEDGER", &elsewhere)
        .output()
        .expect("run");
    assert!(!moved.status.success());
    assert!(text(&moved).contains("would not count them"), "{}", text(&moved));
}

/// One HTTP/1.1 exchange; the status and the body.
fn http(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    // No token: an anonymous request (the public's).
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

/// The payload of a chunked body (chunk sizes differ between answers).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// A `hexflow serve` child, killed when dropped.
struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(env: &Env, policies: &Path) -> Server {
    let mut child = env
        .cmd(&[
            "--policies-dir",
            policies.to_str().expect("utf8"),
            "serve",
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let port = line
        .trim()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    Server(child, port)
}

/// Issue 24: a running `serve` never listed what another process
/// published (a nightly `publish`, `hexflow release`) until it restarted.
/// It now follows the ledger: the releases appear, and `/healthz` counts
/// them, within seconds, on both ledgers.
#[test]
fn a_running_server_lists_what_another_process_publishes() {
    for env in Env::both() {
        env.ingest_days(2);
        let policies = policies_dir(&env);
        let server = serve(&env, &policies);
        let listed = || {
            let (status, body) = http(server.1, "GET", "/api/v1/releases", "", None);
            assert_eq!(status, 200);
            let v: Value = serde_json::from_slice(&body).expect("json");
            v["releases"].as_array().map_or(0, Vec::len)
        };
        let health = || {
            let (_, body) = http(server.1, "GET", "/healthz", "", None);
            serde_json::from_slice::<Value>(&body).expect("json")["releases"]
                .as_u64()
                .unwrap_or(0)
        };
        assert_eq!(listed(), 0, "{}", env.name());
        let out = env.run(&["publish", "--policy", &policy(), "--json"]);
        assert!(out.status.success(), "{}: {}", env.name(), text(&out));
        let made = serde_json::from_slice::<Value>(&out.stdout).expect("json")["new"]
            .as_u64()
            .expect("new");
        assert!(made >= 1, "{}", env.name());
        let started = std::time::Instant::now();
        while listed() < made as usize && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            listed(),
            made as usize,
            "{}: not listed after {:?}",
            env.name(),
            started.elapsed()
        );
        assert_eq!(health(), made, "{}", env.name());
        eprintln!(
            "{}: {made} releases listed {:?} after publish ended",
            env.name(),
            started.elapsed()
        );
    }
}

#[test]
fn two_servers_on_one_ledger_never_overspend_and_answer_alike() {
    for env in Env::both() {
        env.ingest_days(1);
        let policies = policies_dir(&env);
        let token = planner_token(&env, "transit");
        let servers = [serve(&env, &policies), serve(&env, &policies)];
        // Six different questions of ~0.12 ρ on one day (4 fit the
        // planners' 0.5 ρ), each asked of both servers at once.
        let specs: Vec<Value> = (0..6)
            .map(|i| {
                json!({"dataset": "tiny", "metric": "footfall", "res": 8, "bin": "1d",
                       "from": "2025-03-01", "to": "2025-03-01", "rho": 0.12 + i as f64 * 1e-6})
            })
            .collect();
        let answers: Vec<(usize, u16, Value)> = std::thread::scope(|scope| {
            let handles: Vec<_> = specs
                .iter()
                .enumerate()
                .flat_map(|(i, spec)| servers.iter().map(move |s| (i, s.1, spec)))
                .map(|(i, port, spec)| {
                    let token = &token;
                    scope.spawn(move || {
                        let (status, body) = http(port, "POST", "/api/v1/queries", token, Some(spec));
                        (i, status, serde_json::from_slice(&body).unwrap_or(Value::Null))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("join")).collect()
        });
        let mut ids: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (i, status, body) in &answers {
            match status {
                200 | 201 => {
                    ids.entry(*i)
                        .or_default()
                        .insert(body["release_id"].as_str().expect("id").to_string());
                }
                409 => assert!(body.to_string().contains("budget exceeded"), "{}: {body}", env.name()),
                other => panic!("{}: {other} {body}", env.name()),
            }
        }
        assert_eq!(ids.len(), 4, "{}: four questions fit: {answers:?}", env.name());
        for (i, set) in &ids {
            assert_eq!(set.len(), 1, "{}: question {i} got two releases", env.name());
            // Both servers answer with the same values.
            let id = set.iter().next().expect("id");
            let path = format!("/api/v1/releases/{id}/values?format=csv");
            let a = http(servers[0].1, "GET", &path, &token, None);
            let b = http(servers[1].1, "GET", &path, &token, None);
            assert_eq!(a.0, 200, "{}: {}", env.name(), String::from_utf8_lossy(&a.1));
            assert_eq!(a, b, "{}: question {i}", env.name());
        }
        let spent = env.spent();
        let planners = spent[&("planners".to_string(), "2025-03-01".to_string())];
        assert!(planners <= 0.5 + 1e-12 && planners > 0.48, "{}: {planners}", env.name());
        assert_eq!(
            env.ledger_json()["releases"].as_array().map(Vec::len),
            Some(4),
            "{}",
            env.name()
        );
        // Both servers' ledger answers (cached per ledger version) say so,
        // and move when another process charges: on PostgreSQL the
        // servers are told by a LISTEN, on SQLite they read data_version.
        let public = |port: u16| {
            let (status, body) = http(port, "GET", "/api/v1/ledger", &token, None);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let v: Value = serde_json::from_slice(&body).expect("json");
            (
                v["total_rho_by_audience"]["planners"].as_f64().unwrap_or(0.0),
                v["total_rho_by_audience"]["public"].as_f64().unwrap_or(0.0),
            )
        };
        for s in &servers {
            let (p, q) = public(s.1);
            assert!((p - planners).abs() < 1e-9 && q == 0.0, "{}: {p} {q}", env.name());
        }
        let args = Env::release_args("public", "0.1", "2025-03-01");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.run(&args);
        assert!(out.status.success(), "{}: {}", env.name(), text(&out));
        for s in &servers {
            // A deadlock guard, not a speed bound: a notification takes ms.
            let mut seen = 0.0;
            for _ in 0..1200 {
                seen = public(s.1).1;
                if seen > 0.0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                (seen - 0.1).abs() < 1e-9,
                "{}: a cached ledger answer stayed: {seen}",
                env.name()
            );
        }
    }
}

// ---------------------------------------------------------------------
// PostgreSQL away, a lost release lock, TLS (issue 23, findings 4, 5, 8)
// ---------------------------------------------------------------------

/// What a [`Proxy`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Forwards to the server.
    Up,
    /// Closes every connection at once (a server that is down).
    Refuse,
    /// Accepts and never answers (a network that drops packets).
    BlackHole,
}

/// A TCP proxy in front of the test server that a test can cut: a
/// PostgreSQL outage for one test's processes, while the server other
/// tests use runs on.
struct Proxy {
    port: u16,
    link: std::sync::Arc<std::sync::Mutex<Link>>,
    /// Both ends of every forwarded connection, and the held black-holed
    /// ones: a cut closes them all.
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let link = Arc::new(Mutex::new(Link::Up));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (l, o) = (link.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let mode = *l.lock().expect("link");
                match mode {
                    Link::Refuse => drop(client),
                    Link::BlackHole => o.lock().expect("open").push(client),
                    Link::Up => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let mut held = o.lock().expect("open");
                        for (from, to) in [(&client, &server), (&server, &client)] {
                            let (mut from, mut to) = (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                        held.push(client);
                        held.push(server);
                    }
                }
            }
        });
        Proxy { port, link, open }
    }

    /// Cuts every connection and handles new ones as `mode` says.
    fn set(&self, mode: Link) {
        *self.link.lock().expect("link") = mode;
        for s in self.open.lock().expect("open").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// `url` (a test server's) through this proxy.
    fn url(&self, url: &str) -> String {
        let (head, rest) = url.split_once('@').expect("user@host");
        let db = rest.split_once('/').map_or("postgres", |(_, db)| db);
        format!("{head}@127.0.0.1:{}/{db}", self.port)
    }
}

/// The port of a test server's URL.
fn port_of(url: &str) -> u16 {
    let hostport = url
        .split_once('@')
        .expect("user@host")
        .1
        .split('/')
        .next()
        .expect("host");
    hostport.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
}

/// A PostgreSQL-only environment whose ledger is reached through a proxy.
fn proxied() -> (Env, Proxy) {
    let pg = hexflow::privacy::db::scratch_database(&hexflow::privacy::db::test_server(), "hexflow_it")
        .expect("a scratch PostgreSQL database");
    let proxy = Proxy::start(port_of(&pg));
    let env = Env {
        dir: tempfile::tempdir().expect("tmp"),
        ledger: Some(proxy.url(&pg)),
    };
    (env, proxy)
}

/// A client of the test server, for what the tests check behind hexflow.
fn pg_client(url: &str) -> r2d2_postgres::postgres::Client {
    r2d2_postgres::postgres::Client::connect(url, r2d2_postgres::postgres::NoTls).expect("connect")
}

/// The policies folder `serve` reads, with the tiny grid's absolute path.
fn policies_dir(env: &Env) -> PathBuf {
    let policies = env.dir.path().join("policies");
    fs::create_dir_all(&policies).expect("mkdir");
    let tiny = fs::read_to_string(fixture("tiny.toml")).expect("policy");
    let grid = fixture("tiny").display().to_string();
    fs::write(
        policies.join("tiny.toml"),
        tiny.replace("grid = \"tiny\"", &format!("grid = {grid:?}")),
    )
    .expect("write");
    policies
}

/// A planner's token on `env`'s ledger.
fn planner_token(env: &Env, name: &str) -> String {
    let token = env.run(&["token", "create", "--role", "planner", "--name", name]);
    assert!(token.status.success(), "{}", text(&token));
    String::from_utf8_lossy(&token.stdout).trim().to_string()
}

/// Runs `cmd` paused at `step` (`HEXFLOW_PAUSE`): returns the child once
/// it waits there, and the file whose creation lets it go on.
fn paused_at(env: &Env, mut cmd: Command, step: &str) -> (Child, PathBuf) {
    let go = env.dir.path().join(format!("go-{}", step.replace(':', "-")));
    let mut paused = go.clone().into_os_string();
    paused.push(".paused");
    let mut child = cmd
        .env("HEXFLOW_PAUSE", step)
        .env("HEXFLOW_PAUSE_FILE", &go)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    while !Path::new(&paused).exists() {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            panic!("exited ({status}) before pausing at {step}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, go)
}

/// Issue 23, finding 4: an unreachable `--ledger` URL bound the data dir
/// (after a 30 s hang); from then on the right URL was refused.
#[test]
fn an_unreachable_ledger_url_binds_nothing() {
    let env = Env::both().pop().expect("pg");
    let right = env.ledger.clone().expect("pg");
    // A port nobody listens on, and one that accepts and never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let hole = Proxy::start(port_of(&right));
    hole.set(Link::BlackHole);
    for wrong in [
        right.replace(&format!(":{}/", port_of(&right)), &format!(":{closed_port}/")),
        hole.url(&right),
    ] {
        let started = std::time::Instant::now();
        let out = env
            .cmd(&["ledger", "--policy", &policy()])
            .env("HEXFLOW_LEDGER", &wrong)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{wrong}: {}", text(&out));
        assert!(text(&out).contains("cannot connect"), "{}", text(&out));
        // A deadlock guard, not a speed bound: it used to take 30 s.
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        assert!(
            !env.data().join("ledger.url").exists(),
            "an unreachable ledger bound the data dir"
        );
    }
    let ok = env.run(&["ledger", "--policy", &policy()]);
    assert!(ok.status.success(), "the right URL: {}", text(&ok));
}

/// Issue 23, finding 4: during an outage `/healthz` hung (25 s in a 20 s
/// outage); it must say "ledger unavailable" at once while stored
/// releases are still served, and "ok" again once the ledger is back.
#[test]
fn healthz_says_the_ledger_is_away_at_once_and_stored_releases_stay_served() {
    let (env, proxy) = proxied();
    env.ingest_days(1);
    let out = env.run(&["publish", "--policy", &policy(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let server = serve(&env, &policies_dir(&env));
    let health = |port| {
        let (status, body) = http(port, "GET", "/healthz", "", None);
        let body: Value = serde_json::from_slice(&body).expect("json");
        (status, body["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(health(server.1), (200, "ok".to_string()));
    let token = planner_token(&env, "outage");
    let query = serde_json::json!({"dataset": "tiny", "metric": "footfall", "res": 8, "bin": "1d",
        "from": "2025-03-01", "to": "2025-03-01", "rho": 0.01});
    let (status, list) = http(server.1, "GET", "/api/v1/releases", "", None);
    assert_eq!(status, 200);
    let list: Value = serde_json::from_slice(&list).expect("json");
    let id = list["releases"][0]["release_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a public release: {list}"))
        .to_string();
    for mode in [Link::BlackHole, Link::Refuse] {
        proxy.set(mode);
        let started = std::time::Instant::now();
        assert_eq!(health(server.1), (503, "ledger unavailable".to_string()), "{mode:?}");
        // Generous: it waited for the pool's 30 s before.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode:?}: {:?}",
            started.elapsed()
        );
        for path in [
            "/api/v1/releases".to_string(),
            format!("/api/v1/releases/{id}"),
            format!("/api/v1/releases/{id}/values"),
        ] {
            let started = std::time::Instant::now();
            let (status, _) = http(server.1, "GET", &path, "", None);
            assert_eq!(status, 200, "{mode:?} {path}");
            assert!(started.elapsed() < Duration::from_secs(10), "{mode:?} {path}");
        }
        // What needs the ledger says it is away (503, retry), not a fault
        // of the server (500).
        let (status, body) = http(server.1, "POST", "/api/v1/queries", &token, Some(&query));
        assert_eq!(status, 503, "{mode:?}: {}", String::from_utf8_lossy(&body));
        assert!(
            String::from_utf8_lossy(&body).contains("ledger unavailable"),
            "{mode:?}"
        );
        proxy.set(Link::Up);
        let mut back = health(server.1);
        for _ in 0..300 {
            if back.0 == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            back = health(server.1);
        }
        assert_eq!(back, (200, "ok".to_string()), "{mode:?}: back");
    }
}

/// Issue 23, finding 4: a release drawn and stored while the ledger went
/// away stayed `charged`; it is made (exit 0) and marked `published` by
/// the next releaser that connects once the ledger is back.
#[test]
fn a_release_stored_during_an_outage_is_marked_published_when_the_ledger_returns() {
    let (env, proxy) = proxied();
    env.ingest_days(2);
    let args = Env::release_args("planners", "0.1", "2025-03-01");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, go) = paused_at(&env, env.cmd(&args), "release:after-store");
    proxy.set(Link::Refuse);
    fs::write(&go, b"").expect("go");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "stored values are a made release: {}", text(&out));
    proxy.set(Link::Up);
    let state = |env: &Env| env.ledger_json()["releases"][0]["state"].as_str().map(str::to_string);
    assert_eq!(
        state(&env).as_deref(),
        Some("charged"),
        "marked while the ledger was away?"
    );
    // Any later release of the dataset (another day here) connects and
    // finishes the bookkeeping.
    let other = Env::release_args("planners", "0.1", "2025-03-02");
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let out = env.run(&other);
    assert!(out.status.success(), "{}", text(&out));
    let releases = env.ledger_json()["releases"].as_array().expect("releases").clone();
    assert_eq!(releases.len(), 2);
    assert!(releases.iter().all(|r| r["state"] == "published"), "{releases:?}");
    let spent: f64 = env.spent().values().sum();
    assert!((spent - 0.2).abs() < 1e-6, "{spent}");
}

/// Issue 23, finding 4: `publish --workers` exited 1 when the ledger went
/// away mid-run. Workers paused at their first draw see the ledger cut
/// (their lock sessions end with it) and come back: the run finishes,
/// every release charged once and published.
#[test]
fn publish_over_workers_rides_out_a_ledger_outage() {
    let (env, proxy) = proxied();
    env.ingest_days(4);
    let cmd = env.cmd(&[
        "publish",
        "--policy",
        &policy(),
        "--workers",
        "2",
        "--lease-s",
        "2",
        "--json",
    ]);
    let (child, go) = paused_at(&env, cmd, "release:before-draw");
    proxy.set(Link::Refuse);
    // Long enough for every process to meet the outage (the parent polls
    // every 200 ms, leases are renewed every 0.7 s).
    std::thread::sleep(Duration::from_secs(3));
    fs::write(&go, b"").expect("go");
    std::thread::sleep(Duration::from_secs(1));
    proxy.set(Link::Up);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["refused"], json!([]), "{report}");
    let releases = env.ledger_json()["releases"].as_array().expect("releases").clone();
    assert_eq!(releases.len(), 4, "{releases:?}");
    assert!(releases.iter().all(|r| r["state"] == "published"), "{releases:?}");
    assert_eq!(env.releases_dir_entries(false), 4);
    assert_eq!(env.releases_dir_entries(true), 0);
    for (k, rho) in env.spent() {
        assert!((rho - 0.2).abs() < 1e-6, "{k:?}: {rho}: charged once");
    }
}

/// Issue 23, finding 4: jobs of a killed `publish --workers` stayed queued
/// or running for ever. The next run expires them, and finishes.
#[test]
fn jobs_left_by_a_killed_run_do_not_stay_behind() {
    let env = Env::both().pop().expect("pg");
    env.ingest_days(3);
    let cmd = env.cmd(&["publish", "--policy", &policy(), "--workers", "1", "--lease-s", "1"]);
    let (mut child, _go) = paused_at(&env, cmd, "release:before-draw");
    // The parent and its worker, as kill -9 of the process group would.
    let pids = fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(str::to_string))
                .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(child.id())
        })
        .collect::<Vec<_>>();
    child.kill().expect("kill");
    let _ = child.wait();
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let mut db = pg_client(env.ledger.as_ref().expect("pg"));
    let left = |db: &mut r2d2_postgres::postgres::Client| -> i64 {
        db.query_one("SELECT COUNT(*) FROM jobs WHERE state <> 'done'", &[])
            .expect("jobs")
            .get(0)
    };
    assert!(left(&mut db) > 0, "the killed run left jobs");
    // Past the killed worker's 1 s lease (on the database's clock, which
    // the lease is written in): its job is stale, not merely slow.
    std::thread::sleep(Duration::from_secs(2));
    let out = env.run(&["publish", "--policy", &policy(), "--workers", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["refused"], json!([]), "{report}");
    assert_eq!(left(&mut db), 0, "jobs of the killed run stay behind");
    let releases = env.ledger_json()["releases"].as_array().expect("releases").clone();
    assert_eq!(releases.len(), 3);
    assert!(releases.iter().all(|r| r["state"] == "published"), "{releases:?}");
}

/// Issue 23, finding 8: losing the release lock's session let a second
/// process draw the same release. The first, its lock's backend
/// terminated before it draws, stops; the second makes the release; one
/// charge, one draw, one stored release.
#[test]
fn a_lost_release_lock_stops_the_release_before_it_draws() {
    for step in ["release:before-draw", "release:before-store"] {
        let env = Env::both().pop().expect("pg");
        env.ingest_days(1);
        let url = env.ledger.clone().expect("pg");
        let args = Env::release_args("planners", "0.2", "2025-03-01");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (first, go) = paused_at(&env, env.cmd(&args), step);
        let mut db = pg_client(&url);
        let ended = db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'hexflow-release-lock' AND datname = current_database()",
                &[],
            )
            .expect("terminate");
        assert_eq!(ended.len(), 1, "{step}: one lock session");
        // The lock is free: a second process takes it and makes the release.
        let second = env.run(&args);
        assert!(second.status.success(), "{step}: {}", text(&second));
        let second: Value = serde_json::from_slice(&second.stdout).expect("json");
        assert_eq!(second["status"], "finished", "{step}: {second}");
        fs::write(&go, b"").expect("go");
        let first = first.wait_with_output().expect("wait");
        assert!(!first.status.success(), "{step}: the first drew too: {}", text(&first));
        assert!(
            text(&first).contains("release lock") && text(&first).contains("before drawing"),
            "{step}: {}",
            text(&first)
        );
        assert_eq!(env.releases_dir_entries(false), 1, "{step}");
        assert_eq!(env.releases_dir_entries(true), 0, "{step}");
        let spent: f64 = env.spent().values().sum();
        assert!((spent - 0.2).abs() < 1e-6, "{step}: {spent}");
        assert_eq!(env.ledger_json()["releases"][0]["state"], "published", "{step}");
    }
}

/// A throwaway PostgreSQL cluster that accepts TLS connections only, with
/// a certificate signed by a CA made here; stopped when dropped. Started
/// as `scripts/test` starts the shared one (as the `postgres` user when
/// this runs as root).
struct TlsCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    root: bool,
}

/// A key pair and certificate: the CA's (`issuer` None) or one it signs.
fn certificate(
    name: &str,
    issuer: Option<(&openssl::x509::X509, &openssl::pkey::PKey<openssl::pkey::Private>)>,
) -> (openssl::x509::X509, openssl::pkey::PKey<openssl::pkey::Private>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("key");
    let mut subject = X509NameBuilder::new().expect("name");
    subject.append_entry_by_text("CN", name).expect("cn");
    let subject = subject.build();
    let mut b = X509::builder().expect("x509");
    b.set_version(2).expect("version");
    let serial = BigNum::from_u32(rand_serial())
        .and_then(|n| n.to_asn1_integer())
        .expect("serial");
    b.set_serial_number(&serial).expect("serial");
    b.set_subject_name(&subject).expect("subject");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("before");
    b.set_not_after(&Asn1Time::days_from_now(2).expect("time"))
        .expect("after");
    match issuer {
        None => {
            b.set_issuer_name(&subject).expect("issuer");
            b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
                .expect("ext");
            b.append_extension(KeyUsage::new().key_cert_sign().crl_sign().build().expect("ku"))
                .expect("ext");
            b.sign(&key, MessageDigest::sha256()).expect("sign");
        }
        Some((ca, ca_key)) => {
            b.set_issuer_name(ca.subject_name()).expect("issuer");
            let san = SubjectAlternativeName::new()
                .ip("127.0.0.1")
                .dns("localhost")
                .build(&b.x509v3_context(Some(ca), None))
                .expect("san");
            b.append_extension(san).expect("ext");
            b.sign(ca_key, MessageDigest::sha256()).expect("sign");
        }
    }
    (b.build(), key)
}

fn rand_serial() -> u32 {
    let mut n = [0u8; 4];
    openssl::rand::rand_bytes(&mut n).expect("rand");
    u32::from_le_bytes(n) >> 1
}

impl TlsCluster {
    fn start() -> (TlsCluster, PathBuf, PathBuf) {
        let bin = std::env::var_os("HEXFLOW_TEST_PG_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                let mut bins: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .flatten()
                    .map(|e| e.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .collect();
                bins.sort_by_key(|b| {
                    b.parent()
                        .and_then(|v| v.file_name())
                        .and_then(|v| v.to_str())
                        .and_then(|v| v.parse::<u32>().ok())
                });
                bins.pop()
            })
            .expect(
                "PostgreSQL's initdb is not installed: run the tests with ./scripts/test (it installs Debian's postgresql), or set HEXFLOW_TEST_PG_BIN to its bin folder",
            );
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = tempfile::Builder::new().prefix("hexflow-tls").tempdir().expect("tmp");
        let (ca, ca_key) = certificate("hexflow test CA", None);
        let (server, server_key) = certificate("127.0.0.1", Some((&ca, &ca_key)));
        let (other_ca, _) = certificate("another CA", None);
        let pem = |c: &openssl::x509::X509| c.to_pem().expect("pem");
        let ca_file = dir.path().join("ca.pem");
        let wrong_ca = dir.path().join("other-ca.pem");
        fs::write(&ca_file, pem(&ca)).expect("write");
        fs::write(&wrong_ca, pem(&other_ca)).expect("write");
        let pg = dir.path().join("pg");
        fs::create_dir(&pg).expect("mkdir");
        fs::write(pg.join("server.crt"), pem(&server)).expect("write");
        fs::write(
            pg.join("server.key"),
            server_key.private_key_to_pem_pkcs8().expect("pem"),
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(pg.join("server.key"), fs::Permissions::from_mode(0o600)).expect("chmod");
        if root {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&pg)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let cluster = TlsCluster { dir, bin, port, root };
        let data = pg.join("data");
        let init = cluster
            .pg_cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "hexflow", "-A", "trust", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(init.status.success(), "initdb: {}", text(&init));
        // TLS or nothing, on loopback only.
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("hba");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            pg.display(),
            pg.join("server.crt").display(),
            pg.join("server.key").display()
        );
        let started = cluster
            .pg_cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.join("log"))
            .args(["-w", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl");
        let log = fs::read_to_string(pg.join("log")).unwrap_or_default();
        assert!(started.status.success(), "pg_ctl start: {} {log}", text(&started));
        (cluster, ca_file, wrong_ca)
    }

    fn pg_cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// The cluster's URL with a password (which trust ignores, and which
    /// no message may show) and `query`.
    fn url(&self, query: &str) -> String {
        format!("postgres://hexflow:s3cret-pw@127.0.0.1:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = self
            .pg_cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("pg/data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Issue 23, finding 5: connections to PostgreSQL were plain TCP. Against
/// a TLS-only cluster: verify-full with the right CA connects and charges,
/// verify-ca takes its CA from HEXFLOW_LEDGER_CA, require connects without
/// a CA; a wrong CA is refused, saying so; no message shows the password;
/// sslmode=disable is refused by the server (the connections that work
/// are encrypted).
#[test]
fn tls_connections_verify_the_server_and_refuse_a_wrong_ca() {
    let (cluster, ca, wrong) = TlsCluster::start();
    let fresh = |ledger: String| Env {
        dir: tempfile::tempdir().expect("tmp"),
        ledger: Some(ledger),
    };
    let full = fresh(cluster.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display())));
    full.ingest_days(1);
    let args = Env::release_args("planners", "0.2", "2025-03-01");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = full.run(&args);
    assert!(out.status.success(), "verify-full: {}", text(&out));
    let spent: f64 = full.spent().values().sum();
    assert!((spent - 0.2).abs() < 1e-6, "{spent}");
    let via_env = fresh(cluster.url("sslmode=verify-ca"));
    let out = via_env
        .cmd(&["ledger", "--policy", &policy()])
        .env("HEXFLOW_LEDGER_CA", &ca)
        .output()
        .expect("run");
    assert!(out.status.success(), "verify-ca, HEXFLOW_LEDGER_CA: {}", text(&out));
    let require = fresh(cluster.url("sslmode=require"));
    let out = require.run(&["ledger", "--policy", &policy()]);
    assert!(out.status.success(), "require: {}", text(&out));
    for (query, says) in [
        (
            format!("sslmode=verify-full&sslrootcert={}", wrong.display()),
            "certificate",
        ),
        (
            format!("sslmode=verify-ca&sslrootcert={}", wrong.display()),
            "certificate",
        ),
        ("sslmode=verify-full".to_string(), "certificate"),
        ("sslmode=disable".to_string(), "no pg_hba.conf entry"),
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".to_string(),
            "does not exist",
        ),
    ] {
        let env = fresh(cluster.url(&query));
        let out = env.run(&["ledger", "--policy", &policy()]);
        assert!(!out.status.success(), "{query}: connected");
        let said = text(&out);
        assert!(said.contains(says), "{query}: {said}");
        if says == "certificate" {
            assert!(said.contains("sslrootcert"), "{query}: says what to do: {said}");
        }
        assert!(!said.contains("s3cret-pw"), "{query}: the password shows: {said}");
        assert!(!env.data().join("ledger.url").exists(), "{query}: bound the data dir");
    }
    // The certificate's host is checked under verify-full only.
    let by_name = fresh(
        cluster
            .url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()))
            .replace("127.0.0.1", "localhost"),
    );
    let out = by_name.run(&["ledger", "--policy", &policy()]);
    assert!(out.status.success(), "localhost is in the certificate: {}", text(&out));
}
