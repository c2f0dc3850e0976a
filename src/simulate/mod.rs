//! `hexflow simulate`: deterministic synthetic operator deliveries.
//!
//! For any grid, writes hourly `devices` per cell and hourly `trips`
//! between cells in the operator formats of DESIGN.md, one file per metric
//! and local month, plus `events.json`: the truth of what was injected
//! (matches, cruise calls, holidays, the tourism season), so tests can check
//! that analyses of the DP releases find it again. The same seed and day
//! always give the same counts, whatever window is simulated.
//!
//! Memory does not grow with the window or the devices. Counts are drawn,
//! not devices: a cell's devices in a bin are one Poisson draw around the
//! sum of every population's expectation there, a pair's trips one draw,
//! and presence visitors, drawn one by one, go straight into one period's
//! counts. What is held is the grid's distributions (a few values per
//! cell), each cell's `k` nearest destinations (not a cells × cells
//! table), one bin's expectations and trip means, and at most
//! [`BATCH_ROWS`] rows plus one bin's (or one presence period's) waiting to
//! be appended to the month's files. Those are written a row group (or a
//! run of CSV lines) at a time under a temporary name and renamed when the
//! month is done, so a reader sees a whole month or none. An 18,025-cell
//! grid with 2 M devices (README, `simulate`): 72 MB for a week, 88 MB for
//! a month with presence, 93 MB for a year (a week took 10.8 GB before).

pub mod calendar;
pub mod model;
pub mod visitors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use polars::prelude::*;
use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use crate::grid::{Grid, GridError};
use crate::store::Metric;
use crate::{table, util};
use calendar::{CalendarFile, CruiseCall, Match};
use model::{DayKind, Spatial};

/// `[simulation]` in `grid.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationSpec {
    /// Resident devices of the operator.
    pub devices: u32,
    /// Extra devices (visitors, roaming) at the summer tourism peak.
    pub tourists_peak: u32,
    /// Holidays file, relative to the grid folder.
    #[serde(default)]
    pub calendar: Option<PathBuf>,
}

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Csv,
}

/// Errors of a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Grid(#[from] GridError),
    #[error("--from {from} is after --to {to}")]
    EmptyWindow { from: NaiveDate, to: NaiveDate },
    #[error(
        "the policy's presence segments {0:?} include none the simulator models (resident, tourist, excursionist): it would deliver no presence at all"
    )]
    UnmodelledSegments(Vec<String>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Polars {
        path: PathBuf,
        #[source]
        source: PolarsError,
    },
}

/// One written file.
#[derive(Debug, Clone, Serialize)]
pub struct SimFile {
    pub path: PathBuf,
    pub metric: Metric,
    pub month: String,
    pub rows: usize,
    /// SHA-256 of the file's bytes, as the store records a delivery:
    /// `evaluate` checks that every stored delivery is one of these.
    pub sha256: String,
}

/// What `hexflow simulate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    pub grid: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub seed: u64,
    pub devices: u32,
    pub files: Vec<SimFile>,
    pub footfall_rows: usize,
    pub flows_rows: usize,
    pub presence_rows: usize,
    /// The most rows held in memory at once, waiting to be written: about
    /// [`BATCH_ROWS`] plus one bin's, however long the window.
    pub peak_buffered_rows: usize,
    pub matches: usize,
    pub cruise_calls: usize,
    pub truth: PathBuf,
    pub elapsed_s: f64,
}

/// The file beside the deliveries that lists what [`simulate`] wrote (v2:
/// with presence, day trippers and each file's SHA-256).
pub fn marker_name(from: NaiveDate, to: NaiveDate) -> String {
    format!("simulated-v2-{from}-{to}.json")
}

/// `events.json`: what was injected.
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub grid: String,
    pub timezone: String,
    pub seed: u64,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub resident_devices: u32,
    pub tourists_peak: u32,
    pub matches: Vec<Match>,
    pub cruise_calls: Vec<CruiseCall>,
    pub public_holidays: Vec<NaiveDate>,
    pub school_holidays: Vec<calendar::HolidayPeriod>,
    /// Plain-words description of the rhythms built into the model.
    pub model: Vec<&'static str>,
    /// Presence delivered, per local day, period and segment (devices over
    /// all cells): what the presence releases should recover.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub presence_daily: Vec<PresenceTotal>,
    /// Presence per month, period, segment and the policy's origin group
    /// (device-days: the sum over the month's days).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub presence_monthly_origins: Vec<OriginTotal>,
}

/// Devices present in one period of one day, in one segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceTotal {
    pub day: NaiveDate,
    pub period: String,
    pub segment: String,
    pub devices: u64,
}

/// Device-days of one month, period, segment and origin group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OriginTotal {
    /// `YYYY-MM`.
    pub month: String,
    pub period: String,
    pub segment: String,
    pub origin: String,
    pub devices: u64,
}

/// Truth accumulated while presence is simulated.
#[derive(Default)]
struct PresenceTruth {
    daily: BTreeMap<(NaiveDate, String, String), u64>,
    monthly: BTreeMap<(String, String, String, String), u64>,
}

