//! Row-level validation of operator deliveries.
//!
//! Every row is checked against the grid and the policy; every problem
//! becomes a [`Rejection`] naming the line, the column and the reason, so
//! the operator can fix the file. Reasons never quote a count: a rejected
//! count's raw text only goes to the quarantine file, which stays inside
//! the data dir with the count store.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use polars::prelude::*;

use crate::grid::Grid;
use crate::policy::IngestLimits;
use crate::store::Metric;

/// One rejected value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rejection {
    /// CSV line (the header is line 1) or 1-based Parquet row.
    pub line: usize,
    pub column: String,
    pub reason: String,
    /// The raw text of the value (quarantine file only).
    #[serde(skip)]
    pub value: String,
}

/// Most rejections written out in full to a quarantine file; the rest are
/// counted by column and reason, so a wholly wrong file of millions of
/// rows leaves a small quarantine file.
pub const MAX_LISTED: usize = 10_000;

/// The rejections of a file: the first [`MAX_LISTED`] in full, the rest
/// counted, and how many rows had at least one.
#[derive(Debug, Default)]
pub struct Rejections {
    /// In line order.
    pub listed: Vec<Rejection>,
    /// (column, reason) → rejections beyond the listed ones.
    pub unlisted: std::collections::BTreeMap<(String, String), u64>,
    /// Rows with at least one rejection (a row can have several).
    pub rows: usize,
}

impl Rejections {
    fn push(&mut self, r: Rejection) {
        if self.listed.len() < MAX_LISTED {
            self.listed.push(r);
        } else {
            *self.unlisted.entry((r.column, r.reason)).or_default() += 1;
        }
    }
}

/// A column as delivered, normalised to what validation needs.
pub enum Column {
    Text(StringChunked),
    Int(Int64Chunked),
    /// Instants in seconds since the epoch (tz-aware Parquet timestamps);
    /// `None` for nulls, `Err` for sub-second values.
    Instant(Vec<Option<Result<i64, ()>>>),
}

/// A column materialised for row-by-row access: random `get` on a
/// ChunkedArray costs a chunk lookup per call, a plain slice does not.
enum View<'c> {
    Text(Vec<Option<&'c str>>),
    Int(Vec<Option<i64>>),
    Instant(&'c [Option<Result<i64, ()>>]),
}

impl<'c> View<'c> {
    fn of(col: &'c Column) -> Self {
        match col {
            Column::Text(c) => View::Text(c.iter().collect()),
            Column::Int(c) => View::Int(c.iter().collect()),
            Column::Instant(v) => View::Instant(v),
        }
    }

    fn text(&self, i: usize) -> Option<&'c str> {
        match self {
            View::Text(v) => v[i].map(str::trim).filter(|s| !s.is_empty()),
            _ => None,
        }
    }

    /// The raw value as text, for the quarantine file.
    fn raw(&self, i: usize) -> String {
        match self {
            View::Text(v) => v[i].unwrap_or_default().to_string(),
            View::Int(v) => v[i].map(|x| x.to_string()).unwrap_or_default(),
            View::Instant(v) => match v[i] {
                Some(Ok(s)) => s.to_string(),
                Some(Err(())) => "sub-second timestamp".into(),
                None => String::new(),
            },
        }
    }
}

/// The checks of one row: each rejected value is recorded, the row is
/// counted once however many of its values are wrong.
struct RowCheck<'a, 'c> {
    rejections: &'a mut Rejections,
    names: &'a [&'static str],
    views: &'a [View<'c>],
    line: usize,
    i: usize,
    ok: bool,
}

impl<'a, 'c> RowCheck<'a, 'c> {
    fn new(
        rejections: &'a mut Rejections,
        names: &'a [&'static str],
        views: &'a [View<'c>],
        line: usize,
        i: usize,
    ) -> Self {
        Self {
            rejections,
            names,
            views,
            line,
            i,
            ok: true,
        }
    }

    fn reject(&mut self, k: usize, reason: String) {
        if self.ok {
            self.rejections.rows += 1;
        }
        self.rejections.push(Rejection {
            line: self.line,
            column: self.names[k].to_string(),
            reason,
            value: self.views[k].raw(self.i),
        });
        self.ok = false;
    }
}

