// SPDX-License-Identifier: GPL-2.0
//
// One walk of the host's TCP tables for every namespace that shares them.
//
// Unless `net.ipv4.tcp_child_ehash_entries` was set when it was created, a
// network namespace keeps its sockets in the host's tables. `iter/tcp` (and
// a netlink dump) walks the whole table for the few sockets of one
// namespace, so reading a hundred namespaces walks it a hundred times. This
// program walks it once, and tags each socket with its namespace: the
// inode of its namespace file, `sk_net` as the kernel records it.
//
// The tables are walked in parts, one part an iterator: the program is an
// `iter/bpf_map` one, whose iterator runs it for every BPF map on the host
// (where it does nothing) and then once more at the end, where it walks
// the next part. A part is `SLOTS_A_PART` slots of the connection table
// (established, TIME_WAIT and request sockets) and as large a share of the
// listening table's; `settings` index 4 holds the next part, which the
// loader sets to 0 before the first iterator. Each run writes an 8-byte
// marker to the iterator, and the sockets to the `bound` ring buffer, which
// the loader drains after every part: each read() returns within about a
// millisecond, and the ring holds what a part finds. The run after the last
// part walks the bind hash for sockets bound but neither listening nor
// connected (`walk_bind_hash`) and writes the trailer.
//
// (Map element iterators, which would run once a part without the maps,
// are refused on some kernels that take every other iterator.)
//
// Only the namespaces in `namespaces` are reported, each in its own range
// (listeners in any). Which table is walked is the calling thread's
// namespace's: the trailer says whether that is the host's, shared
// (`hashinfo->pernet` false), and markers say whether each part was walked
// to its end. The walks take no lock, as the kernel's own RCU lookups do:
// a socket that moves meanwhile may be missed, and each walk is bounded.
//
// Rebuild the committed object with `src/source/bpf/build.sh`.

// A walk of every namespace's sockets needs a larger ring than one
// namespace's bound sockets: it is drained after every few parts.
#define BOUND_RING_BYTES (4 * 1024 * 1024)

#include "tcp_tables.bpf.h"

// How many slots of the connection table a part walks: with the usual
// two sockets a slot or fewer, a millisecond's work.
#define SLOTS_A_PART 4096

// Where `settings` holds the next part to walk.
#define NEXT_PART_KEY 4

// The most steps the walk of one part takes: a slot or a socket each.
#define PART_STEPS (1 << 20)

// What each run writes to the iterator: a marker of kind MARKER_PART for
// a part, and one of kind MARKER_TRAILER after the last.
#define MARKER_PART 1
#define MARKER_TRAILER 2

// A part's flags.
#define PART_WALKED 1
#define PART_RING_FULL 2
// The kernel lacks what the walk reads (before Linux 6.1).
#define PART_UNSUPPORTED 4
// The socket layout is not one the walk reads at once.
#define PART_UNKNOWN_LAYOUT 8
// A socket of a chain could not be read: the rest of the chain was not.
#define PART_READ_FAILED 16
// The calling thread's namespace has a table of its own, not the host's.
#define PART_NOT_SHARED 32
// A run of the probe (SETTING_PROBE), on the host's table.
#define PART_SHARED 64
// In every probe's marker: the kernel names each namespace's UDP table
// (Linux 6.2+), so that the walk can read UDP sockets.
#define PART_READS_UDP 128

// Settings beside SETTING_* of `tcp_tables.bpf.h`: only say, in the first
// part's marker, whether the calling thread's namespace is on the host's
// table, and walk nothing.
#define SETTING_PROBE 8
// Walk the calling thread's namespace's UDP table too, for the namespaces
// in `namespaces` whose UDP sockets are asked for.
#define SETTING_READ_UDP 16

// Where the walk of a part stands: in a chain (`node`), or at the next
// slot of the connection table, then of the listening table.
struct tables_walk {
	__u64 slots;
	__u64 listening_slots;
	// 0 where UDP is not walked.
	__u64 udp_slots;
	__u64 node;
	struct namespace_cache cache;
	__u32 slot;
	__u32 slot_end;
	__u32 slot_size;
	__u32 chain_at;
	__u32 listening_start;
	__u32 listening_end;
	__u32 listening_slot_size;
	__u32 listening_chain_at;
	__u32 udp_start;
	__u32 udp_end;
	__u32 udp_slot_size;
	__u32 udp_chain_at;
	// 0: the connection table, 1: the listening table, 2: UDP.
	__u32 phase;
	__u32 flags;
	__u32 settings;
	__u32 port;
};

