//! hexflow: differentially private footfall and flow heatmaps on H3 hexagons
//! from a mobile operator's per-cell device counts.
//!
//! Modules follow the pipeline (see `ARCHITECTURE.md`):
//! [`grid`] (cell catalogue, coverage, cell→hex weights) →
//! [`ingest`] (validated deliveries) → [`store`] (Parquet by local day).
//! [`privacy`] (sensitivity, OpenDP mechanisms, the ledger) → [`release`]
//! (immutable noisy releases) → [`server`] (HTTP API, maps and tiles drawn by
//! [`render`], the embedded viewer). [`simulate`] produces realistic
//! synthetic deliveries for any grid, and [`cli`] is the command-line surface.

/// `println!` for CLI output that ends quietly when the reader goes away
/// (`hexflow ledger | head`), instead of panicking on a broken pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

pub mod bench;
pub mod cli;
pub mod evaluate;
pub mod grid;
pub mod ingest;
pub mod init;
pub mod policy;
pub mod privacy;
pub mod release;
pub mod render;
pub mod server;
pub mod simulate;
pub mod store;
pub mod table;
pub mod util;
pub mod views;
pub mod vocab;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr for long CLI work; hidden when stderr is not a
/// terminal (CI, pipes, tests), so it never pollutes machine output.
pub fn cli_progress(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}
