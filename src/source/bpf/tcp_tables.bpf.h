// SPDX-License-Identifier: GPL-2.0
//
// What the TCP programs share: their settings, and the walk of the bind hash
// for sockets bound but neither listening nor connected. The kernel's
// structures they read are in `kernel.bpf.h`, the records they write in
// `records.bpf.h`. Included by `tcp_ports.bpf.c` (one namespace, through
// `iter/tcp`) and `shared_tables.bpf.c` (every namespace on a shared table).

#ifndef TCP_TABLES_BPF_H
#define TCP_TABLES_BPF_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "kernel.bpf.h"
#include "records.bpf.h"

#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12
#define TCP_BOUND_INACTIVE 13
#define AF_INET6 10

#define RECORD_HAS_BUCKET 1
#define RECORD_HAS_ENTRY_STAMP 2
#define RECORD_HAS_FILE 4
// A UDP socket (the walk of shared tables only): its state is TCP_CLOSE
// unconnected, TCP_ESTABLISHED connected.
#define RECORD_UDP 8

// The trailer: a record of family 0 whose flags say how the walk of the
// bind hash went.
#define TRAILER_WALKED 1
#define TRAILER_RING_FULL 2
#define TRAILER_TOO_LONG 4

// The most steps the walk of the bind hash takes: every slot, bucket, second
// level bucket and owner is one step. bpf_loop allows 1 << 23.
#define WALK_STEPS (1 << 23)

// Index 0: the ephemeral range, first port in the low 16 bits, last port in
// the high 16 bits. Index 1: SETTING_* flags. Index 2: a port whose sockets'
// inodes are always read (0: none). Written by the loader before each pass.
// Index 3: unused. Index 4 and on: for the program that includes this
// (`shared_tables.bpf.c`).
#define SETTING_WALK_BIND_HASH 1
// Read each socket's inode, which only finding its owner by inode needs:
// two more cache misses a socket.
#define SETTING_READ_INODES 2
// Say only whether a file holds the socket (RECORD_HAS_FILE), one cache
// miss, and read the inode of listeners and of sockets on the port of
// index 2 alone: when owners come from the owners program, which counts
// the rest by port.
#define SETTING_MARK_FILES 4

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

// The namespaces a walk of shared tables reports, by the inode of their
// namespace file. Filled by the loader before a walk; empty for a walk of
// one namespace.
#define NAMESPACES_MAX 16384
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NAMESPACES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct namespace_entry);
} namespaces SEC(".maps");

// Bound-but-inactive sockets found in the bind hash, as records (tagged
// records in a walk of a shared table).
#ifndef BOUND_RING_BYTES
#define BOUND_RING_BYTES (256 * 1024)
#endif
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BOUND_RING_BYTES);
} bound SEC(".maps");

// How many slots of the bind hash one read takes, where a slot is the
// usual 16 bytes (a spinlock and a list head).
#define SLOTS_AT_ONCE 8
#define SLOT_SIZE 16

// The namespace last looked up in `namespaces`: sockets and buckets of
// one namespace tend to follow each other.
struct namespace_cache {
	__u64 net;
	__u32 inum;
	// Its range, 0 for a namespace not asked for.
	__u32 range;
	// Whether its UDP sockets are asked for.
	__u32 udp;
	__u32 pad;
};

// The range of the namespace `net` in `namespaces`, 0 where it is not
// there, with its inode and whether its UDP sockets are asked for in
// `cache`.
static __always_inline __u32 namespace_range(struct namespace_cache *cache, __u64 net)
{
	struct namespace_entry *entry;
	__u32 inum = 0;

	if (net == cache->net)
		return cache->range;
	bpf_probe_read_kernel(&inum, sizeof(inum),
			      (void *)net + bpf_core_field_offset(struct net, ns.inum));
	entry = bpf_map_lookup_elem(&namespaces, &inum);
	cache->net = net;
	cache->inum = inum;
	cache->range = entry ? entry->range : 0;
	cache->udp = entry ? entry->udp : 0;
	return cache->range;
}

