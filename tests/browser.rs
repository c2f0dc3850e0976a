//! The viewer in a real browser: `hexflow demo` on a fresh data dir (three
//! days of Marseille), Debian's headless Chromium driven over WebDriver
//! (chromedriver). The test moves the time slider with the keyboard, checks
//! that the map shows coloured hexes, hovers a hex with the pointer and
//! reads its value with its error bar from the tooltip. A second demo is
//! loaded by `hexflow bench --serve --against`, as a planner's many
//! browsers would.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`); `scripts/test` installs them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Kills a child process when the test ends, passed or not.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One HTTP/1.1 exchange with chromedriver (JSON in, JSON out).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver may keep the connection open: read by Content-Length
    // (or chunks), not to end of stream.
    let mut reader = BufReader::new(s);
    let mut length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    let payload = String::from_utf8_lossy(&body);
    serde_json::from_str(&payload).map_err(std::io::Error::other)
}

struct Driver {
    port: u16,
    session: String,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let v = http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        if v["value"].get("error").is_some() {
            panic!("webdriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn js(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    /// Polls `script` until it returns something truthy.
    fn wait_for(&self, script: &str, what: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if t0.elapsed() > Duration::from_secs(90) {
                let status = self.js("return (document.getElementById('status')||{}).textContent");
                panic!("timed out waiting for {what}; #status reads {status}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().expect("element id").to_string()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http(self.port, "DELETE", &format!("/session/{}", self.session), None);
    }
}

/// Starts `hexflow demo` on a free port and returns its base URL.
fn start_demo(dir: &Path) -> (Kill, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexflow"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--policies-dir")
        .arg(repo.join("privacy-budgets"))
        .args([
            "demo",
            "--from",
            "2025-03-03",
            "--to",
            "2025-03-05",
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start hexflow demo");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("serving on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(900))
        .expect("hexflow demo did not start serving");
    // The demo serves while it publishes its plan; the test starts once the
    // plan is published, as `/healthz` says.
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in the URL");
    let t0 = Instant::now();
    loop {
        let h = http(port, "GET", "/healthz", None).expect("healthz");
        if h["publishing"].is_null() && h["releases"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            h.get("publishing").is_some(),
            "healthz says nothing of the publication: {h}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "the demo's plan was not published: {h}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (guard, url)
}

fn start_browser(dir: &Path) -> (Kill, Driver) {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(bin).exists(),
            "the browser test needs {bin}: run ./scripts/test, which installs Debian's chromium and chromium-driver"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let guard = Kill(child);
    let t0 = Instant::now();
    while http(port, "GET", "/status", None)
        .map(|v| v["value"]["ready"] != json!(true))
        .unwrap_or(true)
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = dir.join("chromium-profile");
    let caps = json!({"capabilities": {"alwaysMatch": {
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,1000", "--lang=en-GB", format!("--user-data-dir={}", profile.display())],
        }
    }}});
    let v = http(port, "POST", "/session", Some(&caps)).expect("new session");
    let session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {v}"))
        .to_string();
    (guard, Driver { port, session })
}

#[test]
fn the_viewer_shows_coloured_hexes_moves_in_time_and_explains_a_hex() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, url) = start_demo(dir.path());
    let (_chromedriver, d) = start_browser(dir.path());
    d.call("POST", "/url", json!({ "url": url }));
    d.wait_for(
        "return window.hexflow && window.hexflow.ready === true",
        "the first bin to be drawn",
    );
    let bins = d.js("return Number(document.getElementById('slider').max)");
    assert_eq!(bins, json!(23), "an hourly release has 24 bins");
    let label0 = d.js("return document.getElementById('bin-label').textContent");

    // Move the time slider with the keyboard, as a person would.
    let slider = d.element("#slider");
    d.call(
        "POST",
        &format!("/element/{slider}/value"),
        json!({"text": "\u{E014}\u{E014}\u{E014}\u{E014}\u{E014}\u{E014}\u{E014}\u{E014}\u{E014}"}),
    );
    d.wait_for("return document.body.dataset.bin === '9'", "bin 9 to be drawn");
    let label9 = d.js("return document.getElementById('bin-label').textContent");
    assert_ne!(label0, label9);
    assert!(label9.as_str().unwrap_or("").contains("09:00"), "{label9}");

    // Coloured hexes on the canvas: viridis pixels (blue over red, or
    // green over both), not background, grey or outline.
    let coloured = d.js("const c = document.getElementById('map');
         const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
         let n = 0;
         for (let i = 0; i < px.length; i += 4) {
           const r = px[i], g = px[i + 1], b = px[i + 2];
           if (b - r > 40 || (g - r > 40 && g - b > 40)) n++;
         }
         return n;");
    assert!(coloured.as_u64().unwrap_or(0) > 5000, "{coloured} coloured pixels");

    // Hover a shown hex: the tooltip gives its value and error bar.
    let target = d.js("document.getElementById('map').scrollIntoView({block: 'center'});
         const f = window.hexflow.features.find(f => !f.properties.low && f.properties.value > 0);
         const p = window.hexflow.screenPointOfHex(f.properties.hex_id);
         return [f.properties.hex_id, Math.round(p.x), Math.round(p.y), f.properties.value, f.properties.ci95];");
    let hex = target[0].as_str().expect("hex id").to_string();
    d.call(
        "POST",
        "/actions",
        json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "duration": 0, "origin": "viewport",
                          "x": target[1], "y": target[2]}]}]}),
    );
    let tip = d.wait_for(
        &format!("const t = document.getElementById('tooltip').textContent; return t.includes('{hex}') ? t : ''"),
        "the tooltip of the hovered hex",
    );
    let tip = tip.as_str().expect("text").to_string();
    let value = target[3].as_i64().expect("value");
    assert!(
        tip.contains(&format!("{value} ±")),
        "tooltip {tip:?} should read {value} ± …"
    );
    let after = tip.split('±').nth(1).unwrap_or("").trim_start();
    assert!(after.starts_with(|c: char| c.is_ascii_digit()), "error bar in {tip:?}");

    // The map, its legend and the time control share the first screen, on
    // a desktop and on a phone.
    for (w, h) in [(1400, 900), (390, 844)] {
        d.call("POST", "/window/rect", json!({"width": w, "height": h}));
        d.call("POST", "/url", json!({ "url": url.clone() }));
        d.wait_for(
            "return window.hexflow && window.hexflow.ready === true",
            "the map after resizing",
        );
        let fit = d.js("window.scrollTo(0, 0);
             const vh = window.innerHeight, vw = window.innerWidth;
             const out = [];
             for (const id of ['map', 'map-legend', 'play', 'slider', 'bin-label']) {
               const r = document.getElementById(id).getBoundingClientRect();
               if (r.top < 0 || r.bottom > vh + 0.5 || r.left < 0 || r.right > vw + 0.5 || r.height === 0)
                 out.push(`${id}: ${Math.round(r.left)},${Math.round(r.top)}–${Math.round(r.right)},${Math.round(r.bottom)} in ${vw}×${vh}`);
             }
             return out.join('; ');");
        assert_eq!(fit, json!(""), "at {w}×{h}, outside the first screen: {fit}");
    }
    d.call("POST", "/window/rect", json!({"width": 1400, "height": 1000}));
    d.call("POST", "/url", json!({ "url": url.clone() }));
    d.wait_for(
        "return window.hexflow && window.hexflow.ready === true",
        "the map again",
    );

    // Playback runs across days: from the last hours of one day into the
    // next day's release.
    d.js("const t = document.getElementById('date'); t.value = '2025-03-03'; t.dispatchEvent(new Event('change')); return true;");
    d.wait_for(
        "return window.hexflow.ready === true && window.hexflow.release.from === '2025-03-03'",
        "the first day",
    );
    d.js("const s = document.getElementById('slider'); s.value = '22'; s.dispatchEvent(new Event('input')); return true;");
    d.wait_for("return document.body.dataset.bin === '22'", "bin 22");
    let day0 = d.js("return window.hexflow.release.from");
    d.js("document.getElementById('play').click(); return true;");
    d.wait_for(
        &format!("return window.hexflow.ready && window.hexflow.release.from > {day0} && window.hexflow.release.bin === '1h' && window.hexflow.bin <= 1"),
        "playback to reach the next day",
    );
    d.js("document.getElementById('play').click(); return true;");

    // The busiest hexes are named by the nearest landmark and their zone.
    let top = d.js("return document.querySelector('#top-body tr td').textContent");
    let top = top.as_str().unwrap_or("");
    assert!(top.contains("near ") || top.contains("arrondissement"), "{top}");

    // Deep links: the URL holds the state and restores it, on load, when
    // the fragment changes in the tab, and on Back.
    let link = d.js("return location.href");
    let link = link.as_str().expect("href").to_string();
    assert!(link.contains("bin=") && link.contains("z="), "{link}");
    let at_bin = |b: u32| {
        let (head, tail) = link.split_once("bin=").expect("bin=");
        let rest = tail.split_once('&').map(|x| format!("&{}", x.1)).unwrap_or_default();
        format!("{head}bin={b}{rest}")
    };
    d.call("POST", "/url", json!({ "url": at_bin(4) }));
    d.wait_for(
        "return window.hexflow && window.hexflow.ready === true && document.body.dataset.bin === '4'",
        "bin 4 from the link",
    );
    d.js(&format!(
        "location.hash = {:?}; return true;",
        at_bin(7).split_once('#').map(|x| x.1).unwrap_or("")
    ));
    d.wait_for(
        "return document.body.dataset.bin === '7'",
        "bin 7 after the fragment changed",
    );
    d.js("history.back(); return true;");
    d.wait_for("return document.body.dataset.bin === '4'", "bin 4 again after Back");
    // The autumn day's 25 hours have 25 distinct labels, with offsets.
    let labels = d.call(
        "POST",
        "/execute/async",
        json!({"script": "const done = arguments[arguments.length - 1];
            import('/web/common.js').then(m => {
              const t0 = Date.parse('2025-10-25T22:00:00Z');
              done(Array.from({length: 25}, (_, k) => m.fmtBinRange(new Date(t0 + k * 3600e3).toISOString(), '1h', 'Europe/Paris')));
            }, e => done(String(e)));", "args": []}),
    );
    let labels: Vec<String> = labels
        .as_array()
        .unwrap_or_else(|| panic!("labels: {labels}"))
        .iter()
        .map(|l| l.as_str().unwrap_or("").to_string())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
    assert_eq!(distinct.len(), 25, "{labels:?}");
    assert!(
        labels[2].contains("02:00–03:00 +02:00") && labels[3].contains("02:00–03:00 +01:00"),
        "{labels:?}"
    );

    // People per zone: the Show picker switches the map to presence by day,
    // everyone summed, then to tourists only; the URL keeps the choice.
    d.js("const m = document.getElementById('metric'); m.value = 'presence:day';
         m.dispatchEvent(new Event('change')); return true;");
    d.wait_for(
        "return window.hexflow.ready === true && window.hexflow.release.metric === 'presence'",
        "the people map",
    );
    let zones = d.js("return window.hexflow.features.filter(f => f.properties.zone_id).length");
    assert_eq!(zones, json!(16), "the 16 arrondissements");
    let everyone = d.js("return window.hexflow.features.reduce((a, f) => a + f.properties.estimate, 0)");
    d.js("const s = document.getElementById('segment'); s.value = 'tourist';
         s.dispatchEvent(new Event('change')); return true;");
    d.wait_for(
        "return window.hexflow.ready === true && window.hexflow.features.length > 0
           && window.hexflow.features.every(f => f.properties.segment === 'tourist')",
        "the tourists' map",
    );
    let tourists = d.js("return window.hexflow.features.reduce((a, f) => a + f.properties.estimate, 0)");
    assert!(
        tourists.as_f64().unwrap_or(f64::MAX) < 0.5 * everyone.as_f64().unwrap_or(0.0),
        "tourists {tourists} vs everyone {everyone}"
    );
    let hash = d.js("return location.hash");
    let hash = hash.as_str().unwrap_or("");
    assert!(
        hash.contains("show=presence%3Aday") && hash.contains("who=tourist"),
        "{hash}"
    );

    // The tourism office's token reaches its own releases: a query paid
    // from its budget, then the token box (which keeps the token in the
    // page's memory only).
    let out = Command::new(env!("CARGO_BIN_EXE_hexflow"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["token", "create", "--role", "tourism", "--name", "tourism-office"])
        .output()
        .expect("token create");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("hxf_"), "{token}");
    let status = d.call(
        "POST",
        "/execute/async",
        json!({"script": "const done = arguments[arguments.length - 1];
            fetch('/api/v1/queries', {method: 'POST', headers: {'Content-Type': 'application/json',
              Authorization: 'Bearer ' + arguments[0]}, body: JSON.stringify({dataset: 'marseille',
              metric: 'presence', unit: 'zone', bin: '1d', period: 'day', from: '2025-03-04',
              to: '2025-03-04', rho: 0.01})}).then(r => done(r.status), e => done(String(e)));",
            "args": [token]}),
    );
    assert_eq!(status, json!(201), "the tourism office's query");
    d.call(
        "POST",
        "/execute/sync",
        json!({"script": "document.getElementById('date').value = '2025-03-04';
            document.getElementById('token').value = arguments[0];
            document.getElementById('audience').value = 'tourism';
            document.getElementById('token-form').requestSubmit(); return true;",
            "args": [token]}),
    );
    d.wait_for(
        "return window.hexflow.ready === true && window.hexflow.release.audience === 'tourism'",
        "the tourism office's own release on the map",
    );
    let kept = d.js("return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie");
    assert!(
        !kept.as_str().unwrap_or("").contains(&token),
        "the page stored the token"
    );

    // The transparency page charts the ledger and lists the releases.
    d.call("POST", "/url", json!({ "url": format!("{url}transparency") }));
    let rows = d.wait_for(
        "const t = document.querySelectorAll('#release-list tbody tr').length; return t > 0 ? t : 0",
        "the release list",
    );
    assert!(
        rows.as_u64().unwrap_or(0) >= 9,
        "{rows} rows (3 days × 3 standing releases)"
    );
    let inked = d.js("const c = document.getElementById('spend-chart');
         const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
         let n = 0;
         for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && (px[i] < 200 || px[i + 2] < 200)) n++;
         return n;");
    assert!(inked.as_u64().unwrap_or(0) > 500, "the spend chart is drawn ({inked})");
    // The list filters by metric and unit too, and names zone releases
    // "zones", never "res 0".
    let kinds = d.js(
        "const f = document.getElementById('metric-filter'); f.value = 'presence';
         f.dispatchEvent(new Event('change'));
         const u = document.getElementById('unit-filter'); u.value = 'zone'; u.dispatchEvent(new Event('change'));
         return [...document.querySelectorAll('#release-list tbody tr')].map(tr => tr.children[2].textContent);",
    );
    let kinds: Vec<String> = kinds
        .as_array()
        .expect("rows")
        .iter()
        .map(|k| k.as_str().unwrap_or("").to_string())
        .collect();
    assert!(!kinds.is_empty());
    assert!(
        kinds
            .iter()
            .all(|k| k.starts_with("presence · zones") && !k.contains("res 0")),
        "{kinds:?}"
    );

    // The views page: visitors by segment, drawn in the page, in estimated
    // people, and in devices after the switch.
    d.call("POST", "/url", json!({ "url": format!("{url}views") }));
    d.wait_for(
        "return document.getElementById('visitors').dataset.state === 'ready'",
        "the visitors view",
    );
    let drawn = d.js("return document.querySelectorAll('#visitors-chart svg polygon').length");
    assert_eq!(
        drawn,
        json!(3),
        "one band per segment (residents, tourists, day visitors)"
    );
    let people = d.js("return document.getElementById('visitors-summary').textContent");
    assert!(people.as_str().unwrap_or("").contains("residents"), "{people}");
    let months = d.js("return document.querySelectorAll('#visitors-months-body tr').length");
    assert!(months.as_u64().unwrap_or(0) >= 1, "{months} month rows");
    d.js("const m = document.getElementById('visitors-measure');
         m.value = 'devices'; m.dispatchEvent(new Event('change')); return true;");
    let devices = d.js("return document.getElementById('visitors-summary').textContent");
    assert_ne!(people, devices, "the devices/people switch changes the figures");
    // The seasonality chart is drawn in the page (SVG), its bands visible.
    d.wait_for(
        "return document.getElementById('seasonality').dataset.state === 'ready'",
        "the seasonality view",
    );
    let lines = d.js("return document.querySelectorAll('#season-svg svg polyline').length");
    assert_eq!(lines, json!(1), "one line for the zone");
    // Every point of the band is at least 3 px tall (a thin error bar
    // still shows), read from the drawn polygon's vertices.
    let band = d.js("const p = document.querySelector('#season-svg svg polygon');
         const pts = p.getAttribute('points').trim().split(' ').map(q => q.split(',').map(Number));
         const n = pts.length / 2;
         let least = Infinity;
         for (let i = 0; i < n; i++) least = Math.min(least, pts[pts.length - 1 - i][1] - pts[i][1]);
         return least;");
    assert!(band.as_f64().unwrap_or(0.0) >= 2.99, "band {band} px");
    let legend = d.js("return document.querySelector('#seasonality .chart-legend').textContent");
    assert!(legend.as_str().unwrap_or("").contains("95 % error bars"), "{legend}");

    // The flows view draws its largest flows as arcs between the zones.
    d.wait_for(
        "return document.getElementById('flows').dataset.state === 'ready'",
        "the flows view",
    );
    let arcs = d.js("return document.querySelectorAll('#flows-map svg path[marker-end]').length");
    assert!(arcs.as_u64().unwrap_or(0) >= 5, "{arcs} flow arcs");
    let zones = d.js("return document.querySelectorAll('#flows-map svg path:not([marker-end])').length");
    assert!(zones.as_u64().unwrap_or(0) >= 16, "{zones} zone outlines");
    // The charts are on screen, not only in the DOM.
    let hidden = d.js("return [...document.querySelectorAll('.svg-chart')]
         .filter(c => c.closest('section').dataset.state === 'ready' && c.getBoundingClientRect().height < 50)
         .map(c => c.id).join(' ')");
    assert_eq!(hidden, json!(""), "charts drawn but not shown");

    // Every page in both languages: no key missing from the catalogue, and
    // no English sentence left in the French page (the dataset's own title
    // comes from its policy and problem details from the server: both are
    // shown as written).
    let ready = [
        ("", "return window.hexflow && window.hexflow.ready === true"),
        (
            "views",
            "return document.body.dataset.state === 'ready'
               && ![...document.querySelectorAll('section[data-state]')].some(s => s.dataset.state === 'loading')",
        ),
        (
            "transparency",
            "return document.querySelectorAll('#release-list tbody tr').length > 0",
        ),
    ];
    for lang in ["en", "fr"] {
        for (page, is_ready) in ready {
            d.call("POST", "/url", json!({ "url": format!("{url}{page}?lang={lang}") }));
            d.wait_for(is_ready, &format!("/{page} in {lang}"));
            let missing = d.call(
                "POST",
                "/execute/async",
                json!({"script": "const done = arguments[arguments.length - 1];
                    import('/web/i18n.js').then(m => done([document.documentElement.lang, [...m.missing]]),
                      e => done(String(e)));", "args": []}),
            );
            assert_eq!(missing, json!([lang, []]), "/{page} in {lang}: keys missing");
            if lang == "fr" {
                let english = d.js(
                    "const words = /\\b(the|of|and|with|per|hours?|days?|weeks?|months?|releases?|devices|people|show|loading|spent|below|error bar)\\b/i;
                     // The server's problem details (status line, a view's error) stay in English.
                     const server = [document.getElementById('dataset-title'), document.getElementById('status'),
                                     ...document.querySelectorAll('.view-error')].map(e => e ? e.innerText : '');
                     let body = document.body.innerText;
                     for (const t of server) if (t) body = body.split(t).join('');
                     const texts = [body];
                     for (const e of document.querySelectorAll('[title], [aria-label], [placeholder]'))
                       for (const a of ['title', 'aria-label', 'placeholder']) if (e.getAttribute(a)) texts.push(e.getAttribute(a));
                     // API paths (/api/v1/ledger/releases) are names, not English.
                     return texts.flatMap(t => t.split('\\n'))
                       .filter(l => words.test(l.replace(/\\/[\\w\\/.{}-]+/g, ''))).slice(0, 10);",
                );
                assert_eq!(english, json!([]), "/{page} in French still has English");
            }
        }
    }
    // The switch changes the language and keeps the map's state.
    d.call("POST", "/url", json!({ "url": at_bin(5) }));
    d.wait_for(
        "return window.hexflow && window.hexflow.ready === true && document.body.dataset.bin === '5'",
        "bin 5 in English",
    );
    d.js(
        "const s = document.getElementById('lang'); s.value = 'fr'; s.dispatchEvent(new Event('change')); return true;",
    );
    d.wait_for(
        "return document.documentElement.lang === 'fr' && window.hexflow && window.hexflow.ready === true
           && document.body.dataset.bin === '5'",
        "the same bin in French after the switch",
    );
    let nav = d.js("return document.querySelector('.site-nav a').textContent");
    assert_eq!(nav, json!("Carte"));
}

/// `hexflow bench --serve --against` loads a server that is already
/// running: every answer it asks for is a 2xx (it stops on any other), it
/// reaches tiles and values that exist on a demo of three days (not the
/// year it was written for), and it only reads: the ledger is the same
/// after it.
#[test]
fn bench_serve_loads_a_running_server_and_charges_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, url) = start_demo(dir.path());
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let ledger_before = http(port, "GET", "/api/v1/ledger", None).expect("ledger");
    let out = Command::new(env!("CARGO_BIN_EXE_hexflow"))
        .args(["bench", "--serve", "--against", &addr, "--seconds", "0.3", "--json"])
        .output()
        .expect("run hexflow bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert_eq!(report["against"], json!(addr));
    assert!(
        report["first_start"].is_null() && report["restart"].is_null(),
        "{report}"
    );
    let loads = report["load"].as_array().expect("loads");
    assert_eq!(loads.len(), 6, "{report}");
    for l in loads {
        assert!(l["requests"].as_u64().unwrap_or(0) > 0, "nothing answered: {l}");
        assert!(l["mean_bytes"].as_f64().unwrap_or(0.0) > 0.0, "empty answers: {l}");
        assert!(l["p50_ms"].as_f64().unwrap_or(-1.0) > 0.0, "{l}");
    }
    assert!(
        loads[0]["what"].as_str().is_some_and(|w| w.contains("never drawn")),
        "the first load is of cold tiles: {report}"
    );
    let ledger_after = http(port, "GET", "/api/v1/ledger", None).expect("ledger");
    assert_eq!(ledger_before, ledger_after, "loading public answers charged something");
}
