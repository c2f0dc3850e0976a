//! The simulated city: where devices are (spatial distributions over cells)
//! and when (temporal profiles by local hour and kind of day).
//!
//! Each population — residents at home, at work, out in the evening, at
//! leisure; tourists; match crowds; cruise passengers — has a distribution
//! over cells built from the grid's landmarks (a Gaussian kernel per
//! landmark, weighted by the area a cell covers) and a share of devices per
//! hour. A cell's expected count is the sum over populations, times the
//! chance a present device is seen in the hour and the number of cells a
//! seen device touches per bin.

use chrono::{Datelike, NaiveDate, Weekday};
use geo::{Destination, Distance, Haversine, Point};

use crate::grid::{Cell, Grid, Landmark};

/// Cells a device that is seen during an hour is seen in, on average.
pub const CELLS_PER_SEEN_DEVICE: f64 = 1.3;
/// Effective footprints are capped so that huge rural cells do not soak up
/// the uniform background.
const MAX_FOOTPRINT_M2: f64 = 3.0e6;

/// Normalised distributions of each population over cells.
#[derive(Debug, Clone)]
pub struct Spatial {
    pub home: Vec<f64>,
    pub work: Vec<f64>,
    pub evening: Vec<f64>,
    pub leisure_town: Vec<f64>,
    pub leisure_coast: Vec<f64>,
    pub tourist_day: Vec<f64>,
    pub tourist_night: Vec<f64>,
    pub stadium: Vec<f64>,
    pub cruise: Vec<f64>,
}

/// Where the centre of a cell's footprint is.
fn footprint_centre(c: &Cell) -> Point<f64> {
    let site = Point::new(c.lon, c.lat);
    match c.azimuth_deg {
        Some(az) => Haversine.destination(site, az, 0.45 * c.range_m),
        None => site,
    }
}

fn footprint_m2(c: &Cell) -> f64 {
    (std::f64::consts::PI * c.range_m * c.range_m * c.beamwidth_deg / 360.0).min(MAX_FOOTPRINT_M2)
}

impl Spatial {
    pub fn new(grid: &Grid) -> Self {
        let centres: Vec<Point<f64>> = grid.cells.iter().map(footprint_centre).collect();
        let areas: Vec<f64> = grid.cells.iter().map(footprint_m2).collect();
        let area_total: f64 = grid.area_m2().max(1.0);
        let dist = |kinds: &[(&str, f64)], background: f64| -> Vec<f64> {
            let selected: Vec<(&Landmark, f64)> = grid
                .landmarks
                .iter()
                .filter_map(|l| kinds.iter().find(|(k, _)| *k == l.kind).map(|(_, f)| (l, *f)))
                .collect();
            let mut v: Vec<f64> = centres
                .iter()
                .zip(&areas)
                .map(|(p, a)| {
                    let density: f64 = selected
                        .iter()
                        .map(|(l, f)| {
                            let d = Haversine.distance(*p, Point::new(l.lon, l.lat));
                            let r = l.radius_m;
                            f * l.weight * (-(d * d) / (2.0 * r * r)).exp() / (2.0 * std::f64::consts::PI * r * r)
                        })
                        .sum();
                    (density + background / area_total) * a
                })
                .collect();
            let total: f64 = v.iter().sum();
            if total > 0.0 {
                v.iter_mut().for_each(|x| *x /= total);
            } else {
                let n = v.len() as f64;
                v.iter_mut().for_each(|x| *x = 1.0 / n);
            }
            v
        };
        Self {
            home: dist(&[("residential", 1.0), ("centre", 0.35)], 0.08),
            work: dist(
                &[
                    ("business", 1.0),
                    ("centre", 0.8),
                    ("station", 0.4),
                    ("hospital", 0.6),
                    ("university", 0.5),
                    ("market", 0.2),
                    ("port", 0.5),
                ],
                0.05,
            ),
            evening: dist(&[("nightlife", 1.0), ("old_port", 0.8), ("centre", 0.4)], 0.02),
            leisure_town: dist(
                &[
                    ("park", 1.0),
                    ("old_port", 0.8),
                    ("market", 0.5),
                    ("centre", 0.4),
                    ("landmark", 0.3),
                ],
                0.05,
            ),
            leisure_coast: dist(&[("beach", 1.0), ("calanque", 0.6), ("old_port", 0.3)], 0.01),
            tourist_day: dist(
                &[
                    ("landmark", 1.0),
                    ("old_port", 1.2),
                    ("beach", 0.6),
                    ("calanque", 0.5),
                    ("market", 0.3),
                    ("centre", 0.3),
                ],
                0.0,
            ),
            tourist_night: dist(&[("centre", 1.0), ("old_port", 0.8), ("station", 0.2)], 0.0),
            stadium: dist(&[("stadium", 1.0)], 0.0),
            cruise: dist(&[("cruise_terminal", 1.0)], 0.0),
        }
    }

