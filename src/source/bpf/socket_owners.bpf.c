// SPDX-License-Identifier: GPL-2.0
//
// An `iter/task_file` program that writes one fixed-size record for every
// open file of every process that is a TCP or UDP socket: who holds it (the
// process's tgid and comm), and which socket it is (network namespace,
// inode, protocol, local port, state). One pass over the host's processes
// names the owners of the sockets of every namespace, with no readlink() of
// /proc/<pid>/fd/* and no table of descriptors kept between passes.
//
// The kernel visits each process once: threads that share their process's
// descriptor table are skipped (task_file's skip_if_dup_files). A file held
// by several descriptors or processes carries its reference count, so that
// `src/source/bpf/owners.rs` counts such a socket once.
//
// The inode, a cache miss a socket, is read only where a socket must be
// told apart from the others on its port: a file referred to more than
// once, a TCP listener, an unconnected UDP socket (a listener, unless its
// port is in the range), and any socket on the port of `settings`.
//
// Nothing is decided here that Rust can decide: the fields are copied as the
// kernel holds them. The kernel's structures are in `kernel.bpf.h`, the
// record in `records.bpf.h`.
//
// Rebuild the committed object with `src/source/bpf/build.sh`.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "kernel.bpf.h"
#include "records.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define TCP_CLOSE 7
#define TCP_LISTEN 10

// How the file's reference count is kept: `f_ref`, a file_ref_t that holds
// the count less one (Linux 6.13+), or `f_count`, the count itself.
#define RECORD_FILE_REF 1

// Index 0: a port whose sockets' inodes are always read (0: none). Written
// by the loader before each pass.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

SEC("iter/task_file")
int dump_socket_owners(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct owner_record record = {};
	struct socket *socket;
	struct sock *sk;
	__u32 key = 0;
	__u32 *port;
	int shared;
	char *name;

	if (!task || !file)
		return 0;
	// Every field below is read with a plain load of a BTF-typed pointer,
	// which the verifier turns into a fault-safe load: several times
	// cheaper than a bpf_probe_read_kernel call each.
	socket = bpf_sock_from_file(file);
	if (!socket)
		return 0;
	sk = socket->sk;
	if (!sk)
		return 0;
	record.family = sk->__sk_common.skc_family;
	if (record.family != AF_INET && record.family != AF_INET6)
		return 0;
	// The protocol, from the name of the socket's `struct proto` ("TCP",
	// "TCPv6", "UDP", "UDPv6"): all sockets of a protocol share it, so it
	// stays in cache, where `sk_protocol` lies eight cache lines into the
	// socket. UDP-Lite, MPTCP, ping and raw sockets have other names.
	name = sk->__sk_common.skc_prot->name;
	if (name[1] == 'C' && name[0] == 'T' && name[2] == 'P')
		record.protocol = IPPROTO_TCP;
	else if (name[1] == 'D' && name[0] == 'U' && name[2] == 'P')
		record.protocol = IPPROTO_UDP;
	else
		return 0;
	if (name[3] != 0 && (name[3] != 'v' || name[4] != '6' || name[5] != 0))
		return 0;
	record.tgid = task->tgid;
	record.netns = sk->__sk_common.skc_net.net->ns.inum;
	record.port = sk->__sk_common.skc_num;
	record.state = sk->__sk_common.skc_state;
	// The iterator holds a reference of its own while this runs.
	if (bpf_core_field_exists(file->f_ref)) {
		record.file_refs = file->f_ref.refcnt.counter;
		record.flags |= RECORD_FILE_REF;
		shared = record.file_refs > 1;
	} else {
		record.file_refs = file->f_count.counter;
		shared = record.file_refs > 2;
	}
	port = bpf_map_lookup_elem(&settings, &key);
	if (shared || (record.protocol == IPPROTO_TCP && record.state == TCP_LISTEN) ||
	    (record.protocol == IPPROTO_UDP && record.state == TCP_CLOSE) ||
	    (port && *port == record.port))
		record.inode = file->f_inode->i_ino;
	__builtin_memcpy(record.comm, task->comm, sizeof(record.comm));
	bpf_seq_write(ctx->meta->seq, &record, sizeof(record));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
