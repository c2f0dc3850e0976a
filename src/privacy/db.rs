//! The database under the ledger: SQLite in the data dir (the embedded
//! default) or PostgreSQL (one ledger shared by several machines).
//!
//! Both backends run the same SQL, written once with `?N` placeholders and
//! portable types (`CAST(… AS BIGINT)`, `TEXT`), and the same numbered
//! migrations. What differs is kept here: how a write transaction excludes
//! the others (SQLite: `BEGIN IMMEDIATE`, one writer per file; PostgreSQL:
//! a transaction-scoped advisory lock per dataset, so that two machines
//! charging one dataset queue on it exactly as two processes do on the
//! SQLite file), the clock of leases (the database's own, so that machines
//! with skewed clocks agree), and the pool: a PostgreSQL connection costs a
//! round trip or more to open, so each process keeps a pool per URL.
//!
//! PostgreSQL is a server that can go away. Every connection has short
//! timeouts ([`Timeouts`]: connect, pool checkout, statement, lock and
//! idle-in-transaction, plus TCP's user timeout and keepalives, so that a
//! black-holed network fails a statement instead of hanging it), so that
//! an outage is an error within seconds, which callers retry
//! ([`DbError::is_transient`]) or report; [`probe`] answers "is the ledger
//! there" without ever waiting longer than its caller allows. Connections
//! are TLS-protected as the URL's `sslmode` asks (libpq's five modes,
//! with `sslrootcert` or `HEXFLOW_LEDGER_CA` naming the CA file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use r2d2_postgres::{PostgresConnectionManager, postgres, r2d2};

