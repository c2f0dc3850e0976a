//! What planners and the tourism office read: seasonality, event days
//! against their baseline, and forecasts — computed from published (noisy)
//! series only. Everything here is post-processing of releases and costs no
//! privacy budget.
//!
//! A series point carries the value and the standard deviation of its DP
//! noise (from the release's error bar), and every figure derived here
//! carries its own uncertainty, propagated under independent noise.

use std::collections::{BTreeMap, HashSet};

use chrono::{Datelike, Duration, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::vocab::segment::{EXCURSIONIST, RESIDENT, TOURIST};

/// z of a two-sided 95 % interval.
pub use crate::privacy::errorbar::Z95;

/// The sd of the noise behind a published 95 % error bar: b·ln 20 for
/// Laplace noise on hexes (σ = b√2), 1.96 σ otherwise (Gaussian noise, or
/// cell placement, whose bars are normal approximations of a weighted sum).
pub fn noise_sd_of_ci95(
    placement: crate::privacy::sensitivity::Placement,
    mechanism: crate::privacy::mechanism::Mechanism,
    ci95: f64,
) -> f64 {
    use crate::privacy::mechanism::Mechanism;
    use crate::privacy::sensitivity::Placement;
    match (placement, mechanism) {
        (Placement::Hex, Mechanism::LaplacePure) => ci95 * std::f64::consts::SQRT_2 / 20f64.ln(),
        _ => ci95 / Z95,
    }
}

/// One published value of a series and the sd of its noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub day: NaiveDate,
    pub value: f64,
    pub noise_sd: f64,
}

/// A mean over points with its 95 % interval (DP noise only: the points
/// are treated as fixed quantities measured with independent noise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    pub mean: f64,
    pub ci95: f64,
    pub n: usize,
}

fn mean_of(points: &[&Point]) -> Option<Mean> {
    if points.is_empty() {
        return None;
    }
    let n = points.len() as f64;
    let mean = points.iter().map(|p| p.value).sum::<f64>() / n;
    let var = points.iter().map(|p| p.noise_sd.powi(2)).sum::<f64>() / (n * n);
    Some(Mean {
        mean,
        ci95: Z95 * var.sqrt(),
        n: points.len(),
    })
}

/// Mean by weekday (Monday first).
pub fn weekday_profile(points: &[Point]) -> Vec<Option<Mean>> {
    (0..7)
        .map(|w| {
            let sel: Vec<&Point> = points
                .iter()
                .filter(|p| p.day.weekday().num_days_from_monday() == w)
                .collect();
            mean_of(&sel)
        })
        .collect()
}

/// Mean by (year, month).
pub fn month_profile(points: &[Point]) -> BTreeMap<(i32, u32), Mean> {
    let mut by: BTreeMap<(i32, u32), Vec<&Point>> = BTreeMap::new();
    for p in points {
        by.entry((p.day.year(), p.day.month())).or_default().push(p);
    }
    by.into_iter()
        .filter_map(|(k, v)| mean_of(&v).map(|m| (k, m)))
        .collect()
}

/// A day against its seasonal baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Excess {
    pub day: NaiveDate,
    pub value: f64,
    pub baseline: f64,
    pub excess: f64,
    /// 95 % interval of the excess: the day's noise, the baseline's, and
    /// the spread of the baseline days.
    pub ci95: f64,
    /// |excess| > ci95: the day stands out by more than the combined
    /// uncertainty of the day and its baseline.
    pub stands_out: bool,
    /// The day is a public holiday of the grid (`holidays.csv`).
    pub holiday: bool,
}

/// The days forming the seasonal baseline of `day`: the same weekday in the
/// `weeks` weeks before and after, the day itself and public holidays
/// excluded (a holiday Monday is not an ordinary Monday).
fn baseline_days(day: NaiveDate, weeks: i64, holidays: &HashSet<NaiveDate>) -> impl Iterator<Item = NaiveDate> + '_ {
    (1..=weeks)
        .flat_map(move |k| [day - Duration::weeks(k), day + Duration::weeks(k)])
        .filter(move |d| !holidays.contains(d))
}

/// The seasonal baseline of `day`: the mean of its [`baseline_days`], so
/// that the season and the weekly rhythm are both accounted for.
pub fn baseline(
    points: &BTreeMap<NaiveDate, Point>,
    day: NaiveDate,
    weeks: i64,
    holidays: &HashSet<NaiveDate>,
) -> Option<Mean> {
    let sel: Vec<&Point> = baseline_days(day, weeks, holidays)
        .filter_map(|d| points.get(&d))
        .collect();
    mean_of(&sel)
}

