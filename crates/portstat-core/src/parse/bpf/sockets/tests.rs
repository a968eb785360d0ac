//! Unit tests of `sockets`, on records built at the layout's offsets.

use super::*;
use crate::parse::bpf::FieldsMut;

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
    let mut bytes = vec![0u8; record::SIZE];
    let mut fields = FieldsMut(&mut bytes);
    fields.put(record::family, &[family]);
    fields.put(record::state, &[state]);
    fields.put(record::flags, &[flags]);
    fields.put(record::fastreuse, &[fastreuse as u8]);
    fields.put(record::fastreuseport, &[-1i8 as u8]);
    fields.put(record::local_port, &local.1.to_ne_bytes());
    fields.put(record::remote_port, &remote.1.to_ne_bytes());
    fields.put(record::bound_dev_if, &1i32.to_ne_bytes());
    fields.put(record::queue_waiting, &3u32.to_ne_bytes());
    fields.put(record::queue_limit, &128u32.to_ne_bytes());
    fields.put(record::tw_entry_stamp, &tw.0.to_ne_bytes());
    fields.put(record::tw_ts_recent_stamp, &tw.1.to_ne_bytes());
    fields.put(record::inode, &inode.to_ne_bytes());
    fields.put(record::local, local.0);
    fields.put(record::remote, remote.0);
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
    let reuse = crate::model::TimeWaitReuse {
        mode: 1,
        ..crate::model::TimeWaitReuse::default()
    };
    for (stamp, reusable) in [(99, true), (100, false)] {
        assert_eq!(
            crate::rules::tcp_twsk_unique(&at(stamp, 100_400), &reuse),
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
            crate::rules::tcp_twsk_unique(&socket, &reuse),
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
    let mut trailer = vec![0u8; record::SIZE];
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
    assert!(parse_tagged_records(&bytes[..record::SIZE], 0, &mut |_, _| {}).is_err());
}
