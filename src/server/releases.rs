//! Public read-only routes: datasets, releases, values, series, maps,
//! tiles and the ledger.

use crate::vocab::audience;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use h3o::CellIndex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::data::{Key, ReleaseData, ReleaseSummary};
use super::{AppState, Problem, blocking, immutable, no_cache, rows};
use crate::privacy::sensitivity::Placement;
use crate::render::{self, HexValue, MapText};
use crate::store::Metric;

/// Most hexes in one series request.
const MAX_SERIES_HEXES: usize = 3000;
/// Most features in one GeoJSON answer (ask one bin for more).
const MAX_GEOJSON_FEATURES: usize = 200_000;
/// Most releases in one list page.
const MAX_LIST: usize = 5000;

/// A (multi)polygon as an RFC 7946 geometry (the `geojson` crate's
/// conversion from geo types).
fn geometry_json(area: &geo::MultiPolygon<f64>) -> Value {
    serde_json::to_value(geojson::Geometry::new(geojson::GeometryValue::from(area))).unwrap_or(Value::Null)
}

fn ds_geojson_area(grid: &crate::grid::Grid) -> Value {
    let mut features = vec![json!({
        "type": "Feature",
        "geometry": geometry_json(&grid.area),
        "properties": {"kind": "study-area", "name": grid.name(), "area_km2": grid.area_m2() / 1e6},
    })];
    for m in &grid.landmarks {
        features.push(json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [m.lon, m.lat]},
            "properties": {"kind": "landmark", "name": m.name, "landmark_kind": m.kind, "weight": m.weight},
        }));
    }
    // The named zones, with a point inside each for its label (a centroid
    // can fall outside a crescent-shaped district).
    for z in &grid.zones {
        use geo::InteriorPoint;
        let label = z.area.interior_point().map(|p| [p.x(), p.y()]);
        features.push(json!({
            "type": "Feature",
            "geometry": geometry_json(&z.area),
            "properties": {"kind": "zone", "zone_id": z.id, "name": z.name, "label_point": label},
        }));
    }
    json!({"type": "FeatureCollection", "features": features})
}

pub async fn datasets(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<Value> = state
        .datasets
        .values()
        .map(|d| {
            let p = &d.releaser.policy;
            let g = &d.releaser.grid;
            json!({
                "dataset": p.dataset(),
                "title": p.spec.title,
                "grid": g.name(),
                "timezone": g.spec.timezone,
                // What the operator counts, in the policy's words, and the
                // operator's bin: a client can word units without parsing
                // the English `unit` of each release.
                "unit_name": p.spec.unit_name,
                "bin_len_s": g.spec.bin_len_s,
                "bbox": crate::grid::bbox(&g.area),
                "resolutions": g.spec.resolutions,
                "privacy": {
                    "unit": "device-day",
                    "bounds": p.spec.privacy.bounds(),
                    "delta": p.spec.privacy.delta,
                    "rho_per_day_cap": p.spec.privacy.rho_per_day_cap,
                    "display_threshold": p.spec.privacy.display_threshold,
                },
                "audiences": p.spec.audiences.iter().map(|(k, a)| (k.clone(), json!({
                    "rho_per_day": a.rho_per_day,
                    "finest_res": a.finest_res,
                    "shortest_bin": a.shortest_bin,
                    "min_delay_days": a.min_delay_days,
                }))).collect::<serde_json::Map<_, _>>(),
                "publication": p.spec.publication,
                // The public lists of presence (periods, segments, origin
                // groups, expansion factors), or null.
                "presence": p.spec.presence,
                "zones": g.zones.iter().map(|z| json!({"zone_id": z.id, "name": z.name})).collect::<Vec<_>>(),
            })
        })
        .collect();
    (no_cache(), Json(json!({ "datasets": list }))).into_response()
}

pub async fn area(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, Problem> {
    let Path(name) = path?;
    let ds = state.dataset(&name)?;
    // Not immutable: a deployment may correct its grid. GeoJSON has its
    // own media type (RFC 7946), which GIS clients recognise.
    let body = serde_json::to_vec(&ds_geojson_area(&ds.releaser.grid)).map_err(|e| Problem::internal("area", e))?;
    Ok((
        no_cache(),
        [(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/geo+json"),
        )],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    dataset: Option<String>,
    metric: Option<Metric>,
    unit: Option<crate::release::Unit>,
    res: Option<u8>,
    bin: Option<crate::privacy::Bin>,
    /// Releases whose window contains this local day.
    day: Option<NaiveDate>,
    /// Releases whose window ends on or after `from` and starts on or
    /// before `to` (any overlap).
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    audience: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let audience = q.audience.clone().unwrap_or_else(|| audience::PUBLIC.into());
    super::admin::may_read(&state, &headers, &audience).await?;
    if let Some(d) = &q.dataset {
        state.dataset(d)?;
    }
    let limit = q.limit.unwrap_or(500);
    if limit == 0 || limit > MAX_LIST {
        return Err(Problem::bad_request(format!("limit must be in 1..={MAX_LIST}")));
    }
    // The document's bound (a 32-bit count), whatever usize is here.
    if q.offset.is_some_and(|o| o > u32::MAX as usize) {
        return Err(Problem::bad_request(format!("offset must be in 0..={}", u32::MAX)));
    }
    let index = state.index.read().map_err(|e| Problem::internal("release index", e))?;
    let version = index.version();
    // The caller's right to read `audience` was checked above; the body
    // depends only on the index and the query.
    let key = format!("{audience}\n{}", uri.query().unwrap_or_default());
    let etag = format!("\"l{version}-{}\"", &crate::util::sha256_parts([key.as_bytes()])[..16]);
    if super::etag_matches(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, no_cache(), [(header::ETAG, etag)]).into_response());
    }
    let body = match state.lists.get(version, &key) {
        Some(body) => body,
        None => {
            let matching: Vec<&ReleaseSummary> = index
                .iter()
                .filter(|r| r.audience == audience)
                .filter(|r| q.dataset.as_ref().is_none_or(|d| &r.dataset == d))
                .filter(|r| q.metric.is_none_or(|m| r.metric == m))
                .filter(|r| q.unit.is_none_or(|u| r.unit == u))
                .filter(|r| q.res.is_none_or(|x| r.res == Some(x)))
                .filter(|r| q.bin.is_none_or(|b| r.bin == b))
                .filter(|r| q.day.is_none_or(|d| r.from <= d && d <= r.to))
                .filter(|r| q.from.is_none_or(|d| r.to >= d) && q.to.is_none_or(|d| r.from <= d))
                .collect();
            let total = matching.len();
            let offset = q.offset.unwrap_or(0);
            let page: Vec<&ReleaseSummary> = matching.into_iter().skip(offset).take(limit).collect();
            // Say that the list pages, and where the next page starts.
            let next_offset = (offset.saturating_add(page.len()) < total).then(|| offset + page.len());
            let body = super::tight(
                serde_json::to_vec(
                    &json!({ "total": total, "offset": offset, "limit": limit, "next_offset": next_offset, "releases": page }),
                )
                .map_err(|e| Problem::internal("release list", e))?,
            );
            state.lists.put(version, key, body.clone());
            body
        }
    };
    drop(index);
    Ok((
        no_cache(),
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".to_string()),
        ],
        body,
    )
        .into_response())
}

