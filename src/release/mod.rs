//! Releases: differentially private footfall and flows, immutable once
//! written.
//!
//! The order of a release follows OpenDP's: build the measurement and get its
//! cost (`privacy::mechanism`), commit the charge (`privacy::ledger`), and
//! only then read the counts and draw the noise. A release is stored under
//! `<data-dir>/releases/<dataset>/<release-id>/` as `values.parquet` and
//! `manifest.json`, written in a temporary folder and renamed into place, so
//! a release either exists whole or not at all.
//!
//! The key set of a release (hexes or zone pairs, and bins) comes from the
//! grid and the spec, never from the data; every key gets a noisy value.

pub mod jobs;
pub mod publish;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::grid::weights::WeightMatrix;
use crate::grid::{Grid, GridError};
use crate::policy::Policy;
use crate::privacy::Bin;
use crate::privacy::errorbar::{self, Bar};
use crate::privacy::ledger::{Charge, ChargeRequest, Ledger, LedgerError, LedgerUrl, ReleaseLock, ReleaseState};
use crate::privacy::mechanism::{self, Calibrated, MechanismError};
use crate::privacy::sensitivity::{self, Placement, Sensitivity};
use crate::store::{CountStore, Metric, StoreError};
use crate::{table, util};
pub use spec::{ReleaseSpec, SpecError, Unit};

/// OpenDP version the mechanisms come from (stated in every manifest).
pub const OPENDP_VERSION: &str = "0.16.0";

/// Errors of a release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Grid(#[from] GridError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Mechanism(#[from] MechanismError),
    #[error(
        "no {metric} data stored for {count} day(s) of the window, first {first}; a release needs every day it charges"
    )]
    NoData {
        metric: Metric,
        count: usize,
        first: NaiveDate,
    },
    #[error(
        "release {id} was published but its files are missing from {dir}; restore them from a backup (hexflow never draws new noise for a published release)"
    )]
    PublishedButMissing { id: String, dir: PathBuf },
    #[error("release {id} was charged {charged} ρ but now needs {needed} ρ; the policy or grid changed under it")]
    ChargeMismatch { id: String, charged: f64, needed: f64 },
    #[error(
        "grid {grid} defines no zones (no zones.geojson): zone releases and the zone views need one (hexflow init --zones), or use hexes"
    )]
    NoZones { grid: String },
    #[error(
        "the release would hold {values} values; at most {max} here (use a coarser resolution or bin, or a shorter window)"
    )]
    TooLarge { values: usize, max: usize },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Polars {
        path: PathBuf,
        #[source]
        source: PolarsError,
    },
}

/// What one value of a release counts, in words: `devices per hex per
/// hour`; a bin that adds several operator bins counts device-hours
/// (`pedestrian-hours per zone per day`), and says so.
pub fn value_unit(
    unit_name: &str,
    operator_bin_s: u32,
    metric: Metric,
    unit: Unit,
    bin: crate::privacy::Bin,
) -> String {
    use crate::privacy::Bin;
    let per = match bin {
        Bin::Hour => "hour",
        Bin::Day => "day",
        Bin::Week => "week",
        Bin::Month => "month",
    };
    let key = match unit {
        Unit::Hex => "hex",
        Unit::Zone => "zone",
    };
    match metric {
        Metric::Flows => format!("trips per {key} pair per {per}"),
        // One value per device and day: a longer bin adds days.
        Metric::Presence if bin == Bin::Day => format!("{unit_name} present per {key} per {per}"),
        Metric::Presence => {
            let singular = unit_name.strip_suffix('s').unwrap_or(unit_name);
            format!("{singular}-days present per {key} per {per}")
        }
        Metric::Footfall => {
            // An output bin of one operator bin counts distinct units;
            // longer bins add the operator bins' counts up.
            let one_bin = bin == Bin::Hour && operator_bin_s >= 3600;
            if one_bin {
                format!("{unit_name} per {key} per {per}")
            } else {
                let singular = unit_name.strip_suffix('s').unwrap_or(unit_name);
                let period = match operator_bin_s {
                    3600 => "hours".to_string(),
                    s if s % 60 == 0 => format!("{}-minute intervals", s / 60),
                    s => format!("{s}-second intervals"),
                };
                format!("{singular}-{period} per {key} per {per}")
            }
        }
    }
}

/// Expected total squared error of each placement (public parameters only).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ExpectedError {
    pub cell: Option<f64>,
    pub hex: f64,
}

/// `manifest.json`: everything needed to check and interpret a release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub release_id: String,
    pub spec: ReleaseSpec,
    pub grid: String,
    pub timezone: String,
    pub privacy_unit: String,
    pub bounds: sensitivity::Bounds,
    pub mechanism: mechanism::Mechanism,
    pub placement: Placement,
    pub sensitivity: Sensitivity,
    pub noise_scale: f64,
    /// What the noise was drawn on: integer counts, or `n` real-valued sums
    /// on OpenDP's grid of step 2^k (its rounding priced in `rho`). Absent
    /// in manifests of hexflow before 0.2 (exact float draws).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_draw: Option<mechanism::Draw>,
    pub noise_sd: f64,
    pub rho: f64,
    pub epsilon: f64,
    pub delta: f64,
    pub days_charged: Vec<NaiveDate>,
    pub expected_total_squared_error: ExpectedError,
    pub keys: usize,
    pub bins: usize,
    pub values: usize,
    pub display_threshold: f64,
    /// How `ci95` was computed.
    pub ci95_method: String,
    /// Presence releases: the period, the groups and the expansion factors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceManifest>,
    pub opendp_version: String,
    pub hexflow_version: String,
    pub values_sha256: String,
    pub created_at: DateTime<Utc>,
}

impl Manifest {
    /// ρ this release took from the ledger: its ρ on every day its window
    /// touches (a monthly release is charged on each of its days).
    pub fn rho_charged(&self) -> f64 {
        self.rho * self.days_charged.len() as f64
    }
}

/// What a presence release's values are split by, and how its devices
/// become estimated people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceManifest {
    pub period: String,
    /// Local times of the period ("08:00", "20:00").
    pub period_from: String,
    pub period_to: String,
    /// (segment, origin group) of each group of values, in the values'
    /// order; `all` where the release does not split by it.
    pub groups: Vec<(String, String)>,
    /// Origin group → the delivered codes it gathers (`other`: every
    /// accepted code in no named group).
    pub origin_groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Devices per person of each segment; `people = estimate / factor`.
    pub expansion: std::collections::BTreeMap<String, f64>,
    pub expansion_by_zone: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    /// How `people` and `people_ci95` were computed.
    pub people_method: String,
}

/// The (segment, origin group) groups of a presence release, in order.
pub fn presence_groups(p: &crate::policy::PresenceSpec, by: crate::vocab::By) -> Vec<(String, String)> {
    use crate::vocab::{ALL_GROUPS, By};
    let all = || ALL_GROUPS.to_string();
    match by {
        By::Nothing => vec![(all(), all())],
        By::Segment => p.segments.iter().map(|s| (s.clone(), all())).collect(),
        By::SegmentOrigin => p
            .segments
            .iter()
            .flat_map(|s| p.origin_groups().into_iter().map(move |g| (s.clone(), g)))
            .collect(),
    }
}

