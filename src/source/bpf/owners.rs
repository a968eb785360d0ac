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
use portstat_core::model::OwnedSocket;
use portstat_core::parse::bpf::owner_record;
use portstat_core::parse::bpf::owners::parse_owner_record;

/// The compiled program, built from `socket_owners.bpf.c` by `build.sh`.
pub const SOCKET_OWNERS_OBJECT: &[u8] = include_bytes!("socket_owners.bpf.o");

/// The program's name in the object.
pub(super) const PROGRAM: &str = "dump_socket_owners";

/// How much of the iterator's output is read at a time: about 16 KiB, for
/// the reason the TCP iterator's reads are that size (`READ_CHUNK` there).
const READ_CHUNK: usize = owner_record::SIZE * 341;

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
            owner_record::SIZE,
            READ_CHUNK,
            &mut |records| {
                for record in records.chunks_exact(owner_record::SIZE) {
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