/// Every day with a baseline, compared with it. The interval of the excess
/// holds the DP noise of the day and of the baseline mean, and the
/// baseline days' own spread (a day varies around its season even without
/// noise), so a day "stands out" only when it is unusual for its season.
pub fn excesses(points: &[Point], weeks: i64, holidays: &HashSet<NaiveDate>) -> Vec<Excess> {
    let by_day: BTreeMap<NaiveDate, Point> = points.iter().map(|p| (p.day, *p)).collect();
    points
        .iter()
        .filter_map(|p| {
            let b = baseline(&by_day, p.day, weeks, holidays)?;
            let same: Vec<f64> = baseline_days(p.day, weeks, holidays)
                .filter_map(|d| by_day.get(&d).map(|x| x.value))
                .collect();
            let n = same.len() as f64;
            let spread_var = if same.len() > 1 {
                same.iter().map(|v| (v - b.mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            let ci95 =
                (p.noise_sd.powi(2) * Z95 * Z95 + b.ci95.powi(2) + Z95 * Z95 * spread_var * (1.0 + 1.0 / n)).sqrt();
            let excess = p.value - b.mean;
            Some(Excess {
                day: p.day,
                value: p.value,
                baseline: b.mean,
                excess,
                ci95,
                stands_out: excess.abs() > ci95,
                holiday: holidays.contains(&p.day),
            })
        })
        .collect()
}

/// A day of a forecast.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForecastDay {
    pub day: NaiveDate,
    pub value: f64,
    /// Prediction interval (95 %): the model's residual variance plus the
    /// DP noise variance of the value that will be published.
    pub lo: f64,
    pub hi: f64,
    pub holiday: bool,
}

/// Errors of the model and of a seasonal-naive baseline (same weekday one
/// week earlier) on rolling origins over the last weeks of the series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backtest {
    pub origins: usize,
    pub horizon_days: usize,
    pub days_scored: usize,
    pub mae_model: f64,
    pub mae_seasonal_naive: f64,
    /// Share of scored days inside the model's 95 % interval.
    pub coverage95: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub model: String,
    pub days: Vec<ForecastDay>,
    pub backtest: Option<Backtest>,
}

/// The model, fitted on `history` (sorted by day): a level from the last
/// `LEVEL_WEEKS` weeks, multiplicative weekday factors and a holiday factor
/// from the whole history, and a yearly factor (the same weeks a year
/// earlier against the year's mean) when more than a year is known.
struct Model {
    level: f64,
    weekday: [f64; 7],
    holiday: f64,
    yearly: Option<(f64, BTreeMap<NaiveDate, f64>)>,
    resid_sd: f64,
    noise_sd: f64,
}

const LEVEL_WEEKS: i64 = 6;

impl Model {
    fn fit(history: &[Point], holidays: &HashSet<NaiveDate>) -> Option<Self> {
        let last = history.last()?.day;
        if history.len() < 21 {
            return None;
        }
        let ordinary: Vec<&Point> = history.iter().filter(|p| !holidays.contains(&p.day)).collect();
        let overall = ordinary.iter().map(|p| p.value).sum::<f64>() / ordinary.len().max(1) as f64;
        if overall <= 0.0 {
            return None;
        }
        let mut weekday = [1.0; 7];
        for (w, f) in weekday.iter_mut().enumerate() {
            let sel: Vec<f64> = ordinary
                .iter()
                .filter(|p| p.day.weekday().num_days_from_monday() as usize == w)
                .map(|p| p.value)
                .collect();
            if !sel.is_empty() {
                *f = sel.iter().sum::<f64>() / sel.len() as f64 / overall;
            }
        }
        let wf = |d: NaiveDate| weekday[d.weekday().num_days_from_monday() as usize].max(1e-6);
        // Level: deseasonalised mean of the recent weeks.
        let recent: Vec<f64> = ordinary
            .iter()
            .filter(|p| p.day > last - Duration::weeks(LEVEL_WEEKS))
            .map(|p| p.value / wf(p.day))
            .collect();
        let level = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
        // Holiday factor: holidays against the same weekday's expectation.
        let hol: Vec<f64> = history
            .iter()
            .filter(|p| holidays.contains(&p.day))
            .map(|p| p.value / (overall * wf(p.day)))
            .collect();
        let holiday = if hol.is_empty() {
            1.0
        } else {
            hol.iter().sum::<f64>() / hol.len() as f64
        };
        let by_day: BTreeMap<NaiveDate, f64> = history.iter().map(|p| (p.day, p.value)).collect();
        let yearly = (history[0].day <= last - Duration::days(372)).then(|| {
            // Ratio of a day a year earlier (52 weeks: same weekday) to the
            // level of that time.
            (overall, by_day.clone())
        });
        let tail = history.len().min(28);
        let noise_sd = history.iter().rev().take(tail).map(|p| p.noise_sd).sum::<f64>() / tail as f64;
        let mut m = Self {
            level,
            weekday,
            holiday,
            yearly,
            resid_sd: 0.0,
            noise_sd,
        };
        // Residual sd: in-sample errors over the recent weeks, less the DP
        // noise already in them (kept at least 0).
        let errs: Vec<f64> = history
            .iter()
            .filter(|p| p.day > last - Duration::weeks(LEVEL_WEEKS))
            .map(|p| p.value - m.predict(p.day, holidays))
            .collect();
        let mse = errs.iter().map(|e| e * e).sum::<f64>() / errs.len().max(1) as f64;
        m.resid_sd = (mse - noise_sd * noise_sd).max(0.0).sqrt();
        Some(m)
    }

    fn predict(&self, day: NaiveDate, holidays: &HashSet<NaiveDate>) -> f64 {
        let mut v = self.level * self.weekday[day.weekday().num_days_from_monday() as usize];
        if holidays.contains(&day) {
            v *= self.holiday;
        }
        if let Some((overall, by_day)) = &self.yearly
            && let Some(y) = by_day.get(&(day - Duration::weeks(52)))
        {
            // Blend in what the same weekday did a year earlier, relative
            // to that year's weekday expectation.
            let expected = overall * self.weekday[day.weekday().num_days_from_monday() as usize];
            if expected > 0.0 {
                v *= (0.5 + 0.5 * (y / expected)).clamp(0.25, 4.0);
            }
        }
        v.max(0.0)
    }

    fn interval(&self, value: f64) -> (f64, f64) {
        let half = Z95 * (self.resid_sd.powi(2) + self.noise_sd.powi(2)).sqrt();
        ((value - half).max(0.0), value + half)
    }
}

/// Forecast of the `horizon` days after the last point, with a backtest.
pub fn forecast(history: &[Point], holidays: &HashSet<NaiveDate>, horizon: usize) -> Option<Forecast> {
    let model = Model::fit(history, holidays)?;
    let last = history.last()?.day;
    let days = (1..=horizon as i64)
        .map(|k| {
            let day = last + Duration::days(k);
            let value = model.predict(day, holidays);
            let (lo, hi) = model.interval(value);
            ForecastDay {
                day,
                value,
                lo,
                hi,
                holiday: holidays.contains(&day),
            }
        })
        .collect();
    Some(Forecast {
        model: "level of the last 6 weeks × weekday factor × holiday factor (× same week a year earlier when known); interval adds DP noise variance to the residual variance".into(),
        days,
        backtest: backtest(history, holidays, horizon, 8),
    })
}

/// Rolling-origin backtest: `origins` forecasts, one week apart, ending
/// `horizon` days before the last point.
pub fn backtest(history: &[Point], holidays: &HashSet<NaiveDate>, horizon: usize, origins: usize) -> Option<Backtest> {
    let by_day: BTreeMap<NaiveDate, f64> = history.iter().map(|p| (p.day, p.value)).collect();
    let last = history.last()?.day;
    let (mut err_m, mut err_n, mut inside, mut n) = (0.0, 0.0, 0usize, 0usize);
    let mut used = 0;
    for o in 0..origins {
        let origin = last - Duration::days(horizon as i64) - Duration::weeks(o as i64);
        let train: Vec<Point> = history.iter().filter(|p| p.day <= origin).copied().collect();
        let Some(m) = Model::fit(&train, holidays) else {
            continue;
        };
        used += 1;
        for k in 1..=horizon as i64 {
            let day = origin + Duration::days(k);
            let (Some(actual), Some(naive)) = (by_day.get(&day), by_day.get(&(day - Duration::weeks(1)))) else {
                continue;
            };
            // The naive forecast may only use data known at the origin.
            let naive = if day - Duration::weeks(1) <= origin {
                *naive
            } else {
                by_day
                    .get(&(day - Duration::weeks(1 + (k - 1) / 7 + 1)))
                    .copied()
                    .unwrap_or(*naive)
            };
            let pred = m.predict(day, holidays);
            let (lo, hi) = m.interval(pred);
            err_m += (pred - actual).abs();
            err_n += (naive - actual).abs();
            inside += usize::from((lo..=hi).contains(actual));
            n += 1;
        }
    }
    (n > 0).then(|| Backtest {
        origins: used,
        horizon_days: horizon,
        days_scored: n,
        mae_model: err_m / n as f64,
        mae_seasonal_naive: err_n / n as f64,
        coverage95: inside as f64 / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    /// A weekly rhythm (weekends ×1.5) with a known noise sd, no noise drawn:
    /// the computations must recover the rhythm exactly.
    fn rhythm(from: &str, days: i64, sd: f64) -> Vec<Point> {
        (0..days)
            .map(|k| {
                let d = day(from) + Duration::days(k);
                let weekend = d.weekday().num_days_from_monday() >= 5;
                Point {
                    day: d,
                    value: if weekend { 150.0 } else { 100.0 },
                    noise_sd: sd,
                }
            })
            .collect()
    }

    #[test]
    fn error_bars_convert_back_to_the_noise_sd() {
        use crate::privacy::mechanism::Mechanism;
        use crate::privacy::sensitivity::Placement;
        // Laplace of scale b: P(|X| > b ln 20) = 5 %, sd = b√2.
        let b = 3.0;
        let sd = noise_sd_of_ci95(Placement::Hex, Mechanism::LaplacePure, b * 20f64.ln());
        assert!((sd - b * 2f64.sqrt()).abs() < 1e-12);
        let g = noise_sd_of_ci95(Placement::Hex, Mechanism::GaussianZcdp, Z95 * 4.0);
        assert!((g - 4.0).abs() < 1e-12);
        let c = noise_sd_of_ci95(Placement::Cell, Mechanism::LaplacePure, Z95 * 4.0);
        assert!((c - 4.0).abs() < 1e-12);
    }

    #[test]
    fn profiles_recover_the_rhythm_and_shrink_their_error_with_n() {
        let p = rhythm("2025-01-06", 70, 10.0);
        let w = weekday_profile(&p);
        let mon = w[0].expect("monday");
        let sun = w[6].expect("sunday");
        assert_eq!((mon.mean, sun.mean, mon.n), (100.0, 150.0, 10));
        // Ten independent noises of sd 10: the mean's sd is 10/√10.
        assert!((mon.ci95 - Z95 * 10.0 / 10f64.sqrt()).abs() < 1e-9);
        assert_eq!(month_profile(&p).len(), 3);
    }

    #[test]
    fn an_event_day_stands_out_and_ordinary_days_do_not() {
        let mut p = rhythm("2025-01-06", 70, 10.0);
        let event = day("2025-02-05");
        p.iter_mut().find(|x| x.day == event).expect("day").value += 80.0;
        let ex = excesses(&p, 4, &HashSet::new());
        let flagged: Vec<NaiveDate> = ex.iter().filter(|e| e.stands_out).map(|e| e.day).collect();
        // Same weekdays nearby have the event in their baseline (a shift of
        // 80/n), which stays inside their interval.
        assert_eq!(flagged, vec![event]);
        let e = ex.iter().find(|e| e.day == event).expect("event");
        assert!((e.excess - 80.0).abs() < 1e-9);
    }

    #[test]
    fn the_forecast_repeats_a_clean_rhythm_and_beats_nothing_it_cannot() {
        let p = rhythm("2025-01-06", 120, 0.0);
        let f = forecast(&p, &HashSet::new(), 14).expect("forecast");
        for d in &f.days {
            let expected = if d.day.weekday().num_days_from_monday() >= 5 {
                150.0
            } else {
                100.0
            };
            assert!((d.value - expected).abs() < 1e-6, "{d:?}");
        }
        let b = f.backtest.expect("backtest");
        assert!(b.mae_model < 1e-6 && b.mae_seasonal_naive < 1e-6);
        assert_eq!(b.days_scored, 8 * 14);
    }

    #[test]
    fn holidays_get_their_own_factor_and_intervals_include_dp_noise() {
        let mut p = rhythm("2025-01-06", 120, 3.0);
        let holidays: HashSet<NaiveDate> = [day("2025-02-12"), day("2025-03-12"), day("2025-05-14")].into();
        for x in p.iter_mut().filter(|x| holidays.contains(&x.day)) {
            x.value = 50.0;
        }
        let f = forecast(&p, &holidays, 14).expect("forecast");
        let on_holiday = forecast(&p[..p.len() - 1], &holidays, 14).expect("f");
        assert!(f.days.iter().all(|d| d.hi - d.lo >= 2.0 * Z95 * 3.0 - 1e-9));
        let h = on_holiday.days.iter().find(|d| d.holiday).expect("2025-05-14 is ahead");
        assert!((h.value - 50.0).abs() < 1e-6, "{h:?}");
    }
}

// ------------------------------------------------------------ typed answers
//
// Each view is a pure function of published series that returns a
// serialisable struct: the HTTP handlers parse, gather the series, call and
// answer `Json`; the charts draw the same structs, so a renamed field is a
// compile error, not a chart of zeros.

/// Where a view's numbers come from, and that it cost nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub releases: usize,
    pub first_release: Option<String>,
    pub last_release: Option<String>,
    pub rho_per_day_of_source: f64,
    pub epsilon_per_day_of_source: Option<f64>,
    pub cost_of_this_view: f64,
    pub note: String,
    pub values_used: String,
}

impl Source {
    /// From the releases used, oldest first: (id, ρ per day, ε per day).
    pub fn of(used: &[(String, f64, f64)]) -> Self {
        Self {
            releases: used.len(),
            first_release: used.first().map(|r| r.0.clone()),
            last_release: used.last().map(|r| r.0.clone()),
            rho_per_day_of_source: used.first().map_or(0.0, |r| r.1),
            epsilon_per_day_of_source: used.first().map(|r| r.2),
            cost_of_this_view: 0.0,
            note: "computed from published releases (post-processing): this view spent no privacy budget".into(),
            values_used: "each release value's unbiased estimate (the `estimate` column), not the rounded value clamped at 0, so that sums and means are unbiased".into(),
        }
    }
}

/// A day's value and its 95 % bar.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DayValue {
    pub day: NaiveDate,
    pub value: f64,
    pub ci95: f64,
}

impl From<&Point> for DayValue {
    fn from(p: &Point) -> Self {
        Self {
            day: p.day,
            value: p.value,
            ci95: Z95 * p.noise_sd,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeekdayMean {
    pub weekday: String,
    pub mean: Option<f64>,
    pub ci95: Option<f64>,
    pub days: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MonthMean {
    pub month: u32,
    pub mean: f64,
    pub ci95: f64,
    pub days: usize,
}

/// `GET /views/seasonality`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeasonalityView {
    pub zone: String,
    pub unit: String,
    pub daily: Vec<DayValue>,
    pub weekday_profile: Vec<WeekdayMean>,
    /// Year → its months, side by side for year-over-year reading.
    pub months_by_year: BTreeMap<i32, Vec<MonthMean>>,
    pub baseline: String,
    pub standing_out: Vec<Excess>,
    pub source: Source,
}

/// A zone's daily series, its profiles and the days standing out.
pub fn seasonality(
    zone: &str,
    unit: String,
    points: &[Point],
    weeks: i64,
    holidays: &HashSet<NaiveDate>,
    source: Source,
) -> SeasonalityView {
    let names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let weekday_profile = names
        .iter()
        .zip(weekday_profile(points))
        .map(|(d, m)| WeekdayMean {
            weekday: d.to_string(),
            mean: m.map(|m| m.mean),
            ci95: m.map(|m| m.ci95),
            days: m.map(|m| m.n),
        })
        .collect();
    let mut months_by_year: BTreeMap<i32, Vec<MonthMean>> = BTreeMap::new();
    for ((y, m), v) in month_profile(points) {
        months_by_year.entry(y).or_default().push(MonthMean {
            month: m,
            mean: v.mean,
            ci95: v.ci95,
            days: v.n,
        });
    }
    SeasonalityView {
        zone: zone.to_string(),
        unit,
        daily: points.iter().map(DayValue::from).collect(),
        weekday_profile,
        months_by_year,
        baseline: format!("mean of the same weekday {weeks} weeks before and after, public holidays left out"),
        standing_out: excesses(points, weeks, holidays)
            .into_iter()
            .filter(|e| e.stands_out)
            .collect(),
        source,
    }
}

/// `GET /views/forecast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastView {
    pub zone: String,
    pub unit: String,
    /// The last 8 weeks published.
    pub recent: Vec<DayValue>,
    pub forecast: Forecast,
    pub source: Source,
}

/// The next `horizon` days of a zone; `None` with too little history.
pub fn forecast_view(
    zone: &str,
    unit: String,
    points: &[Point],
    holidays: &HashSet<NaiveDate>,
    horizon: usize,
    source: Source,
) -> Option<ForecastView> {
    let forecast = forecast(points, holidays, horizon)?;
    let skip = points.len().saturating_sub(56);
    Some(ForecastView {
        zone: zone.to_string(),
        unit,
        recent: points[skip..].iter().map(DayValue::from).collect(),
        forecast,
        source,
    })
}

/// (local hour, value, 95 % bar) of each hourly bin of a day.
pub type Hours = Vec<(u32, f64, f64)>;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EventHour {
    pub hour: u32,
    pub value: f64,
    pub ci95: f64,
    pub baseline: f64,
    pub baseline_ci95: f64,
    pub excess: f64,
    pub excess_ci95: f64,
    pub stands_out: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EventTotal {
    pub value: f64,
    pub ci95: f64,
    pub baseline: f64,
    pub baseline_ci95: f64,
    pub excess: f64,
    pub excess_ci95: f64,
}

/// `GET /views/event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub date: NaiveDate,
    pub weekday: String,
    /// Hexes summed (0 for a zone release).
    pub hexes: usize,
    /// Their resolution (none for a zone release).
    pub res: Option<u8>,
    pub baseline_days: usize,
    pub unit: String,
    pub hours: Vec<EventHour>,
    pub day_total: EventTotal,
    pub source: Source,
}

/// A day's hours against the same hours of earlier same weekdays. Days
/// with a clock change have 23 or 25 hourly bins: hours are matched by
/// local hour, a repeated hour (autumn) is left out, and totals cover the
/// matched hours only, so the change never shows as an excess.
pub fn event(
    date: NaiveDate,
    (hexes, res): (usize, Option<u8>),
    unit: String,
    day: Hours,
    base: Vec<Hours>,
    source: Source,
) -> EventView {
    let mut seen = HashSet::new();
    let day: Hours = day.into_iter().filter(|(h, _, _)| seen.insert(*h)).collect();
    let base: Vec<Hours> = base
        .into_iter()
        .map(|b| {
            let mut seen = HashSet::new();
            b.into_iter()
                .filter(|(h, _, _)| seen.insert(*h) && day.iter().any(|d| d.0 == *h))
                .collect()
        })
        .collect();
    let day: Hours = day
        .into_iter()
        .filter(|(h, _, _)| base.iter().all(|b| b.iter().any(|x| x.0 == *h)))
        .collect();
    let n = base.len().max(1) as f64;
    let hours = day
        .iter()
        .map(|(hour, v, ci)| {
            let same: Vec<(f64, f64)> = base
                .iter()
                .filter_map(|b| b.iter().find(|x| x.0 == *hour).map(|x| (x.1, x.2)))
                .collect();
            let k = same.len().max(1) as f64;
            let m = same.iter().map(|x| x.0).sum::<f64>() / k;
            let m_ci = same.iter().map(|x| x.1 * x.1).sum::<f64>().sqrt() / k;
            let ex_ci = (ci * ci + m_ci * m_ci).sqrt();
            EventHour {
                hour: *hour,
                value: *v,
                ci95: *ci,
                baseline: m,
                baseline_ci95: m_ci,
                excess: v - m,
                excess_ci95: ex_ci,
                stands_out: (v - m).abs() > ex_ci,
            }
        })
        .collect();
    let total: f64 = day.iter().map(|x| x.1).sum();
    let total_ci = day.iter().map(|x| x.2 * x.2).sum::<f64>().sqrt();
    let base_total: f64 = base.iter().map(|b| b.iter().map(|x| x.1).sum::<f64>()).sum::<f64>() / n;
    let base_ci = base.iter().flatten().map(|x| x.2 * x.2).sum::<f64>().sqrt() / n;
    EventView {
        date,
        weekday: date.weekday().to_string(),
        hexes,
        res,
        baseline_days: base.len(),
        unit,
        hours,
        day_total: EventTotal {
            value: total,
            ci95: total_ci,
            baseline: base_total,
            baseline_ci95: base_ci,
            excess: total - base_total,
            excess_ci95: (total_ci * total_ci + base_ci * base_ci).sqrt(),
        },
        source,
    }
}

/// One origin–destination flow and its 95 % bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub origin: String,
    pub origin_name: String,
    pub dest: String,
    pub dest_name: String,
    pub trips: f64,
    pub ci95: f64,
}

/// A zone's trips out and in, with their 95 % bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneTotal {
    pub zone: String,
    pub name: String,
    pub out: f64,
    pub out_ci95: f64,
    #[serde(rename = "in")]
    pub inn: f64,
    pub in_ci95: f64,
}

/// `GET /views/flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsView {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Local hours summed, `[start, end)`.
    pub hours: [u32; 2],
    pub weekdays_only: bool,
    /// The flows used: `1h` or `1d`.
    pub bin: crate::vocab::Bin,
    pub bins_used: usize,
    pub unit: String,
    pub largest: Vec<Flow>,
    pub totals: Vec<ZoneTotal>,
    pub source: Source,
}

