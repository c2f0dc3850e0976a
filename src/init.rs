//! `hexflow init`: a grid folder and a complete, commented policy from a
//! city's own files, checked as ingest checks deliveries.
//!
//! Writes `OUT/grids/NAME/` (`grid.toml` and copies of the inputs) and
//! `OUT/privacy-budgets/NAME.toml`. Every input is read with the same
//! readers `hexflow` uses later (so what `init` accepts, `ingest`,
//! `publish` and `serve` accept), and the written policy is loaded back
//! before `init` reports success; on any refusal nothing is left behind.
//!
//! Choices made from the inputs, each written into the files with why:
//! * resolutions: the finest whose hexes are not much smaller than the
//!   dense part of the network (10th percentile of the distance to the
//!   nearest other site), the coarsest with at least 10 hexes in the area;
//! * the timezone, when not given: the one of the cells' centroid;
//! * a publication plan that serves every view the inputs allow (hourly
//!   footfall for the map and the event view; with zones, daily zone
//!   footfall for seasonality and forecasts and zone flows), audiences and
//!   caps as in the Marseille demo.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use geo::{Area, BooleanOps};
use serde::Serialize;

use crate::grid::{GridError, catalogue, projection::Laea, zones};

/// Errors of `init`: each names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Grid(#[from] GridError),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists already; choose another --name or --out, or remove it")]
    Exists { path: PathBuf },
    #[error("the written policy does not load: {0}")]
    Policy(#[from] crate::policy::PolicyError),
}

/// What `init` is given (also its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Dataset and grid name (lowercase letters, digits, '-', '_').
    #[arg(long)]
    pub name: String,
    /// Cell catalogue: cell_id,site_id,lat,lon,azimuth_deg,beamwidth_deg,range_m.
    #[arg(long)]
    pub cells: PathBuf,
    /// Study area: a GeoJSON Polygon or MultiPolygon (or a Feature/FeatureCollection of one).
    #[arg(long)]
    pub area: PathBuf,
    /// Named zones (districts): FeatureCollection with zone_id and name.
    #[arg(long)]
    pub zones: Option<PathBuf>,
    /// Explicit coverage polygons, property cell_id.
    #[arg(long)]
    pub coverage: Option<PathBuf>,
    /// Public holidays: date,name.
    #[arg(long)]
    pub holidays: Option<PathBuf>,
    /// IANA timezone of the local day (default: that of the cells' centroid).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Length of one operator bin (s).
    #[arg(long = "bin-len", default_value_t = 3600)]
    pub bin_len_s: u32,
    /// What the operator counts (plural), used in every label.
    #[arg(long = "unit-name", default_value = "devices")]
    pub unit_name: String,
    /// Folder that receives grids/NAME/ and privacy-budgets/NAME.toml.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// H3 resolutions to offer (e.g. 7,8,9) instead of those chosen from
    /// the sites' spacing; the public map uses the second finest.
    #[arg(long, value_delimiter = ',')]
    pub resolutions: Option<Vec<u8>>,
    /// Replace an existing grids/NAME/ and privacy-budgets/NAME.toml (kept
    /// until the new ones are written and load).
    #[arg(long)]
    pub force: bool,
    /// Cut the zones to the study area where they reach beyond it.
    #[arg(long)]
    pub clip: bool,
}

/// Zones may overlap by digitising noise: up to this share of the smaller
/// zone, the overlap is given to the zone listed first; beyond it the file
/// is refused.
pub const ZONE_OVERLAP_TOLERANCE: f64 = 0.01;

/// Sites closer than this are one mast: operators list each sector, or
/// each operator's antennas on a shared mast, as its own site.
pub const CO_LOCATED_M: f64 = 25.0;

/// Most hexes a bin of the public hourly map may hold: beyond it a bin's
/// answer is tens of MB of JSON, the viewer's GeoJSON limit is passed and a
/// day's publish takes minutes (265,645 hexes a bin at res 11 on 512 km²).
pub const MAX_HEXES_PER_BIN: f64 = 50_000.0;