/// Valid rows, in file order, ready to be grouped by day.
#[derive(Debug, Default)]
pub struct Validated {
    pub cell: Vec<u32>,
    /// Destination cells (flows only).
    pub dest: Vec<u32>,
    pub bin_start_s: Vec<i64>,
    pub day: Vec<NaiveDate>,
    pub value: Vec<u32>,
    /// Presence only: indexes into [`PresenceKeys`]' lists.
    pub period: Vec<u16>,
    pub segment: Vec<u16>,
    pub origin: Vec<u32>,
    /// Rows whose count was above the plausibility maximum, kept at it.
    pub clamped: usize,
}

/// A public list with each name's position (looked up per row).
pub struct Listed<'a> {
    pub names: Vec<&'a str>,
    pos: std::collections::HashMap<&'a str, usize>,
}

impl<'a> Listed<'a> {
    fn new(names: Vec<&'a str>) -> Self {
        let pos = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        Self { names, pos }
    }

    fn position(&self, v: &str) -> Option<usize> {
        self.pos.get(v).copied()
    }
}

/// The public lists a presence row is checked against, with positions.
pub struct PresenceKeys<'a> {
    pub spec: &'a crate::policy::PresenceSpec,
    pub periods: Listed<'a>,
    pub segments: Listed<'a>,
    pub origins: Listed<'a>,
}

impl<'a> PresenceKeys<'a> {
    pub fn new(spec: &'a crate::policy::PresenceSpec) -> Self {
        let mut origins: Vec<&str> = spec.origins.values().flatten().map(String::as_str).collect();
        if !origins.contains(&crate::policy::OTHER_ORIGIN) {
            origins.push(crate::policy::OTHER_ORIGIN);
        }
        Self {
            spec,
            periods: Listed::new(spec.periods.keys().map(String::as_str).collect()),
            segments: Listed::new(spec.segments.iter().map(String::as_str).collect()),
            origins: Listed::new(origins),
        }
    }
}

/// Per-file validation context.
pub struct Validator<'a> {
    pub grid: &'a Grid,
    pub cell_pos: PlHashMap<&'a str, u32>,
    pub limits: &'a IngestLimits,
    pub now: DateTime<Utc>,
    /// Added to the 0-based row index to get the reported line.
    pub line_offset: usize,
    /// Alignment and local day of each distinct instant (a month has ~720).
    /// PlHashMap: polars' fast hasher; SipHash cost a third of ingest time.
    instants: PlHashMap<i64, Result<NaiveDate, String>>,
    /// (bin, cell, dest, line) of every valid row so far, for the
    /// duplicate check at the end ([`Validator::finish`]); presence packs
    /// (period, segment, origin) into `dest` and the day into `bin`. Bin
    /// first: deliveries come bin by bin, so the keys are runs already
    /// sorted, which the (run-adaptive) stable sort merges in linear time.
    keys: Vec<(i64, u32, u32, u32)>,
    /// Rows validated so far (batches continue the line numbers).
    rows_seen: usize,
    /// A bin's timestamp, or a presence day, is the same text on every row
    /// of the bin: parsed once per run of rows.
    last_instant: LastParsed<i64>,
    last_day: LastParsed<NaiveDate>,
}

/// The last text parsed and what it gave.
#[derive(Default)]
struct LastParsed<T>(Option<(String, Result<T, String>)>);

impl<T: Clone> LastParsed<T> {
    fn get(&mut self, raw: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, String> {
        if let Some((last, parsed)) = &self.0
            && last == raw
        {
            return parsed.clone();
        }
        let parsed = parse(raw);
        self.0 = Some((raw.to_string(), parsed.clone()));
        parsed
    }
}

impl<'a> Validator<'a> {
    pub fn new(grid: &'a Grid, limits: &'a IngestLimits, line_offset: usize) -> Self {
        Self {
            grid,
            cell_pos: grid
                .cells
                .iter()
                .enumerate()
                .map(|(i, c)| (c.cell_id.as_str(), i as u32))
                .collect(),
            limits,
            now: Utc::now(),
            line_offset,
            instants: PlHashMap::default(),
            keys: Vec::new(),
            rows_seen: 0,
            last_instant: LastParsed::default(),
            last_day: LastParsed::default(),
        }
    }

