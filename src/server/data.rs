//! The release store as the server sees it: an index of manifests and a
//! small cache of loaded (noisy) values with their public geometry.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, Utc};
use h3o::CellIndex;
use polars::prelude::*;
use serde::Serialize;

use super::Problem;
use crate::release::{Manifest, Unit};
use crate::store::Metric;

/// What the release list shows of a release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseSummary {
    pub release_id: String,
    pub dataset: String,
    pub audience: String,
    pub metric: Metric,
    pub unit: Unit,
    /// The H3 resolution; none for a zone release.
    pub res: Option<u8>,
    pub bin: crate::privacy::Bin,
    /// Presence: the period of the day and the split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<crate::vocab::By>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub rho: f64,
    pub epsilon: f64,
    pub delta: f64,
    pub bins: usize,
    pub keys: usize,
    pub created_at: DateTime<Utc>,
}

impl ReleaseSummary {
    fn of(m: &Manifest) -> Self {
        Self {
            release_id: m.release_id.clone(),
            dataset: m.spec.dataset.clone(),
            audience: m.spec.audience.clone(),
            metric: m.spec.metric,
            unit: m.spec.unit,
            res: (m.spec.unit == Unit::Hex).then_some(m.spec.res),
            bin: m.spec.bin,
            period: m.spec.period.clone(),
            by: m.spec.by,
            from: m.spec.from,
            to: m.spec.to,
            rho: m.rho,
            epsilon: m.epsilon,
            delta: m.delta,
            bins: m.bins,
            keys: m.keys,
            created_at: m.created_at,
        }
    }
}

/// Every stored release of the served datasets, ordered by dataset, first
/// day, metric and resolution.
#[derive(Debug, Default)]
pub struct ReleaseIndex {
    releases: Vec<ReleaseSummary>,
    by_id: HashMap<String, usize>,
    /// Distinct for every scan in this process: answers built from the
    /// index are cached under it (see `ListCache`).
    version: u64,
}

