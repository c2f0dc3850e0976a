//! The server on real sockets: slow and silent clients are cut by the
//! connection timeouts and the connection bound holds (the slowloris
//! patterns of issue 23), and a caching proxy in front (Debian's nginx,
//! installed by `scripts/test`) never hands one client's forwarded headers
//! to the next.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hexflow::server::{AppState, ConnLimits, ServeConfig};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A server on a free local port, stopped (gracefully) when dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(config: ServeConfig) -> Self {
        let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
        let state = Arc::new(AppState::new(vec![policy], config).expect("state"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send addr");
                hexflow::server::serve_until(state, listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
            });
        });
        let addr = rx.recv().expect("bound");
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// One request on a fresh connection: (status, headers, body).
    fn get(&self, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        http_get(self.addr, path, extra)
    }

    fn metric(&self, name: &str) -> f64 {
        let (status, _, body) = self.get("/metrics", "");
        assert_eq!(status, 200);
        let text = String::from_utf8(body).expect("utf8");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics: {text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A GET on a fresh connection, `Connection: close`, read to the end.
fn http_get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).expect("ascii").trim(), 16).expect("hex size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 4 + size..];
    }
}

fn admin_token(data: &Path) -> String {
    let mut ledger = hexflow::privacy::ledger::Ledger::open(&hexflow::privacy::ledger::LedgerUrl::in_data_dir(data))
        .expect("ledger");
    ledger
        .create_token("slow-admin", hexflow::privacy::ledger::Role::Admin)
        .expect("token")
}

/// How one slow client behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Connects and sends nothing.
    Idle,
    /// Sends a request line, then a header byte every 100 ms.
    TrickledHeaders,
    /// A JSON query with a 4 KiB body sent a byte every 100 ms.
    SlowBody,
    /// An admin upload of 100 KB sent a byte every 100 ms.
    SlowUpload,
    /// Asks for the OpenAPI document 400 times over, pipelined, and never
    /// reads an answer.
    NeverReads,
}

struct Slow {
    pattern: Pattern,
    s: TcpStream,
    /// When the server closed it (EOF or reset), after `opened`.
    closed: Option<Duration>,
    opened: Instant,
}

impl Slow {
    fn open(addr: SocketAddr, pattern: Pattern, token: &str) -> Self {
        let mut s = TcpStream::connect(addr).expect("connect");
        let host = format!("Host: {addr}\r\n");
        let start = match pattern {
            Pattern::Idle => String::new(),
            Pattern::TrickledHeaders => format!("GET /healthz HTTP/1.1\r\n{host}"),
            Pattern::SlowBody => format!(
                "POST /api/v1/queries HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{"
            ),
            Pattern::SlowUpload => format!(
                "POST /api/v1/admin/ingest?dataset=tiny&filename=slow.csv HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\ncell_id"
            ),
            Pattern::NeverReads => format!("GET /api/openapi.json HTTP/1.1\r\n{host}\r\n").repeat(400),
        };
        s.write_all(start.as_bytes()).expect("write");
        s.set_nonblocking(true).expect("nonblocking");
        Self {
            pattern,
            s,
            closed: None,
            opened: Instant::now(),
        }
    }

    /// One more byte for the trickling patterns.
    fn trickle(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let byte: &[u8] = match self.pattern {
            Pattern::TrickledHeaders => b"X",
            Pattern::SlowBody | Pattern::SlowUpload => b" ",
            Pattern::Idle | Pattern::NeverReads => return,
        };
        if let Err(e) = self.s.write(byte)
            && e.kind() != ErrorKind::WouldBlock
        {
            self.closed = Some(self.opened.elapsed());
        }
    }

    /// Reads what is there; notes when the server closed.
    fn look(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let mut buf = [0u8; 65536];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => {
                    self.closed = Some(self.opened.elapsed());
                    return;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.closed = Some(self.opened.elapsed());
                    return;
                }
            }
        }
    }
}