/// What `init` wrote and chose.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub grid_dir: PathBuf,
    pub policy: PathBuf,
    pub timezone: String,
    /// `given`, or how it was found.
    pub timezone_source: String,
    pub cells: usize,
    /// Distinct site positions: sites within [`CO_LOCATED_M`] of another
    /// count once (the spacing is measured between positions).
    pub sites: usize,
    /// Site ids listed at a position another site id already had.
    pub co_located_sites: usize,
    /// Hexes in a bin of the public hourly map (area / hex area).
    pub public_map_hexes_per_bin: u64,
    /// Choices `init` made that a city should know of.
    pub warnings: Vec<String>,
    /// Cells outside the area (kept: they count where their coverage reaches it).
    pub cells_outside_area: usize,
    pub area_km2: f64,
    /// Distance from a site to its nearest other site: 10th percentile and median.
    pub site_spacing_p10_m: f64,
    pub site_spacing_median_m: f64,
    pub resolutions: Vec<u8>,
    pub zones: usize,
    /// What init changed in the zones (overlaps given to one zone, parts
    /// cut to the area), zone by zone.
    pub zone_repairs: Vec<String>,
    pub holidays: usize,
    pub publication: Vec<crate::policy::StandingRelease>,
}

/// Average area of an H3 hexagon (km²) by resolution 0..=15.
const H3_AREA_KM2: [f64; 16] = [
    4.357_449_4e6,
    6.097_884e5,
    8.680_178e4,
    1.239_343_5e4,
    1_770.348,
    252.903_86,
    36.129_062,
    5.161_293_4,
    0.737_327_6,
    0.105_332_5,
    0.015_047_5,
    0.002_149_6,
    3.071e-4,
    4.39e-5,
    6.3e-6,
    9e-7,
];

/// Runs `init`; on any error nothing is left in `args.out`.
pub fn init(args: &InitArgs) -> Result<InitReport, InitError> {
    let name_ok = !args.name.is_empty()
        && args.name.len() <= 40
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(InitError::Invalid {
            path: PathBuf::from("--name"),
            reason: format!(
                "{:?}: a name is 1 to 40 lowercase ASCII letters, digits, '-' or '_' (it names folders and the dataset)",
                args.name
            ),
        });
    }
    let grid_dir = args.out.join("grids").join(&args.name);
    let policy_path = args.out.join("privacy-budgets").join(format!("{}.toml", args.name));
    if !args.force {
        for p in [&grid_dir, &policy_path] {
            if p.exists() {
                return Err(InitError::Exists { path: p.clone() });
            }
        }
    }
    let plan = plan(args)?;
    // With --force the old folder and policy step aside, and come back if
    // the new ones cannot be written or do not load.
    let aside = |p: &Path| {
        p.with_file_name(format!(
            ".{}.init-old",
            p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ))
    };
    let moved: Vec<(PathBuf, PathBuf)> = [&grid_dir, &policy_path]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| (p.clone(), aside(p)))
        .collect();
    for (from, to) in &moved {
        let _ = std::fs::remove_dir_all(to).or_else(|_| std::fs::remove_file(to));
        std::fs::rename(from, to).map_err(io(from))?;
    }
    let restore = || {
        let _ = std::fs::remove_dir_all(&grid_dir);
        let _ = std::fs::remove_file(&policy_path);
        for (from, to) in &moved {
            let _ = std::fs::rename(to, from);
        }
    };
    if let Err(e) = write(args, &plan, &grid_dir, &policy_path) {
        restore();
        return Err(e);
    }
    // What init wrote must load exactly as ingest, publish and serve will.
    let loaded = crate::policy::Policy::load(&policy_path)
        .map_err(InitError::from)
        .and_then(|p| p.load_grid().map_err(InitError::from));
    if let Err(e) = loaded {
        restore();
        return Err(e);
    }
    for (_, to) in &moved {
        let _ = std::fs::remove_dir_all(to).or_else(|_| std::fs::remove_file(to));
    }
    Ok(InitReport {
        grid_dir,
        policy: policy_path,
        ..plan.report
    })
}

/// Everything decided before a byte is written.
struct Plan {
    report: InitReport,
    /// The zones as written when init repaired them (else the file is
    /// copied as given).
    repaired_zones: Option<Vec<zones::Zone>>,
    /// The study area as written when its parts were merged (else the
    /// file is copied as given).
    merged_area: Option<geo::MultiPolygon<f64>>,
    public_finest: u8,
    planners_finest: u8,
}

