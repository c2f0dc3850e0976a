//! Dataset policies (`privacy-budgets/<dataset>.toml`).
//!
//! A policy names a dataset, the grid its counts refer to (a path relative
//! to the policy file) and the plausibility limits ingest enforces. The
//! privacy issue extends it with the privacy unit, bounds, caps and
//! audiences; unknown keys are errors, so a typo never becomes a silent
//! default.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;

/// Errors loading a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    // The cause is in the message, not a `source`: printed with its chain
    // it would say "No such file or directory" twice.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: invalid policy: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Plausibility limits applied to every delivered row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestLimits {
    /// Largest believable `devices` for one cell and bin.
    pub max_devices_per_cell_bin: u32,
    /// Largest believable `trips` for one origin–destination pair and bin.
    pub max_trips_per_pair_bin: u32,
    /// Bins before this day are refused as implausible.
    pub earliest_day: NaiveDate,
}

pub use crate::vocab::PrivacyUnit;

/// `[privacy]`: the unit, the operator-attested bounds and the dataset cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    pub unit: PrivacyUnit,
    /// Attested by the operator; hexflow cannot check them on aggregates.
    pub max_cells_per_bin: u32,
    pub max_bins_per_day: u32,
    pub max_trips_per_day: u32,
    /// δ at which ε is stated for zCDP releases.
    pub delta: f64,
    /// Total ρ per local day over all audiences.
    pub rho_per_day_cap: f64,
    /// Noisy values under this are flagged `low` (shown greyed out).
    pub display_threshold: f64,
}

impl PrivacySpec {
    pub fn bounds(&self) -> crate::privacy::sensitivity::Bounds {
        crate::privacy::sensitivity::Bounds {
            max_cells_per_bin: self.max_cells_per_bin,
            max_bins_per_day: self.max_bins_per_day,
            max_trips_per_day: self.max_trips_per_day,
        }
    }
}

/// `[audiences.<name>]`: a cap and purpose limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceSpec {
    /// ρ per local day this audience may spend.
    pub rho_per_day: f64,
    /// Finest H3 resolution it may ask for.
    pub finest_res: u8,
    /// Shortest output bin it may ask for.
    pub shortest_bin: crate::privacy::Bin,
    /// Days between a day and its first release for this audience.
    pub min_delay_days: u32,
}

/// `[presence.periods.<name>]`: a part of the local day, `from` inclusive,
/// `to` exclusive ("08:00" to "20:00"; `to = "24:00"` ends at midnight).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeriodSpec {
    pub from: String,
    pub to: String,
}

/// `[presence]`: the public lists a presence delivery is keyed by, and
/// the expansion factors that turn devices into estimated people.
///
/// Everything here is public: the key set of every presence release is
/// built from these lists, never from the data.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSpec {
    /// Day-parts; the operator attributes each device to at most one cell
    /// per period and day.
    pub periods: std::collections::BTreeMap<String, PeriodSpec>,
    /// Segments, in display order (e.g. resident, tourist, excursionist).
    pub segments: Vec<String>,
    /// Published origin groups, each with the origin codes it gathers
    /// (French départements into regions, a country into itself). A code
    /// the operator may deliver is a member of some group or `other`;
    /// codes in no group are published under the group `other`.
    pub origins: std::collections::BTreeMap<String, Vec<String>>,
    /// Largest believable `devices` for one cell, day, period, segment
    /// and origin.
    pub max_devices_per_cell_day: u32,
    /// Operator's devices per person of each segment (market share, or
    /// roaming share for foreign visitors): people = devices / factor.
    #[serde(default)]
    pub expansion: std::collections::BTreeMap<String, f64>,
    /// Factors per zone id that replace `expansion` in that zone (zone
    /// releases only).
    #[serde(default)]
    pub expansion_by_zone: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

/// The origin group of codes in no named group.
pub const OTHER_ORIGIN: &str = "other";

