//! Principals and their tokens (admin).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use gdx_catalog::{IssuedToken, NewCertificate, NewPrincipal, Page, Principal, PrincipalPatch, TokenInfo};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiResult, Problem};
use super::extract::{Json, Query, page_request};
use crate::state::AppState;

/// A created principal with its first token (shown once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedPrincipal {
    /// The principal.
    #[serde(flatten)]
    pub principal: Principal,
    /// The bearer token; stored hashed, never shown again.
    pub token: String,
    /// The token's id, to revoke it.
    pub token_id: String,
}

/// Creates a principal and its first token (admin).
#[utoipa::path(operation_id = "create_principal", post, path = "/api/v1/principals", tag = "identities", request_body = NewPrincipal,
    responses(
        (status = 201, description = "Created", body = CreatedPrincipal),
        (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<NewPrincipal>,
) -> ApiResult<(StatusCode, axum::Json<CreatedPrincipal>)> {
    let (principal, issued) = state.catalog.create_principal(input).await?;
    caller.audit.note(|n| n.target = Some(principal.id.clone()));
    tracing::info!(principal = %principal.id, "principal created");
    Ok((StatusCode::CREATED, axum::Json(CreatedPrincipal { principal, token: issued.token, token_id: issued.info.id })))
}

/// Filters of the principal list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only principals of this department.
    pub department: Option<String>,
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// Lists principals (admin).
#[utoipa::path(operation_id = "list_principals", get, path = "/api/v1/principals", tag = "identities", params(ListParams),
    responses(
        (status = 200, description = "OK", body = Page<Principal>),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Principal>>> {
    let page = page_request(q.limit, q.page_token)?;
    Ok(axum::Json(state.catalog.store().list_principals(q.department, page).await?))
}

/// One principal (admin).
#[utoipa::path(operation_id = "get_principal", get, path = "/api/v1/principals/{id}", tag = "identities", params(("id" = String, Path)),
    responses(
        (status = 200, description = "OK", body = Principal),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<axum::Json<Principal>> {
    Ok(axum::Json(state.catalog.store().principal(&id).await?))
}

/// Changes roles or disables a principal (admin).
#[utoipa::path(operation_id = "update_principal", patch, path = "/api/v1/principals/{id}", tag = "identities", params(("id" = String, Path)),
    request_body = PrincipalPatch,
    responses(
        (status = 200, description = "OK", body = Principal),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(patch): Json<PrincipalPatch>,
) -> ApiResult<axum::Json<Principal>> {
    let p = state.catalog.update_principal(&id, patch).await?;
    tracing::info!(principal = %p.id, disabled = p.disabled, "principal updated");
    Ok(axum::Json(p))
}

/// Input of `POST /api/v1/principals/{id}/tokens`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenInput {
    /// When the token stops working (RFC 3339).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Issues a token to a principal (admin); the secret is shown once.
#[utoipa::path(operation_id = "create_token", post, path = "/api/v1/principals/{id}/tokens", tag = "identities", params(("id" = String, Path)),
    request_body = NewTokenInput,
    responses(
        (status = 201, description = "Created", body = IssuedToken),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<NewTokenInput>,
) -> ApiResult<(StatusCode, axum::Json<IssuedToken>)> {
    let issued = state.catalog.create_token(&id, input.expires_at).await?;
    tracing::info!(principal = %id, token = %issued.info.id, "token issued");
    Ok((StatusCode::CREATED, axum::Json(issued)))
}

/// Registers a client certificate, by fingerprint or subject common name,
/// that authenticates as the principal over mutual TLS (admin). The
/// credential is listed and revoked with the principal's tokens.
#[utoipa::path(operation_id = "add_certificate", post, path = "/api/v1/principals/{id}/certificates", tag = "identities", params(("id" = String, Path)),
    request_body = NewCertificate,
    responses(
        (status = 201, description = "Created", body = TokenInfo),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_certificate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<NewCertificate>,
) -> ApiResult<(StatusCode, axum::Json<TokenInfo>)> {
    let info = state.catalog.add_certificate(&id, input).await?;
    tracing::info!(principal = %id, credential = %info.id, certificate = ?info.certificate, "client certificate registered");
    Ok((StatusCode::CREATED, axum::Json(info)))
}

/// Lists a principal's tokens, without secrets (admin).
#[utoipa::path(operation_id = "list_tokens", get, path = "/api/v1/principals/{id}/tokens", tag = "identities", params(("id" = String, Path)),
    responses(
        (status = 200, description = "OK", body = Page<TokenInfo>),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Page<TokenInfo>>> {
    let items = state.catalog.store().list_tokens(&id).await?;
    Ok(axum::Json(Page { items, next_page_token: None }))
}

/// Revokes a token (admin); effective for the next request.
#[utoipa::path(operation_id = "revoke_token", delete, path = "/api/v1/tokens/{id}", tag = "identities", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_token(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.catalog.store().revoke_token(&id).await?;
    tracing::info!(token = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