// The walk of a part under way, one a CPU. As the walk of the bind hash
// (`struct walk`), it lives in a map value so that the verifier checks
// each branch of a step once, whatever the cursor holds.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tables_walk);
} tables_walk_state SEC(".maps");

// How much of a socket is read at once: in every layout so far, all the
// common fields the walk needs lie within it.
#define SOCKET_WINDOW 112

// Reports the socket at `address` where its namespace is asked for and its
// port is in that namespace's range (a listener, on any port); returns the
// next node of its chain.
static __always_inline __u64 visit_socket(struct tables_walk *walk, __u64 address)
{
	__u32 next_at = bpf_core_field_offset(struct sock_common, skc_nulls_node.next);
	__u32 net_at = bpf_core_field_offset(struct sock_common, skc_net.net);
	__u32 state_at = bpf_core_field_offset(struct sock_common, skc_state);
	__u32 num_at = bpf_core_field_offset(struct sock_common, skc_num);
	__u32 dport_at = bpf_core_field_offset(struct sock_common, skc_dport);
	__u32 family_at = bpf_core_field_offset(struct sock_common, skc_family);
	__u32 dev_at = bpf_core_field_offset(struct sock_common, skc_bound_dev_if);
	__u32 daddr_at = bpf_core_field_offset(struct sock_common, skc_daddr);
	__u32 saddr_at = bpf_core_field_offset(struct sock_common, skc_rcv_saddr);
	__u32 daddr6_at = bpf_core_field_offset(struct sock_common, skc_v6_daddr);
	__u32 saddr6_at = bpf_core_field_offset(struct sock_common, skc_v6_rcv_saddr);
	struct tagged_record *tagged;
	struct record *record;
	__u8 window[SOCKET_WINDOW];
	__u16 local_port;
	__u32 range;
	__u8 state;
	__u64 next;

	if (next_at > SOCKET_WINDOW - 8 || net_at > SOCKET_WINDOW - 8 ||
	    state_at > SOCKET_WINDOW - 1 || num_at > SOCKET_WINDOW - 2 ||
	    dport_at > SOCKET_WINDOW - 2 || family_at > SOCKET_WINDOW - 2 ||
	    dev_at > SOCKET_WINDOW - 4 || daddr_at > SOCKET_WINDOW - 4 ||
	    saddr_at > SOCKET_WINDOW - 4 || daddr6_at > SOCKET_WINDOW - 16 ||
	    saddr6_at > SOCKET_WINDOW - 16) {
		walk->flags |= PART_UNKNOWN_LAYOUT;
		return 1;
	}
	if (bpf_probe_read_kernel(window, sizeof(window), (void *)address)) {
		walk->flags |= PART_READ_FAILED;
		return 1;
	}
	next = *(__u64 *)(window + next_at);
	range = namespace_range(&walk->cache, *(__u64 *)(window + net_at));
	if (!range)
		return next;
	state = window[state_at];
	local_port = *(__u16 *)(window + num_at);
	// UDP sockets of every port, as a netlink dump reports them.
	if (walk->phase == 2 && !walk->cache.udp)
		return next;
	if (walk->phase != 2 && state != TCP_LISTEN &&
	    (local_port < (range & 0xffff) || local_port > (range >> 16)))
		return next;
	// The record is written in the ring itself: a copy on the stack would
	// take more of it than Linux 6.1 allows with the callers' frames.
	tagged = bpf_ringbuf_reserve(&bound, sizeof(*tagged), 0);
	if (!tagged) {
		walk->flags |= PART_RING_FULL;
		return next;
	}
	__builtin_memset(tagged, 0, sizeof(*tagged));
	record = &tagged->record;
	record->state = state;
	record->local_port = local_port;
	if (walk->phase == 2)
		record->flags = RECORD_UDP;
	record->family = *(__u16 *)(window + family_at);
	record->remote_port = __builtin_bswap16(*(__u16 *)(window + dport_at));
	record->bound_dev_if = *(__s32 *)(window + dev_at);
	if (record->family == AF_INET6) {
		__builtin_memcpy(record->local, window + saddr6_at, 16);
		__builtin_memcpy(record->remote, window + daddr6_at, 16);
	} else {
		record->local[0] = *(__u32 *)(window + saddr_at);
		record->remote[0] = *(__u32 *)(window + daddr_at);
	}
	if (walk->phase == 2) {
		struct socket *socket = BPF_CORE_READ((struct sock *)address, sk_socket);

		if (socket)
			record->inode =
				BPF_CORE_READ((struct socket_alloc *)socket, vfs_inode.i_ino);
	} else {
		fill_detail((void *)address, record, walk->settings, walk->port);
	}
	tagged->netns = walk->cache.inum;
	bpf_ringbuf_submit(tagged, 0);
	return next;
}

