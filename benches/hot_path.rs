//! Micro-benchmarks of longhaul's per-request hot path, so regressions show without the full
//! bench/ harness: header rewriting, route matching, config parsing, and one request through a
//! running proxy (pool checkout + forward) against the in-process simulated backend.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a fast pass, or a filter such as
//! `-- proxy/`). Numbers on a shared 2-core machine are noisy; compare runs on the same machine.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use longhaul::app::App;
use longhaul::config::{Config, RouteConfig};
use longhaul::middleware::{forwarded, hop_by_hop};
use longhaul::route::Router;
use longhaul::sim::{Sim, SimConfig};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// A request head as a legacy HTTP/1.0 client plus an intermediate would send it.
fn client_request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("app.example.com"));
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("legacy-client/4.2 (+bench)"),
    );
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/html, application/json;q=0.9, */*;q=0.1"),
    );
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, deflate"),
    );
    h.insert(
        header::ACCEPT_LANGUAGE,
        HeaderValue::from_static("en-GB,en;q=0.8"),
    );
    h.insert(
        header::COOKIE,
        HeaderValue::from_static("session=0123456789abcdef; theme=dark"),
    );
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-trace-hop"),
    );
    h.insert(
        HeaderName::from_static("keep-alive"),
        HeaderValue::from_static("timeout=5"),
    );
    h.insert(
        HeaderName::from_static("x-trace-hop"),
        HeaderValue::from_static("abc"),
    );
    h.insert(
        HeaderName::from_static("proxy-connection"),
        HeaderValue::from_static("keep-alive"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
    h.insert(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("bench-0001"),
    );
    h
}

/// A backend response head (the simulated backend's, plus a few common extras).
fn backend_response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1024"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert(
        HeaderName::from_static("keep-alive"),
        HeaderValue::from_static("timeout=5, max=100"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::DATE,
        HeaderValue::from_static("Sat, 22 Nov 2025 04:22:00 GMT"),
    );
    h.insert(header::SERVER, HeaderValue::from_static("legacy/1.0"));
    h
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let req = client_request_headers();
    g.bench_function("hop_by_hop_strip_request", |b| {
        b.iter_batched_ref(
            || req.clone(),
            |h| hop_by_hop::strip(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    let resp = backend_response_headers();
    g.bench_function("hop_by_hop_strip_response", |b| {
        b.iter_batched_ref(
            || resp.clone(),
            |h| hop_by_hop::strip(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    let mut plain = client_request_headers();
    hop_by_hop::strip(&mut plain);
    g.bench_function("hop_by_hop_strip_nothing_to_do", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |h| hop_by_hop::strip(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    let client: SocketAddr = "192.0.2.7:40000".parse().expect("literal");
    g.bench_function("forwarded_and_strip_request", |b| {
        b.iter_batched(
            || {
                let mut r = Request::new(());
                *r.version_mut() = Version::HTTP_10;
                *r.headers_mut() = req.clone();
                r
            },
            |r| {
                let (parts, ()) = hop_by_hop::strip_request(black_box(r)).into_parts();
                let side = forwarded::ClientSide {
                    addr: Some(client),
                    tls: false,
                };
                let forwarding = forwarded::Forwarding::of(&parts, side);
                black_box(forwarding.fields().len());
                parts
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn routes() -> (Vec<RouteConfig>, Vec<&'static str>) {
    let upstreams = vec!["legacy", "api", "static", "admin", "catchall"];
    let r = |host: &str, path: &str, up: &str| RouteConfig {
        host: host.into(),
        path_prefix: path.into(),
        upstream: up.into(),
    };
    let mut routes = vec![
        r("*", "/", "catchall"),
        r("app.example.com", "/", "legacy"),
        r("app.example.com", "/api/", "api"),
        r("app.example.com", "/api/v2/", "api"),
        r("*.static.example.com", "/", "static"),
        r("admin.example.com", "/", "admin"),
    ];
    // Plus a realistic tail of per-tenant hosts the lookup has to skip past.
    for i in 0..40 {
        routes.push(r(&format!("tenant{i}.example.net"), "/", "legacy"));
        routes.push(r(&format!("tenant{i}.example.net"), "/api/", "api"));
    }
    (routes, upstreams)
}

fn routing(c: &mut Criterion) {
    let (routes, upstreams) = routes();
    let index = |name: &str| upstreams.iter().position(|u| *u == name);
    let router = Router::new(&routes, index);
    let mut g = c.benchmark_group("route");
    let cases: [(&str, Option<&str>, &str); 5] = [
        (
            "exact_host_long_prefix",
            Some("app.example.com"),
            "/api/v2/orders/1234?x=1",
        ),
        (
            "exact_host_with_port_mixed_case",
            Some("App.Example.COM:8080"),
            "/index.html",
        ),
        (
            "wildcard_suffix",
            Some("img.static.example.com"),
            "/logo.png",
        ),
        ("fallback_any_host", Some("unknown.example.org"), "/"),
        ("no_host_header", None, "/legacy/cgi-bin/report.pl"),
    ];
    for (name, host, path) in cases {
        assert!(
            router.lookup(host, path).is_some(),
            "{name} must match a route"
        );
        g.bench_function(name, |b| {
            b.iter(|| router.lookup(black_box(host), black_box(path)))
        });
    }
    g.bench_function("build_table_86_routes", |b| {
        b.iter(|| Router::new(black_box(&routes), index))
    });
    g.finish();
}

fn config(c: &mut Criterion) {
    let source = include_str!("../proxy.toml");
    let path = Path::new("proxy.toml");
    Config::parse(source, path).expect("the shipped proxy.toml parses");
    c.bench_function("config/parse_shipped_proxy_toml", |b| {
        b.iter(|| Config::parse(black_box(source), path).expect("valid"))
    });
}

/// An in-process backend and proxy, kept alive for the proxy benchmarks.
struct Rig {
    _sim: Sim,
    app: App,
    proxy: SocketAddr,
}

async fn start_rig() -> Rig {
    let sim = Sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        conn_cost: Duration::ZERO,
        keepalive_timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .expect("simulated backend starts");
    let mut config = Config::embedded_default();
    config.server.listen = vec!["127.0.0.1:0".into()];
    config.admin.listen = "127.0.0.1:0".into();
    config.log.access_log = false;
    config.upstream[0].servers = vec![sim.addr.to_string()];
    let app = App::start(config, None).await.expect("proxy starts");
    let proxy = app.listen[0];
    Rig {
        _sim: sim,
        app,
        proxy,
    }
}

async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

fn request(version: Version, keepalive: bool) -> Request<Empty<Bytes>> {
    let mut req = Request::get("/bench")
        .version(version)
        .header(header::HOST, "bench.local")
        .body(Empty::new())
        .expect("request");
    if keepalive {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    req
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, req: Request<Empty<Bytes>>) -> usize {
    sender.ready().await.expect("connection ready");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200, "proxy answered {}", resp.status());
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

fn proxy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rig = rt.block_on(start_rig());
    let mut g = c.benchmark_group("proxy");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    // A keep-alive client: every iteration is routing + pool checkout + forward + pool return.
    let mut sender = rt.block_on(connect(rig.proxy));
    // Warm the pool so the measurement is of reuse, not of opening connections.
    for _ in 0..100 {
        rt.block_on(send(&mut sender, request(Version::HTTP_11, false)));
    }
    g.bench_function("keepalive_client_pooled_request", |b| {
        b.iter(|| rt.block_on(send(&mut sender, request(Version::HTTP_11, false))))
    });

    // The case longhaul exists for: a fresh HTTP/1.0 client connection per request.
    g.bench_function("short_http10_client_pooled_request", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = connect(rig.proxy).await;
                send(&mut s, request(Version::HTTP_10, false)).await
            })
        })
    });
    g.finish();
    drop(sender);
    check_reuse(&rt, &rig);
    drop(rig);
}

/// The proxy benchmarks mean nothing if the pool is not reused: say so loudly if it is not.
fn check_reuse(rt: &Runtime, rig: &Rig) {
    let admin = rig.app.admin;
    let body = rt.block_on(async {
        let stream = TcpStream::connect(admin).await.ok()?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let req = Request::get("/pools")
            .header(header::HOST, "admin")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(bytes.to_vec()).ok()
    });
    match body.and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()) {
        Some(v) => {
            let s = &v["upstreams"][0]["servers"][0];
            eprintln!(
                "pool after proxy benches: opened={} requests={} reuse_ratio={}",
                s["opened"], s["requests"], s["reuse_ratio"]
            );
        }
        None => eprintln!("pool after proxy benches: /pools unavailable"),
    }
}

criterion_group!(benches, headers, routing, config, proxy);
criterion_main!(benches);