/// Where the ledger lives: `sqlite:PATH` or `postgres://…`. Printed (also
/// with `{:?}`, so in panics and assertions) without its password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum LedgerUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl LedgerUrl {
    /// The embedded default: `<data-dir>/hexflow.sqlite`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::Sqlite(data_dir.join("hexflow.sqlite"))
    }

    /// `--ledger` / `HEXFLOW_LEDGER`: `sqlite:PATH`, `postgres://…` or
    /// `postgresql://…`; none means the data dir's SQLite file.
    pub fn resolve(arg: Option<&str>, data_dir: &Path) -> Result<Self, DbError> {
        match arg.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(Self::in_data_dir(data_dir)),
            Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                let url = Self::Postgres(s.to_string());
                pg_target(s, &url)?;
                Ok(url)
            }
            Some(s) => match s.strip_prefix("sqlite:") {
                Some(path) if !path.is_empty() => Ok(Self::Sqlite(PathBuf::from(path.trim_start_matches("//")))),
                _ => Err(DbError::BadUrl {
                    url: redact(s),
                    why: "expected sqlite:PATH or postgres://USER@HOST:PORT/DB".into(),
                }),
            },
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// The `--ledger` value naming this ledger, password included (for
    /// child processes, through the environment; never for display).
    pub fn to_arg(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite:{}", p.display()),
            Self::Postgres(u) => u.clone(),
        }
    }

    /// Binds `data_dir` to this ledger, once: a data dir charged to any
    /// ledger other than its own SQLite file records it (`ledger.url`, the
    /// URL without password), and from then on refuses every other ledger,
    /// its own file included: releases charged to two ledgers would each
    /// see only part of the spending. A data dir whose own SQLite file
    /// already holds releases is never bound elsewhere, where the caps
    /// would not count them.
    pub fn bind(&self, data_dir: &Path) -> Result<(), DbError> {
        let shown = self.to_string();
        let own = *self == Self::in_data_dir(data_dir);
        match bound_ledger(data_dir) {
            Some(bound) if !own && bound == shown => Ok(()),
            Some(bound) => Err(DbError::Bound {
                data_dir: data_dir.to_path_buf(),
                bound,
                asked: shown,
            }),
            None if own => Ok(()),
            None => {
                // Only a ledger that answers binds the data dir: an
                // unreachable or mistyped URL must leave it free for the
                // right one (connecting also brings the schema up).
                if self.is_postgres() {
                    Db::open(self)?;
                }
                let releases = own_releases(data_dir)?;
                if releases > 0 {
                    return Err(DbError::SqliteHistory {
                        data_dir: data_dir.to_path_buf(),
                        releases,
                        asked: shown,
                    });
                }
                let marker = data_dir.join(BOUND_MARKER);
                let _ = std::fs::create_dir_all(data_dir);
                crate::util::write_atomic(&marker, format!("{shown}\n").as_bytes()).map_err(|e| DbError::Connect {
                    url: marker.display().to_string(),
                    why: format!("cannot record the ledger of the data dir: {e}"),
                })
            }
        }
    }

    /// Refuses to open a data dir's own SQLite file once the data dir is
    /// bound to another ledger, whatever command or code path asks (a
    /// check only: opening a SQLite file elsewhere binds nothing).
    fn check_own_file(&self) -> Result<(), DbError> {
        let Self::Sqlite(path) = self else { return Ok(()) };
        match path.parent() {
            Some(dir) if *self == Self::in_data_dir(dir) => match bound_ledger(dir) {
                Some(bound) => Err(DbError::Bound {
                    data_dir: dir.to_path_buf(),
                    bound,
                    asked: self.to_string(),
                }),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// How many releases the data dir's own SQLite ledger holds (0 without
/// the file); an unreadable file is an error, never "none".
fn own_releases(data_dir: &Path) -> Result<i64, DbError> {
    let own = LedgerUrl::in_data_dir(data_dir);
    let LedgerUrl::Sqlite(path) = &own else { return Ok(0) };
    if !path.exists() {
        return Ok(0);
    }
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM releases", [], |r| r.get(0)))
        .map_err(lite_err(&own))
}

/// The file that binds a data dir to a ledger other than its own file.
const BOUND_MARKER: &str = "ledger.url";

/// The PostgreSQL ledger `data_dir` is bound to, if any.
fn bound_ledger(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(BOUND_MARKER))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The URL without its password: what messages, markers and logs show.
impl std::fmt::Debug for LedgerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerUrl({self})")
    }
}

impl std::fmt::Display for LedgerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`; a
/// `password=` key of the query string likewise.
fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        if let Some(at) = rest.find('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let (a, b) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
            out.replace_range(a..b, "***");
        }
    }
    if let Some(i) = out.find("password=") {
        let end = out[i..].find('&').map_or(out.len(), |e| i + e);
        out.replace_range(i + "password=".len()..end, "***");
    }
    out
}

/// Errors of the database layer; messages name the ledger by its redacted URL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    // The causes are in the messages, not `source`s: printed with their
    // chains they would say "database is locked" three times.
    #[error("ledger {url}: {cause}")]
    Sqlite { url: String, cause: rusqlite::Error },
    #[error("ledger {url}: {}", pg_detail(.cause))]
    Postgres { url: String, cause: postgres::Error },
    #[error(
        "ledger {url}: cannot connect: {why} (is PostgreSQL running, and does the URL name its user and database?)"
    )]
    Connect { url: String, why: String },
    #[error("ledger URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("ledger {url}: TLS: {why}")]
    Tls { url: String, why: String },
    #[error(
        "ledger {url}: the session holding the release lock of {lock} ended; the release was stopped before drawing noise or storing what it drew (its charge, if made, is kept and a rerun finishes it)"
    )]
    LockLost { url: String, lock: String },
    #[error(
        "the data dir {data_dir} charges the ledger {bound}, not {asked}: pass --ledger (or set HEXFLOW_LEDGER) to that ledger on every machine and command"
    )]
    Bound {
        data_dir: PathBuf,
        bound: String,
        asked: String,
    },
    #[error(
        "the data dir {data_dir} has {releases} release(s) charged to its SQLite ledger; a new ledger at {asked} would not count them against the caps. Use a fresh data dir for a shared ledger"
    )]
    SqliteHistory {
        data_dir: PathBuf,
        releases: i64,
        asked: String,
    },
    #[error("release lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {url} has schema version {found}, newer than this hexflow ({known})")]
    TooNew { url: String, found: i64, known: i64 },
    #[error("ledger {url}: column {column} holds {found}, expected {expected}")]
    Type {
        url: String,
        column: usize,
        found: &'static str,
        expected: &'static str,
    },
}

impl DbError {
    /// Whether the error is the database being away (a lost or refused
    /// connection, a server shutting down or starting, a timeout) rather
    /// than a fault of the request: what a worker retries with backoff.
    /// A lost release lock is one too (a rerun finishes the release).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::LockLost { .. } => true,
            Self::Postgres { cause, .. } => match cause.code() {
                Some(code) => {
                    use postgres::error::SqlState;
                    let c = code.code();
                    c.starts_with("08")
                        || [
                            SqlState::ADMIN_SHUTDOWN,
                            SqlState::CRASH_SHUTDOWN,
                            SqlState::CANNOT_CONNECT_NOW,
                            SqlState::TOO_MANY_CONNECTIONS,
                            SqlState::QUERY_CANCELED,
                            SqlState::LOCK_NOT_AVAILABLE,
                            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                        ]
                        .contains(code)
                }
                // No server code: the connection itself failed (closed,
                // reset, timed out), not a statement.
                None => {
                    cause.is_closed()
                        || std::error::Error::source(cause)
                            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
                }
            },
            Self::Sqlite {
                cause: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

/// Whether the ledger answers (a connection and a round trip) within
/// `wait`; `Err` says why not. Never waits longer than `wait`, however
/// the network behaves: on PostgreSQL the check runs on a thread of its
/// own, one at a time per URL, and callers that come while one runs wait
/// for its answer (a `/healthz` polled during an outage starts no pile of
/// hanging checks). What `/healthz` answers.
pub fn probe(url: &LedgerUrl, wait: Duration) -> Result<(), String> {
    if !url.is_postgres() {
        return Db::open(url).map(drop).map_err(|e| e.to_string());
    }
    #[derive(Default)]
    struct Probe {
        running: bool,
        done: u64,
        last: Option<Result<(), String>>,
    }
    type Slot = std::sync::Arc<(Mutex<Probe>, std::sync::Condvar)>;
    static PROBES: OnceLock<Mutex<HashMap<LedgerUrl, Slot>>> = OnceLock::new();
    let slot: Slot = PROBES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(url.clone())
        .or_default()
        .clone();
    let (lock, ready) = &*slot;
    let mut p = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen = p.done;
    if !p.running {
        p.running = true;
        let (slot, url) = (slot.clone(), url.clone());
        let started = std::thread::Builder::new().name("ledger-probe".into()).spawn(move || {
            let r = Db::open(&url)
                .and_then(|mut db| db.row("SELECT 1", &[]).map(drop))
                .map_err(|e| e.to_string());
            let (lock, ready) = &*slot;
            let mut p = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            p.running = false;
            p.done += 1;
            p.last = Some(r);
            ready.notify_all();
        });
        if let Err(e) = started {
            p.running = false;
            return Err(format!("cannot start the ledger check: {e}"));
        }
    }
    let (p, _) = ready
        .wait_timeout_while(p, wait, |p| p.done == seen)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if p.done == seen {
        return Err(format!("{url}: no answer within {} ms", wait.as_millis()));
    }
    p.last.clone().unwrap_or(Ok(()))
}

/// A parameter of a statement.
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    I(i64),
    T(&'a str),
}

/// A value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    I(i64),
    T(String),
}

/// One result row, read by column index with the expected type.
pub struct Row<'u> {
    values: Vec<V>,
    url: &'u LedgerUrl,
}

impl Row<'_> {
    fn mismatch(&self, column: usize, expected: &'static str) -> DbError {
        let found = match self.values.get(column) {
            None => "nothing",
            Some(V::Null) => "NULL",
            Some(V::I(_)) => "an integer",
            Some(V::T(_)) => "text",
        };
        DbError::Type {
            url: self.url.to_string(),
            column,
            found,
            expected,
        }
    }

    pub fn int(&self, column: usize) -> Result<i64, DbError> {
        match self.values.get(column) {
            Some(V::I(v)) => Ok(*v),
            _ => Err(self.mismatch(column, "an integer")),
        }
    }

    pub fn text(&self, column: usize) -> Result<String, DbError> {
        match self.values.get(column) {
            Some(V::T(v)) => Ok(v.clone()),
            _ => Err(self.mismatch(column, "text")),
        }
    }

    pub fn opt_text(&self, column: usize) -> Result<Option<String>, DbError> {
        match self.values.get(column) {
            Some(V::Null) => Ok(None),
            _ => self.text(column).map(Some),
        }
    }
}

type Tls = postgres_openssl::MakeTlsConnector;
type PgPool = r2d2::Pool<PostgresConnectionManager<Tls>>;
type PgConn = r2d2::PooledConnection<PostgresConnectionManager<Tls>>;

enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

/// One connection to the ledger database.
pub struct Db {
    conn: Conn,
    url: LedgerUrl,
    /// Inside `begin*` … `commit`: dropped without a commit, the
    /// transaction is rolled back (a pooled connection must go back clean).
    in_tx: bool,
}

/// Advisory-lock class ids (the first key of PostgreSQL's two-key
/// advisory locks): 'h','x' followed by a purpose byte.
const LOCK_MIGRATE: i32 = 0x6878_0001;
const LOCK_CHARGE: i32 = 0x6878_0002;
const LOCK_RELEASE: i32 = 0x6878_0003;

/// A pool and whether this process has brought its schema up to date:
/// the check costs round trips, and `Db::open` runs on every API request
/// that asks the ledger.
#[derive(Clone)]
struct PgPoolEntry {
    pool: PgPool,
    migrated: std::sync::Arc<std::sync::atomic::AtomicBool>,
    target: std::sync::Arc<PgTarget>,
    last_error: LastError,
}

/// The pool's last failure to connect, in words ([`pg_detail`]): r2d2
/// keeps only the driver's `Display`, which for a server's refusal says
/// "db error" and nothing of why. Logged at debug level, where r2d2's own
/// handler would log every retry as an error.
#[derive(Debug, Clone, Default)]
struct LastError(std::sync::Arc<Mutex<Option<String>>>);

impl r2d2::HandleError<postgres::Error> for LastError {
    fn handle_error(&self, e: postgres::Error) {
        let why = pg_detail(&e);
        tracing::debug!("ledger connection failed: {why}");
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }
}

/// Each process keeps one pool per PostgreSQL URL, migrated once.
fn pool(url: &str, shown: &LedgerUrl) -> Result<PgPoolEntry, DbError> {
    static POOLS: OnceLock<Mutex<HashMap<String, PgPoolEntry>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = pools.get(url) {
        return Ok(p.clone());
    }
    let target = pg_target(url, shown)?;
    let last_error = LastError::default();
    let manager = PostgresConnectionManager::new(target.config.clone(), target.tls(shown)?);
    let p = r2d2::Pool::builder()
        .max_size(16)
        .min_idle(Some(0))
        .connection_timeout(target.timeouts.checkout)
        .error_handler(Box::new(last_error.clone()))
        .build(manager)
        .map_err(|e| DbError::Connect {
            url: shown.to_string(),
            why: e.to_string(),
        })?;
    let entry = PgPoolEntry {
        pool: p,
        migrated: std::sync::Arc::default(),
        target: std::sync::Arc::new(target),
        last_error,
    };
    pools.insert(url.to_string(), entry.clone());
    Ok(entry)
}

/// How long a PostgreSQL ledger may keep hexflow waiting. The defaults
/// keep an outage an error within seconds while leaving room for the
/// waits that are part of the design:
///
/// * `connect` 3 s (`connect_timeout=` of the URL overrides it): a
///   connection on a working network takes milliseconds;
/// * `checkout` = connect + 2 s: a pooled connection, including one
///   attempt to open a new one;
/// * `statement` 30 s and `lock` 20 s (`options=-c statement_timeout=…`
///   of the URL overrides them): the longest legitimate wait of a ledger
///   statement is a charge queueing on its dataset's advisory lock behind
///   the other charges of that dataset, each of which holds it for a few
///   statements and one commit (milliseconds), so even a hundred
///   concurrent charges wait well under a second; the lock timeout is the
///   shorter so that such a wait fails as "lock timeout", naming its cause;
/// * `idle_in_transaction` 60 s: a process stopped (SIGSTOP, a debugger)
///   inside a charge frees its dataset's lock instead of blocking every
///   other charge of it;
/// * TCP user timeout 20 s and keepalives after 10 s: a network that drops
///   packets without a reset breaks the connection instead of hanging a
///   statement for the kernel's 15 minutes.
///
/// The release lock's own session waits without a statement or lock
/// timeout: it queues behind another process's release of the same id,
/// which takes as long as that release takes (see [`ReleaseLock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub checkout: Duration,
    pub statement: Duration,
    pub lock: Duration,
    pub idle_in_transaction: Duration,
    pub tcp_user: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            checkout: Duration::from_secs(5),
            statement: Duration::from_secs(30),
            lock: Duration::from_secs(20),
            idle_in_transaction: Duration::from_secs(60),
            tcp_user: Duration::from_secs(20),
        }
    }
}

