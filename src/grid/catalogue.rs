//! Reading the grid's tables: the cell catalogue, the study area, explicit
//! coverage polygons and landmarks.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use geo::{Distance, Haversine, MultiPolygon, Point};
use serde::Serialize;

use super::GridError;
use crate::table;

/// Default beamwidth of a sector whose `beamwidth_deg` is empty.
pub const DEFAULT_BEAMWIDTH_DEG: f64 = 120.0;
/// Derived ranges are clamped to this interval (m).
pub const DERIVED_RANGE_MIN_M: f64 = 150.0;
pub const DERIVED_RANGE_MAX_M: f64 = 15_000.0;
/// Ranges above this are rejected as implausible (m).
pub const MAX_RANGE_M: f64 = 100_000.0;

/// One radio cell of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub cell_id: String,
    pub site_id: String,
    pub lat: f64,
    pub lon: f64,
    /// Compass bearing of the sector's axis; `None` = omnidirectional.
    pub azimuth_deg: Option<f64>,
    pub beamwidth_deg: f64,
    pub range_m: f64,
    /// True when `range_m` was empty in the catalogue and derived from the
    /// distance to neighbouring sites.
    pub range_derived: bool,
}

/// A named place of the grid (for maps, and as simulation attractors).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Landmark {
    pub name: String,
    /// What the place is (`station`, `stadium`, `beach`, `residential`, ...).
    pub kind: String,
    pub lat: f64,
    pub lon: f64,
    /// Spatial spread of the place's activity (m).
    pub radius_m: f64,
    /// Relative importance of the place among those of its kind.
    pub weight: f64,
}

/// A table read as strings, with typed per-row access and line-numbered
/// errors (line 1 is the header).
struct Rows<'a> {
    path: &'a Path,
    columns: Vec<(&'static str, polars::prelude::StringChunked)>,
}

impl<'a> Rows<'a> {
    fn read(path: &'a Path, required: &[&'static str], optional: &[&'static str]) -> Result<(Self, usize), GridError> {
        let df = table::read_csv_as_strings(path).map_err(|source| GridError::Polars {
            path: path.to_path_buf(),
            source,
        })?;
        let names = table::column_names(&df);
        // An unknown column is a typo or a different export: refuse it, as
        // ingest refuses one in a delivery (grid files are public, so the
        // name may be quoted).
        if let Some(extra) = names
            .iter()
            .find(|n| !required.contains(&n.as_str()) && !optional.contains(&n.as_str()))
        {
            let known: Vec<&str> = required.iter().chain(optional).copied().collect();
            return Err(GridError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("unknown column {extra:?} (the columns are {known:?}); remove or rename it"),
            });
        }
        let mut columns = Vec::new();
        for name in required.iter().chain(optional) {
            match df.column(name) {
                Ok(col) => {
                    let ca = col
                        .as_materialized_series()
                        .str()
                        .map_err(|source| GridError::Polars {
                            path: path.to_path_buf(),
                            source,
                        })?
                        .clone();
                    columns.push((*name, ca));
                }
                Err(_) if optional.contains(name) => {}
                Err(_) => {
                    return Err(GridError::InvalidFile {
                        path: path.to_path_buf(),
                        reason: format!("missing column {name:?} (found {names:?})"),
                    });
                }
            }
        }
        Ok((Self { path, columns }, df.height()))
    }

    fn raw(&self, row: usize, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(n, _)| *n == column)
            .and_then(|(_, ca)| ca.get(row))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    fn error(&self, row: usize, column: &str, reason: impl Into<String>) -> GridError {
        GridError::InvalidRow {
            path: self.path.to_path_buf(),
            line: row + 2,
            column: column.to_string(),
            reason: reason.into(),
        }
    }

    fn text(&self, row: usize, column: &str) -> Result<String, GridError> {
        self.raw(row, column)
            .map(str::to_string)
            .ok_or_else(|| self.error(row, column, "empty value"))
    }

    fn opt_f64(&self, row: usize, column: &str, min: f64, max: f64) -> Result<Option<f64>, GridError> {
        let Some(raw) = self.raw(row, column) else {
            return Ok(None);
        };
        let v: f64 = raw
            .parse()
            .map_err(|_| self.error(row, column, format!("{raw:?} is not a number")))?;
        if !v.is_finite() || v < min || v > max {
            return Err(self.error(row, column, format!("{v} is outside [{min}, {max}]")));
        }
        Ok(Some(v))
    }

    fn f64(&self, row: usize, column: &str, min: f64, max: f64) -> Result<f64, GridError> {
        self.opt_f64(row, column, min, max)?
            .ok_or_else(|| self.error(row, column, "empty value"))
    }
}