impl PresenceSpec {
    /// The published origin groups: the named ones, then `other` unless a
    /// named group already holds the code `other`.
    pub fn origin_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self.origins.keys().cloned().collect();
        if self.group_of(OTHER_ORIGIN) == OTHER_ORIGIN && !groups.iter().any(|g| g == OTHER_ORIGIN) {
            groups.push(OTHER_ORIGIN.into());
        }
        groups
    }

    /// The group an accepted code is published under.
    pub fn group_of<'a>(&'a self, code: &str) -> &'a str {
        self.origins
            .iter()
            .find(|(_, codes)| codes.iter().any(|c| c == code))
            .map_or(OTHER_ORIGIN, |(g, _)| g.as_str())
    }

    /// Every accepted code's group, for lookups per row (`group_of` scans).
    pub fn code_groups(&self) -> std::collections::HashMap<&str, &str> {
        let mut m: std::collections::HashMap<&str, &str> = self
            .origins
            .iter()
            .flat_map(|(g, codes)| codes.iter().map(move |c| (c.as_str(), g.as_str())))
            .collect();
        m.entry(OTHER_ORIGIN).or_insert(OTHER_ORIGIN);
        m
    }

    /// Whether the operator may deliver `code`.
    pub fn accepts_origin(&self, code: &str) -> bool {
        code == OTHER_ORIGIN || self.origins.values().any(|codes| codes.iter().any(|c| c == code))
    }

    /// The expansion factor of `segment` (in `zone`, if it has its own).
    pub fn factor(&self, segment: &str, zone: Option<&str>) -> Option<f64> {
        expansion_factor(&self.expansion, &self.expansion_by_zone, segment, zone)
    }

    /// The periods the visitors views read: the night (the period named
    /// `night`, else one holding 03:00) and the day (the period named `day`,
    /// else the longest period that is not the night). The night is found
    /// first, so a long night (00–08 h) is never taken for the day.
    pub fn day_and_night(&self) -> (String, Option<String>) {
        const THREE_AM: u32 = 3 * 3600;
        let night = if self.periods.contains_key("night") {
            Some("night".to_string())
        } else {
            self.periods
                .keys()
                .find(|k| {
                    self.period_bounds(k)
                        .is_some_and(|(a, b)| a <= THREE_AM && THREE_AM < b)
                })
                .cloned()
        };
        let day = if self.periods.contains_key("day") {
            "day".to_string()
        } else {
            self.periods
                .keys()
                .filter(|k| Some(*k) != night.as_ref())
                .max_by_key(|k| self.period_bounds(k).map_or(0, |(a, b)| b - a))
                .or_else(|| self.periods.keys().next())
                .cloned()
                .unwrap_or_default()
        };
        (day, night)
    }

    /// A period's bounds in seconds after local midnight.
    pub fn period_bounds(&self, name: &str) -> Option<(u32, u32)> {
        let p = self.periods.get(name)?;
        Some((parse_hhmm(&p.from)?, parse_hhmm(&p.to)?))
    }

    fn check(&self) -> Result<(), String> {
        let name_ok = |n: &str| {
            !n.is_empty() && n.len() <= 40 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if self.periods.is_empty() {
            return Err("presence.periods must name at least one period (e.g. day and night)".into());
        }
        for (name, p) in &self.periods {
            if !name_ok(name) || name == crate::vocab::ALL_GROUPS {
                return Err(format!(
                    "presence.periods.{name}: a period name is 1 to 40 ASCII letters, digits, '-' or '_' (and not \"all\")"
                ));
            }
            match (parse_hhmm(&p.from), parse_hhmm(&p.to)) {
                (Some(a), Some(b)) if a < b => {}
                _ => {
                    return Err(format!(
                        "presence.periods.{name}: from = {:?} and to = {:?} must be HH:MM times with from before to in one day (a period does not wrap past midnight)",
                        p.from, p.to
                    ));
                }
            }
        }
        if self.segments.is_empty() {
            return Err("presence.segments must list at least one segment".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.segments {
            if !name_ok(s) || s == crate::vocab::ALL_GROUPS || !seen.insert(s) {
                return Err(format!(
                    "presence.segments: {s:?} is listed twice, is \"all\" or is not 1 to 40 ASCII letters, digits, '-' or '_'"
                ));
            }
        }
        let mut owner: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
        for (group, codes) in &self.origins {
            if group.trim().is_empty() || group.len() > 60 || group == crate::vocab::ALL_GROUPS {
                return Err(format!(
                    "presence.origins: group {group:?} needs a name of 1 to 60 characters other than \"all\""
                ));
            }
            if codes.is_empty() {
                return Err(format!("presence.origins.{group:?} lists no origin code"));
            }
            for c in codes {
                if c.trim().is_empty() || c.len() > 20 || c.contains(',') {
                    return Err(format!("presence.origins.{group:?}: {c:?} is not an origin code"));
                }
                if let Some(other) = owner.insert(c, group) {
                    return Err(format!(
                        "presence.origins: code {c:?} is in both {other:?} and {group:?}; a code is published in one group"
                    ));
                }
            }
        }
        if self.periods.len() > 255 || self.segments.len() > 255 || owner.len() >= 65_535 {
            return Err("presence: at most 255 periods, 255 segments and 65,534 origin codes".into());
        }
        if self.max_devices_per_cell_day == 0 {
            return Err("presence.max_devices_per_cell_day must be positive".into());
        }
        let factors = self.expansion.iter().map(|(s, f)| (None, s, f)).chain(
            self.expansion_by_zone
                .iter()
                .flat_map(|(z, m)| m.iter().map(move |(s, f)| (Some(z), s, f))),
        );
        for (zone, segment, f) in factors {
            let at = zone
                .map(|z| format!("expansion_by_zone.{z:?}"))
                .unwrap_or("expansion".into());
            if !self.segments.contains(segment) {
                return Err(format!("presence.{at}.{segment}: not a segment of presence.segments"));
            }
            if !(f.is_finite() && *f > 0.0 && *f <= 1.0) {
                return Err(format!(
                    "presence.{at}.{segment} = {f} must be a share of people in (0, 1] (the operator's devices per person)"
                ));
            }
        }
        Ok(())
    }
}

/// Segment → factor, and zone → its own segment → factor.
pub type Factors = std::collections::BTreeMap<String, f64>;
pub type ZoneFactors = std::collections::BTreeMap<String, Factors>;

/// The expansion factor of `segment` in `zone`: the zone's own where it
/// has one, else the segment's (from a policy, or a release's manifest).
pub fn expansion_factor(expansion: &Factors, by_zone: &ZoneFactors, segment: &str, zone: Option<&str>) -> Option<f64> {
    zone.and_then(|z| by_zone.get(z))
        .and_then(|f| f.get(segment))
        .or_else(|| expansion.get(segment))
        .copied()
}

/// The one factor shared by every term of a sum (segments, or zones), or
/// none when they differ or one has none: a sum of devices turns into
/// people only with a common factor.
pub fn common_factor(factors: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut it = factors.into_iter();
    let first = it.next()??;
    it.all(|f| f == Some(first)).then_some(first)
}

/// "HH:MM" (00:00 to 24:00) in seconds after midnight.
fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 3600 + m * 60)
}

