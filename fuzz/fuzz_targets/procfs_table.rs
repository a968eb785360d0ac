//! `/proc/net/{tcp,udp}` text, and the cgroup lines namespaces are named by.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut sockets = Vec::new();
    let _ = portstat_exporter::source::procfs::parse_table_text(true, &text, &mut sockets);
    let _ = portstat_exporter::source::procfs::parse_table_text(false, &text, &mut sockets);
    let _ = portstat_exporter::source::namespaces::parse_cgroup(&text);
});
