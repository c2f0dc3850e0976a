//! The privacy core: sensitivity, OpenDP mechanisms and the budget ledger.
//!
//! Everything that decides how much noise a release gets and what it costs
//! lives in this folder, so that a reviewer can audit one place:
//! [`sensitivity`] derives L1/L2 bounds from the policy's attested
//! contribution bounds, [`mechanism`] asks OpenDP for noise and cost, and
//! [`ledger`] commits charges durably before any noisy value exists, in
//! the database [`db`] opens (the data dir's SQLite file or a PostgreSQL
//! ledger shared by several machines).

pub mod db;
pub mod errorbar;
pub mod ledger;
pub mod mechanism;
pub mod sensitivity;

pub use crate::vocab::Bin;
