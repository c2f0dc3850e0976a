//! Named zones (`zones.geojson`): districts such as Marseille's 16
//! arrondissements, an alternative to H3 hexes as the unit of a release.
//!
//! Cell weights onto zones are computed like hex weights:
//! `W[c][z] = area(coverage_c ∩ zone_z ∩ study area) / area(coverage_c ∩
//! study area)` in the grid's equal-area projection, so each row sums to 1
//! (where the zones cover the study area) and the same sensitivity argument
//! holds. Zones are public geometry: the key set never depends on counts.

use std::collections::HashSet;
use std::path::Path;

use geo::{Area, BooleanOps, BoundingRect, Intersects, MultiPolygon};
use rayon::prelude::*;

use super::coverage::coverage_polygon;
use super::weights::WeightEntry;
use super::{Grid, GridError, catalogue};

/// One zone.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Stable id (e.g. the INSEE code `13201`).
    pub id: String,
    pub name: String,
    /// WGS84 degrees (x = lon, y = lat).
    pub area: MultiPolygon<f64>,
}

/// Reads `zones.geojson`: a FeatureCollection of Polygon or MultiPolygon
/// features with properties `zone_id` and `name`, ids unique.
pub fn read_zones(path: &Path) -> Result<Vec<Zone>, GridError> {
    let bad = |reason: String| GridError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    };
    let geojson::GeoJson::FeatureCollection(fc) = catalogue::read_geojson(path)? else {
        return Err(bad("zones must be a FeatureCollection".into()));
    };
    let mut seen = HashSet::new();
    let mut zones = Vec::new();
    for (i, f) in fc.features.iter().enumerate() {
        let prop = |k: &str| f.property(k).and_then(|v| v.as_str()).map(str::to_string);
        let id = prop("zone_id").ok_or_else(|| bad(format!("feature {i} has no string property zone_id")))?;
        if !seen.insert(id.clone()) {
            return Err(bad(format!("zone_id {id} appears twice")));
        }
        let geometry = f
            .geometry
            .as_ref()
            .ok_or_else(|| bad(format!("zone {id} has no geometry")))?;
        let area = catalogue::to_multi_polygon(path, &format!("zone {id}"), geometry)?;
        zones.push(Zone {
            name: prop("name").unwrap_or_else(|| id.clone()),
            id,
            area,
        });
    }
    if zones.is_empty() {
        return Err(bad("no zone".into()));
    }
    Ok(zones)
}

/// The zones as a `zones.geojson` that [`read_zones`] reads back: what
/// `init` writes when it repaired the zones it was given.
pub fn to_geojson(zones: &[Zone]) -> String {
    let features = zones
        .iter()
        .map(|z| {
            let mut properties = geojson::JsonObject::new();
            properties.insert("zone_id".into(), z.id.clone().into());
            properties.insert("name".into(), z.name.clone().into());
            geojson::Feature {
                geometry: Some(geojson::Geometry::from(&z.area)),
                properties: Some(properties),
                ..Default::default()
            }
        })
        .collect();
    geojson::GeoJson::FeatureCollection(geojson::FeatureCollection {
        features,
        bbox: None,
        foreign_members: None,
    })
    .to_string()
}

/// W onto the zones of `grid`: `(zone ids, entries)` with `entries[i].hex`
/// the zone's index.
pub fn zone_weights(grid: &Grid) -> Result<(Vec<String>, Vec<WeightEntry>), GridError> {
    let laea = grid.projection();
    let area_m = laea.multi_polygon(&grid.area);
    // Zones clipped to the study area, projected once.
    let zones_m: Vec<MultiPolygon<f64>> = grid
        .zones
        .iter()
        .map(|z| laea.multi_polygon(&z.area).intersection(&area_m))
        .collect();
    let zone_boxes: Vec<Option<geo::Rect<f64>>> = zones_m.iter().map(BoundingRect::bounding_rect).collect();
    let rows: Vec<Vec<WeightEntry>> = grid
        .cells
        .par_iter()
        .enumerate()
        .map(|(ci, cell)| {
            let cov = coverage_polygon(cell, grid.coverage_overrides.get(&cell.cell_id));
            let clipped = laea.multi_polygon(&cov).intersection(&area_m);
            let Some(reach) = clipped.bounding_rect() else {
                return Vec::new();
            };
            // Only zones whose box meets the coverage's: a boolean
            // intersection with every zone made this cells × zones (hours
            // for a national network's 100,000 cells and 2,000 zones).
            let pieces: Vec<(usize, f64)> = zones_m
                .iter()
                .zip(&zone_boxes)
                .enumerate()
                .filter(|(_, (_, zb))| zb.is_some_and(|zb| zb.intersects(&reach)))
                .map(|(zi, (z, _))| (zi, clipped.intersection(z).unsigned_area()))
                .filter(|(_, a)| *a > 0.0)
                .collect();
            // Normalised by the zoned part of the coverage: a sliver outside
            // every zone (drawing tolerance) must not lower the row sum.
            let total: f64 = pieces.iter().map(|p| p.1).sum();
            if total < super::weights::MIN_COVERAGE_M2 {
                return Vec::new();
            }
            pieces
                .into_iter()
                .map(|(zi, a)| WeightEntry {
                    cell: ci as u32,
                    hex: zi as u32,
                    weight: a / total,
                })
                .collect()
        })
        .collect();
    Ok((grid.zones.iter().map(|z| z.id.clone()).collect(), rows.concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marseille_zones_partition_the_study_area_and_rows_sum_to_one() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("grids/marseille");
        let grid = Grid::load(&dir).expect("grid");
        assert_eq!(grid.zones.len(), 16, "16 arrondissements");
        let laea = grid.projection();
        let area_m = laea.multi_polygon(&grid.area);
        let zones: Vec<MultiPolygon<f64>> = grid
            .zones
            .iter()
            .map(|z| laea.multi_polygon(&z.area).intersection(&area_m))
            .collect();
        let covered: f64 = zones.iter().map(|z| z.unsigned_area()).sum();
        let total = area_m.unsigned_area();
        assert!((covered - total).abs() / total < 0.002, "{covered} vs {total}");
        for (i, a) in zones.iter().enumerate() {
            for b in &zones[i + 1..] {
                assert!(a.intersection(b).unsigned_area() < 1e3, "zones overlap");
            }
        }
        let (ids, entries) = zone_weights(&grid).expect("weights");
        assert_eq!(ids.len(), 16);
        let mut sums = std::collections::HashMap::<u32, f64>::new();
        for e in &entries {
            assert!(e.weight > 0.0 && e.weight <= 1.0 + 1e-12);
            *sums.entry(e.cell).or_default() += e.weight;
        }
        assert_eq!(sums.len(), grid.cells.len(), "every Marseille cell reaches a zone");
        assert!(sums.values().all(|s| (s - 1.0).abs() < 1e-9));
    }
}
