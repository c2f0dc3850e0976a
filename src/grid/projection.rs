//! A local Lambert azimuthal equal-area projection.
//!
//! Weights are ratios of areas, so they must be computed in a projection
//! that preserves area. Geodetic latitudes are first mapped to authalic
//! latitudes, then projected with spherical LAEA on the authalic sphere: the
//! composition is exactly equal-area on the WGS84 ellipsoid (up to the
//! straight-edge approximation of polygon sides), and centred on the study
//! area its shape distortion over a city is negligible.

use geo::{Coord, MapCoords, MultiPolygon, Polygon};

/// Radius of the sphere with the WGS84 ellipsoid's area (m).
pub const AUTHALIC_RADIUS_M: f64 = 6_371_007.181;

const WGS84_E2: f64 = 0.006_694_379_990_141_317;

/// Snyder's q(φ) (Map Projections, eq. 3-12) for WGS84.
fn q(sin_lat: f64) -> f64 {
    let e = WGS84_E2.sqrt();
    let es = e * sin_lat;
    (1.0 - WGS84_E2) * (sin_lat / (1.0 - WGS84_E2 * sin_lat * sin_lat) - ((1.0 - es) / (1.0 + es)).ln() / (2.0 * e))
}

/// Authalic latitude (radians) of a geodetic latitude (radians).
fn authalic(lat_rad: f64) -> f64 {
    (q(lat_rad.sin()) / q(1.0)).clamp(-1.0, 1.0).asin()
}

/// Lambert azimuthal equal-area projection centred on `(lat0, lon0)`.
#[derive(Debug, Clone, Copy)]
pub struct Laea {
    sin_lat0: f64,
    cos_lat0: f64,
    lon0_rad: f64,
}

impl Laea {
    /// A projection centred on the given point (degrees).
    pub fn new(lat0_deg: f64, lon0_deg: f64) -> Self {
        let lat0 = authalic(lat0_deg.to_radians());
        Self {
            sin_lat0: lat0.sin(),
            cos_lat0: lat0.cos(),
            lon0_rad: lon0_deg.to_radians(),
        }
    }

    /// Projects a `(lon, lat)` coordinate in degrees to metres.
    pub fn forward(&self, c: Coord<f64>) -> Coord<f64> {
        let lat = authalic(c.y.to_radians());
        let dlon = c.x.to_radians() - self.lon0_rad;
        let (sin_lat, cos_lat) = lat.sin_cos();
        let cos_dlon = dlon.cos();
        let denom = 1.0 + self.sin_lat0 * sin_lat + self.cos_lat0 * cos_lat * cos_dlon;
        // denom is 0 only at the antipode of the centre, never within a grid.
        let k = (2.0 / denom).sqrt();
        Coord {
            x: AUTHALIC_RADIUS_M * k * cos_lat * dlon.sin(),
            y: AUTHALIC_RADIUS_M * k * (self.cos_lat0 * sin_lat - self.sin_lat0 * cos_lat * cos_dlon),
        }
    }

    /// Projects a polygon given in degrees.
    pub fn polygon(&self, p: &Polygon<f64>) -> Polygon<f64> {
        p.map_coords(|c| self.forward(c))
    }

    /// Projects a multipolygon given in degrees.
    pub fn multi_polygon(&self, p: &MultiPolygon<f64>) -> MultiPolygon<f64> {
        p.map_coords(|c| self.forward(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{Area, GeodesicArea, polygon};

    #[test]
    fn projected_area_matches_geodesic_area() {
        // 0.1° boxes at several latitudes: the only difference left between
        // the ellipsoidal area and the projected one is the shape of the
        // edges (geodesics against straight lines), far below 1e-4.
        for lat in [-33.9, 0.0, 43.3, 59.9, 78.2] {
            let p = polygon![(x: 5.30, y: lat), (x: 5.40, y: lat), (x: 5.40, y: lat + 0.1), (x: 5.30, y: lat + 0.1)];
            let laea = Laea::new(lat + 0.05, 5.35);
            let planar = laea.polygon(&p).unsigned_area();
            let geodesic = p.geodesic_area_unsigned();
            assert!(
                (planar / geodesic - 1.0).abs() < 1e-4,
                "lat {lat}: {planar} vs {geodesic}"
            );
        }
    }
}