/// What a release request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Charged and drawn now.
    New,
    /// Asked before: the stored release, at no cost.
    Stored,
    /// A retry after a crash: charged before, drawn now, no new charge.
    Finished,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::New => "new",
            Status::Stored => "stored",
            Status::Finished => "finished",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Runs releases for one dataset.
pub struct Releaser {
    pub policy: Policy,
    pub grid: Grid,
    data_dir: PathBuf,
    /// Hash of the grid's inputs, computed once (part of every release id).
    grid_key: String,
    /// W per resolution, loaded once per process: `publish` makes a release
    /// per day and must not re-read the cache for each.
    weights: std::sync::Mutex<HashMap<Option<u8>, std::sync::Arc<Weights>>>,
    /// The ledger connection, opened once: `publish` asks it about every
    /// stored release, and reopening SQLite each time dominated a rerun.
    ledger: std::sync::Mutex<Option<Ledger>>,
    /// Where that ledger is (`--ledger`; the data dir's SQLite file by default).
    ledger_url: LedgerUrl,
    /// Error bars per key, by (hex unit, res, cell placement, Laplace, scale).
    bars: std::sync::Mutex<HashMap<BarKey, std::sync::Arc<Vec<Bar>>>>,
}

type BarKey = (bool, u8, bool, bool, u64);

/// W onto the keys of a release (the hexes of one resolution, or the
/// grid's zones), with its rows grouped by cell (both used by every release).
pub struct Weights {
    pub cell_ids: Vec<String>,
    /// Key labels: 15-character H3 ids or zone ids; `entries[i].hex` indexes them.
    pub keys: Vec<String>,
    /// `hex_id` or `zone_id`: the key column of footfall values.
    pub key_column: &'static str,
    pub entries: Vec<crate::grid::weights::WeightEntry>,
    pub rows: HashMap<u32, Vec<crate::grid::weights::WeightEntry>>,
    /// The H3 cells of the keys (empty for zones).
    pub hexes: Vec<h3o::CellIndex>,
}

impl PresenceManifest {
    /// The factor of `segment` in `zone`, as the release stated it.
    pub fn factor(&self, segment: &str, zone: Option<&str>) -> Option<f64> {
        crate::policy::expansion_factor(&self.expansion, &self.expansion_by_zone, segment, zone)
    }
}

impl Weights {
    /// ‖Σ_{k kept} W_·k‖₂ over the cells: times the cells' noise sd, the sd
    /// of a sum of kept keys under cell placement, where one cell's noise
    /// reaches several keys (W is public). Summed in cell order, so that
    /// identical calls give identical answers.
    pub fn kept_sum_norm(&self, keep: impl Fn(usize) -> bool) -> f64 {
        let mut by_cell: std::collections::BTreeMap<u32, f64> = std::collections::BTreeMap::new();
        for e in self.entries.iter().filter(|e| keep(e.hex as usize)) {
            *by_cell.entry(e.cell).or_default() += e.weight;
        }
        by_cell.values().map(|s| s * s).sum::<f64>().sqrt()
    }

    /// Each cell id's position in `cell_ids` (the key of `rows`).
    pub fn cell_positions(&self) -> HashMap<&str, u32> {
        self.cell_ids
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u32))
            .collect()
    }
}

/// The placement with the smaller expected total squared error, from
/// public parameters only: `bins` output bins, `covered_keys` keys that
/// some cell reaches, `sum_w2` = Σ W_ch² over the weight matrix, and the
/// noise sd each placement's calibration gives. Cell noise reaches a hex
/// through its weights (Σ_h W_ch² per cell), hex noise is one draw per
/// covered key; a tie goes to cell placement (exact integer noise).
pub fn choose_placement(
    bins: usize,
    covered_keys: usize,
    sum_w2: f64,
    cell_sd: f64,
    hex_sd: f64,
) -> (Placement, ExpectedError) {
    let cell = bins as f64 * cell_sd * cell_sd * sum_w2;
    let hex = bins as f64 * hex_sd * hex_sd * covered_keys as f64;
    let placement = if cell <= hex { Placement::Cell } else { Placement::Hex };
    (placement, ExpectedError { cell: Some(cell), hex })
}

/// How a release's noise is placed and calibrated, and what it costs.
struct NoisePlan {
    placement: Placement,
    calibrated: Calibrated,
    sensitivity: Sensitivity,
    expected: ExpectedError,
}

/// The output bins of a release window and the instant the window ends.
pub struct Window {
    /// Start of each output bin.
    pub bins: Vec<DateTime<Utc>>,
    /// End of the last local day.
    pub end: DateTime<Utc>,
}

/// The output bins of the local days `from..=to`.
pub fn window(grid: &Grid, bin: Bin, from: NaiveDate, to: NaiveDate) -> Window {
    let midnight = |d: NaiveDate| crate::vocab::local_midnight(grid.tz, d);
    let end = midnight(to.succ_opt().unwrap_or(to));
    let days = from.iter_days().take_while(|d| *d <= to);
    let bins = match bin {
        Bin::Hour => {
            let start = midnight(from);
            // Hourly output bins, whatever the operator's bin length (an
            // operator bin longer than an hour is its own output bin).
            let step = i64::from(grid.spec.bin_len_s.max(3600));
            (0..)
                .map(|k| start + chrono::Duration::seconds(k * step))
                .take_while(|t| *t < end)
                .collect()
        }
        Bin::Day => days.map(midnight).collect(),
        Bin::Week => days
            .filter(|d| d.weekday() == chrono::Weekday::Mon)
            .map(midnight)
            .collect(),
        Bin::Month => days.filter(|d| d.day() == 1).map(midnight).collect(),
    };
    Window { bins, end }
}

/// The output bin (index into `bins`) an instant falls in; `None` outside
/// `[bins[0], end)`.
fn bin_of(bins: &[DateTime<Utc>], end: DateTime<Utc>, t: DateTime<Utc>) -> Option<usize> {
    if t >= end {
        return None;
    }
    match bins.partition_point(|b| *b <= t) {
        0 => None,
        i => Some(i - 1),
    }
}

impl Releaser {
    pub fn new(policy: Policy, data_dir: &Path) -> Result<Self, ReleaseError> {
        let grid = policy.load_grid()?;
        let grid_key = crate::grid::weights::cache_key(&grid)?;
        Ok(Self {
            policy,
            grid,
            data_dir: data_dir.to_path_buf(),
            grid_key,
            weights: std::sync::Mutex::default(),
            ledger: std::sync::Mutex::default(),
            ledger_url: LedgerUrl::in_data_dir(data_dir),
            bars: std::sync::Mutex::default(),
        })
    }

    /// Charges `url` instead of the data dir's SQLite file (binding the
    /// data dir to it; see `LedgerUrl::bind`).
    pub fn with_ledger_url(mut self, url: LedgerUrl) -> Result<Self, ReleaseError> {
        url.bind(&self.data_dir).map_err(LedgerError::from)?;
        self.ledger_url = url;
        self.ledger = std::sync::Mutex::default();
        Ok(self)
    }

