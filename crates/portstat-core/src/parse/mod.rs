//! Parsers of what the kernel writes, each pure: text in, values or a
//! reason out. The binary's `source` reads the files and calls them.

pub mod census;
pub mod procfs;
pub mod sysctl;
