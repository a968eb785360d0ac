//! Who closed the connections no process holds: the names a reader hands
//! each namespace's read as it starts, from the kernel's map or from a
//! running exporter's.

use std::collections::HashMap;

use portstat_core::model::{ConnectionNamer, ConnectionNames};

use super::{NamespaceReader, bpf, namespaces};

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

impl NamespaceReader {
    /// Names the sockets no process holds after the process that closed
    /// them, by namespace, in the namespaces read from now on.
    pub fn set_connection_names(&mut self, names: Box<dyn NameSource>) {
        self.connection_names = Some(names);
    }

    /// Who closed the connections of the namespace the calling thread is
    /// in; `None` where nothing names them or its inode cannot be read.
    pub fn take_connection_names(&mut self) -> Option<Box<dyn ConnectionNamer>> {
        let source = self.connection_names.as_mut()?;
        let inode = namespaces::thread_namespace_inode(&self.procfs_root)?;
        source.namer(inode, namespaces::thread_namespace_cookie().ok())
    }

    /// Names no sockets from now on (the end of a sample).
    pub fn clear_connection_names(&mut self) {
        self.connection_names = None;
    }
}