    pub fn ledger_url(&self) -> &LedgerUrl {
        &self.ledger_url
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("releases").join(self.policy.dataset()).join(id)
    }

    /// W at `res`, from this process's memo or the cache.
    pub fn weights(&self, res: u8) -> Result<std::sync::Arc<Weights>, ReleaseError> {
        self.weights_for(Unit::Hex, res)
    }

    /// W onto hexes of `res` or onto the grid's zones.
    pub fn weights_for(&self, unit: Unit, res: u8) -> Result<std::sync::Arc<Weights>, ReleaseError> {
        let key = (unit == Unit::Hex).then_some(res);
        let mut memo = self.weights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = memo.get(&key) {
            return Ok(w.clone());
        }
        let cell_ids: Vec<String> = self.grid.cells.iter().map(|c| c.cell_id.clone()).collect();
        let w = match unit {
            Unit::Hex => {
                let (m, _) = WeightMatrix::load_or_build(&self.grid, res, &self.data_dir)?;
                Weights {
                    rows: m.rows(),
                    keys: m.hexes.iter().map(|h| h.to_string()).collect(),
                    key_column: "hex_id",
                    cell_ids: m.cell_ids,
                    entries: m.entries,
                    hexes: m.hexes,
                }
            }
            Unit::Zone => {
                if self.grid.zones.is_empty() {
                    return Err(ReleaseError::NoZones {
                        grid: self.grid.name().to_string(),
                    });
                }
                let (keys, entries) = crate::grid::zones::zone_weights(&self.grid)?;
                let mut rows: HashMap<u32, Vec<crate::grid::weights::WeightEntry>> = HashMap::new();
                for e in &entries {
                    rows.entry(e.cell).or_default().push(*e);
                }
                Weights {
                    cell_ids,
                    keys,
                    key_column: "zone_id",
                    entries,
                    rows,
                    hexes: Vec::new(),
                }
            }
        };
        let w = std::sync::Arc::new(w);
        memo.insert(key, w.clone());
        Ok(w)
    }

    /// Runs `f` on this releaser's ledger connection (opened on first use).
    fn with_ledger<T>(&self, f: impl FnOnce(&mut Ledger) -> Result<T, LedgerError>) -> Result<T, ReleaseError> {
        let mut guard = self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ledger = match guard.take() {
            Some(l) => guard.insert(l),
            None => {
                let mut l = Ledger::open(&self.ledger_url)?;
                // A new connection (the first, or after an outage): first
                // mark published what was stored while the ledger was away.
                if let Err(e) = self.reconcile(&mut l) {
                    tracing::warn!("releases stored during a ledger outage stay `charged` for now: {e}");
                }
                guard.insert(l)
            }
        };
        let result = f(ledger);
        if matches!(result, Err(LedgerError::Db(_))) {
            // A broken connection (a restarted PostgreSQL) is not kept:
            // the next call opens a new one.
            guard.take();
        }
        Ok(result?)
    }

    /// Marks `published` the releases of this dataset that the ledger says
    /// are `charged` but whose values are stored whole (renamed into
    /// place): their `mark_published` was lost to a crash or a ledger
    /// outage. The number marked.
    pub fn reconcile(&self, ledger: &mut Ledger) -> Result<usize, LedgerError> {
        let mut marked = 0;
        for id in ledger.charged(self.policy.dataset())? {
            if self.stored(&id).is_some() {
                ledger.mark_published(&id)?;
                marked += 1;
            }
        }
        Ok(marked)
    }

    /// A new connection to this releaser's ledger.
    pub fn open_ledger(&self) -> Result<Ledger, LedgerError> {
        Ledger::open(&self.ledger_url)
    }

    /// Today in the grid's timezone.
    pub fn today(&self) -> NaiveDate {
        Utc::now().with_timezone(&self.grid.tz).date_naive()
    }

    /// The stored release `id`, if there is one, its ledger row finished:
    /// a crash after the values were stored left it at `charged`, and
    /// finishing is idempotent and costs nothing.
    fn finish_stored(&self, id: &str, dir: &Path) -> Result<Option<Outcome>, ReleaseError> {
        let Some(manifest) = self.stored(id) else {
            return Ok(None);
        };
        self.with_ledger(|ledger| {
            if ledger.state(id)? == Some(ReleaseState::Charged) {
                ledger.mark_published(id)?;
            }
            Ok(())
        })?;
        Ok(Some(Outcome {
            status: Status::Stored,
            dir: dir.to_path_buf(),
            manifest,
        }))
    }

    /// Reads a stored release's manifest.
    pub fn stored(&self, id: &str) -> Option<Manifest> {
        serde_json::from_slice(&std::fs::read(self.dir(id).join("manifest.json")).ok()?).ok()
    }

    /// How many values `spec` makes (keys × bins), from public parameters
    /// only and before anything is charged: what a caller can be told of a
    /// large release before it is paid for.
    pub fn value_count(&self, spec: &ReleaseSpec) -> Result<usize, ReleaseError> {
        Ok(self.shape(spec)?.3)
    }

    /// The weights, window, groups and number of values of `spec`.
    #[expect(clippy::type_complexity, reason = "private, one tuple for two callers")]
    fn shape(
        &self,
        spec: &ReleaseSpec,
    ) -> Result<(std::sync::Arc<Weights>, Window, Vec<(String, String)>, usize), ReleaseError> {
        if spec.unit == Unit::Hex {
            self.grid.resolution(spec.res)?;
        }
        let weights = self.weights_for(spec.unit, spec.res)?;
        let window = window(&self.grid, spec.bin, spec.from, spec.to);
        let groups = self.groups(spec);
        let keys = match spec.metric {
            Metric::Footfall => weights.keys.len(),
            Metric::Flows => weights.keys.len() * weights.keys.len(),
            Metric::Presence => weights.keys.len() * groups.len(),
        };
        let values = keys * window.bins.len();
        Ok((weights, window, groups, values))
    }

    /// Makes (or returns) the release described by `spec`.
    #[tracing::instrument(skip_all, fields(dataset = %spec.dataset, metric = %spec.metric, res = spec.res))]
    pub fn release(&self, spec: &ReleaseSpec, today: NaiveDate) -> Result<Outcome, ReleaseError> {
        self.release_at_most(spec, today, spec::MAX_VALUES)
    }

