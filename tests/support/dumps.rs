//! Netlink dumps recorded as the fixtures the parsers' tests read.

/// Sends `request` on `socket` and records the datagrams of the dump that
/// answers it, each after its length as a little-endian u32: the format of
/// the recorded fixtures under `src/source/*/fixtures/`.
pub fn record_dump(
    socket: &portstat_exporter::source::netlink::socket::NetlinkSocket,
    request: &[u8],
) -> Vec<u8> {
    socket.send(request).unwrap();
    let mut buffer = Vec::with_capacity(32 * 1024);
    let mut file = Vec::new();
    loop {
        let length = socket.receive(&mut buffer).unwrap();
        assert!(length <= buffer.len(), "a datagram overflowed");
        file.extend_from_slice(&(length as u32).to_le_bytes());
        file.extend_from_slice(&buffer[..length]);
        // NLMSG_DONE (3) ends the dump; it comes last in its datagram.
        let mut at = 0;
        let mut done = false;
        while at + 16 <= length {
            let message = u32::from_ne_bytes(buffer[at..at + 4].try_into().unwrap());
            assert!(message >= 16, "a message shorter than its header");
            done |= u16::from_ne_bytes(buffer[at + 4..at + 6].try_into().unwrap()) == 3;
            at += (message as usize + 3) & !3;
        }
        if done {
            return file;
        }
    }
}
