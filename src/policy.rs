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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// A dataset policy as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Dataset id (`marseille`): names the store and the ledger rows.
    pub dataset: String,
    #[serde(default)]
    pub title: Option<String>,
    /// Grid folder, relative to the policy file.
    pub grid: PathBuf,
    pub ingest: IngestLimits,
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
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
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
        if spec.ingest.max_devices_per_cell_bin == 0 || spec.ingest.max_trips_per_pair_bin == 0 {
            return Err(invalid("ingest limits must be positive".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let grid_dir = base.join(&spec.grid);
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
}