/// The summary of release `id`, whoever asks.
fn summary(state: &AppState, id: &str) -> Result<ReleaseSummary, Problem> {
    state
        .index
        .read()
        .map_err(|e| Problem::internal("release index", e))?
        .get(id)
        .cloned()
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown release",
                format!("no release {id:?} is stored here; GET /api/v1/releases lists them"),
            )
        })
}

/// The summary of release `id` if the caller may read it.
async fn find(state: &AppState, headers: &HeaderMap, id: &str) -> Result<ReleaseSummary, Problem> {
    let summary = summary(state, id)?;
    super::admin::may_read(state, headers, &summary.audience).await?;
    Ok(summary)
}

async fn load(state: &Arc<AppState>, headers: &HeaderMap, id: &str) -> Result<Arc<ReleaseData>, Problem> {
    load_as(state, headers, id, None).await
}

/// A signed tile URL's expiry, signature and `bin=` as written.
#[derive(Debug, Clone, Copy)]
struct Signed<'a> {
    expires: i64,
    sig: &'a str,
    bin: &'a str,
}

/// [`load`], or with a signed URL instead of a token.
async fn load_as(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: &str,
    signed: Option<Signed<'_>>,
) -> Result<Arc<ReleaseData>, Problem> {
    let s = match signed {
        None => find(state, headers, id).await?,
        Some(signed) => {
            let key = state.tile_key()?;
            let grant = super::signing::Grant {
                release_id: id,
                bin: signed.bin,
                expires: signed.expires,
            };
            if !super::signing::verify(key, grant, signed.sig, chrono::Utc::now().timestamp()) {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "bad or expired signature",
                    "this signed tile URL is not valid for this release and bin, or has expired (URLs signed before hexflow signed the bin too are no longer valid): ask for a new one (POST /api/v1/releases/{id}/tile-url with your token)",
                ));
            }
            summary(state, id)?
        }
    };
    let dir = state
        .config
        .data_dir
        .join("releases")
        .join(&s.dataset)
        .join(&s.release_id);
    if let Some(data) = state.cache.get(id) {
        return Ok(data);
    }
    let st = state.clone();
    let id = id.to_string();
    blocking(move || st.cache.get_or_load(&id, &dir)).await
}

pub async fn manifest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, Problem> {
    let Path(id) = path?;
    let data = load(&state, &headers, &id).await?;
    Ok(immutable(
        &state,
        &headers,
        (&["manifest", &id, &data.manifest.values_sha256], is_public(&data)),
        "application/json",
        || serde_json::to_vec_pretty(&data.manifest).map_err(|e| Problem::internal("manifest", e)),
    ))
}

/// Whether a release may sit in shared caches.
fn is_public(data: &ReleaseData) -> bool {
    data.manifest.spec.audience == audience::PUBLIC
}

/// `?bin=`: the bin's number (0-based, as everywhere: values, maps,
/// tiles, the viewer), or the bin holding an instant with offset
/// (`2025-07-14T10:00:00+02:00`), a local date-time in the release's
/// timezone (`2025-07-14T10:00`) or a local date (`2025-07-14`, its
/// midnight).
fn bin_index(data: &ReleaseData, bin: Option<&str>) -> Result<Option<usize>, Problem> {
    let Some(raw) = bin.map(str::trim) else {
        return Ok(None);
    };
    let n = data.bins.len();
    let unknown = |what: String| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown bin",
            format!("{what}: this release has {n} bins, numbered 0..{}", n.saturating_sub(1)),
        )
    };
    if let Ok(b) = raw.parse::<usize>() {
        return if b < n {
            Ok(Some(b))
        } else {
            Err(unknown(format!("bin {b} does not exist")))
        };
    }
    let tz = data.tz;
    let instant = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        t.with_timezone(&chrono::Utc)
    } else if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        crate::vocab::local_midnight(tz, d)
    } else {
        let local = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(raw, f).ok())
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "bin={raw:?}: expected a bin number (0..{}), an instant with offset (2025-07-14T10:00:00+02:00), a local time in {} (2025-07-14T10:00) or a local date (2025-07-14)",
                    n.saturating_sub(1),
                    data.manifest.timezone
                ))
            })?;
        use chrono::TimeZone as _;
        match tz.from_local_datetime(&local) {
            chrono::LocalResult::Single(t) => t.with_timezone(&chrono::Utc),
            chrono::LocalResult::Ambiguous(a, b) => {
                return Err(Problem::bad_request(format!(
                    "bin={raw:?} happens twice in {} (the clocks go back): give the offset, {} or {}",
                    data.manifest.timezone,
                    a.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                    b.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
                )));
            }
            chrono::LocalResult::None => {
                return Err(Problem::bad_request(format!(
                    "bin={raw:?} does not exist in {} (the clocks go forward over it)",
                    data.manifest.timezone
                )));
            }
        }
    };
    // The bin holding the instant: from its start to the next bin's, the
    // last one to the end of the release's last local day.
    let end = crate::vocab::local_midnight(tz, data.manifest.spec.to.succ_opt().unwrap_or(data.manifest.spec.to));
    match data.bins.partition_point(|s| *s <= instant) {
        0 => Err(unknown(format!("{raw} is before the release's first bin"))),
        _ if instant >= end => Err(unknown(format!("{raw} is after the release's last bin"))),
        i => Ok(Some(i - 1)),
    }
}

