//! The grid: a radio network (cell catalogue), its study area, its clock
//! (timezone and bin length) and the H3 resolutions it offers.
//!
//! A grid lives in one folder (`grids/<name>/`) that hexflow only reads:
//!
//! | file | holds |
//! | --- | --- |
//! | `grid.toml` | name, timezone, bin length, study area file, resolutions ([`GridSpec`]) |
//! | `cells.csv` | the cell catalogue ([`Cell`]) |
//! | `area.geojson` | the study area (land only), a (Multi)Polygon |
//! | `coverage.geojson` | optional explicit coverage polygons, property `cell_id` |
//! | `landmarks.csv` | optional named places (`name,kind,lat,lon,radius_m,weight`) |
//! | `zones.geojson` | optional named zones (districts), property `zone_id` and `name` |
//! | `holidays.csv` | optional public holidays (`date,name`), read by the forecast and seasonality views |
//!
//! Everything derived from a grid (coverage polygons, the cell→hex weight
//! matrix) depends on public network geometry only, never on counts.

pub mod catalogue;
pub mod coverage;
pub mod generate;
pub mod projection;
pub mod weights;
pub mod zones;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use geo::{Area, BoundingRect, MultiPolygon};
use h3o::Resolution;
use serde::Deserialize;

pub use catalogue::{Cell, Landmark};

/// Errors met while loading a grid folder or deriving geometry from it.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid grid description: {reason}")]
    Spec { path: PathBuf, reason: String },
    #[error("{path}, line {line}, column {column}: {reason}")]
    InvalidRow {
        path: PathBuf,
        line: usize,
        column: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
    #[error("resolution {res} is not offered by grid {grid} (offered: {offered:?})")]
    ResolutionNotOffered { grid: String, res: u8, offered: Vec<u8> },
    #[error("{path}: {source}")]
    Polars {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
}

impl GridError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `grid.toml`, as written by the grid's author.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// Short machine name, used in paths and ids (`marseille`).
    pub name: String,
    /// Human title for maps and manifests.
    #[serde(default)]
    pub title: Option<String>,
    /// IANA timezone that defines the local day (the privacy unit's day).
    pub timezone: String,
    /// Length of one operator bin in seconds (3600 for hourly counts).
    pub bin_len_s: u32,
    /// Study area file, relative to the grid folder.
    pub study_area: PathBuf,
    /// H3 resolutions offered to releases.
    pub resolutions: Vec<u8>,
    /// Parameters of `hexflow grid generate` (synthetic grids only).
    #[serde(default)]
    pub generator: Option<generate::GeneratorSpec>,
    /// Parameters of `hexflow simulate`, read by the simulation itself
    /// (kept raw here: the grid does not depend on the simulator).
    #[serde(default)]
    pub simulation: Option<toml::Table>,
}

/// `[min lon, min lat, max lon, max lat]` of an area (degrees).
pub fn bbox(area: &MultiPolygon<f64>) -> [f64; 4] {
    match area.bounding_rect() {
        Some(r) => [r.min().x, r.min().y, r.max().x, r.max().y],
        None => [0.0; 4],
    }
}

/// A loaded, validated grid.
#[derive(Debug, Clone)]
pub struct Grid {
    pub dir: PathBuf,
    pub spec: GridSpec,
    pub tz: Tz,
    pub cells: Vec<Cell>,
    /// Study area in WGS84 degrees (x = lon, y = lat).
    pub area: MultiPolygon<f64>,
    /// Explicit coverage polygons by cell id (degrees).
    pub coverage_overrides: HashMap<String, MultiPolygon<f64>>,
    pub landmarks: Vec<Landmark>,
    /// Named zones from `zones.geojson` (empty when the grid has none).
    pub zones: Vec<zones::Zone>,
    /// Public holidays from `holidays.csv` (or, for grids made before it,
    /// the `public_holidays` of the simulation's `calendar.toml`).
    pub holidays: std::collections::BTreeMap<chrono::NaiveDate, String>,
}

impl Grid {
    /// Loads and validates the grid in `dir`.
    pub fn load(dir: &Path) -> Result<Self, GridError> {
        Self::load_inner(dir, true)
    }

    /// Loads a grid whose catalogue may not exist yet (for
    /// `hexflow grid generate`); `cells` is empty then.
    pub fn load_without_cells(dir: &Path) -> Result<Self, GridError> {
        Self::load_inner(dir, false)
    }

