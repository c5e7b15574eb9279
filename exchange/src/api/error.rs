//! The API's error: one table of stable codes, rendered as RFC 9457 problem+json.
//!
//! Every error response is built here. Internal errors are logged with their
//! cause and answered with a generic message: no path, key or stack trace
//! reaches a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gdx_catalog::FieldError;
use serde::Serialize;

/// One row of the code table: stable `code`, HTTP status and title.
#[derive(Debug, Clone, Copy)]
pub struct Code {
    /// Stable snake_case code clients match on.
    pub code: &'static str,
    /// HTTP status.
    pub status: StatusCode,
    /// Short human title.
    pub title: &'static str,
}

macro_rules! codes {
    ($($name:ident = ($code:literal, $status:ident, $title:literal);)+) => {
        $(#[doc = $title] pub const $name: Code = Code { code: $code, status: StatusCode::$status, title: $title };)+
        /// Every code, for documentation.
        pub const ALL_CODES: &[Code] = &[$($name),+];
    };
}

codes! {
    MALFORMED_REQUEST = ("malformed_request", BAD_REQUEST, "The request could not be parsed");
    VALIDATION_FAILED = ("validation_failed", UNPROCESSABLE_ENTITY, "The input is invalid");
    UNAUTHENTICATED = ("unauthenticated", UNAUTHORIZED, "Authentication required");
    ACCESS_DENIED = ("access_denied", FORBIDDEN, "Access denied");
    NOT_FOUND = ("not_found", NOT_FOUND, "Not found");
    TABLE_NOT_FOUND = ("table_not_found", BAD_REQUEST, "No such table");
    SQL_NOT_ALLOWED = ("sql_not_allowed", BAD_REQUEST, "This statement may not run");
    INVALID_QUERY = ("invalid_query", BAD_REQUEST, "The query cannot be planned or run");
    METHOD_NOT_ALLOWED = ("method_not_allowed", METHOD_NOT_ALLOWED, "Method not allowed");
    NOT_ACCEPTABLE = ("not_acceptable", NOT_ACCEPTABLE, "No answer format the client accepts");
    CONFLICT = ("conflict", CONFLICT, "Conflict");
    PAYLOAD_TOO_LARGE = ("payload_too_large", PAYLOAD_TOO_LARGE, "The request body is too large");
    UNSUPPORTED_MEDIA_TYPE = ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "Unsupported media type");
    RATE_LIMITED = ("rate_limited", TOO_MANY_REQUESTS, "Too many requests");
    QUOTA_EXCEEDED = ("quota_exceeded", TOO_MANY_REQUESTS, "The grant's rows for today are spent");
    REQUEST_TIMEOUT = ("request_timeout", REQUEST_TIMEOUT, "The request was not received in time");
    UNAVAILABLE = ("unavailable", SERVICE_UNAVAILABLE, "Service unavailable");
    RESOURCES_EXHAUSTED = ("resources_exhausted", SERVICE_UNAVAILABLE, "Not enough resources for this request");
    INTERNAL = ("internal", INTERNAL_SERVER_ERROR, "Internal error");
}

/// RFC 9457 problem details as GDX sends them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// URI of the problem type (`urn:gdx:problem:<code>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short human title of the code.
    pub title: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What went wrong in this request.
    pub detail: String,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Field- or row-level problems (validation only), at most 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ProblemItem>>,
    /// How many problems there were in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u64>,
}

/// One problem of a validation error: a field of a JSON input, or a row and column of an upload.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProblemItem {
    /// Path of the field in a JSON input, e.g. `columns[2].type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Data row of an upload, counted from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    /// Column of an upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    detail: String,
    errors: Option<Vec<ProblemItem>>,
    error_count: Option<u64>,
    retry_after: Option<u64>,
}

/// Most field errors listed in one response.
const MAX_LISTED: usize = 100;

