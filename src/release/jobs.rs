//! Publication over workers: the plan's releases as jobs in the ledger's
//! database, claimed under a lease.
//!
//! `hexflow publish --workers N` puts one job per release of the plan in
//! the `jobs` table (one run id) and starts N `hexflow worker` processes;
//! workers on other machines that see the same data dir and ledger take
//! jobs too. A claim is one statement that picks the first queued job, or
//! one whose lease ran out, and writes the claimer and a new lease
//! (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so claimers never wait on each
//! other; SQLite: its single writer). A worker renews its lease while the
//! release runs; killed, it stops renewing and another worker takes the
//! job over when the lease ends.
//!
//! The queue only spreads work: what keeps the privacy invariants is the
//! release itself. A job's release id is fixed by its spec, so a job run
//! twice (a lease that ran out under a slow but living worker) is charged
//! once (the ledger), drawn once (the release lock, held across machines
//! by PostgreSQL) and found stored the second time.
//!
//! The ledger's database can go away (a PostgreSQL restart, a network
//! cut). Every queue operation and every release of a worker is retried
//! with backoff while the error says the database is away
//! ([`DbError::is_transient`]), for up to [`retry_for`] (10 minutes,
//! `HEXFLOW_LEDGER_RETRY_S`), so that a run outlives an outage and
//! finishes instead of exiting. Jobs never stay behind for ever: a
//! running job whose lease ran out is claimable (its worker is dead or
//! cut off), and a new run of a dataset expires the queued jobs of its
//! older runs and their running jobs whose lease ran out (a killed
//! `publish --workers` leaves them; the new run's plan makes the same
//! releases again, by release id).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::publish::PublishReport;
use super::{Outcome, ReleaseError, ReleaseSpec, Releaser, Status};
use crate::policy::Policy;
use crate::privacy::db::{DbError, P};
use crate::privacy::ledger::{Ledger, LedgerError, LedgerUrl, NANO};

/// A job abandoned by this many workers (each killed or lost mid-job) is
/// given up and reported, instead of killing workers forever.
pub const MAX_ATTEMPTS: i64 = 3;

/// Errors of the job queue.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("job {job}: {why}")]
    Bad { job: String, why: String },
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("cannot start worker {index}: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

impl From<DbError> for JobError {
    fn from(e: DbError) -> Self {
        Self::Ledger(e.into())
    }
}

/// A job this worker holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job_id: String,
    pub run_id: String,
    pub policy_path: PathBuf,
    pub spec: ReleaseSpec,
    pub label: String,
}

/// How far a run is.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RunStatus {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
}

/// How long workers and `publish --workers` retry a ledger that is away
/// before giving up: `HEXFLOW_LEDGER_RETRY_S` seconds, 600 by default.
pub fn retry_for() -> Duration {
    std::env::var("HEXFLOW_LEDGER_RETRY_S")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(600), Duration::from_secs_f64)
}

/// Waits between retries: 250 ms doubling to 5 s, until [`retry_for`]
/// has passed since the first failure.
struct Backoff {
    next: Duration,
    until: std::time::Instant,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: Duration::from_millis(250),
            until: std::time::Instant::now() + retry_for(),
        }
    }

    /// Sleeps before the next try; false once the time is up.
    fn wait(&mut self, what: &str, e: &dyn std::fmt::Display) -> bool {
        if std::time::Instant::now() + self.next > self.until {
            return false;
        }
        tracing::warn!("{what}: {e}; retrying in {} ms", self.next.as_millis());
        std::thread::sleep(self.next);
        self.next = (self.next * 2).min(Duration::from_secs(5));
        true
    }
}

/// Whether a job error is the ledger's database being away.
fn transient(e: &JobError) -> bool {
    match e {
        JobError::Ledger(LedgerError::Db(d)) | JobError::Release(ReleaseError::Ledger(LedgerError::Db(d))) => {
            d.is_transient()
        }
        _ => false,
    }
}