/// The unit of a release's values, in the words of its dataset's policy.
pub fn unit_of(state: &AppState, m: &crate::release::Manifest) -> String {
    match state.datasets.get(&m.spec.dataset) {
        Some(d) => unit_of_dataset(d, m),
        None => crate::release::value_unit("devices", 3600, m.spec.metric, m.spec.unit, m.spec.bin),
    }
}

pub fn unit_of_dataset(d: &super::Dataset, m: &crate::release::Manifest) -> String {
    crate::release::value_unit(
        &d.releaser.policy.spec.unit_name,
        d.releaser.grid.spec.bin_len_s,
        m.spec.metric,
        m.spec.unit,
        m.spec.bin,
    )
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
    Geojson,
    Parquet,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValuesQuery {
    format: Option<Format>,
    bin: Option<String>,
    /// Only these hexes (comma-separated ids).
    hex: Option<String>,
    /// Only places whose centre lies in west,south,east,north (degrees).
    bbox: Option<String>,
    /// Only places whose centre lies within `radius_m` of lon,lat.
    near: Option<String>,
    radius_m: Option<f64>,
}

pub async fn values(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<ValuesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let (Path(id), Query(q)) = (path?, q?);
    let data = load(&state, &headers, &id).await?;
    let ds = state.dataset(&data.manifest.spec.dataset)?.clone();
    let bin = bin_index(&data, q.bin.as_deref())?;
    let format = q.format.unwrap_or_default();
    let places = &ds.places;
    let (keys, filter_s) = key_filter(&data, places, &q)?;
    let k = data.keys.len();
    let bins = match bin {
        Some(b) => b..b + 1,
        None => 0..data.bins.len(),
    };
    let n_values = bins.len() * keys.as_ref().map_or(k, Vec::len);
    // Value positions, listed only when the body is not cached.
    let idx = || -> Vec<usize> {
        bins.clone()
            .flat_map(|b| {
                let start = b * k;
                match &keys {
                    Some(keys) => keys.iter().map(|i| start + i).collect::<Vec<_>>(),
                    None => (start..start + k).collect(),
                }
            })
            .collect()
    };
    if format == Format::Geojson && n_values > MAX_GEOJSON_FEATURES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "answer too large",
            format!(
                "{n_values} features; GeoJSON answers hold at most {MAX_GEOJSON_FEATURES}: ask one bin (?bin=0..{}), fewer places (hex=, bbox=, near=) or use format=parquet",
                data.bins.len() - 1
            ),
        ));
    }
    if n_values == 0 {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no values",
            "no value of this release lies in the area asked (bbox= or near=)",
        ));
    }
    let (ctype, ext) = match format {
        Format::Json => ("application/json", "json"),
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Geojson => ("application/geo+json", "geojson"),
        Format::Parquet => ("application/vnd.apache.parquet", "parquet"),
    };
    let bin_s = bin.map(|b| b.to_string()).unwrap_or_else(|| "all".into());
    // The unit's words come from the policy, so they are part of the ETag.
    let unit = unit_of(&state, &data.manifest);
    let mut resp = immutable(
        &state,
        &headers,
        (
            &[
                "values",
                &id,
                &data.manifest.values_sha256,
                ext,
                &bin_s,
                &unit,
                &filter_s,
            ],
            is_public(&data),
        ),
        ctype,
        || match format {
            Format::Json => values_json(&data, places, &idx(), &unit),
            Format::Csv => Ok(rows::csv(&data, places, &idx())),
            Format::Geojson => values_geojson(&data, &ds.releaser.grid, places, &idx()),
            Format::Parquet => rows::parquet(&data, places, &idx()),
        },
    );
    let name = format!("attachment; filename=\"{id}-{bin_s}.{ext}\"");
    if format != Format::Json
        && let Ok(v) = header::HeaderValue::from_str(&name)
    {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Most hex ids one `hex=` filter may list.
const MAX_FILTER_HEXES: usize = 2_000;
/// Largest `radius_m` of a `near=` filter.
const MAX_RADIUS_M: f64 = 50_000.0;

/// The key positions (within a bin) that `hex=`, `bbox=` or `near=` with
/// `radius_m=` keep, by the place's centre; `None` without a filter. Also
/// the filter in canonical words, for the ETag.
fn key_filter(
    data: &ReleaseData,
    places: &rows::Places,
    q: &ValuesQuery,
) -> Result<(Option<Vec<usize>>, String), Problem> {
    let given = [q.hex.is_some(), q.bbox.is_some(), q.near.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given == 0 {
        if q.radius_m.is_some() {
            return Err(Problem::bad_request("radius_m goes with near=lon,lat"));
        }
        return Ok((None, String::new()));
    }
    if given > 1 {
        return Err(Problem::bad_request("give one of hex=, bbox= and near= (not several)"));
    }
    let centre = |i: usize| -> Option<[f64; 2]> {
        match data.keys[i] {
            Key::Hex(h) => Some(rows::cell_centre(h)),
            Key::Zone(z) => places.zone(data.zone_ids.get(z as usize)?).1,
            Key::Pair(..) | Key::ZonePair(..) => None,
        }
    };
    if matches!(data.keys.first(), Some(Key::Pair(..) | Key::ZonePair(..))) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a place release",
            "hex=, bbox= and near= select hexes or zones; this release is keyed by pairs (use /views/flows)",
        ));
    }
    let numbers = |name: &str, raw: &str, n: usize| -> Result<Vec<f64>, Problem> {
        let v: Vec<f64> = raw.split(',').filter_map(|x| x.trim().parse::<f64>().ok()).collect();
        if v.len() != n || v.iter().any(|x| !x.is_finite()) {
            return Err(Problem::bad_request(format!(
                "{name} must be {n} comma-separated numbers"
            )));
        }
        Ok(v)
    };
    let all = 0..data.keys.len();
    if let Some(raw) = &q.hex {
        let asked: Vec<&str> = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if asked.is_empty() || asked.len() > MAX_FILTER_HEXES {
            return Err(Problem::bad_request(format!(
                "hex= needs 1 to {MAX_FILTER_HEXES} comma-separated hex ids"
            )));
        }
        let mut wanted = HashSet::new();
        for a in &asked {
            let h: CellIndex = a
                .parse()
                .map_err(|_| Problem::bad_request(format!("{a:?} is not an H3 cell id (15 hex digits)")))?;
            wanted.insert(h);
        }
        let keys: Vec<usize> = all
            .filter(|i| matches!(data.keys[*i], Key::Hex(h) if wanted.contains(&h)))
            .collect();
        let found: HashSet<CellIndex> = keys
            .iter()
            .filter_map(|i| match data.keys[*i] {
                Key::Hex(h) => Some(h),
                _ => None,
            })
            .collect();
        if let Some(missing) = wanted.iter().find(|h| !found.contains(h)) {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hex not in release",
                format!(
                    "hex {missing} is not among this release's hexes (resolution {})",
                    data.manifest.spec.res
                ),
            ));
        }
        let mut canon: Vec<String> = wanted.iter().map(ToString::to_string).collect();
        canon.sort();
        return Ok((Some(keys), format!("hex={}", canon.join(","))));
    }
    if let Some(raw) = &q.bbox {
        let b = numbers("bbox", raw, 4)?;
        if !(b[0] < b[2] && b[1] < b[3] && b[1] >= -90.0 && b[3] <= 90.0) {
            return Err(Problem::bad_request(
                "bbox=west,south,east,north in degrees, west < east and south < north",
            ));
        }
        let keys = all
            .filter(|i| centre(*i).is_some_and(|c| b[0] <= c[0] && c[0] <= b[2] && b[1] <= c[1] && c[1] <= b[3]))
            .collect();
        return Ok((Some(keys), format!("bbox={raw}")));
    }
    let raw = q.near.as_deref().unwrap_or_default();
    let p = numbers("near", raw, 2)?;
    let r = q.radius_m.unwrap_or(500.0);
    if !(r > 0.0 && r <= MAX_RADIUS_M) {
        return Err(Problem::bad_request(format!(
            "radius_m must be in (0, {MAX_RADIUS_M}] metres"
        )));
    }
    let here = geo::Point::new(p[0], p[1]);
    let keys = all
        .filter(|i| {
            centre(*i).is_some_and(|c| {
                use geo::Distance;
                geo::Haversine.distance(here, geo::Point::new(c[0], c[1])) <= r
            })
        })
        .collect();
    Ok((Some(keys), format!("near={raw};r={r}")))
}