/// How a PostgreSQL connection is protected: the URL's `sslmode`, with
/// libpq's meanings (`prefer` when absent, as libpq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified; plain TCP otherwise.
    Prefer,
    /// TLS or no connection; the certificate is verified against the CA
    /// file when one is given (libpq's rule), not otherwise.
    Require,
    /// TLS, the server's certificate signed by the CA file's CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// A PostgreSQL ledger URL read: the driver's settings (timeouts and the
/// TLS mode it knows applied) and what hexflow does itself (the TLS
/// verification, the pool's checkout timeout).
#[derive(Clone)]
pub struct PgTarget {
    pub config: postgres::Config,
    pub ssl: SslMode,
    /// The CA file certificates are verified against (`sslrootcert=`, or
    /// `HEXFLOW_LEDGER_CA`); the system's CAs when none.
    pub root_cert: Option<PathBuf>,
    pub timeouts: Timeouts,
}

impl PgTarget {
    /// Whether the server's certificate is checked against a CA.
    fn verifies(&self) -> bool {
        match self.ssl {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }

    /// The TLS connector for this URL's `sslmode` and CA file.
    fn tls(&self, shown: &LedgerUrl) -> Result<Tls, DbError> {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let err = |why: String| DbError::Tls {
            url: shown.to_string(),
            why,
        };
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| err(e.to_string()))?;
        if self.verifies() {
            match &self.root_cert {
                Some(ca) if !ca.is_file() => {
                    return Err(err(format!(
                        "the CA file {} (sslrootcert) does not exist",
                        ca.display()
                    )));
                }
                Some(ca) => b
                    .set_ca_file(ca)
                    .map_err(|e| err(format!("cannot read the CA file {}: {e}", ca.display())))?,
                None => b
                    .set_default_verify_paths()
                    .map_err(|e| err(format!("cannot read the system's CA certificates: {e}")))?,
            }
            b.set_verify(SslVerifyMode::PEER);
        } else {
            b.set_verify(SslVerifyMode::NONE);
        }
        let mut tls = postgres_openssl::MakeTlsConnector::new(b.build());
        let hostname = self.ssl == SslMode::VerifyFull;
        tls.set_callback(move |c, _| {
            c.set_verify_hostname(hostname);
            Ok(())
        });
        Ok(tls)
    }

    /// A connection of its own (not pooled), with `options` after the
    /// defaults (later settings win).
    fn connect(&self, shown: &LedgerUrl, options: &str) -> Result<postgres::Client, DbError> {
        let mut config = self.config.clone();
        let joined = format!("{} {options}", config.get_options().unwrap_or_default());
        config.options(joined.trim());
        config
            .connect(self.tls(shown)?)
            .map_err(|e| connect_error(shown, self, &pg_detail(&e)))
    }
}

/// A failed connection in words: a certificate that does not verify is
/// said so, with what to check (not "is PostgreSQL running").
fn connect_error(shown: &LedgerUrl, target: &PgTarget, why: &str) -> DbError {
    let tls = [
        "certificate verify failed",
        "TLS handshake",
        "server does not support TLS",
        "SSL routines",
    ];
    if target.ssl != SslMode::Disable && tls.iter().any(|t| why.contains(t)) {
        let ca = target.root_cert.as_ref().map_or_else(
            || "the system's CAs".to_string(),
            |p| format!("the CA file {}", p.display()),
        );
        let mode = format!("{:?}", target.ssl).to_lowercase();
        return DbError::Tls {
            url: shown.to_string(),
            why: format!(
                "the server's certificate was refused (sslmode {mode}, checked against {ca}): {why}; give the CA that signed the server's certificate (sslrootcert= in the URL, or HEXFLOW_LEDGER_CA)"
            ),
        };
    }
    DbError::Connect {
        url: shown.to_string(),
        why: why.to_string(),
    }
}

