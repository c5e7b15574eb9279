//! Authentication and route authorisation: the middleware every non-anonymous route passes.
//!
//! It resolves the bearer token (or, without one, the client certificate
//! the connection was made with) to a [`Principal`] and asks casbin whether any
//! of its roles may call the matched route on an object of the request's
//! scope. The decision is made on the route template, never on the concrete
//! path, and the caller travels to the handler as a [`Caller`] extension.

use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use gdx_catalog::Principal;
use gdx_policies::Scope;

use super::error::{ApiError, ApiResult};
use super::recorder::AuditSlot;
use crate::state::AppState;
use crate::tls::Peer;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who is asking.
    pub principal: Arc<Principal>,
    /// Which token they used.
    pub token_id: String,
    /// The route template that was authorised.
    pub route: String,
    /// What the audit record of this request will say.
    pub audit: AuditSlot,
}

/// The middleware: authenticate, then decide the route with casbin.
pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

async fn check(state: &AppState, request: Request) -> ApiResult<Request> {
    let (mut parts, body) = request.into_parts();
    // A bearer token, when given, decides; else a verified client certificate (mutual TLS).
    let found = match bearer(&parts.headers) {
        Some(secret) => state.catalog.authenticate(secret).await?,
        None => match parts.extensions.get::<ConnectInfo<Peer>>().and_then(|c| c.0.cert.clone()) {
            Some(cert) => state.catalog.authenticate_certificate(&cert.fingerprint, cert.subject_cn.as_deref()).await?,
            None => None,
        },
    };
    let (principal, token) = found.ok_or_else(ApiError::unauthenticated)?;
    let audit = parts.extensions.get::<AuditSlot>().cloned().unwrap_or_default();
    audit.note(|n| {
        n.principal = Some(principal.id.clone());
        n.department = principal.department.clone();
    });
    if let Err(wait) = state.limits.admit(&principal.id) {
        metrics::counter!("gdx_rate_limited_total", "limit" => "requests").increment(1);
        let rate = state.config.limits.requests_per_second_of(&principal.id);
        return Err(ApiError::rate_limited(format!("more than {rate} requests a second from this principal"), wait));
    }
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .ok_or_else(|| ApiError::internal(&"route without a matched path"))?;
    let params = match axum::RequestPartsExt::extract::<RawPathParams>(&mut parts).await {
        Ok(p) => p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    let scope = scope_of(&principal, &route, &parts.method, &params);
    if !state.routes.decide(&principal, &route, parts.method.as_str(), scope)? {
        tracing::info!(principal = %principal.id, route = %route, method = %parts.method, "route denied");
        return Err(ApiError::denied());
    }
    parts.extensions.insert(Caller { principal: Arc::new(principal), token_id: token.id, route, audit });
    Ok(Request::from_parts(parts, body))
}

/// The bearer secret of the `Authorization` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whose object the request concerns.
///
/// Dataset ids are `{department}.{name}`, so routes under a dataset carry
/// their department in the path. Creating a dataset names the department in
/// the body, and the dataset of a grant, a sharing request or a feedback is
/// known once it is read: the decision is deferred to the handler.
fn scope_of(principal: &Principal, route: &str, method: &Method, params: &[(String, String)]) -> Scope {
    if route.starts_with("/api/v1/datasets/{id}") {
        let id = params.iter().find(|(k, _)| k == "id").map(|(_, v)| v.as_str()).unwrap_or("");
        return Scope::of(principal, gdx_catalog::provider_of(id));
    }
    if (route == "/api/v1/datasets" && method == Method::POST)
        || (route == "/api/v1/grants/{id}" && method == Method::DELETE)
        || route == "/api/v1/sharing-requests/{id}/approve"
        || route == "/api/v1/sharing-requests/{id}/reject"
        || route == "/api/v1/feedback/{id}/resolve"
    {
        return Scope::Deferred;
    }
    Scope::None
}

impl Caller {
    /// Refuses a read of `datasets` when one is read under a grant of the
    /// caller's department whose rows for today are spent.
    pub fn within_quotas<'a>(
        &self,
        state: &AppState,
        datasets: impl IntoIterator<Item = &'a String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> ApiResult<()> {
        let Some(department) = &self.principal.department else { return Ok(()) };
        match state.limits.quota_spent(&state.data, department, datasets, now) {
            Some((dataset, quota)) => Err(ApiError::quota_exceeded(&dataset, quota)),
            None => Ok(()),
        }
    }

    /// Completes a deferred decision once the handler knows the object's department.
    pub fn require(&self, state: &AppState, method: &Method, department: &str) -> ApiResult<()> {
        let scope = Scope::of(&self.principal, department);
        if state.routes.decide(&self.principal, &self.route, method.as_str(), scope)? {
            Ok(())
        } else {
            Err(ApiError::denied())
        }
    }
}