// What each step of the walk of a part is handed: the walk, in its map
// value (see `struct walk_context`).
struct tables_walk_context {
	struct tables_walk *walk;
};

// One step of the walk of a part; returns 1 when it is done.
static long tables_step(__u32 index, struct tables_walk_context *context)
{
	struct tables_walk *walk = context->walk;

	if (walk->node) {
		// A chain of the TCP tables ends in an odd "nulls" value, one of
		// the UDP table in NULL. A socket is linked into either by the
		// same node (`skc_node` and `skc_nulls_node` share a union).
		if (walk->node & 1)
			walk->node = 0;
		else
			walk->node = visit_socket(
				walk, walk->node - bpf_core_field_offset(struct sock_common,
									 skc_nulls_node));
		return 0;
	}
	if (walk->slot >= walk->slot_end) {
		if (walk->phase == 0) {
			walk->phase = 1;
			walk->slots = walk->listening_slots;
			walk->slot = walk->listening_start;
			walk->slot_end = walk->listening_end;
			walk->slot_size = walk->listening_slot_size;
			walk->chain_at = walk->listening_chain_at;
			return 0;
		}
		if (walk->phase == 1 && walk->udp_slots) {
			walk->phase = 2;
			walk->slots = walk->udp_slots;
			walk->slot = walk->udp_start;
			walk->slot_end = walk->udp_end;
			walk->slot_size = walk->udp_slot_size;
			walk->chain_at = walk->udp_chain_at;
			return 0;
		}
		walk->flags |= PART_WALKED;
		return 1;
	}
	walk->node = read_pointer(walk->slots + (__u64)walk->slot * walk->slot_size + walk->chain_at);
	walk->slot++;
	return 0;
}

// The share `index` of `count` slots in `parts` parts: [*start, *end).
static __always_inline void share(__u32 index, __u32 parts, __u32 count, __u32 *start,
				  __u32 *end)
{
	__u32 each = parts ? count / parts + (count % parts != 0) : 0;
	__u64 first = (__u64)index * each;
	__u64 last = first + each;

	*start = first < count ? first : count;
	*end = last < count ? last : count;
}