/// Reads a PostgreSQL ledger URL: `sslmode` (all of libpq's values) and
/// `sslrootcert` are hexflow's to apply (the driver knows only three
/// modes and no CA file); the rest is the driver's, with [`Timeouts`]'
/// defaults where the URL sets none.
pub fn pg_target(url: &str, shown: &LedgerUrl) -> Result<PgTarget, DbError> {
    let bad = |why: String| DbError::BadUrl {
        url: shown.to_string(),
        why,
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut ssl, mut root_cert) = (SslMode::Prefer, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => ssl = v.parse().map_err(bad)?,
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v))),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: postgres::Config = rest.parse().map_err(|e: postgres::Error| bad(e.to_string()))?;
    if root_cert.is_none() {
        root_cert = std::env::var_os("HEXFLOW_LEDGER_CA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
    }
    let mut timeouts = Timeouts::default();
    match config.get_connect_timeout() {
        Some(t) => timeouts.connect = *t,
        None => {
            config.connect_timeout(timeouts.connect);
        }
    }
    timeouts.checkout = timeouts.connect + Duration::from_secs(2);
    let ms = |d: Duration| d.as_millis();
    let defaults = format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        ms(timeouts.statement),
        ms(timeouts.lock),
        ms(timeouts.idle_in_transaction)
    );
    // The URL's own options after ours: PostgreSQL applies them in order.
    let options = format!("{defaults} {}", config.get_options().unwrap_or_default());
    config.options(options.trim());
    config
        .tcp_user_timeout(timeouts.tcp_user)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(3))
        .keepalives_retries(3)
        .ssl_mode(match ssl {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
    Ok(PgTarget {
        config,
        ssl,
        root_cert,
        timeouts,
    })
}

/// `%2F` → `/` (a CA file's path in a URL's query string).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pooled connection to the PostgreSQL ledger `url` (shown as `shown`).
fn pg_conn(entry: &PgPoolEntry, shown: &LedgerUrl) -> Result<PgConn, DbError> {
    entry.pool.get().map_err(|e| {
        let last = entry
            .last_error
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let why = match last {
            Some(why) => format!("{e} ({why})").replace(": db error (", " ("),
            None => e.to_string(),
        };
        connect_error(shown, &entry.target, &why)
    })
}

/// Migrations, numbered alike on both backends: the SQL, and PostgreSQL's
/// own where it must differ. Integers are `BIGINT` (nano-ρ sums pass 2^31
/// on PostgreSQL; SQLite reads it as INTEGER).
const MIGRATIONS: &[(&str, Option<&str>)] = &[
    // 1: releases and their per-day charges.
    (
        "CREATE TABLE releases (
            release_id TEXT PRIMARY KEY,
            dataset TEXT NOT NULL,
            audience TEXT NOT NULL,
            rho_units BIGINT NOT NULL CHECK (rho_units > 0),
            state TEXT NOT NULL CHECK (state IN ('charged', 'published')),
            spec_json TEXT NOT NULL,
            charged_at TEXT NOT NULL,
            published_at TEXT
         );
         CREATE TABLE charges (
            release_id TEXT NOT NULL REFERENCES releases(release_id),
            dataset TEXT NOT NULL,
            audience TEXT NOT NULL,
            day TEXT NOT NULL,
            rho_units BIGINT NOT NULL CHECK (rho_units > 0),
            PRIMARY KEY (release_id, day)
         );
         CREATE INDEX charges_by_day ON charges (dataset, day, audience);",
        None,
    ),
    // 2: API tokens, stored as SHA-256 digests (the token is shown once).
    (
        "CREATE TABLE tokens (
            token_sha256 TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CONSTRAINT tokens_role CHECK (role IN ('planner', 'admin')),
            created_at TEXT NOT NULL
         );",
        None,
    ),
    // 3: tourism tokens (SQLite cannot change a CHECK: copy the table).
    (
        "CREATE TABLE tokens_v3 (
            token_sha256 TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('planner', 'tourism', 'admin')),
            created_at TEXT NOT NULL
         );
         INSERT INTO tokens_v3 SELECT token_sha256, name, role, created_at FROM tokens;
         DROP TABLE tokens;
         ALTER TABLE tokens_v3 RENAME TO tokens;",
        Some(
            "ALTER TABLE tokens DROP CONSTRAINT tokens_role;
             ALTER TABLE tokens ADD CONSTRAINT tokens_role CHECK (role IN ('planner', 'tourism', 'admin'));",
        ),
    ),
    // 4: publication jobs shared by workers (`hexflow worker`): one row
    // per release of a plan run, claimed under a lease.
    (
        "CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            dataset TEXT NOT NULL,
            policy_path TEXT NOT NULL,
            rank BIGINT NOT NULL,
            spec_json TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
            worker TEXT,
            lease_until_ms BIGINT,
            attempts BIGINT NOT NULL DEFAULT 0,
            outcome TEXT,
            detail TEXT,
            rho_units BIGINT
         );
         CREATE INDEX jobs_queue ON jobs (state, rank);
         CREATE INDEX jobs_of_run ON jobs (run_id);",
        None,
    ),
    // 5: a counter of changes to the releases, bumped in the transaction
    // that makes them, so that a server learns whether the ledger changed
    // with one row's read instead of counting every release (PostgreSQL;
    // SQLite has `data_version` and keeps the table unused).
    (
        "CREATE TABLE ledger_changes (id BIGINT PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL);
         INSERT INTO ledger_changes (id, n) VALUES (1, 0);",
        Some(
            "CREATE TABLE ledger_changes (id BIGINT PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL);
             INSERT INTO ledger_changes (id, n) VALUES (1, 0);
             CREATE FUNCTION hexflow_ledger_changed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 UPDATE ledger_changes SET n = n + 1 WHERE id = 1;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER releases_changed AFTER INSERT OR UPDATE OR DELETE ON releases
                 FOR EACH STATEMENT EXECUTE FUNCTION hexflow_ledger_changed();",
        ),
    ),
    // 6: the same trigger also notifies LISTENers at commit (PostgreSQL),
    // so a server knows the ledger changed without asking per request.
    (
        "-- nothing: SQLite's data_version is read from memory",
        Some(
            "CREATE OR REPLACE FUNCTION hexflow_ledger_changed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 UPDATE ledger_changes SET n = n + 1 WHERE id = 1;
                 PERFORM pg_notify('hexflow_ledger_changes', '');
                 RETURN NULL;
             END $$;",
        ),
    ),
];

