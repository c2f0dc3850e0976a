//! `hexflow bench --cells N`: the pipeline on a network of N cells.
//!
//! A synthetic national-style network: sites on a jittered lattice over a
//! square whose area grows with N, at the cell density of the reference
//! grid (`--grid`, Marseille by default), three sectors a site, square
//! zones of the reference grid's mean zone area. Then, each step timed
//! with its own peak memory (Linux's VmHWM, reset before the step): a week
//! simulated, its footfall ingested, the weights at res 8 and for the
//! zones, one hourly release at res 8 of one day and one daily zone
//! release. Figures are printed, never asserted.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use geo::Area;
use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus as StdRng};
use serde::Serialize;

use crate::grid::Grid;
use crate::grid::catalogue::Cell;
use crate::ingest::{IngestOptions, Ingestor};
use crate::policy::Policy;
use crate::privacy::Bin;
use crate::privacy::mechanism::Budget;
use crate::release::{ReleaseSpec, Releaser, Unit};
use crate::simulate::{self, Format};
use crate::store::Metric;

/// One step of the pipeline at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub what: String,
    pub seconds: f64,
    /// Peak resident memory during the step (MiB); null off Linux.
    pub peak_mib: Option<f64>,
    /// Rows, values or entries the step made, when it makes a count.
    pub count: Option<usize>,
}

/// The pipeline at one network size.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub cells: usize,
    pub area_km2: f64,
    pub zones: usize,
    pub devices: u32,
    pub steps: Vec<Step>,
}

/// The first Monday of the simulated week (a past week: every day is over).
const WEEK: (i32, u32, u32) = (2025, 3, 3);
const RES: u8 = 8;

