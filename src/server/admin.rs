//! Token-protected routes: planner queries (charged to the planners'
//! budget), delivery upload and the publication plan (admin).
//!
//! Tokens are bearer tokens created by `hexflow token create`; only their
//! SHA-256 is stored, in the ledger database.

use crate::vocab::audience;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::json;

use super::{AppState, Problem, blocking, no_cache};
use crate::ingest::{IngestError, IngestOptions, Ingestor};
use crate::privacy::ledger::{LedgerError, Role, TokenRow};
use crate::privacy::mechanism::Budget;
use crate::release::{ReleaseError, ReleaseSpec};
use crate::store::Metric;

/// Most values one HTTP query may ask for (the CLI allows more): a query
/// is answered while the client waits.
pub const MAX_QUERY_VALUES: usize = 2_000_000;

/// The token of the request, checked against the ledger database.
async fn bearer(state: &AppState, headers: &HeaderMap) -> Result<TokenRow, Problem> {
    let unauthorized = |d: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", d);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("this endpoint needs `Authorization: Bearer <token>` (hexflow token create)"))?;
    // The scheme is case-insensitive (RFC 7235 §2.1).
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must read `Bearer <token>`"))?
        .to_string();
    let url = state.config.ledger.clone();
    blocking(move || {
        let mut ledger = crate::privacy::ledger::Ledger::open(&url).map_err(|e| Problem::ledger("token check", e))?;
        ledger
            .token(&token)
            .map_err(|e| Problem::ledger("token check", e))?
            .ok_or_else(|| unauthorized("unknown token"))
    })
    .await
}

async fn require(state: &AppState, headers: &HeaderMap, role: Role) -> Result<TokenRow, Problem> {
    let t = bearer(state, headers).await?;
    if t.role != role && t.role != Role::Admin {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            match role {
                Role::Admin => format!(
                    "token {:?} is a {} token; this endpoint needs an admin token",
                    t.name,
                    t.role.as_str()
                ),
                _ => format!(
                    "token {:?} is a {} token; this needs a {} or an admin token",
                    t.name,
                    t.role.as_str(),
                    role.as_str()
                ),
            },
        ));
    }
    Ok(t)
}

/// Public releases are open; an audience's releases need a token of that
/// audience (planners, tourism) or an admin token.
pub async fn may_read(state: &AppState, headers: &HeaderMap, audience: &str) -> Result<(), Problem> {
    match audience {
        audience::PUBLIC => Ok(()),
        audience::PLANNERS => require(state, headers, Role::Planner).await.map(|_| ()),
        audience::TOURISM => require(state, headers, Role::Tourism).await.map(|_| ()),
        _ => require(state, headers, Role::Admin).await.map(|_| ()),
    }
}

/// `POST /api/v1/queries`: a release spec for the planners' budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    dataset: String,
    metric: Metric,
    #[serde(default)]
    unit: crate::release::Unit,
    #[serde(default)]
    res: u8,
    bin: crate::privacy::Bin,
    /// Presence: the period and the split (segment by default).
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    by: Option<crate::vocab::By>,
    from: NaiveDate,
    to: NaiveDate,
    rho: Option<f64>,
    epsilon: Option<f64>,
}

fn release_problem(e: ReleaseError) -> Problem {
    let unprocessable =
        |title: &str, e: &ReleaseError| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, title, e.to_string());
    match &e {
        ReleaseError::Spec(_) => unprocessable("refused by the policy", &e),
        ReleaseError::Ledger(LedgerError::BudgetExceeded { .. }) => {
            Problem::new(StatusCode::CONFLICT, "budget exceeded", e.to_string())
        }
        ReleaseError::Ledger(LedgerError::Db(db)) if db.is_transient() => match e {
            ReleaseError::Ledger(l) => Problem::ledger("the release", l),
            other => Problem::internal("the release", other),
        },
        ReleaseError::NoData { .. } => unprocessable("no data", &e),
        ReleaseError::TooLarge { .. } => unprocessable("too large", &e),
        ReleaseError::Grid(crate::grid::GridError::ResolutionNotOffered { .. }) => {
            unprocessable("resolution not offered", &e)
        }
        _ => Problem::internal("the release", e),
    }
}

