//! `hexflow publish`: the public publication plan, day after day.
//!
//! For every standing release of the policy and every day (or complete
//! week or month) with stored data that is old enough for the public
//! audience, make the release if it does not exist yet. Releases that exist
//! cost nothing; a refusal (e.g. a cap already reached) is reported and the
//! rest go on.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::{ReleaseError, ReleaseSpec, Releaser};
use crate::privacy::Bin;
use crate::privacy::mechanism::Budget;
use crate::store::CountStore;

/// What a publish run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishReport {
    pub new: usize,
    pub stored: usize,
    pub too_recent: usize,
    /// ρ taken from the ledger, summed over every day charged.
    pub rho_spent: f64,
    pub refused: Vec<String>,
}

/// The windows a standing release covers among the stored days.
fn windows(bin: Bin, days: &[NaiveDate]) -> Vec<(NaiveDate, NaiveDate)> {
    let have = |d: NaiveDate| days.binary_search(&d).is_ok();
    match bin {
        Bin::Hour | Bin::Day => days.iter().map(|d| (*d, *d)).collect(),
        Bin::Week => days
            .iter()
            .filter(|d| d.weekday() == chrono::Weekday::Mon)
            .map(|d| (*d, *d + chrono::Duration::days(6)))
            .filter(|(a, b)| a.iter_days().take_while(|x| x <= b).all(have))
            .collect(),
        Bin::Month => days
            .iter()
            .filter(|d| d.day() == 1)
            .filter_map(|d| Some((*d, d.checked_add_months(chrono::Months::new(1))?.pred_opt()?)))
            .filter(|(a, b)| a.iter_days().take_while(|x| x <= b).all(have))
            .collect(),
    }
}

/// How far a publish run is, readable while it runs (the server's
/// `/healthz` while the demo publishes).
#[derive(Debug, Default)]
pub struct Progress {
    /// Windows the plan covers.
    pub total: AtomicUsize,
    /// Windows done (new, stored, too recent or refused).
    pub done: AtomicUsize,
    pub finished: AtomicBool,
    /// Set to stop after the releases being made (each whole or not at
    /// all): a server stopped with Ctrl-C must not wait for the whole plan.
    pub stop: AtomicBool,
}

/// One release the plan asks for.
struct Job<'a> {
    plan: &'a crate::policy::StandingRelease,
    from: NaiveDate,
    to: NaiveDate,
}

/// The public release a plan item makes for one window.
fn spec_of(releaser: &Releaser, job: &Job) -> ReleaseSpec {
    let plan = job.plan;
    ReleaseSpec {
        dataset: releaser.policy.dataset().to_string(),
        audience: crate::vocab::audience::PUBLIC.into(),
        metric: plan.metric,
        unit: plan.unit,
        res: plan.res,
        bin: plan.bin,
        period: plan.period.clone(),
        by: plan
            .by
            .or((plan.metric == crate::store::Metric::Presence).then_some(crate::vocab::By::Segment)),
        from: job.from,
        to: job.to,
        budget: Budget::Rho(plan.rho),
    }
}

/// Runs the plan.
pub fn publish(releaser: &Releaser, data_dir: &Path) -> Result<PublishReport, ReleaseError> {
    publish_with(releaser, data_dir, &Progress::default())
}

/// The releases the plan asks for among the stored days, newest windows
/// first (a viewer started while publishing has the recent days to show
/// within seconds), each with a label for reports.
pub fn plan(releaser: &Releaser, data_dir: &Path) -> Result<Vec<(ReleaseSpec, String)>, ReleaseError> {
    let store = CountStore::new(data_dir, releaser.policy.dataset());
    let catalog = store.catalog()?;
    let mut jobs: Vec<Job> = Vec::new();
    for plan in &releaser.policy.spec.publication {
        let days: Vec<NaiveDate> = CountStore::days(&catalog, plan.metric).into_iter().collect();
        jobs.extend(
            windows(plan.bin, &days)
                .into_iter()
                .map(|(from, to)| Job { plan, from, to }),
        );
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.to));
    Ok(jobs
        .iter()
        .map(|job| {
            let Job { plan, from, to } = job;
            let label = format!(
                "{} {} {} {}..{}",
                plan.metric,
                plan.bin.as_str(),
                match plan.unit {
                    super::Unit::Zone => "zones".to_string(),
                    super::Unit::Hex => format!("res {}", plan.res),
                },
                from,
                to
            );
            (spec_of(releaser, job), label)
        })
        .collect())
}

impl PublishReport {
    /// Counts one release of the plan.
    pub fn tally(&mut self, label: &str, outcome: &Result<super::Outcome, ReleaseError>) {
        match outcome {
            Ok(o) if o.status == super::Status::Stored => self.stored += 1,
            Ok(o) => {
                self.new += 1;
                self.rho_spent += o.manifest.rho_charged();
            }
            Err(ReleaseError::Spec(super::SpecError::TooRecent { .. })) => self.too_recent += 1,
            Err(e) => self.refused.push(format!("{label}: {e}")),
        }
    }
}

/// Runs the plan, newest windows first and several releases at once (one
/// per core): each release is still charged before its noise is drawn and
/// written whole or not at all; two releases of one id never run together
/// (the release lock), and the ledger's charge transaction keeps the caps
/// whatever the order.
pub fn publish_with(releaser: &Releaser, data_dir: &Path, progress: &Progress) -> Result<PublishReport, ReleaseError> {
    let jobs = plan(releaser, data_dir)?;
    let today = releaser.today();
    progress.total.store(jobs.len(), Ordering::Relaxed);
    let bar = crate::cli_progress(jobs.len() as u64, "publishing");
    // Plain threads (util::on_threads), not rayon's pool: a release uses
    // rayon inside, and a rayon worker waiting there would take another
    // release from this loop while holding its release lock (a thread that
    // waits for a lock it holds). Jobs left when `stop` is set are skipped.
    let outcomes = crate::util::on_threads("publish", jobs.iter().collect(), |(spec, _)| {
        if progress.stop.load(Ordering::Relaxed) {
            return None;
        }
        let outcome = releaser.release(spec, today);
        bar.inc(1);
        progress.done.fetch_add(1, Ordering::Relaxed);
        Some(outcome)
    });
    bar.finish_and_clear();
    progress.finished.store(true, Ordering::Relaxed);
    let mut report = PublishReport::default();
    for ((_, item), outcome) in jobs.iter().zip(outcomes) {
        if let Some(outcome) = outcome {
            report.tally(item, &outcome);
        }
    }
    Ok(report)
}
