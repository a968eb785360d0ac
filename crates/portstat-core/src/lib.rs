//! portstat-core: the pure stages of portstat_exporter. Sockets stream in,
//! a `Snapshot` of each network namespace comes out (`aggregate`, by the
//! kernel's port rules of `rules`), and is written as Prometheus text
//! (`render`, one family module of `metrics` at a time, encoded by
//! `exposition`), as a landing page (`page`) or as a report for people
//! (`inspect`). `parse` reads what the kernel writes in procfs.
//!
//! Nothing here reads the kernel, opens a socket or needs a privilege: the
//! binary crate does that, and feeds what it read through these stages.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod aggregate;
pub mod cadence;
pub mod exposition;
pub mod inspect;
pub mod linux;
pub mod metrics;
pub mod model;
pub mod page;
pub mod parse;
pub mod render;
pub mod rules;
pub mod status;
pub mod text;
