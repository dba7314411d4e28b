//! `longhaul demo`: a simulated legacy backend that pays for every new connection, the same short
//! HTTP/1.0 load sent straight to it and then through longhaul, and a side-by-side table.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::config::Config;
use crate::loadgen::{self, LoadReport};
use crate::output;
use crate::sim::{Sim, SimConfig};

/// What `longhaul demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub requests: usize,
    pub concurrency: usize,
    pub conn_cost: Duration,
}

/// One row of the comparison.
struct Row {
    label: &'static str,
    report: LoadReport,
    backend_connections: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the simulated backend: {0}")]
    Backend(std::io::Error),
    #[error("cannot start longhaul: {0}")]
    Proxy(#[from] crate::app::AppError),
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
        ..SimConfig::default()
    })
    .await
    .map_err(DemoError::Backend)?;
    output::stdout(format_args!(
        "Simulated legacy HTTP/1.0 backend on {} (each new connection costs {:?}).\n",
        sim.addr, options.conn_cost
    ));
    output::stdout(format_args!(
        "Sending {} short HTTP/1.0 requests, {} at a time, each on its own client connection.\n\n",
        options.requests, options.concurrency
    ));

    let direct = measure("direct to the backend", &sim, sim.addr, &options).await?;
    let app = App::start(demo_config(sim.addr), None).await?;
    let proxy_addr = app.listen[0];
    let through = measure("through longhaul", &sim, proxy_addr, &options).await?;
    app.shutdown().await;

    output::stdout(table(&[direct, through]));
    Ok(())
}

/// The shipped defaults, pointed at the simulated backend, on ports the OS picks.
fn demo_config(backend: SocketAddr) -> Config {
    let mut config = Config::embedded_default();
    config.server.listen = vec!["127.0.0.1:0".into()];
    config.admin.listen = "127.0.0.1:0".into();
    config.log.access_log = false;
    config.upstream[0].servers = vec![backend.to_string()];
    config
}

async fn measure(
    label: &'static str,
    sim: &Sim,
    target: SocketAddr,
    options: &DemoOptions,
) -> Result<Row, DemoError> {
    let bar = ProgressBar::new(options.requests as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<24} [{bar:40}] {pos}/{len} {per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label);
    let before = sim.stats.connections();
    let tick = bar.clone();
    let report = loadgen::run(target, options.requests, options.concurrency, move || {
        tick.inc(1)
    })
    .await;
    bar.finish();
    let backend_connections = sim.stats.connections() - before;
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
    })
}

/// The side-by-side comparison, ready to print.
fn table(rows: &[Row]) -> String {
    let mut out = String::from("\n");
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>14} {:>10} {:>11} {:>9} {:>9}",
        "", "requests", "backend conns", "reuse", "req/s", "p50 ms", "p99 ms"
    );
    for row in rows {
        let r = &row.report;
        let reuse = 1.0 - row.backend_connections as f64 / r.requests.max(1) as f64;
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>14} {:>9.1}% {:>11.0} {:>9.2} {:>9.2}",
            row.label,
            r.requests,
            row.backend_connections,
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
    }
    out
}
