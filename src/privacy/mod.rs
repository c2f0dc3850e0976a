//! The privacy core: sensitivity, OpenDP mechanisms and the budget ledger.
//!
//! Everything that decides how much noise a release gets and what it costs
//! lives in this folder, so that a reviewer can audit one place:
//! [`sensitivity`] derives L1/L2 bounds from the policy's attested
//! contribution bounds, [`mechanism`] asks OpenDP for noise and cost, and
//! [`ledger`] commits charges durably before any noisy value exists.

pub mod errorbar;
pub mod ledger;
pub mod mechanism;
pub mod sensitivity;

use serde::{Deserialize, Serialize};

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
