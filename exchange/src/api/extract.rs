//! Extractors that answer bad input in the API's own error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{self, ApiError};

/// Largest JSON body accepted by the JSON routes.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// A JSON body: `application/json`, at most [`MAX_JSON_BYTES`]; a syntax error
/// is `400 malformed_request`, a value of the wrong shape `422 validation_failed`
/// naming the field.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(error::UNSUPPORTED_MEDIA_TYPE, "the body must be application/json"));
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BYTES).await.map_err(|e| {
            body_error(&e).unwrap_or_else(|| {
                ApiError::new(error::PAYLOAD_TOO_LARGE, format!("JSON bodies are limited to {MAX_JSON_BYTES} bytes"))
            })
        })?;
        parse(&bytes).map(Json)
    }
}

/// The answer to a request body that stopped arriving: `408 request_timeout`
/// when it stalled past `body_timeout_secs`; `None` for other failures.
pub fn body_error(e: &axum::Error) -> Option<ApiError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return Some(ApiError::new(
                error::REQUEST_TIMEOUT,
                "the request body stopped arriving; send it without long pauses",
            ));
        }
        cause = c.source();
    }
    None
}

/// Parses JSON into `T`, naming the offending field on failure.
pub fn parse<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { "body".to_string() } else { path };
                ApiError::invalid(field, strip_position(&inner.to_string()))
            }
            _ => ApiError::new(error::MALFORMED_REQUEST, format!("the body is not valid JSON: {inner}")),
        }
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Query parameters, answering `400 malformed_request` naming the parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded_de(query);
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| ApiError::invalid(e.path().to_string(), e.into_inner().to_string()))
    }
}

fn serde_urlencoded_de(query: &str) -> serde_urlencoded::Deserializer<'_> {
    serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()))
}

/// `?limit=&page_token=` of every list.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

impl PageParams {
    /// The page request, checking the limit.
    pub fn request(&self) -> Result<gdx_catalog::PageRequest, ApiError> {
        page_request(self.limit, self.page_token.clone())
    }
}

/// A page request from `limit` and `page_token` parameters, checking the limit.
///
/// Query structs list these two fields themselves: `#[serde(flatten)]` does not
/// work with typed fields in URL-encoded input.
pub fn page_request(limit: Option<usize>, page_token: Option<String>) -> Result<gdx_catalog::PageRequest, ApiError> {
    use gdx_catalog::PageRequest;
    let limit = limit.unwrap_or(PageRequest::DEFAULT_LIMIT);
    if !(1..=PageRequest::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be between 1 and {}", PageRequest::MAX_LIMIT)));
    }
    Ok(PageRequest { limit, token: page_token })
}