impl PresenceTruth {
    fn add(&mut self, other: PresenceTruth) {
        for (k, v) in other.daily {
            *self.daily.entry(k).or_default() += v;
        }
        for (k, v) in other.monthly {
            *self.monthly.entry(k).or_default() += v;
        }
    }
}

/// The local calendar months of `[from, to]`, each clipped to the window.
fn month_spans(from: NaiveDate, to: NaiveDate) -> Vec<(NaiveDate, NaiveDate)> {
    let mut spans = Vec::new();
    let mut first = from;
    while first <= to {
        let next = first
            .with_day(1)
            .and_then(|d| d.checked_add_months(chrono::Months::new(1)))
            .unwrap_or(NaiveDate::MAX);
        let last = next.pred_opt().unwrap_or(next).min(to);
        spans.push((first, last));
        if next == NaiveDate::MAX {
            break;
        }
        first = next;
    }
    spans
}

const MODEL_NOTES: &[&str] = &[
    "residents: home distribution from 'residential' landmarks (plus some in the centre); weekday work 06:30-09:00 to 16:30-19:30 towards business, centre, station, hospital, university and port landmarks",
    "Saturdays and Sundays/public holidays: little work, afternoon leisure in town and on the coast (coast share grows in summer); Friday and Saturday evenings busier",
    "school holidays: 15 % less commuting, more weekday leisure; August: up to 22 % of residents away and 35 % less commuting",
    "tourists: a season peaking late July plus an Easter bump, out at landmarks, the old port, beaches and calanques by day, in the centre at night",
    "matches: extra devices at the stadium from two bins before kick-off to two after (35/90/100/95/30 %), trips towards the stadium before and away after",
    "cruise calls: passengers ashore 07:00-19:00, at the terminal early and late, sightseeing in between",
    "a device present in the area is seen in an hour with probability 0.5 at night to 0.95 by day, in 1.3 cells on average; counts are Poisson around the expectation",
    "regional day trippers (excursionists): 20 % of the tourism peak, more on free days and in summer, in town 10:00-18:00 where tourists go by day",
    "presence (with a policy's [presence]): per period, each device in the cell where the period's hours put it most; residents (local) from the hourly mix, tourists by origin (French départements by a gravity law, a dozen countries with their own seasons), excursionists from the region, cruise passengers (foreign excursionists) and match-goers from outside the city (regional excursionists); codes outside the policy's lists are delivered as 'other'",
];

/// Rows held before they are written: polars' own Parquet row group size.
/// With the state of one bin (a value per cell and per destination pair),
/// this is all the memory a simulation needs, whatever its window and its
/// number of devices.
pub const BATCH_ROWS: usize = 512 * 512;

/// Simulates `[from, to]` (local days, inclusive) for `grid` into `out`.
pub fn simulate(
    grid: &Grid,
    from: NaiveDate,
    to: NaiveDate,
    out: &Path,
    format: Format,
    seed: u64,
    presence: Option<&crate::policy::PresenceSpec>,
) -> Result<SimulationReport, SimulateError> {
    simulate_in_batches(grid, from, to, out, format, seed, presence, BATCH_ROWS)
}

