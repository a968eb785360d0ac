//! A ctnetlink dump datagram, and the conntrack statistics file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portstat_exporter::source::conntrack::parse_statistics;
use portstat_exporter::source::conntrack::wire::parse_datagram;

fuzz_target!(|data: &[u8]| {
    // The sequence number of replies is the first bytes' guess.
    let sequence = data
        .get(8..12)
        .map_or(0, |bytes| u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    let mut entries = 0u64;
    let mut interrupted = false;
    let _ = parse_datagram(data, sequence, &mut interrupted, &mut |_| entries += 1);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_statistics(text);
    }
});