/// What the flows view adds up: per (origin, dest) pair of `zones`
/// (origin-major), the sum of the estimates and of their noise variances.
pub struct FlowSums {
    /// (id, name) of each zone.
    pub zones: Vec<(String, String)>,
    pub sum: Vec<f64>,
    pub var: Vec<f64>,
    pub bins_used: usize,
}

/// The `top` largest flows and every zone's in/out totals.
pub fn flows(
    (from, to): (NaiveDate, NaiveDate),
    (hours, weekdays_only, bin): ([u32; 2], bool, crate::vocab::Bin),
    s: &FlowSums,
    top: usize,
    source: Source,
) -> FlowsView {
    let z = s.zones.len();
    let mut pairs: Vec<usize> = (0..z * z).collect();
    pairs.sort_by(|a, b| s.sum[*b].total_cmp(&s.sum[*a]));
    let largest = pairs
        .iter()
        .take(top)
        .map(|&i| Flow {
            origin: s.zones[i / z].0.clone(),
            origin_name: s.zones[i / z].1.clone(),
            dest: s.zones[i % z].0.clone(),
            dest_name: s.zones[i % z].1.clone(),
            trips: s.sum[i],
            ci95: Z95 * s.var[i].sqrt(),
        })
        .collect();
    let totals = (0..z)
        .map(|a| {
            let out: f64 = (0..z).map(|b| s.sum[a * z + b]).sum();
            let out_v: f64 = (0..z).map(|b| s.var[a * z + b]).sum();
            let inn: f64 = (0..z).map(|b| s.sum[b * z + a]).sum();
            let in_v: f64 = (0..z).map(|b| s.var[b * z + a]).sum();
            ZoneTotal {
                zone: s.zones[a].0.clone(),
                name: s.zones[a].1.clone(),
                out,
                out_ci95: Z95 * out_v.sqrt(),
                inn,
                in_ci95: Z95 * in_v.sqrt(),
            }
        })
        .collect();
    FlowsView {
        from,
        to,
        hours,
        weekdays_only,
        bin,
        bins_used: s.bins_used,
        unit: if bin == crate::vocab::Bin::Hour {
            "trips summed over the period and hour band".into()
        } else {
            "trips summed over the period (daily flows)".into()
        },
        largest,
        totals,
        source,
    }
}