/// Reads and validates `cells.csv`; empty ranges are derived from
/// neighbouring sites (see [`derive_ranges`]).
pub fn read_cells(path: &Path) -> Result<Vec<Cell>, GridError> {
    let (rows, n) = Rows::read(
        path,
        &[
            "cell_id",
            "site_id",
            "lat",
            "lon",
            "azimuth_deg",
            "beamwidth_deg",
            "range_m",
        ],
        &[],
    )?;
    let mut cells = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    for i in 0..n {
        let cell_id = rows.text(i, "cell_id")?;
        if !seen.insert(cell_id.clone()) {
            return Err(rows.error(i, "cell_id", format!("duplicate cell_id {cell_id:?}")));
        }
        let azimuth_deg = rows.opt_f64(i, "azimuth_deg", 0.0, 360.0)?;
        let beamwidth = rows.opt_f64(i, "beamwidth_deg", 1.0, 360.0)?;
        if azimuth_deg.is_none() && beamwidth.is_some() {
            return Err(rows.error(
                i,
                "beamwidth_deg",
                "a beamwidth needs an azimuth (leave both empty for an omnidirectional cell)",
            ));
        }
        let range = rows.opt_f64(i, "range_m", 1.0, MAX_RANGE_M)?;
        cells.push(Cell {
            cell_id,
            site_id: rows.text(i, "site_id")?,
            lat: rows.f64(i, "lat", -85.0, 85.0)?,
            lon: rows.f64(i, "lon", -180.0, 180.0)?,
            azimuth_deg,
            beamwidth_deg: match azimuth_deg {
                Some(_) => beamwidth.unwrap_or(DEFAULT_BEAMWIDTH_DEG),
                None => 360.0,
            },
            range_m: range.unwrap_or(f64::NAN),
            range_derived: range.is_none(),
        });
    }
    if cells.is_empty() {
        return Err(GridError::InvalidFile {
            path: path.to_path_buf(),
            reason: "the cell catalogue has no cells".into(),
        });
    }
    derive_ranges(&mut cells);
    Ok(cells)
}

/// Fills empty ranges: 0.75 × the mean distance from the cell's site to its
/// three nearest other sites, clamped to
/// [`DERIVED_RANGE_MIN_M`, `DERIVED_RANGE_MAX_M`].
///
/// A sector's best-server area ends about half-way to the next site, but a
/// device can be served well beyond that; 0.75 of the inter-site distance is
/// the usual planning rule of thumb for the footprint in which a device is
/// "seen".
pub fn derive_ranges(cells: &mut [Cell]) {
    let mut sites: Vec<(&str, Point<f64>)> = Vec::new();
    let mut site_seen = HashSet::new();
    for c in cells.iter() {
        if site_seen.insert(c.site_id.as_str()) {
            sites.push((c.site_id.as_str(), Point::new(c.lon, c.lat)));
        }
    }
    let mut derived: HashMap<String, f64> = HashMap::new();
    for c in cells.iter().filter(|c| c.range_derived) {
        if derived.contains_key(&c.site_id) {
            continue;
        }
        let here = Point::new(c.lon, c.lat);
        let mut d: Vec<f64> = sites
            .iter()
            .filter(|(id, _)| *id != c.site_id)
            .map(|(_, p)| Haversine.distance(here, *p))
            .collect();
        d.sort_by(f64::total_cmp);
        let nearest = &d[..d.len().min(3)];
        let range = if nearest.is_empty() {
            DERIVED_RANGE_MAX_M
        } else {
            0.75 * nearest.iter().sum::<f64>() / nearest.len() as f64
        };
        derived.insert(c.site_id.clone(), range.clamp(DERIVED_RANGE_MIN_M, DERIVED_RANGE_MAX_M));
    }
    for c in cells.iter_mut().filter(|c| c.range_derived) {
        c.range_m = derived[&c.site_id];
    }
}