fn values_json(data: &ReleaseData, places: &rows::Places, idx: &[usize], unit: &str) -> Result<Vec<u8>, Problem> {
    let m = &data.manifest;
    let k = data.keys.len().max(1);
    let mut bins: Vec<usize> = idx.iter().map(|i| i / k).collect();
    bins.dedup();
    let bins: Vec<_> = bins.into_iter().map(|b| data.bins[b]).collect();
    let rows: Vec<rows::JsonRow> = idx.iter().map(|i| rows::JsonRow(rows::row(data, places, *i))).collect();
    #[derive(Serialize)]
    struct Body<'a> {
        release_id: &'a str,
        metric: crate::store::Metric,
        unit: &'a str,
        timezone: &'a str,
        display_threshold: f64,
        scale_max: f64,
        bins: Vec<chrono::DateTime<chrono::Utc>>,
        rows: Vec<rows::JsonRow>,
    }
    serde_json::to_vec(&Body {
        release_id: &m.release_id,
        metric: m.spec.metric,
        unit,
        timezone: &m.timezone,
        display_threshold: m.display_threshold,
        scale_max: data.scale_max,
        bins,
        rows,
    })
    .map_err(|e| Problem::internal("values", e))
}

/// An RFC 7946 ring: counter-clockwise (H3's order), closed.
fn ring(b: &[(f64, f64)]) -> Vec<[f64; 2]> {
    let mut r: Vec<[f64; 2]> = b.iter().map(|(x, y)| [*x, *y]).collect();
    if let Some(f) = r.first().copied() {
        r.push(f);
    }
    r
}

/// GeoJSON geometry of a named zone, and its centroid.
fn zone_geometry(grid: &crate::grid::Grid, id: &str) -> Value {
    grid.zones
        .iter()
        .find(|z| z.id == id)
        .map_or(Value::Null, |z| geometry_json(&z.area))
}

