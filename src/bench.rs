//! `hexflow bench`: the figures the foundation is judged by.
//!
//! On a simulated month of a grid (≥ 500,000 footfall rows for Marseille):
//! ingest throughput from CSV and from Parquet, and in the same run polars'
//! plain read of the same files, so the ratio shows what validation and the
//! store cost on top of parsing; then the time to build W at the given
//! resolutions (no cache). Figures are printed, never asserted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::grid::Grid;
use crate::grid::weights::WeightMatrix;
use crate::ingest::{IngestOptions, Ingestor};
use crate::policy::Policy;
use crate::simulate::{self, Format};
use crate::table;

/// One throughput figure.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub what: String,
    pub rows: usize,
    pub seconds: f64,
    pub rows_per_s: f64,
}

/// Everything `hexflow bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub grid: String,
    pub month: String,
    pub cells: usize,
    pub threads: usize,
    pub throughput: Vec<Throughput>,
    /// Ingest time over plain read time, per format.
    pub ingest_over_scan_csv: f64,
    pub ingest_over_scan_parquet: f64,
    pub weights: Vec<WeightTiming>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightTiming {
    pub res: u8,
    pub seconds: f64,
    pub cells: usize,
    pub hexes_in_area: usize,
    pub entries: usize,
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

fn throughput(what: &str, rows: usize, seconds: f64) -> Throughput {
    Throughput {
        what: what.to_string(),
        rows,
        seconds,
        rows_per_s: rows as f64 / seconds.max(1e-9),
    }
}

/// Runs every measurement in a temporary directory.
pub fn run(grid_dir: &Path, month: NaiveDate, resolutions: &[u8]) -> Result<BenchReport> {
    let grid = Grid::load(grid_dir)?;
    let tmp = tempdir()?;
    let first = month.with_day(1).context("bad month")?;
    let last = first
        .checked_add_months(chrono::Months::new(1))
        .and_then(|d| d.pred_opt())
        .context("bad month")?;
    let mut throughput_rows = Vec::new();
    let mut ratios = [0.0; 2];
    for (k, format) in [Format::Csv, Format::Parquet].into_iter().enumerate() {
        let out = tmp.join(format!("deliveries-{k}"));
        let report = simulate::simulate(&grid, first, last, &out, format, 7, None)?;
        let file: PathBuf = report
            .files
            .iter()
            .find(|f| f.metric == crate::store::Metric::Footfall)
            .map(|f| f.path.clone())
            .context("no footfall file simulated")?;
        let name = match format {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        };
        let (rows, scan_s) = timed(|| {
            let df = match format {
                Format::Csv => table::read_csv_as_strings(&file)?,
                Format::Parquet => table::read_parquet(&file)?,
            };
            Ok(df.height())
        })?;
        throughput_rows.push(throughput(&format!("polars plain read ({name})"), rows, scan_s));
        // The shipped policy's limits would refuse nothing here; a private
        // copy under a bench dataset name keeps the bench out of real stores.
        let policy_path = tmp.join(format!("bench-{name}.toml"));
        let grid_abs = std::fs::canonicalize(grid_dir)?;
        std::fs::write(
            &policy_path,
            bench_policy(&format!("bench-{name}"), &grid_abs, &grid.spec.timezone),
        )?;
        let policy = Policy::load(&policy_path)?;
        let data_dir = tmp.join(format!("data-{k}"));
        let ingestor = Ingestor::new(policy, &data_dir)?;
        let (_, ingest_s) = timed(|| Ok(ingestor.ingest(&file, IngestOptions::default())?))?;
        throughput_rows.push(throughput(&format!("hexflow ingest ({name})"), rows, ingest_s));
        ratios[k] = ingest_s / scan_s.max(1e-9);
    }
    let mut weights = Vec::new();
    for &res in resolutions {
        let r = grid.resolution(res)?;
        let ((m, s), seconds) = timed(|| Ok(WeightMatrix::build(&grid, r)?))?;
        weights.push(WeightTiming {
            res,
            seconds,
            cells: s.cells_with_weights,
            hexes_in_area: m.hexes.len(),
            entries: m.entries.len(),
        });
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(BenchReport {
        grid: grid.name().to_string(),
        month: first.format("%Y-%m").to_string(),
        cells: grid.cells.len(),
        threads: rayon::current_num_threads(),
        throughput: throughput_rows,
        ingest_over_scan_csv: ratios[0],
        ingest_over_scan_parquet: ratios[1],
        weights,
    })
}

fn bench_policy(dataset: &str, grid: &Path, tz: &str) -> String {
    format!(
        r#"dataset = "{dataset}"
grid = {grid:?}
timezone = "{tz}"
[ingest]
max_devices_per_cell_bin = 1000000
max_trips_per_pair_bin = 1000000
earliest_day = "2000-01-01"
[privacy]
unit = "device-day"
max_cells_per_bin = 1
max_bins_per_day = 24
max_trips_per_day = 4
delta = 1e-7
rho_per_day_cap = 1.0
display_threshold = 10.0
[audiences.public]
rho_per_day = 0.5
finest_res = 8
shortest_bin = "1h"
min_delay_days = 0
[audiences.planners]
rho_per_day = 0.5
finest_res = 9
shortest_bin = "1h"
min_delay_days = 0
[audiences.tourism]
rho_per_day = 0.5
finest_res = 8
shortest_bin = "1d"
min_delay_days = 0
"#
    )
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hexflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Prints the report as a table.
pub fn print(r: &BenchReport) {
    out!(
        "hexflow bench — grid {}, month {}, {} cells, {} threads",
        r.grid,
        r.month,
        r.cells,
        r.threads
    );
    for t in &r.throughput {
        out!(
            "  {:<28} {:>9} rows {:>8.3} s {:>12.0} rows/s",
            t.what,
            t.rows,
            t.seconds,
            t.rows_per_s
        );
    }
    out!(
        "  ingest / plain read: {:.1}× (CSV), {:.1}× (Parquet)",
        r.ingest_over_scan_csv,
        r.ingest_over_scan_parquet
    );
    for w in &r.weights {
        out!(
            "  weights r{}: {:.2} s for {} cells, {} hexes in area, {} non-zero weights",
            w.res,
            w.seconds,
            w.cells,
            w.hexes_in_area,
            w.entries
        );
    }
}
