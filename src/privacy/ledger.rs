//! The privacy ledger: what each release cost, per dataset, audience and
//! local day, in SQLite (the data dir's file, the default) or PostgreSQL
//! (one ledger for several machines; see `privacy::db`).
//!
//! Charges are stored as integers in nano-ρ, rounded **up** (caps are
//! rounded down), so rounding can only make the ledger stricter. A charge is
//! checked and recorded in one write transaction that excludes every other
//! charge of the dataset (SQLite: `BEGIN IMMEDIATE` with
//! `synchronous=FULL`; PostgreSQL: an advisory lock on the dataset held to
//! the commit, which is durable once acknowledged): two processes, on one
//! machine or two, cannot both read "there is room" and both write, and a
//! committed charge survives a crash. The release is then computed and
//! marked `published`; a crash in between wastes the budget (the charge
//! stays) and a retry of the same release id finishes it without a second
//! charge.

use super::db::{Db, P, Row};
pub use super::db::{DbError, LedgerUrl, ReleaseLock};
use crate::vocab::audience;

use chrono::{NaiveDate, Utc};
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
    #[error(transparent)]
    Db(#[from] DbError),
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
    #[error("ledger {url}: unknown {what} {value:?} (a damaged ledger, or one written by a newer hexflow)")]
    Unknown {
        url: String,
        what: &'static str,
        value: String,
    },
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

/// The ledger database.
pub struct Ledger {
    db: Db,
}

impl Ledger {
    /// Opens (and migrates) the ledger at `url`.
    pub fn open(url: &LedgerUrl) -> Result<Self, LedgerError> {
        Ok(Self { db: Db::open(url)? })
    }

    pub fn url(&self) -> &LedgerUrl {
        self.db.url()
    }

    /// The connection, for the job queue that shares the ledger's database.
    pub(crate) fn db(&mut self) -> &mut Db {
        &mut self.db
    }

    /// A number that changes whenever another connection has changed the
    /// releases (SQLite's `data_version`; on PostgreSQL the counter that
    /// every transaction writing `releases` bumps, so one row's read
    /// whatever the number of releases), for caches of ledger answers.
    pub fn change_marker(&mut self) -> Result<i64, LedgerError> {
        if let Some(v) = self.db.data_version() {
            return Ok(v);
        }
        let row = self.db.row("SELECT n FROM ledger_changes WHERE id = 1", &[])?;
        Ok(row.map_or(Ok(0), |r| r.int(0))?)
    }

    /// Checks every day against the audience and dataset caps and records
    /// the charge, atomically. A release id already present is not charged
    /// again.
    pub fn charge(&mut self, req: &ChargeRequest) -> Result<Charge, LedgerError> {
        self.db.begin_charge(req.dataset)?;
        let result = self.charge_in_tx(req);
        match result {
            Ok(Charge::New) => {
                self.db.commit()?;
                crate::util::failpoint("release:after-charge");
                Ok(Charge::New)
            }
            other => {
                self.db.rollback();
                other
            }
        }
    }

    fn charge_in_tx(&mut self, req: &ChargeRequest) -> Result<Charge, LedgerError> {
        let url = self.db.url().to_string();
        if let Some(r) = self.db.row(
            "SELECT state, rho_units FROM releases WHERE release_id = ?1",
            &[P::T(req.release_id)],
        )? {
            let state = parse_state(&url, &r.text(0)?)?;
            return Ok(Charge::Existing(state, r.int(1)? as f64 / NANO));
        }
        let need = to_units_up(req.rho);
        let audience_cap = to_units_down(req.audience_cap_rho);
        let dataset_cap = to_units_down(req.dataset_cap_rho);
        for day in req.days {
            let d = day.to_string();
            let spent = |r: Option<Row>| r.map_or(Ok(0), |r| r.int(0));
            let spent_audience = spent(self.db.row(
                "SELECT CAST(COALESCE(SUM(rho_units), 0) AS BIGINT) FROM charges WHERE dataset = ?1 AND day = ?2 AND audience = ?3",
                &[P::T(req.dataset), P::T(&d), P::T(req.audience)],
            )?)?;
            let spent_dataset = spent(self.db.row(
                "SELECT CAST(COALESCE(SUM(rho_units), 0) AS BIGINT) FROM charges WHERE dataset = ?1 AND day = ?2",
                &[P::T(req.dataset), P::T(&d)],
            )?)?;
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
        self.db.exec(
            "INSERT INTO releases (release_id, dataset, audience, rho_units, state, spec_json, charged_at) VALUES (?1, ?2, ?3, ?4, 'charged', ?5, ?6)",
            &[
                P::T(req.release_id),
                P::T(req.dataset),
                P::T(req.audience),
                P::I(need),
                P::T(req.spec_json),
                P::T(&now),
            ],
        )?;
        for day in req.days {
            self.db.exec(
                "INSERT INTO charges (release_id, dataset, audience, day, rho_units) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    P::T(req.release_id),
                    P::T(req.dataset),
                    P::T(req.audience),
                    P::T(&day.to_string()),
                    P::I(need),
                ],
            )?;
        }
        Ok(Charge::New)
    }

    /// The state of a release, if it was ever charged.
    pub fn state(&mut self, release_id: &str) -> Result<Option<ReleaseState>, LedgerError> {
        let url = self.db.url().to_string();
        match self
            .db
            .row("SELECT state FROM releases WHERE release_id = ?1", &[P::T(release_id)])?
        {
            Some(r) => Ok(Some(parse_state(&url, &r.text(0)?)?)),
            None => Ok(None),
        }
    }

    /// Marks a charged release as published (its values are stored).
    pub fn mark_published(&mut self, release_id: &str) -> Result<(), LedgerError> {
        let now = Utc::now().to_rfc3339();
        self.db.exec(
            // Once: a second call (two processes finishing one crashed
            // release) keeps the first time.
            "UPDATE releases SET state = 'published', published_at = ?2 WHERE release_id = ?1 AND state <> 'published'",
            &[P::T(release_id), P::T(&now)],
        )?;
        Ok(())
    }

    /// The releases of `dataset` charged but not (yet) marked published.
    pub fn charged(&mut self, dataset: &str) -> Result<Vec<String>, LedgerError> {
        let rows = self.db.rows(
            "SELECT release_id FROM releases WHERE dataset = ?1 AND state = 'charged' ORDER BY release_id",
            &[P::T(dataset)],
        )?;
        Ok(rows.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?)
    }

    /// ρ spent per day and audience for a dataset.
    pub fn spend(&mut self, dataset: &str) -> Result<Vec<DaySpend>, LedgerError> {
        let rows = self.db.rows(
            "SELECT day, audience, CAST(SUM(rho_units) AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM charges WHERE dataset = ?1 GROUP BY day, audience ORDER BY day, audience",
            &[P::T(dataset)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(DaySpend {
                    day: r.text(0)?.parse().unwrap_or_default(),
                    audience: r.text(1)?,
                    rho_spent: r.int(2)? as f64 / NANO,
                    releases: r.int(3)?,
                })
            })
            .collect()
    }

    /// Every release ever charged for a dataset, oldest first.
    pub fn releases(&mut self, dataset: &str) -> Result<Vec<ReleaseRow>, LedgerError> {
        let url = self.db.url().to_string();
        let rows = self.db.rows(
            "SELECT r.release_id, r.dataset, r.audience, r.rho_units, r.state, r.charged_at, r.spec_json,
                    (SELECT CAST(COUNT(*) AS BIGINT) FROM charges c WHERE c.release_id = r.release_id)
             FROM releases r WHERE r.dataset = ?1 ORDER BY r.charged_at, r.release_id",
            &[P::T(dataset)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ReleaseRow {
                    release_id: r.text(0)?,
                    dataset: r.text(1)?,
                    audience: r.text(2)?,
                    rho: r.int(3)? as f64 / NANO,
                    state: parse_state(&url, &r.text(4)?)?,
                    charged_at: r.text(5)?,
                    spec: serde_json::from_str(&r.text(6)?).unwrap_or(serde_json::Value::Null),
                    days: r.int(7)?,
                })
            })
            .collect()
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
        let digest = crate::util::sha256_parts([token.as_bytes()]);
        self.db
            .exec(
                "INSERT INTO tokens (token_sha256, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
                &[P::T(&digest), P::T(name), P::T(role.as_str()), P::T(&now)],
            )
            .map_err(|e| {
                if Db::is_unique_violation(&e) {
                    LedgerError::TokenExists(name.to_string())
                } else {
                    e.into()
                }
            })?;
        Ok(token)
    }

    /// The token row a bearer token belongs to, if any.
    pub fn token(&mut self, token: &str) -> Result<Option<TokenRow>, LedgerError> {
        let digest = crate::util::sha256_parts([token.as_bytes()]);
        let url = self.db.url().to_string();
        match self.db.row(
            "SELECT name, role, created_at FROM tokens WHERE token_sha256 = ?1",
            &[P::T(&digest)],
        )? {
            Some(r) => Ok(Some(TokenRow {
                name: r.text(0)?,
                role: parse_role(&url, &r.text(1)?)?,
                created_at: r.text(2)?,
            })),
            None => Ok(None),
        }
    }
}

