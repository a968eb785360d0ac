//! A sock_diag reply datagram, for each kind of dump the source makes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portstat_core::model::{PortRange, Protocol};
use portstat_exporter::source::netlink::wire::{dumps_for, parse_datagram};

fuzz_target!(|data: &[u8]| {
    let range = PortRange {
        start: 32768,
        end: 60999,
    };
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for both in [true, false] {
            for dump in dumps_for(protocol, range, both, true) {
                let mut sockets = Vec::new();
                let mut interrupted = false;
                // The sequence number of replies is the first bytes' guess.
                let sequence = data
                    .get(8..12)
                    .map_or(0, |bytes| u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
                let _ = parse_datagram(data, sequence, &dump, &mut interrupted, &mut sockets);
            }
        }
    }
});
