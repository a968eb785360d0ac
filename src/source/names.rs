//! Who closed the connections no process holds: the names each
//! namespace's read (`read::Reading::names`) takes as it starts, from the
//! kernel's map or from a running exporter's.

use std::collections::HashMap;

use portstat_core::model::{ConnectionNamer, ConnectionNames};

use super::bpf;

/// Who closed the connections that no process holds, by namespace: each
/// namespace's read takes the namer of its namespace as it starts.
pub trait NameSource: Send {
    /// The namer of namespace `netns`, whose cookie is `cookie` where
    /// known; `None` where nothing names its connections.
    fn namer(&mut self, netns: u64, cookie: Option<u64>) -> Option<Box<dyn ConnectionNamer>>;
}

/// Names read whole, by namespace (`inspect`, from a running exporter).
impl NameSource for HashMap<u64, ConnectionNames> {
    fn namer(&mut self, netns: u64, _cookie: Option<u64>) -> Option<Box<dyn ConnectionNamer>> {
        self.remove(&netns)
            .map(|names| Box::new(names) as Box<dyn ConnectionNamer>)
    }
}

/// The kernel's map of names, asked one connection at a time.
impl NameSource for bpf::failures::Names {
    fn namer(&mut self, netns: u64, cookie: Option<u64>) -> Option<Box<dyn ConnectionNamer>> {
        bpf::failures::Names::namer(self, netns, cookie)
    }
}
