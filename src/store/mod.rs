//! The count store: validated operator counts, as Parquet partitioned by
//! the grid's local day.
//!
//! ```text
//! <data-dir>/store/<dataset>/
//!   catalog.json                         the commit point (see below)
//!   .lock                                held by every writer
//!   footfall/date=2025-03-14/g000007.parquet
//!   flows/date=2025-03-14/g000007.parquet
//! ```
//!
//! Each day of each metric is one Parquet file; an ingest that touches a
//! day writes a new version of that day's file (old rows + new rows) under a
//! new generation name, then atomically replaces `catalog.json`, which names
//! the current file of every day. Readers only follow the catalog, so a crash
//! before the catalog is replaced leaves the store exactly as it was; the
//! orphaned files are deleted by the next writer ([`CountStore::recover`]).
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

/// Store schema version written in `catalog.json`.
pub const CATALOG_VERSION: u32 = 1;

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
    /// metric → day → file name (relative to `<metric>/date=<day>/`).
    pub partitions: BTreeMap<Metric, BTreeMap<NaiveDate, String>>,
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
                if c.version != CATALOG_VERSION {
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

    /// Path of one day's current file.
    pub fn day_path(&self, catalog: &Catalog, metric: Metric, day: NaiveDate) -> Option<PathBuf> {
        catalog
            .partitions
            .get(&metric)
            .and_then(|days| days.get(&day))
            .map(|f| self.partition_dir(metric, day).join(f))
    }

    fn partition_dir(&self, metric: Metric, day: NaiveDate) -> PathBuf {
        self.root.join(metric.as_str()).join(format!("date={day}"))
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
        // Superseded day files may still be read under an older catalog.
        let Some(_no_readers) = self.no_readers()? else {
            return Ok(removed);
        };
        for metric in Metric::ALL {
            let mdir = self.root.join(metric.as_str());
            let Ok(days) = std::fs::read_dir(&mdir) else { continue };
            for day_entry in days.flatten() {
                let dpath = day_entry.path();
                let current = day_entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("date="))
                    .and_then(|d| d.parse::<NaiveDate>().ok())
                    .and_then(|d| catalog.partitions.get(&metric)?.get(&d).cloned());
                let Ok(files) = std::fs::read_dir(&dpath) else { continue };
                for f in files.flatten() {
                    if current.as_deref() != f.file_name().to_str() {
                        std::fs::remove_file(f.path()).map_err(io_err(&f.path()))?;
                        removed += 1;
                    }
                }
                if current.is_none() {
                    std::fs::remove_dir(&dpath).map_err(io_err(&dpath))?;
                }
            }
        }
        Ok(removed)
    }

    /// Reads one day's stored rows.
    pub fn read_day(&self, catalog: &Catalog, metric: Metric, day: NaiveDate) -> Result<Option<DataFrame>, StoreError> {
        match self.day_path(catalog, metric, day) {
            None => Ok(None),
            Some(p) => table::read_parquet(&p).map(Some).map_err(polars_err(&p)),
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
            let path = self.day_path(catalog, metric, day).unwrap_or_default();
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

        // Second pass: write the new day files under a fresh generation.
        let generation = catalog.generation + 1;
        let file_name = format!("g{generation:06}.parquet");
        let mut next = catalog.clone();
        next.generation = generation;
        let mut rows_added = 0;
        // Day files go straight to their final names: until the catalog
        // below names them they belong to no generation, and a crash leaves
        // them to `recover`. They are made durable together, with one
        // syncfs, before the catalog commits: a per-file fsync (and a
        // directory fsync per day) made ingest slower the more days a
        // delivery spans.
        // Days are written in parallel: with thousands of small days the
        // per-file work (encoding, compression, open and close) is what
        // an ingest of years spends its time on.
        let written: Vec<PathBuf> = merged
            .iter()
            .map(|(day, _)| self.partition_dir(metric, *day).join(&file_name))
            .collect();
        let wrote = write_days(&mut merged, &written)
            .and_then(|()| util::sync_filesystem(&self.root).map_err(io_err(&self.root)));
        if let Err(e) = wrote {
            // A full disk or an I/O error: nothing of this commit stays
            // (files never created are simply not there to remove).
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        for (day, frame) in &merged {
            rows_added += frame.height();
            next.partitions
                .entry(metric)
                .or_default()
                .insert(*day, file_name.clone());
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
        // The day files this commit superseded are garbage now, unless a
        // reader still follows the old catalog; a crash or a reader here
        // only delays their removal to a later writer's `recover`.
        let Some(_no_readers) = self.no_readers()? else {
            return Ok(CommitSummary {
                generation,
                days_written,
                rows_added: rows_added - replaced,
                rows_replaced: replaced,
            });
        };
        for (day, new_file) in next.partitions.get(&metric).into_iter().flatten() {
            if let Some(old) = self.day_path(catalog, metric, *day)
                && old.file_name().and_then(|n| n.to_str()) != Some(new_file.as_str())
            {
                std::fs::remove_file(&old).map_err(io_err(&old))?;
            }
        }
        Ok(CommitSummary {
            generation,
            days_written,
            rows_added: rows_added - replaced,
            rows_replaced: replaced,
        })
    }

    /// Lazily scans every stored day of `metric` in `[from, to]` (inclusive).
    pub fn scan(
        &self,
        catalog: &Catalog,
        metric: Metric,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<LazyFrame>, StoreError> {
        let paths: Vec<PathBuf> = catalog
            .partitions
            .get(&metric)
            .into_iter()
            .flat_map(|days| days.range(from..=to))
            .map(|(day, f)| self.partition_dir(metric, *day).join(f))
            .collect();
        if paths.is_empty() {
            return Ok(None);
        }
        let frames = paths
            .iter()
            .map(|p| {
                LazyFrame::scan_parquet(PlRefPath::new(p.to_string_lossy().as_ref()), ScanArgsParquet::default())
                    .map_err(polars_err(p))
            })
            .collect::<Result<Vec<_>, _>>()?;
        concat(frames, UnionArgs::default())
            .map(Some)
            .map_err(polars_err(&self.root))
    }

    /// Per-metric totals, from the catalog and Parquet footers only.
    pub fn summary(&self, catalog: &Catalog) -> Result<Vec<MetricSummary>, StoreError> {
        let mut out = Vec::new();
        for metric in Metric::ALL {
            let days = catalog.partitions.get(&metric);
            let mut rows = 0;
            let mut bytes = 0;
            for (day, f) in days.into_iter().flatten() {
                let p = self.partition_dir(metric, *day).join(f);
                let mut reader = ParquetReader::new(std::fs::File::open(&p).map_err(io_err(&p))?);
                rows += reader.num_rows().map_err(polars_err(&p))?;
                bytes += std::fs::metadata(&p).map_err(io_err(&p))?.len();
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

/// "cell_id=X, bin_start=2025-03-14T10:00:00Z" for the first row of a key
/// frame; never includes a count.
/// Writes each day's frame to its path, on one thread per core. The
/// threads get a large stack: polars' Parquet writer recurses deeper than
/// a spawned thread's default 2 MiB allows in a debug build.
fn write_days(days: &mut [(NaiveDate, DataFrame)], paths: &[PathBuf]) -> Result<(), StoreError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(days.len())
        .max(1);
    let chunk = days.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        for (frames, paths) in days.chunks_mut(chunk).zip(paths.chunks(chunk)) {
            let spawned = std::thread::Builder::new()
                .name("ingest-write".into())
                .stack_size(64 << 20)
                .spawn_scoped(scope, move || {
                    for ((_, frame), path) in frames.iter_mut().zip(paths) {
                        let dir = path.parent().unwrap_or(path);
                        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                        std::fs::File::create(path)
                            .and_then(|mut f| table::write_parquet(frame, &mut f).map_err(std::io::Error::other))
                            .map_err(io_err(path))?;
                    }
                    Ok(())
                })
                .map_err(io_err(&paths[0]))?;
            handles.push(spawned);
        }
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

fn describe_key(df: &DataFrame, metric: Metric) -> String {
    let mut parts = Vec::new();
    for c in metric.key_columns() {
        let Ok(col) = df.column(c) else { continue };
        let text = match col.dtype() {
            DataType::String => col.str().ok().and_then(|s| s.get(0)).map(str::to_string),
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