    /// The `k` largest destinations of `dest` for each origin, weighted by
    /// `dest` and a distance decay, normalised per origin.
    ///
    /// Only the `k` best candidates of one origin are held (a dense table of
    /// candidates per origin was cells × cells). Candidates are visited in
    /// rings of square buckets (side `decay_m`) around the origin, and the
    /// search stops once no cell of the next ring could beat the `k`-th
    /// best (its score is at most the largest weight times the decay at the
    /// ring's distance): on a network whose weights are even (no hot spots)
    /// a scan of every destination made this cells × cells in time, which
    /// stopped a 100,000-cell simulation. Ties go to the lower cell index,
    /// as the stable sort of every candidate did: the tables are the same,
    /// bit for bit, whatever the visiting order.
    pub fn destinations(grid: &Grid, dest: &[f64], k: usize, decay_m: f64) -> Vec<Vec<(u32, f64)>> {
        use rayon::prelude::*;
        let centres: Vec<Point<f64>> = grid.cells.iter().map(footprint_centre).collect();
        if k == 0 || centres.is_empty() {
            return vec![Vec::new(); centres.len()];
        }
        let buckets = Buckets::new(&centres, decay_m);
        let max_dest = dest.iter().copied().fold(0.0, f64::max);
        centres
            .par_iter()
            .enumerate()
            .map(|(o, po)| {
                let mut best: Vec<(u32, f64)> = Vec::with_capacity(k + 1);
                let home = buckets.of(*po);
                for r in 0..=buckets.rings() {
                    // Points of ring r are at least r − 1 buckets away.
                    let near_m = r.saturating_sub(1) as f64 * buckets.side_m * 0.9;
                    if best.len() == k && max_dest * (-near_m / decay_m).exp() < best[k - 1].1 {
                        break;
                    }
                    for d in buckets.ring(home, r) {
                        let d = d as usize;
                        if d == o {
                            continue;
                        }
                        let score = dest[d] * (-Haversine.distance(*po, centres[d]) / decay_m).exp();
                        let ranks_before = |b: &(u32, f64)| b.1.total_cmp(&score).then((d as u32).cmp(&b.0)).is_gt();
                        let at = best.partition_point(ranks_before);
                        if at < k {
                            best.insert(at, (d as u32, score));
                            best.truncate(k);
                        }
                    }
                }
                let total: f64 = best.iter().map(|c| c.1).sum();
                if total > 0.0 {
                    best.iter_mut().for_each(|c| c.1 /= total);
                }
                best
            })
            .collect()
    }
}

/// Cells in square buckets of about `side_m` (equirectangular, each step at
/// least `side_m` long anywhere in the extent), for ring searches.
struct Buckets {
    side_m: f64,
    west: f64,
    south: f64,
    lon_step: f64,
    lat_step: f64,
    nx: usize,
    ny: usize,
    cells: Vec<Vec<u32>>,
}

impl Buckets {
    /// Metres per degree of latitude on geo's Haversine sphere.
    const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

    fn new(points: &[Point<f64>], side_m: f64) -> Self {
        let (mut west, mut east, mut south, mut north) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in points {
            (west, east) = (west.min(p.x()), east.max(p.x()));
            (south, north) = (south.min(p.y()), north.max(p.y()));
        }
        // The lon step is sized at the latitude farthest from the equator,
        // where a degree of longitude is shortest.
        let widest = south.abs().max(north.abs()).min(89.0).to_radians().cos();
        let lat_step = side_m / Self::M_PER_DEG;
        let lon_step = side_m / (Self::M_PER_DEG * widest);
        let nx = ((east - west) / lon_step).floor() as usize + 1;
        let ny = ((north - south) / lat_step).floor() as usize + 1;
        let mut cells = vec![Vec::new(); nx * ny];
        let mut b = Self {
            side_m,
            west,
            south,
            lon_step,
            lat_step,
            nx,
            ny,
            cells: Vec::new(),
        };
        for (i, p) in points.iter().enumerate() {
            let (x, y) = b.of(*p);
            cells[y * nx + x].push(i as u32);
        }
        b.cells = cells;
        b
    }

