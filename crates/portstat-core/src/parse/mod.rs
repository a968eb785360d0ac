//! Parsers of what the kernel writes, each pure: text or bytes in, values
//! or a reason out; and the requests the binary sends, built into bytes.
//! The binary's `source` reads the files and the netlink sockets, and calls
//! them.

pub mod bpf;
pub mod census;
pub mod conntrack;
pub mod netlink;
pub mod procfs;
pub mod sysctl;
