//! Active health checks: when `[upstream.health] path` is set, each server gets a GET on a fresh
//! connection every `interval`; a pass brings an ejected server back, failures eject it.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::conn;
use super::server::{Failure, Server};

/// Probes `server` forever; the caller aborts the task when the server goes away.
pub async fn run(server: Arc<Server>, path: String) {
    let h = server.settings.health.clone();
    let mut ticker = tokio::time::interval(h.interval);
    loop {
        ticker.tick().await;
        match tokio::time::timeout(h.timeout, probe(&server, &path)).await {
            Ok(Ok(status)) if status == h.expected_status => server.record_success(),
            Ok(Ok(status)) => fail(
                &server,
                &format!("status {status}, expected {}", h.expected_status),
            ),
            Ok(Err(e)) => fail(&server, &e),
            Err(_) => fail(&server, &format!("no answer within {:?}", h.timeout)),
        }
    }
}

fn fail(server: &Server, why: &str) {
    tracing::debug!(upstream = %server.upstream, server = %server.address, why, "health check failed");
    server.record_failure(Failure::Unreachable);
}

/// One GET on its own connection; the status code it got.
async fn probe(server: &Server, path: &str) -> Result<u16, String> {
    let stream = conn::connect(server).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let req = Request::builder()
        .uri(path)
        .version(Version::HTTP_11)
        .header(header::HOST, server.address.as_str())
        .header(header::CONNECTION, "close")
        .header(header::USER_AGENT, "longhaul-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}
