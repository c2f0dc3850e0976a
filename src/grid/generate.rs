//! A deterministic generator of synthetic cell catalogues.
//!
//! `hexflow grid generate --grid DIR` places macro sites (three sectors
//! each) and omnidirectional small cells inside the study area, denser
//! where the grid's landmarks are, and writes `cells.csv`. The Marseille
//! catalogue in this repository was produced this way and committed as data;
//! the generator exists so that anyone can see, and redo, how it was made.

use std::fmt::Write as _;
use std::path::Path;

use geo::{BoundingRect, Contains, Distance, Haversine, Point};
use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus as StdRng};
use serde::Deserialize;

use super::catalogue::{Cell, derive_ranges};
use super::{Grid, GridError};
use crate::util;

/// `[generator]` in `grid.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    pub seed: u64,
    /// Three-sector macro sites.
    pub macro_sites: usize,
    /// Omnidirectional small cells, placed near busy landmarks.
    pub small_cells: usize,
    /// Prefix of site and cell ids (`MRS`).
    pub id_prefix: String,
    /// Site spacing where the density is highest / lowest (m).
    pub spacing_dense_m: f64,
    pub spacing_sparse_m: f64,
    /// Share of macro sites whose range is left empty in the catalogue (and
    /// so derived by hexflow from the neighbouring sites).
    #[serde(default)]
    pub derived_range_share: f64,
}

/// Landmark kinds that do not attract network build-out on their own.
const NO_SITES: &[&str] = &["calanque"];
/// Landmark kinds worth a small cell.
const SMALL_CELL_KINDS: &[&str] = &[
    "station",
    "stadium",
    "old_port",
    "market",
    "cruise_terminal",
    "centre",
    "landmark",
];