// ----- People and visitors (presence releases) -----

/// One published presence value: devices of a segment (and origin group)
/// in a zone or the city on a day (or month), the sd of its noise, and the
/// public expansion factor of its segment if the policy gives one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresencePoint {
    /// The day, or the first day of a monthly value.
    pub day: NaiveDate,
    pub segment: String,
    pub origin: String,
    pub value: f64,
    pub noise_sd: f64,
    pub factor: Option<f64>,
}

/// A sum of presence values with its 95 % bar, in devices and, where every
/// term has an expansion factor, in estimated people (independent noises:
/// variances add).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Figure {
    pub devices: f64,
    pub devices_ci95: f64,
    pub people: Option<f64>,
    pub people_ci95: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    devices: f64,
    var: f64,
    people: f64,
    people_var: f64,
    /// Every term had a factor.
    all_factored: bool,
    terms: usize,
}

impl Tally {
    fn add(&mut self, p: &PresencePoint) {
        if self.terms == 0 {
            self.all_factored = true;
        }
        self.terms += 1;
        self.devices += p.value;
        self.var += p.noise_sd * p.noise_sd;
        match p.factor {
            Some(f) if f > 0.0 => {
                self.people += p.value / f;
                self.people_var += (p.noise_sd / f).powi(2);
            }
            _ => self.all_factored = false,
        }
    }

