//! One row model for every values format (JSON, CSV, GeoJSON properties,
//! Parquet): the same fields, in the same order, with the same types.
//!
//! A row holds its place's ids, names and centre (zones and flows carry
//! names and centroids for arc layers; hexes their centre), the presence
//! keys, the bin as UTC and as local time (and the local date for daily and
//! longer bins, so a spreadsheet shows the 14th, not the 13th), then the
//! noisy value with its error bars.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use h3o::CellIndex;
use polars::prelude::*;

use super::Problem;
use super::data::{Key, ReleaseData};

/// One field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Num(f64),
    Int(i64),
    Bool(bool),
    Instant(DateTime<Utc>),
    Date(NaiveDate),
    Null,
}

impl serde::Serialize for Cell {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Text(t) => s.serialize_str(t),
            // Not finite: null, as serde_json writes it.
            Cell::Num(x) => x.serialize(s),
            Cell::Int(x) => s.serialize_i64(*x),
            Cell::Bool(b) => s.serialize_bool(*b),
            Cell::Instant(t) => t.serialize(s),
            Cell::Date(d) => s.collect_str(d),
            Cell::Null => s.serialize_none(),
        }
    }
}

/// A row as a JSON object (JSON rows, GeoJSON properties), written
/// straight from its fields in the row model's order: building a
/// `serde_json::Map` (a B-tree) for every row and dropping it was most of
/// a values answer's first render.
pub struct JsonRow(pub Vec<(&'static str, Cell)>);

impl serde::Serialize for JsonRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Cell {
    /// RFC 4180: a field with a comma, quote or line break is quoted, its
    /// quotes doubled.
    fn csv(&self) -> String {
        match self {
            Cell::Text(s) if s.contains([',', '"', '\n', '\r']) => format!("\"{}\"", s.replace('"', "\"\"")),
            Cell::Text(s) => s.clone(),
            Cell::Num(x) => x.to_string(),
            Cell::Int(x) => x.to_string(),
            Cell::Bool(b) => b.to_string(),
            Cell::Instant(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
            Cell::Date(d) => d.to_string(),
            Cell::Null => String::new(),
        }
    }
}

/// Names and centroids of the grid's zones (public geometry), computed
/// once per dataset: every answer that names zones needs them.
pub struct Places {
    zones: HashMap<String, (String, [f64; 2])>,
}

impl Places {
    pub fn of(grid: &crate::grid::Grid) -> Self {
        use geo::Centroid;
        Self {
            zones: grid
                .zones
                .iter()
                .map(|z| {
                    let c = z.area.centroid().map_or([0.0, 0.0], |c| [c.x(), c.y()]);
                    (z.id.clone(), (z.name.clone(), c))
                })
                .collect(),
        }
    }

    /// A zone's name and centroid (its id and no point if the grid lost it).
    pub fn zone(&self, id: &str) -> (String, Option<[f64; 2]>) {
        match self.zones.get(id) {
            Some((name, c)) => (name.to_string(), Some(*c)),
            None => (id.to_string(), None),
        }
    }
}

pub fn cell_centre(c: CellIndex) -> [f64; 2] {
    let ll = h3o::LatLng::from(c);
    [ll.lng(), ll.lat()]
}

/// `x` with `digits` decimals (full f64 precision is noise).
pub fn round_to(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn coords(prefix: &'static [&'static str; 2], c: Option<[f64; 2]>) -> [(&'static str, Cell); 2] {
    let v = |k: usize| c.map_or(Cell::Null, |c| Cell::Num(round_to(c[k], 6)));
    [(prefix[0], v(0)), (prefix[1], v(1))]
}

/// The fields of value `i`, in the order of every format.
pub fn row(data: &ReleaseData, places: &Places, i: usize) -> Vec<(&'static str, Cell)> {
    let k = data.keys.len().max(1);
    let b = i / k;
    let zone_id = |z: u32| data.zone_ids.get(z as usize).cloned().unwrap_or_default();
    let mut f: Vec<(&'static str, Cell)> = Vec::with_capacity(24);
    match data.keys[i % k] {
        Key::Hex(h) => {
            f.push(("hex_id", Cell::Text(h.to_string())));
            f.extend(coords(&["lon", "lat"], Some(cell_centre(h))));
        }
        Key::Pair(o, d) => {
            f.push(("origin", Cell::Text(o.to_string())));
            f.push(("dest", Cell::Text(d.to_string())));
            f.extend(coords(&["origin_lon", "origin_lat"], Some(cell_centre(o))));
            f.extend(coords(&["dest_lon", "dest_lat"], Some(cell_centre(d))));
        }
        Key::Zone(z) => {
            let id = zone_id(z);
            let (name, c) = places.zone(&id);
            f.push(("zone_id", Cell::Text(id)));
            f.push(("zone_name", Cell::Text(name)));
            f.extend(coords(&["lon", "lat"], c));
        }
        Key::ZonePair(o, d) => {
            let (o, d) = (zone_id(o), zone_id(d));
            let ((on, oc), (dn, dc)) = (places.zone(&o), places.zone(&d));
            f.push(("origin", Cell::Text(o)));
            f.push(("dest", Cell::Text(d)));
            f.push(("origin_name", Cell::Text(on)));
            f.push(("dest_name", Cell::Text(dn)));
            f.extend(coords(&["origin_lon", "origin_lat"], oc));
            f.extend(coords(&["dest_lon", "dest_lat"], dc));
        }
    }
    if let Some(p) = &data.manifest.presence {
        let (segment, origin) = &data.groups[(i % k) / data.places.max(1)];
        f.push(("period", Cell::Text(p.period.clone())));
        f.push(("segment", Cell::Text(segment.clone())));
        f.push(("origin", Cell::Text(origin.clone())));
    }
    f.push(("bin_start", Cell::Instant(data.bins[b])));
    f.push(("local_start", Cell::Text(local_start(data, b))));
    if data.manifest.spec.bin != crate::privacy::Bin::Hour {
        f.push(("local_date", Cell::Date(local_date(data, b))));
    }
    f.push(("value", Cell::Int(data.value[i])));
    f.push(("ci95", Cell::Num(data.ci95[i])));
    f.push(("low", Cell::Bool(data.low[i])));
    f.push(("covered", Cell::Bool(data.covered[i])));
    f.push(("estimate", Cell::Num(round_to(data.estimate[i], 3))));
    f.push(("estimate_ci95", Cell::Num(data.estimate_ci95[i])));
    f.push(("noise_sd", Cell::Num(round_to(data.noise_sd[i], 4))));
    if let Some(people) = &data.people {
        let ci = data.people_ci95.as_ref().and_then(|c| c.get(i).copied().flatten());
        let opt = |x: Option<f64>| x.map_or(Cell::Null, Cell::Num);
        f.push(("people", opt(people.get(i).copied().flatten().map(|p| round_to(p, 3)))));
        f.push(("people_ci95", opt(ci)));
    }
    f
}

/// The start of bin `b` in the release's local time, with its offset
/// (`2025-10-26T02:00:00+01:00`: the repeated hour of the autumn change
/// is told apart by its offset).
pub fn local_start(data: &ReleaseData, b: usize) -> String {
    data.bins[b]
        .with_timezone(&data.tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// The local date bin `b` starts on.
pub fn local_date(data: &ReleaseData, b: usize) -> NaiveDate {
    data.bins[b].with_timezone(&data.tz).date_naive()
}

/// RFC 4180 CSV: a header, CRLF line ends.
pub fn csv(data: &ReleaseData, places: &Places, idx: &[usize]) -> Vec<u8> {
    let mut out = String::new();
    for (n, &i) in idx.iter().enumerate() {
        let fields = row(data, places, i);
        if n == 0 {
            out.push_str(&fields.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
        }
        out.push_str(&fields.iter().map(|(_, v)| v.csv()).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// Parquet with plain types: text as strings, instants as UTC timestamps,
/// local dates as dates. The embedded Arrow schema is the oldest-compatible
/// one (`large_string`): polars' own would declare text as `string_view`,
/// which older Arrow readers (GDAL, duckdb, pandas) do not know.
pub fn parquet(data: &ReleaseData, places: &Places, idx: &[usize]) -> Result<Vec<u8>, Problem> {
    let err = |e: PolarsError| Problem::internal("values", e);
    let rows: Vec<Vec<(&'static str, Cell)>> = idx.iter().map(|&i| row(data, places, i)).collect();
    let Some(first) = rows.first() else {
        return Err(Problem::internal("values", "no rows"));
    };
    let mut cols: Vec<Column> = Vec::new();
    for (c, (name, sample)) in first.iter().enumerate() {
        let cells = rows.iter().map(|r| &r[c].1);
        let name: PlSmallStr = (*name).into();
        let col = match sample {
            Cell::Text(_) => Column::new(
                name,
                cells
                    .map(|v| match v {
                        Cell::Text(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Cell::Int(_) => Column::new(
                name,
                cells
                    .map(|v| match v {
                        Cell::Int(x) => Some(*x),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Cell::Bool(_) => Column::new(
                name,
                cells
                    .map(|v| match v {
                        Cell::Bool(x) => Some(*x),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Cell::Instant(_) => Int64Chunked::from_iter_options(
                name,
                cells.map(|v| match v {
                    Cell::Instant(t) => Some(t.timestamp_micros()),
                    _ => None,
                }),
            )
            .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
            .into_column(),
            Cell::Date(_) => DateChunked::from_naive_date_options(
                name,
                cells.map(|v| match v {
                    Cell::Date(d) => Some(*d),
                    _ => None,
                }),
            )
            .into_column(),
            // Numbers, and columns whose first value is null (people).
            Cell::Num(_) | Cell::Null => Column::new(
                name,
                cells
                    .map(|v| match v {
                        Cell::Num(x) => Some(*x),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        cols.push(col);
    }
    let mut df = DataFrame::new_infer_height(cols).map_err(err)?;
    let arrow = df.schema().to_arrow(CompatLevel::oldest());
    let schema_key = polars_parquet::arrow::write::schema_to_metadata_key(&arrow);
    let mut out = Vec::new();
    ParquetWriter::new(&mut out)
        .with_compression(ParquetCompression::Zstd(None))
        .with_key_value_metadata(Some(KeyValueMetadata::Static(vec![schema_key])))
        .finish(&mut df)
        .map_err(err)?;
    Ok(out)
}