/// GeoJSON: hexes and zones as polygons, flows as lines between the
/// centres; a flow within one zone (or hex) has no line to draw and is a
/// Point at its centre (a zero-length LineString is invalid for GEOS).
fn values_geojson(
    data: &ReleaseData,
    grid: &crate::grid::Grid,
    places: &rows::Places,
    idx: &[usize],
) -> Result<Vec<u8>, Problem> {
    let k = data.keys.len();
    let zones: HashMap<&str, Value> = data
        .zone_ids
        .iter()
        .map(|id| (id.as_str(), zone_geometry(grid, id)))
        .collect();
    let zone = |i: u32| &zones[data.zone_ids[i as usize].as_str()];
    // A flow's end: the zone's centroid (the same point as in every format).
    let centre = |i: u32| places.zone(&data.zone_ids[i as usize]).1.unwrap_or([0.0, 0.0]);
    let line = |a: [f64; 2], b: [f64; 2]| {
        if a == b {
            json!({"type": "Point", "coordinates": a})
        } else {
            json!({"type": "LineString", "coordinates": [a, b]})
        }
    };
    let features: Vec<Value> = idx
        .iter()
        .map(|&i| {
            let geometry = match data.keys[i % k] {
                Key::Hex(h) => json!({"type": "Polygon", "coordinates": [ring(&data.boundaries[&h])]}),
                Key::Pair(o, d) => line(rows::cell_centre(o), rows::cell_centre(d)),
                Key::Zone(z) => zone(z).clone(),
                Key::ZonePair(o, d) => line(centre(o), centre(d)),
            };
            json!({"type": "Feature", "geometry": geometry, "properties": rows::JsonRow(rows::row(data, places, i))})
        })
        .collect();
    serde_json::to_vec(&json!({"type": "FeatureCollection", "features": features}))
        .map_err(|e| Problem::internal("values", e))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// Comma-separated H3 cell ids (15 hex digits).
    hex: String,
}

pub async fn series(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let (Path(id), Query(q)) = (path?, q?);
    let data = load(&state, &headers, &id).await?;
    let m = &data.manifest;
    if m.spec.metric != Metric::Footfall || !m.spec.unit.is_hex() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a hex footfall release",
            "series add hex values; this release is keyed by zones or zone pairs (use /values)",
        ));
    }
    let asked: Vec<&str> = q.hex.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if asked.is_empty() || asked.len() > MAX_SERIES_HEXES {
        return Err(Problem::bad_request(format!(
            "hex= needs 1 to {MAX_SERIES_HEXES} comma-separated hex ids (got {})",
            asked.len()
        )));
    }
    let pos: HashMap<CellIndex, usize> = data
        .keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| match k {
            Key::Hex(h) => Some((*h, i)),
            _ => None,
        })
        .collect();
    let mut set: Vec<(CellIndex, usize)> = Vec::new();
    let mut seen = HashSet::new();
    for s in &asked {
        let h: CellIndex = s
            .parse()
            .map_err(|_| Problem::bad_request(format!("{s:?} is not an H3 cell id (15 hex digits)")))?;
        let i = *pos.get(&h).ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hex not in release",
                format!("hex {s} is not among this release's hexes (resolution {})", m.spec.res),
            )
        })?;
        if seen.insert(h) {
            set.push((h, i));
        }
    }
    let ds = state.dataset(&m.spec.dataset)?.clone();
    let d2 = data.clone();
    let set2 = set.clone();
    let ci_sum = blocking(move || sum_ci95(&ds, &d2, &set2)).await?;
    let bins: Vec<Value> = (0..data.bins.len())
        .map(|b| {
            let r = data.bin_range(b);
            // Sums of estimates are unbiased; sums of clamped values are not.
            let v: f64 = set.iter().map(|(_, i)| data.estimate[r.start + i]).sum();
            json!({"bin_start": data.bins[b], "value": rows::round_to(v, 2), "ci95": (ci_sum[b] * 100.0).ceil() / 100.0})
        })
        .collect();
    let hex_list: Vec<String> = set.iter().map(|(h, _)| h.to_string()).collect();
    let body = json!({
        "release_id": m.release_id,
        "unit": unit_of(&state, m).replace("per hex", "summed over the hexes"),
        "hexes": hex_list,
        "ci95_method": "value: the sum of the hexes' unbiased estimates (not of the rounded, clamped values); ci95: 1.96 × sd of the summed noise (independent draws, normal approximation of their sum)",
        "bins": bins,
    });
    let key = hex_list.join(",");
    Ok(immutable(
        &state,
        &headers,
        (&["series", &id, &m.values_sha256, &key], is_public(&data)),
        "application/json",
        || serde_json::to_vec(&body).map_err(|e| Problem::internal("series", e)),
    ))
}

/// The 95 % error bar of the sum over `set` (hex, key index) in each bin.
/// Under hex placement the hexes' noises are independent; under cell
/// placement one cell's noise reaches several hexes, so the sd of the sum
/// is σ·‖Σ_{h∈H} W_·h‖₂ (W is public).
pub fn sum_ci95(ds: &super::Dataset, data: &ReleaseData, set: &[(CellIndex, usize)]) -> Result<Vec<f64>, Problem> {
    let m = &data.manifest;
    Ok(match m.placement {
        Placement::Hex => (0..data.bins.len())
            .map(|b| {
                let r = data.bin_range(b);
                // Independent noises: variances add (normal approximation
                // of the sum's 95 % interval, also for Laplace noise).
                let var: f64 = set.iter().map(|(_, i)| data.noise_sd[r.start + i].powi(2)).sum();
                crate::views::Z95 * var.sqrt()
            })
            .collect(),
        Placement::Cell => {
            let hexes: HashSet<CellIndex> = set.iter().map(|(h, _)| *h).collect();
            let w = ds
                .releaser
                .weights(m.spec.res)
                .map_err(|e| Problem::internal("weights", e))?;
            let ci = crate::views::Z95 * m.noise_sd * w.kept_sum_norm(|k| hexes.contains(&w.hexes[k]));
            vec![ci; data.bins.len()]
        }
    })
}