// Where the walk of the bind hash stands: at most one of `owner`, `second`
// and `bucket` is followed at each step, then the next slot.
//
// It lives in a map value (`bind_walk`), not on the stack. The verifier
// tracks a stack value exactly, so a walk kept there gives it a new state
// for every value its cursor, flags and pending slots take: newer
// verifiers, which check a `bpf_loop` callback until its states converge,
// spent the whole budget of a million instructions on it. What a step
// reads from a map value is a number it knows nothing of, so one check of
// each branch covers every step. That also keeps every branch alive on the
// verifiers that check a callback only once, from the state at the call
// (Debian's 6.1), which would remove as dead each branch a walk starting
// from known constants does not take at first.
struct walk {
	__u64 slots;
	__u32 slot_size;
	__u32 slot_count;
	__u32 slot;
	__u32 range;
	// The namespace walked, or 0 for every one in `namespaces`, whose
	// records are tagged with it.
	__u64 net;
	struct namespace_cache cache;
	// The namespace of the bucket whose owners are followed.
	__u32 owner_netns;
	__u64 bucket;
	__u64 second;
	__u64 owner;
	__u32 flags;
	// Whether a bucket's owners hang off it (before Linux 6.8) rather
	// than off its second-level buckets.
	__u32 owners_in_bucket;
	// Chains of the last read of several slots, from `pending_next` on
	// not yet followed.
	__u32 pending_next;
	__u64 pending[SLOTS_AT_ONCE];
};

// The walk of the bind hash under way, one a CPU: a program runs on one
// CPU from start to end, and the exporter reads one iterator of a loaded
// object at a time.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct walk);
} bind_walk SEC(".maps");

static __always_inline __u64 read_pointer(__u64 address)
{
	__u64 value = 0;

	bpf_probe_read_kernel(&value, sizeof(value), (void *)address);
	return value;
}

// One owner of a bind bucket (of a second-level bucket since Linux 6.8): a
// bound socket, written out when it is neither listening nor connected.
static __always_inline void visit_owner(struct walk *walk)
{
	struct sock_common *common =
		(void *)(walk->owner - bpf_core_field_offset(struct sock_common, skc_bind_node));
	struct tagged_record tagged = {};
	struct record *record = &tagged.record;
	struct socket *socket;

	walk->owner = read_pointer(walk->owner + bpf_core_field_offset(struct hlist_node, next));
	if (BPF_CORE_READ(common, skc_state) != TCP_CLOSE || !BPF_CORE_READ(common, skc_num))
		return;
	record->family = BPF_CORE_READ(common, skc_family);
	record->state = TCP_BOUND_INACTIVE;
	record->local_port = BPF_CORE_READ(common, skc_num);
	record->bound_dev_if = BPF_CORE_READ(common, skc_bound_dev_if);
	record->fastreuse = 0;
	record->fastreuseport = 0;
	if (record->family == AF_INET6)
		BPF_CORE_READ_INTO(&record->local, common, skc_v6_rcv_saddr);
	else
		record->local[0] = BPF_CORE_READ(common, skc_rcv_saddr);
	socket = BPF_CORE_READ((struct sock *)common, sk_socket);
	if (socket)
		record->inode = BPF_CORE_READ((struct socket_alloc *)socket, vfs_inode.i_ino);
	tagged.netns = walk->owner_netns;
	if (bpf_ringbuf_output(&bound, &tagged, walk->net ? sizeof(*record) : sizeof(tagged), 0))
		walk->flags |= TRAILER_RING_FULL;
}

// What the walk reads of a bind bucket: `second` is the head of its
// second-level buckets, or of its owners before Linux 6.8.
struct bucket_fields {
	__u64 net;
	__u64 next;
	__u64 second;
	__u16 port;
	__s8 fastreuse;
	__s8 fastreuseport;
};

