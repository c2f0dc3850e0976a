//! The cell→hex weight matrix W.
//!
//! `W[c][h] = area(coverage_c ∩ h) / area(coverage_c ∩ study area)`, with
//! areas in m² in the grid's equal-area projection. Each row sums to 1, so a
//! device counted once in one cell adds at most 1 in total to the hex
//! vector; ‖W_c‖₂ is what the hex placement's L2 sensitivity needs.
//!
//! W depends only on the public grid, so it is built once per grid and
//! resolution and cached under `<data-dir>/grids/<name>/<key>/`, where `key`
//! hashes every grid input and the algorithm version: editing the catalogue
//! makes a new key and therefore a rebuild.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use geo::{Area, BooleanOps, BoundingRect, Coord, Intersects, LineString, MultiPolygon, Polygon, Rect};
use h3o::geom::{ContainmentMode, TilerBuilder};
use h3o::{CellIndex, Resolution};
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::coverage::coverage_polygon;
use super::projection::Laea;
use super::{Grid, GridError};
use crate::{table, util};

/// Bumped whenever the computation changes, so caches are rebuilt.
pub const WEIGHTS_ALGO_VERSION: &str = "1";

/// Coverage smaller than this after clipping counts as outside the area (m²).
pub const MIN_COVERAGE_M2: f64 = 1.0;

/// One non-zero entry of W.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightEntry {
    /// Index into [`WeightMatrix::cell_ids`].
    pub cell: u32,
    /// Index into [`WeightMatrix::hexes`].
    pub hex: u32,
    pub weight: f64,
}

/// W for one grid and resolution, in sparse form.
#[derive(Debug, Clone)]
pub struct WeightMatrix {
    pub res: Resolution,
    /// Every cell of the catalogue, in catalogue order.
    pub cell_ids: Vec<String>,
    /// The public hex key set: every hex touching the study area, sorted.
    pub hexes: Vec<CellIndex>,
    /// Non-zero weights, sorted by cell then hex.
    pub entries: Vec<WeightEntry>,
}

/// min / median / max of a per-cell figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self {
                min: 0.0,
                median: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }
}

/// What `hexflow grid build` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightSummary {
    pub grid: String,
    pub res: u8,
    pub cells: usize,
    pub cells_with_weights: usize,
    /// Cells whose coverage does not reach the study area (no weights).
    pub cells_outside: Vec<String>,
    pub study_area_km2: f64,
    /// Size of the public hex key set.
    pub hexes_in_area: usize,
    /// Hexes with a non-zero weight from at least one cell.
    pub hexes_weighted: usize,
    pub hexes_per_cell: Spread,
    pub l2_norm_per_cell: Spread,
    /// Largest |Σ_h W[c][h] − 1| over cells, before final normalisation is
    /// reported in `max_area_gap`; after it this is the float residue.
    pub max_row_sum_error: f64,
    /// Largest relative gap between the clipped coverage area and the sum
    /// of its hex pieces (a check on the hex enumeration).
    pub max_area_gap: f64,
    pub build_s: f64,
    pub cache_key: String,
    #[serde(skip_deserializing)]
    pub cached: bool,
    #[serde(skip_deserializing)]
    pub cache_dir: PathBuf,
}

fn hex_polygon(laea: &Laea, hex: CellIndex) -> Polygon<f64> {
    let ring: Vec<Coord<f64>> = hex
        .boundary()
        .iter()
        .map(|ll| {
            laea.forward(Coord {
                x: ll.lng(),
                y: ll.lat(),
            })
        })
        .collect();
    Polygon::new(LineString::from(ring), vec![])
}

/// Hexes of `res` that touch any polygon of `mp` (degrees).
fn covering_hexes(mp: &MultiPolygon<f64>, res: Resolution) -> Result<BTreeSet<CellIndex>, String> {
    let mut tiler = TilerBuilder::new(res).containment_mode(ContainmentMode::Covers).build();
    for p in mp {
        tiler.add(p.clone()).map_err(|e| e.to_string())?;
    }
    Ok(tiler.into_coverage().collect())
}

/// Area pieces of one cell's clipped coverage on hexes.
struct CellRow {
    pieces: Vec<(CellIndex, f64)>,
    area_gap: f64,
}