fn hex_values(data: &ReleaseData, b: usize) -> Vec<HexValue> {
    hex_values_where(data, b, |_| true)
}

/// The hexes of bin `b` whose boundary passes `keep`.
fn hex_values_where(data: &ReleaseData, b: usize, keep: impl Fn(&[(f64, f64)]) -> bool) -> Vec<HexValue> {
    let r = data.bin_range(b);
    data.keys
        .iter()
        .enumerate()
        .filter_map(|(k, key)| match key {
            Key::Hex(h) if keep(&data.boundaries[h]) => Some(HexValue {
                boundary: data.boundaries[h].clone(),
                value: data.value[r.start + k] as f64,
                low: data.low[r.start + k],
                covered: data.covered[r.start + k],
            }),
            _ => None,
        })
        .collect()
}

fn footfall_only(data: &ReleaseData) -> Result<(), Problem> {
    if data.manifest.spec.metric == Metric::Footfall && data.manifest.spec.unit.is_hex() {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a footfall release",
            "maps and tiles draw hex footfall; flows, presence and zone releases are served as values and in the views",
        ))
    }
}

/// A hex footfall release the caller may read, and the asked bin (0 by
/// default): what maps, tiles and TileJSON start from.
async fn hex_bin(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: &str,
    bin: Option<&str>,
) -> Result<(Arc<ReleaseData>, usize), Problem> {
    hex_bin_as(state, headers, id, bin, None).await
}

async fn hex_bin_as(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: &str,
    bin: Option<&str>,
    signed: Option<Signed<'_>>,
) -> Result<(Arc<ReleaseData>, usize), Problem> {
    let data = load_as(state, headers, id, signed).await?;
    footfall_only(&data)?;
    let b = bin_index(&data, bin)?.unwrap_or(0);
    Ok((data, b))
}

