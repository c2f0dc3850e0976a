//! The privacy ledger: what each release cost, per dataset, audience and
//! local day, in SQLite.
//!
//! Charges are stored as integers in nano-ρ, rounded **up** (caps are
//! rounded down), so rounding can only make the ledger stricter. A charge is
//! checked and recorded in one `BEGIN IMMEDIATE` transaction with
//! `synchronous=FULL`: two processes cannot both read "there is room" and
//! both write, and a committed charge survives a crash. The release is then
//! computed and marked `published`; a crash in between wastes the budget
//! (the charge stays) and a retry of the same release id finishes it without
//! a second charge.

use crate::vocab::audience;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

/// ρ per stored unit.
pub const NANO: f64 = 1e9;

/// ρ → stored units, rounded up.
pub fn to_units_up(rho: f64) -> i64 {
    (rho * NANO).ceil() as i64
}

/// Cap → stored units, rounded down.
pub fn to_units_down(rho: f64) -> i64 {
    (rho * NANO).floor() as i64
}

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "budget exceeded on {day}: {scope} has {left_rho:.6} ρ left of its {cap_rho:.6} ρ daily cap, this release needs {need_rho:.6} ρ"
    )]
    BudgetExceeded {
        day: NaiveDate,
        /// "audience planners" or "dataset marseille (all audiences)".
        scope: String,
        cap_rho: f64,
        left_rho: f64,
        need_rho: f64,
    },
    #[error("a token named {0:?} exists already; pick another name")]
    TokenExists(String),
    #[error("no randomness for a token: {0}")]
    Random(String),
    #[error("ledger {path} has schema version {found}, newer than this hexflow ({known})")]
    TooNew { path: PathBuf, found: i64, known: i64 },
}

/// State of a release in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseState {
    /// Budget committed, values not yet stored.
    Charged,
    /// Values stored.
    Published,
}

/// What a charge request found.
#[derive(Debug, Clone, PartialEq)]
pub enum Charge {
    /// Newly charged: compute and publish now.
    New,
    /// Already charged earlier (a retry): finish or return it, no new
    /// charge. Carries the state and the ρ charged then (in ρ).
    Existing(ReleaseState, f64),
}

/// A charge request.
#[derive(Debug, Clone)]
pub struct ChargeRequest<'a> {
    pub release_id: &'a str,
    pub dataset: &'a str,
    pub audience: &'a str,
    pub days: &'a [NaiveDate],
    pub rho: f64,
    pub audience_cap_rho: f64,
    pub dataset_cap_rho: f64,
    pub spec_json: &'a str,
}

/// Spent and cap for one day and audience.
#[derive(Debug, Clone, Serialize)]
pub struct DaySpend {
    pub day: NaiveDate,
    pub audience: String,
    pub rho_spent: f64,
    pub releases: i64,
}

/// One release as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRow {
    pub release_id: String,
    pub dataset: String,
    pub audience: String,
    pub rho: f64,
    pub days: i64,
    pub state: ReleaseState,
    pub charged_at: String,
    pub spec: serde_json::Value,
}

const MIGRATIONS: &[&str] = &[
    // 1: releases and their per-day charges.
    "CREATE TABLE releases (
        release_id TEXT PRIMARY KEY,
        dataset TEXT NOT NULL,
        audience TEXT NOT NULL,
        rho_units INTEGER NOT NULL CHECK (rho_units > 0),
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
        rho_units INTEGER NOT NULL CHECK (rho_units > 0),
        PRIMARY KEY (release_id, day)
     );
     CREATE INDEX charges_by_day ON charges (dataset, day, audience);",
    // 2: API tokens, stored as SHA-256 digests (the token is shown once).
    "CREATE TABLE tokens (
        token_sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('planner', 'admin')),
        created_at TEXT NOT NULL
     );",
    // 3: tourism tokens (SQLite cannot change a CHECK: copy the table).
    "CREATE TABLE tokens_v3 (
        token_sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('planner', 'tourism', 'admin')),
        created_at TEXT NOT NULL
     );
     INSERT INTO tokens_v3 SELECT token_sha256, name, role, created_at FROM tokens;
     DROP TABLE tokens;
     ALTER TABLE tokens_v3 RENAME TO tokens;",
];