/// Versions of scans, process-wide.
static SCANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ReleaseIndex {
    /// Reads every `manifest.json` under `<data-dir>/releases/<dataset>/`.
    /// Temporary folders (`.<id>.<pid>.tmp`) of unfinished releases are
    /// skipped: they are not published.
    pub fn scan<'a>(data_dir: &Path, datasets: impl IntoIterator<Item = &'a String>) -> Self {
        let mut releases = Vec::new();
        for ds in datasets {
            let Ok(entries) = std::fs::read_dir(data_dir.join("releases").join(ds)) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let manifest = std::fs::read(e.path().join("manifest.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
                match manifest {
                    Some(m) => releases.push(ReleaseSummary::of(&m)),
                    None => tracing::warn!("{}: no readable manifest.json, not served", e.path().display()),
                }
            }
        }
        releases.sort_by(|a, b| {
            (&a.dataset, a.from, a.metric.as_str(), a.res, &a.release_id).cmp(&(
                &b.dataset,
                b.from,
                b.metric.as_str(),
                b.res,
                &b.release_id,
            ))
        });
        let by_id = releases
            .iter()
            .enumerate()
            .map(|(i, r)| (r.release_id.clone(), i))
            .collect();
        let version = SCANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            releases,
            by_id,
            version,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.releases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.releases.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&ReleaseSummary> {
        self.by_id.get(id).map(|i| &self.releases[*i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &ReleaseSummary> {
        self.releases.iter()
    }
}

/// The key of a value: a hex or a named zone (footfall), or a pair of
/// hex-zones or named zones (flows). Named zones index `ReleaseData::zone_ids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Hex(CellIndex),
    Pair(CellIndex, CellIndex),
    Zone(u32),
    ZonePair(u32, u32),
}

/// A release's values in memory, bin-major (`value[b * keys + k]`).
pub struct ReleaseData {
    pub manifest: Manifest,
    /// The local time of the release's grid (local starts and dates).
    pub tz: chrono_tz::Tz,
    pub bins: Vec<DateTime<Utc>>,
    pub keys: Vec<Key>,
    /// Ids of the named zones of a zone release (empty otherwise).
    pub zone_ids: Vec<String>,
    /// Places (hexes, zones or pairs) per group: `keys` repeats them once
    /// per (segment, origin) group of a presence release.
    pub places: usize,
    /// The (segment, origin group) of each group; one `all` group for
    /// footfall and flows. Key `k` is in group `k / places`.
    pub groups: Vec<(String, String)>,
    /// Presence: estimated people and their bar, where the policy gave a
    /// factor (`None` in the outer option for other metrics).
    pub people: Option<Vec<Option<f64>>>,
    pub people_ci95: Option<Vec<Option<f64>>>,
    /// Rounded and clamped at 0, for display; `ci95` is its error bar.
    pub value: Vec<i64>,
    pub ci95: Vec<f64>,
    pub low: Vec<bool>,
    /// Whether any cell reaches the key ("no coverage" otherwise: an exact
    /// 0 without noise, distinct from "below threshold").
    pub covered: Vec<bool>,
    /// The noisy value itself (unbiased), its exact 95 % bar and the sd of
    /// its noise: what sums and views use.
    pub estimate: Vec<f64>,
    pub estimate_ci95: Vec<f64>,
    pub noise_sd: Vec<f64>,
    /// Top of the colour scale, the same for every bin so that colours
    /// compare across the time slider: the 99th percentile of the values
    /// shown (not flagged low). Computed from noisy values only.
    pub scale_max: f64,
    /// Boundary (lon, lat) of every hex or zone in the keys.
    pub boundaries: HashMap<CellIndex, Vec<(f64, f64)>>,
    /// What all of this holds in memory ([`Self::heap_bytes`]), counted
    /// once at load: the value cache is bounded by it.
    bytes: usize,
}

impl ReleaseData {
    /// Reads `values.parquet` and checks it against the manifest (count,
    /// layout, SHA-256): a damaged release is refused, never half-served.
    pub fn load(dir: &Path) -> Result<Self, Problem> {
        let corrupt = |why: String| Problem::internal(&format!("reading release {}", dir.display()), why);
        let manifest: Manifest = std::fs::read(dir.join("manifest.json"))
            .map_err(|e| corrupt(e.to_string()))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| corrupt(e.to_string())))?;
        let path = dir.join("values.parquet");
        let sha = crate::util::sha256_file(&path).map_err(|e| corrupt(e.to_string()))?;
        if sha != manifest.values_sha256 {
            return Err(corrupt(format!(
                "values.parquet has SHA-256 {sha}, the manifest says {}",
                manifest.values_sha256
            )));
        }
        let df = crate::table::read_parquet(&path).map_err(|e| corrupt(e.to_string()))?;
        let p = |e: PolarsError| corrupt(e.to_string());
        let n = df.height();
        let k = manifest.keys.max(1);
        if n != manifest.values || n != k * manifest.bins {
            return Err(corrupt(format!(
                "{n} rows, the manifest says {} keys × {} bins",
                manifest.keys, manifest.bins
            )));
        }
        let hex = |name: &str| -> Result<Vec<CellIndex>, Problem> {
            let col = df.column(name).map_err(p)?.str().map_err(p)?;
            col.iter()
                .take(k)
                .map(|s| {
                    s.and_then(|s| s.parse::<CellIndex>().ok())
                        .ok_or_else(|| corrupt(format!("bad {name} value")))
                })
                .collect()
        };
        let text = |name: &str| -> Result<Vec<String>, Problem> {
            let col = df.column(name).map_err(p)?.str().map_err(p)?;
            col.iter()
                .take(k)
                .map(|s| s.map(str::to_string).ok_or_else(|| corrupt(format!("empty {name}"))))
                .collect()
        };
        let mut zone_ids = Vec::new();
        let groups = match &manifest.presence {
            Some(p) if !p.groups.is_empty() && k.is_multiple_of(p.groups.len()) => p.groups.clone(),
            Some(p) => {
                return Err(corrupt(format!(
                    "{k} keys per bin do not split into the manifest's {} groups",
                    p.groups.len()
                )));
            }
            None => vec![(
                crate::vocab::ALL_GROUPS.to_string(),
                crate::vocab::ALL_GROUPS.to_string(),
            )],
        };
        let places = k / groups.len();
        let keys: Vec<Key> = match (manifest.spec.metric, manifest.spec.unit) {
            (Metric::Footfall | Metric::Presence, Unit::Hex) => hex("hex_id")?.into_iter().map(Key::Hex).collect(),
            (Metric::Presence, Unit::Zone) => {
                zone_ids = text("zone_id")?;
                zone_ids.truncate(places);
                (0..k).map(|i| Key::Zone((i % places) as u32)).collect()
            }
            (Metric::Flows, Unit::Hex) => hex("origin")?
                .into_iter()
                .zip(hex("dest")?)
                .map(|(o, d)| Key::Pair(o, d))
                .collect(),
            (Metric::Footfall, Unit::Zone) => {
                zone_ids = text("zone_id")?;
                (0..zone_ids.len() as u32).map(Key::Zone).collect()
            }
            (Metric::Flows, Unit::Zone) => {
                // Pairs are origin-major: the first z rows list every dest.
                let z = (k as f64).sqrt().round() as usize;
                let dest = text("dest")?;
                zone_ids = dest[..z.min(dest.len())].to_vec();
                (0..k as u32)
                    .map(|i| Key::ZonePair(i / z as u32, i % z as u32))
                    .collect()
            }
        };
        let starts = df
            .column("bin_start")
            .map_err(p)?
            .as_materialized_series()
            .to_physical_repr()
            .i64()
            .map_err(p)?
            .clone();
        let bins: Vec<DateTime<Utc>> = (0..manifest.bins)
            .map(|b| {
                starts
                    .get(b * k)
                    .and_then(DateTime::<Utc>::from_timestamp_micros)
                    .ok_or_else(|| corrupt("bad bin_start".into()))
            })
            .collect::<Result<_, _>>()?;
        let value: Vec<i64> = df
            .column("value")
            .map_err(p)?
            .i64()
            .map_err(p)?
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect();
        let ci95: Vec<f64> = df
            .column("ci95")
            .map_err(p)?
            .f64()
            .map_err(p)?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect();
        let low: Vec<bool> = df
            .column("low")
            .map_err(p)?
            .bool()
            .map_err(p)?
            .iter()
            .map(|v| v.unwrap_or(true))
            .collect();
        // Releases written before hexflow published the estimate: the
        // rounded value stands in for it, and the bar gives the sd back.
        let floats = |name: &str| -> Result<Option<Vec<f64>>, Problem> {
            match df.column(name) {
                Err(_) => Ok(None),
                Ok(c) => Ok(Some(
                    c.f64().map_err(p)?.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
                )),
            }
        };
        let estimate = floats("estimate")?.unwrap_or_else(|| value.iter().map(|v| *v as f64).collect());
        let estimate_ci95 = floats("estimate_ci95")?.unwrap_or_else(|| ci95.clone());
        let noise_sd = floats("noise_sd")?.unwrap_or_else(|| {
            ci95.iter()
                .map(|c| crate::views::noise_sd_of_ci95(manifest.placement, manifest.mechanism, *c))
                .collect()
        });
        let optional = |name: &str| -> Result<Option<Vec<Option<f64>>>, Problem> {
            match df.column(name) {
                Err(_) => Ok(None),
                Ok(c) => Ok(Some(c.f64().map_err(p)?.iter().collect())),
            }
        };
        let (people, people_ci95) = (optional("people")?, optional("people_ci95")?);
        let covered: Vec<bool> = match df.column("covered") {
            Ok(c) => c.bool().map_err(p)?.iter().map(|v| v.unwrap_or(false)).collect(),
            Err(_) => ci95.iter().map(|c| *c > 0.0).collect(),
        };
        let mut shown: Vec<i64> = (0..value.len())
            .filter(|i| covered[*i] && !low[*i])
            .map(|i| value[i])
            .collect();
        shown.sort_unstable();
        let p99 = shown
            .get(shown.len().saturating_sub(1) * 99 / 100)
            .copied()
            .unwrap_or(0) as f64;
        let scale_max = p99.max(manifest.display_threshold * 2.0).max(1.0);
        let mut boundaries = HashMap::new();
        for key in &keys {
            let cells: &[CellIndex] = match key {
                Key::Hex(h) => std::slice::from_ref(h),
                Key::Pair(o, _) => std::slice::from_ref(o),
                Key::Zone(_) | Key::ZonePair(..) => &[],
            };
            for c in cells {
                boundaries
                    .entry(*c)
                    .or_insert_with(|| c.boundary().iter().map(|ll| (ll.lng(), ll.lat())).collect());
            }
        }
        // The manifest's JSON as a stand-in for its in-memory size (a few
        // KiB: strings, a spec, expected errors).
        let manifest_bytes = std::fs::metadata(dir.join("manifest.json")).map_or(0, |m| m.len() as usize);
        let mut data = Self {
            tz: manifest.timezone.parse().unwrap_or(chrono_tz::UTC),
            manifest,
            bins,
            keys,
            zone_ids,
            places,
            groups,
            people,
            people_ci95,
            value,
            ci95,
            low,
            covered,
            estimate,
            estimate_ci95,
            noise_sd,
            scale_max,
            boundaries,
            bytes: 0,
        };
        data.bytes = data.heap_bytes() + manifest_bytes;
        Ok(data)
    }

    /// Bytes this release holds in memory: every vector's capacity times
    /// its element's size, the strings, and the boundary map with its
    /// rings (a hash map's slot is its key, its value and one control
    /// byte); the allocator's own overhead is not counted. For a hex
    /// footfall release it is 42 bytes a value (7 vectors of 8 or 1
    /// bytes) and ~150 bytes a hex (its key and outline): a daily release,
    /// one value a hex, holds ~190 bytes a value.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        fn vec<T>(v: &Vec<T>) -> usize {
            v.capacity() * size_of::<T>()
        }
        let strings = |v: &Vec<String>| vec(v) + v.iter().map(String::capacity).sum::<usize>();
        let opt = |v: &Option<Vec<Option<f64>>>| v.as_ref().map_or(0, vec);
        let groups = vec(&self.groups)
            + self
                .groups
                .iter()
                .map(|(a, b)| a.capacity() + b.capacity())
                .sum::<usize>();
        let boundaries = self.boundaries.capacity() * (size_of::<(CellIndex, Vec<(f64, f64)>)>() + 1)
            + self.boundaries.values().map(vec).sum::<usize>();
        size_of::<Self>()
            + vec(&self.bins)
            + vec(&self.keys)
            + strings(&self.zone_ids)
            + groups
            + opt(&self.people)
            + opt(&self.people_ci95)
            + vec(&self.value)
            + vec(&self.ci95)
            + vec(&self.low)
            + vec(&self.covered)
            + vec(&self.estimate)
            + vec(&self.estimate_ci95)
            + vec(&self.noise_sd)
            + boundaries
    }

    /// [`Self::heap_bytes`] as counted at load (with the manifest's).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Index range of bin `b`'s values.
    pub fn bin_range(&self, b: usize) -> std::ops::Range<usize> {
        let k = self.keys.len();
        b * k..(b + 1) * k
    }
}

