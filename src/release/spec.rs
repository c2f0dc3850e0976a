//! What a release asks for, and the checks made before anything is read.

use chrono::{Datelike, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::privacy::Bin;
use crate::privacy::mechanism::Budget;
use crate::store::Metric;

/// Longest window one release may cover.
pub const MAX_WINDOW_DAYS: i64 = 366;
/// Most noisy values one release may hold.
pub const MAX_VALUES: usize = 20_000_000;

/// A release request. Its canonical JSON names it: the same spec is the
/// same release, served from the store at no cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    pub dataset: String,
    pub audience: String,
    pub metric: Metric,
    /// H3 hexes (the default, left out of the canonical JSON so ids of hex
    /// releases never change) or the grid's named zones.
    #[serde(default, skip_serializing_if = "Unit::is_hex")]
    pub unit: Unit,
    /// H3 resolution of the hexes (footfall) or of the zones (flows, ≤ 7);
    /// 0 for named zones.
    pub res: u8,
    pub bin: Bin,
    /// Presence only: the period of the day (a name of the policy's
    /// `[presence.periods]`) and how values are split. Left out of the
    /// canonical JSON of other metrics, so their ids never change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<By>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub budget: Budget,
}

pub use crate::vocab::{By, Unit};

/// Why a release is refused before any data is touched.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("unknown audience {0:?} (the policy defines {1:?})")]
    UnknownAudience(String, Vec<String>),
    #[error("--from {from} is after --to {to}")]
    EmptyWindow { from: NaiveDate, to: NaiveDate },
    #[error("the window has {days} days; a release covers at most {MAX_WINDOW_DAYS}")]
    WindowTooLong { days: i64 },
    #[error("{bin} bins need a window of whole {unit}: {reason}")]
    Misaligned {
        bin: &'static str,
        unit: &'static str,
        reason: String,
    },
    #[error("purpose limit: audience {audience} may use resolutions up to {finest} (asked {res})")]
    TooFine { audience: String, finest: u8, res: u8 },
    #[error("purpose limit: audience {audience} may use bins of {shortest} or longer (asked {bin})")]
    TooShort {
        audience: String,
        shortest: &'static str,
        bin: &'static str,
    },
    #[error(
        "purpose limit: audience {audience} may see a day only {delay} days after it; {to} can be released from {earliest}"
    )]
    TooRecent {
        audience: String,
        delay: u32,
        to: NaiveDate,
        earliest: NaiveDate,
    },
    #[error("flows are released between zones of resolution 7 or coarser (asked {0})")]
    FlowZonesTooFine(u8),
    #[error("zone releases have no H3 resolution: give res 0 (asked {0})")]
    ZoneWithResolution(u8),
    #[error(
        "{kind} must be a number from {min:e} to {max} (got {got}): below the minimum the noise would swamp every value or overflow the sampler"
    )]
    BadBudget {
        kind: &'static str,
        got: f64,
        min: f64,
        max: f64,
    },
    #[error("{0}")]
    Presence(String),
    #[error("the spec names dataset {spec:?} but the policy is for {policy:?}")]
    WrongDataset { spec: String, policy: String },
}

impl ReleaseSpec {
    /// Canonical JSON (field order fixed by the struct).
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `r-` + 20 hex digits of the SHA-256 of the canonical spec and of
    /// everything else its noise and cost depend on (`context`: the attested
    /// bounds and the weight matrix's key), so a changed policy or grid can
    /// never reuse an old charge.
    pub fn release_id(&self, context: &str) -> String {
        let h = crate::util::sha256_parts([self.canonical().as_bytes(), context.as_bytes()]);
        format!("r-{}", &h[..20])
    }

    /// Every local day the window touches (each is charged).
    pub fn days(&self) -> Vec<NaiveDate> {
        self.from.iter_days().take_while(|d| *d <= self.to).collect()
    }