/// Runs `op` on `ledger`, retrying with backoff while the ledger is away,
/// on a new connection each time (the old one is broken).
fn retrying<T>(
    ledger: &mut Ledger,
    what: &str,
    mut op: impl FnMut(&mut Ledger) -> Result<T, JobError>,
) -> Result<T, JobError> {
    let mut backoff = Backoff::new();
    loop {
        match op(ledger) {
            Err(e) if transient(&e) && backoff.wait(what, &e) => {
                if let Ok(fresh) = Ledger::open(&ledger.url().clone()) {
                    *ledger = fresh;
                }
            }
            r => return r,
        }
    }
}

/// Opens the ledger, retrying with backoff while it is away.
fn open_retrying(url: &LedgerUrl) -> Result<Ledger, JobError> {
    let mut backoff = Backoff::new();
    loop {
        match Ledger::open(url).map_err(JobError::from) {
            Err(e) if transient(&e) && backoff.wait("opening the ledger", &e) => {}
            r => return r,
        }
    }
}

/// A new run id: time and randomness, unique across machines.
pub fn new_run_id() -> String {
    let bytes = crate::util::random_bytes::<4>().unwrap_or_default();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        crate::util::hex(&bytes)
    )
}

/// Queues the releases of `plan` (in order: the first is claimed first)
/// as run `run_id`, in one transaction, and expires what older runs of
/// the dataset left behind (see the module header). Retried while the
/// ledger is away (a retry of a committed enqueue adds nothing).
pub fn enqueue(
    ledger: &mut Ledger,
    run_id: &str,
    policy_path: &Path,
    plan: &[(ReleaseSpec, String)],
) -> Result<usize, JobError> {
    retrying(ledger, "queueing the plan", |l| {
        enqueue_once(l, run_id, policy_path, plan)
    })
}

fn enqueue_once(
    ledger: &mut Ledger,
    run_id: &str,
    policy_path: &Path,
    plan: &[(ReleaseSpec, String)],
) -> Result<usize, JobError> {
    let policy_path = std::path::absolute(policy_path).unwrap_or_else(|_| policy_path.to_path_buf());
    let policy = policy_path.to_string_lossy();
    let db = ledger.db();
    let now = db.now_ms_sql();
    db.begin_queue()?;
    for dataset in plan
        .iter()
        .map(|(s, _)| s.dataset.as_str())
        .collect::<std::collections::BTreeSet<_>>()
    {
        db.exec(
            &format!(
                "UPDATE jobs SET state = 'done', outcome = 'expired', detail = 'left by a stopped run; superseded by run ' || ?2, lease_until_ms = NULL
                 WHERE dataset = ?1 AND run_id <> ?2 AND (state = 'queued' OR (state = 'running' AND lease_until_ms < {now}))"
            ),
            &[P::T(dataset), P::T(run_id)],
        )?;
    }
    for (rank, (spec, label)) in plan.iter().enumerate() {
        let spec_json = serde_json::to_string(&(spec, label)).unwrap_or_default();
        db.exec(
            "INSERT INTO jobs (job_id, run_id, dataset, policy_path, rank, spec_json, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued')
             ON CONFLICT (job_id) DO NOTHING",
            &[
                P::T(&format!("{run_id}/{rank:06}")),
                P::T(run_id),
                P::T(&spec.dataset),
                P::T(&policy),
                P::I(rank as i64),
                P::T(&spec_json),
            ],
        )?;
    }
    db.commit()?;
    Ok(plan.len())
}

/// Claims the next job (of `run`, or of any run) for `worker` under a
/// lease of `lease`; `None` when nothing is claimable now. Retried while
/// the ledger is away (a claim whose commit was lost with the connection
/// is taken over when its lease ends).
pub fn claim(
    ledger: &mut Ledger,
    worker: &str,
    lease: Duration,
    run: Option<&str>,
) -> Result<Option<Claimed>, JobError> {
    retrying(ledger, "claiming a job", |l| claim_once(l, worker, lease, run))
}

