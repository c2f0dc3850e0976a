//! `hexflow publish`: the public publication plan, day after day.
//!
//! For every standing release of the policy and every day (or complete
//! week or month) with stored data that is old enough for the public
//! audience, make the release if it does not exist yet. Releases that exist
//! cost nothing; a refusal (e.g. a cap already reached) is reported and the
//! rest go on.

use std::path::Path;

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

/// Runs the plan.
pub fn publish(releaser: &Releaser, data_dir: &Path) -> Result<PublishReport, ReleaseError> {
    let store = CountStore::new(data_dir, releaser.policy.dataset());
    let catalog = store.catalog()?;
    let today = releaser.today();
    let mut report = PublishReport::default();
    let progress_total: usize = releaser
        .policy
        .spec
        .publication
        .iter()
        .map(|p| CountStore::days(&catalog, p.metric).len())
        .sum();
    let progress = crate::cli_progress(progress_total as u64, "publishing");
    for plan in &releaser.policy.spec.publication {
        let days: Vec<NaiveDate> = CountStore::days(&catalog, plan.metric).into_iter().collect();
        for (from, to) in windows(plan.bin, &days) {
            progress.inc(1);
            let spec = ReleaseSpec {
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
                from,
                to,
                budget: Budget::Rho(plan.rho),
            };
            match releaser.release(&spec, today) {
                Ok(o) if o.status == super::Status::Stored => report.stored += 1,
                Ok(o) => {
                    report.new += 1;
                    report.rho_spent += o.manifest.rho;
                }
                Err(ReleaseError::Spec(super::SpecError::TooRecent { .. })) => report.too_recent += 1,
                Err(e) => report.refused.push(format!(
                    "{} {} {} {}..{}: {e}",
                    plan.metric,
                    plan.bin.as_str(),
                    match plan.unit {
                        super::Unit::Zone => "zones".to_string(),
                        super::Unit::Hex => format!("res {}", plan.res),
                    },
                    from,
                    to
                )),
            }
        }
    }
    progress.finish_and_clear();
    Ok(report)
}