// How much of a bind bucket is read at once: in every layout so far, all
// the walk needs lies within it, and one read of a cache line or two costs
// less than six small ones.
#define BUCKET_WINDOW 96

static __always_inline int read_bucket(__u64 address, struct bucket_fields *bucket)
{
	__u32 net_at = bpf_core_field_offset(struct inet_bind_bucket, ib_net.net);
	__u32 next_at = bpf_core_field_offset(struct inet_bind_bucket, node.next);
	__u32 second_at;
	__u32 port_at = bpf_core_field_offset(struct inet_bind_bucket, port);
	__u32 fastreuse_at = bpf_core_field_offset(struct inet_bind_bucket, fastreuse);
	__u32 fastreuseport_at = bpf_core_field_offset(struct inet_bind_bucket, fastreuseport);
	__u8 window[BUCKET_WINDOW];

	// Each offset is relocated only on the kernels that have its field:
	// elsewhere its branch is never taken.
	if (bpf_core_field_exists(struct inet_bind_bucket___owners, owners))
		second_at = bpf_core_field_offset(struct inet_bind_bucket___owners, owners.first);
	else
		second_at = bpf_core_field_offset(struct inet_bind_bucket, bhash2.first);
	if (net_at > BUCKET_WINDOW - 8 || next_at > BUCKET_WINDOW - 8 ||
	    second_at > BUCKET_WINDOW - 8 || port_at > BUCKET_WINDOW - 2 ||
	    fastreuse_at > BUCKET_WINDOW - 1 || fastreuseport_at > BUCKET_WINDOW - 1) {
		// A layout this program does not know: field by field.
		struct inet_bind_bucket *tb = (void *)address;

		bucket->net = (__u64)BPF_CORE_READ(tb, ib_net.net);
		bucket->next = (__u64)BPF_CORE_READ(tb, node.next);
		if (bpf_core_field_exists(struct inet_bind_bucket___owners, owners))
			bucket->second = (__u64)BPF_CORE_READ(
				(struct inet_bind_bucket___owners *)tb, owners.first);
		else
			bucket->second = (__u64)BPF_CORE_READ(tb, bhash2.first);
		bucket->port = BPF_CORE_READ(tb, port);
		bucket->fastreuse = BPF_CORE_READ(tb, fastreuse);
		bucket->fastreuseport = BPF_CORE_READ(tb, fastreuseport);
		return 0;
	}
	if (bpf_probe_read_kernel(window, sizeof(window), (void *)address))
		return -1;
	bucket->net = *(__u64 *)(window + net_at);
	bucket->next = *(__u64 *)(window + next_at);
	bucket->second = *(__u64 *)(window + second_at);
	bucket->port = *(__u16 *)(window + port_at);
	bucket->fastreuse = *(__s8 *)(window + fastreuse_at);
	bucket->fastreuseport = *(__s8 *)(window + fastreuseport_at);
	return 0;
}

// What each step of the walk of the bind hash is handed: the walk, in its
// map value, looked up once rather than at every step (a helper call a step
// wherever the kernel does not inline the lookup).
struct walk_context {
	struct walk *walk;
};

