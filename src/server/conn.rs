//! Connections: the accept loop, its bound on open connections and the
//! timeouts that close what a slow or silent client holds open.
//!
//! `axum::serve` has none of these: 2,000 slowloris connections (idle,
//! trickled headers, slow bodies, slow uploads) stayed open until the
//! process ran out of files (issue 23). Here each accepted connection is
//! served by hyper's HTTP/1 server directly, with
//!
//! * an **idle** timeout: a connection with no byte of a request for
//!   `idle` (a fresh one, or a keep-alive one after its last answer) is
//!   closed; so is one whose client stops reading an answer for that long;
//! * a **header** timeout: once a request's first byte has come, its headers
//!   must be complete within `header` (hyper's header read timeout, with a
//!   timer that starts it at that first byte, so that keep-alive may last
//!   longer than a header may take);
//! * a **body** timeout ([`slow_bodies`]): every KiB of a request body must
//!   come within `body` of the previous one, else the request is answered
//!   408 and the connection closed;
//! * at most `max_connections` connections at once: the next ones wait in
//!   the listen backlog until one closes, never refused by the process nor
//!   crashing it for want of files.
//!
//! Ctrl-C (or the shutdown future) stops accepting, lets the answers in
//! flight finish and closes idle connections at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{AppState, Problem};

/// How long a client may take, and how many may be connected at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// From a request's first byte to the end of its headers.
    pub header: Duration,
    /// With no byte of a request coming (new and keep-alive connections),
    /// or an answer not being read.
    pub idle: Duration,
    /// Longest wait for each KiB of a request body.
    pub body: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            body: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Bytes of a request body that must come within each body timeout.
pub const BODY_PROGRESS_BYTES: usize = 1024;

/// Files kept for other uses than connections (releases, the ledger, logs)
/// when `max_connections` is checked against the process's file limit.
const FILES_BESIDE_CONNECTIONS: u64 = 256;

/// Connection counts for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicUsize,
    /// Most connections open at once so far.
    pub peak: AtomicUsize,
    pub accepted: AtomicU64,
    /// Connections closed by each timeout.
    pub idle_timeouts: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub write_timeouts: AtomicU64,
    /// The bound in force (after the file limit was looked at).
    pub limit: AtomicUsize,
}

