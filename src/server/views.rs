//! The planners' and tourism office's views, computed from public releases
//! (post-processing: no budget is spent, and each answer names the releases
//! it used and what they cost).
//!
//! * seasonality: a zone's daily series, weekday and month profiles, days
//!   that stand out from their seasonal baseline;
//! * event: a place's hourly footfall on a day against the same weekday of
//!   the weeks before;
//! * flows: origin–destination between zones over a period and hour band;
//! * forecast: a zone's next days with prediction intervals and a backtest;
//! * visitors: people present by segment per day, overnight stays, day
//!   visitors and origins per month, year over year;
//! * change: people per day against the median of the same weekday in a
//!   baseline window.

use crate::vocab::audience;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, Duration, NaiveDate, Timelike};
use h3o::CellIndex;
use serde::Deserialize;

use super::data::{Key, ReleaseData, ReleaseSummary};
use super::{AppState, Dataset, Problem, blocking, no_cache};
use crate::privacy::Bin;
use crate::release::Unit;
use crate::store::Metric;
use crate::views::{self, Hours, Point, Z95};

/// The public releases of a kind, oldest first, within `[from, to]`.
fn releases(
    state: &AppState,
    dataset: &str,
    metric: Metric,
    unit: Unit,
    bin: Bin,
    range: (NaiveDate, NaiveDate),
) -> Result<Vec<ReleaseSummary>, Problem> {
    let index = state.index.read().map_err(|e| Problem::internal("release index", e))?;
    // One release per window: when a changed policy or grid made a second
    // release of the same days, the newest is used, so no day counts twice.
    type Window = (NaiveDate, NaiveDate, Option<u8>, Option<String>, Option<&'static str>);
    let mut by_window: BTreeMap<Window, ReleaseSummary> = BTreeMap::new();
    for r in index
        .iter()
        .filter(|r| r.dataset == dataset && r.audience == audience::PUBLIC)
        .filter(|r| r.metric == metric && r.unit == unit && r.bin == bin)
        .filter(|r| r.from >= range.0 && r.to <= range.1)
    {
        // Presence releases of one window differ by period and split.
        let key = (
            r.from,
            r.to,
            r.res,
            r.period.clone(),
            r.by.map(crate::vocab::By::as_str),
        );
        if by_window.get(&key).is_none_or(|old| old.created_at < r.created_at) {
            by_window.insert(key, r.clone());
        }
    }
    Ok(by_window.into_values().collect())
}

/// Every public release of a kind of this dataset, oldest first.
fn published(
    state: &AppState,
    ds: &Dataset,
    metric: Metric,
    unit: Unit,
    bin: Bin,
) -> Result<Vec<ReleaseSummary>, Problem> {
    releases(
        state,
        ds.releaser.policy.dataset(),
        metric,
        unit,
        bin,
        (NaiveDate::MIN, NaiveDate::MAX),
    )
}

fn load_all(state: &AppState, list: &[ReleaseSummary]) -> Result<Vec<Arc<ReleaseData>>, Problem> {
    list.iter()
        .map(|r| {
            let dir = state
                .config
                .data_dir
                .join("releases")
                .join(&r.dataset)
                .join(&r.release_id);
            state.cache.get_or_load(&r.release_id, &dir)
        })
        .collect()
}

/// What a view was computed from: ids, ρ per day, and the statement that
/// computing it cost nothing more.
fn provenance(list: &[ReleaseSummary]) -> views::Source {
    let used: Vec<(String, f64, f64)> = list.iter().map(|r| (r.release_id.clone(), r.rho, r.epsilon)).collect();
    views::Source::of(&used)
}

fn missing(what: &str, hint: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no releases for this view",
        format!("no public {what} releases cover the request; {hint}"),
    )
}

/// Whether the publication plan makes public releases of this kind.
fn plan_makes(ds: &Dataset, metric: Metric, unit: Unit, bins: &[Bin]) -> bool {
    ds.releaser
        .policy
        .spec
        .publication
        .iter()
        .any(|p| p.metric == metric && p.unit == unit && bins.contains(&p.bin))
}

/// Does the plan publish daily presence per zone of `period`, split `by`?
fn plan_makes_presence(ds: &Dataset, period: &str, by: crate::vocab::By) -> bool {
    ds.releaser.policy.spec.publication.iter().any(|p| {
        p.metric == Metric::Presence
            && p.unit == Unit::Zone
            && p.bin == Bin::Day
            && p.period.as_deref() == Some(period)
            && p.by.unwrap_or_default() == by
    })
}

