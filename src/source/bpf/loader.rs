//! Loads a BPF tracing program, an iterator or a BTF-enabled raw
//! tracepoint: the object parsed and relocated by `aya-obj`, its maps made
//! by `aya`, and the program loaded, attached and (an iterator) opened with
//! five `bpf()` commands of its own.
//!
//! The loader relocates against `btf::Btf::compact`, a copy of the kernel's
//! types the program names, not a parse of all of them: loading every
//! program peaks at 6.7 MiB above the process's own where aya's
//! `EbpfLoader` takes 35.2 MiB, in a quarter of its time
//! (`cargo bench --bench loader_cost`; docs/development.md has the figures).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::MapData;
use aya_obj::btf::BtfFeatures;
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_prog_type};
use aya_obj::{Features, Object};

use super::btf::Btf;

mod commands;

use commands::{BtfLoad, IterCreate, LinkCreate, ObjGetInfo, ProgLoad, RawTracepointOpen, bpf};

/// Why loading failed, and at which stage.
#[derive(Debug)]
pub struct LoadError {
    /// What was being done.
    pub stage: &'static str,
    /// What went wrong: for the verifier, its log.
    pub reason: String,
}

fn failed(stage: &'static str, reason: impl std::fmt::Display) -> LoadError {
    LoadError {
        stage,
        reason: reason.to_string(),
    }
}

/// Where a tracing program attaches.
#[derive(Debug, Clone, Copy)]
pub enum AttachPoint<'a> {
    /// An `iter/<target>` program, run whenever an iterator made from its
    /// link is read (`LoadedProgram::open`).
    Iterator(&'a str),
    /// A `tp_btf/<tracepoint>` program, run at every hit of the tracepoint
    /// for as long as it stays loaded.
    RawTracepoint(&'a str),
}

/// What the verifier spent on one program, from its statistics (log level
/// 4, `BPF_LOG_STATS`), and how long loading it took.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierCost {
    /// The program's name in its object.
    pub program: String,
    /// Instructions the verifier processed: `processed N insns`. It refuses
    /// a program at 1,000,000.
    pub processed_instructions: u64,
    /// States it kept: `total_states N`.
    pub total_states: u64,
    /// The most states it held at once: `peak_states N`.
    pub peak_states: u64,
    /// The verifier's own time, in microseconds: `verification time N usec`.
    pub verification_microseconds: u64,
    /// The whole `BPF_PROG_LOAD` call, as the caller waited for it.
    pub load_time: std::time::Duration,
}

/// Reads the verifier's statistics lines out of its log; a figure the log
/// does not give is 0.
pub fn parse_verifier_statistics(
    program: &str,
    log: &str,
    load_time: std::time::Duration,
) -> VerifierCost {
    // The number after `key` anywhere in the log: its lines are
    // "verification time N usec" and "processed N insns (limit 1000000)
    // max_states_per_insn N total_states N peak_states N mark_read N".
    let after = |key: &str| -> u64 {
        log.rfind(key)
            .and_then(|at| {
                log[at + key.len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|word| word.parse().ok())
            })
            .unwrap_or(0)
    };
    VerifierCost {
        program: program.to_string(),
        processed_instructions: after("processed "),
        total_states: after("total_states "),
        peak_states: after("peak_states "),
        verification_microseconds: after("verification time "),
        load_time,
    }
}

/// The programs of one object, loaded and attached to their targets, with
/// the maps they share.
pub struct LoadedProgram {
    /// One link a program, in the order they were asked for.
    links: Vec<OwnedFd>,
    /// What verifying each program cost, in the same order.
    costs: Vec<VerifierCost>,
    maps: HashMap<String, MapData>,
    // The programs and their BTF stay loaded while the links hold them; the
    // descriptors are kept so that they close with the programs.
    _programs: Vec<OwnedFd>,
    _btf: Option<OwnedFd>,
}

/// What this loader assumes of the kernel: an iterator program needs Linux
/// 5.9+ (a BTF-enabled raw tracepoint 5.5+), which has every BTF kind clang
/// writes for these programs and `bpf_probe_read_kernel`.
fn features() -> Features {
    Features::new(
        true,
        true,
        true,
        true,
        false,
        false,
        false,
        Some(BtfFeatures::new(
            true, true, true, true, true, true, true, true,
        )),
    )
}

