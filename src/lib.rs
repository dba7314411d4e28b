//! longhaul: a proxy that turns short client connections into long-lived pooled upstream ones.
//! The binary is a thin shell over this library, so tests and benches drive the same code.

// One function may use unsafe: adopting the descriptors systemd passes (activation.rs).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod activation;
pub mod admin;
pub mod allocator;
pub mod app;
pub mod body;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod h1;
pub mod loadgen;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod output;
pub mod pid_file;
pub mod proxy;
pub mod route;
pub mod server;
pub mod sim;
pub mod systemd;
pub mod tls;
pub mod transparent;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod workers;

#[cfg(test)]
mod test_util;
