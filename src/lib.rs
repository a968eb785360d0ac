//! portstat_exporter: how full the ephemeral port range is, who holds it, and
//! what listens where, for Prometheus.
//!
//! One pipeline: `source` reads the kernel, `aggregate` computes the figures
//! by the kernel's port rules of `rules`,
//! `render` writes Prometheus text, one family module of `metrics` at a time
//! (and `page` the landing page), `serve`
//! answers scrapes with the last rendering. `sampler` runs the first three
//! on a timer and publishes its `status`; `cli`, `log`, `files` and `inspect`
//! (a report for people) sit beside them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod aggregate;
pub mod cli;
pub mod files;
pub mod inspect;
pub mod log;
pub mod metrics;
pub mod model;
pub mod page;
pub mod render;
pub mod rules;
pub mod sampler;
pub mod serve;
pub mod source;
pub mod status;
pub mod webconfig;
