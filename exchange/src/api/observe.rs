//! The outermost layer of every request: metrics per route template, and the
//! request's method and route for the log lines written while handling it.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The request being handled, for log lines written while handling it
/// ([`super::error::ApiError::internal`]).
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The HTTP method.
    pub method: axum::http::Method,
    /// The route template (never the concrete path, which may carry keys).
    pub route: std::sync::Arc<str>,
}

tokio::task_local! {
    /// Set by [`observe`] around the handling of each request.
    pub static REQUEST: RequestContext;
}

/// Counts requests and their latency per route template and status, and
/// logs every answer of the 5xx class with its method and route.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".into(), |m| m.as_str().into());
    let context = RequestContext { method: request.method().clone(), route };
    let response = REQUEST.scope(context.clone(), next.run(request)).await;
    let RequestContext { method, route } = context;
    let code = response.status();
    let status = code.as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    if code.is_server_error() {
        tracing::warn!(%method, %route, status = %status, elapsed_ms = elapsed * 1000.0, "request failed");
    } else {
        tracing::debug!(%method, %route, status = %status, elapsed_ms = elapsed * 1000.0, "request done");
    }
    let method = method.to_string();
    metrics::counter!("gdx_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("gdx_http_request_duration_seconds", "route" => route, "method" => method).record(elapsed);
    response.into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::middleware;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::api::error::ApiError;

    /// What the test's subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[tokio::test]
    async fn a_failed_request_is_logged_with_its_route_and_never_its_path() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let app: Router = Router::new()
            .route("/things/{key}", get(|| async { ApiError::internal(&"the disk is gone") }))
            .route("/fine/{key}", get(|| async { "fine" }))
            .layer(middleware::from_fn(observe));
        let get_path = |path: &str| Request::builder().uri(path).body(Body::empty()).unwrap();
        let failed = app.clone().oneshot(get_path("/things/440102199001011234")).await.unwrap();
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let fine = app.oneshot(get_path("/fine/440102199001015678")).await.unwrap();
        assert_eq!(fine.status(), StatusCode::OK);

        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        let internal: Vec<&&str> = lines.iter().filter(|l| l.contains("internal error")).collect();
        assert_eq!(internal.len(), 1, "{text}");
        for needle in ["ERROR", "the disk is gone", "method=GET", "route=/things/{key}"] {
            assert!(internal[0].contains(needle), "{needle} missing: {text}");
        }
        let failed: Vec<&&str> = lines.iter().filter(|l| l.contains("request failed")).collect();
        assert_eq!(failed.len(), 1, "{text}");
        for needle in ["WARN", "method=GET", "route=/things/{key}", "status=500"] {
            assert!(failed[0].contains(needle), "{needle} missing: {text}");
        }
        // A request that succeeds writes nothing at the default level, and
        // the keys in the paths appear nowhere.
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!text.contains("440102"), "{text}");

        // Outside a request the cause is logged alone.
        let _ = ApiError::internal(&"no request here");
        let text = captured.text();
        let outside = text.lines().find(|l| l.contains("no request here")).unwrap();
        assert!(outside.contains("internal error") && !outside.contains("route="), "{text}");
    }
}
