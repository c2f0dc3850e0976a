//! The count store: validated operator counts, as Parquet partitioned by
//! the grid's local day.
//!
//! ```text
//! <data-dir>/store/<dataset>/
//!   catalog.json                         the commit point (see below)
//!   .lock                                held by every writer
//!   footfall/g000007-2025-03.parquet     one commit's days of one month
//!   flows/g000007-2025-03.parquet
//! ```
//!
//! A commit writes the days it touches (old rows + new rows of each day)
//! into one Parquet file per calendar month under a new generation name,
//! days in order, then atomically replaces `catalog.json`, which names for
//! every day its file and its run of rows there ([`DayRows`]). Readers only
//! follow the catalog, so a crash before the catalog is replaced leaves the
//! store exactly as it was; the orphaned files are deleted by the next
//! writer ([`CountStore::recover`]). A file is garbage once no day of the
//! catalog points into it. (Version 1 stores wrote a file per day,
//! `footfall/date=2025-03-14/g000007.parquet`; they are read as they are and
//! their days move to month files as commits touch them. A file per day made
//! a delivery of years create thousands of files, and the file system's
//! inode allocation became most of its cost.)
//!
//! Readers hold `.readers` shared ([`CountStore::read_guard`]) from before
//! they read the catalog until they have read the files it names. Files a
//! newer catalog superseded are deleted only under `.readers` held
//! exclusively, taken without waiting: with a reader present they stay
//! until a later writer finds none, so a reader never sees a file of its
//! catalog vanish (a correction racing a release).
//! Counts never leave this module except through the release stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{table, util};

/// Store schema version written in `catalog.json` (1 is still read).
pub const CATALOG_VERSION: u32 = 2;

pub use crate::vocab::Metric;

/// Errors of the count store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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
    #[error("{path}: the store catalog is unreadable ({reason}); it was written by another version or damaged")]
    Catalog { path: PathBuf, reason: String },
    #[error(
        "{count} {metric} rows are already stored (first: {example}); a second delivery for a stored bin is refused unless it is flagged as a correction (--correction)"
    )]
    AlreadyStored {
        metric: Metric,
        count: usize,
        example: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn polars_err(path: &Path) -> impl FnOnce(PolarsError) -> StoreError + '_ {
    move |source| StoreError::Polars {
        path: path.to_path_buf(),
        source,
    }
}

/// One delivered file, as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// SHA-256 of the file's bytes: the identity used for idempotence.
    pub sha256: String,
    pub file_name: String,
    pub metric: Metric,
    pub rows: usize,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub days: usize,
    /// A correction replaces stored rows for the same keys.
    pub correction: bool,
    /// How many stored rows this delivery replaced (corrections only).
    pub replaced_rows: usize,
    pub ingested_at: DateTime<Utc>,
    pub generation: u64,
}

/// `catalog.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub version: u32,
    /// Incremented by every commit; names the files it writes.
    pub generation: u64,
    pub deliveries: Vec<Delivery>,
    /// metric → day → where its rows are.
    pub partitions: BTreeMap<Metric, BTreeMap<NaiveDate, DayRows>>,
}

/// Where one day's rows of one metric are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DayRows {
    /// Rows `offset .. offset + rows` of `<metric>/<file>` (version 2).
    Run { file: String, offset: usize, rows: usize },
    /// The whole of `<metric>/date=<day>/<file>` (version 1).
    DayFile(String),
}

impl Catalog {
    /// The delivery with this content hash, if it was ingested.
    pub fn delivery(&self, sha256: &str) -> Option<&Delivery> {
        self.deliveries.iter().find(|d| d.sha256 == sha256)
    }
}

/// New rows for one metric, grouped by local day, in the store schema.
pub type DayFrames = BTreeMap<NaiveDate, DataFrame>;

/// What a commit changed.
#[derive(Debug, Clone, Serialize)]
pub struct CommitSummary {
    pub generation: u64,
    pub days_written: usize,
    pub rows_added: usize,
    pub rows_replaced: usize,
}

