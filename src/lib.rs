//! portstat_exporter: how full the ephemeral port range is, who holds it, and
//! what listens where, for Prometheus.
//!
//! One pipeline: `source` reads the kernel; `portstat_core` (the crate of
//! the pure stages) computes the figures (`aggregate`) and writes them as
//! Prometheus text (`render`); `serve` answers scrapes with the last
//! rendering. `sampler` runs them on a timer; `render` here adds the
//! exporter's own `process_*` families. `cli`, `log`, `files` and
//! `webconfig` sit beside them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod collector;
pub mod files;
pub mod log;
pub mod plan;
pub mod render;
pub mod sampler;
pub mod scrapes;
pub mod serve;
pub mod source;
pub mod webconfig;