/// `[[publication]]`: a standing public release made for every day.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StandingRelease {
    pub metric: crate::store::Metric,
    /// Hexes (default) or the grid's named zones (then `res = 0`).
    #[serde(default)]
    pub unit: crate::vocab::Unit,
    #[serde(default)]
    pub res: u8,
    pub bin: crate::privacy::Bin,
    /// Presence only: the period and the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<crate::vocab::By>,
    pub rho: f64,
}

/// A dataset policy as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Dataset id (`marseille`): names the store and the ledger rows.
    pub dataset: String,
    #[serde(default)]
    pub title: Option<String>,
    /// What the operator counts, plural (`devices`, `pedestrians`): every
    /// label, legend, caption and JSON `unit` says it.
    #[serde(default = "default_unit_name")]
    pub unit_name: String,
    /// Grid folder, relative to the policy file.
    pub grid: PathBuf,
    /// IANA timezone of the local day; must be the grid's (checked when
    /// the grid is loaded), so a policy cannot silently shift the day.
    pub timezone: String,
    pub ingest: IngestLimits,
    pub privacy: PrivacySpec,
    /// At least `public`, `planners` and `tourism`.
    pub audiences: std::collections::BTreeMap<String, AudienceSpec>,
    #[serde(default)]
    pub publication: Vec<StandingRelease>,
    /// Presence deliveries and releases need it.
    #[serde(default)]
    pub presence: Option<PresenceSpec>,
}