pub async fn query(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<QueryBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    // Any token may query; it spends its own audience's budget.
    let token = bearer(&state, &headers).await?;
    let Json(q) = body?;
    let ds = state.dataset(&q.dataset)?.clone();
    let spec_epsilon = q.epsilon;
    let budget = match (q.rho, q.epsilon) {
        (Some(r), None) => Budget::Rho(r),
        (None, Some(e)) => Budget::Epsilon(e),
        _ => return Err(Problem::bad_request("give exactly one of \"rho\" and \"epsilon\"")),
    };
    let spec = ReleaseSpec {
        dataset: q.dataset,
        audience: token.role.audience().into(),
        metric: q.metric,
        unit: q.unit,
        res: q.res,
        bin: q.bin,
        by: q
            .by
            .or((q.metric == Metric::Presence).then_some(crate::vocab::By::Segment)),
        period: q.period,
        from: q.from,
        to: q.to,
        budget,
    };
    let st = state.clone();
    let outcome = blocking(move || {
        let r = &ds.releaser;
        let today = r.today();
        let o = r.release_at_most(&spec, today, MAX_QUERY_VALUES).map_err(release_problem)?;
        tracing::info!(token = %token.name, release = %o.manifest.release_id, status = %o.status, audience = %spec.audience, "query");
        Ok(o)
    })
    .await?;
    st.refresh_index();
    let status = if outcome.status == crate::release::Status::Stored {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let id = &outcome.manifest.release_id;
    let body = json!({
        "status": outcome.status,
        "release_id": id,
        "rho_charged": if outcome.status == crate::release::Status::New { outcome.manifest.rho } else { 0.0 },
        // A query in ε is answered in ε too (pure DP; ρ = ε²/2 is what the
        // ledger adds up).
        "epsilon_charged": match (outcome.status, spec_epsilon) {
            (crate::release::Status::New, Some(_)) => Some(outcome.manifest.epsilon),
            (_, Some(_)) => Some(0.0),
            _ => None,
        },
        "manifest": outcome.manifest,
        "links": {
            "manifest": format!("/api/v1/releases/{id}"),
            "values": format!("/api/v1/releases/{id}/values"),
        },
    });
    Ok((status, no_cache(), Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    dataset: String,
    /// Original file name; its extension (`.csv`, `.parquet`) tells the format.
    filename: String,
    #[serde(default)]
    correction: bool,
}

/// Longest upload file name accepted (bytes): the quarantine file is named
/// after it, and file systems cap a name at 255 bytes.
const MAX_FILENAME_BYTES: usize = 200;

/// `POST /api/v1/admin/ingest`: a delivery as the raw body.
///
/// Nothing of the body is read before the token is checked (401/403), and
/// a `Content-Length` over the limit is answered 413 at once. An accepted
/// upload is streamed to a file under `uploads/`, never held in memory, and
/// cut off with 413 as soon as it passes the limit.
pub async fn ingest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<IngestQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, Problem> {
    require(&state, &headers, Role::Admin).await?;
    let Query(q) = q?;
    let limit = state.config.max_upload_bytes;
    let too_large = |what: String| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload too large",
            format!("{what}; the largest upload is {limit} bytes (serve --max-upload-mib)"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(format!("Content-Length is {len} bytes")));
    }
    let ds = state.dataset(&q.dataset)?.clone();
    let name = upload_name(&q.filename)?;
    let data_dir = state.config.data_dir.clone();
    // One folder per upload, so the file keeps its own name (quarantine
    // files and messages are named after it) and uploads never collide.
    let dir = data_dir.join("uploads").join(format!(
        "{}-{}",
        std::process::id(),
        UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = dir.join(&name);
    let written = receive(body, &dir, &tmp, limit).await;
    let bytes = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(match e {
                Received::TooLarge => too_large("the body passed the limit".into()),
                Received::Client(e) => Problem::bad_request(format!("the upload was cut off: {e}")),
                Received::Disk(e) => Problem::internal("upload", e),
            });
        }
    };
    if bytes == 0 {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Problem::bad_request("the uploaded file is empty"));
    }
    let report = blocking(move || {
        // The upload is removed whatever happens: the store keeps its own copy.
        let result = Ingestor::new(ds.releaser.policy.clone(), &data_dir)
            .map_err(|e| Problem::internal("ingest", e))
            .and_then(|i| {
                i.ingest(
                    &tmp,
                    IngestOptions {
                        correction: q.correction,
                    },
                )
                .map_err(|e| ingest_problem(e, &tmp, &name, &data_dir))
            });
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = result?;
        r.file = name.into();
        Ok(r)
    })
    .await?;
    let status = if report.status == crate::ingest::FileStatus::Ingested {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, no_cache(), Json(report)).into_response())
}