/// Reads `landmarks.csv`.
pub fn read_landmarks(path: &Path) -> Result<Vec<Landmark>, GridError> {
    let (rows, n) = Rows::read(path, &["name", "kind", "lat", "lon"], &["radius_m", "weight"])?;
    (0..n)
        .map(|i| {
            Ok(Landmark {
                name: rows.text(i, "name")?,
                kind: rows.text(i, "kind")?,
                lat: rows.f64(i, "lat", -85.0, 85.0)?,
                lon: rows.f64(i, "lon", -180.0, 180.0)?,
                radius_m: rows.opt_f64(i, "radius_m", 1.0, 100_000.0)?.unwrap_or(500.0),
                weight: rows.opt_f64(i, "weight", 0.0, 1e9)?.unwrap_or(1.0),
            })
        })
        .collect()
}

/// Reads `holidays.csv`: `date,name` (YYYY-MM-DD, free text), one public
/// holiday per line. The forecast and the seasonality baseline treat these
/// days apart from ordinary weekdays.
pub fn read_holidays(path: &Path) -> Result<std::collections::BTreeMap<chrono::NaiveDate, String>, GridError> {
    let (rows, n) = Rows::read(path, &["date", "name"], &[])?;
    let mut out = std::collections::BTreeMap::new();
    for i in 0..n {
        let raw = rows.text(i, "date")?;
        let day: chrono::NaiveDate = raw
            .parse()
            .map_err(|_| rows.error(i, "date", format!("{raw:?} is not a date (YYYY-MM-DD)")))?;
        if out.insert(day, rows.text(i, "name")?).is_some() {
            return Err(rows.error(i, "date", format!("{day} is listed twice")));
        }
    }
    Ok(out)
}

pub(crate) fn read_geojson(path: &Path) -> Result<geojson::GeoJson, GridError> {
    let text = std::fs::read_to_string(path).map_err(|e| GridError::io(path, e))?;
    text.parse::<geojson::GeoJson>().map_err(|e| GridError::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("not valid GeoJSON: {e}"),
    })
}

pub(crate) fn to_multi_polygon(
    path: &Path,
    what: &str,
    geometry: &geojson::Geometry,
) -> Result<MultiPolygon<f64>, GridError> {
    let g: geo::Geometry<f64> = geometry.clone().try_into().map_err(|e| GridError::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    })?;
    match g {
        geo::Geometry::Polygon(p) => Ok(MultiPolygon(vec![p])),
        geo::Geometry::MultiPolygon(mp) => Ok(mp),
        other => Err(GridError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!(
                "{what}: expected a Polygon or MultiPolygon, found {}",
                geometry_name(&other)
            ),
        }),
    }
}

fn geometry_name(g: &geo::Geometry<f64>) -> &'static str {
    match g {
        geo::Geometry::Point(_) => "a Point",
        geo::Geometry::Line(_) | geo::Geometry::LineString(_) => "a LineString",
        geo::Geometry::MultiLineString(_) => "a MultiLineString",
        geo::Geometry::MultiPoint(_) => "a MultiPoint",
        _ => "another geometry type",
    }
}

/// Reads the study area: a Polygon or MultiPolygon, bare, in a Feature or in
/// a FeatureCollection (all features are merged). Refuses what any stage
/// would trip on and costs little to see (coordinates that are not
/// degrees, parts without area, an area beyond a country's or below a
/// hectare); the ring validity and overlap checks of [`read_new_area`] are
/// quadratic in the outline's points, so they run where a file enters
/// (`init`), not at every load of a grid.
pub fn read_area(path: &Path) -> Result<MultiPolygon<f64>, GridError> {
    use geo::GeodesicArea;
    let parts = area_parts(path)?;
    check_parts_have_area(path, &parts)?;
    let area = MultiPolygon(parts.into_iter().map(|(_, p)| p).collect());
    check_size(path, area.geodesic_area_unsigned() / 1e6)?;
    Ok(area)
}