    /// `release`, refusing before any charge a new release of more than
    /// `max_values` values (the HTTP API answers while the client waits).
    pub fn release_at_most(
        &self,
        spec: &ReleaseSpec,
        today: NaiveDate,
        max_values: usize,
    ) -> Result<Outcome, ReleaseError> {
        spec.check(&self.policy, today)?;
        let id = self.release_id(spec)?;
        let dir = self.dir(&id);
        // One release of an id at a time, across threads and processes: two
        // identical requests must not both draw noise for one charge (the
        // second waits, then finds the first's stored release). Different
        // releases go on at once: the ledger's transaction keeps caps; the
        // lock is one of RELEASE_LOCK_STRIPES files chosen by the id.
        // With a PostgreSQL ledger the lock is the database's (machines
        // sharing the data dir do not share file locks).
        //
        // A stored release is whole (renamed into place) and never changes,
        // so it is returned without the lock: on PostgreSQL the lock is a
        // session of its own, a new server process per release, and a
        // restart's plan of 2,202 stored releases took 5.9 s for them.
        if let Some(stored) = self.finish_stored(&id, &dir)? {
            return Ok(stored);
        }
        let lock_name = format!("releases-{}-{:02}", self.policy.dataset(), release_lock_stripe(&id));
        let lock_path = self.data_dir.join("locks").join(format!("{lock_name}.lock"));
        let mut lock = ReleaseLock::acquire(&self.ledger_url, &lock_path, &lock_name).map_err(LedgerError::from)?;
        // Another thread or process may have made it while this one waited.
        if let Some(stored) = self.finish_stored(&id, &dir)? {
            return Ok(stored);
        }
        let (weights, window, groups, values) = self.shape(spec)?;
        let max = max_values.min(spec::MAX_VALUES);
        if values > max {
            return Err(ReleaseError::TooLarge { values, max });
        }
        let store = CountStore::new(&self.data_dir, self.policy.dataset());
        // Held until the files of this catalog have been read.
        let _readers = store.read_guard()?;
        let catalog = store.catalog()?;
        let stored_days = CountStore::days(&catalog, spec.metric);
        let missing: Vec<NaiveDate> = spec.days().into_iter().filter(|d| !stored_days.contains(d)).collect();
        if let Some(first) = missing.first() {
            return Err(ReleaseError::NoData {
                metric: spec.metric,
                count: missing.len(),
                first: *first,
            });
        }
        let noise = self.noise_plan(spec, &weights, window.bins.len() * groups.len().max(1), values)?;
        // Commit the charge before any noisy value exists.
        let status = self.charge(spec, &id, &noise.calibrated)?;
        util::pausepoint("release:before-draw");
        // The lock must still be ours (a PostgreSQL session can end under
        // it, and another process then holds it): otherwise stop before
        // drawing, whatever the other process draws is the only draw.
        lock.ensure_held().map_err(LedgerError::from)?;
        // A retry after a crash: values of the crashed run were never
        // published; drop any half-written copy so that only one draw of this
        // release can ever exist, then draw afresh.
        self.remove_partial(&id);
        util::failpoint("release:before-noise");
        let bars = self.value_bars(spec, &weights, &noise);
        let (placement, calibrated) = (noise.placement, &noise.calibrated);
        let noisy = match spec.metric {
            Metric::Footfall => {
                let counts = Self::footfall_counts(&store, &catalog, spec, &weights, &window)?;
                Self::noisy_footfall(&weights, window.bins.len(), &counts, placement, calibrated, &bars)?
            }
            Metric::Flows => Self::flow_values(&store, &catalog, spec, &weights, &window, calibrated, &bars)?,
            Metric::Presence => {
                let counts = self.presence_counts(&store, &catalog, spec, &weights, &window, &groups)?;
                let n = window.bins.len() * groups.len();
                Self::noisy_footfall(&weights, n, &counts, placement, calibrated, &bars)?
            }
        };
        // Checked again before anything is stored: values drawn by a
        // process that lost the lock are dropped unseen.
        util::pausepoint("release:before-store");
        lock.ensure_held().map_err(LedgerError::from)?;
        let manifest = self.write(
            spec,
            &id,
            &weights,
            &window.bins,
            (placement, noise.sensitivity),
            calibrated,
            noise.expected,
            spec.days(),
            noisy,
            &bars,
        )?;
        util::failpoint("release:after-store");
        util::pausepoint("release:after-store");
        // The values are stored and the charge committed: the release is
        // made. A ledger away at this instant leaves it at `charged`, which
        // the next connection of any releaser of the dataset corrects
        // (`reconcile`), so the outage is not the release's failure.
        if let Err(e) = self.with_ledger(|ledger| ledger.mark_published(&id)) {
            tracing::warn!("release {id} is stored; marking it published waits for the ledger: {e}");
        }
        Ok(Outcome { status, dir, manifest })
    }

    /// The release id of `spec` on this policy and grid (zone releases
    /// also hash the zones' geometry).
    fn release_id(&self, spec: &ReleaseSpec) -> Result<String, ReleaseError> {
        let mut context = format!(
            "{}|{}",
            serde_json::to_string(&self.policy.spec.privacy.bounds()).unwrap_or_default(),
            self.grid_key
        );
        if spec.unit == Unit::Zone {
            if self.grid.zones.is_empty() {
                return Err(ReleaseError::NoZones {
                    grid: self.grid.name().to_string(),
                });
            }
            let zones = self.grid.dir.join("zones.geojson");
            let hash = util::sha256_file(&zones).map_err(|source| ReleaseError::Io { path: zones, source })?;
            context.push('|');
            context.push_str(&hash);
        }
        Ok(spec.release_id(&context))
    }

    /// Calibrates both placements from public parameters and keeps the one
    /// with the smaller expected total squared error ([`choose_placement`]);
    /// flows have one placement. `bins` counts every (bin, group) slice of
    /// presence values.
    fn noise_plan(
        &self,
        spec: &ReleaseSpec,
        weights: &Weights,
        bins: usize,
        values: usize,
    ) -> Result<NoisePlan, ReleaseError> {
        let bounds = self.policy.spec.privacy.bounds();
        let w2_max = weights
            .rows
            .values()
            .map(|r| r.iter().map(|e| e.weight * e.weight).sum::<f64>().sqrt())
            .fold(0.0, f64::max);
        let sum_w2: f64 = weights.entries.iter().map(|e| e.weight * e.weight).sum();
        let per_bin = spec.bin.max_operator_bins(self.grid.spec.bin_len_s);
        Ok(match spec.metric {
            Metric::Footfall | Metric::Presence => {
                let (s_cell, s_hex) = if spec.metric == Metric::Presence {
                    // One period per release.
                    (
                        sensitivity::presence(1, Placement::Cell, w2_max),
                        sensitivity::presence(1, Placement::Hex, w2_max),
                    )
                } else {
                    (
                        sensitivity::footfall(&bounds, per_bin, Placement::Cell, w2_max),
                        sensitivity::footfall(&bounds, per_bin, Placement::Hex, w2_max),
                    )
                };
                // Keys no cell reaches get no noise in either placement.
                let covered = covered_keys(weights);
                let cell = mechanism::calibrate(spec.budget, &s_cell, None)?;
                let hex = mechanism::calibrate(spec.budget, &s_hex, Some(bins * covered))?;
                let (placement, expected) = choose_placement(bins, covered, sum_w2, cell.noise_sd(), hex.noise_sd());
                let (calibrated, sensitivity) = match placement {
                    Placement::Cell => (cell, s_cell),
                    Placement::Hex => (hex, s_hex),
                };
                NoisePlan {
                    placement,
                    calibrated,
                    sensitivity,
                    expected,
                }
            }
            Metric::Flows => {
                let s = sensitivity::flows(&bounds, w2_max);
                // Pairs with an end no cell reaches get no noise.
                let covered = covered_keys(weights);
                let c = mechanism::calibrate(spec.budget, &s, Some(bins * covered * covered))?;
                NoisePlan {
                    placement: Placement::Hex,
                    expected: ExpectedError {
                        cell: None,
                        hex: values as f64 * c.noise_sd().powi(2),
                    },
                    calibrated: c,
                    sensitivity: s,
                }
            }
        })
    }