// One step of the walk of the bind hash; returns 1 when it is done.
static long walk_step(__u32 index, struct walk_context *context)
{
	struct walk *walk = context->walk;

	if (walk->owner) {
		visit_owner(walk);
		return 0;
	}
	// Second-level buckets are followed only where buckets hang off the
	// bucket (Linux 6.8 and later): elsewhere this is no step of the walk.
	if (walk->second && bpf_core_field_exists(struct inet_bind2_bucket, bhash_node)) {
		struct inet_bind2_bucket *second =
			(void *)(walk->second -
				 bpf_core_field_offset(struct inet_bind2_bucket, bhash_node));

		walk->owner = (__u64)BPF_CORE_READ(second, owners.first);
		walk->second = (__u64)BPF_CORE_READ(second, bhash_node.next);
		return 0;
	}
	if (walk->bucket) {
		struct bucket_fields bucket;

		if (read_bucket(walk->bucket - bpf_core_field_offset(struct inet_bind_bucket, node),
				&bucket)) {
			walk->bucket = 0;
			return 0;
		}
		walk->bucket = bucket.next;
		// Only a bucket bind() made can hold a bound socket that makes
		// its port exclusive; connect() makes the rest.
		if (bucket.fastreuse < 0 && bucket.fastreuseport < 0)
			return 0;
		__u32 range = walk->range;

		if (!walk->net) {
			range = namespace_range(&walk->cache, bucket.net);
			walk->owner_netns = walk->cache.inum;
		} else if (bucket.net != walk->net) {
			return 0;
		}
		if (range && bucket.port >= (range & 0xffff) && bucket.port <= (range >> 16)) {
			if (walk->owners_in_bucket)
				walk->owner = bucket.second;
			else
				walk->second = bucket.second;
		}
		return 0;
	}
	if (walk->pending_next < SLOTS_AT_ONCE) {
		walk->bucket = walk->pending[walk->pending_next & (SLOTS_AT_ONCE - 1)];
		walk->pending_next++;
		return 0;
	}
	if (walk->slot >= walk->slot_count) {
		walk->flags |= TRAILER_WALKED;
		return 1;
	}
	__u32 chain_at = bpf_core_field_offset(struct inet_bind_hashbucket, chain.first);
	__u64 slots = walk->slots + (__u64)walk->slot * walk->slot_size;

	if (walk->slot_size == SLOT_SIZE && chain_at % 8 == 0 && chain_at < SLOT_SIZE &&
	    walk->slot + SLOTS_AT_ONCE <= walk->slot_count) {
		// Most slots are empty: read several at once, keep the chains.
		__u64 window[SLOTS_AT_ONCE * SLOT_SIZE / 8];

		walk->slot += SLOTS_AT_ONCE;
		if (bpf_probe_read_kernel(window, sizeof(window), (void *)slots))
			return 0;
		// Empty chains are kept too, and skipped one step each: a
		// branch per slot here would make the program too long to verify.
		for (int i = 0; i < SLOTS_AT_ONCE; i++)
			walk->pending[i] =
				window[(i * SLOT_SIZE + chain_at) / 8 & (SLOTS_AT_ONCE * 2 - 1)];
		walk->pending_next = 0;
		return 0;
	}
	walk->bucket = read_pointer(slots + chain_at);
	walk->slot++;
	return 0;
}

// Walks the bind hash for bound-but-inactive sockets in the range, without
// its locks, as the kernel's own RCU lookups of it do: a bucket that goes
// away meanwhile is missed, and the walk is bounded. It reads both layouts,
// owners off the bucket (Linux 6.1 to 6.7) and off its second-level buckets
// (6.8 and later); it needs each namespace's `hashinfo` (6.1 and later), and
// elsewhere the trailer says it did not run. With `every_namespace`, it
// reports the sockets of every namespace in `namespaces` on the calling
// thread's table, each in its own range, rather than those of the calling
// thread's namespace in `range`.
static __always_inline __u32 walk_bind_hash(__u32 range, int every_namespace)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct walk_context context;
	struct inet_hashinfo *hashinfo;
	struct walk *walk;
	struct net *net;
	__u32 key = 0;

	if (!bpf_core_field_exists(struct inet_timewait_death_row, hashinfo))
		return 0;
	if (!bpf_core_field_exists(struct inet_bind_bucket___owners, owners) &&
	    !bpf_core_field_exists(struct inet_bind_bucket, bhash2))
		return 0;
	// The iterator reads the namespace of the thread that reads it.
	net = BPF_CORE_READ(task, nsproxy, net_ns);
	hashinfo = BPF_CORE_READ(net, ipv4.tcp_death_row.hashinfo);
	walk = bpf_map_lookup_elem(&bind_walk, &key);
	if (!hashinfo || !walk)
		return 0;
	__builtin_memset(walk, 0, sizeof(*walk));
	walk->owners_in_bucket = bpf_core_field_exists(struct inet_bind_bucket___owners, owners);
	walk->pending_next = SLOTS_AT_ONCE;
	walk->slots = (__u64)BPF_CORE_READ(hashinfo, bhash);
	walk->slot_count = BPF_CORE_READ(hashinfo, bhash_size);
	walk->slot_size = bpf_core_type_size(struct inet_bind_hashbucket);
	walk->net = every_namespace ? 0 : (__u64)net;
	walk->range = range;
	context.walk = walk;
	bpf_loop(WALK_STEPS, walk_step, &context, 0);
	if (!(walk->flags & TRAILER_WALKED))
		walk->flags |= TRAILER_TOO_LONG;
	return walk->flags;
}