fn invalid(path: &Path, reason: String) -> InitError {
    InitError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

fn plan(args: &InitArgs) -> Result<Plan, InitError> {
    let (area, area_merged) = catalogue::read_new_area(&args.area)?;
    let cells = catalogue::read_cells(&args.cells)?;
    if cells.is_empty() {
        return Err(invalid(
            &args.cells,
            "no cells: the catalogue has a header but no rows".into(),
        ));
    }
    let [min_lon, min_lat, max_lon, max_lat] = crate::grid::bbox(&area);
    let centre = ((min_lat + max_lat) / 2.0, (min_lon + max_lon) / 2.0);
    let laea = Laea::new(centre.0, centre.1);
    let area_km2 = laea.multi_polygon(&area).unsigned_area() / 1e6;
    // Cells far from the area are a wrong city or swapped lat/lon: refuse
    // them with their line. Cells just outside serve the edge and stay.
    let margin_deg = 0.2;
    let mut outside = 0;
    for (i, c) in cells.iter().enumerate() {
        let far = c.lat < min_lat - margin_deg
            || c.lat > max_lat + margin_deg
            || c.lon < min_lon - margin_deg
            || c.lon > max_lon + margin_deg;
        if far {
            return Err(invalid(
                &args.cells,
                format!(
                    "line {}: cell {} at lat {}, lon {} is more than ~20 km outside the area ({min_lat:.3}..{max_lat:.3} N, {min_lon:.3}..{max_lon:.3} E); check the coordinates (lat and lon swapped?) or the area file",
                    i + 2,
                    c.cell_id,
                    c.lat,
                    c.lon
                ),
            ));
        }
        use geo::Contains;
        if !area.contains(&geo::Point::new(c.lon, c.lat)) {
            outside += 1;
        }
    }
    if outside == cells.len() {
        // Every cell in a hole of the area, or beside it: a wrong file.
        return Err(invalid(
            &args.area,
            format!(
                "none of the {} cells of {} lies inside the area (are they in one of its holes, or is the area another place's?); the area must hold the network it maps",
                cells.len(),
                args.cells.display()
            ),
        ));
    }
    if let Some(p) = &args.coverage {
        catalogue::read_coverage(p, &cells)?;
    }
    let (zone_list, zone_repairs) = match &args.zones {
        Some(p) => {
            let z = zones::read_zones(p)?;
            fit_zones(p, z, &area, &laea, area_km2, args.clip)?
        }
        None => (Vec::new(), Vec::new()),
    };
    let holidays = match &args.holidays {
        Some(p) => catalogue::read_holidays(p)?.len(),
        None => 0,
    };
    let b = args.bin_len_s;
    let tiles = b > 0 && (3600u32.is_multiple_of(b) || (b.is_multiple_of(3600) && 86_400u32.is_multiple_of(b)));
    if !tiles {
        return Err(invalid(
            Path::new("--bin-len"),
            format!(
                "{} s: operator bins must tile the hour (e.g. 900, 1800, 3600) or the day in whole hours",
                args.bin_len_s
            ),
        ));
    }
    if args.unit_name.trim().is_empty() || args.unit_name.len() > 40 || args.unit_name.contains('"') {
        return Err(invalid(
            Path::new("--unit-name"),
            format!(
                "{:?}: name what is counted, e.g. devices or pedestrians",
                args.unit_name
            ),
        ));
    }
    // Timezone: given, or that of the cells' centroid.
    let (timezone, timezone_source) = match &args.timezone {
        Some(tz) => {
            tz.parse::<chrono_tz::Tz>().map_err(|_| {
                invalid(
                    Path::new("--timezone"),
                    format!("{tz:?} is not an IANA timezone (e.g. Europe/Paris)"),
                )
            })?;
            (tz.clone(), "given".to_string())
        }
        None => {
            let n = cells.len() as f64;
            let (lat, lon) = (
                cells.iter().map(|c| c.lat).sum::<f64>() / n,
                cells.iter().map(|c| c.lon).sum::<f64>() / n,
            );
            let finder = tzf_rs::DefaultFinder::new();
            let tz = finder.get_tz_name(lon, lat).to_string();
            if tz.is_empty() || tz.starts_with("Etc/") || tz.parse::<chrono_tz::Tz>().is_err() {
                return Err(invalid(
                    &args.cells,
                    format!(
                        "the cells' centroid ({lat:.4}, {lon:.4}) lies in no civil timezone ({tz:?}); give --timezone"
                    ),
                ));
            }
            (
                tz,
                format!("the timezone of the cells' centroid ({lat:.4} N, {lon:.4} E)"),
            )
        }
    };
    // Site spacing between distinct positions: cells of one mast are often
    // listed as several sites at the same coordinates, which made "sites
    // 0 m apart" and resolution 12.
    let mut site_pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for c in &cells {
        site_pos.entry(c.site_id.as_str()).or_insert((c.lat, c.lon));
    }
    let projected: Vec<geo::Coord<f64>> = site_pos
        .values()
        .map(|(lat, lon)| laea.forward(geo::Coord { x: *lon, y: *lat }))
        .collect();
    let pts = distinct_positions(&projected, CO_LOCATED_M);
    let co_located_sites = projected.len() - pts.len();
    let mut nearest: Vec<f64> = pts
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            pts.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, b)| ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt())
                .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.min(d))))
        })
        .collect();
    nearest.sort_by(f64::total_cmp);
    let pick = |q: f64| nearest.get(((nearest.len() as f64 - 1.0) * q) as usize).copied();
    let (p10, median) = (pick(0.1).unwrap_or(1000.0), pick(0.5).unwrap_or(1000.0));
    let edge_km = |r: usize| (2.0 * H3_AREA_KM2[r] / (3.0 * 3f64.sqrt())).sqrt();
    let hexes = |r: u8| area_km2 / H3_AREA_KM2[usize::from(r)];
    let mut warnings: Vec<String> = area_merged.iter().cloned().collect();
    let resolutions: Vec<u8> = match &args.resolutions {
        Some(given) => {
            let mut r = given.clone();
            r.sort_unstable();
            r.dedup();
            if r.is_empty() || r.iter().any(|x| *x > 15) {
                return Err(invalid(
                    Path::new("--resolutions"),
                    format!("{given:?}: H3 resolutions are 0 to 15"),
                ));
            }
            r
        }
        None => {
            // Finest: hexes whose edge is at least a third of the dense
            // spacing (finer hexes only spread one cell's count over more).
            let finest = (0..=12usize)
                .rev()
                .find(|r| edge_km(*r) * 1000.0 >= p10 / 3.0)
                .unwrap_or(6)
                .max(1);
            // Coarsest: at least 10 hexes in the area.
            let coarsest = (0..=finest)
                .find(|r| area_km2 / H3_AREA_KM2[*r] >= 10.0)
                .unwrap_or(finest);
            let coarsest = coarsest.max(finest.saturating_sub(4));
            let mut r: Vec<u8> = (coarsest..=finest).map(|r| r as u8).collect();
            // The public's hourly map (the second finest) must stay a map a
            // browser can draw: drop the finest while it holds too many.
            while r.len() > 1 && hexes(r[r.len() - 2]) > MAX_HEXES_PER_BIN {
                let dropped = r.pop().unwrap_or_default();
                warnings.push(format!(
                    "resolution {dropped} left out: the public hourly map one coarser would hold {:.0} hexes a bin (at most {MAX_HEXES_PER_BIN:.0}); give --resolutions to choose",
                    hexes(r[r.len() - 1])
                ));
            }
            r
        }
    };
    let finest = *resolutions.last().unwrap_or(&8);
    let coarsest = *resolutions.first().unwrap_or(&8);
    let planners_finest = finest;
    let public_finest = if resolutions.len() > 1 {
        resolutions[resolutions.len() - 2]
    } else {
        finest
    };
    let public_map_hexes_per_bin = hexes(public_finest).round() as u64;
    if public_map_hexes_per_bin as f64 > MAX_HEXES_PER_BIN {
        return Err(invalid(
            Path::new("--resolutions"),
            format!(
                "{resolutions:?}: the public hourly map at resolution {public_finest} would hold {public_map_hexes_per_bin} hexes a bin over {area_km2:.0} km² (at most {MAX_HEXES_PER_BIN:.0}): a viewer cannot draw it and a day's publish takes minutes; offer coarser resolutions"
            ),
        ));
    }
    if co_located_sites > 0 {
        warnings.push(format!(
            "{co_located_sites} site ids are listed within {CO_LOCATED_M:.0} m of another (one mast, several sectors or operators): the spacing is measured between {} distinct positions",
            pts.len()
        ));
    }
    // The plan: the map and the event view (hourly, at the public's finest),
    // the city-wide picture (daily, coarsest), and with zones the
    // seasonality, forecast and flows views.
    use crate::policy::StandingRelease;
    use crate::privacy::Bin;
    use crate::release::Unit;
    use crate::store::Metric;
    let mut publication = vec![StandingRelease {
        metric: Metric::Footfall,
        unit: Unit::Hex,
        res: public_finest,
        bin: Bin::Hour,
        period: None,
        by: None,
        rho: 0.1,
    }];
    if !zone_list.is_empty() {
        publication.push(StandingRelease {
            metric: Metric::Footfall,
            unit: Unit::Zone,
            res: 0,
            bin: Bin::Day,
            period: None,
            by: None,
            rho: 0.04,
        });
        // Hourly flows while the pairs stay few; daily beyond.
        let flows_bin = if zone_list.len() <= 40 { Bin::Hour } else { Bin::Day };
        publication.push(StandingRelease {
            metric: Metric::Flows,
            unit: Unit::Zone,
            res: 0,
            bin: flows_bin,
            period: None,
            by: None,
            rho: 0.04,
        });
    }
    if coarsest < public_finest {
        publication.push(StandingRelease {
            metric: Metric::Footfall,
            unit: Unit::Hex,
            res: coarsest,
            bin: Bin::Day,
            period: None,
            by: None,
            rho: 0.02,
        });
    }
    Ok(Plan {
        report: InitReport {
            grid_dir: PathBuf::new(),
            policy: PathBuf::new(),
            timezone,
            timezone_source,
            cells: cells.len(),
            sites: pts.len(),
            co_located_sites,
            public_map_hexes_per_bin,
            warnings,
            cells_outside_area: outside,
            area_km2,
            site_spacing_p10_m: p10,
            site_spacing_median_m: median,
            resolutions,
            zones: zone_list.len(),
            zone_repairs: zone_repairs.clone(),
            holidays,
            publication,
        },
        repaired_zones: (!zone_repairs.is_empty()).then_some(zone_list),
        merged_area: area_merged.is_some().then_some(area),
        public_finest,
        planners_finest,
    })
}