/// Generates a catalogue for `grid` (its `cells.csv` is ignored).
pub fn generate(grid: &Grid) -> Result<Vec<Cell>, GridError> {
    let spec = grid.spec.generator.clone().ok_or_else(|| GridError::Spec {
        path: grid.dir.join("grid.toml"),
        reason: "no [generator] section: this grid's catalogue is not synthetic".into(),
    })?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let bbox = grid.area.bounding_rect().ok_or_else(|| GridError::InvalidFile {
        path: grid.dir.join(&grid.spec.study_area),
        reason: "empty study area".into(),
    })?;
    let attractors: Vec<_> = grid
        .landmarks
        .iter()
        .filter(|l| !NO_SITES.contains(&l.kind.as_str()))
        .collect();
    let density = |p: Point<f64>| -> f64 {
        attractors
            .iter()
            .map(|l| {
                let d = Haversine.distance(p, Point::new(l.lon, l.lat));
                let r = 2.0 * l.radius_m;
                l.weight * (-(d * d) / (2.0 * r * r)).exp()
            })
            .sum::<f64>()
    };
    let max_density = attractors
        .iter()
        .map(|l| density(Point::new(l.lon, l.lat)))
        .fold(1e-12, f64::max);

    let mut sites: Vec<Point<f64>> = Vec::new();
    let mut site_density: Vec<f64> = Vec::new();
    let mut attempts = 0usize;
    while sites.len() < spec.macro_sites && attempts < 2_000_000 {
        attempts += 1;
        let p = Point::new(
            rng.random_range(bbox.min().x..bbox.max().x),
            rng.random_range(bbox.min().y..bbox.max().y),
        );
        if !grid.area.contains(&p) {
            continue;
        }
        let dn = (density(p) / max_density).min(1.0);
        if rng.random::<f64>() > 0.04 + 0.96 * dn.sqrt() {
            continue;
        }
        let spacing = spec.spacing_dense_m + (spec.spacing_sparse_m - spec.spacing_dense_m) * (1.0 - dn.sqrt()).powi(2);
        if sites.iter().any(|s| Haversine.distance(*s, p) < spacing) {
            continue;
        }
        sites.push(p);
        site_density.push(dn);
    }
    // Sort sites west→east within south→north bands, so ids read like a map.
    let mut order: Vec<usize> = (0..sites.len()).collect();
    let band = |p: &Point<f64>| ((p.y() * 50.0) as i64, p.x().to_bits());
    order.sort_by_key(|i| band(&sites[*i]));
    let sites: Vec<Point<f64>> = order.iter().map(|i| sites[*i]).collect();
    let site_density: Vec<f64> = order.iter().map(|i| site_density[*i]).collect();

    let mut cells = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        let site_id = format!("{}{:04}", spec.id_prefix, i + 1);
        let rotation = rng.random_range(0.0..120.0f64);
        let narrow = rng.random::<f64>() < 0.2;
        for k in 0..3 {
            cells.push(Cell {
                cell_id: format!("{site_id}-{}", k + 1),
                site_id: site_id.clone(),
                lat: round6(s.y()),
                lon: round6(s.x()),
                azimuth_deg: Some(((rotation + 120.0 * k as f64) % 360.0).round()),
                beamwidth_deg: if narrow { 90.0 } else { 120.0 },
                range_m: f64::NAN,
                range_derived: true,
            });
        }
    }
    derive_ranges(&mut cells);
    // Planned ranges vary around the rule of thumb; some are left empty so
    // the catalogue exercises hexflow's own derivation.
    let mut rng_ranges = StdRng::seed_from_u64(spec.seed ^ 0x5eed);
    // Sites on the hills and in the Calanques are planned for reach, not
    // capacity: their sectors carry further than the rule of thumb.
    let mut by_site: std::collections::HashMap<String, (bool, f64)> = std::collections::HashMap::new();
    for (i, c) in cells.iter_mut().enumerate() {
        let reach = 1.0 + 0.9 * (1.0 - site_density[i / 3].sqrt());
        let (derived, jitter) = *by_site.entry(c.site_id.clone()).or_insert_with(|| {
            (
                rng_ranges.random::<f64>() < spec.derived_range_share,
                reach * rng_ranges.random_range(0.85..1.2),
            )
        });
        c.range_derived = derived;
        if !derived {
            c.range_m = (c.range_m * jitter / 10.0).round() * 10.0;
        }
    }

    let hot: Vec<_> = grid
        .landmarks
        .iter()
        .filter(|l| SMALL_CELL_KINDS.contains(&l.kind.as_str()))
        .collect();
    for k in 0..spec.small_cells.min(hot.len() * 4) {
        let l = hot[k % hot.len()];
        let site_id = format!("{}S{:03}", spec.id_prefix, k + 1);
        let bearing = rng.random_range(0.0..360.0);
        let dist = rng.random_range(0.0..l.radius_m.min(400.0));
        let p = geo::Destination::destination(&Haversine, Point::new(l.lon, l.lat), bearing, dist);
        if !grid.area.contains(&p) {
            continue;
        }
        cells.push(Cell {
            cell_id: format!("{site_id}-0"),
            site_id,
            lat: round6(p.y()),
            lon: round6(p.x()),
            azimuth_deg: None,
            beamwidth_deg: 360.0,
            range_m: (rng.random_range(100.0..220.0f64) / 10.0).round() * 10.0,
            range_derived: false,
        });
    }
    Ok(cells)
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Writes a catalogue in the DESIGN.md format; derived ranges and default
/// beamwidths are written as empty fields, as an operator would.
pub fn write_cells(path: &Path, cells: &[Cell]) -> Result<(), GridError> {
    let mut out = String::from("cell_id,site_id,lat,lon,azimuth_deg,beamwidth_deg,range_m\n");
    for c in cells {
        let az = c.azimuth_deg.map(|a| format!("{a}")).unwrap_or_default();
        let bw = match c.azimuth_deg {
            Some(_) if c.beamwidth_deg != super::catalogue::DEFAULT_BEAMWIDTH_DEG => format!("{}", c.beamwidth_deg),
            _ => String::new(),
        };
        let range = if c.range_derived {
            String::new()
        } else {
            format!("{}", c.range_m)
        };
        let _ = writeln!(
            out,
            "{},{},{:.6},{:.6},{az},{bw},{range}",
            c.cell_id, c.site_id, c.lat, c.lon
        );
    }
    util::write_atomic(path, out.as_bytes()).map_err(|e| GridError::io(path, e))
}
