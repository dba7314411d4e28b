//! `longhaul demo`: a simulated legacy backend (plain, or TLS with `--tls`) that pays for every new
//! connection, the same short HTTP/1.0 load sent straight to it and then through longhaul, and a table.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::config::{CertificateConfig, Config, ServerTlsConfig, UpstreamTlsConfig};
use crate::loadgen::{self, LoadReport, Target};
use crate::output;
use crate::sim::{Sim, SimConfig, SimIdentity};

/// What `longhaul demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub requests: usize,
    pub concurrency: usize,
    pub conn_cost: Duration,
    /// The backend speaks TLS: direct clients handshake per request; longhaul pools TLS to it.
    pub tls: bool,
}

/// One row of the comparison.
struct Row {
    label: &'static str,
    report: LoadReport,
    backend_connections: u64,
    backend_handshakes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the simulated backend: {0}")]
    Backend(std::io::Error),
    #[error("cannot start longhaul: {0}")]
    Proxy(#[from] crate::app::AppError),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("{label}: {errors} of {requests} requests failed (first: {first})")]
    Requests {
        label: &'static str,
        errors: usize,
        requests: usize,
        first: String,
    },
}

pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    let sim = Sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        conn_cost: options.conn_cost,
        tls: options.tls,
        ..SimConfig::default()
    })
    .await
    .map_err(DemoError::Backend)?;
    let kind = if options.tls {
        "HTTPS-only"
    } else {
        "HTTP/1.0"
    };
    output::stdout(format_args!(
        "Simulated legacy {kind} backend on {} (each new connection costs {:?}).\n",
        sim.addr, options.conn_cost
    ));
    let (direct_target, direct_label, through_label) = match &sim.tls_ca_pem {
        Some(ca) => {
            output::stdout(format_args!(
                "Direct: short HTTPS clients, a full TLS handshake per request. Through longhaul: the same\n\
                 clients, HTTPS to longhaul's TLS listener (a full handshake each there), longhaul keeping\n\
                 pooled TLS connections to the backend.\n"
            ));
            let target =
                Target::tls(sim.addr, ca, crate::sim::SIM_TLS_NAMES[0]).map_err(DemoError::Tls)?;
            (target, "direct (HTTPS)", "through longhaul (HTTPS)")
        }
        None => (
            Target::plain(sim.addr),
            "direct to the backend",
            "through longhaul",
        ),
    };
    output::stdout(format_args!(
        "Sending {} short HTTP/1.0 requests, {} at a time, each on its own client connection.\n\n",
        options.requests, options.concurrency
    ));

    let direct = measure(direct_label, &sim, direct_target, Seen::now(&sim), &options).await?;
    // longhaul's TLS listener presents the backend's identity (a certificate for localhost).
    let files = match &sim.tls_identity {
        Some(identity) => {
            Some(ListenerFiles::write(identity).map_err(|e| DemoError::Tls(e.to_string()))?)
        }
        None => None,
    };
    let config = demo_config(sim.addr, sim.tls_ca_pem.as_deref(), files.as_ref())?;
    // Counted from before longhaul starts: its warm connections are part of its cost.
    let seen = Seen::now(&sim);
    let app = App::start(config, None).await?;
    let proxy = match &sim.tls_ca_pem {
        Some(ca) => Target::tls(app.tls_listen[0], ca, crate::sim::SIM_TLS_NAMES[0])
            .map_err(DemoError::Tls)?,
        None => Target::plain(app.listen[0]),
    };
    let through = measure(through_label, &sim, proxy, seen, &options).await;
    app.shutdown().await;
    drop(files);
    let through = through?;

    output::stdout(table(&[direct, through], options.tls));
    Ok(())
}

/// The certificate and key of longhaul's TLS listener in the demo, in a temp directory removed on drop.
struct ListenerFiles {
    dir: std::path::PathBuf,
}