/// One point per cluster of points within `radius_m` of one another
/// (single linkage on a hash grid of `radius_m` cells): a mast listed as
/// several sites counts once.
fn distinct_positions(points: &[geo::Coord<f64>], radius_m: f64) -> Vec<geo::Coord<f64>> {
    let cell = |p: &geo::Coord<f64>| ((p.x / radius_m).floor() as i64, (p.y / radius_m).floor() as i64);
    let mut grid: std::collections::HashMap<(i64, i64), Vec<usize>> = std::collections::HashMap::new();
    for (i, p) in points.iter().enumerate() {
        grid.entry(cell(p)).or_default().push(i);
    }
    let mut cluster: Vec<Option<usize>> = vec![None; points.len()];
    let mut reps = Vec::new();
    for start in 0..points.len() {
        if cluster[start].is_some() {
            continue;
        }
        cluster[start] = Some(reps.len());
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            let (cx, cy) = cell(&points[i]);
            for dx in -1..=1 {
                for dy in -1..=1 {
                    for &j in grid.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                        let (a, b) = (points[i], points[j]);
                        if cluster[j].is_none() && ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt() <= radius_m {
                            cluster[j] = Some(reps.len());
                            stack.push(j);
                        }
                    }
                }
            }
        }
        reps.push(points[start]);
    }
    reps
}