    /// Charges every day of the window (one transaction, before any noise):
    /// a new charge, or the finishing of one a crash left unpublished.
    fn charge(&self, spec: &ReleaseSpec, id: &str, calibrated: &Calibrated) -> Result<Status, ReleaseError> {
        let days = spec.days();
        let audience = &self.policy.spec.audiences[&spec.audience];
        let charge = self.with_ledger(|ledger| {
            ledger.charge(&ChargeRequest {
                release_id: id,
                dataset: self.policy.dataset(),
                audience: &spec.audience,
                days: &days,
                rho: calibrated.rho,
                audience_cap_rho: audience.rho_per_day,
                dataset_cap_rho: self.policy.spec.privacy.rho_per_day_cap,
                spec_json: &spec.canonical(),
            })
        })?;
        match charge {
            Charge::New => Ok(Status::New),
            Charge::Existing(ReleaseState::Published, _) => Err(ReleaseError::PublishedButMissing {
                id: id.to_string(),
                dir: self.dir(id),
            }),
            Charge::Existing(ReleaseState::Charged, charged) => {
                if crate::privacy::ledger::to_units_up(calibrated.rho) > crate::privacy::ledger::to_units_up(charged) {
                    return Err(ReleaseError::ChargeMismatch {
                        id: id.to_string(),
                        charged,
                        needed: calibrated.rho,
                    });
                }
                Ok(Status::Finished)
            }
        }
    }

    /// The error bar of every value of a bin: per key, and for flows per
    /// pair (covered when both ends are).
    fn value_bars(&self, spec: &ReleaseSpec, weights: &Weights, noise: &NoisePlan) -> Vec<Bar> {
        let key_bars = self.bars(spec.unit, spec.res, weights, noise.placement, &noise.calibrated);
        match spec.metric {
            Metric::Footfall => key_bars,
            // The same bar for a key in every (segment, origin) group.
            Metric::Presence => {
                let n = self.groups(spec).len();
                (0..n).flat_map(|_| key_bars.iter().copied()).collect()
            }
            Metric::Flows => {
                let one = errorbar::float_draw(noise.calibrated.mechanism, noise.calibrated.scale);
                let z = key_bars.len();
                (0..z * z)
                    .map(|i| {
                        if key_bars[i / z].sd > 0.0 && key_bars[i % z].sd > 0.0 {
                            one
                        } else {
                            Bar::NONE
                        }
                    })
                    .collect()
            }
        }
    }

    /// Deletes temporary folders of earlier, unfinished runs of `id`.
    fn remove_partial(&self, id: &str) {
        let dir = self.dir(id);
        let Some(parent) = dir.parent() else { return };
        let prefix = format!(".{id}.");
        if let Ok(entries) = std::fs::read_dir(parent) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".tmp") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Cell counts per (bin, cell) summed over the window's operator bins
    /// (`counts[b * cells + c]`).
    fn footfall_counts(
        store: &CountStore,
        catalog: &crate::store::Catalog,
        spec: &ReleaseSpec,
        weights: &Weights,
        window: &Window,
    ) -> Result<Vec<i64>, ReleaseError> {
        let (bins, window_end) = (&window.bins[..], window.end);
        let w = weights;
        let n_cells = w.cell_ids.len();
        let mut counts = vec![0i64; n_cells * bins.len()];
        let cell_pos = w.cell_positions();
        let perr = polars_err(store);
        if let Some((df, times)) = read_window(store, catalog, Metric::Footfall, spec)? {
            let cells = df.column("cell_id").map_err(perr)?.str().map_err(perr)?.clone();
            let devices = df.column("devices").map_err(perr)?.u32().map_err(perr)?.clone();
            for ((cell, t), v) in cells.iter().zip(times.iter()).zip(devices.iter()) {
                let (Some(cell), Some(t), Some(v)) = (cell, t, v) else {
                    continue;
                };
                let (Some(ci), Some(t)) = (cell_pos.get(cell), DateTime::<Utc>::from_timestamp_micros(t)) else {
                    continue;
                };
                if let Some(b) = bin_of(bins, window_end, t) {
                    counts[b * n_cells + *ci as usize] += i64::from(v);
                }
            }
        }
        Ok(counts)
    }

    /// The manifest's presence section (none for other metrics).
    fn presence_manifest(&self, spec: &ReleaseSpec, groups: &[(String, String)]) -> Option<PresenceManifest> {
        let p = self
            .policy
            .spec
            .presence
            .as_ref()
            .filter(|_| spec.metric == Metric::Presence)?;
        let period = spec.period.clone()?;
        let bounds = p.periods.get(&period)?;
        let mut origin_groups: std::collections::BTreeMap<String, Vec<String>> = p.origins.clone();
        if !origin_groups.contains_key(crate::policy::OTHER_ORIGIN)
            && p.group_of(crate::policy::OTHER_ORIGIN) == crate::policy::OTHER_ORIGIN
        {
            origin_groups.insert(
                crate::policy::OTHER_ORIGIN.into(),
                vec![crate::policy::OTHER_ORIGIN.into()],
            );
        }
        Some(PresenceManifest {
            period_from: bounds.from.clone(),
            period_to: bounds.to.clone(),
            period,
            groups: groups.to_vec(),
            origin_groups,
            expansion: p.expansion.clone(),
            expansion_by_zone: p.expansion_by_zone.clone(),
            people_method: "people = estimate / factor and people_ci95 = estimate_ci95 / factor, with the factor of the value's segment (the zone's own where the policy gives one); null where the policy gives no factor, or, for values of all segments, where the segments' factors differ".into(),
        })
    }

    /// The (segment, origin group) groups of a spec's values: one `all`
    /// group for other metrics.
    pub fn groups(&self, spec: &ReleaseSpec) -> Vec<(String, String)> {
        match (&self.policy.spec.presence, spec.metric) {
            (Some(p), Metric::Presence) => presence_groups(p, spec.by.unwrap_or_default()),
            _ => vec![(crate::vocab::ALL_GROUPS.into(), crate::vocab::ALL_GROUPS.into())],
        }
    }