/// Why a view found no release: the plan makes none of this kind (name the
/// item to add), or makes them but not (yet) for these days.
fn missing_for(ds: &Dataset, what: &str, plan_makes_them: bool, plan_item: &str) -> Problem {
    if plan_makes_them {
        let delay = ds
            .releaser
            .policy
            .spec
            .audiences
            .get(audience::PUBLIC)
            .map_or(0, |a| a.min_delay_days);
        missing(
            what,
            &format!(
                "the plan publishes them {delay} day(s) after each day with data: ask for earlier days, or run the plan (hexflow publish) after the next delivery"
            ),
        )
    } else {
        missing(
            what,
            &format!("the publication plan makes none: add {plan_item} to the policy's [[publication]] items"),
        )
    }
}

/// The grid's zones, or why a zone view cannot be made.
fn need_zones(ds: &Dataset) -> Result<(), Problem> {
    if ds.releaser.grid.zones.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no zones",
            format!(
                "grid {} defines no zones (no zones.geojson), and this view works on zones: add zones to the grid (hexflow init --zones) and zone items to the plan",
                ds.releaser.grid.name()
            ),
        ));
    }
    Ok(())
}

fn zone_index(data: &ReleaseData, zone: &str) -> Result<u32, Problem> {
    data.zone_ids
        .iter()
        .position(|z| z == zone)
        .map(|i| i as u32)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown zone",
                format!("zone {zone:?} is not one of {}", data.zone_ids.join(", ")),
            )
        })
}

/// The daily series of one zone from daily zone footfall releases.
fn zone_series(state: &AppState, ds: &Dataset, zone: &str) -> Result<(Vec<Point>, Vec<ReleaseSummary>), Problem> {
    need_zones(ds)?;
    let list = published(state, ds, Metric::Footfall, Unit::Zone, Bin::Day)?;
    if list.is_empty() {
        return Err(missing_for(
            ds,
            "daily zone footfall",
            plan_makes(ds, Metric::Footfall, Unit::Zone, &[Bin::Day]),
            "`metric = \"footfall\"`, `unit = \"zone\"`, `bin = \"1d\"`",
        ));
    }
    let data = load_all(state, &list)?;
    let mut points = Vec::new();
    for d in &data {
        let z = zone_index(d, zone)? as usize;
        for b in 0..d.bins.len() {
            let i = d.bin_range(b).start + z;
            let day = d.bins[b].with_timezone(&ds.releaser.grid.tz).date_naive();
            points.push(Point {
                day,
                value: d.estimate[i],
                noise_sd: d.noise_sd[i],
            });
        }
    }
    points.sort_by_key(|p| p.day);
    Ok((points, list))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneQuery {
    dataset: Option<String>,
    zone: String,
    /// Weeks on each side for the seasonal baseline (default 4).
    weeks: Option<i64>,
    /// Forecast horizon (default 14 days, at most 60).
    days: Option<usize>,
    /// `json` (default) or `png` (a chart drawn with plotters).
    format: Option<String>,
}

pub async fn seasonality(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ZoneQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    let weeks = weeks(q.weeks)?;
    let q_format = format(q.format.as_deref())?;
    let st = state.clone();
    let body = blocking(move || {
        let (points, list) = zone_series(&st, &ds, &q.zone)?;
        Ok(views::seasonality(
            &q.zone,
            zone_day_unit(&ds),
            &points,
            weeks,
            &holidays(&ds),
            provenance(&list),
        ))
    })
    .await?;
    respond(&state, q_format, body, |v| chart_png(Chart::Seasonality(v))).await
}

pub async fn forecast(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ZoneQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    let horizon = q.days.unwrap_or(14);
    if !(1..=60).contains(&horizon) {
        return Err(Problem::bad_request("days must be in 1..=60"));
    }
    let q_format = format(q.format.as_deref())?;
    let st = state.clone();
    let body = blocking(move || {
        let (points, list) = zone_series(&st, &ds, &q.zone)?;
        views::forecast_view(
            &q.zone,
            zone_day_unit(&ds),
            &points,
            &holidays(&ds),
            horizon,
            provenance(&list),
        )
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too little history",
                "a forecast needs at least 21 published days",
            )
        })
    })
    .await?;
    respond(&state, q_format, body, |v| chart_png(Chart::Forecast(v))).await
}

// ----- People and visitors -----

fn period_label(p: &crate::policy::PresenceSpec, name: &str) -> String {
    match p.periods.get(name) {
        Some(b) => format!("{name} {}–{}", b.from, b.to),
        None => name.to_string(),
    }
}

/// The policy's presence section, or why the view cannot be made.
fn need_presence(ds: &Dataset) -> Result<&crate::policy::PresenceSpec, Problem> {
    need_zones(ds)?;
    ds.releaser.policy.spec.presence.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "no presence",
            format!(
                "dataset {} has no [presence] section in its policy: no people, visitors or origins are published",
                ds.releaser.policy.dataset()
            ),
        )
    })
}

/// Public presence zone releases of one period, split and bin.
fn presence_releases(
    state: &AppState,
    ds: &Dataset,
    period: &str,
    by: crate::vocab::By,
    bin: Bin,
) -> Result<Vec<ReleaseSummary>, Problem> {
    Ok(published(state, ds, Metric::Presence, Unit::Zone, bin)?
        .into_iter()
        .filter(|r| r.period.as_deref() == Some(period) && r.by == Some(by))
        .collect())
}