/// [`simulate`], writing once `batch_rows` rows are pending (tests use small
/// batches to see that a month is never held whole).
#[expect(clippy::too_many_arguments, reason = "simulate's arguments and the batch size")]
fn simulate_in_batches(
    grid: &Grid,
    from: NaiveDate,
    to: NaiveDate,
    out: &Path,
    format: Format,
    seed: u64,
    presence: Option<&crate::policy::PresenceSpec>,
    batch_rows: usize,
) -> Result<SimulationReport, SimulateError> {
    let started = Instant::now();
    if from > to {
        return Err(SimulateError::EmptyWindow { from, to });
    }
    if let Some(p) = presence {
        use crate::vocab::segment::{EXCURSIONIST, RESIDENT, TOURIST};
        if !p
            .segments
            .iter()
            .any(|s| [RESIDENT, TOURIST, EXCURSIONIST].contains(&s.as_str()))
        {
            return Err(SimulateError::UnmodelledSegments(p.segments.clone()));
        }
    }
    let spec = match &grid.spec.simulation {
        Some(t) => SimulationSpec::deserialize(toml::Value::Table(t.clone())).map_err(|e| GridError::Spec {
            path: grid.dir.join("grid.toml"),
            reason: format!("[simulation]: {e}"),
        })?,
        None => SimulationSpec {
            devices: 100 * grid.cells.len() as u32,
            tourists_peak: 0,
            calendar: None,
        },
    };
    let cal = match &spec.calendar {
        Some(p) => CalendarFile::load(&grid.dir.join(p))?,
        None => CalendarFile::default(),
    };
    let first_of_kind = |kind: &str| grid.landmarks.iter().find(|l| l.kind == kind).map(|l| l.name.clone());
    let mut matches = Vec::new();
    let mut cruises = Vec::new();
    for year in from.year()..=to.year() {
        if let Some(s) = first_of_kind("stadium") {
            matches.extend(calendar::matches(seed, year, &s, &cal));
        }
        if let Some(t) = first_of_kind("cruise_terminal") {
            cruises.extend(calendar::cruise_calls(seed, year, &t));
        }
    }
    matches.retain(|m| from <= m.date && m.date <= to);
    cruises.retain(|c| from <= c.date && c.date <= to);

    let spatial = Spatial::new(grid);
    let commute = Spatial::destinations(grid, &spatial.work, 3, 6_000.0);
    let leisure_mix: Vec<f64> = spatial
        .leisure_town
        .iter()
        .zip(&spatial.evening)
        .map(|(a, b)| 0.5 * a + 0.5 * b)
        .collect();
    let leisure = Spatial::destinations(grid, &leisure_mix, 1, 4_000.0);
    // Match-goers' trips end in the stadium's two busiest cells (60/40).
    let mut stadium_cells: Vec<(u32, f64)> = spatial
        .stadium
        .iter()
        .enumerate()
        .map(|(i, w)| (i as u32, *w))
        .collect();
    stadium_cells.sort_by(|a, b| b.1.total_cmp(&a.1));
    stadium_cells.truncate(2);
    for (cell, split) in stadium_cells.iter_mut().zip([0.6, 0.4]) {
        cell.1 = split;
    }
    if stadium_cells.len() == 1 {
        stadium_cells[0].1 = 1.0;
    }

    let ctx = DayContext {
        grid,
        spatial: &spatial,
        commute: &commute,
        leisure: &leisure,
        stadium_cells: &stadium_cells,
        residents: spec.devices as f64,
        tourists_peak: spec.tourists_peak as f64,
    };
    std::fs::create_dir_all(out).map_err(|source| SimulateError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    // Every day draws from its own seeded stream, so months are simulated
    // side by side and each writes its own files.
    let progress = crate::cli_progress((to - from).num_days() as u64 + 1, "simulating");
    let months = util::on_threads("simulate", month_spans(from, to), |(first, last)| {
        let mut month = MonthOutput::new(grid, out, format, first.format("%Y-%m").to_string(), batch_rows);
        let mut truth = PresenceTruth::default();
        for day in first.iter_days().take_while(|d| *d <= last) {
            let kind = DayKind::new(day, cal.is_public_holiday(day), cal.is_school_holiday(day));
            let todays_match = matches.iter().find(|m| m.date == day);
            let todays_cruise = cruises.iter().find(|c| c.date == day);
            ctx.day(day, kind, todays_match, todays_cruise, seed, &mut month)?;
            if let Some(p) = presence {
                ctx.presence(
                    day,
                    kind,
                    (todays_match, todays_cruise),
                    seed,
                    p,
                    &mut month,
                    &mut truth,
                )?;
            }
            progress.inc(1);
        }
        let peak_buffered_rows = month.peak_buffered_rows;
        Ok::<_, SimulateError>((month.finish()?, peak_buffered_rows, truth))
    });
    progress.finish_and_clear();
    let mut files = Vec::new();
    let mut peak_buffered_rows = 0;
    let mut presence_truth = PresenceTruth::default();
    for month in months {
        let (month_files, peak, truth) = month?;
        files.extend(month_files);
        peak_buffered_rows = peak_buffered_rows.max(peak);
        presence_truth.add(truth);
    }

    let truth_path = out.join("events.json");
    let truth = Truth {
        grid: grid.name().to_string(),
        timezone: grid.spec.timezone.clone(),
        seed,
        from,
        to,
        resident_devices: spec.devices,
        tourists_peak: spec.tourists_peak,
        matches: matches.clone(),
        cruise_calls: cruises.clone(),
        public_holidays: cal
            .public_holidays
            .iter()
            .copied()
            .filter(|d| from <= *d && *d <= to)
            .collect(),
        school_holidays: cal
            .school_holidays
            .iter()
            .filter(|p| p.to >= from && p.from <= to)
            .cloned()
            .collect(),
        model: MODEL_NOTES.to_vec(),
        presence_daily: presence_truth
            .daily
            .into_iter()
            .map(|((day, period, segment), devices)| PresenceTotal {
                day,
                period,
                segment,
                devices,
            })
            .collect(),
        presence_monthly_origins: presence_truth
            .monthly
            .into_iter()
            .map(|((month, period, segment, origin), devices)| OriginTotal {
                month,
                period,
                segment,
                origin,
                devices,
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&truth).map_err(|e| SimulateError::Io {
        path: truth_path.clone(),
        source: std::io::Error::other(e),
    })?;
    util::write_atomic(&truth_path, &json).map_err(|source| SimulateError::Io {
        path: truth_path.clone(),
        source,
    })?;
    let count = |m: Metric| files.iter().filter(|f: &&SimFile| f.metric == m).map(|f| f.rows).sum();
    let report = SimulationReport {
        grid: grid.name().to_string(),
        from,
        to,
        seed,
        devices: spec.devices,
        footfall_rows: count(Metric::Footfall),
        flows_rows: count(Metric::Flows),
        presence_rows: count(Metric::Presence),
        files,
        peak_buffered_rows,
        matches: matches.len(),
        cruise_calls: cruises.len(),
        truth: truth_path,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    // The marker names every file written and its hash: `evaluate` reads
    // raw counts for its truth, and runs only where each stored delivery
    // is one of these files.
    let marker = out.join(marker_name(from, to));
    let bytes = serde_json::to_vec_pretty(&report).map_err(|e| SimulateError::Io {
        path: marker.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::util::write_atomic(&marker, &bytes).map_err(|source| SimulateError::Io { path: marker, source })?;
    Ok(report)
}

struct DayContext<'a> {
    grid: &'a Grid,
    spatial: &'a Spatial,
    commute: &'a [Vec<(u32, f64)>],
    leisure: &'a [Vec<(u32, f64)>],
    stadium_cells: &'a [(u32, f64)],
    residents: f64,
    tourists_peak: f64,
}

/// (cell, day label, period, segment, origin code, devices); labels are
/// shared by a period's rows.
type PresenceRow = (
    u32,
    std::sync::Arc<str>,
    std::sync::Arc<str>,
    &'static str,
    &'static str,
    u32,
);

/// Rows not written yet, and the labels of the bins they refer to.
#[derive(Default)]
struct Pending {
    bins: Vec<String>,
    foot_cell: Vec<u32>,
    foot_bin: Vec<u32>,
    foot_devices: Vec<u32>,
    flow_origin: Vec<u32>,
    flow_dest: Vec<u32>,
    flow_bin: Vec<u32>,
    flow_trips: Vec<u32>,
    presence: Vec<PresenceRow>,
}

fn poisson(rng: &mut Xoshiro256PlusPlus, mean: f64) -> u32 {
    if mean <= 0.0 || !mean.is_finite() {
        return 0;
    }
    Poisson::new(mean).map(|p| p.sample(rng) as u32).unwrap_or(0)
}

impl DayContext<'_> {
    fn day(
        &self,
        day: NaiveDate,
        kind: DayKind,
        game: Option<&Match>,
        cruise: Option<&CruiseCall>,
        seed: u64,
        out: &mut MonthOutput,
    ) -> Result<(), SimulateError> {
        let tz = self.grid.tz;
        let day_number = day.num_days_from_ce() as u64;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ day_number);
        let bin_s = i64::from(self.grid.spec.bin_len_s);
        let start = local_midnight(tz, day);
        let end = local_midnight(tz, day.succ_opt().unwrap_or(day));
        let s = self.spatial;
        let n = self.grid.cells.len();
        let tourists = self.tourists_peak * model::tourist_level(kind);
        let trippers = visitors::day_trippers(kind, self.tourists_peak);
        let mut t = start.timestamp();
        let mut prev_shares: Option<model::Shares> = None;
        let mut lambda = vec![0.0f64; n];
        while t < end.timestamp() {
            let utc = DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
            let local = utc.with_timezone(&tz);
            let h = local.hour() as f64 + local.minute() as f64 / 60.0 + 0.5 * bin_s as f64 / 3600.0;
            let sh = model::shares(h, kind);
            let seen = model::seen(h) * model::CELLS_PER_SEEN_DEVICE;
            let out_share = model::tourist_out(h);
            let summer = kind.summer();
            let coast = 0.25 + 0.6 * summer;
            let match_devices = game
                .map(|m| {
                    f64::from(m.extra_devices) * model::match_presence(local.hour() as i64 - m.kickoff.hour() as i64)
                })
                .unwrap_or(0.0);
            let (ashore, at_terminal) = model::cruise_presence(h);
            let cruise_devices = cruise.map(|c| f64::from(c.extra_devices) * ashore).unwrap_or(0.0);
            let r = self.residents;
            for (c, l) in lambda.iter_mut().enumerate() {
                let residents = r
                    * (sh.home * s.home[c]
                        + sh.work * s.work[c]
                        + sh.evening * s.evening[c]
                        + sh.leisure * ((1.0 - coast) * s.leisure_town[c] + coast * s.leisure_coast[c]));
                let visitors = tourists * (out_share * s.tourist_day[c] + (1.0 - out_share) * s.tourist_night[c])
                    + trippers * visitors::day_trip_presence(h) * s.tourist_day[c]
                    + match_devices * s.stadium[c]
                    + cruise_devices * (at_terminal * s.cruise[c] + (1.0 - at_terminal) * s.tourist_day[c]);
                *l = seen * (residents + visitors);
            }
            let buf = &mut out.pending;
            let bin_idx = buf.bins.len() as u32;
            buf.bins.push(local.format("%Y-%m-%dT%H:%M:%S%:z").to_string());
            for (c, l) in lambda.iter().enumerate() {
                buf.foot_cell.push(c as u32);
                buf.foot_bin.push(bin_idx);
                buf.foot_devices.push(poisson(&mut rng, *l));
            }

            // Trips: the change in each activity's share moves residents.
            // Means are summed per pair first so that a pair appears once per
            // bin, as in an operator's delivery.
            let mut means: BTreeMap<(u32, u32), f64> = BTreeMap::new();
            let mut add = |o: u32, d: u32, mean: f64| {
                if o != d {
                    *means.entry((o, d)).or_default() += mean;
                }
            };
            if let Some(prev) = prev_shares {
                let moves = [
                    (sh.work - prev.work, self.commute),
                    (sh.evening + sh.leisure - prev.evening - prev.leisure, self.leisure),
                ];
                for (delta, dests) in moves {
                    // Slow drifts of a share are people staying put, not trips.
                    if delta.abs() < 0.004 {
                        continue;
                    }
                    for (o, targets) in dests.iter().enumerate() {
                        let base = r * delta.abs() * s.home[o];
                        for (d, p) in targets {
                            if delta > 0.0 {
                                add(o as u32, *d, base * p);
                            } else {
                                add(*d, o as u32, base * p);
                            }
                        }
                    }
                }
            }
            if let Some(m) = game {
                let offset = local.hour() as i64 - m.kickoff.hour() as i64;
                let share = match offset {
                    -2 => 0.4,
                    -1 | 2 => 0.6,
                    3 => 0.4,
                    _ => 0.0,
                };
                // Half of the crowd travels from inside the city.
                let travelling = f64::from(m.extra_devices) * 0.5 * share;
                for (o, home) in s.home.iter().enumerate() {
                    for (d, split) in self.stadium_cells {
                        let mean = travelling * home * split;
                        if offset < 0 {
                            add(o as u32, *d, mean);
                        } else {
                            add(*d, o as u32, mean);
                        }
                    }
                }
            }
            for ((o, d), mean) in means {
                // Means this small would almost always draw 0: skipping them
                // keeps the files the size of a real sparse delivery.
                if mean < 0.05 {
                    continue;
                }
                let trips = poisson(&mut rng, mean);
                if trips > 0 {
                    buf.flow_origin.push(o);
                    buf.flow_dest.push(d);
                    buf.flow_bin.push(bin_idx);
                    buf.flow_trips.push(trips);
                }
            }
            out.unit_done()?;
            prev_shares = Some(sh);
            t += bin_s;
        }
        Ok(())
    }
}

/// A segment, its expected devices by origin code and their distribution
/// over cells.
type VisitorGroup = (&'static str, Vec<(&'static str, f64)>, Vec<f64>);

impl DayContext<'_> {
    /// Presence rows of one day: for each period of the policy, every
    /// population attributed to cells by the period's mix
    /// ([`visitors::PeriodMix`]), split by segment and origin; codes the
    /// policy does not list are delivered as `other`, as an operator must.
    #[expect(clippy::too_many_arguments, reason = "one call site; the day's events and the truth")]
    fn presence(
        &self,
        day: NaiveDate,
        kind: DayKind,
        (game, cruise): (Option<&Match>, Option<&CruiseCall>),
        seed: u64,
        spec: &crate::policy::PresenceSpec,
        out: &mut MonthOutput,
        truth: &mut PresenceTruth,
    ) -> Result<(), SimulateError> {
        use crate::vocab::segment::{EXCURSIONIST, LOCAL_ORIGIN as LOCAL, RESIDENT, TOURIST};
        let day_number = day.num_days_from_ce() as u64;
        // A stream of its own: footfall and flows draw what they drew before.
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ day_number ^ 0x5052_4553);
        let s = self.spatial;
        let n = self.grid.cells.len();
        let segment = |name: &'static str| spec.segments.iter().any(|x| x == name).then_some(name);
        let code_groups = spec.code_groups();
        let code = |c: &'static str| {
            if code_groups.contains_key(c) {
                c
            } else {
                crate::policy::OTHER_ORIGIN
            }
        };
        let tourists = self.tourists_peak * model::tourist_level(kind);
        let trippers = visitors::day_trippers(kind, self.tourists_peak);
        let label: std::sync::Arc<str> = day.format("%Y-%m-%d").to_string().into();
        let month = day.format("%Y-%m").to_string();
        for period in spec.periods.keys() {
            let Some((from_s, to_s)) = spec.period_bounds(period) else {
                continue;
            };
            let (from_h, to_h) = (f64::from(from_s) / 3600.0, f64::from(to_s) / 3600.0);
            let mix = visitors::PeriodMix::new(s, kind, from_h, to_h);
            // Hashed while devices are placed, sorted once at the end.
            let mut counts: PlHashMap<(u32, &'static str, &'static str), u32> = PlHashMap::default();
            // Residents: one Poisson count per cell.
            if let Some(seg) = segment(RESIDENT) {
                let r = self.residents * mix.residents_present;
                for c in 0..n {
                    let v = poisson(&mut rng, r * mix.residents[c]);
                    if v > 0 {
                        *counts.entry((c as u32, seg, code(LOCAL))).or_default() += v;
                    }
                }
            }
            // Visitors: a Poisson number per origin, each placed in a cell
            // drawn from the population's distribution.
            let mut groups: Vec<VisitorGroup> = Vec::new();
            if let Some(seg) = segment(TOURIST) {
                groups.push((seg, visitors::tourist_origins(kind, tourists), mix.tourists.clone()));
            }
            if let Some(seg) = segment(EXCURSIONIST) {
                if visitors::overlaps(from_h, to_h, 10.0, 18.0) {
                    let o = visitors::split(trippers, visitors::regional_origins());
                    groups.push((seg, o, mix.day_trippers.clone()));
                }
                if let Some(c) = cruise.filter(|_| visitors::overlaps(from_h, to_h, 8.0, 18.0)) {
                    let o = visitors::split(f64::from(c.extra_devices), visitors::cruise_origins());
                    let dist: Vec<f64> = (0..n).map(|i| 0.3 * s.cruise[i] + 0.7 * s.tourist_day[i]).collect();
                    groups.push((seg, o, dist));
                }
                if let Some(m) = game {
                    let k = f64::from(m.kickoff.hour()) + f64::from(m.kickoff.minute()) / 60.0;
                    if visitors::overlaps(from_h, to_h, k - 2.0, k + 2.0) {
                        // Half the crowd comes from outside the city.
                        let o = visitors::split(0.5 * f64::from(m.extra_devices), visitors::regional_origins());
                        groups.push((seg, o, s.stadium.clone()));
                    }
                }
            }
            for (seg, origins, dist) in groups {
                let cumulative: Vec<f64> = dist
                    .iter()
                    .scan(0.0, |acc, x| {
                        *acc += x;
                        Some(*acc)
                    })
                    .collect();
                let total = cumulative.last().copied().unwrap_or(0.0);
                if total <= 0.0 {
                    continue;
                }
                for (origin, mean) in origins {
                    let origin = code(origin);
                    for _ in 0..poisson(&mut rng, mean) {
                        let u = rng.random::<f64>() * total;
                        let c = cumulative.partition_point(|x| *x <= u).min(n - 1);
                        *counts.entry((c as u32, seg, origin)).or_default() += 1;
                    }
                }
            }
            let mut counts: Vec<_> = counts.into_iter().collect();
            counts.sort_unstable();
            let period_label: std::sync::Arc<str> = period.as_str().into();
            let mut by_group: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for ((cell, seg, origin), v) in counts {
                out.pending
                    .presence
                    .push((cell, label.clone(), period_label.clone(), seg, origin, v));
                let group = code_groups.get(origin).copied().unwrap_or(crate::policy::OTHER_ORIGIN);
                *by_group.entry((seg, group)).or_default() += u64::from(v);
            }
            for ((seg, group), v) in by_group {
                *truth.daily.entry((day, period.clone(), seg.to_string())).or_default() += v;
                *truth
                    .monthly
                    .entry((month.clone(), period.clone(), seg.to_string(), group.to_string()))
                    .or_default() += v;
            }
            out.unit_done()?;
        }
        Ok(())
    }
}

