//! Unit tests of `bpf`.

use super::*;
use clock::monotonic_offset_ns;

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

/// A record as the program writes it.
#[allow(clippy::too_many_arguments)]
fn record(
    family: u8,
    state: u8,
    flags: u8,
    fastreuse: i8,
    local: (&[u8], u16),
    remote: (&[u8], u16),
    tw: (u32, u32),
    inode: u64,
) -> Vec<u8> {
    let mut bytes = vec![0u8; RECORD_LENGTH];
    bytes[0] = family;
    bytes[1] = state;
    bytes[2] = flags;
    bytes[4] = fastreuse as u8;
    bytes[5] = -1i8 as u8;
    bytes[6..8].copy_from_slice(&local.1.to_ne_bytes());
    bytes[8..10].copy_from_slice(&remote.1.to_ne_bytes());
    bytes[12..16].copy_from_slice(&1i32.to_ne_bytes());
    bytes[16..20].copy_from_slice(&3u32.to_ne_bytes());
    bytes[20..24].copy_from_slice(&128u32.to_ne_bytes());
    bytes[24..28].copy_from_slice(&tw.0.to_ne_bytes());
    bytes[28..32].copy_from_slice(&tw.1.to_ne_bytes());
    bytes[32..40].copy_from_slice(&inode.to_ne_bytes());
    bytes[40..40 + local.0.len()].copy_from_slice(local.0);
    bytes[56..56 + remote.0.len()].copy_from_slice(remote.0);
    bytes
}

#[test]
fn records_carry_bindings_queues_and_time_wait() {
    let mut bytes = record(
        2,
        10,
        HAS_BUCKET,
        0,
        (&[0, 0, 0, 0], 8080),
        (&[0, 0, 0, 0], 0),
        (0, 0),
        77,
    );
    bytes.extend(record(
        2,
        1,
        HAS_BUCKET,
        1,
        (&[10, 0, 0, 1], 40001),
        (&[10, 0, 0, 9], 80),
        (0, 0),
        1 << 40,
    ));
    bytes.extend(record(
        2,
        1,
        HAS_BUCKET,
        -1,
        (&[10, 0, 0, 1], 40002),
        (&[10, 0, 0, 9], 80),
        (0, 0),
        5,
    ));
    let mut v6 = [0u8; 16];
    v6[15] = 1;
    bytes.extend(record(
        10,
        6,
        HAS_BUCKET | HAS_ENTRY_STAMP,
        -1,
        (&v6, 40003),
        (&v6, 8080),
        (98_500, 7),
        0,
    ));
    // A request socket: no bucket read.
    bytes.extend(record(
        2,
        12,
        0,
        0,
        (&[127, 0, 0, 1], 8080),
        (&[127, 0, 0, 1], 40009),
        (0, 0),
        0,
    ));
    let mut sockets = Vec::new();
    parse_records(&bytes, 100_000, &mut sockets).unwrap();
    assert_eq!(sockets.len(), 5);
    let [listener, bound, shared, time_wait, request] = sockets.as_slice() else {
        panic!("five records");
    };
    assert_eq!(listener.state, SocketState::Tcp(TcpState::Listen));
    assert_eq!(listener.local, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        listener.listen_queue,
        Some(ListenQueue {
            waiting: 3,
            limit: 128
        })
    );
    assert_eq!(listener.inode, 77);
    assert_eq!(bound.binding, PortBinding::Bind);
    assert_eq!(bound.inode, 1 << 40);
    assert_eq!(bound.remote, "10.0.0.9:80".parse().unwrap());
    assert_eq!(shared.binding, PortBinding::Connect);
    assert_eq!(shared.listen_queue, None);
    assert_eq!(time_wait.local, "[::1]:40003".parse().unwrap());
    assert_eq!(
        time_wait.time_wait,
        Some(TimeWait {
            age_ms: 1500,
            timestamps: Some(true),
            bound_device: Some(1)
        })
    );
    assert_eq!(request.state, SocketState::Tcp(TcpState::SynRecv));
    assert_eq!(request.binding, PortBinding::Unseen);
}