fn cell_row(
    laea: &Laea,
    res: Resolution,
    coverage_deg: &MultiPolygon<f64>,
    area_m: &MultiPolygon<f64>,
) -> Result<Option<CellRow>, String> {
    let clipped = laea.multi_polygon(coverage_deg).intersection(area_m);
    let clipped_m2 = clipped.unsigned_area();
    if clipped_m2 < MIN_COVERAGE_M2 {
        return Ok(None);
    }
    let Some(bbox) = clipped.bounding_rect() else {
        return Ok(None);
    };
    let mut done: HashSet<CellIndex> = HashSet::new();
    let mut pieces = Vec::new();
    let mut todo: Vec<CellIndex> = covering_hexes(coverage_deg, res)?.into_iter().collect();
    let mut sum_m2 = 0.0;
    // The tiler works on the sphere with geodesic edges while areas are
    // measured with straight projected edges, so a sliver of coverage can
    // fall in a hex the tiler did not return. Each round looks at the ring
    // around the pieces found in the previous round, until a round finds no
    // new piece (normally the second).
    for round in 0..8 {
        let before = pieces.len();
        for hex in todo.drain(..) {
            if !done.insert(hex) {
                continue;
            }
            let poly = hex_polygon(laea, hex);
            let Some(hb) = poly.bounding_rect() else { continue };
            if !rects_overlap(&hb, &bbox) || !poly.intersects(&clipped) {
                continue;
            }
            let a = poly.intersection(&clipped).unsigned_area();
            if a > 0.0 {
                sum_m2 += a;
                pieces.push((hex, a));
            }
        }
        if pieces.len() == before && round > 0 {
            break;
        }
        todo = pieces[before..]
            .iter()
            .flat_map(|(h, _)| h.grid_disk::<Vec<_>>(1))
            .filter(|h| !done.contains(h))
            .collect();
        if todo.is_empty() {
            break;
        }
    }
    let area_gap = (sum_m2 - clipped_m2).abs() / clipped_m2;
    // Normalise by the sum of the pieces so each row sums to 1 to float
    // precision; `area_gap` reports how far that sum was from the clipped area.
    for p in &mut pieces {
        p.1 /= sum_m2;
    }
    pieces.sort_by_key(|p| p.0);
    Ok(Some(CellRow { pieces, area_gap }))
}

fn rects_overlap(a: &Rect<f64>, b: &Rect<f64>) -> bool {
    a.min().x <= b.max().x && b.min().x <= a.max().x && a.min().y <= b.max().y && b.min().y <= a.max().y
}

impl WeightMatrix {
    /// Builds W for `grid` at `res` (no cache).
    #[tracing::instrument(skip_all, fields(grid = %grid.name(), res = u8::from(res)))]
    pub fn build(grid: &Grid, res: Resolution) -> Result<(Self, WeightSummary), GridError> {
        let started = Instant::now();
        let laea = grid.projection();
        let area_m = laea.multi_polygon(&grid.area);
        let bad_geometry = |reason: String| GridError::InvalidFile {
            path: grid.dir.join(&grid.spec.study_area),
            reason,
        };
        let mut hex_set = covering_hexes(&grid.area, res).map_err(bad_geometry)?;

        let progress = crate::cli_progress(grid.cells.len() as u64, "weights");
        let rows: Vec<Result<Option<CellRow>, String>> = grid
            .cells
            .par_iter()
            .map(|cell| {
                let cov = coverage_polygon(cell, grid.coverage_overrides.get(&cell.cell_id));
                let row = cell_row(&laea, res, &cov, &area_m).map_err(|e| format!("cell {}: {e}", cell.cell_id));
                progress.inc(1);
                row
            })
            .collect();
        progress.finish_and_clear();

        let mut per_cell = Vec::with_capacity(rows.len());
        for row in rows {
            per_cell.push(row.map_err(|reason| GridError::InvalidFile {
                path: grid.dir.join("cells.csv"),
                reason,
            })?);
        }
        for row in per_cell.iter().flatten() {
            hex_set.extend(row.pieces.iter().map(|p| p.0));
        }
        let hexes: Vec<CellIndex> = hex_set.into_iter().collect();
        let hex_pos: HashMap<CellIndex, u32> = hexes.iter().enumerate().map(|(i, h)| (*h, i as u32)).collect();

        let mut entries = Vec::new();
        let mut cells_outside = Vec::new();
        let mut max_area_gap: f64 = 0.0;
        for (ci, (cell, row)) in grid.cells.iter().zip(&per_cell).enumerate() {
            match row {
                None => cells_outside.push(cell.cell_id.clone()),
                Some(row) => {
                    max_area_gap = max_area_gap.max(row.area_gap);
                    entries.extend(row.pieces.iter().map(|(h, w)| WeightEntry {
                        cell: ci as u32,
                        hex: hex_pos[h],
                        weight: *w,
                    }));
                }
            }
        }
        let matrix = Self {
            res,
            cell_ids: grid.cells.iter().map(|c| c.cell_id.clone()).collect(),
            hexes,
            entries,
        };
        let summary = matrix.summarise(grid, cells_outside, max_area_gap, started.elapsed().as_secs_f64());
        Ok((matrix, summary))
    }

