//! Ingest: operator deliveries (CSV or Parquet) into the count store.
//!
//! A file lands whole or not at all:
//! 1. its SHA-256 is looked up in the store catalog — the same bytes twice
//!    are a no-op;
//! 2. its schema is checked (the header names the metric: footfall or
//!    flows), then every row ([`validate`]);
//! 3. if any row is rejected, all rejections go to a quarantine file
//!    (`<data-dir>/quarantine/<dataset>/`) and nothing is stored;
//! 4. otherwise the rows are grouped by the grid's local day and committed
//!    to the store atomically ([`crate::store::CountStore::commit`]), which
//!    refuses bins already stored unless the delivery is a correction.

pub mod read;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{NaiveDate, Utc};
use polars::prelude::*;
use serde::Serialize;

use crate::grid::{Grid, GridError};
use crate::policy::{Policy, PolicyError};
use crate::store::{CountStore, Delivery, Metric, StoreError};
use crate::util;
use validate::{Column, Rejection, Validator};

/// Errors of an ingest. Each names the file and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Grid(#[from] GridError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot be read as {format}: {reason}")]
    Unreadable {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Schema { path: PathBuf, reason: String },
    #[error(
        "{path}: {rejected} of {rows} rows rejected, file not ingested (nothing was stored). First: line {}, column {}: {}. {} in {} under the data dir",
        first.line, first.column, first.reason,
        if *listed < *rejected { format!("The first {listed} rejected rows are listed, the rest counted by reason,") } else { "Every rejected row is listed".to_string() },
        quarantine.display()
    )]
    Rejected {
        path: PathBuf,
        rows: usize,
        /// Rows with at least one rejected value.
        rejected: usize,
        /// Rejections written out in full (the rest are counted by reason).
        listed: usize,
        first: Box<Rejection>,
        /// The quarantine file, relative to the data dir: messages reach
        /// HTTP clients, which must not learn the server's layout.
        quarantine: PathBuf,
    },
    #[error("{path}: file not ingested: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// How a file is to be ingested.
#[derive(Debug, Clone, Copy, Default)]
pub struct IngestOptions {
    /// Replace stored rows with the same keys instead of refusing them.
    pub correction: bool,
}

/// What an ingest did with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Its rows are in the store now.
    Ingested,
    /// The same bytes were ingested before: nothing to do.
    AlreadyIngested,
}

/// What happened to one file (the `--json` summary has one per file).
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: PathBuf,
    pub sha256: String,
    pub status: FileStatus,
    pub metric: Option<Metric>,
    pub rows: usize,
    pub rows_rejected: usize,
    /// Rows whose count was above the policy's plausibility maximum and
    /// were stored at it (their values are not shown).
    pub rows_clamped: usize,
    pub quarantine: Option<PathBuf>,
    pub first_day: Option<NaiveDate>,
    pub last_day: Option<NaiveDate>,
    pub days: usize,
    pub correction: bool,
    pub rows_replaced: usize,
    pub generation: Option<u64>,
    pub error: Option<String>,
    pub elapsed_s: f64,
}

/// Ingests files for one dataset.
pub struct Ingestor {
    pub policy: Policy,
    pub grid: Grid,
    pub store: CountStore,
    data_dir: PathBuf,
    /// Whether this ingestor already tidied the store: once per process is
    /// enough (a restart re-offers every delivery, each already ingested).
    tidied: std::sync::atomic::AtomicBool,
}