fn claim_once(
    ledger: &mut Ledger,
    worker: &str,
    lease: Duration,
    run: Option<&str>,
) -> Result<Option<Claimed>, JobError> {
    let db = ledger.db();
    let now = db.now_ms_sql();
    let skip = db.skip_locked_sql();
    db.begin_queue()?;
    // Jobs whose workers all died give up rather than kill more workers.
    db.exec(
        &format!(
            "UPDATE jobs SET state = 'done', outcome = 'failed', detail = 'abandoned by ' || CAST(attempts AS TEXT) || ' workers (each stopped mid-job)'
             WHERE state = 'running' AND lease_until_ms < {now} AND attempts >= ?1"
        ),
        &[P::I(MAX_ATTEMPTS)],
    )?;
    let row = db.row(
        &format!(
            "UPDATE jobs SET state = 'running', worker = ?1, lease_until_ms = {now} + ?2, attempts = attempts + 1
             WHERE job_id = (
                SELECT job_id FROM jobs
                WHERE (state = 'queued' OR (state = 'running' AND lease_until_ms < {now}))
                  AND (?3 = '' OR run_id = ?3)
                ORDER BY rank, job_id LIMIT 1 {skip})
             RETURNING job_id, run_id, policy_path, spec_json"
        ),
        &[P::T(worker), P::I(lease.as_millis() as i64), P::T(run.unwrap_or(""))],
    )?;
    let claimed = match row {
        None => None,
        Some(r) => {
            let (job_id, run_id, policy_path, spec_json) = (r.text(0)?, r.text(1)?, r.text(2)?, r.text(3)?);
            let (spec, label): (ReleaseSpec, String) = serde_json::from_str(&spec_json).map_err(|e| JobError::Bad {
                job: job_id.clone(),
                why: format!("unreadable spec: {e}"),
            })?;
            Some(Claimed {
                job_id,
                run_id,
                policy_path: PathBuf::from(policy_path),
                spec,
                label,
            })
        }
    };
    db.commit()?;
    Ok(claimed)
}

/// Extends `worker`'s lease on a job; false when the job is no longer
/// its own (the lease ran out and another worker took it).
pub fn renew(ledger: &mut Ledger, job_id: &str, worker: &str, lease: Duration) -> Result<bool, JobError> {
    let db = ledger.db();
    let now = db.now_ms_sql();
    let n = db.exec(
        &format!("UPDATE jobs SET lease_until_ms = {now} + ?3 WHERE job_id = ?1 AND worker = ?2 AND state = 'running'"),
        &[P::T(job_id), P::T(worker), P::I(lease.as_millis() as i64)],
    )?;
    Ok(n == 1)
}

/// Records what a job's release did (retried while the ledger is away).
pub fn finish(ledger: &mut Ledger, job: &Claimed, outcome: &Result<Outcome, ReleaseError>) -> Result<(), JobError> {
    retrying(ledger, "finishing a job", |l| finish_once(l, job, outcome))
}

fn finish_once(ledger: &mut Ledger, job: &Claimed, outcome: &Result<Outcome, ReleaseError>) -> Result<(), JobError> {
    // `rho_units`: what this job charged (0 unless it made a new release).
    let (kind, detail, rho_units) = match outcome {
        Ok(o) if o.status == Status::Stored => ("stored", String::new(), 0),
        Ok(o) => (
            "new",
            String::new(),
            crate::privacy::ledger::to_units_up(o.manifest.rho_charged()),
        ),
        Err(ReleaseError::Spec(super::SpecError::TooRecent { .. })) => ("too_recent", String::new(), 0),
        Err(e) => ("refused", e.to_string(), 0),
    };
    let db = ledger.db();
    db.begin_queue()?;
    db.exec(
        "UPDATE jobs SET state = 'done', outcome = ?2, detail = ?3, rho_units = ?4, lease_until_ms = NULL WHERE job_id = ?1",
        &[P::T(&job.job_id), P::T(kind), P::T(&detail), P::I(rho_units)],
    )?;
    db.commit()?;
    Ok(())
}

/// How many jobs of `run` are queued, running and done (retried while
/// the ledger is away).
pub fn status(ledger: &mut Ledger, run_id: &str) -> Result<RunStatus, JobError> {
    retrying(ledger, "reading the run's progress", |l| status_once(l, run_id))
}