#[test]
fn time_wait_age_before_6_13_and_across_the_clock_wrap() {
    // No entry stamp: seconds since the last timestamp; none means none
    // were used.
    let at = |stamp: u32, now_ms: u64| {
        let record = record(
            2,
            6,
            HAS_BUCKET,
            -1,
            (&[1, 2, 3, 4], 40001),
            (&[5, 6, 7, 8], 80),
            (0, stamp),
            0,
        );
        let mut sockets = Vec::new();
        parse_records(&record, now_ms, &mut sockets).unwrap();
        sockets.remove(0)
    };
    let detail = at(98, 100_400).time_wait.unwrap();
    // Two seconds after the stamp's, to the end of the stamp's.
    assert_eq!(detail.age_ms, 2999);
    // The kernel reuses once the second has changed since the stamp,
    // and not within it: so does the rule, at its 1 s delay.
    let reuse = portstat_core::model::TimeWaitReuse {
        mode: 1,
        ..portstat_core::model::TimeWaitReuse::default()
    };
    for (stamp, reusable) in [(99, true), (100, false)] {
        assert_eq!(
            portstat_core::rules::tcp_twsk_unique(&at(stamp, 100_400), &reuse),
            reusable,
            "stamp {stamp}, now 100.4 s"
        );
    }
    // A stamp 30 days old is the oldest age the milliseconds hold, and
    // reusable; one a second ahead of `now` is age 0, and not.
    for (stamp, age, reusable) in [
        (3_000_000 - 30 * 86_400, i32::MAX as u32, true),
        (3_000_001, 0, false),
    ] {
        let socket = at(stamp, 3_000_000_400);
        assert_eq!(socket.time_wait.unwrap().age_ms, age, "stamp {stamp}");
        assert_eq!(
            portstat_core::rules::tcp_twsk_unique(&socket, &reuse),
            reusable,
            "stamp {stamp}"
        );
    }
    assert_eq!(detail.timestamps, Some(true));
    // The 32-bit millisecond clock wraps every 49.7 days.
    let wrapped = record(
        2,
        6,
        HAS_ENTRY_STAMP,
        -1,
        (&[1, 2, 3, 4], 40001),
        (&[5, 6, 7, 8], 80),
        (u32::MAX - 999, 0),
        0,
    );
    let mut sockets = Vec::new();
    parse_records(&wrapped, 1u64 << 32, &mut sockets).unwrap();
    let detail = sockets[0].time_wait.unwrap();
    assert_eq!(detail.age_ms, 1000);
    assert_eq!(detail.timestamps, Some(false));
    // Stamped after the clock was read: age 0, not 49 days.
    let later = record(
        2,
        6,
        HAS_ENTRY_STAMP,
        -1,
        (&[1, 2, 3, 4], 40001),
        (&[5, 6, 7, 8], 80),
        (5_010, 1),
        0,
    );
    sockets.clear();
    parse_records(&later, 5_000, &mut sockets).unwrap();
    assert_eq!(sockets[0].time_wait.unwrap().age_ms, 0);
}

#[test]
fn rejects_what_is_not_records() {
    let mut sockets = Vec::new();
    assert!(parse_records(&[0; 71], 0, &mut sockets).is_err());
    let bad_family = record(3, 1, 0, 0, (&[], 1), (&[], 1), (0, 0), 0);
    assert!(parse_records(&bad_family, 0, &mut sockets).is_err());
    let bad_state = record(2, 99, 0, 0, (&[], 1), (&[], 1), (0, 0), 0);
    assert!(parse_records(&bad_state, 0, &mut sockets).is_err());
    assert!(sockets.is_empty());
    assert_eq!(parse_records(&[], 0, &mut sockets).unwrap(), None);
}

#[test]
fn a_trailer_ends_the_stream_and_bound_sockets_parse() {
    let mut sockets = Vec::new();
    let mut bytes = record(
        2,
        BOUND_INACTIVE,
        0,
        0,
        (&[0, 0, 0, 0], 40001),
        (&[0, 0, 0, 0], 0),
        (0, 0),
        9,
    );
    let mut trailer = vec![0u8; RECORD_LENGTH];
    trailer[2] = TRAILER_WALKED;
    bytes.extend(&trailer);
    assert_eq!(
        parse_records(&bytes, 0, &mut sockets).unwrap(),
        Some(TRAILER_WALKED)
    );
    assert_eq!(sockets.len(), 1);
    assert_eq!(sockets[0].state, SocketState::Tcp(TcpState::BoundInactive));
    assert_eq!(sockets[0].local.port(), 40001);
    // A trailer says the stream is whole: nothing may follow it.
    trailer.extend(record(2, 1, 0, 0, (&[], 1), (&[], 1), (0, 0), 0));
    assert!(parse_records(&trailer, 0, &mut sockets).is_err());
}

#[test]
fn tagged_records_carry_their_namespace() {
    let mut bytes = record(
        2,
        1,
        HAS_BUCKET,
        -1,
        (&[10, 0, 0, 1], 40001),
        (&[10, 0, 0, 9], 80),
        (0, 0),
        5,
    );
    bytes.extend(4_026_532_175u32.to_ne_bytes());
    bytes.extend([0; 4]);
    bytes.extend(record(
        2,
        BOUND_INACTIVE,
        0,
        0,
        (&[0, 0, 0, 0], 40002),
        (&[0, 0, 0, 0], 0),
        (0, 0),
        9,
    ));
    bytes.extend(4_026_531_833u32.to_ne_bytes());
    bytes.extend([0; 4]);
    let mut sockets = Vec::new();
    parse_tagged_records(&bytes, 0, &mut |netns, socket| {
        sockets.push((netns, *socket))
    })
    .unwrap();
    assert_eq!(sockets.len(), 2);
    assert_eq!(sockets[0].0, 4_026_532_175);
    assert_eq!(sockets[0].1.remote, "10.0.0.9:80".parse().unwrap());
    assert_eq!(sockets[0].1.binding, PortBinding::Connect);
    assert_eq!(sockets[1].0, 4_026_531_833);
    assert_eq!(
        sockets[1].1.state,
        SocketState::Tcp(TcpState::BoundInactive)
    );
    // A plain record is no tagged one.
    assert!(parse_tagged_records(&bytes[..RECORD_LENGTH], 0, &mut |_, _| {}).is_err());
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
