//! Requests that turn a connection into a tunnel: `Upgrade` (101 Switching Protocols, e.g.
//! WebSocket) and `CONNECT` to a routed upstream. Each gets a dedicated upstream connection.

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::{ProxyOptions, origin_form, request_body};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::TunnelKind;
use crate::middleware::forwarded::{ClientSide, Forwarding};
use crate::middleware::hop_by_hop::{HTTP2_SETTINGS, UpgradeRequest};
use crate::tunnel;
use crate::upstream::Upstream;

/// Forwards an upgrade request on a fresh connection; on 101, splices client and backend.
pub async fn switch_protocols(
    upstream: &Upstream,
    mut req: Request<Incoming>,
    options: ProxyOptions,
    client: ClientSide,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upgrade = req
        .extensions_mut()
        .remove::<UpgradeRequest>()
        .expect("only called for upgrade requests");
    let client_side = hyper::upgrade::on(&mut req);
    let (mut parts, incoming) = req.into_parts();
    parts.uri = origin_form(&parts.uri);
    // Upgrades are an HTTP/1.1 mechanism (RFC 9110 §7.8), whatever the upstream usually speaks.
    parts.version = Version::HTTP_11;
    parts.headers.insert(header::UPGRADE, upgrade.protocols);
    let connection = match upgrade.http2_settings {
        Some(settings) => {
            parts.headers.insert(HTTP2_SETTINGS, settings);
            "upgrade, HTTP2-Settings"
        }
        None => "upgrade",
    };
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static(connection));
    let body = request_body(upstream, &mut parts.headers, incoming, options).await?;
    let forwarding = Forwarding::of(&parts, client);
    let resp = upstream
        .send_dedicated(Request::from_parts(parts, body), &forwarding.fields())
        .await?;
    let (mut parts, body) = resp.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        parts.version = Version::HTTP_11;
        return Ok(Response::from_parts(parts, ProxyBody::upstream(body)));
    }
    let (server, already_read) = body
        .into_upgraded()
        .expect("a 101 body keeps its connection");
    let name = upstream.name.clone();
    let idle = options.tunnel_idle_timeout;
    upstream.metrics.tunnel(TunnelKind::Upgrade);
    tokio::spawn(async move {
        let mut client = match client_side.await {
            Ok(client) => TokioIo::new(client),
            Err(e) => {
                tracing::debug!(upstream = %name, error = %e, "upgrade did not complete");
                return;
            }
        };
        // What the backend sent right after its 101 (a first frame) goes first.
        if let Err(e) = client.write_all(&already_read).await {
            tracing::debug!(upstream = %name, error = %e, "upgrade did not complete");
            return;
        }
        let end = tunnel::splice(TunnelKind::Upgrade, idle, client, server).await;
        tracing::debug!(upstream = %name, ?end, "upgrade tunnel closed");
    });
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// `CONNECT host:port` where a route names the host: a TCP tunnel to that route's upstream.
pub async fn connect(
    upstream: &Upstream,
    mut req: Request<Incoming>,
    options: ProxyOptions,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_side = hyper::upgrade::on(&mut req);
    let server = upstream.connect_raw().await?;
    let name = upstream.name.clone();
    let idle = options.tunnel_idle_timeout;
    upstream.metrics.tunnel(TunnelKind::Connect);
    tokio::spawn(async move {
        match client_side.await {
            Ok(client) => {
                let client = TokioIo::new(client);
                let end = tunnel::splice(TunnelKind::Connect, idle, client, server).await;
                tracing::debug!(upstream = %name, ?end, "CONNECT tunnel closed");
            }
            Err(e) => tracing::debug!(upstream = %name, error = %e, "CONNECT did not complete"),
        }
    });
    Ok(Response::new(ProxyBody::empty()))
}