/// Numbers upload folders within this process.
static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The upload's file name: its last path component, `.csv` or `.parquet`,
/// printable and short enough to name a file.
fn upload_name(filename: &str) -> Result<String, Problem> {
    let name = std::path::Path::new(filename)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !(name.ends_with(".csv") || name.ends_with(".parquet")) {
        return Err(Problem::bad_request("filename must end in .csv or .parquet"));
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err(Problem::bad_request(format!(
            "filename is {} bytes long; at most {MAX_FILENAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) || name.starts_with('.') {
        return Err(Problem::bad_request(
            "filename must not contain control characters (NUL, newline, …) or start with a dot",
        ));
    }
    Ok(name)
}

enum Received {
    TooLarge,
    Client(axum::Error),
    Disk(std::io::Error),
}

/// Streams `body` into `path`, at most `limit` bytes; returns the size.
async fn receive(body: Body, dir: &std::path::Path, path: &std::path::Path, limit: usize) -> Result<u64, Received> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    tokio::fs::create_dir_all(dir).await.map_err(Received::Disk)?;
    let mut file = tokio::fs::File::create(path).await.map_err(Received::Disk)?;
    let mut body = body;
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Received::Client)?;
        let Ok(chunk) = frame.into_data() else { continue };
        n += chunk.len() as u64;
        if n > limit as u64 {
            return Err(Received::TooLarge);
        }
        file.write_all(&chunk).await.map_err(Received::Disk)?;
    }
    file.flush().await.map_err(Received::Disk)?;
    Ok(n)
}

fn ingest_problem(e: IngestError, tmp: &std::path::Path, name: &str, data_dir: &std::path::Path) -> Problem {
    // Messages name the temporary path; the uploader knows the file by name.
    // Other paths are shown relative to the data dir: a client has no use
    // for the server's layout.
    let detail = e
        .to_string()
        .replace(&tmp.display().to_string(), name)
        .replace(&format!("{}/", data_dir.display()), "");
    match e {
        IngestError::Unreadable { .. } | IngestError::Schema { .. } | IngestError::Rejected { .. } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "delivery refused", detail)
        }
        IngestError::Store { .. } => Problem::new(StatusCode::CONFLICT, "delivery refused", detail),
        other => Problem::internal("ingest", other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    dataset: String,
}

pub async fn publish(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    require(&state, &headers, Role::Admin).await?;
    let Query(q) = q?;
    let ds = state.dataset(&q.dataset)?.clone();
    let data_dir = state.config.data_dir.clone();
    let report = blocking(move || {
        crate::release::publish::publish(&ds.releaser, &data_dir).map_err(|e| Problem::internal("publish", e))
    })
    .await?;
    state.refresh_index();
    Ok((no_cache(), Json(report)).into_response())
}