/// A stored state; anything else is a damaged or foreign ledger, an error
/// rather than a silent default (a wrong state could redraw a release).
fn parse_state(url: &str, s: &str) -> Result<ReleaseState, LedgerError> {
    match s {
        "published" => Ok(ReleaseState::Published),
        "charged" => Ok(ReleaseState::Charged),
        other => Err(unknown(url, "release state", other)),
    }
}

/// A stored role; anything else is an error, never a planner by default.
fn parse_role(url: &str, s: &str) -> Result<Role, LedgerError> {
    match s {
        "admin" => Ok(Role::Admin),
        "tourism" => Ok(Role::Tourism),
        "planner" => Ok(Role::Planner),
        other => Err(unknown(url, "token role", other)),
    }
}

fn unknown(url: &str, what: &'static str, value: &str) -> LedgerError {
    LedgerError::Unknown {
        url: url.to_string(),
        what,
        value: value.to_string(),
    }
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

    /// A fresh ledger on each backend: a SQLite file in `dir` and a new
    /// PostgreSQL database.
    fn backends(dir: &std::path::Path) -> Vec<LedgerUrl> {
        let pg = super::super::db::scratch_database(&super::super::db::test_server(), "hexflow_unit")
            .expect("a scratch PostgreSQL database");
        vec![LedgerUrl::Sqlite(dir.join("l.sqlite")), LedgerUrl::Postgres(pg)]
    }

    #[test]
    fn caps_refuse_with_what_is_left_and_retries_are_free() {
        let dir = tempfile::tempdir().expect("tmp");
        for url in backends(dir.path()) {
            let mut l = Ledger::open(&url).expect("open");
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
                "{url}: {msg}"
            );
            assert_eq!(l.charge(&req("c", "planners", &d, 0.4)).expect("c"), Charge::New);
            let e = l
                .charge(&req("d", "tourism", &d[1..], 0.2))
                .expect_err("over dataset cap");
            assert!(e.to_string().contains("dataset d (all audiences)"), "{url}: {e}");
            let spent: f64 = l
                .spend("d")
                .expect("spend")
                .iter()
                .filter(|s| s.day == d[0])
                .map(|s| s.rho_spent)
                .sum();
            assert!((spent - 0.7).abs() < 1e-9, "{url}: {spent}");
            assert_eq!(l.state("a").expect("state"), Some(ReleaseState::Charged));
            l.mark_published("a").expect("publish");
            let rows = l.releases("d").expect("rows");
            assert_eq!(rows.len(), 2, "{url}");
            assert_eq!(
                rows.iter().find(|r| r.release_id == "a").map(|r| r.state),
                Some(ReleaseState::Published)
            );
            assert_eq!(rows[0].days, 2);
            // Tokens live in the same database, names unique.
            let t = l.create_token("ops", Role::Admin).expect("token");
            assert_eq!(l.token(&t).expect("lookup").map(|r| r.role), Some(Role::Admin));
            assert!(matches!(
                l.create_token("ops", Role::Planner),
                Err(LedgerError::TokenExists(_))
            ));
            assert!(l.token("hxf_wrong").expect("lookup").is_none());
        }
    }

    /// The marker a server caches ledger answers by: it moves when another
    /// connection charges or publishes, not when a charge is refused.
    #[test]
    fn the_change_marker_moves_with_every_change_of_the_releases() {
        let dir = tempfile::tempdir().expect("tmp");
        for url in backends(dir.path()) {
            let mut watcher = Ledger::open(&url).expect("open");
            let mut writer = Ledger::open(&url).expect("open");
            let d = days(1);
            let m0 = watcher.change_marker().expect("marker");
            assert_eq!(watcher.change_marker().expect("marker"), m0, "{url}: nothing changed");
            writer.charge(&req("a", "public", &d, 0.1)).expect("charge");
            let m1 = watcher.change_marker().expect("marker");
            assert_ne!(m1, m0, "{url}: a charge");
            // A refused charge changes nothing (SQLite's marker also moves
            // with other commits, a token's say: a cache built once more).
            writer.charge(&req("b", "public", &d, 0.9)).expect_err("over the cap");
            assert_eq!(watcher.change_marker().expect("marker"), m1, "{url}: a refusal");
            writer.mark_published("a").expect("publish");
            assert_ne!(watcher.change_marker().expect("marker"), m1, "{url}: a publication");
        }
    }

    #[test]
    fn a_listener_is_told_of_every_commit_to_the_releases() {
        use crate::privacy::db::{ChangeSignal, listen_for_changes};
        use std::sync::mpsc;
        let dir = tempfile::tempdir().expect("tmp");
        let pg = backends(dir.path()).pop().expect("postgres");
        let mut writer = Ledger::open(&pg).expect("open");
        let (tx, rx) = mpsc::channel();
        listen_for_changes(&pg, move |s| tx.send(s).is_ok()).expect("listen");
        // Deadlock guards, not speed bounds: each signal comes in ms.
        let next = |want: ChangeSignal| loop {
            match rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a signal") {
                s if s == want => break,
                ChangeSignal::Quiet => {}
                other => panic!("{other:?} while waiting for {want:?}"),
            }
        };
        next(ChangeSignal::Listening);
        let d = days(1);
        writer.charge(&req("a", "public", &d, 0.1)).expect("charge");
        next(ChangeSignal::Changed);
        writer.mark_published("a").expect("publish");
        next(ChangeSignal::Changed);
        // A refused charge commits nothing: a quiet second follows, with
        // no change before it.
        writer.charge(&req("b", "public", &d, 0.9)).expect_err("over the cap");
        next(ChangeSignal::Quiet);
        // Dropping the receiver stops the listener: its next report fails.
        drop(rx);
    }

    #[test]
    fn rounding_never_lets_the_cap_be_passed() {
        let dir = tempfile::tempdir().expect("tmp");
        for url in backends(dir.path()) {
            let mut l = Ledger::open(&url).expect("open");
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
            assert!(spent <= 0.5 + 1e-12, "{url}: {spent}");
        }
    }

    #[test]
    fn racing_connections_never_overspend() {
        // Eight connections race for a cap that fits exactly three charges.
        let dir = tempfile::tempdir().expect("tmp");
        for url in backends(dir.path()) {
            Ledger::open(&url).expect("create");
            let d = days(3);
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (url, d) = (url.clone(), d.clone());
                    std::thread::spawn(move || {
                        let mut l = Ledger::open(&url).expect("open");
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
            assert_eq!(won, 3, "{url}");
            let mut l = Ledger::open(&url).expect("open");
            for s in l.spend("d").expect("spend") {
                assert!(s.rho_spent <= 0.3 + 1e-12, "{url}: {s:?}");
            }
        }
    }

    #[test]
    fn a_refused_charge_leaves_the_pooled_connection_usable() {
        // A refusal rolls back: the next charge on the same (pooled)
        // connection must not find itself inside an aborted transaction.
        let dir = tempfile::tempdir().expect("tmp");
        for url in backends(dir.path()) {
            let mut l = Ledger::open(&url).expect("open");
            let d = days(1);
            l.charge(&req("a", "public", &d, 0.5)).expect("fits");
            assert!(l.charge(&req("b", "public", &d, 0.1)).is_err());
            assert_eq!(
                l.charge(&req("c", "planners", &d, 0.1)).expect("fits"),
                Charge::New,
                "{url}"
            );
            assert_eq!(l.state("b").expect("state"), None, "{url}");
        }
    }
}