fn default_unit_name() -> String {
    "devices".into()
}

/// A loaded policy with its grid folder resolved.
#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    pub spec: PolicySpec,
    pub grid_dir: PathBuf,
}

impl Policy {
    /// Loads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|cause| PolicyError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let invalid = |reason: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let spec: PolicySpec = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if spec.dataset.is_empty()
            || !spec
                .dataset
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(format!(
                "dataset {:?} must be non-empty ASCII letters, digits, '-' or '_'",
                spec.dataset
            )));
        }
        if spec.unit_name.trim().is_empty() || spec.unit_name.len() > 40 {
            return Err(invalid(format!(
                "unit_name = {:?} must name what is counted, in 1 to 40 characters (e.g. \"devices\", \"pedestrians\")",
                spec.unit_name
            )));
        }
        if spec.ingest.max_devices_per_cell_bin == 0 || spec.ingest.max_trips_per_pair_bin == 0 {
            return Err(invalid("ingest limits must be positive".into()));
        }
        let p = &spec.privacy;
        if !(p.delta > 0.0 && p.delta < 1e-3) {
            return Err(invalid(format!("privacy.delta = {} must be in (0, 0.001)", p.delta)));
        }
        if !(p.rho_per_day_cap.is_finite() && p.rho_per_day_cap > 0.0) {
            return Err(invalid("privacy.rho_per_day_cap must be a positive number".into()));
        }
        if p.max_cells_per_bin == 0 || p.max_bins_per_day == 0 || p.max_trips_per_day == 0 {
            return Err(invalid(
                "privacy bounds (max_cells_per_bin, max_bins_per_day, max_trips_per_day) must be ≥ 1".into(),
            ));
        }
        for required in crate::vocab::audience::REQUIRED {
            if !spec.audiences.contains_key(required) {
                return Err(invalid(format!("missing [audiences.{required}]")));
            }
        }
        for (name, a) in &spec.audiences {
            if !(a.rho_per_day.is_finite() && a.rho_per_day > 0.0) {
                return Err(invalid(format!(
                    "audiences.{name}.rho_per_day must be a positive number"
                )));
            }
            if a.rho_per_day > p.rho_per_day_cap {
                return Err(invalid(format!(
                    "audiences.{name}.rho_per_day = {} exceeds the dataset cap privacy.rho_per_day_cap = {}",
                    a.rho_per_day, p.rho_per_day_cap
                )));
            }
            if a.finest_res > 15 {
                return Err(invalid(format!(
                    "audiences.{name}.finest_res = {} is not an H3 resolution",
                    a.finest_res
                )));
            }
        }
        if let Some(p) = &spec.presence {
            p.check().map_err(invalid)?;
        }
        for (i, r) in spec.publication.iter().enumerate() {
            if let Err(e) = crate::privacy::mechanism::Budget::Rho(r.rho).check() {
                return Err(invalid(format!("publication[{i}].{e}")));
            }
            let presence = r.metric == crate::vocab::Metric::Presence;
            if presence != r.period.is_some() || (!presence && r.by.is_some()) {
                return Err(invalid(format!(
                    "publication[{i}]: period (and by) are for presence releases only, and a presence release needs a period"
                )));
            }
            // The plan publishes to the public: an item beyond the public's
            // purpose limits would load, then make every `publish` fail.
            let public = &spec.audiences[crate::vocab::audience::PUBLIC];
            match r.unit {
                crate::vocab::Unit::Hex if r.res > public.finest_res => {
                    return Err(invalid(format!(
                        "publication[{i}].res = {} is finer than the public may see (audiences.public.finest_res = {}): lower it, or raise the audience's limit if its purpose allows",
                        r.res, public.finest_res
                    )));
                }
                crate::vocab::Unit::Zone if r.res != 0 => {
                    return Err(invalid(format!(
                        "publication[{i}]: a zone release has no resolution (res = {}; leave it out)",
                        r.res
                    )));
                }
                _ => {}
            }
            if r.bin < public.shortest_bin {
                return Err(invalid(format!(
                    "publication[{i}].bin = \"{}\" is shorter than the public may see (audiences.public.shortest_bin = \"{}\")",
                    r.bin.as_str(),
                    public.shortest_bin.as_str()
                )));
            }
            if let Some(period) = &r.period {
                let known = spec.presence.as_ref().is_some_and(|p| p.periods.contains_key(period));
                if !known {
                    return Err(invalid(format!(
                        "publication[{i}].period = {period:?} is not a period of [presence.periods]"
                    )));
                }
            }
        }
        let planned: f64 = spec.publication.iter().map(|r| r.rho).sum();
        let public = &spec.audiences[crate::vocab::audience::PUBLIC];
        if planned > public.rho_per_day {
            return Err(invalid(format!(
                "the publication plan spends {planned} ρ per day, more than audiences.public.rho_per_day = {}",
                public.rho_per_day
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let grid_dir = base.join(&spec.grid);
        if !grid_dir.join("grid.toml").is_file() {
            return Err(invalid(format!(
                "grid = {:?} names {}, which holds no grid.toml; the path is relative to this policy's folder (or absolute)",
                spec.grid,
                grid_dir.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            spec,
            grid_dir,
        })
    }

    /// Resolves `--dataset NAME` (`privacy-budgets/NAME.toml` under
    /// `policies_dir`) or `--policy FILE`.
    pub fn resolve(dataset: Option<&str>, policy: Option<&Path>, policies_dir: &Path) -> Result<Self, PolicyError> {
        match (dataset, policy) {
            (_, Some(p)) => Self::load(p),
            (Some(name), None) => Self::load(&policies_dir.join(format!("{name}.toml"))),
            (None, None) => Err(PolicyError::Invalid {
                path: policies_dir.to_path_buf(),
                reason: "give --dataset NAME or --policy FILE".into(),
            }),
        }
    }

    pub fn dataset(&self) -> &str {
        &self.spec.dataset
    }

    /// Loads the policy's grid and checks that both agree on the timezone.
    pub fn load_grid(&self) -> Result<crate::grid::Grid, crate::grid::GridError> {
        let grid = crate::grid::Grid::load(&self.grid_dir)?;
        if grid.spec.timezone != self.spec.timezone {
            return Err(crate::grid::GridError::Spec {
                path: self.path.clone(),
                reason: format!(
                    "timezone = {:?} but grid {} uses {:?}: the local day (the privacy unit's day) must be the grid's",
                    self.spec.timezone,
                    grid.name(),
                    grid.spec.timezone
                ),
            });
        }
        Ok(grid)
    }
}

#[cfg(test)]
mod presence_tests {
    use super::*;

    fn spec(periods: &[(&str, &str, &str)]) -> PresenceSpec {
        PresenceSpec {
            periods: periods
                .iter()
                .map(|(n, f, t)| {
                    (
                        n.to_string(),
                        PeriodSpec {
                            from: f.to_string(),
                            to: t.to_string(),
                        },
                    )
                })
                .collect(),
            segments: vec!["local".into(), "visitor".into()],
            origins: Default::default(),
            max_devices_per_cell_day: 1,
            expansion: Default::default(),
            expansion_by_zone: Default::default(),
        }
    }

    #[test]
    fn the_day_is_never_the_night_whatever_the_periods_are_called() {
        let named = spec(&[("day", "08:00", "20:00"), ("night", "00:00", "06:00")]);
        assert_eq!(named.day_and_night(), ("day".into(), Some("night".into())));
        // A long night is the longest period, yet not the day.
        let other = spec(&[
            ("sleep", "00:00", "08:00"),
            ("morning", "08:00", "13:00"),
            ("afternoon", "13:00", "19:00"),
        ]);
        assert_eq!(other.day_and_night(), ("afternoon".into(), Some("sleep".into())));
        // No period holds 03:00: no night.
        let no_night = spec(&[("work", "09:00", "17:00")]);
        assert_eq!(no_night.day_and_night(), ("work".into(), None));
    }
}