/// Resets the process's peak-memory mark (VmHWM), where Linux allows it.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last reset (MiB).
fn peak_mib() -> Option<f64> {
    vm_hwm_mib(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The peak resident memory (MiB) a `/proc/PID/status` text states.
pub(crate) fn vm_hwm_mib(status: &str) -> Option<f64> {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn step<T>(
    what: &str,
    steps: &mut Vec<Step>,
    count: impl Fn(&T) -> Option<usize>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    reset_peak();
    let (v, seconds) = super::timed(f).with_context(|| what.to_string())?;
    steps.push(Step {
        what: what.to_string(),
        seconds,
        peak_mib: peak_mib(),
        count: count(&v),
    });
    Ok(v)
}

/// Density and shape of the reference grid: (cells per km², km² per zone,
/// devices per cell).
fn reference(grid: &Grid) -> (f64, f64, f64) {
    let [w, s, e, n] = crate::grid::bbox(&grid.area);
    let laea = crate::grid::projection::Laea::new(f64::midpoint(s, n), f64::midpoint(w, e));
    let km2 = laea.multi_polygon(&grid.area).unsigned_area() / 1e6;
    let cells = grid.cells.len().max(1) as f64;
    let zone_km2 = if grid.zones.is_empty() {
        15.0
    } else {
        km2 / grid.zones.len() as f64
    };
    let devices = grid
        .spec
        .simulation
        .as_ref()
        .and_then(|t| t.get("devices"))
        .and_then(toml::Value::as_integer)
        .map_or(100.0, |d| d as f64 / cells);
    (cells / km2, zone_km2, devices)
}

/// Writes a grid folder of about `n` cells; returns its path.
fn write_network(dir: &Path, n: usize, reference_grid: &Grid) -> Result<(PathBuf, f64, usize, u32)> {
    let (density, zone_km2, devices_per_cell) = reference(reference_grid);
    let km2 = n as f64 / density;
    let side_km = km2.sqrt();
    // Centred on France; degrees of a km at that latitude.
    let (lat0, lon0) = (46.5f64, 2.5f64);
    let (km_lat, km_lon) = (1.0 / 111.2, 1.0 / (111.2 * lat0.to_radians().cos()));
    let (w, s) = (lon0 - side_km / 2.0 * km_lon, lat0 - side_km / 2.0 * km_lat);
    let (e, north) = (lon0 + side_km / 2.0 * km_lon, lat0 + side_km / 2.0 * km_lat);
    let grid_dir = dir.join(format!("net-{n}"));
    std::fs::create_dir_all(&grid_dir)?;
    let square = |a: f64, b: f64, c: f64, d: f64| format!("[[[{a},{b}],[{c},{b}],[{c},{d}],[{a},{d}],[{a},{b}]]]");
    std::fs::write(
        grid_dir.join("area.geojson"),
        format!(
            r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{}},"geometry":{{"type":"Polygon","coordinates":{}}}}}]}}"#,
            square(w, s, e, north)
        ),
    )?;
    // Square zones tiling the area.
    let per_side = ((km2 / zone_km2).sqrt().round() as usize).max(1);
    let (dx, dy) = ((e - w) / per_side as f64, (north - s) / per_side as f64);
    let mut zones = Vec::new();
    for i in 0..per_side {
        for j in 0..per_side {
            let (a, b) = (w + i as f64 * dx, s + j as f64 * dy);
            zones.push(format!(
                r#"{{"type":"Feature","properties":{{"zone_id":"Z{i:03}-{j:03}","name":"zone {i}-{j}"}},"geometry":{{"type":"Polygon","coordinates":{}}}}}"#,
                square(a, b, a + dx, b + dy)
            ));
        }
    }
    std::fs::write(
        grid_dir.join("zones.geojson"),
        format!(r#"{{"type":"FeatureCollection","features":[{}]}}"#, zones.join(",")),
    )?;
    // Sites on a jittered lattice, three sectors each.
    let sites = n.div_ceil(3);
    let per_row = (sites as f64).sqrt().ceil() as usize;
    let step_km = side_km / per_row as f64;
    let mut rng = StdRng::seed_from_u64(n as u64);
    let mut cells: Vec<Cell> = Vec::with_capacity(sites * 3);
    for k in 0..sites {
        let (i, j) = (k % per_row, k / per_row);
        let x = (i as f64 + 0.5 + rng.random_range(-0.3..0.3)) * step_km;
        let y = (j as f64 + 0.5 + rng.random_range(-0.3..0.3)) * step_km;
        let rotation = rng.random_range(0.0..120.0f64);
        for sector in 0..3 {
            cells.push(Cell {
                cell_id: format!("N{k:06}-{}", sector + 1),
                site_id: format!("N{k:06}"),
                lat: s + y * km_lat,
                lon: w + x * km_lon,
                azimuth_deg: Some(((rotation + 120.0 * f64::from(sector)) % 360.0).round()),
                beamwidth_deg: 120.0,
                range_m: f64::NAN,
                range_derived: true,
            });
        }
    }
    crate::grid::catalogue::derive_ranges(&mut cells);
    let mut out = std::io::BufWriter::new(std::fs::File::create(grid_dir.join("cells.csv"))?);
    writeln!(out, "cell_id,site_id,lat,lon,azimuth_deg,beamwidth_deg,range_m")?;
    for c in &cells {
        writeln!(
            out,
            "{},{},{:.6},{:.6},{},{},{:.0}",
            c.cell_id,
            c.site_id,
            c.lat,
            c.lon,
            c.azimuth_deg.unwrap_or(0.0),
            c.beamwidth_deg,
            c.range_m
        )?;
    }
    out.flush()?;
    let devices = (devices_per_cell * cells.len() as f64).round() as u32;
    std::fs::write(
        grid_dir.join("grid.toml"),
        format!(
            "name = \"net-{n}\"\ntimezone = \"Europe/Paris\"\nbin_len_s = 3600\nstudy_area = \"area.geojson\"\nresolutions = [6, 7, 8, 9]\n\n[simulation]\ndevices = {devices}\ntourists_peak = 0\n"
        ),
    )?;
    Ok((grid_dir, km2, per_side * per_side, devices))
}