// Fills in what a record says beyond the addresses, from the socket
// `common` of state `record->state` (as sock_diag numbers it) on
// `record->local_port`: TIME_WAIT detail, the listen queue, the inode as
// `flags` (SETTING_*) ask with `port` the kept port, and the port's bind
// bucket.
//
// The sockets of these tables are TCP sockets: TIME_WAIT ones are
// tcp_timewait_socks, request sockets are request_socks, the rest are full
// tcp_socks. The casts are read with probe reads, which fail safe, rather
// than with the bpf_skc_to_* helpers, whose checks would touch another
// cache line of every socket.
static __always_inline void fill_detail(struct sock_common *common, struct record *record,
					__u32 flags, __u32 port)
{
	struct inet_bind_bucket *bucket = 0;

	if (record->state == TCP_TIME_WAIT) {
		struct tcp_timewait_sock *tw = (void *)common;

		record->state = BPF_CORE_READ(tw, tw_sk.tw_substate);
		record->tw_ts_recent_stamp = BPF_CORE_READ(tw, tw_ts_recent_stamp);
		if (bpf_core_field_exists(tw->tw_sk.tw_entry_stamp)) {
			record->tw_entry_stamp = BPF_CORE_READ(tw, tw_sk.tw_entry_stamp);
			record->flags |= RECORD_HAS_ENTRY_STAMP;
		}
		bucket = BPF_CORE_READ(tw, tw_sk.tw_tb);
	} else if (record->state != TCP_NEW_SYN_RECV) {
		struct tcp_sock *tp = (void *)common;
		struct sock *sk = (void *)common;
		struct socket *socket;

		bucket = BPF_CORE_READ(tp, inet_conn.icsk_bind_hash);
		if (record->state == TCP_LISTEN) {
			record->queue_waiting = BPF_CORE_READ(sk, sk_ack_backlog);
			record->queue_limit = BPF_CORE_READ(sk, sk_max_ack_backlog);
		}
		if (flags & (SETTING_READ_INODES | SETTING_MARK_FILES)) {
			socket = BPF_CORE_READ(sk, sk_socket);
			if (socket && ((flags & SETTING_READ_INODES) || record->state == TCP_LISTEN ||
				       (port && port == record->local_port)))
				record->inode = BPF_CORE_READ((struct socket_alloc *)socket,
							      vfs_inode.i_ino);
			if (socket)
				record->flags |= RECORD_HAS_FILE;
		}
	}
	if (bucket) {
		// The two fields sit side by side in every kernel: one read.
		if (bpf_core_field_offset(struct inet_bind_bucket, fastreuseport) ==
		    bpf_core_field_offset(struct inet_bind_bucket, fastreuse) + 1) {
			bpf_probe_read_kernel(&record->fastreuse, 2,
					      (void *)bucket + bpf_core_field_offset(
								struct inet_bind_bucket, fastreuse));
		} else {
			record->fastreuse = BPF_CORE_READ(bucket, fastreuse);
			record->fastreuseport = BPF_CORE_READ(bucket, fastreuseport);
		}
		record->flags |= RECORD_HAS_BUCKET;
	}
}

#endif