impl ApiError {
    /// An error of `code` with a detail for the client.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into(), errors: None, error_count: None, retry_after: None }
    }

    /// A validation error about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// A validation error listing field problems.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.first() {
            Some(first) if errors.len() == 1 => format!("{}: {}", first.field, first.message),
            Some(first) => format!("{}: {} (and {} more problems)", first.field, first.message, errors.len() - 1),
            None => "invalid input".into(),
        };
        let count = errors.len() as u64;
        let items = errors
            .into_iter()
            .map(|e| ProblemItem { field: Some(e.field), row: None, column: None, message: e.message })
            .collect();
        Self { code: VALIDATION_FAILED, detail, errors: Some(items), error_count: Some(count), retry_after: None }
    }

    /// A validation error of an upload: the first problems by row and column, and how many there were.
    pub fn rows(errors: Vec<gdx_connectors::RowError>, count: u64, detail: impl Into<String>) -> Self {
        let items = errors
            .into_iter()
            .map(|e| ProblemItem { field: None, row: e.row, column: e.column, message: e.message })
            .collect();
        Self {
            code: VALIDATION_FAILED,
            detail: detail.into(),
            errors: Some(items),
            error_count: Some(count),
            retry_after: None,
        }
    }

    /// 401: no valid credential.
    pub fn unauthenticated() -> Self {
        Self::new(UNAUTHENTICATED, "a valid bearer token is required")
    }

    /// 403: the caller may not do this.
    pub fn denied() -> Self {
        Self::new(ACCESS_DENIED, "the caller's roles and department do not allow this")
    }

    /// 429: over a limit; the client may try again after `wait` (told in
    /// whole seconds, at least one, in `Retry-After`).
    pub fn rate_limited(detail: impl Into<String>, wait: std::time::Duration) -> Self {
        Self::retry_later(RATE_LIMITED, detail, wait)
    }

    /// An error of `code` that passes after `wait` (`Retry-After`).
    pub fn retry_later(code: Code, detail: impl Into<String>, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self { retry_after: Some(secs.max(1)), ..Self::new(code, detail) }
    }

    /// 429 for a read under a grant whose rows for today are spent; it
    /// passes again at midnight in Asia/Shanghai.
    pub fn quota_exceeded(dataset: &str, quota: u64) -> Self {
        let shanghai = crate::push::cron::shanghai();
        let now = chrono::Utc::now().with_timezone(&shanghai);
        let midnight = now
            .date_naive()
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| t.and_local_timezone(shanghai).single());
        let wait = midnight.and_then(|m| (m - now).to_std().ok()).unwrap_or(std::time::Duration::from_secs(3600));
        Self::retry_later(
            QUOTA_EXCEEDED,
            format!("the grant of {dataset} allows {quota} rows a day and today's are spent"),
            wait,
        )
    }

    /// 404 for an object.
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(NOT_FOUND, format!("{kind} '{id}' not found"))
    }

    /// 500: logs `cause`, with the method and route of the request being
    /// handled if any, and answers a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let logged = super::observe::REQUEST.try_with(|r| {
            tracing::error!(error = %cause, method = %r.method, route = %r.route, "internal error");
        });
        if logged.is_err() {
            tracing::error!(error = %cause, "internal error");
        }
        Self::new(INTERNAL, "the server failed to handle the request; the failure has been logged")
    }

    /// The code of this error.
    pub fn code(&self) -> Code {
        self.code
    }

    /// What went wrong, as the client is told.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl From<gdx_catalog::Error> for ApiError {
    fn from(e: gdx_catalog::Error) -> Self {
        use gdx_catalog::Error as E;
        match e {
            E::Validation { errors } => Self::validation(errors),
            E::NotFound { kind, id } => Self::not_found(kind, &id),
            E::Conflict { kind, field, value } => {
                Self::new(CONFLICT, format!("a {kind} with {field} '{value}' already exists"))
            }
            e @ E::Answered { .. } => Self::new(CONFLICT, e.to_string()),
            other => Self::internal(&other),
        }
    }
}

impl From<gdx_policies::Error> for ApiError {
    fn from(e: gdx_policies::Error) -> Self {
        Self::internal(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error_count = self.error_count;
        let retry_after = self.retry_after;
        let errors = self.errors.map(|mut e| {
            e.truncate(MAX_LISTED);
            e
        });
        let body = Problem {
            problem_type: format!("urn:gdx:problem:{}", self.code.code),
            title: self.code.title,
            status: self.code.status.as_u16(),
            detail: self.detail,
            code: self.code.code,
            errors,
            error_count,
        };
        let mut resp = (self.code.status, axum::Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.code.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