/// Recently used releases (values are immutable, so entries never go
/// stale), bounded by the bytes they hold ([`ReleaseData::bytes`]) rather
/// than by the number of releases: a view reads hundreds of small daily
/// releases, a map one large hourly one, and both should stay in memory
/// between requests.
#[derive(Default)]
pub struct Cache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// Most recently used first.
    entries: VecDeque<(String, Arc<ReleaseData>)>,
    bytes: usize,
}

/// Most bytes of release values kept. It was 8 M values, said to be 20
/// bytes each, but they were ~60 (issue 23: serve at 1.2–1.36 GB).
pub const CACHE_BYTES: usize = 256 << 20;

impl Cache {
    /// The release's data if it is in memory (no I/O: safe on the async
    /// runtime, which a hit then never leaves).
    pub fn get(&self, id: &str) -> Option<Arc<ReleaseData>> {
        let mut c = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let pos = c.entries.iter().position(|(k, _)| k == id)?;
        let hit = c.entries.remove(pos)?;
        let data = hit.1.clone();
        c.entries.push_front(hit);
        Some(data)
    }

    pub fn get_or_load(&self, id: &str, dir: &Path) -> Result<Arc<ReleaseData>, Problem> {
        if let Some(data) = self.get(id) {
            return Ok(data);
        }
        let data = Arc::new(ReleaseData::load(dir)?);
        let mut c = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Loaded twice at once: keep the first, count it once.
        if let Some((_, held)) = c.entries.iter().find(|(k, _)| k == id) {
            return Ok(held.clone());
        }
        c.bytes += data.bytes() + id.len();
        c.entries.push_front((id.to_string(), data.clone()));
        // The one just loaded stays, even alone over the bound: it is in
        // use (and counted) until its request ends.
        while c.bytes > CACHE_BYTES && c.entries.len() > 1 {
            if let Some((k, old)) = c.entries.pop_back() {
                c.bytes -= old.bytes() + k.len();
            }
        }
        Ok(data)
    }