/// Every value of `list` as presence points of the zone asked, or summed
/// over every zone (`zone = None`). A sum over zones has the sd of its
/// noise: independent zone draws add variances; under cell placement one
/// cell's noise reaches several zones, so the sd is σ·√Σ_c(Σ_z W_cz)².
/// Its people figure needs one factor for the segment in every zone.
fn presence_points(
    state: &AppState,
    ds: &Dataset,
    list: &[ReleaseSummary],
    zone: Option<&str>,
) -> Result<Vec<views::PresencePoint>, Problem> {
    let tz = ds.releaser.grid.tz;
    let mut out = Vec::new();
    for d in load_all(state, list)? {
        let m = &d.manifest;
        let Some(pm) = &m.presence else { continue };
        let zones: Vec<usize> = match zone {
            Some(z) => vec![zone_index(&d, z)? as usize],
            None => (0..d.places).collect(),
        };
        let factor = |segment: &str, z: usize| pm.factor(segment, d.zone_ids.get(z).map(String::as_str));
        let cell_sd = if zones.len() > 1 && m.placement == crate::privacy::sensitivity::Placement::Cell {
            let w = ds
                .releaser
                .weights_for(Unit::Zone, 0)
                .map_err(|e| Problem::internal("zone weights", e))?;
            Some(m.noise_sd * w.kept_sum_norm(|_| true))
        } else {
            None
        };
        for b in 0..d.bins.len() {
            let day = d.bins[b].with_timezone(&tz).date_naive();
            let start = d.bin_range(b).start;
            for (g, (segment, origin)) in d.groups.iter().enumerate() {
                let idx = |z: usize| start + g * d.places + z;
                let value: f64 = zones.iter().map(|z| d.estimate[idx(*z)]).sum();
                let noise_sd =
                    cell_sd.unwrap_or_else(|| zones.iter().map(|z| d.noise_sd[idx(*z)].powi(2)).sum::<f64>().sqrt());
                let factor = crate::policy::common_factor(zones.iter().map(|z| factor(segment, *z)));
                out.push(views::PresencePoint {
                    day,
                    segment: segment.clone(),
                    origin: origin.clone(),
                    value,
                    noise_sd,
                    factor,
                });
            }
        }
    }
    Ok(out)
}

const PRESENCE_ITEM: &str =
    "`metric = \"presence\"`, `unit = \"zone\"`, `bin = \"1d\"`, `period = \"<a period>\"`, `by = \"segment\"`";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorsQuery {
    dataset: Option<String>,
    /// A zone id; all zones summed when left out.
    zone: Option<String>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    /// Origins listed per month (default 10).
    top: Option<usize>,
}

