//! The failures a proxied request can meet, and the one place (`rescue`) that turns each into
//! the response a client sees: status, short body naming upstream and cause, and the metric kind.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;
use crate::metrics::{ErrorKind, RequestSeries};
use crate::middleware::upstreamed::{ResponseFacts, Upstreamed};

/// Any error a tower layer may return; classified by `rescue`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request that failed once routed: the cause, and the upstream's request series, so the
/// failure is counted and labelled with the upstream like any answer from it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct UpstreamFailure {
    pub error: ProxyError,
    pub series: Arc<RequestSeries>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("host `{0}` is not served here: longhaul is not an open proxy")]
    ForeignHost(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body larger than {limit} bytes cannot be buffered for an HTTP/1.0 backend")]
    BodyTooLarge { limit: usize },
    #[error("request body stalled for longer than {0:?}")]
    BodyTimeout(Duration),
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    #[error("upstream {upstream}: no free connection within {waited:?} (pool exhausted)")]
    PoolTimeout { upstream: String, waited: Duration },
    #[error(
        "upstream {upstream} ({server}): {waiting} requests already wait for a connection (max_waiters)"
    )]
    PoolFull {
        upstream: String,
        server: String,
        waiting: usize,
    },
    #[error("upstream {upstream}: every server is ejected or unreachable")]
    NoHealthyServer { upstream: String },
    #[error("upstream {upstream} ({server}): connect failed: {cause}")]
    Connect {
        upstream: String,
        server: String,
        cause: String,
    },
    #[error("upstream {upstream} ({server}): connect timed out after {after:?}")]
    ConnectTimeout {
        upstream: String,
        server: String,
        after: Duration,
    },
    #[error("upstream {upstream} ({server}): no response head within {after:?}")]
    ResponseTimeout {
        upstream: String,
        server: String,
        after: Duration,
    },
    #[error(
        "upstream {upstream} ({server}): connection closed or reset before a response: {cause}"
    )]
    Reset {
        upstream: String,
        server: String,
        cause: String,
    },
    #[error("upstream {upstream} ({server}): invalid response: {cause}")]
    Protocol {
        upstream: String,
        server: String,
        cause: String,
    },
    #[error("more than {limit} destinations are pooled and none is idle")]
    TooManyDestinations { limit: usize },
}

impl ProxyError {
    /// The status a client gets for this failure.
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            NoRoute => StatusCode::NOT_FOUND,
            ForeignHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ClientBody(_) => StatusCode::BAD_REQUEST,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            PoolTimeout { .. } | PoolFull { .. } | TooManyDestinations { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            NoHealthyServer { .. } | Connect { .. } | Reset { .. } | Protocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ConnectTimeout { .. } => StatusCode::BAD_GATEWAY,
            ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `kind` label of `longhaul_upstream_errors_total`, for upstream-side failures.
    pub fn upstream_kind(&self) -> Option<ErrorKind> {
        use ProxyError::*;
        match self {
            PoolTimeout { .. } => Some(ErrorKind::PoolTimeout),
            PoolFull { .. } => Some(ErrorKind::PoolFull),
            NoHealthyServer { .. } | Connect { .. } => Some(ErrorKind::Connect),
            ConnectTimeout { .. } | ResponseTimeout { .. } => Some(ErrorKind::Timeout),
            Reset { .. } => Some(ErrorKind::Reset),
            Protocol { .. } => Some(ErrorKind::Protocol),
            _ => None,
        }
    }

    /// A 503 for a full pool says when to come back: a pooled connection frees up soon.
    fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            ProxyError::PoolTimeout { .. } | ProxyError::PoolFull { .. } => {
                Some(HeaderValue::from_static("1"))
            }
            _ => None,
        }
    }
}

/// The tower load-shed and timeout errors, and our own, as one client response.
pub fn rescue(err: &BoxError, request_id: &HeaderValue) -> Response<ProxyBody> {
    if let Some(failed) = err.downcast_ref::<UpstreamFailure>() {
        tracing::warn!(upstream = %failed.series.upstream, error = %failed.error,
            request_id = request_id.to_str().unwrap_or("-"), "request failed");
        let mut resp = failure_response(&failed.error, request_id);
        let (series, facts) = (failed.series.clone(), ResponseFacts::default());
        resp.body_mut().set_upstreamed(Upstreamed { series, facts });
        return resp;
    }
    if let Some(e) = err.downcast_ref::<ProxyError>() {
        return failure_response(e, request_id);
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        let mut resp = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "longhaul is at its concurrent request limit (load shed)",
            request_id,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    if err.is::<tower::timeout::error::Elapsed>() {
        return error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout elapsed before a response head",
            request_id,
        );
    }
    tracing::warn!(error = %err, "unclassified proxy error");
    error_response(StatusCode::BAD_GATEWAY, &err.to_string(), request_id)
}

/// The response for a `ProxyError`: its status, its text, and `Retry-After` where it helps.
pub fn failure_response(e: &ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut resp = error_response(e.status(), &e.to_string(), request_id);
    if let Some(after) = e.retry_after() {
        resp.headers_mut().insert(header::RETRY_AFTER, after);
    }
    resp
}

/// A short text/plain error: status line, cause, request id. Always closes nothing by itself.
pub fn error_response(
    status: StatusCode,
    cause: &str,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let id = request_id.to_str().unwrap_or("-");
    let body = format!(
        "{} {}\n{cause}\nrequest-id: {id}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        crate::middleware::request_id::X_REQUEST_ID,
        request_id.clone(),
    );
    resp
}
