//! Token-protected routes: planner queries (charged to the planners'
//! budget), delivery upload and the publication plan (admin).
//!
//! Tokens are bearer tokens created by `hexflow token create`; only their
//! SHA-256 is stored, in the ledger database.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
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
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must read `Bearer <token>`"))?
        .to_string();
    let data_dir = state.config.data_dir.clone();
    blocking(move || {
        let ledger = crate::release::Releaser::ledger(&data_dir).map_err(|e| Problem::internal("token check", e))?;
        ledger
            .token(&token)
            .map_err(|e| Problem::internal("token check", e))?
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
        "public" => Ok(()),
        "planners" => require(state, headers, Role::Planner).await.map(|_| ()),
        "tourism" => require(state, headers, Role::Tourism).await.map(|_| ()),
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
        from: q.from,
        to: q.to,
        budget,
    };
    let st = state.clone();
    let outcome = blocking(move || {
        let r = &ds.releaser;
        let today = r.today();
        let o = r.release_at_most(&spec, today, MAX_QUERY_VALUES).map_err(release_problem)?;
        tracing::info!(token = %token.name, release = %o.manifest.release_id, status = o.status, audience = %spec.audience, "query");
        Ok(o)
    })
    .await?;
    st.refresh_index();
    let status = if outcome.status == "stored" {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let id = &outcome.manifest.release_id;
    let body = json!({
        "status": outcome.status,
        "release_id": id,
        "rho_charged": if outcome.status == "new" { outcome.manifest.rho } else { 0.0 },
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

pub async fn ingest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<IngestQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Problem> {
    require(&state, &headers, Role::Admin).await?;
    let Query(q) = q?;
    let body = body.map_err(|e| {
        Problem::new(
            e.status(),
            "upload refused",
            format!(
                "{} (largest upload: {} bytes)",
                e.body_text(),
                state.config.max_upload_bytes
            ),
        )
    })?;
    let ds = state.dataset(&q.dataset)?.clone();
    let name = std::path::Path::new(&q.filename)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv") || n.ends_with(".parquet"))
        .ok_or_else(|| Problem::bad_request("filename must end in .csv or .parquet"))?;
    if body.is_empty() {
        return Err(Problem::bad_request("the uploaded file is empty"));
    }
    let data_dir = state.config.data_dir.clone();
    let report = blocking(move || {
        // The upload is written under the data dir (never the count store)
        // and removed whatever happens: the store keeps its own copy.
        let dir = data_dir.join("uploads");
        std::fs::create_dir_all(&dir).map_err(|e| Problem::internal("upload", e))?;
        let tmp = dir.join(format!(
            "{}-{}",
            std::process::id(),
            crate::util::sha256_parts([&body[..]])
        ));
        let tmp = tmp.with_file_name(format!(
            "{}-{name}",
            tmp.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
        ));
        std::fs::write(&tmp, &body).map_err(|e| Problem::internal("upload", e))?;
        let result = Ingestor::new(ds.releaser.policy.clone(), &data_dir)
            .map_err(|e| Problem::internal("ingest", e))
            .and_then(|i| {
                i.ingest(
                    &tmp,
                    IngestOptions {
                        correction: q.correction,
                    },
                )
                .map_err(|e| ingest_problem(e, &tmp, &name))
            });
        let _ = std::fs::remove_file(&tmp);
        let mut r = result?;
        r.file = name.into();
        Ok(r)
    })
    .await?;
    let status = if report.status == "ingested" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, no_cache(), Json(report)).into_response())
}

fn ingest_problem(e: IngestError, tmp: &std::path::Path, name: &str) -> Problem {
    // Messages name the temporary path; the uploader knows the file by name.
    let detail = e.to_string().replace(&tmp.display().to_string(), name);
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