/// The ledger database (`<data-dir>/hexflow.sqlite`).
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    /// Opens (and migrates) the ledger.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let err = |source| LedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
        let known = MIGRATIONS.len() as i64;
        let version = |c: &Connection| -> Result<i64, LedgerError> {
            let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err)?;
            if v > known {
                return Err(LedgerError::TooNew {
                    path: path.to_path_buf(),
                    found: v,
                    known,
                });
            }
            Ok(v)
        };
        // Only a ledger that needs migrating takes the write lock on open,
        // so readers (`hexflow ledger`, stored releases) never queue.
        if version(&conn)? < known {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            // Re-read under the lock: another process may have migrated.
            for (i, m) in MIGRATIONS.iter().enumerate().skip(version(&tx)? as usize) {
                tx.execute_batch(m).map_err(err)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(err)?;
            }
            tx.commit().map_err(err)?;
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        |source| LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Checks every day against the audience and dataset caps and records
    /// the charge, atomically. A release id already present is not charged
    /// again.
    pub fn charge(&mut self, req: &ChargeRequest) -> Result<Charge, LedgerError> {
        let path = self.path.clone();
        let err = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let existing: Option<(String, i64)> = tx
            .query_row(
                "SELECT state, rho_units FROM releases WHERE release_id = ?1",
                [req.release_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        if let Some((state, units)) = existing {
            return Ok(Charge::Existing(parse_state(&state).map_err(err)?, units as f64 / NANO));
        }
        let need = to_units_up(req.rho);
        let audience_cap = to_units_down(req.audience_cap_rho);
        let dataset_cap = to_units_down(req.dataset_cap_rho);
        for day in req.days {
            let d = day.to_string();
            let spent_audience: i64 = tx
                .query_row(
                    "SELECT COALESCE(SUM(rho_units), 0) FROM charges WHERE dataset = ?1 AND day = ?2 AND audience = ?3",
                    params![req.dataset, d, req.audience],
                    |r| r.get(0),
                )
                .map_err(err)?;
            let spent_dataset: i64 = tx
                .query_row(
                    "SELECT COALESCE(SUM(rho_units), 0) FROM charges WHERE dataset = ?1 AND day = ?2",
                    params![req.dataset, d],
                    |r| r.get(0),
                )
                .map_err(err)?;
            let over = |spent: i64, cap: i64, scope: String| LedgerError::BudgetExceeded {
                day: *day,
                scope,
                cap_rho: cap as f64 / NANO,
                left_rho: (cap - spent).max(0) as f64 / NANO,
                need_rho: need as f64 / NANO,
            };
            if spent_audience + need > audience_cap {
                return Err(over(spent_audience, audience_cap, format!("audience {}", req.audience)));
            }
            if spent_dataset + need > dataset_cap {
                return Err(over(
                    spent_dataset,
                    dataset_cap,
                    format!("dataset {} (all audiences)", req.dataset),
                ));
            }
        }
        let now = Utc::now().to_rfc3339();
        tx.execute(
            "INSERT INTO releases (release_id, dataset, audience, rho_units, state, spec_json, charged_at) VALUES (?1, ?2, ?3, ?4, 'charged', ?5, ?6)",
            params![req.release_id, req.dataset, req.audience, need, req.spec_json, now],
        )
        .map_err(err)?;
        for day in req.days {
            tx.execute(
                "INSERT INTO charges (release_id, dataset, audience, day, rho_units) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![req.release_id, req.dataset, req.audience, day.to_string(), need],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        crate::util::failpoint("release:after-charge");
        Ok(Charge::New)
    }

    /// The state of a release, if it was ever charged.
    pub fn state(&self, release_id: &str) -> Result<Option<ReleaseState>, LedgerError> {
        let state: Option<String> = self
            .conn
            .query_row("SELECT state FROM releases WHERE release_id = ?1", [release_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        state.as_deref().map(parse_state).transpose().map_err(self.err())
    }

    /// Marks a charged release as published (its values are stored).
    pub fn mark_published(&mut self, release_id: &str) -> Result<(), LedgerError> {
        let now = Utc::now().to_rfc3339();
        self.conn
            .execute(
                "UPDATE releases SET state = 'published', published_at = ?2 WHERE release_id = ?1",
                params![release_id, now],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// ρ spent per day and audience for a dataset.
    pub fn spend(&self, dataset: &str) -> Result<Vec<DaySpend>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT day, audience, SUM(rho_units), COUNT(*) FROM charges WHERE dataset = ?1 GROUP BY day, audience ORDER BY day, audience",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([dataset], |r| {
                let day: String = r.get(0)?;
                Ok(DaySpend {
                    day: day.parse().unwrap_or_default(),
                    audience: r.get(1)?,
                    rho_spent: r.get::<_, i64>(2)? as f64 / NANO,
                    releases: r.get(3)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Every release ever charged for a dataset, oldest first.
    pub fn releases(&self, dataset: &str) -> Result<Vec<ReleaseRow>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.release_id, r.dataset, r.audience, r.rho_units, r.state, r.charged_at, r.spec_json,
                        (SELECT COUNT(*) FROM charges c WHERE c.release_id = r.release_id)
                 FROM releases r WHERE r.dataset = ?1 ORDER BY r.charged_at, r.release_id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([dataset], |r| {
                let state: String = r.get(4)?;
                let spec: String = r.get(6)?;
                Ok(ReleaseRow {
                    release_id: r.get(0)?,
                    dataset: r.get(1)?,
                    audience: r.get(2)?,
                    rho: r.get::<_, i64>(3)? as f64 / NANO,
                    state: parse_state(&state)?,
                    charged_at: r.get(5)?,
                    spec: serde_json::from_str(&spec).unwrap_or(serde_json::Value::Null),
                    days: r.get(7)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

/// Who a token acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May run queries charged to the planners' budget and read them.
    Planner,
    /// May run queries charged to the tourism office's budget and read them.
    Tourism,
    /// May also ingest files and run the publication plan.
    Admin,
}

impl Role {
    /// The audience whose budget this role's queries spend (admins query
    /// for the planners).
    pub fn audience(self) -> &'static str {
        match self {
            Role::Planner | Role::Admin => audience::PLANNERS,
            Role::Tourism => audience::TOURISM,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Planner => "planner",
            Role::Tourism => "tourism",
            Role::Admin => "admin",
        }
    }
}

/// A token as stored (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub name: String,
    pub role: Role,
    pub created_at: String,
}

impl Ledger {
    /// Creates a token for `name` and returns it; only its SHA-256 is kept.
    pub fn create_token(&mut self, name: &str, role: Role) -> Result<String, LedgerError> {
        let secret = crate::util::random_bytes::<32>().map_err(|e| LedgerError::Random(e.to_string()))?;
        let token = format!("hxf_{}", crate::util::hex(&secret));
        let now = chrono::Utc::now().to_rfc3339();
        self.conn
            .execute(
                "INSERT INTO tokens (token_sha256, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![crate::util::sha256_parts([token.as_bytes()]), name, role.as_str(), now],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    LedgerError::TokenExists(name.to_string())
                }
                source => LedgerError::Sqlite {
                    path: self.path.clone(),
                    source,
                },
            })?;
        Ok(token)
    }

    /// The token row a bearer token belongs to, if any.
    pub fn token(&self, token: &str) -> Result<Option<TokenRow>, LedgerError> {
        let digest = crate::util::sha256_parts([token.as_bytes()]);
        self.conn
            .query_row(
                "SELECT name, role, created_at FROM tokens WHERE token_sha256 = ?1",
                [digest],
                |r| {
                    let role: String = r.get(1)?;
                    Ok(TokenRow {
                        name: r.get(0)?,
                        role: parse_role(&role)?,
                        created_at: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }
}

/// A stored state; anything else is a damaged or foreign ledger, an error
/// rather than a silent default (a wrong state could redraw a release).
fn parse_state(s: &str) -> rusqlite::Result<ReleaseState> {
    match s {
        "published" => Ok(ReleaseState::Published),
        "charged" => Ok(ReleaseState::Charged),
        other => Err(unknown_value("release state", other)),
    }
}

/// A stored role; anything else is an error, never a planner by default.
fn parse_role(s: &str) -> rusqlite::Result<Role> {
    match s {
        "admin" => Ok(Role::Admin),
        "tourism" => Ok(Role::Tourism),
        "planner" => Ok(Role::Planner),
        other => Err(unknown_value("token role", other)),
    }
}

fn unknown_value(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {what} {value:?} (a damaged ledger, or one written by a newer hexflow)").into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(n: u32) -> Vec<NaiveDate> {
        (1..=n)
            .map(|d| NaiveDate::from_ymd_opt(2025, 3, d).expect("date"))
            .collect()
    }

    fn req<'a>(id: &'a str, audience: &'a str, days: &'a [NaiveDate], rho: f64) -> ChargeRequest<'a> {
        ChargeRequest {
            release_id: id,
            dataset: "d",
            audience,
            days,
            rho,
            audience_cap_rho: 0.5,
            dataset_cap_rho: 0.8,
            spec_json: "{}",
        }
    }

    #[test]
    fn caps_refuse_with_what_is_left_and_retries_are_free() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
        let d = days(2);
        assert_eq!(l.charge(&req("a", "public", &d, 0.3)).expect("a"), Charge::New);
        // Same id again: no second charge.
        assert_eq!(
            l.charge(&req("a", "public", &d, 0.3)).expect("a"),
            Charge::Existing(ReleaseState::Charged, 0.3)
        );
        let e = l.charge(&req("b", "public", &d, 0.3)).expect_err("over audience cap");
        let msg = e.to_string();
        assert!(
            msg.contains("audience public") && msg.contains("0.200000 ρ left") && msg.contains("2025-03-01"),
            "{msg}"
        );
        assert_eq!(l.charge(&req("c", "planners", &d, 0.4)).expect("c"), Charge::New);
        let e = l
            .charge(&req("d", "tourism", &d[1..], 0.2))
            .expect_err("over dataset cap");
        assert!(e.to_string().contains("dataset d (all audiences)"), "{e}");
        let spent: f64 = l
            .spend("d")
            .expect("spend")
            .iter()
            .filter(|s| s.day == d[0])
            .map(|s| s.rho_spent)
            .sum();
        assert!((spent - 0.7).abs() < 1e-9);
        l.mark_published("a").expect("publish");
        assert_eq!(l.releases("d").expect("rows")[0].state, ReleaseState::Published);
    }

    #[test]
    fn rounding_never_lets_the_cap_be_passed() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
        let d = days(1);
        // 0.5 / 3 is not representable: three charges of a third must not
        // all fit under a cap of 0.5 / 3 * 3 rounded down.
        let third = 0.5 / 3.0;
        let mut ok = 0;
        for i in 0..4 {
            if l.charge(&req(&format!("r{i}"), "public", &d, third)).is_ok() {
                ok += 1;
            }
        }
        assert!(ok <= 3);
        let spent: f64 = l.spend("d").expect("spend").iter().map(|s| s.rho_spent).sum();
        assert!(spent <= 0.5 + 1e-12, "{spent}");
    }

    #[test]
    fn racing_connections_never_overspend() {
        // Eight connections race for a cap that fits exactly three charges.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("l.sqlite");
        Ledger::open(&path).expect("create");
        let d = days(3);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                let d = d.clone();
                std::thread::spawn(move || {
                    let mut l = Ledger::open(&path).expect("open");
                    l.charge(&ChargeRequest {
                        release_id: &format!("r{i}"),
                        dataset: "d",
                        audience: "planners",
                        days: &d,
                        rho: 0.1,
                        audience_cap_rho: 0.3,
                        dataset_cap_rho: 1.0,
                        spec_json: "{}",
                    })
                    .is_ok()
                })
            })
            .collect();
        let won = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .filter(|ok| *ok)
            .count();
        assert_eq!(won, 3);
        let l = Ledger::open(&path).expect("open");
        for s in l.spend("d").expect("spend") {
            assert!(s.rho_spent <= 0.3 + 1e-12, "{s:?}");
        }
    }
}