pub async fn visitors(
    State(state): State<Arc<AppState>>,
    q: Result<Query<VisitorsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    let top = q.top.unwrap_or(10);
    if !(1..=100).contains(&top) {
        return Err(Problem::bad_request("top must be in 1..=100"));
    }
    let range = (q.from.unwrap_or(NaiveDate::MIN), q.to.unwrap_or(NaiveDate::MAX));
    if range.0 > range.1 {
        return Err(Problem::bad_request("from is after to"));
    }
    let st = state.clone();
    let body = blocking(move || {
        use crate::vocab::By;
        let p = need_presence(&ds)?;
        let (day, night) = p.day_and_night();
        let day_list = presence_releases(&st, &ds, &day, By::Segment, Bin::Day)?;
        if day_list.is_empty() {
            return Err(missing_for(
                &ds,
                "daily presence",
                plan_makes_presence(&ds, &day, By::Segment),
                PRESENCE_ITEM,
            ));
        }
        let night_list = match &night {
            Some(n) => presence_releases(&st, &ds, n, By::Segment, Bin::Day)?,
            None => Vec::new(),
        };
        let origin_list = presence_releases(&st, &ds, &day, By::SegmentOrigin, Bin::Month)?;
        let zone = q.zone.as_deref();
        let within = |v: Vec<views::PresencePoint>| -> Vec<views::PresencePoint> {
            v.into_iter().filter(|p| p.day >= range.0 && p.day <= range.1).collect()
        };
        let day_points = within(presence_points(&st, &ds, &day_list, zone)?);
        let night_points = within(presence_points(&st, &ds, &night_list, zone)?);
        let origin_points = within(presence_points(&st, &ds, &origin_list, zone)?);
        // Three kinds of release, each charged on every day: the view rests
        // on their ρ added up.
        let rho: f64 = [&day_list, &night_list, &origin_list]
            .iter()
            .filter_map(|l| l.first().map(|r| r.rho))
            .sum();
        let mut used = day_list;
        used.extend(night_list);
        used.extend(origin_list);
        let mut source = provenance(&used);
        source.rho_per_day_of_source = rho;
        source.epsilon_per_day_of_source =
            crate::privacy::mechanism::zcdp_epsilon(rho, ds.releaser.policy.spec.privacy.delta).ok();
        Ok(views::visitors(
            zone.unwrap_or(crate::vocab::ALL_GROUPS),
            presence_unit(&ds),
            (period_label(p, &day), night.as_deref().map(|n| period_label(p, n))),
            &views::VisitorSeries {
                segments: &p.segments,
                day: &day_points,
                night: &night_points,
                origins: &origin_points,
            },
            top,
            source,
        ))
    })
    .await?;
    Ok((no_cache(), Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuery {
    dataset: Option<String>,
    zone: Option<String>,
    baseline_from: NaiveDate,
    baseline_to: NaiveDate,
    /// Days compared (default: every published day after the baseline).
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    /// One segment, or `all` (default) for everyone present.
    segment: Option<String>,
    /// A period of the policy (default: the day period).
    period: Option<String>,
}

pub async fn change(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ChangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    if q.baseline_from > q.baseline_to || (q.baseline_to - q.baseline_from).num_days() > 366 {
        return Err(Problem::bad_request(
            "baseline_from must be on or before baseline_to, at most a year apart",
        ));
    }
    let range = (
        q.from.unwrap_or(q.baseline_to + Duration::days(1)),
        q.to.unwrap_or(NaiveDate::MAX),
    );
    let st = state.clone();
    let body = blocking(move || {
        let p = need_presence(&ds)?;
        let period = q.period.clone().unwrap_or_else(|| p.day_and_night().0);
        if !p.periods.contains_key(&period) {
            return Err(Problem::bad_request(format!(
                "period {period:?} is not one of the policy's: {}",
                p.periods.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let segment = q.segment.clone().unwrap_or_else(|| crate::vocab::ALL_GROUPS.into());
        if segment != crate::vocab::ALL_GROUPS && !p.segments.contains(&segment) {
            return Err(Problem::bad_request(format!(
                "segment {segment:?} is not one of: all, {}",
                p.segments.join(", ")
            )));
        }
        let list = presence_releases(&st, &ds, &period, crate::vocab::By::Segment, Bin::Day)?;
        if list.is_empty() {
            return Err(missing_for(
                &ds,
                "daily presence",
                plan_makes_presence(&ds, &period, crate::vocab::By::Segment),
                PRESENCE_ITEM,
            ));
        }
        let mut by_day: BTreeMap<NaiveDate, (f64, f64)> = BTreeMap::new();
        for pt in presence_points(&st, &ds, &list, q.zone.as_deref())? {
            if segment == crate::vocab::ALL_GROUPS || pt.segment == segment {
                // Segments are separate draws: variances add.
                let e = by_day.entry(pt.day).or_default();
                e.0 += pt.value;
                e.1 += pt.noise_sd * pt.noise_sd;
            }
        }
        let points: Vec<Point> = by_day
            .into_iter()
            .map(|(day, (value, var))| Point {
                day,
                value,
                noise_sd: var.sqrt(),
            })
            .collect();
        if !points
            .iter()
            .any(|x| x.day >= q.baseline_from && x.day <= q.baseline_to)
        {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no baseline",
                format!(
                    "no published presence day lies in the baseline window {}..{}",
                    q.baseline_from, q.baseline_to
                ),
            ));
        }
        Ok(views::change(
            q.zone.as_deref().unwrap_or(crate::vocab::ALL_GROUPS),
            format!("{}, {}", presence_unit(&ds), period_label(p, &period)),
            &segment,
            &points,
            (q.baseline_from, q.baseline_to),
            range,
            provenance(&list),
        ))
    })
    .await?;
    Ok((no_cache(), Json(body)).into_response())
}

/// The unit of daily presence per zone.
fn presence_unit(ds: &Dataset) -> String {
    crate::release::value_unit(
        &ds.releaser.policy.spec.unit_name,
        ds.releaser.grid.spec.bin_len_s,
        Metric::Presence,
        Unit::Zone,
        Bin::Day,
    )
}

/// The unit of a daily zone series: a sum of the day's operator bins.
fn zone_day_unit(ds: &Dataset) -> String {
    crate::release::value_unit(
        &ds.releaser.policy.spec.unit_name,
        ds.releaser.grid.spec.bin_len_s,
        Metric::Footfall,
        Unit::Zone,
        Bin::Day,
    )
}

/// The grid's public holidays (`holidays.csv`).
fn holidays(ds: &Dataset) -> HashSet<NaiveDate> {
    ds.releaser.grid.holidays.keys().copied().collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    dataset: Option<String>,
    date: NaiveDate,
    /// Comma-separated hex ids of the hourly releases' resolution.
    hex: Option<String>,
    /// Or a zone: the hexes whose centre lies in it.
    zone: Option<String>,
    /// Same weekday in the N weeks before (default 4, at most 12).
    weeks: Option<i64>,
    /// Resolution of the hourly releases (default: that of the hexes
    /// given, else the finest published hourly).
    res: Option<u8>,
    /// `json` (default) or `png`.
    format: Option<String>,
}

pub async fn event(
    State(state): State<Arc<AppState>>,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    if q.res.is_some_and(|r| r > 15) {
        return Err(Problem::bad_request(
            "res must be an H3 resolution, a whole number from 0 to 15",
        ));
    }
    let weeks = weeks(q.weeks)?;
    let q_format = format(q.format.as_deref())?;
    let st = state.clone();
    let body = blocking(move || event_view(&st, &ds, &q, weeks)).await?;
    respond(&state, q_format, body, |v| chart_png(Chart::Event(v))).await
}

/// `?weeks=` of a baseline: 4 by default, 1 to 12.
fn weeks(w: Option<i64>) -> Result<i64, Problem> {
    let w = w.unwrap_or(4);
    if (1..=12).contains(&w) {
        Ok(w)
    } else {
        Err(Problem::bad_request("weeks must be in 1..=12"))
    }
}

fn format(f: Option<&str>) -> Result<bool, Problem> {
    match f {
        None | Some("json") => Ok(false),
        Some("png") => Ok(true),
        Some(other) => Err(Problem::bad_request(format!("format={other:?}: json or png"))),
    }
}

/// A view to draw.
#[derive(Clone, Copy)]
enum Chart<'a> {
    Seasonality(&'a views::SeasonalityView),
    Event(&'a views::EventView),
    Forecast(&'a views::ForecastView),
}

/// JSON, or the view drawn as a chart with its privacy statement.
async fn respond<T: serde::Serialize + Send + 'static>(
    state: &AppState,
    png: bool,
    body: T,
    draw: fn(&T) -> Result<Vec<u8>, Problem>,
) -> Result<Response, Problem> {
    if !png {
        return Ok((no_cache(), Json(body)).into_response());
    }
    let bytes = super::rendering(state, move || draw(&body)).await?;
    Ok((
        no_cache(),
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("image/png"),
        )],
        bytes,
    )
        .into_response())
}

fn chart_png(chart: Chart) -> Result<Vec<u8>, Problem> {
    use crate::render::{ChartText, Line, OKABE_ITO, chart_png};
    let day_x = |d: NaiveDate| f64::from(d.num_days_from_ce());
    let day_label = |x: f64| {
        NaiveDate::from_num_days_from_ce_opt(x.round() as i32)
            .map(|d| d.format("%d %b %y").to_string())
            .unwrap_or_default()
    };
    let (source, unit) = match chart {
        Chart::Seasonality(v) => (&v.source, &v.unit),
        Chart::Event(v) => (&v.source, &v.unit),
        Chart::Forecast(v) => (&v.source, &v.unit),
    };
    let cost = format!(
        "From {} public releases at ρ = {} per day (ε = {:.2}); this view cost nothing more. Bands: 95 % intervals of the DP noise.",
        source.releases,
        crate::render::human_number(source.rho_per_day_of_source, 4),
        source.epsilon_per_day_of_source.unwrap_or(0.0)
    );
    let days = |d: &[views::DayValue]| d.iter().map(|p| (day_x(p.day), p.value, p.ci95)).collect();
    type Labeller = Box<dyn Fn(f64) -> String>;
    let (title, lines, label): (String, Vec<Line>, Labeller) = match chart {
        Chart::Seasonality(v) => (
            format!("Zone {}: daily footfall", v.zone),
            vec![Line {
                label: v.unit.clone(),
                colour: OKABE_ITO[0],
                points: days(&v.daily),
            }],
            Box::new(day_label),
        ),
        Chart::Forecast(v) => (
            format!("Zone {}: the next days", v.zone),
            vec![
                Line {
                    label: "published".into(),
                    colour: OKABE_ITO[0],
                    points: days(&v.recent),
                },
                Line {
                    label: "forecast (95 % prediction interval)".into(),
                    colour: OKABE_ITO[1],
                    points: v
                        .forecast
                        .days
                        .iter()
                        .map(|p| (day_x(p.day), p.value, (p.hi - p.lo) / 2.0))
                        .collect(),
                },
            ],
            Box::new(day_label),
        ),
        Chart::Event(v) => (
            format!(
                "{} ({}) against the same weekday of {} weeks before",
                v.date, v.weekday, v.baseline_days
            ),
            vec![
                Line {
                    label: "that day".into(),
                    colour: OKABE_ITO[1],
                    points: v.hours.iter().map(|h| (f64::from(h.hour), h.value, h.ci95)).collect(),
                },
                Line {
                    label: "baseline".into(),
                    colour: OKABE_ITO[0],
                    points: v
                        .hours
                        .iter()
                        .map(|h| (f64::from(h.hour), h.baseline, h.baseline_ci95))
                        .collect(),
                },
            ],
            Box::new(|x: f64| format!("{:02}h", x.round() as i64)),
        ),
    };
    chart_png(
        &ChartText {
            title: &title,
            y_label: unit,
            caption: &cost,
        },
        &lines,
        &*label,
        (1000, 520),
    )
    .map_err(|e| Problem::internal("chart", e))
}

/// What the event view sums: hexes of an hourly hex release, or one zone
/// of an hourly zone release.
enum Area {
    Hexes(u8, HashSet<CellIndex>),
    Zone(String),
}

/// Hourly sums over `area` for one day, and the release they come from.
fn day_hours(
    state: &AppState,
    ds: &Dataset,
    day: NaiveDate,
    area: &Area,
) -> Result<Option<(Hours, ReleaseSummary)>, Problem> {
    let unit = match area {
        Area::Hexes(..) => Unit::Hex,
        Area::Zone(_) => Unit::Zone,
    };
    let list = releases(
        state,
        ds.releaser.policy.dataset(),
        Metric::Footfall,
        unit,
        Bin::Hour,
        (day, day),
    )?;
    let Some(r) = list.into_iter().find(|r| match area {
        Area::Hexes(res, _) => r.res == Some(*res),
        Area::Zone(_) => true,
    }) else {
        return Ok(None);
    };
    let data = load_all(state, std::slice::from_ref(&r))?.remove(0);
    let hour_of = |b: usize| data.bins[b].with_timezone(&ds.releaser.grid.tz).hour();
    let hours = match area {
        Area::Hexes(_, hexes) => {
            let set: Vec<(CellIndex, usize)> = data
                .keys
                .iter()
                .enumerate()
                .filter_map(|(i, k)| match k {
                    Key::Hex(h) if hexes.contains(h) => Some((*h, i)),
                    _ => None,
                })
                .collect();
            let ci = super::releases::sum_ci95(ds, &data, &set)?;
            (0..data.bins.len())
                .map(|b| {
                    let r = data.bin_range(b);
                    let v: f64 = set.iter().map(|(_, i)| data.estimate[r.start + i]).sum();
                    (hour_of(b), v, ci[b])
                })
                .collect()
        }
        Area::Zone(id) => {
            let z = zone_index(&data, id)? as usize;
            (0..data.bins.len())
                .map(|b| {
                    let i = data.bin_range(b).start + z;
                    (hour_of(b), data.estimate[i], Z95 * data.noise_sd[i])
                })
                .collect()
        }
    };
    Ok(Some((hours, r)))
}

/// The finest resolution of the public hourly hex footfall, if any.
fn published_hourly_res(state: &AppState, ds: &Dataset) -> Result<Option<u8>, Problem> {
    let list = published(state, ds, Metric::Footfall, Unit::Hex, Bin::Hour)?;
    Ok(list.iter().filter_map(|r| r.res).max())
}

fn event_view(state: &AppState, ds: &Dataset, q: &EventQuery, weeks: i64) -> Result<views::EventView, Problem> {
    let grid = &ds.releaser.grid;
    let parse_hexes = |list: &str| -> Result<HashSet<CellIndex>, Problem> {
        list.split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| Problem::bad_request(format!("{s:?} is not an H3 cell id")))
            })
            .collect()
    };
    let no_hourly = || {
        missing_for(
            ds,
            "hourly footfall",
            plan_makes(ds, Metric::Footfall, Unit::Hex, &[Bin::Hour]),
            "`metric = \"footfall\"`, `bin = \"1h\"` with a `res` (or `unit = \"zone\"`)",
        )
    };
    // The resolution: asked, else that of the hexes given, else the finest
    // the plan publishes hourly.
    let res_for = |hexes: Option<&HashSet<CellIndex>>| -> Result<u8, Problem> {
        if let Some(r) = q.res {
            return Ok(r);
        }
        if let Some(h) = hexes.and_then(|h| h.iter().next()) {
            return Ok(u8::from(h.resolution()));
        }
        published_hourly_res(state, ds)?.ok_or_else(no_hourly)
    };
    let area = match (&q.hex, &q.zone) {
        (Some(list), None) => {
            let hexes = parse_hexes(list)?;
            let res = res_for(Some(&hexes))?;
            if hexes.iter().any(|h| u8::from(h.resolution()) != res) {
                return Err(Problem::bad_request(format!(
                    "every hex must be of resolution {res}, that of the hourly releases"
                )));
            }
            Area::Hexes(res, hexes)
        }
        (None, Some(z)) => {
            use geo::Contains;
            let zone = grid.zones.iter().find(|x| &x.id == z).ok_or_else(|| {
                if grid.zones.is_empty() {
                    Problem::new(
                        StatusCode::NOT_FOUND,
                        "no zones",
                        format!(
                            "grid {} defines no zones (no zones.geojson): give hex= instead",
                            grid.name()
                        ),
                    )
                } else {
                    Problem::new(
                        StatusCode::NOT_FOUND,
                        "unknown zone",
                        format!(
                            "no zone {z:?} in this grid (zones: {})",
                            grid.zones.iter().map(|x| x.id.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )
                }
            })?;
            // Hourly zone releases answer exactly; else the hexes whose
            // centre lies in the zone.
            let by_zone = published(state, ds, Metric::Footfall, Unit::Zone, Bin::Hour)?;
            if q.res.is_none() && !by_zone.is_empty() {
                Area::Zone(z.clone())
            } else {
                let res = res_for(None)?;
                grid.resolution(res).map_err(|e| {
                    Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "resolution not offered",
                        e.to_string(),
                    )
                })?;
                let w = ds.releaser.weights(res).map_err(|e| Problem::internal("weights", e))?;
                let hexes: HashSet<CellIndex> = w
                    .hexes
                    .iter()
                    .filter(|h| {
                        let ll = h3o::LatLng::from(**h);
                        zone.area.contains(&geo::Point::new(ll.lng(), ll.lat()))
                    })
                    .copied()
                    .collect();
                Area::Hexes(res, hexes)
            }
        }
        _ => return Err(Problem::bad_request("give exactly one of hex= and zone=")),
    };
    if let Area::Hexes(res, hexes) = &area {
        grid.resolution(*res).map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "resolution not offered",
                e.to_string(),
            )
        })?;
        if hexes.is_empty() || hexes.len() > 3000 {
            return Err(Problem::bad_request("the area must hold 1 to 3000 hexes"));
        }
    }
    let (day, used) = day_hours(state, ds, q.date, &area)?.ok_or_else(no_hourly)?;
    let mut base: Vec<Hours> = Vec::new();
    let mut sources = vec![used];
    for k in 1..=weeks {
        if let Some((h, r)) = day_hours(state, ds, q.date - Duration::weeks(k), &area)? {
            base.push(h);
            sources.push(r);
        }
    }
    if base.is_empty() {
        return Err(missing("hourly footfall", "no earlier same weekday is published"));
    }
    let (hexes, res) = match &area {
        Area::Hexes(r, h) => (h.len(), Some(*r)),
        Area::Zone(_) => (0, None),
    };
    // What an hourly release counts (devices, or device-15-minute intervals
    // for a grid of 900-second bins), summed over the area.
    let hourly = crate::release::value_unit(
        &ds.releaser.policy.spec.unit_name,
        ds.releaser.grid.spec.bin_len_s,
        Metric::Footfall,
        crate::release::Unit::Hex,
        crate::privacy::Bin::Hour,
    );
    let unit = hourly.replacen(" per hex per ", " summed over the area per ", 1);
    Ok(views::event(
        q.date,
        (hexes, res),
        unit,
        day,
        base,
        provenance(&sources),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsQuery {
    dataset: Option<String>,
    /// First and last local day (default: the last 28 days with flows).
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    /// Local hours `a-b` (start included, end excluded), e.g. `7-9`.
    hours: Option<String>,
    /// Monday to Friday only.
    #[serde(default)]
    weekdays: bool,
    /// Largest flows listed (default 20).
    top: Option<usize>,
    /// `json` (default) or `png` (a map of the listed flows).
    format: Option<String>,
}

pub async fn flows(
    State(state): State<Arc<AppState>>,
    q: Result<Query<FlowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    need_zones(&ds)?;
    if let (Some(f), Some(t)) = (q.from, q.to)
        && (f > t || (t - f).num_days() > 366)
    {
        return Err(Problem::bad_request("from..to must be a window of at most 367 days"));
    }
    let hours = match &q.hours {
        None => None,
        Some(s) => Some(
            s.split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
                .filter(|(a, b)| a < b && *b <= 24)
                .ok_or_else(|| Problem::bad_request(format!("hours={s:?}: expected a-b with 0 ≤ a < b ≤ 24")))?,
        ),
    };
    let top = q.top.unwrap_or(20);
    if !(1..=500).contains(&top) {
        return Err(Problem::bad_request("top must be in 1..=500"));
    }
    let png = format(q.format.as_deref())?;
    let st = state.clone();
    let ds2 = ds.clone();
    let body = blocking(move || {
        // Hourly flows when the plan makes them, else daily ones.
        let hourly = published(&st, &ds, Metric::Flows, Unit::Zone, Bin::Hour)?;
        let (bin, available) = if hourly.is_empty() {
            (Bin::Day, published(&st, &ds, Metric::Flows, Unit::Zone, Bin::Day)?)
        } else {
            (Bin::Hour, hourly)
        };
        let Some(last) = available.iter().map(|r| r.to).max() else {
            return Err(missing_for(
                &ds,
                "zone flows",
                plan_makes(&ds, Metric::Flows, Unit::Zone, &[Bin::Hour, Bin::Day]),
                "`metric = \"flows\"`, `unit = \"zone\"`, `bin = \"1h\"` (or `\"1d\"`)",
            ));
        };
        let to = q.to.unwrap_or(last);
        let from = q.from.unwrap_or(to - Duration::days(27));
        if from > to || (to - from).num_days() > 366 {
            return Err(Problem::bad_request("from..to must be a window of at most 367 days"));
        }
        if bin == Bin::Day && hours.is_some() {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hours need hourly flows",
                "the publication plan makes daily zone flows only: leave out hours=, or add hourly flows (`metric = \"flows\"`, `unit = \"zone\"`, `bin = \"1h\"`) to the plan",
            ));
        }
        let (h0, h1) = hours.unwrap_or((0, 24));
        let list: Vec<ReleaseSummary> = available
            .into_iter()
            .filter(|r| r.from >= from && r.to <= to)
            .collect();
        if list.is_empty() {
            return Err(missing_for(
                &ds,
                "zone flows",
                plan_makes(&ds, Metric::Flows, Unit::Zone, &[bin]),
                "`metric = \"flows\"`, `unit = \"zone\"`",
            ));
        }
        let data = load_all(&st, &list)?;
        let tz = ds.releaser.grid.tz;
        let zone_ids = data[0].zone_ids.clone();
        let z = zone_ids.len();
        let mut sum = vec![0.0f64; z * z];
        let mut var = vec![0.0f64; z * z];
        let mut bins_used = 0usize;
        for d in &data {
            // Zone indices of this release in the shared list (the zones
            // file may have changed between releases).
            let map: Vec<Option<usize>> = d
                .zone_ids
                .iter()
                .map(|id| zone_ids.iter().position(|x| x == id))
                .collect();
            for b in 0..d.bins.len() {
                let t = d.bins[b].with_timezone(&tz);
                let wd = t.weekday().num_days_from_monday();
                if t.hour() < h0 || t.hour() >= h1 || (q.weekdays && wd >= 5) {
                    continue;
                }
                bins_used += 1;
                let r = d.bin_range(b);
                for (k, key) in d.keys.iter().enumerate() {
                    if let Key::ZonePair(o, dd) = key
                        && let (Some(Some(o)), Some(Some(dd))) = (map.get(*o as usize), map.get(*dd as usize))
                    {
                        let i = o * z + dd;
                        sum[i] += d.estimate[r.start + k];
                        var[i] += d.noise_sd[r.start + k].powi(2);
                    }
                }
            }
        }
        let names: HashMap<&str, &str> = ds
            .releaser
            .grid
            .zones
            .iter()
            .map(|x| (x.id.as_str(), x.name.as_str()))
            .collect();
        let zones = zone_ids
            .iter()
            .map(|id| (id.clone(), names.get(id.as_str()).copied().unwrap_or(id).to_string()))
            .collect();
        let sums = views::FlowSums {
            zones,
            sum,
            var,
            bins_used,
        };
        Ok(views::flows(
            (from, to),
            ([h0, h1], q.weekdays, bin),
            &sums,
            top,
            provenance(&list),
        ))
    })
    .await?;
    if !png {
        return Ok((no_cache(), Json(body)).into_response());
    }
    let bytes = super::rendering(&state, move || flow_map(&ds2, &body)).await?;
    Ok((
        no_cache(),
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("image/png"),
        )],
        bytes,
    )
        .into_response())
}