/// A PNG named by `parts`: from the client's cache (304) or the body cache
/// if possible, else drawn once off the async workers.
async fn png_once(
    state: &AppState,
    headers: &HeaderMap,
    data: &ReleaseData,
    parts: &[String],
    draw: impl FnOnce() -> Result<Vec<u8>, Problem> + Send + 'static,
) -> Result<Response, Problem> {
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let public = is_public(data);
    if let Some(r) = super::cached(state, headers, &parts, public) {
        return Ok(r);
    }
    let png = super::rendering(state, draw).await?;
    Ok(immutable(state, headers, (&parts, public), "image/png", || Ok(png)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapQuery {
    bin: Option<String>,
    width: Option<u32>,
}

pub async fn map_png(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<MapQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let (Path(id), Query(q)) = (path?, q?);
    let width = q.width.unwrap_or(1000);
    if !(render::MIN_MAP_PX..=render::MAX_MAP_PX).contains(&width) {
        return Err(Problem::bad_request(format!(
            "width must be in {}..={} pixels",
            render::MIN_MAP_PX,
            render::MAX_MAP_PX
        )));
    }
    let (data, b) = hex_bin(&state, &headers, &id, q.bin.as_deref()).await?;
    let width = render::map_width(width);
    let ds = state.dataset(&data.manifest.spec.dataset)?.clone();
    let parts = [
        "map".to_string(),
        id.clone(),
        data.manifest.values_sha256.clone(),
        b.to_string(),
        width.to_string(),
    ];
    let d = data.clone();
    png_once(&state, &headers, &data, &parts, move || {
        let data = d;
        let m = &data.manifest;
        let grid = &ds.releaser.grid;
        let tz = grid.tz;
        let start = data.bins[b].with_timezone(&tz);
        let end = data.bins.get(b + 1).map(|t| t.with_timezone(&tz));
        // Over covered hexes only: an uncovered hex's bar is 0, not a typical error.
        let r = data.bin_range(b);
        let mut cis: Vec<f64> = r.clone().filter(|i| data.covered[*i]).map(|i| data.ci95[i]).collect();
        cis.sort_by(f64::total_cmp);
        let median_ci = cis.get(cis.len() / 2).copied().unwrap_or(0.0);
        let unit = unit_of_dataset(&ds, m);
        let caption = vec![
            format!(
                "{} – {} ({}) · bin {} of 0–{} · H3 resolution {}",
                start.format("%a %d %b %Y %H:%M %:z"),
                end.map(|e| e.format("%H:%M %:z").to_string()).unwrap_or_else(|| "end".into()),
                m.timezone,
                b,
                data.bins.len() - 1,
                m.spec.res
            ),
            format!(
                "Privacy: ρ = {} (zCDP) on each day charged, ε = {} at δ = {:e} · {:?} noise, {:?} placement · unit: one device-day",
                render::human_number(m.rho, 4),
                render::human_number(m.epsilon, 3),
                m.delta,
                m.mechanism,
                m.placement
            ),
            format!(
                "95 % error bar ±{} ({unit}, median covered hex) · grey: below {} · white: no coverage · release {} · hexflow {}",
                render::human_number(median_ci, 3),
                render::human_number(m.display_threshold, 3),
                m.release_id,
                m.hexflow_version
            ),
        ];
        let title = format!(
            "{} — differentially private footfall",
            ds.releaser.policy.spec.title.clone().unwrap_or_else(|| m.spec.dataset.clone())
        );
        let text = MapText {
            title: &title,
            caption: &caption,
            unit: &unit,
        };
        render::map_png(grid, &hex_values(&data, b), data.scale_max, &text, width)
            .map_err(|e| Problem::internal("map rendering", e))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinQuery {
    bin: Option<String>,
    /// A signed tile URL's expiry (Unix seconds) and signature.
    exp: Option<i64>,
    sig: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileUrlQuery {
    bin: Option<String>,
    /// Validity in seconds (default 3,600; at most 86,400).
    ttl_s: Option<i64>,
}

/// `POST /api/v1/releases/{id}/tile-url`: a tile URL template that image
/// clients can load without a header, signed for this release until an
/// expiry, for whoever may read the release (its token is checked here
/// and never appears in the URL).
pub async fn tile_url(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<TileUrlQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let (Path(id), Query(q)) = (path?, q?);
    let ttl = q.ttl_s.unwrap_or(super::signing::DEFAULT_TTL_S);
    if !(1..=super::signing::MAX_TTL_S).contains(&ttl) {
        return Err(Problem::bad_request(format!(
            "ttl_s must be 1 to {} seconds",
            super::signing::MAX_TTL_S
        )));
    }
    let (data, b) = hex_bin(&state, &headers, &id, q.bin.as_deref()).await?;
    let key = state.tile_key()?;
    let expires = chrono::Utc::now().timestamp() + ttl;
    // The URL says `bin={b}`: the signature covers that very text.
    let bin = b.to_string();
    let sig = super::signing::sign(
        key,
        super::signing::Grant {
            release_id: &data.manifest.release_id,
            bin: &bin,
            expires,
        },
    );
    let base = public_base(&state, &headers).url;
    let expires_at = chrono::DateTime::<chrono::Utc>::from_timestamp(expires, 0).unwrap_or_default();
    Ok((
        // A credential for whoever holds it: kept by no cache.
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "release_id": id,
            "tiles": format!("{base}/api/v1/releases/{id}/tiles/{{z}}/{{x}}/{{y}}.png?bin={b}&exp={expires}&sig={sig}"),
            "expires_at": expires_at,
        })),
    )
        .into_response())
}

/// The base URL written into an answer, and whether that answer may be
/// kept by a shared cache.
///
/// `--public-url` is configuration: an answer built on it is the same for
/// every client and may be cached publicly. Without it the base is the
/// request's own `Host` (plain HTTP), and the answer must be `private`: a
/// shared cache would otherwise hand one client's `Host` to every other.
/// `Forwarded` and `X-Forwarded-*` are never read — any client can send
/// them, and a proxy passes them on unless told not to (issue 23: one
/// request with `X-Forwarded-Host: evil.example` behind nginx's
/// `proxy_cache` sent every later client's tiles to evil.example).
pub(super) struct Base {
    pub url: String,
    pub shareable: bool,
}

fn public_base(state: &AppState, headers: &HeaderMap) -> Base {
    match &state.config.public_url {
        Some(u) => Base {
            url: u.trim_end_matches('/').to_string(),
            shareable: true,
        },
        None => {
            warn_forwarded_without_public_url(headers);
            Base {
                url: host_url(headers),
                shareable: false,
            }
        }
    }
}

/// Behind a proxy without `--public-url` the URLs written name the proxy's
/// upstream (`http://hexflow/…` for nginx's `proxy_pass http://hexflow`):
/// said once in the log, the first time a request shows a proxy.
fn warn_forwarded_without_public_url(headers: &HeaderMap) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let proxied = ["forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-for"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if proxied && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "a request came through a proxy but --public-url is not set: TileJSON and tile URLs name this request's Host header over plain HTTP and are sent private; set --public-url to the URL clients use"
        );
    }
}

/// `http://` and the request's own `Host` (`localhost` when it has none,
/// or one with characters that do not belong in a host).
pub fn host_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)))
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// [west, south, east, north] of the covered hexes of a release.
fn hex_extent(data: &ReleaseData) -> Option<[f64; 4]> {
    let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    for ring in data.boundaries.values() {
        for (lon, lat) in ring {
            b = [b[0].min(*lon), b[1].min(*lat), b[2].max(*lon), b[3].max(*lat)];
        }
    }
    b[0].is_finite().then_some(b)
}