    /// Validates one batch of rows (the next after those already seen):
    /// valid rows go to `out`, problems to `rejections`. Call
    /// [`Validator::finish`] after the last batch.
    pub fn run(
        &mut self,
        metric: Metric,
        columns: &[Column],
        height: usize,
        out: &mut Validated,
        rejections: &mut Rejections,
    ) {
        let names = metric.columns();
        let views: Vec<View> = columns.iter().map(View::of).collect();
        let value_limit = match metric {
            // Presence rows go through `run_presence`.
            Metric::Footfall | Metric::Presence => self.limits.max_devices_per_cell_bin,
            Metric::Flows => self.limits.max_trips_per_pair_bin,
        };
        let n_keys = names.len() - 2;
        let first = self.rows_seen;
        self.rows_seen += height;
        for i in 0..height {
            let mut row = RowCheck::new(rejections, &names, &views, first + i + self.line_offset, i);
            let mut cells = [0u32; 2];
            for (k, cell) in cells.iter_mut().enumerate().take(n_keys) {
                match self.cell(views[k].text(i)) {
                    Ok(c) => *cell = c,
                    Err(reason) => row.reject(k, reason),
                }
            }
            let bin = self
                .instant(&views[n_keys], i)
                .map_err(|reason| row.reject(n_keys, reason))
                .ok();
            let value = count(&views[n_keys + 1], i, value_limit)
                .map_err(|reason| row.reject(n_keys + 1, reason))
                .ok()
                .map(|(v, clamped)| {
                    out.clamped += usize::from(clamped);
                    v
                });
            let (line, row_ok) = (row.line, row.ok);
            let (Some((bin_s, day)), Some(value), true) = (bin, value, row_ok) else {
                continue;
            };
            self.keys.push((bin_s, cells[0], cells[1], line as u32));
            out.cell.push(cells[0]);
            if n_keys == 2 {
                out.dest.push(cells[1]);
            }
            out.bin_start_s.push(bin_s);
            out.day.push(day);
            out.value.push(value);
        }
    }

    /// [`Validator::run`] for presence: columns in [`Metric::Presence`]'s
    /// order (cell, period, segment, origin, day, devices). Codes outside
    /// the policy's public lists are never quoted in a reason (a swapped
    /// column would show a count); the quarantine file has them.
    pub fn run_presence(
        &mut self,
        keys: &PresenceKeys,
        columns: &[Column],
        height: usize,
        out: &mut Validated,
        rejections: &mut Rejections,
    ) {
        let names = Metric::Presence.columns();
        let views: Vec<View> = columns.iter().map(View::of).collect();
        let limit = keys.spec.max_devices_per_cell_day;
        let first = self.rows_seen;
        self.rows_seen += height;
        let today = self.now.with_timezone(&self.grid.tz).date_naive();
        for i in 0..height {
            let mut row = RowCheck::new(rejections, &names, &views, first + i + self.line_offset, i);
            let cell = self.cell(views[0].text(i)).map_err(|r| row.reject(0, r)).ok();
            let listed = |k: usize, list: &Listed, what: &str, policy_key: &str| {
                let v = views[k].text(i).ok_or_else(|| format!("empty {what}"))?;
                list.position(v).ok_or_else(|| {
                    format!("unknown {what} (not in the policy's {policy_key}; the value is in the quarantine file)")
                })
            };
            let period = listed(1, &keys.periods, "period", "presence.periods")
                .map_err(|r| row.reject(1, r))
                .ok();
            let segment = listed(2, &keys.segments, "segment", "presence.segments")
                .map_err(|r| row.reject(2, r))
                .ok();
            let origin = listed(
                3,
                &keys.origins,
                "origin",
                "presence.origins (codes of no group are delivered as \"other\")",
            )
            .map_err(|r| row.reject(3, r))
            .ok();
            let (limits, tz) = (self.limits, &self.grid.spec.timezone);
            let day = views[4]
                .text(i)
                .ok_or_else(|| "empty day".to_string())
                .and_then(|raw| self.last_day.get(raw, |raw| local_day(raw, limits, today, tz)))
                .map_err(|r| row.reject(4, r))
                .ok();
            let value = count(&views[5], i, limit)
                .map_err(|r| row.reject(5, r))
                .ok()
                .map(|(v, clamped)| {
                    out.clamped += usize::from(clamped);
                    v
                });
            let (line, row_ok) = (row.line, row.ok);
            let (Some(cell), Some(p), Some(s), Some(o), Some(day), Some(value), true) =
                (cell, period, segment, origin, day, value, row_ok)
            else {
                continue;
            };
            // (period, segment, origin) fit in 32 bits: ≤ 255 periods and
            // segments (policy names), ≤ 65,535 origin codes.
            let packed = ((p as u32) << 24) | ((s as u32) << 16) | o as u32;
            self.keys
                .push((i64::from(day.num_days_from_ce()), cell, packed, line as u32));
            out.cell.push(cell);
            out.day.push(day);
            out.value.push(value);
            out.period.push(p as u16);
            out.segment.push(s as u16);
            out.origin.push(o as u32);
        }
    }