/// What [`listen_for_changes`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSignal {
    /// Listening (again): changes made before now may have been missed.
    Listening,
    /// A transaction that wrote the releases committed.
    Changed,
    /// The listening connection is lost; it is tried again each second.
    Lost,
    /// Nothing happened in the last second.
    Quiet,
}

/// On a PostgreSQL ledger, a thread that LISTENs for the notification the
/// releases' trigger sends at every commit (migration 6) and reports it;
/// it stops when `report` returns false. The connection is checked every
/// second, so a connection lost without an error is noticed within about
/// two. Nothing to do on SQLite (its `data_version` is in memory).
pub fn listen_for_changes(
    url: &LedgerUrl,
    mut report: impl FnMut(ChangeSignal) -> bool + Send + 'static,
) -> Result<(), DbError> {
    let LedgerUrl::Postgres(u) = url else {
        return Ok(());
    };
    let target = pg_target(u, url)?;
    let shown = url.clone();
    let spawned = std::thread::Builder::new().name("ledger-listen".into()).spawn(move || {
        let second = Duration::from_secs(1);
        loop {
            if let Ok(mut c) = target.connect(&shown, "")
                && c.batch_execute("LISTEN hexflow_ledger_changes").is_ok()
            {
                if !report(ChangeSignal::Listening) {
                    return;
                }
                loop {
                    use postgres::fallible_iterator::FallibleIterator;
                    let mut changed = false;
                    {
                        let mut notes = c.notifications();
                        let mut it = notes.timeout_iter(second);
                        // An error ends the second; the check below tells.
                        while let Ok(Some(_)) = it.next() {
                            changed = true;
                            if !report(ChangeSignal::Changed) {
                                return;
                            }
                        }
                    }
                    if c.is_valid(second).is_err() {
                        break;
                    }
                    if !changed && !report(ChangeSignal::Quiet) {
                        return;
                    }
                }
            }
            if !report(ChangeSignal::Lost) {
                return;
            }
            std::thread::sleep(second);
        }
    });
    spawned.map(drop).map_err(|e| DbError::Connect {
        url: url.to_string(),
        why: format!("cannot start the ledger listener: {e}"),
    })
}