/// 50 connections of each slowloris pattern at once: every one is closed
/// by the server within a generous multiple of its timeout, while a normal
/// client keeps getting answers; an idle connection outlives the header
/// timeout (idle and header timeouts are distinct).
#[test]
fn slowloris_connections_are_closed_by_their_timeouts_while_others_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut config = ServeConfig::new(&data);
    config.limits = ConnLimits {
        header: Duration::from_millis(1000),
        idle: Duration::from_millis(2500),
        body: Duration::from_millis(1000),
        max_connections: 300,
    };
    let server = Server::start(config);
    assert_eq!(server.get("/healthz", "").0, 200);
    let token = admin_token(&data);
    const EACH: usize = 50;
    let patterns = [
        Pattern::Idle,
        Pattern::TrickledHeaders,
        Pattern::SlowBody,
        Pattern::SlowUpload,
        Pattern::NeverReads,
    ];
    let mut slow: Vec<Slow> = Vec::new();
    for p in patterns {
        for _ in 0..EACH {
            slow.push(Slow::open(server.addr, p, &token));
        }
    }
    let t0 = Instant::now();
    // Generous: 8× the longest timeout (2.5 s); the bound is on the test,
    // never a performance figure.
    let give_up = Duration::from_secs(20);
    let mut served = 0;
    while slow.iter().any(|s| s.closed.is_none()) && t0.elapsed() < give_up {
        std::thread::sleep(Duration::from_millis(100));
        for s in &mut slow {
            s.trickle();
            // A client that never reads is looked at only once the server
            // has had twice the idle timeout to give up on it.
            if s.pattern != Pattern::NeverReads || t0.elapsed() > Duration::from_secs(5) {
                s.look();
            }
        }
        // A normal client, meanwhile.
        let (status, _, body) = server.get("/healthz", "");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        served += 1;
    }
    let left: Vec<String> = patterns
        .iter()
        .map(|p| {
            let n = slow.iter().filter(|s| s.pattern == *p && s.closed.is_none()).count();
            format!("{p:?}: {n} of {EACH} left open")
        })
        .collect();
    assert!(
        slow.iter().all(|s| s.closed.is_some()),
        "after {give_up:?}: {}",
        left.join(", ")
    );
    eprintln!(
        "{} (a normal client was answered {served} times meanwhile)",
        left.join(", ")
    );
    assert!(served >= 5);
    // Idle connections outlive the header timeout: the two are distinct
    // (the server cannot close one before its accept + idle timeout).
    let first_idle_close = slow
        .iter()
        .filter(|s| s.pattern == Pattern::Idle)
        .filter_map(|s| s.closed)
        .min()
        .expect("closed");
    assert!(first_idle_close >= Duration::from_millis(2000), "{first_idle_close:?}");
    // What the server says closed them.
    assert!(server.metric("hexflow_connections_timed_out_total{reason=\"idle\"}") >= EACH as f64);
    assert!(server.metric("hexflow_connections_timed_out_total{reason=\"headers\"}") >= EACH as f64);
    assert!(server.metric("hexflow_connections_timed_out_total{reason=\"body\"}") >= 2.0 * EACH as f64);
    assert!(server.metric("hexflow_connections_timed_out_total{reason=\"write\"}") >= EACH as f64);
    // Only the request asking counts as open now.
    assert_eq!(server.metric("hexflow_connections_open"), 1.0);
    // A slow body is told why, and the upload left nothing behind.
    let leftovers = std::fs::read_dir(data.join("uploads")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "uploads cut off must be removed");
}

/// A slow body is answered 408 problem+json and its connection closed.
#[test]
fn a_slow_body_is_answered_408_and_its_connection_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut config = ServeConfig::new(&data);
    config.limits.body = Duration::from_millis(500);
    let server = Server::start(config);
    let token = admin_token(&data);
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(
        s,
        "POST /api/v1/queries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"dataset\""
    )
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("the server closes the connection");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("body too slow"), "{text}");
}

/// Past `max_connections` connections wait to be accepted: never more are
/// open at once, and each waiting one is served once a slot frees.
#[test]
fn the_connection_bound_holds_and_waiting_connections_are_served_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::new(&dir.path().join("data"));
    config.limits = ConnLimits {
        header: Duration::from_millis(500),
        idle: Duration::from_millis(700),
        body: Duration::from_millis(500),
        max_connections: 8,
    };
    let server = Server::start(config);
    let limit = 8;
    // 3× the bound, idle: the first 8 are served, the rest wait.
    let mut idle: Vec<Slow> = (0..3 * limit)
        .map(|_| Slow::open(server.addr, Pattern::Idle, ""))
        .collect();
    // A normal request behind them waits its turn: no slot frees before
    // the first idle connections time out (a lower bound only).
    let asked = Instant::now();
    let (status, _, _) = server.get("/healthz", "");
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() >= Duration::from_millis(700),
        "answered before any slot freed: more than {limit} connections were accepted"
    );
    let t0 = Instant::now();
    while idle.iter().any(|s| s.closed.is_none()) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
        for s in &mut idle {
            s.look();
        }
    }
    assert!(
        idle.iter().all(|s| s.closed.is_some()),
        "every waiting connection was served in turn"
    );
    assert_eq!(server.metric("hexflow_connections_limit"), limit as f64);
    assert_eq!(server.metric("hexflow_connections_peak"), limit as f64);
    assert_eq!(
        server.metric("hexflow_connections_timed_out_total{reason=\"idle\"}"),
        (3 * limit) as f64
    );
}