/// The pipeline at `n` cells, in a temporary folder under `tmp`.
pub fn run(tmp: &Path, n: usize, reference_grid: &Grid) -> Result<ScaleRun> {
    let mut steps = Vec::new();
    let (grid_dir, area_km2, zones, devices) = step(
        "write the network",
        &mut steps,
        |_| None,
        || write_network(tmp, n, reference_grid),
    )?;
    let grid = step(
        "load and check the grid",
        &mut steps,
        |g: &Grid| Some(g.cells.len()),
        || Ok(Grid::load(&grid_dir)?),
    )?;
    let (first, last) = (
        NaiveDate::from_ymd_opt(WEEK.0, WEEK.1, WEEK.2).context("week")?,
        NaiveDate::from_ymd_opt(WEEK.0, WEEK.1, WEEK.2 + 6).context("week")?,
    );
    let out = tmp.join(format!("deliveries-{n}"));
    let report = step(
        "simulate a week",
        &mut steps,
        |_| None,
        || Ok(simulate::simulate(&grid, first, last, &out, Format::Parquet, 7, None)?),
    )?;
    let footfall = report
        .files
        .iter()
        .find(|f| f.metric == Metric::Footfall)
        .map(|f| f.path.clone())
        .context("no footfall simulated")?;
    let policy_path = tmp.join(format!("net-{n}.toml"));
    std::fs::write(
        &policy_path,
        super::bench_policy(&format!("net-{n}"), &std::fs::canonicalize(&grid_dir)?, "Europe/Paris"),
    )?;
    let data_dir = tmp.join(format!("data-{n}"));
    let ingestor = Ingestor::new(Policy::load(&policy_path)?, &data_dir)?;
    step(
        "ingest the week's footfall (Parquet)",
        &mut steps,
        |r: &crate::ingest::FileReport| Some(r.rows),
        || Ok(ingestor.ingest(&footfall, IngestOptions::default())?),
    )?;
    let releaser = Releaser::new(Policy::load(&policy_path)?, &data_dir)?;
    step(
        "weights at res 8",
        &mut steps,
        |w: &std::sync::Arc<crate::release::Weights>| Some(w.entries.len()),
        || Ok(releaser.weights_for(Unit::Hex, RES)?),
    )?;
    step(
        "weights of the zones",
        &mut steps,
        |w: &std::sync::Arc<crate::release::Weights>| Some(w.entries.len()),
        || Ok(releaser.weights_for(Unit::Zone, 0)?),
    )?;
    let spec = |unit: Unit, res: u8, bin: Bin| ReleaseSpec {
        dataset: format!("net-{n}"),
        audience: crate::vocab::audience::PUBLIC.into(),
        metric: Metric::Footfall,
        unit,
        res,
        bin,
        period: None,
        by: None,
        from: first,
        to: first,
        budget: Budget::Rho(0.05),
    };
    let today = releaser.today();
    step(
        "one hourly release, res 8, one day",
        &mut steps,
        |o: &crate::release::Outcome| Some(o.manifest.values),
        || Ok(releaser.release(&spec(Unit::Hex, RES, Bin::Hour), today)?),
    )?;
    step(
        "one daily zone release",
        &mut steps,
        |o: &crate::release::Outcome| Some(o.manifest.values),
        || Ok(releaser.release(&spec(Unit::Zone, 0, Bin::Day), today)?),
    )?;
    Ok(ScaleRun {
        cells: grid.cells.len(),
        area_km2,
        zones,
        devices,
        steps,
    })
}

/// Prints the runs as one table per size.
pub fn print(runs: &[ScaleRun]) {
    for r in runs {
        out!(
            "hexflow bench --cells: {} cells over {:.0} km², {} zones, {} devices, one week",
            r.cells,
            r.area_km2,
            r.zones,
            r.devices
        );
        for s in &r.steps {
            out!(
                "  {:<40} {:>8.2} s  peak {:>8} MiB  {}",
                s.what,
                s.seconds,
                s.peak_mib.map_or("–".into(), |m| format!("{m:.0}")),
                s.count.map_or(String::new(), |c| format!("{c} made"))
            );
        }
    }
}
