// SPDX-License-Identifier: GPL-2.0
//
// What the programs write for the exporter to read: records, map keys and
// map values, in native byte order but for addresses, which stay in network
// order. The exporter declares the same layouts once, in
// `crates/portstat-core/src/parse/bpf.rs`, and reads at those offsets: the
// assertions below make clang refuse a struct that no longer has them, and
// a test of the exporter (`the_c_records_assert_the_cores_layouts`) holds
// these assertions and the core's layouts to each other, field by field.

#ifndef RECORDS_BPF_H
#define RECORDS_BPF_H

#include <linux/types.h>
#include <stddef.h>

#define ASSERT_AT(type, field, offset) \
	_Static_assert(offsetof(struct type, field) == offset, #type "." #field " moved")
#define ASSERT_SIZE(type, size) \
	_Static_assert(sizeof(struct type) == size, #type " is not " #size " bytes")

// One socket: `iter/tcp`'s output, and the walk of shared tables'.
struct record {
	__u8 family;
	__u8 state;
	__u8 flags;
	__u8 pad;
	__s8 fastreuse;
	__s8 fastreuseport;
	__u16 local_port;
	__u16 remote_port;
	__u16 pad2;
	__s32 bound_dev_if;
	__u32 queue_waiting;
	__u32 queue_limit;
	__u32 tw_entry_stamp;
	__s32 tw_ts_recent_stamp;
	__u64 inode;
	__u32 local[4];
	__u32 remote[4];
};
ASSERT_SIZE(record, 72);
ASSERT_AT(record, family, 0);
ASSERT_AT(record, state, 1);
ASSERT_AT(record, flags, 2);
ASSERT_AT(record, fastreuse, 4);
ASSERT_AT(record, fastreuseport, 5);
ASSERT_AT(record, local_port, 6);
ASSERT_AT(record, remote_port, 8);
ASSERT_AT(record, bound_dev_if, 12);
ASSERT_AT(record, queue_waiting, 16);
ASSERT_AT(record, queue_limit, 20);
ASSERT_AT(record, tw_entry_stamp, 24);
ASSERT_AT(record, tw_ts_recent_stamp, 28);
ASSERT_AT(record, inode, 32);
ASSERT_AT(record, local, 40);
ASSERT_AT(record, remote, 56);

// A record with the namespace of its socket, for walks of a table that
// several namespaces share.
struct tagged_record {
	struct record record;
	__u32 netns;
	__u32 pad;
};
ASSERT_SIZE(tagged_record, 80);
ASSERT_AT(tagged_record, record, 0);
ASSERT_AT(tagged_record, netns, 72);

// What the walk of shared tables writes to its iterator at the end of each
// part, and at its end.
struct marker {
	__u8 kind;
	__u8 flags;
	__u16 pad;
	__u32 index;
};
ASSERT_SIZE(marker, 8);
ASSERT_AT(marker, kind, 0);
ASSERT_AT(marker, flags, 1);
ASSERT_AT(marker, index, 4);

// A namespace a walk of shared tables reports, as the exporter lists it:
// its ephemeral range (as index 0 of `settings`), and whether its UDP
// sockets are read too.
struct namespace_entry {
	__u32 range;
	__u32 udp;
};
ASSERT_SIZE(namespace_entry, 8);
ASSERT_AT(namespace_entry, range, 0);
ASSERT_AT(namespace_entry, udp, 4);

// One socket a process's descriptor holds: `iter/task_file`'s output.
struct owner_record {
	__u32 tgid;
	__u32 netns;
	__u64 inode;
	__s64 file_refs;
	__u16 port;
	__u8 family;
	__u8 state;
	__u8 protocol;
	__u8 flags;
	__u16 pad;
	char comm[16];
};
ASSERT_SIZE(owner_record, 48);
ASSERT_AT(owner_record, tgid, 0);
ASSERT_AT(owner_record, netns, 4);
ASSERT_AT(owner_record, inode, 8);
ASSERT_AT(owner_record, file_refs, 16);
ASSERT_AT(owner_record, port, 24);
ASSERT_AT(owner_record, family, 26);
ASSERT_AT(owner_record, state, 27);
ASSERT_AT(owner_record, protocol, 28);
ASSERT_AT(owner_record, flags, 29);
ASSERT_AT(owner_record, comm, 32);

// Failures, or connects, of one process toward one destination.
struct failure_key {
	__u32 netns;
	__u8 kind;
	__u8 protocol;
	__u8 family;
	__u8 pad;
	__u16 remote_port;
	__u16 pad2;
	__u32 pad3;
	__u64 cookie;
	__u8 local[16];
	__u8 remote[16];
	char comm[16];
};
ASSERT_SIZE(failure_key, 72);
ASSERT_AT(failure_key, netns, 0);
ASSERT_AT(failure_key, kind, 4);
ASSERT_AT(failure_key, protocol, 5);
ASSERT_AT(failure_key, family, 6);
ASSERT_AT(failure_key, remote_port, 8);
ASSERT_AT(failure_key, cookie, 16);
ASSERT_AT(failure_key, local, 24);
ASSERT_AT(failure_key, remote, 40);
ASSERT_AT(failure_key, comm, 56);

struct failure_value {
	__u64 count;
	__u32 last_tgid;
	// 1 once calls under the key came from more than one process: the
	// last one's tgid is then one of several.
	__u32 several;
};
ASSERT_SIZE(failure_value, 16);
ASSERT_AT(failure_value, count, 0);
ASSERT_AT(failure_value, last_tgid, 8);
ASSERT_AT(failure_value, several, 12);

// Counts of one namespace, by kind and protocol.
struct total_key {
	__u32 netns;
	__u8 kind;
	__u8 protocol;
	__u16 pad;
	__u64 cookie;
};
ASSERT_SIZE(total_key, 16);
ASSERT_AT(total_key, netns, 0);
ASSERT_AT(total_key, kind, 4);
ASSERT_AT(total_key, protocol, 5);
ASSERT_AT(total_key, cookie, 8);

// A connection, which the exporter looks up by its own sockets.
struct name_key {
	__u32 netns;
	__u8 family;
	__u8 pad;
	__u16 local_port;
	__u16 remote_port;
	__u16 pad2;
	__u8 local[16];
	__u8 remote[16];
	__u32 pad3;
	__u64 cookie;
};
ASSERT_SIZE(name_key, 56);
ASSERT_AT(name_key, netns, 0);
ASSERT_AT(name_key, family, 4);
ASSERT_AT(name_key, local_port, 6);
ASSERT_AT(name_key, remote_port, 8);
ASSERT_AT(name_key, local, 12);
ASSERT_AT(name_key, remote, 28);
ASSERT_AT(name_key, cookie, 48);

// The process that closed a connection.
struct name_value {
	__u32 tgid;
	char comm[16];
	__u32 pad;
	// bpf_ktime_get_ns() when recorded: CLOCK_MONOTONIC.
	__u64 stamp;
};
ASSERT_SIZE(name_value, 32);
ASSERT_AT(name_value, tgid, 0);
ASSERT_AT(name_value, comm, 4);
ASSERT_AT(name_value, stamp, 24);

#endif