pub use crate::vocab::local_midnight;

impl Pending {
    fn rows(&self) -> usize {
        self.foot_cell.len() + self.flow_origin.len() + self.presence.len()
    }
}

/// One local month's files, written a batch at a time: rows are held until
/// a bin (or a presence period) ends with `batch_rows` of them pending, then
/// appended to the files, one Parquet row group or one run of CSV lines per
/// metric. Rows come in the order of the whole month's frame they replace.
struct MonthOutput<'a> {
    /// `YYYY-MM`.
    label: String,
    dir: &'a Path,
    format: Format,
    grid: &'a Grid,
    batch_rows: usize,
    pending: Pending,
    peak_buffered_rows: usize,
    footfall: Option<MonthFile>,
    flows: Option<MonthFile>,
    presence: Option<MonthFile>,
}

impl<'a> MonthOutput<'a> {
    fn new(grid: &'a Grid, dir: &'a Path, format: Format, label: String, batch_rows: usize) -> Self {
        Self {
            label,
            dir,
            format,
            grid,
            batch_rows,
            pending: Pending::default(),
            peak_buffered_rows: 0,
            footfall: None,
            flows: None,
            presence: None,
        }
    }

    /// At the end of a bin or a period: writes the pending rows if there
    /// are enough of them.
    fn unit_done(&mut self) -> Result<(), SimulateError> {
        let rows = self.pending.rows();
        self.peak_buffered_rows = self.peak_buffered_rows.max(rows);
        if rows >= self.batch_rows {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SimulateError> {
        let p = std::mem::take(&mut self.pending);
        let grid = self.grid;
        let ids: Vec<&str> = grid.cells.iter().map(|c| c.cell_id.as_str()).collect();
        let bins: Vec<&str> = p.bins.iter().map(String::as_str).collect();
        if !p.foot_cell.is_empty() {
            let df = df!(
                "cell_id" => p.foot_cell.iter().map(|c| ids[*c as usize]).collect::<Vec<_>>(),
                "bin_start" => p.foot_bin.iter().map(|b| bins[*b as usize]).collect::<Vec<_>>(),
                "devices" => &p.foot_devices,
            )
            .map_err(self.polars_err(Metric::Footfall))?;
            self.append(Metric::Footfall, &df)?;
        }
        if !p.flow_origin.is_empty() {
            let df = df!(
                "origin_cell_id" => p.flow_origin.iter().map(|c| ids[*c as usize]).collect::<Vec<_>>(),
                "dest_cell_id" => p.flow_dest.iter().map(|c| ids[*c as usize]).collect::<Vec<_>>(),
                "bin_start" => p.flow_bin.iter().map(|b| bins[*b as usize]).collect::<Vec<_>>(),
                "trips" => &p.flow_trips,
            )
            .map_err(self.polars_err(Metric::Flows))?;
            self.append(Metric::Flows, &df)?;
        }
        if !p.presence.is_empty() {
            let r = &p.presence;
            let df = df!(
                "cell_id" => r.iter().map(|r| ids[r.0 as usize]).collect::<Vec<_>>(),
                "day" => r.iter().map(|r| &*r.1).collect::<Vec<_>>(),
                "period" => r.iter().map(|r| &*r.2).collect::<Vec<_>>(),
                "segment" => r.iter().map(|r| r.3).collect::<Vec<_>>(),
                "origin" => r.iter().map(|r| r.4).collect::<Vec<_>>(),
                "devices" => r.iter().map(|r| r.5).collect::<Vec<_>>(),
            )
            .map_err(self.polars_err(Metric::Presence))?;
            self.append(Metric::Presence, &df)?;
        }
        Ok(())
    }

    fn polars_err(&self, metric: Metric) -> impl FnOnce(PolarsError) -> SimulateError + use<> {
        let path = self.path(metric);
        move |source| SimulateError::Polars { path, source }
    }

    fn path(&self, metric: Metric) -> PathBuf {
        let ext = match self.format {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
        };
        self.dir.join(format!("{}-{}.{ext}", metric.as_str(), self.label))
    }

    /// Appends to the metric's file, created with the first rows: a month
    /// without flows or presence has no such file.
    fn append(&mut self, metric: Metric, df: &DataFrame) -> Result<(), SimulateError> {
        let path = self.path(metric);
        let slot = match metric {
            Metric::Footfall => &mut self.footfall,
            Metric::Flows => &mut self.flows,
            Metric::Presence => &mut self.presence,
        };
        let file = match slot {
            Some(f) => f,
            None => slot.insert(MonthFile::create(path, metric, &self.label, self.format, df.schema())?),
        };
        file.append(df)
    }

    /// Writes what is pending and closes the month's files, in the
    /// report's order: footfall, presence, flows.
    fn finish(mut self) -> Result<Vec<SimFile>, SimulateError> {
        self.flush()?;
        [self.footfall, self.presence, self.flows]
            .into_iter()
            .flatten()
            .map(MonthFile::finish)
            .collect()
    }
}

/// One metric's file of a month, under its temporary name until the month
/// is done.
struct MonthFile {
    info: SimFile,
    file: util::AtomicFile,
    writer: BatchWriter,
}

enum BatchWriter {
    // Boxed: the Parquet writer's state is six times the CSV one's.
    Parquet(Box<polars::io::parquet::write::BatchedWriter<std::fs::File>>),
    Csv(polars::io::csv::write::BatchedWriter<std::fs::File>),
}

impl MonthFile {
    fn create(
        path: PathBuf,
        metric: Metric,
        month: &str,
        format: Format,
        schema: &Schema,
    ) -> Result<Self, SimulateError> {
        let io_err = |source| SimulateError::Io {
            path: path.clone(),
            source,
        };
        let mut file = util::AtomicFile::create(&path).map_err(io_err)?;
        // The writer gets its own handle; `file` keeps one to fsync it.
        let handle = file.file().try_clone().map_err(io_err)?;
        let writer = match format {
            Format::Parquet => table::parquet_writer(handle)
                .batched(schema)
                .map(|w| BatchWriter::Parquet(Box::new(w))),
            Format::Csv => CsvWriter::new(handle).batched(schema).map(BatchWriter::Csv),
        }
        .map_err(|source| SimulateError::Polars {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            info: SimFile {
                path,
                metric,
                month: month.to_string(),
                rows: 0,
                sha256: String::new(),
            },
            file,
            writer,
        })
    }

    fn append(&mut self, df: &DataFrame) -> Result<(), SimulateError> {
        match &mut self.writer {
            BatchWriter::Parquet(w) => w.write_batch(df),
            BatchWriter::Csv(w) => w.write_batch(df),
        }
        .map_err(|source| SimulateError::Polars {
            path: self.info.path.clone(),
            source,
        })?;
        self.info.rows += df.height();
        Ok(())
    }

    fn finish(mut self) -> Result<SimFile, SimulateError> {
        match &mut self.writer {
            BatchWriter::Parquet(w) => w.finish().map(drop),
            BatchWriter::Csv(w) => w.finish(),
        }
        .map_err(|source| SimulateError::Polars {
            path: self.info.path.clone(),
            source,
        })?;
        self.file.commit().map_err(|source| SimulateError::Io {
            path: self.info.path.clone(),
            source,
        })?;
        self.info.sha256 = crate::util::sha256_file(&self.info.path).map_err(|source| SimulateError::Io {
            path: self.info.path.clone(),
            source,
        })?;
        Ok(self.info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (crate::policy::Policy, Grid) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-zones.toml");
        let policy = crate::policy::Policy::load(&path).expect("policy");
        let grid = policy.load_grid().expect("grid");
        (policy, grid)
    }

    /// Memory is what is held at once: a batch and one bin's (or one
    /// presence period's) rows, never a month, however many days and
    /// devices. A month held whole, as before batches, fails this.
    #[test]
    fn rows_held_at_once_are_a_batch_and_one_bin_whatever_the_days_and_devices() {
        let (policy, mut grid) = tiny();
        let sim = grid.spec.simulation.get_or_insert_default();
        sim.insert("devices".into(), toml::Value::Integer(200_000));
        sim.insert("tourists_peak".into(), toml::Value::Integer(10_000));
        let presence = policy.spec.presence.as_ref().expect("presence");
        let cells = grid.cells.len();
        // A bin: every cell's footfall and at most six flow pairs per origin
        // (three commute and one leisure destination, two stadium cells); a
        // period: a cell per segment and origin code.
        let one_unit = cells * 7.max(presence.segments.len() * presence.code_groups().len());
        let batch_rows = 100;
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = ("2025-06-20".parse().expect("from"), "2025-07-31".parse().expect("to"));
        let report = simulate_in_batches(&grid, from, to, dir.path(), Format::Csv, 5, Some(presence), batch_rows)
            .expect("simulate");
        let held = report.peak_buffered_rows;
        assert!(held < batch_rows + one_unit, "{held} rows held at once");
        let total = report.footfall_rows + report.flows_rows + report.presence_rows;
        assert!(total > 20 * (batch_rows + one_unit), "too few rows to tell: {total}");
    }

    /// Batches change when rows are written, not what is written.
    #[test]
    fn files_are_the_same_whatever_the_batch() {
        let (policy, grid) = tiny();
        let presence = policy.spec.presence.as_ref();
        let (from, to) = ("2025-03-30".parse().expect("from"), "2025-04-02".parse().expect("to"));
        let run = |batch_rows| {
            let dir = tempfile::tempdir().expect("tempdir");
            let report = simulate_in_batches(&grid, from, to, dir.path(), Format::Csv, 9, presence, batch_rows)
                .expect("simulate");
            let files: Vec<(PathBuf, Vec<u8>)> = report
                .files
                .iter()
                .map(|f| {
                    (
                        f.path.strip_prefix(dir.path()).expect("in dir").to_path_buf(),
                        std::fs::read(&f.path).expect("read"),
                    )
                })
                .collect();
            (files, report.footfall_rows, report.flows_rows, report.presence_rows)
        };
        let whole = run(usize::MAX);
        assert_eq!(whole.0.len(), 6, "three metrics in two months");
        assert_eq!(run(1), whole);
        assert_eq!(run(100), whole);
    }

    /// Months are simulated side by side: a window's files are those of
    /// its months simulated one at a time, and its truth their sum.
    #[test]
    fn a_window_is_its_months_simulated_apart() {
        let (policy, grid) = tiny();
        let presence = policy.spec.presence.as_ref();
        let day = |s: &str| s.parse::<NaiveDate>().expect("day");
        let run = |from, to| {
            let dir = tempfile::tempdir().expect("tempdir");
            let report = simulate(&grid, from, to, dir.path(), Format::Csv, 3, presence).expect("simulate");
            let files: Vec<(String, Vec<u8>)> = report
                .files
                .iter()
                .map(|f| {
                    let name = f.path.file_name().expect("name").to_string_lossy().into_owned();
                    (name, std::fs::read(&f.path).expect("read"))
                })
                .collect();
            let truth: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&report.truth).expect("truth")).expect("truth json");
            let daily: Vec<PresenceTotal> =
                serde_json::from_value(truth["presence_daily"].clone()).expect("presence_daily");
            (files, daily)
        };
        let (mut files, mut daily) = run(day("2025-01-30"), day("2025-01-31"));
        let (feb, feb_daily) = run(day("2025-02-01"), day("2025-03-02"));
        let (mar, mar_daily) = run(day("2025-03-01"), day("2025-03-02"));
        files.extend(feb.into_iter().filter(|f| f.0.contains("2025-02")));
        files.extend(mar);
        daily.extend(feb_daily.into_iter().filter(|t| t.day.month() == 2));
        daily.extend(mar_daily);
        files.sort();
        let (mut whole, whole_daily) = run(day("2025-01-30"), day("2025-03-02"));
        whole.sort();
        assert_eq!(whole.len(), 9, "three metrics in three months");
        assert_eq!(whole, files);
        assert!(!daily.is_empty());
        assert_eq!(whole_daily, daily);
    }

    #[test]
    fn month_spans_clip_to_the_window() {
        let day = |s: &str| s.parse::<NaiveDate>().expect("day");
        assert_eq!(
            month_spans(day("2024-12-30"), day("2025-02-01")),
            vec![
                (day("2024-12-30"), day("2024-12-31")),
                (day("2025-01-01"), day("2025-01-31")),
                (day("2025-02-01"), day("2025-02-01")),
            ]
        );
        assert_eq!(
            month_spans(day("2025-02-10"), day("2025-02-10")),
            vec![(day("2025-02-10"), day("2025-02-10"))]
        );
    }
}
