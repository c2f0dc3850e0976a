//! `hexflow bench --serve`: the demo as a planner meets it.
//!
//! Starts `hexflow demo` (this very binary) on a fresh data dir and times
//! when `/healthz` first answers, when the first release is listed and when
//! the whole plan is published, with the process's peak memory; stops it
//! with Ctrl-C's signal and starts it again on the same data dir (the
//! restart); then loads the restarted server over real TCP connections, as
//! wrk would: first renders (tiles and values never asked before, the cold
//! caches of a restart) under 16 connections, then cached answers (one
//! bin's values, one tile, the release list, the ledger) under 32.
//!
//! The load generator runs in this process on the same cores as the
//! server, like wrk on one machine; figures are printed, never asserted.
//! Comparisons with nginx and a Python pipeline stay in `scripts/`
//! (`loadbench`, `pycompare`): they need programs this binary is not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// Connections of the cached-answer runs (the issue's `wrk -c32`).
pub const CACHED_CONNECTIONS: usize = 32;
/// Connections of the first-render runs (the 16).
pub const FIRST_RENDER_CONNECTIONS: usize = 16;
/// The zoom of the tile runs: a planner's street-level view of a city.
const ZOOM: u8 = 13;

/// When the demo's first start reached each stage, seconds from its spawn.
#[derive(Debug, Clone, Serialize)]
pub struct FirstStart {
    pub healthz_s: f64,
    pub first_release_s: f64,
    pub published_s: f64,
    pub releases: usize,
    /// Peak resident memory of the demo process (MiB); null off Linux.
    pub peak_mib: Option<f64>,
}

/// The demo stopped and started again on the same data dir.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// From the interrupt to the process's exit.
    pub stop_s: f64,
    pub healthz_s: f64,
    /// Releases the restarted server lists (read from disk).
    pub releases: usize,
    /// Until the plan's rerun (everything stored) said it was done.
    pub published_s: f64,
}

/// One run of requests over a number of keep-alive connections.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub what: String,
    pub connections: usize,
    pub requests: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_bytes: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    /// Null with `--against` (a server already running).
    pub first_start: Option<FirstStart>,
    pub restart: Option<Restart>,
    /// The demo's ledger backend: "SQLite" or "PostgreSQL".
    pub ledger: Option<String>,
    /// With `--against`: the server loaded (whatever its data).
    pub against: Option<String>,
    pub load: Vec<Load>,
}

/// A `hexflow demo` child, killed if the bench stops early.
struct Demo {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    started: Instant,
}

impl Demo {
    fn spawn(policies_dir: &Path, data_dir: &Path, ledger: Option<&str>, addr: SocketAddr, log: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("the path of this binary")?;
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let mut cmd = Command::new(exe);
        cmd.arg("--policies-dir")
            .arg(policies_dir)
            .arg("--data-dir")
            .arg(data_dir)
            // The bench's own ledger, whatever the caller's environment.
            .env_remove("HEXFLOW_LEDGER");
        if let Some(url) = ledger {
            cmd.args(["--ledger", url]);
        }
        let child = cmd
            .args(["demo", "--addr", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting hexflow demo")?;
        Ok(Self {
            child,
            addr,
            log: log.to_path_buf(),
            started,
        })
    }

    /// The end of the demo's messages, for an error.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn exited(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("hexflow demo stopped ({status}); its last messages:\n{}", self.tail());
        }
        Ok(())
    }

    /// Peak resident memory (MiB), read while it runs.
    fn peak_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        super::scale::vm_hwm_mib(&status)
    }

    /// Interrupts it as Ctrl-C would and waits for it: seconds taken.
    fn stop(mut self) -> Result<f64> {
        let t = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::INT,
        )
        .context("interrupting hexflow demo")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "hexflow demo exited with {status} on Ctrl-C; its last messages:\n{}",
                self.tail()
            );
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `/healthz` says, once it answers.
struct Health {
    releases: usize,
    publishing: bool,
}

async fn health(addr: SocketAddr) -> Option<Health> {
    let (status, body) = get_once(addr, "/healthz").await.ok()?;
    if !status.is_success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(Health {
        releases: v["releases"].as_u64()? as usize,
        publishing: !v["publishing"].is_null(),
    })
}

