//! BTF, the kernel's description of its own types, read for what the BPF
//! programs need and no more.
//!
//! A CO-RE loader relocates a program's field accesses against the running
//! kernel's types. Parsing all of `/sys/kernel/btf/vmlinux` (about 150,000
//! types) into a general representation costs tens of MiB for a moment; the
//! programs read a few dozen structures. `Btf::compact` keeps only the types
//! named by the program's own BTF and what they embed, renumbered, with
//! pointers cut to `void` (a field relocation never looks through a
//! pointer), and `Btf::func_id` finds the kernel function an iterator
//! attaches to. Pure functions over bytes; the layout is that of
//! `include/uapi/linux/btf.h` and `Documentation/bpf/btf.rst`.

use std::collections::{HashMap, HashSet, VecDeque};

/// `BTF_MAGIC`.
const MAGIC: u16 = 0xeb9f;
/// `struct btf_header`.
const HEADER_LENGTH: usize = 24;
/// `struct btf_type`: name offset, info, size or type.
const TYPE_LENGTH: usize = 12;

/// A type's name without its CO-RE flavour, the `___` suffix a program
/// gives a second declaration of one kernel type.
fn essential_name(name: &str) -> &str {
    name.split_once("___")
        .map_or(name, |(essential, _)| essential)
}

/// The kinds, as `BTF_KIND_*` numbers them.
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// A BTF blob, indexed by type id.
pub struct Btf {
    /// The whole blob, in native byte order (the kernel's, and clang's for
    /// the host).
    bytes: Vec<u8>,
    /// Where each type's record starts, by id - 1 (id 0 is `void`).
    offsets: Vec<u32>,
    /// Where the string section starts, and its length.
    strings: (usize, usize),
}

impl Btf {
    /// Indexes a blob; an error says what is wrong with it.
    pub fn parse(bytes: Vec<u8>) -> Result<Btf, String> {
        if bytes.len() < HEADER_LENGTH || read_u16(&bytes, 0) != MAGIC {
            return Err("not BTF in this machine's byte order".into());
        }
        let header = read_u32(&bytes, 4) as usize;
        let field = |at: usize| read_u32(&bytes, 8 + at) as usize;
        let (type_off, type_len, str_off, str_len) = (field(0), field(4), field(8), field(12));
        let types_at = header.checked_add(type_off);
        let strings_at = header.checked_add(str_off);
        let fits = |at: Option<usize>, length: usize| {
            at.and_then(|at| at.checked_add(length))
                .is_some_and(|end| end <= bytes.len())
        };
        if header < HEADER_LENGTH || !fits(types_at, type_len) || !fits(strings_at, str_len) {
            return Err("a section lies outside the blob".into());
        }
        let (types_at, strings_at) = (types_at.unwrap_or(0), strings_at.unwrap_or(0));
        let mut offsets = Vec::new();
        let mut at = types_at;
        let end = types_at + type_len;
        while at < end {
            if at + TYPE_LENGTH > end {
                return Err(format!("type {} is cut short", offsets.len() + 1));
            }
            let info = read_u32(&bytes, at + 4);
            let length = record_length(info).ok_or_else(|| {
                format!(
                    "type {} has unknown kind {}",
                    offsets.len() + 1,
                    kind_of(info)
                )
            })?;
            if at + length > end {
                return Err(format!("type {} is cut short", offsets.len() + 1));
            }
            offsets.push(at as u32);
            at += length;
        }
        Ok(Btf {
            bytes,
            offsets,
            strings: (strings_at, str_len),
        })
    }

    /// How many types there are, `void` aside.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether there are no types.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The record of type `id` (1-based).
    fn record(&self, id: u32) -> Option<&[u8]> {
        let at = *self.offsets.get((id as usize).checked_sub(1)?)? as usize;
        let length = record_length(read_u32(&self.bytes, at + 4))?;
        self.bytes.get(at..at + length)
    }

