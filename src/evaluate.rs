//! `hexflow evaluate`: how well the published releases recover what a
//! simulation injected — "what the demo shows" in the README.
//!
//! The views are called through the real router, exactly as a planner's
//! browser would. Two figures need the truth the views are compared with
//! (profiles and flows): it is computed from the count store, which is why
//! this command refuses any dataset whose deliveries were not simulated by
//! hexflow: every stored delivery must be a file listed, with its SHA-256,
//! in the `simulated-*.json` marker `simulate` writes beside its files. It
//! prints only agreement figures (correlations over many values, recall,
//! error quantiles over many values, and single comparisons as bands such
//! as "≤ 1 %"), never a count nor a statistic of the truth, nor a single
//! relative error that the published figure beside it would turn back
//! into the truth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::http::Request;
use chrono::{Datelike, NaiveDate, Timelike, Weekday};
use serde::Serialize;
use serde_json::Value;
use tower::ServiceExt;

use crate::policy::Policy;
use crate::release::Unit;
use crate::server::{AppState, ServeConfig};
use crate::store::{CountStore, Metric};

/// The figures.
#[derive(Debug, Serialize)]
pub struct Report {
    pub dataset: String,
    pub events: EventFigures,
    pub profiles: ProfileFigures,
    pub flows: FlowFigures,
    pub forecast: ForecastFigures,
    /// People and visitors (policies with `[presence]`).
    pub visitors: Option<VisitorFigures>,
}

/// How well the visitors view recovers the delivered presence (truth: the
/// stored presence spread over the zones by the same weights).
#[derive(Debug, Serialize)]
pub struct VisitorFigures {
    pub months: usize,
    /// |DP − truth| / truth of the city's monthly overnight stays
    /// (tourists' night presence summed over the month), as bands: the
    /// mean over months and the worst month.
    pub nights_tourists_rel_error_mean: Within,
    pub nights_tourists_rel_error_max: Within,
    /// The same for monthly day visitors (excursionists by day).
    pub day_visitors_rel_error_mean: Within,
    pub day_visitors_rel_error_max: Within,
    /// Per summer month (June–August): share of the true 10 largest origin
    /// groups of visitors among the DP 10 largest, and its mean.
    pub top10_origins_overlap: BTreeMap<String, f64>,
    pub top10_origins_overlap_mean: f64,
    /// Mean excursionists by day on cruise-call days over other days: DP
    /// and truth.
    pub cruise_day_excursionist_ratio_dp: f64,
    /// |DP ratio − true ratio| / true ratio, as a band: agreement only
    /// (the true ratio is a statistic of raw counts and is never printed,
    /// nor anything it could be solved from).
    pub cruise_day_ratio_rel_error: Within,
    pub cruise_days: usize,
    /// People present by day per zone and day (all segments), DP against
    /// truth: Pearson correlation, and the median and 95th percentile of
    /// |relative error|.
    pub zone_days: usize,
    pub zone_day_correlation: f64,
    pub zone_day_rel_error_median: f64,
    pub zone_day_rel_error_p95: f64,
    /// ρ per day that bought the daily releases (each period) and the
    /// monthly origins release.
    pub rho_per_day_daily: f64,
    pub rho_per_day_origins: f64,
}

#[derive(Debug, Serialize)]
pub struct EventFigures {
    pub area: String,
    pub hexes: usize,
    pub days_scored: usize,
    pub match_days: usize,
    /// Match days among the `match_days` highest-scoring evenings.
    pub recall_at_k: f64,
    /// Other days among the `match_days` highest-scoring evenings.
    pub false_alarms_at_k: usize,
    /// Match days whose evening excess exceeds its 95 % interval (DP noise
    /// only: the question "is this change real, not noise?").
    pub matches_flagged: usize,
    /// Other days whose evening excess exceeds its 95 % interval: real
    /// changes that are not matches (holidays, season, cruise calls) as
    /// well as noise.
    pub false_alarms: usize,
    pub rho_per_day_of_source: f64,
}

#[derive(Debug, Serialize)]
pub struct ProfileFigures {
    pub zones: usize,
    /// Pearson correlation of DP and true weekday means (zones × 7), each
    /// zone's profile divided by its own mean: the shape, not the zones'
    /// sizes (which alone would give a correlation near 1).
    pub weekday_correlation: f64,
    /// The same for month means (zones × months).
    pub month_correlation: f64,
    pub rho_per_day_of_source: f64,
}

