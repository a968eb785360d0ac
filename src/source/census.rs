//! Reads a namespace's socket counts (`/proc/net/sockstat`, `sockstat6`
//! and `protocols`); `portstat_core::parse::census` says what they mean
//! and parses them.

use std::path::Path;

pub use portstat_core::parse::census::Census;
use portstat_core::parse::census::{field, parse};

/// Reads the counts from the folder `net` (`/proc/net`, or
/// `/proc/thread-self/net` for the thread's namespace). `None` when they
/// cannot be read or parsed: then nothing is skipped.
pub fn read(net: &Path) -> Option<Census> {
    let sockstat = super::read_small_file(&net.join("sockstat")).ok()?;
    // Without IPv6 there is no sockstat6: no IPv6 sockets.
    let sockstat6 = super::read_small_file(&net.join("sockstat6")).unwrap_or_default();
    // With no user socket at all, none can be outside the tables: the
    // longest of the three files, which the kernel formats line by line,
    // is not needed.
    let protocols = if field(&sockstat, "sockets:", "used")? == 0 {
        None
    } else {
        Some(super::read_small_file(&net.join("protocols")).ok()?)
    };
    parse(&sockstat, &sockstat6, protocols.as_deref())
}