impl LoadedProgram {
    /// Loads the `programs` of `object`, each attached at its point, with
    /// one set of the object's maps, relocated against the kernel's types:
    /// those `prepare` copied out for it, else a read of the kernel's BTF,
    /// which is dropped as soon as the types the programs need are copied
    /// out. A program that fails to load or attach fails them all.
    pub fn load(
        object: &[u8],
        programs: &[(&str, AttachPoint<'_>)],
    ) -> Result<LoadedProgram, LoadError> {
        LoadedProgram::load_sized(object, programs, &[])
    }

    /// `load`, with each map named in `sizes` made with that many entries
    /// rather than the object's.
    pub fn load_sized(
        bytes: &[u8],
        programs: &[(&str, AttachPoint<'_>)],
        sizes: &[(&str, u32)],
    ) -> Result<LoadedProgram, LoadError> {
        let mut object = Object::parse(bytes).map_err(|error| failed("object", error))?;
        let features = features();
        let (target_btf, attach_btf_ids) = kernel_types(bytes, &object, programs, read_kernel_btf)?;
        object
            .relocate_btf(&target_btf)
            .map_err(|error| failed("relocate", error_chain(&error)))?;
        drop(target_btf);

        let btf = match object
            .fixup_and_sanitize_btf(features.btf().unwrap_or(&BtfFeatures::default()))
            .map_err(|error| failed("object BTF", error))?
        {
            Some(btf) => {
                Some(load_btf(&btf.to_bytes()).map_err(|error| failed("load BTF", error))?)
            }
            None => None,
        };
        let maps = create_maps(&mut object, btf.as_ref(), sizes)?;
        object.sanitize_functions(&features);
        let (links, costs, loaded_programs) =
            load_and_attach(&object, programs, attach_btf_ids, btf.as_ref())?;
        Ok(LoadedProgram {
            links,
            costs,
            maps,
            _programs: loaded_programs,
            _btf: btf,
        })
    }

    /// How many times the kernel skipped a run of these programs because
    /// one was already running on that CPU (a softirq that interrupted it
    /// raising the same tracepoint): `recursion_misses`, Linux 5.12.
    pub fn recursion_misses(&self) -> io::Result<u64> {
        let mut missed = 0;
        for program in &self._programs {
            // SAFETY: bpf_prog_info is plain data, valid when zeroed.
            let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
            let mut attr = ObjGetInfo {
                bpf_fd: program.as_raw_fd() as u32,
                info_len: std::mem::size_of_val(&info) as u32,
                info: std::ptr::from_mut(&mut info) as u64,
            };
            // SAFETY: `attr` is laid out as the kernel reads it and points
            // at `info`, which outlives the call; the kernel writes at most
            // `info_len` bytes there.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
                    std::ptr::from_mut(&mut attr),
                    std::mem::size_of::<ObjGetInfo>() as libc::c_uint,
                )
            };
            if result < 0 {
                return Err(io::Error::last_os_error());
            }
            missed += info.recursion_misses;
        }
        Ok(missed)
    }

    /// What verifying each program cost, in the order they were asked for.
    pub fn costs(&self) -> &[VerifierCost] {
        &self.costs
    }

    /// Takes the map `name` out, for a wrapper that owns it.
    pub fn take_map(&mut self, name: &str) -> Option<MapData> {
        self.maps.remove(name)
    }

    /// A new iterator of the first program, an `AttachPoint::Iterator`
    /// one: reading it runs the program over its target in the network
    /// namespace (and PID namespace) of the calling thread.
    pub fn open(&self) -> io::Result<File> {
        let link = self
            .links
            .first()
            .ok_or_else(|| io::Error::other("no program was loaded"))?;
        let mut attr = IterCreate {
            link_fd: link.as_raw_fd() as u32,
            flags: 0,
        };
        let fd = bpf(bpf_cmd::BPF_ITER_CREATE, &mut attr)?;
        Ok(File::from(fd))
    }
}

/// The kernel's types the `programs` of `object` name, and the function or
/// tracepoint type each attaches to: prepared by `prepare` where it was
/// given this object and these attach points, else from a read of the
/// kernel's BTF by `read_kernel_btf`, which is dropped once they are copied
/// out.
fn kernel_types(
    bytes: &[u8],
    object: &Object,
    programs: &[(&str, AttachPoint<'_>)],
    read_kernel_btf: impl FnOnce() -> Result<Vec<u8>, LoadError>,
) -> Result<(aya_obj::btf::Btf, Vec<u32>), LoadError> {
    let prepared = take_prepared(bytes, programs);
    let (compact, ids) = match prepared {
        Some(prepared) => prepared,
        None => {
            let kernel =
                Btf::parse(read_kernel_btf()?).map_err(|error| failed("kernel BTF", error))?;
            let compact = compact_types(&kernel, object)?;
            let ids = programs
                .iter()
                .map(|&(_, attach)| attach_id(&kernel, attach))
                .collect::<Result<Vec<u32>, LoadError>>()?;
            (compact, ids)
        }
    };
    let compact = aya_obj::btf::Btf::parse(&compact, object::Endianness::default())
        .map_err(|error| failed("kernel BTF", error))?;
    Ok((compact, ids))
}

/// The kernel's types `object`'s own BTF names, and what they embed.
fn compact_types(kernel: &Btf, object: &Object) -> Result<Vec<u8>, LoadError> {
    let local = object
        .btf
        .as_ref()
        .ok_or_else(|| failed("object", "the object has no BTF"))?;
    let local = Btf::parse(local.to_bytes()).map_err(|error| failed("object BTF", error))?;
    Ok(kernel.compact(&local.named_types()))
}

/// The kernel's type id of the function or tracepoint `attach` names.
fn attach_id(kernel: &Btf, attach: AttachPoint<'_>) -> Result<u32, LoadError> {
    match attach {
        AttachPoint::Iterator(target) => {
            let function = format!("bpf_iter_{target}");
            kernel.func_id(&function).ok_or_else(|| {
                failed(
                    "kernel BTF",
                    format!("no {function}: this kernel has no {target} iterator (Linux 5.9+)"),
                )
            })
        }
        AttachPoint::RawTracepoint(tracepoint) => {
            let typedef = format!("btf_trace_{tracepoint}");
            kernel.typedef_id(&typedef).ok_or_else(|| {
                failed(
                    "kernel BTF",
                    format!("no {typedef}: this kernel has no {tracepoint} tracepoint"),
                )
            })
        }
    }
}

/// An object's bytes, and the programs of it that are loaded with where
/// each attaches.
pub type ObjectPrograms<'a> = (&'a [u8], &'a [(&'a str, AttachPoint<'a>)]);

/// The running kernel's BTF, whole.
pub fn read_kernel_btf() -> Result<Vec<u8>, LoadError> {
    std::fs::read(super::KERNEL_BTF)
        .map_err(|error| failed("kernel BTF", format!("{}: {error}", super::KERNEL_BTF)))
}

/// What `prepare` copied out of the kernel's BTF for the objects it was
/// given, until each is loaded: the compact types by object (a hash of its
/// bytes), and the type id of each attach point.
struct Prepared {
    types: HashMap<u64, Vec<u8>>,
    attach_ids: HashMap<String, Result<u32, String>>,
}

static PREPARED: std::sync::Mutex<Option<Prepared>> = std::sync::Mutex::new(None);

fn object_key(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn attach_key(attach: AttachPoint<'_>) -> String {
    match attach {
        AttachPoint::Iterator(target) => format!("iter/{target}"),
        AttachPoint::RawTracepoint(tracepoint) => format!("tp_btf/{tracepoint}"),
    }
}

/// Reads the kernel's BTF once and copies out what each of `objects` will
/// need to load, so that the loads that follow, one after another, never
/// hold the whole BTF (5 MiB and more) while the maps of those before
/// hold their memory: the exporter's peak is one read of it, before any
/// map. An object loaded later than that, or not given here, reads the BTF
/// itself.
pub fn prepare(objects: &[ObjectPrograms<'_>], kernel_btf: Vec<u8>) -> Result<(), LoadError> {
    let kernel = Btf::parse(kernel_btf).map_err(|error| failed("kernel BTF", error))?;
    let mut prepared = Prepared {
        types: HashMap::new(),
        attach_ids: HashMap::new(),
    };
    for &(bytes, programs) in objects {
        let object = Object::parse(bytes).map_err(|error| failed("object", error))?;
        prepared
            .types
            .insert(object_key(bytes), compact_types(&kernel, &object)?);
        for &(_, attach) in programs {
            prepared.attach_ids.insert(
                attach_key(attach),
                attach_id(&kernel, attach).map_err(|error| error.reason),
            );
        }
    }
    *PREPARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(prepared);
    Ok(())
}

/// What `prepare` copied out for `bytes` and `programs`, taken: `None`
/// where it was not given them.
fn take_prepared(
    bytes: &[u8],
    programs: &[(&str, AttachPoint<'_>)],
) -> Option<(Vec<u8>, Vec<u32>)> {
    let mut guard = PREPARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let prepared = guard.as_mut()?;
    let key = object_key(bytes);
    if !prepared.types.contains_key(&key) {
        return None;
    }
    let mut ids = Vec::with_capacity(programs.len());
    for &(_, attach) in programs {
        match prepared.attach_ids.get(&attach_key(attach))? {
            Ok(id) => ids.push(*id),
            // The kernel lacks it: the load reads the BTF and says so.
            Err(_) => return None,
        }
    }
    // Each object is loaded once; a retry (with fewer programs, after a
    // refusal) reads the BTF again.
    let types = prepared.types.remove(&key)?;
    if prepared.types.is_empty() {
        *guard = None;
    }
    Some((types, ids))
}

/// Creates the maps of `object`, those named in `sizes` with that many
/// entries, and points its programs at them, and
/// relocates its calls.
fn create_maps(
    object: &mut Object,
    btf: Option<&OwnedFd>,
    sizes: &[(&str, u32)],
) -> Result<HashMap<String, MapData>, LoadError> {
    let mut maps = HashMap::new();
    let mut definitions = HashMap::new();
    for (name, mut definition) in object.maps.drain() {
        if let Some(&(_, size)) = sizes.iter().find(|(sized, _)| *sized == name) {
            definition.set_max_entries(size);
        }
        let map = MapData::create(definition.clone(), &name, btf.map(|fd| fd.as_fd()))
            .map_err(|error| failed("create map", format!("{name}: {}", error_chain(&error))))?;
        definitions.insert(name.clone(), definition);
        maps.insert(name, map);
    }
    let text_sections: HashSet<usize> = object
        .functions
        .keys()
        .map(|(section_index, _)| *section_index)
        .collect();
    object
        .relocate_maps(
            maps.iter().filter_map(|(name, map)| {
                definitions
                    .get(name)
                    .map(|definition| (name.as_str(), map.fd().as_fd().as_raw_fd(), definition))
            }),
            &text_sections,
        )
        .map_err(|error| failed("relocate", error_chain(&error)))?;
    object
        .relocate_calls(&text_sections)
        .map_err(|error| failed("relocate", error_chain(&error)))?;
    Ok(maps)
}

/// The programs, loaded and attached, the verifier's cost of each, and
/// their file descriptors, in the order of `programs`.
type Attached = (Vec<OwnedFd>, Vec<VerifierCost>, Vec<OwnedFd>);

/// Loads each of `programs` from `object` and attaches it at its point.
fn load_and_attach(
    object: &Object,
    programs: &[(&str, AttachPoint<'_>)],
    attach_btf_ids: Vec<u32>,
    btf: Option<&OwnedFd>,
) -> Result<Attached, LoadError> {
    let mut links = Vec::with_capacity(programs.len());
    let mut costs = Vec::with_capacity(programs.len());
    let mut loaded_programs = Vec::with_capacity(programs.len());
    for (&(program, attach), attach_btf_id) in programs.iter().zip(attach_btf_ids) {
        let entry = object
            .programs
            .get(program)
            .ok_or_else(|| failed("program", format!("the object has no {program}")))?;
        let function = object
            .functions
            .get(&entry.function_key())
            .ok_or_else(|| failed("program", format!("{program} has no code")))?;
        let license =
            CString::new(entry.license.as_bytes()).map_err(|error| failed("program", error))?;
        let (loaded, cost) = load_program(&ProgramToLoad {
            name: program,
            attach_type: match attach {
                AttachPoint::Iterator(_) => bpf_attach_type::BPF_TRACE_ITER,
                AttachPoint::RawTracepoint(_) => bpf_attach_type::BPF_TRACE_RAW_TP,
            },
            instructions: &function.instructions,
            license: &license,
            attach_btf_id,
            btf,
            func_info: (
                function.func_info.func_info_bytes(),
                function.func_info.len(),
                function.func_info_rec_size,
            ),
            line_info: (
                function.line_info.line_info_bytes(),
                function.line_info.len(),
                function.line_info_rec_size,
            ),
        })?;
        let link = match attach {
            AttachPoint::Iterator(_) => create_link(&loaded),
            AttachPoint::RawTracepoint(_) => open_raw_tracepoint(&loaded),
        }
        .map_err(|error| failed("attach", format!("{program}: {error}")))?;
        tracing::debug!(
            program,
            processed_instructions = cost.processed_instructions,
            total_states = cost.total_states,
            load_ms = cost.load_time.as_secs_f64() * 1000.0,
            "BPF program verified and loaded"
        );
        links.push(link);
        loaded_programs.push(loaded);
        costs.push(cost);
    }
    Ok((links, costs, loaded_programs))
}

/// What `BPF_PROG_LOAD` is given.
struct ProgramToLoad<'a> {
    name: &'a str,
    attach_type: bpf_attach_type,
    instructions: &'a [aya_obj::generated::bpf_insn],
    license: &'a CString,
    attach_btf_id: u32,
    btf: Option<&'a OwnedFd>,
    /// Records, how many, and the size of one.
    func_info: (Vec<u8>, usize, usize),
    line_info: (Vec<u8>, usize, usize),
}

/// The verifier's log: at log level 4 it holds the reason for a refusal
/// and the statistics, a few lines, never the instruction-by-instruction
/// trace. Before Linux 6.4 a log that overflows fails the load, so it is
/// far larger than those lines.
const LOG_LENGTH: usize = 64 * 1024;

/// `BPF_LOG_STATS`: the verifier's statistics, and its reason for a refusal.
const LOG_STATISTICS: u32 = 4;

/// The name the kernel shows for a program (`bpftool prog show`): its
/// first 15 bytes, the letters, digits, `_` and `.` the kernel takes.
fn program_name(name: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (byte, &from) in bytes[..15].iter_mut().zip(
        name.as_bytes()
            .iter()
            .filter(|byte| byte.is_ascii_alphanumeric() || **byte == b'_' || **byte == b'.'),
    ) {
        *byte = from;
    }
    bytes
}

/// `BPF_PROG_LOAD` of a tracing program of the given attach type, once,
/// with the verifier's statistics asked for: a refusal's reason is in the
/// same log, so a program the verifier spends seconds on is not verified
/// twice.
fn load_program(program: &ProgramToLoad<'_>) -> Result<(OwnedFd, VerifierCost), LoadError> {
    let mut log = vec![0u8; LOG_LENGTH];
    let mut attr = ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING as u32,
        insn_cnt: program.instructions.len() as u32,
        insns: program.instructions.as_ptr() as u64,
        license: program.license.as_ptr() as u64,
        expected_attach_type: program.attach_type as u32,
        attach_btf_id: program.attach_btf_id,
        log_level: LOG_STATISTICS,
        log_buf: log.as_mut_ptr() as u64,
        log_size: log.len() as u32,
        prog_name: program_name(program.name),
        ..ProgLoad::default()
    };
    if let Some(btf) = program.btf {
        attr.prog_btf_fd = btf.as_raw_fd() as u32;
        let (records, count, size) = &program.func_info;
        if *size > 0 {
            attr.func_info = records.as_ptr() as u64;
            attr.func_info_cnt = *count as u32;
            attr.func_info_rec_size = *size as u32;
        }
        let (records, count, size) = &program.line_info;
        if *size > 0 {
            attr.line_info = records.as_ptr() as u64;
            attr.line_info_cnt = *count as u32;
            attr.line_info_rec_size = *size as u32;
        }
    }
    let started = std::time::Instant::now();
    let result = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let load_time = started.elapsed();
    let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let cost = parse_verifier_statistics(program.name, &text, load_time);
    match result {
        Ok(fd) => Ok((fd, cost)),
        Err(error) => Err(failed(
            "verify",
            format!("{}: {error}: {text}", program.name),
        )),
    }
}

fn load_btf(bytes: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = BtfLoad {
        btf: bytes.as_ptr() as u64,
        btf_size: bytes.len() as u32,
        ..BtfLoad::default()
    };
    bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

fn create_link(program: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: bpf_attach_type::BPF_TRACE_ITER as u32,
        flags: 0,
    };
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Attaches a `tp_btf` program to its tracepoint, until the returned
/// descriptor closes.
fn open_raw_tracepoint(program: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = RawTracepointOpen {
        name: 0,
        prog_fd: program.as_raw_fd() as u32,
        pad: 0,
    };
    bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// An error with its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