    fn summarise(&self, grid: &Grid, cells_outside: Vec<String>, max_area_gap: f64, build_s: f64) -> WeightSummary {
        let rows = self.rows();
        let weighted: HashSet<u32> = self.entries.iter().map(|e| e.hex).collect();
        WeightSummary {
            grid: grid.name().to_string(),
            res: self.res.into(),
            cells: self.cell_ids.len(),
            cells_with_weights: rows.len(),
            cells_outside,
            study_area_km2: grid.area_m2() / 1e6,
            hexes_in_area: self.hexes.len(),
            hexes_weighted: weighted.len(),
            hexes_per_cell: Spread::of(rows.values().map(|r| r.len() as f64).collect()),
            l2_norm_per_cell: Spread::of(
                rows.values()
                    .map(|r| r.iter().map(|e| e.weight * e.weight).sum::<f64>().sqrt())
                    .collect(),
            ),
            max_row_sum_error: rows
                .values()
                .map(|r| (r.iter().map(|e| e.weight).sum::<f64>() - 1.0).abs())
                .fold(0.0, f64::max),
            max_area_gap,
            build_s,
            cache_key: String::new(),
            cached: false,
            cache_dir: PathBuf::new(),
        }
    }

    /// Entries grouped by cell index (cells without weights are absent).
    pub fn rows(&self) -> HashMap<u32, Vec<WeightEntry>> {
        let mut rows: HashMap<u32, Vec<WeightEntry>> = HashMap::new();
        for e in &self.entries {
            rows.entry(e.cell).or_default().push(*e);
        }
        rows
    }

    /// Builds W or loads it from the cache under `data_dir`.
    pub fn load_or_build(grid: &Grid, res: u8, data_dir: &Path) -> Result<(Self, WeightSummary), GridError> {
        let res = grid.resolution(res)?;
        let key = cache_key(grid)?;
        let dir = data_dir.join("grids").join(grid.name()).join(&key[..16]);
        let r: u8 = res.into();
        let paths = CachePaths {
            weights: dir.join(format!("weights-r{r}.parquet")),
            hexes: dir.join(format!("hexes-r{r}.parquet")),
            summary: dir.join(format!("summary-r{r}.json")),
        };
        if let Some((m, mut s)) = Self::read_cache(grid, res, &paths) {
            s.cached = true;
            s.cache_dir = dir;
            return Ok((m, s));
        }
        let (m, mut s) = Self::build(grid, res)?;
        s.cache_key = key;
        s.cache_dir = dir.clone();
        m.write_cache(&paths, &s)?;
        Ok((m, s))
    }

