//! Unit tests of `bpf`.

use super::*;
use clock::monotonic_offset_ns;
use std::collections::BTreeMap;

#[test]
fn a_time_namespace_s_monotonic_offset_is_read_in_nanoseconds() {
    let text = "monotonic      3600         0\nboottime          0         0\n";
    assert_eq!(monotonic_offset_ns(text), Some(3_600_000_000_000));
    assert_eq!(
        monotonic_offset_ns("1 -5 250\n7 0 0\n"),
        Some(-4_999_999_750)
    );
    assert_eq!(monotonic_offset_ns("boottime 10 0\n"), None);
    assert_eq!(monotonic_offset_ns(""), None);
}

#[test]
fn the_embedded_object_is_a_bpf_elf() {
    assert_eq!(&TCP_PORTS_OBJECT[..4], b"\x7fELF");
    // e_machine 247: EM_BPF.
    assert_eq!(
        u16::from_le_bytes([TCP_PORTS_OBJECT[18], TCP_PORTS_OBJECT[19]]),
        247
    );
}

/// What an iterator's reads return, one step a read.
enum Step {
    Bytes(&'static [u8]),
    Again,
}

struct Scripted(std::collections::VecDeque<Step>);

impl Read for Scripted {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        match self.0.pop_front() {
            None => Ok(0),
            Some(Step::Again) => Err(io::ErrorKind::WouldBlock.into()),
            Some(Step::Bytes(bytes)) => {
                into[..bytes.len()].copy_from_slice(bytes);
                Ok(bytes.len())
            }
        }
    }
}

#[test]
fn a_read_that_visited_a_million_sockets_with_no_output_is_read_again() {
    // As the kernel's bpf_seq_read answers after MAX_ITER_OBJECTS
    // objects with nothing written: EAGAIN, then the rest.
    let mut iterator = Scripted(
        [
            Step::Again,
            Step::Bytes(&[1, 2, 3]),
            Step::Again,
            Step::Bytes(&[4, 5, 6, 7, 8]),
        ]
        .into(),
    );
    let mut records = Vec::new();
    read_whole_records(&mut iterator, &mut Vec::new(), 4, 64, &mut |whole| {
        records.extend(whole.chunks(4).map(<[u8]>::to_vec));
        Ok(())
    })
    .expect("EAGAIN is not the end of the walk");
    assert_eq!(records, [vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
}

/// The layouts `records.bpf.h` asserts: each struct's size and fields.
fn asserted_layouts(header: &str) -> BTreeMap<String, (usize, Vec<(String, usize)>)> {
    let mut layouts: BTreeMap<String, (usize, Vec<(String, usize)>)> = BTreeMap::new();
    for line in header.lines() {
        let arguments = |prefix: &str| {
            line.strip_prefix(prefix)?
                .strip_suffix(");")
                .map(|inside| inside.split(',').map(str::trim).collect::<Vec<_>>())
        };
        if let Some([name, size]) = arguments("ASSERT_SIZE(").as_deref() {
            layouts.entry(name.to_string()).or_default().0 = size.parse().unwrap();
        } else if let Some([name, field, offset]) = arguments("ASSERT_AT(").as_deref() {
            layouts
                .entry(name.to_string())
                .or_default()
                .1
                .push((field.to_string(), offset.parse().unwrap()));
        }
    }
    layouts
}

#[test]
fn the_c_records_assert_the_cores_layouts() {
    use portstat_core::parse::bpf::LAYOUTS;
    let header = include_str!("records.bpf.h");
    let asserted = asserted_layouts(header);
    let declared: BTreeMap<String, (usize, Vec<(String, usize)>)> = LAYOUTS
        .iter()
        .map(|layout| {
            let fields = layout
                .fields
                .iter()
                .map(|&(field, offset)| (field.to_string(), offset))
                .collect();
            (layout.name.to_string(), (layout.size, fields))
        })
        .collect();
    // Every struct of the header is one the core reads, at the same size,
    // with the same fields at the same offsets, and the other way round.
    assert_eq!(asserted, declared);
    // Every struct the header declares has its size asserted.
    let structs = header
        .lines()
        .filter_map(|line| line.strip_prefix("struct ")?.strip_suffix(" {"))
        .count();
    assert_eq!(structs, LAYOUTS.len());
}