impl ListenerFiles {
    fn write(identity: &SimIdentity) -> std::io::Result<ListenerFiles> {
        let dir = std::env::temp_dir().join(format!("longhaul-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let files = ListenerFiles { dir };
        std::fs::write(files.cert(), &identity.chain_pem)?;
        std::fs::write(files.key(), &identity.key_pem)?;
        Ok(files)
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.join("listener.pem")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.join("listener.key")
    }
}

impl Drop for ListenerFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped defaults, pointed at the simulated backend, on ports the OS picks; with `ca_pem`,
/// TLS to the backend trusting that CA; with `listener`, a TLS listener presenting those files.
fn demo_config(
    backend: SocketAddr,
    ca_pem: Option<&str>,
    listener: Option<&ListenerFiles>,
) -> Result<Config, DemoError> {
    let mut config = Config::embedded_default();
    config.server.listen = vec!["127.0.0.1:0".into()];
    if let Some(files) = listener {
        config.server.tls_listen = vec!["127.0.0.1:0".into()];
        config.server.tls = Some(ServerTlsConfig {
            certificates: vec![CertificateConfig {
                cert: files.cert(),
                key: files.key(),
            }],
            ..ServerTlsConfig::default()
        });
    }
    config.admin.listen = "127.0.0.1:0".into();
    config.log.access_log = false;
    config.upstream[0].servers = vec![backend.to_string()];
    if let Some(pem) = ca_pem {
        config.upstream[0].tls = Some(demo_tls(pem)?);
    }
    Ok(config)
}

/// `[upstream.tls]` trusting the simulated backend's CA (written to a temp file for the load).
fn demo_tls(ca_pem: &str) -> Result<UpstreamTlsConfig, DemoError> {
    let ca = std::env::temp_dir().join(format!("longhaul-demo-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, ca_pem).map_err(|e| DemoError::Tls(e.to_string()))?;
    let mut tls = UpstreamTlsConfig {
        server_name: Some(crate::sim::SIM_TLS_NAMES[0].to_string()),
        ca: Some(ca.clone()),
        verify: true,
        cert: None,
        key: None,
        loaded: None,
    };
    let loaded = crate::upstream::UpstreamTls::load(&tls, std::path::Path::new(""));
    let _ = std::fs::remove_file(&ca);
    tls.loaded = Some(loaded.map_err(|e| DemoError::Tls(e.to_string()))?);
    Ok(tls)
}

/// What the backend had seen before a run.
#[derive(Clone, Copy)]
struct Seen {
    connections: u64,
    handshakes: u64,
}

impl Seen {
    fn now(sim: &Sim) -> Seen {
        Seen {
            connections: sim.stats.connections(),
            handshakes: sim.stats.tls_handshakes(),
        }
    }
}

async fn measure(
    label: &'static str,
    sim: &Sim,
    target: Target,
    before: Seen,
    options: &DemoOptions,
) -> Result<Row, DemoError> {
    let bar = ProgressBar::new(options.requests as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<24} [{bar:40}] {pos}/{len} {per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label);
    let tick = bar.clone();
    let report = loadgen::run(target, options.requests, options.concurrency, move || {
        tick.inc(1)
    })
    .await;
    bar.finish();
    let backend_connections = sim.stats.connections() - before.connections;
    let backend_handshakes = sim.stats.tls_handshakes() - before.handshakes;
    if report.errors > 0 {
        return Err(DemoError::Requests {
            label,
            errors: report.errors,
            requests: report.requests,
            first: report.first_error.clone().unwrap_or_default(),
        });
    }
    Ok(Row {
        label,
        report,
        backend_connections,
        backend_handshakes,
    })
}

/// The side-by-side comparison, ready to print; with `tls`, the backend's TLS handshakes too.
fn table(rows: &[Row], tls: bool) -> String {
    let mut out = String::from("\n");
    let handshakes = |h: &dyn std::fmt::Display| match tls {
        true => format!(" {h:>14}"),
        false => String::new(),
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{:<24} {:>9}{} {:>14}{} {:>10} {:>11} {:>9} {:>9}",
        "",
        "requests",
        handshakes(&"client TLS hs"),
        "backend conns",
        handshakes(&"backend TLS hs"),
        "reuse",
        "req/s",
        "p50 ms",
        "p99 ms"
    );
    for row in rows {
        let r = &row.report;
        let reuse = 1.0 - row.backend_connections as f64 / r.requests.max(1) as f64;
        let _ = writeln!(
            out,
            "{:<24} {:>9}{} {:>14}{} {:>9.1}% {:>11.0} {:>9.2} {:>9.2}",
            row.label,
            r.requests,
            handshakes(&r.tls_handshakes),
            row.backend_connections,
            handshakes(&row.backend_handshakes),
            reuse.max(0.0) * 100.0,
            r.requests_per_second(),
            r.percentile(0.50).as_secs_f64() * 1000.0,
            r.percentile(0.99).as_secs_f64() * 1000.0,
        );
    }
    if let [direct, through] = rows {
        let speedup = through.report.requests_per_second() / direct.report.requests_per_second();
        let _ = writeln!(
            out,
            "\nlonghaul served the same requests {speedup:.1}x as fast, and the backend accepted {} connections instead of {}.",
            through.backend_connections, direct.backend_connections
        );
        if tls {
            let _ = writeln!(
                out,
                "The backend made {} TLS handshakes instead of {}.",
                through.backend_handshakes, direct.backend_handshakes
            );
        }
    }
    out
}
