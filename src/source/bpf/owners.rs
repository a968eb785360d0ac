//! Socket owners from BPF: an `iter/task_file` program
//! (`socket_owners.bpf.c`) writes a record for every TCP and UDP socket any
//! process holds open, in one pass over the host's processes. The records
//! are streamed, a chunk at a time, to whoever counts them; nothing is kept
//! between passes.
//!
//! Where the program cannot load (no BTF, no `CAP_BPF`/`CAP_PERFMON`, a
//! kernel before 5.8), owners come from the walk of `/proc/<pid>/fd`
//! (`source::owners`) instead.

use aya::maps::{Array, Map, MapData};

use super::loader::{AttachPoint, LoadedProgram};
use super::{BpfError, read_whole_records, unavailable};
use portstat_core::model::{OwnedSocket, Protocol};

/// The compiled program, built from `socket_owners.bpf.c` by `build.sh`.
pub const SOCKET_OWNERS_OBJECT: &[u8] = include_bytes!("socket_owners.bpf.o");

/// The program's name in the object.
pub(super) const PROGRAM: &str = "dump_socket_owners";

/// The size of one record, `struct owner_record` in the C source.
pub const OWNER_RECORD_LENGTH: usize = 48;

/// `RECORD_FILE_REF`: the reference count is a `file_ref_t`, which holds the
/// count less one.
const FILE_REF: u8 = 1;

/// How much of the iterator's output is read at a time: about 16 KiB, for
/// the reason the TCP iterator's reads are that size (`READ_CHUNK` there).
const READ_CHUNK: usize = OWNER_RECORD_LENGTH * 341;

/// Parses one `struct owner_record`; `None` for a protocol other than TCP
/// and UDP, which the program does not write.
pub fn parse_owner_record(record: &[u8]) -> Option<OwnedSocket> {
    if record.len() != OWNER_RECORD_LENGTH {
        return None;
    }
    let u32_at = |at: usize| {
        u32::from_ne_bytes([record[at], record[at + 1], record[at + 2], record[at + 3]])
    };
    let u64_at = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&record[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    let protocol = match record[28] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    // The iterator holds a reference of its own while the program runs
    // (fget_task_next), so a file one descriptor refers to counts two.
    let references = u64_at(16) as i64;
    let shared = if record[29] & FILE_REF != 0 {
        references > 1
    } else {
        references > 2
    };
    let mut comm = [0; 16];
    comm.copy_from_slice(&record[32..48]);
    Some(OwnedSocket {
        tgid: u32_at(0),
        comm,
        netns: u32_at(4),
        inode: u64_at(8),
        protocol,
        port: u16::from_ne_bytes([record[24], record[25]]),
        shared,
    })
}

/// Finds socket owners with the `iter/task_file` program, loading it at
/// first use.
pub struct BpfOwners {
    program: Option<LoadedProgram>,
    /// Index 0: the port whose sockets' inodes are always read.
    settings: Option<Array<MapData, u32>>,
    buffer: Vec<u8>,
}

impl BpfOwners {
    /// Loads the program now: whether owners can come from BPF is decided
    /// before any socket is read.
    pub fn load() -> Result<BpfOwners, BpfError> {
        let mut program = LoadedProgram::load(
            SOCKET_OWNERS_OBJECT,
            &[(PROGRAM, AttachPoint::Iterator("task_file"))],
        )
        .map_err(|error| unavailable(error.stage, error.reason))?;
        let settings = program
            .take_map("settings")
            .ok_or_else(|| unavailable("settings", "the object has no settings map"))?;
        let settings = Array::try_from(Map::Array(settings))
            .map_err(|error| unavailable("settings", error))?;
        Ok(BpfOwners {
            program: Some(program),
            settings: Some(settings),
            buffer: Vec::new(),
        })
    }

    /// Hands every TCP and UDP socket held open by a process visible from
    /// the calling thread's PID namespace to `take`, in the order of the
    /// processes' ids. Inodes are read (else 0) where a socket must be told
    /// apart from the others on its port, and on `keep_port`.
    pub fn read(
        &mut self,
        keep_port: Option<u16>,
        take: &mut dyn FnMut(&OwnedSocket),
    ) -> Result<(), BpfError> {
        let (Some(program), Some(settings)) = (&self.program, &mut self.settings) else {
            return Err(unavailable("owners", "not loaded"));
        };
        settings
            .set(0, u32::from(keep_port.unwrap_or(0)), 0)
            .map_err(|error| unavailable("settings", error))?;
        let mut iterator = program
            .open()
            .map_err(|error| unavailable("iterator", error))?;
        read_whole_records(
            &mut iterator,
            &mut self.buffer,
            OWNER_RECORD_LENGTH,
            READ_CHUNK,
            &mut |records| {
                for record in records.chunks_exact(OWNER_RECORD_LENGTH) {
                    if let Some(owned) = parse_owner_record(record) {
                        take(&owned);
                    }
                }
                // As the socket sources do: let a scrape have the CPU.
                std::thread::yield_now();
                Ok(())
            },
        )
    }
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