fn flow_map(ds: &Dataset, v: &views::FlowsView) -> Result<Vec<u8>, Problem> {
    let grid = &ds.releaser.grid;
    let places = &ds.places;
    let centre = |id: &str| places.zone(id).1.map(|c| (c[0], c[1]));
    let lines: Vec<crate::render::FlowLine> = v
        .largest
        .iter()
        .filter_map(|f| {
            Some(crate::render::FlowLine {
                from: centre(&f.origin)?,
                to: centre(&f.dest)?,
                trips: f.trips,
            })
        })
        .collect();
    let title = format!(
        "Largest flows between zones, {} to {}, {}–{} h{}",
        v.from,
        v.to,
        v.hours[0],
        v.hours[1],
        if v.weekdays_only { ", weekdays" } else { "" }
    );
    let caption = vec![
        format!(
            "Line width and colour ∝ trips (largest {}); each arc bends to the right of travel (A→B and B→A are two arcs) and a dot marks the destination; rings are trips within a zone.",
            lines.len()
        ),
        format!(
            "From {} public releases at ρ = {} per day (ε = {:.2}); this view cost nothing more. Error bars: see the JSON.",
            v.source.releases,
            crate::render::human_number(v.source.rho_per_day_of_source, 4),
            v.source.epsilon_per_day_of_source.unwrap_or(0.0)
        ),
    ];
    crate::render::flow_map_png(grid, &lines, &title, &caption).map_err(|e| Problem::internal("flow map", e))
}