    /// Presence counts of the spec's period per (bin, group, cell)
    /// (`counts[(b * groups + g) * cells + c]`), every day of a bin added.
    fn presence_counts(
        &self,
        store: &CountStore,
        catalog: &crate::store::Catalog,
        spec: &ReleaseSpec,
        weights: &Weights,
        window: &Window,
        groups: &[(String, String)],
    ) -> Result<Vec<i64>, ReleaseError> {
        use crate::vocab::{ALL_GROUPS, By};
        let n_cells = weights.cell_ids.len();
        let n_groups = groups.len();
        let mut counts = vec![0i64; n_cells * window.bins.len() * n_groups];
        let Some(p) = &self.policy.spec.presence else {
            return Ok(counts);
        };
        let by = spec.by.unwrap_or_default();
        let group_pos: HashMap<(&str, &str), usize> = groups
            .iter()
            .enumerate()
            .map(|(i, (s, o))| ((s.as_str(), o.as_str()), i))
            .collect();
        let cell_pos = weights.cell_positions();
        let code_groups = p.code_groups();
        let period = spec.period.as_deref().unwrap_or_default();
        let perr = polars_err(store);
        for day in spec.days() {
            let Some(df) = store.read_day(catalog, Metric::Presence, day)? else {
                continue;
            };
            let Some(b) = bin_of(
                &window.bins,
                window.end,
                crate::vocab::local_midnight(self.grid.tz, day),
            ) else {
                continue;
            };
            let text = |name: &str| -> Result<StringChunked, ReleaseError> {
                Ok(df.column(name).map_err(perr)?.str().map_err(perr)?.clone())
            };
            let (cells, periods, segments, origins) =
                (text("cell_id")?, text("period")?, text("segment")?, text("origin")?);
            let devices = df.column("devices").map_err(perr)?.u32().map_err(perr)?.clone();
            let rows = cells
                .iter()
                .zip(periods.iter())
                .zip(segments.iter())
                .zip(origins.iter())
                .zip(devices.iter());
            for ((((cell, per), seg), origin), v) in rows {
                let (Some(cell), Some(per), Some(seg), Some(origin), Some(v)) = (cell, per, seg, origin, v) else {
                    continue;
                };
                if per != period {
                    continue;
                }
                let key = match by {
                    By::Nothing => (ALL_GROUPS, ALL_GROUPS),
                    By::Segment => (seg, ALL_GROUPS),
                    By::SegmentOrigin => (
                        seg,
                        code_groups.get(origin).copied().unwrap_or(crate::policy::OTHER_ORIGIN),
                    ),
                };
                let (Some(ci), Some(g)) = (cell_pos.get(cell), group_pos.get(&key)) else {
                    continue;
                };
                counts[(b * n_groups + g) * n_cells + *ci as usize] += i64::from(v);
            }
        }
        Ok(counts)
    }

    /// The noisy value of every (bin, key) from the cell counts of `bins`
    /// bins (`counts[b * cells + c]`), under `placement`, with the noise of
    /// `c`; keys whose bar is [`Bar::NONE`] (no coverage) get an exact 0.
    /// Public so that the error bars can be checked against this very code.
    pub fn noisy_footfall(
        weights: &Weights,
        n_bins: usize,
        counts: &[i64],
        placement: Placement,
        c: &Calibrated,
        bars: &[Bar],
    ) -> Result<Vec<f64>, ReleaseError> {
        let (w, rows) = (weights, &weights.rows);
        let n_cells = w.cell_ids.len();
        let bins = 0..n_bins;
        let n_hex = w.keys.len();
        let mut values = vec![0.0f64; n_hex * bins.len()];
        match placement {
            Placement::Cell => {
                // Noise only on cells that reach a hex: nothing is drawn
                // that will not be published.
                let mut weighted: Vec<usize> = rows.keys().map(|c| *c as usize).collect();
                weighted.sort_unstable();
                let input: Vec<i64> = (0..bins.len())
                    .flat_map(|b| weighted.iter().map(move |ci| (b, *ci)))
                    .map(|(b, ci)| counts[b * n_cells + ci])
                    .collect();
                let noisy = par_noise(&input, |chunk| mechanism::noisy_counts(c, chunk))?;
                for b in 0..bins.len() {
                    for (k, ci) in weighted.iter().enumerate() {
                        let x = noisy[b * weighted.len() + k] as f64;
                        for e in &rows[&(*ci as u32)] {
                            values[b * n_hex + e.hex as usize] += x * e.weight;
                        }
                    }
                }
            }
            Placement::Hex => {
                // Hexes no cell covers are 0 whatever the data (geometry
                // alone decides): they get no noise, as under cell placement.
                let covered: Vec<usize> = (0..n_hex).filter(|h| bars[*h].sd > 0.0).collect();
                let mut sums = vec![0.0f64; n_hex * bins.len()];
                for b in 0..bins.len() {
                    for e in &w.entries {
                        sums[b * n_hex + e.hex as usize] += counts[b * n_cells + e.cell as usize] as f64 * e.weight;
                    }
                }
                let input: Vec<f64> = (0..bins.len())
                    .flat_map(|b| covered.iter().map(move |h| b * n_hex + h))
                    .map(|i| sums[i])
                    .collect();
                let noisy = mechanism::noisy_sums(c, &input)?;
                for b in 0..bins.len() {
                    for (k, h) in covered.iter().enumerate() {
                        values[b * n_hex + h] = noisy[b * covered.len() + k];
                    }
                }
            }
        }
        Ok(values)
    }

    /// The error bar of each key (the same in every bin): exact for the
    /// placement's noise ([`errorbar`]); hexes that no cell covers have none.
    /// Memoised per weights, mechanism and scale: `publish` asks for the
    /// same bars once per day.
    pub fn bars(&self, unit: Unit, res: u8, w: &Weights, placement: Placement, c: &Calibrated) -> Vec<Bar> {
        let key = (
            unit == Unit::Hex,
            res,
            placement == Placement::Cell,
            c.mechanism == mechanism::Mechanism::LaplacePure,
            c.scale.to_bits(),
        );
        let mut memo = self.bars.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = memo.get(&key) {
            return b.to_vec();
        }
        let mut columns: Vec<Vec<f64>> = vec![Vec::new(); w.keys.len()];
        for e in &w.entries {
            columns[e.hex as usize].push(e.weight);
        }
        let per_key: Vec<Bar> = match placement {
            Placement::Cell => errorbar::cell_placement(c.mechanism, c.scale, &columns),
            Placement::Hex => columns
                .iter()
                .map(|col| {
                    if col.iter().any(|x| *x > 0.0) {
                        errorbar::float_draw(c.mechanism, c.scale)
                    } else {
                        Bar::NONE
                    }
                })
                .collect(),
        };
        let bars = std::sync::Arc::new(per_key);
        if memo.len() > 64 {
            memo.clear();
        }
        memo.insert(key, bars.clone());
        bars.to_vec()
    }