/// Totals of one metric in the store.
#[derive(Debug, Clone, Serialize)]
pub struct MetricSummary {
    pub metric: Metric,
    pub days: usize,
    pub first_day: Option<NaiveDate>,
    pub last_day: Option<NaiveDate>,
    pub rows: usize,
    pub bytes: u64,
}

/// One dataset's count store under the data dir.
#[derive(Debug, Clone)]
pub struct CountStore {
    root: PathBuf,
}

impl CountStore {
    /// The store of `dataset` under `data_dir` (created lazily on commit).
    pub fn new(data_dir: &Path, dataset: &str) -> Self {
        Self {
            root: data_dir.join("store").join(dataset),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn catalog_path(&self) -> PathBuf {
        self.root.join("catalog.json")
    }

    /// Takes the dataset's writer lock (blocking).
    pub fn lock(&self) -> Result<util::DirLock, StoreError> {
        let p = self.root.join(".lock");
        util::DirLock::acquire(&p).map_err(io_err(&p))
    }

    /// Held by every reader of day files, from before it reads the catalog
    /// until it is done with the files; garbage is deleted only when no
    /// reader holds it.
    /// `None` while the store does not exist (nothing to protect, and a
    /// reader must not create it).
    pub fn read_guard(&self) -> Result<Option<util::DirLock>, StoreError> {
        if !self.root.exists() {
            return Ok(None);
        }
        let p = self.root.join(".readers");
        util::DirLock::acquire_shared(&p).map(Some).map_err(io_err(&p))
    }

    /// `.readers` exclusively if no reader holds it (never waits).
    fn no_readers(&self) -> Result<Option<util::DirLock>, StoreError> {
        let p = self.root.join(".readers");
        util::DirLock::try_acquire(&p).map_err(io_err(&p))
    }

    /// Removes garbage if no other writer and no reader is busy; a no-op
    /// otherwise (the next writer does it). For paths that change nothing
    /// (a delivery already ingested), so that a crash's leftovers do not
    /// wait for the next real delivery.
    pub fn tidy(&self) -> Result<usize, StoreError> {
        let p = self.root.join(".lock");
        if !self.root.exists() {
            return Ok(0);
        }
        match util::DirLock::try_acquire(&p).map_err(io_err(&p))? {
            Some(_lock) => self.recover(&self.catalog()?),
            None => Ok(0),
        }
    }

    /// Reads the catalog (empty when the store does not exist yet).
    pub fn catalog(&self) -> Result<Catalog, StoreError> {
        let path = self.catalog_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let c: Catalog = serde_json::from_slice(&bytes).map_err(|e| StoreError::Catalog {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if c.version != CATALOG_VERSION && c.version != 1 {
                    return Err(StoreError::Catalog {
                        path,
                        reason: format!("version {} (this hexflow reads {CATALOG_VERSION})", c.version),
                    });
                }
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog {
                version: CATALOG_VERSION,
                ..Catalog::default()
            }),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The file holding one day's rows.
    fn day_file(&self, metric: Metric, day: NaiveDate, rows: &DayRows) -> PathBuf {
        let mdir = self.root.join(metric.as_str());
        match rows {
            DayRows::Run { file, .. } => mdir.join(file),
            DayRows::DayFile(file) => mdir.join(format!("date={day}")).join(file),
        }
    }

    /// Every file the catalog points into.
    fn referenced(&self, catalog: &Catalog) -> BTreeSet<PathBuf> {
        catalog
            .partitions
            .iter()
            .flat_map(|(metric, days)| days.iter().map(|(day, rows)| self.day_file(*metric, *day, rows)))
            .collect()
    }

    /// Deletes files no catalog entry refers to: leftovers of a crashed or
    /// refused writer. Call with the lock held.
    pub fn recover(&self, catalog: &Catalog) -> Result<usize, StoreError> {
        let mut removed = 0;
        // A crashed catalog writer leaves its temporary beside the catalog.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                    removed += 1;
                }
            }
        }
        // Superseded files may still be read under an older catalog.
        let Some(_no_readers) = self.no_readers()? else {
            return Ok(removed);
        };
        let keep = self.referenced(catalog);
        let mut unreferenced = |path: PathBuf| -> Result<(), StoreError> {
            if !keep.contains(&path) {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                removed += 1;
            }
            Ok(())
        };
        for metric in Metric::ALL {
            let mdir = self.root.join(metric.as_str());
            let Ok(entries) = std::fs::read_dir(&mdir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.is_dir() {
                    unreferenced(path)?;
                    continue;
                }
                // A version-1 day folder: removed once empty.
                for f in std::fs::read_dir(&path).map_err(io_err(&path))?.flatten() {
                    unreferenced(f.path())?;
                }
                if std::fs::read_dir(&path).map_err(io_err(&path))?.next().is_none() {
                    std::fs::remove_dir(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(removed)
    }

    /// Reads one day's stored rows.
    pub fn read_day(&self, catalog: &Catalog, metric: Metric, day: NaiveDate) -> Result<Option<DataFrame>, StoreError> {
        match catalog.partitions.get(&metric).and_then(|days| days.get(&day)) {
            None => Ok(None),
            Some(rows) => read_rows(&self.day_file(metric, day, rows), rows.slice()).map(Some),
        }
    }

    /// Adds `new` rows (one frame per local day) and records `delivery`,
    /// atomically. Without `correction`, any key already stored refuses the
    /// whole delivery; with it, stored rows with the same keys are replaced.
    ///
    /// Call with the lock held and after [`CountStore::recover`].
    pub fn commit(
        &self,
        catalog: &Catalog,
        metric: Metric,
        new: DayFrames,
        mut delivery: Delivery,
    ) -> Result<CommitSummary, StoreError> {
        let keys: Vec<PlSmallStr> = metric.key_columns().iter().map(|c| (*c).into()).collect();
        let key_exprs: Vec<Expr> = metric.key_columns().iter().map(|c| col(*c)).collect();
        // First pass, nothing written: merge every day and check conflicts.
        let mut merged: Vec<(NaiveDate, DataFrame)> = Vec::with_capacity(new.len());
        let mut replaced = 0usize;
        let mut conflicts = 0usize;
        let mut example = None;
        for (day, frame) in new {
            let Some(old) = self.read_day(catalog, metric, day)? else {
                merged.push((day, frame));
                continue;
            };
            let path = self.root.join(metric.as_str());
            // Stored rows, marked by whether the new delivery has their key.
            let marked = old
                .lazy()
                .join(
                    frame
                        .clone()
                        .lazy()
                        .select(key_exprs.clone())
                        .with_column(lit(true).alias("__in_new")),
                    key_exprs.clone(),
                    key_exprs.clone(),
                    JoinArgs::new(JoinType::Left),
                )
                .collect()
                .map_err(polars_err(&path))?;
            let in_new = marked
                .column("__in_new")
                .map_err(polars_err(&path))?
                .as_materialized_series()
                .is_not_null();
            let overlap = marked.filter(&in_new).map_err(polars_err(&path))?;
            if overlap.height() > 0 && !delivery.correction {
                conflicts += overlap.height();
                if example.is_none() {
                    example = Some(describe_key(&overlap, metric));
                }
                continue;
            }
            replaced += overlap.height();
            let kept = marked
                .filter(&!in_new)
                .map_err(polars_err(&path))?
                .drop("__in_new")
                .map_err(polars_err(&path))?;
            let mut all = kept.vstack(&frame).map_err(polars_err(&path))?;
            all = all
                .sort(
                    keys.iter().rev().cloned().collect::<Vec<_>>(),
                    SortMultipleOptions::default(),
                )
                .map_err(polars_err(&path))?;
            merged.push((day, all));
        }
        if conflicts > 0 {
            return Err(StoreError::AlreadyStored {
                metric,
                count: conflicts,
                example: example.unwrap_or_default(),
            });
        }

        // Second pass: write the merged days under a fresh generation, one
        // file per calendar month, days in order.
        let generation = catalog.generation + 1;
        let mdir = self.root.join(metric.as_str());
        let mut months: Vec<MonthFile> = Vec::new();
        for (day, frame) in merged {
            let name = format!("g{generation:06}-{}.parquet", day.format("%Y-%m"));
            match months.last_mut() {
                Some(m) if m.name == name => m.days.push((day, frame)),
                _ => months.push(MonthFile {
                    path: mdir.join(&name),
                    name,
                    days: vec![(day, frame)],
                }),
            }
        }
        // Files go straight to their final names: until the catalog below
        // names them they belong to no generation, and a crash leaves them
        // to `recover`. They are made durable together, with one syncfs,
        // before the catalog commits, and written on one thread per core.
        let wrote = std::fs::create_dir_all(&mdir)
            .map_err(io_err(&mdir))
            .and_then(|()| write_months(&mut months))
            .and_then(|()| util::sync_filesystem(&self.root).map_err(io_err(&self.root)));
        if let Err(e) = wrote {
            // A full disk or an I/O error: nothing of this commit stays
            // (files never created are simply not there to remove).
            for m in &months {
                let _ = std::fs::remove_file(&m.path);
            }
            return Err(e);
        }
        let mut next = catalog.clone();
        next.version = CATALOG_VERSION;
        next.generation = generation;
        let mut rows_added = 0;
        for m in &months {
            let mut offset = 0;
            for (day, frame) in &m.days {
                let rows = frame.height();
                next.partitions.entry(metric).or_default().insert(
                    *day,
                    DayRows::Run {
                        file: m.name.clone(),
                        offset,
                        rows,
                    },
                );
                offset += rows;
                rows_added += rows;
            }
        }
        util::failpoint("ingest:after-partitions");

        delivery.generation = generation;
        delivery.replaced_rows = replaced;
        let days_written = delivery.days;
        next.deliveries.push(delivery);
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::Catalog {
            path: self.catalog_path(),
            reason: e.to_string(),
        })?;
        let cpath = self.catalog_path();
        util::write_atomic(&cpath, &bytes).map_err(io_err(&cpath))?;
        util::failpoint("ingest:after-commit");
        // The files this commit superseded are garbage now, unless a
        // reader still follows the old catalog; a crash or a reader here
        // only delays their removal to a later writer's `recover`.
        let summary = CommitSummary {
            generation,
            days_written,
            rows_added: rows_added - replaced,
            rows_replaced: replaced,
        };
        let Some(_no_readers) = self.no_readers()? else {
            return Ok(summary);
        };
        let current = self.referenced(&next);
        for old in self.referenced(catalog).difference(&current) {
            std::fs::remove_file(old).map_err(io_err(old))?;
            // A version-1 day folder left empty.
            if let Some(dir) = old.parent().filter(|d| d != &mdir) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(summary)
    }

    /// Every stored row of `metric` on the days `[from, to]` (inclusive),
    /// in day order; `None` when no day of the range is stored. Days that
    /// follow on in one file are read in one slice.
    pub fn read_range(
        &self,
        catalog: &Catalog,
        metric: Metric,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<DataFrame>, StoreError> {
        let mut runs: Vec<(PathBuf, Option<(usize, usize)>)> = Vec::new();
        for (day, rows) in catalog
            .partitions
            .get(&metric)
            .into_iter()
            .flat_map(|d| d.range(from..=to))
        {
            let path = self.day_file(metric, *day, rows);
            let slice = rows.slice();
            if let (Some((last_path, Some((offset, len)))), Some((next, more))) = (runs.last_mut(), slice)
                && *last_path == path
                && *offset + *len == next
            {
                *len += more;
                continue;
            }
            runs.push((path, slice));
        }
        let mut out: Option<DataFrame> = None;
        for (path, slice) in &runs {
            let frame = read_rows(path, *slice)?;
            match out.as_mut() {
                None => out = Some(frame),
                Some(all) => {
                    all.vstack_mut_owned(frame).map_err(polars_err(path))?;
                }
            }
        }
        Ok(out)
    }

    /// Per-metric totals, from the catalog (and version-1 files' footers).
    pub fn summary(&self, catalog: &Catalog) -> Result<Vec<MetricSummary>, StoreError> {
        let mut out = Vec::new();
        for metric in Metric::ALL {
            let days = catalog.partitions.get(&metric);
            let mut rows = 0;
            let mut files = BTreeSet::new();
            for (day, entry) in days.into_iter().flatten() {
                let p = self.day_file(metric, *day, entry);
                rows += match entry.slice() {
                    Some((_, n)) => n,
                    None => ParquetReader::new(std::fs::File::open(&p).map_err(io_err(&p))?)
                        .num_rows()
                        .map_err(polars_err(&p))?,
                };
                files.insert(p);
            }
            let mut bytes = 0;
            for p in &files {
                bytes += std::fs::metadata(p).map_err(io_err(p))?.len();
            }
            out.push(MetricSummary {
                metric,
                days: days.map_or(0, BTreeMap::len),
                first_day: days.and_then(|d| d.keys().next().copied()),
                last_day: days.and_then(|d| d.keys().next_back().copied()),
                rows,
                bytes,
            });
        }
        Ok(out)
    }

    /// Every file and its bytes under the store, for tests that check the
    /// store is unchanged.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.file_name().is_some_and(|n| n != ".lock" && n != ".readers") {
                    out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &mut out);
        out
    }

    /// The set of days stored for a metric.
    pub fn days(catalog: &Catalog, metric: Metric) -> BTreeSet<NaiveDate> {
        catalog
            .partitions
            .get(&metric)
            .map(|d| d.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// Rows `slice` (offset, length) of a Parquet file, or all of it; row
/// groups outside the slice are not decoded.
fn read_rows(path: &Path, slice: Option<(usize, usize)>) -> Result<DataFrame, StoreError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    ParquetReader::new(file)
        .with_slice(slice)
        .finish()
        .map_err(polars_err(path))
}

impl DayRows {
    /// The run of rows to read from the file (`None`: the whole file).
    fn slice(&self) -> Option<(usize, usize)> {
        match self {
            DayRows::Run { offset, rows, .. } => Some((*offset, *rows)),
            DayRows::DayFile(_) => None,
        }
    }
}

/// One file of a commit: the days of one calendar month, in order.
struct MonthFile {
    name: String,
    path: PathBuf,
    days: Vec<(NaiveDate, DataFrame)>,
}

/// Writes each month's file, on one thread per core.
fn write_months(months: &mut [MonthFile]) -> Result<(), StoreError> {
    crate::util::on_threads("ingest-write", months.iter_mut().collect(), |m| {
        let mut frames: Vec<&mut DataFrame> = m.days.iter_mut().map(|(_, f)| f).collect();
        std::fs::File::create(&m.path)
            .and_then(|mut f| table::write_row_groups(&mut frames, &mut f).map_err(std::io::Error::other))
            .map_err(io_err(&m.path))
    })
    .into_iter()
    .collect()
}

/// "bin_start=2025-03-14T10:00:00Z" for the first row of a key frame.
///
/// Only the time keys are named, never a cell, origin or group: a
/// re-delivery whose columns are swapped can pass validation when cell ids
/// are numbers (a count of 101 in `cell_id` is cell 101), and the message
/// would then print a count. A timestamp column cannot hold one, since a
/// count does not parse as a timestamp.
fn describe_key(df: &DataFrame, metric: Metric) -> String {
    let mut parts = Vec::new();
    for c in metric.key_columns() {
        let Ok(col) = df.column(c) else { continue };
        let text = match col.dtype() {
            DataType::Datetime(_, _) => col
                .as_materialized_series()
                .to_physical_repr()
                .i64()
                .ok()
                .and_then(|v| v.get(0))
                .and_then(DateTime::<Utc>::from_timestamp_micros)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            DataType::Date => col
                .as_materialized_series()
                .to_physical_repr()
                .i32()
                .ok()
                .and_then(|v| v.get(0))
                .and_then(|d| NaiveDate::from_num_days_from_ce_opt(d + 719_163))
                .map(|d| d.to_string()),
            _ => None,
        };
        if let Some(t) = text {
            parts.push(format!("{c}={t}"));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: &str) -> NaiveDate {
        d.parse().expect("date")
    }

    /// Footfall rows of one day: `cells` cells × 2 bins, each counting `devices`.
    fn rows(d: &str, cells: u32, devices: u32) -> DataFrame {
        let start = day(d)
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros();
        let (mut ids, mut bins, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..cells {
            for b in 0..2i64 {
                ids.push(format!("C{c}"));
                bins.push(start + b * 3_600_000_000);
                counts.push(devices);
            }
        }
        df!("cell_id" => ids, "bin_start" => bins, "devices" => counts).expect("frame")
    }

    fn delivery(name: &str, days: &DayFrames, correction: bool) -> Delivery {
        Delivery {
            sha256: name.into(),
            file_name: name.into(),
            metric: Metric::Footfall,
            rows: days.values().map(DataFrame::height).sum(),
            first_day: *days.keys().next().expect("a day"),
            last_day: *days.keys().next_back().expect("a day"),
            days: days.len(),
            correction,
            replaced_rows: 0,
            ingested_at: Utc::now(),
            generation: 0,
        }
    }

    fn commit(store: &CountStore, days: &[(&str, u32, u32)], correction: bool) -> CommitSummary {
        let _lock = store.lock().expect("lock");
        let catalog = store.catalog().expect("catalog");
        store.recover(&catalog).expect("recover");
        let frames: DayFrames = days.iter().map(|(d, c, n)| (day(d), rows(d, *c, *n))).collect();
        let name = format!("{days:?}{correction}");
        let d = delivery(&name, &frames, correction);
        store.commit(&catalog, Metric::Footfall, frames, d).expect("commit")
    }

    fn devices(df: &DataFrame) -> Vec<u32> {
        df.column("devices")
            .expect("devices")
            .u32()
            .expect("u32")
            .into_no_null_iter()
            .collect()
    }

    fn files(store: &CountStore) -> Vec<String> {
        store
            .snapshot()
            .into_keys()
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .map(|p| p.strip_prefix(store.root()).expect("under root").display().to_string())
            .collect()
    }

    #[test]
    fn a_delivery_writes_a_file_per_month_and_reads_back_by_day_and_range() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = CountStore::new(tmp.path(), "t");
        let days = [("2025-03-30", 3, 1), ("2025-03-31", 2, 2), ("2025-04-01", 4, 3)];
        commit(&store, &days, false);
        assert_eq!(
            files(&store),
            ["footfall/g000001-2025-03.parquet", "footfall/g000001-2025-04.parquet"]
        );
        let catalog = store.catalog().expect("catalog");
        assert_eq!(catalog.version, CATALOG_VERSION);
        for (d, cells, n) in days {
            let got = store
                .read_day(&catalog, Metric::Footfall, day(d))
                .expect("read")
                .expect("day");
            assert_eq!(devices(&got), vec![n; 2 * cells as usize], "{d}");
        }
        let all = store
            .read_range(&catalog, Metric::Footfall, day("2025-03-01"), day("2025-04-30"))
            .expect("range")
            .expect("rows");
        assert_eq!(devices(&all), [vec![1; 6], vec![2; 4], vec![3; 8]].concat());
        let last_two = store
            .read_range(&catalog, Metric::Footfall, day("2025-03-31"), day("2025-04-01"))
            .expect("range")
            .expect("rows");
        assert_eq!(devices(&last_two), [vec![2; 4], vec![3; 8]].concat());
        let summary = store.summary(&catalog).expect("summary");
        assert_eq!((summary[0].days, summary[0].rows), (3, 18));
    }

    #[test]
    fn a_correction_mid_month_is_read_instead_of_the_rows_it_replaced() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = CountStore::new(tmp.path(), "t");
        let days: Vec<(&str, u32, u32)> = ["2025-05-01", "2025-05-02", "2025-05-03", "2025-05-04"]
            .into_iter()
            .map(|d| (d, 2, 1))
            .collect();
        commit(&store, &days, false);
        // Day 2 corrected: its rows in the first file are no longer the
        // day's, and a range read must skip them although they lie between
        // days 1 and 3 there.
        let s = commit(&store, &[("2025-05-02", 2, 9)], true);
        assert_eq!((s.rows_replaced, s.rows_added), (4, 0));
        let catalog = store.catalog().expect("catalog");
        let all = store
            .read_range(&catalog, Metric::Footfall, day("2025-05-01"), day("2025-05-04"))
            .expect("range")
            .expect("rows");
        assert_eq!(devices(&all), [vec![1; 4], vec![9; 4], vec![1; 8]].concat());
        // The first file still holds days 1, 3 and 4: it stays.
        assert_eq!(
            files(&store),
            ["footfall/g000001-2025-05.parquet", "footfall/g000002-2025-05.parquet"]
        );
        assert_eq!(store.recover(&catalog).expect("recover"), 0);
        // Once no day points into it, it goes with the commit.
        commit(
            &store,
            &[("2025-05-01", 2, 5), ("2025-05-03", 2, 5), ("2025-05-04", 2, 5)],
            true,
        );
        assert_eq!(
            files(&store),
            ["footfall/g000002-2025-05.parquet", "footfall/g000003-2025-05.parquet"]
        );
    }

    #[test]
    fn a_version_1_store_is_read_and_its_day_files_retire_as_days_are_rewritten() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = CountStore::new(tmp.path(), "t");
        let mut v1 = Catalog {
            version: 1,
            generation: 1,
            ..Catalog::default()
        };
        for (d, n) in [("2025-03-12", 4), ("2025-03-13", 5)] {
            let dir = store.root().join("footfall").join(format!("date={d}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let mut f = std::fs::File::create(dir.join("g000001.parquet")).expect("create");
            table::write_parquet(&mut rows(d, 2, n), &mut f).expect("write");
            v1.partitions
                .entry(Metric::Footfall)
                .or_default()
                .insert(day(d), DayRows::DayFile("g000001.parquet".into()));
        }
        // As version 1 wrote it: plain file names.
        let text = serde_json::to_string(&v1).expect("json");
        assert!(text.contains(r#""2025-03-12":"g000001.parquet""#), "{text}");
        std::fs::write(store.root().join("catalog.json"), text).expect("catalog");

        let catalog = store.catalog().expect("a version-1 catalog is read");
        let range = store
            .read_range(&catalog, Metric::Footfall, day("2025-03-12"), day("2025-03-13"))
            .expect("range")
            .expect("rows");
        assert_eq!(devices(&range), [vec![4; 4], vec![5; 4]].concat());
        assert_eq!(store.summary(&catalog).expect("summary")[0].rows, 8);

        commit(&store, &[("2025-03-12", 2, 7)], true);
        let catalog = store.catalog().expect("catalog");
        assert_eq!(catalog.version, CATALOG_VERSION);
        assert_eq!(
            files(&store),
            [
                "footfall/date=2025-03-13/g000001.parquet",
                "footfall/g000002-2025-03.parquet"
            ]
        );
        assert!(
            !store.root().join("footfall/date=2025-03-12").exists(),
            "the emptied day folder goes"
        );
        let range = store
            .read_range(&catalog, Metric::Footfall, day("2025-03-12"), day("2025-03-13"))
            .expect("range")
            .expect("rows");
        assert_eq!(devices(&range), [vec![7; 4], vec![5; 4]].concat());
    }
}