/// Debian's nginx, run by this test in its own folder.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Self {
        let nginx = Path::new("/usr/sbin/nginx");
        assert!(
            nginx.exists(),
            "the cache-poisoning test needs nginx: run ./scripts/test, which installs Debian's nginx-light"
        );
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            // nginx's worker may run as another user: readable folders.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let d = dir.path().display();
            let conf = format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=hexflow:1m max_size=64m inactive=1h use_temp_path=off;
  upstream hexflow {{ server {upstream}; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://hexflow;
      proxy_cache hexflow;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
  }}
}}
"#
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).expect("conf");
            let mut child = Command::new(nginx)
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: another one
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nginx did not start");
    }

    fn get(&self, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        http_get(SocketAddr::from(([127, 0, 0, 1], self.port)), path, extra)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// A data dir with one published day of the tiny grid.
fn published() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let policy = hexflow::policy::Policy::load(&fixture("tiny.toml")).expect("policy");
    let grid = policy.load_grid().expect("grid");
    let day: chrono::NaiveDate = "2025-03-03".parse().expect("day");
    let sim = dir.path().join("sim");
    hexflow::simulate::simulate(&grid, day, day, &sim, hexflow::simulate::Format::Csv, 7, None).expect("simulate");
    let ingestor = hexflow::ingest::Ingestor::new(policy.clone(), &data).expect("ingestor");
    for e in std::fs::read_dir(&sim).expect("sim").flatten() {
        if e.path().extension().is_some_and(|x| x == "csv") {
            ingestor.ingest(&e.path(), Default::default()).expect("ingest");
        }
    }
    let releaser = hexflow::release::Releaser::new(policy, &data).expect("releaser");
    let report = hexflow::release::publish::publish(&releaser, &data).expect("publish");
    assert_eq!(report.new, 1);
    let id = std::fs::read_dir(data.join("releases/tiny"))
        .expect("releases")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("r-"))
        .expect("a release");
    (dir, data, id)
}

const POISON: &str = "X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=192.0.2.1;proto=https;host=evil.example\r\n";

/// Poisoned requests through nginx's `proxy_cache`, then clean clients:
/// none of them may see the poisoner's host. With `--public-url` the
/// TileJSON is cached (the cache works, so the test can fail); without it,
/// it is private and never cached.
#[test]
fn a_caching_proxy_never_hands_a_forwarded_host_to_the_next_client() {
    let (_dir, data, id) = published();
    const POISONED: usize = 5;
    const CLIENTS: usize = 20;
    let mut report = Vec::new();
    for public_url in [None, Some("https://maps.example.org")] {
        let mut config = ServeConfig::new(&data);
        config.public_url = public_url.map(str::to_string);
        let server = Server::start(config);
        let nginx = Nginx::start(server.addr);
        let mut poisoned_answers = 0;
        let mut hits = 0;
        let mut wrong = Vec::new();
        for bin in 0..POISONED {
            let path = format!("/api/v1/releases/{id}/tilejson.json?bin={bin}");
            let (status, _, body) = nginx.get(&path, POISON);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            for _ in 0..CLIENTS / POISONED {
                let (status, head, body) = nginx.get(&path, "");
                assert_eq!(status, 200);
                let doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
                let tiles = doc["tiles"][0].as_str().expect("tiles").to_string();
                if tiles.contains("evil.example") {
                    poisoned_answers += 1;
                }
                let expected = match public_url {
                    Some(u) => format!("{u}/api/v1/releases/{id}/tiles/"),
                    // The proxy's upstream address, as nginx sends it.
                    None => format!("http://hexflow/api/v1/releases/{id}/tiles/"),
                };
                if !tiles.starts_with(&expected) {
                    wrong.push(tiles);
                }
                let lower = head.to_ascii_lowercase();
                if lower.contains("x-cache-status: hit") {
                    hits += 1;
                }
                if public_url.is_none() && !lower.contains("cache-control: private") {
                    wrong.push(format!("not private: {head}"));
                }
            }
        }
        report.push(format!(
            "public_url {public_url:?}: {POISONED} poisoned requests, {poisoned_answers} of {CLIENTS} clients got a poisoned answer, {hits} cache hits"
        ));
        assert_eq!(poisoned_answers, 0, "{report:?}");
        assert!(wrong.is_empty(), "unexpected tile URLs: {wrong:?}");
        match public_url {
            // The cache is in play: the poisoned request filled it.
            Some(_) => assert_eq!(hits, CLIENTS, "{report:?}"),
            None => assert_eq!(hits, 0, "{report:?}"),
        }
    }
    eprintln!("{}", report.join("\n"));
}