    /// Trips per (origin zone, dest zone, bin), spread by W on both ends.
    fn flow_values(
        store: &CountStore,
        catalog: &crate::store::Catalog,
        spec: &ReleaseSpec,
        weights: &Weights,
        window: &Window,
        c: &Calibrated,
        bars: &[Bar],
    ) -> Result<Vec<f64>, ReleaseError> {
        let (bins, window_end) = (&window.bins[..], window.end);
        let (w, rows) = (weights, &weights.rows);
        let cell_pos = w.cell_positions();
        let n_z = w.keys.len();
        let mut sums = vec![0.0f64; n_z * n_z * bins.len()];
        let perr = polars_err(store);
        if let Some((df, times)) = read_window(store, catalog, Metric::Flows, spec)? {
            let o = df.column("origin_cell_id").map_err(perr)?.str().map_err(perr)?.clone();
            let d = df.column("dest_cell_id").map_err(perr)?.str().map_err(perr)?.clone();
            let trips = df.column("trips").map_err(perr)?.u32().map_err(perr)?.clone();
            for (((o, d), t), v) in o.iter().zip(d.iter()).zip(times.iter()).zip(trips.iter()) {
                let (Some(o), Some(d), Some(t), Some(v)) = (o, d, t, v) else {
                    continue;
                };
                let (Some(oi), Some(di), Some(t)) = (
                    cell_pos.get(o),
                    cell_pos.get(d),
                    DateTime::<Utc>::from_timestamp_micros(t),
                ) else {
                    continue;
                };
                let (Some(b), Some(ro), Some(rd)) = (bin_of(bins, window_end, t), rows.get(oi), rows.get(di)) else {
                    continue;
                };
                for eo in ro {
                    for ed in rd {
                        sums[(b * n_z + eo.hex as usize) * n_z + ed.hex as usize] +=
                            f64::from(v) * eo.weight * ed.weight;
                    }
                }
            }
        }
        // Pairs with an end that no cell covers are 0 whatever the data.
        let pairs = n_z * n_z;
        let covered: Vec<usize> = (0..sums.len()).filter(|i| bars[i % pairs].sd > 0.0).collect();
        let input: Vec<f64> = covered.iter().map(|i| sums[*i]).collect();
        let noisy = mechanism::noisy_sums(c, &input)?;
        let mut values = vec![0.0f64; sums.len()];
        for (k, i) in covered.iter().enumerate() {
            values[*i] = noisy[k];
        }
        Ok(values)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, every piece is part of the manifest"
    )]
    fn write(
        &self,
        spec: &ReleaseSpec,
        id: &str,
        w: &Weights,
        bins: &[DateTime<Utc>],
        (placement, sens): (Placement, Sensitivity),
        c: &Calibrated,
        expected: ExpectedError,
        days: Vec<NaiveDate>,
        noisy: Vec<f64>,
        bars: &[Bar],
    ) -> Result<Manifest, ReleaseError> {
        let threshold = self.policy.spec.privacy.display_threshold;
        let dir = self.dir(id);
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let tmp = parent.join(format!(".{id}.{}.tmp", std::process::id()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ReleaseError::Io { path: p, source }
        };
        // Everything the manifest needs that can fail is computed before
        // any value is written.
        let epsilon = c.epsilon_at(self.policy.spec.privacy.delta)?;
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        // On any failure below, no second copy of noisy values may stay
        // behind: the guard deletes the temporary folder unless disarmed.
        let mut guard = TmpGuard(Some(tmp.clone()));
        let hex_ids = &w.keys;
        let groups = self.groups(spec);
        let n = noisy.len();
        let micros: Vec<i64> = bins.iter().map(|b| b.timestamp_micros()).collect();
        let (keys_per_bin, key_cols): (usize, Vec<Column>) = match spec.metric {
            Metric::Footfall => {
                let k = hex_ids.len();
                (
                    k,
                    vec![Column::new(
                        w.key_column.into(),
                        (0..n).map(|i| hex_ids[i % k].as_str()).collect::<Vec<_>>(),
                    )],
                )
            }
            Metric::Presence => {
                let (k, g) = (hex_ids.len(), groups.len());
                let period = spec.period.clone().unwrap_or_default();
                (
                    k * g,
                    vec![
                        Column::new(
                            w.key_column.into(),
                            (0..n).map(|i| hex_ids[i % k].as_str()).collect::<Vec<_>>(),
                        ),
                        Column::new("period".into(), vec![period.as_str(); n]),
                        Column::new(
                            "segment".into(),
                            (0..n).map(|i| groups[(i / k) % g].0.as_str()).collect::<Vec<_>>(),
                        ),
                        Column::new(
                            "origin".into(),
                            (0..n).map(|i| groups[(i / k) % g].1.as_str()).collect::<Vec<_>>(),
                        ),
                    ],
                )
            }
            Metric::Flows => {
                let z = hex_ids.len();
                (
                    z * z,
                    vec![
                        Column::new(
                            "origin".into(),
                            (0..n).map(|i| hex_ids[(i / z) % z].as_str()).collect::<Vec<_>>(),
                        ),
                        Column::new(
                            "dest".into(),
                            (0..n).map(|i| hex_ids[i % z].as_str()).collect::<Vec<_>>(),
                        ),
                    ],
                )
            }
        };
        let bin_col = Int64Chunked::from_vec(
            "bin_start".into(),
            (0..n).map(|i| micros[i / keys_per_bin.max(1)]).collect(),
        )
        .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
        .into_column();
        let mut cols = key_cols;
        cols.push(bin_col);
        // Post-processing of noisy values only. `estimate` is the noisy value
        // itself (unbiased: sums of estimates are unbiased sums); `value`
        // rounds it and clamps it at 0 for display. Bars are rounded up.
        let bar = |i: usize| bars[i % keys_per_bin.max(1)];
        let up = |x: f64| (x * 100.0).ceil() / 100.0;
        cols.push(Column::new(
            "value".into(),
            noisy.iter().map(|x| x.round().max(0.0) as i64).collect::<Vec<_>>(),
        ));
        // Rounding moves a value by up to 0.5 and clamping at 0 only towards
        // the (non-negative) truth: the estimate's bar + 0.5 holds for it.
        cols.push(Column::new(
            "ci95".into(),
            (0..n)
                .map(|i| {
                    if bar(i).sd > 0.0 {
                        up(bar(i).half_width + 0.5)
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            "low".into(),
            (0..n)
                .map(|i| bar(i).sd > 0.0 && noisy[i] < threshold)
                .collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            "covered".into(),
            (0..n).map(|i| bar(i).sd > 0.0).collect::<Vec<_>>(),
        ));
        cols.push(Column::new("estimate".into(), noisy.clone()));
        cols.push(Column::new(
            "estimate_ci95".into(),
            (0..n).map(|i| up(bar(i).half_width)).collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            "noise_sd".into(),
            (0..n).map(|i| bar(i).sd).collect::<Vec<_>>(),
        ));
        let presence = self.presence_manifest(spec, &groups);
        if let (Some(p), Some(_)) = (&self.policy.spec.presence, &presence) {
            // Estimated people: the noisy devices over the public factor of
            // the value's segment (and zone); post-processing only.
            let k = hex_ids.len();
            let factor = |i: usize| {
                let (segment, _) = &groups[(i / k) % groups.len()];
                let zone = (spec.unit == Unit::Zone).then(|| hex_ids[i % k].as_str());
                if segment == crate::vocab::ALL_GROUPS {
                    crate::policy::common_factor(p.segments.iter().map(|s| p.factor(s, zone)))
                } else {
                    p.factor(segment, zone)
                }
            };
            cols.push(Column::new(
                "people".into(),
                (0..n).map(|i| factor(i).map(|f| noisy[i] / f)).collect::<Vec<_>>(),
            ));
            cols.push(Column::new(
                "people_ci95".into(),
                (0..n)
                    .map(|i| factor(i).map(|f| up(bar(i).half_width / f)))
                    .collect::<Vec<_>>(),
            ));
        }
        let values_path = tmp.join("values.parquet");
        let mut df = DataFrame::new_infer_height(cols).map_err(|source| ReleaseError::Polars {
            path: values_path.clone(),
            source,
        })?;
        util::write_atomic_with(&values_path, |f| {
            table::write_parquet(&mut df, f).map_err(std::io::Error::other)
        })
        .map_err(io(&values_path))?;
        let values_sha256 = util::sha256_file(&values_path).map_err(io(&values_path))?;
        util::failpoint("release:values-written");
        let privacy = &self.policy.spec.privacy;
        let manifest = Manifest {
            release_id: id.to_string(),
            spec: spec.clone(),
            grid: self.grid.name().to_string(),
            timezone: self.grid.spec.timezone.clone(),
            privacy_unit: "device-day".into(),
            bounds: privacy.bounds(),
            mechanism: c.mechanism,
            placement,
            sensitivity: sens,
            noise_scale: c.scale,
            noise_draw: Some(c.draw),
            noise_sd: c.noise_sd(),
            rho: c.rho,
            epsilon,
            delta: privacy.delta,
            days_charged: days,
            expected_total_squared_error: expected,
            keys: keys_per_bin,
            bins: bins.len(),
            values: n,
            display_threshold: threshold,
            ci95_method: match placement {
                Placement::Cell => format!(
                    "estimate_ci95: the 95 % point of |Σ_c W_ch N_c|, N_c OpenDP's integer noise on the cells, from its exact distribution (numerical convolution on a grid, the bar widened by the grid's rounding so that it never covers less than 95 %; it covers at least {:.1}–{:.1} %, more where the distribution jumps past 95 %); ci95 of the rounded value: estimate_ci95 + 0.5",
                    100.0
                        * bars
                            .iter()
                            .filter(|b| b.sd > 0.0)
                            .map(|b| b.coverage)
                            .fold(1.0, f64::min),
                    100.0
                        * bars
                            .iter()
                            .filter(|b| b.sd > 0.0)
                            .map(|b| b.coverage)
                            .fold(0.0, f64::max),
                ),
                Placement::Hex => match c.mechanism {
                    mechanism::Mechanism::GaussianZcdp => {
                        "estimate_ci95: 1.96 × Gaussian σ (exact); ci95 of the rounded value: estimate_ci95 + 0.5"
                            .into()
                    }
                    mechanism::Mechanism::LaplacePure => {
                        "estimate_ci95: b · ln 20 (exact for Laplace); ci95 of the rounded value: estimate_ci95 + 0.5"
                            .into()
                    }
                },
            },
            presence,
            opendp_version: OPENDP_VERSION.into(),
            hexflow_version: env!("CARGO_PKG_VERSION").into(),
            values_sha256,
            created_at: Utc::now(),
        };
        let mpath = tmp.join("manifest.json");
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ReleaseError::Io {
            path: mpath.clone(),
            source: std::io::Error::other(e),
        })?;
        util::write_atomic(&mpath, &json).map_err(io(&mpath))?;
        let renamed = std::fs::rename(&tmp, &dir);
        if renamed.is_ok() {
            guard.0 = None;
        }
        if let Err(e) = renamed {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process finished the same release first: its values
            // are the published ones.
            return self.stored(id).ok_or_else(|| io(&dir)(e));
        }
        util::sync_dir(&parent).map_err(io(&parent))?;
        Ok(manifest)
    }
}

fn polars_err(store: &CountStore) -> impl Fn(PolarsError) -> ReleaseError + Copy + '_ {
    move |source| ReleaseError::Polars {
        path: store.root().to_path_buf(),
        source,
    }
}

/// The stored rows of the window and their `bin_start` in µs since the epoch.
fn read_window(
    store: &CountStore,
    catalog: &crate::store::Catalog,
    metric: Metric,
    spec: &ReleaseSpec,
) -> Result<Option<(DataFrame, Int64Chunked)>, ReleaseError> {
    let perr = polars_err(store);
    let Some(df) = store.read_range(catalog, metric, spec.from, spec.to)? else {
        return Ok(None);
    };
    let times = df
        .column("bin_start")
        .map_err(perr)?
        .as_materialized_series()
        .to_physical_repr()
        .i64()
        .map_err(perr)?
        .clone();
    Ok(Some((df, times)))
}

/// Deletes a temporary release folder when dropped, unless disarmed.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Draws noise in chunks on every core (OpenDP's exact samplers are slow).
/// Lock files per dataset that releases are spread over by id.
const RELEASE_LOCK_STRIPES: u32 = 64;

/// The stripe of a release id (`r-` and 20 hex digits): equal ids share it.
fn release_lock_stripe(id: &str) -> u32 {
    let tail = id.get(id.len().saturating_sub(4)..).unwrap_or_default();
    u32::from_str_radix(tail, 16).unwrap_or(0) % RELEASE_LOCK_STRIPES
}

/// Keys that some cell reaches with a positive weight: the others are 0
/// whatever the data and take no noise (their bar is [`Bar::NONE`]).
fn covered_keys(w: &Weights) -> usize {
    w.entries
        .iter()
        .filter(|e| e.weight > 0.0)
        .map(|e| e.hex)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn par_noise<T: Send + Sync + Clone, F>(input: &[T], draw: F) -> Result<Vec<T>, ReleaseError>
where
    F: Fn(&[T]) -> Result<Vec<T>, MechanismError> + Sync,
{
    let chunks: Vec<Result<Vec<T>, MechanismError>> = input.par_chunks(4096).map(&draw).collect();
    let mut out = Vec::with_capacity(input.len());
    for c in chunks {
        out.extend(c?);
    }
    Ok(out)
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    #[test]
    fn the_placement_with_less_total_error_wins() {
        // Fine hexes, one cell each spread over 7 hexes: Σ W² = cells / 7,
        // far below the number of hexes; cell noise wins even at a larger sd.
        let (p, e) = choose_placement(24, 700, 100.0 / 7.0, 3.0, 2.0);
        assert_eq!(p, Placement::Cell);
        assert!((e.cell.expect("cell") - 24.0 * 9.0 * 100.0 / 7.0).abs() < 1e-9);
        assert!((e.hex - 24.0 * 4.0 * 700.0).abs() < 1e-9);
        // Coarse hexes, many cells each: few keys, Σ W² close to the cells.
        let (p, _) = choose_placement(24, 3, 400.0, 3.0, 6.0);
        assert_eq!(p, Placement::Hex);
        // A tie keeps the exact integer noise on cells.
        assert_eq!(choose_placement(1, 4, 4.0, 1.0, 1.0).0, Placement::Cell);
        // Uncovered keys do not count: no noise is drawn for them.
        assert_eq!(choose_placement(1, 0, 1.0, 1.0, 1.0).0, Placement::Hex);
    }
}
