//! The command-line surface. Each subcommand is a thin layer over a
//! library stage; `--json` prints exactly one summary object on stdout,
//! errors go to stderr with a non-zero exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::grid::weights::WeightMatrix;
use crate::grid::{Grid, generate};
use crate::ingest::{IngestOptions, Ingestor};
use crate::policy::Policy;
use crate::privacy::ledger::LedgerUrl;
use crate::simulate::{self, Format};
use crate::store::CountStore;
use crate::util::cores;

/// Differentially private footfall and flow heatmaps on H3 hexagons.
#[derive(Debug, Parser)]
#[command(name = "hexflow", version, about)]
pub struct Args {
    /// Runtime state: count store, weights cache, quarantine.
    #[arg(long, global = true, env = "HEXFLOW_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Where `--dataset NAME` looks for `NAME.toml`.
    #[arg(long, global = true, env = "HEXFLOW_POLICIES_DIR", default_value = "privacy-budgets")]
    pub policies_dir: PathBuf,
    /// The privacy ledger: sqlite:PATH, or postgres://USER@HOST:PORT/DB to
    /// share one ledger between machines (default: the data dir's
    /// hexflow.sqlite). A data dir once charged to PostgreSQL keeps it.
    #[arg(long, global = true, env = "HEXFLOW_LEDGER", hide_env_values = true)]
    pub ledger: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// `--dataset NAME | --policy FILE`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct DatasetArg {
    /// Dataset name: the policy `<policies-dir>/NAME.toml`.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Any policy file; its grid path is relative to the file.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

impl DatasetArg {
    fn load(&self, policies_dir: &Path) -> Result<Policy> {
        Ok(Policy::resolve(
            self.dataset.as_deref(),
            self.policy.as_deref(),
            policies_dir,
        )?)
    }
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub dataset: DatasetArg,
    /// Whose budget pays: public, planners, tourism (see the policy).
    #[arg(long)]
    pub audience: String,
    #[arg(long, value_enum)]
    pub metric: MetricArg,
    /// H3 resolution of the hexes (footfall) or zones (flows, ≤ 7).
    #[arg(long, required_unless_present = "zones", conflicts_with = "zones")]
    pub res: Option<u8>,
    /// Key the values by the grid's named zones (zones.geojson) instead of hexes.
    #[arg(long)]
    pub zones: bool,
    /// Output bin: 1h, 1d, 1w or 1mo.
    #[arg(long)]
    pub bin: crate::privacy::Bin,
    /// Presence: the period of the day (a name of the policy's
    /// [presence.periods], e.g. day or night).
    #[arg(long)]
    pub period: Option<String>,
    /// Presence: split the values by none, segment or segment,origin.
    #[arg(long)]
    pub by: Option<crate::vocab::By>,
    #[arg(long)]
    pub from: NaiveDate,
    #[arg(long)]
    pub to: NaiveDate,
    /// ρ of a Gaussian (zCDP) release.
    #[arg(long, conflicts_with = "epsilon", required_unless_present = "epsilon")]
    pub rho: Option<f64>,
    /// ε of a Laplace (pure DP) release, charged as ρ = ε²/2.
    #[arg(long)]
    pub epsilon: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InitCmdArgs {
    #[command(flatten)]
    pub init: crate::init::InitArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a city: a grid folder and a complete, commented policy from a
    /// cells CSV and an area GeoJSON (every input checked).
    Init(InitCmdArgs),
    /// Write deterministic synthetic operator deliveries for a grid.
    Simulate {
        /// Grid folder (holds grid.toml, cells.csv, ...).
        #[arg(long)]
        grid: PathBuf,
        /// First local day (YYYY-MM-DD).
        #[arg(long)]
        from: NaiveDate,
        /// Last local day, included.
        #[arg(long)]
        to: NaiveDate,
        /// Output folder: one file per metric and month, plus events.json.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "parquet")]
        format: Format,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A policy with a [presence] section: also write presence
        /// deliveries (its periods, segments and origin codes).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Grid tools: weights and catalogue generation.
    Grid {
        #[command(subcommand)]
        command: GridCommand,
    },
    /// Validate delivered files and add them to the count store.
    Ingest {
        #[command(flatten)]
        dataset: DatasetArg,
        /// The files are corrections: they replace stored rows for the same
        /// cells and bins (recorded in the catalog).
        #[arg(long)]
        correction: bool,
        /// CSV or Parquet files (footfall or flows, told by the header).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make (or fetch) one differentially private release.
    Release(ReleaseArgs),
    /// Run the policy's publication plan for every day with data.
    Publish {
        #[command(flatten)]
        dataset: DatasetArg,
        /// Spread the plan over this many `hexflow worker` processes (the
        /// cores shared among them), through a job queue in the ledger's
        /// database (other machines may run `hexflow worker` on the same
        /// queue); without it, threads of this process share the plan.
        #[arg(long)]
        workers: Option<usize>,
        /// How long a worker's claim on a job lasts without renewal (it
        /// renews every third of it): a killed worker's job is taken over
        /// after this.
        #[arg(long, default_value_t = 60.0)]
        lease_s: f64,
        #[arg(long)]
        json: bool,
    },
    /// Take publication jobs from the ledger's queue (see publish
    /// --workers) until none is left. Run it on any machine that sees the
    /// data dir, the policies and the ledger.
    Worker {
        /// Only the jobs of this run (publish --workers passes its own).
        #[arg(long)]
        run: Option<String>,
        /// Keep waiting for new runs instead of stopping when idle.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 60.0)]
        lease_s: f64,
        /// Jobs this process runs at once (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Show what was spent per day and audience, and every release.
    Ledger {
        #[command(flatten)]
        dataset: DatasetArg,
        #[arg(long)]
        json: bool,
    },
    /// Show what the count store holds for a dataset.
    Store {
        #[command(flatten)]
        dataset: DatasetArg,
        #[arg(long)]
        json: bool,
    },
    /// The Marseille demo: simulate a year, ingest it, build the weights,
    /// run the public publication plan, then serve the viewer and the API.
    /// A restart reuses everything already done.
    Demo {
        /// Address to serve on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Prepare everything, print the summary, do not serve.
        #[arg(long)]
        no_serve: bool,
        #[arg(long, default_value = "2025-01-01")]
        from: NaiveDate,
        #[arg(long, default_value = "2025-12-31")]
        to: NaiveDate,
        /// Resolution whose weights are built.
        #[arg(long, default_value_t = 8)]
        res: u8,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Serve the API and the viewer for the data dir's datasets.
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// How well the public releases recover a simulation's injected truth
    /// (event recall, profile correlations, flow ranks, forecast errors).
    ///
    /// It reads raw counts for the truth, so it runs only on a store whose
    /// every delivery is a file `hexflow simulate` or `demo` wrote (checked
    /// by the SHA-256s in the simulation's marker). What it reveals of the
    /// truth: agreement figures only — correlations and error quantiles over
    /// many values, recall, and single comparisons as bands ("≤ 1 %");
    /// never a count, a true statistic, or an error the published figure
    /// would turn back into one.
    Evaluate {
        #[command(flatten)]
        dataset: DatasetArg,
        #[arg(long)]
        json: bool,
    },
    /// API tokens for planners and administrators.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Measure ingest, a plain polars scan and weight builds.
    Bench {
        #[arg(long, default_value = "grids/marseille")]
        grid: PathBuf,
        /// Month simulated for the ingest figures (first day).
        #[arg(long, default_value = "2025-03-01")]
        month: NaiveDate,
        /// Resolutions whose weights are timed.
        #[arg(long, value_delimiter = ',', default_value = "8,9")]
        res: Vec<u8>,
        /// Instead: the pipeline (simulate a week, ingest, weights, an
        /// hourly and a daily zone release) on synthetic networks of these
        /// sizes at the density of `--grid` (e.g. 1000,10000,100000).
        #[arg(long, value_delimiter = ',')]
        cells: Vec<usize>,
        /// Instead: the demo's year published with each of these numbers
        /// of worker processes (e.g. 1,2,4; the cores shared among them),
        /// after a baseline of one process taking one job at a time and
        /// before the threaded `publish` (no queue), each on a fresh
        /// ledger: with
        /// --ledger postgres://… a new database per run on that server
        /// (its user needs CREATEDB; dropped after the run), else a SQLite
        /// file.
        #[arg(long, value_delimiter = ',')]
        workers: Vec<usize>,
        /// Instead: the demo's first start (until /healthz answers, the
        /// first release is listed, the plan is published), its restart,
        /// then the restarted server under load over real connections:
        /// tiles and values never asked before (16 connections), cached
        /// answers, the release list and the ledger (32). With
        /// --ledger postgres://… the demo charges a new database on that
        /// server (its user needs CREATEDB; dropped at the end).
        #[arg(long)]
        serve: bool,
        /// With --serve: load this running server instead (its caches as
        /// they are), e.g. 127.0.0.1:8080; no demo is started.
        #[arg(long, requires = "serve")]
        against: Option<std::net::SocketAddr>,
        /// Seconds of each load run of --serve.
        #[arg(long, default_value_t = 5.0, requires = "serve")]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
}

/// `--metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricArg {
    Footfall,
    Flows,
    Presence,
}

impl From<MetricArg> for crate::store::Metric {
    fn from(m: MetricArg) -> Self {
        match m {
            MetricArg::Footfall => crate::store::Metric::Footfall,
            MetricArg::Flows => crate::store::Metric::Flows,
            MetricArg::Presence => crate::store::Metric::Presence,
        }
    }
}

/// Options of `hexflow serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Origins allowed to call the API from a browser (CORS); `*` for any.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// Largest delivery an admin may upload (MiB).
    #[arg(long, default_value_t = 512)]
    pub max_upload_mib: usize,
    /// Absolute base URL of this server as clients see it, e.g.
    /// https://maps.example.org: the base of the URLs in TileJSON, which
    /// are then cached publicly. Required behind a proxy; without it URLs
    /// name the request's Host over http and TileJSON is sent private
    /// (Forwarded/X-Forwarded-* headers are never used).
    #[arg(long, value_parser = parse_public_url)]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Timeouts and the bound on connections of `serve` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Seconds a client has, from a request's first byte, to send all its
    /// headers (trickled headers are cut).
    #[arg(long, default_value_t = 10.0, value_parser = parse_timeout_s)]
    pub header_timeout_s: f64,
    /// Seconds a connection stays open with no request coming (new or
    /// keep-alive) or with an answer its client does not read.
    #[arg(long, default_value_t = 60.0, value_parser = parse_timeout_s)]
    pub idle_timeout_s: f64,
    /// Seconds allowed for each KiB of a request body, uploads included;
    /// a slower body is answered 408 and its connection closed.
    #[arg(long, default_value_t = 30.0, value_parser = parse_timeout_s)]
    pub body_timeout_s: f64,
    /// Connections served at once; further ones wait to be accepted
    /// (lowered to fit the open-file limit, which is raised to its maximum).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

impl ConnArgs {
    pub fn limits(&self) -> crate::server::ConnLimits {
        crate::server::ConnLimits {
            header: std::time::Duration::from_secs_f64(self.header_timeout_s),
            idle: std::time::Duration::from_secs_f64(self.idle_timeout_s),
            body: std::time::Duration::from_secs_f64(self.body_timeout_s),
            max_connections: self.max_connections as usize,
        }
    }
}

fn parse_timeout_s(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.05..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected seconds from 0.05 to 86400")),
    }
}

fn parse_public_url(s: &str) -> std::result::Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?}: expected an absolute http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || s.contains(['?', '#', ' ']) {
        return Err(format!(
            "{s:?}: expected the URL clients use, like https://maps.example.org or https://example.org/hexflow (no query)"
        ));
    }
    Ok(s.trim_end_matches('/').to_string())
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is kept.
    Create {
        #[arg(long, value_enum)]
        role: crate::privacy::ledger::Role,
        /// Who holds it (unique), e.g. `transit-planning`.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GridCommand {
    /// Build (or load from cache) the cell→hex weight matrix.
    Build {
        #[arg(long)]
        grid: PathBuf,
        #[arg(long)]
        res: u8,
        #[arg(long)]
        json: bool,
    },
    /// Regenerate a synthetic grid's cells.csv from its [generator] section.
    Generate {
        #[arg(long)]
        grid: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The prefix of the PostgreSQL databases benchmarks make (and drop).
const BENCH_DB_PREFIX: &str = "hexflow_bench";

/// A report as `--json` or as the command's table.
fn show<T: Serialize>(value: &T, json: bool, table: impl FnOnce(&T)) -> Result<ExitCode> {
    if json {
        print_json(value)?;
    } else {
        table(value);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a parsed command line.
pub fn run(args: Args) -> Result<ExitCode> {
    let data_dir = args.data_dir.clone();
    let ledger = crate::privacy::ledger::LedgerUrl::resolve(args.ledger.as_deref(), &data_dir)?;
    match args.command {
        Command::Simulate {
            grid,
            from,
            to,
            out,
            format,
            seed,
            policy,
            json,
        } => {
            let grid = Grid::load(&grid)?;
            let policy = policy.as_deref().map(Policy::load).transpose()?;
            let presence = match &policy {
                Some(p) => Some(p.spec.presence.as_ref().with_context(|| {
                    format!(
                        "{}: no [presence] section, so no presence deliveries to simulate",
                        p.path.display()
                    )
                })?),
                None => None,
            };
            let report = simulate::simulate(&grid, from, to, &out, format, seed, presence)?;
            if json {
                print_json(&report)?;
            } else {
                out!(
                    "simulated {} {}..{} (seed {}): {} footfall rows, {} flow rows, {} presence rows in {} files, {} matches and {} cruise calls injected; truth in {} ({:.1} s)",
                    report.grid,
                    report.from,
                    report.to,
                    report.seed,
                    report.footfall_rows,
                    report.flows_rows,
                    report.presence_rows,
                    report.files.len(),
                    report.matches,
                    report.cruise_calls,
                    report.truth.display(),
                    report.elapsed_s
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Grid {
            command: GridCommand::Build { grid, res, json },
        } => {
            let grid = Grid::load(&grid)?;
            let (_, summary) = WeightMatrix::load_or_build(&grid, res, &data_dir)?;
            if json {
                print_json(&summary)?;
            } else {
                print_weights(&summary);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Grid {
            command: GridCommand::Generate { grid, json },
        } => {
            let g = Grid::load_without_cells(&grid)?;
            let cells = generate::generate(&g)?;
            let path = grid.join("cells.csv");
            generate::write_cells(&path, &cells)?;
            let sites: std::collections::HashSet<&str> = cells.iter().map(|c| c.site_id.as_str()).collect();
            let omni = cells.iter().filter(|c| c.azimuth_deg.is_none()).count();
            if json {
                print_json(&serde_json::json!({
                    "path": path, "cells": cells.len(), "sites": sites.len(), "omnidirectional": omni,
                }))?;
            } else {
                out!(
                    "wrote {}: {} cells on {} sites ({} omnidirectional)",
                    path.display(),
                    cells.len(),
                    sites.len(),
                    omni
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest {
            dataset,
            correction,
            files,
            json,
        } => ingest(
            &dataset.load(&args.policies_dir)?,
            &data_dir,
            &files,
            IngestOptions { correction },
            json,
        ),
        Command::Store { dataset, json } => store_cmd(&args.policies_dir, &data_dir, dataset, json),
        Command::Release(a) => release_cmd(&args.policies_dir, &data_dir, &ledger, a),
        Command::Publish {
            dataset,
            workers,
            lease_s,
            json,
        } => {
            let lease = lease_of(lease_s)?;
            publish_cmd(&args.policies_dir, &data_dir, &ledger, dataset, workers, lease, json)
        }
        Command::Worker {
            run,
            wait,
            lease_s,
            threads,
            json,
        } => {
            use crate::release::jobs;
            let idle = if wait {
                jobs::WhenIdle::Wait
            } else {
                jobs::WhenIdle::Exit
            };
            let stop = std::sync::atomic::AtomicBool::new(false);
            let threads = match threads {
                Some(0) => bail!("--threads must be at least 1"),
                Some(n) => n,
                None => cores(),
            };
            let done = jobs::work(
                &ledger,
                &data_dir,
                run.as_deref(),
                lease_of(lease_s)?,
                idle,
                &stop,
                threads,
            )?;
            if json {
                print_json(&done)?;
            } else {
                out!(
                    "worker {}: {} jobs, {} new releases, {} stored, {:.4} ρ spent",
                    done.worker,
                    done.jobs,
                    done.report.new,
                    done.report.stored,
                    done.report.rho_spent
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ledger { dataset, json } => ledger_cmd(&args.policies_dir, &data_dir, &ledger, dataset, json),
        Command::Demo {
            addr,
            no_serve,
            from,
            to,
            res,
            json,
            conn,
        } => {
            let policy = demo(&args.policies_dir, &data_dir, from, to, res, json)?;
            let releaser = crate::release::Releaser::new(policy.clone(), &data_dir)?.with_ledger_url(ledger.clone())?;
            if no_serve {
                eprintln!("publishing the public plan ...");
                let published = crate::release::publish::publish(&releaser, &data_dir)?;
                print_demo(&policy, &data_dir, &published, json)?;
                return Ok(ExitCode::SUCCESS);
            }
            // Serve at once and publish beside the server, newest days
            // first: the viewer has the latest day within seconds of a first
            // start, and the rest appears as it is published.
            let progress = std::sync::Arc::new(crate::release::publish::Progress::default());
            let publisher = {
                let (progress, data_dir, policy) = (progress.clone(), data_dir.clone(), policy.clone());
                std::thread::spawn(move || {
                    let result = crate::release::publish::publish_with(&releaser, &data_dir, &progress);
                    // The server must not wait for a publication that failed.
                    progress.finished.store(true, std::sync::atomic::Ordering::Relaxed);
                    match result {
                        Ok(published) => {
                            if let Err(e) = print_demo(&policy, &data_dir, &published, json) {
                                eprintln!("publication summary: {e:#}");
                            }
                        }
                        Err(e) => eprintln!("publishing the plan failed: {e}"),
                    }
                })
            };
            let serve = ServeArgs {
                addr,
                cors_origins: Vec::new(),
                max_upload_mib: 512,
                public_url: None,
                conn,
            };
            let served = serve_policies_with(vec![policy], &data_dir, &ledger, &serve, Some(progress.clone()));
            // Stopped (Ctrl-C) or failed to start: the releases being made
            // finish, the rest of the plan waits for the next start.
            progress.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = publisher.join();
            served
        }
        Command::Evaluate { dataset, json } => evaluate_cmd(&args.policies_dir, &data_dir, dataset, json),
        Command::Serve { serve } => {
            let policies = crate::server::load_policies(&args.policies_dir, &data_dir)?;
            serve_policies_with(policies, &data_dir, &ledger, &serve, None)
        }
        Command::Token {
            command: TokenCommand::Create { role, name },
        } => {
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            ledger.bind(&data_dir)?;
            let token = crate::privacy::ledger::Ledger::open(&ledger)?.create_token(name.trim(), role)?;
            eprintln!(
                "created {} token {:?}; it is shown once, store it now (only its hash is kept):",
                role.as_str(),
                name.trim()
            );
            out!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(a) => init_cmd(a),
        Command::Bench {
            serve: true,
            seconds,
            against,
            json,
            ..
        } => {
            if !(seconds.is_finite() && (0.1..=3600.0).contains(&seconds)) {
                anyhow::bail!("--seconds must be between 0.1 and 3600, not {seconds}");
            }
            let tmp = crate::bench::tempdir()?;
            // On PostgreSQL, a fresh database: the demo's charges must
            // start from nothing, as in its own data dir.
            let scratch = match &ledger {
                crate::privacy::ledger::LedgerUrl::Postgres(admin) if against.is_none() => {
                    Some(crate::privacy::db::scratch_database(admin, BENCH_DB_PREFIX)?)
                }
                _ => None,
            };
            let report = crate::bench::serve::run(&args.policies_dir, &tmp, scratch.as_deref(), seconds, against);
            let _ = std::fs::remove_dir_all(&tmp);
            if let (crate::privacy::ledger::LedgerUrl::Postgres(admin), Some(url)) = (&ledger, &scratch) {
                crate::privacy::db::drop_scratch_database(admin, url, BENCH_DB_PREFIX)?;
            }
            show(&report?, json, crate::bench::serve::print)
        }
        Command::Bench { workers, json, .. } if !workers.is_empty() => {
            bench_workers(&args.policies_dir, &ledger, &workers, json)
        }
        Command::Bench { grid, cells, json, .. } if !cells.is_empty() => {
            let reference = crate::grid::Grid::load(&grid)?;
            let tmp = crate::bench::tempdir()?;
            let runs = cells
                .iter()
                .map(|n| {
                    let run = crate::bench::scale::run(&tmp, *n, &reference);
                    // Each size's files go before the next size starts.
                    let _ = std::fs::remove_dir_all(&tmp);
                    std::fs::create_dir_all(&tmp)?;
                    run
                })
                .collect::<Result<Vec<_>>>();
            let _ = std::fs::remove_dir_all(&tmp);
            show(&runs?, json, |r| crate::bench::scale::print(r))
        }
        Command::Bench {
            grid, month, res, json, ..
        } => show(&crate::bench::run(&grid, month, &res)?, json, crate::bench::print),
    }
}

fn store_cmd(policies_dir: &Path, data_dir: &Path, dataset: DatasetArg, json: bool) -> Result<ExitCode> {
    let policy = dataset.load(policies_dir)?;
    let store = CountStore::new(data_dir, policy.dataset());
    // Held until the files of this catalog have been read.
    let _readers = store.read_guard()?;
    let catalog = store.catalog()?;
    let summary = store.summary(&catalog)?;
    if json {
        print_json(&serde_json::json!({
            "dataset": policy.dataset(), "root": store.root(),
            "deliveries": catalog.deliveries.len(), "metrics": summary,
        }))?;
    } else {
        print_store(policy.dataset(), &store, &catalog, &summary);
    }
    Ok(ExitCode::SUCCESS)
}

fn release_cmd(policies_dir: &Path, data_dir: &Path, ledger: &LedgerUrl, a: ReleaseArgs) -> Result<ExitCode> {
    let ReleaseArgs {
        dataset,
        audience,
        metric,
        res,
        zones,
        bin,
        period,
        by,
        from,
        to,
        rho,
        epsilon,
        json,
    } = a;
    let policy = dataset.load(policies_dir)?;
    let budget = match (rho, epsilon) {
        (_, Some(e)) => crate::privacy::mechanism::Budget::Epsilon(e),
        (Some(r), None) => crate::privacy::mechanism::Budget::Rho(r),
        (None, None) => bail!("give --rho or --epsilon"),
    };
    let spec = crate::release::ReleaseSpec {
        dataset: policy.dataset().to_string(),
        audience,
        metric: metric.into(),
        unit: if zones {
            crate::release::Unit::Zone
        } else {
            crate::release::Unit::Hex
        },
        res: res.unwrap_or(0),
        bin,
        by: by.or((metric == MetricArg::Presence).then_some(crate::vocab::By::Segment)),
        period,
        from,
        to,
        budget,
    };
    let releaser = crate::release::Releaser::new(policy, data_dir)?.with_ledger_url(ledger.clone())?;
    // A large release is said before it is charged: its noise alone takes
    // ~9 µs per value and core (`hexflow bench` on the reference machine).
    // Refusals first (purpose limits, windows): they cost nothing either.
    spec.check(&releaser.policy, releaser.today())?;
    let values = releaser.value_count(&spec)?;
    if values > 1_000_000 && !json {
        eprintln!(
            "{values} values: up to about {:.0} s of noise on one core before it is stored (limit {})",
            values as f64 * 9e-6,
            crate::release::spec::MAX_VALUES
        );
    }
    let outcome = releaser.release(&spec, releaser.today())?;
    if json {
        print_json(&outcome)?;
    } else {
        print_release(&outcome);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--lease-s`, checked.
fn lease_of(seconds: f64) -> Result<std::time::Duration> {
    if !(1.0..=86_400.0).contains(&seconds) {
        bail!("--lease-s must be between 1 and 86400 seconds, not {seconds}");
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn publish_cmd(
    policies_dir: &Path,
    data_dir: &Path,
    ledger: &LedgerUrl,
    dataset: DatasetArg,
    workers: Option<usize>,
    lease: std::time::Duration,
    json: bool,
) -> Result<ExitCode> {
    let policy = dataset.load(policies_dir)?;
    let releaser = crate::release::Releaser::new(policy, data_dir)?.with_ledger_url(ledger.clone())?;
    let report = match workers {
        None => crate::release::publish::publish(&releaser, data_dir)?,
        Some(0) => bail!("--workers must be at least 1"),
        Some(n) => publish_over_workers(&releaser, data_dir, policies_dir, n, None, lease)?,
    };
    if json {
        print_json(&report)?;
    } else {
        out!(
            "published {} new releases ({} already stored, {} days not yet old enough), {:.4} ρ spent",
            report.new,
            report.stored,
            report.too_recent,
            report.rho_spent
        );
        for f in &report.refused {
            out!("  refused: {f}");
        }
    }
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ledger_cmd(
    policies_dir: &Path,
    data_dir: &Path,
    ledger: &LedgerUrl,
    dataset: DatasetArg,
    json: bool,
) -> Result<ExitCode> {
    let policy = dataset.load(policies_dir)?;
    ledger.bind(data_dir)?;
    let mut ledger = crate::privacy::ledger::Ledger::open(ledger)?;
    let spend = ledger.spend(policy.dataset())?;
    let releases = ledger.releases(policy.dataset())?;
    let caps: std::collections::BTreeMap<&str, f64> = policy
        .spec
        .audiences
        .iter()
        .map(|(k, a)| (k.as_str(), a.rho_per_day))
        .collect();
    if json {
        print_json(&serde_json::json!({
            "dataset": policy.dataset(),
            "rho_per_day_cap": policy.spec.privacy.rho_per_day_cap,
            "audience_caps": caps,
            "days": spend,
            "releases": releases,
        }))?;
    } else {
        out!(
            "ledger of {} (dataset cap {} ρ per day; audience caps {:?})",
            policy.dataset(),
            policy.spec.privacy.rho_per_day_cap,
            caps
        );
        for s in &spend {
            let cap = caps.get(s.audience.as_str()).copied().unwrap_or(0.0);
            out!(
                "  {} {:<9} spent {:.6} ρ of {:.6} ({:.6} left) in {} release(s)",
                s.day,
                s.audience,
                s.rho_spent,
                cap,
                (cap - s.rho_spent).max(0.0),
                s.releases
            );
        }
        out!("  {} releases charged", releases.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// ρ as written in a policy: 0.03, not 0.029999999999999995 (a sum of
/// floats read back from a manifest).
fn rho_text(rho: f64) -> String {
    let t = format!("{rho:.6}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn evaluate_cmd(policies_dir: &Path, data_dir: &Path, dataset: DatasetArg, json: bool) -> Result<ExitCode> {
    let r = crate::evaluate::run(dataset.load(policies_dir)?, data_dir)?;
    if json {
        print_json(&r)?;
    } else {
        let e = &r.events;
        out!(
            "events ({}, {} hexes, {} days scored, ρ {} per day): recall of the {} match evenings among the top {}: {:.0} % ({} false alarms there); {} match evenings and {} other days stand out from the noise (95 %)",
            e.area,
            e.hexes,
            e.days_scored,
            rho_text(e.rho_per_day_of_source),
            e.match_days,
            e.match_days,
            100.0 * e.recall_at_k,
            e.false_alarms_at_k,
            e.matches_flagged,
            e.false_alarms
        );
        let p = &r.profiles;
        out!(
            "profiles ({} zones, ρ {} per day): correlation of each zone's profile shape with the truth {:.4} (weekday means), {:.4} (month means)",
            p.zones,
            rho_text(p.rho_per_day_of_source),
            p.weekday_correlation,
            p.month_correlation
        );
        let f = &r.flows;
        out!(
            "flows ({}, {} pairs, ρ {} per day): Spearman {:.3}, top-10 overlap {:.0} %",
            f.period,
            f.pairs,
            rho_text(f.rho_per_day_of_source),
            f.spearman,
            100.0 * f.top10_overlap
        );
        let c = &r.forecast;
        out!(
            "forecast ({} zones, {} days ahead, backtest): MAE {:.1} % of the level vs {:.1} % for seasonal-naive; 95 % intervals held {:.0} %",
            c.zones,
            c.horizon_days,
            100.0 * c.relative_mae_model,
            100.0 * c.relative_mae_seasonal_naive,
            100.0 * c.coverage95
        );
        if let Some(v) = &r.visitors {
            out!(
                "visitors ({} whole months, ρ {} per day and period for daily presence, ρ {} per day for monthly origins): overnight stays off by {} on average ({} at worst), day visitors by {} ({}); top-10 origins of visitors in summer months {:.0} % right; excursionists on the {} cruise-call days ×{:.2} the other days ({} off the true ratio); people per zone and day ({} values): correlation {:.4}, median error {:.2} % (95th percentile {:.2} %)",
                v.months,
                rho_text(v.rho_per_day_daily),
                rho_text(v.rho_per_day_origins),
                v.nights_tourists_rel_error_mean.as_str(),
                v.nights_tourists_rel_error_max.as_str(),
                v.day_visitors_rel_error_mean.as_str(),
                v.day_visitors_rel_error_max.as_str(),
                100.0 * v.top10_origins_overlap_mean,
                v.cruise_days,
                v.cruise_day_excursionist_ratio_dp,
                v.cruise_day_ratio_rel_error.as_str(),
                v.zone_days,
                v.zone_day_correlation,
                100.0 * v.zone_day_rel_error_median,
                100.0 * v.zone_day_rel_error_p95
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_cmd(a: InitCmdArgs) -> Result<ExitCode> {
    let (report, json) = (crate::init::init(&a.init)?, a.json);
    if json {
        print_json(&report)?;
    } else {
        out!(
            "wrote {} and {}
  {} cells at {} distinct site positions ({} site ids co-located with another; {} cells outside the area), {:.1} km², sites {:.0} m apart (dense part; median {:.0} m)
  timezone {} ({})
  resolutions {:?} (the public hourly map: {} hexes a bin); {} zones; {} holidays
  publication plan: {}{}
next: hexflow --policies-dir {} ingest --dataset {} DELIVERY... ; then publish and serve",
            report.grid_dir.display(),
            report.policy.display(),
            report.cells,
            report.sites,
            report.co_located_sites,
            report.cells_outside_area,
            report.area_km2,
            report.site_spacing_p10_m,
            report.site_spacing_median_m,
            report.timezone,
            report.timezone_source,
            report.resolutions,
            report.public_map_hexes_per_bin,
            report.zones,
            report.holidays,
            report
                .publication
                .iter()
                .map(|p| format!(
                    "{} {} {}",
                    p.metric,
                    if p.unit == crate::release::Unit::Zone {
                        "zones".to_string()
                    } else {
                        format!("res {}", p.res)
                    },
                    p.bin.as_str()
                ))
                .collect::<Vec<_>>()
                .join(", "),
            report
                .warnings
                .iter()
                .map(|w| format!("\n  warning: {w}"))
                .collect::<String>(),
            report
                .policy
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            report
                .policy
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct IngestSummary<'a> {
    dataset: &'a str,
    files: Vec<serde_json::Value>,
    ingested: usize,
    already_ingested: usize,
    failed: usize,
}

fn ingest(policy: &Policy, data_dir: &Path, files: &[PathBuf], opts: IngestOptions, json: bool) -> Result<ExitCode> {
    let ingestor = Ingestor::new(policy.clone(), data_dir)?;
    let mut reports = Vec::new();
    let (mut ok, mut again, mut failed) = (0, 0, 0);
    for file in files {
        match ingestor.ingest(file, opts) {
            Ok(r) => {
                if r.status == crate::ingest::FileStatus::AlreadyIngested {
                    again += 1;
                } else {
                    ok += 1;
                }
                if !json {
                    match r.status {
                        crate::ingest::FileStatus::AlreadyIngested => {
                            out!("{}: already ingested (same content), nothing to do", file.display())
                        }
                        _ => out!(
                            "{}: ingested {} {} rows, {} local days {}..{}{}",
                            file.display(),
                            r.rows,
                            r.metric.map(|m| m.as_str()).unwrap_or("?"),
                            r.days,
                            r.first_day.map(|d| d.to_string()).unwrap_or_default(),
                            r.last_day.map(|d| d.to_string()).unwrap_or_default(),
                            if r.correction {
                                format!(", {} stored rows replaced (correction)", r.rows_replaced)
                            } else {
                                String::new()
                            }
                        ),
                    }
                    if r.rows_clamped > 0 {
                        eprintln!(
                            "warning: {}: {} rows counted more than the policy's plausibility maximum ([ingest] max_devices_per_cell_bin, max_trips_per_pair_bin or [presence] max_devices_per_cell_day) and were stored at it; check the delivery, or raise the maximum if such counts are real",
                            file.display(),
                            r.rows_clamped
                        );
                    }
                }
                reports.push(serde_json::to_value(&r)?);
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
                let mut v = serde_json::json!({ "file": file, "status": "rejected", "error": e.to_string() });
                if let crate::ingest::IngestError::Rejected {
                    rows,
                    rejected,
                    quarantine,
                    ..
                } = &e
                {
                    v["rows"] = (*rows).into();
                    v["rows_rejected"] = (*rejected).into();
                    v["quarantine"] = serde_json::to_value(quarantine)?;
                }
                reports.push(v);
            }
        }
    }
    if json {
        print_json(&IngestSummary {
            dataset: policy.dataset(),
            files: reports,
            ingested: ok,
            already_ingested: again,
            failed,
        })?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_release(o: &crate::release::Outcome) {
    let m = &o.manifest;
    let (keys_on, noise_on) = match (m.spec.unit, m.placement) {
        (crate::release::Unit::Zone, crate::privacy::sensitivity::Placement::Hex) => {
            ("zones".to_string(), "each zone's sum")
        }
        (crate::release::Unit::Hex, crate::privacy::sensitivity::Placement::Hex) => {
            (format!("res {}", m.spec.res), "each hex's sum")
        }
        (crate::release::Unit::Zone, _) => ("zones".to_string(), "the cell counts"),
        (crate::release::Unit::Hex, _) => (format!("res {}", m.spec.res), "the cell counts"),
    };
    let split = m
        .presence
        .as_ref()
        .map(|p| format!(" ({} period, {} groups)", p.period, p.groups.len()))
        .unwrap_or_default();
    out!(
        "{} {} ({}): {} {} values{split} ({} keys × {} bins) on {keys_on}, {:?} noise on {noise_on}, sd {:.2}, ρ {:.6} (ε {:.3} at δ {:e}), {} day(s) charged",
        m.release_id,
        o.status,
        o.dir.display(),
        m.values,
        m.spec.metric,
        m.keys,
        m.bins,
        m.mechanism,
        m.noise_sd,
        m.rho,
        m.epsilon,
        m.delta,
        m.days_charged.len()
    );
}

fn print_weights(s: &crate::grid::weights::WeightSummary) {
    out!(
        "grid {} at resolution {}: {} cells ({} with weights, {} outside the study area), {} hexes in the area ({:.1} km²), {} with weight",
        s.grid,
        s.res,
        s.cells,
        s.cells_with_weights,
        s.cells_outside.len(),
        s.hexes_in_area,
        s.study_area_km2,
        s.hexes_weighted
    );
    out!(
        "  hexes per cell min/median/max: {}/{}/{}",
        s.hexes_per_cell.min,
        s.hexes_per_cell.median,
        s.hexes_per_cell.max
    );
    out!(
        "  ‖W_c‖₂ per cell min/median/max: {:.4}/{:.4}/{:.4}",
        s.l2_norm_per_cell.min,
        s.l2_norm_per_cell.median,
        s.l2_norm_per_cell.max
    );
    out!(
        "  row sums within {:.1e} of 1; largest area gap {:.1e}; {} in {:.2} s; cache {}",
        s.max_row_sum_error,
        s.max_area_gap,
        if s.cached { "loaded" } else { "built" },
        s.build_s,
        s.cache_dir.display()
    );
    if !s.cells_outside.is_empty() {
        out!("  outside the study area (no weights): {}", s.cells_outside.join(", "));
    }
}

fn print_store(
    dataset: &str,
    store: &CountStore,
    catalog: &crate::store::Catalog,
    summary: &[crate::store::MetricSummary],
) {
    out!(
        "count store of {dataset} at {} ({} deliveries)",
        store.root().display(),
        catalog.deliveries.len()
    );
    for m in summary {
        match (m.first_day, m.last_day) {
            (Some(a), Some(b)) => out!(
                "  {:<8} {} rows over {} local days {a}..{b}, {:.1} MiB of Parquet",
                m.metric.as_str(),
                m.rows,
                m.days,
                m.bytes as f64 / (1024.0 * 1024.0)
            ),
            _ => out!("  {:<8} nothing stored", m.metric.as_str()),
        }
    }
}

fn serve_policies_with(
    policies: Vec<Policy>,
    data_dir: &Path,
    ledger: &LedgerUrl,
    args: &ServeArgs,
    publishing: Option<std::sync::Arc<crate::release::publish::Progress>>,
) -> Result<ExitCode> {
    let mut config = crate::server::ServeConfig::new(data_dir);
    config.ledger = ledger.clone();
    config.cors_origins = args.cors_origins.clone();
    config.max_upload_bytes = args.max_upload_mib << 20;
    config.public_url = args.public_url.clone();
    config.limits = args.conn.limits();
    let state = std::sync::Arc::new(crate::server::AppState::new(policies, config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(progress) = publishing {
        runtime.spawn(crate::server::follow_publication(state.clone(), progress));
    }
    runtime.block_on(crate::server::serve(state, args.addr, |addr| {
        // Tests and scripts read this line to find the port.
        out!("serving on http://{addr}/");
        eprintln!("API at http://{addr}/api/v1/ (OpenAPI: /api/openapi.json); Ctrl-C stops");
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// Prepares the demo data dir and returns the Marseille policy.
fn demo(policies_dir: &Path, data_dir: &Path, from: NaiveDate, to: NaiveDate, res: u8, json: bool) -> Result<Policy> {
    let policy = Policy::resolve(Some("marseille"), None, policies_dir)
        .context("the demo runs from the repository root, where privacy-budgets/marseille.toml is")?;
    // The ingestor loads (and checks) the grid once for the whole demo.
    let ingestor = Ingestor::new(policy.clone(), data_dir)?;
    let grid = &ingestor.grid;
    let deliveries = data_dir.join("deliveries").join(policy.dataset());
    // v2: presence deliveries, and day trippers in the footfall.
    let marker = deliveries.join(simulate::marker_name(from, to));
    if deliveries.join(format!("simulated-{from}-{to}.json")).exists() && !marker.exists() {
        bail!(
            "{} holds deliveries simulated by an earlier hexflow (without presence); remove {} (or give another --data-dir) to simulate them afresh",
            deliveries.display(),
            data_dir.display()
        );
    }
    if !marker.exists() {
        eprintln!(
            "simulating {} deliveries {from}..{to} into {} ...",
            grid.name(),
            deliveries.display()
        );
        simulate::simulate(
            grid,
            from,
            to,
            &deliveries,
            Format::Parquet,
            1,
            policy.spec.presence.as_ref(),
        )?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&deliveries)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no deliveries found in {}", deliveries.display());
    }
    eprintln!("ingesting {} files ...", files.len());
    // Side by side: a file is read and checked outside the store's lock,
    // which is held only while it commits. Already-ingested files are a
    // no-op, so a restart costs a hash each.
    crate::util::on_threads("ingest", files, |file| ingestor.ingest(&file, IngestOptions::default()))
        .into_iter()
        .try_for_each(|r| r.map(drop))?;
    // Built (or read) now: the first release of each resolution would
    // otherwise wait for it.
    let (_, weights) = WeightMatrix::load_or_build(grid, res, data_dir)?;
    if !json {
        print_weights(&weights);
    }
    Ok(policy)
}

/// What the demo's data dir holds and what its publication did.
fn print_demo(
    policy: &Policy,
    data_dir: &Path,
    published: &crate::release::publish::PublishReport,
    json: bool,
) -> Result<()> {
    let store = CountStore::new(data_dir, policy.dataset());
    // Held until the files of this catalog have been read.
    let _readers = store.read_guard()?;
    let catalog = store.catalog()?;
    let summary = store.summary(&catalog)?;
    if json {
        print_json(&serde_json::json!({ "store": summary, "publish": published }))?;
    } else {
        print_store(policy.dataset(), &store, &catalog, &summary);
        out!(
            "published {} new releases (ρ {:.3} spent), {} already stored, {} too recent, {} refused",
            published.new,
            published.rho_spent,
            published.stored,
            published.too_recent,
            published.refused.len()
        );
    }
    Ok(())
}

/// `publish --workers N`: queues the plan as one run and starts N `hexflow
/// worker` processes on it, `threads` jobs at a time each (default: the
/// cores shared among them); jobs that no worker finished (all of them
/// killed) are finished here once their leases end.
fn publish_over_workers(
    releaser: &crate::release::Releaser,
    data_dir: &Path,
    policies_dir: &Path,
    workers: usize,
    threads: Option<usize>,
    lease: std::time::Duration,
) -> Result<crate::release::publish::PublishReport> {
    let threads = threads.unwrap_or((cores() / workers).max(1));
    use crate::release::jobs;
    let plan = crate::release::publish::plan(releaser, data_dir)?;
    let run = jobs::new_run_id();
    let mut ledger = releaser.open_ledger()?;
    jobs::enqueue(&mut ledger, &run, &releaser.policy.path, &plan)?;
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut children = Vec::with_capacity(workers);
    for index in 0..workers {
        let child = std::process::Command::new(&exe)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--policies-dir")
            .arg(policies_dir)
            .args(["worker", "--run", &run, "--lease-s", &lease.as_secs_f64().to_string()])
            .args(["--threads", &threads.to_string()])
            // The URL may carry a password: through the environment, not
            // the command line that `ps` shows.
            .env("HEXFLOW_LEDGER", releaser.ledger_url().to_arg())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|source| jobs::JobError::Spawn { index, source })?;
        children.push(child);
    }
    let bar = crate::cli_progress(plan.len() as u64, "publishing");
    loop {
        let status = jobs::status(&mut ledger, &run)?;
        bar.set_position(status.done);
        let running = children
            .iter_mut()
            .map(|c| matches!(c.try_wait(), Ok(None)))
            .filter(|alive| *alive)
            .count();
        if running == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bar.finish_and_clear();
    for (i, mut c) in children.into_iter().enumerate() {
        match c.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("worker {i} stopped: {s}"),
            Err(e) => eprintln!("worker {i}: {e}"),
        }
    }
    let left = jobs::status(&mut ledger, &run)?;
    if left.queued + left.running > 0 {
        eprintln!(
            "{} jobs left by stopped workers: finishing them here once their leases end",
            left.queued + left.running
        );
        let stop = std::sync::atomic::AtomicBool::new(false);
        jobs::work(
            releaser.ledger_url(),
            data_dir,
            Some(&run),
            lease,
            jobs::WhenIdle::Exit,
            &stop,
            cores(),
        )?;
    }
    Ok(jobs::report(&mut ledger, &run)?)
}

/// One run of `bench --workers` (`workers` 0: the threaded `publish`,
/// without the queue).
#[derive(Debug, Serialize)]
struct WorkersRun {
    workers: usize,
    threads_each: usize,
    releases: usize,
    seconds: f64,
    releases_per_s: f64,
    speedup: f64,
}

/// `bench --workers 1,2,4`: prepares the demo's year once (simulate,
/// ingest, weights), then publishes its whole plan from a fresh copy and a
/// fresh ledger with each number of worker processes.
fn bench_workers(policies_dir: &Path, ledger: &LedgerUrl, workers: &[usize], json: bool) -> Result<ExitCode> {
    let tmp = crate::bench::tempdir()?;
    let result = (|| -> Result<Vec<WorkersRun>> {
        let prepared = tmp.join("prepared");
        let (from, to) = (
            NaiveDate::from_ymd_opt(2025, 1, 1).context("date")?,
            NaiveDate::from_ymd_opt(2025, 12, 31).context("date")?,
        );
        eprintln!("preparing the demo's year (simulate, ingest, weights) ...");
        let policy = demo(policies_dir, &prepared, from, to, 8, true)?;
        let mut runs: Vec<WorkersRun> = Vec::new();
        if workers.contains(&0) {
            bail!("--workers: each number must be at least 1");
        }
        // The baseline: one process taking one job at a time. Then each
        // number of processes with the cores shared among them, as
        // `publish --workers N` starts them.
        // Last, the threaded `publish` of one process (no queue, no
        // worker), as the reference the queue's cost is read against.
        let sizes = std::iter::once((1, 1))
            .chain(workers.iter().map(|&n| (n, (cores() / n).max(1))))
            .chain(std::iter::once((0, cores())));
        for (n, threads) in sizes {
            let dir = tmp.join(format!("workers-{n}x{threads}"));
            link_tree(&prepared, &dir)?;
            let url = match ledger {
                LedgerUrl::Postgres(admin) => {
                    LedgerUrl::Postgres(crate::privacy::db::scratch_database(admin, BENCH_DB_PREFIX)?)
                }
                LedgerUrl::Sqlite(_) => LedgerUrl::in_data_dir(&dir),
            };
            let releaser = crate::release::Releaser::new(policy.clone(), &dir)?.with_ledger_url(url)?;
            if n == 0 {
                eprintln!(
                    "publishing in this process, {threads} threads, on {} ...",
                    releaser.ledger_url()
                );
            } else {
                eprintln!(
                    "publishing with {n} worker process(es) × {threads} thread(s) on {} ...",
                    releaser.ledger_url()
                );
            }
            let t0 = std::time::Instant::now();
            let report = if n == 0 {
                crate::release::publish::publish(&releaser, &dir).map_err(anyhow::Error::from)
            } else {
                publish_over_workers(
                    &releaser,
                    &dir,
                    policies_dir,
                    n,
                    Some(threads),
                    std::time::Duration::from_secs(60),
                )
            };
            let seconds = t0.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&dir);
            if let (LedgerUrl::Postgres(admin), LedgerUrl::Postgres(scratch)) = (ledger, releaser.ledger_url()) {
                crate::privacy::db::drop_scratch_database(admin, scratch, BENCH_DB_PREFIX)?;
            }
            let report = report?;
            if !report.refused.is_empty() {
                bail!("{} releases refused, e.g. {}", report.refused.len(), report.refused[0]);
            }
            let first = runs.first().map_or(seconds, |r| r.seconds);
            runs.push(WorkersRun {
                workers: n,
                threads_each: threads,
                releases: report.new,
                seconds,
                releases_per_s: report.new as f64 / seconds,
                speedup: first / seconds,
            });
        }
        Ok(runs)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    show(&result?, json, |runs| {
        out!(
            "the demo's year published by worker processes on {} ({} cores)",
            if ledger.is_postgres() { "PostgreSQL" } else { "SQLite" },
            cores()
        );
        out!(
            "{:>8} {:>8} {:>9} {:>9} {:>11} {:>9}",
            "workers",
            "threads",
            "releases",
            "seconds",
            "releases/s",
            "speed-up"
        );
        for r in runs {
            out!(
                "{:>8} {:>8} {:>9} {:>9.1} {:>11.1} {:>8.2}×",
                if r.workers == 0 {
                    "publish".to_string()
                } else {
                    r.workers.to_string()
                },
                r.threads_each,
                r.releases,
                r.seconds,
                r.releases_per_s,
                r.speedup
            );
        }
    })
}

/// A copy of the tree `from` at `to` whose files are hard links (the
/// store is only read by a publication), copies where links fail.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