    fn figure(&self) -> Figure {
        let people = self.all_factored && self.terms > 0;
        Figure {
            devices: self.devices,
            devices_ci95: Z95 * self.var.sqrt(),
            people: people.then_some(self.people),
            people_ci95: people.then(|| Z95 * self.people_var.sqrt()),
        }
    }
}

fn tally<'a>(points: impl IntoIterator<Item = &'a PresencePoint>) -> Figure {
    let mut t = Tally::default();
    for p in points {
        t.add(p);
    }
    t.figure()
}

/// One segment's figure on a day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentFigure {
    pub segment: String,
    #[serde(flatten)]
    pub figure: Figure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorDay {
    pub day: NaiveDate,
    /// People present in the day period, by segment (the policy's order).
    pub segments: Vec<SegmentFigure>,
    pub total: Figure,
}

/// An origin group's visitors (tourists and excursionists) in a month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginFigure {
    pub origin: String,
    #[serde(flatten)]
    pub figure: Figure,
    /// The tourists and day visitors among them; none when the policy has
    /// no such segment.
    pub tourists: Option<Figure>,
    pub excursionists: Option<Figure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorMonth {
    /// `YYYY-MM`.
    pub month: String,
    /// Days of the month with published daily presence.
    pub days: usize,
    /// Overnight stays: the night-period presence of tourists summed over
    /// the month's days (device-nights; people-nights with a factor). None
    /// when the policy has no `tourist` segment or no night period: not a
    /// zero.
    pub nights: Option<Figure>,
    /// Day visitors: the day-period presence of excursionists summed over
    /// the month's days; none without an `excursionist` segment.
    pub day_visitors: Option<Figure>,
    /// Visitors (every segment but residents) by origin group over the
    /// month's days (day period), most first; empty when no monthly origins
    /// release covers the month.
    pub top_origins: Vec<OriginFigure>,
    /// The same month a year earlier, when published: % change of nights
    /// and day visitors with the 95 % bar of the ratio.
    pub year_over_year: Option<YearOverYear>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct YearOverYear {
    pub nights_change_pct: Option<f64>,
    pub nights_change_pct_ci95: Option<f64>,
    pub day_visitors_change_pct: Option<f64>,
    pub day_visitors_change_pct_ci95: Option<f64>,
}

/// `GET /views/visitors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorsView {
    /// The zone, or `all` for the sum over every zone.
    pub zone: String,
    pub unit: String,
    /// The periods the figures come from, e.g. `day 08:00–20:00`.
    pub day_period: String,
    pub night_period: Option<String>,
    pub segments: Vec<String>,
    pub daily: Vec<VisitorDay>,
    pub monthly: Vec<VisitorMonth>,
    /// How `people` is computed, or why it is absent.
    pub people_method: String,
    pub source: Source,
}

/// The percentage change `100·(a/b − 1)` and the 95 % bar of it from the
/// sds of `a` and `b` (delta method; none when `b` is not clearly above 0).
pub fn change_pct(a: f64, sd_a: f64, b: f64, sd_b: f64) -> (Option<f64>, Option<f64>) {
    if !(b > 0.0 && b > 2.0 * sd_b) {
        return (None, None);
    }
    let r = a / b;
    let sd = ((sd_a / b).powi(2) + (r * sd_b / b).powi(2)).sqrt();
    (Some(100.0 * (r - 1.0)), Some(100.0 * Z95 * sd))
}

fn month_key(d: NaiveDate) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

/// What the visitors view is computed from, each series already summed
/// over the zone(s) asked.
pub struct VisitorSeries<'a> {
    /// The policy's segments, in order.
    pub segments: &'a [String],
    /// Daily presence by segment, day period.
    pub day: &'a [PresencePoint],
    /// Daily presence by segment, night period.
    pub night: &'a [PresencePoint],
    /// Monthly presence by segment and origin group, day period.
    pub origins: &'a [PresencePoint],
}