fn status_once(ledger: &mut Ledger, run_id: &str) -> Result<RunStatus, JobError> {
    let mut s = RunStatus::default();
    for r in ledger.db().rows(
        "SELECT state, CAST(COUNT(*) AS BIGINT) FROM jobs WHERE run_id = ?1 GROUP BY state",
        &[P::T(run_id)],
    )? {
        let n = r.int(1)? as u64;
        match r.text(0)?.as_str() {
            "queued" => s.queued = n,
            "running" => s.running = n,
            _ => s.done = n,
        }
    }
    Ok(s)
}

/// The report of a finished run, as `publish` prints it (retried while
/// the ledger is away).
pub fn report(ledger: &mut Ledger, run_id: &str) -> Result<PublishReport, JobError> {
    retrying(ledger, "reading the run's report", |l| report_once(l, run_id))
}

fn report_once(ledger: &mut Ledger, run_id: &str) -> Result<PublishReport, JobError> {
    let mut report = PublishReport::default();
    for r in ledger.db().rows(
        "SELECT outcome, detail, rho_units, spec_json FROM jobs WHERE run_id = ?1 ORDER BY rank",
        &[P::T(run_id)],
    )? {
        match r.opt_text(0)?.as_deref() {
            Some("new") => {
                report.new += 1;
                report.rho_spent += r.int(2)? as f64 / NANO;
            }
            Some("stored") => report.stored += 1,
            Some("too_recent") => report.too_recent += 1,
            _ => {
                let label = serde_json::from_str::<(serde_json::Value, String)>(&r.text(3)?)
                    .map(|(_, l)| l)
                    .unwrap_or_default();
                let detail = r.opt_text(1)?.unwrap_or_else(|| "not finished".into());
                report.refused.push(format!("{label}: {detail}"));
            }
        }
    }
    Ok(report)
}

/// What a worker does when the queue is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenIdle {
    /// Stop once no job is queued or running (of `run`, or of any run).
    Exit,
    /// Keep polling for new runs (a standing worker on another machine).
    Wait,
}

/// What one worker did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    pub worker: String,
    pub jobs: usize,
    pub report: PublishReport,
}

/// This worker's name in the queue: host and process.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}", std::process::id())
}