#[derive(Debug, Serialize)]
pub struct FlowFigures {
    pub period: String,
    pub pairs: usize,
    /// Spearman rank correlation of DP and true pair totals.
    pub spearman: f64,
    /// Share of the true 10 largest flows among the DP 10 largest.
    pub top10_overlap: f64,
    pub rho_per_day_of_source: f64,
}

#[derive(Debug, Serialize)]
pub struct ForecastFigures {
    pub zones: usize,
    pub horizon_days: usize,
    /// Mean absolute error relative to the mean level, over zones.
    pub relative_mae_model: f64,
    pub relative_mae_seasonal_naive: f64,
    pub coverage95: f64,
}

/// A view through the real router, read back into its typed answer (a
/// renamed field fails here instead of reading as zero).
async fn get<T: serde::de::DeserializeOwned>(state: &Arc<AppState>, uri: &str) -> Result<T> {
    let resp = crate::server::router(state.clone())
        .oneshot(Request::get(uri).body(Body::empty())?)
        .await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    if !status.is_success() {
        let v: Value = serde_json::from_slice(&bytes)?;
        bail!("{uri}: {}", v["detail"]);
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{uri}: not the view's typed answer"))
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|a, b| v[*a].total_cmp(&v[*b]));
    let mut r = vec![0.0; v.len()];
    for (rank, i) in idx.into_iter().enumerate() {
        r[i] = rank as f64;
    }
    r
}