    fn write_cache(&self, paths: &CachePaths, summary: &WeightSummary) -> Result<(), GridError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e: std::io::Error| GridError::Io { path: p, source: e }
        };
        let hex_ids: Vec<String> = self.hexes.iter().map(|h| h.to_string()).collect();
        let mut df = df!(
            "cell_id" => self.entries.iter().map(|e| self.cell_ids[e.cell as usize].as_str()).collect::<Vec<_>>(),
            "hex_id" => self.entries.iter().map(|e| hex_ids[e.hex as usize].as_str()).collect::<Vec<_>>(),
            "weight" => self.entries.iter().map(|e| e.weight).collect::<Vec<_>>(),
        )
        .map_err(|source| GridError::Polars {
            path: paths.weights.clone(),
            source,
        })?;
        util::write_atomic_with(&paths.weights, |f| {
            table::write_parquet(&mut df, f).map_err(std::io::Error::other)
        })
        .map_err(io(&paths.weights))?;
        let mut hexes = df!("hex_id" => &hex_ids).map_err(|source| GridError::Polars {
            path: paths.hexes.clone(),
            source,
        })?;
        util::write_atomic_with(&paths.hexes, |f| {
            table::write_parquet(&mut hexes, f).map_err(std::io::Error::other)
        })
        .map_err(io(&paths.hexes))?;
        // The summary is written last: its presence marks a complete cache.
        let json = serde_json::to_vec_pretty(summary)
            .map_err(std::io::Error::other)
            .map_err(io(&paths.summary))?;
        util::write_atomic(&paths.summary, &json).map_err(io(&paths.summary))
    }

    /// Reads a complete cache; any problem means "rebuild" (the cache is
    /// derived data, never a source of truth).
    fn read_cache(grid: &Grid, res: Resolution, paths: &CachePaths) -> Option<(Self, WeightSummary)> {
        let summary: WeightSummary = serde_json::from_slice(&std::fs::read(&paths.summary).ok()?).ok()?;
        let hexes_df = table::read_parquet(&paths.hexes).ok()?;
        let hexes: Vec<CellIndex> = hexes_df
            .column("hex_id")
            .ok()?
            .str()
            .ok()?
            .iter()
            .map(|s| s?.parse().ok())
            .collect::<Option<_>>()?;
        let hex_pos: HashMap<CellIndex, u32> = hexes.iter().enumerate().map(|(i, h)| (*h, i as u32)).collect();
        let cell_pos = grid.cell_index();
        let df = table::read_parquet(&paths.weights).ok()?;
        let cells = df.column("cell_id").ok()?.str().ok()?.clone();
        let hex_col = df.column("hex_id").ok()?.str().ok()?.clone();
        let weights = df.column("weight").ok()?.f64().ok()?.clone();
        let mut entries = Vec::with_capacity(df.height());
        for ((c, h), w) in cells.iter().zip(hex_col.iter()).zip(weights.iter()) {
            let hex: CellIndex = h?.parse().ok()?;
            entries.push(WeightEntry {
                cell: *cell_pos.get(c?)? as u32,
                hex: *hex_pos.get(&hex)?,
                weight: w?,
            });
        }
        let matrix = Self {
            res,
            cell_ids: grid.cells.iter().map(|c| c.cell_id.clone()).collect(),
            hexes,
            entries,
        };
        Some((matrix, summary))
    }
}

struct CachePaths {
    weights: PathBuf,
    hexes: PathBuf,
    summary: PathBuf,
}