/// [`read_area`] for a file that enters a grid: also refuses invalid rings
/// (too few points, self-intersections, holes outside their polygon) and
/// parts that overlap beyond noise (each place must be counted once; an
/// overlap made `init` report 44.8 km² for 5.4 km²), naming the part and
/// what to change. Parts overlapping by noise are merged: the second value
/// says which were, and the area is then to be written as returned.
pub fn read_new_area(path: &Path) -> Result<(MultiPolygon<f64>, Option<String>), GridError> {
    use geo::{BooleanOps, BoundingRect, GeodesicArea, Intersects, Validation};
    let parts = area_parts(path)?;
    let bad = |reason: String| GridError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    };
    for (label, p) in &parts {
        if let Err(e) = p.check_validation() {
            return Err(bad(format!(
                "{label}: invalid polygon: {e}; repair it (QGIS's \"Fix geometries\", or ogr2ogr -makevalid) and run again"
            )));
        }
    }
    check_parts_have_area(path, &parts)?;
    let areas_km2: Vec<f64> = parts.iter().map(|(_, p)| p.geodesic_area_unsigned() / 1e6).collect();
    // Overlapping parts, pair by pair (bounding boxes first).
    let mut merged = Vec::new();
    for i in 0..parts.len() {
        for j in i + 1..parts.len() {
            let (a, b) = (&parts[i].1, &parts[j].1);
            let boxes_meet = match (a.bounding_rect(), b.bounding_rect()) {
                (Some(x), Some(y)) => x.intersects(&y),
                _ => false,
            };
            if !boxes_meet {
                continue;
            }
            let shared_km2 = a.intersection(b).geodesic_area_unsigned() / 1e6;
            if shared_km2 <= 0.0 {
                continue;
            }
            let smaller = areas_km2[i].min(areas_km2[j]);
            if shared_km2 > OVERLAP_TOLERANCE * smaller {
                return Err(bad(format!(
                    "{} and {} overlap by {shared_km2:.3} km² ({:.1} % of the smaller): each place must be in the study area once; dissolve the parts into one outline (QGIS's \"Dissolve\", or ogr2ogr -dialect sqlite -sql \"SELECT ST_Union(geometry) FROM …\") or remove the duplicate",
                    parts[i].0,
                    parts[j].0,
                    100.0 * shared_km2 / smaller
                )));
            }
            merged.push(format!("{} and {} ({shared_km2:.4} km²)", parts[i].0, parts[j].0));
        }
    }
    let polygons: Vec<geo::Polygon<f64>> = parts.into_iter().map(|(_, p)| p).collect();
    if merged.is_empty() {
        let area = MultiPolygon(polygons);
        check_size(path, area.geodesic_area_unsigned() / 1e6)?;
        return Ok((area, None));
    }
    // Below the tolerance: merged, so that no place is counted twice.
    let area = geo::unary_union(&polygons);
    check_size(path, area.geodesic_area_unsigned() / 1e6)?;
    Ok((
        area,
        Some(format!(
            "study area parts that overlapped by digitising noise were merged: {}",
            merged.join(", ")
        )),
    ))
}

/// Largest study area: a country. Beyond it the grid's equal-area
/// projection (centred on the area) distorts, and a file this large is
/// almost always the wrong one (a world outline, degrees in the wrong unit).
pub const MAX_AREA_KM2: f64 = 1_000_000.0;

/// Smallest study area: below a hectare there is not one hex of the finest
/// resolution a city would publish, and every release would be empty.
pub const MIN_AREA_KM2: f64 = 0.01;

/// Parts may overlap by digitising noise: up to this share of the smaller
/// part, the parts are merged; beyond it the file is refused.
const OVERLAP_TOLERANCE: f64 = 0.005;