    /// The checks across batches (duplicate keys); sorts the listed
    /// rejections by line.
    pub fn finish(&mut self, metric: Metric, rejections: &mut Rejections) {
        let names = metric.columns();
        let n_keys = names.len() - 2;
        let keys = &mut self.keys;
        // Duplicates: sort the keys (line last, so the first occurrence of a
        // key comes first) and compare neighbours.
        keys.sort();
        let key_names = &names[..=n_keys];
        for pair in keys.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if (a.0, a.1, a.2) == (b.0, b.1, b.2) {
                let first = keys.partition_point(|k| (k.0, k.1, k.2) < (b.0, b.1, b.2));
                // Rows with another problem never reach `keys`: each
                // duplicate is a newly rejected row.
                rejections.rows += 1;
                rejections.push(Rejection {
                    line: b.3 as usize,
                    column: key_names.join("+"),
                    reason: format!("duplicate of line {} (same {})", keys[first].3, key_names.join(", ")),
                    value: String::new(),
                });
            }
        }
        rejections.listed.sort_by_key(|r| r.line);
    }

    /// The id is never quoted: in a file whose columns are swapped, the
    /// "cell id" is a count (the quarantine file has the raw value).
    fn cell(&self, id: Option<&str>) -> Result<u32, String> {
        let id = id.ok_or("empty cell id")?;
        self.cell_pos.get(id).copied().ok_or_else(|| {
            format!(
                "unknown cell id (not in the catalogue of grid {}; the value is in the quarantine file)",
                self.grid.name()
            )
        })
    }

    fn instant(&mut self, col: &View, i: usize) -> Result<(i64, NaiveDate), String> {
        let secs = match col {
            View::Text(_) => {
                let raw = col.text(i).ok_or("empty timestamp")?;
                self.last_instant.get(raw, parse_rfc3339)?
            }
            View::Instant(v) => match v[i] {
                None => return Err("empty timestamp".into()),
                Some(Err(())) => return Err("timestamp has a fraction of a second".into()),
                Some(Ok(s)) => s,
            },
            View::Int(_) => return Err("expected an RFC 3339 timestamp with offset".into()),
        };
        let (grid, limits, now) = (self.grid, self.limits, self.now);
        let day = self
            .instants
            .entry(secs)
            .or_insert_with(|| check_instant(grid, limits, now, secs))
            .clone()?;
        Ok((secs, day))
    }
}

/// A presence `day`: a local date, old enough to be plausible and over.
fn local_day(raw: &str, limits: &IngestLimits, today: NaiveDate, tz: &str) -> Result<NaiveDate, String> {
    let day = match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        Ok(d) if raw.len() == 10 => d,
        _ if raw.len() > 10 && NaiveDate::parse_from_str(&raw[..10], "%Y-%m-%d").is_ok() => {
            return Err(format!(
                "day is a timestamp, not a local date: presence counts whole local days of {tz}, written YYYY-MM-DD"
            ));
        }
        _ => return Err("not a date (expected the local day as YYYY-MM-DD)".into()),
    };
    if day < limits.earliest_day {
        return Err(format!(
            "day {day} is before the earliest plausible day {} (policy ingest.earliest_day)",
            limits.earliest_day
        ));
    }
    if day >= today {
        return Err(format!(
            "day {day} is not a whole local day yet (today in {tz} is {today}): presence is delivered once a day is over"
        ));
    }
    Ok(day)
}

