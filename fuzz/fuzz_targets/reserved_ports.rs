//! `ip_local_reserved_ports` and `ip_local_port_range`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = portstat_exporter::source::sysctl::parse_reserved_ports(&text);
    let _ = portstat_exporter::source::sysctl::parse_port_range(&text);
});