    /// (releases, bytes) held now.
    pub fn size(&self) -> (usize, usize) {
        let c = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (c.entries.len(), c.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counted bytes are what the vectors hold: at least 42 bytes per
    /// value of a hex footfall release (7 value vectors of 8 or 1 bytes),
    /// a key per hex and its outline, never the 20 a value the old
    /// comment said.
    #[test]
    fn a_release_counts_what_its_vectors_hold() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let policy = crate::policy::Policy::load(&dir.join("tiny.toml")).expect("policy");
        let grid = policy.load_grid().expect("grid");
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let day: NaiveDate = "2025-03-03".parse().expect("day");
        let sim = tmp.path().join("sim");
        crate::simulate::simulate(&grid, day, day, &sim, crate::simulate::Format::Csv, 7, None).expect("simulate");
        let ingestor = crate::ingest::Ingestor::new(policy.clone(), &data).expect("ingestor");
        for e in std::fs::read_dir(&sim).expect("sim").flatten() {
            if e.path().extension().is_some_and(|x| x == "csv") {
                ingestor.ingest(&e.path(), Default::default()).expect("ingest");
            }
        }
        let releaser = crate::release::Releaser::new(policy, &data).expect("releaser");
        crate::release::publish::publish(&releaser, &data).expect("publish");
        let rel = std::fs::read_dir(data.join("releases/tiny"))
            .expect("releases")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("r-"))
            .expect("a release")
            .path();
        let r = ReleaseData::load(&rel).expect("load");
        let values = r.value.len();
        assert!(values > 0);
        let per_value = (8 * 5 + 2) * values + std::mem::size_of::<Key>() * r.keys.len();
        let rings: usize = r.boundaries.values().map(|b| b.len() * 16).sum();
        assert!(r.bytes() >= per_value + rings, "{} < {per_value} + {rings}", r.bytes());
        // And not wildly more: the slack is capacity, the map and the manifest.
        assert!(r.bytes() <= 2 * (per_value + rings) + (64 << 10), "{}", r.bytes());

        // The cache holds what it says and never more than its bound
        // beyond the entry in use.
        let cache = Cache::default();
        cache.get_or_load("r", &rel).expect("load");
        assert_eq!(cache.size(), (1, r.bytes() + 1));
    }
}