    fn of(&self, p: Point<f64>) -> (usize, usize) {
        let x = ((p.x() - self.west) / self.lon_step).floor().max(0.0) as usize;
        let y = ((p.y() - self.south) / self.lat_step).floor().max(0.0) as usize;
        (x.min(self.nx - 1), y.min(self.ny - 1))
    }

    /// The largest ring that still holds a bucket.
    fn rings(&self) -> usize {
        self.nx.max(self.ny)
    }

    /// Cells of the buckets at Chebyshev distance `r` from `(x, y)`.
    fn ring(&self, (x, y): (usize, usize), r: usize) -> impl Iterator<Item = u32> + '_ {
        let (x, y, r) = (x as isize, y as isize, r as isize);
        let (nx, ny) = (self.nx as isize, self.ny as isize);
        (y - r..=y + r)
            .filter(move |j| (0..ny).contains(j))
            .flat_map(move |j| {
                // The top and bottom rows whole; between them, both ends
                // (r > 0 there: ring 0 is its own top row).
                let edge = j == y - r || j == y + r;
                let step = if edge { 1 } else { 2 * r as usize };
                (x - r..=x + r)
                    .step_by(step)
                    .filter(move |i| (0..nx).contains(i))
                    .map(move |i| (j * nx + i) as usize)
            })
            .flat_map(move |b| self.cells[b].iter().copied())
    }
}

/// What kind of day a date is, for the residents' rhythm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DayKind {
    pub weekday: Weekday,
    pub public_holiday: bool,
    pub school_holiday: bool,
    /// Day of year, 1–366.
    pub doy: u32,
}

impl DayKind {
    pub fn new(d: NaiveDate, public_holiday: bool, school_holiday: bool) -> Self {
        Self {
            weekday: d.weekday(),
            public_holiday,
            school_holiday,
            doy: d.ordinal(),
        }
    }

    fn sunday_like(&self) -> bool {
        self.weekday == Weekday::Sun || self.public_holiday
    }

    /// Summer intensity, 0–1, peaking late July.
    pub fn summer(&self) -> f64 {
        bump(self.doy as f64, 205.0, 38.0)
    }
}

