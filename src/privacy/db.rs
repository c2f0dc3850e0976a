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
                s.parse::<postgres::Config>().map_err(|e| DbError::BadUrl {
                    url: redact(s),
                    why: e.to_string(),
                })?;
                Ok(Self::Postgres(s.to_string()))
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

type PgPool = r2d2::Pool<PostgresConnectionManager<postgres::NoTls>>;
type PgConn = r2d2::PooledConnection<PostgresConnectionManager<postgres::NoTls>>;

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
    let manager = PostgresConnectionManager::new(pg_config(url, shown)?, postgres::NoTls);
    let p = r2d2::Pool::builder()
        .max_size(16)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .build(manager)
        .map_err(|e| DbError::Connect {
            url: shown.to_string(),
            why: e.to_string(),
        })?;
    let entry = PgPoolEntry {
        pool: p,
        migrated: std::sync::Arc::default(),
    };
    pools.insert(url.to_string(), entry.clone());
    Ok(entry)
}

/// The connection settings of the PostgreSQL URL `url` (shown as `shown`).
fn pg_config(url: &str, shown: &LedgerUrl) -> Result<postgres::Config, DbError> {
    url.parse().map_err(|e: postgres::Error| DbError::BadUrl {
        url: shown.to_string(),
        why: e.to_string(),
    })
}

/// A pooled connection to the PostgreSQL ledger `url` (shown as `shown`).
fn pg_conn(entry: &PgPoolEntry, shown: &LedgerUrl) -> Result<PgConn, DbError> {
    entry.pool.get().map_err(|e| DbError::Connect {
        url: shown.to_string(),
        why: e.to_string(),
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
    let config = pg_config(u, url)?;
    let spawned = std::thread::Builder::new().name("ledger-listen".into()).spawn(move || {
        let second = Duration::from_secs(1);
        loop {
            if let Ok(mut c) = config.connect(postgres::NoTls)
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
pub enum ReleaseLock {
    File(crate::util::DirLock),
    Postgres(Box<postgres::Client>, i64),
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
                // A session of its own, not a pooled one: closing it frees
                // the lock whatever became of the unlock (a pooled
                // connection would go back to the pool still holding it),
                // and a waiting release takes no pool slot from the charges
                // of the release it waits for.
                let mut c = pg_config(u, url)?
                    .connect(postgres::NoTls)
                    .map_err(|e| DbError::Connect {
                        url: url.to_string(),
                        why: pg_detail(&e),
                    })?;
                let k = lock_key(key);
                c.execute("SELECT pg_advisory_lock($1)", &[&k])
                    .map_err(Db::pg_err(url))?;
                Ok(Self::Postgres(Box::new(c), k))
            }
        }
    }
}

impl Drop for ReleaseLock {
    fn drop(&mut self) {
        // The session closes right after (dropping the client), which
        // releases the lock too; the unlock only frees it without waiting
        // for the server to see the connection end.
        if let Self::Postgres(c, k) = self {
            let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&*k]);
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
    let config = pg_config(scratch_url, &LedgerUrl::Postgres(scratch_url.to_string()))?;
    let name = config.get_dbname().unwrap_or_default();
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
        let mut other: postgres::Client = raw
            .parse::<postgres::Config>()
            .expect("config")
            .connect(postgres::NoTls)
            .expect("connect");
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