// Walks part `index` of `parts` of the TCP tables of `hashinfo` and of the
// UDP table `udp` (none: 0), reading inodes as the SETTING_* `settings`
// say; returns the part's flags. A function of its own, so that its stack
// and that of the bind hash's walk are not both on the stack of the
// program.
static __noinline __u32 walk_part(struct inet_hashinfo *hashinfo, struct udp_table *udp,
				  __u32 index, __u32 parts, __u32 settings_flags)
{
	__u32 key = 0;
	__u32 port_key = 2;
	struct tables_walk *walk = bpf_map_lookup_elem(&tables_walk_state, &key);
	__u32 *port = bpf_map_lookup_elem(&settings, &port_key);
	__u32 ehash_slots = BPF_CORE_READ(hashinfo, ehash_mask) + 1;
	struct tables_walk_context context;

	if (!walk || !port)
		return PART_UNSUPPORTED;
	__builtin_memset(walk, 0, sizeof(*walk));
	walk->settings = settings_flags;
	walk->port = *port;
	walk->slots = (__u64)BPF_CORE_READ(hashinfo, ehash);
	walk->slot_size = bpf_core_type_size(struct inet_ehash_bucket);
	walk->chain_at = bpf_core_field_offset(struct inet_ehash_bucket, chain.first);
	share(index, parts, ehash_slots, &walk->slot, &walk->slot_end);
	walk->listening_slots = (__u64)BPF_CORE_READ(hashinfo, lhash2);
	walk->listening_slot_size = bpf_core_type_size(struct inet_listen_hashbucket);
	walk->listening_chain_at =
		bpf_core_field_offset(struct inet_listen_hashbucket, nulls_head.first);
	share(index, parts, BPF_CORE_READ(hashinfo, lhash2_mask) + 1, &walk->listening_start,
	      &walk->listening_end);
	if (udp) {
		walk->udp_slots = (__u64)BPF_CORE_READ(udp, hash);
		walk->udp_slot_size = bpf_core_type_size(struct udp_hslot);
		walk->udp_chain_at = bpf_core_field_offset(struct udp_hslot, head.first);
		share(index, parts, BPF_CORE_READ(udp, mask) + 1, &walk->udp_start,
		      &walk->udp_end);
	}
	context.walk = walk;
	bpf_loop(PART_STEPS, tables_step, &context, 0);
	return walk->flags;
}

// The walk of the bind hash for every namespace in `namespaces`, in a
// function of its own for the same reason.
static __noinline __u32 walk_every_bind_hash(void)
{
	return walk_bind_hash(0, 1);
}

SEC("iter/bpf_map")
int walk_tables(struct bpf_iter__bpf_map *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct seq_file *seq = ctx->meta->seq;
	struct marker marker = {};
	struct inet_hashinfo *hashinfo;
	struct udp_table *udp = 0;
	__u32 next_key = NEXT_PART_KEY;
	__u32 flags_key = 1;
	__u32 ehash_slots;
	__u32 parts;
	__u32 *flags;
	__u32 *next;

	// Every map on the host, before the run that walks.
	if (ctx->map)
		return 0;
	marker.kind = MARKER_PART;
	flags = bpf_map_lookup_elem(&settings, &flags_key);
	next = bpf_map_lookup_elem(&settings, &next_key);
	if (!flags || !next ||
	    !bpf_core_field_exists(struct inet_timewait_death_row, hashinfo) ||
	    !bpf_core_field_exists(struct inet_hashinfo, pernet) ||
	    !bpf_core_field_exists(struct inet_listen_hashbucket, nulls_head)) {
		marker.flags = PART_UNSUPPORTED;
		bpf_seq_write(seq, &marker, sizeof(marker));
		return 0;
	}
	if (bpf_core_field_exists(struct netns_ipv4, udp_table)) {
		marker.flags = PART_READS_UDP;
		if (*flags & SETTING_READ_UDP)
			udp = BPF_CORE_READ(task, nsproxy, net_ns, ipv4.udp_table);
	}
	hashinfo = BPF_CORE_READ(task, nsproxy, net_ns, ipv4.tcp_death_row.hashinfo);
	if (!hashinfo || BPF_CORE_READ(hashinfo, pernet)) {
		marker.flags |= PART_NOT_SHARED;
		bpf_seq_write(seq, &marker, sizeof(marker));
		return 0;
	}
	if (*flags & SETTING_PROBE) {
		marker.flags |= PART_SHARED;
		bpf_seq_write(seq, &marker, sizeof(marker));
		return 0;
	}
	marker.flags = 0;
	ehash_slots = BPF_CORE_READ(hashinfo, ehash_mask) + 1;
	parts = ehash_slots / SLOTS_A_PART + (ehash_slots % SLOTS_A_PART != 0);
	marker.index = *next;
	if (marker.index >= parts) {
		marker.kind = MARKER_TRAILER;
		if (*flags & SETTING_WALK_BIND_HASH)
			marker.flags = walk_every_bind_hash();
		bpf_seq_write(seq, &marker, sizeof(marker));
		return 0;
	}
	*next = marker.index + 1;
	marker.flags = walk_part(hashinfo, udp, marker.index, parts, *flags);
	bpf_seq_write(seq, &marker, sizeof(marker));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