/// Runs the evaluation on `policy`'s data dir.
pub fn run(policy: Policy, data_dir: &Path) -> Result<Report> {
    let ds = policy.dataset().to_string();
    let truth_path = data_dir.join("deliveries").join(&ds).join("events.json");
    // The truth is read from raw counts: only where every stored delivery
    // is a file `simulate` wrote, by its hash in the simulation's marker
    // (a marker alone is too easy to drop beside an operator's files).
    let deliveries = data_dir.join("deliveries").join(&ds);
    check_simulated(&deliveries, &CountStore::new(data_dir, &ds).catalog()?)?;
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path).with_context(|| {
        format!(
            "{}: evaluate compares releases with a simulation's truth and runs only on deliveries simulated by hexflow (as `hexflow demo` makes)",
            truth_path.display()
        )
    })?)?;
    let matches: HashSet<NaiveDate> = truth["matches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["date"].as_str()?.parse().ok())
        .collect();
    let state = Arc::new(AppState::new(vec![policy.clone()], ServeConfig::new(data_dir))?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ds_ref = state.datasets.get(&ds).context("dataset")?.clone();
    let grid = &ds_ref.releaser.grid;

    // Events: the hexes within 700 m of the stadium, evenings 17-24 h.
    let stadium = grid
        .landmarks
        .iter()
        .find(|l| l.kind == "stadium")
        .context("the grid has no landmark of kind stadium")?;
    let w8 = ds_ref.releaser.weights(8)?;
    let centre = geo::Point::new(stadium.lon, stadium.lat);
    let hexes: Vec<String> = w8
        .hexes
        .iter()
        .filter(|h| {
            use geo::Distance;
            let ll = h3o::LatLng::from(**h);
            geo::Haversine.distance(centre, geo::Point::new(ll.lng(), ll.lat())) < 700.0
        })
        .map(|h| h.to_string())
        .collect();
    let hourly: Vec<(NaiveDate, f64)> = {
        let index = state.index.read().map_err(|e| anyhow::anyhow!("{e}"))?;
        index
            .iter()
            .filter(|r| {
                r.audience == crate::vocab::audience::PUBLIC && r.metric == Metric::Footfall && r.unit == Unit::Hex
            })
            .filter(|r| r.res == Some(8) && r.bin == crate::privacy::Bin::Hour)
            .map(|r| (r.from, r.rho))
            .collect()
    };
    let first = hourly
        .first()
        .map(|d| d.0)
        .context("no hourly res-8 releases: run the demo first")?;
    let mut scored: Vec<(NaiveDate, f64, bool)> = Vec::new();
    rt.block_on(async {
        for (day, _) in &hourly {
            if *day < first + chrono::Duration::weeks(4) {
                continue;
            }
            let v: crate::views::EventView = get(
                &state,
                &format!("/api/v1/views/event?date={day}&hex={}&weeks=4", hexes.join(",")),
            )
            .await?;
            let (mut ex, mut var) = (0.0, 0.0);
            for h in v.hours.iter().filter(|h| h.hour >= 17) {
                ex += h.excess;
                var += h.excess_ci95.powi(2);
            }
            let ci = var.sqrt();
            scored.push((*day, ex / ci.max(1e-9), ex > ci));
        }
        anyhow::Ok(())
    })?;
    let match_days = scored.iter().filter(|s| matches.contains(&s.0)).count();
    let mut by_score = scored.clone();
    by_score.sort_by(|a, b| b.1.total_cmp(&a.1));
    let hits = by_score
        .iter()
        .take(match_days)
        .filter(|s| matches.contains(&s.0))
        .count();
    let events = EventFigures {
        area: format!("hexes of resolution 8 within 700 m of {}", stadium.name),
        hexes: hexes.len(),
        days_scored: scored.len(),
        match_days,
        recall_at_k: hits as f64 / match_days.max(1) as f64,
        false_alarms_at_k: match_days - hits,
        matches_flagged: scored.iter().filter(|s| s.2 && matches.contains(&s.0)).count(),
        false_alarms: scored.iter().filter(|s| s.2 && !matches.contains(&s.0)).count(),
        rho_per_day_of_source: hourly.first().map(|d| d.1).unwrap_or(0.0),
    };

    // Profiles: DP (seasonality view) against the truth of the same zones.
    let w_zone = ds_ref.releaser.weights_for(Unit::Zone, 0)?;
    let store = CountStore::new(data_dir, &ds);
    // Held until the files of this catalog have been read.
    let _readers = store.read_guard()?;
    let catalog = store.catalog()?;
    let days: Vec<NaiveDate> = CountStore::days(&catalog, Metric::Footfall).into_iter().collect();
    let cell_pos = w_zone.cell_positions();
    let mut true_daily: BTreeMap<(usize, NaiveDate), f64> = BTreeMap::new();
    for day in &days {
        let Some(df) = store.read_day(&catalog, Metric::Footfall, *day)? else {
            continue;
        };
        let cells = df.column("cell_id")?.str()?.clone();
        let devices = df.column("devices")?.u32()?.clone();
        let mut per_cell = vec![0.0f64; w_zone.cell_ids.len()];
        for (c, v) in cells.iter().zip(devices.iter()) {
            if let (Some(c), Some(v)) = (c, v)
                && let Some(i) = cell_pos.get(c)
            {
                per_cell[*i as usize] += f64::from(v);
            }
        }
        for e in &w_zone.entries {
            *true_daily.entry((e.hex as usize, *day)).or_default() += per_cell[e.cell as usize] * e.weight;
        }
    }
    let (mut dp_w, mut tr_w, mut dp_m, mut tr_m) = (vec![], vec![], vec![], vec![]);
    let mut rel_mae = (0.0, 0.0, 0.0, 0usize);
    let mut profile_rho = 0.0;
    rt.block_on(async {
        for (zi, zone) in w_zone.keys.iter().enumerate() {
            let s: crate::views::SeasonalityView =
                get(&state, &format!("/api/v1/views/seasonality?zone={zone}")).await?;
            profile_rho = s.source.rho_per_day_of_source;
            let truth: Vec<(NaiveDate, f64)> = true_daily
                .range((zi, NaiveDate::MIN)..=(zi, NaiveDate::MAX))
                .map(|((_, d), v)| (*d, *v))
                .collect();
            let (w0, m0) = (dp_w.len(), dp_m.len());
            for (w, p) in s.weekday_profile.iter().enumerate() {
                let wd = Weekday::try_from(w as u8).unwrap_or(Weekday::Mon);
                let t: Vec<f64> = truth.iter().filter(|(d, _)| d.weekday() == wd).map(|x| x.1).collect();
                dp_w.push(p.mean.unwrap_or(0.0));
                tr_w.push(t.iter().sum::<f64>() / t.len().max(1) as f64);
            }
            for (y, months) in &s.months_by_year {
                for m in months {
                    let t: Vec<f64> = truth
                        .iter()
                        .filter(|(d, _)| d.year() == *y && d.month() == m.month)
                        .map(|x| x.1)
                        .collect();
                    dp_m.push(m.mean);
                    tr_m.push(t.iter().sum::<f64>() / t.len().max(1) as f64);
                }
            }
            for (v, from) in [(&mut dp_w, w0), (&mut tr_w, w0), (&mut dp_m, m0), (&mut tr_m, m0)] {
                let mean = v[from..].iter().sum::<f64>() / (v.len() - from).max(1) as f64;
                if mean > 0.0 {
                    v[from..].iter_mut().for_each(|x| *x /= mean);
                }
            }
            let f: crate::views::ForecastView =
                get(&state, &format!("/api/v1/views/forecast?zone={zone}&days=14")).await?;
            // The level from the published series: a figure that needs no
            // truth should not be derived from it.
            let level = s.daily.iter().map(|d| d.value).sum::<f64>() / s.daily.len().max(1) as f64;
            if let (true, Some(b)) = (level > 0.0, f.forecast.backtest) {
                rel_mae.0 += b.mae_model / level;
                rel_mae.1 += b.mae_seasonal_naive / level;
                rel_mae.2 += b.coverage95;
                rel_mae.3 += 1;
            }
        }
        anyhow::Ok(())
    })?;
    let profiles = ProfileFigures {
        zones: w_zone.keys.len(),
        weekday_correlation: pearson(&dp_w, &tr_w),
        month_correlation: pearson(&dp_m, &tr_m),
        rho_per_day_of_source: profile_rho,
    };
    let n = rel_mae.3.max(1) as f64;
    let forecast = ForecastFigures {
        zones: rel_mae.3,
        horizon_days: 14,
        relative_mae_model: rel_mae.0 / n,
        relative_mae_seasonal_naive: rel_mae.1 / n,
        coverage95: rel_mae.2 / n,
    };

    // Flows: weekday mornings 7-9 h of March 2025 against the truth.
    let (from, to) = (days[0].with_day(1).unwrap_or(days[0]), days[0]);
    let march_from = NaiveDate::from_ymd_opt(from.year(), 3, 1).unwrap_or(from);
    let march_to = NaiveDate::from_ymd_opt(from.year(), 3, 31).unwrap_or(to);
    let z = w_zone.keys.len();
    let mut true_pairs = vec![0.0f64; z * z];
    let tz = grid.tz;
    for day in march_from.iter_days().take_while(|d| *d <= march_to) {
        if day.weekday().num_days_from_monday() >= 5 {
            continue;
        }
        let Some(df) = store.read_day(&catalog, Metric::Flows, day)? else {
            continue;
        };
        let o = df.column("origin_cell_id")?.str()?.clone();
        let d = df.column("dest_cell_id")?.str()?.clone();
        let t = df
            .column("bin_start")?
            .as_materialized_series()
            .to_physical_repr()
            .i64()?
            .clone();
        let trips = df.column("trips")?.u32()?.clone();
        for (((o, d), t), v) in o.iter().zip(d.iter()).zip(t.iter()).zip(trips.iter()) {
            let (Some(o), Some(d), Some(t), Some(v)) = (o, d, t, v) else {
                continue;
            };
            let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t) else {
                continue;
            };
            let hour = t.with_timezone(&tz).hour();
            if !(7..9).contains(&hour) {
                continue;
            }
            let (Some(ro), Some(rd)) = (
                cell_pos.get(o).and_then(|i| w_zone.rows.get(i)),
                cell_pos.get(d).and_then(|i| w_zone.rows.get(i)),
            ) else {
                continue;
            };
            for eo in ro {
                for ed in rd {
                    true_pairs[eo.hex as usize * z + ed.hex as usize] += f64::from(v) * eo.weight * ed.weight;
                }
            }
        }
    }
    let fl: crate::views::FlowsView = rt.block_on(get(
        &state,
        &format!("/api/v1/views/flows?from={march_from}&to={march_to}&hours=7-9&weekdays=true&top=500"),
    ))?;
    let pos: HashMap<&str, usize> = w_zone.keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let mut dp_pairs = vec![0.0f64; z * z];
    for p in &fl.largest {
        if let (Some(o), Some(d)) = (pos.get(p.origin.as_str()), pos.get(p.dest.as_str())) {
            dp_pairs[o * z + d] = p.trips;
        }
    }
    let top = |v: &[f64]| -> HashSet<usize> {
        let mut i: Vec<usize> = (0..v.len()).collect();
        i.sort_by(|a, b| v[*b].total_cmp(&v[*a]));
        i.into_iter().take(10).collect()
    };
    let flows = FlowFigures {
        period: format!("weekdays {march_from}..{march_to}, 07-09 h"),
        pairs: z * z,
        spearman: pearson(&ranks(&dp_pairs), &ranks(&true_pairs)),
        top10_overlap: top(&dp_pairs).intersection(&top(&true_pairs)).count() as f64 / 10.0,
        rho_per_day_of_source: fl.source.rho_per_day_of_source,
    };
    let visitors = match &policy.spec.presence {
        Some(p) => Some(visitor_figures(&rt, &state, (&store, &catalog), &w_zone, p, &truth)?),
        None => None,
    };
    Ok(Report {
        dataset: ds,
        events,
        profiles,
        flows,
        forecast,
        visitors,
    })
}

