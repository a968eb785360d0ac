// SPDX-License-Identifier: GPL-2.0
//
// An `iter/tcp` program that writes one fixed-size record for every TCP
// socket of the network namespace that opened the iterator: listeners
// anywhere, every other socket whose local port is inside the range held in
// `settings`. Each record carries what sock_diag cannot tell: whether the
// port's bind bucket was made by bind() (its fastreuse fields), and for
// TIME_WAIT when it began and whether it holds a peer timestamp.
//
// Nothing is decided here that Rust can decide: the fields are copied as the
// kernel holds them, and `src/source/bpf.rs` reads them. Structures are
// declared with only the fields used; CO-RE relocates their offsets against
// the running kernel's BTF when the program is loaded.
//
// Rebuild the committed object with `src/source/bpf/build.sh`.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12
#define AF_INET6 10

#define RECORD_HAS_BUCKET 1
#define RECORD_HAS_ENTRY_STAMP 2

struct in6_addr {
	union {
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	int skc_bound_dev_if;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct socket {
	struct file *file;
} __attribute__((preserve_access_index));

struct sock {
	struct socket *sk_socket;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
} __attribute__((preserve_access_index));

struct inet_bind_bucket {
	signed char fastreuse;
	signed char fastreuseport;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	struct inet_bind_bucket *icsk_bind_hash;
} __attribute__((preserve_access_index));

struct tcp_sock {
	struct inet_connection_sock inet_conn;
} __attribute__((preserve_access_index));

struct inet_timewait_sock {
	unsigned char tw_substate;
	__u32 tw_entry_stamp;
	struct inet_bind_bucket *tw_tb;
} __attribute__((preserve_access_index));

struct tcp_timewait_sock {
	struct inet_timewait_sock tw_sk;
	int tw_ts_recent_stamp;
} __attribute__((preserve_access_index));

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

// The record layout `src/source/bpf.rs` parses: 72 bytes, native byte order
// but for the addresses, which stay in network order.
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

// Index 0: the ephemeral range, first port in the low 16 bits, last port in
// the high 16 bits. Written by the loader before each pass.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

SEC("iter/tcp")
int dump_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *common = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	struct inet_bind_bucket *bucket = 0;
	struct record record = {};
	__u32 key = 0;
	__u32 *range;

	if (!common)
		return 0;
	range = bpf_map_lookup_elem(&settings, &key);
	if (!range)
		return 0;
	record.state = common->skc_state;
	record.local_port = common->skc_num;
	if (record.state != TCP_LISTEN &&
	    (record.local_port < (*range & 0xffff) || record.local_port > (*range >> 16)))
		return 0;

	record.family = common->skc_family;
	record.remote_port = __builtin_bswap16(common->skc_dport);
	record.bound_dev_if = common->skc_bound_dev_if;
	if (record.family == AF_INET6) {
		for (int word = 0; word < 4; word++) {
			record.local[word] = common->skc_v6_rcv_saddr.in6_u.u6_addr32[word];
			record.remote[word] = common->skc_v6_daddr.in6_u.u6_addr32[word];
		}
	} else {
		record.local[0] = common->skc_rcv_saddr;
		record.remote[0] = common->skc_daddr;
	}

	if (record.state == TCP_TIME_WAIT) {
		struct tcp_timewait_sock *tw = bpf_skc_to_tcp_timewait_sock(common);

		if (!tw)
			return 0;
		record.state = tw->tw_sk.tw_substate;
		record.tw_ts_recent_stamp = tw->tw_ts_recent_stamp;
		if (bpf_core_field_exists(tw->tw_sk.tw_entry_stamp)) {
			record.tw_entry_stamp = tw->tw_sk.tw_entry_stamp;
			record.flags |= RECORD_HAS_ENTRY_STAMP;
		}
		bucket = tw->tw_sk.tw_tb;
	} else if (record.state != TCP_NEW_SYN_RECV) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(common);
		struct sock *sk = (struct sock *)tp;

		if (!tp)
			return 0;
		bucket = tp->inet_conn.icsk_bind_hash;
		if (record.state == TCP_LISTEN) {
			record.queue_waiting = sk->sk_ack_backlog;
			record.queue_limit = sk->sk_max_ack_backlog;
		}
		if (sk->sk_socket && sk->sk_socket->file && sk->sk_socket->file->f_inode)
			record.inode = sk->sk_socket->file->f_inode->i_ino;
	}
	if (bucket) {
		record.fastreuse = bucket->fastreuse;
		record.fastreuseport = bucket->fastreuseport;
		record.flags |= RECORD_HAS_BUCKET;
	}
	bpf_seq_write(seq, &record, sizeof(record));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