    /// Presence needs a period of the policy, a split and daily or longer
    /// bins; other metrics have neither period nor split.
    fn check_presence(&self, policy: &Policy) -> Result<(), SpecError> {
        let err = |s: String| Err(SpecError::Presence(s));
        if self.metric != Metric::Presence {
            if self.period.is_some() || self.by.is_some() {
                return err(format!(
                    "period and by are for presence releases only (asked {})",
                    self.metric
                ));
            }
            return Ok(());
        }
        let Some(p) = &policy.spec.presence else {
            return err(format!(
                "policy {} has no [presence] section: no presence releases for dataset {}",
                policy.path.display(),
                policy.dataset()
            ));
        };
        let periods: Vec<&String> = p.periods.keys().collect();
        match &self.period {
            None => return err(format!("a presence release needs a period: one of {periods:?}")),
            Some(name) if !p.periods.contains_key(name) => {
                return err(format!("unknown period {name:?}: the policy names {periods:?}"));
            }
            Some(_) => {}
        }
        if self.by.is_none() {
            return err("a presence release needs by: none, segment or segment,origin".into());
        }
        if self.bin == Bin::Hour {
            return err(
                "presence counts each device once per period and local day: its bins are 1d, 1w or 1mo (asked 1h)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks the request against the policy's purpose limits; `today` is
    /// the grid's current local date.
    pub fn check(&self, policy: &Policy, today: NaiveDate) -> Result<(), SpecError> {
        if self.dataset != policy.dataset() {
            return Err(SpecError::WrongDataset {
                spec: self.dataset.clone(),
                policy: policy.dataset().to_string(),
            });
        }
        let audiences = &policy.spec.audiences;
        let a = audiences
            .get(&self.audience)
            .ok_or_else(|| SpecError::UnknownAudience(self.audience.clone(), audiences.keys().cloned().collect()))?;
        self.budget.check()?;
        if self.from > self.to {
            return Err(SpecError::EmptyWindow {
                from: self.from,
                to: self.to,
            });
        }
        let days = (self.to - self.from).num_days() + 1;
        if days > MAX_WINDOW_DAYS {
            return Err(SpecError::WindowTooLong { days });
        }
        match self.bin {
            Bin::Week if self.from.weekday() != Weekday::Mon || self.to.weekday() != Weekday::Sun => {
                return Err(SpecError::Misaligned {
                    bin: "1w",
                    unit: "weeks",
                    reason: format!(
                        "--from must be a Monday and --to a Sunday ({} is a {}, {} a {})",
                        self.from,
                        self.from.weekday(),
                        self.to,
                        self.to.weekday()
                    ),
                });
            }
            Bin::Month if self.from.day() != 1 || self.to.succ_opt().is_none_or(|d| d.day() != 1) => {
                return Err(SpecError::Misaligned {
                    bin: "1mo",
                    unit: "months",
                    reason: format!(
                        "--from must be a first and --to a last day of a month (got {} and {})",
                        self.from, self.to
                    ),
                });
            }
            _ => {}
        }
        self.check_presence(policy)?;
        if self.unit == Unit::Zone && self.res != 0 {
            return Err(SpecError::ZoneWithResolution(self.res));
        }
        if self.unit == Unit::Hex && self.metric == Metric::Flows && self.res > 7 {
            return Err(SpecError::FlowZonesTooFine(self.res));
        }
        // Named zones are districts, coarser than any hex an audience may see.
        if self.unit == Unit::Hex && self.res > a.finest_res {
            return Err(SpecError::TooFine {
                audience: self.audience.clone(),
                finest: a.finest_res,
                res: self.res,
            });
        }
        if self.bin < a.shortest_bin {
            return Err(SpecError::TooShort {
                audience: self.audience.clone(),
                shortest: a.shortest_bin.as_str(),
                bin: self.bin.as_str(),
            });
        }
        let earliest = self
            .to
            .checked_add_signed(chrono::Duration::days(i64::from(a.min_delay_days)))
            .unwrap_or(NaiveDate::MAX);
        if earliest > today {
            return Err(SpecError::TooRecent {
                audience: self.audience.clone(),
                delay: a.min_delay_days,
                to: self.to,
                earliest,
            });
        }
        Ok(())
    }
}