/// Refuses unless `catalog`'s every delivery is a file listed, with its
/// SHA-256, in a `simulated-*.json` marker in `deliveries`.
fn check_simulated(deliveries: &Path, catalog: &crate::store::Catalog) -> Result<()> {
    let mut simulated: HashSet<String> = HashSet::new();
    for entry in std::fs::read_dir(deliveries).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("simulated-") && name.ends_with(".json")) {
            continue;
        }
        let marker: Value = serde_json::from_slice(&std::fs::read(entry.path())?)
            .with_context(|| format!("{}: unreadable simulation marker", entry.path().display()))?;
        simulated.extend(
            marker["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["sha256"].as_str().filter(|h| !h.is_empty()).map(str::to_string)),
        );
    }
    if simulated.is_empty() {
        bail!(
            "{}: no simulated-*.json marker listing its files' hashes; evaluate reads raw counts for its truth and runs only on deliveries `hexflow simulate` (or `hexflow demo`) wrote",
            deliveries.display()
        );
    }
    if catalog.deliveries.is_empty() {
        bail!("nothing ingested yet: ingest the simulated deliveries, publish, then evaluate");
    }
    if let Some(d) = catalog.deliveries.iter().find(|d| !simulated.contains(&d.sha256)) {
        bail!(
            "the store holds {} (SHA-256 {}…), which no simulation marker lists: evaluate reads raw counts for its truth and runs only on a store that holds simulated deliveries alone",
            d.file_name,
            &d.sha256[..12.min(d.sha256.len())]
        );
    }
    Ok(())
}