/// Parses an RFC 3339 timestamp that carries an offset.
fn parse_rfc3339(raw: &str) -> Result<i64, String> {
    match DateTime::parse_from_rfc3339(raw) {
        Ok(t) if t.nanosecond() != 0 => Err("timestamp has a fraction of a second".into()),
        Ok(t) => Ok(t.timestamp()),
        Err(_) => {
            // Say *why*: the most common operator mistake is a local time
            // without offset, which is ambiguous across DST changes.
            let naive = chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S"));
            if naive.is_ok() {
                Err("timestamp has no UTC offset (RFC 3339 needs one, e.g. 2025-03-30T03:00:00+02:00)".into())
            } else {
                Err("not an RFC 3339 timestamp (expected e.g. 2025-03-30T03:00:00+02:00)".into())
            }
        }
    }
}

/// Checks bin alignment (in local time) and plausibility; returns the local day.
fn check_instant(grid: &Grid, limits: &IngestLimits, now: DateTime<Utc>, secs: i64) -> Result<NaiveDate, String> {
    let utc = DateTime::<Utc>::from_timestamp(secs, 0).ok_or("timestamp out of range")?;
    let local = utc.with_timezone(&grid.tz);
    let day = local.date_naive();
    if day < limits.earliest_day {
        return Err(format!(
            "bin is on {day}, before the earliest plausible day {} (policy ingest.earliest_day)",
            limits.earliest_day
        ));
    }
    if utc > now {
        return Err("bin starts in the future".into());
    }
    let since_midnight = local.num_seconds_from_midnight();
    if since_midnight % grid.spec.bin_len_s != 0 {
        return Err(format!(
            "bin start {} is not aligned to the grid's {} s bins in {}",
            local.format("%H:%M:%S"),
            grid.spec.bin_len_s,
            grid.spec.timezone
        ));
    }
    Ok(day)
}

/// Reads a non-negative integer count, kept at the plausible maximum when
/// above it (the `bool` says so).
///
/// Above the maximum is clamped, not refused: a refusal would drop the
/// whole file, so whether a day is published would hang on a threshold of
/// one true count — a fact about the data that no noise covers. Clamping
/// keeps the day and the contribution bounds (one device still moves a
/// clamped count by at most 1); the ingest report counts the clamped rows
/// for the operator, never their values. What cannot be a count (text,
/// fractions, negatives) is still refused.
fn count(col: &View, i: usize, max: u32) -> Result<(u32, bool), String> {
    let v: i128 = match col {
        View::Int(v) => v[i].ok_or("empty count")?.into(),
        View::Text(_) => {
            let raw = col.text(i).ok_or("empty count")?;
            match raw.parse::<i128>() {
                Ok(v) => v,
                // Digits only, too many for i128: a whole number, and far
                // above any plausible maximum (or below zero).
                Err(_) if is_whole_number(raw) && raw.starts_with('-') => return Err("negative count".into()),
                Err(_) if is_whole_number(raw) => i128::MAX,
                Err(_) if raw.parse::<f64>().is_ok() => return Err("count is not a whole number".into()),
                Err(_) => return Err("count is not a number".into()),
            }
        }
        View::Instant(_) => return Err("count is not a number".into()),
    };
    if v < 0 {
        return Err("negative count".into());
    }
    if v > i128::from(max) {
        return Ok((max, true));
    }
    Ok((v as u32, false))
}

/// An optional sign followed by decimal digits only.
fn is_whole_number(raw: &str) -> bool {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_needs_an_offset() {
        assert_eq!(parse_rfc3339("2025-03-30T03:00:00+02:00"), Ok(1_743_296_400));
        assert_eq!(parse_rfc3339("2025-03-30T01:00:00Z"), Ok(1_743_296_400));
        assert!(
            parse_rfc3339("2025-03-30T03:00:00")
                .unwrap_err()
                .contains("no UTC offset")
        );
        assert!(
            parse_rfc3339("30/03/2025 03:00")
                .unwrap_err()
                .contains("not an RFC 3339")
        );
        assert!(
            parse_rfc3339("2025-03-30T03:00:00.5+02:00")
                .unwrap_err()
                .contains("fraction")
        );
    }
}