impl Db {
    /// Connects (SQLite: opens the file; PostgreSQL: takes a pooled
    /// connection) and brings the schema up to date.
    pub fn open(url: &LedgerUrl) -> Result<Self, DbError> {
        let conn = match url {
            LedgerUrl::Sqlite(path) => {
                url.check_own_file()?;
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let err = lite_err(url);
                let conn = rusqlite::Connection::open(path).map_err(&err)?;
                conn.busy_timeout(Duration::from_secs(30)).map_err(&err)?;
                // Turning a new file to WAL takes an exclusive lock without
                // the busy handler: processes opening a new ledger at once
                // wait for each other here.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match conn.pragma_update(None, "journal_mode", "WAL") {
                        Ok(()) => break,
                        Err(rusqlite::Error::SqliteFailure(f, _))
                            if f.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => return Err(err(e)),
                    }
                }
                conn.pragma_update(None, "synchronous", "FULL").map_err(&err)?;
                conn.pragma_update(None, "foreign_keys", "ON").map_err(&err)?;
                let mut db = Self::new(Conn::Sqlite(conn), url);
                db.migrate()?;
                db
            }
            LedgerUrl::Postgres(u) => {
                let entry = pool(u, url)?;
                let mut db = Self::new(Conn::Postgres(Box::new(pg_conn(&entry, url)?)), url);
                if !entry.migrated.load(std::sync::atomic::Ordering::Acquire) {
                    db.migrate()?;
                    entry.migrated.store(true, std::sync::atomic::Ordering::Release);
                }
                db
            }
        };
        Ok(conn)
    }

    fn new(conn: Conn, url: &LedgerUrl) -> Self {
        Self {
            conn,
            url: url.clone(),
            in_tx: false,
        }
    }

    pub fn url(&self) -> &LedgerUrl {
        &self.url
    }

    fn pg_err(url: &LedgerUrl) -> impl Fn(postgres::Error) -> DbError + '_ {
        |cause| DbError::Postgres {
            url: url.to_string(),
            cause,
        }
    }

    /// The schema version (0 for an empty database).
    fn schema_version(&mut self) -> Result<i64, DbError> {
        match &mut self.conn {
            Conn::Sqlite(c) => c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(lite_err(&self.url)),
            Conn::Postgres(c) => {
                let e = Self::pg_err(&self.url);
                // A catalog scan, not `to_regclass`: that looks the name up
                // without a lock, so a backend that waited on the migration
                // lock can still hold a stale "no such table" cache entry
                // and migrate a second time (seen with 8 racing processes).
                let exists: bool = c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class k
                           JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace
                           WHERE k.relname = 'hexflow_schema' AND n.nspname = current_schema())",
                        &[],
                    )
                    .map_err(&e)?
                    .get(0);
                if !exists {
                    return Ok(0);
                }
                let row = c.query_opt("SELECT version FROM hexflow_schema", &[]).map_err(&e)?;
                Ok(row.map_or(0, |r| r.get::<_, i64>(0)))
            }
        }
    }

    /// Applies the missing migrations under the write lock. Only a ledger
    /// that needs migrating takes it, so readers never queue.
    fn migrate(&mut self) -> Result<(), DbError> {
        let known = MIGRATIONS.len() as i64;
        let check = |found: i64, url: &LedgerUrl| {
            if found > known {
                Err(DbError::TooNew {
                    url: url.to_string(),
                    found,
                    known,
                })
            } else {
                Ok(found)
            }
        };
        if check(self.schema_version()?, &self.url)? == known {
            return Ok(());
        }
        self.begin(LOCK_MIGRATE, "migrate")?;
        let result = (|| {
            // Re-read under the lock: another process may have migrated.
            let from = check(self.schema_version()?, &self.url)?;
            for (i, (lite, pg)) in MIGRATIONS.iter().enumerate().skip(from as usize) {
                let version = (i + 1) as i64;
                match &mut self.conn {
                    Conn::Sqlite(c) => {
                        let e = lite_err(&self.url);
                        c.execute_batch(lite).map_err(&e)?;
                        c.pragma_update(None, "user_version", version).map_err(&e)?;
                    }
                    Conn::Postgres(c) => {
                        let e = Self::pg_err(&self.url);
                        c.batch_execute(pg.unwrap_or(lite)).map_err(&e)?;
                        c.batch_execute(
                            "CREATE TABLE IF NOT EXISTS hexflow_schema (version BIGINT NOT NULL);
                             DELETE FROM hexflow_schema",
                        )
                        .map_err(&e)?;
                        c.execute("INSERT INTO hexflow_schema (version) VALUES ($1)", &[&version])
                            .map_err(&e)?;
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.commit(),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Starts a write transaction that excludes every other writer of the
    /// same `scope` (a dataset's charges, a job queue): SQLite's single
    /// writer, or a PostgreSQL advisory lock held to the commit.
    fn begin(&mut self, class: i32, scope: &str) -> Result<(), DbError> {
        let immediate = matches!(self.conn, Conn::Sqlite(_));
        self.open_tx(if immediate { "BEGIN IMMEDIATE" } else { "BEGIN" })?;
        if let Conn::Postgres(c) = &mut self.conn {
            let locked = c
                .execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&class as &(dyn postgres::types::ToSql + Sync), &scope],
                )
                .map_err(Self::pg_err(&self.url));
            if let Err(e) = locked {
                self.rollback();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs `sql`, which opens a transaction; whatever fails of it, the
    /// connection is left outside any transaction (a pooled connection
    /// must never go back inside an aborted one).
    fn open_tx(&mut self, sql: &str) -> Result<(), DbError> {
        self.in_tx = true;
        self.batch(sql).inspect_err(|_| self.rollback())
    }

    /// A write transaction on `dataset`'s charges (see `begin`).
    pub fn begin_charge(&mut self, dataset: &str) -> Result<(), DbError> {
        self.begin(LOCK_CHARGE, dataset)
    }

    /// A transaction on the job queue. On PostgreSQL no lock is taken:
    /// claimers skip each other's rows (`FOR UPDATE SKIP LOCKED`), so that
    /// workers never queue behind one another; SQLite has one writer.
    ///
    /// On PostgreSQL its commit does not wait for the WAL flush: the queue
    /// only spreads work, and a claim or a finish lost to a server crash
    /// makes a job run again, which its release id turns into "stored" (the
    /// charges keep synchronous commits). Two fewer flushes per job.
    pub fn begin_queue(&mut self) -> Result<(), DbError> {
        match self.conn {
            Conn::Sqlite(_) => self.begin(LOCK_CHARGE, "jobs"),
            Conn::Postgres(_) => self.open_tx("BEGIN; SET LOCAL synchronous_commit TO OFF"),
        }
    }

    /// Commits; a failed commit (SQLite busy, a lost connection) rolls
    /// back, so nothing of the transaction counts.
    pub fn commit(&mut self) -> Result<(), DbError> {
        self.batch("COMMIT").inspect_err(|_| self.rollback())?;
        self.in_tx = false;
        Ok(())
    }

    /// Rolls back the open transaction, if any (errors ignored: a broken
    /// connection has no transaction left, and the pool drops it).
    pub fn rollback(&mut self) {
        if std::mem::take(&mut self.in_tx) {
            let _ = self.batch("ROLLBACK");
        }
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match &mut self.conn {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(lite_err(&self.url)),
            Conn::Postgres(c) => c.batch_execute(sql).map_err(Self::pg_err(&self.url)),
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub fn exec(&mut self, sql: &str, params: &[P]) -> Result<u64, DbError> {
        match &mut self.conn {
            Conn::Sqlite(c) => c
                .execute(sql, rusqlite::params_from_iter(params.iter().map(lite_param)))
                .map(|n| n as u64)
                .map_err(lite_err(&self.url)),
            Conn::Postgres(c) => {
                let owned = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = owned.iter().map(|p| p.as_ref()).collect();
                c.execute(pg_sql(sql).as_str(), &refs).map_err(Self::pg_err(&self.url))
            }
        }
    }

    /// Runs a query; its rows.
    pub fn rows(&mut self, sql: &str, params: &[P]) -> Result<Vec<Row<'_>>, DbError> {
        let values: Vec<Vec<V>> = match &mut self.conn {
            Conn::Sqlite(c) => {
                let err = lite_err(&self.url);
                let mut stmt = c.prepare_cached(sql).map_err(&err)?;
                let n = stmt.column_count();
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params.iter().map(lite_param)))
                    .map_err(&err)?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(&err)? {
                    let mut vals = Vec::with_capacity(n);
                    for i in 0..n {
                        use rusqlite::types::ValueRef;
                        vals.push(match r.get_ref(i).map_err(&err)? {
                            ValueRef::Null => V::Null,
                            ValueRef::Integer(v) => V::I(v),
                            ValueRef::Text(t) => V::T(String::from_utf8_lossy(t).into_owned()),
                            ValueRef::Real(f) => V::I(f as i64),
                            ValueRef::Blob(_) => V::Null,
                        });
                    }
                    out.push(vals);
                }
                out
            }
            Conn::Postgres(c) => {
                let owned = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = owned.iter().map(|p| p.as_ref()).collect();
                let e = Self::pg_err(&self.url);
                let rows = c.query(pg_sql(sql).as_str(), &refs).map_err(&e)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let mut vals = Vec::with_capacity(r.len());
                    for (i, col) in r.columns().iter().enumerate() {
                        use postgres::types::Type;
                        let t = col.type_();
                        vals.push(if *t == Type::INT8 {
                            r.try_get::<_, Option<i64>>(i).map_err(&e)?.map_or(V::Null, V::I)
                        } else if *t == Type::INT4 {
                            r.try_get::<_, Option<i32>>(i)
                                .map_err(&e)?
                                .map_or(V::Null, |v| V::I(v.into()))
                        } else {
                            r.try_get::<_, Option<String>>(i).map_err(&e)?.map_or(V::Null, V::T)
                        });
                    }
                    out.push(vals);
                }
                out
            }
        };
        let url = &self.url;
        Ok(values.into_iter().map(|values| Row { values, url }).collect())
    }

    /// The first row of a query, if any.
    pub fn row(&mut self, sql: &str, params: &[P]) -> Result<Option<Row<'_>>, DbError> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    /// The database's clock in Unix milliseconds, as SQL: leases are
    /// compared on one clock whichever machine writes them.
    pub fn now_ms_sql(&self) -> &'static str {
        match self.conn {
            Conn::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Conn::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// `FOR UPDATE SKIP LOCKED` where the backend has row locks (on
    /// SQLite the write transaction already excludes other claimers).
    pub fn skip_locked_sql(&self) -> &'static str {
        match self.conn {
            Conn::Sqlite(_) => "",
            Conn::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        }
    }

    /// Whether a failed statement broke a uniqueness constraint.
    pub fn is_unique_violation(e: &DbError) -> bool {
        match e {
            DbError::Sqlite {
                cause: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => f.code == rusqlite::ErrorCode::ConstraintViolation,
            DbError::Postgres { cause, .. } => cause.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }

    /// A counter that changes whenever another connection commits to the
    /// ledger (SQLite's `data_version`); `None` where the backend has none
    /// (PostgreSQL: callers read the ledger afresh).
    pub fn data_version(&mut self) -> Option<i64> {
        match &self.conn {
            Conn::Sqlite(c) => c.query_row("PRAGMA data_version", [], |r| r.get(0)).ok(),
            Conn::Postgres(_) => None,
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.rollback();
    }
}

/// The lock that keeps two releases of one id from running at once, held
/// until dropped: a file lock in the data dir with SQLite, an advisory
/// lock of the shared database with PostgreSQL (a file lock does not hold
/// across machines). A process killed while holding either loses it: the
/// kernel closes the file, PostgreSQL ends the session.
///
/// On PostgreSQL the lock lives in a session of its own, never a pooled
/// one: closing it frees the lock whatever became of the unlock (a pooled
/// connection would go back to the pool still holding it), and a waiting
/// release takes no pool slot from the charges of the release it waits
/// for. That session can end under the release (a restarted server, a
/// terminated backend, a broken network) and with it the lock, which
/// another process may then take: [`ReleaseLock::ensure_held`] asks the
/// server whether this session still holds it, and the release calls it
/// right before it draws noise and again before it stores the values, so
/// that a release whose lock was lost stops instead of drawing a second
/// time what the new holder draws.
pub enum ReleaseLock {
    File(crate::util::DirLock),
    Postgres {
        client: Box<postgres::Client>,
        key: i64,
        name: String,
        url: LedgerUrl,
    },
}

impl ReleaseLock {
    pub fn acquire(url: &LedgerUrl, lock_file: &Path, key: &str) -> Result<Self, DbError> {
        match url {
            LedgerUrl::Sqlite(_) => crate::util::DirLock::acquire(lock_file)
                .map(Self::File)
                .map_err(|source| DbError::Lock {
                    path: lock_file.to_path_buf(),
                    source,
                }),
            LedgerUrl::Postgres(u) => {
                // No statement or lock timeout: the wait lasts as long as
                // the release it waits for (see `Timeouts`).
                let mut c = pg_target(u, url)?.connect(
                    url,
                    "-c statement_timeout=0 -c lock_timeout=0 -c application_name=hexflow-release-lock",
                )?;
                let k = lock_key(key);
                c.execute("SELECT pg_advisory_lock($1)", &[&k])
                    .map_err(Db::pg_err(url))?;
                Ok(Self::Postgres {
                    client: Box::new(c),
                    key: k,
                    name: key.to_string(),
                    url: url.clone(),
                })
            }
        }
    }

    /// Fails unless this lock is still held: on PostgreSQL, its session
    /// answers and the server lists the lock as granted to it (a file lock
    /// cannot be lost while its file is open).
    pub fn ensure_held(&mut self) -> Result<(), DbError> {
        let Self::Postgres { client, key, name, url } = self else {
            return Ok(());
        };
        let held = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                   AND granted AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1)",
                &[&*key],
            )
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if held {
            Ok(())
        } else {
            Err(DbError::LockLost {
                url: url.to_string(),
                lock: name.clone(),
            })
        }
    }
}

impl Drop for ReleaseLock {
    fn drop(&mut self) {
        // The session closes right after (dropping the client), which
        // releases the lock too; the unlock only frees it without waiting
        // for the server to see the connection end.
        if let Self::Postgres { client, key, .. } = self {
            let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&*key]);
        }
    }
}

/// A 64-bit advisory key for a release-lock name, in the release class.
fn lock_key(name: &str) -> i64 {
    let digest = crate::util::sha256_parts([name.as_bytes()]);
    let low = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
    (i64::from(LOCK_RELEASE) << 32) | i64::from(low)
}

fn lite_err(url: &LedgerUrl) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    |cause| DbError::Sqlite {
        url: url.to_string(),
        cause,
    }
}

/// A PostgreSQL error in words: the server's message when there is one
/// (the driver's own says only "db error").
fn pg_detail(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => db.to_string(),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

fn lite_param(p: &P) -> rusqlite::types::Value {
    match *p {
        P::I(v) => rusqlite::types::Value::Integer(v),
        P::T(s) => rusqlite::types::Value::Text(s.to_string()),
    }
}

fn pg_params(params: &[P]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|p| -> Box<dyn postgres::types::ToSql + Sync> {
            match *p {
                P::I(v) => Box::new(v),
                P::T(s) => Box::new(s.to_string()),
            }
        })
        .collect()
}

/// `?N` → `$N`: the statements are written once, in SQLite's spelling.
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A new, empty database on the PostgreSQL server of `admin_url` (which
/// must allow `CREATE DATABASE`): its URL. Tests and benchmarks give every
/// run a ledger of its own this way.
pub fn scratch_database(admin_url: &str, prefix: &str) -> Result<String, DbError> {
    let shown = LedgerUrl::Postgres(admin_url.to_string());
    let mut c = pg_conn(&pool(admin_url, &shown)?, &shown)?;
    let bytes = crate::util::random_bytes::<6>().map_err(|e| DbError::Connect {
        url: shown.to_string(),
        why: e.to_string(),
    })?;
    let name = format!("{prefix}_{}", crate::util::hex(&bytes));
    // Identifiers cannot be bound as parameters; `name` is ours (a prefix
    // of [a-z_] and hex).
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .map_err(Db::pg_err(&shown))?;
    // Back to a URL: user, host, port of the admin URL and the new name.
    let base = admin_url.split('?').next().unwrap_or(admin_url);
    let cut = base.rfind('/').filter(|i| *i > base.find("://").map_or(0, |s| s + 2));
    Ok(match cut {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => format!("{base}/{name}"),
    })
}

/// Drops a database that [`scratch_database`] made on the server of
/// `admin_url` (a benchmark's, once it is done), ending any session still
/// on it. Refuses any other name: it never drops a ledger by mistake.
pub fn drop_scratch_database(admin_url: &str, scratch_url: &str, prefix: &str) -> Result<(), DbError> {
    let shown = LedgerUrl::Postgres(admin_url.to_string());
    let target = pg_target(scratch_url, &LedgerUrl::Postgres(scratch_url.to_string()))?;
    let name = target.config.get_dbname().unwrap_or_default();
    let ours = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()));
    if !ours {
        return Err(DbError::BadUrl {
            url: scratch_url.to_string(),
            why: format!("not a scratch database of {prefix}: not dropped"),
        });
    }
    let mut c = pg_conn(&pool(admin_url, &shown)?, &shown)?;
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .map_err(Db::pg_err(&shown))
}

/// The PostgreSQL server the tests use: `HEXFLOW_TEST_PG`, set by
/// `scripts/test`, which installs and starts one. A test that needs it
/// fails with this instruction rather than passing without it.
pub fn test_server() -> String {
    std::env::var("HEXFLOW_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "HEXFLOW_TEST_PG is not set: the ledger tests run on PostgreSQL too. Run the tests with ./scripts/test \
             (it installs Debian's postgresql when missing and starts a throwaway cluster), or point \
             HEXFLOW_TEST_PG at a server where this user may CREATE DATABASE, e.g. postgres://hexflow@127.0.0.1:5432/postgres"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_database_is_dropped_and_nothing_else_is() {
        let admin = test_server();
        let scratch = scratch_database(&admin, "hexflow_dropme").expect("scratch");
        // In use, as a benchmark's pool would leave it: dropped all the same.
        let url = LedgerUrl::Postgres(scratch.clone());
        let _held = Db::open(&url).expect("open");
        let name = scratch.rsplit('/').next().expect("name").to_string();
        let exists = |name: &str| {
            let shown = LedgerUrl::Postgres(admin.clone());
            let mut c = pg_conn(&pool(&admin, &shown).expect("pool"), &shown).expect("conn");
            c.query_one("SELECT COUNT(*) FROM pg_database WHERE datname = $1", &[&name])
                .expect("query")
                .get::<_, i64>(0)
        };
        assert_eq!(exists(&name), 1);
        // Not ours: refused whatever the server holds.
        for other in [admin.as_str(), &scratch.replace("hexflow_dropme_", "hexflow_other_")] {
            let e = drop_scratch_database(&admin, other, "hexflow_dropme").expect_err("not a scratch");
            assert!(e.to_string().contains("not dropped"), "{e}");
        }
        assert_eq!(exists(&name), 1);
        drop_scratch_database(&admin, &scratch, "hexflow_dropme").expect("drop");
        assert_eq!(exists(&name), 0);
    }

    /// Processes that open a new SQLite ledger together all get it: the
    /// conversion to WAL used to fail one of them with "database is
    /// locked" (seen in CI with 8 racing `release` processes).
    #[test]
    fn a_new_sqlite_ledger_opened_at_once_by_many_opens_for_all() {
        for trial in 0..20 {
            let dir = tempfile::tempdir().expect("tmp");
            let url = LedgerUrl::Sqlite(dir.path().join("ledger.sqlite"));
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let opens: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            Db::open(&url).map(|_| ())
                        })
                    })
                    .collect();
                for o in opens {
                    let r = o.join().expect("thread");
                    assert!(
                        r.is_ok(),
                        "trial {trial}: {}",
                        r.err().map(|e| e.to_string()).unwrap_or_default()
                    );
                }
            });
        }
    }

    #[test]
    fn urls_parse_and_never_show_a_password() {
        let dir = Path::new("/var/lib/hexflow");
        assert_eq!(
            LedgerUrl::resolve(None, dir).expect("default"),
            LedgerUrl::Sqlite(dir.join("hexflow.sqlite"))
        );
        assert_eq!(
            LedgerUrl::resolve(Some("sqlite:/tmp/l.sqlite"), dir).expect("sqlite"),
            LedgerUrl::Sqlite("/tmp/l.sqlite".into())
        );
        let pg = LedgerUrl::resolve(Some("postgres://hex:s3cret@db.example:5433/ledger"), dir).expect("pg");
        assert!(pg.is_postgres());
        let shown = pg.to_string();
        assert!(
            !shown.contains("s3cret") && shown.contains("hex:***@db.example:5433"),
            "{shown}"
        );
        let shown = redact("postgresql://db/ledger?user=a&password=topsecret&sslmode=disable");
        assert!(
            !shown.contains("topsecret") && shown.contains("sslmode=disable"),
            "{shown}"
        );
        for bad in ["mysql://x", "sqlite:", "ledger.sqlite"] {
            assert!(LedgerUrl::resolve(Some(bad), dir).is_err(), "{bad}");
        }
    }

    /// `sslmode` takes libpq's five values (the driver knows three) and
    /// `sslrootcert` a path; both are hexflow's, not passed on; the
    /// timeouts default where the URL sets none, and the URL's own win.
    #[test]
    fn tls_and_timeout_settings_are_read_from_the_url() {
        let dir = Path::new("/var/lib/hexflow");
        let read = |u: &str| pg_target(u, &LedgerUrl::Postgres(u.to_string()));
        let t = read("postgres://h:pw@db:5432/l?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
            .expect("url");
        assert_eq!(t.ssl, SslMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert!(t.verifies());
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.timeouts.connect, Duration::from_secs(3));
        assert_eq!(t.config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        let opts = t.config.get_options().expect("options");
        assert!(
            opts.contains("statement_timeout=30000") && opts.contains("lock_timeout=20000"),
            "{opts}"
        );
        let t = read("postgres://h@db/l?sslmode=require&connect_timeout=7&options=-c%20statement_timeout%3D5s")
            .expect("url");
        assert_eq!((t.ssl, t.verifies()), (SslMode::Require, t.root_cert.is_some()));
        assert_eq!(t.timeouts.connect, Duration::from_secs(7));
        assert_eq!(t.timeouts.checkout, Duration::from_secs(9));
        let opts = t.config.get_options().expect("options");
        assert!(
            opts.ends_with("statement_timeout=5s"),
            "the URL's own comes last: {opts}"
        );
        assert_eq!(read("postgres://h@db/l").expect("url").ssl, SslMode::Prefer);
        let e = LedgerUrl::resolve(Some("postgres://h:s3cret@db/l?sslmode=verify"), dir).expect_err("bad mode");
        assert!(
            e.to_string().contains("verify-full") && !e.to_string().contains("s3cret"),
            "{e}"
        );
    }

    /// Release locks on PostgreSQL hold sessions of their own: more of them
    /// than the pool has slots leave the ledger usable (pooled locks would
    /// have starved the charges they wait for), and a dropped lock is free
    /// for another session at once.
    #[test]
    fn postgres_release_locks_take_no_pool_slot_and_free_on_drop() {
        let url = LedgerUrl::resolve(
            Some(&scratch_database(&test_server(), "hexflow_lock").expect("a scratch database")),
            Path::new("/nonexistent"),
        )
        .expect("url");
        let LedgerUrl::Postgres(raw) = &url else {
            panic!("a PostgreSQL url")
        };
        let unused = Path::new("/nonexistent/lock");
        let held: Vec<ReleaseLock> = (0..20)
            .map(|i| ReleaseLock::acquire(&url, unused, &format!("t-{i:02}")).expect("lock"))
            .collect();
        let mut other = pg_target(raw, &url).expect("url").connect(&url, "").expect("connect");
        let free = |c: &mut postgres::Client, name: &str| -> bool {
            let k = lock_key(name);
            let got: bool = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&k])
                .expect("try")
                .get(0);
            if got {
                c.execute("SELECT pg_advisory_unlock($1)", &[&k]).expect("unlock");
            }
            got
        };
        assert!(!free(&mut other, "t-07"), "a held lock is held");
        let mut db = Db::open(&url).expect("the ledger opens while 20 release locks are held");
        db.begin_charge("t").expect("a charge transaction");
        db.commit().expect("commit");
        drop(held);
        assert!(free(&mut other, "t-07"), "a dropped lock is free");
    }

    #[test]
    fn release_lock_keys_differ_per_name_and_stay_in_their_class() {
        let (a, b) = (lock_key("marseille-01"), lock_key("marseille-02"));
        assert_ne!(a, b);
        assert_eq!(a >> 32, i64::from(LOCK_RELEASE));
    }
}