    fn load_inner(dir: &Path, require_cells: bool) -> Result<Self, GridError> {
        let spec = GridSpec::load(dir)?;
        let tz: Tz = spec.timezone.parse().map_err(|_| GridError::Spec {
            path: dir.join("grid.toml"),
            reason: format!(
                "unknown timezone {:?} (expected an IANA name such as Europe/Paris)",
                spec.timezone
            ),
        })?;
        let area_path = dir.join(&spec.study_area);
        let area = catalogue::read_area(&area_path)?;
        let cells = if require_cells {
            catalogue::read_cells(&dir.join("cells.csv"))?
        } else {
            Vec::new()
        };
        let coverage_path = dir.join("coverage.geojson");
        let coverage_overrides = if coverage_path.exists() {
            catalogue::read_coverage(&coverage_path, &cells)?
        } else {
            HashMap::new()
        };
        let zones_path = dir.join("zones.geojson");
        let zones = if zones_path.exists() {
            zones::read_zones(&zones_path)?
        } else {
            Vec::new()
        };
        let landmarks_path = dir.join("landmarks.csv");
        let landmarks = if landmarks_path.exists() {
            catalogue::read_landmarks(&landmarks_path)?
        } else {
            Vec::new()
        };
        let holidays_path = dir.join("holidays.csv");
        let calendar_path = dir.join("calendar.toml");
        let holidays = if holidays_path.exists() {
            catalogue::read_holidays(&holidays_path)?
        } else if calendar_path.exists() {
            /// The one part of the simulation's calendar that is a fact
            /// about the city.
            #[derive(Deserialize)]
            struct Calendar {
                #[serde(default)]
                public_holidays: Vec<chrono::NaiveDate>,
            }
            let text = std::fs::read_to_string(&calendar_path).map_err(|e| GridError::io(&calendar_path, e))?;
            let c: Calendar = toml::from_str(&text).map_err(|e| GridError::Spec {
                path: calendar_path.clone(),
                reason: e.to_string(),
            })?;
            c.public_holidays
                .into_iter()
                .map(|d| (d, "public holiday".to_string()))
                .collect()
        } else {
            std::collections::BTreeMap::new()
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            spec,
            tz,
            cells,
            area,
            coverage_overrides,
            landmarks,
            zones,
            holidays,
        })
    }

    /// The grid's name (`marseille`).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Checks that `res` is one of the grid's offered resolutions.
    pub fn resolution(&self, res: u8) -> Result<Resolution, GridError> {
        let offered = || GridError::ResolutionNotOffered {
            grid: self.spec.name.clone(),
            res,
            offered: self.spec.resolutions.clone(),
        };
        if !self.spec.resolutions.contains(&res) {
            return Err(offered());
        }
        Resolution::try_from(res).map_err(|_| offered())
    }

    /// Centre of the study area's bounding box (lat, lon), the origin of the
    /// grid's equal-area projection.
    pub fn centre(&self) -> (f64, f64) {
        match self.area.bounding_rect() {
            Some(r) => {
                let c = r.center();
                (c.y, c.x)
            }
            None => (0.0, 0.0),
        }
    }

    /// The grid's equal-area projection.
    pub fn projection(&self) -> projection::Laea {
        let (lat, lon) = self.centre();
        projection::Laea::new(lat, lon)
    }

    /// Study area in m² (equal-area projection).
    pub fn area_m2(&self) -> f64 {
        self.projection().multi_polygon(&self.area).unsigned_area()
    }

    /// The cell with this id, if any.
    pub fn cell_index(&self) -> HashMap<&str, usize> {
        self.cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.cell_id.as_str(), i))
            .collect()
    }
}

impl GridSpec {
    /// Reads and validates `dir/grid.toml`.
    pub fn load(dir: &Path) -> Result<Self, GridError> {
        let path = dir.join("grid.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| GridError::io(&path, e))?;
        let spec: GridSpec = toml::from_str(&text).map_err(|e| GridError::Spec {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let bad = |reason: String| GridError::Spec {
            path: path.clone(),
            reason,
        };
        if spec.name.is_empty()
            || !spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!(
                "name {:?} must be non-empty ASCII letters, digits, '-' or '_'",
                spec.name
            )));
        }
        // Bins must tile the hour: sensitivity counts how many operator
        // bins fit in an output bin, which is exact only then (and stays
        // exact across DST changes, which shift clocks by whole hours).
        if spec.bin_len_s == 0 || 3_600 % spec.bin_len_s != 0 {
            return Err(bad(format!(
                "bin_len_s = {} must divide an hour (3600 s) evenly, e.g. 900, 1800 or 3600",
                spec.bin_len_s
            )));
        }
        if spec.resolutions.is_empty() {
            return Err(bad("resolutions must list at least one H3 resolution".into()));
        }
        if let Some(r) = spec.resolutions.iter().find(|r| **r > 15) {
            return Err(bad(format!("resolution {r} is not an H3 resolution (0-15)")));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(bin_len_s: u32) -> Result<GridSpec, GridError> {
        let dir = tempfile::tempdir().expect("tmp");
        let toml = format!(
            "name = \"g\"\ntimezone = \"Europe/Paris\"\nbin_len_s = {bin_len_s}\nstudy_area = \"a.geojson\"\nresolutions = [8]\n"
        );
        std::fs::write(dir.path().join("grid.toml"), toml).expect("write");
        GridSpec::load(dir.path())
    }

    #[test]
    fn bins_must_tile_the_hour() {
        for ok in [900, 1800, 3600] {
            assert!(spec_with(ok).is_ok(), "{ok}");
        }
        // 2400 s bins put two bin starts in some hours and one in others,
        // and 2 h bins straddle DST changes: both would break sensitivity.
        for bad in [0, 2400, 7200] {
            let e = spec_with(bad).expect_err("refused").to_string();
            assert!(e.contains("must divide an hour"), "{bad}: {e}");
        }
    }
}
