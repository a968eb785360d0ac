// SPDX-License-Identifier: GPL-2.0
//
// An `iter/tcp` program that writes one fixed-size record for every TCP
// socket of the network namespace that opened the iterator: listeners
// anywhere, every other socket whose local port is inside the range held in
// `settings`. Each record carries what sock_diag cannot tell: whether the
// port's bind bucket was made by bind() (its fastreuse fields), and for
// TIME_WAIT when it began and whether it holds a peer timestamp.
//
// Sockets bound but neither listening nor connected are in neither table.
// When the walk ends, the program finds them in the bind hash instead (see
// `walk_bind_hash`), writes them to the `bound` ring buffer, and ends the
// stream with a trailer record that says whether that walk was complete.
//
// Nothing is decided here that Rust can decide: the fields are copied as the
// kernel holds them, and the exporter's core reads them
// (`crates/portstat-core/src/parse/bpf/sockets.rs`). The kernel's
// structures are in `kernel.bpf.h`, the record in `records.bpf.h`, and the
// walk of the bind hash in `tcp_tables.bpf.h`.
//
// Rebuild the committed object with `src/source/bpf/build.sh`.

#include "tcp_tables.bpf.h"

SEC("iter/tcp")
int dump_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *common = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	struct record record = {};
	__u32 key = 0;
	__u32 flags_key = 1;
	__u32 port_key = 2;
	__u32 *flags;
	__u32 *range;
	__u32 *port;

	range = bpf_map_lookup_elem(&settings, &key);
	if (!range)
		return 0;
	flags = bpf_map_lookup_elem(&settings, &flags_key);
	port = bpf_map_lookup_elem(&settings, &port_key);
	// The last call, after the last socket: the walk for bound sockets,
	// when the loader asks for it.
	if (!common) {
		if (flags && (*flags & SETTING_WALK_BIND_HASH))
			record.flags = walk_bind_hash(*range, 0);
		bpf_seq_write(seq, &record, sizeof(record));
		return 0;
	}
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

	fill_detail(common, &record, flags ? *flags : 0, port ? *port : 0);
	bpf_seq_write(seq, &record, sizeof(record));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
