//! The records of `iter/task_file` (`struct owner_record`): one socket a
//! process's descriptor holds, decoded into an `OwnedSocket`.

use super::{Fields, owner_record};
use crate::model::{OwnedSocket, Protocol};

/// `RECORD_FILE_REF`: the reference count is a `file_ref_t`, which holds the
/// count less one (Linux 6.13+), rather than `f_count`, the count itself.
pub const FILE_REF: u8 = 1;

/// Parses one `struct owner_record`; `None` for bytes of another length, or
/// a protocol other than TCP and UDP, which the program does not write.
pub fn parse_owner_record(record: &[u8]) -> Option<OwnedSocket> {
    if record.len() != owner_record::SIZE {
        return None;
    }
    let fields = Fields(record);
    let protocol = match fields.u8(owner_record::protocol) {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    // The iterator holds a reference of its own while the program runs
    // (fget_task_next), so a file one descriptor refers to counts two.
    let references = fields.u64(owner_record::file_refs) as i64;
    let shared = if fields.u8(owner_record::flags) & FILE_REF != 0 {
        references > 1
    } else {
        references > 2
    };
    Some(OwnedSocket {
        tgid: fields.u32(owner_record::tgid),
        comm: fields.bytes16(owner_record::comm),
        netns: fields.u32(owner_record::netns),
        inode: fields.u64(owner_record::inode),
        protocol,
        port: fields.u16(owner_record::port),
        shared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(protocol: u8, flags: u8, references: i64) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&4321u32.to_ne_bytes());
        bytes.extend_from_slice(&4026531840u32.to_ne_bytes());
        bytes.extend_from_slice(&98765u64.to_ne_bytes());
        bytes.extend_from_slice(&references.to_ne_bytes());
        bytes.extend_from_slice(&40001u16.to_ne_bytes());
        bytes.extend_from_slice(&[10, 1, protocol, flags, 0, 0]);
        bytes.extend_from_slice(b"haproxy\0\0\0\0\0\0\0\0\0");
        bytes
    }

    #[test]
    fn records_parse_and_sharing_follows_the_count_layout() {
        let owned = parse_owner_record(&record(6, FILE_REF, 0)).unwrap();
        assert_eq!(owned.tgid, 4321);
        assert_eq!(owned.netns, 4026531840);
        assert_eq!(owned.inode, 98765);
        assert_eq!(owned.protocol, Protocol::Tcp);
        assert_eq!(owned.port, 40001);
        assert_eq!(owned.comm(), "haproxy");
        // file_ref_t holds the count less one, and the iterator holds one
        // reference: 1 is one descriptor's.
        assert!(!owned.shared);
        assert!(!parse_owner_record(&record(6, FILE_REF, 1)).unwrap().shared);
        assert!(parse_owner_record(&record(6, FILE_REF, 2)).unwrap().shared);
        // f_count holds the count.
        assert!(!parse_owner_record(&record(17, 0, 2)).unwrap().shared);
        assert!(parse_owner_record(&record(17, 0, 3)).unwrap().shared);
        assert_eq!(
            parse_owner_record(&record(17, 0, 1)).unwrap().protocol,
            Protocol::Udp
        );
        // Other protocols and cut records are not owners.
        assert_eq!(parse_owner_record(&record(132, 0, 1)), None);
        assert_eq!(parse_owner_record(&record(6, 0, 1)[..47]), None);
    }
}