/// The visitors view of `zone` (its words: `unit`, the periods' labels).
pub fn visitors(
    zone: &str,
    unit: String,
    periods: (String, Option<String>),
    series: &VisitorSeries,
    top_n: usize,
    source: Source,
) -> VisitorsView {
    let VisitorSeries {
        segments,
        day,
        night,
        origins,
    } = *series;
    let mut by_day: BTreeMap<NaiveDate, Vec<&PresencePoint>> = BTreeMap::new();
    for p in day {
        by_day.entry(p.day).or_default().push(p);
    }
    let daily: Vec<VisitorDay> = by_day
        .iter()
        .map(|(d, ps)| VisitorDay {
            day: *d,
            segments: segments
                .iter()
                .map(|s| SegmentFigure {
                    segment: s.clone(),
                    figure: tally(ps.iter().copied().filter(|p| &p.segment == s)),
                })
                .collect(),
            total: tally(ps.iter().copied()),
        })
        .collect();
    let has = |name: &str| segments.iter().any(|s| s == name);
    let (has_tourists, has_excursionists, has_night) = (has(TOURIST), has(EXCURSIONIST), periods.1.is_some());
    let mut months: BTreeMap<String, (std::collections::BTreeSet<NaiveDate>, Tally, Tally)> = BTreeMap::new();
    for p in day {
        let e = months.entry(month_key(p.day)).or_default();
        e.0.insert(p.day);
        if p.segment == EXCURSIONIST {
            e.2.add(p);
        }
    }
    for p in night.iter().filter(|p| p.segment == TOURIST) {
        months.entry(month_key(p.day)).or_default().1.add(p);
    }
    let mut monthly: Vec<VisitorMonth> = months
        .iter()
        .map(|(m, (days, nights, visitors))| {
            let mut by_origin: BTreeMap<&str, (Tally, Tally, Tally)> = BTreeMap::new();
            for p in origins.iter().filter(|p| &month_key(p.day) == m) {
                if p.segment == RESIDENT {
                    continue;
                }
                let e = by_origin.entry(p.origin.as_str()).or_default();
                e.0.add(p);
                if p.segment == TOURIST {
                    e.1.add(p);
                } else if p.segment == EXCURSIONIST {
                    e.2.add(p);
                }
            }
            let mut top: Vec<OriginFigure> = by_origin
                .into_iter()
                .map(|(o, (all, t, x))| OriginFigure {
                    origin: o.to_string(),
                    figure: all.figure(),
                    tourists: has_tourists.then(|| t.figure()),
                    excursionists: has_excursionists.then(|| x.figure()),
                })
                .collect();
            top.sort_by(|a, b| b.figure.devices.total_cmp(&a.figure.devices));
            top.truncate(top_n);
            VisitorMonth {
                month: m.clone(),
                days: days.len(),
                nights: (has_tourists && has_night).then(|| nights.figure()),
                day_visitors: has_excursionists.then(|| visitors.figure()),
                top_origins: top,
                year_over_year: None,
            }
        })
        .collect();
    // Year over year: the same month of the previous year, when both are
    // published for the same number of days.
    let by_month: BTreeMap<String, (usize, Option<Figure>, Option<Figure>)> = monthly
        .iter()
        .map(|m| (m.month.clone(), (m.days, m.nights, m.day_visitors)))
        .collect();
    // The % change of a figure against the year before, when both exist.
    let change = |now: Option<Figure>, before: Option<Figure>| match (now, before) {
        (Some(a), Some(b)) => change_pct(a.devices, a.devices_ci95 / Z95, b.devices, b.devices_ci95 / Z95),
        _ => (None, None),
    };
    for m in &mut monthly {
        let (y, mo) = m.month.split_once('-').unwrap_or_default();
        let before = format!("{:04}-{mo}", y.parse::<i32>().unwrap_or(0) - 1);
        if let Some((days, nights, visitors)) = by_month.get(&before)
            && *days == m.days
        {
            let (n, n_ci) = change(m.nights, *nights);
            let (v, v_ci) = change(m.day_visitors, *visitors);
            m.year_over_year = Some(YearOverYear {
                nights_change_pct: n,
                nights_change_pct_ci95: n_ci,
                day_visitors_change_pct: v,
                day_visitors_change_pct_ci95: v_ci,
            });
        }
    }
    VisitorsView {
        zone: zone.to_string(),
        unit,
        day_period: periods.0,
        night_period: periods.1,
        segments: segments.to_vec(),
        daily,
        monthly,
        people_method: "people = devices / the policy's public expansion factor of each segment (the zone's own where given), bars scaled the same way; absent where a segment has no factor".into(),
        source,
    }
}

/// One day against its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChangeDay {
    pub day: NaiveDate,
    pub value: f64,
    pub ci95: f64,
    /// The median of the same weekday in the baseline window.
    pub baseline: Option<f64>,
    pub baseline_days: usize,
    pub change_pct: Option<f64>,
    pub change_pct_ci95: Option<f64>,
}

/// `GET /views/change`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeView {
    pub zone: String,
    pub unit: String,
    pub segment: String,
    pub baseline_from: NaiveDate,
    pub baseline_to: NaiveDate,
    pub baseline: String,
    pub days: Vec<ChangeDay>,
    pub source: Source,
}

/// The median of `values` (the mean of the two middle ones for an even
/// count), reordering them.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let k = values.len();
    if k % 2 == 1 {
        values[k / 2]
    } else {
        0.5 * (values[k / 2 - 1] + values[k / 2])
    }
}

/// Draws of the parametric bootstrap behind a change's bar. The bar's own
/// Monte Carlo error at 2,000 draws is about 1 % of its width.
const BOOTSTRAP_DRAWS: usize = 2_000;

/// The bootstrap's percentile is itself an estimate (2,000 draws, centred
/// on noisy values): at the 95 % point the bars held the true change in
/// 94.3–96.4 % of 4,000 trials per case, at the 95.5 % point in 94.8–96.8 %
/// (the test below), so the bar is the 95.5 % point.
const BOOTSTRAP_COVERAGE: f64 = 0.955;