/// A smooth step from 0 (before `a`) to 1 (after `b`).
pub(super) fn ramp(x: f64, a: f64, b: f64) -> f64 {
    let t = ((x - a) / (b - a)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// A Gaussian bump of height 1 centred on `c` with width `w`.
pub(super) fn bump(x: f64, c: f64, w: f64) -> f64 {
    (-((x - c) / w).powi(2)).exp()
}

/// Shares of the resident population by activity in one hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub home: f64,
    pub work: f64,
    pub evening: f64,
    pub leisure: f64,
    /// Residents away from the city (August holidays).
    pub away: f64,
}

/// Residents' activity shares at local hour `h` (bin middle, 0–24).
pub fn shares(h: f64, day: DayKind) -> Shares {
    let work_level = if day.sunday_like() {
        0.05
    } else if day.weekday == Weekday::Sat {
        0.12
    } else {
        let holiday = if day.school_holiday { 0.85 } else { 1.0 };
        let august = 1.0 - 0.35 * bump(day.doy as f64, 225.0, 14.0);
        0.40 * holiday * august
    };
    let work = work_level * ramp(h, 6.3, 9.2) * (1.0 - ramp(h, 16.3, 19.6)) + 0.05 * bump(h, 12.5, 1.0) * work_level;
    let evening_level = match day.weekday {
        Weekday::Fri | Weekday::Sat => 0.17,
        _ => 0.09,
    };
    let evening = evening_level * bump(h, 21.0, 1.8);
    let leisure_level = if day.sunday_like() || day.weekday == Weekday::Sat {
        0.24
    } else if day.school_holiday {
        0.10
    } else {
        0.03
    } * (1.0 + 0.5 * day.summer());
    let leisure = leisure_level * bump(h, 15.5, 3.0);
    let away = 0.04 + 0.18 * bump(day.doy as f64, 222.0, 16.0);
    let home = (1.0 - away - work - evening - leisure).max(0.0);
    Shares {
        home,
        work,
        evening,
        leisure,
        away,
    }
}

/// Chance that a device present in the area is seen during the hour.
pub fn seen(h: f64) -> f64 {
    0.5 + 0.45 * ramp(h, 6.0, 9.0) * (1.0 - ramp(h, 22.0, 25.5))
}

/// Tourists present on a day, as a share of the seasonal peak.
pub fn tourist_level(day: DayKind) -> f64 {
    let weekend = matches!(day.weekday, Weekday::Sat | Weekday::Sun) as u8 as f64;
    0.12 + day.summer() + 0.3 * bump(day.doy as f64, 112.0, 18.0) + 0.1 * weekend
}

/// Share of tourists out sightseeing (the rest are at their lodging).
pub fn tourist_out(h: f64) -> f64 {
    ramp(h, 8.0, 10.5) * (1.0 - ramp(h, 19.0, 22.5))
}

/// A match crowd by bin, relative to the kick-off bin (0).
pub fn match_presence(offset_h: i64) -> f64 {
    match offset_h {
        -2 => 0.35,
        -1 => 0.9,
        0 => 1.0,
        1 => 0.95,
        2 => 0.3,
        _ => 0.0,
    }
}

/// Cruise passengers ashore at local hour `h`, and the share of them still
/// at the terminal.
pub fn cruise_presence(h: f64) -> (f64, f64) {
    let ashore = ramp(h, 7.0, 9.0) * (1.0 - ramp(h, 17.5, 19.5));
    let at_terminal = 0.25 + 0.5 * (bump(h, 8.0, 1.0) + bump(h, 18.0, 1.0)).min(1.0);
    (ashore, at_terminal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: &str) -> DayKind {
        DayKind::new(d.parse().expect("date"), false, false)
    }

    #[test]
    fn residents_commute_on_weekdays_not_sundays() {
        let tue = day("2025-03-11");
        let sun = day("2025-03-16");
        assert!(shares(11.5, tue).work > 0.35);
        assert!(shares(11.5, sun).work < 0.1);
        assert!(shares(3.5, tue).work < 0.01);
        for h in 0..24 {
            let s = shares(h as f64 + 0.5, tue);
            let total = s.home + s.work + s.evening + s.leisure + s.away;
            assert!((total - 1.0).abs() < 1e-12 && s.home >= 0.0, "{h}: {s:?}");
        }
    }

    #[test]
    fn destinations_are_those_of_a_sort_of_every_candidate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("grids/marseille");
        let grid = Grid::load(&dir).expect("grid");
        let s = Spatial::new(&grid);
        let centres: Vec<Point<f64>> = grid.cells.iter().map(footprint_centre).collect();
        // The stadium's kernel underflows to 0 far away: ties at 0 go by
        // index. Even weights (a network without hot spots) and a short
        // decay make the ring search stop early, far from most cells.
        let even = vec![1.0; centres.len()];
        for (dest, k, decay_m) in [
            (&s.work, 3, 6_000.0),
            (&s.evening, 1, 4_000.0),
            (&s.stadium, 2, 4_000.0),
            (&even, 3, 500.0),
            (&even, 5, 6_000.0),
        ] {
            let every_candidate: Vec<Vec<(u32, f64)>> = centres
                .iter()
                .enumerate()
                .map(|(o, po)| {
                    let mut cand: Vec<(u32, f64)> = (0..centres.len())
                        .filter(|d| *d != o)
                        .map(|d| {
                            (
                                d as u32,
                                dest[d] * (-Haversine.distance(*po, centres[d]) / decay_m).exp(),
                            )
                        })
                        .collect();
                    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
                    cand.truncate(k);
                    let total: f64 = cand.iter().map(|c| c.1).sum();
                    if total > 0.0 {
                        cand.iter_mut().for_each(|c| c.1 /= total);
                    }
                    cand
                })
                .collect();
            assert_eq!(Spatial::destinations(&grid, dest, k, decay_m), every_candidate);
        }
    }

    #[test]
    fn tourism_peaks_in_summer() {
        assert!(tourist_level(day("2025-07-24")) > 3.0 * tourist_level(day("2025-01-22")));
    }
}