/// The study area's polygons with a label each ("feature 2", "the study
/// area, polygon 1"), oriented (exteriors anticlockwise, holes clockwise,
/// as the geodesic area expects: a hole wound the other way measured as
/// the whole Earth), each with coordinates in degrees and less than half
/// the globe's longitude. Linear in the points.
fn area_parts(path: &Path) -> Result<Vec<(String, geo::Polygon<f64>)>, GridError> {
    use geo::BoundingRect;
    let bad = |reason: String| GridError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut parts: Vec<(String, geo::Polygon<f64>)> = Vec::new();
    let mut add = |what: String, g: &geojson::Geometry| -> Result<(), GridError> {
        let mp = to_multi_polygon(path, &what, g)?;
        let many = mp.0.len() > 1;
        for (j, p) in mp.0.into_iter().enumerate() {
            let label = if many {
                format!("{what}, polygon {j}")
            } else {
                what.clone()
            };
            parts.push((label, geo::Orient::orient(&p, geo::orient::Direction::Default)));
        }
        Ok(())
    };
    match read_geojson(path)? {
        geojson::GeoJson::Geometry(g) => add("the study area".into(), &g)?,
        geojson::GeoJson::Feature(f) => {
            let g = f
                .geometry
                .ok_or_else(|| bad("the study-area feature has no geometry".into()))?;
            add("the study area".into(), &g)?;
        }
        geojson::GeoJson::FeatureCollection(fc) => {
            for (i, f) in fc.features.iter().enumerate() {
                if let Some(g) = &f.geometry {
                    add(format!("feature {i}"), g)?;
                }
            }
        }
    }
    if parts.is_empty() {
        return Err(bad("the study area has no polygon".into()));
    }
    for (label, p) in &parts {
        let mut points = p
            .exterior()
            .coords()
            .chain(p.interiors().iter().flat_map(|r| r.coords()));
        if let Some(c) = points.find(|c| {
            !(c.x.is_finite() && c.y.is_finite() && (-180.0..=180.0).contains(&c.x) && (-90.0..=90.0).contains(&c.y))
        }) {
            return Err(bad(format!(
                "{label}: the point ({}, {}) is not a longitude, latitude in degrees (longitude −180..180, latitude −90..90); GeoJSON lists longitude first, in WGS84 degrees: reproject the file (ogr2ogr -t_srs EPSG:4326)",
                c.x, c.y
            )));
        }
        if let Some(r) = p.bounding_rect()
            && r.width() > 180.0
        {
            return Err(bad(format!(
                "{label}: spans {:.0}° of longitude; an area crossing the antimeridian or the whole globe is not a city's, region's or country's",
                r.width()
            )));
        }
    }
    Ok(parts)
}

/// Refuses a part without area (a flat ring).
fn check_parts_have_area(path: &Path, parts: &[(String, geo::Polygon<f64>)]) -> Result<(), GridError> {
    use geo::GeodesicArea;
    for (label, p) in parts {
        let km2 = p.geodesic_area_unsigned() / 1e6;
        if km2 < MIN_AREA_KM2 / 100.0 {
            return Err(GridError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!(
                    "{label}: has no area ({:.0} m²); a study area is a polygon around the places to map",
                    km2 * 1e6
                ),
            });
        }
    }
    Ok(())
}

/// Refuses an area beyond a country's or below a hectare.
fn check_size(path: &Path, km2: f64) -> Result<(), GridError> {
    let reason = if km2 > MAX_AREA_KM2 {
        format!(
            "the study area covers {km2:.0} km², more than a country ({MAX_AREA_KM2:.0} km² at most): check that the file is the area to map, not a world or continent outline"
        )
    } else if km2 < MIN_AREA_KM2 {
        format!(
            "the study area covers {:.0} m², less than a hectare: no hex of a published resolution would fit; check the file's units (degrees, WGS84)",
            km2 * 1e6
        )
    } else {
        return Ok(());
    };
    Err(GridError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads explicit coverage polygons (`FeatureCollection`, property
/// `cell_id`). Every `cell_id` must be in the catalogue.
pub fn read_coverage(path: &Path, cells: &[Cell]) -> Result<HashMap<String, MultiPolygon<f64>>, GridError> {
    let known: HashSet<&str> = cells.iter().map(|c| c.cell_id.as_str()).collect();
    let geojson::GeoJson::FeatureCollection(fc) = read_geojson(path)? else {
        return Err(GridError::InvalidFile {
            path: path.to_path_buf(),
            reason: "expected a FeatureCollection".into(),
        });
    };
    let mut out = HashMap::new();
    for (i, f) in fc.features.iter().enumerate() {
        let id = f
            .property("cell_id")
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or_else(|| GridError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("feature {i} has no cell_id property"),
            })?;
        if !known.contains(id.as_str()) {
            return Err(GridError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("feature {i}: cell_id {id:?} is not in cells.csv"),
            });
        }
        let g = f.geometry.as_ref().ok_or_else(|| GridError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("feature {i} ({id}) has no geometry"),
        })?;
        let mp = to_multi_polygon(path, &format!("feature {i} ({id})"), g)?;
        if out.insert(id.clone(), mp).is_some() {
            return Err(GridError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("cell_id {id:?} has two coverage features"),
            });
        }
    }
    Ok(out)
}