/// The % change of `(a, sd_a)` against the median of the published
/// baseline values `(value, noise sd)`, and its 95 % half-width.
///
/// The median's error depends on how far apart the baseline days truly
/// are: with equal days it is about σ·√(π/2)/√k, with days further apart
/// than the noise it is one noisy day's (σ) or the mean of two. A closed
/// form taken for the first case under-covered the second (92.4 % with 3
/// days). So the bar is a parametric bootstrap: each draw adds normal
/// noise of the public σ to the day and to every published baseline value,
/// and the bar is the 95th percentile of how far the draw's change lands
/// from the published one. It reads only published values and public
/// σ (post-processing, nothing charged), and its generator is seeded by
/// those inputs, so the same question always gets the same bar.
/// No ratio when the baseline is not clearly above 0.
fn change_against(a: f64, sd_a: f64, baseline: &[(f64, f64)]) -> (Option<f64>, Option<f64>) {
    use rand::{SeedableRng, rngs::Xoshiro256PlusPlus};
    use rand_distr::{Distribution, StandardNormal};
    let mut values: Vec<f64> = baseline.iter().map(|v| v.0).collect();
    if values.is_empty() {
        return (None, None);
    }
    let m = median(&mut values);
    let spread = baseline.iter().map(|v| v.1).fold(0.0, f64::max);
    if !(m > 0.0 && m > 2.0 * spread) {
        return (None, None);
    }
    let r = a / m;
    let mut seed = a.to_bits() ^ sd_a.to_bits().rotate_left(17);
    for (v, sd) in baseline {
        seed = seed.rotate_left(29) ^ v.to_bits() ^ sd.to_bits().rotate_left(7);
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut draw = |sd: f64| -> f64 {
        let z: f64 = StandardNormal.sample(&mut rng);
        sd * z
    };
    let mut gaps = Vec::with_capacity(BOOTSTRAP_DRAWS);
    for _ in 0..BOOTSTRAP_DRAWS {
        let a_star = a + draw(sd_a);
        for (slot, (v, sd)) in values.iter_mut().zip(baseline) {
            *slot = v + draw(*sd);
        }
        let m_star = median(&mut values);
        // A draw whose baseline reaches 0 has no ratio: it counts as far
        // off, which widens the bar rather than dropping the draw.
        gaps.push(if m_star > 0.0 {
            (a_star / m_star - r).abs()
        } else {
            f64::INFINITY
        });
    }
    gaps.sort_by(f64::total_cmp);
    let half_width = gaps[(BOOTSTRAP_COVERAGE * BOOTSTRAP_DRAWS as f64).ceil() as usize - 1];
    if !half_width.is_finite() {
        return (Some(100.0 * (r - 1.0)), None);
    }
    (Some(100.0 * (r - 1.0)), Some(100.0 * half_width))
}

/// Per day of `points` within `[from, to]`: the change against the median
/// of the same weekday among the points within the baseline window.
pub fn change(
    zone: &str,
    unit: String,
    segment: &str,
    points: &[Point],
    baseline_window: (NaiveDate, NaiveDate),
    range: (NaiveDate, NaiveDate),
    source: Source,
) -> ChangeView {
    let (b0, b1) = baseline_window;
    let mut by_weekday: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.day >= b0 && p.day <= b1) {
        by_weekday
            .entry(p.day.weekday().num_days_from_monday())
            .or_default()
            .push((p.value, p.noise_sd));
    }
    let medians: BTreeMap<u32, f64> = by_weekday
        .iter()
        .map(|(w, b)| (*w, median(&mut b.iter().map(|v| v.0).collect::<Vec<_>>())))
        .collect();
    let days = points
        .iter()
        .filter(|p| p.day >= range.0 && p.day <= range.1)
        .map(|p| {
            let weekday = p.day.weekday().num_days_from_monday();
            let b = by_weekday.get(&weekday);
            let (pct, pct_ci) = b.map_or((None, None), |b| change_against(p.value, p.noise_sd, b));
            ChangeDay {
                day: p.day,
                value: p.value,
                ci95: Z95 * p.noise_sd,
                baseline: medians.get(&weekday).copied(),
                baseline_days: b.map_or(0, Vec::len),
                change_pct: pct,
                change_pct_ci95: pct_ci,
            }
        })
        .collect();
    ChangeView {
        zone: zone.to_string(),
        unit,
        segment: segment.to_string(),
        baseline_from: b0,
        baseline_to: b1,
        baseline: "median of the same weekday in the baseline window, as the community mobility reports of 2020; the bar of the change holds the day's noise and the median's, by a parametric bootstrap of the published values with their public noise σ (2,000 draws; post-processing, nothing charged)".into(),
        days,
        source,
    }
}

#[cfg(test)]
mod presence_tests {
    use super::*;

    fn p(day: &str, segment: &str, origin: &str, value: f64, sd: f64, factor: Option<f64>) -> PresencePoint {
        PresencePoint {
            day: day.parse().expect("day"),
            segment: segment.into(),
            origin: origin.into(),
            value,
            noise_sd: sd,
            factor,
        }
    }

    #[test]
    fn nights_are_tourists_at_night_summed_and_people_need_every_factor() {
        let segs: Vec<String> = ["resident", "tourist", "excursionist"].map(String::from).to_vec();
        let day = vec![
            p("2025-07-01", "resident", "all", 1000.0, 3.0, Some(0.5)),
            p("2025-07-01", "tourist", "all", 200.0, 4.0, Some(0.25)),
            p("2025-07-01", "excursionist", "all", 50.0, 3.0, None),
            p("2025-07-02", "excursionist", "all", 70.0, 4.0, None),
        ];
        let night = vec![
            p("2025-07-01", "tourist", "all", 180.0, 3.0, Some(0.25)),
            p("2025-07-02", "tourist", "all", 190.0, 4.0, Some(0.25)),
            p("2025-07-01", "resident", "all", 990.0, 3.0, Some(0.5)),
        ];
        let origins = vec![
            p("2025-07-01", "tourist", "DE", 300.0, 3.0, Some(0.25)),
            p("2025-07-01", "excursionist", "DE", 100.0, 4.0, None),
            p("2025-07-01", "tourist", "Bretagne", 500.0, 3.0, Some(0.25)),
            p("2025-07-01", "resident", "local", 9000.0, 3.0, Some(0.5)),
        ];
        let v = visitors(
            "1",
            "devices".into(),
            ("day".into(), Some("night".into())),
            &VisitorSeries {
                segments: &segs,
                day: &day,
                night: &night,
                origins: &origins,
            },
            10,
            Source::of(&[]),
        );
        let m = &v.monthly[0];
        assert_eq!((m.month.as_str(), m.days), ("2025-07", 2));
        let (nights, visitors) = (m.nights.expect("nights"), m.day_visitors.expect("day visitors"));
        assert_eq!(nights.devices, 370.0);
        assert!((nights.devices_ci95 - Z95 * 5.0).abs() < 1e-9);
        assert_eq!(nights.people, Some(370.0 / 0.25));
        assert!((nights.people_ci95.expect("ci") - Z95 * 20.0).abs() < 1e-9);
        assert_eq!(visitors.devices, 120.0);
        assert_eq!(visitors.people, None, "excursionists have no factor");
        // Visitors by origin, residents left out, most first.
        assert_eq!(m.top_origins[0].origin, "Bretagne");
        assert_eq!(m.top_origins[1].figure.devices, 400.0);
        assert_eq!(m.top_origins[1].tourists.expect("tourists").devices, 300.0);
        assert_eq!(m.top_origins.len(), 2);
        // Day 1 by segment, and the total has no people (one segment has
        // no factor).
        let d = &v.daily[0];
        assert_eq!(d.segments[1].figure.people, Some(800.0));
        assert_eq!(d.total.devices, 1250.0);
        assert_eq!(d.total.people, None);
    }