    /// The string at `offset` of the string section, or "" where there is
    /// none.
    fn string(&self, offset: u32) -> &str {
        let (at, length) = self.strings;
        let Some(rest) = self
            .bytes
            .get(at..at + length)
            .and_then(|strings| strings.get(offset as usize..))
        else {
            return "";
        };
        let end = rest
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The names of the structures, unions, enums and typedefs the blob
    /// declares: for a program's BTF, what a loader relocates against. A
    /// CO-RE flavour (`inet_bind_bucket___owners`, the same type as an
    /// older kernel lays it out) is named by its essential name.
    pub fn named_types(&self) -> Vec<String> {
        let mut names: Vec<String> = (1..=self.offsets.len() as u32)
            .filter_map(|id| {
                let record = self.record(id)?;
                let info = read_u32(record, 4);
                matches!(
                    kind_of(info),
                    kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::TYPEDEF
                )
                .then(|| essential_name(self.string(read_u32(record, 0))).to_string())
            })
            .filter(|name| !name.is_empty())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The id of the function named `name`, as `BPF_PROG_LOAD` wants it in
    /// `attach_btf_id` (an iterator attaches to `bpf_iter_<target>`).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.id_of(kind::FUNC, name)
    }

    /// The id of the typedef named `name`: a BTF-enabled raw tracepoint
    /// program attaches to `btf_trace_<tracepoint>`.
    pub fn typedef_id(&self, name: &str) -> Option<u32> {
        self.id_of(kind::TYPEDEF, name)
    }

    fn id_of(&self, wanted: u32, name: &str) -> Option<u32> {
        (1..=self.offsets.len() as u32).find(|&id| {
            self.record(id).is_some_and(|record| {
                kind_of(read_u32(record, 4)) == wanted && self.string(read_u32(record, 0)) == name
            })
        })
    }

    /// A blob of the structures, unions, enums and typedefs named `roots`
    /// and every type they embed, renumbered from 1, with pointers cut to
    /// `void`: enough to relocate field offsets, sizes and existence.
    pub fn compact(&self, roots: &[String]) -> Vec<u8> {
        let roots: HashSet<&str> = roots.iter().map(String::as_str).collect();
        let mut queue: VecDeque<u32> = (1..=self.offsets.len() as u32)
            .filter(|&id| {
                self.record(id).is_some_and(|record| {
                    matches!(
                        kind_of(read_u32(record, 4)),
                        kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::TYPEDEF
                    ) && roots.contains(self.string(read_u32(record, 0)))
                })
            })
            .collect();
        // Old id -> new id, in the order types are kept.
        let mut kept: Vec<u32> = Vec::new();
        let mut renumbered: HashMap<u32, u32> = HashMap::new();
        for &id in &queue {
            renumbered.entry(id).or_insert_with(|| {
                kept.push(id);
                kept.len() as u32
            });
        }
        while let Some(id) = queue.pop_front() {
            let Some(record) = self.record(id) else {
                continue;
            };
            for referenced in embedded(record) {
                if referenced != 0 && !renumbered.contains_key(&referenced) {
                    kept.push(referenced);
                    renumbered.insert(referenced, kept.len() as u32);
                    queue.push_back(referenced);
                }
            }
        }

        let mut strings = vec![0u8];
        let mut string_at: HashMap<u32, u32> = HashMap::new();
        let mut name = |offset: u32, strings: &mut Vec<u8>| -> u32 {
            if offset == 0 {
                return 0;
            }
            *string_at.entry(offset).or_insert_with(|| {
                let at = strings.len() as u32;
                strings.extend_from_slice(self.string(offset).as_bytes());
                strings.push(0);
                at
            })
        };
        let new_id = |old: u32| renumbered.get(&old).copied().unwrap_or(0);
        let mut types = Vec::new();
        for &id in &kept {
            let Some(record) = self.record(id) else {
                continue;
            };
            let mut copy = record.to_vec();
            let info = read_u32(record, 4);
            let vlen = (info & 0xffff) as usize;
            write_u32(&mut copy, 0, name(read_u32(record, 0), &mut strings));
            match kind_of(info) {
                kind::PTR => write_u32(&mut copy, 8, 0),
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    write_u32(&mut copy, 8, new_id(read_u32(record, 8)))
                }
                kind::ARRAY => {
                    write_u32(&mut copy, 12, new_id(read_u32(record, 12)));
                    write_u32(&mut copy, 16, new_id(read_u32(record, 16)));
                }
                kind::STRUCT | kind::UNION => {
                    for member in 0..vlen {
                        let at = TYPE_LENGTH + member * 12;
                        write_u32(&mut copy, at, name(read_u32(record, at), &mut strings));
                        write_u32(&mut copy, at + 4, new_id(read_u32(record, at + 4)));
                    }
                }
                kind::ENUM => {
                    for value in 0..vlen {
                        let at = TYPE_LENGTH + value * 8;
                        write_u32(&mut copy, at, name(read_u32(record, at), &mut strings));
                    }
                }
                kind::ENUM64 => {
                    for value in 0..vlen {
                        let at = TYPE_LENGTH + value * 12;
                        write_u32(&mut copy, at, name(read_u32(record, at), &mut strings));
                    }
                }
                _ => {}
            }
            types.extend_from_slice(&copy);
        }

        assemble(&types, &strings)
    }
}