/// Takes jobs until the queue is empty (or `stop` is set), `threads` at a
/// time: each job's release is made by a releaser of its policy on
/// `data_dir` and `url`. One process per machine with a thread per core
/// uses the machine as the threaded `publish` does; separate processes
/// would each load the grid and weights, and their rayon pools would
/// contend for the same cores.
pub fn work(
    url: &LedgerUrl,
    data_dir: &Path,
    run: Option<&str>,
    lease: Duration,
    idle: WhenIdle,
    stop: &AtomicBool,
    threads: usize,
) -> Result<WorkerReport, JobError> {
    let worker = worker_name();
    let releasers: Mutex<HashMap<PathBuf, Arc<Releaser>>> = Mutex::default();
    let report = Mutex::new(WorkerReport {
        worker: worker.clone(),
        ..WorkerReport::default()
    });
    // One thread's error stops the others after their current job.
    let failed = AtomicBool::new(false);
    let results: Vec<Result<(), JobError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let name = format!("{worker}#{t}");
                let ctx = WorkLoop {
                    url,
                    data_dir,
                    run,
                    lease,
                    idle,
                    releasers: &releasers,
                    report: &report,
                };
                let (stop, failed) = (stop, &failed);
                scope.spawn(move || {
                    let r = ctx.run(&name, &|| {
                        stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed)
                    });
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(report.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// What the claim loops of one worker process share.
struct WorkLoop<'a> {
    url: &'a LedgerUrl,
    data_dir: &'a Path,
    run: Option<&'a str>,
    lease: Duration,
    idle: WhenIdle,
    releasers: &'a Mutex<HashMap<PathBuf, Arc<Releaser>>>,
    report: &'a Mutex<WorkerReport>,
}

impl WorkLoop<'_> {
    fn run(&self, worker: &str, stopped: &dyn Fn() -> bool) -> Result<(), JobError> {
        let mut ledger = open_retrying(self.url)?;
        // The lease renewals' own connection, kept for every job: the
        // queue's statements run on `ledger` while a release goes on.
        let mut renewer = open_retrying(self.url)?;
        while !stopped() {
            let Some(job) = claim(&mut ledger, worker, self.lease, self.run)? else {
                let left = match self.run {
                    Some(r) => {
                        let s = status(&mut ledger, r)?;
                        s.queued + s.running
                    }
                    None => retrying(&mut ledger, "counting pending jobs", pending)?,
                };
                if left == 0 && self.idle == WhenIdle::Exit {
                    break;
                }
                // Others hold the rest: wait to take over any whose lease ends.
                std::thread::sleep(Duration::from_millis(250).min(self.lease / 4));
                continue;
            };
            let releaser = {
                let mut backoff = Backoff::new();
                loop {
                    match self.releaser(&job) {
                        Err(e) if transient(&e) && !stopped() && backoff.wait("loading the job's policy", &e) => {}
                        r => break r?,
                    }
                }
            };
            // A release that met the ledger away is run again (its id makes
            // a rerun harmless: charged once, drawn once), not recorded as
            // refused.
            let mut backoff = Backoff::new();
            let outcome = loop {
                let outcome = with_lease(&mut renewer, &job, worker, self.lease, || {
                    releaser.release(&job.spec, releaser.today())
                });
                match &outcome {
                    Err(ReleaseError::Ledger(LedgerError::Db(e)))
                        if e.is_transient() && !stopped() && backoff.wait(&format!("job {}", job.job_id), e) => {}
                    _ => break outcome,
                }
            };
            finish(&mut ledger, &job, &outcome)?;
            let mut report = self.report.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            report.report.tally(&job.label, &outcome);
            report.jobs += 1;
        }
        Ok(())
    }

    /// The releaser of the job's policy, made once per process (it holds
    /// the grid and its weights).
    fn releaser(&self, job: &Claimed) -> Result<Arc<Releaser>, JobError> {
        let mut releasers = self.releasers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let releaser = match releasers.get(&job.policy_path) {
            Some(r) => r.clone(),
            None => {
                let policy = Policy::load(&job.policy_path)?;
                let r = Arc::new(Releaser::new(policy, self.data_dir)?.with_ledger_url(self.url.clone())?);
                releasers.insert(job.policy_path.clone(), r.clone());
                r
            }
        };
        if releaser.policy.dataset() != job.spec.dataset {
            return Err(JobError::Bad {
                job: job.job_id.clone(),
                why: format!(
                    "{} is now the policy of dataset {:?}, not {:?}",
                    job.policy_path.display(),
                    releaser.policy.dataset(),
                    job.spec.dataset
                ),
            });
        }
        Ok(releaser)
    }
}

/// Jobs queued or running in any run.
fn pending(ledger: &mut Ledger) -> Result<u64, JobError> {
    let row = ledger
        .db()
        .row("SELECT CAST(COUNT(*) AS BIGINT) FROM jobs WHERE state <> 'done'", &[])?;
    Ok(row.map_or(Ok(0), |r| r.int(0))? as u64)
}

/// Runs `f` while `renewer` (a second connection) renews the job's lease
/// every third of it.
fn with_lease<T: Send>(
    renewer: &mut Ledger,
    job: &Claimed,
    worker: &str,
    lease: Duration,
    f: impl FnOnce() -> T + Send,
) -> T {
    // Dropping `tx` (the release is done) ends the renewals.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(lease / 3) {
                match renew(renewer, &job.job_id, worker, lease) {
                    Ok(true) => {}
                    // Taken over: the release goes on; its lock and id keep
                    // a second run of the job harmless.
                    Ok(false) => {
                        tracing::warn!("lost the lease on job {}", job.job_id);
                        break;
                    }
                    // The ledger is away: renew on a new connection next
                    // time (the lease may run out meanwhile, harmlessly).
                    Err(e) => {
                        tracing::warn!("cannot renew the lease on job {}: {e}", job.job_id);
                        if let Ok(fresh) = Ledger::open(&renewer.url().clone()) {
                            *renewer = fresh;
                        }
                    }
                }
            }
        });
        let value = f();
        drop(tx);
        value
    })
}
