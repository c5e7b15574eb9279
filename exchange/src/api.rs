//! The HTTP API: routes, the OpenAPI document, and the layers around them.
//!
//! One file per area under `api/`. Every route except the anonymous ones
//! (`/healthz`, `/api/v1/openapi.json`) passes [`auth::authorize`], which
//! authenticates and lets casbin decide the route.

pub mod audit;
pub mod auth;
pub mod datasets;
pub mod departments;
pub mod error;
pub mod extract;
pub mod feedback;
pub mod grants;
pub mod me;
pub mod observe;
pub mod policy;
pub mod principals;
pub mod push;
pub mod query;
pub mod recorder;
pub mod records;
pub mod sharing;
pub mod supervision;
pub mod system;
pub mod versions;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware;
use axum::routing::{delete, get, post};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::state::AppState;
use error::ApiError;

/// The OpenAPI description, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "GDX — government data exchange", description = "Catalogue, identities and sharing of government data."),
    paths(
        system::healthz, system::metrics, system::openapi, me::me,
        departments::create, departments::list, departments::get,
        principals::create, principals::list, principals::get, principals::update,
        principals::create_token, principals::list_tokens, principals::revoke_token, principals::add_certificate,
        datasets::create, datasets::search, datasets::get, datasets::update, datasets::versions,
        versions::push, versions::rejects, versions::maintain,
        policy::get, policy::set, query::query, grants::list, grants::revoke,
        sharing::create, sharing::list, sharing::get, sharing::approve, sharing::reject,
        feedback::create, feedback::list, feedback::resolve, supervision::overdue,
        audit::list, audit::verify, audit::subject, audit::usage,
        records::get_one, records::get_by_columns, records::batch_get, records::verify,
        push::create, push::list, push::get, push::delete, push::run, push::events, push::deliveries, push::retry,
    ),
    components(schemas(error::Problem, gdx_catalog::FieldError)),
    modifiers(&BearerAuth, &CommonResponses),
    tags((name = "system"), (name = "identities"), (name = "catalogue"), (name = "ingest"), (name = "access"), (name = "query"), (name = "sharing"), (name = "supervision"), (name = "lookup"), (name = "push")),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// Adds the answers every operation can give (authentication, malformed or
/// invalid input, body limits) so each handler documents only its own.
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let anonymous = ANONYMOUS_ROUTES.contains(&path.as_str());
            for op in
                [&mut item.get, &mut item.post, &mut item.patch, &mut item.put, &mut item.delete].into_iter().flatten()
            {
                let mut add = |status: &str, description: &str| {
                    op.responses.responses.entry(status.to_string()).or_insert_with(|| problem(description).into());
                };
                if !anonymous {
                    add("401", "Unauthenticated");
                    add("403", "Access denied");
                    add("422", "Validation failed");
                }
                if op.request_body.is_some() {
                    add("400", "Malformed request");
                    add("413", "Body too large");
                    add("415", "Unsupported media type");
                }
            }
        }
    }
}

/// Routes that need no credential; every other route is decided by casbin.
pub const ANONYMOUS_ROUTES: &[&str] = &["/healthz", "/api/v1/openapi.json"];

/// The OpenAPI document served at `/api/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The service's router.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(system::metrics))
        .route("/api/v1/me", get(me::me))
        .route("/api/v1/departments", post(departments::create).get(departments::list))
        .route("/api/v1/departments/{id}", get(departments::get))
        .route("/api/v1/principals", post(principals::create).get(principals::list))
        .route("/api/v1/principals/{id}", get(principals::get).patch(principals::update))
        .route("/api/v1/principals/{id}/tokens", post(principals::create_token).get(principals::list_tokens))
        .route("/api/v1/principals/{id}/certificates", post(principals::add_certificate))
        .route("/api/v1/tokens/{id}", delete(principals::revoke_token))
        .route("/api/v1/datasets", post(datasets::create).get(datasets::search))
        .route("/api/v1/datasets/{id}", get(datasets::get).patch(datasets::update))
        .route("/api/v1/datasets/{id}/versions", get(datasets::versions).post(versions::push))
        .route("/api/v1/datasets/{id}/versions/{v}/rejects", get(versions::rejects))
        .route("/api/v1/datasets/{id}/maintenance", post(versions::maintain))
        .route("/api/v1/datasets/{id}/policy", get(policy::get).put(policy::set))
        .route("/api/v1/datasets/{id}/records", get(records::get_by_columns))
        .route("/api/v1/datasets/{id}/records/{key}", get(records::get_one))
        .route("/api/v1/datasets/{id}/records:batchGet", post(records::batch_get))
        .route("/api/v1/datasets/{id}/records:verify", post(records::verify))
        .route("/api/v1/query", post(query::query))
        .route("/api/v1/grants", get(grants::list))
        .route("/api/v1/grants/{id}", delete(grants::revoke))
        .route("/api/v1/sharing-requests", post(sharing::create).get(sharing::list))
        .route("/api/v1/sharing-requests/{id}", get(sharing::get))
        .route("/api/v1/sharing-requests/{id}/approve", post(sharing::approve))
        .route("/api/v1/sharing-requests/{id}/reject", post(sharing::reject))
        .route("/api/v1/feedback", post(feedback::create).get(feedback::list))
        .route("/api/v1/feedback/{id}/resolve", post(feedback::resolve))
        .route("/api/v1/supervision/overdue", get(supervision::overdue))
        .route("/api/v1/push/rules", post(push::create).get(push::list))
        .route("/api/v1/push/rules/{id}", get(push::get).delete(push::delete))
        .route("/api/v1/push/rules/{id}/run", post(push::run))
        .route("/api/v1/push/rules/{id}/events", get(push::events))
        .route("/api/v1/push/rules/{id}/deliveries", get(push::deliveries))
        .route("/api/v1/push/rules/{id}/deliveries/{event}/retry", post(push::retry))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/verify", get(audit::verify))
        .route("/api/v1/audit/subjects/{key}", get(audit::subject))
        .route("/api/v1/stats/usage", get(audit::usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authorize))
        .layer(middleware::from_fn_with_state(state.clone(), recorder::record));
    let anonymous =
        Router::new().route("/healthz", get(system::healthz)).route("/api/v1/openapi.json", get(system::openapi));
    Router::new()
        .merge(protected)
        .merge(anonymous)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe::observe))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // At debug level only: formatting a span's fields for every
            // request cost 3-5% of a record lookup's instructions. At the
            // default level, `observe` gives failures their route.
            // The route template, never the concrete path: paths carry keys.
            let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
            tracing::debug_span!("http", method = %req.method(), route = route.unwrap_or("-"))
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(error::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(error::METHOD_NOT_ALLOWED, "this route does not accept that method")
}