impl Ingestor {
    pub fn new(policy: Policy, data_dir: &Path) -> Result<Self, IngestError> {
        let grid = policy.load_grid()?;
        let store = CountStore::new(data_dir, policy.dataset());
        Ok(Self {
            policy,
            grid,
            store,
            data_dir: data_dir.to_path_buf(),
            tidied: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Ingests one file; `Ok` for ingested and already-ingested files.
    #[tracing::instrument(skip_all, fields(file = %path.display(), dataset = %self.policy.dataset()))]
    pub fn ingest(&self, path: &Path, opts: IngestOptions) -> Result<FileReport, IngestError> {
        let started = Instant::now();
        let io = |source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        };
        let sha256 = util::sha256_file(path).map_err(io)?;
        let mut report = FileReport {
            file: path.to_path_buf(),
            sha256: sha256.clone(),
            status: FileStatus::Ingested,
            metric: None,
            rows: 0,
            rows_rejected: 0,
            rows_clamped: 0,
            quarantine: None,
            first_day: None,
            last_day: None,
            days: 0,
            correction: opts.correction,
            rows_replaced: 0,
            generation: None,
            error: None,
            elapsed_s: 0.0,
        };
        let store_err = |source| IngestError::Store {
            path: path.to_path_buf(),
            source,
        };
        // Cheap check first, without the lock: most re-deliveries stop here.
        // A retry after a crash stops here too, so it tidies what the crash
        // left (when no other writer or reader is busy).
        if let Some(d) = self.store.catalog().map_err(store_err)?.delivery(&sha256) {
            if !self.tidied.swap(true, std::sync::atomic::Ordering::Relaxed) {
                self.store.tidy().map_err(store_err)?;
            }
            return Ok(already(report, d, started));
        }

        // Row by row in batches: memory for one batch, not for the file.
        let mut reader = read::DeliveryReader::open(path)?;
        let metric = detect_metric(path, &reader.names)?;
        report.metric = Some(metric);
        let progress = crate::cli_progress(reader.bytes, "validating");
        let presence = match metric {
            Metric::Presence => Some(validate::PresenceKeys::new(
                self.policy.spec.presence.as_ref().ok_or_else(|| IngestError::Schema {
                    path: path.to_path_buf(),
                    reason: format!(
                        "a presence file, but policy {} has no [presence] section naming its periods, segments and origins",
                        self.policy.path.display()
                    ),
                })?,
            )),
            _ => None,
        };
        let mut validator = Validator::new(&self.grid, &self.policy.spec.ingest, reader.first_line);
        let mut valid = validate::Validated::default();
        let mut rejections = validate::Rejections::default();
        while let Some(df) = reader.next_batch()? {
            let columns = normalise_columns(path, &df, metric)?;
            match &presence {
                Some(keys) => validator.run_presence(keys, &columns, df.height(), &mut valid, &mut rejections),
                None => validator.run(metric, &columns, df.height(), &mut valid, &mut rejections),
            }
            report.rows += df.height();
            progress.set_position(reader.consumed());
        }
        validator.finish(metric, &mut rejections);
        progress.finish_and_clear();
        if report.rows == 0 {
            return Err(IngestError::Schema {
                path: path.to_path_buf(),
                reason: "the file has a header but no rows".into(),
            });
        }

        if let Some(first) = rejections.listed.first() {
            let quarantine = self.quarantine(path, &sha256, &rejections)?;
            return Err(IngestError::Rejected {
                path: path.to_path_buf(),
                rows: report.rows,
                rejected: rejections.rows,
                listed: rejections.listed.len(),
                first: Box::new(first.clone()),
                quarantine,
            });
        }

        report.rows_clamped = valid.clamped;
        if valid.clamped > 0 {
            tracing::warn!(
                file = %path.display(),
                rows = valid.clamped,
                "counts above the policy's plausibility maximum were stored at it"
            );
        }
        let frames = match &presence {
            Some(keys) => self.presence_frames(keys, valid),
            None => self.day_frames(metric, valid),
        }
        .map_err(|source| IngestError::Store {
            path: path.to_path_buf(),
            source: StoreError::Polars {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let (Some(first_day), Some(last_day)) = (frames.keys().next().copied(), frames.keys().next_back().copied())
        else {
            return Err(IngestError::Schema {
                path: path.to_path_buf(),
                reason: "the file has a header but no rows".into(),
            });
        };

        let _lock = self.store.lock().map_err(store_err)?;
        let catalog = self.store.catalog().map_err(store_err)?;
        self.store.recover(&catalog).map_err(store_err)?;
        // Re-check under the lock: another process may have ingested the
        // same file while this one was validating.
        if let Some(d) = catalog.delivery(&sha256) {
            return Ok(already(report, d, started));
        }
        let delivery = Delivery {
            sha256,
            file_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            metric,
            rows: report.rows,
            first_day,
            last_day,
            days: frames.len(),
            correction: opts.correction,
            replaced_rows: 0,
            ingested_at: Utc::now(),
            generation: 0,
        };
        report.days = frames.len();
        report.first_day = Some(first_day);
        report.last_day = Some(last_day);
        let commit = self
            .store
            .commit(&catalog, metric, frames, delivery)
            .map_err(store_err)?;
        report.rows_replaced = commit.rows_replaced;
        report.generation = Some(commit.generation);
        report.elapsed_s = started.elapsed().as_secs_f64();
        tracing::info!(file = %path.display(), rows = report.rows, days = report.days, "ingested");
        Ok(report)
    }

    /// Groups valid rows by local day into frames of the store schema,
    /// sorted by bin then cell.
    fn day_frames(&self, metric: Metric, v: validate::Validated) -> PolarsResult<BTreeMap<NaiveDate, DataFrame>> {
        let mut by_day: BTreeMap<NaiveDate, Vec<usize>> = BTreeMap::new();
        for (i, d) in v.day.iter().enumerate() {
            by_day.entry(*d).or_default().push(i);
        }
        let ids = &self.grid.cells;
        let mut out = BTreeMap::new();
        for (day, mut idx) in by_day {
            idx.sort_by_key(|&i| (v.bin_start_s[i], v.cell[i], v.dest.get(i).copied()));
            let micros: Vec<i64> = idx.iter().map(|&i| v.bin_start_s[i] * 1_000_000).collect();
            let bin_start = Int64Chunked::from_vec("bin_start".into(), micros)
                .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
                .into_series();
            let values =
                UInt32Chunked::from_vec(metric.value_column().into(), idx.iter().map(|&i| v.value[i]).collect())
                    .into_series();
            let cell_series = |name: &str, src: &[u32]| {
                Series::new(
                    name.into(),
                    idx.iter()
                        .map(|&i| ids[src[i] as usize].cell_id.as_str())
                        .collect::<Vec<_>>(),
                )
            };
            let df = match metric {
                Metric::Footfall => DataFrame::new_infer_height(vec![
                    cell_series("cell_id", &v.cell).into(),
                    bin_start.into(),
                    values.into(),
                ])?,
                // Presence rows go through `presence_frames`.
                Metric::Flows | Metric::Presence => DataFrame::new_infer_height(vec![
                    cell_series("origin_cell_id", &v.cell).into(),
                    cell_series("dest_cell_id", &v.dest).into(),
                    bin_start.into(),
                    values.into(),
                ])?,
            };
            out.insert(day, df);
        }
        Ok(out)
    }

    /// [`Ingestor::day_frames`] for presence: one frame per local day in the
    /// store schema (`cell_id, period, segment, origin, day, devices`),
    /// sorted by cell, period, segment and origin.
    fn presence_frames(
        &self,
        keys: &validate::PresenceKeys,
        v: validate::Validated,
    ) -> PolarsResult<BTreeMap<NaiveDate, DataFrame>> {
        let mut by_day: BTreeMap<NaiveDate, Vec<usize>> = BTreeMap::new();
        for (i, d) in v.day.iter().enumerate() {
            by_day.entry(*d).or_default().push(i);
        }
        let ids = &self.grid.cells;
        let mut out = BTreeMap::new();
        for (day, mut idx) in by_day {
            idx.sort_by_key(|&i| (v.cell[i], v.period[i], v.segment[i], v.origin[i]));
            let text = |name: &str, values: Vec<&str>| polars::prelude::Column::new(name.into(), values);
            let days = DateChunked::from_naive_date("day".into(), idx.iter().map(|_| day)).into_column();
            let df = DataFrame::new_infer_height(vec![
                text(
                    "cell_id",
                    idx.iter().map(|&i| ids[v.cell[i] as usize].cell_id.as_str()).collect(),
                ),
                text(
                    "period",
                    idx.iter().map(|&i| keys.periods.names[v.period[i] as usize]).collect(),
                ),
                text(
                    "segment",
                    idx.iter()
                        .map(|&i| keys.segments.names[v.segment[i] as usize])
                        .collect(),
                ),
                text(
                    "origin",
                    idx.iter().map(|&i| keys.origins.names[v.origin[i] as usize]).collect(),
                ),
                days,
                UInt32Chunked::from_vec("devices".into(), idx.iter().map(|&i| v.value[i]).collect()).into_column(),
            ])?;
            out.insert(day, df);
        }
        Ok(out)
    }

    /// Writes the rejections to `<data-dir>/quarantine/<dataset>/` and
    /// returns the file's path relative to the data dir. The file is
    /// bounded: the first [`validate::MAX_LISTED`] rejections in full (with
    /// their raw values, for the operator), then one row per column and
    /// reason counting the rest (`line` and `value` empty).
    fn quarantine(&self, path: &Path, sha256: &str, rejections: &validate::Rejections) -> Result<PathBuf, IngestError> {
        let stem = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "delivery".into());
        let relative = Path::new("quarantine").join(self.policy.dataset()).join(format!(
            "{}-{}.rejected.csv",
            &sha256[..12],
            stem
        ));
        let target = self.data_dir.join(&relative);
        let listed = &rejections.listed;
        let more = &rejections.unlisted;
        let mut df = df!(
            "line" => listed.iter().map(|r| Some(r.line as u64)).chain(more.iter().map(|_| None)).collect::<Vec<_>>(),
            "column" => listed.iter().map(|r| r.column.as_str()).chain(more.iter().map(|((c, _), _)| c.as_str())).collect::<Vec<_>>(),
            "reason" => listed.iter().map(|r| r.reason.as_str()).chain(more.iter().map(|((_, r), _)| r.as_str())).collect::<Vec<_>>(),
            "value" => listed.iter().map(|r| r.value.as_str()).chain(more.iter().map(|_| "")).collect::<Vec<_>>(),
            "count" => listed.iter().map(|_| 1u64).chain(more.values().copied()).collect::<Vec<_>>(),
        )
        .map_err(|e| IngestError::Io {
            path: relative.clone(),
            source: std::io::Error::other(e),
        })?;
        util::write_atomic_with(&target, |f| {
            CsvWriter::new(f).finish(&mut df).map_err(std::io::Error::other)
        })
        .map_err(|source| IngestError::Io {
            path: relative.clone(),
            source,
        })?;
        Ok(relative)
    }
}

fn already(mut report: FileReport, d: &Delivery, started: Instant) -> FileReport {
    report.status = FileStatus::AlreadyIngested;
    report.metric = Some(d.metric);
    report.rows = d.rows;
    report.first_day = Some(d.first_day);
    report.last_day = Some(d.last_day);
    report.days = d.days;
    report.generation = Some(d.generation);
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

/// The metric is named by the header; anything else is refused.
///
/// A header field that is not a known column name is never quoted: without
/// a header row, polars takes the first data row as the header, and its
/// fields are a cell id, a timestamp and a count.
fn detect_metric(path: &Path, names: &[String]) -> Result<Metric, IngestError> {
    let has = |cols: &[&str]| cols.iter().all(|c| names.iter().any(|n| n == c));
    let known = |n: &String| Metric::ALL.iter().any(|m| m.columns().contains(&n.as_str()));
    let schema = |reason: String| IngestError::Schema {
        path: path.to_path_buf(),
        reason,
    };
    let metric = if has(&Metric::Flows.columns()) {
        Metric::Flows
    } else if has(&Metric::Presence.columns()) {
        Metric::Presence
    } else if has(&Metric::Footfall.columns()) {
        Metric::Footfall
    } else {
        let known_names: Vec<&str> = names.iter().filter(|n| known(n)).map(String::as_str).collect();
        let others = names.len() - known_names.len();
        let (footfall, flows, presence) = (
            Metric::Footfall.columns(),
            Metric::Flows.columns(),
            Metric::Presence.operator_columns(),
        );
        return Err(schema(if known_names.is_empty() {
            format!(
                "the first line is not a header row: none of its {} fields is a column name (footfall: {footfall:?}, flows: {flows:?}, presence: {presence:?}); add the header as the first line",
                names.len()
            )
        } else {
            let rest = if others > 0 {
                format!(" and {others} other field(s), not shown as they may be data")
            } else {
                String::new()
            };
            format!(
                "the header is not footfall ({footfall:?}), flows ({flows:?}) or presence ({presence:?}): it has {known_names:?}{rest}"
            )
        }));
    };
    let expected = metric.operator_columns();
    if let Some(pos) = names.iter().position(|n| !expected.contains(&n.as_str())) {
        return Err(schema(format!(
            "field {} of the header is not a column of a {metric} file (not shown: it may be data); expected exactly {expected:?}",
            pos + 1
        )));
    }
    Ok(metric)
}

/// Turns delivered columns into validation columns; a column whose type can
/// never be valid (a float count, a timestamp without time zone) is a
/// schema error for the whole file.
fn normalise_columns(path: &Path, df: &DataFrame, metric: Metric) -> Result<Vec<Column>, IngestError> {
    let schema_err = |reason: String| IngestError::Schema {
        path: path.to_path_buf(),
        reason,
    };
    if metric == Metric::Presence {
        return normalise_presence(path, df);
    }
    let n_keys = metric.key_columns().len() - 1;
    let mut out = Vec::new();
    for (k, name) in metric.columns().into_iter().enumerate() {
        let col = column_of(df, name).map_err(schema_err)?;
        let dtype = col.dtype().clone();
        let bad_type = || {
            schema_err(format!(
                "column {name} has type {dtype}, which hexflow cannot read as {}",
                kind(k, n_keys)
            ))
        };
        let normalised = if k < n_keys {
            // Cell ids: text, or integers written as text.
            match dtype {
                DataType::String => Column::Text(col.str().map_err(|e| schema_err(e.to_string()))?.clone()),
                d if d.is_integer() => Column::Text(
                    col.cast(&DataType::String)
                        .map_err(|e| schema_err(e.to_string()))?
                        .str()
                        .map_err(|e| schema_err(e.to_string()))?
                        .clone(),
                ),
                _ => return Err(bad_type()),
            }
        } else if k == n_keys {
            match dtype {
                DataType::String => Column::Text(col.str().map_err(|e| schema_err(e.to_string()))?.clone()),
                DataType::Datetime(unit, Some(_)) => {
                    let per_s: i64 = match unit {
                        TimeUnit::Milliseconds => 1_000,
                        TimeUnit::Microseconds => 1_000_000,
                        TimeUnit::Nanoseconds => 1_000_000_000,
                    };
                    let phys = col.to_physical_repr();
                    let ints = phys.i64().map_err(|e| schema_err(e.to_string()))?;
                    Column::Instant(
                        ints.iter()
                            .map(|v| v.map(|v| if v % per_s == 0 { Ok(v / per_s) } else { Err(()) }))
                            .collect(),
                    )
                }
                DataType::Datetime(_, None) => {
                    return Err(schema_err(format!(
                        "column {name} is a timestamp without time zone; hexflow needs the offset (an RFC 3339 string or a timestamp with time zone)"
                    )));
                }
                _ => return Err(bad_type()),
            }
        } else {
            match count_column(&col).map_err(schema_err)? {
                Some(c) => c,
                None => return Err(bad_type()),
            }
        };
        out.push(normalised);
    }
    Ok(out)
}

/// A count column as validation reads it: text as delivered, integers as
/// i64; `None` for a type that can never hold a count. A u64 count past
/// i64::MAX would become null in a cast ("empty count"); it is a whole
/// number above any maximum, so it saturates instead.
fn count_column(col: &Series) -> Result<Option<Column>, String> {
    let e = |e: PolarsError| e.to_string();
    Ok(Some(match col.dtype() {
        DataType::String => Column::Text(col.str().map_err(e)?.clone()),
        DataType::UInt64 => Column::Int(
            col.u64()
                .map_err(e)?
                .iter()
                .map(|v| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
                .collect(),
        ),
        d if d.is_integer() => Column::Int(col.cast(&DataType::Int64).map_err(e)?.i64().map_err(e)?.clone()),
        _ => return Ok(None),
    }))
}

/// A delivered column in one chunk (validation reads it row by row).
fn column_of(df: &DataFrame, name: &str) -> Result<Series, String> {
    Ok(df
        .column(name)
        .map_err(|e| e.to_string())?
        .as_materialized_series()
        .rechunk())
}

/// [`normalise_columns`] for presence, in [`Metric::Presence`]'s column
/// order: every key as text (a Parquet date as YYYY-MM-DD), the count as
/// an integer.
fn normalise_presence(path: &Path, df: &DataFrame) -> Result<Vec<Column>, IngestError> {
    let schema_err = |reason: String| IngestError::Schema {
        path: path.to_path_buf(),
        reason,
    };
    let mut out = Vec::new();
    for name in Metric::Presence.columns() {
        let col = column_of(df, name).map_err(schema_err)?;
        let dtype = col.dtype().clone();
        let as_text = |c: &Series| -> Result<Column, IngestError> {
            Ok(Column::Text(
                c.cast(&DataType::String)
                    .map_err(|e| schema_err(e.to_string()))?
                    .str()
                    .map_err(|e| schema_err(e.to_string()))?
                    .clone(),
            ))
        };
        let wrong_type = |what: &str| {
            schema_err(format!(
                "column {name} has type {dtype}, which hexflow cannot read as {what}"
            ))
        };
        let normalised = match (name, &dtype) {
            ("devices", _) => count_column(&col)
                .map_err(schema_err)?
                .ok_or_else(|| wrong_type("a whole-number count"))?,
            ("day", DataType::Datetime(..)) => {
                return Err(schema_err(
                    "column day is a timestamp; presence is keyed by the local date (YYYY-MM-DD text or a Parquet date)"
                        .into(),
                ));
            }
            ("day", DataType::String | DataType::Date) => as_text(&col)?,
            ("day", _) => return Err(wrong_type("a local date")),
            (_, d) if *d == DataType::String || d.is_integer() => as_text(&col)?,
            _ => return Err(wrong_type("a code")),
        };
        out.push(normalised);
    }
    Ok(out)
}

fn kind(k: usize, n_keys: usize) -> &'static str {
    if k < n_keys {
        "a cell id"
    } else if k == n_keys {
        "an RFC 3339 timestamp"
    } else {
        "a whole-number count"
    }
}