/// How close a published figure came to the truth, as a band: a relative
/// error printed to its digits beside the published figure would give the
/// truth back (the true cruise-day ratio came back to its last digit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Within {
    PerMille,
    OnePercent,
    FivePercent,
    TenPercent,
    More,
}

/// As printed: `"≤ 1 %"`.
impl Serialize for Within {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Within {
    pub fn of(rel_error: f64) -> Self {
        match rel_error {
            e if e <= 0.001 => Within::PerMille,
            e if e <= 0.01 => Within::OnePercent,
            e if e <= 0.05 => Within::FivePercent,
            e if e <= 0.10 => Within::TenPercent,
            _ => Within::More,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Within::PerMille => "≤ 0.1 %",
            Within::OnePercent => "≤ 1 %",
            Within::FivePercent => "≤ 5 %",
            Within::TenPercent => "≤ 10 %",
            Within::More => "> 10 %",
        }
    }
}

fn rel(dp: f64, truth: f64) -> f64 {
    (dp - truth).abs() / truth.max(1.0)
}

/// [`VisitorFigures`]: the visitors view (through the router) against the
/// stored presence spread over the zones.
fn visitor_figures(
    rt: &tokio::runtime::Runtime,
    state: &Arc<AppState>,
    (store, catalog): (&CountStore, &crate::store::Catalog),
    w_zone: &crate::release::Weights,
    p: &crate::policy::PresenceSpec,
    truth: &Value,
) -> Result<VisitorFigures> {
    use crate::vocab::segment::{EXCURSIONIST, TOURIST};
    let (day_period, night_period) = p.day_and_night();
    let code_groups = p.code_groups();
    let cell_pos = w_zone.cell_positions();
    // Truth by zone and day (day period, all segments), by month (nights of
    // tourists, day visitors) and by month and origin group of visitors.
    let mut zone_day: BTreeMap<(usize, NaiveDate), f64> = BTreeMap::new();
    let mut nights: BTreeMap<String, f64> = BTreeMap::new();
    let mut day_visitors: BTreeMap<String, f64> = BTreeMap::new();
    let mut excursionists: BTreeMap<NaiveDate, f64> = BTreeMap::new();
    let mut origins: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for day in CountStore::days(catalog, Metric::Presence) {
        let Some(df) = store.read_day(catalog, Metric::Presence, day)? else {
            continue;
        };
        let month = format!("{:04}-{:02}", day.year(), day.month());
        let text = |c: &str| -> Result<Vec<Option<String>>> {
            Ok(df.column(c)?.str()?.iter().map(|s| s.map(str::to_string)).collect())
        };
        let (cells, periods, segments, codes) = (text("cell_id")?, text("period")?, text("segment")?, text("origin")?);
        let devices: Vec<Option<u32>> = df.column("devices")?.u32()?.iter().collect();
        for i in 0..df.height() {
            let (Some(c), Some(per), Some(seg), Some(code), Some(v)) =
                (&cells[i], &periods[i], &segments[i], &codes[i], devices[i])
            else {
                continue;
            };
            let Some(row) = cell_pos.get(c.as_str()).and_then(|i| w_zone.rows.get(i)) else {
                continue;
            };
            let in_zones: f64 = row.iter().map(|e| e.weight).sum::<f64>() * f64::from(v);
            let by_day = *per == day_period;
            if by_day {
                for e in row {
                    *zone_day.entry((e.hex as usize, day)).or_default() += e.weight * f64::from(v);
                }
                if seg == EXCURSIONIST {
                    *day_visitors.entry(month.clone()).or_default() += in_zones;
                    *excursionists.entry(day).or_default() += in_zones;
                }
                if seg == TOURIST || seg == EXCURSIONIST {
                    *origins
                        .entry(month.clone())
                        .or_default()
                        .entry(
                            code_groups
                                .get(code.as_str())
                                .copied()
                                .unwrap_or(crate::policy::OTHER_ORIGIN)
                                .to_string(),
                        )
                        .or_default() += in_zones;
                }
            } else if night_period.as_ref() == Some(per) && seg == TOURIST {
                *nights.entry(month.clone()).or_default() += in_zones;
            }
        }
    }
    let cruise_days: HashSet<NaiveDate> = truth["cruise_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["date"].as_str()?.parse().ok())
        .collect();
    let (view, zone_views) = rt.block_on(async {
        let all: crate::views::VisitorsView = get(state, "/api/v1/views/visitors?top=10").await?;
        let mut per_zone = Vec::new();
        for zone in &w_zone.keys {
            let v: crate::views::VisitorsView =
                get(state, &format!("/api/v1/views/visitors?zone={zone}&top=1")).await?;
            per_zone.push(v);
        }
        anyhow::Ok((all, per_zone))
    })?;
    let complete: Vec<&crate::views::VisitorMonth> = view
        .monthly
        .iter()
        .filter(|m| {
            let (y, mo) = m.month.split_once('-').unwrap_or_default();
            let first = NaiveDate::from_ymd_opt(y.parse().unwrap_or(0), mo.parse().unwrap_or(0), 1);
            first.is_some_and(|f| m.days as i64 == (f + chrono::Months::new(1) - f).num_days())
        })
        .collect();
    let errors = |f: &dyn Fn(&crate::views::VisitorMonth) -> f64, t: &BTreeMap<String, f64>| -> (f64, f64) {
        let e: Vec<f64> = complete
            .iter()
            .map(|m| rel(f(m), t.get(&m.month).copied().unwrap_or(0.0)))
            .collect();
        (
            e.iter().sum::<f64>() / e.len().max(1) as f64,
            e.iter().copied().fold(0.0, f64::max),
        )
    };
    let (n_mean, n_max) = errors(&|m| m.nights.map_or(0.0, |f| f.devices), &nights);
    let (v_mean, v_max) = errors(&|m| m.day_visitors.map_or(0.0, |f| f.devices), &day_visitors);
    let mut overlap = BTreeMap::new();
    for m in complete
        .iter()
        .filter(|m| ["-06", "-07", "-08"].iter().any(|s| m.month.ends_with(s)))
    {
        let Some(t) = origins.get(&m.month) else { continue };
        if m.top_origins.is_empty() {
            continue;
        }
        let mut true_top: Vec<(&String, &f64)> = t.iter().collect();
        true_top.sort_by(|a, b| b.1.total_cmp(a.1));
        let true_top: HashSet<&str> = true_top.iter().take(10).map(|x| x.0.as_str()).collect();
        let hits = m
            .top_origins
            .iter()
            .filter(|o| true_top.contains(o.origin.as_str()))
            .count();
        overlap.insert(m.month.clone(), hits as f64 / 10.0);
    }
    let mean_by = |cruise: bool, f: &dyn Fn(NaiveDate) -> Option<f64>| -> f64 {
        let v: Vec<f64> = view
            .daily
            .iter()
            .filter(|d| cruise_days.contains(&d.day) == cruise)
            .filter_map(|d| f(d.day))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let dp_exc = |d: NaiveDate| {
        view.daily
            .iter()
            .find(|x| x.day == d)
            .and_then(|x| x.segments.iter().find(|s| s.segment == EXCURSIONIST))
            .map(|s| s.figure.devices)
    };
    let true_exc = |d: NaiveDate| excursionists.get(&d).copied();
    let (mut dp, mut tr) = (Vec::new(), Vec::new());
    for (zi, v) in zone_views.iter().enumerate() {
        for d in &v.daily {
            if let Some(t) = zone_day.get(&(zi, d.day)) {
                dp.push(d.total.devices);
                tr.push(*t);
            }
        }
    }
    let mut rel_errors: Vec<f64> = dp.iter().zip(&tr).map(|(a, b)| rel(*a, *b)).collect();
    rel_errors.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        rel_errors
            .get(((rel_errors.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let rho_of = |period: &str, by: crate::vocab::By, bin: crate::privacy::Bin| {
        p.periods.contains_key(period).then_some(())?;
        let index = state.index.read().ok()?;
        index
            .iter()
            .find(|r| {
                r.metric == Metric::Presence
                    && r.period.as_deref() == Some(period)
                    && r.by == Some(by)
                    && r.bin == bin
                    && r.audience == crate::vocab::audience::PUBLIC
            })
            .map(|r| r.rho)
    };
    let ratio_dp = mean_by(true, &dp_exc) / mean_by(false, &dp_exc).max(1e-9);
    let ratio_true = mean_by(true, &true_exc) / mean_by(false, &true_exc).max(1e-9);
    Ok(VisitorFigures {
        months: complete.len(),
        nights_tourists_rel_error_mean: Within::of(n_mean),
        nights_tourists_rel_error_max: Within::of(n_max),
        day_visitors_rel_error_mean: Within::of(v_mean),
        day_visitors_rel_error_max: Within::of(v_max),
        top10_origins_overlap_mean: overlap.values().sum::<f64>() / overlap.len().max(1) as f64,
        top10_origins_overlap: overlap,
        cruise_day_excursionist_ratio_dp: ratio_dp,
        cruise_day_ratio_rel_error: Within::of((ratio_dp - ratio_true).abs() / ratio_true.max(1e-9)),
        cruise_days: view.daily.iter().filter(|d| cruise_days.contains(&d.day)).count(),
        zone_days: dp.len(),
        zone_day_correlation: pearson(&dp, &tr),
        zone_day_rel_error_median: pct(0.5),
        zone_day_rel_error_p95: pct(0.95),
        rho_per_day_daily: rho_of(&day_period, crate::vocab::By::Segment, crate::privacy::Bin::Day).unwrap_or(0.0),
        rho_per_day_origins: rho_of(&day_period, crate::vocab::By::SegmentOrigin, crate::privacy::Bin::Month)
            .unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_and_linear_correlations() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&a, &[8.0, 6.0, 4.0, 2.0]) + 1.0).abs() < 1e-12);
        // Monotone but not linear: rank correlation 1.
        let b = [1.0, 10.0, 100.0, 1000.0];
        assert!((pearson(&ranks(&a), &ranks(&b)) - 1.0).abs() < 1e-12);
    }
}