/// Zones must lie in the area, not overlap and leave no gap: a zone sum
/// would otherwise count a place twice or never. Real boundary files
/// overlap by digitising noise: up to [`ZONE_OVERLAP_TOLERANCE`] of the
/// smaller zone the overlap goes to the zone listed first, and with `clip`
/// zones are cut to the area. Returns the zones as they are to be written
/// and what was changed, zone by zone.
fn fit_zones(
    path: &Path,
    mut zones: Vec<zones::Zone>,
    area: &geo::MultiPolygon<f64>,
    laea: &Laea,
    area_km2: f64,
    clip: bool,
) -> Result<(Vec<zones::Zone>, Vec<String>), InitError> {
    if zones.is_empty() {
        return Err(invalid(path, "no zone: the FeatureCollection is empty".into()));
    }
    let km2 = |m: &geo::MultiPolygon<f64>| laea.multi_polygon(m).unsigned_area() / 1e6;
    let mut repairs = Vec::new();
    if clip {
        for z in &mut zones {
            let before = km2(&z.area);
            let inside = z.area.intersection(area);
            let cut = before - km2(&inside);
            if km2(&inside) <= 0.0 {
                return Err(invalid(
                    path,
                    format!(
                        "zone {} lies wholly outside the area: remove it or check the area file",
                        z.id
                    ),
                ));
            }
            if cut > 1e-6 {
                repairs.push(format!("zone {}: {cut:.3} km² beyond the area cut off (--clip)", z.id));
                z.area = inside;
            }
        }
    }
    for i in 0..zones.len() {
        for j in i + 1..zones.len() {
            let shared = zones[i].area.intersection(&zones[j].area);
            let overlap = km2(&shared);
            if overlap <= 1e-6 {
                continue;
            }
            let smaller = km2(&zones[i].area).min(km2(&zones[j].area));
            if overlap > ZONE_OVERLAP_TOLERANCE * smaller && overlap > 1e-4 {
                return Err(invalid(
                    path,
                    format!(
                        "zones {} and {} overlap by {overlap:.3} km² ({:.1} % of the smaller, beyond the {:.0} % of digitising noise init repairs): a place in both would be counted twice; make the zones disjoint",
                        zones[i].id,
                        zones[j].id,
                        100.0 * overlap / smaller,
                        100.0 * ZONE_OVERLAP_TOLERANCE
                    ),
                ));
            }
            repairs.push(format!(
                "zone {} gave zone {} the {overlap:.4} km² ({:.2} % of the smaller) they both held (the zone listed first keeps an overlap)",
                zones[j].id,
                zones[i].id,
                100.0 * overlap / smaller
            ));
            zones[j].area = zones[j].area.difference(&shared);
        }
    }
    let union = zones
        .iter()
        .skip(1)
        .fold(zones[0].area.clone(), |acc, z| acc.union(&z.area));
    let gap = km2(&area.difference(&union));
    if gap > 0.01 * area_km2 {
        return Err(invalid(
            path,
            format!(
                "the zones leave {gap:.2} km² of the area ({:.1} %) in no zone: those places would be in no zone sum; extend the zones or crop the area",
                100.0 * gap / area_km2
            ),
        ));
    }
    let beyond = km2(&union.difference(area));
    if beyond > 0.05 * area_km2 {
        return Err(invalid(
            path,
            format!(
                "the zones reach {beyond:.2} km² beyond the area ({:.1} % of it): a zone covers only the area; give --clip to cut them to it, or check that zones and area are of the same city",
                100.0 * beyond / area_km2
            ),
        ));
    }
    Ok((zones, repairs))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write(args: &InitArgs, plan: &Plan, grid_dir: &Path, policy_path: &Path) -> Result<(), InitError> {
    let r = &plan.report;
    std::fs::create_dir_all(grid_dir).map_err(io(grid_dir))?;
    let copy = |from: &Path, to: &str| -> Result<(), InitError> {
        let target = grid_dir.join(to);
        std::fs::copy(from, &target).map(|_| ()).map_err(io(&target))
    };
    copy(&args.cells, "cells.csv")?;
    match &plan.merged_area {
        Some(area) => {
            let target = grid_dir.join("area.geojson");
            let text = geojson::GeoJson::Geometry(geojson::Geometry::from(area)).to_string();
            crate::util::write_atomic(&target, text.as_bytes()).map_err(io(&target))?;
        }
        None => copy(&args.area, "area.geojson")?,
    }
    match (&plan.repaired_zones, &args.zones) {
        (Some(zones), _) => {
            let target = grid_dir.join("zones.geojson");
            crate::util::write_atomic(&target, zones::to_geojson(zones).as_bytes()).map_err(io(&target))?;
        }
        (None, Some(p)) => copy(p, "zones.geojson")?,
        (None, None) => {}
    }
    if let Some(p) = &args.coverage {
        copy(p, "coverage.geojson")?;
    }
    if let Some(p) = &args.holidays {
        copy(p, "holidays.csv")?;
    }
    let mut g = String::new();
    let _ = writeln!(g, "# Grid {}, written by `hexflow init` from:", args.name);
    let _ = writeln!(g, "#   cells    {}", args.cells.display());
    let _ = writeln!(g, "#   area     {}", args.area.display());
    for (what, p) in [
        ("zones", &args.zones),
        ("coverage", &args.coverage),
        ("holidays", &args.holidays),
    ] {
        if let Some(p) = p {
            let _ = writeln!(g, "#   {what:<8} {}", p.display());
        }
    }
    let _ = writeln!(g, "\nname = \"{}\"", args.name);
    let _ = writeln!(g, "# The local day (the privacy unit's day): {}.", r.timezone_source);
    let _ = writeln!(g, "timezone = \"{}\"", r.timezone);
    let _ = writeln!(g, "# Length of one operator bin (s).");
    let _ = writeln!(g, "bin_len_s = {}", args.bin_len_s);
    let _ = writeln!(g, "study_area = \"area.geojson\"");
    let _ = writeln!(
        g,
        "# From the network: sites are {:.0} m apart in its dense part (10th percentile of\n# the nearest-site distance between {} distinct positions, sites within {CO_LOCATED_M:.0} m counted\n# once; median {:.0} m), so hexes finer than resolution {} would only spread one cell\n# over more hexes; the {:.0} km² area holds at least 10 hexes from resolution {} on.\n# (Or as given with --resolutions.)",
        r.site_spacing_p10_m,
        r.sites,
        r.site_spacing_median_m,
        r.resolutions.last().copied().unwrap_or(0),
        r.area_km2,
        r.resolutions.first().copied().unwrap_or(0)
    );
    let _ = writeln!(g, "resolutions = {:?}", r.resolutions);
    crate::util::write_atomic(&grid_dir.join("grid.toml"), g.as_bytes()).map_err(io(grid_dir))?;

    let policies = policy_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(policies).map_err(io(policies))?;
    let grid_rel = pathdiff(grid_dir, policies);
    let mut p = String::new();
    let _ = writeln!(
        p,
        "# Dataset policy for {name}, written by `hexflow init`. Every field is\n# read by hexflow; change what does not fit, then `hexflow ingest`, `publish`\n# and `serve` with --policies-dir {}.\n#\n# WHAT THE OPERATOR MUST ATTEST (hexflow cannot check it on aggregates):\n# the [privacy] bounds below hold for every device and local day of every\n# delivery. They decide how much noise protects one device-day: if the\n# operator's export counts a device in more cells per bin, in more bins per\n# day or with more trips, raise them before the first release.\n",
        policies.display(),
        name = args.name
    );
    let _ = writeln!(p, "dataset = \"{}\"", args.name);
    let _ = writeln!(p, "title = \"{}\"", args.name);
    let _ = writeln!(p, "# What the operator counts: every label and unit says it.");
    let _ = writeln!(p, "unit_name = \"{}\"", args.unit_name);
    let _ = writeln!(p, "# The grid folder, relative to this file.");
    let _ = writeln!(p, "grid = \"{}\"", grid_rel.display());
    let _ = writeln!(p, "# Must be the grid's timezone.");
    let _ = writeln!(p, "timezone = \"{}\"\n", r.timezone);
    let _ = writeln!(
        p,
        "[ingest]\n# Plausibility limits: a count above them is a unit or join error, and\n# the whole delivery is refused with its line.\nmax_devices_per_cell_bin = 100000\nmax_trips_per_pair_bin = 50000\n# Timestamps before this day are refused as implausible.\nearliest_day = \"2000-01-01\"\n"
    );
    let _ = writeln!(
        p,
        "[privacy]\n# Neighbouring datasets differ by one device over one local day.\nunit = \"device-day\"\n# Attested by the operator (see the top of this file).\nmax_cells_per_bin = 1\nmax_bins_per_day = 24\nmax_trips_per_day = 6\n# δ of the (ε, δ) statement of zCDP releases: far below 1 / devices.\ndelta = 1e-7\n# Total ρ per local day over all audiences, spent forever (never refunded).\nrho_per_day_cap = 0.5\n# Noisy values under this are shown grey (\"too uncertain to show\").\ndisplay_threshold = 20.0\n"
    );
    let _ = writeln!(
        p,
        "# The public sees the standing releases below, two days after the fact.\n[audiences.public]\nrho_per_day = 0.2\nfinest_res = {}\nshortest_bin = \"1h\"\nmin_delay_days = 2\n\n# Planners ask their own questions with a token, the day after.\n[audiences.planners]\nrho_per_day = 0.2\nfinest_res = {}\nshortest_bin = \"1h\"\nmin_delay_days = 1\n\n# The tourism office follows seasons: daily bins, a week after.\n[audiences.tourism]\nrho_per_day = 0.1\nfinest_res = {}\nshortest_bin = \"1d\"\nmin_delay_days = 7\n",
        plan.public_finest, plan.planners_finest, plan.public_finest
    );
    // Presence needs lists only the operator and the city can agree on:
    // written as a commented template, never switched on by a guess.
    let _ = writeln!(
        p,
        "# People, not device-hours: uncomment when the operator delivers presence\n# (`cell_id,day,period,segment,origin,devices`: each device in one cell per\n# period and local day, the device-day in one segment and one origin). The\n# lists are public and are the key set of every presence release; an origin\n# not listed is delivered as \"other\".\n# [presence]\n# segments = [\"resident\", \"tourist\", \"excursionist\"]\n# max_devices_per_cell_day = 100000\n# [presence.periods]\n# day = {{ from = \"08:00\", to = \"20:00\" }}\n# night = {{ from = \"00:00\", to = \"06:00\" }}\n# [presence.origins]\n# local = [\"local\"]\n# \"Abroad\" = [\"DE\", \"GB\", \"IT\", \"ES\", \"US\"]\n# [presence.expansion]   # the operator's share of each segment's people\n# resident = 0.35\n"
    );
    let _ = writeln!(
        p,
        "# Standing public releases made by `hexflow publish` for every day with\n# data; together at most the public's daily ρ. They serve every view the\n# inputs allow:"
    );
    for item in &r.publication {
        let why = match (item.metric, item.unit, item.bin) {
            (crate::store::Metric::Footfall, crate::release::Unit::Hex, crate::privacy::Bin::Hour) => {
                "the map's hours and the event view"
            }
            (crate::store::Metric::Footfall, crate::release::Unit::Hex, _) => "the city-wide daily picture",
            (crate::store::Metric::Footfall, crate::release::Unit::Zone, _) => "seasonality and forecasts per zone",
            (crate::store::Metric::Flows, _, _) => "flows between zones",
            (crate::store::Metric::Presence, _, _) => "people present per zone and segment",
        };
        let _ = writeln!(p, "\n# {why}.\n[[publication]]");
        let _ = writeln!(p, "metric = \"{}\"", item.metric);
        match item.unit {
            crate::release::Unit::Zone => {
                let _ = writeln!(p, "unit = \"zone\"");
            }
            crate::release::Unit::Hex => {
                let _ = writeln!(p, "res = {}", item.res);
            }
        }
        let _ = writeln!(p, "bin = \"{}\"", item.bin.as_str());
        if let Some(period) = &item.period {
            let _ = writeln!(p, "period = \"{period}\"");
        }
        if let Some(by) = item.by {
            let _ = writeln!(p, "by = \"{}\"", by.as_str());
        }
        let _ = writeln!(p, "rho = {}", item.rho);
    }
    crate::util::write_atomic(policy_path, p.as_bytes()).map_err(io(policy_path))?;
    Ok(())
}

/// `to` relative to `from` when both share a prefix, else `to` absolute.
fn pathdiff(to: &Path, from: &Path) -> PathBuf {
    let (Ok(to), Ok(from)) = (std::path::absolute(to), std::path::absolute(from)) else {
        return to.to_path_buf();
    };
    let t: Vec<_> = to.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return to;
    }
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}