/// Hash of every input W depends on.
pub fn cache_key(grid: &Grid) -> Result<String, GridError> {
    let read = |p: PathBuf| -> Result<Vec<u8>, GridError> {
        match std::fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(GridError::io(&p, e)),
        }
    };
    let parts = [
        read(grid.dir.join("grid.toml"))?,
        read(grid.dir.join("cells.csv"))?,
        read(grid.dir.join(&grid.spec.study_area))?,
        read(grid.dir.join("coverage.geojson"))?,
        WEIGHTS_ALGO_VERSION.as_bytes().to_vec(),
    ];
    Ok(util::sha256_parts(parts.iter().map(|p| p.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::{Cell, GridSpec};
    use geo::polygon;
    use proptest::prelude::*;

    fn grid(cells: Vec<Cell>, area: MultiPolygon<f64>) -> Grid {
        Grid {
            dir: PathBuf::from("test"),
            spec: GridSpec {
                name: "t".into(),
                title: None,
                timezone: "Europe/Paris".into(),
                bin_len_s: 3600,
                study_area: PathBuf::from("area.geojson"),
                resolutions: vec![7, 8, 9],
                generator: None,
                simulation: None,
            },
            tz: chrono_tz::Europe::Paris,
            cells,
            area,
            coverage_overrides: HashMap::new(),
            landmarks: Vec::new(),
            zones: Vec::new(),
            holidays: Default::default(),
        }
    }

    fn square(lon0: f64, lat0: f64, lon1: f64, lat1: f64) -> MultiPolygon<f64> {
        MultiPolygon(vec![
            polygon![(x: lon0, y: lat0), (x: lon1, y: lat0), (x: lon1, y: lat1), (x: lon0, y: lat1)],
        ])
    }

    fn sector(id: &str, lat: f64, lon: f64, az: Option<f64>, bw: f64, range_m: f64) -> Cell {
        Cell {
            cell_id: id.into(),
            site_id: id.into(),
            lat,
            lon,
            azimuth_deg: az,
            beamwidth_deg: if az.is_some() { bw } else { 360.0 },
            range_m,
            range_derived: false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        // Each cell's weights are non-negative and sum to 1, whether its
        // coverage is inside the area, straddles its edge or is a disc.
        #[test]
        fn rows_are_non_negative_and_sum_to_one(
            cells in prop::collection::vec(
                (43.27f64..43.31, 5.36f64..5.41, prop::option::of(0.0f64..360.0), 30.0f64..180.0, 100.0f64..1500.0),
                1..5,
            ),
            res in 8u8..=9,
        ) {
            let cells: Vec<Cell> = cells
                .into_iter()
                .enumerate()
                .map(|(i, (lat, lon, az, bw, r))| sector(&format!("c{i}"), lat, lon, az, bw, r))
                .collect();
            let g = grid(cells, square(5.37, 43.28, 5.40, 43.30));
            let (m, s) = WeightMatrix::build(&g, Resolution::try_from(res).expect("res")).expect("build");
            prop_assert!(m.entries.iter().all(|e| e.weight > 0.0 && e.weight <= 1.0));
            for row in m.rows().values() {
                let sum: f64 = row.iter().map(|e| e.weight).sum();
                prop_assert!((sum - 1.0).abs() < 1e-9, "row sum {sum}");
                let l2 = row.iter().map(|e| e.weight * e.weight).sum::<f64>().sqrt();
                // ‖w‖₂ ≤ ‖w‖₁ = 1, and ≥ 1/√n.
                prop_assert!(l2 <= 1.0 + 1e-12 && l2 >= 1.0 / (row.len() as f64).sqrt() - 1e-12);
            }
            prop_assert!(s.max_area_gap < 1e-6, "area gap {}", s.max_area_gap);
            prop_assert_eq!(s.cells_with_weights + s.cells_outside.len(), s.cells);
        }

        // Hex ids travel as 15-character strings and come back unchanged.
        #[test]
        fn hex_ids_round_trip_as_strings(lat in -80.0f64..80.0, lng in -179.0f64..179.0, res in 0u8..=15) {
            let ll = h3o::LatLng::new(lat, lng).expect("latlng");
            let hex = ll.to_cell(Resolution::try_from(res).expect("res"));
            let s = hex.to_string();
            prop_assert_eq!(s.len(), 15);
            prop_assert_eq!(s.parse::<CellIndex>().expect("parse"), hex);
        }
    }

    #[test]
    fn a_cell_outside_the_area_is_reported_not_weighted() {
        let g = grid(
            vec![
                sector("in", 43.29, 5.385, None, 360.0, 300.0),
                sector("out", 43.20, 5.20, Some(0.0), 120.0, 500.0),
            ],
            square(5.37, 43.28, 5.40, 43.30),
        );
        let (m, s) = WeightMatrix::build(&g, Resolution::Eight).expect("build");
        assert_eq!(s.cells_outside, vec!["out".to_string()]);
        assert!(m.entries.iter().all(|e| e.cell == 0));
    }

    #[test]
    fn weights_follow_area_shares() {
        // A disc centred on a hex's centre, much smaller than the hex, puts
        // all its weight on that hex; the same disc clipped in half by the
        // study-area edge still sums to 1 over the hexes it touches.
        let centre = h3o::LatLng::new(43.29, 5.385).expect("ll").to_cell(Resolution::Seven);
        let c: h3o::LatLng = centre.into();
        let g = grid(
            vec![sector("d", c.lat(), c.lng(), None, 360.0, 200.0)],
            square(5.30, 43.20, 5.45, 43.35),
        );
        let (m, _) = WeightMatrix::build(&g, Resolution::Seven).expect("build");
        assert_eq!(m.entries.len(), 1);
        assert_eq!(m.hexes[m.entries[0].hex as usize], centre);
        assert!((m.entries[0].weight - 1.0).abs() < 1e-12);
    }

    #[test]
    fn explicit_coverage_overrides_the_sector_model() {
        let mut g = grid(
            vec![sector("x", 43.29, 5.385, Some(0.0), 120.0, 5000.0)],
            square(5.37, 43.28, 5.40, 43.30),
        );
        // A tiny square around a res-9 hex centre: one hex, weight 1.
        let hex = h3o::LatLng::new(43.285, 5.39).expect("ll").to_cell(Resolution::Nine);
        let c: h3o::LatLng = hex.into();
        let d = 0.0002;
        g.coverage_overrides
            .insert("x".into(), square(c.lng() - d, c.lat() - d, c.lng() + d, c.lat() + d));
        let (m, _) = WeightMatrix::build(&g, Resolution::Nine).expect("build");
        assert_eq!(m.entries.len(), 1);
        assert_eq!(m.hexes[m.entries[0].hex as usize], hex);
    }
}
