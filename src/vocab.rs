//! The shared vocabulary of the pipeline: what is counted ([`Metric`]),
//! how releases are binned ([`Bin`]) and keyed ([`Unit`]), the privacy
//! unit, the audiences' names and the local day's first instant.
//!
//! A leaf module: it imports nothing of hexflow, so every stage can use it
//! without importing another stage (grid, policy, store, release and
//! simulate all speak it).

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The audiences every policy defines.
pub mod audience {
    /// Everyone: the standing releases of the publication plan.
    pub const PUBLIC: &str = "public";
    /// Transit planners (queries with a planner token).
    pub const PLANNERS: &str = "planners";
    /// The tourism office (queries with a tourism token).
    pub const TOURISM: &str = "tourism";
    /// Audiences a policy must define.
    pub const REQUIRED: [&str; 3] = [PUBLIC, PLANNERS, TOURISM];
}

/// What a table of counts measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `cell_id, bin_start, devices`
    Footfall,
    /// `origin_cell_id, dest_cell_id, bin_start, trips`
    Flows,
    /// `cell_id, day, period, segment, origin, devices`: each device
    /// attributed, per local day and period, to at most one cell.
    Presence,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Footfall => "footfall",
            Metric::Flows => "flows",
            Metric::Presence => "presence",
        }
    }

    /// Every metric, in the store's order.
    pub const ALL: [Metric; 3] = [Metric::Footfall, Metric::Flows, Metric::Presence];

    /// Key columns of the store schema: the time column (`bin_start`, or
    /// the local `day` of presence) last.
    pub fn key_columns(self) -> &'static [&'static str] {
        match self {
            Metric::Footfall => &["cell_id", "bin_start"],
            Metric::Flows => &["origin_cell_id", "dest_cell_id", "bin_start"],
            Metric::Presence => &["cell_id", "period", "segment", "origin", "day"],
        }
    }

    /// The count column.
    pub fn value_column(self) -> &'static str {
        match self {
            Metric::Footfall => "devices",
            Metric::Flows => "trips",
            Metric::Presence => "devices",
        }
    }

    /// The columns of the operator's format, in its documented order.
    pub fn operator_columns(self) -> Vec<&'static str> {
        match self {
            Metric::Presence => vec!["cell_id", "day", "period", "segment", "origin", "devices"],
            m => m.columns(),
        }
    }

    /// Every column of the store, keys then count.
    pub fn columns(self) -> Vec<&'static str> {
        let mut c = self.key_columns().to_vec();
        c.push(self.value_column());
        c
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a presence release splits its values: by nothing (one value per
/// place), by segment, or by segment and origin group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum By {
    #[serde(rename = "none")]
    Nothing,
    #[default]
    #[serde(rename = "segment")]
    Segment,
    #[serde(rename = "segment,origin")]
    SegmentOrigin,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Nothing => "none",
            By::Segment => "segment",
            By::SegmentOrigin => "segment,origin",
        }
    }
}

impl std::str::FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.replace(' ', "").as_str() {
            "none" => Ok(By::Nothing),
            "segment" => Ok(By::Segment),
            "segment,origin" | "origin,segment" => Ok(By::SegmentOrigin),
            other => Err(format!(
                "unknown --by {other:?} (expected none, segment or segment,origin)"
            )),
        }
    }
}

/// DESIGN.md's presence segments, and the origin of residents: the names
/// the simulator delivers and the visitors view reads (nights are the
/// tourists' night presence, day visitors the excursionists').
pub mod segment {
    pub const RESIDENT: &str = "resident";
    pub const TOURIST: &str = "tourist";
    pub const EXCURSIONIST: &str = "excursionist";
    /// The origin code of residents.
    pub const LOCAL_ORIGIN: &str = "local";
}

/// The segment and origin labels of values that are not split by them.
pub const ALL_GROUPS: &str = "all";

/// Output bin length of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bin {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
    #[serde(rename = "1w")]
    Week,
    #[serde(rename = "1mo")]
    Month,
}

impl Bin {
    /// The most operator bins of `bin_len_s` one output bin can hold
    /// (local days have up to 25 hours).
    pub fn max_operator_bins(self, bin_len_s: u32) -> u32 {
        let per_hour = (3600 / bin_len_s.max(1)).max(1);
        let hours = match self {
            Bin::Hour => 1,
            Bin::Day => 25,
            Bin::Week => 7 * 24 + 1,
            Bin::Month => 31 * 24 + 1,
        };
        hours * per_hour
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Bin::Hour => "1h",
            Bin::Day => "1d",
            Bin::Week => "1w",
            Bin::Month => "1mo",
        }
    }
}

impl std::str::FromStr for Bin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1h" => Ok(Bin::Hour),
            "1d" => Ok(Bin::Day),
            "1w" => Ok(Bin::Week),
            "1mo" => Ok(Bin::Month),
            other => Err(format!("unknown bin {other:?} (expected 1h, 1d, 1w or 1mo)")),
        }
    }
}

/// What a release's values are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// H3 cells of the spec's resolution.
    #[default]
    Hex,
    /// The grid's named zones (`zones.geojson`, e.g. arrondissements).
    Zone,
}

impl Unit {
    pub fn is_hex(&self) -> bool {
        *self == Unit::Hex
    }
}

/// The privacy unit: what neighbouring datasets differ by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum PrivacyUnit {
    /// One device over one local calendar day of the grid.
    #[serde(rename = "device-day")]
    DeviceDay,
}

/// The instant a local day starts (the first valid local time of the day,
/// which is midnight everywhere DST changes at night).
pub fn local_midnight(tz: chrono_tz::Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut naive = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
            return t.with_timezone(&Utc);
        }
        naive += chrono::Duration::hours(1);
    }
    Utc.from_utc_datetime(&naive)
}