pub async fn tilejson(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<BinQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let (Path(id), Query(q)) = (path?, q?);
    let (data, b) = hex_bin(&state, &headers, &id, q.bin.as_deref()).await?;
    let ds = state.dataset(&data.manifest.spec.dataset)?;
    let Base { url: base, shareable } = public_base(&state, &headers);
    // The hexes' extent, not the study area's box: clients that respect
    // `bounds` would cut the hexes that reach past the area's edge.
    let bbox = hex_extent(&data).unwrap_or_else(|| crate::grid::bbox(&ds.releaser.grid.area));
    let m = &data.manifest;
    let doc = json!({
        "tilejson": "3.0.0",
        "name": format!("{} {} res {} bin {}", m.spec.dataset, m.spec.metric, m.spec.res, b),
        "description": format!("{} from {}; ρ = {} per day charged (ε = {} at δ = {:e})", unit_of_dataset(ds, m), data.bins[b], render::human_number(m.rho, 4), render::human_number(m.epsilon, 3), m.delta),
        "attribution": "hexflow differentially private release",
        "tiles": [format!("{base}/api/v1/releases/{id}/tiles/{{z}}/{{x}}/{{y}}.png?bin={b}")],
        "minzoom": 8,
        "maxzoom": render::MAX_ZOOM,
        "bounds": bbox,
        "center": [(bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0, 11],
    });
    let mut resp = immutable(
        &state,
        &headers,
        (
            &["tilejson", &id, &m.values_sha256, &b.to_string(), &base],
            is_public(&data) && shareable,
        ),
        "application/json",
        || serde_json::to_vec(&doc).map_err(|e| Problem::internal("tilejson", e)),
    );
    if is_public(&data) {
        // Private only for its Host-made URLs: still any page's to load.
        resp.extensions_mut().insert(super::OpenToAnyOrigin);
    }
    Ok(resp)
}

pub async fn tile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<(String, u8, u32, String)>, axum::extract::rejection::PathRejection>,
    q: Result<Query<BinQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let (Path((id, z, x, y)), Query(q)) = (path?, q?);
    let y: u32 = y
        .strip_suffix(".png")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Problem::bad_request(format!("tile {y:?}: expected {{y}}.png")))?;
    if z > render::MAX_ZOOM || x >= (1u32 << z) || y >= (1u32 << z) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no such tile",
            format!(
                "tile {z}/{x}/{y} does not exist (zoom 0..={}, x and y below 2^z)",
                render::MAX_ZOOM
            ),
        ));
    }
    let signed = match (q.exp, q.sig.as_deref()) {
        (Some(expires), Some(sig)) => Some(Signed {
            expires,
            sig,
            bin: q.bin.as_deref().unwrap_or_default(),
        }),
        (None, None) => None,
        _ => return Err(Problem::bad_request("a signed tile URL has both exp= and sig=")),
    };
    let (data, b) = hex_bin_as(&state, &headers, &id, q.bin.as_deref(), signed).await?;
    let parts = [
        "tile".to_string(),
        id.clone(),
        data.manifest.values_sha256.clone(),
        format!("{z}/{x}/{y}/{b}"),
    ];
    let d = data.clone();
    png_once(&state, &headers, &data, &parts, move || {
        let data = d;
        // Only the hexes near the tile are copied out of the release.
        let hexes = hex_values_where(&data, b, |boundary| render::touches_tile(boundary, (z, x, y)));
        render::tile_png(&hexes, data.scale_max, (z, x, y)).map_err(|e| Problem::internal("tile rendering", e))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    dataset: Option<String>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
}

pub async fn ledger(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    ledger_cached(&state, "ledger", &uri, move || {
        let p = &ds.releaser.policy;
        let mut ledger = ds.releaser.open_ledger().map_err(|e| Problem::ledger("ledger", e))?;
        let spend = ledger.spend(p.dataset()).map_err(|e| Problem::ledger("ledger", e))?;
        let days: Vec<_> = spend
            .into_iter()
            .filter(|s| q.from.is_none_or(|f| s.day >= f) && q.to.is_none_or(|t| s.day <= t))
            .collect();
        let mut totals: HashMap<String, f64> = HashMap::new();
        for d in &days {
            *totals.entry(d.audience.clone()).or_default() += d.rho_spent;
        }
        Ok(json!({
            "dataset": p.dataset(),
            "unit": "device-day",
            "delta": p.spec.privacy.delta,
            "dataset_cap_rho_per_day": p.spec.privacy.rho_per_day_cap,
            "audience_caps_rho_per_day": p.spec.audiences.iter().map(|(k, a)| (k.clone(), json!(a.rho_per_day))).collect::<serde_json::Map<_, _>>(),
            "total_rho_by_audience": totals,
            "days": days,
        }))
    })
    .await
}

/// A ledger answer, built once per version of the ledger and of the release
/// index (SQLite says when any connection committed): the public's
/// transparency page is read far more often than the ledger changes.
async fn ledger_cached(
    state: &Arc<AppState>,
    route: &str,
    uri: &axum::http::Uri,
    build: impl FnOnce() -> Result<Value, Problem> + Send + 'static,
) -> Result<Response, Problem> {
    // Read before the answer is built: a commit in between makes the next
    // request build again, never a stale answer stay.
    let version = if let Some(v) = state.pushed_ledger_version() {
        Some(v)
    } else if state.config.ledger.is_postgres() {
        let st = state.clone();
        blocking(move || Ok(st.ledger_version())).await?
    } else {
        // SQLite answers from memory, without a thread hop.
        state.ledger_version()
    };
    let index_version = state
        .index
        .read()
        .map_err(|e| Problem::internal("release index", e))?
        .version();
    let key = format!("{route}\n{index_version}\n{}", uri.query().unwrap_or_default());
    let cached = version.and_then(|v| state.ledger_bodies.get(v, &key));
    let body = match cached {
        Some(body) => body,
        None => {
            let value = blocking(build).await?;
            let body = super::tight(serde_json::to_vec(&value).map_err(|e| Problem::internal("ledger", e))?);
            if let Some(v) = version {
                state.ledger_bodies.put(v, key, body.clone());
            }
            body
        }
    };
    Ok((no_cache(), [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn ledger_releases(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let ds = state.pick(q.dataset.as_ref())?.clone();
    let st = state.clone();
    ledger_cached(&state, "ledger/releases", &uri, move || {
        let mut ledger = ds.releaser.open_ledger().map_err(|e| Problem::ledger("ledger", e))?;
        let rows = ledger
            .releases(ds.releaser.policy.dataset())
            .map_err(|e| Problem::ledger("ledger", e))?;
        let index = st.index.read().map_err(|e| Problem::internal("release index", e))?;
        let rows: Vec<Value> = rows
            .into_iter()
            .filter(|r| {
                let day = |k: &str| {
                    r.spec
                        .get(k)
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<NaiveDate>().ok())
                };
                q.from.is_none_or(|f| day("to").is_none_or(|t| t >= f))
                    && q.to.is_none_or(|t| day("from").is_none_or(|f| f <= t))
            })
            .map(|r| {
                let eps = index.get(&r.release_id).map(|s| s.epsilon);
                let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("epsilon".into(), json!(eps));
                }
                v
            })
            .collect();
        Ok(json!({ "total": rows.len(), "releases": rows }))
    })
    .await
}