/// A blob of a type section and a string section, after its header.
fn assemble(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(HEADER_LENGTH + types.len() + strings.len());
    blob.extend_from_slice(&MAGIC.to_ne_bytes());
    blob.push(1); // version
    blob.push(0); // flags
    for value in [
        HEADER_LENGTH as u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&value.to_ne_bytes());
    }
    blob.extend_from_slice(types);
    blob.extend_from_slice(strings);
    blob
}

/// The types a record embeds, which a relocation may walk into: not the
/// target of a pointer, nor a function's prototype.
fn embedded(record: &[u8]) -> Vec<u32> {
    let info = read_u32(record, 4);
    let vlen = (info & 0xffff) as usize;
    match kind_of(info) {
        kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
            vec![read_u32(record, 8)]
        }
        kind::ARRAY => vec![read_u32(record, 12), read_u32(record, 16)],
        kind::STRUCT | kind::UNION => (0..vlen)
            .map(|member| read_u32(record, TYPE_LENGTH + member * 12 + 4))
            .collect(),
        _ => Vec::new(),
    }
}

fn kind_of(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

/// The length of a type's record from its `info`, or `None` for a kind
/// this reader does not know.
fn record_length(info: u32) -> Option<usize> {
    let vlen = (info & 0xffff) as usize;
    let extra = match kind_of(info) {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => vlen * 12,
        kind::ENUM | kind::FUNC_PROTO => vlen * 8,
        _ => return None,
    };
    Some(TYPE_LENGTH + extra)
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..at + 2)
        .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    if let Some(slot) = bytes.get_mut(at..at + 4) {
        slot.copy_from_slice(&value.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob built from (name, info, size-or-type, extra words) records.
    fn blob(names: &[&str], types: &[(u32, u32, u32, Vec<u32>)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        for name in names {
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let mut section = Vec::new();
        for (name, info, size, extra) in types {
            for word in [*name, *info, *size].iter().chain(extra) {
                section.extend_from_slice(&word.to_ne_bytes());
            }
        }
        assemble(&section, &strings)
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        kind << 24 | vlen
    }

    /// Names: 1 "int", 5 "outer", 11 "inner", 17 "next", 22 "x", 24
    /// "other", 30 "bpf_iter_tcp", 43 "y".
    fn sample() -> Vec<u8> {
        blob(
            &[
                "int",
                "outer",
                "inner",
                "next",
                "x",
                "other",
                "bpf_iter_tcp",
                "y",
            ],
            &[
                // 1: int
                (1, info(kind::INT, 0), 4, vec![32]),
                // 2: struct inner { int x; }
                (11, info(kind::STRUCT, 1), 4, vec![22, 1, 0]),
                // 3: struct other { int y; } (reached only through a pointer)
                (24, info(kind::STRUCT, 1), 4, vec![43, 1, 0]),
                // 4: struct other *
                (0, info(kind::PTR, 0), 3, vec![]),
                // 5: struct outer { struct inner x; struct other *next; }
                (5, info(kind::STRUCT, 2), 16, vec![22, 2, 0, 17, 4, 64]),
                // 6: a function prototype and 7: the function
                (0, info(kind::FUNC_PROTO, 0), 0, vec![]),
                (30, info(kind::FUNC, 0), 6, vec![]),
            ],
        )
    }

    #[test]
    fn indexes_names_and_finds_functions() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.len(), 7);
        assert_eq!(btf.named_types(), ["inner", "other", "outer"]);
        assert_eq!(btf.func_id("bpf_iter_tcp"), Some(7));
        assert_eq!(btf.func_id("bpf_iter_udp"), None);
    }

    #[test]
    fn a_flavour_is_named_by_the_type_it_stands_for() {
        assert_eq!(
            essential_name("inet_bind_bucket___owners"),
            "inet_bind_bucket"
        );
        assert_eq!(essential_name("inet_bind_bucket"), "inet_bind_bucket");
        assert_eq!(essential_name("a___b___c"), "a");
    }

    #[test]
    fn compact_keeps_what_is_embedded_and_cuts_pointers() {
        let compact = Btf::parse(Btf::parse(sample()).unwrap().compact(&["outer".into()])).unwrap();
        // outer, then inner and the pointer, then int; not other.
        assert_eq!(compact.named_types(), ["inner", "outer"]);
        assert_eq!(compact.len(), 4);
        let outer = compact.record(1).unwrap();
        assert_eq!(compact.string(read_u32(outer, 0)), "outer");
        // Members keep their names and offsets, and point at the new ids.
        assert_eq!(compact.string(read_u32(outer, 12)), "x");
        assert_eq!(read_u32(outer, 16), 2);
        assert_eq!(compact.string(read_u32(outer, 24)), "next");
        assert_eq!(read_u32(outer, 32), 64);
        let pointer = compact.record(read_u32(outer, 28)).unwrap();
        assert_eq!(kind_of(read_u32(pointer, 4)), kind::PTR);
        assert_eq!(read_u32(pointer, 8), 0, "pointers are cut to void");
        let inner = compact.record(2).unwrap();
        let int = compact.record(read_u32(inner, 16)).unwrap();
        assert_eq!(compact.string(read_u32(int, 0)), "int");
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        let good = sample();
        assert!(Btf::parse(Vec::new()).is_err());
        for length in 0..good.len() {
            let _ = Btf::parse(good[..length].to_vec());
        }
        let mut unknown_kind = good.clone();
        // The first record's info: kind 31.
        write_u32(&mut unknown_kind, 24 + 4, 31 << 24);
        assert!(
            Btf::parse(unknown_kind)
                .err()
                .unwrap()
                .contains("unknown kind")
        );
        let mut outside = good;
        write_u32(&mut outside, 16, 1 << 30);
        assert!(Btf::parse(outside).is_err());
    }

    /// The running kernel's BTF, where it has one: every type indexed, the
    /// iterators found, and the program's structures kept small.
    #[test]
    fn the_running_kernel() {
        let Ok(bytes) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        let kernel = Btf::parse(bytes).unwrap();
        assert!(kernel.len() > 10_000, "{} types", kernel.len());
        assert!(kernel.func_id("bpf_iter_tcp").is_some());
        let compact = kernel.compact(&["sock_common".into(), "tcp_sock".into()]);
        let compact = Btf::parse(compact).unwrap();
        assert!(compact.named_types().contains(&"sock_common".to_string()));
        assert!(
            compact.len() < kernel.len() / 10,
            "{} types kept",
            compact.len()
        );
    }
}