/// Polls `/healthz` until the plan is published, telling `seen` what each
/// answer says and when (seconds since the demo's spawn).
async fn wait_for(demo: &mut Demo, timeout: Duration, mut seen: impl FnMut(&Health, f64)) -> Result<()> {
    loop {
        demo.exited()?;
        let elapsed = demo.started.elapsed();
        if elapsed > timeout {
            bail!(
                "hexflow demo did not finish its plan in {timeout:?}; its last messages:\n{}",
                demo.tail()
            );
        }
        if let Some(h) = health(demo.addr).await {
            seen(&h, elapsed.as_secs_f64());
            if h.releases > 0 && !h.publishing {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One GET on a new connection: status and body.
async fn get_once(addr: SocketAddr, path: &str) -> Result<(hyper::StatusCode, Bytes)> {
    let mut sender = connect(addr).await?;
    request(&mut sender, path).await
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the server at {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection; it ends when the sender is dropped.
    tokio::spawn(conn);
    Ok(sender)
}

async fn request(sender: &mut Sender, path: &str) -> Result<(hyper::StatusCode, Bytes)> {
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Empty::new())?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = get_once(addr, path).await?;
    if !status.is_success() {
        bail!("GET {path} answered {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Paths requested by a load run: each request takes the next one, and
/// `Cycle` starts over where `Once` stops.
pub enum Paths {
    Cycle(Vec<String>),
    Once(Vec<String>),
}

/// `connections` keep-alive connections requesting `paths` for at most
/// `duration`. Any answer but a 2xx stops the bench: a load figure of
/// error pages is no figure (scripts/loadbench learned it the hard way).
pub async fn load(addr: SocketAddr, what: &str, paths: Paths, connections: usize, duration: Duration) -> Result<Load> {
    let (paths, cycle) = match paths {
        Paths::Cycle(p) => (p, true),
        Paths::Once(p) => (p, false),
    };
    if paths.is_empty() {
        bail!("{what}: no path to request");
    }
    let paths = Arc::new(paths);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (paths, next) = (paths.clone(), next.clone());
        tasks.spawn(async move {
            let mut sender = connect(addr).await?;
            let (mut ms, mut bytes) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if !cycle && i >= paths.len() {
                    break;
                }
                let path = &paths[i % paths.len()];
                let t = Instant::now();
                let (status, body) = request(&mut sender, path).await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                if !status.is_success() {
                    bail!("GET {path} answered {status}");
                }
                bytes += body.len();
            }
            anyhow::Ok((ms, bytes))
        });
    }
    let (mut ms, mut bytes) = (Vec::new(), 0usize);
    while let Some(done) = tasks.join_next().await {
        let (m, b) = done.map_err(|e| anyhow!("a load connection failed: {e}"))??;
        ms.extend(m);
        bytes += b;
    }
    let seconds = start.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    Ok(Load {
        what: what.to_string(),
        connections,
        requests: ms.len(),
        seconds,
        requests_per_s: ms.len() as f64 / seconds.max(1e-9),
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        mean_bytes: bytes as f64 / ms.len().max(1) as f64,
    })
}

/// The value at quantile `q` of sorted values (nearest rank), 0 if none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn free_addr() -> Result<SocketAddr> {
    // Bound and released at once: the demo binds it a moment later.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs the whole measurement in `tmp`, which it leaves for the caller to
/// remove.
/// `ledger`: a PostgreSQL database for the demo's ledger (a fresh one),
/// else SQLite in its data dir.
pub fn run(
    policies_dir: &Path,
    tmp: &Path,
    ledger: Option<&str>,
    seconds: f64,
    against: Option<SocketAddr>,
) -> Result<ServeReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::util::cores())
        .enable_all()
        .build()?;
    let data_dir = tmp.join("data");
    let duration = Duration::from_secs_f64(seconds);
    // A year's plan on 2 cores takes about two minutes; a bound keeps a hung
    // demo from hanging the bench.
    let timeout = Duration::from_secs(1800);
    rt.block_on(async {
        if let Some(addr) = against {
            return Ok(ServeReport {
                first_start: None,
                restart: None,
                ledger: None,
                against: Some(addr.to_string()),
                load: load_all(addr, duration).await?,
            });
        }
        let mut demo = Demo::spawn(policies_dir, &data_dir, ledger, free_addr()?, &tmp.join("demo-1.log"))?;
        let (mut healthz_s, mut first_release_s, mut releases) = (None, None, 0);
        wait_for(&mut demo, timeout, |h, s| {
            healthz_s.get_or_insert(s);
            if h.releases > 0 {
                first_release_s.get_or_insert(s);
            }
            releases = h.releases;
        })
        .await?;
        let published_s = demo.started.elapsed().as_secs_f64();
        let peak_mib = demo.peak_mib();
        let first_start = FirstStart {
            healthz_s: healthz_s.unwrap_or(published_s),
            first_release_s: first_release_s.unwrap_or(published_s),
            published_s,
            releases,
            peak_mib,
        };
        let stop_s = tokio::task::block_in_place(|| demo.stop())?;
        let mut demo = Demo::spawn(policies_dir, &data_dir, ledger, free_addr()?, &tmp.join("demo-2.log"))?;
        let (mut healthz_s, mut releases) = (None, 0);
        wait_for(&mut demo, timeout, |h, s| {
            healthz_s.get_or_insert(s);
            releases = h.releases;
        })
        .await?;
        let restart = Restart {
            stop_s,
            healthz_s: healthz_s.unwrap_or_default(),
            releases,
            published_s: demo.started.elapsed().as_secs_f64(),
        };
        let load = load_all(demo.addr, duration).await?;
        tokio::task::block_in_place(|| demo.stop())?;
        Ok(ServeReport {
            first_start: Some(first_start),
            restart: Some(restart),
            ledger: Some(if ledger.is_some() { "PostgreSQL" } else { "SQLite" }.to_string()),
            against: None,
            load,
        })
    })
}

/// The runs against a server just restarted: first renders while its
/// caches are cold, then cached answers.
async fn load_all(addr: SocketAddr, duration: Duration) -> Result<Vec<Load>> {
    let api = "/api/v1";
    // Hourly hex footfall of the newest such release's dataset and
    // resolution, whatever the city's plan (the demo's is res 8): the
    // tiles of one area, one grid.
    let list = get_json(
        addr,
        &format!("{api}/releases?metric=footfall&unit=hex&bin=1h&limit=500"),
    )
    .await?;
    let listed = list["releases"]
        .as_array()
        .context("the release list has no releases")?;
    let newest = listed.first().context("no hourly hex footfall release to load")?;
    // A day's bins: 23 or 25 on the days clocks change.
    let releases: Vec<(String, u64)> = listed
        .iter()
        .filter(|r| r["dataset"] == newest["dataset"] && r["res"] == newest["res"])
        .filter_map(|r| Some((r["release_id"].as_str()?.to_string(), r["bins"].as_u64()?)))
        .collect();
    let (first, _) = releases
        .first()
        .context("the release list's summaries have no id or bins")?;
    let tilejson = get_json(addr, &format!("{api}/releases/{first}/tilejson.json")).await?;
    let bounds: Vec<f64> = serde_json::from_value(tilejson["bounds"].clone()).context("tilejson bounds")?;
    let bbox: [f64; 4] = bounds
        .try_into()
        .map_err(|_| anyhow!("tilejson bounds are not 4 numbers"))?;
    let ((x0, x1), (y0, y1)) = crate::render::tile_range(bbox, ZOOM);
    // What a planner's viewer asks when it opens a release's hour: every
    // tile of the area, release after release, hour after hour.
    let mut tiles = Vec::new();
    let mut values = Vec::new();
    for (id, bins) in &releases {
        for bin in 0..*bins {
            values.push(format!("{api}/releases/{id}/values?bin={bin}"));
            for x in x0..=x1 {
                for y in y0..=y1 {
                    tiles.push(format!("{api}/releases/{id}/tiles/{ZOOM}/{x}/{y}.png?bin={bin}"));
                }
            }
        }
    }
    let (mx, my) = (u32::midpoint(x0, x1), u32::midpoint(y0, y1));
    let one_tile = format!("{api}/releases/{first}/tiles/{ZOOM}/{mx}/{my}.png?bin=8");
    let one_values = format!("{api}/releases/{first}/values?bin=8");
    let runs = [
        (
            format!("tiles z{ZOOM} never drawn before"),
            Paths::Once(tiles),
            FIRST_RENDER_CONNECTIONS,
        ),
        (
            "values of an hour never asked before".to_string(),
            Paths::Once(values),
            FIRST_RENDER_CONNECTIONS,
        ),
        (
            "values of one hour, cached".to_string(),
            Paths::Cycle(vec![one_values]),
            CACHED_CONNECTIONS,
        ),
        (
            format!("one tile z{ZOOM}, cached"),
            Paths::Cycle(vec![one_tile]),
            CACHED_CONNECTIONS,
        ),
        (
            "the release list (500 summaries)".to_string(),
            Paths::Cycle(vec![format!("{api}/releases?limit=500")]),
            CACHED_CONNECTIONS,
        ),
        (
            "the ledger per day".to_string(),
            Paths::Cycle(vec![format!("{api}/ledger")]),
            CACHED_CONNECTIONS,
        ),
    ];
    let mut out = Vec::new();
    for (what, paths, connections) in runs {
        out.push(load(addr, &what, paths, connections, duration).await?);
    }
    Ok(out)
}

/// Prints the report as a table.
pub fn print(r: &ServeReport) {
    match (&r.against, &r.ledger) {
        (Some(addr), _) => out!(
            "hexflow bench --serve — the server at {addr} as it runs, {} cores here",
            crate::util::cores()
        ),
        (None, ledger) => out!(
            "hexflow bench --serve — the demo's year, this binary, {} cores, ledger {}",
            crate::util::cores(),
            ledger.as_deref().unwrap_or("unknown")
        ),
    }
    if let Some(f) = &r.first_start {
        out!(
            "  first start: /healthz after {:.1} s, first release listed after {:.1} s, {} releases published after {:.1} s, peak {}",
            f.healthz_s,
            f.first_release_s,
            f.releases,
            f.published_s,
            f.peak_mib.map_or("unknown".to_string(), |m| format!("{m:.0} MiB"))
        );
    }
    if let Some(s) = &r.restart {
        out!(
            "  restart: stopped in {:.2} s; /healthz after {:.2} s, {} releases, plan checked after {:.2} s",
            s.stop_s,
            s.healthz_s,
            s.releases,
            s.published_s
        );
    }
    for l in &r.load {
        out!(
            "  {:<40} {:>2} conn {:>7} req {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms {:>9.0} bytes",
            l.what,
            l.connections,
            l.requests,
            l.requests_per_s,
            l.p50_ms,
            l.p99_ms,
            l.mean_bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[test]
    fn percentiles_are_nearest_ranks() {
        let ms: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&ms, 0.5), 50.0);
        assert_eq!(percentile(&ms, 0.99), 99.0);
        assert_eq!(percentile(&ms, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    /// A server counting what it answers.
    async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/n/{k}",
            get(move |axum::extract::Path(k): axum::extract::Path<usize>| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    if k == 13 {
                        (hyper::StatusCode::NOT_FOUND, String::new())
                    } else {
                        (hyper::StatusCode::OK, "x".repeat(k))
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, hits)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_run_counts_every_answer_and_stops_on_an_error() {
        let (addr, hits) = counting_server().await;
        // Each path once, over more connections than paths per connection.
        let paths: Vec<String> = (0..200).filter(|k| *k != 13).map(|k| format!("/n/{k}")).collect();
        let want_bytes: usize = (0..200).filter(|k| *k != 13).sum();
        let l = load(addr, "once", Paths::Once(paths), 8, Duration::from_secs(600))
            .await
            .expect("load");
        assert_eq!((l.requests, l.connections), (199, 8));
        assert_eq!(hits.load(Ordering::Relaxed), 199);
        assert!((l.mean_bytes - want_bytes as f64 / 199.0).abs() < 1e-9, "{l:?}");
        assert!(l.p50_ms <= l.p99_ms && l.p50_ms > 0.0, "{l:?}");
        // An error page is no figure: the run fails and names it.
        let e = load(
            addr,
            "cycle",
            Paths::Cycle(vec!["/n/1".into(), "/n/13".into()]),
            2,
            Duration::from_secs(600),
        )
        .await
        .expect_err("a 404 must stop the run");
        assert!(e.to_string().contains("GET /n/13 answered 404"), "{e}");
    }
}
