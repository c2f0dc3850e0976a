//! The simulated calendar: public and school holidays (from the grid's
//! `calendar.toml`) and the events the simulator injects (football matches,
//! cruise calls). The events are the ground truth that analyses of the
//! published releases should find again.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{Datelike, Months, NaiveDate, NaiveTime, Weekday};
use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};
use serde::{Deserialize, Serialize};

use crate::grid::GridError;

/// `calendar.toml`: holidays as published by the authorities.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarFile {
    #[serde(default)]
    pub public_holidays: Vec<NaiveDate>,
    #[serde(default)]
    pub school_holidays: Vec<HolidayPeriod>,
}

/// A school-holiday period, first and last day included.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HolidayPeriod {
    pub name: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl CalendarFile {
    pub fn load(path: &Path) -> Result<Self, GridError> {
        let text = std::fs::read_to_string(path).map_err(|e| GridError::io(path, e))?;
        toml::from_str(&text).map_err(|e| GridError::Spec {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn is_public_holiday(&self, d: NaiveDate) -> bool {
        self.public_holidays.contains(&d)
    }

    pub fn is_school_holiday(&self, d: NaiveDate) -> bool {
        self.school_holidays.iter().any(|p| p.from <= d && d <= p.to)
    }
}

/// A football match at the grid's stadium.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    pub date: NaiveDate,
    /// Local kick-off time.
    pub kickoff: NaiveTime,
    pub competition: &'static str,
    /// Extra devices of the operator around the stadium at the peak hour.
    pub extra_devices: u32,
    pub landmark: String,
}

/// A cruise ship's call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CruiseCall {
    pub date: NaiveDate,
    /// Passenger and crew devices of the operator (incl. roaming) ashore.
    pub extra_devices: u32,
    pub landmark: String,
}

fn rng_for(seed: u64, stream: u64, year: i32) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(
        seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (year as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9),
    )
}

/// Home matches of one calendar year: every other weekend of the league
/// season (August–May, no winter break), plus a few midweek European nights
/// in autumn. About 20 a year.
pub fn matches(seed: u64, year: i32, stadium: &str, holidays: &CalendarFile) -> Vec<Match> {
    let mut rng = rng_for(seed, 1, year);
    let mut out = Vec::new();
    let Some(mut d) = NaiveDate::from_ymd_opt(year, 1, 1) else {
        return out;
    };
    while d.weekday() != Weekday::Sat {
        d = d.succ_opt().unwrap_or(d);
    }
    let mut home = rng.random::<bool>();
    let in_season = |d: NaiveDate| {
        let (m, day) = (d.month(), d.day());
        !(m == 6 || m == 7 || (m == 8 && day < 9) || (m == 12 && day > 21) || (m == 1 && day < 4))
    };
    while d.year() == year {
        if in_season(d) {
            if home {
                let (date, kickoff) = match rng.random_range(0..10) {
                    0 => (d.pred_opt().unwrap_or(d), NaiveTime::from_hms_opt(21, 0, 0)),
                    1..=4 => (d, NaiveTime::from_hms_opt(21, 0, 0)),
                    _ => (d.succ_opt().unwrap_or(d), NaiveTime::from_hms_opt(20, 45, 0)),
                };
                out.push(Match {
                    date,
                    kickoff: kickoff.unwrap_or_default(),
                    competition: "league",
                    extra_devices: rng.random_range(24_000..42_000),
                    landmark: stadium.to_string(),
                });
            }
            home = !home;
        }
        d += chrono::Duration::days(7);
    }
    // Two or three European nights, Wednesday or Thursday, autumn.
    for k in 0..rng.random_range(2..4) {
        let Some(base) = NaiveDate::from_ymd_opt(year, 9, 15).and_then(|b| b.checked_add_months(Months::new(k))) else {
            continue;
        };
        let mut date = base + chrono::Duration::days(rng.random_range(0..14));
        while !matches!(date.weekday(), Weekday::Wed | Weekday::Thu) {
            date = date.succ_opt().unwrap_or(date);
        }
        if out.iter().any(|m: &Match| (m.date - date).num_days().abs() < 3) || holidays.is_public_holiday(date) {
            continue;
        }
        out.push(Match {
            date,
            kickoff: NaiveTime::from_hms_opt(21, 0, 0).unwrap_or_default(),
            competition: "europe",
            extra_devices: rng.random_range(30_000..45_000),
            landmark: stadium.to_string(),
        });
    }
    out.sort_by_key(|m| m.date);
    out
}

/// Cruise calls of one calendar year: frequent from April to October,
/// rare in winter, with more passengers in summer.
pub fn cruise_calls(seed: u64, year: i32, terminal: &str) -> Vec<CruiseCall> {
    let mut rng = rng_for(seed, 2, year);
    let mut out = Vec::new();
    let (Some(start), Some(end)) = (
        NaiveDate::from_ymd_opt(year, 1, 1),
        NaiveDate::from_ymd_opt(year, 12, 31),
    ) else {
        return out;
    };
    let mut taken = BTreeSet::new();
    for d in start.iter_days().take_while(|d| *d <= end) {
        let high = (4..=10).contains(&d.month());
        let p = if high { 0.42 } else { 0.10 };
        if rng.random::<f64>() < p && taken.insert(d) {
            let big = if high {
                rng.random_range(2_500..6_000)
            } else {
                rng.random_range(1_200..3_000)
            };
            out.push(CruiseCall {
                date: d,
                extra_devices: big,
                landmark: terminal.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_twenty_matches_a_year_all_in_season_and_evenings() {
        for year in [2024, 2025, 2026] {
            let m = matches(7, year, "Stade", &CalendarFile::default());
            assert!((17..=26).contains(&m.len()), "{year}: {} matches", m.len());
            assert!(m.iter().all(|m| !matches!(m.date.month(), 6 | 7)));
            assert!(m.iter().all(|m| m.kickoff.hour_is_evening()));
        }
    }

    trait Evening {
        fn hour_is_evening(&self) -> bool;
    }
    impl Evening for NaiveTime {
        fn hour_is_evening(&self) -> bool {
            use chrono::Timelike;
            (20..=21).contains(&self.hour())
        }
    }

    #[test]
    fn events_are_deterministic_per_seed() {
        assert_eq!(cruise_calls(3, 2025, "T"), cruise_calls(3, 2025, "T"));
        assert_ne!(cruise_calls(3, 2025, "T"), cruise_calls(4, 2025, "T"));
    }
}