/// Raises the soft limit on open files to the hard one, and returns the
/// number of connections that fit under it beside the server's other files.
fn connections_that_fit(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
        lim = getrlimit(Resource::Nofile);
    }
    match lim.current {
        Some(files) => {
            let fit = files.saturating_sub(FILES_BESIDE_CONNECTIONS).max(1);
            usize::try_from(fit).map_or(wanted, |fit| wanted.min(fit))
        }
        None => wanted,
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for
/// the answers in flight.
pub async fn serve_connections(
    state: Arc<AppState>,
    app: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.limits;
    let max = connections_that_fit(limits.max_connections);
    if max < limits.max_connections {
        tracing::warn!(
            "--max-connections {} does not fit under the open-file limit: at most {max} connections",
            limits.max_connections
        );
    }
    let stats = &state.metrics.connections;
    stats.limit.store(max, Ordering::Relaxed);
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    // `stop` tells connections to finish; `done` closes when the last ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: past the bound, connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(open, Ordering::Relaxed);
        let (state, app, stop, done) = (state.clone(), app.clone(), stop_rx.clone(), done_tx.clone());
        tokio::spawn(async move {
            serve_one(&state, app, tcp, limits, stop).await;
            state.metrics.connections.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    // Every connection task holds a sender: `None` once all have ended.
    let _ = done_rx.recv().await;
    Ok(())
}

/// An accept that failed: a connection reset before it was taken is
/// nothing; anything else (out of files) is logged and waited out.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!("accepting a connection failed (waiting a second): {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_one(
    state: &AppState,
    app: Router,
    tcp: TcpStream,
    limits: ConnLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let clock = Arc::new(Clock::default());
    let io = TokioIo::new(Watched {
        inner: tcp,
        clock: clock.clone(),
        idle: limits.idle,
        stalled: None,
    });
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(RequestTimer {
            clock: clock.clone(),
            header: limits.header,
            idle: limits.idle,
        })
        .header_read_timeout(limits.header);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    let stats = &state.metrics.connections;
    if let Err(e) = result {
        if e.is_timeout() {
            let counter = match clock.fired() {
                Fired::Idle => &stats.idle_timeouts,
                Fired::Header => &stats.header_timeouts,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        } else if clock.write_timed_out.load(Ordering::Relaxed) {
            stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::debug!("connection ended: {e}");
        }
    }
}

/// What a connection's reads told its request timer.
#[derive(Debug, Default)]
struct Clock {
    /// When the first byte came since the server began waiting for a
    /// request (`None`: none yet).
    first_byte: Mutex<Option<Instant>>,
    /// The request timer fired while no byte had come.
    idle_fired: AtomicBool,
    /// A write waited longer than the idle timeout.
    write_timed_out: AtomicBool,
}

enum Fired {
    Idle,
    Header,
}

impl Clock {
    fn first_byte(&self) -> Option<Instant> {
        *self
            .first_byte
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn waiting_for_request(&self) {
        *self
            .first_byte
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn saw_bytes(&self) {
        let mut f = self
            .first_byte
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.is_none() {
            *f = Some(Instant::now());
        }
    }

    fn fired(&self) -> Fired {
        if self.idle_fired.load(Ordering::Relaxed) {
            Fired::Idle
        } else {
            Fired::Header
        }
    }
}

/// hyper's timer for one connection. hyper arms it when it starts waiting
/// for a request's headers, with a deadline `header` ahead; this timer
/// moves that deadline to `idle` after the wait began while no byte has
/// come, and to `header` after the first byte once one has.
struct RequestTimer {
    clock: Arc<Clock>,
    header: Duration,
    idle: Duration,
}

impl hyper::rt::Timer for RequestTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // Not used by HTTP/1 servers; a plain sleep all the same.
        Box::pin(PlainSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.clock.waiting_for_request();
        let waiting_since = deadline.checked_sub(self.header).unwrap_or(deadline);
        Box::pin(RequestSleep {
            clock: self.clock.clone(),
            waiting_since,
            header: self.header,
            idle: self.idle,
            sleep: Box::pin(tokio::time::sleep_until((waiting_since + self.idle).into())),
        })
    }
}

struct PlainSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for PlainSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

struct RequestSleep {
    clock: Arc<Clock>,
    waiting_since: Instant,
    header: Duration,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for RequestSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this after every read of the headers, so a first
        // byte is seen here as soon as it came.
        let first = self.clock.first_byte();
        let deadline = match first {
            Some(t) => t.max(self.waiting_since) + self.header,
            None => self.waiting_since + self.idle,
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.clock.idle_fired.store(first.is_none(), Ordering::Relaxed);
        Poll::Ready(())
    }
}

impl hyper::rt::Sleep for RequestSleep {}

/// A connection's socket that tells its clock when bytes come, and fails a
/// write that waited longer than `idle` (a client that stopped reading).
struct Watched {
    inner: TcpStream,
    clock: Arc<Clock>,
    idle: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watched {
    /// After a write returned `Pending`: an error once it has waited `idle`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let idle = self.idle;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(sleep.as_mut().poll(cx));
        self.clock.write_timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client read nothing of the answer for the idle timeout",
        ))
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.saw_bytes();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.poll_stall(cx).map(Err),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.poll_stall(cx).map(Err),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Middleware: a request body must bring [`BODY_PROGRESS_BYTES`] (or end)
/// within every body timeout; a slower one is cut, the request answered
/// 408 and the connection closed.
pub async fn slow_bodies(State(state): State<Arc<AppState>>, req: Request, next: axum::middleware::Next) -> Response {
    let timeout = state.config.limits.body;
    // HTTP/1.1: a request has a body only when it says so.
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let cut = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        axum::body::Body::new(SlowBody {
            inner: body,
            timeout,
            got: 0,
            window: Box::pin(tokio::time::sleep(timeout)),
            cut: cut.clone(),
        })
    });
    let resp = next.run(req).await;
    if !cut.load(Ordering::Relaxed) {
        return resp;
    }
    state.metrics.connections.body_timeouts.fetch_add(1, Ordering::Relaxed);
    let mut resp = Problem::new(
        StatusCode::REQUEST_TIMEOUT,
        "body too slow",
        format!(
            "the request body brought less than {BODY_PROGRESS_BYTES} bytes in {} s; send it at once",
            timeout.as_secs_f64()
        ),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request body cut when it is too slow (see [`slow_bodies`]).
struct SlowBody {
    inner: axum::body::Body,
    timeout: Duration,
    /// Bytes since the current window began.
    got: usize,
    window: Pin<Box<tokio::time::Sleep>>,
    cut: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body was too slow")]
struct BodyTooSlow;

impl http_body::Body for SlowBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BodyTooSlow.into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.got += frame.data_ref().map_or(0, |d| d.len());
                if self.got >= BODY_PROGRESS_BYTES {
                    self.got = 0;
                    let next = tokio::time::Instant::now() + self.timeout;
                    self.window.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                ready!(self.window.as_mut().poll(cx));
                self.cut.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyTooSlow.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