    #[test]
    fn a_policy_without_tourists_or_day_visitors_gets_no_figure_for_them_not_a_zero() {
        let segs: Vec<String> = ["local", "visitor"].map(String::from).to_vec();
        let day = vec![p("2025-07-01", "visitor", "all", 80.0, 2.0, None)];
        let origins = vec![
            p("2025-07-01", "visitor", "DE", 50.0, 2.0, None),
            p("2025-07-01", "local", "local", 900.0, 2.0, None),
        ];
        let series = VisitorSeries {
            segments: &segs,
            day: &day,
            night: &[],
            origins: &origins,
        };
        let v = visitors(
            "all",
            "devices".into(),
            ("day".into(), None),
            &series,
            5,
            Source::of(&[]),
        );
        let m = &v.monthly[0];
        assert_eq!((m.nights, m.day_visitors), (None, None));
        // Origins rank every segment but residents (here: "local" is not
        // the resident segment's name, so it counts).
        assert_eq!(m.top_origins.len(), 2);
        assert!(
            m.top_origins
                .iter()
                .all(|o| o.tourists.is_none() && o.excursionists.is_none())
        );
    }

    #[test]
    fn a_month_is_compared_with_the_same_month_a_year_before_when_both_are_whole_alike() {
        let segs: Vec<String> = ["tourist", "excursionist"].map(String::from).to_vec();
        let mut day = Vec::new();
        let mut night = Vec::new();
        for (year, nights, visitors) in [(2024, 100.0, 40.0), (2025, 150.0, 30.0)] {
            for d in 1..=3 {
                let iso = format!("{year}-07-0{d}");
                night.push(p(&iso, "tourist", "all", nights, 2.0, None));
                day.push(p(&iso, "excursionist", "all", visitors, 2.0, None));
            }
        }
        // A month published on fewer days in one year is not compared.
        day.push(p("2025-08-01", "excursionist", "all", 10.0, 2.0, None));
        day.push(p("2024-08-01", "excursionist", "all", 10.0, 2.0, None));
        day.push(p("2024-08-02", "excursionist", "all", 10.0, 2.0, None));
        let series = VisitorSeries {
            segments: &segs,
            day: &day,
            night: &night,
            origins: &[],
        };
        let v = visitors(
            "all",
            "devices".into(),
            ("day".into(), Some("night".into())),
            &series,
            5,
            Source::of(&[]),
        );
        let july = v.monthly.iter().find(|m| m.month == "2025-07").expect("July 2025");
        let yoy = july.year_over_year.expect("compared with July 2024");
        assert!((yoy.nights_change_pct.expect("nights") - 50.0).abs() < 1e-9);
        assert!((yoy.day_visitors_change_pct.expect("visitors") + 25.0).abs() < 1e-9);
        assert!(yoy.nights_change_pct_ci95.expect("bar") > 0.0);
        let first = v.monthly.iter().find(|m| m.month == "2024-07").expect("July 2024");
        assert!(first.year_over_year.is_none(), "no year before");
        let august = v.monthly.iter().find(|m| m.month == "2025-08").expect("August 2025");
        assert!(august.year_over_year.is_none(), "1 day against 2 is not a comparison");
    }

    /// Issue 23: the change's bar covered 92.4 % with 3 baseline days and
    /// 92.1 % with 5 when the days differ by more than the noise. For k = 3
    /// to 8 baseline days, equal or 0.5σ or 4σ apart, each case over 4,000
    /// noisy publications: the bar holds the true change in at least
    /// 94.5 % of them. Deterministic (seeded noise, and a bootstrap seeded
    /// by its inputs), so it never flakes. The count's sd is 0.33 %; the
    /// cases measure 94.8–96.8 %, the lowest (3 days 4σ apart) about one sd
    /// above the bound, so a change of seed could need the trials raised.
    #[test]
    fn the_change_bar_covers_the_true_change_whatever_the_baseline_spread() {
        use rand::{SeedableRng, rngs::Xoshiro256PlusPlus};
        use rand_distr::{Distribution, StandardNormal};
        const TRIALS: usize = 4_000;
        let sigma = 10.0;
        let a_true = 900.0;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(23);
        let mut lowest = (1.0f64, 0, 0.0);
        for k in 3..=8usize {
            for gap_sd in [0.0, 0.5, 4.0] {
                let truth: Vec<f64> = (0..k).map(|i| 1000.0 + gap_sd * sigma * ((i * 5) % k) as f64).collect();
                let true_pct = 100.0 * (a_true / median(&mut truth.clone()) - 1.0);
                let mut inside = 0;
                for _ in 0..TRIALS {
                    let mut noisy = |x: f64| {
                        let z: f64 = StandardNormal.sample(&mut rng);
                        x + sigma * z
                    };
                    let a = noisy(a_true);
                    let baseline: Vec<(f64, f64)> = truth.iter().map(|t| (noisy(*t), sigma)).collect();
                    let (pct, ci) = change_against(a, sigma, &baseline);
                    let (pct, ci) = (pct.expect("pct"), ci.expect("ci"));
                    if (pct - true_pct).abs() <= ci {
                        inside += 1;
                    }
                }
                let coverage = inside as f64 / TRIALS as f64;
                eprintln!("k {k}, days {gap_sd}σ apart: coverage {coverage:.4}");
                if coverage < lowest.0 {
                    lowest = (coverage, k, gap_sd);
                }
            }
        }
        assert!(lowest.0 >= 0.945, "lowest coverage {lowest:?}");
    }

    #[test]
    fn change_is_against_the_median_of_the_same_weekday_with_the_bar_of_a_ratio() {
        // Baseline: three Mondays 100, 120, 110 (σ 2) → median 110.
        let pts: Vec<Point> = [
            ("2025-01-06", 100.0),
            ("2025-01-13", 120.0),
            ("2025-01-20", 110.0),
            ("2025-03-03", 55.0),
        ]
        .iter()
        .map(|(d, v)| Point {
            day: d.parse().expect("day"),
            value: *v,
            noise_sd: 2.0,
        })
        .collect();
        let range = ("2025-03-01".parse().expect("d"), "2025-03-31".parse().expect("d"));
        let window = ("2025-01-01".parse().expect("d"), "2025-01-31".parse().expect("d"));
        let c = change("1", "devices".into(), "all", &pts, window, range, Source::of(&[]));
        assert_eq!(c.days.len(), 1);
        let d = &c.days[0];
        assert_eq!((d.baseline, d.baseline_days), (Some(110.0), 3));
        assert!((d.change_pct.expect("pct") + 50.0).abs() < 1e-9);
        // The bootstrap's bar: about 1.96·100·sd of the ratio, whose sd
        // here is dominated by the day's (2/110) and the median's (one
        // middle day, sd ≤ 2, the days being 10σ apart).
        let ci = d.change_pct_ci95.expect("ci");
        let r: f64 = 0.5;
        let low = 100.0 * Z95 * (2.0f64 / 110.0);
        let high = 100.0 * Z95 * ((2.0f64 / 110.0).powi(2) + (r * 2.0 / 110.0).powi(2)).sqrt();
        assert!(ci > 0.95 * low && ci < 1.1 * high, "{ci} against [{low}, {high}]");
        // The same question gets the same bar.
        let again = change("1", "devices".into(), "all", &pts, window, range, Source::of(&[]));
        assert_eq!(again.days[0].change_pct_ci95, d.change_pct_ci95);
        // No baseline weekday, no change; a baseline near 0 has no ratio.
        assert_eq!(change_pct(5.0, 1.0, 1.0, 1.0), (None, None));
    }
}
